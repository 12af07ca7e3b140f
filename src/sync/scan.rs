//! Scanning a host directory into a stored Merkle tree.
//!
//! The walk honours `.gitignore` and `.dagfsignore` (the `ignore` crate, no
//! git repository needed), `--include`/`--exclude` globs, never follows
//! symlinks (they are stored as links), never enters `.git`, the store, or
//! a dagfs mount point, and is sorted, so the tree is canonical.
//!
//! Stat cache (as git's index): a file whose (dev, inode, size, mtime,
//! ctime, mode) equal the cached ones, and whose cached digest's blob is in
//! the store, is not read again. A file modified within `RACY_NS` of the
//! scan that recorded it is "racy" (git's term: a same-granularity write
//! after the scan could keep all six fields) and is re-hashed next time.
//!
//! Conflicts: each file is stat'ed before and after it is read; if anything
//! changed (size, mtime, ctime, mode, inode, kind, or it vanished) the read
//! is retried, up to `MAX_TRIES`, then the scan fails naming the path and
//! what changed. A snapshot never names a digest that does not match the
//! bytes that were stored for it, and never a digest of bytes the file held
//! only part of the time.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::SyncError;
use crate::cache::Cache;
use crate::hash::Digest;
use crate::store::ingest::{ingest_host_file, open_regular, Sink};
use crate::store::tree::{name_problem, MAX_TARGET};
use crate::store::{Node, Staged, Tree, TreeEntry};

/// A file stamped this close to (or after) the start of the scan that read
/// it is racy: the kernel stamps files from a coarse clock (one tick, at
/// most 10 ms), so a later write within the same tick could leave every
/// stat field unchanged. 50 ms covers a tick with margin.
pub const RACY_NS: i64 = 50_000_000;

/// Reads of one file before it is declared in conflict.
pub const MAX_TRIES: u32 = 3;

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub skip_unreadable: bool,
    /// Directories never entered (the store, mount points).
    pub skip: Vec<PathBuf>,
    /// Hashing threads (0: available cores).
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
struct Meta {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    mode: u32,
}

