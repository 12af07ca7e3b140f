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
//!   they are at most one second stale. Generated files (`/why/<dag>/<task>`,
//!   `/.dagfs/*`) have attribute TTL 0 (their size is computed at each
//!   getattr) and are opened `FOPEN_DIRECT_IO`, served from a snapshot taken
//!   at open. The price of the long TTLs: an evicted entry can stay visible
//!   under its full key for up to a day in the kernel's caches, and reading
//!   its files fails with EIO once `dagfs gc` has removed their blobs.
//! - Modes: directories 0555 (nlink 2), files 0444 or 0555 if executable,
//!   symlinks 0777; mtime is the entry's creation under `/keys/<key>`, the
//!   mount time elsewhere.
//! - Directory offsets are `index + 1` into `., .., entries…` of a listing
//!   decoded once at opendir: no duplicates or gaps across calls, constant
//!   work per entry.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, FileAttr, FileType, FopenFlags, INodeNo, ReplyDirectory, ReplyOpen,
};

use super::error::FsError;
use super::handle::{Handle, Listing, Source};
use super::inode::Ino;
use super::node::{static_node, Found, Kind, Lifetime, Node, Resolver, Top};
use super::passthrough::ReadPath;
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
                t += &format!("fs reads     {}\n", self.reads.describe());
                t
            }
            Node::Metrics => {
                let mut t = self.view.metrics_text()?;
                t += &self.counters.to_prometheus();
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

    fn attr(&self, ino: Ino, node: &Node) -> Result<FileAttr, FsError> {
        let (kind, perm, size, nlink) = match node.kind() {
            Kind::Dir => (FileType::Directory, 0o555, 0, 2),
            Kind::Symlink => {
                let len = node.link_target().map_or(0, |t| t.len() as u64);
                (FileType::Symlink, 0o777, len, 1)
            }
            Kind::File => {
                let size = match node.blob() {
                    Some((_, size)) => size,
                    None => self.generated(node)?.len() as u64,
                };
                let perm = if node.is_exec() { 0o555 } else { 0o444 };
                (FileType::RegularFile, perm, size, 1)
            }
        };
        let time = node.key_ctx().map_or(self.mount_time, |c| {
            UNIX_EPOCH + Duration::from_millis(c.created_ms)
        });
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

    pub(super) fn do_lookup(&self, parent: Ino, name: &OsStr) -> Result<Entry, FsError> {
        let (pnode, _) = self.node(parent)?;
        let Found { node, canonical } = self.resolver().child(&pnode, name.as_bytes())?;
        // NB: attributes before `remember`, so a failure never leaves a
        // lookup count the kernel does not know it holds.
        let mut attr = self.attr(Ino(0), &node)?;
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

    pub(super) fn do_getattr(&self, ino: Ino) -> Result<(FileAttr, Duration), FsError> {
        let (node, _) = self.node(ino)?;
        Ok((self.attr(ino, &node)?, ttls(&node, false).0))
    }

    pub(super) fn do_readlink(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        let (node, _) = self.node(ino)?;
        node.link_target().ok_or(FsError::NotLink)
    }

    pub(super) fn do_open(
        &self,
        ino: Ino,
        flags: i32,
        reply: &ReplyOpen,
    ) -> Result<Opened, FsError> {
        check_read_only(flags)?;
        let (node, _) = self.node(ino)?;
        match node.kind() {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::Symlink => return Err(FsError::IsLink),
            Kind::File => {}
        }
        if let Some((digest, size)) = node.blob() {
            let file = match File::open(self.view.blob_path(&digest)) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && size == 0 => {
                    return Ok(self.open_bytes(Vec::new(), FopenFlags::FOPEN_KEEP_CACHE));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(FsError::MissingBlob(digest));
                }
                Err(e) => return Err(e.into()),
            };
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
            let fh = self.handles.insert(handle);
            self.note_handles();
            return Ok(Opened { fh, flags, backing });
        }
        let snapshot = self.generated(&node)?;
        Ok(self.open_bytes(snapshot, FopenFlags::FOPEN_DIRECT_IO))
    }

    fn open_bytes(&self, bytes: Vec<u8>, flags: FopenFlags) -> Opened {
        let fh = self.handles.insert(Handle::Bytes(bytes.into()));
        self.note_handles();
        Opened {
            fh,
            flags,
            backing: None,
        }
    }

    pub(super) fn do_release(&self, ino: Ino, fh: u64) {
        drop(self.handles.remove(fh));
        self.reads.released(ino);
        self.note_handles();
    }

    pub(super) fn do_read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        match self.handles.source(fh)? {
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

    pub(super) fn do_opendir(&self, ino: Ino) -> Result<u64, FsError> {
        let (node, parent) = self.node(ino)?;
        let entries = self.resolver().list(&node)?;
        let fh = self.handles.insert(Handle::Dir(Arc::new(Listing {
            dot: ino,
            dotdot: parent,
            entries,
        })));
        self.note_handles();
        Ok(fh)
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
        self.inodes.peek(parent, name)
    }

    pub(super) fn do_readdir(
        &self,
        fh: u64,
        offset: u64,
        reply: &mut ReplyDirectory,
    ) -> Result<(), FsError> {
        let l = self.handles.listing(fh)?;
        let mut i = offset;
        while i < l.count() {
            let (ino, kind, name): (Ino, Kind, &[u8]) = match i {
                0 => (l.dot, Kind::Dir, b"."),
                1 => (l.dotdot, Kind::Dir, b".."),
                _ => {
                    let (name, kind) = l.entries.get((i - 2) as usize).expect("index below count");
                    (self.child_ino(l.dot, name), kind, name)
                }
            };
            if reply.add(
                INodeNo(ino.0),
                i + 1,
                file_type(kind),
                OsStr::from_bytes(name),
            ) {
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
