//! What reads and listings are served from when the kernel sends no open
//! or opendir (it stops sending them once dagfs answers ENOSYS: see
//! `passthrough` and `ops`): requests then name only an inode, with file
//! handle 0.
//!
//! Owns: open blob files (a few, reused across reads), snapshots of
//! generated files, and listings of live directories being read. May call:
//! nothing but std. Guarantees:
//!
//! - At most `BLOB_FILES` blob files are held open, least recently used
//!   out first, and none across a change of the store's blob generation.
//! - A generated file (`/why/…`, `/.dagfs/*`) is one snapshot for size
//!   (getattr), page cache validity (its mtime is the snapshot's time) and
//!   reads, per process: a process that reads it through (the kernel asks
//!   for its attributes at each read) sees one consistent text. A
//!   process's snapshot is replaced when that process did not touch it for
//!   `SNAPSHOT_IDLE`, or it is older than `SNAPSHOT_MAX_AGE`.
//! - A live directory's listing is taken at offset 0 and kept for the
//!   following offsets, so a reader sees no gap or duplicate; it is dropped
//!   at the end of the listing, and at most `LISTINGS` are kept.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::error::FsError;
use super::handle::Listing;
use super::inode::lock;
use crate::hash::Digest;

const BLOB_FILES: usize = 32;
const SNAPSHOT_IDLE: Duration = Duration::from_millis(20);
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(1);
const SNAPSHOTS: usize = 256;
const LISTINGS: usize = 64;

/// Open blob files, and the store's blob generation they were opened in.
#[derive(Default)]
pub struct BlobFiles(
    Mutex<VecDeque<(Digest, Arc<File>)>>,
    std::sync::atomic::AtomicU64,
);

impl BlobFiles {
    /// The open blob `d`, opening it with `open` if it is not held. When
    /// the store's blob `generation` moved on (gc or quarantine may have
    /// removed blobs), every held file is closed first: a removed blob's
    /// space returns once nothing holds it open.
    pub fn get(
        &self,
        d: &Digest,
        generation: u64,
        open: impl FnOnce() -> Result<File, FsError>,
    ) -> Result<Arc<File>, FsError> {
        {
            let mut q = lock(&self.0);
            if self.1.swap(generation, std::sync::atomic::Ordering::AcqRel) != generation {
                q.clear();
            }
            if let Some(i) = q.iter().position(|(k, _)| k == d) {
                let hit = q.remove(i).expect("index in range");
                let f = hit.1.clone();
                q.push_front(hit);
                return Ok(f);
            }
        }
        let f = Arc::new(open()?);
        let mut q = lock(&self.0);
        q.push_front((*d, f.clone()));
        q.truncate(BLOB_FILES);
        Ok(f)
    }
}

impl BlobFiles {
    /// Close every held file.
    pub fn clear(&self) {
        lock(&self.0).clear();
    }

    /// Close `d` if it is held (it was found corrupt and moved away).
    pub fn forget(&self, d: &Digest) {
        lock(&self.0).retain(|(k, _)| k != d);
    }
}

/// A generated file's text as of `at`.
pub struct Snapshot {
    pub bytes: Arc<[u8]>,
    pub at: SystemTime,
}

struct Slot {
    snap: Arc<Snapshot>,
    made: Instant,
    used: Instant,
}

/// Snapshots by generated file and process: without opens, the kernel
/// asks for a file's attributes at every read(2) and keeps its pages while
/// its mtime holds, so a process reading one through must see one snapshot
/// from its first getattr to its last read, however the text changes
/// meanwhile; another process, or the same a little later, gets a new one.
#[derive(Default)]
pub struct Snapshots(Mutex<HashMap<(String, u32), Slot>>);

impl Snapshots {
    /// The snapshot of generated file `key` for attributes asked by process
    /// `pid`: the one it is reading, else a new one made by `make`.
    pub fn get(
        &self,
        key: &str,
        pid: u32,
        make: impl FnOnce() -> Result<Vec<u8>, FsError>,
    ) -> Result<Arc<Snapshot>, FsError> {
        let now = Instant::now();
        let id = (key.to_string(), pid);
        if let Some(s) = lock(&self.0).get_mut(&id) {
            if now - s.used < SNAPSHOT_IDLE && now - s.made < SNAPSHOT_MAX_AGE {
                s.used = now;
                return Ok(s.snap.clone());
            }
        }
        let snap = Arc::new(Snapshot {
            bytes: make()?.into(),
            at: SystemTime::now(),
        });
        let mut map = lock(&self.0);
        if map.len() >= SNAPSHOTS {
            map.retain(|_, s| now - s.used < SNAPSHOT_IDLE);
        }
        let slot = Slot {
            snap: snap.clone(),
            made: now,
            used: now,
        };
        map.insert(id, slot);
        Ok(snap)
    }

    /// The snapshot a read of `key` by `pid` is served from: the one whose
    /// size the kernel holds (that process's, else the one used last),
    /// new only if there is none.
    pub fn for_read(
        &self,
        key: &str,
        pid: u32,
        make: impl FnOnce() -> Result<Vec<u8>, FsError>,
    ) -> Result<Arc<Snapshot>, FsError> {
        let now = Instant::now();
        {
            let mut map = lock(&self.0);
            let mine = map.get_mut(&(key.to_string(), pid));
            let slot = match mine {
                Some(s) => Some(s),
                None => map
                    .iter_mut()
                    .filter(|((k, _), _)| k == key)
                    .map(|(_, s)| s)
                    .max_by_key(|s| s.used),
            };
            if let Some(s) = slot.filter(|s| now - s.made < SNAPSHOT_MAX_AGE) {
                s.used = now;
                return Ok(s.snap.clone());
            }
        }
        self.get(key, pid, make)
    }

