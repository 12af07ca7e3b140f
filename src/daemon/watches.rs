//! Watched syncs owned by the daemon: `dagfs sync DIR --watch` sent to a
//! running daemon starts one here and returns after its first snapshot;
//! the watch keeps snapshotting DIR after the client has gone, until
//! `dagfs sync --stop NAME` or the daemon stops. `dagfs sync --list` shows
//! them. Each watch is recorded in the store (`store::watchlist`) when it
//! starts and dropped by `--stop`, so a daemon started later re-arms it
//! (`resume`).
//!
//! A one-shot `dagfs sync DIR` of a watched directory (same name and
//! filters) is answered by its watch (`answer`, `sync::watch::Query`)
//! instead of a scan, unless `--rescan` asks for one.
//!
//! Owns: one thread per watch, running `sync::watch::watch`. Guarantees:
//! at most one watch per sync name; `stop` returns only once the watch's
//! thread has ended (no snapshot is committed after it); a watch that
//! fails (its directory removed, a conflict it cannot resolve) stays
//! listed with its error until stopped, so the failure is not lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam::channel::{self, Sender};

use crate::cache::Cache;
use crate::store::watchlist::WatchRecord;
use crate::sync::watch::Query;
use crate::sync::{self, ScanOptions, SyncError, SyncReport};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("sync `{name}` is already watched by the daemon (directory {root}); `dagfs sync --stop {name}` first")]
    AlreadyWatched { name: String, root: PathBuf },
    #[error("no watched sync named `{0}` in the daemon (`dagfs sync --list` shows them)")]
    NotWatched(String),
    #[error("cannot start a watch thread: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// What `--list` shows of one watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchInfo {
    pub name: String,
    pub root: PathBuf,
    /// Snapshots this watch recorded (the first included).
    pub snapshots: u64,
    /// Sequence number of the latest snapshot of the name.
    pub latest_seq: u64,
    /// Changes in the last snapshot that changed something.
    pub last_changes: usize,
    /// Unix ms of the last snapshot recorded.
    pub last_ms: u64,
    /// Why the watch ended, if it did on its own.
    pub error: Option<String>,
}

struct Watch {
    info: Arc<Mutex<WatchInfo>>,
    stop: Sender<()>,
    /// One-shot syncs for the watch to answer; its filters.
    queries: Sender<Query>,
    opts: ScanOptions,
    thread: Option<JoinHandle<()>>,
}

pub struct Watches {
    cache: Arc<Cache>,
    watches: Mutex<BTreeMap<String, Watch>>,
    /// Watches running now (`/.dagfs/metrics`).
    pub running: Arc<AtomicU64>,
    /// One-shot syncs answered by a watch (`/.dagfs/metrics`).
    pub answered: Arc<AtomicU64>,
}

