//! Taking checkpoints, alone and in a cluster.
//!
//! **Alone.** A barrier stops the sources at a chunk boundary, their contents, watermarks and
//! positions are taken, and the open epoch `E` closes with a checkpoint request: every stateful
//! operator snapshots its state as of `E`, every stream hands over its contents and every sink
//! pre-commits once `E` has reached it. The parts are written durably (see
//! [`crate::checkpoint`]); then exactly-once sinks commit and sources acknowledge what the
//! checkpoint covers to their peers.
//!
//! **In a cluster** process 0 drives a checkpoint over the control messages of the runtime:
//! 1. it asks every follower to get ready; each one passes its own source barrier, takes its
//!    sources' part and answers (sending no data until the checkpoint's epoch closes);
//! 2. with every process ready, process 0 closes epoch `E`, the same cut on every process;
//!    each process's operators snapshot their workers' state, each process writes its part
//!    under its own storage directory and the followers report it saved;
//! 3. process 0 writes its own part last: the checkpoint exists once that is durable (process
//!    0's directory is the record of the cluster's checkpoints). It then tells the followers,
//!    which commit their sinks and drop what is older than what a restart may still pick.
//!
//! A failure anywhere abandons the checkpoint on every process (sinks keep their writes pending
//! for the next one, which is a full one); a lost process fails it at once. On a restart process 0 restores its newest intact
//! checkpoint and names it to every follower when they connect; each follower restores its own
//! part of that same checkpoint, or fails to start saying it lacks it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use laminar_adapters::SinkHandle;
use laminar_dataflow::merge::EpochMerger;
use laminar_dataflow::runtime::Runtime;

use super::{CheckpointChain, Database, SourceEntry, State};
use crate::checkpoint::{self, CheckpointResult, ClusterPart, Collected, Collector, Loaded, Manifest};
use crate::error::{LaminarError, Result};
use crate::output::StreamOutput;

/// How long the operators, streams and sinks have to answer a checkpoint barrier.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a follower, once ready, waits for process 0 to close the checkpoint's epoch, and
/// then for its verdict.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(600);

/// One installed dataflow's part of a checkpoint.
#[derive(Clone)]
struct Part {
    name: String,
    sql: String,
    id: u64,
    merger: Arc<EpochMerger>,
    operators: u32,
    output: Arc<StreamOutput>,
    sink: Option<Arc<SinkHandle>>,
}

/// A source's part: contents, watermark, rows so far and connector position.
type SourcePart = (Arc<SourceEntry>, Vec<RecordBatch>, Option<i64>, u64, Option<serde_json::Value>);

/// What was written for one checkpoint.
struct Written {
    manifest: Manifest,
    path: std::path::PathBuf,
    bytes: u64,
    files: usize,
    operator_bytes: u64,
}

/// Every installed dataflow of the catalog (ad-hoc query subscriptions are not saved).
fn parts(st: &State) -> Vec<Part> {
    let entries = st
        .streams
        .iter()
        .map(|(n, e)| (n.clone(), e.clone()))
        .chain(st.sinks.iter().map(|(n, s)| (n.clone(), s.entry.clone())));
    let mut out = Vec::new();
    for (name, e) in entries {
        let Some(r) = e.running.lock().as_ref().map(|r| (r.id, r.merger.clone(), r.operators)) else { continue };
        out.push(Part {
            name,
            sql: e.sql.clone(),
            id: r.0,
            merger: r.1,
            operators: r.2,
            output: e.output.clone(),
            sink: e.sink.lock().clone(),
        });
    }
    out
}

/// A collector for `parts` on a process of `workers` workers: every operator of every worker,
/// and each part's contents or sink.
fn collector(parts: &[Part], workers: usize) -> Arc<Collector> {
    let expected: usize = parts.iter().map(|p| p.operators as usize * workers + 1).sum();
    Collector::new(expected, parts.iter().map(|p| p.id).collect())
}

/// Waits until every source is at a chunk boundary and holds it there: a checkpoint includes a
/// whole chunk of a connector's changes with its position, or neither. A chunk in progress may
/// be waiting for room, which the running pipeline makes.
fn hold_sources(sources: &[Arc<SourceEntry>], rt: &Runtime) -> Result<Vec<tokio::sync::OwnedMutexGuard<()>>> {
    let mut guards = Vec::with_capacity(sources.len());
    for s in sources {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match s.chunk.clone().try_lock_owned() {
                Ok(g) => break guards.push(g),
                Err(_) if Instant::now() < deadline => {
                    lost(rt)?;
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(_) => {
                    return Err(LaminarError::Checkpoint(format!(
                        "source '{}' did not reach a chunk boundary within 60 s",
                        s.def.name
                    )))
                }
            }
        }
    }
    Ok(guards)
}

