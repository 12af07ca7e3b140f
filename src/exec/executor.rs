//! The library's cached executor: closures as tasks, the same store, keys
//! and scheduler as `dagfs run` (dagron's `CachedDAGExecutor`, parallel).
//!
//! Task identity for a closure: Rust cannot hash a closure's code or
//! captures, so a task's digest is made of
//! - its **version**: an explicit `Task::version("...")`, or by default the
//!   BLAKE3 of the running executable, so a rebuilt binary never serves
//!   results of old code;
//! - its **key inputs**: every value given with `Task::key_input`, through
//!   the `CacheKey` trait; state a closure captures must be declared here to
//!   enter the key;
//! - and, as for every task, its name and its dependencies' output digests.
//!
//! A task's output is its returned bytes, stored as the file `output` in the
//! entry's output tree.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::dag::Dag;
use super::error::{ExecError, Result};
use super::key::{CacheKey, KeyBuilder};
use super::scheduler::{
    self, Job, JobContext, JobError, JobResult, Options, Plan, PlanNode, Status,
};
use crate::cache::Cache;
use crate::hash::Digest;
use crate::index::Route;
use crate::store::{Manifest, Node};

type TaskFn = dyn Fn(&TaskInputs) -> std::result::Result<Vec<u8>, String> + Send + Sync;

/// A task: a closure from its dependencies' outputs to bytes.
#[derive(Clone)]
pub struct Task {
    f: Arc<TaskFn>,
    version: Option<String>,
    params: Vec<(String, Digest)>,
    cache: bool,
    ttl: Option<Duration>,
}

impl Task {
    pub fn new(
        f: impl Fn(&TaskInputs) -> std::result::Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Task {
        Task {
            f: Arc::new(f),
            version: None,
            params: Vec::new(),
            cache: true,
            ttl: None,
        }
    }

    /// A task returning a serde value (stored as JSON).
    pub fn json<T: serde::Serialize>(
        f: impl Fn(&TaskInputs) -> std::result::Result<T, String> + Send + Sync + 'static,
    ) -> Task {
        Task::new(move |i| f(i).and_then(|v| serde_json::to_vec(&v).map_err(|e| e.to_string())))
    }

    /// Explicit code version (instead of the executable's digest).
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }

    /// A value that enters the key (e.g. state the closure captures).
    pub fn key_input(mut self, name: impl Into<String>, value: &(impl CacheKey + ?Sized)) -> Self {
        self.params.push((name.into(), value.cache_key()));
        self
    }

    /// Always run (the result is still stored).
    pub fn no_cache(mut self) -> Self {
        self.cache = false;
        self
    }

    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// Dependencies' outputs, by dependency name.
pub struct TaskInputs {
    deps: BTreeMap<String, Vec<u8>>,
}

impl TaskInputs {
    pub fn get(&self, dep: &str) -> Option<&[u8]> {
        self.deps.get(dep).map(Vec::as_slice)
    }

    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        dep: &str,
    ) -> std::result::Result<T, String> {
        let b = self
            .get(dep)
            .ok_or_else(|| format!("no dependency `{dep}`"))?;
        serde_json::from_slice(b).map_err(|e| format!("output of `{dep}`: {e}"))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.deps.keys().map(String::as_str)
    }
}

struct ClosureJob(Arc<TaskFn>);

impl Job for ClosureJob {
    fn run(&self, ctx: &JobContext<'_>) -> std::result::Result<JobResult, JobError> {
        let mut deps = BTreeMap::new();
        for (name, digest) in ctx.deps {
            deps.insert(
                name.clone(),
                read_output(ctx.store, digest)
                    .map_err(|e| JobError::Task(format!("input `{name}`: {e}")))?,
            );
        }
        let stdout = ctx.work_dir.join("stdout");
        let stderr = ctx.work_dir.join("stderr");
        std::fs::write(&stdout, b"").map_err(JobError::io(&stdout))?;
        let (code, err) = match (self.0)(&TaskInputs { deps }) {
            Ok(bytes) => {
                let output = ctx.out_dir.join("output");
                std::fs::write(&output, bytes).map_err(JobError::io(&output))?;
                (0, String::new())
            }
            Err(e) => (1, e),
        };
        std::fs::write(&stderr, err).map_err(JobError::io(&stderr))?;
        Ok(JobResult {
            exit_code: code,
            stdout,
            stderr,
            timed_out: None,
            output_over: None,
            hermetic: None,
        })
    }
}

/// The bytes of a closure task's output tree (its `output` file).
pub fn read_output(
    store: &crate::store::Store,
    tree: &Digest,
) -> std::result::Result<Vec<u8>, String> {
    let t = store.read_tree(tree).map_err(|e| e.to_string())?;
    match t.find(b"output").map(|e| &e.node) {
        Some(Node::File { digest, .. }) => {
            let mut buf = Vec::new();
            store
                .open_blob(digest)
                .map_err(|e| e.to_string())?
                .read_to_end(&mut buf)
                .map_err(|e| e.to_string())?;
            Ok(buf)
        }
        _ => Ok(Vec::new()),
    }
}

