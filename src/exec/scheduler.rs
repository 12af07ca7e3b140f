//! The scheduler: runs a plan of keyed jobs on a worker pool, answering
//! from the cache where it can.
//!
//! The calling thread coordinates: it derives each ready node's key from
//! its task digest and its dependencies' *output* digests, looks it up,
//! joins identical keys already running, and hands misses to `jobs` worker
//! threads (crossbeam channels). Workers run the job, ingest its output
//! (hash + rename into a staging area) and stage its entry record; the
//! coordinator indexes the entry under the policy at once and makes blobs
//! and records durable in group commits (`Store::commit_blobs`, then
//! `publish_entries`), the last before the index is flushed at the end.
//! Failures are never published. Fail-fast stops dispatching after the first
//! failure (running jobs finish); otherwise everything not downstream of a
//! failure runs. Nodes that never became ready are `Skipped`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam::channel;

use super::error::Result;
use super::key::KeyBuilder;
use crate::cache::{now_ms, Cache, Lookup};
use crate::hash::Digest;
use crate::index::{CachePolicy, MissReason, Route, RunRecord, RunTask};
use crate::store::ingest::{ingest_dir_limited, ingest_file, Limits, Sink};
use crate::store::{materialize::materialize, remove_all, Entry, Manifest, Staged, Store};
use std::sync::atomic::{AtomicU64, Ordering};

/// A unit of work: produces files in `ctx.out_dir`.
pub trait Job: Send + Sync {
    fn run(&self, ctx: &JobContext<'_>) -> std::result::Result<JobResult, String>;
}

/// What a job returns: its exit code and where its logs are.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub exit_code: i32,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Killed (with its process group) after running this long: its limit.
    pub timed_out: Option<Duration>,
    /// Killed (with its process group) when its output, measured while it
    /// ran, had grown to this many bytes, past `JobContext::max_output`.
    pub output_over: Option<u64>,
}

pub struct JobContext<'a> {
    pub store: &'a Store,
    /// Empty directory: what the job leaves here is its output.
    pub out_dir: &'a Path,
    /// Private scratch directory (contains `out_dir`).
    pub work_dir: &'a Path,
    /// (dependency name, output digest), sorted by name.
    pub deps: &'a [(String, Digest)],
    /// The most bytes `out_dir` may hold (the task's `max_output`). A job
    /// that runs a process should stop it once it writes past this;
    /// ingest refuses a larger output in any case.
    pub max_output: Option<u64>,
    mats: &'a Materializer,
    inputs_via: Option<&'a Path>,
}

impl JobContext<'_> {
    /// A read-only directory holding the stored tree `d` (under the mount
    /// when there is one, else materialized once per run).
    pub fn tree_path(&self, d: &Digest) -> std::result::Result<PathBuf, String> {
        match self.inputs_via {
            Some(mount) => Ok(mount.join("trees").join(d.to_hex())),
            None => self.mats.get(self.store, d),
        }
    }

    /// A read-only file holding the blob `d`. NB: never the store's own
    /// blob file: a task running as root could write through it.
    pub fn blob_path(&self, d: &Digest) -> std::result::Result<PathBuf, String> {
        match self.inputs_via {
            Some(mount) => Ok(mount.join("blobs").join(d.to_hex())),
            None => self.mats.blob(self.store, d),
        }
    }

    /// A directory with one read-only entry per dependency, `<dir>/<dep>`,
    /// holding that dependency's output tree.
    pub fn materialize_deps(&self) -> std::result::Result<PathBuf, String> {
        let dir = self.work_dir.join("in");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (name, digest) in self.deps {
            let src = match self.inputs_via {
                Some(mount) => mount.join("trees").join(digest.to_hex()),
                None => self.mats.get(self.store, digest)?,
            };
            let link = dir.join(name);
            std::os::unix::fs::symlink(&src, &link)
                .map_err(|e| format!("{}: {e}", link.display()))?;
        }
        Ok(dir)
    }
}

