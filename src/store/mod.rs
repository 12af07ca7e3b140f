//! The store: immutable blobs named by BLAKE3, Merkle trees of task outputs,
//! and the durable entry records. The source of truth of a dagfs cache.
//!
//! Owns: everything under `<store>/` except `index/` (see `crate::index`).
//! May call: `hash`, `host` (the thread count).
//!
//! Rooms: `open` (creating the layout, healing, upgrading, sweeping `tmp/`,
//! opening read-only), `read` (locating and reading blobs, trees and entry
//! records), `commit` (staging, the write order below, packs, the
//! `barrier`). The formats each have their own file (`tree`, `pack`,
//! `entry`, `syncs`, ...).
//!
//! ```text
//! <store>/
//!   FORMAT            "dagfs-store\nversion 4\n"; a newer version fails to open;
//!                     versions 1 (no packs), 2 (sync logs as one JSON
//!                     object) and 3 (sync stamps in the index) are
//!                     upgraded when opened
//!   lock              flock held by the single owner; holds "pid N (cmd)"
//!   blobs/ab/<hex>    immutable files, mode 0444, named by their BLAKE3
//!   packs/<id>.pack   many small blobs in one file, and its index
//!   packs/<id>.idx    (`<id>.idx` present: its blobs exist); see `pack`
//!   entries/ab/<key>  one JSON record per cache entry (see `entry`)
//!   tmp/              work in progress; swept when the store is opened
//!   index/            sled, rebuildable from blobs/ + entries/
//!   quarantine/       damaged files moved out of blobs/, entries/, packs/,
//!                     syncs/ and index/ (see `quarantine`), never deleted
//!   blob-generation   a counter, "N\n": raised (durably) before any blob is
//!                     removed (gc, quarantine); absent: 0
//!   watches.json      the syncs a daemon watches, re-armed by the next one
//!                     (see `watchlist`)
//!   reserve           space held for a full disk (see `reserve`)
//!   policy            a checksummed copy of the cache policy (see `policy`)
//! ```
//!
//! The blob generation lets a cache of "this blob is stored" skip the
//! check while the generation it was made in is current: blobs are only
//! ever added in between. (Deleting blobs by hand is damage: `fsck` finds
//! what it breaks.)
//!
//! A store this process cannot write (a read-only filesystem, no write
//! permission) is opened to read (`Store::read_only`): nothing is
//! created, upgraded or swept, and its lock is taken shared.
//!
//! Write order (crash safety): new content is written under `tmp/`, then
//! `syncfs` makes it durable, then it is renamed into `blobs/` with
//! `RENAME_NOREPLACE` (an existing blob is never rewritten). An entry record
//! is written under `tmp/`, a second `syncfs` makes the blob renames and the
//! record durable, and only then is the record renamed into `entries/`. So a
//! crash leaves orphan blobs at worst, never a visible blob with wrong bytes
//! and never an entry pointing at a missing blob. `syncfs` batches what would
//! otherwise be one `fsync` per file and per directory (measured here at
//! ~385 µs per file+dir pair).

mod commit;
pub mod entry;
pub mod error;
pub mod fsck;
pub mod gc;
mod holds;
pub mod ingest;
pub mod lock;
pub mod materialize;
pub mod names;
mod open;
pub mod pack;
pub mod policy;
pub mod quarantine;
mod read;
pub mod reserve;
pub mod syncs;
pub mod tree;
pub mod unsynced;
pub mod watchlist;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub(crate) use commit::rename_noreplace;
use commit::BarrierGate;
pub use commit::Staged;
pub use entry::{Entry, Manifest};
pub use error::{Result, StoreError};
pub(crate) use open::read_blob_generation;
pub use open::{create_store_dir, read_only_reason};
pub use read::{is_not_a_blob, BlobLocation, BlobReader};
pub use tree::{Node, Tree, TreeEntry};

use crate::hash::Digest;
use error::IoContext;
use lock::StoreLock;

