//! Scanning a host directory into a stored Merkle tree.
//!
//! The walk honours `.gitignore` and `.dagfsignore` (the `ignore` crate, no
//! git repository needed), `--include`/`--exclude` globs, never follows
//! symlinks (they are stored as links), never enters `.git`, the store, or
//! a dagfs mount point. Each tree level is sorted, so the tree is
//! canonical whatever order the (parallel) walk meets entries in; the walk
//! itself is `walk`, shared with `--watch`'s incremental passes.
//!
//! Stat cache (as git's index; see `statcache`, one record per directory):
//! a file whose (dev, inode, size, mtime, ctime, mode) equal the cached
//! ones, and whose cached digest's blob is in the store (known without a
//! look while the store's blob generation is unchanged), is not read again. A file modified within `RACY_NS` of the
//! scan that recorded it is "racy" (git's term: a same-granularity write
//! after the scan could keep all six fields) and is re-hashed next time.
//!
//! Conflicts: each file is stat'ed before and after it is read; if anything
//! changed (size, mtime, ctime, mode, inode, kind, or it vanished) the read
//! is retried, up to `MAX_TRIES`, then the scan fails naming the path and
//! what changed. A snapshot never names a digest that does not match the
//! bytes that were stored for it, and never a digest of bytes the file held
//! only part of the time.
//!
//! A file stamped within `RACY_NS` of its read may have been written again
//! in the same clock tick without any stat field changing (a writer that
//! truncates and rewrites shows the same size at two instants of different
//! content), so its read must be confirmed: read again, and the two digests
//! must agree (each read with its own before/after stat check).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::walk::{walk, Totals};
use super::SyncError;
use crate::cache::Cache;
use crate::hash::Digest;
use crate::store::ingest::{ingest_host_file, open_regular, Sink};
use crate::store::Staged;

/// A file stamped this close to (or after) the start of the scan that read
/// it is racy: the kernel stamps files from a coarse clock (one tick, at
/// most 10 ms), so a later write within the same tick could leave every
/// stat field unchanged. 50 ms covers a tick with margin.
pub const RACY_NS: i64 = 50_000_000;

/// Reads of one file before it is declared in conflict (a racy file needs
/// two that agree).
pub const MAX_TRIES: u32 = 4;

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub skip_unreadable: bool,
    /// Directories never entered (the store, mount points).
    pub skip: Vec<PathBuf>,
    /// Walking and hashing threads (0: available cores).
    pub threads: usize,
}

#[derive(Debug, Clone, Default)]
pub struct ScanOutput {
    pub tree: Digest,
    pub files: u64,
    pub bytes: u64,
    /// Files read and hashed this time.
    pub hashed: u64,
    /// Files answered by the stat cache.
    pub reused: u64,
    /// Reads retried because the file changed meanwhile.
    pub retries: u64,
    pub unreadable: Vec<PathBuf>,
    /// FIFOs, sockets, devices: not storable, left out.
    pub special: Vec<PathBuf>,
}

/// What the stat cache compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
}

impl Meta {
    /// All zero: a placeholder where a record has no stat.
    pub(crate) const NONE: Meta = Meta {
        dev: 0,
        ino: 0,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        mode: 0,
    };

    /// Stamped within `RACY_NS` of (or after) `scan_start`.
    pub(crate) fn racy(&self, scan_start: i64) -> bool {
        self.mtime_ns >= scan_start - RACY_NS || self.ctime_ns >= scan_start - RACY_NS
    }

    pub(crate) fn of(md: &std::fs::Metadata) -> Meta {
        Meta {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.mtime_nsec()),
            ctime_ns: md
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.ctime_nsec()),
            mode: md.mode(),
        }
    }

    /// The same, from a raw `fstatat`.
    pub(crate) fn of_stat(st: &nix::sys::stat::FileStat) -> Meta {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Meta {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
            ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
            mode: st.st_mode,
        }
    }

    /// What differs, in words (for conflict errors).
    fn differences(&self, after: &Meta) -> String {
        let mut d = Vec::new();
        if self.size != after.size {
            d.push(format!("size {} -> {}", self.size, after.size));
        }
        if self.mtime_ns != after.mtime_ns {
            d.push("mtime".to_string());
        }
        if self.ctime_ns != after.ctime_ns {
            d.push("ctime".to_string());
        }
        if self.mode != after.mode {
            d.push(format!("mode {:o} -> {:o}", self.mode, after.mode));
        }
        if self.ino != after.ino || self.dev != after.dev {
            d.push("replaced by another file".to_string());
        }
        d.join(", ")
    }
}

/// The ignore files a scan honours in every directory (`.gitignore` as git
/// does, `.dagfsignore` with the same syntax and higher precedence).
pub const GIT_IGNORE: &str = ".gitignore";
pub const DAGFS_IGNORE: &str = ".dagfsignore";

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Scan `root` (canonical) into the store. `root_id` scopes its stat cache.
pub fn scan(
    cache: &Cache,
    root: &Path,
    root_id: &[u8; 16],
    opts: &ScanOptions,
) -> Result<ScanOutput, SyncError> {
    Ok(walk(cache, root, root_id, opts, None, &mut Totals::new(), None)?.out)
}

/// Store one host file (stable read, as in `scan`) and return its digest.
pub fn snapshot_file(cache: &Cache, path: &Path) -> Result<Digest, SyncError> {
    // `hash_stable` wants a canonical path (see `read_small`); the file
    // itself is not resolved, so a symlink stays one.
    let io = |e| SyncError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io(std::io::ErrorKind::InvalidInput.into()))?;
    let path = &std::fs::canonicalize(parent).map_err(io)?.join(name);
    let work = cache.store.tempdir("input-")?;
    let mut staged = Staged::default();
    let (d, _, _) = hash_stable(
        path,
        &cache.store,
        work.path(),
        &mut staged,
        &AtomicU64::new(0),
        None,
    )?;
    cache.store.commit(staged)?;
    Ok(d)
}