/// The sources' parts, taken while no data can be sent.
fn source_parts(sources: &[Arc<SourceEntry>]) -> Result<Vec<SourcePart>> {
    let mut out = Vec::with_capacity(sources.len());
    for src in sources {
        let data = src.data.lock().snapshot()?;
        let w = src.watermark.load(Ordering::Acquire);
        out.push((
            src.clone(),
            data,
            // (The end of time stands for "no rows from here", not a position to restore.)
            (w != i64::MIN && w != i64::MAX).then_some(w),
            src.total.load(Ordering::Relaxed),
            src.position.lock().clone(),
        ));
    }
    Ok(out)
}

/// What runs with the checkpoint's epoch `E` before any later epoch closes: each part's contents
/// are taken (or its sink pre-commits) once `E` has reached it.
fn mark_parts(parts: &[Part], collector: &Arc<Collector>) -> impl FnOnce(u64) + Send + 'static {
    let marks = parts.to_vec();
    let collector = collector.clone();
    move |e: u64| {
        for Part { name, merger, output, sink, .. } in marks {
            let c = collector.clone();
            match sink {
                Some(h) => merger.mark(e, Box::new(move || h.pre_commit(e, Box::new(move |r| c.sink(name, r))))),
                None => merger.mark(e, Box::new(move || c.output(name, output.image().map_err(|err| err.to_string())))),
            }
        }
    }
}

/// File names from object names.
fn safe(n: &str) -> String {
    n.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// Writes one checkpoint's files and manifest.
#[allow(clippy::too_many_arguments)]
fn write(
    store: &checkpoint::Store,
    part: Option<ClusterPart>,
    epoch: u64,
    full: bool,
    chain: &CheckpointChain,
    sources: Vec<SourcePart>,
    parts: &[Part],
    collected: Collected,
) -> Result<Written> {
    let mut manifest = Manifest {
        epoch,
        full,
        chain: if full { vec![epoch] } else { chain.epochs.iter().copied().chain([epoch]).collect() },
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        cluster: part,
        ..Default::default()
    };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (src, data, watermark, total, position) in sources {
        let file = format!("src-{}.arrow", safe(&src.def.name));
        files.push((file.clone(), checkpoint::ipc_bytes(&data, &src.schema)?));
        manifest.sources.insert(
            src.def.name.clone(),
            checkpoint::SourceCheckpoint { sql: src.sql.clone(), watermark, total, position, data: Some(file) },
        );
    }
    let mut operators = collected.operators;
    let operator_bytes: u64 = operators.values().map(|v| v.len() as u64).sum();
    for p in parts {
        let mut saved = checkpoint::StreamCheckpoint { sql: p.sql.clone(), dataflow: p.id, ..Default::default() };
        // Ordinals need not be dense: those of operators shared with a stream it reads are that
        // stream's.
        let mut mine: Vec<(u32, usize)> =
            operators.keys().filter(|k| k.0 == p.id).map(|&(_, ordinal, w)| (ordinal, w)).collect();
        mine.sort_unstable();
        for (ordinal, w) in mine {
            let Some(state) = operators.remove(&(p.id, ordinal, w)) else { continue };
            let file = format!("op-{}-{ordinal}-{w}.bin", safe(&p.name));
            files.push((file.clone(), state));
            saved.operators.push((ordinal, w, file));
        }
        if let Some(state) = collected.sink_states.get(&p.name) {
            let file = format!("sink-{}.bin", safe(&p.name));
            files.push((file.clone(), state.clone()));
            saved.sink_state = Some(file);
        }
        if let Some(Some(contents)) = collected.outputs.get(&p.name) {
            let file = format!("out-{}.arrow", safe(&p.name));
            let schema = contents.first().map(|b| b.schema()).unwrap_or_else(|| p.output.image_schema());
            files.push((file.clone(), checkpoint::ipc_bytes(contents, &schema)?));
            saved.output = Some(file);
        }
        manifest.streams.insert(p.name.clone(), saved);
    }
    let nfiles = files.len();
    let (path, bytes) = store.write(manifest.clone(), files)?;
    Ok(Written { manifest, path, bytes, files: nfiles, operator_bytes })
}

/// Records a durable checkpoint in the chain the next incremental one builds on.
fn extend_chain(chain: &mut CheckpointChain, epoch: u64, full: bool, operator_bytes: u64) {
    if full {
        *chain = CheckpointChain { epochs: vec![epoch], full_bytes: operator_bytes, delta_bytes: 0 };
    } else {
        chain.epochs.push(epoch);
        chain.delta_bytes += operator_bytes;
    }
}

/// Fails once the cluster of `rt` lost a process.
fn lost(rt: &Runtime) -> Result<()> {
    match rt.cluster_failure() {
        Some(why) => Err(laminar_dataflow::DataflowError::Cluster(why).into()),
        None => Ok(()),
    }
}

/// Waits for every part of the barrier; a failed part (or a lost process) fails the checkpoint.
fn collect(collector: &Collector, epoch: u64, rt: &Runtime) -> Result<Collected> {
    let deadline = Instant::now() + COLLECT_TIMEOUT;
    let collected = loop {
        let slice = Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now()));
        match collector.wait(slice) {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => lost(rt)?,
        }
    };
    if !collected.errors.is_empty() {
        return Err(LaminarError::Checkpoint(format!(
            "checkpoint of epoch {epoch} failed: {}",
            collected.errors.join("; ")
        )));
    }
    Ok(collected)
}

