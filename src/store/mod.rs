//! The store: immutable blobs named by BLAKE3, Merkle trees of task outputs,
//! and the durable entry records. The source of truth of a dagfs cache.
//!
//! Owns: everything under `<store>/` except `index/` (see `crate::index`).
//! May call: `hash` only.
//!
//! ```text
//! <store>/
//!   FORMAT            "dagfs-store\nversion 1\n"; a newer version fails to open
//!   lock              flock held by the single owner; holds "pid N (cmd)"
//!   blobs/ab/<hex>    immutable files, mode 0444, named by their BLAKE3
//!   entries/ab/<key>  one JSON record per cache entry (see `entry`)
//!   tmp/              work in progress; swept when the store is opened
//!   index/            sled, rebuildable from blobs/ + entries/
//!   quarantine/       damaged files moved out of blobs/ and entries/ (see
//!                     `quarantine`), never deleted; `fsck` finds them
//!   blob-generation   a counter, "N\n": raised (durably) before any blob is
//!                     removed (gc, quarantine); absent: 0
//! ```
//!
//! The blob generation lets a cache of "this blob is stored" skip the
//! check while the generation it was made in is current: blobs are only
//! ever added in between. (Deleting blobs by hand is damage: `fsck` finds
//! what it breaks.)
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
pub mod quarantine;
pub mod syncs;
pub mod tree;

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
pub const FORMAT_VERSION: u32 = 1;

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
    _lock: StoreLock,
}

const BLOB_GENERATION: &str = "blob-generation";

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
    /// Digests written by `stage_bytes`, so identical content (two empty
    /// directories of one output, say) is staged once.
    bytes_staged: std::collections::HashSet<Digest>,
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
        self.blobs.is_empty() && self.entries.is_empty()
    }
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
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
        Ok(())
    }

    /// Add `other`'s blobs and entries to this batch.
    pub fn append(&mut self, other: Staged) {
        self.blobs.extend(other.blobs);
        self.entries.extend(other.entries);
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
        fs::create_dir_all(root).at(root)?;
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
        let lock = StoreLock::acquire(&root.join("lock"), on_wait)?;
        match check_root(root) {
            // An interrupted creation: init_layout completes it.
            Err(StoreError::NotAStore { .. }) if being_created(root) => {}
            r => r?,
        }
        let root_fd = File::open(root).at(root)?;
        let generation = root.join(BLOB_GENERATION);
        let blob_generation = match fs::read_to_string(&generation) {
            Ok(t) => t.trim().parse().map_err(|_| StoreError::NotAStore {
                path: generation.clone(),
                reason: format!("{BLOB_GENERATION} holds {t:?}, not a number"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(StoreError::Io {
                    path: generation,
                    source: e,
                })
            }
        };
        let store = Store {
            root: root.to_path_buf(),
            root_fd,
            gate: SyncGate::default(),
            blob_generation: blob_generation.into(),
            changed: false.into(),
            _lock: lock,
        };
        store.init_layout()?;
        store.sweep_tmp()?;
        Ok(store)
    }

    fn init_layout(&self) -> Result<()> {
        let format = self.root.join("FORMAT");
        if format.exists() {
            return Ok(());
        }
        for top in ["blobs", "entries"] {
            for b in 0..=255u8 {
                let d = self.root.join(top).join(crate::hash::to_hex(&[b]));
                fs::create_dir_all(&d).at(&d)?;
            }
        }
        for d in ["tmp", "index"] {
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

    /// Remove leftovers of crashed processes. Safe: we hold the lock, so no
    /// other process has work in progress under `tmp/`.
    fn sweep_tmp(&self) -> Result<()> {
        let tmp = self.tmp_root();
        for e in fs::read_dir(&tmp).at(&tmp)? {
            let p = e.at(&tmp)?.path();
            remove_all(&p)?;
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
        self.blob_path(d).exists()
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

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::Missing(*d),
            _ => StoreError::Io { path: p, source: e },
        })
    }

    /// Read a whole blob, checking its bytes against its name.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_blob(d)?
            .read_to_end(&mut buf)
            .at(self.blob_path(d))?;
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
        if !self.has_blob(&digest) && staged.bytes_staged.insert(digest) {
            let tmp = dir.join(format!("blob-{}", digest.to_hex()));
            // NB: created read-only (the descriptor still writes), which
            // saves a chmod per blob at publish, unless the umask would
            // take bits off 0444.
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&tmp)
                .and_then(|mut f| f.write_all(bytes))
                .at(&tmp)?;
            staged.blobs.push(StagedBlob {
                tmp,
                digest,
                inode: None,
                read_only: umask_keeps_0444(),
            });
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
        if !staged.blobs.is_empty() {
            self.sync()?; // NB: data durable before any name in blobs/ points at it.
            self.note_change();
            self.publish_blobs(&staged.blobs)?;
        }
        Ok(staged.take_entries())
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
                fs::rename(tmp, &dst).at(&dst)?;
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
        match rename_noreplace(&b.tmp, &dst) {
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
        for e in fs::read_dir(&shard).at(&shard)? {
            let name = e.at(&shard)?.file_name();
            if let Some(d) = name
                .to_str()
                .filter(|n| n.starts_with(prefix))
                .and_then(Digest::from_hex)
            {
                out.push(d);
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
    const LAYOUT: [&str; 8] = [
        "lock",
        "blobs",
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
    let version = lines
        .next()
        .and_then(|l| l.strip_prefix("version "))
        .and_then(|v| v.trim().parse::<u32>().ok());
    match version {
        Some(FORMAT_VERSION) => Ok(()),
        _ => Err(StoreError::Format {
            path: path.to_path_buf(),
            found: text.lines().nth(1).unwrap_or("").to_string(),
            supported: format!("version {FORMAT_VERSION}"),
        }),
    }
}

/// `renameat2(RENAME_NOREPLACE)`: never replaces an existing file.
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