/// Files up to this size are read into memory (see `hash_stable`).
const SMALL_FILE: u64 = 1 << 20;

/// A small file as read: its bytes, its stat when opened and after the
/// read (by descriptor: the very inode read), and whether it still had a
/// name after the read (a file deleted or renamed over meanwhile has not).
struct SmallRead {
    bytes: Vec<u8>,
    opened: Meta,
    after: Meta,
    linked: bool,
}

/// NB: `path` is canonical (the root is), so `open_regular` refuses the
/// file if the kernel found it anywhere else: a directory above it swapped
/// for a symlink after the walk listed it.
fn read_small(path: &Path) -> Result<SmallRead, crate::store::StoreError> {
    use std::io::Read;
    let io = |e| crate::store::StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let (mut f, md) = open_regular(path, path, Some(path))?;
    // NB: exactly the size the fstat just made gave (one read(2) for a
    // small file, none for an empty one): a file that grows or shrinks
    // meanwhile changes its size, which the stat after the read shows.
    let want = md.len().min(SMALL_FILE + 1) as usize;
    let mut b = vec![0u8; want];
    let mut n = 0;
    while n < want {
        match f.read(&mut b[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    b.truncate(n);
    let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&f))
        .map_err(|e| io(std::io::Error::from(e)))?;
    Ok(SmallRead {
        bytes: b,
        opened: Meta::of(&md),
        after: Meta::of_stat(&st),
        linked: st.st_nlink > 0,
    })
}

/// A file's digest, size and stat as read, or why it could not be.
pub(crate) type Hashed = Result<(Digest, u64, Meta), SyncError>;

/// Read and store one file, retrying while it changes underneath. `seen`:
/// its `lstat` from just before, if the caller made one.
pub(crate) fn hash_stable(
    path: &Path,
    store: &crate::store::Store,
    work: &Path,
    staged: &mut Staged,
    retries: &AtomicU64,
    seen: Option<Meta>,
) -> Hashed {
    let lstat = |p: &Path| std::fs::symlink_metadata(p);
    let mut last = String::new();
    // A racy read's digest, waiting for a second read to agree.
    let mut unconfirmed: Option<Digest> = None;
    let regular = |m: &Meta| m.mode & libc::S_IFMT == libc::S_IFREG;
    for attempt in 0..MAX_TRIES {
        // NB: a confirming read of a racy file is not a retry.
        if attempt > 0 && unconfirmed.is_none() {
            retries.fetch_add(1, Ordering::Relaxed);
        }
        let before = match (attempt, seen) {
            (0, Some(m)) if regular(&m) => m,
            _ => match lstat(path) {
                Ok(md) if md.is_file() => Meta::of(&md),
                Ok(_) => {
                    return Err(SyncError::Conflict {
                        path: path.to_path_buf(),
                        what: "is no longer a regular file".into(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(SyncError::Vanished {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) => {
                    return Err(SyncError::Unreadable {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })
                }
            },
        };
        // Small files: read once into memory, hash, and stage (a pack
        // append, or nothing if the content is stored already); checked
        // after by descriptor. Large files stream: hashed while copied,
        // checked after by path.
        let read = if before.size <= SMALL_FILE {
            read_small(path).and_then(|r| {
                let d = store.stage_bytes(work, &r.bytes, staged)?;
                let after = if r.opened.ino != before.ino || r.opened.dev != before.dev {
                    Err(before.differences(&r.opened))
                } else if !r.linked {
                    Err("was deleted or replaced while it was read".to_string())
                } else {
                    Ok(r.after)
                };
                Ok((d, r.bytes.len() as u64, Some(after)))
            })
        } else {
            ingest_host_file(
                path,
                Sink::Store {
                    store,
                    work,
                    staged,
                },
            )
            .map(|(d, n, _)| (d, n, None))
        };
        let (digest, size, after) = match read {
            Ok(r) => r,
            // Not the file the walk listed (swapped, or moved): read again.
            Err(crate::store::StoreError::Changed { what, .. }) => {
                last = what;
                continue;
            }
            // Gone between its stat and its open: the next attempt's stat
            // says whether it is back (a rename over it) or gone.
            Err(crate::store::StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                last = "was deleted while it was read".into();
                unconfirmed = None;
                continue;
            }
            Err(crate::store::StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                return Err(SyncError::Unreadable {
                    path: path.to_path_buf(),
                    reason: source.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let after = match after {
            Some(a) => a,
            None => match lstat(path) {
                Ok(md) if md.is_file() => Ok(Meta::of(&md)),
                Ok(_) => Err("is no longer a regular file".to_string()),
                Err(_) => Err("was deleted while it was read".to_string()),
            },
        };
        match after {
            Ok(after) => {
                if after == before && size == after.size {
                    let recent = now_ns() - RACY_NS;
                    let racy = after.mtime_ns >= recent || after.ctime_ns >= recent;
                    if !racy || unconfirmed == Some(digest) {
                        return Ok((digest, size, after));
                    }
                    if unconfirmed.is_some() {
                        last = "two reads of it differ".into();
                    }
                    unconfirmed = Some(digest);
                    continue;
                }
                unconfirmed = None;
                last = before.differences(&after);
                if last.is_empty() {
                    last = format!("read {size} bytes of {}", after.size);
                }
            }
            Err(what) => {
                unconfirmed = None;
                last = what;
            }
        }
    }
    Err(SyncError::Conflict {
        path: path.to_path_buf(),
        what: format!("changed while it was read ({last}), {MAX_TRIES} times"),
    })
}