impl Database {
    /// The checkpoint procedure of a process alone, or of a cluster's process 0 (see the
    /// module doc).
    pub(super) fn take_checkpoint(&self) -> Result<CheckpointResult> {
        let root = self.storage_root().ok_or_else(|| {
            LaminarError::Checkpoint(
                "an in-memory database cannot checkpoint: open a directory or set storage_dir".into(),
            )
        })?;
        let rt = self
            .inner
            .runtime
            .read()
            .clone()
            .ok_or_else(|| LaminarError::Checkpoint("the pipeline is not running: start() it first".into()))?;
        let (process, processes) = rt.process();
        if process > 0 {
            return Err(LaminarError::Checkpoint(format!(
                "process {process} of the cluster cannot take a checkpoint: process 0 takes them for every process"
            )));
        }
        let mut chain = self.inner.checkpoints.lock();
        self.flush_all_staged()?;
        let started = Instant::now();
        let full = chain.epochs.is_empty() || chain.delta_bytes > 2 * chain.full_bytes;
        let st = self.inner.state.lock();
        let parts = parts(&st);
        let collector = collector(&parts, rt.workers());
        let sources: Vec<Arc<SourceEntry>> = st.sources.values().cloned().collect();
        // The barrier: no source chunk is half applied, no insert half sent.
        let chunk_guards = hold_sources(&sources, &rt)?;
        let ingest = self.inner.ingest.lock();
        let source_parts = source_parts(&sources)?;
        let epoch = rt.checkpoint(full, collector.clone(), mark_parts(&parts, &collector)).inspect_err(|_| {
            // A follower that refused may have lost its chain: the next checkpoint is a full one.
            if processes > 1 {
                *chain = CheckpointChain::default();
            }
        })?;
        drop(ingest);
        drop(chunk_guards);
        drop(st);
        let store = checkpoint::Store::new(&root);
        let written = collect(&collector, epoch, &rt)
            .and_then(|collected| {
                // The followers' parts are durable before the leader's, which makes the checkpoint.
                rt.cluster_saved(epoch, COLLECT_TIMEOUT)?;
                let part = ClusterPart::of(process, processes, rt.workers());
                write(&store, part, epoch, full, &chain, source_parts, &parts, collected)
            })
            .inspect_err(|_| {
                // Sinks that pre-committed keep their writes pending for the next checkpoint,
                // which is a full one: the operators' changes since the last one went into this.
                parts.iter().filter_map(|p| p.sink.as_ref()).for_each(|h| h.checkpoint_failed());
                *chain = CheckpointChain::default();
                let _ = rt.cluster_finish(epoch, false, 0);
            })?;
        // A failure to prune leaves old files behind; the checkpoint itself is durable.
        let _ = store.prune(&written.manifest);
        extend_chain(&mut chain, epoch, full, written.operator_bytes);
        if processes > 1 {
            // Followers may drop what a restart can no longer pick.
            let keep_from = store.oldest().unwrap_or(epoch);
            rt.cluster_finish(epoch, true, keep_from)?;
        }
        self.committed(&parts, &written.manifest, epoch);
        Ok(CheckpointResult {
            epoch,
            full,
            bytes: written.bytes,
            files: written.files,
            duration: started.elapsed(),
            path: written.path,
        })
    }

    /// The checkpoint is durable: exactly-once sinks make the epochs it covers visible, sources
    /// acknowledge what it covers to their peers.
    fn committed(&self, parts: &[Part], manifest: &Manifest, epoch: u64) {
        for p in parts {
            if let Some(h) = &p.sink {
                h.commit(epoch);
            }
        }
        let st = self.inner.state.lock();
        for (name, saved) in &manifest.sources {
            if let (Some(src), Some(pos)) = (st.sources.get(name), &saved.position) {
                if let Some(run) = src.run.lock().as_ref() {
                    run.handle.commit(pos.clone());
                }
            }
        }
    }

