//! sync: host directories as content-addressed snapshots.
//!
//! Owns: scanning (`scan`), change sets (`changes`), and recording each
//! snapshot in the store's sync log. May call: `hash`, `host` (the mount
//! table, thread count), `store`, `index`, `cache`. Guarantees: a snapshot's tree names only bytes that were stored
//! for it, and only bytes a file held for the whole of its read (else the
//! sync retries, then fails with `Conflict` naming the path).

pub mod changes;
pub mod dirty;
mod hashing;
pub mod scan;
pub mod shared;
pub mod stamps;
mod statcache;
mod types;
mod walk;
pub mod watch;

use std::path::{Path, PathBuf};

use crate::cache::{now_ms, Cache, CacheError};
use crate::hash::{CanonicalHasher, Digest};
use crate::index::IndexError;
use crate::store::syncs::{Snapshot, SyncLog};
use crate::store::StoreError;

pub use changes::{Change, ChangeKind, ChangeSet};
pub use scan::ScanOptions;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: unreadable ({reason}); pass --skip-unreadable to leave such files out")]
    Unreadable { path: PathBuf, reason: String },
    /// A file kept changing while it was read.
    #[error("conflict: {path} {what}")]
    Conflict { path: PathBuf, what: String },
    /// A file listed a moment ago is gone (deleted, or renamed away, as
    /// editors and `git checkout` do): the walk leaves it out; only a
    /// caller that asked for that very file reports it.
    #[error("conflict: {path} was deleted while it was read")]
    Vanished { path: PathBuf },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Blobs the snapshot names were removed (a gc sweep, a quarantine)
    /// between the walk and its record: the walk is made again
    /// (`with_retries`).
    #[error(
        "{0}: a gc removed blobs the snapshot names {RETRIES} times while it was taken; sync again"
    )]
    Swept(String),
}

/// Walks a sync makes again when blobs its snapshot names were removed
/// meanwhile (`SyncError::Swept`).
const RETRIES: usize = 3;

