//! Pack files: many small blobs in one file, as git and restic keep them.
//!
//! A blob's identity does not change: it is still named by the BLAKE3 of
//! its bytes, and every read checks them against it. Only where the bytes
//! live changes. One file per blob costs an inode allocation and two
//! directory insertions per blob, which for a tree of small files costs
//! far more than reading and hashing it (measured: 100,000 files of
//! 1-1,024 bytes, 2.3 s to create as files plus 0.8 s to sync, against
//! 0.05 s to append to one file).
//!
//! ```text
//! <store>/packs/<id>.pack   "dagfs-pack 1\n\0\0\0" (16 bytes), then records:
//!                           digest (32) ‖ length (u32 LE) ‖ the bytes
//! <store>/packs/<id>.idx    "dagfs-idx 1\n\0\0\0\0" (16 bytes), count (u64 LE),
//!                           count × [digest (32) ‖ offset of the bytes
//!                           (u64 LE) ‖ length (u32 LE)], sorted by digest,
//!                           then the BLAKE3 of everything before it (32)
//! ```
//!
//! `<id>` is the hex BLAKE3 of the index's table. A pack's blobs exist once
//! its `.idx` does: the `.pack` is renamed in first, then the `.idx` (both
//! written under `tmp/` and made durable before either rename: by an
//! `fdatasync` of each in a commit of packs only, else by the commit's
//! `syncfs`, as loose blobs are). A `.pack` without an `.idx` is a crash between the
//! two renames: removed when the store is opened.
//!
//! Packs are never modified. Removing blobs from a pack (gc, quarantine)
//! writes a new pack of the blobs that stay, then raises the blob
//! generation, then removes the old `.idx` and `.pack`.
//!
//! Only blobs up to `MAX_PACKED` bytes are packed, and only in batches of
//! at least `MIN_PACK`: a commit of a few small blobs (a watched change, a
//! task's logs) writes them as loose files, so packs stay few and large.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::error::{IoContext, Result, StoreError};
use crate::hash::Digest;

/// Blobs up to this size go into packs (larger ones are loose files).
pub const MAX_PACKED: usize = 64 * 1024;
/// A batch with fewer packable blobs than this writes them loose.
pub const MIN_PACK: usize = 64;

const PACK_MAGIC: &[u8; 16] = b"dagfs-pack 1\n\0\0\0";
const IDX_MAGIC: &[u8; 16] = b"dagfs-idx 1\n\0\0\0\0";
/// Per-record header in a pack: digest and length.
const REC_HEAD: u64 = 32 + 4;
/// Per-blob row of an index table.
const ROW: usize = 32 + 8 + 4;

/// A pack being written under `tmp/`. Its file is made only once it holds
/// `MIN_PACK` records or `SPILL` bytes, or is finished: until then the
/// records are kept in memory, so the few small blobs of one task (its
/// output tree, a short file), which a commit writes loose anyway
/// (`into_blobs`), never make and delete a file of their own. On ext4 an
/// inode allocation is the costly part of a small write, and deleting a
/// written file issues a discard where the filesystem is mounted with
/// `discard`.
#[derive(Debug)]
pub(crate) struct PackWriter {
    pub path: PathBuf,
    /// The file, once made; before that, `mem` holds its bytes.
    out: Option<BufWriter<File>>,
    mem: Vec<u8>,
    offset: u64,
    rows: Vec<(Digest, u64, u32)>,
    /// Bytes of the file whose writeback was started (`kick`).
    kicked: u64,
}

/// Bytes a pack keeps in memory before it makes its file.
const SPILL: usize = 1 << 20;

/// Written bytes between two starts of writeback (`PackWriter::kick`).
const KICK: u64 = 8 << 20;

