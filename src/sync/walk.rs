//! The one walk behind every scan: a parallel, ignore-aware walk of a host
//! directory that stats, looks up and hashes each file as it meets it, then
//! builds the Merkle tree bottom-up and commits it.
//!
//! A `Plan` (see `dirty`) narrows the walk to what changed since a previous
//! tree: directories it names are re-listed, entries it names are examined
//! again, directories that are new (or to be rescanned) are walked whole,
//! and every other entry keeps its node from the previous tree without a
//! syscall. The walk still starts at the root and uses the same ignore
//! machinery, so `.gitignore`/`.dagfsignore` rules, filters and skipped
//! paths apply to each entry exactly as in a full walk; that is what makes
//! an incremental tree equal to the tree a full scan would produce. A
//! watch's pass over a few edited files may list nothing at all (see
//! `unlisted`: its directories' names are known to stand).
//!
//! May call: `store` (blobs, trees, commit), `index` (stat cache).

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use ignore::{DirEntry, ParallelVisitor, ParallelVisitorBuilder, WalkState};

use super::changes::Fresh;
use super::dirty::Plan;
use super::hashing::hash_stable;
use super::statcache::{DirRec, DiskCopy, FileRec, Listing, RootInfo, Seen, StatCache};
pub(crate) use super::types::Totals;
use super::types::{now_ns, Meta, ScanOptions, ScanOutput, DAGFS_IGNORE, RACY_NS};
use super::SyncError;
use crate::cache::Cache;
use crate::hash::Digest;
use crate::store::tree::{name_problem, MAX_TARGET};
use crate::store::{Node, Staged, Store, Tree, TreeEntry};

mod unlisted;

/// A directory walked whole in an incremental pass, and its stat from just
/// before it was listed (None if that failed).
pub(crate) type Listed = (PathBuf, Option<Meta>);

pub(crate) struct Walked<'a> {
    pub out: ScanOutput,
    /// Incremental passes only: directories walked whole.
    pub listed_whole: Vec<Listed>,
    /// Incremental passes only: when the walk started (ns since the epoch).
    pub started_ns: i64,
    /// A full walk's trees (see `changes::Fresh`).
    pub fresh: Fresh,
    /// The stat cache's records of this walk, still to be written (after
    /// the commit: they name its blobs). `Target::record` writes them while
    /// it records the snapshot.
    pub stat_write: Option<StatWrite<'a>>,
    /// Names of blobs the walk stored wait for a `Store::barrier` (see
    /// `Store::commit_leaving_names`): `Target::record` makes them durable.
    pub names_pending: bool,
}

/// What `StatWrite::run` writes: the stat cache's records of a walk.
pub(crate) struct StatWrite<'a> {
    stat_cache: StatCache<'a>,
    start: Start,
    full: bool,
    listed_dirs: HashSet<Vec<u8>>,
}

impl StatWrite<'_> {
    /// Write the stat cache, then its copy (see `Start::finish`).
    pub fn run(self) -> Result<(), SyncError> {
        self.start
            .finish(&self.stat_cache, self.full, &self.listed_dirs)
    }
}

/// Everything the per-thread visitors share.
struct Ctx<'a> {
    cache: &'a Cache,
    root: &'a Path,
    stat_cache: &'a StatCache<'a>,
    /// The store's blob generation when the walk started.
    generation: u64,
    opts: &'a ScanOptions,
    plan: Option<&'a Plan>,
    scan_start: i64,
    retries: AtomicU64,
    error: Mutex<Option<SyncError>>,
    done: Mutex<Vec<Part>>,
}

/// What one visitor thread found.
#[derive(Default)]
struct Part {
    /// Entries by the directory (absolute) that holds them.
    groups: HashMap<PathBuf, Vec<TreeEntry>>,
    /// Directories walked (their entries are in `groups`).
    dirs: Vec<PathBuf>,
    /// The stat-cache record of every file examined, by directory
    /// (relative to the root).
    found: HashMap<Vec<u8>, Vec<(Vec<u8>, FileRec)>>,
    work: Option<(Staged, crate::store::StagingDir)>,
    hashed: u64,
    reused: u64,
    unreadable: Vec<PathBuf>,
    special: Vec<PathBuf>,
}

