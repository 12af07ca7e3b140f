//! The graph a run drew: its tasks, each with the state it ended in, and
//! its dependencies. Built from a pipeline file and a run record
//! (`dagfs graph`), or from a run record alone (the web view, which has no
//! pipeline file: edges come from the record, or from the entries'
//! manifests for records written before runs kept their edges).

use std::collections::{BTreeSet, HashMap};

use dagfs::cache::Cache;
use dagfs::hash::Digest;
use dagfs::index::RunRecord;

/// How a task ended in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Answered from the cache, by `route` (`key`, `content`, `joined`).
    Hit {
        route: String,
    },
    /// Executed, because it missed for `reason`.
    Ran {
        reason: String,
    },
    Failed,
    /// Not run: something upstream failed (or the run stopped first).
    Skipped,
    /// Not in the run (a task added since, or outside `run TASK...`).
    NotRun,
    /// A run in progress (`live`): not started yet, waiting for a free
    /// worker, running.
    Waiting,
    Queued,
    Running,
}

impl State {
    /// The `route` field of the JSON: a hit's route, `miss` for a task that
    /// ran, else empty.
    pub fn route(&self) -> &str {
        match self {
            State::Hit { route } => route,
            State::Ran { .. } | State::Failed => "miss",
            _ => "",
        }
    }

    /// `hit`, `ran`, `failed`, `skipped` or `not-run`.
    pub fn kind(&self) -> &'static str {
        match self {
            State::Hit { .. } => "hit",
            State::Ran { .. } => "ran",
            State::Failed => "failed",
            State::Skipped => "skipped",
            State::NotRun => "not-run",
            State::Waiting => "waiting",
            State::Queued => "queued",
            State::Running => "running",
        }
    }

    /// A short word for the label and the legend: `hit key`, `ran input
    /// changed`, `failed`, `skipped`, `not run`.
    pub fn label(&self) -> String {
        match self {
            State::Hit { route } => format!("hit {route}"),
            State::Ran { reason } => format!("ran {reason}"),
            State::Failed => "failed".into(),
            State::Skipped => "skipped".into(),
            State::NotRun => "not run".into(),
            State::Waiting => "waiting".into(),
            State::Queued => "queued".into(),
            State::Running => "running".into(),
        }
    }

    /// Its colour class (also the CSS class and `data-state` in the SVG):
    /// one per route and per miss reason.
    pub fn class(&self) -> String {
        let slug = |s: &str| s.replace(' ', "-");
        match self {
            State::Hit { route } => format!("hit-{}", slug(route)),
            State::Ran { reason } => format!("ran-{}", slug(reason)),
            State::Failed => "failed".into(),
            State::Skipped => "skipped".into(),
            State::NotRun => "not-run".into(),
            State::Waiting => "waiting".into(),
            State::Queued => "queued".into(),
            State::Running => "running".into(),
        }
    }

    /// (fill, stroke) colours; every renderer uses these.
    pub fn colours(&self) -> (&'static str, &'static str) {
        match self {
            State::Hit { route } => match route.as_str() {
                "key" => ("#a5d6a7", "#2e7d32"),
                "joined" => ("#80cbc4", "#00695c"),
                _ => ("#c5e1a5", "#558b2f"),
            },
            State::Ran { reason } => match reason.as_str() {
                "new" => ("#90caf9", "#1565c0"),
                "input changed" => ("#ffcc80", "#e65100"),
                "expired" => ("#ce93d8", "#6a1b9a"),
                "skip-cache" => ("#b0bec5", "#37474f"),
                "missing" => ("#bcaaa4", "#4e342e"),
                "corrupt" => ("#f48fb1", "#ad1457"),
                _ => ("#fff59d", "#f9a825"),
            },
            State::Failed => ("#ef9a9a", "#b71c1c"),
            State::Skipped => ("#eeeeee", "#9e9e9e"),
            State::NotRun | State::Waiting => ("#ffffff", "#bdbdbd"),
            State::Queued => ("#fffde7", "#fbc02d"),
            State::Running => ("#fff176", "#f57f17"),
        }
    }

    fn from_record(route: &str, status: &str, reason: Option<&str>) -> State {
        match status {
            "failed" => State::Failed,
            "skipped" => State::Skipped,
            _ if route == "miss" || status == "executed" => State::Ran {
                reason: reason.unwrap_or("unknown").to_string(),
            },
            _ if !route.is_empty() => State::Hit {
                route: route.to_string(),
            },
            _ => State::Skipped,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub key: Option<Digest>,
    pub state: State,
    /// The miss reason of a task that ran (`route` is then `miss`).
    pub reason: Option<String>,
    /// Time in this run (a task that ran or failed); for a hit, the time
    /// its entry took when it was made (what the hit saved).
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Graph {
    pub dag: String,
    /// The run the states come from; None: no run of this pipeline yet.
    pub run: Option<u64>,
    pub ok: Option<bool>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// A run still going (`live`).
    pub in_progress: bool,
    pub nodes: Vec<Node>,
    /// (from, to): `to` depends on `from`; indexes into `nodes`.
    pub edges: Vec<(usize, usize)>,
}

impl Node {
    /// `{name, key, state, route, reason, duration_ms, error}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "key": self.key.map(|k| k.to_string()),
            "state": self.state.kind(),
            "route": self.state.route(),
            "reason": self.reason,
            "duration_ms": self.duration_ms,
            "error": self.error,
        })
    }
}