impl Meta {
    fn of(md: &std::fs::Metadata) -> Meta {
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

const ENTRY_LEN: usize = 8 * 5 + 4 + 1 + 32;

fn encode(m: &Meta, racy: bool, d: &Digest) -> Vec<u8> {
    let mut v = Vec::with_capacity(ENTRY_LEN);
    for x in [m.dev, m.ino, m.size, m.mtime_ns as u64, m.ctime_ns as u64] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&m.mode.to_le_bytes());
    v.push(racy as u8);
    v.extend_from_slice(d.as_bytes());
    v
}

fn decode(v: &[u8]) -> Option<(Meta, bool, Digest)> {
    if v.len() != ENTRY_LEN {
        return None;
    }
    let u = |i: usize| u64::from_le_bytes(v[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let m = Meta {
        dev: u(0),
        ino: u(1),
        size: u(2),
        mtime_ns: u(3) as i64,
        ctime_ns: u(4) as i64,
        mode: u32::from_le_bytes(v[40..44].try_into().expect("4 bytes")),
    };
    Some((m, v[44] == 1, Digest::from_slice(&v[45..77])?))
}

struct Dir {
    parent: Option<usize>,
    name: Vec<u8>,
    tree: Tree,
}

struct FileJob {
    dir: usize,
    name: Vec<u8>,
    path: PathBuf,
    key: Vec<u8>,
    meta: Meta,
}

fn now_ns() -> i64 {
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
    let scan_start = now_ns();
    let io = |path: &Path, e: std::io::Error| SyncError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut out = ScanOutput::default();
    let mut walker = ignore::WalkBuilder::new(root);
    walker
        .hidden(false)
        .ignore(false)
        .git_ignore(true)
        .git_global(false)
        .git_exclude(false)
        .require_git(false)
        .parents(false)
        .follow_links(false)
        .add_custom_ignore_filename(".dagfsignore")
        .sort_by_file_name(|a, b| a.as_bytes().cmp(b.as_bytes()));
    if !opts.include.is_empty() || !opts.exclude.is_empty() {
        let mut o = ignore::overrides::OverrideBuilder::new(root);
        for g in &opts.include {
            o.add(g)
                .map_err(|e| SyncError::Usage(format!("--include {g:?}: {e}")))?;
        }
        for g in &opts.exclude {
            o.add(&format!("!{g}"))
                .map_err(|e| SyncError::Usage(format!("--exclude {g:?}: {e}")))?;
        }
        walker.overrides(o.build().map_err(|e| SyncError::Usage(e.to_string()))?);
    }
    let skip: HashSet<PathBuf> = opts.skip.iter().cloned().collect();
    walker.filter_entry(move |e| {
        let dir = e.file_type().is_some_and(|t| t.is_dir());
        !(dir && e.depth() > 0 && (e.file_name() == ".git" || skip.contains(e.path())))
    });

    let mut dirs = vec![Dir {
        parent: None,
        name: Vec::new(),
        tree: Tree::default(),
    }];
    let mut dir_index: HashMap<PathBuf, usize> = HashMap::from([(root.to_path_buf(), 0)]);
    let mut jobs = Vec::new();
    for r in walker.build() {
        let e = match r {
            Ok(e) => e,
            Err(err) => {
                let path = match &err {
                    ignore::Error::WithPath { path, .. } => path.clone(),
                    _ => root.to_path_buf(),
                };
                if opts.skip_unreadable {
                    out.unreadable.push(path);
                    continue;
                }
                return Err(SyncError::Unreadable {
                    path,
                    reason: err.to_string(),
                });
            }
        };
        if e.depth() == 0 {
            continue;
        }
        let path = e.path().to_path_buf();
        let Some(parent) = path.parent().and_then(|p| dir_index.get(p)).copied() else {
            continue;
        };
        let name = e.file_name().as_bytes().to_vec();
        if let Some(why) = name_problem(&name) {
            return Err(SyncError::Io {
                path,
                source: std::io::Error::other(format!("name not storable: {why}")),
            });
        }
        let Some(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            dir_index.insert(path, dirs.len());
            dirs.push(Dir {
                parent: Some(parent),
                name,
                tree: Tree::default(),
            });
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|err| io(&path, err))?
                .into_os_string()
                .into_encoded_bytes();
            if target.is_empty() || target.len() > MAX_TARGET {
                return Err(SyncError::Io {
                    path,
                    source: std::io::Error::other("symlink target too long"),
                });
            }
            dirs[parent].tree.entries.push(TreeEntry {
                name,
                node: Node::Symlink { target },
            });
        } else if ft.is_file() {
            let md = e.metadata().map_err(|err| SyncError::Unreadable {
                path: path.clone(),
                reason: err.to_string(),
            })?;
            let mut key = root_id.to_vec();
            key.extend_from_slice(
                path.strip_prefix(root)
                    .unwrap_or(&path)
                    .as_os_str()
                    .as_bytes(),
            );
            jobs.push(FileJob {
                dir: parent,
                name,
                path,
                key,
                meta: Meta::of(&md),
            });
        } else {
            out.special.push(path);
        }
    }

    // Stat cache: keep what provably did not change.
    let store = &cache.store;
    let mut resolved: Vec<Option<(Digest, u64, bool)>> = vec![None; jobs.len()];
    let mut todo = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        let hit = cache.index.stat_get(&j.key)?.and_then(|v| decode(&v));
        match hit {
            Some((m, false, d)) if m == j.meta && store.has_blob(&d) => {
                resolved[i] = Some((d, m.size, m.mode & 0o111 != 0));
                out.reused += 1;
            }
            _ => todo.push(i),
        }
    }

    // Hash what changed, in parallel.
    let threads = if opts.threads == 0 {
        crate::exec::scheduler::default_jobs()
    } else {
        opts.threads
    }
    .max(1);
    let next = AtomicUsize::new(0);
    let retries = AtomicU64::new(0);
    let results: Mutex<Vec<(usize, Hashed)>> = Mutex::new(Vec::new());
    let staged_all: Mutex<Vec<(Staged, tempfile::TempDir)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.min(todo.len().max(1)) {
            s.spawn(|| {
                let work = match store.tempdir("sync-") {
                    Ok(w) => w,
                    Err(e) => {
                        if let Some(&i) = todo.get(next.fetch_add(1, Ordering::SeqCst)) {
                            results
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((i, Err(e.into())));
                        }
                        return;
                    }
                };
                let mut staged = Staged::default();
                let mut mine = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&i) = todo.get(k) else { break };
                    mine.push((
                        i,
                        hash_stable(&jobs[i].path, store, work.path(), &mut staged, &retries),
                    ));
                }
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(mine);
                staged_all
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((staged, work));
            });
        }
    });
    out.retries = retries.load(Ordering::SeqCst);
    let mut staged = Staged::default();
    let mut workdirs = Vec::new();
    for (s, w) in staged_all.into_inner().unwrap_or_else(|p| p.into_inner()) {
        staged.append(s);
        workdirs.push(w);
    }
    let mut stat_ops = Vec::new();
    let mut skipped: HashSet<usize> = HashSet::new();
    for (i, r) in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        match r {
            Ok((d, size, meta)) => {
                // NB: git's racy rule: a write within the timestamp
                // granularity after this scan could leave the stat unchanged.
                let racy =
                    meta.mtime_ns >= scan_start - RACY_NS || meta.ctime_ns >= scan_start - RACY_NS;
                stat_ops.push((jobs[i].key.clone(), Some(encode(&meta, racy, &d))));
                resolved[i] = Some((d, size, meta.mode & 0o111 != 0));
                out.hashed += 1;
            }
            Err(SyncError::Unreadable { path, .. }) if opts.skip_unreadable => {
                out.unreadable.push(path);
                skipped.insert(i);
            }
            Err(e) => return Err(e),
        }
    }

    // Trees, bottom-up.
    for (i, j) in jobs.iter().enumerate() {
        if skipped.contains(&i) {
            continue;
        }
        let (digest, size, exec) = resolved[i].expect("every file resolved");
        out.files += 1;
        out.bytes += size;
        dirs[j.dir].tree.entries.push(TreeEntry {
            name: j.name.clone(),
            node: Node::File { size, digest, exec },
        });
    }
    let treework = store.tempdir("sync-tree-")?;
    for k in (0..dirs.len()).rev() {
        let mut tree = std::mem::take(&mut dirs[k].tree);
        tree.sort();
        let digest = store.stage_bytes(treework.path(), &tree.encode(), &mut staged)?;
        match dirs[k].parent {
            Some(p) => {
                let name = std::mem::take(&mut dirs[k].name);
                dirs[p].tree.entries.push(TreeEntry {
                    name,
                    node: Node::Dir { digest },
                });
            }
            None => out.tree = digest,
        }
    }
    store.commit(staged)?;
    drop(workdirs);

    // Forget files that are gone.
    let seen: HashSet<&[u8]> = jobs.iter().map(|j| j.key.as_slice()).collect();
    for k in cache.index.stat_keys(root_id)? {
        if !seen.contains(k.as_slice()) {
            stat_ops.push((k, None));
        }
    }
    cache.index.stat_apply(stat_ops)?;
    Ok(out)
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
    )?;
    cache.store.commit(staged)?;
    Ok(d)
}

