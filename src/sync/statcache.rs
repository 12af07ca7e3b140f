//! The stat cache: for each synced root (and filter set), one index record
//! per directory, holding the stat, digest and blob generation of each
//! regular file directly in it (sorted by name), the directory's own stat
//! from just before it was listed, the stats of its ignore files, and the
//! names of its subdirectories. The root's record also names the tree the
//! walk that wrote the records produced.
//!
//! One record per directory, not per file: a rescan reads 1,000 records
//! for 100,000 files in 1,000 directories, not 100,000.
//!
//! With the directory stats, a rescan is *validated* before anything is
//! walked (`validate`), as git's untracked cache does: every directory and
//! file the records name is stat'ed (in parallel, with `fstatat` from the
//! open directory), and only what differs is marked dirty. A directory
//! whose stat is unchanged has the same names in it (creating, removing or
//! renaming an entry changes the directory's mtime), so it is not listed
//! again. The dirty paths then drive the same incremental walk as
//! `--watch` (`dirty::plan`) from the recorded tree; with none, the
//! recorded tree is the snapshot, and nothing is listed or read at all.
//!
//! A record also says which blob generation of the store its digests were
//! known to be stored in (`Store::blob_generation`): while no blob has been
//! removed since (no gc sweep, no quarantine), the blobs are there and need
//! not be looked for. The validation is used only when the root's record is
//! of the current generation; otherwise a full walk checks every blob.
//!
//! Anything stamped within `RACY_NS` of the scan that recorded it is not
//! trusted (a later write in the same clock tick could keep its stat).
//!
//! The record's byte layout and codec are in `record`; the copy of a
//! root's records in a plain file (`DiskCopy`) is in `copy`.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::dirty::Dirty;
use super::types::{Meta, IGNORE_FILES};
use crate::hash::Digest;
use crate::index::Index;
use crate::store::{Node, TreeEntry};

mod copy;
mod record;

use copy::write_copy_file;
pub(crate) use copy::DiskCopy;
pub(crate) use record::*;

/// The records of one root, loaded on first use and shared by the walker
/// threads.
pub(crate) struct StatCache<'a> {
    index: &'a Index,
    root_id: [u8; 16],
    loaded: Mutex<HashMap<Vec<u8>, Arc<DirRec>>>,
    /// Index writes collected by `record` and `unlisted`, for `apply`.
    ops: Mutex<Vec<Op>>,
}

/// An index write: a put (Some) or a delete (None), by key (`apply`
/// returns them by relative directory).
pub(crate) type Op = (Vec<u8>, Option<Vec<u8>>);

