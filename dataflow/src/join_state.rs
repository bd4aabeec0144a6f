//! Incremental equi-join state: both inputs kept as multisets of byte-encoded rows (Arrow row
//! format), grouped by join key, with per-row match counts for outer joins.
//!
//! For an epoch with changes `dL` and `dR` to the inputs `L` and `R`, the change of the inner
//! join is `dL ⋈ R + L ⋈ dR + dL ⋈ dR` (old `L` and `R`). Every candidate pair is built as one
//! Arrow batch, the extra ON conditions are evaluated on it with Arrow kernels, and the passing
//! pairs are the output. Outer joins also keep, for every distinct row, how many rows of the
//! other side it matches: a row whose count moves between zero and non-zero flips its
//! null-padded copy in or out of the output.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use arrow_row::{RowConverter, Rows, SortField};
use hashbrown::HashTable;

use crate::aggregate_state::Owns;
use crate::batch::DiffBatch;
use crate::codec::{Dec, Enc};
use crate::error::{DataflowError, Result};
use crate::plan::JoinPlan;
use crate::rowstore::{bytes_eq, hash_hi, slot_hash};
use crate::watermark::{event_time_ms, NO_WATERMARK};

const NONE: u32 = u32::MAX;

/// Compacts a side's arena when at least this many bytes are garbage and they are half of it.
const COMPACT_MIN: usize = 1 << 20;

/// The state of one distinct row of a side.
#[derive(Clone, Copy, Debug)]
struct RowInfo {
    /// Multiplicity.
    mult: i64,
    /// Sum of the multiplicities of the other side's rows it matches (outer joins).
    matches: i64,
    /// Event time in milliseconds (time-bounded joins; `i64::MAX` when unknown).
    ts: i64,
}

/// A distinct row: its bytes in the arena, its key group and its neighbours in that group.
#[derive(Clone, Copy)]
struct RowSlot {
    off: u64,
    len: u32,
    hash: u64,
    group: u32,
    prev: u32,
    next: u32,
    info: RowInfo,
}

/// A join key: its bytes in the arena and the first of its rows.
#[derive(Clone, Copy)]
struct GroupSlot {
    off: u64,
    len: u32,
    hash: u64,
    head: u32,
    /// Incremented when the slot is freed, so stale references to it can be told apart.
    generation: u32,
    /// The key is in the side's `dirty` set already.
    dirty: bool,
}

/// One input of the join: its distinct rows grouped by key, bytes in one arena (no allocation
/// per row or key).
struct Side {
    arena: Vec<u8>,
    garbage: usize,
    rows: Vec<RowSlot>,
    free_rows: Vec<u32>,
    groups: Vec<GroupSlot>,
    free_groups: Vec<u32>,
    /// Row ids by the hash of their bytes, as (id, upper half of the hash): see [`slot_hash`].
    row_index: HashTable<(u32, u32)>,
    /// Group ids by the hash of their key bytes, likewise.
    group_index: HashTable<(u32, u32)>,
    /// Event time → (group, generation) holding a row with that time (time-bounded joins).
    expiry: BTreeMap<i64, Vec<(u32, u32)>>,
    live: usize,
    /// Keys whose rows changed since the last snapshot (each live group once, flagged in its
    /// slot; removed groups' keys stay here after their slot is freed).
    dirty: KeySet,
    /// Whether `dirty` is kept (not when no checkpoint can be taken).
    track_dirty: bool,
}

/// A set of byte strings in one arena.
#[derive(Default)]
struct KeySet {
    arena: Vec<u8>,
    entries: Vec<(u64, u32, u64)>,
    index: HashTable<u32>,
}

impl KeySet {
    fn get(&self, i: usize) -> &[u8] {
        let (off, len, _) = self.entries[i];
        &self.arena[off as usize..off as usize + len as usize]
    }

    fn insert(&mut self, hash: u64, key: &[u8]) {
        if self.index.find(hash, |&i| bytes_eq(self.get(i as usize), key)).is_some() {
            return;
        }
        self.entries.push((self.arena.len() as u64, key.len() as u32, hash));
        self.arena.extend_from_slice(key);
        let entries = &self.entries;
        self.index.insert_unique(hash, (entries.len() - 1) as u32, |&i| entries[i as usize].2);
    }

    fn take(&mut self) -> KeySet {
        std::mem::take(self)
    }
}

impl Default for Side {
    fn default() -> Self {
        Self {
            arena: Vec::new(),
            garbage: 0,
            rows: Vec::new(),
            free_rows: Vec::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            row_index: HashTable::new(),
            group_index: HashTable::new(),
            expiry: BTreeMap::new(),
            live: 0,
            dirty: KeySet::default(),
            track_dirty: true,
        }
    }
}

