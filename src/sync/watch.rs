//! `dagfs sync --watch`: keep a snapshot current.
//!
//! `notify` (inotify on Linux) reports changes under the directory; after a
//! debounce (quiet for `QUIET`, at most `MAX_WAIT`) a new snapshot is taken
//! and its change set reported. Each snapshot is a complete, stat-cached
//! scan: unchanged files cost a `stat`, not a read, and a watcher overflow
//! (lost events) needs no special handling because nothing depends on the
//! events' completeness.
//! NB: that is a walk of the whole tree per batch of events; computing the
//! change set from the dirty paths alone is not done yet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver};
use notify::{RecursiveMode, Watcher};

use super::{sync_dir, ScanOptions, SyncError, SyncReport};
use crate::cache::Cache;

/// A batch of events ends after this long without another.
pub const QUIET: Duration = Duration::from_millis(10);
/// …or after this long in all.
pub const MAX_WAIT: Duration = Duration::from_millis(200);

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
    // NB: watch before the first snapshot: a change made as soon as it is
    // reported must not slip between the scan and the watch.
    let root = std::fs::canonicalize(dir).map_err(|e| SyncError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let (tx, rx) = channel::unbounded();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let _ = tx.send(ev);
    })
    .map_err(|e| SyncError::Io {
        path: root.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    watcher
        .watch(&root, RecursiveMode::Recursive)
        .map_err(|e| SyncError::Io {
            path: root.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let first = sync_dir(cache, &root, name, opts)?;
    let name = first.name.clone();
    if !report(&first) {
        return Ok(());
    }
    // Our own writes (a store or mount inside the directory) are not changes.
    let mut ignored: Vec<PathBuf> = vec![cache.store.root().to_path_buf()];
    if let Ok(m) = crate::daemon::mounts::mounts() {
        ignored.extend(
            m.into_iter()
                .filter(|m| m.fstype == crate::daemon::mounts::FSTYPE)
                .map(|m| m.mountpoint),
        );
    }
    let relevant = |ev: &notify::Result<notify::Event>| match ev {
        Ok(e) => {
            e.need_rescan()
                || e.paths.is_empty()
                || e.paths
                    .iter()
                    .any(|p| !ignored.iter().any(|i| p.starts_with(i)))
        }
        Err(_) => true,
    };
    loop {
        channel::select! {
            recv(stop) -> _ => return Ok(()),
            recv(rx) -> ev => {
                let Ok(ev) = ev else { return Ok(()) };
                let mut any = relevant(&ev);
                let start = Instant::now();
                while start.elapsed() < MAX_WAIT {
                    match rx.recv_timeout(QUIET) {
                        Ok(ev) => any |= relevant(&ev),
                        Err(_) => break,
                    }
                }
                if !any {
                    continue;
                }
                let r = sync_dir(cache, &root, Some(&name), opts)?;
                if r.new_snapshot && !report(&r) {
                    return Ok(());
                }
            }
        }
    }
}