impl<'a> StatCache<'a> {
    pub fn new(index: &'a Index, root_id: &[u8; 16]) -> StatCache<'a> {
        StatCache {
            index,
            root_id: *root_id,
            loaded: Mutex::new(HashMap::new()),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// The record of `rel_dir` (empty if there is none).
    pub fn dir(&self, rel_dir: &[u8]) -> crate::index::Result<Arc<DirRec>> {
        if let Some(r) = lock(&self.loaded).get(rel_dir) {
            return Ok(r.clone());
        }
        let rec = self
            .index
            .stat_get(&key(&self.root_id, rel_dir))?
            .and_then(|b| DirRec::decode(&b))
            .unwrap_or_default();
        let rec = Arc::new(rec);
        lock(&self.loaded).insert(rel_dir.to_vec(), rec.clone());
        Ok(rec)
    }

    /// The index writes that record directory `rel_dir` as a walk listed
    /// it: `entries` its tree's (sorted), `seen` its stats from before the
    /// listing, `found` the files the walk examined in it, `root` (for the
    /// root only) the whole walk's result. Files the walk kept from a
    /// previous tree keep their records (if they name the same digest).
    /// Subdirectories gone from the tree lose their records.
    pub fn record(
        &self,
        rel_dir: &[u8],
        listing: Listing<'_>,
        found: Vec<(Vec<u8>, FileRec)>,
        root: Option<RootInfo>,
        scan_start: i64,
    ) -> crate::index::Result<()> {
        let Listing {
            entries,
            seen,
            tree,
        } = listing;
        let old = self.dir(rel_dir)?;
        let mut ops = lock(&self.ops);
        let mut found = found;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let mut new = DirRec {
            head: Head {
                dir: seen.dir,
                dir_racy: seen.dir.map_or(true, |m| m.racy(scan_start)),
                complete: true,
                ignore: seen.ignore,
                root,
                tree: Some(tree),
            },
            subdirs: Vec::new(),
            files: Vec::new(),
        };
        for e in entries {
            match &e.node {
                Node::Dir { .. } => new.subdirs.push(e.name.clone()),
                Node::File { digest, .. } => {
                    let rec = match found.binary_search_by(|(n, _)| n.cmp(&e.name)) {
                        Ok(i) => Some(found[i].1),
                        Err(_) => old.get(&e.name).copied(),
                    };
                    match rec.filter(|r| r.digest == *digest) {
                        Some(r) => new.files.push((e.name.clone(), r)),
                        None => new.head.complete = false,
                    }
                }
                Node::Symlink { .. } => {}
            }
        }
        for gone in old
            .subdirs
            .iter()
            .filter(|d| new.subdirs.binary_search(d).is_err())
        {
            let mut k = key(&self.root_id, rel_dir);
            if !rel_dir.is_empty() {
                k.push(b'/');
            }
            k.extend_from_slice(gone);
            ops.push((k.clone(), None));
            k.push(b'/');
            ops.extend(self.index.stat_keys(&k)?.into_iter().map(|k| (k, None)));
        }
        if new != *old {
            ops.push((key(&self.root_id, rel_dir), Some(new.encode())));
        }
        Ok(())
    }

    /// After a full walk: the writes that remove the records of directories
    /// it did not list (gone, or now ignored or skipped).
    pub fn unlisted(
        &self,
        listed: &std::collections::HashSet<Vec<u8>>,
    ) -> crate::index::Result<()> {
        let mut ops = lock(&self.ops);
        for k in self.index.stat_keys(&self.root_id)? {
            if !listed.contains(&k[16..]) {
                ops.push((k, None));
            }
        }
        Ok(())
    }

    /// Make the writes `record` and `unlisted` collected.
    /// Returns them (relative directory, record or None for a removal).
    pub fn apply(&self) -> crate::index::Result<Vec<Op>> {
        let ops = std::mem::take(&mut *lock(&self.ops));
        // NB: nothing to write, nothing written: an empty batch still
        // appends to sled's log, which the flush after a rescan that
        // changed nothing would then fsync.
        if ops.is_empty() {
            return Ok(ops);
        }
        self.index.stat_apply(ops.clone())?;
        Ok(ops
            .into_iter()
            .map(|(k, v)| (k[16..].to_vec(), v))
            .collect())
    }

    /// Check the records against the disk (see the module doc): None when
    /// they cannot vouch for anything (no complete root record of the
    /// current blob generation), else the recorded
    /// result and what differs from it now.
    pub fn validate(
        &self,
        root: &Path,
        generation: u64,
        threads: usize,
    ) -> crate::index::Result<Option<Validated>> {
        let raw = self.index.stat_scan(&self.root_id)?;
        let recs: HashMap<&[u8], DirView> = raw
            .iter()
            .filter_map(|(k, v)| Some((&k[16..], DirView::parse(v)?)))
            .collect();
        Ok(check(&recs, root, generation, threads))
    }

    /// The root's record as the index holds it (raw), if any.
    pub fn root_record(&self) -> crate::index::Result<Option<Vec<u8>>> {
        self.index.stat_get(&key(&self.root_id, b""))
    }

    /// Write every record of this root to its copy under `<store>/statcache/`
    /// (see `DiskCopy`). Best effort: without it, the next sync reads the index.
    pub fn write_copy(&self, store: &Path) {
        let Ok(raw) = self.index.stat_scan(&self.root_id) else {
            return;
        };
        let recs: Vec<(&[u8], &[u8])> = raw.iter().map(|(k, v)| (&k[16..], &v[..])).collect();
        write_copy_file(store, &self.root_id, &recs);
    }

    /// `write_copy` from the copy this sync validated, `base`, with the
    /// writes `apply` made on top: no scan of the index. (What `base` was
    /// behind the index in stays behind: that only marks paths dirty.)
    pub fn write_copy_over(&self, store: &Path, base: &DiskCopy, applied: &[Op]) {
        let mut m: std::collections::BTreeMap<&[u8], &[u8]> = base.records().collect();
        for (k, v) in applied {
            match v {
                Some(v) => {
                    m.insert(k, v);
                }
                None => {
                    m.remove(&k[..]);
                }
            }
        }
        let recs: Vec<(&[u8], &[u8])> = m.into_iter().collect();
        write_copy_file(store, &self.root_id, &recs);
    }
}

/// The validation itself (`StatCache::validate`), over records however read.
fn check(
    recs: &HashMap<&[u8], DirView>,
    root: &Path,
    generation: u64,
    threads: usize,
) -> Option<Validated> {
    let base = match recs.get(&b""[..]).and_then(|r| r.head.root) {
        // NB: blobs are removed only after the generation is raised, so
        // the recorded tree is still stored (no lookup: with packs, the
        // first lookup loads their indexes).
        Some(b) if b.generation == generation => b,
        _ => return None,
    };
    // The directories reachable from the root's record.
    let mut dirty = Dirty::default();
    let mut list: Vec<(PathBuf, &DirView)> = Vec::new();
    let mut totals = Vec::new();
    let mut stack = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(std::ffi::OsStr::from_bytes(&rel))
        };
        let Some(rec) = recs.get(rel.as_slice()) else {
            dirty.mark(abs, true);
            continue;
        };
        for s in &rec.subdirs {
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(s);
            stack.push(r);
        }
        if let Some((d, files, bytes)) = rec.head.tree {
            totals.push((d, (files, bytes)));
        }
        list.push((abs, rec));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let checked = std::sync::atomic::AtomicU64::new(0);
    let found: Mutex<Dirty> = Mutex::new(Dirty::default());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, 16) {
            s.spawn(|| {
                let mut mine = Dirty::default();
                let mut ok = 0u64;
                loop {
                    let i = next.fetch_add(16, std::sync::atomic::Ordering::Relaxed);
                    let Some(chunk) = list.get(i..(i + 16).min(list.len())) else {
                        break;
                    };
                    if chunk.is_empty() {
                        break;
                    }
                    for (abs, rec) in chunk {
                        ok += check_dir(abs, rec, &mut mine);
                    }
                }
                lock(&found).merge(mine);
                checked.fetch_add(ok, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    dirty.merge(found.into_inner().unwrap_or_else(|p| p.into_inner()));
    Some(Validated {
        base,
        dirty,
        checked: checked.into_inner(),
        totals,
    })
}

/// A directory as a walk listed it, for `StatCache::record`.
pub(crate) struct Listing<'e> {
    /// Its tree's entries, sorted.
    pub entries: &'e [TreeEntry],
    /// Its stats from before the listing.
    pub seen: Seen,
    /// Its tree: (digest, files, bytes).
    pub tree: (Digest, u64, u64),
}

/// What `validate` found.
pub(crate) struct Validated {
    /// The result of the walk that wrote the records.
    pub base: RootInfo,
    /// What differs from it now.
    pub dirty: Dirty,
    /// Files whose stat matched.
    pub checked: u64,
    /// (files, bytes) of each recorded directory's tree, by digest (a
    /// tree's totals never change): an incremental walk need not read the
    /// subtrees it keeps to count them.
    pub totals: Vec<(Digest, (u64, u64))>,
}

/// A directory's stats as a walk saw them just before listing it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen {
    pub dir: Option<Meta>,
    pub ignore: [Option<Meta>; 2],
}

impl Seen {
    /// `lstat` of `dir` and of its ignore files.
    pub fn of(dir: &Path) -> Seen {
        let meta = |p: &Path| std::fs::symlink_metadata(p).ok().map(|m| Meta::of(&m));
        Seen {
            dir: meta(dir).filter(|m| m.mode & libc::S_IFMT == libc::S_IFDIR),
            ignore: IGNORE_FILES.map(|n| meta(&dir.join(n))),
        }
    }
}

/// Check one directory's record against the disk, marking what differs in
/// `dirty`; returns how many of its files matched.
fn check_dir(abs: &Path, rec: &DirView, dirty: &mut Dirty) -> u64 {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let fd = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(abs)
    {
        Ok(f) => f,
        Err(_) => {
            // Gone or replaced: its parent's stat has changed too.
            dirty.mark(abs.to_path_buf(), true);
            return 0;
        }
    };
    let stat = |name: &[u8]| {
        nix::sys::stat::fstatat(
            Some(fd.as_raw_fd()),
            std::ffi::OsStr::from_bytes(name),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()
        .map(|st| Meta::of_stat(&st))
    };
    let now = nix::sys::stat::fstat(fd.as_raw_fd())
        .ok()
        .map(|st| Meta::of_stat(&st));
    let head = &rec.head;
    let same_names = !(head.dir.is_none() || head.dir_racy || now != head.dir);
    if !same_names {
        dirty.mark(abs.to_path_buf(), false);
    }
    if !head.complete {
        dirty.mark(abs.to_path_buf(), true);
    }
    for (name, was) in IGNORE_FILES.iter().zip(&head.ignore) {
        // NB: no name appears in a directory without changing its mtime,
        // so an ignore file that was absent still is.
        if was.is_none() && same_names {
            continue;
        }
        if stat(name.as_bytes()) != *was {
            dirty.mark(abs.join(name), false);
        }
    }
    let mut ok = 0;
    for f in rec.files() {
        let Some((name, r)) = f else {
            // Damaged: whatever it held is examined again.
            dirty.mark(abs.to_path_buf(), true);
            break;
        };
        if !r.racy && stat(name) == Some(r.meta) {
            ok += 1;
        } else {
            dirty.mark(abs.join(std::ffi::OsStr::from_bytes(name)), false);
        }
    }
    ok
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