struct Visitor<'a> {
    ctx: &'a Ctx<'a>,
    part: Part,
    /// The directory of the last file stat'ed (entries come mostly grouped
    /// by directory): `fstatat` from it skips a full path lookup per file.
    dir: Option<(PathBuf, std::fs::File)>,
    /// The stat-cache record of the directory of the last file looked up.
    recs: Option<(PathBuf, Arc<DirRec>)>,
}

/// An `O_PATH` descriptor of a directory, for `*at` calls.
fn open_dir(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// `lstat` of `name` in the directory `dir`.
fn stat_at(dir: &std::fs::File, name: &std::ffi::OsStr) -> std::io::Result<Meta> {
    use std::os::fd::AsRawFd;
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map(|st| Meta::of_stat(&st))
    .map_err(std::io::Error::from)
}

impl Drop for Visitor<'_> {
    fn drop(&mut self) {
        let part = std::mem::take(&mut self.part);
        lock(&self.ctx.done).push(part);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Builder<'a>(&'a Ctx<'a>);

impl<'s> ParallelVisitorBuilder<'s> for Builder<'s> {
    fn build(&mut self) -> Box<dyn ParallelVisitor + 's> {
        Box::new(Visitor {
            ctx: self.0,
            part: Part::default(),
            dir: None,
            recs: None,
        })
    }
}

/// The path an ignore error names (the root if none).
fn error_path(err: &ignore::Error, root: &Path) -> PathBuf {
    match err {
        ignore::Error::WithPath { path, .. } => path.clone(),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err, root)
        }
        _ => root.to_path_buf(),
    }
}

impl ParallelVisitor for Visitor<'_> {
    fn visit(&mut self, entry: Result<DirEntry, ignore::Error>) -> WalkState {
        match self.entry(entry) {
            Ok(()) => WalkState::Continue,
            Err(e) => {
                lock(&self.ctx.error).get_or_insert(e);
                WalkState::Quit
            }
        }
    }
}

