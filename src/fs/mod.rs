//! fs: the FUSE view of the cache (see ARCHITECTURE.md, "5. The mounted tree").
//!
//! Owns: the mount and everything the kernel holds through it: inodes
//! (`inode`), open handles (`handle`), decoded trees (`tree_cache`), the
//! read path and passthrough backing files (`passthrough`). May call: the store only through
//! `view::StoreView` (names, trees, blob paths opened read-only), `hash`,
//! `store::tree` (types), `store::names` (the name rules), `fuser`. Guarantees:
//!
//! - Everything is read-only: every write operation answers EROFS, as does
//!   `open` for writing and `access(W_OK)`.
//! - A request whose handler panics is answered EIO (the unanswered `fuser`
//!   reply sends EIO when dropped during unwinding), counted in
//!   `FsCounters::panics`, and the mount stays up.
//! - Errors become errno values only in `error::errno`.
//! - A stored file's blob is verified against its digest before its bytes
//!   are first served (`verify`): a mismatch is EIO, never wrong bytes.
//! - Reads of stored files use `pread` on the blob into the kernel's page
//!   cache, and the kernel sends no open requests for files or directories
//!   (it stops once answered ENOSYS); with `Passthrough::On` and the kernel
//!   granting it (Linux >= 6.9, CAP_SYS_ADMIN), files are opened by FUSE
//!   passthrough instead (see `passthrough` for why that is not the
//!   default); the choice is logged once and shown in `/.dagfs/stats`.
//! - Directory listings carry attributes (readdirplus, adaptive: the kernel
//!   asks for them when the reader stats what it lists), and the kernel
//!   caches listings and pages of immutable paths.
//! - Extended attributes outside `user.` (security.*, system.posix_acl_*)
//!   answer EOPNOTSUPP, so `ls -l` stops asking for them after the first
//!   file instead of making two round trips per file.
//!
//! Layout of the tree and resolution: `node` (names parsed by `names`);
//! TTLs, modes and offsets: `ops`; live figures: `counters`.

pub mod view;

mod counters;
mod error;
mod handle;
mod inode;
pub mod invalidate;
mod key_pages;
// NB: public for the fuzz targets and tests/hostile.rs (lookup without a
// mount); not part of the library's API.
#[doc(hidden)]
pub mod names;
#[doc(hidden)]
#[allow(clippy::len_without_is_empty)]
pub mod node;
mod ops;
mod passthrough;
#[doc(hidden)]
pub mod tree_cache;
mod unopened;
pub mod verify;

pub use counters::FsCounters;
pub use error::{errno, FsError};
pub use verify::Verify;

use std::ffi::OsStr;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BackgroundSession, Config, CopyFileRangeFlags, Errno, FileHandle, Filesystem,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};

use counters::Op;
use inode::{Ino, InodeTable};
use node::{Node, FIRST_DYNAMIC_INO};
use ops::XattrReply;
use passthrough::Reads;
use tree_cache::TreeCache;
use view::StoreView;

/// Whether reads of stored files may use FUSE passthrough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passthrough {
    /// `pread` through the page cache, without open requests: the faster
    /// choice but for large files read once (measured by
    /// `scripts/bench-fuse`; see `passthrough`).
    #[default]
    Auto,
    /// `pread`, as `Auto` (`/.dagfs/stats` says passthrough is off by
    /// option).
    Off,
    /// Passthrough when the kernel grants it (an open request per file),
    /// else `pread`.
    On,
}

#[derive(Debug, Clone)]
pub struct FsOptions {
    pub passthrough: Passthrough,
    /// Owner shown for every file.
    pub uid: u32,
    pub gid: u32,
    /// Let other users in (`allow_other`), with the kernel checking modes
    /// (`default_permissions`): always both or neither.
    pub allow_other: bool,
    /// Request threads.
    pub n_threads: usize,
    /// Source shown in /proc/mounts: the store path.
    pub fsname: String,
    /// Log every failed request to stderr.
    pub debug: bool,
    /// When reads of stored files are verified against their digest.
    pub verify: Verify,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            passthrough: Passthrough::Auto,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            allow_other: false,
            n_threads: std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)),
            fsname: "dagfs".into(),
            debug: false,
            verify: Verify::FirstOpen,
        }
    }
}