impl Side {
    fn row_bytes(&self, id: u32) -> &[u8] {
        let r = &self.rows[id as usize];
        &self.arena[r.off as usize..r.off as usize + r.len as usize]
    }

    fn group_bytes(&self, id: u32) -> &[u8] {
        let g = &self.groups[id as usize];
        &self.arena[g.off as usize..g.off as usize + g.len as usize]
    }

    /// The id of a row with these bytes (`hash` of them).
    fn find_row(&self, hash: u64, row: &[u8]) -> Option<u32> {
        let hi = hash_hi(hash);
        self.row_index.find(slot_hash(hi), |&(id, h)| h == hi && bytes_eq(self.row_bytes(id), row)).map(|e| e.0)
    }

    fn find_group(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let hi = hash_hi(hash);
        self.group_index.find(slot_hash(hi), |&(id, h)| h == hi && bytes_eq(self.group_bytes(id), key)).map(|e| e.0)
    }

    /// The rows of the group with this key.
    fn group_rows(&self, hash: u64, key: &[u8]) -> GroupRows<'_> {
        let head = self.find_group(hash, key).map_or(NONE, |g| self.groups[g as usize].head);
        GroupRows { side: self, next: head }
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> (u64, u32) {
        let off = self.arena.len() as u64;
        self.arena.extend_from_slice(bytes);
        (off, bytes.len() as u32)
    }

    /// Records that the rows of group `g` changed.
    #[inline]
    fn mark_dirty(&mut self, g: u32) {
        if !self.track_dirty {
            return;
        }
        let slot = &mut self.groups[g as usize];
        if !slot.dirty {
            slot.dirty = true;
            let (off, len, hash) = (slot.off as usize, slot.len as usize, slot.hash);
            self.dirty.insert(hash, &self.arena[off..off + len]);
        }
    }

    /// Takes the changed keys and clears the flags.
    fn take_dirty(&mut self) -> KeySet {
        self.groups.iter_mut().for_each(|g| g.dirty = false);
        self.dirty.take()
    }

    /// Adds a new distinct row (not present) under `key`.
    fn insert(&mut self, key_hash: u64, key: &[u8], row_hash: u64, row: &[u8], info: RowInfo, track_expiry: bool) {
        let group = match self.find_group(key_hash, key) {
            Some(g) => g,
            None => {
                let (off, len) = self.push_bytes(key);
                let slot = GroupSlot { off, len, hash: key_hash, head: NONE, generation: 0, dirty: false };
                let g = match self.free_groups.pop() {
                    Some(g) => {
                        let generation = self.groups[g as usize].generation;
                        self.groups[g as usize] = GroupSlot { generation, ..slot };
                        g
                    }
                    None => {
                        self.groups.push(slot);
                        (self.groups.len() - 1) as u32
                    }
                };
                let hi = hash_hi(key_hash);
                self.group_index.insert_unique(slot_hash(hi), (g, hi), |&(_, h)| slot_hash(h));
                g
            }
        };
        self.mark_dirty(group);
        let (off, len) = self.push_bytes(row);
        let head = self.groups[group as usize].head;
        let slot = RowSlot { off, len, hash: row_hash, group, prev: NONE, next: head, info };
        let id = match self.free_rows.pop() {
            Some(id) => {
                self.rows[id as usize] = slot;
                id
            }
            None => {
                self.rows.push(slot);
                (self.rows.len() - 1) as u32
            }
        };
        if head != NONE {
            self.rows[head as usize].prev = id;
        }
        self.groups[group as usize].head = id;
        let hi = hash_hi(row_hash);
        self.row_index.insert_unique(slot_hash(hi), (id, hi), |&(_, h)| slot_hash(h));
        self.live += 1;
        if track_expiry && info.ts != i64::MAX {
            let generation = self.groups[group as usize].generation;
            self.expiry.entry(info.ts).or_default().push((group, generation));
        }
    }

    /// Removes row `id`.
    fn remove(&mut self, id: u32) {
        let r = self.rows[id as usize];
        self.mark_dirty(r.group);
        if let Ok(e) = self.row_index.find_entry(slot_hash(hash_hi(r.hash)), |&(x, _)| x == id) {
            e.remove();
        }
        if r.prev != NONE {
            self.rows[r.prev as usize].next = r.next;
        } else {
            self.groups[r.group as usize].head = r.next;
        }
        if r.next != NONE {
            self.rows[r.next as usize].prev = r.prev;
        }
        self.garbage += r.len as usize;
        self.rows[id as usize].len = 0;
        self.free_rows.push(id);
        self.live -= 1;
        if self.groups[r.group as usize].head == NONE {
            let g = r.group;
            let hash = self.groups[g as usize].hash;
            if let Ok(e) = self.group_index.find_entry(slot_hash(hash_hi(hash)), |&(x, _)| x == g) {
                e.remove();
            }
            let slot = &mut self.groups[g as usize];
            self.garbage += slot.len as usize;
            slot.len = 0;
            slot.generation = slot.generation.wrapping_add(1);
            slot.dirty = false;
            self.free_groups.push(g);
        }
        if self.garbage >= COMPACT_MIN && self.garbage * 2 >= self.arena.len() {
            self.compact();
        }
    }