type MatCell = Arc<OnceLock<std::result::Result<PathBuf, String>>>;

/// Materializes each output tree once per run, shared by all tasks.
struct Materializer {
    root: PathBuf,
    /// Where workers stage entry records until the coordinator publishes them.
    pending: PathBuf,
    /// Where workers move staged blobs until the coordinator commits them.
    staging: PathBuf,
    /// See `Options::inputs_via`.
    via: Option<PathBuf>,
    done: Mutex<HashMap<Digest, MatCell>>,
}

impl Materializer {
    /// A private read-only copy of one blob, made once per run.
    fn blob(&self, store: &Store, d: &Digest) -> std::result::Result<PathBuf, String> {
        let p = self.root.join(format!("{}.blob", d.to_hex()));
        if !p.exists() {
            let tmp = self.root.join(format!(
                "{}.blob.{:?}",
                d.to_hex(),
                std::thread::current().id()
            ));
            store.copy_blob(d, &tmp).map_err(input_error)?;
            std::fs::rename(&tmp, &p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(p)
    }

    fn get(&self, store: &Store, d: &Digest) -> std::result::Result<PathBuf, String> {
        let cell = self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*d)
            .or_default()
            .clone();
        cell.get_or_init(|| {
            let p = self.root.join(d.to_hex());
            materialize(store, d, &p).map(|_| p).map_err(input_error)
        })
        .clone()
    }
}

/// A failure to give a task its inputs, as its error. Damaged stored bytes
/// are never handed to a task (`Store::copy_blob` checks them).
fn input_error(e: crate::store::StoreError) -> String {
    match e {
        crate::store::StoreError::Corrupt { .. } => format!(
            "an input is damaged in the store, so the task was not run: {e} (`dagfs fsck --repair` drops what is damaged; the next run then stores it again)"
        ),
        e => e.to_string(),
    }
}

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
        }
    }
}

/// Messages to a run's coordinator.
enum Msg {
    /// A worker began a job.
    Began { idx: usize },
    /// A worker finished a job.
    Done(Box<WorkDone>),
    /// A key this run joined finished in whichever run executed it: its
    /// output, or why it failed.
    Joined {
        idx: usize,
        result: std::result::Result<Digest, String>,
    },
}

type Waiters = Vec<(channel::Sender<Msg>, usize)>;

/// How long the run waits for its workers before it emits `Event::Tick`.
const TICK: Duration = Duration::from_millis(100);

/// Keys being executed, and who waits for each.
#[derive(Default)]
pub struct Inflight {
    map: Mutex<HashMap<Digest, Waiters>>,
}

impl Inflight {
    /// Claim `key` for execution (true), or register `idx` of the run behind
    /// `tx` as waiting for it (false).
    fn claim(&self, key: Digest, tx: &channel::Sender<Msg>, idx: usize) -> bool {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match m.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                o.get_mut().push((tx.clone(), idx));
                false
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Vec::new());
                true
            }
        }
    }

    /// Release a claimed key, telling every waiter the result.
    fn finish(&self, key: &Digest, result: std::result::Result<Digest, String>) {
        let waiters = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
            .unwrap_or_default();
        for (tx, idx) in waiters {
            let _ = tx.send(Msg::Joined {
                idx,
                result: result.clone(),
            });
        }
    }

    fn has_waiters(&self, key: &Digest) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|w| !w.is_empty())
    }

    /// Keys executing now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

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
}