/// The filesystem: hand it to `mount`.
pub struct DagFs {
    view: Arc<dyn StoreView>,
    counters: Arc<FsCounters>,
    inodes: Arc<InodeTable<Node>>,
    handles: handle::HandleTable,
    trees: TreeCache,
    reads: Reads,
    verifier: verify::Verifier,
    /// Open blobs, generated-file snapshots and live listings, for requests
    /// that come without a handle.
    blob_files: Arc<unopened::BlobFiles>,
    snapshots: Arc<unopened::Snapshots>,
    listings: unopened::Listings,
    /// `/keys`, listed a page at a time.
    key_pages: key_pages::KeyPages,
    /// The kernel sends no opendir once answered ENOSYS (set at INIT).
    skip_opendir: bool,
    uid: u32,
    gid: u32,
    mount_time: SystemTime,
    debug: bool,
}

impl DagFs {
    /// What `invalidate::Invalidator` needs to name this mount's inodes.
    pub fn inodes(&self) -> invalidate::Inodes {
        invalidate::Inodes(
            self.inodes.clone(),
            self.snapshots.clone(),
            self.blob_files.clone(),
        )
    }

    pub fn new(view: Arc<dyn StoreView>, opts: &FsOptions, counters: Arc<FsCounters>) -> DagFs {
        DagFs {
            view,
            counters,
            inodes: Arc::new(InodeTable::new(FIRST_DYNAMIC_INO)),
            handles: handle::HandleTable::default(),
            // Up to 1024 trees / ~1M decoded entries (~100 MB at worst).
            trees: TreeCache::new(1024, 1 << 20),
            reads: Reads::new(opts.passthrough),
            verifier: verify::Verifier::new(opts.verify),
            blob_files: Default::default(),
            snapshots: Default::default(),
            listings: Default::default(),
            key_pages: Default::default(),
            skip_opendir: false,
            uid: opts.uid,
            gid: opts.gid,
            mount_time: SystemTime::now(),
            debug: opts.debug,
        }
    }

    /// Run one request handler; a panic answers EIO and keeps the mount up.
    fn serve<R>(&self, op: Op, reply: R, f: impl FnOnce(R)) {
        self.counters.count(op);
        // NB: `reply` moves into the closure; if it panics, unwinding drops
        // the unanswered reply, and fuser's `ReplyRaw::drop` sends EIO.
        if panic::catch_unwind(AssertUnwindSafe(|| f(reply))).is_err() {
            self.counters.panics.fetch_add(1, Ordering::Relaxed);
            self.counters.eio_count.fetch_add(1, Ordering::Relaxed);
            log::error!("a {} request panicked; answered EIO", op.name());
        }
    }

    /// The errno answering `e`, counted and logged.
    fn fail(&self, op: Op, e: FsError) -> Errno {
        let n = errno(&e);
        if n == Errno::EIO {
            self.counters.eio_count.fetch_add(1, Ordering::Relaxed);
            log::warn!("{} failed: {e}", op.name());
        } else if self.debug {
            log::info!("{}: {e}", op.name());
        }
        n
    }

    /// Answer a write request: EROFS.
    fn read_only<R>(&self, reply: R, error: impl FnOnce(R, Errno)) {
        self.serve(Op::Other, reply, |r| {
            error(r, self.fail(Op::Other, FsError::ReadOnly))
        });
    }
}

