//! Runs in progress in the daemon, for the web view: `cli/run.rs` passes
//! each scheduler event to a `Tracker` (one per run), and the pages draw
//! the board. A run leaves the board when its tracker drops (the run
//! ended, failed or panicked); its record is in the index by then.

use std::sync::{Arc, Mutex};

use dagfs::exec::scheduler::{Event, Status};
use dagfs::hash::Digest;

use super::model::{Graph, State};

#[derive(Debug, Clone)]
enum Progress {
    Waiting,
    Queued,
    Running,
    Done {
        state: State,
        key: Option<Digest>,
        duration_ms: u64,
        error: Option<String>,
    },
}

struct LiveRun {
    id: u64,
    dag: String,
    names: Vec<String>,
    deps: Vec<Vec<String>>,
    progress: Vec<Progress>,
    started_ms: u64,
}

#[derive(Default)]
struct Board {
    next: u64,
    /// Moves on at every event: the live script's cue to reload.
    version: u64,
    runs: Vec<LiveRun>,
}

#[derive(Default)]
pub struct Live {
    board: Mutex<Board>,
}

/// One run on the board; removed when dropped.
pub struct Tracker {
    live: Arc<Live>,
    id: u64,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put a run of `dag` on the board: tasks `names`, each depending on
    /// the tasks at `deps` (indexes into `names`).
    pub fn begin(self: &Arc<Self>, dag: &str, names: &[String], deps: &[Vec<usize>]) -> Tracker {
        let mut b = self.lock();
        b.next += 1;
        b.version += 1;
        let id = b.next;
        b.runs.push(LiveRun {
            id,
            dag: dag.to_string(),
            names: names.to_vec(),
            deps: deps
                .iter()
                .map(|d| d.iter().map(|&i| names[i].clone()).collect())
                .collect(),
            progress: vec![Progress::Waiting; names.len()],
            started_ms: dagfs::cache::now_ms(),
        });
        Tracker {
            live: self.clone(),
            id,
        }
    }

    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// The graphs of the runs in progress, with (done, total) each.
    pub fn graphs(&self) -> Vec<(Graph, usize, u64)> {
        let b = self.lock();
        b.runs
            .iter()
            .map(|r| {
                let mut g = Graph::build(&r.dag, &r.names, &r.deps, None, None);
                g.in_progress = true;
                let mut done = 0;
                for (n, p) in g.nodes.iter_mut().zip(&r.progress) {
                    n.state = match p {
                        Progress::Waiting => State::Waiting,
                        Progress::Queued => State::Queued,
                        Progress::Running => State::Running,
                        Progress::Done {
                            state,
                            key,
                            duration_ms,
                            error,
                        } => {
                            done += 1;
                            n.key = *key;
                            n.duration_ms = Some(*duration_ms);
                            n.error = error.clone();
                            if let State::Ran { reason } = state {
                                n.reason = Some(reason.clone());
                            }
                            state.clone()
                        }
                    };
                }
                (g, done, r.started_ms)
            })
            .collect()
    }
}

impl Tracker {
    pub fn event(&self, ev: &Event<'_>) {
        let mut b = self.live.lock();
        b.version += 1;
        let Some(r) = b.runs.iter_mut().find(|r| r.id == self.id) else {
            return;
        };
        let (idx, p) = match ev {
            Event::Queued { idx } => (*idx, Progress::Queued),
            Event::Started { idx } => (*idx, Progress::Running),
            Event::Finished { idx, outcome } => {
                let state = match outcome.status {
                    Status::Cached => State::Hit {
                        route: outcome.route.map_or("key", |r| r.as_str()).to_string(),
                    },
                    Status::Executed => State::Ran {
                        reason: outcome
                            .miss_reason
                            .map_or("unknown", |r| r.as_str())
                            .to_string(),
                    },
                    Status::Failed => State::Failed,
                    Status::Skipped => State::Skipped,
                };
                (
                    *idx,
                    Progress::Done {
                        state,
                        key: outcome.key,
                        duration_ms: outcome.duration.as_millis() as u64,
                        error: outcome.error.clone(),
                    },
                )
            }
            Event::Tick => return,
        };
        if let Some(slot) = r.progress.get_mut(idx) {
            *slot = p;
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let mut b = self.live.lock();
        b.version += 1;
        b.runs.retain(|r| r.id != self.id);
    }
}