impl Outcome {
    fn new(status: Status) -> Outcome {
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

struct WorkItem {
    idx: usize,
    key: Digest,
    entry: Entry,
    job: Arc<dyn Job>,
    limits: Limits,
}

struct WorkDone {
    idx: usize,
    key: Digest,
    /// The entry, and its staged (not yet committed) blobs and record.
    result: std::result::Result<(Entry, Staged), Failure>,
    start: Duration,
    duration: Duration,
    worker: usize,
}

struct Failure {
    message: String,
    exit_code: Option<i32>,
    log_tail: Option<String>,
}

/// Run `plan` against `cache`.
pub fn run(
    cache: &Cache,
    plan: &Plan,
    opts: &Options,
    observe: &mut dyn for<'e> FnMut(Event<'e>),
) -> Result<Report> {
    let t0 = Instant::now();
    let n = plan.nodes.len();
    let run_id = cache.index.next_run_id()?;
    let started_ms = now_ms();
    let mut dependents = vec![Vec::new(); n];
    for (i, node) in plan.nodes.iter().enumerate() {
        for &d in &node.deps {
            dependents[d].push(i);
        }
    }
    let mut waiting: Vec<usize> = plan.nodes.iter().map(|nd| nd.deps.len()).collect();
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let policy = cache.policy().overlay(opts.policy);
    // Keys this run claimed and has not finished (released on any exit).
    let mut owned: HashSet<Digest> = HashSet::new();
    // Nodes waiting for a key another run (or this one) is executing.
    let mut joining: HashMap<usize, (Digest, MissReason)> = HashMap::new();
    let mut protected: HashSet<Digest> = HashSet::new();
    let mut hits: HashMap<Route, i64> = HashMap::new();
    let mut misses: HashMap<MissReason, i64> = HashMap::new();
    let mut evicted = 0u64;
    let _ingest = cache.begin_ingest();
    let run_tmp = cache.store.tempdir("run-")?;
    let mats = Materializer {
        root: run_tmp.path().to_path_buf(),
        pending: run_tmp.path().join("entries"),
        staging: run_tmp.path().join("staging"),
        via: opts.inputs_via.clone(),
        done: Mutex::new(HashMap::new()),
    };
    for d in [&mats.pending, &mats.staging] {
        std::fs::create_dir(d).map_err(|e| crate::store::StoreError::Io {
            path: d.clone(),
            source: e,
        })?;
    }
    // Group commit. Workers stage outputs; the coordinator commits their
    // blobs in batches (one syncfs per batch), early only when a task about
    // to start reads an uncommitted output, and publishes the entry records
    // of committed blobs with one more syncfs (see `Store::commit_blobs`,
    // `Store::publish_entries`). Nothing is reported done before `flush`.
    let mut batch = Staged::default();
    let mut uncommitted: HashSet<usize> = HashSet::new();
    let mut pending: Vec<(PathBuf, Digest)> = Vec::new();
    let mut pending_since = Instant::now();
    let jobs = opts.jobs.max(1);

    let coordinated: Result<()> = std::thread::scope(|s| {
        let (work_tx, work_rx) = channel::unbounded::<WorkItem>();
        let (done_tx, done_rx) = channel::unbounded::<Msg>();
        for w in 0..jobs {
            let (work_rx, done_tx, mats, store) =
                (work_rx.clone(), done_tx.clone(), &mats, &cache.store);
            let gauge = opts.running.clone();
            s.spawn(move || {
                let dir = WorkerDir::new(&mats.root.join(format!("w{w}")));
                for item in work_rx.iter() {
                    // NB: counted as running from here, not when queued:
                    // with -j2, two run however many wait.
                    if let Some(g) = &gauge {
                        g.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = done_tx.send(Msg::Began { idx: item.idx });
                    let start = t0.elapsed();
                    let result = match &dir {
                        Ok(dir) => execute(store, mats, dir, &item),
                        Err(e) => Err(Failure {
                            message: e.clone(),
                            exit_code: None,
                            log_tail: None,
                        }),
                    };
                    let done = WorkDone {
                        idx: item.idx,
                        key: item.key,
                        result,
                        start,
                        duration: t0.elapsed() - start,
                        worker: w,
                    };
                    if done_tx.send(Msg::Done(Box::new(done))).is_err() {
                        return;
                    }
                }
            });
        }
        let mut running = 0usize;
        let mut stop = false;
        let mut book = Book {
            waiting: &mut waiting,
            dependents: &dependents,
            observe: &mut *observe,
        };
        loop {
            while let Some(i) = if stop { None } else { ready.pop_front() } {
                let node = &plan.nodes[i];
                let mut deps: Vec<(String, Digest)> = node
                    .deps
                    .iter()
                    .map(|&d| {
                        (
                            plan.nodes[d].name.clone(),
                            outcomes[d]
                                .as_ref()
                                .and_then(|o| o.output)
                                .expect("dep done"),
                        )
                    })
                    .collect();
                deps.sort();
                let key = KeyBuilder::build_key(&node.name, &node.manifest.task_digest, &deps);
                let at = t0.elapsed();
                let now = now_ms();
                // NB: claim before looking up: whoever publishes a key does so
                // before releasing its claim, so a claimant that then misses
                // really must execute, and everyone else joins it.
                if !opts.inflight.claim(key, &done_tx, i) {
                    joining.insert(i, (key, MissReason::New));
                    continue;
                }
                owned.insert(key);
                let mut reason = MissReason::SkipCache;
                if !opts.no_cache && node.cache {
                    match cache.lookup_with(&key, now, &policy)? {
                        Lookup::Hit(mut meta) => {
                            cache.index.touch(&key, &mut meta, now)?;
                            if let Some(s) = opts.session {
                                cache.lease(s, [key]);
                            }
                            owned.remove(&key);
                            opts.inflight.finish(&key, Ok(meta.output));
                            cache.index.set_latest(&plan.dag, &node.name, &key)?;
                            if let Some(f) = &opts.on_change {
                                f(Change::Task {
                                    dag: &plan.dag,
                                    task: &node.name,
                                });
                            }
                            protected.insert(key);
                            *hits.entry(Route::Key).or_default() += 1;
                            let mut o = Outcome::new(Status::Cached);
                            o.route = Some(Route::Key);
                            o.key = Some(key);
                            o.output = Some(meta.output);
                            o.start = at;
                            o.duration = t0.elapsed() - at;
                            book.finish(i, o, &mut outcomes, &mut ready);
                            continue;
                        }
                        Lookup::Miss(r) => reason = r,
                    }
                }
                let previous = cache.index.latest(&plan.dag, &node.name)?;
                if reason == MissReason::New {
                    reason = match previous {
                        Some(p) if p != key => MissReason::InputChanged,
                        Some(_) => MissReason::Missing,
                        None => MissReason::New,
                    };
                }
                *misses.entry(reason).or_default() += 1;
                let mut manifest = node.manifest.clone();
                manifest.name = node.name.clone();
                manifest.deps = deps;
                let entry = Entry {
                    format: crate::store::entry::ENTRY_FORMAT,
                    key,
                    dag: plan.dag.clone(),
                    task: node.name.clone(),
                    manifest,
                    output: Digest::default(),
                    size: 0,
                    files: 0,
                    created_ms: 0,
                    duration_ms: 0,
                    exit_status: 0,
                    stdout: Digest::default(),
                    stderr: Digest::default(),
                    ttl_secs: node.ttl.map(|d| d.as_secs()),
                    previous,
                };
                if node.deps.iter().any(|d| uncommitted.contains(d)) {
                    pending.extend(cache.store.commit_blobs(std::mem::take(&mut batch))?);
                    uncommitted.clear();
                }
                if let Some(full) = no_reserve(&cache.store) {
                    // NB: a task never eats the space the commands that
                    // free space need (see `store::reserve`).
                    owned.remove(&key);
                    opts.inflight.finish(&key, Err(full.clone()));
                    let mut o = Outcome::new(Status::Failed);
                    o.error = Some(full);
                    o.miss_reason = Some(reason);
                    o.route = Some(Route::Miss);
                    o.key = Some(key);
                    o.start = at;
                    if opts.fail_fast {
                        stop = true;
                    }
                    book.finish(i, o, &mut outcomes, &mut ready);
                    continue;
                }
                outcomes_reason(&mut outcomes, i, reason);
                (book.observe)(Event::Queued { idx: i });
                work_tx
                    .send(WorkItem {
                        idx: i,
                        key,
                        entry,
                        job: node.job.clone(),
                        limits: Limits {
                            max_bytes: node.max_output,
                            ..Limits::default()
                        },
                    })
                    .expect("workers alive");
                running += 1;
            }
            if running == 0 && joining.is_empty() {
                break;
            }
            let msg = match done_rx.recv_timeout(TICK) {
                Ok(m) => m,
                Err(channel::RecvTimeoutError::Timeout) => {
                    (book.observe)(Event::Tick);
                    continue;
                }
                Err(channel::RecvTimeoutError::Disconnected) => {
                    unreachable!("this run holds a sender")
                }
            };
            let done = match msg {
                Msg::Began { idx } => {
                    (book.observe)(Event::Started { idx });
                    continue;
                }
                Msg::Done(done) => *done,
                Msg::Joined { idx, result } => {
                    let Some((key, reason)) = joining.remove(&idx) else {
                        continue;
                    };
                    let mut o;
                    match result {
                        Ok(output) => {
                            o = Outcome::new(Status::Cached);
                            o.route = Some(Route::Joined);
                            o.output = Some(output);
                            *hits.entry(Route::Joined).or_default() += 1;
                            cache
                                .index
                                .set_latest(&plan.dag, &plan.nodes[idx].name, &key)?;
                            if let Some(f) = &opts.on_change {
                                f(Change::Task {
                                    dag: &plan.dag,
                                    task: &plan.nodes[idx].name,
                                });
                            }
                            protected.insert(key);
                            if let Some(s) = opts.session {
                                cache.lease(s, [key]);
                            }
                        }
                        Err(e) => {
                            o = Outcome::new(Status::Failed);
                            o.error = Some(format!("the identical task it joined failed: {e}"));
                            o.miss_reason = Some(reason);
                            if opts.fail_fast {
                                stop = true;
                            }
                        }
                    }
                    o.key = Some(key);
                    o.start = t0.elapsed();
                    book.finish(idx, o, &mut outcomes, &mut ready);
                    continue;
                }
            };
            running -= 1;
            if let Some(g) = &opts.running {
                g.fetch_sub(1, Ordering::Relaxed);
            }
            let reason = outcomes[done.idx].take().and_then(|o| o.miss_reason);
            let mut o;
            match done.result {
                Ok((entry, mut staged)) => {
                    let published = cache.publish(&entry, &protected, &policy)?;
                    if let Some(s) = opts.session {
                        cache.lease(s, [entry.key]);
                    }
                    if batch.is_empty() && pending.is_empty() {
                        pending_since = Instant::now();
                    }
                    let records = staged.take_entries();
                    if published.kept {
                        pending.extend(records);
                    }
                    // NB: blobs are committed even when the entry is not
                    // kept: this run's dependents read them.
                    batch.append(staged);
                    uncommitted.insert(done.idx);
                    // Waiters (possibly other runs) read these blobs at once.
                    if opts.inflight.has_waiters(&done.key) {
                        pending.extend(cache.store.commit_blobs(std::mem::take(&mut batch))?);
                        uncommitted.clear();
                    }
                    owned.remove(&done.key);
                    opts.inflight.finish(&done.key, Ok(entry.output));
                    if let (true, Some(f)) = (published.kept, &opts.on_change) {
                        f(Change::Task {
                            dag: &plan.dag,
                            task: &entry.task,
                        });
                    }
                    if pending.len() + batch.blob_count() >= 512
                        || pending_since.elapsed() >= Duration::from_millis(500)
                    {
                        pending.extend(cache.store.commit_blobs(std::mem::take(&mut batch))?);
                        uncommitted.clear();
                        let index = &cache.index;
                        cache
                            .store
                            .publish_entries(&pending, |k| matches!(index.get(k), Ok(Some(_))))?;
                        pending.clear();
                    }
                    evicted += published.evicted.len() as u64;
                    protected.insert(entry.key);
                    o = Outcome::new(Status::Executed);
                    o.kept = published.kept;
                    o.output = Some(entry.output);
                    o.exit_code = Some(entry.exit_status);
                    o.stdout = Some(entry.stdout);
                    o.stderr = Some(entry.stderr);
                }
                Err(f) => {
                    owned.remove(&done.key);
                    opts.inflight.finish(&done.key, Err(f.message.clone()));
                    o = Outcome::new(Status::Failed);
                    o.error = Some(f.message);
                    o.exit_code = f.exit_code;
                    o.log_tail = f.log_tail;
                    if opts.fail_fast {
                        stop = true;
                    }
                }
            }
            o.route = Some(Route::Miss);
            o.miss_reason = reason;
            o.key = Some(done.key);
            o.start = done.start;
            o.duration = done.duration;
            o.worker = done.worker;
            book.finish(done.idx, o, &mut outcomes, &mut ready);
        }
        Ok(())
    });
    let finish_err = coordinated.err();
    // NB: never leave another run waiting on a key this run abandoned.
    for key in owned {
        opts.inflight
            .finish(&key, Err("the run executing it stopped".into()));
    }
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| match o {
            Some(o) if o.status != Status::Skipped || o.miss_reason.is_none() => o,
            _ => Outcome::new(Status::Skipped),
        })
        .collect();
    // Bookkeeping happens even when coordination failed half-way, so what
    // was published is accounted for.
    // NB: until disarmed, a failed commit (a full disk, say) leaves the
    // index naming no entry whose record was never published.
    let unpublished = Unpublished {
        cache,
        keys: &protected,
        armed: true,
    };
    for (r, c) in &hits {
        cache.index.add("hits", *c)?;
        cache.index.add(&format!("hit.{}", r.as_str()), *c)?;
    }
    for (r, c) in &misses {
        cache.index.add("misses", *c)?;
        cache.index.add(&format!("miss.{}", r.as_str()), *c)?;
    }
    let (expired, more_evicted) = cache.enforce(&protected, now_ms(), false, &policy)?;
    let record = RunRecord {
        id: run_id,
        dag: plan.dag.clone(),
        started_ms,
        finished_ms: now_ms(),
        ok: outcomes
            .iter()
            .all(|o| matches!(o.status, Status::Cached | Status::Executed)),
        tasks: plan
            .nodes
            .iter()
            .zip(&outcomes)
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
    };
    cache.index.put_run(&record)?;
    pending.extend(cache.store.commit_blobs(batch)?);
    // NB: entries evicted while pending are dropped, not resurrected.
    let index = &cache.index;
    cache
        .store
        .publish_entries(&pending, |k| matches!(index.get(k), Ok(Some(_))))?;
    cache.flush()?;
    if let Some(f) = &opts.on_change {
        f(Change::Run(run_id));
    }
    let _ = remove_all(run_tmp.path());
    if let Some(e) = finish_err {
        return Err(e);
    }
    unpublished.disarm();
    Ok(Report {
        run_id,
        dag: plan.dag.clone(),
        names: plan.nodes.iter().map(|nd| nd.name.clone()).collect(),
        outcomes,
        elapsed: t0.elapsed(),
        evicted: evicted + more_evicted,
        expired,
    })
}

/// Entries this run put in the index, checked when a run ends early
/// (a commit failed): those whose record was never published are removed
/// from the index again (best effort; what is left, the `dirty` marker
/// makes the next open drop).
struct Unpublished<'a> {
    cache: &'a Cache,
    keys: &'a HashSet<Digest>,
    armed: bool,
}

