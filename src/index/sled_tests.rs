//! Tests of the index over sled's own behaviour (`vendor/sled/DAGFS.md`):
//! what an open writes, the space freed segments keep, and reopening an
//! index a moment after its last handle was dropped.
//!
//! May call: `index`, `hash`.

use super::tests::meta;
use super::Index;
use crate::hash::Digest;

/// Opening an index that nothing wrote since its last open writes
/// nothing to its log (vendor/sled/DAGFS.md): sled zeroed the tail of
/// the last segment and every free segment again at each open, and
/// synced the file (1-3 ms of every reading command).
#[test]
fn an_index_opened_again_unchanged_writes_nothing() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("index");
    let stamp = || {
        let m = std::fs::metadata(dir.join("db")).unwrap();
        (m.mtime(), m.mtime_nsec(), m.len())
    };
    {
        let ix = reopen(&dir, &t.path().join("runs"));
        for i in 0..2000u32 {
            ix.insert(&Digest::of(&i.to_le_bytes()), &meta(0, None))
                .unwrap();
        }
        ix.flush().unwrap();
    }
    // The first opens after a write may shred the log's tail, and a
    // first read consolidate pages (sled writes those at the next
    // flush): the same opens and reads again then write nothing.
    for _ in 0..2 {
        let ix = reopen(&dir, &t.path().join("runs"));
        assert_eq!(ix.len(), 2000);
    }
    let before = stamp();
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(30));
        let ix = reopen(&dir, &t.path().join("runs"));
        assert_eq!(ix.len(), 2000);
        drop(ix);
        assert_eq!(
            stamp(),
            before,
            "an open with nothing to recover wrote to the log"
        );
    }
}

/// sled zeroes a segment it no longer uses at every open (vendored
/// change four: a hole instead, left alone once it is one). Written
/// zeroes kept the space, and reading each back to compare made every
/// open of an index with many free segments slow (25 ms where 9 ms
/// before they were freed).
#[test]
fn an_index_gives_the_space_of_freed_segments_back() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    if !punches_holes(t.path()) {
        // Nothing to test: sled writes zeroes there, as before.
        return;
    }
    let dir = t.path().join("index");
    {
        let ix = reopen(&dir, &t.path().join("runs"));
        let big = ix.db.open_tree("big").unwrap();
        for i in 0..4000u32 {
            big.insert(i.to_be_bytes(), vec![i as u8; 4000]).unwrap();
        }
        ix.flush().unwrap();
    }
    {
        let ix = reopen(&dir, &t.path().join("runs"));
        ix.db.drop_tree("big").unwrap();
        ix.flush().unwrap();
    }
    for _ in 0..2 {
        drop(reopen(&dir, &t.path().join("runs")));
    }
    let m = std::fs::metadata(dir.join("db")).unwrap();
    let held = m.blocks() * 512;
    assert!(
        held * 2 < m.len(),
        "the log holds {held} of its {} bytes on disk",
        m.len()
    );
}

/// Open the index in `dir` again: sled's background threads may hold
/// the previous handle's file lock a moment after it is dropped.
pub(crate) fn reopen(dir: &std::path::Path, runs: &std::path::Path) -> Index {
    Index::open_waiting(dir, runs, std::time::Duration::from_secs(10)).unwrap()
}

fn punches_holes(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let p = dir.join("probe");
    std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.sync_all().unwrap();
    // SAFETY: fallocate on a file we own, inside its size.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            1 << 20,
        )
    };
    let held = f.metadata().unwrap().blocks() * 512;
    std::fs::remove_file(&p).unwrap();
    r == 0 && held < 1 << 19
}
