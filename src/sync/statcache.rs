//! The stat cache: for each synced root (and filter set), one index record
//! per directory, holding the stat, digest and blob generation of each
//! regular file directly in it, sorted by name.
//!
//! One record per directory, not per file: a rescan of 100,000 unchanged
//! files in 1,000 directories reads 1,000 records (each once, by whichever
//! walker thread meets the directory first) instead of making 100,000
//! index lookups, and writes back only the records of directories where
//! something changed.
//!
//! A record also says which blob generation of the store its digest was
//! known to be stored in (`Store::blob_generation`): while no blob has been
//! removed since (no gc sweep, no quarantine), the blob is there and need
//! not be looked for.
//!
//! Record layout: version byte `1`, then per file: name length (u16 LE),
//! name, dev, ino, size, mtime ns, ctime ns (u64 LE each), mode (u32 LE),
//! racy (u8), generation (u64 LE), digest (32 bytes). A record that does not
//! decode is treated as absent (its files are hashed again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::scan::Meta;
use crate::hash::Digest;
use crate::index::Index;

const VERSION: u8 = 1;
const FIXED: usize = 8 * 5 + 4 + 1 + 8 + 32;

/// What the cache holds for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileRec {
    pub meta: Meta,
    /// Stamped so close to the scan that recorded it that a later write in
    /// the same clock tick could keep every field: not to be trusted.
    pub racy: bool,
    /// The store's blob generation when `digest` was known to be stored.
    pub generation: u64,
    pub digest: Digest,
}

/// One directory's files, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DirRec {
    pub files: Vec<(Vec<u8>, FileRec)>,
}