/// Mount options: read-only, nosuid, nodev, noatime, the store as source,
/// type `fuse.dagfs`.
fn mount_options(opts: &FsOptions) -> Vec<MountOption> {
    let mut o = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::FSName(opts.fsname.clone()),
    ];
    // NB: fuser hands `Subtype` only to fusermount; when it mounts with
    // mount(2) itself (as root) the kernel needs `subtype=` in the mount
    // data, else /proc/mounts says `fuse`, not `fuse.dagfs`.
    if nix::unistd::geteuid().is_root() {
        o.push(MountOption::CUSTOM("subtype=dagfs".into()));
    } else {
        o.push(MountOption::Subtype("dagfs".into()));
    }
    if opts.allow_other {
        o.push(MountOption::DefaultPermissions);
    }
    o
}

/// Mount in the background; dropping the session or `umount_and_join`
/// unmounts. Returns once the kernel's INIT has been answered, so the mount
/// is live. No `auto_unmount`: it needs fusermount, and a daemon that dies
/// leaves a dead mount for `umount` to clear.
pub fn mount(fs: DagFs, mountpoint: &Path, opts: &FsOptions) -> io::Result<BackgroundSession> {
    let mut cfg = Config::default();
    cfg.mount_options = mount_options(opts);
    if opts.allow_other {
        cfg.acl = SessionACL::All;
    }
    cfg.n_threads = Some(opts.n_threads.max(1));
    let session = fuser::Session::new(fs, mountpoint, &cfg)?.spawn()?;
    set_readahead(mountpoint);
    Ok(session)
}

/// Kernel readahead for the mount, KiB. The kernel caps what a FUSE server
/// may ask for at INIT to the default (128 KiB), which makes a cold
/// sequential read of a large file through the mount ~1.3x slower than
/// native here; 4 MiB (in requests of up to 1 MiB) reads it at about the
/// disk's speed (`scripts/bench-fuse`).
const READAHEAD_KB: u32 = 4096;

/// Raise the mount's readahead through sysfs, as root only; otherwise (or
/// if sysfs is not there) the kernel's default stays.
fn set_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Ok(md) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = md.dev();
    let (major, minor) = (
        ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    );
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, READAHEAD_KB.to_string()) {
        log::warn!("cannot set {knob} (readahead stays the kernel's default): {e}");
    }
}

