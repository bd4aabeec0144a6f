//! Durable checkpoints: the consistent state of a pipeline at an epoch boundary, written under
//! `<storage>/checkpoints/`, and found again when the database is opened.
//!
//! A checkpoint of epoch `E` holds: every stateful operator's snapshot from every worker (an
//! incremental checkpoint holds only what changed since the one before it; the `chain` in its
//! manifest lists the checkpoints to load, oldest full one first), each source's stored contents,
//! watermark and connector position, and each stream's queryable contents.
//!
//! Writing is atomic: the files go into `ckpt-<E>.tmp/`, are synced, and the directory is
//! renamed to `ckpt-<E>/`; then `LATEST` names it (temp file + rename). Every file's size and
//! CRC-32 are in the manifest. Loading takes the newest checkpoint whose chain is complete and
//! intact; a damaged or partial one is skipped in favour of the previous one. Older chains are
//! pruned, keeping the previous chain as a fallback.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use laminar_dataflow::checkpoint::SnapshotSink;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::error::{LaminarError, Result};

/// What [`crate::Database::checkpoint`] wrote.
#[derive(Clone, Debug)]
pub struct CheckpointResult {
    /// The last epoch the checkpoint covers.
    pub epoch: u64,
    /// True when it holds the whole operator state (not only changes).
    pub full: bool,
    /// Bytes written.
    pub bytes: u64,
    /// Files written.
    pub files: usize,
    /// Time from the barrier to the durable checkpoint.
    pub duration: Duration,
    /// Its directory.
    pub path: PathBuf,
}

/// Size and checksum of one file of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileInfo {
    /// Bytes.
    pub bytes: u64,
    /// CRC-32 of the contents.
    pub crc32: u32,
}

/// A source's part of a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SourceCheckpoint {
    /// The source's DDL (state is restored only into the same definition).
    pub sql: String,
    /// Event-time watermark (ms), if any.
    pub watermark: Option<i64>,
    /// Rows ingested so far.
    pub total: u64,
    /// The connector's position after the last change the checkpoint includes.
    pub position: Option<serde_json::Value>,
    /// The stored contents (Arrow IPC), if any.
    pub data: Option<String>,
}

/// A dataflow's (stream's, view's or sink's) part of a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StreamCheckpoint {
    /// The DDL (state is restored only into the same definition).
    pub sql: String,
    /// The run's dataflow id: a dataflow created again has a new one.
    pub dataflow: u64,
    /// Operator snapshot files: (operator ordinal, worker, file).
    pub operators: Vec<(u32, usize, String)>,
    /// The queryable contents (Arrow IPC), if the stream keeps any.
    pub output: Option<String>,
    /// A sink's own state (what it needs to finish this checkpoint's writes after a crash).
    #[serde(default)]
    pub sink_state: Option<String>,
}

/// The description of one checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// The last epoch included.
    pub epoch: u64,
    /// Whole operator state (true) or changes since the previous checkpoint of the chain.
    pub full: bool,
    /// Checkpoints whose operator snapshots this one builds on, oldest (full) first, this one
    /// last.
    pub chain: Vec<u64>,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Sources by name.
    pub sources: BTreeMap<String, SourceCheckpoint>,
    /// Dataflows by name.
    pub streams: BTreeMap<String, StreamCheckpoint>,
    /// Every file with its size and checksum.
    pub files: BTreeMap<String, FileInfo>,
    /// The cluster that took it, when it was one process's part of a cluster's checkpoint.
    #[serde(default)]
    pub cluster: Option<ClusterPart>,
}

/// Which part of a cluster's checkpoint a manifest describes: the operator state of a worker
/// restores only into the same worker of a cluster of the same shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPart {
    /// The process that wrote it.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// Workers per process.
    pub workers: usize,
}

impl ClusterPart {
    /// The part a process of `(process, processes)` with `workers` workers writes (none alone).
    pub fn of(process: usize, processes: usize, workers: usize) -> Option<Self> {
        (processes > 1).then_some(Self { process, processes, workers })
    }