impl Visitor<'_> {
    fn entry(&mut self, entry: Result<DirEntry, ignore::Error>) -> Result<(), SyncError> {
        let ctx = self.ctx;
        let e = match entry {
            Ok(e) => e,
            // A directory gone between its listing and its own (a
            // `git checkout` removing it): not part of the snapshot.
            Err(err)
                if err
                    .io_error()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
            {
                return Ok(());
            }
            Err(err) => {
                let path = error_path(&err, ctx.root);
                if ctx.opts.skip_unreadable {
                    self.part.unreadable.push(path);
                    return Ok(());
                }
                return Err(SyncError::Unreadable {
                    path,
                    reason: err.to_string(),
                });
            }
        };
        let Some(ft) = e.file_type() else {
            return Ok(());
        };
        if e.depth() == 0 {
            self.part.dirs.push(e.path().to_path_buf());
            return Ok(());
        }
        let path = e.path();
        let name = e.file_name().as_bytes();
        if let Some(why) = name_problem(name) {
            return Err(SyncError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!("name not storable: {why}")),
            });
        }
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        if ft.is_dir() {
            self.part.dirs.push(path.to_path_buf());
            return Ok(());
        }
        // In a re-listed directory, an entry no event named keeps its node.
        let old = ctx
            .plan
            .filter(|p| !p.dirty.contains(path))
            .and_then(|p| p.partial.get(parent))
            .and_then(|t| t.find(name))
            .map(|e| &e.node);
        let node = if ft.is_symlink() {
            match old {
                Some(n @ Node::Symlink { .. }) => n.clone(),
                _ => match read_symlink(path) {
                    Err(SyncError::Vanished { .. }) => return Ok(()),
                    Err(SyncError::Unreadable { path, .. }) if ctx.opts.skip_unreadable => {
                        self.part.unreadable.push(path);
                        return Ok(());
                    }
                    r => r?,
                },
            }
        } else if ft.is_file() {
            match old {
                Some(n @ Node::File { .. }) => n.clone(),
                _ => match self.file(path)? {
                    Some(n) => n,
                    None => return Ok(()),
                },
            }
        } else {
            self.part.special.push(path.to_path_buf());
            return Ok(());
        };
        let entry = TreeEntry {
            name: name.to_vec(),
            node,
        };
        match self.part.groups.get_mut(parent) {
            Some(v) => v.push(entry),
            None => {
                self.part.groups.insert(parent.to_path_buf(), vec![entry]);
            }
        }
        Ok(())
    }

    /// A regular file's node: from the stat cache if provably unchanged,
    /// else read (stably) and staged. None: unreadable and skipped.
    fn file(&mut self, path: &Path) -> Result<Option<Node>, SyncError> {
        let ctx = self.ctx;
        let store = &ctx.cache.store;
        let meta = match self.lstat(path) {
            Ok(m) => m,
            // NB: deleted or renamed away since it was listed (an editor's
            // save): a normal event, not an error; left out.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if ctx.opts.skip_unreadable => {
                let _ = e;
                self.part.unreadable.push(path.to_path_buf());
                return Ok(None);
            }
            Err(e) => {
                return Err(SyncError::Unreadable {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(None);
        };
        let rel_dir = parent
            .strip_prefix(ctx.root)
            .unwrap_or(parent)
            .as_os_str()
            .as_bytes();
        if !matches!(&self.recs, Some((p, _)) if p == parent) {
            self.recs = Some((parent.to_path_buf(), ctx.stat_cache.dir(rel_dir)?));
        }
        let hit = self
            .recs
            .as_ref()
            .and_then(|(_, r)| r.get(name.as_bytes()).copied());
        if let Some(r) = hit.filter(|r| !r.racy && r.meta == meta) {
            // NB: a blob stored in the current generation is still there.
            if r.generation == ctx.generation || self.has_blob(&r.digest) {
                self.part.reused += 1;
                let rec = FileRec {
                    generation: ctx.generation,
                    ..r
                };
                self.found(rel_dir, name, rec);
                return Ok(Some(Node::File {
                    size: meta.size,
                    digest: r.digest,
                    exec: meta.mode & 0o111 != 0,
                }));
            }
        }
        if self.part.work.is_none() {
            self.part.work = Some((Staged::default(), store.staging_dir("sync-")?));
        }
        let (staged, work) = self.part.work.as_mut().expect("just set");
        match hash_stable(path, store, work.path(), staged, &ctx.retries, Some(meta)) {
            Ok((d, size, meta)) => {
                // NB: git's racy rule: a write within the timestamp
                // granularity after this scan could leave the stat unchanged.
                let racy = meta.mtime_ns >= ctx.scan_start - RACY_NS
                    || meta.ctime_ns >= ctx.scan_start - RACY_NS;
                let rec = FileRec {
                    meta,
                    racy,
                    generation: ctx.generation,
                    digest: d,
                };
                self.found(rel_dir, name, rec);
                self.part.hashed += 1;
                Ok(Some(Node::File {
                    size,
                    digest: d,
                    exec: meta.mode & 0o111 != 0,
                }))
            }
            Err(SyncError::Unreadable { path, .. }) if ctx.opts.skip_unreadable => {
                self.part.unreadable.push(path);
                Ok(None)
            }
            Err(SyncError::Vanished { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Visitor<'_> {
    fn found(&mut self, rel_dir: &[u8], name: &std::ffi::OsStr, rec: FileRec) {
        let entry = (name.as_bytes().to_vec(), rec);
        match self.part.found.get_mut(rel_dir) {
            Some(v) => v.push(entry),
            None => {
                self.part.found.insert(rel_dir.to_vec(), vec![entry]);
            }
        }
    }

    fn lstat(&mut self, path: &Path) -> std::io::Result<Meta> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return std::fs::symlink_metadata(path).map(|m| Meta::of(&m));
        };
        if !matches!(&self.dir, Some((p, _)) if p == parent) {
            self.dir = Some((parent.to_path_buf(), open_dir(parent)?));
        }
        let (_, fd) = self.dir.as_ref().expect("just set");
        stat_at(fd, name)
    }

    fn has_blob(&mut self, d: &Digest) -> bool {
        self.ctx.cache.store.has_blob(d)
    }
}

fn read_symlink(path: &Path) -> Result<Node, SyncError> {
    let target = std::fs::read_link(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SyncError::Vanished {
                path: path.to_path_buf(),
            },
            std::io::ErrorKind::PermissionDenied => SyncError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
            _ => SyncError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?
        .into_os_string()
        .into_encoded_bytes();
    if target.is_empty() || target.len() > MAX_TARGET {
        return Err(SyncError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("symlink target too long"),
        });
    }
    Ok(Node::Symlink { target })
}

/// (files, bytes) under the stored tree `d`, memoized.
pub(crate) fn totals_of(
    store: &Store,
    d: &Digest,
    memo: &mut Totals,
) -> Result<(u64, u64), SyncError> {
    if let Some(t) = memo.get(d) {
        return Ok(*t);
    }
    // Post-order without recursion: a tree's children first.
    let mut stack = vec![(*d, false)];
    while let Some((d, expanded)) = stack.pop() {
        if memo.contains_key(&d) {
            continue;
        }
        let tree = store.read_tree(&d)?;
        if !expanded {
            stack.push((d, true));
            for e in &tree.entries {
                if let Node::Dir { digest } = e.node {
                    if !memo.contains_key(&digest) {
                        stack.push((digest, false));
                    }
                }
            }
            continue;
        }
        let t = sum(&tree.entries, memo);
        memo.insert(d, t);
    }
    Ok(memo[d])
}

/// (files, bytes) of entries whose subtrees are all in `memo`.
fn sum(entries: &[TreeEntry], memo: &Totals) -> (u64, u64) {
    let (mut files, mut bytes) = (0u64, 0u64);
    for e in entries {
        match &e.node {
            Node::File { size, .. } => {
                files += 1;
                bytes += size;
            }
            Node::Dir { digest } => {
                let (f, b) = memo.get(digest).copied().unwrap_or_default();
                files += f;
                bytes += b;
            }
            Node::Symlink { .. } => {}
        }
    }
    (files, bytes)
}

/// Walk `root` (canonical) into the store: whole, or as `plan` narrows it.
/// `root_id` scopes the stat cache; `totals` is a memo kept by callers that
/// walk the same directory again.
///
/// Phases: configure the walker (`walker`); without a plan, let the stat
/// cache vouch for what it can (`Start::consult_stat_cache`: nothing changed
/// ends the walk there); choose the directories to enter (`Entered`); visit
/// in parallel; merge the threads' parts (`merge`); build the trees
/// bottom-up and record them in the stat cache (`build_trees`); commit
/// (names maybe left to a barrier: `Walked::names_pending`). The stat
/// cache is written by the caller (`Walked::stat_write`), once the names
/// are durable.
pub(crate) fn walk<'a>(
    cache: &'a Cache,
    root: &Path,
    root_id: &[u8; 16],
    opts: &ScanOptions,
    plan: Option<Arc<Plan>>,
    totals: &mut Totals,
    pre: Option<super::Prevalidated>,
) -> Result<Walked<'a>, SyncError> {
    let scan_start = now_ns();
    let (mut walker, threads) = walker(root, opts)?;
    let generation = cache.store.blob_generation();
    let mut start = Start {
        plan,
        validated: false,
        write_copy: None,
        copy_records: None,
    };
    if start.plan.is_none() {
        let stat_cache = StatCache::new(&cache.index, root_id);
        let at = (root, generation, threads, scan_start);
        if let Some(done) = start.consult_stat_cache(cache, &stat_cache, at, totals, pre)? {
            return Ok(done);
        }
    }
    let full = start.plan.is_none();
    // NB: a watch's pass only: a plan the stat cache made may hold a
    // directory that gained names, whose new subdirectories the walk then
    // enters whole (a watch marks those whole).
    let small = start
        .plan
        .as_ref()
        .is_some_and(|p| p.watched && p.is_small());
    if small {
        // NB: a second visitor thread would find no work and sleep
        // (`ignore` polls its idle workers every millisecond), and the walk
        // ends only when it wakes: a watched change's pass took 1.4 ms to
        // visit one directory on two threads, 0.5-0.7 ms on one.
        walker.threads(1);
    }
    let entered = Entered::new(root);
    entered.filter(&mut walker, opts, start.plan.clone());

    let stat_cache = StatCache::new(&cache.index, root_id);
    let ctx = Ctx {
        cache,
        root,
        stat_cache: &stat_cache,
        generation,
        opts,
        plan: start.plan.as_deref(),
        scan_start,
        retries: AtomicU64::new(0),
        error: Mutex::new(None),
        done: Mutex::new(Vec::new()),
    };
    let plan = start.plan.as_deref().filter(|_| small);
    let stands = match plan {
        Some(p) => unlisted::names_stand(&stat_cache, root, opts, p)?,
        None => None,
    };
    match (plan, stands) {
        (Some(p), Some(seen)) => unlisted::visit(&ctx, p, &entered, seen)?,
        _ => walker.build_parallel().visit(&mut Builder(&ctx)),
    }
    let Ctx {
        error,
        done,
        retries,
        ..
    } = ctx;
    if let Some(e) = error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let parts = done.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut merged = merge(
        parts,
        retries.into_inner(),
        std::mem::take(&mut *lock(&entered.kept)),
    );
    let seen = std::mem::take(&mut *lock(&entered.seen));
    // NB: a first snapshot's change set lists every path, so its walk keeps
    // every tree it builds (`changes::Fresh`); a later full walk's change
    // set reads only what changed, and keeps none.
    let first = full && opts.first_snapshot;
    if small || first {
        merged.trees = Some(Vec::new());
    }
    let at = (root, generation, scan_start);
    let listed_dirs = build_trees(&cache.store, &stat_cache, at, &mut merged, &seen, totals)?;
    let Merged {
        mut out,
        staged,
        workdirs,
        trees,
        ..
    } = merged;
    (out.files, out.bytes) = totals.get(&out.tree).copied().unwrap_or_default();
    let names_pending = cache.store.commit_leaving_names(staged)?;
    // NB: the next pass's plan, and this one's change set and stamps, read
    // the trees of the changed path: from memory, not from their files. A
    // full walk's trees, all of them, are kept for this sync's change set
    // only (as many as the directories walked: more than the tree cache
    // holds).
    let trees = trees.unwrap_or_default();
    let mut fresh = Fresh::default();
    if first {
        fresh.trees = trees.into_iter().collect();
    } else {
        cache.store.keep_trees(trees, generation);
    }
    drop(workdirs);
    if start.validated {
        out.reused = out.files.saturating_sub(out.hashed);
    }
    let listed_whole = std::mem::take(&mut *lock(&entered.listed));
    Ok(Walked {
        out,
        listed_whole,
        started_ns: scan_start,
        fresh,
        names_pending,
        stat_write: Some(StatWrite {
            stat_cache,
            start,
            full,
            listed_dirs,
        }),
    })
}

/// An ignore-aware parallel walker of `root` under `opts`' filters, and
/// how many threads it runs.
fn walker(root: &Path, opts: &ScanOptions) -> Result<(ignore::WalkBuilder, usize), SyncError> {
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
        .add_custom_ignore_filename(DAGFS_IGNORE);
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
    let threads = if opts.threads == 0 {
        crate::host::default_jobs()
    } else {
        opts.threads
    };
    walker.threads(threads.max(1));
    Ok((walker, threads))
}

/// How a walk starts: its plan, and what the stat cache and its copy gave.
struct Start {
    plan: Option<Arc<Plan>>,
    /// The stat cache vouched for everything but the plan's paths.
    validated: bool,
    /// A one-shot sync: the store whose stat-cache copy to write after.
    write_copy: Option<PathBuf>,
    /// The copy read (and validated) while the index opened.
    copy_records: Option<DiskCopy>,
}

impl Start {
    /// A full walk asked for: what the stat cache can vouch for needs no
    /// walk (see `statcache`). Nothing changed: the recorded tree stands,
    /// and that is the walk (Some); something did: walk only that, as
    /// `--watch` does (the plan is set, None). `at`: (root, blob
    /// generation, threads, scan start).
    fn consult_stat_cache(
        &mut self,
        cache: &Cache,
        stat_cache: &StatCache,
        (root, generation, threads, scan_start): (&Path, u64, usize, i64),
        totals: &mut Totals,
        pre: Option<super::Prevalidated>,
    ) -> Result<Option<Walked<'static>>, SyncError> {
        // A one-shot sync: its records' copy, validated while the index
        // opened (see `statcache::DiskCopy`), and kept current for the next.
        let mut from_copy = None;
        if let Some(p) = pre {
            if let Some(c) = p.handle.join().ok().flatten() {
                if c.agrees(stat_cache.root_record()?.as_deref(), generation) {
                    let mut c = c;
                    from_copy = c.validated.take();
                    self.copy_records = Some(c);
                }
            }
            self.write_copy = Some(p.store);
        }
        let copy_used = from_copy.is_some();
        let v = match from_copy {
            Some(v) => Some(v),
            None => stat_cache.validate(root, generation, threads)?,
        };
        let Some(v) = v else {
            return Ok(None);
        };
        if v.dirty.is_empty() {
            if let Some(store) = self.write_copy.as_ref().filter(|_| !copy_used) {
                stat_cache.write_copy(store);
            }
            let out = ScanOutput {
                tree: v.base.tree,
                files: v.base.files,
                bytes: v.base.bytes,
                reused: v.checked,
                ..ScanOutput::default()
            };
            return Ok(Some(Walked {
                out,
                listed_whole: Vec::new(),
                started_ns: scan_start,
                fresh: Fresh::default(),
                stat_write: None,
                names_pending: false,
            }));
        }
        totals.extend(v.totals);
        self.plan = super::dirty::plan(&cache.store, root, &v.base.tree, &v.dirty)?.map(Arc::new);
        self.validated = true;
        Ok(None)
    }

    /// After the commit: write the stat cache (a full walk also drops the
    /// records of directories it did not list), then its copy.
    /// NB: stat-cache records only after the blobs they name are committed.
    fn finish(
        self,
        stat_cache: &StatCache,
        full: bool,
        listed_dirs: &HashSet<Vec<u8>>,
    ) -> Result<(), SyncError> {
        if full {
            stat_cache.unlisted(listed_dirs)?;
        }
        let applied = stat_cache.apply()?;
        match (&self.write_copy, self.copy_records) {
            (Some(store), Some(base)) => stat_cache.write_copy_over(store, &base, &applied),
            (Some(store), None) => stat_cache.write_copy(store),
            _ => {}
        }
        Ok(())
    }
}