impl Graph {
    /// The graph of `record`, with the edges it recorded (or, for older
    /// records, those of its tasks' entry manifests).
    pub fn from_run(cache: &Cache, record: &RunRecord) -> Graph {
        let names: Vec<String> = record.tasks.iter().map(|t| t.task.clone()).collect();
        let deps: Vec<Vec<String>> = record
            .tasks
            .iter()
            .map(|t| {
                if !t.deps.is_empty() {
                    return t.deps.clone();
                }
                t.key
                    .and_then(|k| cache.store.read_entry(&k).ok().flatten())
                    .map(|e| e.manifest.deps.into_iter().map(|(n, _)| n).collect())
                    .unwrap_or_default()
            })
            .collect();
        Graph::build(&record.dag, &names, &deps, Some(record), Some(cache))
    }

    /// The graph of the tasks `names` with dependencies `deps` (same
    /// order), coloured by `record` if given.
    pub fn build(
        dag: &str,
        names: &[String],
        deps: &[Vec<String>],
        record: Option<&RunRecord>,
        cache: Option<&Cache>,
    ) -> Graph {
        let at: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let in_run: HashMap<&str, &dagfs::index::RunTask> = record
            .map(|r| r.tasks.iter().map(|t| (t.task.as_str(), t)).collect())
            .unwrap_or_default();
        let nodes = names
            .iter()
            .map(|name| match in_run.get(name.as_str()) {
                None => Node {
                    name: name.clone(),
                    key: None,
                    state: State::NotRun,
                    reason: None,
                    duration_ms: None,
                    error: None,
                },
                Some(t) => {
                    let state = State::from_record(&t.route, &t.status, t.miss_reason.as_deref());
                    let duration_ms = match (&state, t.key, cache) {
                        (State::Hit { .. }, Some(k), Some(c)) => {
                            c.index.get(&k).ok().flatten().map(|m| m.duration_ms)
                        }
                        (State::Hit { .. } | State::Skipped, ..) => None,
                        _ => t.duration_ms,
                    };
                    Node {
                        name: name.clone(),
                        key: t.key,
                        reason: match &state {
                            State::Ran { reason } => Some(reason.clone()),
                            _ => None,
                        },
                        state,
                        duration_ms,
                        error: t.error.clone(),
                    }
                }
            })
            .collect();
        let mut edges = BTreeSet::new();
        for (to, ds) in deps.iter().enumerate() {
            for d in ds {
                if let Some(&from) = at.get(d.as_str()) {
                    edges.insert((from, to));
                }
            }
        }
        Graph {
            dag: dag.to_string(),
            run: record.map(|r| r.id),
            ok: record.map(|r| r.ok),
            started_ms: record.map(|r| r.started_ms),
            finished_ms: record.map(|r| r.finished_ms),
            in_progress: false,
            nodes,
            edges: edges.into_iter().collect(),
        }
    }

    /// Counts by state label, in the order of `LEGEND`.
    pub fn counts(&self) -> Vec<(State, usize)> {
        let mut out: Vec<(State, usize)> = Vec::new();
        for n in &self.nodes {
            match out.iter_mut().find(|(s, _)| *s == n.state) {
                Some((_, c)) => *c += 1,
                None => out.push((n.state.clone(), 1)),
            }
        }
        out.sort_by_key(|(s, _)| order(s));
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "dag": self.dag,
            "run": self.run,
            "ok": self.ok,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "nodes": self.nodes.iter().map(Node::to_json).collect::<Vec<_>>(),
            "edges": self.edges.iter().map(|&(f, t)| serde_json::json!({
                "from": self.nodes[f].name,
                "to": self.nodes[t].name,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Legend order: hits, then ran, failed, skipped, not run.
fn order(s: &State) -> (u8, String) {
    match s {
        State::Hit { route } => (0, route.clone()),
        State::Ran { reason } => (1, reason.clone()),
        State::Failed => (2, String::new()),
        State::Skipped => (3, String::new()),
        State::NotRun => (4, String::new()),
        State::Running => (5, String::new()),
        State::Queued => (6, String::new()),
        State::Waiting => (7, String::new()),
    }
}

/// A duration for a label: `850ms`, `1.2s`, `3m04s`.
pub fn short_duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, route: &str, status: &str, reason: Option<&str>) -> dagfs::index::RunTask {
        dagfs::index::RunTask {
            task: name.into(),
            key: None,
            route: route.into(),
            status: status.into(),
            miss_reason: reason.map(Into::into),
            since_ms: None,
            deps: Vec::new(),
            duration_ms: Some(5),
            error: None,
        }
    }

    #[test]
    fn states_come_from_the_record() {
        let rec = RunRecord {
            id: 3,
            dag: "d".into(),
            started_ms: 1,
            finished_ms: 2,
            ok: false,
            tasks: vec![
                task("a", "key", "cached", None),
                task("b", "miss", "executed", Some("input changed")),
                task("c", "miss", "failed", Some("new")),
                task("d", "", "skipped", None),
            ],
        };
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let deps = vec![
            vec![],
            vec!["a".into()],
            vec!["b".into()],
            vec!["c".into(), "nope".into()],
            vec![],
        ];
        let g = Graph::build("d", &names, &deps, Some(&rec), None);
        let states: Vec<String> = g.nodes.iter().map(|n| n.state.class()).collect();
        assert_eq!(
            states,
            [
                "hit-key",
                "ran-input-changed",
                "failed",
                "skipped",
                "not-run"
            ]
        );
        assert_eq!(g.edges, vec![(0, 1), (1, 2), (2, 3)]);
        let j = g.to_json();
        assert_eq!(j["edges"][0]["from"], "a");
        assert_eq!(j["nodes"][1]["route"], "miss");
        assert_eq!(j["nodes"][1]["reason"], "input changed");
        assert_eq!(j["nodes"][0]["state"], "hit");
        assert_eq!(j["nodes"][0]["route"], "key");
    }
}
