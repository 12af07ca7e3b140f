//! `dagfs sync --watch`: keep a snapshot current from the watcher's events.
//!
//! `notify` (inotify on Linux) events mark dirty paths (`dirty::Dirty`);
//! after a debounce (quiet for `QUIET`, or `QUIET_AFTER_CLOSE` after a file
//! was closed from writing; at most `MAX_WAIT`) the next
//! snapshot is computed from the dirty paths alone on top of the previous
//! tree (`Incremental`: no full walk), recorded, and its change set
//! reported. Opens and reads (ours included) are not changes.
//!
//! Lost events: an overflow or rescan signal, or a watcher error, re-arms
//! the watcher (directories made while events were lost are not watched
//! yet) and takes a full, stat-cached rescan.
//!
//! New directories: inotify can only watch a directory once it exists, and
//! `notify` adds that watch after it has passed the creation event on, so
//! a file made in a new directory in between has no event of its own. Each
//! directory an incremental pass walked whole is therefore *young*: its
//! stat from just before it was listed is compared again at every later
//! pass and once the watcher has been quiet for `SETTLE`; a young directory
//! that changed (or whose stamp was too recent to tell, as git's racy
//! rule) is walked again. It stops being young once found unchanged while
//! the watcher was quiet (by then its watch is in place).
//!
//! Queries: a one-shot `dagfs sync` of a directory the daemon watches is
//! answered by the watch (`Query`), as watchman answers a `since` query:
//! the watch creates a cookie file in a private directory it also watches
//! (the same inotify instance, whose queue is in the order events
//! happened), reads events until the cookie's own, so every change made
//! before the query is marked, then takes a pass over what is dirty (none:
//! the current snapshot) and answers with it. A cookie that does not come
//! back within `FENCE` (events lost) makes that pass a full, stat-cached
//! rescan.
//!
//! Not seen by inotify at all, as with any inotify-based tool: writes made
//! through a hard link from outside the directory, and writes to a shared
//! `mmap`. A full `dagfs sync --rescan` (or one with no daemon watching)
//! picks those up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};

use super::dirty::Dirty;
use super::types::{Meta, RACY_NS};
use super::{Incremental, ScanOptions, SyncError, SyncReport};
use crate::cache::Cache;

/// A batch of events ends after this long without another…
pub const QUIET: Duration = Duration::from_millis(5);
/// …or this long, when the last event was a file closed after writing (a
/// writer done with it: waiting longer only delays the snapshot; a burst,
/// as `cp -r` or `git checkout` make, has events far closer together, and
/// one split in two costs a pass, never a change).
pub const QUIET_AFTER_CLOSE: Duration = Duration::from_micros(200);
/// …or after this long in all.
pub const MAX_WAIT: Duration = Duration::from_millis(100);
/// Young directories are checked once the watcher has been quiet this long.
pub const SETTLE: Duration = Duration::from_millis(50);
/// Passes in a row that met a file changing under them before the watch
/// fails with that conflict.
const MAX_CONFLICTS: u32 = 8;
/// How long a query waits for its cookie's event before it rescans.
pub const FENCE: Duration = Duration::from_secs(2);

type Event = notify::Result<notify::Event>;

/// A one-shot sync of the watched directory, to be answered by the watch:
/// `None` when it cannot be (the caller then scans itself).
pub struct Query {
    pub reply: Sender<Option<SyncReport>>,
}

/// A watcher of `root` and, if given, of the cookie directory `cookies`;
/// the second is false when the cookie directory could not be watched
/// (gone: a temp cleaner removed it), and queries are then not answered.
fn arm(
    root: &Path,
    cookies: Option<&Path>,
    tx: Sender<Event>,
) -> Result<(notify::RecommendedWatcher, bool), SyncError> {
    let err = |e: notify::Error| SyncError::Io {
        path: root.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    // NB: symlinks are stored as links, never followed: watching their
    // targets would only report changes outside the snapshot.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut w = notify::RecommendedWatcher::new(
        move |ev: Event| {
            let _ = tx.send(ev);
        },
        config,
    )
    .map_err(err)?;
    w.watch(root, RecursiveMode::Recursive).map_err(err)?;
    let mut cookies_ok = false;
    if let Some(c) = cookies {
        // NB: the same watcher, so the same inotify queue as `root`'s.
        match w.watch(c, RecursiveMode::NonRecursive) {
            Ok(()) => cookies_ok = true,
            Err(e) => log::warn!(
                "cannot watch the cookie directory {} (one-shot syncs will scan): {e}",
                c.display()
            ),
        }
    }
    Ok((w, cookies_ok))
}