    /// Fails unless a checkpoint taken as `taken` can be restored by `this` run.
    pub fn check(taken: Option<Self>, this: Option<Self>, epoch: u64) -> Result<()> {
        let shape = |p: Option<Self>| match p {
            Some(p) => {
                format!("process {} of a cluster of {} processes x {} workers", p.process, p.processes, p.workers)
            }
            None => "a process alone".to_string(),
        };
        let same = match (taken, this) {
            (None, None) => true,
            (Some(a), Some(b)) => a == b,
            _ => false,
        };
        if same {
            return Ok(());
        }
        Err(LaminarError::Checkpoint(format!(
            "the checkpoint of epoch {epoch} was taken by {}, and this run is {}: restart with the same processes \
             and workers (or open another directory)",
            shape(taken),
            shape(this)
        )))
    }
}

const VERSION: u32 = 1;

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> LaminarError {
    LaminarError::Checkpoint(format!("cannot {what} {}: {e}", path.display()))
}

fn dir_name(epoch: u64) -> String {
    format!("ckpt-{epoch:020}")
}

/// Encodes batches as an Arrow IPC stream.
pub fn ipc_bytes(batches: &[RecordBatch], schema: &arrow::datatypes::SchemaRef) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(out)
}

/// Decodes an Arrow IPC stream.
pub fn ipc_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(r.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// The checkpoints directory of a database.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Checkpoints under `root/checkpoints`.
    pub fn new(root: &Path) -> Self {
        Self { dir: root.join("checkpoints") }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a checkpoint atomically; returns its directory and the bytes written.
    pub fn write(&self, mut manifest: Manifest, files: Vec<(String, Vec<u8>)>) -> Result<(PathBuf, u64)> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err("create", &self.dir, e))?;
        let name = dir_name(manifest.epoch);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let dest = self.dir.join(&name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io_err("clear", &tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        let mut bytes = 0u64;
        for (file, data) in &files {
            let path = tmp.join(file);
            write_synced(&path, data)?;
            bytes += data.len() as u64;
            manifest.files.insert(file.clone(), FileInfo { bytes: data.len() as u64, crc32: crc32fast::hash(data) });
        }
        manifest.version = VERSION;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| LaminarError::Checkpoint(format!("cannot encode the manifest: {e}")))?;
        write_synced(&tmp.join("manifest.json"), &json)?;
        bytes += json.len() as u64;
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(|e| io_err("replace", &dest, e))?;
        }
        std::fs::rename(&tmp, &dest).map_err(|e| io_err("publish", &dest, e))?;
        sync_dir(&self.dir)?;
        let latest_tmp = self.dir.join("LATEST.tmp");
        write_synced(&latest_tmp, name.as_bytes())?;
        std::fs::rename(&latest_tmp, self.dir.join("LATEST")).map_err(|e| io_err("update", &self.dir, e))?;
        sync_dir(&self.dir)?;
        Ok((dest, bytes))
    }

    /// Epochs of the checkpoints present, newest first.
    fn epochs(&self) -> Vec<u64> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<u64> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("ckpt-")).and_then(|n| n.parse().ok()))
            .collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }

    fn manifest(&self, epoch: u64) -> Result<Manifest> {
        let path = self.dir.join(dir_name(epoch)).join("manifest.json");
        let bytes = std::fs::read(&path).map_err(|e| io_err("read", &path, e))?;
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| io_err("parse", &path, format!("damaged manifest: {e}")))?;
        if m.version != VERSION || m.epoch != epoch {
            return Err(io_err("use", &path, "manifest of another version or epoch"));
        }
        Ok(m)
    }

    /// Reads (and checks) one file of checkpoint `epoch`.
    fn file(&self, m: &Manifest, name: &str) -> Result<Vec<u8>> {
        let path = self.dir.join(dir_name(m.epoch)).join(name);
        let info = m.files.get(name).ok_or_else(|| io_err("find", &path, "not listed in the manifest"))?;
        let data = std::fs::read(&path).map_err(|e| io_err("read", &path, e))?;
        if data.len() as u64 != info.bytes || crc32fast::hash(&data) != info.crc32 {
            return Err(io_err("use", &path, "checksum mismatch (a damaged checkpoint)"));
        }
        Ok(data)
    }

    /// The newest checkpoint whose chain is complete and undamaged, with all its files read.
    /// Damaged checkpoints are skipped (and reported in the returned notes).
    pub fn load_latest(&self) -> Result<Option<Loaded>> {
        let mut notes = Vec::new();
        for epoch in self.epochs() {
            match self.load_epoch(epoch) {
                Ok(mut l) => {
                    l.notes = notes;
                    return Ok(Some(l));
                }
                Err(e) => notes.push(e.to_string()),
            }
        }
        Ok(None)
    }

    /// The checkpoint of `epoch` with its chain, all files read and checked.
    pub fn load_epoch(&self, epoch: u64) -> Result<Loaded> {
        let head = self.manifest(epoch)?;
        let mut chain = Vec::new();
        for &e in &head.chain {
            let m = if e == epoch { head.clone() } else { self.manifest(e)? };
            let mut files = HashMap::new();
            for name in m.files.keys() {
                files.insert(name.clone(), Arc::new(self.file(&m, name)?));
            }
            chain.push((m, files));
        }
        if chain.first().is_none_or(|(m, _)| !m.full) {
            return Err(LaminarError::Checkpoint(format!(
                "checkpoint {epoch}: its chain does not start with a full one"
            )));
        }
        Ok(Loaded { chain, notes: Vec::new() })
    }

    /// The oldest checkpoint present.
    pub fn oldest(&self) -> Option<u64> {
        self.epochs().last().copied()
    }

    /// Deletes the checkpoints older than `epoch` (a cluster's follower: what process 0 no
    /// longer keeps cannot be restored).
    pub fn prune_before(&self, epoch: u64) -> Result<()> {
        for e in self.epochs().into_iter().filter(|&e| e < epoch) {
            let d = self.dir.join(dir_name(e));
            std::fs::remove_dir_all(&d).map_err(|err| io_err("prune", &d, err))?;
        }
        Ok(())
    }

    /// Deletes checkpoints older than the chain before the newest one.
    pub fn prune(&self, newest: &Manifest) -> Result<()> {
        let oldest_kept = match newest.chain.first() {
            Some(&base) => {
                // Keep the chain that ends just before this one's base, as a fallback.
                let prev = self.epochs().into_iter().find(|&e| e < base);
                match prev.and_then(|p| self.manifest(p).ok()) {
                    Some(m) => m.chain.first().copied().unwrap_or(base),
                    None => base,
                }
            }
            None => return Ok(()),
        };
        for e in self.epochs() {
            if e < oldest_kept {
                let d = self.dir.join(dir_name(e));
                std::fs::remove_dir_all(&d).map_err(|err| io_err("prune", &d, err))?;
            }
        }
        Ok(())
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| io_err("create", path, e))?;
    f.write_all(data).map_err(|e| io_err("write", path, e))?;
    f.sync_all().map_err(|e| io_err("sync", path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).map_err(|e| io_err("open", dir, e))?;
    d.sync_all().map_err(|e| io_err("sync", dir, e))
}

