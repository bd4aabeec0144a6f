//! Compact stores of byte-encoded rows (Arrow row format): one contiguous arena instead of one
//! heap allocation per row, which keeps per-key state small for millions of keys.

use hashbrown::HashTable;

const NONE: u32 = u32::MAX;

/// The hash a table of `(id, hash_hi)` entries files an entry under: derived from the upper
/// half of the full hash, which the entry keeps, so growing the table rehashes from the table
/// alone (no visit to the row's bytes or slot, a cache miss each) and a probe rejects other
/// rows without touching them.
#[inline]
pub fn slot_hash(hi: u32) -> u64 {
    u64::from(hi).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The half of a 64-bit hash kept next to a table entry (see [`slot_hash`]).
#[inline]
pub fn hash_hi(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// `a == b` for byte rows and keys of a few dozen bytes: word loads instead of a call to
/// `memcmp`, which cost more than the comparison itself for rows this short.
#[inline]
pub fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    if n >= 8 {
        if n > 64 {
            return a == b;
        }
        // Whole words from the front, then one (possibly overlapping) word ending at the end.
        let mut at = 0;
        while at + 8 < n {
            if word(a, at) != word(b, at) {
                return false;
            }
            at += 8;
        }
        word(a, n - 8) == word(b, n - 8)
    } else if n >= 4 {
        let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
        half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4)
    } else {
        a.iter().zip(b).all(|(x, y)| x == y)
    }
}

/// Compacts an arena when at least this many bytes are garbage and they are half of it.
const COMPACT_MIN: usize = 1 << 20;

/// An optional byte row per dense slot id (e.g. the last output row emitted for each group).
#[derive(Default)]
pub struct RowSlots {
    arena: Vec<u8>,
    slots: Vec<(u64, u32)>,
    garbage: usize,
}

impl RowSlots {
    /// The row in `slot`, if any.
    pub fn get(&self, slot: usize) -> Option<&[u8]> {
        match self.slots.get(slot) {
            Some(&(off, len)) if len != NONE => Some(&self.arena[off as usize..off as usize + len as usize]),
            _ => None,
        }
    }

    /// Stores (or clears, with `None`) the row of `slot`.
    pub fn set(&mut self, slot: usize, row: Option<&[u8]>) {
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, (0, NONE));
        }
        let (off, len) = self.slots[slot];
        match row {
            Some(r) if len != NONE && len as usize == r.len() => {
                self.arena[off as usize..off as usize + r.len()].copy_from_slice(r);
            }
            Some(r) => {
                if len != NONE {
                    self.garbage += len as usize;
                }
                self.slots[slot] = (self.arena.len() as u64, r.len() as u32);
                self.arena.extend_from_slice(r);
            }
            None => {
                if len != NONE {
                    self.garbage += len as usize;
                }
                self.slots[slot] = (0, NONE);
            }
        }
        if self.garbage >= COMPACT_MIN && self.garbage * 2 >= self.arena.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for s in self.slots.iter_mut() {
            if s.1 != NONE {
                let start = arena.len() as u64;
                arena.extend_from_slice(&self.arena[s.0 as usize..s.0 as usize + s.1 as usize]);
                s.0 = start;
            }
        }
        self.arena = arena;
        self.garbage = 0;
    }
}

/// A multiset of byte rows with signed counts (the consolidated contents of a collection).
pub struct RowBag {
    /// (entry, upper half of its hash); see [`slot_hash`].
    table: HashTable<(u32, u32)>,
    /// (arena offset, length, count); count 0 marks a free entry.
    entries: Vec<(u64, u32, i64)>,
    free: Vec<u32>,
    arena: Vec<u8>,
    garbage: usize,
    hasher: ahash::RandomState,
    total: i64,
}

impl Default for RowBag {
    fn default() -> Self {
        Self {
            table: HashTable::new(),
            entries: Vec::new(),
            free: Vec::new(),
            arena: Vec::new(),
            garbage: 0,
            hasher: ahash::RandomState::with_seeds(3, 5, 7, 9),
            total: 0,
        }
    }
}

