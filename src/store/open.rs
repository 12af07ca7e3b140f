//! Opening a store: creating its layout (`init_layout`, `FORMAT` last),
//! healing missing top directories, upgrading an older format, sweeping
//! `tmp/`, and opening to read only where this process cannot write.
//!
//! Write order of a creation: directories, `FORMAT.tmp`, fsync, rename to
//! `FORMAT`, `syncfs`: a store with a `FORMAT` has its whole layout.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::error::{IoContext, Result, StoreError};
use super::lock::{self, StoreLock};
use super::*;

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
            gate: BarrierGate::default(),
            blob_generation: blob_generation.into(),
            changed: false.into(),
            packs: pack::Packs::new(root.join("packs")),
            blobs_dir: std::sync::OnceLock::new(),
            read_only: None,
            recreated: Vec::new(),
            durable_shards: Default::default(),
            few_by: Default::default(),
            holds: Default::default(),
            sync_names: Default::default(),
            sync_logs: Default::default(),
            trees: Default::default(),
            spare_dirs: Default::default(),
            tmp_dev: Default::default(),
            merging: Default::default(),
            bumping: Default::default(),
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
        if format_version(&text)
            .is_none_or(|v| v != FORMAT_VERSION && !FORMAT_READ_AS_IS.contains(&v))
        {
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
            gate: BarrierGate::default(),
            blob_generation: read_blob_generation(root)?.into(),
            changed: false.into(),
            // NB: another process owns the packs and merges them away:
            // only a pack opened before it removes them stays readable.
            packs: pack::Packs::new_eager(root.join("packs")),
            blobs_dir: std::sync::OnceLock::new(),
            read_only: Some(why.to_string()),
            recreated: Vec::new(),
            durable_shards: Default::default(),
            few_by: Default::default(),
            holds: Default::default(),
            sync_names: Default::default(),
            sync_logs: Default::default(),
            trees: Default::default(),
            spare_dirs: Default::default(),
            tmp_dev: Default::default(),
            merging: Default::default(),
            bumping: Default::default(),
            _lock: lock,
        })
    }

    /// A read-only store's shared lock is held only while its index is
    /// copied (see `Cache`): a reader must not hold up the store's writer.
    /// An error: the packs could not all be listed and opened (see
    /// `pack::BadPack::passing`), and the lock is still held.
    pub fn release_read_lock(&mut self) -> Result<()> {
        if self.read_only.is_some() {
            // NB: the packs are listed (and, eager, opened) while the lock
            // is held, so the set matches the index copied under it; the
            // owner may merge them away once it is released.
            self.packs.all_or_error()?;
            self._lock = StoreLock::none();
        }
        Ok(())
    }

    /// Fails (`ReadOnly`) for a store this process cannot write: a read-only
    /// store serves what it holds, and nothing new.
    pub(super) fn writable(&self) -> Result<()> {
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
        self.barrier()
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
        spread_scratch(&tmp);
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
}

/// ext4's "top of directory hierarchies" inode flag (`chattr +T`).
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Mark `tmp/` as the top of directory hierarchies (`chattr +T`, ext4's
/// Orlov allocator), so each scratch directory made in it (a run's, a
/// sync's staging) is placed in a block group of its own choosing rather
/// than the store's. NB: on ext4 without a journal (this project's test
/// machines), allocating an inode skips every inode of its group freed in
/// the last minute or more (`recently_deleted`, up to six while the inode
/// table is dirty), reading each one's inode-table entry: scratch made and
/// removed beside the blobs made every new inode of a cold run cost
/// 0.3-1 ms, most of a trivial task's time (perf). Best effort: another
/// filesystem has no such flag (ENOTTY, EOPNOTSUPP), and the store works
/// the same without it.
fn spread_scratch(tmp: &Path) {
    let Ok(dir) = File::open(tmp) else {
        return;
    };
    let Ok(flags) = get_flags(&dir) else {
        return;
    };
    if flags & FS_TOPDIR_FL != 0 {
        return;
    }
    if let Err(e) = set_flags(&dir, flags | FS_TOPDIR_FL) {
        log::debug!(
            "{}: cannot mark it the top of directory hierarchies: {e}",
            tmp.display()
        );
    }
}

/// `FS_IOC_GETFLAGS` of an open file.
fn get_flags(f: &File) -> std::io::Result<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int to `flags`, a valid pointer.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(f),
            libc::FS_IOC_GETFLAGS,
            &mut flags,
        )
    };
    if r == 0 {
        Ok(flags)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `FS_IOC_SETFLAGS` of an open file.
fn set_flags(f: &File, flags: libc::c_int) -> std::io::Result<()> {
    // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(f),
            libc::FS_IOC_SETFLAGS,
            &flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The flags `FS_IOC_GETFLAGS` reports for `path`; None where the
/// filesystem has none.
#[cfg(test)]
pub(crate) fn inode_flags(path: &Path) -> Option<libc::c_int> {
    get_flags(&File::open(path).ok()?).ok()
}

/// Set `path`'s inode flags (`FS_IOC_SETFLAGS`).
#[cfg(test)]
pub(crate) fn set_inode_flags(path: &Path, flags: libc::c_int) -> std::io::Result<()> {
    set_flags(&File::open(path)?, flags)
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

/// The version a FORMAT file's text names.
fn format_version(text: &str) -> Option<u32> {
    text.lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("version "))
        .and_then(|v| v.trim().parse::<u32>().ok())
}