    /// Sets the state of a present row; a multiplicity of zero removes it.
    fn update(&mut self, id: u32, info: RowInfo) {
        if info.mult == 0 {
            self.remove(id);
        } else {
            self.mark_dirty(self.rows[id as usize].group);
            self.rows[id as usize].info = info;
        }
    }

    /// Appends the rows of every key (`full`) or of the keys changed since the last snapshot.
    fn snapshot(&mut self, full: bool, out: &mut Enc) {
        let dirty = self.take_dirty();
        let keys: Vec<(u64, &[u8])> = if full {
            self.group_index.iter().map(|&(g, _)| (self.groups[g as usize].hash, self.group_bytes(g))).collect()
        } else {
            (0..dirty.entries.len()).map(|i| (dirty.entries[i].2, dirty.get(i))).collect()
        };
        out.u32(keys.len() as u32);
        for (hash, key) in keys {
            out.bytes(key);
            let rows: Vec<(u32, &[u8], RowInfo)> = self.group_rows(hash, key).collect();
            out.u32(rows.len() as u32);
            for (_, bytes, info) in rows {
                out.bytes(bytes);
                out.i64(info.mult);
                out.i64(info.matches);
                out.i64(info.ts);
            }
        }
    }

    /// Replaces the rows of the keys in a snapshot that `owns` assigns to this worker.
    fn restore(
        &mut self,
        d: &mut Dec<'_>,
        key_conv: &RowConverter,
        hasher: &ahash::RandomState,
        owns: Owns<'_>,
        track_expiry: bool,
    ) -> Result<()> {
        let n = d.u32()? as usize;
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            let key = d.bytes()?;
            let mut rows = Vec::new();
            for _ in 0..d.u32()? {
                let bytes = d.bytes()?;
                rows.push((bytes, RowInfo { mult: d.i64()?, matches: d.i64()?, ts: d.i64()? }));
            }
            groups.push((key, rows));
        }
        let parser = key_conv.parser();
        let cols = key_conv.convert_rows(groups.iter().map(|(k, _)| parser.parse(k)))?;
        let mine = owns(&cols, n)?;
        for ((key, rows), keep) in groups.into_iter().zip(mine) {
            if !keep {
                continue;
            }
            let key_hash = hasher.hash_one(key);
            let old: Vec<u32> = self.group_rows(key_hash, key).map(|(id, ..)| id).collect();
            for id in old {
                self.remove(id);
            }
            for (bytes, info) in rows {
                self.insert(key_hash, key, hasher.hash_one(bytes), bytes, info, track_expiry);
            }
        }
        Ok(())
    }

    /// Rewrites the arena without the bytes of removed rows and keys (freed slots have length 0).
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for r in self.rows.iter_mut() {
            let off = arena.len() as u64;
            arena.extend_from_slice(&self.arena[r.off as usize..r.off as usize + r.len as usize]);
            r.off = off;
        }
        for g in self.groups.iter_mut() {
            let off = arena.len() as u64;
            arena.extend_from_slice(&self.arena[g.off as usize..g.off as usize + g.len as usize]);
            g.off = off;
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// Drops every row with an event time below `bound`; returns how many.
    fn expire(&mut self, bound: i64) -> usize {
        let mut freed = 0;
        while let Some(entry) = self.expiry.first_entry() {
            if *entry.key() >= bound {
                break;
            }
            for (g, generation) in entry.remove() {
                if self.groups.get(g as usize).is_none_or(|s| s.generation != generation || s.head == NONE) {
                    continue;
                }
                let mut id = self.groups[g as usize].head;
                while id != NONE {
                    let next = self.rows[id as usize].next;
                    if self.rows[id as usize].info.ts < bound {
                        self.remove(id);
                        freed += 1;
                        // The group is gone with its last row (and its slot may be reused).
                        if self.groups[g as usize].generation != generation {
                            break;
                        }
                    }
                    id = next;
                }
            }
        }
        freed
    }
}

/// Iterates the rows of one group: (row id, bytes, state).
struct GroupRows<'a> {
    side: &'a Side,
    next: u32,
}