/// A checkpoint's files by name.
pub type Files = HashMap<String, Arc<Vec<u8>>>;

/// A checkpoint read back: its chain of manifests with their files (oldest first).
pub struct Loaded {
    /// (manifest, files), from the full checkpoint to the newest.
    pub chain: Vec<(Manifest, Files)>,
    /// Problems with newer checkpoints that were skipped.
    pub notes: Vec<String>,
}

impl Loaded {
    /// The newest manifest.
    pub fn head(&self) -> &Manifest {
        &self.chain[self.chain.len() - 1].0
    }

    /// A file of the newest checkpoint.
    pub fn head_file(&self, name: &str) -> Option<Arc<Vec<u8>>> {
        self.chain.last().and_then(|(_, f)| f.get(name).cloned())
    }

    /// Operator snapshots of a dataflow, per ordinal, in chain order; only the checkpoints since
    /// the dataflow (same SQL, same run id) last began count.
    pub fn operator_state(
        &self,
        stream: &str,
    ) -> BTreeMap<u32, Vec<laminar_dataflow::checkpoint::CheckpointSnapshots>> {
        let Some(head) = self.head().streams.get(stream) else { return BTreeMap::new() };
        // Walk back while the same dataflow is present.
        let mut start = self.chain.len();
        while start > 0 {
            match self.chain[start - 1].0.streams.get(stream) {
                Some(s) if s.sql == head.sql && s.dataflow == head.dataflow => start -= 1,
                _ => break,
            }
        }
        let mut out: BTreeMap<u32, Vec<laminar_dataflow::checkpoint::CheckpointSnapshots>> = BTreeMap::new();
        for (m, files) in &self.chain[start..] {
            let Some(s) = m.streams.get(stream) else { continue };
            let mut this: BTreeMap<u32, Vec<Arc<Vec<u8>>>> = BTreeMap::new();
            for (ordinal, _, file) in &s.operators {
                if let Some(data) = files.get(file) {
                    this.entry(*ordinal).or_default().push(data.clone());
                }
            }
            for (ordinal, parts) in this {
                out.entry(ordinal).or_default().push(parts);
            }
        }
        out
    }
}

