//! The request logic behind each FUSE operation: attributes and their TTLs,
//! lookups that record inodes, opens (passthrough or pread), reads,
//! directory streams, extended attributes. `mod.rs` wraps each of these in
//! the panic guard and turns errors into replies.
//!
//! Owns: the TTL and mode policy (below). May call: `node` (resolution),
//! `inode`, `handle`, `passthrough`, `StoreView::blob_path` to open a blob
//! read-only.
//! Guarantees:
//!
//! - TTLs: stored content (`/keys`, `/trees`, `/blobs` and all below) is
//!   immutable: entry and attribute TTL one day, pages kept across opens
//!   (`FOPEN_KEEP_CACHE`). A name given as a prefix gets a one-second entry
//!   TTL (a new key may make the prefix ambiguous). Live views (root, top
//!   directories, `/dags`, `/runs`, `/why` directories) have one-second TTLs:
//!   they are at most one second stale (their mtime is the time of the
//!   getattr, so the kernel's cached listing of them goes with the
//!   attributes). Generated files (`/why/<dag>/<task>`, `/.dagfs/*`) have
//!   attribute TTL 0 and are served from a snapshot (`unopened::Snapshots`)
//!   whose size and time their attributes show, so a changed text drops
//!   the cached pages; when the kernel sends opens (passthrough on), they
//!   are opened `FOPEN_DIRECT_IO` on that snapshot. The price of the long
//!   TTLs: an evicted entry can stay visible under its full key for up to a
//!   day in the kernel's caches, and reading its files fails with EIO once
//!   `dagfs gc` has removed their blobs.
//! - No open requests: open and opendir answer ENOSYS where the kernel can
//!   do without them (passthrough aside), and reads and listings come with
//!   file handle 0 and are served by inode (`unopened`). The kernel then
//!   keeps pages (`FOPEN_KEEP_CACHE`) and listings (`FOPEN_CACHE_DIR`) of
//!   every file and directory: live directories change mtime as they change
//!   (above), so theirs are re-read, at most a second late.
//! - Modes: directories 0555 (nlink 2), files 0444 or 0555 if executable,
//!   symlinks 0777.
//! - Times (atime = mtime = ctime), so that make, ninja and cargo reading
//!   through the mount rebuild exactly when content changes, also across
//!   remounts: every path whose content can change shows an mtime that
//!   moves forward with it and stays put otherwise.
//!   - `/keys/<key>/…`: the entry's creation (the content never changes);
//!   - `/dags/<dag>/<task>/…`: when that key became the task's latest
//!     (`Index::set_latest`), so a return to an older cached output is
//!     newer, not older, than what was there;
//!   - `/runs/<id>/<task>/…`: the same time as of that run (`/runs/latest`
//!     follows the newest run);
//!   - `/syncs/<name>[@<seq>]/…`: per path, the time of the snapshot that
//!     first showed its content (`sync::stamps`);
//!   - generated files: their snapshot's time; live directories (the
//!     root, the top directories, `/dags/<dag>`, `/runs/<id>`): now;
//!     under `/trees/<digest>` and `/blobs/<digest>`: the mount time.
//! - Directory offsets are `index + 1` into `., .., entries…` of a listing
//!   decoded once (at offset 0, or at opendir): no duplicates or gaps
//!   across calls, constant work per entry. A listing with attributes
//!   (readdirplus) records one lookup per entry it returns, as a lookup
//!   does (`.` and `..` aside, which the kernel does not count).

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, FileAttr, FileType, FopenFlags, Generation, INodeNo, ReplyDirectory,
    ReplyDirectoryPlus, ReplyOpen,
};

use super::error::FsError;
use super::handle::{Handle, Listing, Source};
use super::inode::Ino;
use super::node::{static_node, Entries, Found, Kind, Lifetime, Node, Resolver, Top};
use super::passthrough::ReadPath;
use super::unopened::Snapshot;
use super::view::BlobData;
use super::DagFs;

pub const LONG_TTL: Duration = Duration::from_secs(86_400);
pub const LIVE_TTL: Duration = Duration::from_secs(1);

