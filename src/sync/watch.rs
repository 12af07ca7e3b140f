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
//! Not seen by inotify at all, as with any inotify-based tool: writes made
//! through a hard link from outside the directory, and writes to a shared
//! `mmap`. A later full `dagfs sync` picks those up.

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
/// as `cp -r` or `git checkout` make, has events far closer together).
pub const QUIET_AFTER_CLOSE: Duration = Duration::from_micros(500);
/// …or after this long in all.
pub const MAX_WAIT: Duration = Duration::from_millis(100);
/// Young directories are checked once the watcher has been quiet this long.
pub const SETTLE: Duration = Duration::from_millis(50);
/// Passes in a row that met a file changing under them before the watch
/// fails with that conflict.
const MAX_CONFLICTS: u32 = 8;

type Event = notify::Result<notify::Event>;

fn arm(root: &Path, tx: Sender<Event>) -> Result<notify::RecommendedWatcher, SyncError> {
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
    Ok(w)
}

/// Mark what one event says may have changed.
/// How long to wait for the next event of a batch after `ev`.
fn quiet_after(ev: &Event) -> Duration {
    match ev {
        Ok(e) if e.kind == EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            QUIET_AFTER_CLOSE
        }
        _ => QUIET,
    }
}

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
/// the first snapshot and every one that changed something.
pub fn watch(
    cache: &Cache,
    dir: &Path,
    name: Option<&str>,
    opts: &ScanOptions,
    stop: &Receiver<()>,
    report: &mut dyn FnMut(&SyncReport) -> bool,
) -> Result<(), SyncError> {
    let root = std::fs::canonicalize(dir).map_err(|e| SyncError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    // NB: watch before the first snapshot: a change made as soon as it is
    // reported must not slip between the scan and the watch.
    let (tx, rx) = channel::unbounded();
    let mut watcher = arm(&root, tx.clone())?;
    let (mut inc, first) = Incremental::start(cache, &root, name, opts)?;
    let name = first.name.clone();
    if !report(&first) {
        return Ok(());
    }
    // Our own writes (a store or mount inside the directory) are not changes.
    let mut ignored: Vec<PathBuf> = vec![cache.store.root().to_path_buf()];
    ignored.extend(crate::host::mounts::dagfs_mountpoints().unwrap_or_default());
    let mut young: HashMap<PathBuf, Young> = HashMap::new();
    let mut pending = Dirty::default();
    let mut conflicts = 0;
    loop {
        let mut quiet = false;
        let mut wait = QUIET;
        if pending.is_empty() {
            let settle = if young.is_empty() {
                channel::never()
            } else {
                channel::after(SETTLE)
            };
            channel::select! {
                recv(stop) -> _ => return Ok(()),
                recv(rx) -> ev => {
                    let Ok(ev) = ev else { return Ok(()) };
                    wait = quiet_after(&ev);
                    classify(&root, &ignored, ev, &mut pending);
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
                        classify(&root, &ignored, ev, &mut pending);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
        }
        young.retain(|path, y| match y.verdict(path, quiet) {
            Verdict::Keep => true,
            Verdict::Drop => false,
            Verdict::Rescan => {
                pending.mark(path.clone(), true);
                false
            }
        });
        if pending.is_empty() {
            continue;
        }
        if pending.needs_rescan() {
            // Events were lost, and with them maybe the creation of
            // directories the watcher would have added watches for.
            drop(watcher);
            watcher = arm(&root, tx.clone())?;
            young.clear();
        }
        let dirty = std::mem::take(&mut pending);
        match inc.sync(cache, &root, Some(&name), opts, &dirty) {
            Ok((r, listed)) => {
                conflicts = 0;
                for (path, stamp) in listed.dirs {
                    young.insert(
                        path,
                        Young {
                            stamp,
                            listed_ns: listed.started_ns,
                        },
                    );
                }
                if r.new_snapshot && !report(&r) {
                    return Ok(());
                }
            }
            // A file changed while it was read: its own events follow, and
            // the pass is taken again once they settle.
            Err(SyncError::Conflict { .. } | SyncError::Vanished { .. })
                if conflicts < MAX_CONFLICTS =>
            {
                conflicts += 1;
                pending.merge(dirty);
            }
            Err(e) => return Err(e),
        }
    }
}
