//! The uses journal: hits are recorded here, in bulk, and moved into the
//! LRU order (`lru`, and `last_used_ms` in `entries`) only when that order
//! is read (eviction: `Index::lru_order`) or the journal grows large.
//!
//! A hit used to move its entry in the LRU order at once: three sled
//! writes (remove the old `lru` key, insert the new one, rewrite the
//! entry's record). A fully cached 1,000-task run made 3,000 of them, a
//! third of its CPU time, and the next open replayed them all from sled's
//! log. Now a hit is a 40-byte note in memory; `Index::flush` writes the
//! notes in records of at most [`PER_RECORD`] (one sled insert each), and a
//! fold applies the newest use of each key once, however many runs used
//! it since the last fold.
//!
//! | tree   | key                       | value                                   |
//! |--------|---------------------------|-----------------------------------------|
//! | `uses` | sequence number (u64 BE)  | (cache key (32) ‖ use ms (u64 LE)) × n  |
//!
//! A hint, never truth: a lost record (a crash before the flush) leaves
//! those entries at their older last use, as a lost touch always did; a
//! key that was evicted since is skipped; a use older than the entry's
//! recorded one changes nothing.

use std::collections::HashMap;

use super::{corrupt, digest_of, Index, Result};
use crate::hash::Digest;

/// Uses per journal record (4,000 bytes: sled keeps such values inline).
pub(super) const PER_RECORD: usize = 100;

/// Journaled uses after which a flush folds the journal.
pub(super) const FOLD_AFTER: u64 = 50_000;

/// The stats counter of uses journaled since the last fold.
pub(super) const C_JOURNALED: &str = "uses_journaled";