impl<'a> Iterator for GroupRows<'a> {
    type Item = (u32, &'a [u8], RowInfo);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == NONE {
            return None;
        }
        let id = self.next;
        let r = &self.side.rows[id as usize];
        self.next = r.next;
        Some((id, self.side.row_bytes(id), r.info))
    }
}

/// One row of a side's change in an epoch, consolidated: where its bytes are, its summed
/// multiplicity and event time, and the hashes of its row and key bytes.
#[derive(Clone, Copy)]
struct DeltaRow {
    batch: u32,
    row: u32,
    diff: i64,
    ts: i64,
    row_hash: u64,
    key_hash: u64,
}

/// A change to one side, consolidated per distinct row; the bytes stay in the encoded batches.
struct Delta {
    rows: Vec<Rows>,
    keys: Vec<Rows>,
    /// Rows with a non-null key.
    entries: Vec<DeltaRow>,
    /// Rows with a null key (they never match).
    null_keys: Vec<DeltaRow>,
}

impl Delta {
    fn row(&self, e: &DeltaRow) -> &[u8] {
        self.rows[e.batch as usize].row(e.row as usize).data()
    }

    fn key(&self, e: &DeltaRow) -> &[u8] {
        self.keys[e.batch as usize].row(e.row as usize).data()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.null_keys.is_empty()
    }
}

/// Watermarks an epoch is processed under.
#[derive(Clone, Copy, Debug)]
pub struct JoinWatermarks {
    /// Left rows with an event time below this are late (dropped).
    pub left_late: i64,
    /// Right rows with an event time below this are late.
    pub right_late: i64,
}

impl Default for JoinWatermarks {
    fn default() -> Self {
        Self { left_late: NO_WATERMARK, right_late: NO_WATERMARK }
    }
}

/// What an epoch of the join produced besides its output.
#[derive(Debug, Default)]
pub struct JoinEpochStats {
    /// Rows dropped because they arrived behind their side's watermark.
    pub late_rows: usize,
}

/// Accumulates candidate (left, right) pairs as row bytes.
struct Pairs {
    left: Vec<u8>,
    left_ends: Vec<usize>,
    right: Vec<u8>,
    right_ends: Vec<usize>,
    weights: Vec<i64>,
    /// For each pair: the touched left / right row whose match count it changes, and by how
    /// much (the other row's multiplicity) if the pair passes the conditions.
    left_touch: Vec<Touch>,
    right_touch: Vec<Touch>,
    /// Whether the touches are kept (outer joins).
    track: bool,
}

type Touch = Option<(u32, i64)>;

impl Pairs {
    fn with_capacity(n: usize, track: bool) -> Self {
        Self {
            left: Vec::with_capacity(n * 32),
            left_ends: Vec::with_capacity(n),
            right: Vec::with_capacity(n * 32),
            right_ends: Vec::with_capacity(n),
            weights: Vec::with_capacity(n),
            left_touch: Vec::new(),
            right_touch: Vec::new(),
            track,
        }
    }

    fn push(&mut self, l: &[u8], r: &[u8], w: i64, lt: Touch, rt: Touch) {
        self.left.extend_from_slice(l);
        self.left_ends.push(self.left.len());
        self.right.extend_from_slice(r);
        self.right_ends.push(self.right.len());
        self.weights.push(w);
        if self.track {
            self.left_touch.push(lt);
            self.right_touch.push(rt);
        }
    }

    fn len(&self) -> usize {
        self.weights.len()
    }
}

/// Where a touched row's bytes are: a row of the side's state, or an entry of its delta.
#[derive(Clone, Copy)]
enum Loc {
    Side(u32),
    Delta(u32),
}

/// A row whose multiplicity or match count changes in an epoch (outer joins).
struct TouchedRow {
    loc: Loc,
    /// Its id in the side's state, if it was there before the epoch.
    id: Option<u32>,
    old: Option<RowInfo>,
    dmult: i64,
    /// Change of the match count (present rows) or the full count (new rows).
    dmatches: i64,
    ts: i64,
    hash: u64,
}

/// The rows of one side touched in an epoch, found by their bytes.
#[derive(Default)]
struct Touched {
    index: HashTable<u32>,
    entries: Vec<TouchedRow>,
}

fn loc_bytes<'a>(side: &'a Side, delta: &'a Delta, loc: Loc) -> &'a [u8] {
    match loc {
        Loc::Side(id) => side.row_bytes(id),
        Loc::Delta(i) => delta.row(&delta.entries[i as usize]),
    }
}

