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

use std::path::Path;
use std::sync::atomic::AtomicU64;

use super::hashing::hash_stable;
use super::types::Totals;
pub use super::types::{ScanOptions, ScanOutput, DAGFS_IGNORE, GIT_IGNORE, MAX_TRIES, RACY_NS};
use super::walk::walk;
use super::SyncError;
use crate::cache::Cache;
use crate::hash::Digest;
use crate::store::Staged;

/// Scan `root` (canonical) into the store. `root_id` scopes its stat cache.
/// On return the blobs are durable, names too, and the stat cache written.
pub fn scan(
    cache: &Cache,
    root: &Path,
    root_id: &[u8; 16],
    opts: &ScanOptions,
) -> Result<ScanOutput, SyncError> {
    let walked = walk(cache, root, root_id, opts, None, &mut Totals::new(), None)?;
    if walked.names_pending {
        cache.store.barrier()?;
    }
    // NB: after the barrier: stat-cache records name the walk's blobs.
    if let Some(w) = walked.stat_write {
        w.run()?;
    }
    Ok(walked.out)
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