impl Unpublished<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Unpublished<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for k in self.keys {
            if !self.cache.store.entry_path(k).exists() {
                let _ = self.cache.index.remove(k);
            }
        }
        let _ = self.cache.flush();
    }
}

struct Book<'a> {
    waiting: &'a mut [usize],
    dependents: &'a [Vec<usize>],
    observe: &'a mut dyn for<'e> FnMut(Event<'e>),
}

impl Book<'_> {
    /// Record a node's outcome; a success releases its dependents.
    fn finish(
        &mut self,
        i: usize,
        o: Outcome,
        outcomes: &mut [Option<Outcome>],
        ready: &mut VecDeque<usize>,
    ) {
        (self.observe)(Event::Finished {
            idx: i,
            outcome: &o,
        });
        if matches!(o.status, Status::Cached | Status::Executed) {
            for &d in &self.dependents[i] {
                self.waiting[d] -= 1;
                if self.waiting[d] == 0 {
                    ready.push_back(d);
                }
            }
        }
        outcomes[i] = Some(o);
    }
}

/// Remember a dispatched node's miss reason until its result comes back.
fn outcomes_reason(outcomes: &mut [Option<Outcome>], i: usize, reason: MissReason) {
    let mut o = Outcome::new(Status::Skipped);
    o.miss_reason = Some(reason);
    outcomes[i] = Some(o);
}