/// Which directories a walk enters, decided before each is read, and what
/// that decision learned (shared with the walker's filter).
struct Entered {
    /// Unchanged subtrees kept from the previous tree: (parent, entry).
    kept: Arc<Mutex<Vec<(PathBuf, TreeEntry)>>>,
    /// Directories walked whole in an incremental pass.
    listed: Arc<Mutex<Vec<Listed>>>,
    /// The stats of every directory listed, from before it was listed.
    seen: Arc<Mutex<HashMap<PathBuf, Seen>>>,
}

impl Entered {
    fn new(root: &Path) -> Entered {
        Entered {
            kept: Arc::default(),
            listed: Arc::default(),
            seen: Arc::new(Mutex::new(HashMap::from([(
                root.to_path_buf(),
                Seen::of(root),
            )]))),
        }
    }

    /// Install the filter that decides, for each directory, whether to
    /// enter it.
    fn filter(
        &self,
        walker: &mut ignore::WalkBuilder,
        opts: &ScanOptions,
        plan: Option<Arc<Plan>>,
    ) {
        let skip: HashSet<PathBuf> = opts.skip.iter().cloned().collect();
        let (kept, listed, seen) = (self.kept.clone(), self.listed.clone(), self.seen.clone());
        walker.filter_entry(move |e| {
            if e.depth() == 0 || !e.file_type().is_some_and(|t| t.is_dir()) {
                return true;
            }
            let path = e.path();
            if e.file_name() == ".git" || skip.contains(path) {
                return false;
            }
            let Some(plan) = &plan else {
                lock(&seen).insert(path.to_path_buf(), Seen::of(path));
                return true;
            };
            if plan.partial.contains_key(path) {
                lock(&seen).insert(path.to_path_buf(), Seen::of(path));
                return true;
            }
            let parent = path.parent().and_then(|p| plan.partial.get(p));
            if let Some(old) = parent {
                let name = e.file_name().as_bytes();
                if let Some(te) = old.find(name) {
                    if matches!(te.node, Node::Dir { .. }) && !plan.whole.contains(path) {
                        // Unchanged: its previous subtree stands.
                        let parent = path.parent().expect("has a parent").to_path_buf();
                        lock(&kept).push((parent, te.clone()));
                        return false;
                    }
                }
            }
            // New, type-changed, or to be rescanned: walk it whole.
            let stamp = Seen::of(path);
            lock(&listed).push((path.to_path_buf(), stamp.dir));
            lock(&seen).insert(path.to_path_buf(), stamp);
            true
        });
    }
}

