//! `dagfs run`: progress display, per-task lines, summary, Chrome trace.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use dagfs::exec::memo::Probe;
use dagfs::exec::runner::ShellRunner;
use dagfs::exec::scheduler::{self, Event, Options, Outcome, Report, Status};
use dagfs::exec::{shell, Pipeline};
use dagfs::index::units::{parse_duration, parse_size};
use dagfs::index::CachePolicy;

use super::{CacheSource, CliError, Ctx, Io};

#[derive(Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunArgs {
    /// Pipeline file
    #[arg(short = 'f', long = "file", default_value = "dagfs.toml")]
    pub file: PathBuf,
    /// Tasks to run at once [default: number of cores]
    #[arg(short = 'j', long)]
    jobs: Option<usize>,
    /// After a failure, run everything not downstream of it
    #[arg(long)]
    keep_going: bool,
    /// Run every task regardless of the cache (results are still stored)
    #[arg(long)]
    no_cache: bool,
    /// Write a Chrome trace (chrome://tracing, Perfetto) to FILE
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Print each executed task's stdout and stderr
    #[arg(short, long)]
    verbose: bool,
    /// Cache limit for this run: entries
    #[arg(long, value_name = "N")]
    max_entries: Option<u64>,
    /// Cache limit for this run: bytes (e.g. 512M, 2G)
    #[arg(long, value_name = "SIZE")]
    max_bytes: Option<String>,
    /// Cache limit for this run: entry lifetime (e.g. 30m, 1h, 7d)
    #[arg(long, value_name = "DUR")]
    ttl: Option<String>,
    /// Kill and fail any task running longer than DUR (e.g. 30s, 10m),
    /// unless its own `timeout` says otherwise
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// Keep running: after the run, watch the tasks' declared inputs and
    /// the pipeline file, and run again whenever one changes (Ctrl-C stops)
    #[arg(long)]
    pub watch: bool,
    /// Use this remote cache for this run (grpc://HOST:PORT[/INSTANCE],
    /// grpcs://…), over `DAGFS_REMOTE` and the store's `remote` setting
    #[arg(long, value_name = "URL", conflicts_with = "no_remote")]
    remote: Option<String>,
    /// No remote cache for this run
    #[arg(long)]
    no_remote: bool,
    /// Run only these tasks and what they depend on
    tasks: Vec<String>,
}

/// Quiet time that ends a batch of changes before the re-run.
const WATCH_QUIET: Duration = Duration::from_millis(50);

