//! What a run is given: the plan (keyed jobs and their edges), the
//! options, and the second tier it may ask (`Tier`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::{default_jobs, Inflight, Job};
use crate::cache::Cache;
use crate::hash::Digest;
use crate::index::CachePolicy;
use crate::store::{Entry, Manifest};

/// One node of a plan.
pub struct PlanNode {
    pub name: String,
    /// Indices into the plan's nodes.
    pub deps: Vec<usize>,
    /// Everything but `deps`; `task_digest` filled in.
    pub manifest: Manifest,
    pub cache: bool,
    pub ttl: Option<Duration>,
    /// The most bytes its output's files may add up to (None: no limit).
    pub max_output: Option<u64>,
    pub job: Arc<dyn Job>,
}

pub struct Plan {
    pub dag: String,
    pub nodes: Vec<PlanNode>,
}

#[derive(Clone)]
pub struct Options {
    pub jobs: usize,
    pub fail_fast: bool,
    pub no_cache: bool,
    /// This run's limits, over the store's policy.
    pub policy: CachePolicy,
    /// The daemon session running this: what the run produces or uses is
    /// leased to it (safe from eviction and gc by other sessions).
    pub session: Option<u64>,
    /// Keys executing now, shared by every run of one process (the daemon's
    /// concurrent clients): an identical key runs once, the others join it.
    pub inflight: Arc<Inflight>,
    /// A mount of this store: tasks then see `$DAGFS_IN/<dep>` as
    /// `<mount>/trees/<output>` (zero-copy) instead of a materialized copy.
    pub inputs_via: Option<PathBuf>,
    /// Counts tasks executing now (daemon metrics).
    pub running: Option<Arc<AtomicU64>>,
    /// Told when a task's latest key is set and when the run is recorded
    /// (the daemon invalidates the mount's live views).
    pub on_change: Option<Arc<OnChange>>,
    /// Asked on a local miss; told about every entry kept.
    pub tier: Option<Arc<dyn Tier>>,
}

/// A second tier behind the local store (`remote::Remote`; a trait so that
/// `exec` does not depend on it). The scheduler asks it on a local miss
/// and tells it what it published.
pub trait Tier: Send + Sync {
    /// On a local miss of `entry.key` (`entry` holds the key, dag, task and
    /// manifest with its deps): make it an ordinary local entry, committed
    /// and published, if the tier has it. Never fails the run.
    fn fetch(
        &self,
        cache: &Cache,
        entry: &Entry,
        protected: &HashSet<Digest>,
        policy: &CachePolicy,
    ) -> Option<crate::index::EntryMeta>;
    /// `entry` was published in the index; its record is not durable yet
    /// (anything this writes is made durable by the commit's `syncfs`
    /// before the record is renamed in).
    fn produced(&self, cache: &Cache, entry: &Entry);
}

/// What changed in the store's live views.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    Task { dag: &'a str, task: &'a str },
    Run(u64),
}

pub type OnChange = dyn Fn(Change<'_>) + Send + Sync;

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: default_jobs(),
            fail_fast: true,
            no_cache: false,
            policy: CachePolicy::default(),
            session: None,
            inflight: Arc::default(),
            inputs_via: None,
            running: None,
            on_change: None,
            tier: None,
        }
    }
}