impl DirRec {
    pub fn get(&self, name: &[u8]) -> Option<&FileRec> {
        self.files
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .ok()
            .map(|i| &self.files[i].1)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + self.files.len() * (FIXED + 12));
        v.push(VERSION);
        for (name, r) in &self.files {
            let len = u16::try_from(name.len()).expect("names are at most 255 bytes");
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(name);
            let m = &r.meta;
            for x in [m.dev, m.ino, m.size, m.mtime_ns as u64, m.ctime_ns as u64] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.extend_from_slice(&m.mode.to_le_bytes());
            v.push(r.racy as u8);
            v.extend_from_slice(&r.generation.to_le_bytes());
            v.extend_from_slice(r.digest.as_bytes());
        }
        v
    }

    /// None: not a record this version wrote (or damaged).
    pub fn decode(b: &[u8]) -> Option<DirRec> {
        let (&version, mut rest) = b.split_first()?;
        if version != VERSION {
            return None;
        }
        let mut files = Vec::new();
        while !rest.is_empty() {
            let len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let name = rest.get(2..2 + len)?.to_vec();
            let f = rest.get(2 + len..2 + len + FIXED)?;
            rest = &rest[2 + len + FIXED..];
            let u = |i: usize| u64::from_le_bytes(f[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let meta = Meta {
                dev: u(0),
                ino: u(1),
                size: u(2),
                mtime_ns: u(3) as i64,
                ctime_ns: u(4) as i64,
                mode: u32::from_le_bytes(f[40..44].try_into().expect("4 bytes")),
            };
            let generation = u64::from_le_bytes(f[45..53].try_into().expect("8 bytes"));
            files.push((
                name,
                FileRec {
                    meta,
                    racy: f[44] == 1,
                    generation,
                    digest: Digest::from_slice(&f[53..85])?,
                },
            ));
        }
        // Sorted and unique, or it is not ours.
        if files.windows(2).any(|w| w[0].0 >= w[1].0) {
            return None;
        }
        Some(DirRec { files })
    }

    /// Insert or replace each of `recs`.
    pub fn upsert(&mut self, recs: impl IntoIterator<Item = (Vec<u8>, FileRec)>) {
        for (name, r) in recs {
            match self
                .files
                .binary_search_by(|(n, _)| n.as_slice().cmp(&name))
            {
                Ok(i) => self.files[i].1 = r,
                Err(i) => self.files.insert(i, (name, r)),
            }
        }
    }

    /// Remove `name`; whether it was there.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        match self.files.binary_search_by(|(n, _)| n.as_slice().cmp(name)) {
            Ok(i) => {
                self.files.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

/// The index key of a directory's record: root id ‖ path relative to the
/// root (empty for the root itself).
pub(crate) fn key(root_id: &[u8; 16], rel_dir: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + rel_dir.len());
    k.extend_from_slice(root_id);
    k.extend_from_slice(rel_dir);
    k
}

/// The records of one root, loaded on first use and shared by the walker
/// threads.
pub(crate) struct StatCache<'a> {
    index: &'a Index,
    root_id: [u8; 16],
    loaded: Mutex<HashMap<Vec<u8>, Arc<DirRec>>>,
}

impl<'a> StatCache<'a> {
    pub fn new(index: &'a Index, root_id: &[u8; 16]) -> StatCache<'a> {
        StatCache {
            index,
            root_id: *root_id,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The record of `rel_dir` (empty if there is none).
    pub fn dir(&self, rel_dir: &[u8]) -> crate::index::Result<Arc<DirRec>> {
        if let Some(r) = lock(&self.loaded).get(rel_dir) {
            return Ok(r.clone());
        }
        let rec = self
            .index
            .stat_get(&key(&self.root_id, rel_dir))?
            .and_then(|b| DirRec::decode(&b))
            .unwrap_or_default();
        let rec = Arc::new(rec);
        lock(&self.loaded).insert(rel_dir.to_vec(), rec.clone());
        Ok(rec)
    }

    /// Write back what a walk found. `found` holds, by directory, the
    /// record of every file the walk examined. With `complete` (a full
    /// walk), a directory's record becomes exactly what was found and the
    /// records of directories not found are removed; otherwise what was
    /// found is merged into the existing records. Only records that change
    /// are written.
    pub fn store(
        &self,
        found: HashMap<Vec<u8>, Vec<(Vec<u8>, FileRec)>>,
        complete: bool,
    ) -> crate::index::Result<()> {
        let mut ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        if complete {
            for k in self.index.stat_keys(&self.root_id)? {
                if !found.contains_key(&k[16..]) {
                    ops.push((k, None));
                }
            }
        }
        for (dir, mut recs) in found {
            let old = self.dir(&dir)?;
            let new = if complete {
                recs.sort_by(|a, b| a.0.cmp(&b.0));
                recs.dedup_by(|a, b| a.0 == b.0);
                DirRec { files: recs }
            } else {
                let mut d = (*old).clone();
                d.upsert(recs);
                d
            };
            if new != *old {
                ops.push((key(&self.root_id, &dir), Some(new.encode())));
            }
        }
        self.index.stat_apply(ops)
    }

    /// Forget the paths (relative to the root) that a change set removed:
    /// a file's record, or every record at and under a directory.
    pub fn forget<'p>(
        &self,
        paths: impl IntoIterator<Item = &'p [u8]>,
    ) -> crate::index::Result<()> {
        let mut changed: HashMap<Vec<u8>, DirRec> = HashMap::new();
        let mut ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for p in paths {
            let (dir, name) = match p.iter().rposition(|&c| c == b'/') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (&b""[..], p),
            };
            let rec = match changed.get_mut(dir) {
                Some(r) => r,
                None => {
                    let r = (*self.dir(dir)?).clone();
                    changed.entry(dir.to_vec()).or_insert(r)
                }
            };
            rec.remove(name);
            // A directory that was removed: its records and its subtree's.
            let k = key(&self.root_id, p);
            if self.index.stat_get(&k)?.is_some() {
                ops.push((k.clone(), None));
            }
            let mut under = k;
            under.push(b'/');
            ops.extend(self.index.stat_keys(&under)?.into_iter().map(|k| (k, None)));
        }
        for (dir, rec) in changed {
            let k = key(&self.root_id, &dir);
            if rec.files.is_empty() {
                ops.push((k, None));
            } else {
                ops.push((k, Some(rec.encode())));
            }
        }
        self.index.stat_apply(ops)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> FileRec {
        FileRec {
            meta: Meta {
                dev: i,
                ino: i + 1,
                size: i + 2,
                mtime_ns: -(i as i64),
                ctime_ns: i as i64 * 7,
                mode: 0o100644,
            },
            racy: i % 2 == 0,
            generation: i * 3,
            digest: Digest::of(&i.to_le_bytes()),
        }
    }

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let mut d = DirRec::default();
        d.upsert([(b"b".to_vec(), rec(2)), (b"a".to_vec(), rec(1))]);
        d.upsert([(vec![0xff; 255], rec(9)), (b"b".to_vec(), rec(3))]);
        assert_eq!(d.files.len(), 3);
        assert_eq!(d.get(b"b"), Some(&rec(3)));
        let b = d.encode();
        assert_eq!(DirRec::decode(&b), Some(d.clone()));
        // A cut inside a file's fields is refused; one between files reads
        // as fewer files (which are then hashed again): never as other data.
        for cut in 0..b.len() {
            if let Some(got) = DirRec::decode(&b[..cut]) {
                assert!(d.files.starts_with(&got.files), "cut at {cut}");
            }
        }
        let mut other = b.clone();
        other[0] = 2;
        assert_eq!(DirRec::decode(&other), None);
        assert!(d.remove(b"a") && !d.remove(b"a"));
        assert_eq!(DirRec::decode(&d.encode()), Some(d));
    }
}
