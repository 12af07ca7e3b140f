//! Sharing one sync computation between concurrent syncs of the same
//! directory with the same filters (the daemon's clients).
//!
//! The first caller computes; callers arriving meanwhile wait for it and
//! take a reference to its result. The registry forgets a computation the
//! moment it ends, so a later sync computes afresh, and an error goes to
//! the callers of that computation only (never cached). A result lives as
//! long as someone holds it: the last `Held` to drop frees it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::{sync_dir, ScanOptions, SyncError, SyncReport};
use crate::cache::Cache;

type Outcome = Result<Arc<SyncReport>, String>;

#[derive(Default)]
struct Slot {
    done: Mutex<Option<Outcome>>,
    cv: Condvar,
}

#[derive(Default)]
pub struct Registry {
    running: Mutex<HashMap<Vec<u8>, Arc<Slot>>>,
    /// Computations running now.
    pub in_flight: AtomicU64,
    /// References to results held now (`Held` values alive).
    pub held: Arc<AtomicU64>,
    /// Computations started, and syncs that joined one instead.
    pub computed_total: AtomicU64,
    pub joined_total: AtomicU64,
}

/// A reference to a sync result; releases it when dropped.
pub struct Held {
    report: Arc<SyncReport>,
    held: Arc<AtomicU64>,
    /// True when this sync waited for another's computation.
    pub joined: bool,
}

impl std::ops::Deref for Held {
    type Target = SyncReport;
    fn deref(&self) -> &SyncReport {
        &self.report
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("in_flight", &self.in_flight)
            .field("held", &self.held)
            .field("computed_total", &self.computed_total)
            .field("joined_total", &self.joined_total)
            .finish_non_exhaustive()
    }
}

impl Registry {
    fn hold(&self, report: Arc<SyncReport>, joined: bool) -> Held {
        self.held.fetch_add(1, Ordering::SeqCst);
        Held {
            report,
            held: self.held.clone(),
            joined,
        }
    }

    /// `sync_dir`, computed once for concurrent callers with the same
    /// directory, name and filters.
    pub fn sync(
        &self,
        cache: &Cache,
        dir: &Path,
        name: Option<&str>,
        opts: &ScanOptions,
    ) -> Result<Held, SyncError> {
        let root = std::fs::canonicalize(dir).map_err(|e| SyncError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let key = serde_json::to_vec(&(
            root.as_os_str().as_encoded_bytes(),
            name,
            &opts.include,
            &opts.exclude,
            opts.skip_unreadable,
        ))
        .expect("key serializes");
        let (slot, mine) = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match running.get(&key) {
                Some(s) => (s.clone(), false),
                None => {
                    let s = Arc::new(Slot::default());
                    running.insert(key.clone(), s.clone());
                    (s, true)
                }
            }
        };
        if !mine {
            self.joined_total.fetch_add(1, Ordering::SeqCst);
            let mut done = slot.done.lock().unwrap_or_else(|p| p.into_inner());
            while done.is_none() {
                done = slot.cv.wait(done).unwrap_or_else(|p| p.into_inner());
            }
            return match done.as_ref().expect("done") {
                Ok(r) => Ok(self.hold(r.clone(), true)),
                Err(e) => Err(SyncError::Usage(format!(
                    "the concurrent sync this one joined failed: {e}"
                ))),
            };
        }
        self.computed_total.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = sync_dir(cache, &root, name, opts);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        // NB: forget the computation before waking waiters: a sync that
        // starts after this one ended must compute afresh.
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let (outcome, ret) = match result {
            Ok(r) => {
                let r = Arc::new(r);
                (Ok(r.clone()), Ok(self.hold(r, false)))
            }
            Err(e) => (Err(e.to_string()), Err(e)),
        };
        *slot.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        slot.cv.notify_all();
        ret
    }

    pub fn to_prometheus(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        format!(
            "# HELP dagfs_sync_inflight Sync computations running now.\n# TYPE dagfs_sync_inflight gauge\ndagfs_sync_inflight {}\n\
             # HELP dagfs_sync_held Sync results (change sets) held by syncs now.\n# TYPE dagfs_sync_held gauge\ndagfs_sync_held {}\n\
             # HELP dagfs_sync_computed_total Sync computations started.\n# TYPE dagfs_sync_computed_total counter\ndagfs_sync_computed_total {}\n\
             # HELP dagfs_sync_joined_total Syncs that shared a concurrent computation.\n# TYPE dagfs_sync_joined_total counter\ndagfs_sync_joined_total {}\n",
            g(&self.in_flight),
            g(&self.held),
            g(&self.computed_total),
            g(&self.joined_total)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_syncs_compute_once_and_release_everything() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..3000 {
            std::fs::write(dir.join(format!("f{i}")), i.to_string()).unwrap();
        }
        let cache = Cache::open(&t.path().join("store"), Default::default()).unwrap();
        let reg = Registry::default();
        let barrier = std::sync::Barrier::new(4);
        let trees: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let h = reg
                            .sync(&cache, &dir, None, &ScanOptions::default())
                            .unwrap();
                        (h.snapshot.tree, h.joined)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            trees.iter().all(|(t, _)| *t == trees[0].0),
            "all see one snapshot"
        );
        let joined = trees.iter().filter(|(_, j)| *j).count() as u64;
        assert_eq!(reg.computed_total.load(Ordering::SeqCst) + joined, 4);
        assert_eq!(reg.joined_total.load(Ordering::SeqCst), joined);
        assert!(
            joined >= 1,
            "the barrier lines four syncs up: at least one joins"
        );
        assert_eq!(
            reg.held.load(Ordering::SeqCst),
            0,
            "every reference released"
        );
        assert_eq!(reg.in_flight.load(Ordering::SeqCst), 0);
        assert!(
            reg.running.lock().unwrap().is_empty(),
            "nothing outlives the last sync"
        );
        // A later sync computes afresh (results are never cached).
        let before = reg.computed_total.load(Ordering::SeqCst);
        drop(
            reg.sync(&cache, &dir, None, &ScanOptions::default())
                .unwrap(),
        );
        assert_eq!(reg.computed_total.load(Ordering::SeqCst), before + 1);
    }
}