/// `dagfs run --watch`: run, then run again on every change of a declared
/// input or of the pipeline file, until Ctrl-C. Each run goes wherever a
/// plain `dagfs run` would (the daemon if one serves the store, else this
/// process), so its lines say which tasks re-ran and why (`input changed`).
/// The exit code is the last run's.
pub fn watch(
    mut a: RunArgs,
    run_once: &mut dyn FnMut(RunArgs) -> i32,
    store: &std::path::Path,
) -> i32 {
    use notify::{RecursiveMode, Watcher};
    a.watch = false;
    let sigs = super::block_stop_signals();
    let (stop_tx, stop_rx) = crossbeam::channel::bounded::<()>(1);
    std::thread::spawn(move || {
        if sigs.wait().is_ok() {
            let _ = stop_tx.send(());
        }
    });
    let store = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_path_buf());
    loop {
        let code = run_once(a.clone());
        // Re-read each time: the inputs may have changed with the file.
        let paths = match watched_paths(&a) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("dagfs: error: {e}");
                return e.exit_code();
            }
        };
        let (tx, rx) = crossbeam::channel::unbounded();
        let mut watcher = match notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        }) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("dagfs: error: cannot watch inputs: {e}");
                return 8;
            }
        };
        let mut armed = 0;
        for p in &paths {
            // NB: a missing input is watched through its directory, so its
            // creation is seen.
            let (target, mode) = if p.is_dir() {
                (p.clone(), RecursiveMode::Recursive)
            } else {
                (
                    p.parent().map_or_else(|| p.clone(), |d| d.to_path_buf()),
                    RecursiveMode::NonRecursive,
                )
            };
            match watcher.watch(&target, mode) {
                Ok(()) => armed += 1,
                Err(e) => eprintln!("dagfs: warning: cannot watch {}: {e}", target.display()),
            }
        }
        eprintln!(
            "dagfs: watching {armed} path{} (the pipeline file and declared inputs); Ctrl-C stops",
            if armed == 1 { "" } else { "s" }
        );
        let relevant = |ev: &notify::Result<notify::Event>| -> Vec<PathBuf> {
            match ev {
                Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => Vec::new(),
                Ok(e) => e
                    .paths
                    .iter()
                    .filter(|c| !c.starts_with(&store))
                    .filter(|c| paths.iter().any(|p| c.starts_with(p)))
                    .cloned()
                    .collect(),
                Err(_) => paths.clone(),
            }
        };
        let mut changed: Vec<PathBuf> = Vec::new();
        while changed.is_empty() {
            crossbeam::channel::select! {
                recv(stop_rx) -> _ => return code,
                recv(rx) -> ev => match ev {
                    Ok(ev) => changed.extend(relevant(&ev)),
                    Err(_) => return code,
                },
            }
        }
        // Debounce: take the rest of the burst.
        loop {
            crossbeam::channel::select! {
                recv(stop_rx) -> _ => return code,
                recv(rx) -> ev => match ev {
                    Ok(ev) => changed.extend(relevant(&ev)),
                    Err(_) => break,
                },
                default(WATCH_QUIET) => break,
            }
        }
        changed.sort();
        changed.dedup();
        let shown: Vec<String> = changed
            .iter()
            .take(3)
            .map(|p| p.display().to_string())
            .collect();
        let more = changed.len().saturating_sub(shown.len());
        eprintln!(
            "dagfs: changed: {}{}; running again",
            shown.join(", "),
            if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            }
        );
        drop(watcher);
    }
}