impl Filesystem for DagFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.reads.negotiate(config);
        let offered = config.capabilities();
        // NB: readdirplus must be asked for; AUTO lets the kernel ask for
        // attributes only when the reader stats what it lists (`ls -l`, not
        // `ls` of a million keys, whose inodes would all be instantiated).
        // AUTO_INVAL_DATA: a changed mtime drops cached pages and listings
        // (generated files, live directories). PARALLEL_DIROPS: lookups and
        // listings in one directory need not queue behind each other.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & offered);
        self.skip_opendir = offered.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.serve(Op::Lookup, reply, |reply| {
            match self.do_lookup(Ino(parent.0), name, req.pid()) {
                Ok(e) => reply.entry_with_ttls(&e.attr_ttl, &e.entry_ttl, &e.attr, Generation(0)),
                Err(e) => reply.error(self.fail(Op::Lookup, e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.serve(Op::Other, (), |()| self.do_forget(Ino(ino.0), nlookup));
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve(Op::Getattr, reply, |reply| {
            match self.do_getattr(Ino(ino.0), req.pid()) {
                Ok((attr, ttl)) => reply.attr(&ttl, &attr),
                Err(e) => reply.error(self.fail(Op::Getattr, e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve(Op::Readlink, reply, |reply| {
            match self.do_readlink(Ino(ino.0)) {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(self.fail(Op::Readlink, e)),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.serve(Op::Open, reply, |reply| {
            match self.do_open(Ino(ino.0), flags.0, req.pid(), &reply) {
                Ok(o) => match &o.backing {
                    Some(b) => reply.opened_passthrough(FileHandle(o.fh), o.flags, b),
                    None => reply.opened(FileHandle(o.fh), o.flags),
                },
                Err(e) => reply.error(self.fail(Op::Open, e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.serve(Op::Read, reply, |reply| {
            match self.do_read(Ino(ino.0), fh.0, offset, size, req.pid()) {
                Ok(data) => {
                    self.counters
                        .bytes_read
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    reply.data(&data)
                }
                Err(e) => reply.error(self.fail(Op::Read, e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        // NB: ENOSYS (the kernel takes it as success) stops the flush the
        // kernel sends at every close: a round trip for nothing on a
        // read-only mount.
        self.serve(Op::Other, reply, |r| r.error(Errno::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(Op::Other, reply, |reply| {
            self.do_release(Ino(ino.0), fh.0);
            reply.ok()
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever dirty.
        self.serve(Op::Other, reply, ReplyEmpty::ok);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.serve(Op::Open, reply, |reply| match self.do_opendir(Ino(ino.0)) {
            Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(self.fail(Op::Open, e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.serve(Op::Readdir, reply, |mut reply| {
            match self.do_readdir(Ino(ino.0), fh.0, offset, &mut reply) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail(Op::Readdir, e)),
            }
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.serve(Op::Readdir, reply, |mut reply| {
            match self.do_readdirplus(Ino(ino.0), fh.0, offset, req.pid(), &mut reply) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail(Op::Readdir, e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.serve(Op::Other, reply, |reply| {
            self.do_releasedir(fh.0);
            reply.ok()
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(Op::Other, reply, ReplyEmpty::ok);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.serve(Op::Other, reply, |reply| {
            let files = self.inodes.len() as u64 + FIRST_DYNAMIC_INO;
            reply.statfs(0, 0, 0, files, 0, 4096, names::MAX_NAME as u32, 4096)
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.serve(Op::Getxattr, reply, |reply| {
            match self.do_getxattr(Ino(ino.0), name, size) {
                Ok(XattrReply::Size(n)) => reply.size(n),
                Ok(XattrReply::Data(v)) => reply.data(&v),
                Err(e) => reply.error(self.fail(Op::Getxattr, e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.serve(Op::Other, reply, |reply| {
            match self.do_listxattr(Ino(ino.0), size) {
                Ok(XattrReply::Size(n)) => reply.size(n),
                Ok(XattrReply::Data(v)) => reply.data(&v),
                Err(e) => reply.error(self.fail(Op::Other, e)),
            }
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.serve(Op::Other, reply, |reply| {
            match self.do_access(Ino(ino.0), mask) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail(Op::Other, e)),
            }
        });
    }

    // ---- every write answers EROFS ------------------------------------

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.read_only(reply, ReplyAttr::error);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.read_only(reply, ReplyEntry::error);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.read_only(reply, ReplyEntry::error);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.read_only(reply, ReplyEmpty::error);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.read_only(reply, ReplyEmpty::error);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        self.read_only(reply, ReplyEntry::error);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.read_only(reply, ReplyEmpty::error);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.read_only(reply, ReplyEntry::error);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.read_only(reply, ReplyWrite::error);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.read_only(reply, ReplyCreate::error);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.read_only(reply, ReplyEmpty::error);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.read_only(reply, ReplyEmpty::error);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        self.read_only(reply, ReplyEmpty::error);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.read_only(reply, ReplyWrite::error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_pair_allow_other_with_default_permissions() {
        let mut opts = FsOptions {
            fsname: "/srv/store".into(),
            ..FsOptions::default()
        };
        let o = mount_options(&opts);
        for want in [
            MountOption::RO,
            MountOption::NoSuid,
            MountOption::NoDev,
            MountOption::NoAtime,
            MountOption::FSName("/srv/store".into()),
        ] {
            assert!(o.contains(&want), "{want:?} missing from {o:?}");
        }
        assert!(!o.contains(&MountOption::DefaultPermissions));
        assert!(!o.contains(&MountOption::AutoUnmount));
        opts.allow_other = true;
        assert!(mount_options(&opts).contains(&MountOption::DefaultPermissions));
    }
}