/// What the visitor threads found, put together.
struct Merged {
    out: ScanOutput,
    /// Entries by the directory (absolute) that holds them.
    groups: HashMap<PathBuf, Vec<TreeEntry>>,
    /// Directories walked.
    dirs: Vec<PathBuf>,
    /// Stat-cache records of the files examined, by relative directory.
    found: HashMap<Vec<u8>, Vec<(Vec<u8>, FileRec)>>,
    staged: Staged,
    /// The threads' staging directories: kept until the commit.
    workdirs: Vec<crate::store::StagingDir>,
    /// The trees built, to be kept in the store's tree cache once they are
    /// committed (None: not kept, as for a full walk's thousands).
    trees: Option<Vec<(Digest, Tree)>>,
}

/// Merge what the threads found, and the subtrees kept unchanged.
fn merge(parts: Vec<Part>, retries: u64, kept: Vec<(PathBuf, TreeEntry)>) -> Merged {
    let mut m = Merged {
        out: ScanOutput {
            retries,
            ..ScanOutput::default()
        },
        groups: HashMap::new(),
        dirs: Vec::new(),
        found: HashMap::new(),
        staged: Staged::default(),
        workdirs: Vec::new(),
        trees: None,
    };
    for p in parts {
        for (dir, entries) in p.groups {
            m.groups.entry(dir).or_default().extend(entries);
        }
        m.dirs.extend(p.dirs);
        for (dir, recs) in p.found {
            m.found.entry(dir).or_default().extend(recs);
        }
        if let Some((s, w)) = p.work {
            m.staged.append(s);
            m.workdirs.push(w);
        }
        m.out.hashed += p.hashed;
        m.out.reused += p.reused;
        m.out.unreadable.extend(p.unreadable);
        m.out.special.extend(p.special);
    }
    for (dir, entry) in kept {
        m.groups.entry(dir).or_default().push(entry);
    }
    m.out.unreadable.sort();
    m.out.special.sort();
    m
}

