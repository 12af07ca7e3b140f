//! What a run gives back: each node's `Outcome`, the progress `Event`s,
//! the `Report`, and the run's record for the index.

use std::time::Duration;

use super::super::hermetic::Findings;
use super::Plan;
use crate::cache::{now_ms, Cache};
use crate::hash::Digest;
use crate::index::{MissReason, Route, RunRecord, RunTask};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Cached,
    Executed,
    Failed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::Executed => "executed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    pub route: Option<Route>,
    pub miss_reason: Option<MissReason>,
    pub key: Option<Digest>,
    pub output: Option<Digest>,
    pub exit_code: Option<i32>,
    /// Why it failed (non-zero exit, spawn or ingest error).
    pub error: Option<String>,
    /// The end of stderr (or stdout) of a failed job.
    pub log_tail: Option<String>,
    pub stdout: Option<Digest>,
    pub stderr: Option<Digest>,
    /// False when the policy left no room to keep the entry.
    pub kept: bool,
    pub start: Duration,
    pub duration: Duration,
    pub worker: usize,
    /// What an executed task did beyond its declaration (`hermetic`).
    pub hermetic: Option<Findings>,
}

impl Outcome {
    pub(super) fn new(status: Status) -> Outcome {
        Outcome {
            status,
            route: None,
            miss_reason: None,
            key: None,
            output: None,
            exit_code: None,
            error: None,
            log_tail: None,
            stdout: None,
            stderr: None,
            kept: true,
            start: Duration::ZERO,
            duration: Duration::ZERO,
            worker: 0,
            hermetic: None,
        }
    }

    /// A key hit on `key`, whose output is `output` (a run a memo
    /// answered: `exec::memo`).
    pub fn hit(key: Digest, output: Digest) -> Outcome {
        Outcome {
            route: Some(Route::Key),
            key: Some(key),
            output: Some(output),
            ..Outcome::new(Status::Cached)
        }
    }
}

pub enum Event<'a> {
    /// A miss handed to the workers; it waits for a free one (`-j`).
    Queued {
        idx: usize,
    },
    /// A worker began executing it.
    Started {
        idx: usize,
    },
    /// Nothing happened for `TICK` (a progress display may redraw).
    Tick,
    Finished {
        idx: usize,
        outcome: &'a Outcome,
    },
}

#[derive(Debug)]
pub struct Report {
    pub run_id: u64,
    pub dag: String,
    pub names: Vec<String>,
    pub outcomes: Vec<Outcome>,
    pub elapsed: Duration,
    pub evicted: u64,
    pub expired: u64,
}

impl Report {
    fn count(&self, s: Status) -> usize {
        self.outcomes.iter().filter(|o| o.status == s).count()
    }
    pub fn executed(&self) -> usize {
        self.count(Status::Executed)
    }
    pub fn cached(&self) -> usize {
        self.count(Status::Cached)
    }
    pub fn failed(&self) -> usize {
        self.count(Status::Failed)
    }
    pub fn skipped(&self) -> usize {
        self.count(Status::Skipped)
    }
    pub fn ok(&self) -> bool {
        self.failed() == 0 && self.skipped() == 0
    }
    /// Cached / (cached + executed).
    pub fn hit_rate(&self) -> f64 {
        let looked = self.cached() + self.executed();
        if looked == 0 {
            0.0
        } else {
            self.cached() as f64 / looked as f64
        }
    }
}

/// The run's record (for `dagfs runs`, `/runs` and `explain`).
pub(super) fn run_record(
    cache: &Cache,
    plan: &Plan,
    outcomes: &[Outcome],
    id: u64,
    started_ms: u64,
) -> RunRecord {
    RunRecord {
        id,
        dag: plan.dag.clone(),
        started_ms,
        finished_ms: now_ms(),
        ok: outcomes
            .iter()
            .all(|o| matches!(o.status, Status::Cached | Status::Executed)),
        tasks: plan
            .nodes
            .iter()
            .zip(outcomes)
            .map(|(nd, o)| {
                let since_ms = match (o.key, cache.index.latest_moved(&plan.dag, &nd.name)) {
                    (Some(k), Ok(Some((l, ms)))) if k == l && ms != 0 => Some(ms),
                    _ => None,
                };
                RunTask {
                    task: nd.name.clone(),
                    key: o.key,
                    route: o.route.map(|r| r.as_str().to_string()).unwrap_or_default(),
                    status: o.status.as_str().to_string(),
                    miss_reason: o.miss_reason.map(|r| r.as_str().to_string()),
                    since_ms,
                    deps: nd
                        .deps
                        .iter()
                        .map(|&d| plan.nodes[d].name.clone())
                        .collect(),
                    duration_ms: Some(o.duration.as_millis() as u64),
                    error: o.error.clone(),
                }
            })
            .collect(),
    }
}
