//! The scheduler: runs a plan of keyed jobs on a worker pool, answering
//! from the cache where it can.
//!
//! The calling thread coordinates (`Coordinator`): it derives each ready
//! node's key from its task digest and its dependencies' *output* digests,
//! looks it up, joins identical keys already running (`inflight`), and
//! hands misses to `jobs` worker threads (`worker`, crossbeam channels).
//! What a run is given is in `plan`, what it gives back in `report`.
//! Workers run the job (`job`: the `Job` trait and what it is given),
//! ingest its output (hash + rename into a staging area) and stage its
//! entry record; the coordinator indexes the entry under the policy at once
//! and makes blobs and records durable in group commits (`commit`: those
//! merely due on a committer thread of the run), the last before the index
//! is flushed at the end. Failures are never
//! published. Fail-fast stops dispatching after the first failure (running
//! jobs finish); otherwise everything not downstream of a failure runs.
//! Nodes that never became ready are `Skipped`.
//!
//! May call: `hash`, `host` (the default `-j`), `store`, `index`, `cache`.

mod commit;
mod inflight;
mod job;
mod plan;
mod report;
mod worker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam::channel;

use super::error::Result;
use super::key::KeyBuilder;
use crate::cache::{now_ms, Cache, Lookup};
use crate::hash::Digest;
use crate::index::{CachePolicy, MissReason, Route};
use crate::store::ingest::Limits;
use crate::store::Entry;
use commit::{GroupCommit, Unpublished};
use worker::{no_reserve, WorkDone, WorkItem};

pub use inflight::Inflight;
pub use job::{Job, JobContext, JobError, JobResult};
pub use plan::{Change, OnChange, Options, Plan, PlanNode, Tier};
use report::run_record;
pub use report::{Event, Outcome, Report, Status};

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

/// How long the run waits for its workers before it emits `Event::Tick`.
const TICK: Duration = Duration::from_millis(100);
pub use crate::host::default_jobs;

/// Run `plan` against `cache`.
pub fn run(
    cache: &Cache,
    plan: &Plan,
    opts: &Options,
    observe: &mut dyn for<'e> FnMut(Event<'e>),
) -> Result<Report> {
    let t0 = Instant::now();
    let run_id = cache.index.next_run_id()?;
    let started_ms = now_ms();
    let unsynced = std::sync::Arc::new(crate::store::unsynced::Unsynced::default());
    let mut co = Coordinator::new(cache, plan, opts, t0, observe, unsynced.clone());
    let ingest = cache.begin_ingest();
    let mats = job::Materializer::new(opts.inputs_via.clone(), unsynced);
    let jobs = opts.jobs.max(1);
    let coordinated = std::thread::scope(|s| {
        let gauge = opts.running.as_ref();
        let (work_tx, done_tx, done_rx) =
            worker::spawn_workers(s, jobs, gauge, &mats, &cache.store, ingest.holder(), t0);
        // NB: `stop` disconnects when this closure ends, unwinding too, so
        // the committer never outlives the scope's join.
        let (batches, handed) = channel::unbounded();
        let (_stop, stop) = channel::bounded::<()>(0);
        s.spawn(move || commit::committer(cache, handed, stop));
        co.commits.background(batches);
        let coordinated = co.coordinate(&work_tx, &done_tx, &done_rx);
        let committed = co.commits.stop_background();
        coordinated.and(committed)
    });
    let (outcomes, evicted, expired) = co.conclude(run_id, started_ms, coordinated)?;
    drop(mats);
    Ok(Report {
        run_id,
        dag: plan.dag.clone(),
        names: plan.nodes.iter().map(|nd| nd.name.clone()).collect(),
        outcomes,
        elapsed: t0.elapsed(),
        evicted,
        expired,
    })
}

/// The calling thread's side of a run: which nodes are ready, what each
/// came to, what this run claimed, used and must still commit.
struct Coordinator<'a> {
    cache: &'a Cache,
    plan: &'a Plan,
    opts: &'a Options,
    /// The store's policy under this run's limits.
    policy: CachePolicy,
    t0: Instant,
    observe: &'a mut dyn for<'e> FnMut(Event<'e>),
    /// For each node, the nodes that depend on it.
    dependents: Vec<Vec<usize>>,
    /// For each node, how many of its dependencies are not done yet.
    waiting: Vec<usize>,
    ready: VecDeque<usize>,
    /// Each node's outcome once known; a dispatched node holds a `Skipped`
    /// placeholder carrying its miss reason until its worker answers.
    outcomes: Vec<Option<Outcome>>,
    /// Keys this run claimed and has not finished (released on any exit).
    owned: HashSet<Digest>,
    /// Nodes waiting for a key another run (or this one) is executing.
    joining: HashMap<usize, (Digest, MissReason)>,
    /// Keys this run used or produced: its own eviction spares them.
    protected: HashSet<Digest>,
    hits: HashMap<Route, i64>,
    misses: HashMap<MissReason, i64>,
    evicted: u64,
    commits: GroupCommit<'a>,
    /// Jobs handed to the workers and not answered yet.
    running: usize,
    /// Fail-fast tripped: nothing more is dispatched.
    stop: bool,
}