impl PackWriter {
    pub fn create(path: PathBuf) -> Result<PackWriter> {
        let mut mem = Vec::new();
        mem.extend_from_slice(PACK_MAGIC);
        Ok(PackWriter {
            path,
            out: None,
            mem,
            offset: PACK_MAGIC.len() as u64,
            rows: Vec::new(),
            kicked: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether its file exists yet (`relocate` moves it only then).
    pub fn on_disk(&self) -> bool {
        self.out.is_some()
    }

    /// Make the file and write what memory held (once).
    fn spill(&mut self) -> Result<()> {
        if self.out.is_none() {
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&self.path)
                .at(&self.path)?;
            let mut out = BufWriter::with_capacity(SPILL, f);
            out.write_all(&self.mem).at(&self.path)?;
            self.mem = Vec::new();
            self.out = Some(out);
        }
        Ok(())
    }

    /// Append one blob (at most `MAX_PACKED` bytes).
    pub fn add(&mut self, digest: Digest, bytes: &[u8]) -> Result<()> {
        debug_assert!(bytes.len() <= MAX_PACKED);
        let len = bytes.len() as u32;
        if self.out.is_none()
            && self.rows.len() < MIN_PACK
            && self.mem.len() + bytes.len() + REC_HEAD as usize <= SPILL
        {
            self.mem.extend_from_slice(digest.as_bytes());
            self.mem.extend_from_slice(&len.to_le_bytes());
            self.mem.extend_from_slice(bytes);
        } else {
            self.spill()?;
            let (out, path) = (self.out.as_mut().expect("spilled"), &self.path);
            out.write_all(digest.as_bytes()).at(path)?;
            out.write_all(&len.to_le_bytes()).at(path)?;
            out.write_all(bytes).at(path)?;
        }
        self.rows.push((digest, self.offset + REC_HEAD, len));
        self.offset += REC_HEAD + u64::from(len);
        self.kick();
        Ok(())
    }

    /// Start writeback of what reached the file since the last start, once
    /// that is `KICK` bytes: the disk writes a large pack while it is still
    /// being filled (a first sync of 100,000 files hashes for most of a
    /// second), so the commit's `fdatasync` waits for its last few MiB
    /// only, not for all of it (that flush took 60 ms of a 50 MiB first
    /// sync here, 7-10 ms with this).
    /// A hint: errors show in that `fdatasync`.
    fn kick(&mut self) {
        let Some(out) = &self.out else {
            return;
        };
        let written = self.offset - out.buffer().len() as u64;
        if written - self.kicked < KICK {
            return;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(out.get_ref());
        // SAFETY: a valid descriptor and a range of the file.
        unsafe {
            libc::sync_file_range(
                fd,
                self.kicked as libc::off64_t,
                (written - self.kicked) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        self.kicked = written;
    }

    /// Flush the pack, write its index next to it: (pack, idx, id).
    pub fn finish(mut self) -> Result<FinishedPack> {
        self.spill()?;
        let out = self.out.take().expect("spilled");
        let path = self.path.clone();
        out.into_inner().map_err(|e| e.into_error()).at(&path)?;
        // NB: unstable: rows of one digest are of equal bytes, and which
        // of them stays does not matter (twice as fast on 50,000 rows).
        self.rows.sort_unstable_by_key(|r| r.0);
        self.rows.dedup_by(|a, b| a.0 == b.0);
        let mut table = Vec::with_capacity(self.rows.len() * ROW);
        for (d, off, len) in &self.rows {
            table.extend_from_slice(d.as_bytes());
            table.extend_from_slice(&off.to_le_bytes());
            table.extend_from_slice(&len.to_le_bytes());
        }
        let id = blake3::hash(&table).to_hex().to_string();
        let mut idx = Vec::with_capacity(IDX_MAGIC.len() + 8 + table.len() + 32);
        idx.extend_from_slice(IDX_MAGIC);
        idx.extend_from_slice(&(self.rows.len() as u64).to_le_bytes());
        idx.extend_from_slice(&table);
        let sum = blake3::hash(&idx);
        idx.extend_from_slice(sum.as_bytes());
        let idx_path = self.path.with_extension("idx");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&idx_path)
            .and_then(|mut f| f.write_all(&idx))
            .at(&idx_path)?;
        Ok(FinishedPack {
            pack: self.path,
            idx: idx_path,
            id,
        })
    }

    /// The blobs written so far while they are all in memory (the file
    /// not made yet), the writer left as it was (see `unsynced`).
    pub fn in_memory(&self) -> Option<Vec<(Digest, &[u8])>> {
        if self.out.is_some() {
            return None;
        }
        Some(
            self.rows
                .iter()
                .map(|(d, off, len)| {
                    (
                        *d,
                        &self.mem[*off as usize..(*off + u64::from(*len)) as usize],
                    )
                })
                .collect(),
        )
    }

    /// The blobs written so far, read back (to store them loose instead).
    pub fn into_blobs(mut self) -> Result<Vec<(Digest, Vec<u8>)>> {
        let mut out = Vec::with_capacity(self.rows.len());
        match self.out.take() {
            None => {
                for (d, off, len) in &self.rows {
                    let (off, len) = (*off as usize, *len as usize);
                    out.push((*d, self.mem[off..off + len].to_vec()));
                }
            }
            Some(mut w) => {
                w.flush().at(&self.path)?;
                drop(w);
                let f = File::open(&self.path).at(&self.path)?;
                for (d, off, len) in &self.rows {
                    let mut b = vec![0u8; *len as usize];
                    f.read_exact_at(&mut b, *off).at(&self.path)?;
                    out.push((*d, b));
                }
                drop(f);
                let _ = fs::remove_file(&self.path);
            }
        }
        Ok(out)
    }
}

/// A pack written and indexed under `tmp/`, ready to be published.
#[derive(Debug)]
pub(crate) struct FinishedPack {
    pub pack: PathBuf,
    pub idx: PathBuf,
    pub id: String,
}

/// A published pack: its index mapped, its file opened at first need.
///
/// Opening checks only what every lookup relies on: the index's magic and
/// that its size fits its row count. The `.pack` is opened, and its magic
/// checked, when a read or the whole check first needs it (`data`), so a
/// lookup that another pack answers never opens it. The whole index
/// (checksum, name, order, ranges) is checked once, on first need, by
/// `check`: before anything trusts its rows without hashing the bytes
/// they name (gc, repack, fsck, a prefix search, a blob's size, whether a
/// blob is stored at all: `Store::has_blob`). A read needs no more: every
/// read from a pack is hashed against the digest it was looked up by, so a
/// damaged index can make a blob unreadable, never wrong (`Pack::read`).
/// Git opens its pack indexes the same way and leaves their checksums to
/// `git fsck`. Measured: checking the indexes of 64,000 packed blobs
/// (2.8 MB) cost 3.3-3.9 ms of a 14-18 ms `dagfs cat`.
///
/// The cost of the mapping: a read error in the index (a failing disk) or
/// a truncation by another program ends the process with SIGBUS where a
/// read returned an error and the pack was skipped. dagfs never truncates
/// or rewrites a published index; git, LMDB and SQLite's mmap mode make
/// the same trade.
#[derive(Debug)]
pub struct Pack {
    pub id: String,
    /// The `.idx` file, mapped: never modified once published (a pack is
    /// replaced by a new one under a new name), and removed only by
    /// unlinking, which leaves a mapping whole.
    idx: memmap2::Mmap,
    /// Rows in `idx`, from byte `IDX_HEAD`.
    rows: usize,
    /// The `.pack` file and its size, opened at first need (a lookup that
    /// finds its blob elsewhere never opens it; a grown store's 32 packs
    /// cost 4 system calls each at every open), with its magic checked.
    data: std::sync::OnceLock<(File, u64)>,
    /// Why the `.pack` cannot be used, once that is known for good
    /// (missing, not a pack); a failure that may pass (no descriptor left,
    /// an I/O error) is not kept, and the next need tries again.
    unusable: std::sync::OnceLock<String>,
    pack_path: PathBuf,
    /// When the pack was published (its index's ctime).
    pub published: std::time::SystemTime,
    /// The whole-index check, once made (`check`).
    checked: std::sync::OnceLock<std::result::Result<(), String>>,
    idx_path: PathBuf,
}

/// Open `path` read-only, and its metadata. Never blocks (a FIFO in a
/// pack's place would block the open, O_NONBLOCK does nothing to a
/// regular file's reads); anything but a regular file is `not_it`, a
/// verdict.
fn open_regular(path: &Path, not_it: &str) -> std::result::Result<(File, fs::Metadata), BadPack> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| BadPack::io(path, e))?;
    let meta = f.metadata().map_err(|e| BadPack::io(path, e))?;
    if !meta.is_file() {
        return Err(BadPack::new(path, not_it));
    }
    Ok((f, meta))
}

/// Bytes before an index's table: magic and count.
const IDX_HEAD: usize = 16 + 8;

/// Why a pack's index was refused, or could not be read.
#[derive(Debug)]
pub struct BadPack {
    pub path: PathBuf,
    pub reason: String,
    /// Set when the failure may pass (no descriptor left, an I/O error,
    /// anything but a missing file or bytes that are not a pack): it says
    /// nothing of what the pack holds, so it is an error to whoever asked,
    /// never "not stored" (gc would sweep what the pack's trees name, a
    /// lookup evict, fsck quarantine the pack).
    pub passing: Option<std::io::Error>,
}

impl BadPack {
    fn new(path: &Path, reason: impl Into<String>) -> BadPack {
        BadPack {
            path: path.to_path_buf(),
            reason: reason.into(),
            passing: None,
        }
    }

    /// `e` on `path`: a verdict on the pack when the file is missing (a
    /// merge removed it) or too short, else a failure that may pass.
    fn io(path: &Path, e: std::io::Error) -> BadPack {
        use std::io::ErrorKind::{NotFound, UnexpectedEof};
        let reason = match e.kind() {
            NotFound => e.to_string(),
            UnexpectedEof => "not a pack".into(),
            _ => {
                return BadPack {
                    reason: e.to_string(),
                    path: path.to_path_buf(),
                    passing: Some(e),
                }
            }
        };
        BadPack::new(path, reason)
    }

    /// The error a failure that may pass is to the caller; None for a
    /// verdict (the pack holds nothing).
    pub fn passing(self) -> Option<StoreError> {
        let path = self.path;
        self.passing.map(|source| StoreError::Io { path, source })
    }
}

impl Pack {
    /// Open `<dir>/<id>.idx` and its pack, and check the index whole (see
    /// `check`): what fsck and a pack just written use.
    pub fn load(dir: &Path, id: &str) -> std::result::Result<Pack, BadPack> {
        let p = Pack::open(dir, id)?;
        p.check()?;
        Ok(p)
    }

    /// Open `<dir>/<id>.idx`: its magic and size. The pack is opened (and
    /// its magic checked) at first need (`data`); the rows by `check`.
    pub fn open(dir: &Path, id: &str) -> std::result::Result<Pack, BadPack> {
        let idx_path = dir.join(format!("{id}.idx"));
        let pack_path = dir.join(format!("{id}.pack"));
        let (f, meta) = open_regular(&idx_path, "not a pack index")?;
        let published = {
            use std::os::unix::fs::MetadataExt;
            std::time::UNIX_EPOCH
                + std::time::Duration::new(
                    meta.ctime().max(0) as u64,
                    meta.ctime_nsec().clamp(0, 999_999_999) as u32,
                )
        };
        if meta.len() < (IDX_HEAD + 32) as u64 {
            return Err(BadPack::new(&idx_path, "not a pack index"));
        }
        // SAFETY: a published index is never written again (see the type's
        // doc): the mapping's bytes do not change under it.
        let idx = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| BadPack::io(&idx_path, e))?;
        if idx.len() < IDX_HEAD + 32 || &idx[..IDX_MAGIC.len()] != IDX_MAGIC {
            return Err(BadPack::new(&idx_path, "not a pack index"));
        }
        let count = u64::from_le_bytes(idx[16..24].try_into().expect("8 bytes"));
        let table = (idx.len() - IDX_HEAD - 32) as u64;
        if count.checked_mul(ROW as u64) != Some(table) {
            return Err(BadPack::new(
                &idx_path,
                format!("{count} rows do not fit its size"),
            ));
        }
        Ok(Pack {
            id: id.to_string(),
            rows: count as usize,
            idx,
            data: std::sync::OnceLock::new(),
            unusable: std::sync::OnceLock::new(),
            pack_path,
            published,
            checked: std::sync::OnceLock::new(),
            idx_path,
        })
    }

    /// The `.pack` file and its size, opened once, its magic checked.
    fn data(&self) -> std::result::Result<&(File, u64), BadPack> {
        if let Some(d) = self.data.get() {
            return Ok(d);
        }
        if let Some(why) = self.unusable.get() {
            return Err(BadPack::new(&self.pack_path, why.clone()));
        }
        let path = &self.pack_path;
        let opened = open_regular(path, "not a pack").and_then(|(file, meta)| {
            let mut head = [0u8; 16];
            file.read_exact_at(&mut head, 0)
                .map_err(|e| BadPack::io(path, e))?;
            if &head != PACK_MAGIC {
                return Err(BadPack::new(path, "not a pack"));
            }
            Ok((file, meta.len()))
        });
        let bad = match opened {
            Ok(d) => return Ok(self.data.get_or_init(|| d)),
            Err(bad) => bad,
        };
        if bad.passing.is_none() {
            // For good: kept.
            let _ = self.unusable.set(bad.reason.clone());
        }
        Err(bad)
    }

    /// Size of the `.pack` file (0 if it does not open: see `check`).
    pub fn size(&self) -> u64 {
        self.data().map_or(0, |(_, size)| *size)
    }

    /// The whole index, checked once: its checksum, that it is named for
    /// its table, that its rows are in order, and that every range lies in
    /// the pack (which must open, its magic right).
    pub fn check(&self) -> std::result::Result<(), BadPack> {
        self.data()?;
        self.checked
            .get_or_init(|| self.check_whole())
            .clone()
            .map_err(|reason| BadPack::new(&self.idx_path, reason))
    }

    fn check_whole(&self) -> std::result::Result<(), String> {
        let (body, sum) = self.idx.split_at(self.idx.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err("checksum mismatch".into());
        }
        if blake3::hash(&body[IDX_HEAD..]).to_hex().as_str() != self.id {
            return Err("named for another table".into());
        }
        let mut prev: Option<Digest> = None;
        for (d, off, len) in self.rows_unchecked() {
            if prev.is_some_and(|p| p >= d) {
                return Err("rows out of order".into());
            }
            prev = Some(d);
            if !self.in_range(off, len) {
                return Err(format!("blob {d} lies outside the pack"));
            }
        }
        Ok(())
    }

    fn in_range(&self, off: u64, len: u32) -> bool {
        off >= REC_HEAD
            && off
                .checked_add(u64::from(len))
                .is_some_and(|end| end <= self.size())
            && len as usize <= MAX_PACKED
    }

    fn row(&self, i: usize) -> (Digest, u64, u32) {
        let r = &self.idx[IDX_HEAD + i * ROW..IDX_HEAD + (i + 1) * ROW];
        let d = Digest(r[..32].try_into().expect("32 bytes"));
        let off = u64::from_le_bytes(r[32..40].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(r[40..44].try_into().expect("4 bytes"));
        (d, off, len)
    }

    pub fn count(&self) -> usize {
        self.rows
    }

    /// Every (digest, offset, length), by digest, of a checked index
    /// (`Packs::checked`, `Pack::load`): unchecked, the rows may be out of
    /// order or point outside the pack.
    pub fn rows(&self) -> impl Iterator<Item = (Digest, u64, u32)> + '_ {
        debug_assert!(
            self.checked.get().is_some_and(|c| c.is_ok()),
            "rows of an unchecked pack"
        );
        self.rows_unchecked()
    }

    fn rows_unchecked(&self) -> impl Iterator<Item = (Digest, u64, u32)> + '_ {
        (0..self.count()).map(|i| self.row(i))
    }

