//! The store: immutable blobs named by BLAKE3, Merkle trees of task outputs,
//! and the durable entry records. The source of truth of a dagfs cache.
//!
//! Owns: everything under `<store>/` except `index/` (see `crate::index`).
//! May call: `hash` only.
//!
//! ```text
//! <store>/
//!   FORMAT            "dagfs-store\nversion 2\n"; a newer version fails to open;
//!                     version 1 (no packs) is upgraded when opened
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

pub mod entry;
pub mod error;
pub mod fsck;
pub mod gc;
pub mod ingest;
pub mod lock;
pub mod materialize;
pub mod names;
pub mod pack;
pub mod policy;
pub mod quarantine;
pub mod reserve;
pub mod syncs;
pub mod tree;
pub mod watchlist;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use entry::{Entry, Manifest};
pub use error::{Result, StoreError};
pub use tree::{Node, Tree, TreeEntry};

use crate::hash::Digest;
use error::IoContext;
use lock::StoreLock;

pub const FORMAT_NAME: &str = "dagfs-store";
pub const FORMAT_VERSION: u32 = 2;
/// Older versions this dagfs opens (and upgrades: 1 had no `packs/`).
const FORMAT_UPGRADES: [u32; 1] = [1];

/// An open store. Holds the store lock for its whole life.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    root_fd: File,
    gate: SyncGate,
    /// See `blob_generation`. NB: the owner holds the lock, so only this
    /// process changes it.
    blob_generation: std::sync::atomic::AtomicU64,
    /// Names in the store (blobs/, entries/) changed since the last `syncfs`
    /// started: `sync_changes` has something to make durable.
    changed: std::sync::atomic::AtomicBool,
    packs: pack::Packs,
    /// `blobs/`, opened once: `has_blob` looks names up relative to it.
    blobs_dir: std::sync::OnceLock<Option<File>>,
    /// Why this process cannot write the store (a read-only filesystem, no
    /// write permission), if it cannot: it is opened to read only.
    read_only: Option<String>,
    /// Top directories `open` made again (see `heal_layout`).
    recreated: Vec<&'static str>,
    _lock: StoreLock,
}

/// The directories every store has.
const TOP_DIRS: [&str; 5] = ["blobs", "entries", "tmp", "index", "packs"];

const BLOB_GENERATION: &str = "blob-generation";

/// A commit of at most this many loose blobs (and no packs) fsyncs each
/// file and directory instead of the whole filesystem.
const FSYNC_EACH: usize = 8;

/// Group commit state for `Store::sync`.
#[derive(Debug, Default)]
struct SyncGate {
    state: std::sync::Mutex<GateState>,
    cv: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    started: u64,
    completed: u64,
    running: bool,
}

/// Work staged under `tmp/` that `Store::commit` moves into `blobs/` and
/// `entries/` in crash-safe order.
#[derive(Debug, Default)]
pub struct Staged {
    blobs: Vec<StagedBlob>,
    entries: Vec<(PathBuf, Digest)>,
    /// Digests staged (by `stage_bytes` or `stage_file`), so identical
    /// content (two empty directories of one output, say) is staged once.
    bytes_staged: std::collections::HashSet<Digest>,
    /// Small blobs from `stage_bytes`, appended to packs (see `pack`).
    packs: Vec<pack::PackWriter>,
}

#[derive(Debug)]
struct StagedBlob {
    tmp: PathBuf,
    digest: Digest,
    /// (dev, ino) of the file as it was hashed, for files taken over in place.
    inode: Option<(u64, u64)>,
    /// Created by the store with its final mode (0444) already.
    read_only: bool,
}

impl Staged {
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.entries.is_empty() && self.packs.iter().all(|p| p.len() == 0)
    }
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Whether blob `d` is staged in this batch already.
    pub(crate) fn has_digest(&self, d: &Digest) -> bool {
        self.bytes_staged.contains(d)
    }

    /// Move every staged blob file into `dir` (same filesystem, under
    /// `tmp/`), named `<prefix>-<n>`: the directory it was staged in can then
    /// be reused while the blobs wait for a batched `Store::commit_blobs`.
    /// A rename keeps the inode, so the take-over check still holds.
    pub fn relocate(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        for (n, b) in self.blobs.iter_mut().enumerate() {
            let to = dir.join(format!("{prefix}-{n}"));
            fs::rename(&b.tmp, &to).at(&to)?;
            b.tmp = to;
        }
        for (n, p) in self.packs.iter_mut().enumerate() {
            // NB: the writer's descriptor follows the rename.
            let to = dir.join(format!("{prefix}-pack-{n}.pack"));
            fs::rename(&p.path, &to).at(&to)?;
            p.path = to;
        }
        Ok(())
    }

    /// Add `other`'s blobs and entries to this batch.
    pub fn append(&mut self, other: Staged) {
        self.blobs.extend(other.blobs);
        self.entries.extend(other.entries);
        self.packs.extend(other.packs);
    }

    /// Take the staged entry records out (for `Store::publish_entries`).
    pub fn take_entries(&mut self) -> Vec<(PathBuf, Digest)> {
        std::mem::take(&mut self.entries)
    }
}