impl<'a> Coordinator<'a> {
    fn new(
        cache: &'a Cache,
        plan: &'a Plan,
        opts: &'a Options,
        t0: Instant,
        observe: &'a mut dyn for<'e> FnMut(Event<'e>),
        unsynced: std::sync::Arc<crate::store::unsynced::Unsynced>,
    ) -> Self {
        let n = plan.nodes.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, node) in plan.nodes.iter().enumerate() {
            for &d in &node.deps {
                dependents[d].push(i);
            }
        }
        let waiting: Vec<usize> = plan.nodes.iter().map(|nd| nd.deps.len()).collect();
        let ready = (0..n).filter(|&i| waiting[i] == 0).collect();
        Coordinator {
            cache,
            plan,
            opts,
            policy: cache.policy().overlay(opts.policy),
            t0,
            observe,
            dependents,
            waiting,
            ready,
            outcomes: vec![None; n],
            owned: HashSet::new(),
            joining: HashMap::new(),
            protected: HashSet::new(),
            hits: HashMap::new(),
            misses: HashMap::new(),
            evicted: 0,
            commits: GroupCommit::new(cache, unsynced),
            running: 0,
            stop: false,
        }
    }

    /// Dispatch ready nodes and take the workers' (and joined keys')
    /// answers until nothing runs or waits.
    fn coordinate(
        &mut self,
        work_tx: &channel::Sender<WorkItem>,
        done_tx: &channel::Sender<Msg>,
        done_rx: &channel::Receiver<Msg>,
    ) -> Result<()> {
        loop {
            while let Some(i) = if self.stop {
                None
            } else {
                self.ready.pop_front()
            } {
                self.dispatch(i, work_tx, done_tx)?;
            }
            if self.running == 0 && self.joining.is_empty() {
                return Ok(());
            }
            match done_rx.recv_timeout(TICK) {
                Ok(Msg::Began { idx }) => (self.observe)(Event::Started { idx }),
                Ok(Msg::Done(done)) => self.on_done(*done)?,
                Ok(Msg::Joined { idx, result }) => self.on_joined(idx, result)?,
                Err(channel::RecvTimeoutError::Timeout) => (self.observe)(Event::Tick),
                Err(channel::RecvTimeoutError::Disconnected) => {
                    unreachable!("this run holds a sender")
                }
            }
        }
    }