pub struct Entry {
    pub attr: FileAttr,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

pub struct Opened {
    pub fh: u64,
    pub flags: FopenFlags,
    /// Set when the kernel serves this open by passthrough.
    pub backing: Option<Arc<BackingId>>,
}

pub enum XattrReply {
    /// The caller probed with size 0.
    Size(u32),
    Data(Vec<u8>),
}

/// (attribute TTL, entry TTL) for a node.
fn ttls(node: &Node, via_prefix: bool) -> (Duration, Duration) {
    match node.lifetime() {
        Lifetime::Immutable if via_prefix => (LONG_TTL, LIVE_TTL),
        Lifetime::Immutable => (LONG_TTL, LONG_TTL),
        Lifetime::Live => (LIVE_TTL, LIVE_TTL),
        Lifetime::Generated => (Duration::ZERO, LIVE_TTL),
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

/// Any open that could write answers EROFS.
fn check_read_only(flags: i32) -> Result<(), FsError> {
    if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_APPEND) != 0 {
        return Err(FsError::ReadOnly);
    }
    Ok(())
}

/// Honour the size-0 probe and ERANGE.
fn sized(value: Vec<u8>, size: u32) -> Result<XattrReply, FsError> {
    if size == 0 {
        Ok(XattrReply::Size(value.len() as u32))
    } else if value.len() > size as usize {
        Err(FsError::Range {
            needed: value.len(),
        })
    } else {
        Ok(XattrReply::Data(value))
    }
}

impl DagFs {
    fn resolver(&self) -> Resolver<'_> {
        Resolver {
            view: &*self.view,
            trees: &self.trees,
        }
    }

    /// The node behind `ino`, and its parent.
    pub(super) fn node(&self, ino: Ino) -> Result<(Arc<Node>, Ino), FsError> {
        if let Some(n) = static_node(ino.0) {
            return Ok((Arc::new(n), Ino::ROOT));
        }
        self.inodes.get(ino).ok_or(FsError::StaleInode(ino.0))
    }

    fn note_inodes(&self) {
        self.counters
            .inodes_live
            .store(self.inodes.len() as u64, Ordering::Relaxed);
    }

    fn note_handles(&self) {
        self.counters
            .open_handles
            .store(self.handles.len() as u64, Ordering::Relaxed);
    }

    /// The text of a generated file, as of now.
    fn generated(&self, node: &Node) -> Result<Vec<u8>, FsError> {
        let text = match node {
            Node::Why { dag, task } => self.view.why(dag, task)?.ok_or(FsError::NotFound)?,
            Node::Stats => {
                let mut t = self.view.stats_text()?;
                t += &self.counters.to_text();
                t += &self.verifier.to_text();
                t += &format!("fs reads     {}\n", self.reads.describe());
                t
            }
            Node::Metrics => {
                let mut t = self.view.metrics_text()?;
                t += &self.counters.to_prometheus();
                t += &self.verifier.to_prometheus();
                t += &format!(
                    "# HELP dagfs_fs_passthrough 1 when reads of stored files use FUSE passthrough, 0 for pread.\n\
                     # TYPE dagfs_fs_passthrough gauge\ndagfs_fs_passthrough {}\n",
                    u8::from(self.reads.path() == ReadPath::Passthrough)
                );
                t
            }
            _ => return Err(FsError::NotFound),
        };
        Ok(text.into_bytes())
    }

    /// The snapshot of a generated file that process `pid` sees.
    fn snapshot(&self, node: &Node, pid: u32) -> Result<Arc<Snapshot>, FsError> {
        let key = node.generated_key().ok_or(FsError::NotFound)?;
        self.snapshots.get(&key, pid, || self.generated(node))
    }

    /// Attributes of `node` (as `ino`) for process `pid`.
    fn attr(&self, ino: Ino, node: &Node, pid: u32) -> Result<FileAttr, FsError> {
        let mut time = self.mount_time;
        let (kind, perm, size, nlink) = match node.kind() {
            Kind::Dir => (FileType::Directory, 0o555, 0, 2),
            Kind::Symlink => {
                let len = node.link_target().map_or(0, |t| t.len() as u64);
                (FileType::Symlink, 0o777, len, 1)
            }
            Kind::File => {
                let size = match node.blob() {
                    Some((_, size)) => size,
                    None => {
                        let snap = self.snapshot(node, pid)?;
                        time = snap.at;
                        snap.bytes.len() as u64
                    }
                };
                let perm = if node.is_exec() { 0o555 } else { 0o444 };
                (FileType::RegularFile, perm, size, 1)
            }
        };
        if let Some(c) = node.ctx() {
            time = UNIX_EPOCH + Duration::from_millis(c.mtime_ms);
        } else if node.kind() == Kind::Dir && node.lifetime() == Lifetime::Live {
            // NB: a new mtime at each getattr makes the kernel drop its cached
            // listing of the directory then, at most a TTL after a change.
            time = SystemTime::now();
        }
        Ok(FileAttr {
            ino: INodeNo(ino.0),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    pub(super) fn do_lookup(&self, parent: Ino, name: &OsStr, pid: u32) -> Result<Entry, FsError> {
        let (pnode, _) = self.node(parent)?;
        let Found { node, canonical } = self.resolver().child(&pnode, name.as_bytes())?;
        // NB: attributes before `remember`, so a failure never leaves a
        // lookup count the kernel does not know it holds.
        let mut attr = self.attr(Ino(0), &node, pid)?;
        let (attr_ttl, entry_ttl) = ttls(&node, canonical.is_some());
        let ino = match node {
            Node::Top(t) => Ino(t.ino()),
            node => {
                let key = canonical.as_deref().unwrap_or(name.as_bytes());
                let ino = self.inodes.remember(parent, key, node);
                self.note_inodes();
                ino
            }
        };
        attr.ino = INodeNo(ino.0);
        Ok(Entry {
            attr,
            attr_ttl,
            entry_ttl,
        })
    }

    pub(super) fn do_forget(&self, ino: Ino, n: u64) {
        if static_node(ino.0).is_none() {
            self.inodes.forget(ino, n);
            self.note_inodes();
        }
    }

    pub(super) fn do_getattr(&self, ino: Ino, pid: u32) -> Result<(FileAttr, Duration), FsError> {
        let (node, _) = self.node(ino)?;
        Ok((self.attr(ino, &node, pid)?, ttls(&node, false).0))
    }

    pub(super) fn do_readlink(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        let (node, _) = self.node(ino)?;
        node.link_target().ok_or(FsError::NotLink)
    }

    pub(super) fn do_open(
        &self,
        ino: Ino,
        flags: i32,
        pid: u32,
        reply: &ReplyOpen,
    ) -> Result<Opened, FsError> {
        check_read_only(flags)?;
        let (node, _) = self.node(ino)?;
        match node.kind() {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::Symlink => return Err(FsError::IsLink),
            Kind::File => {}
        }
        if self.reads.skip_opens() {
            return Err(FsError::NoOpen);
        }
        if let Some((digest, size)) = node.blob() {
            let file = match self.view.open_blob(&digest) {
                Ok(BlobData::File(f)) => f,
                // Packed: its bytes, checked as they were read.
                Ok(BlobData::Bytes(b)) => {
                    return self.open_bytes(b, FopenFlags::FOPEN_KEEP_CACHE);
                }
                Ok(BlobData::Corrupt) => return Err(self.found_corrupt(&node, &digest)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && size == 0 => {
                    return self.open_bytes(Arc::from([]), FopenFlags::FOPEN_KEEP_CACHE);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(FsError::MissingBlob(digest));
                }
                Err(e) => return Err(e.into()),
            };
            self.verify_blob(&node, &digest, &file, true)?;
            let (handle, flags, backing) = match self.reads.backing_for(ino, &file, reply) {
                Some(b) => {
                    let c = &self.counters.passthrough_opens;
                    c.fetch_add(1, Ordering::Relaxed);
                    (
                        Handle::Passthrough {
                            _backing: b.clone(),
                        },
                        FopenFlags::empty(),
                        Some(b),
                    )
                }
                None => {
                    let c = &self.counters.pread_opens;
                    c.fetch_add(1, Ordering::Relaxed);
                    let flags = FopenFlags::FOPEN_KEEP_CACHE;
                    (Handle::Blob(Arc::new(file)), flags, None)
                }
            };
            let fh = match self.handles.insert(handle) {
                Ok(fh) => fh,
                Err(e) => {
                    // The handle (and its share of the backing id) is gone.
                    self.reads.released(ino);
                    return Err(e);
                }
            };
            self.note_handles();
            return Ok(Opened { fh, flags, backing });
        }
        let snapshot = self.snapshot(&node, pid)?.bytes.clone();
        self.open_bytes(snapshot, FopenFlags::FOPEN_DIRECT_IO)
    }

    fn open_bytes(&self, bytes: Arc<[u8]>, flags: FopenFlags) -> Result<Opened, FsError> {
        let fh = self.handles.insert(Handle::Bytes(bytes))?;
        self.note_handles();
        Ok(Opened {
            fh,
            flags,
            backing: None,
        })
    }

    pub(super) fn do_release(&self, ino: Ino, fh: u64) {
        drop(self.handles.remove(fh));
        self.reads.released(ino);
        self.note_handles();
    }

    /// The source of a read without a handle (no open requests): by inode.
    /// A stored file's blob is verified first (`verify`).
    fn source_of(&self, ino: Ino, offset: u64, pid: u32) -> Result<Source, FsError> {
        let (node, _) = self.node(ino)?;
        let Some((digest, size)) = node.blob() else {
            let key = node.generated_key().ok_or(FsError::IsDir)?;
            let snap = self
                .snapshots
                .for_read(&key, pid, || self.generated(&node))?;
            return Ok(Source::Bytes(snap.bytes.clone()));
        };
        let mut packed = None;
        let file = self
            .blob_files
            .get(&digest, self.view.blob_generation(), || {
                match self.view.open_blob(&digest) {
                    Ok(BlobData::File(f)) => {
                        self.counters.pread_opens.fetch_add(1, Ordering::Relaxed);
                        Ok(f)
                    }
                    // NB: not held open: a packed blob is small, read whole.
                    Ok(BlobData::Bytes(b)) => {
                        packed = Some(b);
                        Err(FsError::NotFound)
                    }
                    Ok(BlobData::Corrupt) => Err(self.found_corrupt(&node, &digest)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && size == 0 => {
                        Err(FsError::NotFound)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(FsError::MissingBlob(digest))
                    }
                    Err(e) => Err(e.into()),
                }
            });
        match file {
            Ok(f) => {
                self.verify_blob(&node, &digest, &f, offset == 0)?;
                Ok(Source::File(f))
            }
            Err(FsError::NotFound) => Ok(Source::Bytes(packed.unwrap_or_else(|| Arc::from([])))),
            Err(e) => Err(e),
        }
    }

    pub(super) fn do_read(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        size: u32,
        pid: u32,
    ) -> Result<Vec<u8>, FsError> {
        let source = if fh == 0 {
            self.source_of(ino, offset, pid)?
        } else {
            self.handles.source(fh)?
        };
        match source {
            Source::Bytes(b) => {
                let start = (offset.min(b.len() as u64)) as usize;
                let end = start.saturating_add(size as usize).min(b.len());
                Ok(b[start..end].to_vec())
            }
            Source::File(f) => {
                let mut buf = vec![0u8; size as usize];
                let mut n = 0;
                while n < buf.len() {
                    match f.read_at(&mut buf[n..], offset + n as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                buf.truncate(n);
                Ok(buf)
            }
        }
    }

    pub(super) fn do_opendir(&self, ino: Ino) -> Result<(u64, FopenFlags), FsError> {
        let (node, parent) = self.node(ino)?;
        if node.kind() != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if self.skip_opendir {
            return Err(FsError::NoOpen);
        }
        let entries = self.resolver().list(&node)?;
        let fh = self.handles.insert(Handle::Dir(Arc::new(Listing {
            dot: ino,
            dotdot: parent,
            entries,
        })))?;
        self.note_handles();
        let flags = if node.lifetime() == Lifetime::Immutable {
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
        } else {
            FopenFlags::empty()
        };
        Ok((fh, flags))
    }

    /// The listing a readdir at `offset` reads: the handle's, or without one
    /// (no opendir requests) the directory's: a stored tree from the tree
    /// cache, a live view as listed at offset 0.
    fn listing(&self, ino: Ino, fh: u64, offset: u64) -> Result<Arc<Listing>, FsError> {
        if ino.0 == Top::Keys.ino() {
            // NB: paged whether or not opened: never a listing of every key.
            let page = self
                .key_pages
                .page(&*self.view, offset.saturating_sub(2) as usize)?;
            return Ok(Arc::new(Listing {
                dot: ino,
                dotdot: Ino::ROOT,
                entries: Entries::Keys(page),
            }));
        }
        if fh != 0 {
            return self.handles.listing(fh);
        }
        let (node, parent) = self.node(ino)?;
        let entries = match node.tree() {
            Some((tree, _)) => Entries::Tree(self.trees.get(&*self.view, &tree)?),
            None => {
                return self.listings.get(ino.0, offset, || {
                    let entries = self.resolver().list(&node)?;
                    Ok(Listing {
                        dot: ino,
                        dotdot: parent,
                        entries,
                    })
                })
            }
        };
        Ok(Arc::new(Listing {
            dot: ino,
            dotdot: parent,
            entries,
        }))
    }

    pub(super) fn do_releasedir(&self, fh: u64) {
        drop(self.handles.remove(fh));
        self.note_handles();
    }

    /// The inode a listed child has (or will have when looked up).
    fn child_ino(&self, parent: Ino, name: &[u8]) -> Ino {
        if parent == Ino::ROOT {
            if let Some(t) = Top::from_name(name) {
                return Ino(t.ino());
            }
        }
        // NB: a live path's inode derives from what it shows now.
        if let Ok((pnode, _)) = self.node(parent) {
            let live = match *pnode {
                Node::DagDir { .. } => true,
                // NB: `<name>@<n>` is fixed: only `<name>` has a canonical name.
                Node::Top(Top::Syncs) => !name.contains(&b'@'),
                _ => false,
            };
            if live {
                if let Ok(Found {
                    canonical: Some(c), ..
                }) = self.resolver().child(&pnode, name)
                {
                    return self.inodes.peek(parent, &c);
                }
            }
        }
        self.inodes.peek(parent, name)
    }

    pub(super) fn do_readdir(
        &self,
        dir: Ino,
        fh: u64,
        offset: u64,
        reply: &mut ReplyDirectory,
    ) -> Result<(), FsError> {
        let l = self.listing(dir, fh, offset)?;
        if offset >= l.count() {
            self.listings.done(dir.0);
        }
        let mut i = offset;
        while i < l.count() {
            let (ino, kind, name): (Ino, Kind, Cow<'_, [u8]>) = match i {
                0 => (l.dot, Kind::Dir, Cow::Borrowed(b".")),
                1 => (l.dotdot, Kind::Dir, Cow::Borrowed(b"..")),
                _ => {
                    let (name, kind) = l.entry(i).expect("index below count");
                    (self.child_ino(l.dot, &name), kind, name)
                }
            };
            if reply.add(
                INodeNo(ino.0),
                i + 1,
                file_type(kind),
                OsStr::from_bytes(&name),
            ) {
                break;
            }
            i += 1;
        }
        Ok(())
    }

    /// The node, attributes and inode name of entry `i` (`name`) of
    /// listing `l` of directory `dnode`, for readdirplus.
    fn plus_child(
        &self,
        l: &Listing,
        dnode: &Node,
        i: u64,
        name: &[u8],
        pid: u32,
    ) -> Result<(Found, FileAttr, Duration), FsError> {
        let found = match l.entries.tree_entry((i - 2) as usize) {
            Some(e) => Found {
                node: self
                    .resolver()
                    .tree_node(e, dnode.tree().and_then(|(_, within)| within))?,
                canonical: None,
            },
            None => self.resolver().child(dnode, name)?,
        };
        let attr = self.attr(Ino(0), &found.node, pid)?;
        // NB: one TTL for both: the shorter. Names listed are never
        // prefixes, but a live path's (with a canonical name) is short.
        let (attr_ttl, entry_ttl) = ttls(&found.node, found.canonical.is_some());
        Ok((found, attr, attr_ttl.min(entry_ttl)))
    }

    pub(super) fn do_readdirplus(
        &self,
        dir: Ino,
        fh: u64,
        offset: u64,
        pid: u32,
        reply: &mut ReplyDirectoryPlus,
    ) -> Result<(), FsError> {
        let l = self.listing(dir, fh, offset)?;
        if offset >= l.count() {
            self.listings.done(dir.0);
            return Ok(());
        }
        let (dnode, _) = self.node(dir)?;
        let mut i = offset;
        while i < l.count() {
            let full = if i < 2 {
                // NB: the kernel counts no lookup for `.` and `..`.
                let mut attr = self.attr(l.dot, &dnode, pid)?;
                attr.ino = INodeNo(if i == 0 { l.dot.0 } else { l.dotdot.0 });
                let name: &[u8] = if i == 0 { b"." } else { b".." };
                reply.add(
                    attr.ino,
                    i + 1,
                    OsStr::from_bytes(name),
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                )
            } else {
                let (name, _) = l.entry(i).expect("index below count");
                match self.plus_child(&l, &dnode, i, &name, pid) {
                    Ok((Found { node, canonical }, mut attr, ttl)) => {
                        // NB: recorded before it is sent (the number could
                        // change otherwise), undone if it does not fit.
                        let ino = match node {
                            Node::Top(t) => Ino(t.ino()),
                            node => {
                                let key = canonical.as_deref().unwrap_or(&name);
                                self.inodes.remember(dir, key, node)
                            }
                        };
                        attr.ino = INodeNo(ino.0);
                        let full = reply.add(
                            attr.ino,
                            i + 1,
                            OsStr::from_bytes(&name),
                            &ttl,
                            &attr,
                            Generation(0),
                        );
                        if full {
                            self.do_forget(ino, 1);
                        }
                        self.note_inodes();
                        full
                    }
                    // Gone since listed (an evicted key): left out.
                    Err(e) => {
                        let _ = self.fail(super::counters::Op::Readdir, e);
                        false
                    }
                }
            };
            if full {
                break;
            }
            i += 1;
        }
        Ok(())
    }

    pub(super) fn do_getxattr(
        &self,
        ino: Ino,
        name: &OsStr,
        size: u32,
    ) -> Result<XattrReply, FsError> {
        let (node, _) = self.node(ino)?;
        if !name.as_bytes().starts_with(b"user.") {
            return Err(FsError::NotSupported);
        }
        let value = node
            .xattrs()
            .into_iter()
            .find(|(n, _)| n.as_bytes() == name.as_bytes())
            .ok_or(FsError::NoAttr)?
            .1;
        sized(value, size)
    }

    /// NB: symlinks list nothing: the kernel refuses `user.*` attributes on
    /// anything but regular files and directories before asking us, so
    /// listing names no one can read would only make `getfattr -h` fail.
    pub(super) fn do_listxattr(&self, ino: Ino, size: u32) -> Result<XattrReply, FsError> {
        let (node, _) = self.node(ino)?;
        let mut list = Vec::new();
        if node.kind() != Kind::Symlink {
            for (n, _) in node.xattrs() {
                list.extend_from_slice(n.as_bytes());
                list.push(0);
            }
        }
        sized(list, size)
    }

    pub(super) fn do_access(&self, ino: Ino, mask: AccessFlags) -> Result<(), FsError> {
        let (node, _) = self.node(ino)?;
        if mask.contains(AccessFlags::W_OK) {
            return Err(FsError::ReadOnly);
        }
        if mask.contains(AccessFlags::X_OK) && node.kind() == Kind::File && !node.is_exec() {
            return Err(FsError::Access);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_opens_are_refused() {
        assert!(check_read_only(libc::O_RDONLY).is_ok());
        assert!(check_read_only(libc::O_RDONLY | libc::O_NONBLOCK).is_ok());
        for f in [
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_RDONLY | libc::O_APPEND,
        ] {
            assert!(
                matches!(check_read_only(f), Err(FsError::ReadOnly)),
                "{f:#x}"
            );
        }
    }

    #[test]
    fn xattr_probe_and_range() {
        assert!(matches!(sized(b"abc".to_vec(), 0), Ok(XattrReply::Size(3))));
        assert!(matches!(
            sized(b"abc".to_vec(), 2),
            Err(FsError::Range { needed: 3 })
        ));
        assert!(matches!(sized(b"abc".to_vec(), 3), Ok(XattrReply::Data(v)) if v == b"abc"));
    }
}