pub const FORMAT_NAME: &str = "dagfs-store";
pub const FORMAT_VERSION: u32 = 4;
/// Older versions this dagfs opens (and upgrades: 1 had no `packs/`; 2
/// wrote sync logs as one JSON object, which are read as they are and
/// rewritten in lines at their next write; 3 kept sync stamps in the
/// index, read there until a name's first write moves them to
/// `stamps/`). 4 exists so that no older dagfs writes stamps into the
/// index once they have moved (they would not be seen).
const FORMAT_UPGRADES: [u32; 3] = [1, 2, 3];
/// Older versions a read-only store may be at: read as they are.
const FORMAT_READ_AS_IS: [u32; 2] = [2, 3];

/// An open store. Holds the store lock for its whole life.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    root_fd: File,
    gate: BarrierGate,
    /// See `blob_generation`. NB: the owner holds the lock, so only this
    /// process changes it.
    blob_generation: std::sync::atomic::AtomicU64,
    /// Names in the store (blobs/, entries/) changed since the last `syncfs`
    /// started: `barrier_if_changed` has something to make durable.
    changed: std::sync::atomic::AtomicBool,
    packs: pack::Packs,
    /// `blobs/`, opened once: `has_blob` looks names up relative to it.
    blobs_dir: std::sync::OnceLock<Option<File>>,
    /// Why this process cannot write the store (a read-only filesystem, no
    /// write permission), if it cannot: it is opened to read only.
    read_only: Option<String>,
    /// Top directories `open` made again (see `heal_layout`).
    recreated: Vec<&'static str>,
    /// Shards of `blobs/` whose own name this process has made durable
    /// (fsync of `blobs/` since it existed): a small commit into them
    /// fsyncs the shard alone. Shards are never removed.
    durable_shards: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
    /// Tests only: how `commit_few` makes blobs durable (0: as the
    /// system's dirty data says, 1: `syncfs`, 2: file by file).
    few_by: std::sync::atomic::AtomicU8,
    /// See `hold_sync_name`.
    sync_names: syncs::SyncNames,
    /// See `sync_log_end`.
    sync_logs: syncs::LogCache,
    /// See `read_tree`.
    trees: read::TreeCache,
    /// See `staging_dir`.
    spare_dirs: SpareDirs,
    /// See `tmp_dev`.
    tmp_dev: std::sync::OnceLock<u64>,
    /// Held while packs are merged (`consolidate_packs`), and while the
    /// blob generation is raised (`new_blob_generation`): a run's
    /// committer thread and its coordinator (a remote or content hit) may
    /// both commit.
    merging: std::sync::Mutex<()>,
    bumping: std::sync::Mutex<()>,
    /// See `holds`.
    holds: holds::Holds,
    _lock: StoreLock,
}

/// The directories every store has.
const TOP_DIRS: [&str; 5] = ["blobs", "entries", "tmp", "index", "packs"];

const BLOB_GENERATION: &str = "blob-generation";

impl Store {
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_root(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The device `tmp/` is on (what a file must be on to be taken over
    /// by a rename), looked up once: ingest asked for every file.
    pub fn tmp_dev(&self) -> Result<u64> {
        if let Some(d) = self.tmp_dev.get() {
            return Ok(*d);
        }
        let at = self.tmp_root();
        let dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata(&at).at(&at)?);
        Ok(*self.tmp_dev.get_or_init(|| dev))
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    /// The run records (`index::runs`); made when the first is written.
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// A fresh private directory under `tmp/`, removed when dropped.
    /// A staging directory under `tmp/` (`tempdir`), from the spare ones
    /// when there is one: a watch's pass staged in two new directories and
    /// removed them at every change, and creating and freeing a directory's
    /// inode cost more than the rest of staging a small file. Dropped
    /// empty, it is kept for the next (a few at most); otherwise removed.
    /// Spares left by a crash are swept from `tmp/` at the next open.
    pub fn staging_dir(&self, prefix: &str) -> Result<StagingDir> {
        let spare = self
            .spare_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let dir = match spare {
            Some(d) => d,
            None => self.tempdir(prefix)?,
        };
        Ok(StagingDir {
            dir: Some(dir),
            spares: self.spare_dirs.clone(),
        })
    }

    /// Remove the spare staging directories now (a process about to exit
    /// without dropping the store: `Cache::close_for_exit`).
    pub fn drop_spare_dirs(&self) {
        let spares =
            std::mem::take(&mut *self.spare_dirs.lock().unwrap_or_else(|p| p.into_inner()));
        drop(spares);
    }

    pub fn tempdir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        if self.read_only.is_some() {
            // Work that only hashes what the store holds already.
            let tmp = std::env::temp_dir();
            return tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in(&tmp)
                .at(tmp);
        }
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.tmp_root())
            .at(self.tmp_root())
    }
}