/// Run `attempt` (a walk and its record) until it does not end in
/// `Swept`, at most `RETRIES` times.
fn with_retries<T>(mut attempt: impl FnMut(usize) -> Result<T, SyncError>) -> Result<T, SyncError> {
    let mut n = 0;
    loop {
        match attempt(n) {
            Err(SyncError::Swept(name)) if n + 1 < RETRIES => {
                log::info!("sync {name}: blobs were removed while it ran; walking again");
                n += 1;
            }
            r => return r,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncReport {
    pub name: String,
    pub root: PathBuf,
    /// The snapshot now latest (a new one only if the tree changed).
    pub snapshot: Snapshot,
    pub new_snapshot: bool,
    pub previous: Option<Digest>,
    pub changes: ChangeSet,
    pub scan: scan::ScanOutput,
    /// Recovery done on the way (a damaged log quarantined), for the CLI.
    pub notes: Vec<String>,
    /// Answered by the daemon's watch of the directory (`watch::Query`),
    /// not by a scan of its own.
    pub from_watch: bool,
}

/// Sync names (`store::names`): `valid_name` refuses `@`.
pub use crate::store::names::{default_sync_name as default_name, valid_sync_name as valid_name};

/// The stat-cache scope of a directory scanned with these filters.
fn root_id(root: &Path, opts: &ScanOptions) -> [u8; 16] {
    let mut h = CanonicalHasher::new("dagfs stat cache root v1");
    h.bytes(root.as_os_str().as_encoded_bytes());
    for list in [&opts.include, &opts.exclude] {
        h.u64(list.len() as u64);
        for g in list {
            h.str(g);
        }
    }
    h.finish().as_bytes()[..16].try_into().expect("16 bytes")
}

/// Never scan the store itself or a dagfs mount (`mounts`: where dagfs
/// is mounted, if known; read from the mount table otherwise).
fn with_skips(cache: &Cache, opts: &ScanOptions, mounts: Option<&[PathBuf]>) -> ScanOptions {
    let mut opts = opts.clone();
    opts.skip.push(cache.store.root().to_path_buf());
    match mounts {
        Some(m) => opts.skip.extend_from_slice(m),
        None => opts
            .skip
            .extend(crate::host::mounts::dagfs_mountpoints().unwrap_or_default()),
    }
    opts
}

/// A task input (a file or a directory on the host) snapshotted into the
/// store through the same scanner and stat cache as `dagfs sync`; its digest
/// enters the task's key. Symlinks are hashed as links, not stored.
pub fn snapshot_input(cache: &Cache, path: &Path) -> Result<(Digest, InputKind), SyncError> {
    let md = std::fs::symlink_metadata(path).map_err(|e| SyncError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if md.is_dir() {
        let root = std::fs::canonicalize(path).map_err(|e| SyncError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let opts = with_skips(cache, &ScanOptions::default(), None);
        let out = scan::scan(cache, &root, &root_id(&root, &opts), &opts)?;
        Ok((out.tree, InputKind::Dir))
    } else if md.is_file() {
        let d = scan::snapshot_file(cache, path)?;
        Ok((d, InputKind::File))
    } else {
        let d = crate::store::ingest::hash_path(path)?.digest;
        Ok((d, InputKind::Other))
    }
}

/// What a task input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A stored tree.
    Dir,
    /// A stored blob.
    File,
    /// A symlink or special file: hashed, not stored.
    Other,
}

/// Scan `dir` into the store and record it as `name`'s latest snapshot.
pub fn sync_dir(
    cache: &Cache,
    dir: &Path,
    name: Option<&str>,
    opts: &ScanOptions,
) -> Result<SyncReport, SyncError> {
    sync_dir_prevalidated(cache, dir, name, opts, None)
}

/// `sync_dir`, given the validation `prevalidate` started before the
/// cache was opened.
pub fn sync_dir_prevalidated(
    cache: &Cache,
    dir: &Path,
    name: Option<&str>,
    opts: &ScanOptions,
    pre: Option<Prevalidated>,
) -> Result<SyncReport, SyncError> {
    let mut pre = pre;
    with_retries(|_| {
        let t = Target::new(cache, dir, name, opts)?;
        let since = cache.store.blob_generation();
        let walked = walk::walk(
            cache,
            &t.root,
            &t.id,
            &t.opts,
            None,
            &mut walk::Totals::new(),
            pre.take(),
        )?;
        let mut walked = walked;
        t.record(cache, &mut walked, since, &mut Verified::default(), true)
    })
}

/// A validation of `dir`'s stat-cache copy (`statcache::DiskCopy`), running
/// while the process opens the cache.
pub struct Prevalidated {
    store: PathBuf,
    handle: std::thread::JoinHandle<Option<statcache::DiskCopy>>,
}

/// Start validating `dir`'s stat-cache copy in store `store` (not yet
/// opened): for a one-shot `dagfs sync`, whose fixed cost is mostly opening
/// the index. None if `dir` does not resolve (the sync reports that).
pub fn prevalidate(store: &Path, dir: &Path, opts: &ScanOptions) -> Option<Prevalidated> {
    let root = std::fs::canonicalize(dir).ok()?;
    let id = root_id(&root, opts);
    let threads = match opts.threads {
        0 => crate::host::default_jobs(),
        n => n,
    };
    let s = store.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("statcache-copy".into())
        .spawn(move || statcache::DiskCopy::validate(&s, &root, &id, threads))
        .ok()?;
    Some(Prevalidated {
        store: store.to_path_buf(),
        handle,
    })
}

/// A directory about to be synced under a name: checked, with its log.
struct Target {
    root: PathBuf,
    name: String,
    /// The stat-cache scope.
    id: [u8; 16],
    /// With the store and mounts to skip.
    opts: ScanOptions,
    log: SyncLog,
    /// Where the log file's records end (`Store::append_snapshot`); None
    /// once the log is a fresh one.
    end: crate::store::syncs::LogEnd,
    notes: Vec<String>,
    _held: crate::store::syncs::SyncName,
}

impl Target {
    fn new(
        cache: &Cache,
        dir: &Path,
        name: Option<&str>,
        opts: &ScanOptions,
    ) -> Result<Target, SyncError> {
        Target::new_in(cache, dir, name, opts, None)
    }

    /// `new`, given where dagfs is mounted (see `with_skips`).
    fn new_in(
        cache: &Cache,
        dir: &Path,
        name: Option<&str>,
        opts: &ScanOptions,
        mounts: Option<&[PathBuf]>,
    ) -> Result<Target, SyncError> {
        let root = std::fs::canonicalize(dir).map_err(|e| SyncError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        if !root.is_dir() {
            return Err(SyncError::Usage(format!(
                "{}: not a directory",
                dir.display()
            )));
        }
        let name = match name {
            Some(n) if valid_name(n) => n.to_string(),
            Some(n) => {
                return Err(SyncError::Usage(format!(
                    "sync name {n:?} may use only letters, digits and `_-.+`"
                )))
            }
            None => default_name(&root),
        };
        // The stat cache is per (directory, filters): other filters, other files.
        let id = root_id(&root, opts);
        let opts = with_skips(cache, opts, mounts);
        let fresh = || SyncLog {
            name: name.clone(),
            root: root.display().to_string(),
            snapshots: Vec::new(),
        };
        let mut notes = Vec::new();
        // NB: held until the snapshot is recorded (`record` consumes us).
        let held = cache.store.hold_sync_name(&name);
        let mut end = None;
        let log = match cache.store.sync_log_end(&name) {
            Ok(Some((log, e))) => {
                end = e;
                log
            }
            Ok(None) => fresh(),
            // NB: a damaged log stops nothing: it goes to quarantine and a
            // fresh history starts.
            Err(StoreError::Corrupt { reason, .. }) => {
                cache
                    .store
                    .quarantine_sync_log(&name, &format!("sync: {reason}"))?;
                notes.push(format!(
                    "the sync log of `{name}` was damaged ({reason}): moved to quarantine/syncs/, a fresh history starts"
                ));
                fresh()
            }
            Err(e) => return Err(e.into()),
        };
        let mut log = log;
        if log.root != root.display().to_string()
            && !log.snapshots.is_empty()
            && !Path::new(&log.root).is_dir()
        {
            // The name's directory is gone (or the log's record of it is
            // damaged): the name is free; its history goes to quarantine.
            let why = format!("names {}, which is not a directory", log.root);
            cache
                .store
                .quarantine_sync_log(&name, &format!("sync: {why}"))?;
            notes.push(format!(
                "the sync log of `{name}` {why}: moved to quarantine/syncs/, a fresh history starts"
            ));
            log = fresh();
            end = None;
        }
        if log.root != root.display().to_string() && !log.snapshots.is_empty() {
            return Err(SyncError::Usage(format!(
                "sync name `{name}` already names {}; pass --name to sync {} under another name",
                log.root,
                root.display()
            )));
        }
        let mut opts = opts;
        opts.first_snapshot = log.snapshots.is_empty();
        Ok(Target {
            root,
            name,
            id,
            opts,
            log,
            end,
            notes,
            _held: held,
        })
    }

    /// `record_now` the walk's scan, and write its stat-cache records
    /// (`walk::StatWrite`). Those name blobs, so they are written once the
    /// blobs' names are durable: while the record's flushes (stamps, log)
    /// wait for the disk, on another thread, if the walk's commit made
    /// them durable (a first snapshot's packs: its change set, every path,
    /// is made meanwhile); after the record's barrier, if it left them to
    /// it. Then the index is flushed if `flush` (or a history starts): the
    /// stat cache's records are durable on return.
    fn record(
        self,
        cache: &Cache,
        walked: &mut walk::Walked<'_>,
        since: u64,
        verified: &mut Verified,
        flush: bool,
    ) -> Result<SyncReport, SyncError> {
        let out = std::mem::take(&mut walked.out);
        let fresh = std::mem::take(&mut walked.fresh);
        let pending = walked.names_pending;
        let (recorded, written) = match walked.stat_write.take() {
            None => (
                self.record_now(cache, out, (fresh, pending), since, verified),
                Ok(()),
            ),
            Some(w) if pending => {
                let recorded = self.record_now(cache, out, (fresh, pending), since, verified);
                let written = if recorded.is_ok() { w.run() } else { Ok(()) };
                (recorded, written)
            }
            Some(w) => {
                // NB: a thread that cannot be made leaves the write to this one.
                let job = std::sync::Mutex::new(Some(w));
                let write = || {
                    let w = job.lock().unwrap_or_else(|p| p.into_inner()).take();
                    w.map_or(Ok(()), walk::StatWrite::run)
                };
                std::thread::scope(|s| {
                    let helper = std::thread::Builder::new().spawn_scoped(s, write);
                    let recorded = self.record_now(cache, out, (fresh, pending), since, verified);
                    let written = match helper {
                        Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                        Err(_) => write(),
                    };
                    (recorded, written)
                })
            }
        };
        let r = recorded?;
        // NB: the snapshot is recorded: a stat cache not written only
        // costs the next scan its hashing, so it fails nothing.
        if let Err(e) = written {
            log::warn!(
                "the stat cache of {} was not written: {e}",
                r.root.display()
            );
        }
        if flush || r.previous.is_none() {
            cache.index.flush()?;
        }
        Ok(r)
    }

    /// Record a scan as the latest snapshot (if its tree is new) and report
    /// the change set from the previous one. `verified`: the log's
    /// snapshots as a previous record of this process left them (their
    /// trees were checked then), with the store's blob generation then;
    /// set to the log's snapshots on return.
    /// `since`: the store's blob generation before the walk (see
    /// `Cache::hold_tree`).
    fn record_now(
        mut self,
        cache: &Cache,
        out: scan::ScanOutput,
        (fresh, names_pending): (changes::Fresh, bool),
        since: u64,
        verified: &mut Verified,
    ) -> Result<SyncReport, SyncError> {
        // NB: held from before anything reads the new tree until the log
        // names it (a tree the log names already is kept by gc as it is).
        let _held = if self.log.latest().map(|s| s.tree) != Some(out.tree) {
            match cache.hold_tree(out.tree, since) {
                Some(h) => Some(h),
                None => return Err(SyncError::Swept(self.name)),
            }
        } else {
            None
        };
        // NB: snapshots checked by an earlier pass of this process are not
        // looked up again while the log still holds them unchanged: a
        // watch's pass would otherwise cost one lookup per snapshot ever
        // recorded.
        // NB: blobs lost since (a quarantine, fsck) raised the generation.
        let generation = cache.store.blob_generation();
        let same = if verified.0 == generation {
            let (log, seen) = (&self.log.snapshots, &verified.1);
            log.iter().zip(seen).take_while(|(a, b)| a == b).count()
        } else {
            0
        };
        // NB: `stored`, not `has_blob`: a pack that could not be read is
        // an error, never a reason to quarantine the history.
        let mut gone = None;
        for s in &self.log.snapshots[same..] {
            if !cache.store.stored(&s.tree)? {
                gone = Some(s);
                break;
            }
        }
        if let Some(gone) = gone {
            // A snapshot whose tree is not stored (a digest damaged in the
            // log, or a tree lost): the history goes to quarantine, a
            // fresh one starts.
            let (name, seq, tree) = (&self.name, gone.seq, gone.tree);
            cache.store.quarantine_sync_log(
                name,
                &format!("sync: snapshot {seq} names tree {tree}, which is not stored"),
            )?;
            self.notes.push(format!(
                "snapshot {seq} of `{name}` names tree {tree}, which is not stored: its log moved to quarantine/syncs/, a fresh history starts"
            ));
            self.log.snapshots.clear();
            self.end = None;
        }
        let mut previous = self.log.latest().map(|s| s.tree);
        let diffed = changes::diff_fresh(&cache.store, &fresh, previous.as_ref(), &out.tree);
        let changes = match diffed {
            Ok(c) => c,
            Err(e @ (StoreError::Missing(_) | StoreError::Corrupt { .. }))
                if previous.is_some_and(|p| !tree_intact(&cache.store, &p)) =>
            {
                // The log's latest snapshot names a damaged or missing
                // tree: its history goes to quarantine, a fresh one starts.
                let name = &self.name;
                cache
                    .store
                    .quarantine_sync_log(name, &format!("sync: latest snapshot: {e}"))?;
                self.notes.push(format!(
                    "the latest snapshot of `{name}` names a damaged tree ({e}): its log moved to quarantine/syncs/, a fresh history starts"
                ));
                self.log.snapshots.clear();
                self.end = None;
                previous = None;
                changes::diff_fresh(&cache.store, &fresh, None, &out.tree)?
            }
            Err(e) => return Err(e.into()),
        };
        let new_snapshot = previous != Some(out.tree);
        let created_ms = now_ms();
        if new_snapshot {
            // NB: stamps durable before the log names the snapshot: synced
            // now, or by the barrier that makes the walk's names durable.
            let trees = (previous.as_ref(), &out.tree);
            stamps::record(
                &cache.store,
                &cache.index,
                &self.name,
                trees,
                created_ms,
                names_pending,
            )?;
        }
        // NB: this walk's names, and any an earlier attempt (or another
        // writer of this process) left waiting (`note_change`): the blobs
        // of a tree found stored are trusted by name. A barrier that
        // another caller ran after this walk's renames may have cleared
        // the mark before the stamps were written: this walk's own takes
        // one in any case.
        if names_pending {
            cache.store.barrier()?;
        } else {
            cache.store.barrier_if_changed()?;
        }
        if new_snapshot {
            let seq = self.log.latest().map_or(1, |s| s.seq + 1);
            self.log.snapshots.push(Snapshot {
                seq,
                tree: out.tree,
                created_ms,
                files: out.files,
                bytes: out.bytes,
            });
            cache.store.append_snapshot(&self.log, self.end)?;
        }
        verified.0 = generation;
        verified.1.clone_from(&self.log.snapshots);
        Ok(SyncReport {
            name: self.name,
            root: self.root,
            snapshot: self.log.latest().cloned().expect("a snapshot"),
            new_snapshot,
            previous,
            changes,
            scan: out,
            notes: self.notes,
            from_watch: false,
        })
    }
}

/// Whether tree `d` and every tree under it read back whole.
fn tree_intact(store: &crate::store::Store, d: &Digest) -> bool {
    let mut stack = vec![*d];
    while let Some(d) = stack.pop() {
        let Ok(t) = store.read_tree(&d) else {
            return false;
        };
        stack.extend(t.entries.iter().filter_map(|e| match e.node {
            crate::store::Node::Dir { digest, .. } => Some(digest),
            _ => None,
        }));
    }
    true
}

/// Keeps one directory's snapshot current from dirty paths (`--watch`):
/// each pass re-examines only what `Dirty` names, on top of the tree of
/// the previous pass, and records the result exactly as `sync_dir` does.
pub(crate) struct Incremental {
    /// The tree of the last pass: what the directory held then.
    base: Digest,
    /// Where dagfs is mounted (a pass skips it), read again only when the
    /// mount table changed.
    mounts: crate::host::mounts::DagfsMounts,
    /// The mount points the last pass skipped: a mount or unmount under the
    /// directory changes no directory's stat and sends no event.
    last_mounts: Vec<PathBuf>,
    /// When the index was last flushed (see `sync`).
    flushed: std::time::Instant,
    totals: walk::Totals,
    /// The log's snapshots as the last pass left them (see `record`).
    verified: Verified,
}

/// Snapshots whose trees were found stored, and the store's blob
/// generation then (see `Target::record`).
#[derive(Default)]
struct Verified(u64, Vec<Snapshot>);

/// Directories walked whole by an incremental pass (new ones, mostly), each
/// with its stat from just before it was listed.
pub(crate) struct Listed {
    pub dirs: Vec<walk::Listed>,
    /// When the pass started (ns since the epoch).
    pub started_ns: i64,
}

/// A watch's passes flush the index at most this often (see
/// `Incremental::sync`).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The memo of tree totals is dropped past this many trees (it refills from
/// the store as needed); edits add a few trees each.
const MAX_TOTALS: usize = 200_000;

impl Incremental {
    /// A full sync, remembered as the base of the passes that follow.
    pub fn start(
        cache: &Cache,
        dir: &Path,
        name: Option<&str>,
        opts: &ScanOptions,
    ) -> Result<(Incremental, SyncReport), SyncError> {
        let mut totals = walk::Totals::new();
        let mut verified = Verified::default();
        let r = with_retries(|_| {
            let t = Target::new(cache, dir, name, opts)?;
            let since = cache.store.blob_generation();
            let mut walked = walk::walk(cache, &t.root, &t.id, &t.opts, None, &mut totals, None)?;
            t.record(cache, &mut walked, since, &mut verified, true)
        })?;
        let mut mounts = crate::host::mounts::DagfsMounts::new();
        let inc = Incremental {
            base: r.scan.tree,
            last_mounts: mounts.get().to_vec(),
            mounts,
            flushed: std::time::Instant::now(),
            totals,
            verified,
        };
        Ok((inc, r))
    }

    /// The tree of the last pass.
    pub fn base(&self) -> &Digest {
        &self.base
    }

    /// A pass over what `dirty` names (everything, if it asks for a rescan).
    /// Its stat-cache records are left to the caller (`Later`): a watch
    /// writes them after it has reported the snapshot.
    pub fn sync<'a>(
        &mut self,
        cache: &'a Cache,
        dir: &Path,
        name: Option<&str>,
        opts: &ScanOptions,
        dirty: &dirty::Dirty,
    ) -> Result<(SyncReport, Listed, Later<'a>), SyncError> {
        if self.totals.len() > MAX_TOTALS {
            self.totals.clear();
        }
        // NB: the index is flushed at most every `FLUSH_EVERY` by passes:
        // what a pass writes there is the stat cache, which only saves
        // hashing (a crash loses the records since the last flush, and the
        // next scan hashes those files again, or walks the whole tree); the
        // blobs and the log are durable already. A new history (stamps
        // start) is flushed at once.
        let flush = self.flushed.elapsed() >= FLUSH_EVERY;
        let now = self.mounts.get();
        // NB: a pass after a mount or unmount lists (see `Plan::watched`).
        let events_tell = now == self.last_mounts.as_slice();
        if !events_tell {
            self.last_mounts = now.to_vec();
        }
        let mounts = Some(self.last_mounts.as_slice());
        let (base, totals, verified) = (&self.base, &mut self.totals, &mut self.verified);
        let (r, walked_whole, started_ns, write) = with_retries(|n| {
            let t = Target::new_in(cache, dir, name, opts, mounts)?;
            let since = cache.store.blob_generation();
            // NB: another sync of the name (a `--rescan`, say) recorded a
            // snapshot since the last pass: a pass on top of the older
            // tree would take it back. A full (stat-cached) walk instead,
            // as after a sweep that removed blobs of the last attempt (the
            // totals it memoized may name them).
            let stale = t.log.latest().map(|s| s.tree) != Some(*base);
            let plan = if stale || n > 0 {
                None
            } else {
                dirty::plan(&cache.store, &t.root, base, dirty)?.map(|p| dirty::Plan {
                    watched: events_tell,
                    ..p
                })
            };
            if n > 0 {
                totals.clear();
            }
            let walked = walk::walk(
                cache,
                &t.root,
                &t.id,
                &t.opts,
                plan.map(std::sync::Arc::new),
                totals,
                None,
            )?;
            let r = t.record_now(
                cache,
                walked.out,
                (walked.fresh, walked.names_pending),
                since,
                verified,
            )?;
            Ok((r, walked.listed_whole, walked.started_ns, walked.stat_write))
        })?;
        self.base = r.scan.tree;
        if flush {
            self.flushed = std::time::Instant::now();
        }
        let listed = Listed {
            dirs: walked_whole,
            started_ns,
        };
        let later = Later {
            write,
            flush: flush || r.previous.is_none(),
        };
        Ok((r, listed, later))
    }
}

/// What a watch's pass leaves to be done after its snapshot is reported:
/// write its stat-cache records (0.2 ms of a one-file change's pass, off
/// the path from the change to its report), then flush the index if due.
/// Not done (a pass that failed later, a crash): the next scan hashes
/// those files again.
#[must_use]
pub(crate) struct Later<'a> {
    write: Option<walk::StatWrite<'a>>,
    flush: bool,
}

impl Later<'_> {
    pub fn finish(self, cache: &Cache) -> Result<(), SyncError> {
        // NB: as in `Target::record`: the snapshot is recorded already.
        if let Some(Err(e)) = self.write.map(walk::StatWrite::run) {
            log::warn!("a pass's stat cache was not written: {e}");
        }
        if self.flush {
            cache.index.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A task input's scan writes its stat cache: the next scan of the
    /// unchanged directory hashes nothing. (A review caught a version of
    /// this session's change that left it unwritten.)
    #[test]
    fn an_input_scan_writes_its_stat_cache() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        for i in 0..5 {
            std::fs::write(src.join("d").join(format!("f{i}")), format!("{i}")).unwrap();
        }
        // NB: older than the racy window, so the stat cache may vouch.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let cache = Cache::open(&t.path().join("store"), Default::default()).unwrap();
        let root = std::fs::canonicalize(&src).unwrap();
        let o = ScanOptions::default();
        let id = root_id(&root, &o);
        let first = scan::scan(&cache, &root, &id, &o).unwrap();
        assert_eq!(first.hashed, 5);
        let again = scan::scan(&cache, &root, &id, &o).unwrap();
        assert_eq!(again.tree, first.tree);
        assert_eq!((again.hashed, again.reused), (0, 5));
    }

    /// Regression (a gap the stop-25 note named): a gc between a sync's
    /// walk and its record swept the snapshot's blobs, since no log named
    /// its tree yet, and the log then named a tree that was not stored (in
    /// a daemon, `dagfs gc` runs beside the watches' passes). Now the
    /// record sees that blobs were removed since its walk began, finds
    /// them gone, and the walk is made again; and a tree held for its log
    /// (`Cache::hold_tree`) is kept by a gc meanwhile.
    #[test]
    fn a_gc_between_a_walk_and_its_record_leaves_no_tree_unstored() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(&t.path().join("store"), Default::default()).unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        for i in 0..5 {
            std::fs::write(src.join("d").join(format!("f{i}")), format!("content {i}")).unwrap();
        }
        let o = ScanOptions::default();
        let walk_of = |target: &Target| {
            let since = cache.store.blob_generation();
            let w = walk::walk(
                &cache,
                &target.root,
                &target.id,
                &target.opts,
                None,
                &mut walk::Totals::new(),
                None,
            )
            .unwrap();
            (since, w.out, w.names_pending)
        };
        let settle = || std::thread::sleep(std::time::Duration::from_millis(30));

        // A gc after the walk, before the record: the record refuses.
        let target = Target::new(&cache, &src, Some("s"), &o).unwrap();
        let (since, out, pending) = walk_of(&target);
        let tree = out.tree;
        settle();
        let swept = cache.gc(false, &HashSet::new()).unwrap().sweep;
        assert!(
            swept.blobs_removed > 0,
            "the gc found the snapshot's blobs unnamed"
        );
        assert!(!crate::store::gc::stored_whole(&cache.store, &tree));
        let r = target.record_now(
            &cache,
            out,
            (Default::default(), pending),
            since,
            &mut Verified::default(),
        );
        assert!(
            matches!(r, Err(SyncError::Swept(_))),
            "{:?}",
            r.map(|r| r.snapshot)
        );
        assert!(
            cache.store.sync_log("s").unwrap().is_none(),
            "the log names nothing"
        );

        // The same through `sync_dir`: stored whole, named.
        let r = sync_dir(&cache, &src, Some("s"), &o).unwrap();
        assert_eq!(r.snapshot.tree, tree);
        assert!(crate::store::gc::stored_whole(&cache.store, &tree));

        // A tree held for its log is kept by a gc meanwhile; held or not,
        // once named it is kept.
        std::fs::write(src.join("d").join("f0"), "changed").unwrap();
        let target = Target::new(&cache, &src, Some("s"), &o).unwrap();
        let (since, out, pending) = walk_of(&target);
        let tree = out.tree;
        let hold = cache
            .hold_tree(tree, since)
            .expect("nothing removed since the walk");
        settle();
        cache.gc(false, &HashSet::new()).unwrap();
        assert!(
            crate::store::gc::stored_whole(&cache.store, &tree),
            "a held tree was swept"
        );
        drop(hold);
        let r = target
            .record_now(
                &cache,
                out,
                (Default::default(), pending),
                since,
                &mut Verified::default(),
            )
            .unwrap();
        assert_eq!((r.snapshot.tree, r.snapshot.seq), (tree, 2));
        settle();
        cache.gc(false, &HashSet::new()).unwrap();
        assert!(crate::store::gc::stored_whole(&cache.store, &tree));
    }

    /// A watch's pass looks up only the snapshots the log changed since its
    /// last pass (not every snapshot ever recorded), so a snapshot another
    /// process rewrote to name a tree that is not stored is still found,
    /// and the history goes to quarantine.
    #[test]
    fn a_pass_checks_the_snapshots_the_log_changed_since_the_last() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(&t.path().join("store"), Default::default()).unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let o = ScanOptions::default();
        std::fs::write(src.join("a"), "1").unwrap();
        let (mut inc, first) = Incremental::start(&cache, &src, Some("s"), &o).unwrap();
        assert_eq!(first.snapshot.seq, 1);
        let mut pass = |content: &str| {
            std::fs::write(src.join("a"), content).unwrap();
            let mut dirty = dirty::Dirty::default();
            dirty.mark(src.join("a"), false);
            let (r, _, later) = inc.sync(&cache, &src, Some("s"), &o, &dirty).unwrap();
            later.finish(&cache).unwrap();
            r
        };
        let r = pass("22");
        assert_eq!((r.snapshot.seq, r.notes.len()), (2, 0), "{:?}", r.notes);

        let mut log = cache.store.sync_log("s").unwrap().unwrap();
        log.snapshots[0].tree = Digest::of(b"a tree that is not stored");
        cache.store.put_sync_log(&log).unwrap();
        let r = pass("333");
        assert_eq!(r.snapshot.seq, 1, "a fresh history");
        assert!(
            r.notes.iter().any(|n| n.contains("snapshot 1 of `s`")),
            "{:?}",
            r.notes
        );
        assert_eq!(
            cache.store.sync_log("s").unwrap().unwrap().snapshots.len(),
            1
        );
    }
}