/// Collects what a checkpoint barrier produces: operator snapshots, stream contents and sink
/// acknowledgements.
pub struct Collector {
    state: Mutex<Collected>,
    changed: Condvar,
    expected: usize,
    /// The dataflows whose operator snapshots count (a stream dropped from a group of
    /// dataflows that goes on still runs its operators, and they still answer the barrier).
    dataflows: std::collections::HashSet<u64>,
}

/// What has arrived for one checkpoint.
#[derive(Default)]
pub struct Collected {
    /// (dataflow, ordinal, worker) → snapshot.
    pub operators: HashMap<(u64, u32, usize), Vec<u8>>,
    /// Stream name → contents.
    pub outputs: HashMap<String, Option<Vec<RecordBatch>>>,
    /// Sinks that pre-committed.
    pub sinks: usize,
    /// Sink name → the state it keeps in the checkpoint.
    pub sink_states: HashMap<String, Vec<u8>>,
    /// Failures (a sink that could not pre-commit, contents that could not be read).
    pub errors: Vec<String>,
    arrived: usize,
}

impl Collector {
    /// Expects `expected` arrivals in all, operator snapshots of the given dataflows only.
    pub fn new(expected: usize, dataflows: std::collections::HashSet<u64>) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(Collected::default()), changed: Condvar::new(), expected, dataflows })
    }

    fn arrive(&self, f: impl FnOnce(&mut Collected)) {
        let mut st = self.state.lock();
        f(&mut st);
        st.arrived += 1;
        self.changed.notify_all();
    }

    /// A stream's contents at the barrier.
    pub fn output(&self, stream: String, contents: std::result::Result<Option<Vec<RecordBatch>>, String>) {
        self.arrive(|st| match contents {
            Ok(c) => {
                st.outputs.insert(stream, c);
            }
            Err(e) => st.errors.push(format!("stream '{stream}': {e}")),
        });
    }

    /// A sink's pre-commit outcome.
    pub fn sink(&self, sink: String, outcome: std::result::Result<Option<Vec<u8>>, String>) {
        self.arrive(|st| match outcome {
            Ok(state) => {
                st.sinks += 1;
                if let Some(state) = state {
                    st.sink_states.insert(sink, state);
                }
            }
            Err(e) => st.errors.push(format!("sink '{sink}' could not pre-commit: {e}")),
        });
    }

    /// Waits for every arrival; fails after `timeout`.
    pub fn wait(&self, timeout: Duration) -> Result<Collected> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        while st.arrived < self.expected {
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                return Err(LaminarError::Checkpoint(format!(
                    "the checkpoint barrier did not pass every operator within {} s ({} of {} parts arrived)",
                    timeout.as_secs(),
                    st.arrived,
                    self.expected
                )));
            }
        }
        Ok(std::mem::take(&mut *st))
    }
}