/// A worker's scratch directory, reused from task to task and emptied
/// between them. NB: reuse matters: creating and deleting ~10 inodes per
/// task made ext4's inode allocator (`recently_deleted`) half of a cold
/// run's CPU time (perf, 1,000 trivial tasks).
struct WorkerDir {
    root: PathBuf,
    out: PathBuf,
    stage: PathBuf,
}

impl WorkerDir {
    fn new(root: &Path) -> std::result::Result<WorkerDir, String> {
        let d = WorkerDir {
            root: root.to_path_buf(),
            out: root.join("out"),
            stage: root.join("stage"),
        };
        for p in [
            &d.root,
            &d.out,
            &d.stage,
            &root.join("tmp"),
            &root.join("in"),
            &root.join("inputs"),
        ] {
            std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(d)
    }

    /// Empty `out`, `stage`, `tmp`, `in` and `inputs` for the next task.
    fn reset(&self) -> std::result::Result<(), String> {
        for d in [
            &self.out,
            &self.stage,
            &self.root.join("tmp"),
            &self.root.join("in"),
            &self.root.join("inputs"),
        ] {
            let rd = std::fs::read_dir(d).map_err(|e| format!("{}: {e}", d.display()))?;
            for e in rd {
                let p = e.map_err(|e| format!("{}: {e}", d.display()))?.path();
                remove_all(&p).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Worker side: run the job, ingest and commit its output.
fn execute(
    store: &Store,
    mats: &Materializer,
    dir: &WorkerDir,
    item: &WorkItem,
) -> std::result::Result<(Entry, Staged), Failure> {
    let fail = |message: String| Failure {
        message,
        exit_code: None,
        log_tail: None,
    };
    let result = (|| {
        let (out, stage) = (&dir.out, &dir.stage);
        let ctx = JobContext {
            store,
            out_dir: out,
            work_dir: &dir.root,
            deps: &item.entry.manifest.deps,
            max_output: item.limits.max_bytes,
            mats,
            inputs_via: mats.via.as_deref(),
        };
        let started = Instant::now();
        let res = item.job.run(&ctx).map_err(fail)?;
        let duration = started.elapsed();
        if let Some(limit) = res.timed_out {
            return Err(Failure {
                message: format!(
                    "timed out after {} (killed with its process group)",
                    crate::index::stats::format_duration(limit)
                ),
                exit_code: Some(res.exit_code),
                log_tail: log_tail(&res.stderr).or_else(|| log_tail(&res.stdout)),
            });
        }
        if let Some(bytes) = res.output_over {
            return Err(Failure {
                message: format!(
                    "the output is larger than its limit, max_output = {} bytes ({bytes} bytes written when it was killed, with its process group)",
                    item.limits.max_bytes.unwrap_or(0)
                ),
                exit_code: Some(res.exit_code),
                log_tail: log_tail(&res.stderr).or_else(|| log_tail(&res.stdout)),
            });
        }
        if res.exit_code != 0 {
            // NB: a task's stderr lives on the store's filesystem too, so
            // on a full disk its own `No space left on device` is often lost.
            let full = disk_full(store)
                .map(|d| format!("; {d}"))
                .unwrap_or_default();
            return Err(Failure {
                message: format!("exited with status {}{full}", res.exit_code),
                exit_code: Some(res.exit_code),
                log_tail: log_tail(&res.stderr).or_else(|| log_tail(&res.stdout)),
            });
        }
        let mut staged = Staged::default();
        let ingest_fail = |e: crate::store::StoreError| {
            let no_space = matches!(&e, crate::store::StoreError::Io { source, .. }
                if source.raw_os_error() == Some(libc::ENOSPC));
            match disk_full(store).filter(|_| no_space) {
                Some(d) => fail(format!("{d}: {e}")),
                None => fail(e.to_string()),
            }
        };
        let tree = ingest_dir_limited(
            out,
            Sink::Store {
                store,
                work: stage,
                staged: &mut staged,
            },
            item.limits,
        )
        .map_err(ingest_fail)?;
        let (stdout, _, _) = ingest_file(
            &res.stdout,
            Sink::Store {
                store,
                work: stage,
                staged: &mut staged,
            },
        )
        .map_err(ingest_fail)?;
        let (stderr, _, _) = ingest_file(
            &res.stderr,
            Sink::Store {
                store,
                work: stage,
                staged: &mut staged,
            },
        )
        .map_err(ingest_fail)?;
        let mut entry = item.entry.clone();
        entry.output = tree.digest;
        entry.size = tree.bytes;
        entry.files = tree.files;
        entry.created_ms = now_ms();
        entry.duration_ms = duration.as_millis() as u64;
        entry.stdout = stdout;
        entry.stderr = stderr;
        store
            .stage_entry(&mats.pending, &entry, &mut staged)
            .map_err(|e| fail(e.to_string()))?;
        staged
            .relocate(&mats.staging, &format!("n{}", item.idx))
            .map_err(|e| fail(e.to_string()))?;
        Ok((entry, staged))
    })();
    if let Err(e) = dir.reset() {
        // The next task must start from an empty output directory.
        return Err(fail(format!("cannot clean the work directory: {e}")));
    }
    result
}

/// Free space on the store's filesystem below which a failure is blamed
/// on a full disk: less than one task's worth of small writes.
const NEARLY_FULL: u64 = 1 << 20;

/// `the store's filesystem is full (…)` when it has (nearly) no space left
/// for unprivileged writers, checked while the failed task's files are
/// still there.
fn disk_full(store: &Store) -> Option<String> {
    let at = store.tmp_root();
    let st = nix::sys::statvfs::statvfs(&at).ok()?;
    let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    (free < NEARLY_FULL).then(|| {
        format!(
            "the store's filesystem is full (No space left on device: {} free at {})",
            crate::index::stats::format_size(free),
            at.display()
        )
    })
}

/// Why a task may not run now: the store's reserve is gone and cannot be
/// made again (the filesystem is full). None: it may run.
fn no_reserve(store: &Store) -> Option<String> {
    match store.ensure_reserve() {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "not run: the store's filesystem is full ({} free at {}; a task runs only with the store's {} reserve in place, and making it again needs that much free and as much again); `dagfs gc` or freeing space fixes it",
            crate::index::stats::format_size(
                crate::store::reserve::free_bytes(store.root()).unwrap_or(0)
            ),
            store.root().display(),
            crate::index::stats::format_size(crate::store::reserve::RESERVE),
        )),
        Err(e) if e.is_no_space() => Some(format!("not run: {e}")),
        // NB: a store the reserve cannot be written in for another reason
        // (permissions): the task's own writes will tell.
        Err(_) => None,
    }
}

/// The last 20 lines (at most 4 KiB) of a log file.
fn log_tail(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let start = bytes.len().saturating_sub(4096);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}