impl Touched {
    /// The entry of the row at `loc` (hash `hash`), created with `old` state if new.
    fn touch(&mut self, side: &Side, delta: &Delta, loc: Loc, hash: u64, old: Option<(u32, RowInfo)>, ts: i64) -> u32 {
        let bytes = loc_bytes(side, delta, loc);
        let entries = &self.entries;
        if let Some(&i) = self.index.find(hash, |&i| bytes_eq(loc_bytes(side, delta, entries[i as usize].loc), bytes)) {
            return i;
        }
        let i = self.entries.len() as u32;
        self.entries.push(TouchedRow {
            loc,
            id: old.map(|o| o.0),
            old: old.map(|o| o.1),
            dmult: 0,
            dmatches: 0,
            ts,
            hash,
        });
        let entries = &self.entries;
        self.index.insert_unique(hash, i, |&j| entries[j as usize].hash);
        i
    }

    /// The changes of the null-padded copies of the touched rows (a row is padded while it has
    /// a positive multiplicity and no match), plus the rows with a null key, which never match.
    fn padding_changes<'a>(&self, side: &'a Side, delta: &'a Delta) -> Vec<(&'a [u8], i64)> {
        let mut rows: Vec<(&[u8], i64)> = Vec::new();
        for e in &self.entries {
            let (old_mult, old_matches) = e.old.map_or((0, 0), |o| (o.mult, o.matches));
            let new_mult = old_mult + e.dmult;
            let new_matches = e.old.map_or(e.dmatches, |o| o.matches + e.dmatches);
            let pad_old = if old_mult > 0 && old_matches == 0 { old_mult } else { 0 };
            let pad_new = if new_mult > 0 && new_matches == 0 { new_mult } else { 0 };
            if pad_new != pad_old {
                rows.push((loc_bytes(side, delta, e.loc), pad_new - pad_old));
            }
        }
        rows.extend(delta.null_keys.iter().map(|e| (delta.row(e), e.diff)));
        rows
    }

    /// Writes the new multiplicities and match counts into `side`.
    fn apply_to(&self, side: &mut Side, delta: &Delta, bounded: bool) {
        for e in &self.entries {
            let old = e.old.unwrap_or(RowInfo { mult: 0, matches: 0, ts: e.ts });
            let matches = if e.old.is_some() { old.matches + e.dmatches } else { e.dmatches };
            let info = RowInfo { mult: old.mult + e.dmult, matches, ts: old.ts };
            match (e.id, e.loc) {
                (Some(id), _) => side.update(id, info),
                (None, Loc::Delta(i)) if info.mult != 0 => {
                    let d = &delta.entries[i as usize];
                    side.insert(d.key_hash, delta.key(d), d.row_hash, delta.row(d), info, bounded);
                }
                _ => {}
            }
        }
    }
}

/// Applies a side's delta to its state directly (inner joins track no match counts).
fn apply_delta(side: &mut Side, delta: &Delta, bounded: bool) {
    for d in &delta.entries {
        let row = delta.row(d);
        match side.find_row(d.row_hash, row) {
            Some(id) => {
                let old = side.rows[id as usize].info;
                side.update(id, RowInfo { mult: old.mult + d.diff, ..old });
            }
            None => side.insert(
                d.key_hash,
                delta.key(d),
                d.row_hash,
                row,
                RowInfo { mult: d.diff, matches: 0, ts: d.ts },
                bounded,
            ),
        }
    }
}

/// The state of one worker's share of an incremental join.
pub struct JoinState {
    plan: Arc<JoinPlan>,
    left_schema: SchemaRef,
    right_schema: SchemaRef,
    key_conv: RowConverter,
    left_conv: RowConverter,
    right_conv: RowConverter,
    left: Side,
    right: Side,
    track_matches: bool,
    hasher: ahash::RandomState,
}

fn converter(schema: &SchemaRef) -> Result<RowConverter> {
    let fields = schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
    Ok(RowConverter::new(fields)?)
}

impl JoinState {
    /// Empty state for `plan` over inputs with the given schemas.
    pub fn new(plan: Arc<JoinPlan>, left_schema: SchemaRef, right_schema: SchemaRef) -> Result<Self> {
        let key_conv = converter(&plan.left_keys.output_schema())?;
        let left_conv = converter(&left_schema)?;
        let right_conv = converter(&right_schema)?;
        let track_matches = plan.kind.keeps_left() || plan.kind.keeps_right();
        Ok(Self {
            plan,
            left_schema,
            right_schema,
            key_conv,
            left_conv,
            right_conv,
            left: Side::default(),
            right: Side::default(),
            track_matches,
            hasher: ahash::RandomState::with_seeds(17, 19, 23, 29),
        })
    }

    /// Whether to keep track of the keys changed between snapshots (on by default). Without
    /// it only full snapshots are complete: for a pipeline that cannot checkpoint.
    pub fn track_changes(&mut self, on: bool) {
        self.left.track_dirty = on;
        self.right.track_dirty = on;
    }