impl RowBag {
    fn bytes(&self, e: u32) -> &[u8] {
        let (off, len, _) = self.entries[e as usize];
        &self.arena[off as usize..off as usize + len as usize]
    }

    /// Adds `diff` copies of `row` (negative: removes).
    pub fn add(&mut self, row: &[u8], diff: i64) {
        if diff == 0 {
            return;
        }
        self.total += diff;
        let hi = hash_hi(self.hasher.hash_one(row));
        let hash = slot_hash(hi);
        let (entries, arena) = (&self.entries, &self.arena);
        let found = self.table.find(hash, |&(e, h)| {
            let (off, len, _) = entries[e as usize];
            h == hi && bytes_eq(&arena[off as usize..off as usize + len as usize], row)
        });
        if let Some(&(e, _)) = found {
            let c = &mut self.entries[e as usize].2;
            *c += diff;
            if *c == 0 {
                if let Ok(occ) = self.table.find_entry(hash, |&(x, _)| x == e) {
                    occ.remove();
                }
                self.garbage += self.entries[e as usize].1 as usize;
                self.free.push(e);
                if self.garbage >= COMPACT_MIN && self.garbage * 2 >= self.arena.len() {
                    self.compact();
                }
            }
            return;
        }
        let off = self.arena.len() as u64;
        self.arena.extend_from_slice(row);
        let entry = (off, row.len() as u32, diff);
        let e = match self.free.pop() {
            Some(e) => {
                self.entries[e as usize] = entry;
                e
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        self.table.insert_unique(hash, (e, hi), |&(_, h)| slot_hash(h));
    }

    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for e in self.entries.iter_mut() {
            if e.2 != 0 {
                let start = arena.len() as u64;
                arena.extend_from_slice(&self.arena[e.0 as usize..e.0 as usize + e.1 as usize]);
                e.0 = start;
            } else {
                e.0 = 0;
                e.1 = 0;
            }
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// Distinct rows present, with their counts.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], i64)> + '_ {
        self.table.iter().map(|&(e, _)| (self.bytes(e), self.entries[e as usize].2))
    }

    /// Sum of all counts.
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Number of distinct rows.
    pub fn distinct(&self) -> usize {
        self.table.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn slots_overwrite_and_compact() {
        let mut s = RowSlots::default();
        s.set(3, Some(b"abc"));
        assert_eq!(s.get(3), Some(&b"abc"[..]));
        assert_eq!(s.get(0), None);
        s.set(3, Some(b"xyz"));
        assert_eq!(s.get(3), Some(&b"xyz"[..]));
        for i in 0..200_000usize {
            s.set(i % 7, Some(format!("row-{i}").as_bytes()));
        }
        assert_eq!(s.get(199_999 % 7), Some("row-199999".as_bytes()));
        assert!(s.arena.len() < 4 * COMPACT_MIN, "compaction bounds the arena");
        s.set(3, None);
        assert_eq!(s.get(3), None);
    }

    #[test]
    fn bag_matches_a_hashmap() {
        let mut bag = RowBag::default();
        let mut model: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut x: u64 = 1;
        for _ in 0..300_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let row = format!("k{}", (x >> 40) % 5000).into_bytes();
            let diff = if (x >> 20).is_multiple_of(3) { -1 } else { 1 };
            let c = model.entry(row.clone()).or_insert(0);
            if *c + diff < 0 {
                continue;
            }
            *c += diff;
            bag.add(&row, diff);
        }
        model.retain(|_, c| *c != 0);
        let got: HashMap<Vec<u8>, i64> = bag.iter().map(|(r, c)| (r.to_vec(), c)).collect();
        assert_eq!(got, model);
        assert_eq!(bag.total(), model.values().sum::<i64>());
        assert_eq!(bag.distinct(), model.len());
    }
}