/// The pipeline file and every declared input, absolute.
fn watched_paths(a: &RunArgs) -> Result<Vec<PathBuf>, CliError> {
    let pipeline = Pipeline::load(&a.file)?;
    let file = std::fs::canonicalize(&pipeline.file).unwrap_or_else(|_| pipeline.file.clone());
    let mut out = vec![file];
    for t in &pipeline.tasks {
        for i in &t.inputs {
            let p = pipeline.dir.join(i);
            out.push(std::fs::canonicalize(&p).unwrap_or(p));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The flags `run` checks before it touches anything: the cache policy and
/// the default timeout, and the remote URLs (`--remote`, `DAGFS_REMOTE`).
fn check_flags(a: &RunArgs, io: &Io) -> Result<(CachePolicy, Option<Duration>), CliError> {
    let mut policy = CachePolicy {
        max_entries: a.max_entries,
        ..Default::default()
    };
    if let Some(s) = &a.max_bytes {
        policy.max_size_bytes = Some(parse_size(s).ok_or_else(|| {
            CliError::Usage(format!("--max-bytes: {s:?} is not a size (e.g. 512M)"))
        })?);
    }
    if let Some(s) = &a.ttl {
        policy.ttl =
            Some(parse_duration(s).ok_or_else(|| {
                CliError::Usage(format!("--ttl: {s:?} is not a duration (e.g. 1h)"))
            })?);
    }
    let timeout = match &a.timeout {
        None => None,
        Some(s) => Some(parse_duration(s).filter(|d| !d.is_zero()).ok_or_else(|| {
            CliError::Usage(format!(
                "--timeout: {s:?} is not a duration of at least 1s (e.g. 30s, 10m)"
            ))
        })?),
    };
    if a.jobs == Some(0) {
        return Err(CliError::Usage("-j must be at least 1".into()));
    }
    if let Some(u) = &a.remote {
        dagfs::remote::RemoteUrl::parse(u)?;
    }
    if let Some(u) = (io.env)("DAGFS_REMOTE").filter(|u| !u.is_empty() && u != "none") {
        if a.remote.is_none() && !a.no_remote {
            dagfs::remote::RemoteUrl::parse(&u)
                .map_err(|e| CliError::Usage(format!("DAGFS_REMOTE: {e}")))?;
        }
    }
    Ok((policy, timeout))
}

/// Whether a memo may answer this run, or be written after it
/// (`exec::memo`): caching on, no cache limits or trace of its own.
fn memo_allowed(a: &RunArgs) -> bool {
    !a.no_cache
        && a.max_entries.is_none()
        && a.max_bytes.is_none()
        && a.ttl.is_none()
        && a.trace.is_none()
}

/// Answer the run from its memo if one holds (printing what a full run
/// of hits prints). Opens only the store; where no memo holds, the cache
/// is opened on it for the full run.
fn answer_from_memo(
    probe: &Probe,
    remote_flag: Option<&str>,
    src: &mut CacheSource,
    io: &mut Io,
    ctx: &Ctx,
    t0: Instant,
) -> Result<Option<Report>, CliError> {
    let answered = if let CacheSource::Daemon(cache) = &*src {
        // NB: the daemon's index is open: the answer goes to it at once.
        if cache.store.read_only().is_some()
            || !super::remote_tier::none_for_run(cache.store.root(), remote_flag, io)
        {
            return Ok(None);
        }
        let r = dagfs::exec::memo::answer_indexed(cache, probe, io.env, t0, ctx.session)?;
        if let (Some(r), Some(f)) = (&r, &ctx.on_change) {
            f(dagfs::exec::scheduler::Change::Run(r.run_id));
        }
        r
    } else {
        let Some(store) = src.take_store(io)? else {
            return Ok(None);
        };
        let answered = if store.read_only().is_none()
            && super::remote_tier::none_for_run(store.root(), remote_flag, io)
        {
            dagfs::exec::memo::answer(&store, probe, io.env, t0)
        } else {
            None
        };
        if answered.is_none() {
            src.open_on(store, io)?;
        }
        answered
    };
    let Some(report) = answered else {
        return Ok(None);
    };
    let err = &mut *io.err;
    {
        let mut ui = Ui::new(report.names.len(), io.stderr_tty, &mut *err);
        for (idx, outcome) in report.outcomes.iter().enumerate() {
            ui.event(&report.names, Event::Finished { idx, outcome });
        }
        ui.clear();
    }
    let _ = writeln!(err, "{}", summary(&report));
    Ok(Some(report))
}

pub fn run(a: RunArgs, src: &mut CacheSource, io: &mut Io, ctx: &Ctx) -> Result<(), CliError> {
    let t0 = Instant::now();
    let (policy, timeout) = check_flags(&a, io)?;
    let remote_flag = if a.no_remote {
        Some("none")
    } else {
        a.remote.as_deref()
    };
    // NB: a file that does not read (or not as UTF-8) is reported by `load`.
    let text = std::fs::read(&a.file)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let probe = text
        .as_deref()
        .filter(|_| memo_allowed(&a))
        .map(|t| Probe::new(&a.file, t.as_bytes(), &a.tasks, a.timeout.as_deref()));
    if let Some(p) = &probe {
        if answer_from_memo(p, remote_flag, src, io, ctx, t0)?.is_some() {
            return Ok(());
        }
    }
    // Validate everything before touching the store.
    let mut pipeline = match &text {
        Some(t) => Pipeline::parse(&a.file, t)?,
        None => Pipeline::load(&a.file)?,
    };
    for t in &mut pipeline.tasks {
        t.timeout = t.timeout.or(timeout);
    }
    for t in &a.tasks {
        if pipeline.dag.lookup(t).is_none() {
            return Err(dagfs::exec::ExecError::UnknownTask(t.clone()).into());
        }
    }
    // NB: inputs are snapshotted into the store, so it opens first; the
    // pipeline itself was validated above, before anything was touched.
    let cache = src.get(io)?;
    // NB: before the inputs are snapshotted: a memo is written only if a
    // second look after the run agrees (`exec::memo::record`).
    let first_look = probe
        .as_ref()
        .and_then(|_| dagfs::exec::memo::look(cache, &pipeline));
    let plan = shell::plan_with_env(&pipeline, &a.tasks, Arc::new(ShellRunner), io.env, cache)?;
    let remote = super::remote_tier::for_run(cache, remote_flag, io)?;
    let opts = Options {
        jobs: a.jobs.unwrap_or_else(scheduler::default_jobs),
        fail_fast: !a.keep_going,
        no_cache: a.no_cache,
        policy,
        session: ctx.session,
        inflight: ctx.inflight.clone(),
        inputs_via: ctx.inputs_via.clone(),
        running: ctx.running.clone(),
        on_change: ctx.on_change.clone(),
        tier: remote
            .clone()
            .map(|r| r as Arc<dyn dagfs::exec::scheduler::Tier>),
    };
    let names: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
    let tty = io.stderr_tty;
    let report = {
        let mut ui = Ui::new(names.len(), tty, &mut *io.err);
        // The daemon's web views show the run as it goes.
        let live = ctx.uis.as_ref().map(|u| {
            let deps: Vec<Vec<usize>> = plan.nodes.iter().map(|n| n.deps.clone()).collect();
            u.live().begin(&plan.dag, &names, &deps)
        });
        let r = scheduler::run(cache, &plan, &opts, &mut |ev| {
            if let Some(l) = &live {
                l.event(&ev);
            }
            ui.event(&names, ev)
        })?;
        ui.clear();
        r
    };
    let err = &mut *io.err;
    tell_outcomes(err, &names, &report, a.verbose, cache);
    tell_unchecked(err, &pipeline, &report);
    let _ = writeln!(err, "{}", summary(&report));
    if let Some(r) = &remote {
        super::remote_tier::after_run(r, cache, io, ctx.uploader.as_deref());
    }
    if let Some(path) = &a.trace {
        write_trace(path, &report)
            .map_err(|e| CliError::Usage(format!("--trace {}: {e}", path.display())))?;
    }
    if let Some(p) = probe.as_ref().filter(|_| remote.is_none() && report.ok()) {
        if let Err(e) = dagfs::exec::memo::record(cache, p, &pipeline, &report, first_look, io.env)
        {
            log::warn!("this run's memo was not written (the next run takes the full path): {e}");
        }
    }
    if report.ok() {
        Ok(())
    } else {
        Err(CliError::TasksFailed)
    }
}

/// Per task: the skipped lines, each failure with its log's tail, `-v`'s
/// logs, hermetic findings, and entries the policy could not keep.
fn tell_outcomes(
    err: &mut dyn Write,
    names: &[String],
    report: &Report,
    verbose: bool,
    cache: &dagfs::cache::Cache,
) {
    // Skipped tasks never start, so no progress event reports them.
    for (name, o) in names.iter().zip(&report.outcomes) {
        if o.status == Status::Skipped {
            let _ = writeln!(err, "{}", line(name, o));
        }
    }
    for (name, o) in names.iter().zip(&report.outcomes) {
        if o.status == Status::Failed {
            let _ = writeln!(
                err,
                "dagfs: task `{name}` failed: {}",
                visible(o.error.as_deref().unwrap_or("?"))
            );
            if let Some(tail) = &o.log_tail {
                for line in tail.lines() {
                    let _ = writeln!(err, "  | {}", visible(line));
                }
            }
        }
        if verbose && o.status == Status::Executed {
            for (label, d) in [("stdout", o.stdout), ("stderr", o.stderr)] {
                if let Some(bytes) = d
                    .and_then(|d| cache.store.read_blob(&d).ok())
                    .filter(|b| !b.is_empty())
                {
                    let _ = writeln!(err, "--- {name} {label}");
                    let _ = err.write_all(visible(&String::from_utf8_lossy(&bytes)).as_bytes());
                }
            }
        }
        if let Some(f) = &o.hermetic {
            for line in f.sentences(name) {
                let _ = writeln!(err, "dagfs: warning: {}", visible(&line));
            }
        }
        if !o.kept {
            let _ = writeln!(err, "dagfs: warning: `{name}` was not kept: the cache policy leaves no room (every entry is in use by this run)");
        }
    }
}

/// What the run could not guarantee: tasks run without isolation, and
/// undeclared reads and writes that could not be looked for.
fn tell_unchecked(err: &mut dyn Write, pipeline: &Pipeline, report: &Report) {
    if let Some(dagfs::exec::isolate::Status::Off(why)) = dagfs::exec::isolate::probed() {
        if !why.starts_with("DAGFS_ISOLATION") {
            let _ = writeln!(
                err,
                "dagfs: warning: tasks ran without isolation: {why}; a task could write its inputs or the store, and its background processes are killed by process group only"
            );
        }
    }
    let looked_for = report.executed() + report.failed() > 0
        && pipeline
            .tasks
            .iter()
            .any(|t| t.hermetic != dagfs::exec::hermetic::Mode::Off);
    if looked_for {
        let root = dagfs::exec::isolate::probed() == Some(&dagfs::exec::isolate::Status::Root);
        if let Some(why) = dagfs::exec::hermetic::unobservable(root) {
            let _ = writeln!(
                err,
                "dagfs: note: undeclared reads and writes were not checked: {why}"
            );
        }
    }
}

fn summary(r: &Report) -> String {
    let mut s = format!(
        "summary: {} tasks: {} executed, {} cached, {} failed, {} skipped; hit rate {:.1}%; {:.2}s",
        r.outcomes.len(),
        r.executed(),
        r.cached(),
        r.failed(),
        r.skipped(),
        r.hit_rate() * 100.0,
        r.elapsed.as_secs_f64()
    );
    if r.evicted + r.expired > 0 {
        s.push_str(&format!("; {} evicted, {} expired", r.evicted, r.expired));
    }
    s.push_str(&format!(" (run {})", r.run_id));
    s
}

/// The terminal's status line: running and queued apart (with `-j2`, two
/// run however many wait for a worker).
fn status_line(
    (done, total): (usize, usize),
    cached: usize,
    failed: usize,
    running: &[&str],
    more: usize,
    queued: usize,
) -> String {
    let mut s = format!(
        "[{done}/{total}] {cached} cached, {failed} failed, {} running",
        running.len() + more
    );
    if !running.is_empty() {
        s += &format!(": {}", running.join(", "));
        if more > 0 {
            s += &format!(" +{more}");
        }
    }
    if queued > 0 {
        s += &format!("; {queued} queued");
    }
    s
}

/// Progress: a redrawn status line on a terminal, plain lines otherwise.
struct Ui<'w> {
    total: usize,
    tty: bool,
    done: usize,
    cached: usize,
    failed: usize,
    /// Misses waiting for a free worker (`-j`).
    queued: usize,
    running: Vec<usize>,
    /// Something changed since the status line was drawn.
    dirty: bool,
    last_draw: Instant,
    out: std::io::BufWriter<&'w mut dyn Write>,
}

impl<'w> Ui<'w> {
    fn new(total: usize, tty: bool, err: &'w mut dyn Write) -> Ui<'w> {
        Ui {
            total,
            tty,
            done: 0,
            cached: 0,
            failed: 0,
            queued: 0,
            running: Vec::new(),
            dirty: false,
            last_draw: Instant::now() - Duration::from_secs(1),
            out: std::io::BufWriter::new(err),
        }
    }

    fn event(&mut self, names: &[String], ev: Event<'_>) {
        self.dirty |= !matches!(ev, Event::Tick);
        match ev {
            Event::Tick => {}
            Event::Queued { .. } => self.queued += 1,
            Event::Started { idx } => {
                self.queued = self.queued.saturating_sub(1);
                self.running.push(idx);
            }
            Event::Finished { idx, outcome } => {
                self.running.retain(|&i| i != idx);
                self.done += 1;
                match outcome.status {
                    Status::Cached => self.cached += 1,
                    Status::Failed => self.failed += 1,
                    _ => {}
                }
                if self.tty {
                    if outcome.status == Status::Executed || outcome.status == Status::Failed {
                        let _ = write!(self.out, "\r\x1b[K");
                        let _ = writeln!(self.out, "{}", line(&names[idx], outcome));
                        self.last_draw = Instant::now() - Duration::from_secs(1);
                    }
                } else {
                    let _ = writeln!(self.out, "{}", line(&names[idx], outcome));
                }
            }
        }
        // NB: a change held back by the 80 ms limit is drawn at the next
        // event or tick, so the line never stays stale while tasks run.
        if self.tty && self.dirty && self.last_draw.elapsed() >= Duration::from_millis(80) {
            self.draw(names);
        }
    }

    fn draw(&mut self, names: &[String]) {
        let running: Vec<&str> = self
            .running
            .iter()
            .take(3)
            .map(|&i| names[i].as_str())
            .collect();
        let more = self.running.len().saturating_sub(3);
        let _ = write!(
            self.out,
            "\r\x1b[K{}",
            status_line(
                (self.done, self.total),
                self.cached,
                self.failed,
                &running,
                more,
                self.queued
            )
        );
        let _ = self.out.flush();
        self.last_draw = Instant::now();
        self.dirty = false;
    }

    fn clear(&mut self) {
        if self.tty {
            let _ = write!(self.out, "\r\x1b[K");
        }
        let _ = self.out.flush();
    }
}

fn line(name: &str, o: &Outcome) -> String {
    let key = o.key.map(|k| k.short()).unwrap_or_default();
    match o.status {
        Status::Cached => format!(
            "hit   {name}  {key}  ({})",
            o.route.map(|r| r.as_str()).unwrap_or("key")
        ),
        Status::Executed => format!(
            "ran   {name}  {:.2}s  {key}  ({})",
            o.duration.as_secs_f64(),
            o.miss_reason.map(|r| r.as_str()).unwrap_or("miss")
        ),
        Status::Failed => format!(
            "FAIL  {name}  {}",
            visible(o.error.as_deref().unwrap_or(""))
        ),
        Status::Skipped => format!("skip  {name}"),
    }
}

/// Chrome trace event format: one complete ("X") event per task.
fn write_trace(path: &std::path::Path, r: &Report) -> std::io::Result<()> {
    let events: Vec<serde_json::Value> = r
        .names
        .iter()
        .zip(&r.outcomes)
        .filter(|(_, o)| o.status != Status::Skipped)
        .map(|(name, o)| {
            serde_json::json!({
                "name": name,
                "cat": o.status.as_str(),
                "ph": "X",
                "ts": o.start.as_micros() as u64,
                "dur": (o.duration.as_micros() as u64).max(1),
                "pid": 1,
                "tid": o.worker,
                "args": {
                    "key": o.key.map(|k| k.to_hex()),
                    "route": o.route.map(|r| r.as_str()),
                    "miss_reason": o.miss_reason.map(|m| m.as_str()),
                    "status": o.status.as_str(),
                },
            })
        })
        .collect();
    let doc = serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms",
        "otherData": { "dag": r.dag, "run": r.run_id } });
    std::fs::write(
        path,
        serde_json::to_vec_pretty(&doc).expect("trace serializes"),
    )
}

/// `s` with control characters (escape sequences, carriage returns, bells)
/// shown as `\xNN` / `\u{NNNN}`: a task's output is text to read, not
/// commands for the terminal. Newlines and tabs stay.
fn visible(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}