impl SnapshotSink for Collector {
    fn deliver(&self, dataflow: u64, operator: u32, worker: usize, _epoch: u64, state: Vec<u8>) {
        if !self.dataflows.contains(&dataflow) {
            return;
        }
        self.arrive(|st| {
            st.operators.insert((dataflow, operator, worker), state);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(epoch: u64, full: bool, chain: Vec<u64>) -> Manifest {
        Manifest { epoch, full, chain, ..Default::default() }
    }

    /// A cluster's part restores only into the same process of a cluster of the same shape;
    /// a follower drops what process 0 no longer keeps.
    #[test]
    fn cluster_parts_restore_into_the_same_shape_and_followers_prune_to_the_leader() {
        let two = ClusterPart::of(1, 2, 4);
        assert_eq!(ClusterPart::of(0, 1, 4), None, "alone: no cluster part");
        assert!(ClusterPart::check(None, None, 5).is_ok());
        assert!(ClusterPart::check(two, two, 5).is_ok());
        let msg = ClusterPart::check(two, ClusterPart::of(1, 3, 4), 5).expect_err("other shape").to_string();
        assert!(msg.contains("2 processes x 4 workers") && msg.contains("3 processes x 4 workers"), "{msg}");
        assert!(ClusterPart::check(two, None, 5).is_err_and(|e| e.to_string().contains("a process alone")));
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::new(dir.path());
        for (e, full, chain) in [(10, true, vec![10]), (20, false, vec![10, 20]), (30, true, vec![30])] {
            store.write(manifest(e, full, chain), vec![("a".into(), b"x".to_vec())]).expect("write");
        }
        assert_eq!(store.oldest(), Some(10));
        store.prune_before(20).expect("prune");
        assert_eq!(store.epochs(), vec![30, 20]);
        assert!(store.load_epoch(20).is_err(), "its chain lost its base");
        assert_eq!(store.load_epoch(30).expect("intact").head().epoch, 30);
    }

    #[test]
    fn damaged_checkpoints_fall_back_and_old_chains_are_pruned() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::new(dir.path());
        store.write(manifest(10, true, vec![10]), vec![("a".into(), b"one".to_vec())]).expect("write");
        store.write(manifest(20, false, vec![10, 20]), vec![("a".into(), b"two".to_vec())]).expect("write");
        let l = store.load_latest().expect("load").expect("some");
        assert_eq!(l.head().epoch, 20);
        assert_eq!(l.chain.len(), 2);
        // Damage the newest: loading falls back to epoch 10 and says why.
        std::fs::write(store.dir().join(dir_name(20)).join("a"), b"tw0").expect("damage");
        let l = store.load_latest().expect("load").expect("some");
        assert_eq!(l.head().epoch, 10);
        assert!(l.notes.iter().any(|n| n.contains("checksum")), "{:?}", l.notes);
        // A partial checkpoint (no manifest) is ignored too.
        std::fs::create_dir_all(store.dir().join(dir_name(30))).expect("partial");
        assert_eq!(store.load_latest().expect("load").expect("some").head().epoch, 10);
        std::fs::remove_dir_all(store.dir().join(dir_name(30))).expect("rm");
        // New chains: the one before the newest is kept, older ones go.
        store.write(manifest(40, true, vec![40]), vec![]).expect("write");
        let m = manifest(50, true, vec![50]);
        store.write(m.clone(), vec![]).expect("write");
        store.prune(&m).expect("prune");
        assert_eq!(store.epochs(), vec![50, 40]);
    }
}