fn encode(uses: &[(Digest, u64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(uses.len() * 40);
    for (k, ms) in uses {
        v.extend_from_slice(k.as_bytes());
        v.extend_from_slice(&ms.to_le_bytes());
    }
    v
}

fn decode(v: &[u8]) -> Result<Vec<(Digest, u64)>> {
    if !v.len().is_multiple_of(40) {
        return Err(corrupt("uses", "record is not a list of 40-byte uses"));
    }
    v.chunks_exact(40)
        .map(|c| {
            let ms = u64::from_le_bytes(c[32..].try_into().expect("8 bytes"));
            Ok((digest_of("uses", &c[..32])?, ms))
        })
        .collect()
}

impl Index {
    /// Write the uses noted in memory to the journal (before a flush).
    pub(super) fn journal_uses(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending_uses.lock().expect("uses lock"));
        if pending.is_empty() {
            return Ok(());
        }
        let mut seq = match self.uses.last()? {
            Some((k, _)) => u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| corrupt("uses", "key is not a u64"))?,
            ),
            None => 0,
        };
        for chunk in pending.chunks(PER_RECORD) {
            seq += 1;
            self.uses.insert(seq.to_be_bytes(), encode(chunk))?;
        }
        let journaled = self.add(C_JOURNALED, pending.len() as i64)?;
        if journaled >= FOLD_AFTER {
            self.fold_uses()?;
        }
        Ok(())
    }

    /// Move every journaled (and noted) use into the LRU order, then empty
    /// the journal.
    pub(super) fn fold_uses(&self) -> Result<()> {
        let mut newest: HashMap<Digest, u64> = HashMap::new();
        let mut note = |k: Digest, ms: u64| {
            let m = newest.entry(k).or_insert(ms);
            *m = (*m).max(ms);
        };
        let mut records = Vec::new();
        for kv in self.uses.iter() {
            let (k, v) = kv?;
            for (key, ms) in decode(&v)? {
                note(key, ms);
            }
            records.push(k);
        }
        for (key, ms) in std::mem::take(&mut *self.pending_uses.lock().expect("uses lock")) {
            note(key, ms);
        }
        for (key, ms) in newest {
            if let Some(mut meta) = self.get(&key)? {
                self.move_in_lru(&key, &mut meta, ms)?;
            }
        }
        for k in records {
            self.uses.remove(k)?;
        }
        self.stats.insert(C_JOURNALED, &0u64.to_le_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::meta;
    use super::*;

    #[test]
    fn uses_reach_the_lru_order_only_when_it_is_read_and_the_newest_wins() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(t.path(), &t.path().join("runs")).unwrap();
        let keys: Vec<Digest> = (0..3u8).map(|i| Digest::of(&[i])).collect();
        for (i, k) in keys.iter().enumerate() {
            let mut m = meta(0, None);
            m.created_ms = 1000 + i as u64;
            m.last_used_ms = m.created_ms;
            ix.insert(k, &m).unwrap();
        }
        let order =
            |ix: &Index| -> Vec<Digest> { ix.lru_order().unwrap().map(|k| k.unwrap()).collect() };
        assert_eq!(order(&ix), keys);
        // keys[0] used twice (in two runs), keys[1] once: journaled, not moved.
        let mut m0 = ix.get(&keys[0]).unwrap().unwrap();
        ix.touch(&keys[0], &mut m0, 5000).unwrap();
        ix.flush().unwrap();
        let mut m1 = ix.get(&keys[1]).unwrap().unwrap();
        ix.touch(&keys[1], &mut m1, 4000).unwrap();
        let mut m0 = ix.get(&keys[0]).unwrap().unwrap();
        ix.touch(&keys[0], &mut m0, 6000).unwrap();
        ix.flush().unwrap();
        assert_eq!(ix.uses.len(), 2, "one record a flush");
        assert_eq!(ix.get(&keys[0]).unwrap().unwrap().last_used_ms, 1000);
        // A journaled key removed since is skipped.
        let mut m2 = ix.get(&keys[2]).unwrap().unwrap();
        ix.touch(&keys[2], &mut m2, 7000).unwrap();
        ix.remove(&keys[2]).unwrap();
        assert_eq!(order(&ix), vec![keys[1], keys[0]]);
        assert_eq!(ix.get(&keys[0]).unwrap().unwrap().last_used_ms, 6000);
        assert_eq!(ix.uses.len(), 0, "the journal is emptied");
        assert_eq!(ix.counter(C_JOURNALED).unwrap(), 0);
        assert!(ix.get(&keys[2]).unwrap().is_none());
        // An old use never moves an entry back.
        let mut m1 = ix.get(&keys[1]).unwrap().unwrap();
        m1.last_used_ms = 0;
        ix.touch(&keys[1], &mut m1, 10).unwrap();
        assert_eq!(order(&ix), vec![keys[1], keys[0]]);
        assert_eq!(ix.get(&keys[1]).unwrap().unwrap().last_used_ms, 4000);
    }

    #[test]
    fn a_large_journal_is_folded_by_the_flush_that_grows_it_past_the_limit() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(t.path(), &t.path().join("runs")).unwrap();
        let k = Digest::of(b"k");
        ix.insert(&k, &meta(0, None)).unwrap();
        let mut m = ix.get(&k).unwrap().unwrap();
        let start = m.last_used_ms;
        for i in 1..FOLD_AFTER {
            ix.touch(&k, &mut m, start + i).unwrap();
        }
        ix.flush().unwrap();
        assert_eq!(ix.get(&k).unwrap().unwrap().last_used_ms, start, "not yet");
        assert_eq!(
            ix.uses.len() as u64,
            (FOLD_AFTER - 1).div_ceil(PER_RECORD as u64)
        );
        ix.touch(&k, &mut m, start + FOLD_AFTER).unwrap();
        ix.flush().unwrap();
        assert_eq!(ix.uses.len(), 0);
        assert_eq!(
            ix.get(&k).unwrap().unwrap().last_used_ms,
            start + FOLD_AFTER
        );
    }

    #[test]
    fn a_record_of_the_wrong_length_is_corruption() {
        assert!(decode(&[0u8; 41]).is_err());
        let uses = vec![(Digest::of(b"a"), 7), (Digest::of(b"b"), u64::MAX)];
        assert_eq!(decode(&encode(&uses)).unwrap(), uses);
    }
}
