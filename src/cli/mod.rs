//! cli: argument parsing, output formatting, progress, exit codes.
//!
//! May call everything below it. A command runs through `execute` in both
//! modes: embedded (this process opens the store) or, when a daemon serves
//! the store, inside the daemon on behalf of this process (`daemon::client`
//! sends the parsed command, the cwd and the environment; the daemon calls
//! `execute` with writers that stream back). Errors become exit codes in
//! exactly one place, `CliError::exit_code`.

mod cat;
mod inspect;
mod log;
mod mount;
mod remote_tier;
mod run;
mod sync;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use dagfs::cache::{Cache, CacheError};
use dagfs::daemon::client::{self, ClientError};
use dagfs::daemon::protocol::Request;
use dagfs::exec::scheduler::Inflight;
use dagfs::exec::ExecError;
use dagfs::index::CachePolicy;
use dagfs::store::{Store, StoreError};

const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   a task failed (or was skipped because an upstream task failed)
  2   usage error
  3   bad pipeline file (unreadable, bad TOML with file:line:col, unknown field, missing `run`, bad value, bad input)
  4   duplicate task name
  5   unknown dependency
  6   dependency cycle (printed as a -> b -> c -> a)
  7   unknown task named on the command line (run, explain)
  8   store error (I/O, lock, corruption)
  9   store format not supported by this dagfs
  10  not found (the target of cat, the DAG of ls, the directory of sync, umount of something not mounted)
  11  daemon error (refused connection, protocol version mismatch)
  12  mount failed
  13  sync conflict (a file kept changing while it was read, or a gc kept removing what the sync stored)
  14  sync: unreadable file (see --skip-unreadable)
  15  remote: the server cannot be reached, or results could not be uploaded (remote status, remote flush)
  16-23  fsck found problems: 16 + a bitmask of
         1  problems found
         2  problems repaired (--repair)
         4  problems remain that --repair cannot fix (or, with --repair, did not)
      so 17 = found, all repairable; 19 = found and all repaired;
      21 = found, some not repairable; 23 = repaired some, some remain
  24  ui: cannot listen on the address (in use, not permitted)
  25  remote: a signing key or trusted-keys file that cannot be used (remote keygen, config remote_sign_key/remote_trusted_keys, run)";