    /// Where blob `d` lies: (offset, length). In an index not yet checked,
    /// a row that points outside the pack is not found (nor is one that a
    /// damaged order hides from the search), nor is a row of a `.pack`
    /// that is missing or not a pack. An error: the `.pack` could not be
    /// opened, for a reason that may pass (`BadPack::passing`).
    pub fn find(&self, d: &Digest) -> Result<Option<(u64, u32)>> {
        let (mut lo, mut hi) = (0, self.count());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let r = self.row(mid);
            match r.0.cmp(d) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    if let Err(bad) = self.data() {
                        return bad.passing().map_or(Ok(None), Err);
                    }
                    return Ok(self.in_range(r.1, r.2).then_some((r.1, r.2)));
                }
            }
        }
        Ok(None)
    }

    /// The digests whose hex starts with `prefix`.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = Digest> + 'a {
        let whole: Vec<u8> = (0..prefix.len() / 2)
            .filter_map(|i| u8::from_str_radix(prefix.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        let start = {
            let (mut lo, mut hi) = (0, self.count());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if &self.row(mid).0.as_bytes()[..] < whole.as_slice() {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        (start..self.count())
            .map(|i| self.row(i).0)
            .take_while(move |d| d.as_bytes().starts_with(&whole))
            .filter(move |d| d.to_hex().starts_with(prefix))
    }

    /// The stored bytes at (`off`, `len`), unchecked (what fsck hashes).
    pub fn read_raw(&self, off: u64, len: u32) -> std::io::Result<Vec<u8>> {
        let (file, _) = self.data().map_err(|e| std::io::Error::other(e.reason))?;
        let mut b = vec![0u8; len as usize];
        file.read_exact_at(&mut b, off)?;
        Ok(b)
    }

    /// Blob `d`'s bytes, checked against its name.
    pub fn read(&self, d: &Digest, dir: &Path) -> Result<Option<Vec<u8>>> {
        let Some((off, len)) = self.find(d)? else {
            return Ok(None);
        };
        let path = self.pack_path(dir);
        let b = self.read_raw(off, len).at(&path)?;
        if Digest::of(&b) != *d {
            if self.check().is_err() {
                // The index is damaged, not (as far as it tells) the
                // blob: as if the pack had not loaded (fsck reports it).
                return Ok(None);
            }
            return Err(StoreError::Corrupt {
                digest: *d,
                path,
                reason: format!("its {len} bytes in the pack do not match its digest"),
            });
        }
        Ok(Some(b))
    }

    pub fn pack_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.pack", self.id))
    }

    pub fn idx_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.idx", self.id))
    }
}

