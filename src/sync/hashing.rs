//! Reading one host file into the store while it may be changing: stat
//! before and after each read, retry on a change (up to `MAX_TRIES`), and
//! confirm a racy read with a second one (see `scan`'s header).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::types::{now_ns, Meta, MAX_TRIES, RACY_NS};
use super::SyncError;
use crate::hash::Digest;
use crate::store::ingest::{ingest_host_file, open_regular, Sink};
use crate::store::Staged;

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