/// The watch's private cookie directory, `dagfs-watch-<pid>-*` in the
/// temporary directory: `None` (queries are then not answered) if it
/// cannot be made. Those of processes that are gone are removed first,
/// once per process (a daemon arms one watch per directory).
fn cookie_dir() -> Option<tempfile::TempDir> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let tmp = std::env::temp_dir();
    SWEPT.call_once(|| sweep_cookie_dirs(&tmp));
    let prefix = format!("{COOKIE_PREFIX}{}-", std::process::id());
    match tempfile::Builder::new().prefix(&prefix).tempdir_in(&tmp) {
        Ok(d) => Some(d),
        Err(e) => {
            log::warn!("no cookie directory for the watch (one-shot syncs will rescan): {e}");
            None
        }
    }
}

const COOKIE_PREFIX: &str = "dagfs-watch-";

/// Remove the cookie directories in `tmp` that this user's watches left
/// when their process was killed (a `TempDir` is removed on drop, never
/// after SIGKILL): those named for a pid no process has. A pid in use again
/// keeps its directory (left, not wrongly removed); another user's are
/// never touched; names without a pid (older versions) are left alone.
fn sweep_cookie_dirs(tmp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(tmp) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(COOKIE_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 0 || pid as u32 == std::process::id() {
            continue;
        }
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        let ours = std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if gone && ours {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// How a fence ended.
#[derive(Debug, PartialEq, Eq)]
enum Fence {
    /// The cookie's event came back: every event before it is marked.
    Seen,
    /// The cookie could not be made (its directory is gone).
    NoCookie,
    /// Events were lost (an overflow), or the cookie did not come back
    /// within `FENCE`: the watch rescans on its own; the query is not
    /// answered (its caller scans).
    Lost,
}

/// Make a cookie and read events until its own: every event before it is
/// marked in `pending`.
fn fence(
    rx: &Receiver<Event>,
    cookie: &Path,
    root: &Path,
    ignored: &[PathBuf],
    pending: &mut Dirty,
) -> Fence {
    if std::fs::File::create(cookie).is_err() {
        return Fence::NoCookie;
    }
    let deadline = Instant::now() + FENCE;
    let mut end = Fence::Lost;
    while !pending.needs_rescan() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ev) => {
                let seen = matches!(&ev, Ok(e) if e.paths.iter().any(|p| p == cookie));
                classify(root, ignored, ev, pending);
                if seen {
                    end = Fence::Seen;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = std::fs::remove_file(cookie);
    if pending.needs_rescan() {
        Fence::Lost
    } else {
        end
    }
}

/// How long to wait for the next event of a batch after `ev`.
fn quiet_after(ev: &Event) -> Duration {
    match ev {
        Ok(e) if e.kind == EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            QUIET_AFTER_CLOSE
        }
        _ => QUIET,
    }
}

/// Mark what one event says may have changed.
fn classify(root: &Path, ignored: &[PathBuf], ev: Event, dirty: &mut Dirty) {
    let ev = match ev {
        Ok(ev) if !ev.need_rescan() => ev,
        _ => return dirty.mark_rescan(),
    };
    let whole = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => return,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_)) => false,
        // Created, removed, renamed, or not said: what is at the path may
        // be another directory than before.
        _ => true,
    };
    if ev.paths.is_empty() {
        return dirty.mark_rescan();
    }
    for p in ev.paths {
        if ignored.iter().any(|i| p.starts_with(i)) {
            continue;
        }
        let Ok(rel) = p.strip_prefix(root) else {
            continue;
        };
        // Inside a `.git` directory: never scanned (`.git` itself still is).
        let in_git = rel
            .parent()
            .is_some_and(|d| d.components().any(|c| c.as_os_str() == ".git"));
        if in_git {
            continue;
        }
        if rel.as_os_str().is_empty() {
            // The root itself: its mode is no part of a tree; anything else
            // (removed, moved) is for a full rescan to report.
            if whole {
                dirty.mark_rescan();
            }
            continue;
        }
        dirty.mark(p, whole);
    }
}