/// Stage the trees, children before parents, recording each directory in
/// the stat cache; sets `m.out.tree`. Returns the directories recorded
/// (relative). `at`: (root, blob generation, scan start).
fn build_trees(
    store: &Store,
    stat_cache: &StatCache,
    (root, generation, scan_start): (&Path, u64, i64),
    m: &mut Merged,
    seen: &HashMap<PathBuf, Seen>,
    totals: &mut Totals,
) -> Result<HashSet<Vec<u8>>, SyncError> {
    let mut dirs = std::mem::take(&mut m.dirs);
    dirs.sort_by_cached_key(|d| std::cmp::Reverse(d.components().count()));
    let treework = store.staging_dir("sync-tree-")?;
    let mut listed_dirs = HashSet::new();
    for dir in dirs {
        let mut tree = Tree {
            entries: m.groups.remove(&dir).unwrap_or_default(),
        };
        tree.sort();
        for e in &tree.entries {
            if let Node::Dir { digest } = &e.node {
                totals_of(store, digest, totals)?;
            }
        }
        let digest = store.stage_bytes(treework.path(), &tree.encode(), &mut m.staged)?;
        let (files, bytes) = sum(&tree.entries, totals);
        totals.insert(digest, (files, bytes));
        let rel = dir
            .strip_prefix(root)
            .unwrap_or(&dir)
            .as_os_str()
            .as_bytes();
        // NB: a walk that skipped unreadable files cannot vouch for the
        // whole root: they may be readable next time, with no stat changed.
        let info = (dir == root && m.out.unreadable.is_empty()).then_some(RootInfo {
            tree: digest,
            files,
            bytes,
            generation,
        });
        stat_cache.record(
            rel,
            Listing {
                entries: &tree.entries,
                seen: seen.get(&dir).copied().unwrap_or_default(),
                tree: (digest, files, bytes),
            },
            m.found.remove(rel).unwrap_or_default(),
            info,
            scan_start,
        )?;
        listed_dirs.insert(rel.to_vec());
        if let Some(kept) = &mut m.trees {
            kept.push((digest, tree));
        }
        if dir == root {
            m.out.tree = digest;
            continue;
        }
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            continue;
        };
        m.groups
            .entry(parent.to_path_buf())
            .or_default()
            .push(TreeEntry {
                name: name.as_bytes().to_vec(),
                node: Node::Dir { digest },
            });
    }
    // NB: the staged trees live in `treework` until the commit.
    m.workdirs.push(treework);
    Ok(listed_dirs)
}
