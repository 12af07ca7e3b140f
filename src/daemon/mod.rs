//! daemon: owns the store while a mount is up; serves the FUSE mount and a
//! Unix-socket API on which CLI commands run as they would embedded.
//!
//! May call: `fs` (the mount, through its `StoreView`: `view`), `remote`
//! (the background uploader and the mount's lookups: `remote`), `exec`,
//! `sync`, `cache`, `index`, `store`, `host`, `hash`.

pub mod client;
pub mod protocol;
pub mod remote;
pub mod server;
pub mod view;
pub mod watches;

/// The mount table lives in `host` (sync needs it too); kept here for its
/// users.
pub use crate::host::mounts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Live figures the daemon reports in `/.dagfs/stats` and `/.dagfs/metrics`.
#[derive(Debug, Default)]
pub struct Gauges {
    pub sessions: AtomicU64,
    pub sessions_total: AtomicU64,
    /// Shared with the scheduler (`Options::running`).
    pub inflight_tasks: Arc<AtomicU64>,
    /// Concurrent syncs of one directory share a computation through this.
    pub syncs: Arc<crate::sync::shared::Registry>,
    /// Watched syncs running in the daemon (`watches::Watches::running`).
    pub watches: Arc<AtomicU64>,
    /// One-shot syncs a watch answered (`watches::Watches::answered`).
    pub watch_answers: Arc<AtomicU64>,
}

impl Gauges {
    pub fn to_text(&self) -> String {
        format!(
            "sessions     {} (total {})\nin flight    {} tasks\nwatches      {} syncs\n",
            self.sessions.load(Ordering::Relaxed),
            self.sessions_total.load(Ordering::Relaxed),
            self.inflight_tasks.load(Ordering::Relaxed),
            self.watches.load(Ordering::Relaxed)
        )
    }

    pub fn to_prometheus(&self) -> String {
        format!(
            "# HELP dagfs_sessions Client sessions connected to the daemon.\n# TYPE dagfs_sessions gauge\ndagfs_sessions {}\n\
             # HELP dagfs_sessions_total Client sessions since the daemon started.\n# TYPE dagfs_sessions_total counter\ndagfs_sessions_total {}\n\
             # HELP dagfs_inflight_tasks Tasks executing now.\n# TYPE dagfs_inflight_tasks gauge\ndagfs_inflight_tasks {}\n\
             # HELP dagfs_sync_watches Watched syncs the daemon runs.\n# TYPE dagfs_sync_watches gauge\ndagfs_sync_watches {}\n\
             # HELP dagfs_sync_watch_answers One-shot syncs answered by the daemon's watch of their directory.\n# TYPE dagfs_sync_watch_answers counter\ndagfs_sync_watch_answers {}\n",
            self.sessions.load(Ordering::Relaxed),
            self.sessions_total.load(Ordering::Relaxed),
            self.inflight_tasks.load(Ordering::Relaxed),
            self.watches.load(Ordering::Relaxed),
            self.watch_answers.load(Ordering::Relaxed)
        ) + &self.syncs.to_prometheus()
    }
}