/// The digest of the running executable (default task version).
pub fn executable_digest() -> &'static str {
    static EXE: OnceLock<String> = OnceLock::new();
    EXE.get_or_init(|| {
        std::env::current_exe()
            .and_then(std::fs::read)
            .map(|b| Digest::of(&b).to_hex())
            .unwrap_or_else(|_| "unknown-executable".into())
    })
}

/// One node's result.
#[derive(Debug, Clone)]
pub struct NodeResult {
    pub status: Status,
    pub route: Option<Route>,
    pub key: Option<Digest>,
    /// The task's bytes (for executed and cached nodes).
    pub output: Option<Vec<u8>>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExecutionResult {
    pub cache_hits: usize,
    pub cache_misses: usize,
    pub nodes_executed: usize,
    pub nodes_cached: usize,
    pub nodes_failed: usize,
    pub nodes_skipped: usize,
    pub nodes: BTreeMap<String, NodeResult>,
}

/// Runs a `Dag` of closures with caching.
pub struct CachedExecutor<'a> {
    dag: &'a Dag,
    cache: &'a Cache,
    name: String,
    opts: Options,
}

impl<'a> CachedExecutor<'a> {
    pub fn new(dag: &'a Dag, cache: &'a Cache) -> Self {
        CachedExecutor {
            dag,
            cache,
            name: "lib".into(),
            opts: Options::default(),
        }
    }

    /// Worker threads (default: available cores).
    pub fn jobs(mut self, n: usize) -> Self {
        self.opts.jobs = n.max(1);
        self
    }

    pub fn fail_fast(mut self, b: bool) -> Self {
        self.opts.fail_fast = b;
        self
    }

    /// The DAG's name in the store (`dagfs ls`), default `lib`.
    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.name = n.into();
        self
    }

    pub fn execute(
        &self,
        tasks: impl IntoIterator<Item = (impl Into<String>, Task)>,
    ) -> Result<ExecutionResult> {
        let mut tasks: HashMap<String, Task> =
            tasks.into_iter().map(|(k, v)| (k.into(), v)).collect();
        let mut local = vec![usize::MAX; self.dag.len()];
        let mut nodes = Vec::new();
        for &i in self.dag.topo_order() {
            let name = self.dag.name(i);
            let t = tasks
                .remove(name)
                .ok_or_else(|| ExecError::Config(format!("no task given for node `{name}`")))?;
            let mut manifest = Manifest {
                name: name.to_string(),
                command: "closure".into(),
                cwd: String::new(),
                env: Vec::new(),
                inputs: Vec::new(),
                params: t.params.clone(),
                version: t
                    .version
                    .clone()
                    .unwrap_or_else(|| format!("exe:{}", executable_digest())),
                task_digest: Digest::default(),
                deps: Vec::new(),
            };
            manifest.params.sort();
            manifest.task_digest = KeyBuilder::task_digest(&manifest);
            local[i] = nodes.len();
            nodes.push(PlanNode {
                name: name.to_string(),
                deps: self.dag.deps(i).iter().map(|&d| local[d]).collect(),
                manifest,
                cache: t.cache,
                ttl: t.ttl,
                max_output: None,
                job: Arc::new(ClosureJob(t.f)),
            });
        }
        if let Some(extra) = tasks.keys().next() {
            return Err(ExecError::UnknownTask(extra.clone()));
        }
        let plan = Plan {
            dag: self.name.clone(),
            nodes,
        };
        let report = scheduler::run(self.cache, &plan, &self.opts, &mut |_| {})?;
        let mut out = ExecutionResult {
            cache_hits: report.cached(),
            cache_misses: report.executed() + report.failed(),
            nodes_executed: report.executed(),
            nodes_cached: report.cached(),
            nodes_failed: report.failed(),
            nodes_skipped: report.skipped(),
            nodes: BTreeMap::new(),
        };
        for (name, o) in report.names.iter().zip(report.outcomes) {
            let output = match o.output {
                Some(d) => Some(read_output(&self.cache.store, &d).map_err(ExecError::Config)?),
                None => None,
            };
            let error = match (&o.error, &o.log_tail) {
                (Some(e), Some(t)) => Some(format!("{e}: {t}")),
                (e, _) => e.clone(),
            };
            out.nodes.insert(
                name.clone(),
                NodeResult {
                    status: o.status,
                    route: o.route,
                    key: o.key,
                    output,
                    error,
                },
            );
        }
        Ok(out)
    }
}