/// A directory walked whole by an incremental pass, under watch until its
/// own inotify watch is surely in place.
struct Young {
    stamp: Option<Meta>,
    listed_ns: i64,
}

enum Verdict {
    Keep,
    Drop,
    Rescan,
}

impl Young {
    fn verdict(&self, path: &Path, quiet: bool) -> Verdict {
        let now = std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| Meta::of(&m));
        let (Some(a), Some(b)) = (self.stamp, now) else {
            return Verdict::Rescan;
        };
        let same = a.dev == b.dev
            && a.ino == b.ino
            && a.mtime_ns == b.mtime_ns
            && a.ctime_ns == b.ctime_ns;
        let racy = b.mtime_ns >= self.listed_ns - RACY_NS || b.ctime_ns >= self.listed_ns - RACY_NS;
        if !same || racy {
            Verdict::Rescan
        } else if quiet {
            Verdict::Drop
        } else {
            Verdict::Keep
        }
    }
}

/// Watch `dir` until `stop` fires or `report` returns false. `report` sees
/// the first snapshot and every one that changed something; `queries` are
/// one-shot syncs answered from the watch (see the module's doc).
pub fn watch(
    cache: &Cache,
    dir: &Path,
    name: Option<&str>,
    opts: &ScanOptions,
    stop: &Receiver<()>,
    queries: &Receiver<Query>,
    report: &mut dyn FnMut(&SyncReport) -> bool,
) -> Result<(), SyncError> {
    let root = std::fs::canonicalize(dir).map_err(|e| SyncError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    // NB: another machine's write to a shared filesystem raises no event
    // here: the watch cannot answer for it.
    let cookies = match crate::host::mounts::shared_fs(&root) {
        Some(kind) => {
            log::info!(
                "{} is on {kind}: one-shot syncs of it are scanned, not answered by its watch",
                root.display()
            );
            None
        }
        None => cookie_dir(),
    };
    let cookie_dir = cookies.as_ref().map(|c| c.path().to_path_buf());
    // NB: watch before the first snapshot: a change made as soon as it is
    // reported must not slip between the scan and the watch.
    let (tx, rx) = channel::unbounded();
    let (watcher, cookies_ok) = arm(&root, cookie_dir.as_deref(), tx.clone())?;
    let cookie_dir = cookie_dir.filter(|_| cookies_ok);
    let (inc, first) = Incremental::start(cache, &root, name, opts)?;
    let name = first.name.clone();
    if !report(&first) {
        return Ok(());
    }
    let last_scan = first.scan.clone();
    // Our own writes (a store or mount inside the directory, the cookies)
    // are not changes.
    let mut ignored: Vec<PathBuf> = vec![cache.store.root().to_path_buf()];
    ignored.extend(crate::host::mounts::dagfs_mountpoints().unwrap_or_default());
    ignored.extend(cookie_dir.clone());
    let mut w = Watching {
        cache,
        root: &root,
        name: &name,
        opts,
        inc,
        watcher: Some(watcher),
        tx,
        cookie_dir,
        ignored,
        young: HashMap::new(),
        pending: Dirty::default(),
        conflicts: 0,
        cookies: 0,
        last_scan,
    };
    loop {
        let mut quiet = false;
        let mut wait = QUIET;
        if w.pending.is_empty() {
            let settle = if w.young.is_empty() {
                channel::never()
            } else {
                channel::after(SETTLE)
            };
            channel::select! {
                recv(stop) -> _ => return Ok(()),
                recv(queries) -> q => {
                    let Ok(q) = q else { continue };
                    let pass = w.answer(&rx, report)?;
                    let stop = matches!(pass, Some(Pass::Stop));
                    let answer = match pass {
                        Some(Pass::Done(r)) => Some(*r),
                        _ => None,
                    };
                    let _ = q.reply.send(answer);
                    if stop {
                        return Ok(());
                    }
                    continue;
                }
                recv(rx) -> ev => {
                    let Ok(ev) = ev else { return Ok(()) };
                    wait = quiet_after(&ev);
                    classify(&root, &w.ignored, ev, &mut w.pending);
                }
                recv(settle) -> _ => quiet = true,
            }
        }
        if !quiet {
            let start = Instant::now();
            while start.elapsed() < MAX_WAIT {
                match rx.recv_timeout(wait) {
                    Ok(ev) => {
                        wait = quiet_after(&ev);
                        classify(&root, &w.ignored, ev, &mut w.pending);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
        }
        w.check_young(quiet);
        if w.pending.is_empty() {
            continue;
        }
        if let Pass::Stop = w.pass(report)? {
            return Ok(());
        }
    }
}

/// A running watch's state between passes.
struct Watching<'a> {
    cache: &'a Cache,
    root: &'a Path,
    name: &'a str,
    opts: &'a ScanOptions,
    inc: Incremental,
    /// None only while it is re-armed.
    watcher: Option<notify::RecommendedWatcher>,
    tx: Sender<Event>,
    /// Where queries' cookies are made (None: queries are not answered).
    cookie_dir: Option<PathBuf>,
    ignored: Vec<PathBuf>,
    young: HashMap<PathBuf, Young>,
    pending: Dirty,
    conflicts: u32,
    /// Cookies made so far (each query's has a new name).
    cookies: u64,
    /// What the last pass (or the first snapshot) scanned.
    last_scan: super::scan::ScanOutput,
}

enum Pass {
    /// A snapshot, new or not.
    Done(Box<SyncReport>),
    /// A file changed under the pass; its events bring another.
    Again,
    /// `report` asked to stop.
    Stop,
}

impl Watching<'_> {
    /// Mark young directories that changed (or, once quiet, forget those
    /// that did not).
    fn check_young(&mut self, quiet: bool) {
        let pending = &mut self.pending;
        self.young.retain(|path, y| match y.verdict(path, quiet) {
            Verdict::Keep => true,
            Verdict::Drop => false,
            Verdict::Rescan => {
                pending.mark(path.clone(), true);
                false
            }
        });
    }

    /// A pass over what is pending (possibly nothing: the current snapshot).
    fn pass(&mut self, report: &mut dyn FnMut(&SyncReport) -> bool) -> Result<Pass, SyncError> {
        // NB: a pass over a tree another sync of the name has since
        // replaced is a full walk (`Incremental::sync`).
        if self.pending.needs_rescan() {
            // Events were lost, and with them maybe the creation of
            // directories the watcher would have added watches for.
            self.watcher = None;
            let (w, cookies_ok) = arm(self.root, self.cookie_dir.as_deref(), self.tx.clone())?;
            self.watcher = Some(w);
            if !cookies_ok {
                self.cookie_dir = None;
            }
            self.young.clear();
        }
        let dirty = std::mem::take(&mut self.pending);
        match self
            .inc
            .sync(self.cache, self.root, Some(self.name), self.opts, &dirty)
        {
            Ok((r, listed, later)) => {
                self.conflicts = 0;
                for (path, stamp) in listed.dirs {
                    self.young.insert(
                        path,
                        Young {
                            stamp,
                            listed_ns: listed.started_ns,
                        },
                    );
                }
                let go_on = !r.new_snapshot || report(&r);
                later.finish(self.cache)?;
                if !go_on {
                    return Ok(Pass::Stop);
                }
                self.last_scan = r.scan.clone();
                Ok(Pass::Done(Box::new(r)))
            }
            // A file changed while it was read: its own events follow, and
            // the pass is taken again once they settle. Likewise when gc
            // kept removing what the pass stored (`SyncError::Swept`).
            Err(SyncError::Conflict { .. } | SyncError::Vanished { .. } | SyncError::Swept(_))
                if self.conflicts < MAX_CONFLICTS =>
            {
                self.conflicts += 1;
                self.pending.merge(dirty);
                Ok(Pass::Again)
            }
            Err(e) => Err(e),
        }
    }

    /// With nothing dirty and the name's latest snapshot still the tree of
    /// the last pass: that snapshot, unchanged, with no pass at all. None
    /// when another sync of the name recorded a snapshot since (a pass
    /// then answers).
    fn unchanged(&self) -> Option<SyncReport> {
        let log = self.cache.store.sync_log(self.name).ok()??;
        let latest = log.latest()?.clone();
        if latest.tree != *self.inc.base() {
            return None;
        }
        let mut scan = self.last_scan.clone();
        scan.hashed = 0;
        scan.reused = 0;
        scan.retries = 0;
        Some(SyncReport {
            name: self.name.to_string(),
            root: self.root.to_path_buf(),
            previous: Some(latest.tree),
            snapshot: latest,
            new_snapshot: false,
            changes: Default::default(),
            scan,
            notes: Vec::new(),
            from_watch: true,
        })
    }

    /// Answer a query: fence, then a pass over what is dirty. None when
    /// queries cannot be answered (no cookie directory).
    fn answer(
        &mut self,
        rx: &Receiver<Event>,
        report: &mut dyn FnMut(&SyncReport) -> bool,
    ) -> Result<Option<Pass>, SyncError> {
        let Some(dir) = &self.cookie_dir else {
            return Ok(None);
        };
        self.cookies += 1;
        let cookie = dir.join(format!("cookie-{}", self.cookies));
        // NB: the cookie is under an ignored path: `classify` leaves it out.
        match fence(rx, &cookie, self.root, &self.ignored, &mut self.pending) {
            Fence::Seen => {}
            Fence::NoCookie => {
                log::warn!(
                    "cannot make the cookie {} (one-shot syncs will scan)",
                    cookie.display()
                );
                self.cookie_dir = None;
                return Ok(None);
            }
            Fence::Lost => return Ok(None),
        }
        self.check_young(false);
        if self.pending.is_empty() {
            if let Some(r) = self.unchanged() {
                return Ok(Some(Pass::Done(Box::new(r))));
            }
        }
        let mut pass = self.pass(report)?;
        if let Pass::Done(r) = &mut pass {
            r.from_watch = true;
        }
        Ok(Some(pass))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed daemon's cookie directory (its pid gone) is removed when
    /// the next watch makes its own; a live process's and a foreign
    /// name are kept.
    #[test]
    fn cookie_directories_of_processes_that_are_gone_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = tmp.path().join(format!("{COOKIE_PREFIX}{dead}-abc"));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("cookie-1"), "").unwrap();
        let live = tmp.path().join(format!("{COOKIE_PREFIX}1-abc"));
        std::fs::create_dir(&live).unwrap();
        let old = tmp.path().join(format!("{COOKIE_PREFIX}abc"));
        std::fs::create_dir(&old).unwrap();
        sweep_cookie_dirs(tmp.path());
        assert!(!stale.exists(), "a dead process's cookie directory stayed");
        assert!(live.exists() && old.exists());
    }

    /// The fence: a query sent the moment a file is written (no process
    /// start in between, as there is for `dagfs sync`) is answered with a
    /// snapshot that has the file, every time.
    #[test]
    fn a_query_right_after_a_write_is_answered_with_it() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(&t.path().join("store"), Default::default()).unwrap();
        let src = t.path().join("src");
        // NB: below the root, which every pass lists again anyway.
        let sub = src.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("a"), "a").unwrap();
        let (stop_tx, stop_rx) = channel::bounded::<()>(1);
        let (query_tx, query_rx) = channel::unbounded::<Query>();
        let (first_tx, first_rx) = channel::bounded::<()>(1);
        std::thread::scope(|s| {
            // NB: dropped by a failing assertion too, which stops the watch.
            let stop_tx = stop_tx;
            let w = s.spawn(|| {
                let mut first = Some(first_tx);
                watch(
                    &cache,
                    &src,
                    Some("q"),
                    &ScanOptions::default(),
                    &stop_rx,
                    &query_rx,
                    &mut |_| {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(());
                        }
                        true
                    },
                )
            });
            first_rx.recv().unwrap();
            for i in 0..40 {
                let name = format!("f{i}");
                std::fs::write(sub.join(&name), i.to_string()).unwrap();
                let (reply, answer) = channel::bounded(1);
                query_tx.send(Query { reply }).unwrap();
                let r = answer.recv().unwrap().expect("answered");
                assert!(r.from_watch);
                assert_eq!(r.scan.files, i + 2, "round {i}: {} files", r.scan.files);
                let root = cache.store.read_tree(&r.snapshot.tree).unwrap();
                let sub = match root.find(b"sub").map(|e| &e.node) {
                    Some(crate::store::Node::Dir { digest }) => *digest,
                    other => panic!("no sub/ in the snapshot: {other:?}"),
                };
                let tree = cache.store.read_tree(&sub).unwrap();
                assert!(
                    tree.entries
                        .iter()
                        .any(|e| e.name.as_slice() == name.as_bytes()),
                    "round {i}: the snapshot lacks {name}"
                );
            }
            stop_tx.send(()).unwrap();
            w.join().unwrap().unwrap();
        });
    }
}