    /// Distinct rows held (left, right).
    pub fn rows(&self) -> (usize, usize) {
        (self.left.live, self.right.live)
    }

    /// The rows of both inputs (`full`) or of the keys changed since the last snapshot.
    pub fn snapshot(&mut self, full: bool) -> Vec<u8> {
        let mut out = Enc::new();
        self.left.snapshot(full, &mut out);
        self.right.snapshot(full, &mut out);
        out.buf
    }

    /// Loads the keys of a snapshot that `owns` assigns to this worker (rows are routed by the
    /// join key columns), replacing what this state holds for them.
    pub fn restore(&mut self, snapshot: &[u8], owns: Owns<'_>) -> Result<()> {
        let bounded = self.plan.time_bound.is_some();
        let mut d = Dec::new(snapshot);
        self.left.restore(&mut d, &self.key_conv, &self.hasher, owns, bounded)?;
        self.right.restore(&mut d, &self.key_conv, &self.hasher, owns, bounded)?;
        if !d.is_done() {
            return Err(DataflowError::Internal("corrupt state snapshot (trailing bytes)".into()));
        }
        // Restoring is not a change to checkpoint again.
        self.left.take_dirty();
        self.right.take_dirty();
        Ok(())
    }

    fn delta(&self, batches: &[DiffBatch], left: bool, late: i64, stats: &mut JoinEpochStats) -> Result<Delta> {
        let (keys_fn, conv) =
            if left { (&self.plan.left_keys, &self.left_conv) } else { (&self.plan.right_keys, &self.right_conv) };
        let ts_col = self.plan.time_bound.as_ref().map(|b| if left { b.left_column } else { b.right_column });
        let mut rows_of = Vec::with_capacity(batches.len());
        let mut keys_of = Vec::with_capacity(batches.len());
        // Every row in order, with whether its key is null.
        let mut all: Vec<(DeltaRow, bool)> = Vec::with_capacity(batches.iter().map(DiffBatch::num_rows).sum());
        for b in batches {
            if b.num_rows() == 0 {
                continue;
            }
            let keys = keys_fn.eval(&b.data)?;
            let key_rows: Rows = self.key_conv.convert_columns(keys.columns())?;
            let rows: Rows = conv.convert_columns(b.data.columns())?;
            let has_nulls = keys.columns().iter().any(|c| c.null_count() > 0);
            let ts: Option<Int64Array> = match ts_col {
                Some(c) => Some(event_time_ms(b.data.column(c))?),
                None => None,
            };
            let batch = rows_of.len() as u32;
            for i in 0..b.num_rows() {
                let t = match &ts {
                    Some(ts) if ts.is_valid(i) => ts.value(i),
                    _ => i64::MAX,
                };
                if t != i64::MAX && t < late {
                    stats.late_rows += 1;
                    continue;
                }
                let null_key = has_nulls && keys.columns().iter().any(|c| c.is_null(i));
                let row_hash = self.hasher.hash_one(rows.row(i).data());
                let key_hash = self.hasher.hash_one(key_rows.row(i).data());
                all.push((DeltaRow { batch, row: i as u32, diff: b.diff(i), ts: t, row_hash, key_hash }, null_key));
            }
            rows_of.push(rows);
            keys_of.push(key_rows);
        }
        // Consolidate equal rows.
        let bytes = |e: &DeltaRow| rows_of[e.batch as usize].row(e.row as usize).data();
        // Sized for distinct rows, the usual case: neither grows (and rehashes) row by row.
        let mut entries: Vec<DeltaRow> = Vec::with_capacity(all.len());
        let mut null_keys: Vec<DeltaRow> = Vec::new();
        let mut index: HashTable<u32> = HashTable::with_capacity(all.len());
        let mut null_index: HashTable<u32> = HashTable::new();
        for (e, null_key) in all {
            let (list, table) = if null_key { (&mut null_keys, &mut null_index) } else { (&mut entries, &mut index) };
            let row = bytes(&e);
            match table.find(e.row_hash, |&j| bytes_eq(bytes(&list[j as usize]), row)) {
                Some(&j) => list[j as usize].diff += e.diff,
                None => {
                    let j = list.len() as u32;
                    list.push(e);
                    table.insert_unique(e.row_hash, j, |&x| list[x as usize].row_hash);
                }
            }
        }
        entries.retain(|e| e.diff != 0);
        null_keys.retain(|e| e.diff != 0);
        Ok(Delta { rows: rows_of, keys: keys_of, entries, null_keys })
    }