/// The published packs of a store, loaded on first use. NB: the store's
/// owner holds its lock, so only this process adds or removes packs.
#[derive(Debug)]
pub(crate) struct Packs {
    pub dir: PathBuf,
    loaded: RwLock<Option<Arc<Vec<Arc<Pack>>>>>,
    /// The packs a partial listing opened (by id), for the next listing
    /// to reuse while the failure lasts: it then reopens only what
    /// failed, and checks no index twice. Used under `loaded`'s write lock.
    partial: std::sync::Mutex<Vec<Arc<Pack>>>,
    /// Open every `.pack` when the set is loaded (`new_eager`).
    eager: bool,
}

impl Packs {
    pub fn new(dir: PathBuf) -> Packs {
        Packs {
            dir,
            loaded: RwLock::new(None),
            partial: Default::default(),
            eager: false,
        }
    }

    /// For a store another process owns (read-only): its packs are opened
    /// as soon as they are listed, so a pack the owner merges away later
    /// stays readable here through the open file, as the set this process
    /// loaded promises. (The owner's own removals open a pack first: they
    /// check it whole.)
    pub fn new_eager(dir: PathBuf) -> Packs {
        Packs {
            eager: true,
            ..Packs::new(dir)
        }
    }

    /// The ids of `<dir>/*.idx`, and the `.pack` files that have no index.
    pub fn list_dir(dir: &Path) -> Result<(Vec<String>, Vec<PathBuf>)> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()))
            }
            Err(e) => {
                return Err(StoreError::Io {
                    path: dir.into(),
                    source: e,
                })
            }
        };
        let (mut ids, mut packs) = (Vec::new(), Vec::new());
        for e in rd {
            let name = e.at(dir)?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".idx") {
                ids.push(id.to_string());
            } else if let Some(id) = name.strip_suffix(".pack") {
                packs.push(id.to_string());
            }
        }
        ids.sort();
        let orphans = packs
            .into_iter()
            .filter(|p| ids.binary_search(p).is_err())
            .map(|p| dir.join(format!("{p}.pack")))
            .collect();
        Ok((ids, orphans))
    }

    /// Every pack that opens (`Pack::open`: its index not yet checked
    /// whole; one that does not open is skipped here, and fsck reports it).
    /// NB: partial if one failed to open for a reason that may pass
    /// (`listed`); what acts on "not stored" asks `listed` or its users.
    pub fn all(&self) -> Arc<Vec<Arc<Pack>>> {
        self.listed().0
    }

    /// `all`, or the error that left a pack out of it (see `listed`).
    pub fn all_or_error(&self) -> Result<Arc<Vec<Arc<Pack>>>> {
        match self.listed() {
            (_, Some(e)) => Err(e),
            (set, None) => Ok(set),
        }
    }

    /// `all`, and the first failure that may pass (`BadPack::passing`)
    /// among the packs that did not open, or the listing's own: the set is
    /// then partial, and is not kept, so the next call lists again.
    fn listed(&self) -> (Arc<Vec<Arc<Pack>>>, Option<StoreError>) {
        if let Some(l) = self
            .loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return (l.clone(), None);
        }
        let mut w = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = w.as_ref() {
            return (l.clone(), None);
        }
        let (ids, mut failed) = match Self::list_dir(&self.dir) {
            Ok((ids, _)) => (ids, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Ok(i) = partial.binary_search_by(|p| p.id.as_str().cmp(id)) {
                list.push(partial[i].clone());
                continue;
            }
            let opened = Pack::open(&self.dir, id).and_then(|p| {
                if self.eager {
                    p.data()?;
                }
                Ok(p)
            });
            match opened {
                Ok(p) => list.push(Arc::new(p)),
                Err(bad) => {
                    if let Some(e) = bad.passing() {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        let list = Arc::new(list);
        if failed.is_none() {
            partial.clear();
            *w = Some(list.clone());
        } else {
            // NB: `ids` is sorted, so is this.
            *partial = (*list).clone();
        }
        (list, failed)
    }

    /// Every pack whose index checks whole (`Pack::check`): what gc,
    /// repacks, fsck and prefix searches walk. An error: a pack could not
    /// be opened or read for a reason that may pass (the set would lack
    /// it, and its blobs would look unstored).
    pub fn checked(&self) -> Result<Vec<Arc<Pack>>> {
        let (set, failed) = self.listed();
        if let Some(e) = failed {
            return Err(e);
        }
        let mut out = Vec::with_capacity(set.len());
        for p in set.iter() {
            match p.check() {
                Ok(()) => out.push(p.clone()),
                Err(bad) => {
                    if let Some(e) = bad.passing() {
                        return Err(e);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The pack holding `d`, and where in it, among checked packs: for
    /// what trusts the location without hashing the bytes (a blob's
    /// size, an unchecked read, whether it is stored). An error: no
    /// checked pack holds it, and one that may could not be read.
    pub fn find_checked(&self, d: &Digest) -> Result<Option<(Arc<Pack>, u64, u32)>> {
        let (set, mut failed) = self.listed();
        for p in set.iter() {
            let found = p.find(d).and_then(|at| match at {
                Some(at) => match p.check() {
                    Ok(()) => Ok(Some(at)),
                    Err(bad) => bad.passing().map_or(Ok(None), Err),
                },
                None => Ok(None),
            });
            match found {
                Ok(Some((o, l))) => return Ok(Some((p.clone(), o, l))),
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(None), Err)
    }

    /// Blob `d`'s bytes from the first pack that holds them, checked
    /// against `d`. None: no pack holds it (or only packs whose index is
    /// damaged, as if they had not loaded). An error: none yielded it,
    /// and one failed (bytes that do not match, or a failure to read).
    pub fn read(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        self.read_from(self.all(), d)
    }

    /// `read`, starting from the packs `seen`. NB: a pack is opened at
    /// first need, so one that a merge removed after `seen` was taken
    /// holds nothing here; the blob is then in a pack published before
    /// that removal, which the set at that time holds: read again from it.
    fn read_from(&self, mut seen: Arc<Vec<Arc<Pack>>>, d: &Digest) -> Result<Option<Vec<u8>>> {
        loop {
            let mut failed = None;
            for p in seen.iter() {
                match p.read(d, &self.dir) {
                    Ok(Some(b)) => return Ok(Some(b)),
                    Ok(None) => {}
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            let (now, partial) = self.listed();
            if let Some(e) = failed.or(partial) {
                return Err(e);
            }
            if Arc::ptr_eq(&now, &seen) {
                return Ok(None);
            }
            seen = now;
        }
    }

    /// Change the loaded set (after publishing or removing packs). A set
    /// not kept (none loaded yet, or a partial one) is left to the next
    /// listing, which finds the change on disk.
    pub fn update(&self, f: impl FnOnce(&mut Vec<Arc<Pack>>)) {
        let mut w = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = w.as_deref() {
            let mut list = current.clone();
            f(&mut list);
            *w = Some(Arc::new(list));
        }
    }
}

#[cfg(test)]
mod tests;