/// Files up to this size are read into memory (see `hash_stable`).
const SMALL_FILE: u64 = 1 << 20;

/// NB: `path` is canonical (the root is), so `open_regular` refuses the
/// file if the kernel found it anywhere else: a directory above it swapped
/// for a symlink after the walk listed it.
fn read_small(path: &Path) -> Result<Vec<u8>, crate::store::StoreError> {
    use std::io::Read;
    let (mut f, _) = open_regular(path, path, Some(path))?;
    let mut b = Vec::new();
    f.read_to_end(&mut b)
        .map_err(|e| crate::store::StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
    Ok(b)
}

/// A file's digest, size and stat as read, or why it could not be.
type Hashed = Result<(Digest, u64, Meta), SyncError>;

/// Read and store one file, retrying while it changes underneath.
fn hash_stable(
    path: &Path,
    store: &crate::store::Store,
    work: &Path,
    staged: &mut Staged,
    retries: &AtomicU64,
) -> Hashed {
    let lstat = |p: &Path| std::fs::symlink_metadata(p);
    let mut last = String::new();
    for attempt in 0..MAX_TRIES {
        if attempt > 0 {
            retries.fetch_add(1, Ordering::Relaxed);
        }
        let before = match lstat(path) {
            Ok(md) if md.is_file() => Meta::of(&md),
            Ok(_) => {
                return Err(SyncError::Conflict {
                    path: path.to_path_buf(),
                    what: "is no longer a regular file".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SyncError::Conflict {
                    path: path.to_path_buf(),
                    what: "was deleted during the scan".into(),
                })
            }
            Err(e) => {
                return Err(SyncError::Unreadable {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        // Small files: read once into memory, hash, and write a staged copy
        // only if the content is new (most rescans and many trees are mostly
        // known content). Large files stream: hashed while copied.
        let read = if before.size <= SMALL_FILE {
            read_small(path)
                .and_then(|b| Ok((store.stage_bytes(work, &b, staged)?, b.len() as u64, false)))
        } else {
            ingest_host_file(
                path,
                Sink::Store {
                    store,
                    work,
                    staged,
                },
            )
        };
        let (digest, size, _) = match read {
            Ok(r) => r,
            // Not the file the walk listed (swapped, or moved): read again.
            Err(crate::store::StoreError::Changed { what, .. }) => {
                last = what;
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
        match lstat(path) {
            Ok(md) if md.is_file() => {
                let after = Meta::of(&md);
                if after == before && size == after.size {
                    return Ok((digest, size, after));
                }
                last = before.differences(&after);
                if last.is_empty() {
                    last = format!("read {size} bytes of {}", after.size);
                }
            }
            Ok(_) => last = "is no longer a regular file".into(),
            Err(_) => last = "was deleted while it was read".into(),
        }
    }
    Err(SyncError::Conflict {
        path: path.to_path_buf(),
        what: format!("changed while it was read ({last}), {MAX_TRIES} times"),
    })
}