    /// Applies one epoch of changes to both inputs; returns the change of the join's output.
    pub fn apply(
        &mut self,
        dl: &[DiffBatch],
        dr: &[DiffBatch],
        wm: JoinWatermarks,
        stats: &mut JoinEpochStats,
    ) -> Result<Vec<DiffBatch>> {
        let dl = self.delta(dl, true, wm.left_late, stats)?;
        let dr = self.delta(dr, false, wm.right_late, stats)?;
        if dl.is_empty() && dr.is_empty() {
            return Ok(Vec::new());
        }
        let track = self.track_matches;
        // At least one candidate per changed row in the common case (a key match each).
        let mut pairs = Pairs::with_capacity(dl.entries.len() + dr.entries.len(), track);
        let mut tl = Touched::default();
        let mut tr = Touched::default();
        // The touched entry of each delta row (outer joins).
        let mut tl_of: Vec<u32> = Vec::new();
        let mut tr_of: Vec<u32> = Vec::new();

        // dL ⋈ R (old R): each left delta row against the right state.
        for (i, e) in dl.entries.iter().enumerate() {
            let (l, k) = (dl.row(e), dl.key(e));
            // (Inner joins need no per-row state here: `apply_delta` finds the row once.)
            let old = if track {
                self.left.find_row(e.row_hash, l).map(|id| (id, self.left.rows[id as usize].info))
            } else {
                None
            };
            let li = if track {
                let loc = old.map_or(Loc::Delta(i as u32), |(id, _)| Loc::Side(id));
                let li = tl.touch(&self.left, &dl, loc, e.row_hash, old, e.ts);
                tl.entries[li as usize].dmult += e.diff;
                tl_of.push(li);
                li
            } else {
                0
            };
            for (rid, r, info) in self.right.group_rows(e.key_hash, k) {
                // A new left row's count is its matches in old R; a present row's count
                // already includes them. The right row's count moves by the left change.
                let (lt, rt) = if track {
                    let rh = self.right.rows[rid as usize].hash;
                    let ri = tr.touch(&self.right, &dr, Loc::Side(rid), rh, Some((rid, info)), info.ts);
                    (old.is_none().then_some((li, info.mult)), Some((ri, e.diff)))
                } else {
                    (None, None)
                };
                pairs.push(l, r, e.diff * info.mult, lt, rt);
            }
        }
        // L ⋈ dR (old L).
        for (j, e) in dr.entries.iter().enumerate() {
            let (r, k) = (dr.row(e), dr.key(e));
            let old = if track {
                self.right.find_row(e.row_hash, r).map(|id| (id, self.right.rows[id as usize].info))
            } else {
                None
            };
            let ri = if track {
                let loc = old.map_or(Loc::Delta(j as u32), |(id, _)| Loc::Side(id));
                let ri = tr.touch(&self.right, &dr, loc, e.row_hash, old, e.ts);
                tr.entries[ri as usize].dmult += e.diff;
                tr_of.push(ri);
                ri
            } else {
                0
            };
            for (lid, l, info) in self.left.group_rows(e.key_hash, k) {
                let (lt, rt) = if track {
                    let lh = self.left.rows[lid as usize].hash;
                    let li = tl.touch(&self.left, &dl, Loc::Side(lid), lh, Some((lid, info)), info.ts);
                    (Some((li, e.diff)), old.is_none().then_some((ri, info.mult)))
                } else {
                    (None, None)
                };
                pairs.push(l, r, info.mult * e.diff, lt, rt);
            }
        }
        // dL ⋈ dR: the right delta ordered by key hash.
        if !dl.entries.is_empty() && !dr.entries.is_empty() {
            let mut by_key: Vec<(u64, u32)> =
                dr.entries.iter().enumerate().map(|(j, e)| (e.key_hash, j as u32)).collect();
            by_key.sort_unstable();
            for (i, el) in dl.entries.iter().enumerate() {
                let (l, k) = (dl.row(el), dl.key(el));
                let from = by_key.partition_point(|&(h, _)| h < el.key_hash);
                for &(h, j) in &by_key[from..] {
                    if h != el.key_hash {
                        break;
                    }
                    let er = &dr.entries[j as usize];
                    if !bytes_eq(dr.key(er), k) {
                        continue;
                    }
                    // Only rows new in this epoch count changes of the other side here: a
                    // present row already paired with them above.
                    let (lt, rt) = if track {
                        let (li, ri) = (tl_of[i], tr_of[j as usize]);
                        let l_new = tl.entries[li as usize].old.is_none();
                        let r_new = tr.entries[ri as usize].old.is_none();
                        (l_new.then_some((li, er.diff)), r_new.then_some((ri, el.diff)))
                    } else {
                        (None, None)
                    };
                    pairs.push(l, dr.row(er), el.diff * er.diff, lt, rt);
                }
            }
        }

        let mut out = Vec::new();
        // Materialize the candidates, evaluate the extra conditions.
        if pairs.len() > 0 {
            let batch = self.pair_batch(&pairs)?;
            let mask = match &self.plan.filter {
                Some(f) => Some(f.eval(&batch)?),
                None => None,
            };
            let pass = |i: usize| mask.as_ref().is_none_or(|m| m.value(i));
            if track {
                for i in 0..pairs.len() {
                    if !pass(i) {
                        continue;
                    }
                    if let Some((li, gain)) = pairs.left_touch[i] {
                        tl.entries[li as usize].dmatches += gain;
                    }
                    if let Some((ri, gain)) = pairs.right_touch[i] {
                        tr.entries[ri as usize].dmatches += gain;
                    }
                }
            }
            let diffs = Int64Array::from(std::mem::take(&mut pairs.weights));
            let all = DiffBatch::with_diffs(batch, diffs)?;
            let kept = match &mask {
                Some(m) => all.filter(m)?,
                None => all,
            };
            if kept.num_rows() > 0 {
                out.push(kept);
            }
        }

        // Null-padded rows whose presence changes.
        if self.plan.kind.keeps_left() {
            let rows = tl.padding_changes(&self.left, &dl);
            if !rows.is_empty() {
                out.push(self.padded(&rows, true)?);
            }
        }
        if self.plan.kind.keeps_right() {
            let rows = tr.padding_changes(&self.right, &dr);
            if !rows.is_empty() {
                out.push(self.padded(&rows, false)?);
            }
        }

        // Update the state.
        let bounded = self.plan.time_bound.is_some();
        if track {
            tl.apply_to(&mut self.left, &dl, bounded);
            tr.apply_to(&mut self.right, &dr, bounded);
        } else {
            apply_delta(&mut self.left, &dl, bounded);
            apply_delta(&mut self.right, &dr, bounded);
        }
        Ok(out)
    }