/// Empty staging directories kept for reuse (`Store::staging_dir`).
type SpareDirs = std::sync::Arc<std::sync::Mutex<Vec<tempfile::TempDir>>>;

/// See `Store::staging_dir`.
#[derive(Debug)]
pub struct StagingDir {
    dir: Option<tempfile::TempDir>,
    spares: SpareDirs,
}

impl StagingDir {
    /// Spares kept at most.
    const SPARES: usize = 8;

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("set until dropped").path()
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        let empty = fs::read_dir(dir.path()).is_ok_and(|mut rd| rd.next().is_none());
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        if empty && spares.len() < Self::SPARES {
            spares.push(dir);
        }
        // NB: else `dir` is dropped here: removed with what it holds.
    }
}

/// Remove a file or a whole tree, making read-only directories writable
/// first (materialized inputs are 0555).
pub fn remove_all(p: &Path) -> Result<()> {
    let md = match fs::symlink_metadata(p) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::Io {
                path: p.to_path_buf(),
                source: e,
            })
        }
    };
    if !md.is_dir() {
        return fs::remove_file(p).at(p);
    }
    if fs::remove_dir_all(p).is_ok() {
        return Ok(());
    }
    // Iteratively unlock every directory, then retry.
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    fs::remove_dir_all(p).at(p)
}