/// How long a one-shot sync waits for a busy watch before it scans itself.
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Watches {
    pub fn new(cache: Arc<Cache>, running: Arc<AtomicU64>, answered: Arc<AtomicU64>) -> Watches {
        Watches {
            cache,
            watches: Mutex::new(BTreeMap::new()),
            running,
            answered,
        }
    }

    /// A one-shot sync of `dir` answered by its watch: `None` when no
    /// running watch has that directory, name and filters, or it could not
    /// answer (the caller then scans).
    pub fn answer(&self, dir: &Path, name: Option<&str>, opts: &ScanOptions) -> Option<SyncReport> {
        let root = std::fs::canonicalize(dir).ok()?;
        let name = name.map_or_else(|| sync::default_name(&root), str::to_string);
        let queries = {
            let watches = lock(&self.watches);
            let w = watches.get(&name)?;
            let info = lock(&w.info);
            let same = info.root == root
                && info.error.is_none()
                && w.opts.include == opts.include
                && w.opts.exclude == opts.exclude
                && w.opts.skip_unreadable == opts.skip_unreadable;
            if !same {
                return None;
            }
            w.queries.clone()
        };
        let (reply, answer) = channel::bounded(1);
        queries.send(Query { reply }).ok()?;
        let r = answer.recv_timeout(ANSWER_WAIT).ok().flatten()?;
        self.answered.fetch_add(1, Ordering::Relaxed);
        Some(r)
    }

    /// Start watching `dir` under `name` (default: the directory's base
    /// name); returns the first snapshot's report once it is recorded.
    pub fn start(
        &self,
        dir: &Path,
        name: Option<&str>,
        opts: ScanOptions,
    ) -> Result<SyncReport, WatchError> {
        let root = std::fs::canonicalize(dir).map_err(|source| SyncError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = match name {
            Some(n) if !sync::valid_name(n) => {
                return Err(SyncError::Usage(format!(
                    "invalid sync name `{n}` (letters, digits and `_-.+`)"
                ))
                .into())
            }
            Some(n) => n.to_string(),
            None => sync::default_name(&root),
        };
        let mut watches = lock(&self.watches);
        if let Some(w) = watches.get(&name) {
            let info = lock(&w.info);
            if info.error.is_none() {
                return Err(WatchError::AlreadyWatched {
                    name,
                    root: info.root.clone(),
                });
            }
        }
        // NB: a failed watch of the same name is replaced (its error was shown by --list).
        if let Some(old) = watches.remove(&name) {
            finish(old);
        }
        let record = WatchRecord {
            name: name.clone(),
            root: root.display().to_string(),
            include: opts.include.clone(),
            exclude: opts.exclude.clone(),
            skip_unreadable: opts.skip_unreadable,
        };
        let info = Arc::new(Mutex::new(WatchInfo {
            name: name.clone(),
            root: root.clone(),
            snapshots: 0,
            latest_seq: 0,
            last_changes: 0,
            last_ms: 0,
            error: None,
        }));
        let (stop_tx, stop_rx) = channel::bounded::<()>(1);
        let (query_tx, query_rx) = channel::unbounded::<Query>();
        let (first_tx, first_rx) = channel::bounded::<Result<SyncReport, SyncError>>(1);
        let (cache, thread_info, running) =
            (self.cache.clone(), info.clone(), self.running.clone());
        let thread_name = name.clone();
        let thread_opts = opts.clone();
        let thread = std::thread::Builder::new()
            .name(format!("watch-{name}"))
            .spawn(move || {
                running.fetch_add(1, Ordering::Relaxed);
                let mut first = Some(first_tx);
                let res = sync::watch::watch(
                    &cache,
                    &root,
                    Some(&thread_name),
                    &thread_opts,
                    &stop_rx,
                    &query_rx,
                    &mut |r| {
                        {
                            let mut i = lock(&thread_info);
                            i.snapshots += 1;
                            i.latest_seq = r.snapshot.seq;
                            i.last_ms = now_ms();
                            if !r.changes.is_empty() {
                                i.last_changes = r.changes.changes.len();
                            }
                        }
                        match first.take() {
                            Some(tx) => {
                                let _ = tx.send(Ok(r.clone()));
                            }
                            None => log::info!(
                                "sync {}: snapshot {} ({} changes)",
                                r.name,
                                r.snapshot.seq,
                                r.changes.changes.len()
                            ),
                        }
                        true
                    },
                );
                running.fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = res {
                    match first.take() {
                        Some(tx) => {
                            let _ = tx.send(Err(e));
                        }
                        None => {
                            log::warn!("sync {thread_name}: watch ended: {e}");
                            lock(&thread_info).error = Some(e.to_string());
                        }
                    }
                }
            })
            .map_err(WatchError::Spawn)?;
        let mut w = Watch {
            info,
            stop: stop_tx,
            queries: query_tx,
            opts,
            thread: Some(thread),
        };
        // NB: the lock is held over the first snapshot so a second start of
        // the same name waits and then finds this one.
        match first_rx.recv() {
            Ok(Ok(report)) => {
                if let Err(e) = self.cache.store.set_watch_record(&name, Some(record)) {
                    log::warn!(
                        "sync {name}: the watch runs, but a later daemon will not re-arm it: {e}"
                    );
                }
                watches.insert(name, w);
                Ok(report)
            }
            Ok(Err(e)) => {
                if let Some(t) = w.thread.take() {
                    let _ = t.join();
                }
                Err(e.into())
            }
            Err(_) => {
                if let Some(t) = w.thread.take() {
                    let _ = t.join();
                }
                Err(SyncError::Usage("the watch ended before its first snapshot".into()).into())
            }
        }
    }

    pub fn list(&self) -> Vec<WatchInfo> {
        lock(&self.watches)
            .values()
            .map(|w| lock(&w.info).clone())
            .collect()
    }

    /// Stop the watch of `name` (and drop its record: later daemons do
    /// not re-arm it); returns once its thread has ended.
    pub fn stop(&self, name: &str) -> Result<WatchInfo, WatchError> {
        let mut watches = lock(&self.watches);
        let w = watches
            .remove(name)
            .ok_or_else(|| WatchError::NotWatched(name.to_string()))?;
        if let Err(e) = self.cache.store.set_watch_record(name, None) {
            log::warn!(
                "sync {name}: stopped, but its record stays (a later daemon re-arms it): {e}"
            );
        }
        drop(watches);
        Ok(finish(w))
    }

    /// Re-arm every watch recorded in the store (a daemon starting). One
    /// that cannot start (its directory gone, …) stays listed with its
    /// error, and recorded, until `dagfs sync --stop`. Returns how many run.
    pub fn resume(&self) -> usize {
        let records = match self.cache.store.watch_records() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cannot re-arm the recorded watches: {e}");
                return 0;
            }
        };
        let mut running = 0;
        for r in records {
            let opts = ScanOptions {
                include: r.include.clone(),
                exclude: r.exclude.clone(),
                skip_unreadable: r.skip_unreadable,
                ..ScanOptions::default()
            };
            match self.start(Path::new(&r.root), Some(&r.name), opts.clone()) {
                Ok(report) => {
                    running += 1;
                    log::info!(
                        "sync {}: watch re-armed ({}), snapshot {}",
                        r.name,
                        r.root,
                        report.snapshot.seq
                    );
                }
                Err(e) => {
                    log::warn!("sync {}: cannot re-arm its watch: {e}", r.name);
                    let (stop, _) = channel::bounded(1);
                    let latest_seq = self
                        .cache
                        .store
                        .sync_log(&r.name)
                        .ok()
                        .flatten()
                        .and_then(|l| l.latest().map(|s| s.seq))
                        .unwrap_or(0);
                    let info = WatchInfo {
                        name: r.name.clone(),
                        root: PathBuf::from(&r.root),
                        snapshots: 0,
                        latest_seq,
                        last_changes: 0,
                        last_ms: 0,
                        error: Some(format!("could not be re-armed: {e}")),
                    };
                    lock(&self.watches).insert(
                        r.name,
                        Watch {
                            info: Arc::new(Mutex::new(info)),
                            stop,
                            queries: channel::unbounded().0,
                            opts,
                            thread: None,
                        },
                    );
                }
            }
        }
        running
    }

    /// Stop every watch (the daemon is stopping).
    pub fn stop_all(&self) {
        let all = std::mem::take(&mut *lock(&self.watches));
        for (_, w) in all {
            finish(w);
        }
    }
}

fn finish(mut w: Watch) -> WatchInfo {
    let _ = w.stop.try_send(());
    if let Some(t) = w.thread.take() {
        let _ = t.join();
    }
    let info = lock(&w.info).clone();
    info
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.stop_all();
    }
}