#[derive(Parser, Debug)]
#[command(name = "dagfs", version, about = "A content-addressed cache for the outputs of DAG pipelines", after_help = EXIT_CODES)]
pub struct Cli {
    /// Store directory [default: $DAGFS_STORE, else $XDG_CACHE_HOME/dagfs, else ~/.cache/dagfs]
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum Cmd {
    /// Run a pipeline, answering from the cache where possible
    Run(run::RunArgs),
    /// Cache statistics (persist across runs)
    Stats {
        /// Print the statistics as JSON (hit rate included)
        #[arg(long)]
        json: bool,
    },
    /// Each task's latest key, size and age
    Ls {
        /// Only this pipeline
        dag: Option<String>,
    },
    /// A task's key components, and what differs from its previous key
    Explain {
        /// Pipeline file
        #[arg(short = 'f', long = "file", default_value = "dagfs.toml")]
        file: PathBuf,
        /// The task to explain (its name in the pipeline file)
        task: String,
    },
    /// Print a stored file (or list a directory), following symlinks inside the tree
    Cat {
        /// What to print: DAG/TASK/PATH, KEYPREFIX/PATH, a sync snapshot
        /// NAME@N/PATH (N a number or `latest`), or TREEDIGEST/PATH
        path: String,
    },
    /// Show or set the store's cache policy (max_entries, max_bytes, ttl; "none" clears)
    Config {
        /// The setting to show or set: max_entries, max_bytes or ttl [default: show all]
        key: Option<String>,
        /// Its new value (a count, a size like 10G, a duration like 7d), or "none"
        value: Option<String>,
    },
    /// Apply the cache policy, then remove blobs no entry references
    Gc {
        /// Only report what would be expired, evicted and removed
        #[arg(long)]
        dry_run: bool,
    },
    /// Verify the store: re-hash every blob, check every entry (its key
    /// against its manifest, every blob it references), the sync snapshots,
    /// and the index against entries/. Exit 0 when clean, else 16-23 (below)
    Fsck {
        /// Fix what can be fixed: corrupt blobs and stray files go to
        /// <store>/quarantine/ (never deleted), entries that reference them
        /// are dropped (they re-run, miss reason `corrupt`), the index is
        /// brought back in line with entries/
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON (on stdout)
        #[arg(long)]
        json: bool,
        /// Threads hashing blobs [default: the number of CPUs]
        #[arg(short = 'j', long, value_name = "N")]
        jobs: Option<usize>,
        /// Only rebuild the index from entries/ (the store's source of truth)
        #[arg(long, conflicts_with_all = ["repair", "json", "jobs"])]
        rebuild_index: bool,
    },
    /// Snapshot a host directory into the store and print what changed
    Sync(sync::SyncArgs),
    /// The pipeline's DAG, each task coloured by how it ended in the last run
    /// (or --run ID), as DOT, SVG, JSON or Mermaid
    Graph(crate::ui::GraphArgs),
    /// Serve a web view of the store (the DAG of the latest run, runs, stats,
    /// syncs) on a local address; with a daemon running, the daemon serves it
    Ui(crate::ui::UiArgs),
    /// Serve the store as a read-only filesystem at MOUNTPOINT (starts the daemon)
    Mount(mount::MountArgs),
    /// The remote cache (REAPI v2): status, or upload what is queued
    Remote {
        #[command(subcommand)]
        cmd: remote_tier::RemoteCmd,
    },
    /// Stop the daemon serving MOUNTPOINT and unmount it
    Umount {
        /// The directory a dagfs daemon serves
        mountpoint: PathBuf,
    },
}

impl Cmd {
    /// What of this command writes to the store, if it does (refused on a
    /// store this process cannot write).
    fn writes(&self) -> Option<&'static str> {
        match self {
            Cmd::Run(_) => Some("`dagfs run` stores outputs and records runs"),
            Cmd::Gc { dry_run: false } => Some("`dagfs gc` removes entries and blobs"),
            Cmd::Config { value: Some(_), .. } => Some("`dagfs config KEY VALUE` sets the policy"),
            Cmd::Remote {
                cmd: remote_tier::RemoteCmd::Flush,
            } => Some("`dagfs remote flush` empties its upload queue"),
            Cmd::Sync(a) if !a.list && a.stop.is_none() && a.log.is_none() => {
                Some("`dagfs sync` stores snapshots")
            }
            Cmd::Fsck { repair: true, .. } => Some("`dagfs fsck --repair` repairs it"),
            Cmd::Fsck {
                rebuild_index: true,
                ..
            } => Some("`dagfs fsck --rebuild-index` rebuilds its index"),
            _ => None,
        }
    }