    /// A cluster's follower: answers process 0's checkpoint requests for as long as `rt` runs.
    pub(super) fn spawn_checkpoint_follower(&self, rt: &Arc<Runtime>) -> Result<()> {
        let Some(requests) = rt.checkpoint_requests() else { return Ok(()) };
        let weak_db = Arc::downgrade(&self.inner);
        let weak_rt = Arc::downgrade(rt);
        std::thread::Builder::new()
            .name("laminar-cluster-checkpoints".into())
            .spawn(move || loop {
                match requests.recv_timeout(Duration::from_millis(200)) {
                    Ok((id, full)) => {
                        let (Some(inner), Some(rt)) = (weak_db.upgrade(), weak_rt.upgrade()) else { return };
                        let db = Database { inner };
                        if let Err(e) = db.follow_checkpoint(&rt, id, full) {
                            *db.inner.last_checkpoint_error.lock() = Some(e.to_string());
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        if weak_rt.strong_count() == 0 || weak_db.strong_count() == 0 {
                            return;
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|e| LaminarError::Internal(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(())
    }

    /// A follower's part of checkpoint `id` (see the module doc).
    fn follow_checkpoint(&self, rt: &Arc<Runtime>, id: u64, full: bool) -> Result<()> {
        let (process, processes) = rt.process();
        let refuse = |why: String| {
            let _ = rt.refuse_checkpoint(id, why.clone());
            LaminarError::Checkpoint(format!("process {process}: {why}"))
        };
        let Some(root) = self.storage_root() else {
            return Err(refuse(
                "it keeps no checkpoints: open a directory (or set storage_dir) on every process".into(),
            ));
        };
        let mut chain = self.inner.checkpoints.lock();
        if !full && chain.epochs.is_empty() {
            return Err(refuse("it has no checkpoint for an incremental one to build on".into()));
        }
        self.flush_all_staged().map_err(|e| refuse(e.to_string()))?;
        let st = self.inner.state.lock();
        let parts = parts(&st);
        let collector = collector(&parts, rt.workers());
        let sources: Vec<Arc<SourceEntry>> = st.sources.values().cloned().collect();
        let chunk_guards = hold_sources(&sources, rt).map_err(|e| refuse(e.to_string()))?;
        let ingest = self.inner.ingest.lock();
        let source_parts = source_parts(&sources).map_err(|e| refuse(e.to_string()))?;
        let before = Box::new(mark_parts(&parts, &collector));
        let epoch = rt.follow_checkpoint(id, full, collector.clone(), before, FOLLOW_TIMEOUT).map_err(|e| {
            // Its epoch may have closed just as this process gave up: say so, and let the sinks
            // drop what they may have pre-committed.
            let _ = rt.checkpoint_saved(id, Some(e.to_string()));
            parts.iter().filter_map(|p| p.sink.as_ref()).for_each(|h| h.checkpoint_failed());
            *chain = CheckpointChain::default();
            LaminarError::from(e)
        })?;
        drop(ingest);
        drop(chunk_guards);
        drop(st);
        let store = checkpoint::Store::new(&root);
        let written = collect(&collector, epoch, rt).and_then(|collected| {
            let part = ClusterPart::of(process, processes, rt.workers());
            write(&store, part, epoch, full, &chain, source_parts, &parts, collected)
        });
        rt.checkpoint_saved(id, written.as_ref().err().map(|e| e.to_string()))?;
        let verdict = match &written {
            Ok(_) => rt.checkpoint_finished(id, FOLLOW_TIMEOUT).map_err(LaminarError::from),
            Err(_) => Ok((false, 0)),
        };
        match (written, verdict) {
            (Ok(written), Ok((true, keep_from))) => {
                extend_chain(&mut chain, epoch, full, written.operator_bytes);
                self.committed(&parts, &written.manifest, epoch);
                let _ = store.prune_before(keep_from);
                Ok(())
            }
            (written, verdict) => {
                parts.iter().filter_map(|p| p.sink.as_ref()).for_each(|h| h.checkpoint_failed());
                *chain = CheckpointChain::default();
                written?;
                verdict?;
                Err(LaminarError::Checkpoint(format!("process 0 abandoned the checkpoint of epoch {epoch}")))
            }
        }
    }

    /// Puts the sources' part of a loaded checkpoint back: contents, watermarks, row counts and
    /// connector positions (of sources with the same definition).
    pub(super) fn restore_sources(st: &State, loaded: &Loaded) -> Result<()> {
        for (name, saved) in &loaded.head().sources {
            let Some(src) = st.sources.get(name) else { continue };
            if src.sql != saved.sql {
                continue;
            }
            if let Some(file) = saved.data.as_ref().and_then(|f| loaded.head_file(f)) {
                let mut data = src.data.lock();
                for b in checkpoint::ipc_batches(&file)? {
                    data.insert(b)?;
                }
            }
            if let Some(w) = saved.watermark {
                src.watermark.fetch_max(w, Ordering::AcqRel);
            }
            src.total.store(saved.total, Ordering::Relaxed);
            if saved.position.is_some() {
                *src.position.lock() = saved.position.clone();
            }
        }
        Ok(())
    }
}