impl Store {
    /// Open (creating if absent or empty) the store at `root`, waiting for
    /// the lock if another process holds it.
    pub fn open(root: &Path, on_wait: &mut dyn FnMut(&str)) -> Result<Store> {
        let mut told = false;
        Self::open_waiting(root, &mut |who| {
            if !std::mem::replace(&mut told, true) {
                on_wait(who);
            }
            std::ops::ControlFlow::Continue(())
        })
    }

    /// As `open`, asking `waiting` while the lock is held elsewhere whether
    /// to go on (see `lock::Waiting`).
    pub fn open_waiting(root: &Path, waiting: &mut lock::Waiting<'_>) -> Result<Store> {
        if fs::metadata(root).is_ok_and(|m| !m.is_dir()) {
            return Err(StoreError::NotAStore {
                path: root.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        if let Some(why) = read_only_reason(root) {
            return Self::open_read_only(root, why, waiting);
        }
        create_store_dir(root)?;
        // NB: absolute, so "is this output under tmp/?" (take over vs copy)
        // compares like with like.
        let root = &fs::canonicalize(root).at(root)?;
        // Checked before taking the lock, so a foreign directory or a newer
        // format is refused without writing anything into it...
        match check_root(root) {
            Ok(()) => {}
            // ...except a store another process is creating right now (it
            // holds the lock, and has made part of the layout but not yet
            // FORMAT): that is decided under the lock, once it is done.
            Err(StoreError::NotAStore { .. }) if being_created(root) => {}
            Err(e) => return Err(e),
        }
        let lock = StoreLock::acquire(&root.join("lock"), waiting)?;
        match check_root(root) {
            // An interrupted creation: init_layout completes it.
            Err(StoreError::NotAStore { .. }) if being_created(root) => {}
            r => r?,
        }
        let root_fd = File::open(root).at(root)?;
        let blob_generation = read_blob_generation(root)?;
        let mut store = Store {
            root: root.to_path_buf(),
            root_fd,
            gate: SyncGate::default(),
            blob_generation: blob_generation.into(),
            changed: false.into(),
            packs: pack::Packs::new(root.join("packs")),
            blobs_dir: std::sync::OnceLock::new(),
            read_only: None,
            recreated: Vec::new(),
            _lock: lock,
        };
        store.init_layout()?;
        store.upgrade_format()?;
        store.sweep_tmp()?;
        Ok(store)
    }

    /// A store this process cannot write: nothing is created, upgraded or
    /// swept, and its lock is taken shared (so a writer that can, the
    /// export's owner, waits for readers and they for it) if it has one.
    fn open_read_only(
        root: &Path,
        why: std::io::Error,
        waiting: &mut lock::Waiting<'_>,
    ) -> Result<Store> {
        let root = &fs::canonicalize(root).at(root)?;
        let format = root.join("FORMAT");
        let text = fs::read_to_string(&format).map_err(|e| StoreError::NotAStore {
            path: root.to_path_buf(),
            reason: format!("read-only ({why}) and no FORMAT file ({e})"),
        })?;
        check_format(&format, &text)?;
        if format_version(&text) != Some(FORMAT_VERSION) {
            return Err(StoreError::Format {
                path: format,
                found: text.lines().nth(1).unwrap_or("").to_string(),
                supported: format!(
                    "version {FORMAT_VERSION}; this older one is upgraded when opened, which a read-only store cannot be"
                ),
            });
        }
        let lock = StoreLock::shared(&root.join("lock"), waiting)?;
        Ok(Store {
            root: root.to_path_buf(),
            root_fd: File::open(root).at(root)?,
            gate: SyncGate::default(),
            blob_generation: read_blob_generation(root)?.into(),
            changed: false.into(),
            packs: pack::Packs::new(root.join("packs")),
            blobs_dir: std::sync::OnceLock::new(),
            read_only: Some(why.to_string()),
            recreated: Vec::new(),
            _lock: lock,
        })
    }

    /// A read-only store's shared lock is held only while its index is
    /// copied (see `Cache`): a reader must not hold up the store's writer.
    pub fn release_read_lock(&mut self) {
        if self.read_only.is_some() {
            self._lock = StoreLock::none();
        }
    }

    /// Fails (`ReadOnly`) for a store this process cannot write: a read-only
    /// store serves what it holds, and nothing new.
    fn writable(&self) -> Result<()> {
        match &self.read_only {
            Some(why) => Err(StoreError::ReadOnly {
                path: self.root.clone(),
                reason: why.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Why this process cannot write the store, if it cannot (it was
    /// opened to read only).
    pub fn read_only(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    fn init_layout(&mut self) -> Result<()> {
        let format = self.root.join("FORMAT");
        if format.exists() {
            return self.heal_layout();
        }
        // NB: the 256 shards of each are made when first written to.
        for d in TOP_DIRS {
            fs::create_dir_all(self.root.join(d)).at(self.root.join(d))?;
        }
        // FORMAT last: its presence means the layout is complete.
        let tmp = self.root.join("FORMAT.tmp");
        let mut f = File::create(&tmp).at(&tmp)?;
        write!(f, "{FORMAT_NAME}\nversion {FORMAT_VERSION}\n").at(&tmp)?;
        f.sync_all().at(&tmp)?;
        fs::rename(&tmp, &format).at(&format)?;
        self.sync()
    }

    /// Make again the top directories of a store that lost some (deleted
    /// by hand): every command would fail on them. What they held is lost
    /// already; `fsck` reports what that breaks. A store that cannot be
    /// written (read-only) is left as it is.
    fn heal_layout(&mut self) -> Result<()> {
        for d in TOP_DIRS {
            let p = self.root.join(d);
            if fs::symlink_metadata(&p).is_ok() {
                continue;
            }
            match fs::create_dir(&p) {
                Ok(()) => self.recreated.push(d),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EROFS | libc::EACCES | libc::EPERM)
                    ) => {}
                Err(e) => return Err(StoreError::Io { path: p, source: e }),
            }
        }
        if !self.recreated.is_empty() {
            self.root_fd.sync_all().at(&self.root)?;
        }
        Ok(())
    }

    /// Top directories `open` had to make again (see `heal_layout`).
    pub fn recreated(&self) -> &[&'static str] {
        &self.recreated
    }

    /// A store of an older format this dagfs can read: record the current
    /// one (atomically, durably) before anything of the new format is
    /// written, so an older dagfs refuses the store instead of misreading it.
    fn upgrade_format(&self) -> Result<()> {
        let format = self.root.join("FORMAT");
        let text = fs::read_to_string(&format).at(&format)?;
        if format_version(&text) == Some(FORMAT_VERSION) {
            return Ok(());
        }
        fs::create_dir_all(&self.packs.dir).at(&self.packs.dir)?;
        let tmp = self.root.join("FORMAT.tmp");
        let mut f = File::create(&tmp).at(&tmp)?;
        write!(f, "{FORMAT_NAME}\nversion {FORMAT_VERSION}\n").at(&tmp)?;
        f.sync_all().at(&tmp)?;
        fs::rename(&tmp, &format).at(&format)?;
        self.root_fd.sync_all().at(&self.root)
    }

    /// Remove leftovers of crashed processes. Safe: we hold the lock, so no
    /// other process has work in progress under `tmp/`. A pack without its
    /// index (a crash between the two renames, or an index lost) goes to
    /// quarantine, never deleted; the blob generation is raised first, in
    /// case its blobs were known to be stored (see `quarantine_path`).
    fn sweep_tmp(&self) -> Result<()> {
        let tmp = self.tmp_root();
        for e in fs::read_dir(&tmp).at(&tmp)? {
            let p = e.at(&tmp)?.path();
            remove_all(&p)?;
        }
        for p in pack::Packs::list_dir(&self.packs.dir)?.1 {
            let name = format!(
                "packs_{}",
                p.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            );
            self.new_blob_generation()?;
            self.quarantine_path(
                &p,
                quarantine::Kind::Stray,
                &name,
                "open: a pack without its .idx",
            )?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_root(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    /// A fresh private directory under `tmp/`, removed when dropped.
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

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    pub fn entry_path(&self, key: &Digest) -> PathBuf {
        let hex = key.to_hex();
        self.root.join("entries").join(&hex[..2]).join(hex)
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.has_loose_blob(d) || self.packs.find(d).is_some()
    }

    /// Is blob `d` a loose file? (One `fstatat` of `ab/<hex>` under an open
    /// `blobs/`: no walk of the store's whole path per lookup.)
    fn has_loose_blob(&self, d: &Digest) -> bool {
        let dir = self.blobs_dir.get_or_init(|| {
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(self.root.join("blobs"))
                .ok()
        });
        let Some(dir) = dir else {
            return self.blob_path(d).exists();
        };
        let hex = d.to_hex();
        let mut name = [0u8; 2 + 1 + 64 + 1];
        name[..2].copy_from_slice(&hex.as_bytes()[..2]);
        name[2] = b'/';
        name[3..67].copy_from_slice(hex.as_bytes());
        let c = std::ffi::CStr::from_bytes_with_nul(&name).expect("one NUL, at the end");
        // SAFETY: a valid directory descriptor, a NUL-terminated name, and a
        // stat buffer the kernel fills.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        rc == 0
    }

    /// The directory of the packs (see `pack`).
    pub fn packs_dir(&self) -> &Path {
        &self.packs.dir
    }

    /// Every readable pack (a pack whose index does not load is left out:
    /// `fsck` reports it).
    pub fn packs(&self) -> std::sync::Arc<Vec<std::sync::Arc<pack::Pack>>> {
        self.packs.all()
    }

    /// Where blob `d` is: a loose file, or a range of a pack (loose first).
    pub fn locate(&self, d: &Digest) -> Option<BlobLocation> {
        let p = self.blob_path(d);
        if p.exists() {
            return Some(BlobLocation::Loose(p));
        }
        self.packs
            .find(d)
            .map(|(pack, offset, len)| BlobLocation::Packed { pack, offset, len })
    }

    /// Blob `d`'s bytes as stored, unchecked (gc's walk, fsck's hashing).
    pub fn read_blob_unchecked(&self, d: &Digest) -> Result<Vec<u8>> {
        match self.locate(d) {
            Some(BlobLocation::Loose(p)) => fs::read(&p).at(&p),
            Some(BlobLocation::Packed { pack, offset, len }) => pack
                .read_raw(offset, len)
                .at(pack.pack_path(&self.packs.dir)),
            None => Err(StoreError::Missing(*d)),
        }
    }

    /// Size of blob `d`.
    pub fn blob_size(&self, d: &Digest) -> Result<u64> {
        let p = self.blob_path(d);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.packs.find(d) {
                Some((_, _, len)) => Ok(u64::from(len)),
                None => Err(StoreError::Missing(*d)),
            },
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    /// Copy blob `d` to a new file `dst`, checking the bytes against `d` as
    /// they are copied: a task's inputs are never bytes other than those
    /// its key names (a mismatch is `Corrupt`, and `dst` is removed). Never
    /// a hard link: see `materialize`.
    pub fn copy_blob(&self, d: &Digest, dst: &Path) -> Result<()> {
        let p = self.blob_path(d);
        let mut src = match self.open_loose(d) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Packed: `read_blob` checks the bytes.
                let bytes = self.read_blob(d)?;
                return fs::write(dst, bytes).at(dst);
            }
            Err(e) => return Err(self.loose_error(d, e)),
        };
        let copied = (|| -> std::io::Result<Digest> {
            let mut out = File::create(dst)?;
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                h.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            Ok(Digest::from_blake3(h.finalize()))
        })();
        match copied {
            Ok(got) if got == *d => Ok(()),
            Ok(got) => {
                let _ = fs::remove_file(dst);
                Err(StoreError::Corrupt {
                    digest: *d,
                    path: p,
                    reason: format!("its bytes hash to {got}"),
                })
            }
            Err(e) => {
                let _ = fs::remove_file(dst);
                Err(StoreError::Io {
                    path: dst.to_path_buf(),
                    source: e,
                })
            }
        }
    }

    /// The blob generation: it changes only when a blob may be removed, so
    /// a blob known to be stored in the current generation still is.
    pub fn blob_generation(&self) -> u64 {
        self.blob_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Start a new blob generation, durably, before removing any blob.
    pub fn new_blob_generation(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let next = self.blob_generation.load(Ordering::Acquire) + 1;
        let path = self.root.join(BLOB_GENERATION);
        let tmp = self.root.join(format!("{BLOB_GENERATION}.tmp"));
        let mut f = File::create(&tmp).at(&tmp)?;
        writeln!(f, "{next}").at(&tmp)?;
        f.sync_all().at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)?;
        self.root_fd.sync_all().at(&self.root)?;
        self.blob_generation.store(next, Ordering::Release);
        Ok(())
    }

    /// Open loose blob `d`'s file, read-only, never through a symlink
    /// planted in its place (that is `Corrupt`: a blob is a regular file).
    pub fn open_loose(&self, d: &Digest) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.blob_path(d);
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
    }

    fn loose_error(&self, d: &Digest, e: std::io::Error) -> StoreError {
        let path = self.blob_path(d);
        if e.raw_os_error() == Some(libc::ELOOP) {
            StoreError::Corrupt {
                digest: *d,
                path,
                reason: "a symlink where a blob should be".into(),
            }
        } else {
            StoreError::Io { path, source: e }
        }
    }

    /// Open blob `d` for reading: its file, or (packed) its bytes, checked
    /// against its name as they are read from the pack.
    pub fn open_blob(&self, d: &Digest) -> Result<BlobReader> {
        match self.open_loose(d) {
            Ok(f) => Ok(BlobReader::File(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.packs.find(d) {
                Some((pack, _, _)) => match pack.read(d, &self.packs.dir)? {
                    Some(b) => Ok(BlobReader::Bytes(std::io::Cursor::new(b))),
                    None => Err(StoreError::Missing(*d)),
                },
                None => Err(StoreError::Missing(*d)),
            },
            Err(e) => Err(self.loose_error(d, e)),
        }
    }

    /// Read a whole blob, checking its bytes against its name.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let buf = match self.open_blob(d)? {
            BlobReader::Bytes(c) => return Ok(c.into_inner()),
            BlobReader::File(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).at(self.blob_path(d))?;
                buf
            }
        };
        if Digest::of(&buf) != *d {
            return Err(StoreError::Corrupt {
                digest: *d,
                path: self.blob_path(d),
                reason: "content does not match its digest".into(),
            });
        }
        Ok(buf)
    }

    pub fn read_tree(&self, d: &Digest) -> Result<Tree> {
        let bytes = self.read_blob(d)?;
        Tree::decode(&bytes).map_err(|e| StoreError::Corrupt {
            digest: *d,
            path: self.blob_path(d),
            reason: format!("bad tree: {e}"),
        })
    }

    /// Stage `bytes` as a blob: written under `dir` (inside `tmp/`) unless the
    /// blob already exists. Durable only after `commit`.
    pub fn stage_bytes(&self, dir: &Path, bytes: &[u8], staged: &mut Staged) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if self.has_blob(&digest) || !staged.bytes_staged.insert(digest) {
            return Ok(digest);
        }
        self.writable()?;
        if bytes.len() <= pack::MAX_PACKED {
            if staged.packs.is_empty() {
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = dir.join(format!("pack-{n}.pack"));
                staged.packs.push(pack::PackWriter::create(path)?);
            }
            let w = staged.packs.last_mut().expect("just made");
            w.add(digest, bytes)?;
        } else {
            stage_loose(dir, digest, bytes, staged)?;
        }
        Ok(digest)
    }

    /// Stage a file already under `tmp/` to be renamed into `blobs/`.
    pub(crate) fn stage_file(
        &self,
        tmp: PathBuf,
        digest: Digest,
        inode: Option<(u64, u64)>,
        staged: &mut Staged,
    ) {
        staged.bytes_staged.insert(digest);
        staged.blobs.push(StagedBlob {
            tmp,
            digest,
            inode,
            read_only: false,
        });
    }

    /// Stage an entry record (written under `dir`).
    pub fn stage_entry(&self, dir: &Path, entry: &Entry, staged: &mut Staged) -> Result<()> {
        let tmp = dir.join(format!("entry-{}", entry.key.to_hex()));
        fs::write(&tmp, entry.to_json()).at(&tmp)?;
        staged.entries.push((tmp, entry.key));
        Ok(())
    }

    /// Make staged work durable and visible, in the order described in the
    /// module doc. On return every staged blob and entry is durable.
    pub fn commit(&self, staged: Staged) -> Result<()> {
        let entries = self.commit_blobs(staged)?;
        self.publish_entries(&entries, |_| true)
    }

    /// First half of `commit`: make staged blobs durable and visible. Returns
    /// the staged entry records, to be given to `publish_entries` (callers
    /// batch those, so one `syncfs` covers many entries).
    pub fn commit_blobs(&self, mut staged: Staged) -> Result<Vec<(PathBuf, Digest)>> {
        if !staged.blobs.is_empty() || !staged.packs.is_empty() {
            self.writable()?;
        }
        let mut finished = Vec::new();
        for w in merge_small_packs(std::mem::take(&mut staged.packs))? {
            if w.len() == 0 {
                let _ = fs::remove_file(&w.path);
            } else if w.len() >= pack::MIN_PACK {
                finished.push(w.finish()?);
            } else {
                // Too few to be worth a pack: loose files.
                let dir = w.path.parent().map(Path::to_path_buf).unwrap_or_default();
                for (digest, bytes) in w.into_blobs()? {
                    stage_loose(&dir, digest, &bytes, &mut staged)?;
                }
            }
        }
        if staged.blobs.is_empty() && !finished.is_empty() {
            // Packs only: fsync just their files, where `syncfs` would wait
            // for every other writer's dirty data on the filesystem too;
            // then the renames, made durable by fsync of `packs/`.
            for f in &finished {
                for p in [&f.pack, &f.idx] {
                    File::open(p).and_then(|f| f.sync_data()).at(p)?;
                }
            }
            for f in finished {
                self.publish_pack(f)?;
            }
            let dir = &self.packs.dir;
            File::open(dir).and_then(|f| f.sync_all()).at(dir)?;
        } else if finished.is_empty() && (1..=FSYNC_EACH).contains(&staged.blobs.len()) {
            // A few loose blobs (a watched change, a rescan that found one
            // file changed): fsync each and its shard, where `syncfs` would
            // wait for every other writer's dirty data too.
            for b in &staged.blobs {
                File::open(&b.tmp).and_then(|f| f.sync_data()).at(&b.tmp)?;
            }
            self.publish_blobs(&staged.blobs)?;
            let mut dirs: Vec<PathBuf> = staged
                .blobs
                .iter()
                .filter_map(|b| self.blob_path(&b.digest).parent().map(Path::to_path_buf))
                .collect();
            dirs.sort();
            dirs.dedup();
            // NB: `blobs/` too: a shard may have been made just now.
            dirs.push(self.root.join("blobs"));
            for d in dirs {
                File::open(&d).and_then(|f| f.sync_all()).at(&d)?;
            }
        } else if !staged.blobs.is_empty() || !finished.is_empty() {
            self.sync()?; // NB: data durable before any name in blobs/ points at it.
            self.note_change();
            self.publish_blobs(&staged.blobs)?;
            for f in finished {
                self.publish_pack(f)?;
            }
        }
        Ok(staged.take_entries())
    }

    /// Rename a finished pack into `packs/`: the pack, then its index (its
    /// blobs exist from then on). Its bytes are durable already.
    pub(crate) fn publish_pack(&self, f: pack::FinishedPack) -> Result<()> {
        let dir = &self.packs.dir;
        fs::create_dir_all(dir).at(dir)?;
        let pack_to = dir.join(format!("{}.pack", f.id));
        let idx_to = dir.join(format!("{}.idx", f.id));
        // NB: the id names the index table, so an existing pack of that id
        // holds the same blobs at the same places.
        for (from, to) in [(&f.pack, &pack_to), (&f.idx, &idx_to)] {
            match rename_noreplace(from, to) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let _ = fs::remove_file(from);
                }
                Err(e) => {
                    return Err(StoreError::Io {
                        path: to.clone(),
                        source: e,
                    })
                }
            }
        }
        let loaded = pack::Pack::load(dir, &f.id).map_err(|b| StoreError::Corrupt {
            digest: Digest::default(),
            path: b.path,
            reason: format!("a pack just written does not load: {}", b.reason),
        })?;
        let loaded = std::sync::Arc::new(loaded);
        self.packs.update(|l| {
            if !l.iter().any(|p| p.id == loaded.id) {
                l.push(loaded);
            }
        });
        Ok(())
    }

    /// Remove pack `id` (its index first: its blobs are gone from then on).
    /// NB: callers raise the blob generation first.
    pub(crate) fn remove_pack(&self, id: &str) -> Result<()> {
        let dir = &self.packs.dir;
        self.note_change();
        for ext in ["idx", "pack"] {
            let p = dir.join(format!("{id}.{ext}"));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path: p, source: e }),
            }
        }
        self.packs.update(|l| l.retain(|p| p.id != id));
        Ok(())
    }

    /// Write the blobs of pack `id` that `keep` accepts into a new pack (or
    /// loose files, if few), durably, then remove the old pack. Returns the
    /// (count, bytes) dropped. NB: raises the blob generation before the
    /// old pack goes.
    pub(crate) fn repack(
        &self,
        old: &pack::Pack,
        mut keep: impl FnMut(&Digest) -> bool,
    ) -> Result<(u64, u64)> {
        let work = self.tempdir("repack-")?;
        let mut staged = Staged::default();
        let mut dropped = (0u64, 0u64);
        let old_path = old.pack_path(&self.packs.dir);
        let mut kept = 0usize;
        for (d, off, len) in old.rows() {
            if !keep(&d) {
                dropped.0 += 1;
                dropped.1 += u64::from(len);
                continue;
            }
            let bytes = old.read_raw(off, len).at(&old_path)?;
            if staged.packs.is_empty() {
                staged
                    .packs
                    .push(pack::PackWriter::create(work.path().join("repack.pack"))?);
            }
            staged.packs[0].add(d, &bytes)?;
            kept += 1;
        }
        if kept > 0 {
            self.commit_blobs(staged)?;
            // NB: the new names durable before the old ones go.
            self.sync()?;
        }
        self.new_blob_generation()?;
        self.remove_pack(&old.id)?;
        Ok(dropped)
    }

    /// Second half of `commit`: one `syncfs` makes every blob name committed
    /// so far durable, then the entry records (those `keep` accepts) are
    /// renamed into `entries/`. Records not kept are deleted.
    pub fn publish_entries(
        &self,
        entries: &[(PathBuf, Digest)],
        mut keep: impl FnMut(&Digest) -> bool,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.sync()?; // NB: blob names durable before an entry can reference them.
        self.note_change();
        for (tmp, key) in entries {
            if keep(key) {
                let dst = self.entry_path(key);
                rename_into_shard(tmp, &dst, |a, b| fs::rename(a, b)).at(&dst)?;
            } else {
                let _ = fs::remove_file(tmp);
            }
        }
        Ok(())
    }

    /// `publish_blob` each, on a few threads when there are many (each is
    /// a rename into one of 256 directories: they proceed in parallel).
    fn publish_blobs(&self, blobs: &[StagedBlob]) -> Result<()> {
        const PER_THREAD: usize = 512;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4)
            .min(blobs.len() / PER_THREAD);
        if threads <= 1 {
            return blobs.iter().try_for_each(|b| self.publish_blob(b));
        }
        let chunk = blobs.len().div_ceil(threads);
        std::thread::scope(|s| {
            let workers: Vec<_> = blobs
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().try_for_each(|b| self.publish_blob(b))))
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    }