pub(crate) fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// The names in `dir`, unordered; none if it does not exist.
pub(crate) fn dir_names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StoreError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    rd.map(|e| e.map(|e| e.file_name()).at(dir)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn open(dir: &Path) -> Store {
        Store::open(dir, &mut |_| {}).unwrap()
    }

    #[test]
    fn staged_blob_becomes_readonly_and_readable() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let work = s.tempdir("t").unwrap();
        let mut st = Staged::default();
        let d = s.stage_bytes(work.path(), b"hello", &mut st).unwrap();
        assert!(!s.has_blob(&d), "not visible before commit");
        s.commit(st).unwrap();
        assert_eq!(s.read_blob(&d).unwrap(), b"hello");
        let mode = fs::metadata(s.blob_path(&d)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
    }

    /// A few loose blobs are committed either way: with a `syncfs` for
    /// their data on a quiet system, their names left to the caller's
    /// barrier; else file by file, each shard (and every shard listed
    /// before `blobs/` was fsynced) known durable after.
    #[test]
    fn a_few_loose_blobs_are_committed_either_way() {
        for syncfs in [true, false] {
            let t = tempfile::tempdir().unwrap();
            let s = open(t.path());
            s.force_few_by_syncfs(syncfs);
            fs::create_dir(t.path().join("blobs/ee")).unwrap();
            let work = s.tempdir("t").unwrap();
            let mut st = Staged::default();
            let blobs: Vec<(Digest, Vec<u8>)> = (0..3)
                .map(|i| {
                    let bytes = format!("blob {i}").into_bytes();
                    (s.stage_bytes(work.path(), &bytes, &mut st).unwrap(), bytes)
                })
                .collect();
            assert_eq!(st.blob_count(), 0, "small blobs are staged in a pack");
            let names_pending = s.commit_leaving_names(st).unwrap();
            assert_eq!(names_pending, syncfs);
            if names_pending {
                s.barrier().unwrap();
            }
            for (d, bytes) in &blobs {
                assert_eq!(&s.read_blob(d).unwrap(), bytes);
                assert!(s.blob_path(d).is_file(), "not loose");
            }
            let known = s.durable_shards.lock().unwrap().clone();
            let shard = |d: &Digest| s.blob_path(d).parent().unwrap().to_path_buf();
            if syncfs {
                assert!(known.is_empty(), "{known:?}");
            } else {
                for (d, _) in &blobs {
                    assert!(known.contains(&shard(d)), "{known:?}");
                }
                assert!(known.contains(&t.path().join("blobs/ee")), "{known:?}");
            }
        }
    }

    #[test]
    fn existing_blob_is_never_rewritten() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let work = s.tempdir("t").unwrap();
        let mut st = Staged::default();
        let d = s.stage_bytes(work.path(), b"x", &mut st).unwrap();
        s.commit(st).unwrap();
        let ino = fs::metadata(s.blob_path(&d)).unwrap().ino();
        // Force a second staging of the same digest through stage_file.
        let tmp = work.path().join("again");
        fs::write(&tmp, b"x").unwrap();
        let mut st = Staged::default();
        s.stage_file(tmp, d, None, &mut st);
        s.commit(st).unwrap();
        assert_eq!(fs::metadata(s.blob_path(&d)).unwrap().ino(), ino);
    }

    #[test]
    fn newer_format_is_refused() {
        let t = tempfile::tempdir().unwrap();
        drop(open(t.path()));
        fs::write(t.path().join("FORMAT"), "dagfs-store\nversion 99\n").unwrap();
        let err = Store::open(t.path(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, StoreError::Format { .. }), "{err}");
    }

    #[test]
    fn foreign_directory_is_refused() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("precious.txt"), "x").unwrap();
        let err = Store::open(t.path(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
        assert!(t.path().join("precious.txt").exists());
    }

    /// `n` distinct small blobs staged and committed in one batch.
    fn stage_many(s: &Store, n: usize, tag: &str) -> Vec<(Digest, Vec<u8>)> {
        let work = s.tempdir("t").unwrap();
        let mut st = Staged::default();
        let blobs: Vec<(Digest, Vec<u8>)> = (0..n)
            .map(|i| {
                let b = format!("{tag} {i} ").repeat(1 + i % 7).into_bytes();
                (s.stage_bytes(work.path(), &b, &mut st).unwrap(), b)
            })
            .collect();
        s.commit(st).unwrap();
        blobs
    }

    /// `bytes`, staged and committed alone (a loose blob, being few).
    fn committed(s: &Store, bytes: &[u8]) -> Digest {
        let work = s.tempdir("t").unwrap();
        let mut st = Staged::default();
        let d = s.stage_bytes(work.path(), bytes, &mut st).unwrap();
        s.commit(st).unwrap();
        d
    }

    fn pack_files(s: &Store) -> Vec<String> {
        let mut v: Vec<String> = dir_names(s.packs_dir())
            .unwrap()
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Issue 17 (store growth): every commit that adds a pack used to leave
    /// it, so a store of 1,000 syncs searched 1,000 indexes per lookup and
    /// loaded them all at each open. Past `AUTO_PACK_LIMIT` packs a commit
    /// merges them, every blob still readable, the generation raised.
    #[test]
    fn packs_past_the_limit_are_merged_and_every_blob_stays() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let mut blobs = Vec::new();
        let gen = s.blob_generation();
        for round in 0..(Store::AUTO_PACK_LIMIT + 8) {
            blobs.extend(stage_many(&s, pack::MIN_PACK, &format!("round {round}")));
            let packs = pack_files(&s).len() / 2;
            assert!(
                packs <= Store::AUTO_PACK_LIMIT,
                "round {round}: {packs} packs"
            );
        }
        assert!(s.blob_generation() > gen, "a merge raises the generation");
        // A fresh open (another process) reads them all too.
        drop(s);
        let s = open(t.path());
        assert!(s.packs.all().len() <= 9, "{}", s.packs.all().len());
        for (d, b) in &blobs {
            assert_eq!(&s.read_blob(d).unwrap(), b);
        }
    }

    /// gc's mark skipped a tree it could not read, so a blob only that tree
    /// names was swept, though the tree still named it: a pack that failed
    /// to open for a reason that may pass (no descriptor left, an I/O
    /// error; a self-symlink stands for it here) read as holding nothing.
    /// Now the mark stops with the error, and gc sweeps nothing.
    #[test]
    fn gc_stops_at_a_tree_it_cannot_read_and_sweeps_nothing() {
        use tree::{Node, Tree, TreeEntry};
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let work = s.tempdir("t").unwrap();
        let bytes = b"named only by a packed tree";
        let file = committed(&s, bytes);
        let node = Node::File {
            size: bytes.len() as u64,
            digest: file,
            exec: false,
        };
        let entries = vec![TreeEntry {
            name: b"f".to_vec(),
            node,
        }];
        let mut st = Staged::default();
        let root = s
            .stage_bytes(work.path(), &Tree { entries }.encode(), &mut st)
            .unwrap();
        for i in 0..pack::MIN_PACK {
            s.stage_bytes(work.path(), format!("filler {i}").as_bytes(), &mut st)
                .unwrap();
        }
        s.commit(st).unwrap();
        let (p, _, _) = s.packs.find_checked(&root).unwrap().expect("packed");
        assert!(s.packs.find_checked(&file).unwrap().is_none(), "loose");
        assert!(gc::reachable(&s, [root]).unwrap().contains(&file));
        let path = p.pack_path(s.packs_dir());
        drop((p, s));
        let aside = t.path().join("aside");
        fs::rename(&path, &aside).unwrap();
        std::os::unix::fs::symlink(&path, &path).unwrap();
        let s = open(t.path());
        let cutoff = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        // What `Cache::gc` does: mark, then sweep what the mark left out.
        let swept = gc::reachable(&s, [root]).and_then(|live| gc::sweep(&s, &live, cutoff, false));
        assert!(swept.is_err(), "{swept:?}");
        assert_eq!(s.read_blob(&file).unwrap(), bytes);
        fs::remove_file(&path).unwrap();
        fs::rename(&aside, &path).unwrap();
        let live = gc::reachable(&s, [root]).unwrap();
        assert!(live.contains(&file));
        assert!(s.read_blob(&root).is_ok());
    }

    /// A loose blob whose stat fails for another reason than "no such
    /// file" (here its shard is a symlink loop: ELOOP) is no answer: an
    /// error from `stored`, `locate` and `read_blob_unchecked`, so gc's
    /// mark stops, where `Path::exists` had called it absent.
    #[test]
    fn a_loose_blob_that_cannot_be_looked_at_is_an_error_not_absent() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let d = committed(&s, b"loose");
        assert!(s.stored(&d).unwrap());
        let shard = s.blob_path(&d).parent().unwrap().to_path_buf();
        let aside = t.path().join("aside");
        fs::rename(&shard, &aside).unwrap();
        std::os::unix::fs::symlink(&shard, &shard).unwrap();
        assert!(s.stored(&d).is_err());
        assert!(!s.has_blob(&d));
        assert!(s.locate(&d).is_err());
        assert!(gc::reachable(&s, [d]).is_err());
        fs::remove_file(&shard).unwrap();
        fs::rename(&aside, &shard).unwrap();
        assert!(s.stored(&d).unwrap());
        assert!(gc::reachable(&s, [d]).unwrap().contains(&d));
    }

    /// A kept tree (`read_tree`) is answered only while no blob may have
    /// been removed since: one quarantined is not read from memory.
    #[test]
    fn a_tree_read_before_its_blob_left_is_not_answered_after() {
        use tree::{Node, Tree, TreeEntry};
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let entries = vec![TreeEntry {
            name: b"l".to_vec(),
            node: Node::Symlink {
                target: b"x".to_vec(),
            },
        }];
        let tree = Tree { entries };
        let d = committed(&s, &tree.encode());
        assert_eq!(s.read_tree(&d).unwrap(), tree);
        assert_eq!(s.read_tree(&d).unwrap(), tree, "kept");
        assert!(s.quarantine_blob(&d, "test").unwrap());
        assert!(matches!(s.read_tree(&d), Err(StoreError::Missing(_))));
    }

    /// Trees kept as committed (`keep_trees`) are answered from memory,
    /// but only if no blob may have been removed since they were staged.
    #[test]
    fn trees_kept_at_their_commit_are_answered_only_while_the_generation_stands() {
        use tree::{Node, Tree, TreeEntry};
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let tree = |name: &str| Tree {
            entries: vec![TreeEntry {
                name: name.as_bytes().to_vec(),
                node: Node::Symlink {
                    target: b"x".to_vec(),
                },
            }],
        };
        let (a, b) = (tree("a"), tree("b"));
        let since = s.blob_generation();
        let (da, db) = (committed(&s, &a.encode()), committed(&s, &b.encode()));
        s.keep_trees(vec![(da, a.clone())], since);
        s.new_blob_generation().unwrap();
        s.keep_trees(vec![(db, b.clone())], since);
        // Behind the store's back: only a kept tree can still be read.
        for d in [da, db] {
            let p = s.blob_path(&d);
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            fs::remove_file(&p).unwrap();
        }
        for (d, what) in [
            (da, "kept, then the generation moved"),
            (db, "kept too late"),
        ] {
            assert!(
                matches!(s.read_tree(&d), Err(StoreError::Missing(_))),
                "{what}: answered from memory"
            );
        }
        let since = s.blob_generation();
        let dc = committed(&s, &tree("c").encode());
        s.keep_trees(vec![(dc, tree("c"))], since);
        let p = s.blob_path(&dc);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::remove_file(&p).unwrap();
        assert_eq!(s.read_tree(&dc).unwrap(), tree("c"), "kept");
    }

    /// A staging directory dropped empty is kept and given to the next;
    /// one dropped with files in it is removed with them; the spares go
    /// with the store.
    #[test]
    fn an_empty_staging_directory_is_used_again() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let a = s.staging_dir("a-").unwrap();
        let first = a.path().to_path_buf();
        drop(a);
        assert!(first.is_dir(), "kept");
        let b = s.staging_dir("b-").unwrap();
        assert_eq!(b.path(), first, "given again");
        let c = s.staging_dir("c-").unwrap();
        assert_ne!(c.path(), first);
        let second = c.path().to_path_buf();
        fs::write(first.join("left"), b"x").unwrap();
        drop(b);
        assert!(!first.exists(), "not empty: removed");
        drop(c);
        assert!(second.is_dir());
        drop(s);
        assert!(!second.exists(), "spares go with the store");
    }

    /// `tmp/` is marked the top of directory hierarchies (`chattr +T`) at
    /// every open that can write, so scratch is allocated away from the
    /// blobs (see `open::spread_scratch`); skipped, saying so, on a
    /// filesystem without inode flags.
    #[test]
    fn tmp_is_marked_the_top_of_directory_hierarchies() {
        const TOPDIR: libc::c_int = 0x0002_0000;
        let set_flags = open::set_inode_flags;
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let tmp = s.tmp_root();
        let Some(flags) = open::inode_flags(&tmp) else {
            eprintln!("skipped: {} has no inode flags", t.path().display());
            return;
        };
        if flags & TOPDIR == 0 {
            // Not marked: only right where the filesystem refuses the flag
            // (tmpfs, btrfs, xfs).
            if let Err(e) = set_flags(&tmp, flags | TOPDIR) {
                eprintln!("skipped: {} takes no +T: {e}", t.path().display());
                return;
            }
            panic!("open left tmp/ unmarked on a filesystem that takes +T");
        }
        drop(s);
        // A store made before this: marked at its next open.
        set_flags(&tmp, flags & !TOPDIR).unwrap();
        assert_eq!(open::inode_flags(&tmp).unwrap() & TOPDIR, 0);
        let s = open(t.path());
        assert_ne!(open::inode_flags(&s.tmp_root()).unwrap() & TOPDIR, 0);
    }

    /// A FIFO in a loose blob's place is not a blob: reading it is
    /// `Corrupt` at once, where the open had blocked for a writer.
    #[test]
    fn a_fifo_in_a_blob_s_place_is_corrupt_and_blocks_nothing() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let d = committed(&s, b"a loose blob");
        let p = s.blob_path(&d);
        fs::remove_file(&p).unwrap();
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(matches!(s.read_blob(&d), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            s.read_blob_unchecked(&d),
            Err(StoreError::Corrupt { .. })
        ));
        let mut scan = fsck::BlobScan::default();
        assert_eq!(scan.state(&s, &d).unwrap(), fsck::BlobState::Unreadable);
    }

    /// A damaged blob in a pack stops the merge: nothing moves, nothing is
    /// lost, the damage stays where fsck finds it.
    #[test]
    fn a_damaged_pack_is_not_merged() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let mut blobs = Vec::new();
        for round in 0..Store::AUTO_PACK_LIMIT {
            blobs.extend(stage_many(&s, pack::MIN_PACK, &format!("round {round}")));
        }
        assert_eq!(pack_files(&s).len(), 2 * Store::AUTO_PACK_LIMIT);
        let d = &blobs[3].0.clone();
        let (p, off, _) = s.packs.find_checked(d).unwrap().unwrap();
        let path = p.pack_path(&s.packs.dir);
        let mut bytes = fs::read(&path).unwrap();
        bytes[off as usize] ^= 1;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, &bytes).unwrap();
        blobs.extend(stage_many(&s, pack::MIN_PACK, "one more"));
        assert_eq!(pack_files(&s).len(), 2 * (Store::AUTO_PACK_LIMIT + 1));
        assert!(s.read_blob(d).is_err(), "still damaged, still found");
        for (x, b) in &blobs[4..] {
            assert_eq!(&s.read_blob(x).unwrap(), b);
        }
    }

    /// Regression: a sync's walker threads stage a pack each; one that got
    /// fewer than `MIN_PACK` small files left them loose (and a test that
    /// looked for a file in a pack failed under load).
    #[test]
    fn small_batches_of_one_commit_are_packed_together() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let work = s.tempdir("t").unwrap();
        let mut all = Staged::default();
        let mut blobs = Vec::new();
        for (part, n) in [
            (0, pack::MIN_PACK / 2),
            (1, pack::MIN_PACK / 2 + 1),
            (2, 200),
        ] {
            let mut st = Staged::default();
            for i in 0..n {
                let b = format!("part {part} blob {i}").into_bytes();
                blobs.push((s.stage_bytes(work.path(), &b, &mut st).unwrap(), b));
            }
            all.append(st);
        }
        s.commit(all).unwrap();
        assert_eq!(pack_files(&s).len(), 2, "one pack: {:?}", pack_files(&s));
        for (d, b) in &blobs {
            assert!(!s.blob_path(d).exists(), "packed, not loose");
            assert_eq!(&s.read_blob(d).unwrap(), b);
        }
    }

    #[test]
    fn a_batch_of_small_blobs_is_one_pack_and_a_few_are_loose_files() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let few = stage_many(&s, pack::MIN_PACK - 1, "few");
        assert!(pack_files(&s).is_empty());
        for (d, b) in &few {
            assert_eq!(&fs::read(s.blob_path(d)).unwrap(), b, "loose");
        }
        let many = stage_many(&s, 500, "many");
        assert_eq!(pack_files(&s).len(), 2, "{:?}", pack_files(&s));
        let dst = t.path().join("copy");
        for (d, b) in &many {
            assert!(!s.blob_path(d).exists(), "packed, not loose");
            assert!(s.has_blob(d));
            assert_eq!(&s.read_blob(d).unwrap(), b);
            assert_eq!(s.blob_size(d).unwrap(), b.len() as u64);
            assert!(s.blobs_with_prefix(&d.to_hex()[..6]).unwrap().contains(d));
            let _ = fs::remove_file(&dst);
            s.copy_blob(d, &dst).unwrap();
            assert_eq!(&fs::read(&dst).unwrap(), b);
        }
        // Another process (a reopen) finds them too.
        drop(s);
        let s = open(t.path());
        assert!(many.iter().all(|(d, b)| s.read_blob(d).unwrap() == *b));
    }

    #[test]
    fn a_pack_renamed_in_without_its_index_is_quarantined_at_open() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let many = stage_many(&s, 100, "m");
        let idx = pack_files(&s)
            .into_iter()
            .find(|n| n.ends_with(".idx"))
            .unwrap();
        // As if the process died between the two renames.
        fs::remove_file(s.packs_dir().join(&idx)).unwrap();
        drop(s);
        let gen = read_blob_generation(t.path()).unwrap();
        let s = open(t.path());
        assert!(pack_files(&s).is_empty());
        assert!(many.iter().all(|(d, _)| !s.has_blob(d)));
        // Regression (issue 12, item 3): it was deleted, and nothing that
        // vouched for its blobs was told.
        let q = s.quarantined(quarantine::Kind::Stray).unwrap();
        assert_eq!(q.len(), 1, "{q:?}");
        assert!(
            q[0].starts_with("packs_") && q[0].ends_with(".pack"),
            "{q:?}"
        );
        assert!(s.blob_generation() > gen);
    }

    #[test]
    fn gc_rewrites_a_pack_without_its_dead_blobs_and_quarantine_takes_one_out() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let many = stage_many(&s, 300, "g");
        let live: std::collections::HashSet<Digest> =
            many.iter().step_by(3).map(|(d, _)| *d).collect();
        let gen = s.blob_generation();
        let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        let dry = gc::sweep(&s, &live, future, true).unwrap();
        assert!(
            many.iter().all(|(d, _)| s.has_blob(d)),
            "a dry run removes nothing"
        );
        let rep = gc::sweep(&s, &live, future, false).unwrap();
        assert_eq!(rep, dry);
        assert_eq!(rep.blobs_removed as usize, many.len() - live.len());
        assert!(
            s.blob_generation() > gen,
            "generation raised before removal"
        );
        for (d, b) in &many {
            match live.contains(d) {
                true => assert_eq!(&s.read_blob(d).unwrap(), b),
                false => assert!(!s.has_blob(d)),
            }
        }
        // A blob young enough is kept.
        let past = std::time::SystemTime::UNIX_EPOCH;
        let rep = gc::sweep(&s, &std::collections::HashSet::new(), past, false).unwrap();
        assert_eq!(rep.blobs_removed, 0);
        assert_eq!(rep.blobs_kept_young as usize, live.len());

        let (victim, bytes) = many.iter().find(|(d, _)| live.contains(d)).unwrap();
        assert!(s.quarantine_blob(victim, "test").unwrap());
        assert!(!s.has_blob(victim));
        let q = s.quarantine_dir().join("blobs").join(victim.to_hex());
        assert_eq!(&fs::read(q).unwrap(), bytes);
        for (d, b) in many.iter().filter(|(d, _)| live.contains(d) && d != victim) {
            assert_eq!(&s.read_blob(d).unwrap(), b);
        }
    }

    #[test]
    fn an_older_store_is_upgraded_when_opened() {
        for v in [1, 2, 3] {
            let t = tempfile::tempdir().unwrap();
            drop(open(t.path()));
            fs::write(
                t.path().join("FORMAT"),
                format!("dagfs-store\nversion {v}\n"),
            )
            .unwrap();
            if v == 1 {
                fs::remove_dir(t.path().join("packs")).unwrap();
            }
            let s = open(t.path());
            assert_eq!(
                fs::read_to_string(t.path().join("FORMAT")).unwrap(),
                "dagfs-store\nversion 4\n"
            );
            stage_many(&s, 100, "u");
            assert_eq!(pack_files(&s).len(), 2);
        }
    }

    #[test]
    fn tmp_is_swept_on_open() {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let left = s.tmp_root().join("crashed-run");
        fs::create_dir_all(left.join("out")).unwrap();
        drop(s);
        let _s = open(t.path());
        assert!(!left.exists());
    }
}