    /// The next `get` of `key` makes a new snapshot, for every process.
    pub fn forget(&self, key: &str) {
        lock(&self.0).retain(|(k, _), _| k != key);
    }
}

#[derive(Default)]
pub struct Listings(Mutex<HashMap<u64, (Arc<Listing>, Instant)>>);

impl Listings {
    /// The listing of directory `ino` being read at `offset`: a fresh one
    /// (from `list`) at offset 0 or if none is kept.
    pub fn get(
        &self,
        ino: u64,
        offset: u64,
        list: impl FnOnce() -> Result<Listing, FsError>,
    ) -> Result<Arc<Listing>, FsError> {
        if offset > 0 {
            if let Some((l, used)) = lock(&self.0).get_mut(&ino) {
                *used = Instant::now();
                return Ok(l.clone());
            }
        }
        let l = Arc::new(list()?);
        let mut map = lock(&self.0);
        if map.len() >= LISTINGS && !map.contains_key(&ino) {
            let oldest = map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k);
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(ino, (l.clone(), Instant::now()));
        Ok(l)
    }

    /// The listing of `ino` was read to its end.
    pub fn done(&self, ino: u64) {
        lock(&self.0).remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn snapshots_hold_while_read_and_renew_after_idle_or_for_others() {
        let s = Snapshots::default();
        let made = Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            Ok(format!("v{}", made.get()).into_bytes())
        };
        let a = s.get("k", 7, make).unwrap();
        let b = s.get("k", 7, make).unwrap();
        assert_eq!(&*b.bytes, b"v1", "the same reader at once: the same text");
        assert_eq!(a.at, b.at);
        assert_eq!(
            &*s.get("k", 8, make).unwrap().bytes,
            b"v2",
            "another process"
        );
        assert_eq!(
            &*s.for_read("k", 9, make).unwrap().bytes,
            b"v2",
            "the last used"
        );
        assert_eq!(&*s.for_read("k", 7, make).unwrap().bytes, b"v1", "its own");
        std::thread::sleep(SNAPSHOT_IDLE + Duration::from_millis(10));
        assert_eq!(
            &*s.for_read("k", 7, make).unwrap().bytes,
            b"v1",
            "reads never renew"
        );
        std::thread::sleep(SNAPSHOT_IDLE + Duration::from_millis(10));
        assert_eq!(&*s.get("k", 7, make).unwrap().bytes, b"v3", "idle: renewed");
        s.forget("k");
        assert_eq!(&*s.for_read("k", 8, make).unwrap().bytes, b"v4");
    }

    #[test]
    fn listings_are_kept_from_offset_zero_to_the_end() {
        use crate::fs::inode::Ino;
        use crate::fs::node::{Entries, Kind};
        let made = Cell::new(0);
        let list = || {
            made.set(made.get() + 1);
            let names = vec![(made.get().to_string().into_bytes(), Kind::File)];
            Ok(Listing {
                dot: Ino(5),
                dotdot: Ino(1),
                entries: Entries::Names(names),
            })
        };
        let l = Listings::default();
        let first = |l: Arc<Listing>| l.entry(2).unwrap().0.into_owned();
        assert_eq!(first(l.get(5, 0, list).unwrap()), b"1");
        assert_eq!(first(l.get(5, 2, list).unwrap()), b"1", "kept");
        l.done(5);
        assert_eq!(first(l.get(5, 2, list).unwrap()), b"2", "listed afresh");
        assert_eq!(first(l.get(5, 0, list).unwrap()), b"3", "offset 0: afresh");
    }

    #[test]
    fn blob_files_are_reused_and_bounded() {
        let files = BlobFiles::default();
        let opened = Cell::new(0);
        let open = || {
            opened.set(opened.get() + 1);
            File::open("/dev/null").map_err(FsError::from)
        };
        let d = |i: u8| Digest([i; 32]);
        files.get(&d(0), 0, open).unwrap();
        files.get(&d(0), 0, open).unwrap();
        assert_eq!(opened.get(), 1);
        for i in 1..=BLOB_FILES as u8 {
            files.get(&d(i), 0, open).unwrap();
        }
        assert_eq!(lock(&files.0).len(), BLOB_FILES);
        files.get(&d(0), 0, open).unwrap();
        assert_eq!(opened.get(), BLOB_FILES + 2, "the oldest was closed");
    }

    /// Regression (issue 12, item 10): the daemon kept up to 32 files open
    /// on blobs gc had deleted, so their space returned late.
    #[test]
    fn a_new_blob_generation_closes_every_held_blob_file() {
        let t = tempfile::tempdir().unwrap();
        let files = BlobFiles::default();
        let paths: Vec<_> = (0..4u8).map(|i| t.path().join(format!("b{i}"))).collect();
        let held: Vec<Arc<File>> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                std::fs::write(p, b"x").unwrap();
                files
                    .get(&Digest([i as u8; 32]), 7, || {
                        File::open(p).map_err(FsError::from)
                    })
                    .unwrap()
            })
            .collect();
        assert!(held.iter().all(|f| Arc::strong_count(f) == 2), "held");
        // gc removed blobs: the next read, of anything, closes them all.
        let other = t.path().join("other");
        std::fs::write(&other, b"y").unwrap();
        files
            .get(&Digest([9; 32]), 8, || {
                File::open(&other).map_err(FsError::from)
            })
            .unwrap();
        assert!(held.iter().all(|f| Arc::strong_count(f) == 1), "closed");
    }
}