    fn publish_blob(&self, b: &StagedBlob) -> Result<()> {
        let dst = self.blob_path(&b.digest);
        if !b.read_only {
            fs::set_permissions(&b.tmp, fs::Permissions::from_mode(0o444)).at(&b.tmp)?;
        }
        match rename_into_shard(&b.tmp, &dst, rename_noreplace) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(()),
            Err(e) => {
                return Err(StoreError::Io {
                    path: dst,
                    source: e,
                })
            }
        }
        if let Some((dev, ino)) = b.inode {
            // A file taken over in place must be the very inode we hashed.
            let md = fs::symlink_metadata(&dst).at(&dst)?;
            if md.dev() != dev || md.ino() != ino || !md.is_file() {
                let _ = fs::remove_file(&dst);
                return Err(StoreError::Changed {
                    path: b.tmp.clone(),
                    what: "replaced by another file between hashing and storing".into(),
                });
            }
        }
        Ok(())
    }

    /// Durability barrier: returns once a `syncfs` that *started after this
    /// call* has completed. Concurrent callers share one `syncfs` (group
    /// commit): a caller arriving while one runs waits for the next, which
    /// the first of the waiters issues for all of them.
    pub fn sync(&self) -> Result<()> {
        self.changed
            .store(false, std::sync::atomic::Ordering::Release);
        let gate = &self.gate;
        let mut st = gate.state.lock().unwrap_or_else(|p| p.into_inner());
        // The first sync to start after now: the running one started too early.
        let need = st.started + 1;
        loop {
            if st.completed >= need {
                return Ok(());
            }
            if !st.running {
                st.running = true;
                st.started += 1;
                let mine = st.started;
                drop(st);
                let res = self.syncfs();
                st = gate.state.lock().unwrap_or_else(|p| p.into_inner());
                st.running = false;
                if res.is_ok() {
                    st.completed = mine;
                }
                gate.cv.notify_all();
                res?;
                continue;
            }
            st = gate.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// `sync`, if any name in the store changed since the last one started
    /// (a command that only read pays no `syncfs`, which would also flush
    /// every other process's writes to the filesystem).
    pub fn sync_changes(&self) -> Result<()> {
        if self.changed.load(std::sync::atomic::Ordering::Acquire) {
            self.sync()?;
        }
        Ok(())
    }

    /// Note that a name in the store changed (see `sync_changes`).
    pub(crate) fn note_change(&self) {
        self.changed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn syncfs(&self) -> Result<()> {
        // SAFETY: syncfs on a valid, owned descriptor.
        let rc = unsafe { libc::syncfs(self.root_fd.as_raw_fd()) };
        if rc != 0 {
            return Err(StoreError::Io {
                path: self.root.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    pub fn read_entry(&self, key: &Digest) -> Result<Option<Entry>> {
        let p = self.entry_path(key);
        match fs::read(&p) {
            Ok(bytes) => Entry::from_json(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    digest: *key,
                    path: p,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    pub fn remove_entry(&self, key: &Digest) -> Result<()> {
        self.note_change();
        let p = self.entry_path(key);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path: p, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Blobs whose hex name starts with `prefix` (at least 2 hex digits).
    pub fn blobs_with_prefix(&self, prefix: &str) -> Result<Vec<Digest>> {
        let shard = self.root.join("blobs").join(&prefix[..2]);
        let mut out = Vec::new();
        let listing = match fs::read_dir(&shard) {
            Ok(rd) => rd.collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(StoreError::Io {
                    path: shard,
                    source: e,
                })
            }
        };
        for e in listing {
            let name = e.at(&shard)?.file_name();
            if let Some(d) = name
                .to_str()
                .filter(|n| n.starts_with(prefix))
                .and_then(Digest::from_hex)
            {
                out.push(d);
            }
        }
        for p in self.packs.all().iter() {
            for d in p.with_prefix(prefix) {
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Every entry key on disk (the source of truth for index rebuilds and gc).
    pub fn entry_keys(&self) -> Result<Vec<Digest>> {
        let mut keys = Vec::new();
        let dir = self.root.join("entries");
        for shard in fs::read_dir(&dir).at(&dir)? {
            let shard = shard.at(&dir)?.path();
            for e in fs::read_dir(&shard).at(&shard)? {
                let e = e.at(&shard)?;
                if let Some(d) = e.file_name().to_str().and_then(Digest::from_hex) {
                    keys.push(d);
                }
            }
        }
        Ok(keys)
    }

    /// Every blob digest on disk, with its status-change time (set when it
    /// was renamed into `blobs/`) and size.
    pub fn blobs(&self) -> Result<Vec<(Digest, std::time::SystemTime, u64)>> {
        let mut out = Vec::new();
        let dir = self.root.join("blobs");
        for shard in fs::read_dir(&dir).at(&dir)? {
            let shard = shard.at(&dir)?.path();
            for e in fs::read_dir(&shard).at(&shard)? {
                let e = e.at(&shard)?;
                if let Some(d) = e.file_name().to_str().and_then(Digest::from_hex) {
                    let md = e.metadata().at(e.path())?;
                    let ctime = std::time::UNIX_EPOCH
                        + std::time::Duration::new(
                            md.ctime().max(0) as u64,
                            md.ctime_nsec().clamp(0, 999_999_999) as u32,
                        );
                    out.push((d, ctime, md.len()));
                }
            }
        }
        Ok(out)
    }
}

/// Make the store's directory (and any missing parent) private to its
/// owner, 0700: outputs are readable only through it. A directory that
/// exists is left as it is, which is the way to share a store with a
/// group: make it first (`install -d -m 2750 -g GROUP DIR`).
pub fn create_store_dir(root: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if root.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .at(root)
}

/// Files a new store directory may already hold: the lock, and a detached
/// daemon's log (created before the daemon opens the store).
const DAEMON_FILES: [&str; 3] = ["lock", "daemon.log", "daemon.sock"];

/// A store directory with a supported FORMAT, or empty (but for `DAEMON_FILES`).
fn check_root(root: &Path) -> Result<()> {
    let format = root.join("FORMAT");
    match fs::read_to_string(&format) {
        Ok(text) => check_format(&format, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let stray = fs::read_dir(root)
                .at(root)?
                .filter_map(|e| e.ok())
                .any(|e| !DAEMON_FILES.contains(&e.file_name().to_str().unwrap_or("")));
            if stray {
                return Err(StoreError::NotAStore {
                    path: root.to_path_buf(),
                    reason: "directory is not empty and has no FORMAT file".into(),
                });
            }
            Ok(())
        }
        Err(e) => Err(StoreError::Io {
            path: format,
            source: e,
        }),
    }
}

/// Holds a `lock` and nothing but parts of the layout `init_layout` makes:
/// a store whose creation is in progress (or was interrupted).
fn being_created(root: &Path) -> bool {
    const LAYOUT: [&str; 9] = [
        "lock",
        "blobs",
        "packs",
        "entries",
        "tmp",
        "index",
        "FORMAT.tmp",
        "daemon.log",
        "daemon.sock",
    ];
    let Ok(rd) = fs::read_dir(root) else {
        return false;
    };
    let names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.iter().any(|n| n == "lock") && names.iter().all(|n| LAYOUT.iter().any(|l| n == l))
}

fn check_format(path: &Path, text: &str) -> Result<()> {
    let mut lines = text.lines();
    if lines.next() != Some(FORMAT_NAME) {
        return Err(StoreError::NotAStore {
            path: path.to_path_buf(),
            reason: "FORMAT names another format".into(),
        });
    }
    let _ = lines.next();
    match format_version(text) {
        Some(FORMAT_VERSION) => Ok(()),
        Some(v) if FORMAT_UPGRADES.contains(&v) => Ok(()),
        _ => Err(StoreError::Format {
            path: path.to_path_buf(),
            found: text.lines().nth(1).unwrap_or("").to_string(),
            supported: format!("version {FORMAT_VERSION}"),
        }),
    }
}

/// Write `bytes` (named `digest`) as a loose blob file under `dir`, staged
/// in `staged`. NB: created read-only (the descriptor still writes), which
/// saves a chmod per blob at publish, unless the umask would take bits off
/// 0444. A file of that name there already (the same content from another
/// part of the batch) is left as it is.
fn stage_loose(dir: &Path, digest: Digest, bytes: &[u8], staged: &mut Staged) -> Result<()> {
    let tmp = dir.join(format!("blob-{}", digest.to_hex()));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&tmp)
    {
        Ok(mut f) => f.write_all(bytes).at(&tmp)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => {
            return Err(StoreError::Io {
                path: tmp,
                source: e,
            })
        }
    }
    staged.blobs.push(StagedBlob {
        tmp,
        digest,
        inode: None,
        read_only: umask_keeps_0444(),
    });
    Ok(())
}

/// Why this process cannot write the store directory `root`, if it exists
/// and it cannot: a read-only filesystem (a CVMFS-like distribution, a
/// read-only export) or no write permission (another user's store).
pub fn read_only_reason(root: &Path) -> Option<std::io::Error> {
    use nix::unistd::AccessFlags;
    match nix::unistd::access(root, AccessFlags::W_OK) {
        Err(e @ (nix::errno::Errno::EROFS | nix::errno::Errno::EACCES)) => Some(e.into()),
        _ => None,
    }
}

/// The blob generation recorded in the store at `root` (see
/// `Store::blob_generation`); absent: 0. Read without the lock by
/// `sync`'s stat-cache copy, which checks it again under the lock.
pub(crate) fn read_blob_generation(root: &Path) -> Result<u64> {
    let path = root.join(BLOB_GENERATION);
    match fs::read_to_string(&path) {
        Ok(t) => t.trim().parse().map_err(|_| StoreError::NotAStore {
            reason: format!("{BLOB_GENERATION} holds {t:?}, not a number"),
            path,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StoreError::Io { path, source: e }),
    }
}

/// `rename(from, to)` by `how`, making `to`'s shard directory first if it
/// is not there yet (shards are made on first use).
fn rename_into_shard(
    from: &Path,
    to: &Path,
    how: impl Fn(&Path, &Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match how(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && from.exists() => {
            if let Some(shard) = to.parent() {
                match fs::create_dir(shard) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            how(from, to)
        }
        r => r,
    }
}

/// The version a FORMAT file's text names.
fn format_version(text: &str) -> Option<u32> {
    text.lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("version "))
        .and_then(|v| v.trim().parse::<u32>().ok())
}

/// Where a blob is stored (`Store::locate`).
#[derive(Debug, Clone)]
pub enum BlobLocation {
    Loose(PathBuf),
    Packed {
        pack: std::sync::Arc<pack::Pack>,
        offset: u64,
        len: u32,
    },
}

/// Pack writers of one commit (a sync's walker threads write one each),
/// with those too small to be a pack of their own (`MIN_PACK`) moved into
/// another when together they are enough: whether a small file is packed
/// does not depend on how the walk happened to share the files out.
fn merge_small_packs(mut ws: Vec<pack::PackWriter>) -> Result<Vec<pack::PackWriter>> {
    ws.sort_by_key(|w| std::cmp::Reverse(w.len()));
    let total: usize = ws.iter().map(|w| w.len()).sum();
    if ws.len() < 2 || total < pack::MIN_PACK {
        return Ok(ws);
    }
    // Sorted largest first: the small ones (the tail) join the largest.
    let first_small = ws
        .iter()
        .position(|w| w.len() < pack::MIN_PACK)
        .unwrap_or(ws.len())
        .max(1);
    for w in ws.split_off(first_small) {
        for (d, b) in w.into_blobs()? {
            ws[0].add(d, &b)?;
        }
    }
    Ok(ws)
}

/// An open blob (`Store::open_blob`): a loose file, or a packed blob's
/// bytes (already checked against its name).
#[derive(Debug)]
pub enum BlobReader {
    File(File),
    Bytes(std::io::Cursor<Vec<u8>>),
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BlobReader::File(f) => f.read(buf),
            BlobReader::Bytes(c) => c.read(buf),
        }
    }
}

/// Whether this process's umask leaves a file created with mode 0444 at
/// 0444 (read once from /proc; unknown: no).
fn umask_keeps_0444() -> bool {
    static KEEPS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KEEPS.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
            })
            .is_some_and(|m| m & 0o444 == 0)
    })
}

pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let from_c = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let to_c = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated paths; AT_FDCWD resolves them as given.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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

    fn pack_files(s: &Store) -> Vec<String> {
        let mut v: Vec<String> = dir_names(s.packs_dir())
            .unwrap()
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
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
        assert_eq!(FORMAT_VERSION, 2);
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
    fn a_version_1_store_is_upgraded_when_opened() {
        let t = tempfile::tempdir().unwrap();
        drop(open(t.path()));
        fs::write(t.path().join("FORMAT"), "dagfs-store\nversion 1\n").unwrap();
        fs::remove_dir(t.path().join("packs")).unwrap();
        let s = open(t.path());
        assert_eq!(
            fs::read_to_string(t.path().join("FORMAT")).unwrap(),
            "dagfs-store\nversion 2\n"
        );
        stage_many(&s, 100, "u");
        assert_eq!(pack_files(&s).len(), 2);
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
