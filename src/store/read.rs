//! Reading a store: where a blob or entry is (loose or packed), reading
//! and copying blobs (checked against their names), trees, entry records,
//! and listing what is stored.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::{IoContext, Result, StoreError};
use super::*;

impl Store {
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    pub fn entry_path(&self, key: &Digest) -> PathBuf {
        let hex = key.to_hex();
        self.root.join("entries").join(&hex[..2]).join(hex)
    }

    /// Is blob `d` known to be stored? Packed, only in a pack whose index
    /// checks whole: what is stored is not written again (ingest,
    /// commits), and counts as a hit, so an index row is not enough. False
    /// also when a pack that may hold it could not be read: for what
    /// stores it again, or runs without it; what acts on its absence
    /// (evicts, quarantines) asks `stored`.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.stored(d).unwrap_or(false)
    }

    /// Is blob `d` stored (as `has_blob`)? An error: it is not loose, and
    /// a pack that may hold it could not be read, for a reason that may
    /// pass (`pack::BadPack::passing`); that is no answer.
    pub fn stored(&self, d: &Digest) -> Result<bool> {
        Ok(self.has_loose_blob(d)? || self.packs.find_checked(d)?.is_some())
    }

    /// Is blob `d` a loose file? (One `fstatat` of `ab/<hex>` under an open
    /// `blobs/`: no walk of the store's whole path per lookup.) An error:
    /// the stat failed for another reason than "no such file".
    fn has_loose_blob(&self, d: &Digest) -> Result<bool> {
        let dir = self.blobs_dir.get_or_init(|| {
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(self.root.join("blobs"))
                .ok()
        });
        let Some(dir) = dir else {
            return self.is_loose(d);
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
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => Ok(false),
            _ => Err(StoreError::Io {
                path: self.blob_path(d),
                source: e,
            }),
        }
    }

    /// Is there a file (of any kind: see `open_loose`) at blob `d`'s loose
    /// path? An error: the stat failed for another reason than "no such
    /// file" (`Path::exists` would call that absent). What
    /// `has_loose_blob` does where `blobs/` does not open.
    fn is_loose(&self, d: &Digest) -> Result<bool> {
        let p = self.blob_path(d);
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(false),
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    /// The directory of the packs (see `pack`).
    pub fn packs_dir(&self) -> &Path {
        &self.packs.dir
    }

    /// Every pack whose index checks whole (a pack whose index does not
    /// load or check is left out: `fsck` reports it).
    /// An error: a pack could not be read, for a reason that may pass.
    pub fn packs(&self) -> Result<Vec<std::sync::Arc<pack::Pack>>> {
        self.packs.checked()
    }

    /// Where blob `d` is: a loose file, or a range of a pack (loose first).
    /// An error: see `stored`.
    pub fn locate(&self, d: &Digest) -> Result<Option<BlobLocation>> {
        if self.has_loose_blob(d)? {
            return Ok(Some(BlobLocation::Loose(self.blob_path(d))));
        }
        Ok(self
            .packs
            .find_checked(d)?
            .map(|(pack, offset, len)| BlobLocation::Packed { pack, offset, len }))
    }

    /// Blob `d`'s bytes as stored, unchecked (gc's walk, fsck's hashing).
    /// `Missing`: it is not stored; any other error is no answer.
    pub fn read_blob_unchecked(&self, d: &Digest) -> Result<Vec<u8>> {
        match self.locate(d)? {
            Some(BlobLocation::Loose(p)) => {
                let mut b = Vec::new();
                match self.open_loose(d) {
                    Ok(mut f) => f.read_to_end(&mut b).map(|_| b).at(&p),
                    Err(e) => Err(self.loose_error(d, e)),
                }
            }
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match self.packs.find_checked(d)? {
                    Some((_, _, len)) => Ok(u64::from(len)),
                    None => Err(StoreError::Missing(*d)),
                }
            }
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    /// Copy blob `d` to a new file `dst`, checking the bytes against `d` as
    /// they are copied: a task's inputs are never bytes other than those
    /// its key names (a mismatch is `Corrupt`, and `dst` is removed). Never
    /// a hard link: see `materialize`.
    pub fn copy_blob(&self, d: &Digest, dst: &Path) -> Result<()> {
        let p = self.blob_path(d);
        let src = match self.open_loose(d) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Packed: `read_blob` checks the bytes.
                let bytes = self.read_blob(d)?;
                return fs::write(dst, bytes).at(dst);
            }
            Err(e) => return Err(self.loose_error(d, e)),
        };
        copy_checked(src, d, &p, dst)
    }

    /// The blob generation: it changes only when a blob may be removed, so
    /// a blob known to be stored in the current generation still is.
    pub fn blob_generation(&self) -> u64 {
        self.blob_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Open loose blob `d`'s file, read-only, never through a symlink
    /// planted in its place, and never blocking on a FIFO (either is
    /// `Corrupt`, see `is_not_a_blob`: a blob is a regular file).
    pub fn open_loose(&self, d: &Digest) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.blob_path(d);
        // NB: O_NONBLOCK does nothing to a regular file's reads.
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(p)?;
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        Ok(f)
    }

    fn loose_error(&self, d: &Digest, e: std::io::Error) -> StoreError {
        let path = self.blob_path(d);
        match is_not_a_blob(&e) {
            Some(what) => StoreError::Corrupt {
                digest: *d,
                path,
                reason: format!("{what} where a blob should be"),
            },
            None => StoreError::Io { path, source: e },
        }
    }

    /// Open blob `d` for reading: its file, or (packed) its bytes, checked
    /// against its name as they are read from the pack.
    pub fn open_blob(&self, d: &Digest) -> Result<BlobReader> {
        match self.open_loose(d) {
            Ok(f) => Ok(BlobReader::File(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.packs.read(d)? {
                Some(b) => Ok(BlobReader::Bytes(std::io::Cursor::new(b))),
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

    /// Tree `d`, decoded. The trees read lately are kept (`TreeCache`): a
    /// watch's pass reads the same few along the changed path several
    /// times (its plan, its change set, its stamps), each a lookup, a read
    /// and a hash otherwise.
    pub fn read_tree(&self, d: &Digest) -> Result<Tree> {
        let generation = self.blob_generation();
        if let Some(t) = self.trees.get(d, generation) {
            return Ok(t);
        }
        let bytes = self.read_blob(d)?;
        let tree = Tree::decode(&bytes).map_err(|e| StoreError::Corrupt {
            digest: *d,
            path: self.blob_path(d),
            reason: format!("bad tree: {e}"),
        })?;
        self.trees.put(*d, &tree, generation);
        Ok(tree)
    }

    /// Keep `trees`, just committed, as if read (`read_tree`): only while
    /// the blob generation is still `since`, read before they were staged
    /// (a removal since may have taken one that was found stored then).
    pub fn keep_trees(&self, trees: Vec<(Digest, Tree)>, since: u64) {
        if self.blob_generation() != since {
            return;
        }
        for (d, t) in &trees {
            self.trees.put(*d, t, since);
        }
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
        for p in self.packs.checked()?.iter() {
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

/// What `open_loose`'s error says is in a blob's place, when it is not a
/// blob at all: a symlink (ELOOP, from O_NOFOLLOW), or a file that is not
/// a regular file (a FIFO, a device).
pub fn is_not_a_blob(e: &std::io::Error) -> Option<&'static str> {
    if e.raw_os_error() == Some(libc::ELOOP) {
        Some("a symlink")
    } else if e.kind() == std::io::ErrorKind::InvalidData {
        Some("a file that is not a regular file")
    } else {
        None
    }
}

/// Trees by digest, as read (`Store::read_tree`). A digest names its
/// bytes for good, so a kept tree is never stale; it is kept only while
/// the blob generation stands (a blob may be removed only after the
/// generation moves), so a tree no longer stored is not answered from
/// here, as `read_tree` must not (`sync::tree_intact`, the mount).
#[derive(Debug, Default)]
pub(crate) struct TreeCache(std::sync::Mutex<(u64, std::collections::HashMap<Digest, Tree>)>);

impl TreeCache {
    /// Trees kept at most; past it they are all dropped (the next reads
    /// keep what is read then).
    const MAX: usize = 1024;
    /// Entries of a tree kept at most: a larger one is read each time, so
    /// what is kept stays small (a few tens of MiB at most).
    const MAX_ENTRIES: usize = 256;

    fn get(&self, d: &Digest, generation: u64) -> Option<Tree> {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (held.0 == generation).then(|| held.1.get(d).cloned())?
    }

    fn put(&self, d: Digest, tree: &Tree, generation: u64) {
        if tree.entries.len() > Self::MAX_ENTRIES {
            return;
        }
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if held.0 != generation || held.1.len() >= Self::MAX {
            held.1.clear();
            held.0 = generation;
        }
        held.1.insert(d, tree.clone());
    }
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

thread_local! {
    /// See `hash_copy`.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Read `src` to its end, hashing it, and write what it read to `copy` if
/// given: (digest, bytes). Through this thread's 256 KiB buffer (a fresh
/// one if it is in use). NB: a buffer made and zeroed for each file copied
/// or hashed cost a memset of its whole size per file: three or four per
/// task of a run.
pub(super) fn hash_copy(
    src: &mut File,
    mut copy: Option<&mut File>,
) -> std::io::Result<(Digest, u64)> {
    const LEN: usize = 256 << 10;
    let mut through = |buf: &mut [u8]| {
        let mut h = blake3::Hasher::new();
        let mut total = 0u64;
        loop {
            let n = match src.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            if let Some(w) = copy.as_deref_mut() {
                std::io::Write::write_all(w, &buf[..n])?;
            }
            total += n as u64;
        }
        Ok((Digest::from_blake3(h.finalize()), total))
    };
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut b) => {
            if b.len() < LEN {
                b.resize(LEN, 0);
            }
            through(&mut b)
        }
        Err(_) => through(&mut vec![0u8; LEN]),
    })
}

/// Copy `src` (blob `d`'s bytes, at `path`) to a new file `dst`, hashing
/// as it copies: a mismatch is `Corrupt`, and `dst` is removed, as on any
/// error.
pub(super) fn copy_checked(mut src: File, d: &Digest, path: &Path, dst: &Path) -> Result<()> {
    let copied = File::create(dst).and_then(|mut out| hash_copy(&mut src, Some(&mut out)));
    match copied {
        Ok((got, _)) if got == *d => Ok(()),
        Ok((got, _)) => {
            let _ = fs::remove_file(dst);
            Err(StoreError::Corrupt {
                digest: *d,
                path: path.to_path_buf(),
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