    /// Frees rows that can no longer match or be retracted in time, given the watermarks of
    /// the two inputs as of the last processed epoch. Returns the rows freed.
    pub fn expire(&mut self, left_wm: i64, right_wm: i64) -> usize {
        let Some(b) = &self.plan.time_bound else { return 0 };
        if left_wm == NO_WATERMARK || right_wm == NO_WATERMARK {
            return 0;
        }
        // A left row with time t matches right rows with time in [t + lower, t + upper]: once
        // the right watermark passes t + upper (and the left one passes t, so a retraction of
        // the row would be late), nothing can change its output any more.
        let left_bound = left_wm.min(right_wm.saturating_sub(b.upper_ms));
        let right_bound = right_wm.min(left_wm.saturating_add(b.lower_ms));
        self.left.expire(left_bound) + self.right.expire(right_bound)
    }

    fn pair_batch(&self, pairs: &Pairs) -> Result<RecordBatch> {
        let lp = self.left_conv.parser();
        let rp = self.right_conv.parser();
        let mut start = 0;
        let left_rows = pairs.left_ends.iter().map(|&end| {
            let r = lp.parse(&pairs.left[start..end]);
            start = end;
            r
        });
        let mut cols: Vec<ArrayRef> = self.left_conv.convert_rows(left_rows)?;
        let mut start = 0;
        let right_rows = pairs.right_ends.iter().map(|&end| {
            let r = rp.parse(&pairs.right[start..end]);
            start = end;
            r
        });
        cols.extend(self.right_conv.convert_rows(right_rows)?);
        self.finish(cols, pairs.len())
    }

    fn padded(&self, rows: &[(&[u8], i64)], left: bool) -> Result<DiffBatch> {
        let n = rows.len();
        let (conv, other) =
            if left { (&self.left_conv, &self.right_schema) } else { (&self.right_conv, &self.left_schema) };
        let p = conv.parser();
        let present = conv.convert_rows(rows.iter().map(|(r, _)| p.parse(r)))?;
        let nulls: Vec<ArrayRef> = other.fields().iter().map(|f| new_null_array(f.data_type(), n)).collect();
        let cols =
            if left { present.into_iter().chain(nulls).collect() } else { nulls.into_iter().chain(present).collect() };
        let batch = self.finish(cols, n)?;
        DiffBatch::with_diffs(batch, Int64Array::from(rows.iter().map(|(_, d)| *d).collect::<Vec<_>>()))
    }

    fn finish(&self, cols: Vec<ArrayRef>, n: usize) -> Result<RecordBatch> {
        let schema = self.plan.output_schema.clone();
        if cols.len() != schema.fields().len() {
            return Err(DataflowError::Internal(format!(
                "join produced {} columns for an output of {}",
                cols.len(),
                schema.fields().len()
            )));
        }
        Ok(RecordBatch::try_new_with_options(schema, cols, &RecordBatchOptions::new().with_row_count(Some(n)))?)
    }
}