    /// Node `i` is ready: answer it from the cache, join the run executing
    /// its key, or hand it to a worker.
    fn dispatch(
        &mut self,
        i: usize,
        work_tx: &channel::Sender<WorkItem>,
        done_tx: &channel::Sender<Msg>,
    ) -> Result<()> {
        let node = &self.plan.nodes[i];
        let deps = self.dep_outputs(i);
        let key = KeyBuilder::build_key(&node.name, &node.manifest.task_digest, &deps);
        let at = self.t0.elapsed();
        // NB: claim before looking up: whoever publishes a key does so
        // before releasing its claim, so a claimant that then misses
        // really must execute, and everyone else joins it.
        if !self.opts.inflight.claim(key, done_tx, i) {
            self.joining.insert(i, (key, MissReason::New));
            return Ok(());
        }
        self.owned.insert(key);
        let Some(mut reason) = self.look_up(i, key, at)? else {
            return Ok(());
        };
        let previous = self.cache.index.latest(&self.plan.dag, &node.name)?;
        if reason == MissReason::New {
            reason = match previous {
                Some(p) if p != key => MissReason::InputChanged,
                Some(_) => MissReason::Missing,
                None => MissReason::New,
            };
        }
        if reason != MissReason::SkipCache {
            let e = self.miss_entry(i, key, deps.clone(), previous);
            let answer = match self.content_hit(&e)? {
                Some(output) => Some((output, Route::Content)),
                None => self.opts.tier.clone().and_then(|t| {
                    t.fetch(self.cache, &e, &self.protected, &self.policy)
                        .map(|m| (m.output, Route::Remote))
                }),
            };
            if let Some((output, route)) = answer {
                if route == Route::Remote {
                    let recipe = KeyBuilder::recipe(&e.manifest.task_digest, &e.manifest.deps);
                    self.cache.index.set_recipe(&recipe, &key)?;
                }
                self.release(key, Ok(output));
                let took = self.t0.elapsed() - at;
                return self.answered(i, key, output, route, at, took);
            }
        }
        *self.misses.entry(reason).or_default() += 1;
        let entry = self.miss_entry(i, key, deps, previous);
        // NB: a task reading its inputs through the mount reads the
        // store (the daemon's view), and so does a job that does not say
        // it reads them through `JobContext`.
        self.commits.commit_for(&node.deps, self.reads_staged(i))?;
        if let Some(full) = no_reserve(&self.cache.store) {
            // NB: a task never eats the space the commands that
            // free space need (see `store::reserve`).
            self.release(key, Err(full.clone()));
            let mut o = Outcome::new(Status::Failed);
            o.error = Some(full);
            o.miss_reason = Some(reason);
            o.route = Some(Route::Miss);
            o.key = Some(key);
            o.start = at;
            self.finish(i, o);
            return Ok(());
        }
        // Remember the miss reason until the worker answers.
        let mut placeholder = Outcome::new(Status::Skipped);
        placeholder.miss_reason = Some(reason);
        self.outcomes[i] = Some(placeholder);
        (self.observe)(Event::Queued { idx: i });
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
                feeds: self.dependents[i].iter().any(|&d| self.reads_staged(d)),
            })
            .expect("workers alive");
        self.running += 1;
        Ok(())
    }

    /// Whether node `i` can read its dependencies' outputs staged, before
    /// their commit: it reads them through `JobContext` (not the store
    /// itself), and not through the mount (the daemon's view of the store).
    fn reads_staged(&self, i: usize) -> bool {
        self.opts.inputs_via.is_none() && self.plan.nodes[i].job.reads_deps_from_context()
    }

    /// (name, output) of node `i`'s dependencies, sorted by name.
    fn dep_outputs(&self, i: usize) -> Vec<(String, Digest)> {
        let mut deps: Vec<(String, Digest)> = self.plan.nodes[i]
            .deps
            .iter()
            .map(|&d| {
                let output = self.outcomes[d].as_ref().and_then(|o| o.output);
                (self.plan.nodes[d].name.clone(), output.expect("dep done"))
            })
            .collect();
        deps.sort();
        deps
    }

    /// Look up node `i`'s claimed `key`: a hit answers the node (None),
    /// else why it missed.
    fn look_up(&mut self, i: usize, key: Digest, at: Duration) -> Result<Option<MissReason>> {
        if self.opts.no_cache || !self.plan.nodes[i].cache {
            return Ok(Some(MissReason::SkipCache));
        }
        let now = now_ms();
        match self.cache.lookup_with(&key, now, &self.policy)? {
            Lookup::Hit(mut meta) => {
                self.cache.index.touch(&key, &mut meta, now)?;
                self.release(key, Ok(meta.output));
                let took = self.t0.elapsed() - at;
                self.answered(i, key, meta.output, Route::Key, at, took)?;
                Ok(None)
            }
            Lookup::Miss(r) => Ok(Some(r)),
        }
    }

    /// A key miss whose recipe (`KeyBuilder::recipe`: the key without the
    /// task's name) is that of another stored entry, the same step under
    /// another task or pipeline name: a new entry for this key with that
    /// entry's output and logs, committed now (its record names the one
    /// that answered, for `explain`). Closure tasks never: their code is
    /// not part of their recipe.
    fn content_hit(&mut self, e: &Entry) -> Result<Option<Digest>> {
        if e.manifest.command == "closure" {
            return Ok(None);
        }
        let recipe = KeyBuilder::recipe(&e.manifest.task_digest, &e.manifest.deps);
        let Some(other) = self.cache.index.by_recipe(&recipe)? else {
            return Ok(None);
        };
        if other == e.key
            || !matches!(
                self.cache.lookup_with(&other, now_ms(), &self.policy)?,
                Lookup::Hit(_)
            )
        {
            return Ok(None);
        }
        let Some(src) = self.cache.store.read_entry(&other)? else {
            return Ok(None);
        };
        let entry = Entry {
            output: src.output,
            size: src.size,
            files: src.files,
            created_ms: now_ms(),
            duration_ms: src.duration_ms,
            exit_status: src.exit_status,
            stdout: src.stdout,
            stderr: src.stderr,
            hermetic: src.hermetic.clone(),
            origin: Some(crate::store::entry::Origin {
                route: Route::Content.as_str().into(),
                key: other,
                dag: src.dag,
                task: src.task,
            }),
            ..e.clone()
        };
        let dir = self.cache.store.tempdir("content-")?;
        let mut staged = crate::store::Staged::default();
        self.cache
            .store
            .stage_entry(dir.path(), &entry, &mut staged)?;
        let pending = self.cache.store.commit_blobs(staged)?;
        let published = self.cache.publish(&entry, &self.protected, &self.policy)?;
        let index = &self.cache.index;
        self.cache.store.publish_entries(&pending, |k| {
            published.kept && matches!(index.get(k), Ok(Some(_)))
        })?;
        if !published.kept {
            return Ok(None);
        }
        self.evicted += published.evicted.len() as u64;
        Ok(Some(entry.output))
    }

    /// The entry a miss of node `i` will produce, but for its output.
    fn miss_entry(
        &self,
        i: usize,
        key: Digest,
        deps: Vec<(String, Digest)>,
        previous: Option<Digest>,
    ) -> Entry {
        let node = &self.plan.nodes[i];
        let mut manifest = node.manifest.clone();
        manifest.name = node.name.clone();
        manifest.deps = deps;
        Entry {
            format: crate::store::entry::ENTRY_FORMAT,
            key,
            dag: self.plan.dag.clone(),
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
            hermetic: None,
            origin: None,
        }
    }

    /// Node `i` is answered without running: its `key` is stored already
    /// (a hit, `Route::Key`) or was just produced by whichever run executed
    /// it (`Route::Joined`). One bookkeeping for both.
    fn answered(
        &mut self,
        i: usize,
        key: Digest,
        output: Digest,
        route: Route,
        start: Duration,
        duration: Duration,
    ) -> Result<()> {
        if let Some(s) = self.opts.session {
            self.cache.lease(s, [key]);
        }
        let plan = self.plan;
        self.cache
            .index
            .set_latest(&plan.dag, &plan.nodes[i].name, &key)?;
        self.task_changed(&plan.nodes[i].name);
        self.protected.insert(key);
        *self.hits.entry(route).or_default() += 1;
        let mut o = Outcome::new(Status::Cached);
        o.route = Some(route);
        o.key = Some(key);
        o.output = Some(output);
        o.start = start;
        o.duration = duration;
        self.finish(i, o);
        Ok(())
    }

    /// The key node `idx` joined finished in whichever run executed it.
    fn on_joined(&mut self, idx: usize, result: std::result::Result<Digest, String>) -> Result<()> {
        let Some((key, reason)) = self.joining.remove(&idx) else {
            return Ok(());
        };
        let start = self.t0.elapsed();
        match result {
            Ok(output) => self.answered(idx, key, output, Route::Joined, start, Duration::ZERO),
            Err(e) => {
                let mut o = Outcome::new(Status::Failed);
                o.error = Some(format!("the identical task it joined failed: {e}"));
                o.miss_reason = Some(reason);
                o.key = Some(key);
                o.start = start;
                self.finish(idx, o);
                Ok(())
            }
        }
    }

    /// A worker answered: index and batch a success, report a failure.
    fn on_done(&mut self, done: WorkDone) -> Result<()> {
        self.running -= 1;
        if let Some(g) = &self.opts.running {
            g.fetch_sub(1, Ordering::Relaxed);
        }
        let reason = self.outcomes[done.idx].take().and_then(|o| o.miss_reason);
        let mut o = match done.result {
            Ok((entry, staged)) => self.executed(done.idx, done.key, entry, staged)?,
            Err(f) => {
                self.release(done.key, Err(f.message.clone()));
                let mut o = Outcome::new(Status::Failed);
                o.error = Some(f.message);
                o.exit_code = f.exit_code;
                o.log_tail = f.log_tail;
                o
            }
        };
        o.route = Some(Route::Miss);
        o.miss_reason = reason;
        o.key = Some(done.key);
        o.start = done.start;
        o.duration = done.duration;
        o.worker = done.worker;
        self.finish(done.idx, o);
        Ok(())
    }

    /// Node `idx` ran and its output is staged: index it under the policy
    /// now, make it durable in the group commit.
    fn executed(
        &mut self,
        idx: usize,
        key: Digest,
        entry: Entry,
        staged: crate::store::Staged,
    ) -> Result<Outcome> {
        let published = self.cache.publish(&entry, &self.protected, &self.policy)?;
        // NB: before any commit below can fail: the run's `Unpublished`
        // guard then removes its index row if its record never goes out.
        self.protected.insert(entry.key);
        if published.kept {
            let recipe = KeyBuilder::recipe(&entry.manifest.task_digest, &entry.manifest.deps);
            self.cache.index.set_recipe(&recipe, &entry.key)?;
            if let Some(t) = &self.opts.tier {
                t.produced(self.cache, &entry);
            }
        }
        if let Some(s) = self.opts.session {
            self.cache.lease(s, [entry.key]);
        }
        // NB: only a dependent that can read staged bytes needs them
        // registered (the others have the batch committed first).
        let readers = self.dependents[idx].iter().any(|&d| self.reads_staged(d));
        self.commits.add(idx, staged, published.kept, readers);
        // Waiters (possibly other runs) read these blobs at once.
        if self.opts.inflight.has_waiters(&key) {
            self.commits.commit_now()?;
        }
        self.release(key, Ok(entry.output));
        if published.kept {
            self.task_changed(&entry.task);
        }
        self.commits.maybe_flush()?;
        self.evicted += published.evicted.len() as u64;
        let mut o = Outcome::new(Status::Executed);
        o.kept = published.kept;
        o.output = Some(entry.output);
        o.exit_code = Some(entry.exit_status);
        o.stdout = Some(entry.stdout);
        o.stderr = Some(entry.stderr);
        o.hermetic = entry.hermetic.clone();
        Ok(o)
    }

    /// Release a key this run claimed, telling whoever joined it.
    fn release(&mut self, key: Digest, result: std::result::Result<Digest, String>) {
        self.owned.remove(&key);
        self.opts.inflight.finish(&key, result);
    }

    fn task_changed(&self, task: &str) {
        if let Some(f) = &self.opts.on_change {
            f(Change::Task {
                dag: &self.plan.dag,
                task,
            });
        }
    }

    /// Record node `i`'s outcome; a success releases its dependents, a
    /// failure under fail-fast stops dispatching.
    fn finish(&mut self, i: usize, o: Outcome) {
        (self.observe)(Event::Finished {
            idx: i,
            outcome: &o,
        });
        match o.status {
            Status::Cached | Status::Executed => {
                for &d in &self.dependents[i] {
                    self.waiting[d] -= 1;
                    if self.waiting[d] == 0 {
                        self.ready.push_back(d);
                    }
                }
            }
            Status::Failed if self.opts.fail_fast => self.stop = true,
            Status::Failed | Status::Skipped => {}
        }
        self.outcomes[i] = Some(o);
    }

    /// The run is over (or coordinating it failed half-way): release its
    /// claims, count, evict under the policy, record the run, make the
    /// last group commit and flush the index. Returns the outcomes, how
    /// many entries were evicted and how many expired.
    fn conclude(
        self,
        run_id: u64,
        started_ms: u64,
        coordinated: Result<()>,
    ) -> Result<(Vec<Outcome>, u64, u64)> {
        let (cache, opts) = (self.cache, self.opts);
        // NB: never leave another run waiting on a key this run abandoned.
        for key in &self.owned {
            opts.inflight
                .finish(key, Err("the run executing it stopped".into()));
        }
        let outcomes: Vec<Outcome> = self
            .outcomes
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
            keys: &self.protected,
            armed: true,
        };
        for (r, c) in &self.hits {
            cache.index.add("hits", *c)?;
            cache.index.add(&format!("hit.{}", r.as_str()), *c)?;
        }
        for (r, c) in &self.misses {
            cache.index.add("misses", *c)?;
            cache.index.add(&format!("miss.{}", r.as_str()), *c)?;
        }
        let (expired, more_evicted) =
            cache.enforce(&self.protected, now_ms(), false, &self.policy)?;
        // NB: history: a record that cannot be written (a full disk) costs
        // `/runs` one run, never the run itself.
        let record = run_record(cache, self.plan, &outcomes, run_id, started_ms);
        if let Err(e) = cache.index.put_run(&record) {
            log::warn!("run {run_id}'s record was not written, so /runs will not show it: {e}");
        }
        self.commits.finish()?;
        cache.flush()?;
        if let Some(f) = &opts.on_change {
            f(Change::Run(run_id));
        }
        coordinated?;
        unpublished.disarm();
        Ok((outcomes, self.evicted + more_evicted, expired))
    }
}