    /// Make relative paths absolute against `cwd` (before sending a command
    /// to a daemon, whose working directory is not ours).
    fn absolutize(&mut self, cwd: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        };
        match self {
            Cmd::Run(a) => {
                abs(&mut a.file);
                if let Some(t) = &mut a.trace {
                    abs(t);
                }
            }
            Cmd::Explain { file, .. } => abs(file),
            Cmd::Graph(a) => abs(&mut a.file),
            Cmd::Sync(a) => {
                if let Some(d) = &mut a.dir {
                    abs(d);
                }
            }
            Cmd::Config {
                key: Some(k),
                value: Some(v),
            } if remote_tier::FILE_KEYS.contains(&k.as_str()) && v != "none" => {
                let mut p = PathBuf::from(&*v);
                abs(&mut p);
                *v = p.display().to_string();
            }
            Cmd::Remote {
                cmd: remote_tier::RemoteCmd::Keygen { file },
            } => abs(file),
            _ => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Output(std::io::Error),
    #[error(transparent)]
    Daemon(#[from] ClientError),
    #[error("{0}")]
    Mount(String),
    /// A writing command on a store this process cannot write.
    #[error("{0}")]
    ReadOnly(String),
    #[error(transparent)]
    Sync(#[from] dagfs::sync::SyncError),
    #[error(transparent)]
    Remote(#[from] dagfs::remote::RemoteError),
    /// The web view could not listen.
    #[error("{0}")]
    Listen(String),
    /// Tasks failed; already reported.
    #[error("")]
    TasksFailed,
    /// fsck found problems (the bitmask of `store::fsck::Report::mask`);
    /// already reported.
    #[error("")]
    Fsck(u8),
}

impl From<crate::ui::UiError> for CliError {
    fn from(e: crate::ui::UiError) -> Self {
        use crate::ui::UiError;
        match e {
            UiError::Usage(m) => CliError::Usage(m),
            UiError::NoRun(m) => CliError::NotFound(m),
            UiError::Listen(m) => CliError::Listen(m),
            UiError::Exec(e) => CliError::Exec(e),
            UiError::Cache(e) => CliError::Cache(e),
            UiError::Output(e) => CliError::Output(e),
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Cache(CacheError::Store(e))
    }
}

impl From<dagfs::index::IndexError> for CliError {
    fn from(e: dagfs::index::IndexError) -> Self {
        CliError::Cache(CacheError::Index(e))
    }
}

impl CliError {
    /// The one place errors become exit codes (documented in EXIT_CODES).
    pub fn exit_code(&self) -> i32 {
        fn store(e: &StoreError) -> i32 {
            match e {
                StoreError::Format { .. } => 9,
                _ => 8,
            }
        }
        fn cache(e: &CacheError) -> i32 {
            match e {
                CacheError::Store(s) => store(s),
                CacheError::Index(_) => 8,
            }
        }
        match self {
            CliError::TasksFailed => 1,
            CliError::Fsck(mask) => FSCK_BASE | i32::from(*mask & 7),
            CliError::Usage(_) => 2,
            CliError::Exec(e) => match e {
                ExecError::Config(_) | ExecError::Input { .. } => 3,
                ExecError::DuplicateTask { .. } => 4,
                ExecError::UnknownDep { .. } => 5,
                ExecError::Cycle(_) => 6,
                ExecError::UnknownTask(_) => 7,
                ExecError::Store(s) => store(s),
                ExecError::Cache(c) => cache(c),
                ExecError::Index(_) | ExecError::Spawn { .. } => 8,
            },
            CliError::Cache(c) => cache(c),
            CliError::NotFound(_) => 10,
            CliError::Output(_) => 8,
            CliError::Daemon(_) => 11,
            CliError::Mount(_) => 12,
            CliError::ReadOnly(_) => 8,
            CliError::Remote(e) => match e {
                dagfs::remote::RemoteError::BadUrl { .. }
                | dagfs::remote::RemoteError::Usage(_) => 2,
                dagfs::remote::RemoteError::Config { .. }
                | dagfs::remote::RemoteError::Io { .. } => 8,
                dagfs::remote::RemoteError::Cache(CacheError::Store(s)) => store(s),
                dagfs::remote::RemoteError::Cache(_) => 8,
                dagfs::remote::RemoteError::Key { .. } => 25,
                _ => 15,
            },
            CliError::Listen(_) => 24,
            CliError::Sync(e) => match e {
                dagfs::sync::SyncError::Conflict { .. }
                | dagfs::sync::SyncError::Vanished { .. }
                | dagfs::sync::SyncError::Swept(_) => 13,
                dagfs::sync::SyncError::Unreadable { .. } => 14,
                dagfs::sync::SyncError::Usage(_) => 2,
                dagfs::sync::SyncError::Store(s) => store(s),
                dagfs::sync::SyncError::Cache(c) => cache(c),
                _ => 8,
            },
        }
    }
}

/// `dagfs fsck` exits `FSCK_BASE + mask` when it finds problems: 16-23,
/// above every other code (see `EXIT_CODES`).
pub const FSCK_BASE: i32 = 16;

/// Where a command's output goes and whose environment it sees.
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub stderr_tty: bool,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// What a daemon adds to a command's context.
#[derive(Default, Clone)]
pub struct Ctx {
    pub session: Option<u64>,
    pub inflight: Arc<Inflight>,
    pub inputs_via: Option<PathBuf>,
    pub running: Option<Arc<AtomicU64>>,
    pub on_change: Option<Arc<dagfs::exec::scheduler::OnChange>>,
    /// The daemon's: concurrent syncs of one directory compute once.
    pub syncs: Option<Arc<dagfs::sync::shared::Registry>>,
    /// The daemon's: watched syncs it owns.
    pub watches: Option<Arc<dagfs::daemon::watches::Watches>>,
    /// The daemon's: the web views it serves.
    pub uis: Option<Arc<crate::ui::Servers>>,
    /// The daemon's: its background uploader (`daemon::remote`).
    pub uploader: Option<Arc<dagfs::daemon::remote::Uploader>>,
}

/// The cache a command uses: opened on first use (embedded; validation
/// errors never touch the store), or the daemon's.
pub enum CacheSource {
    Embedded {
        dir: PathBuf,
        cache: Option<Box<Cache>>,
    },
    Daemon(Arc<Cache>),
}

impl CacheSource {
    /// The store and why this process cannot write it, if it cannot.
    /// NB: without opening it (a one-shot sync overlaps that with work).
    fn read_only(&self) -> Option<(PathBuf, String)> {
        let cache = match self {
            CacheSource::Daemon(c) => Some(&**c),
            CacheSource::Embedded { cache, .. } => cache.as_deref(),
        };
        match (cache, self) {
            (Some(c), _) => c
                .store
                .read_only()
                .map(|why| (c.store.root().to_path_buf(), why.to_string())),
            (None, CacheSource::Embedded { dir, .. }) => {
                dagfs::store::read_only_reason(dir).map(|e| (dir.clone(), e.to_string()))
            }
            (None, CacheSource::Daemon(_)) => None,
        }
    }

    pub fn get(&mut self, io: &mut Io) -> Result<&Cache, CliError> {
        if let Some(store) = self.take_store(io)? {
            self.open_on(store, io)?;
        }
        match self {
            CacheSource::Daemon(c) => Ok(c),
            CacheSource::Embedded { cache, .. } => Ok(cache.as_deref().expect("opened")),
        }
    }

    /// The store alone, locked, where this process is to open the cache and
    /// has not yet (a run a memo may answer without the index: see
    /// `exec::memo`); `open_on` opens the cache on it. None: the daemon's
    /// cache, or one open already.
    pub fn take_store(&mut self, io: &mut Io) -> Result<Option<Store>, CliError> {
        let CacheSource::Embedded { dir, cache: None } = self else {
            return Ok(None);
        };
        let err = &mut *io.err;
        let store = Store::open(dir, &mut |holder| {
            let _ = writeln!(
                err,
                "dagfs: waiting for the store lock on {} (held by {holder})",
                dir.display()
            );
        })?;
        Ok(Some(store))
    }

    /// Open the cache on `store` (from `take_store`).
    pub fn open_on(&mut self, store: Store, io: &mut Io) -> Result<(), CliError> {
        if let CacheSource::Embedded { cache, .. } = self {
            let c = Cache::from_store(store, CachePolicy::default())?;
            for note in c.notes() {
                let _ = writeln!(io.err, "dagfs: {note}");
            }
            *cache = Some(Box::new(c));
        }
        Ok(())
    }
}

pub fn main() -> i32 {
    log::init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let fail = |e: CliError| {
        eprintln!("dagfs: error: {e}");
        e.exit_code()
    };
    match cli.cmd {
        Cmd::Mount(args) => mount::mount(cli.store, args).map_or_else(fail, |()| 0),
        Cmd::Umount { mountpoint } => mount::umount(&mountpoint).map_or_else(fail, |()| 0),
        Cmd::Remote {
            cmd: remote_tier::RemoteCmd::Keygen { file },
        } => remote_tier::keygen(&file, &mut std::io::stdout()).map_or_else(fail, |()| 0),
        Cmd::Run(a) if a.watch => {
            let dir = match store_dir(cli.store, &|k| std::env::var(k).ok()) {
                Ok(d) => d,
                Err(e) => return fail(e),
            };
            let d = dir.clone();
            run::watch(
                a,
                &mut |a| match client::connect(&d) {
                    Ok(Some(client)) => remote(client, Cmd::Run(a)).unwrap_or_else(fail),
                    Ok(None) => embedded(d.clone(), Cmd::Run(a), false),
                    Err(e) => fail(e.into()),
                },
                &dir,
            )
        }
        cmd => {
            let dir = match store_dir(cli.store, &|k| std::env::var(k).ok()) {
                Ok(d) => d,
                Err(e) => return fail(e),
            };
            match client::connect(&dir) {
                Ok(Some(client)) => remote(client, cmd).unwrap_or_else(fail),
                Ok(None) => embedded(dir, cmd, true),
                Err(e) => fail(e.into()),
            }
        }
    }
}

/// Run `cmd` in this process; `exits`: the process exits right after
/// (not so for each round of `run --watch`).
fn embedded(dir: PathBuf, cmd: Cmd, exits: bool) -> i32 {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    let env = |k: &str| std::env::var(k).ok();
    let mut io = Io {
        out: &mut out,
        err: &mut err,
        stderr_tty: std::io::stderr().is_terminal(),
        env: &env,
    };
    let mut src = CacheSource::Embedded { dir, cache: None };
    let code = execute_to_code(cmd, &mut src, &mut io, &Ctx::default());
    if let CacheSource::Embedded {
        cache: Some(cache), ..
    } = src
    {
        if exits {
            cache.close_for_exit();
        }
    }
    code
}

/// Run `cmd` in the daemon serving the store.
fn remote(mut client: client::Client, mut cmd: Cmd) -> Result<i32, CliError> {
    let cwd =
        std::env::current_dir().map_err(|e| CliError::Usage(format!("current directory: {e}")))?;
    cmd.absolutize(&cwd);
    let req = Request {
        command: serde_json::to_value(&cmd).expect("commands serialize"),
        cwd: cwd.display().to_string(),
        env: std::env::vars().collect(),
        stderr_tty: std::io::stderr().is_terminal(),
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    Ok(client.request(&req, &mut out, &mut err)?)
}

/// The daemon's side of `remote`: run a request as `execute` would.
pub fn serve_request(
    req: Request,
    out: &mut dyn Write,
    err: &mut dyn Write,
    cache: &Arc<Cache>,
    ctx: &Ctx,
) -> i32 {
    let cmd: Cmd = match serde_json::from_value(req.command) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "dagfs: error: the daemon cannot read this command ({e}); are client and daemon the same version?");
            return 11;
        }
    };
    if matches!(cmd, Cmd::Mount(_) | Cmd::Umount { .. }) {
        let _ = writeln!(
            err,
            "dagfs: error: mount and umount do not run through the daemon"
        );
        return 2;
    }
    let env: HashMap<String, String> = req.env.into_iter().collect();
    let lookup = |k: &str| env.get(k).cloned();
    let mut io = Io {
        out,
        err,
        stderr_tty: req.stderr_tty,
        env: &lookup,
    };
    let mut src = CacheSource::Daemon(cache.clone());
    execute_to_code(cmd, &mut src, &mut io, ctx)
}

fn execute_to_code(cmd: Cmd, src: &mut CacheSource, io: &mut Io, ctx: &Ctx) -> i32 {
    match execute(cmd, src, io, ctx) {
        Ok(()) => 0,
        Err(CliError::TasksFailed) => 1,
        Err(e @ CliError::Fsck(_)) => e.exit_code(),
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            let _ = writeln!(io.err, "dagfs: error: {e}");
            e.exit_code()
        }
    }
}

/// Block the stop signals (SIGTERM, SIGINT, SIGHUP) in this thread and
/// every thread it starts after, so one thread can `sigwait` for them.
pub(crate) fn block_stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    set
}

fn store_dir(
    explicit: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, CliError> {
    if let Some(s) = explicit {
        return Ok(s);
    }
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(s) = var("DAGFS_STORE") {
        return Ok(s);
    }
    if let Some(x) = var("XDG_CACHE_HOME") {
        return Ok(x.join("dagfs"));
    }
    if let Some(h) = var("HOME") {
        return Ok(h.join(".cache").join("dagfs"));
    }
    Err(CliError::Usage(
        "no store: pass --store DIR or set DAGFS_STORE".into(),
    ))
}

/// Run one command against `src`. The same code serves embedded and daemon
/// mode.
fn execute(cmd: Cmd, src: &mut CacheSource, io: &mut Io, ctx: &Ctx) -> Result<(), CliError> {
    if let Some(what) = cmd.writes() {
        if let Some((root, why)) = src.read_only() {
            return Err(CliError::ReadOnly(format!(
                "the store {} cannot be written ({why}): {what}; stats, ls, cat, explain, sync --list, fsck and mount only read it",
                root.display()
            )));
        }
    }
    match cmd {
        Cmd::Run(args) => run::run(args, src, io, ctx),
        Cmd::Explain { file, task } => inspect::explain(&file, &task, src, io),
        Cmd::Stats { json } => inspect::stats(src.get(io)?, json, io),
        Cmd::Ls { dag } => {
            let c = src.get(io)?;
            inspect::ls(c, dag.as_deref(), io)
        }
        Cmd::Cat { path } => cat::cat(src.get(io)?, &path, io),
        Cmd::Config { key, value } => inspect::config(src.get(io)?, key, value, io),
        Cmd::Gc { dry_run } => inspect::gc(src.get(io)?, dry_run, io),
        Cmd::Remote { cmd } => remote_tier::run(cmd, src.get(io)?, io, ctx),
        Cmd::Sync(args) => sync::sync(args, src, io, ctx),
        Cmd::Fsck {
            rebuild_index: true,
            ..
        } => inspect::rebuild_index(src.get(io)?, io),
        Cmd::Fsck {
            repair, json, jobs, ..
        } => inspect::fsck(src.get(io)?, repair, json, jobs, io),
        Cmd::Graph(args) => {
            let cache = src.get(io)?;
            Ok(crate::ui::graph(&args, cache, io.out)?)
        }
        Cmd::Ui(args) => ui(args, src, io, ctx),
        Cmd::Mount(_) | Cmd::Umount { .. } => Err(CliError::Usage(
            "mount/umount run only from the command line".into(),
        )),
    }
}

/// `dagfs ui`: in the daemon, start its web view (it serves until the
/// daemon stops); else serve in the foreground until a stop signal.
fn ui(
    args: crate::ui::UiArgs,
    src: &mut CacheSource,
    io: &mut Io,
    ctx: &Ctx,
) -> Result<(), CliError> {
    let token = args
        .token
        .clone()
        .or_else(|| (io.env)("DAGFS_UI_TOKEN"))
        .filter(|t| !t.is_empty());
    match src {
        CacheSource::Daemon(cache) => {
            let uis = ctx
                .uis
                .as_ref()
                .ok_or_else(|| CliError::Usage("this daemon serves no web view".into()))?;
            let (url, new) = uis.start(cache.clone(), &args.listen, token)?;
            writeln!(
                io.out,
                "dagfs ui: the daemon {} {url} (until it stops: `dagfs umount`)",
                if new { "serves" } else { "already serves" }
            )
            .map_err(CliError::Output)
        }
        CacheSource::Embedded { dir, .. } => {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let sigs = block_stop_signals();
            let flag = stop.clone();
            std::thread::spawn(move || {
                if sigs.wait().is_ok() {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let dir = dir.clone();
            Ok(crate::ui::serve_store(&dir, &args, token, io.out, &stop)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `--help` listed options and positionals without a word
    /// of what they are (`stats --json`, `gc --dry-run`, `explain -f`,
    /// `<TASK>`, `<PATH>`, `[KEY] [VALUE]`, `<MOUNTPOINT>`).
    #[test]
    fn every_option_and_positional_has_a_description() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && !a.is_hide_set() && a.get_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "dagfs", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:?}");
    }
}
