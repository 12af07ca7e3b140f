//! `dagfs mount` and `dagfs umount`: the daemon's lifecycle.
//!
//! `mount -f` is the daemon: it takes the store lock, mounts the FUSE view,
//! serves `<store>/daemon.sock` (not for a store this process cannot
//! write: that daemon has no socket), re-arms the recorded watches, and
//! runs until `dagfs umount`, SIGTERM/SIGINT/SIGHUP, or an external
//! `umount`; then it lets running requests finish, flushes the index and
//! unmounts. Without `-f`, `mount` starts that daemon detached (new
//! session, output to `<store>/daemon.log`, or for a read-only store a log
//! in the runtime directory, see `log_path`) and returns once the mount is
//! live, or fails with the daemon's reason. A store a daemon already
//! serves, a mount point inside the store (or holding it) and a non-empty
//! mount point (without `-o nonempty`) are refused first.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};

use dagfs::cache::{Cache, CacheError};
use dagfs::daemon::protocol::{Hello, PROTOCOL};
use dagfs::daemon::remote::{Lookups, Settings as RemoteSettings, Uploader};
use dagfs::daemon::server::{Server, ServerConfig};
use dagfs::daemon::view::CacheView;
use dagfs::daemon::watches::Watches;
use dagfs::daemon::{client, Gauges};
use dagfs::exec::scheduler::{Change, Inflight};
use dagfs::fs::invalidate::Invalidator;
use dagfs::fs::{self as dfs, DagFs, FsCounters, FsOptions, Passthrough, Verify};
use dagfs::host::mounts;
use dagfs::index::CachePolicy;
use dagfs::store::StoreError;

use super::{serve_request, store_dir, CliError, Ctx};

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct MountArgs {
    /// The directory to serve the store at (empty, outside the store)
    pub mountpoint: PathBuf,
    /// Stay in the foreground (otherwise: detach once the mount is live)
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Options, comma-separated, repeatable: allow_other, ro, store=DIR,
    /// passthrough=auto|on|off, debug, threads=N, verify=first-open|always|off
    /// (re-hash a blob before serving it: at its first read, at every open
    /// and read from offset 0, or never; a mismatch is EIO and the blob goes
    /// to <store>/quarantine/), nonempty (mount over a directory that has
    /// files, hiding them), remote_timeout=DURATION (how long a lookup of
    /// a key the store lacks waits for the remote before EIO; default 5s)
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Also serve the web view (`dagfs ui`) on this address, loopback
    /// unless a token is set ($DAGFS_UI_TOKEN), for the daemon's life
    #[arg(long, value_name = "IP:PORT")]
    pub ui: Option<String>,
    /// (internal) report readiness on this file descriptor
    #[arg(long, hide = true)]
    pub ready_fd: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MountOpts {
    allow_other: bool,
    passthrough: Passthrough,
    debug: bool,
    threads: Option<usize>,
    store: Option<PathBuf>,
    verify: Verify,
    /// Mount over a directory that has files (they are hidden meanwhile).
    nonempty: bool,
    /// How long a lookup of a key the store lacks waits for the remote
    /// before it answers EIO.
    remote_timeout: Duration,
}

/// `-o remote_timeout` when not given.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

/// Options generic mount tools pass that mean nothing (or what we always do).
const IGNORED: [&str; 14] = [
    "ro", "defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev", "nosuid",
    "nodev", "noexec", "exec", "noatime",
];

fn parse_opts(list: &[String]) -> Result<MountOpts, CliError> {
    let mut o = MountOpts {
        allow_other: false,
        passthrough: Passthrough::Auto,
        debug: false,
        threads: None,
        store: None,
        verify: Verify::FirstOpen,
        nonempty: false,
        remote_timeout: REMOTE_TIMEOUT,
    };
    for opt in list
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (k, v) = opt
            .split_once('=')
            .map_or((opt, None), |(k, v)| (k, Some(v)));
        match (k, v) {
            ("allow_other", None) => o.allow_other = true,
            ("default_permissions", None) => {}
            ("debug", None) => o.debug = true,
            ("nonempty", None) => o.nonempty = true,
            ("rw", None) => return Err(CliError::Usage("-o rw: dagfs mounts are read-only".into())),
            ("store", Some(s)) => o.store = Some(PathBuf::from(s)),
            ("passthrough", Some("auto")) => o.passthrough = Passthrough::Auto,
            ("passthrough", Some("on")) => o.passthrough = Passthrough::On,
            ("passthrough", Some("off")) => o.passthrough = Passthrough::Off,
            ("verify", Some(v)) => {
                o.verify = Verify::parse(v).ok_or_else(|| {
                    CliError::Usage(format!("-o verify={v}: want first-open, always or off"))
                })?
            }
            ("threads", Some(n)) => {
                o.threads = Some(n.parse().ok().filter(|&n: &usize| (1..=256).contains(&n)).ok_or_else(|| {
                    CliError::Usage(format!("-o threads={n}: want a number from 1 to 256"))
                })?)
            }
            ("remote_timeout", Some(v)) => {
                o.remote_timeout = v
                    .strip_suffix("ms")
                    .and_then(|n| n.parse::<u64>().ok())
                    .map(Duration::from_millis)
                    .or_else(|| dagfs::index::stats::parse_duration(v))
                    .filter(|d| !d.is_zero() && *d <= Duration::from_secs(600))
                    .ok_or_else(|| {
                        CliError::Usage(format!(
                            "-o remote_timeout={v}: want a duration like 500ms or 5s (at most 10m)"
                        ))
                    })?
            }
            (k, None) if IGNORED.contains(&k) || k == "relatime" => {}
            (k, _) if k.starts_with("x-") => {}
            _ => return Err(CliError::Usage(format!("unknown mount option `{opt}` (allow_other, ro, store=DIR, passthrough=auto|on|off, debug, threads=N, verify=first-open|always|off, nonempty, remote_timeout=DURATION)"))),
        }
    }
    Ok(o)
}

fn absolute(p: &Path) -> Result<PathBuf, CliError> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd =
        std::env::current_dir().map_err(|e| CliError::Usage(format!("current directory: {e}")))?;
    Ok(cwd.join(p))
}

/// A dead dagfs mount (daemon killed) is unmounted lazily, saying so.
fn recover_stale(mnt: &Path) -> Result<(), CliError> {
    if !mounts::is_stale(mnt) {
        return Ok(());
    }
    let m = mounts::find(mnt).map_err(|e| CliError::Mount(format!("reading mountinfo: {e}")))?;
    match m {
        Some(m) if m.is_dagfs() => {
            mounts::lazy_unmount(mnt).map_err(|e| {
                CliError::Mount(format!(
                    "{}: lazy unmount of the dead mount: {e}",
                    mnt.display()
                ))
            })?;
            eprintln!(
                "dagfs: {} was a dead dagfs mount (its daemon is gone); unmounted it lazily",
                mnt.display()
            );
            Ok(())
        }
        Some(m) => Err(CliError::Mount(format!(
            "{} is a dead {} mount; unmount it first",
            mnt.display(),
            m.fstype
        ))),
        None => Err(CliError::Mount(format!(
            "{}: transport endpoint is not connected",
            mnt.display()
        ))),
    }
}

pub fn mount(store: Option<PathBuf>, a: MountArgs) -> Result<(), CliError> {
    let opts = parse_opts(&a.options)?;
    let store = absolute(&store_dir(opts.store.clone().or(store), &|k| {
        std::env::var(k).ok()
    })?)?;
    let mnt = absolute(&a.mountpoint)?;
    let ready = a.ready_fd.map(|fd| {
        // SAFETY: the parent passed us this descriptor for our exclusive use.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    let result = (|| {
        if store.exists() && !store.is_dir() {
            return Err(CliError::Mount(format!(
                "the store {} is not a directory",
                store.display()
            )));
        }
        recover_stale(&mnt)?;
        if let Some(served) = served_by(&store) {
            return Err(CliError::Mount(served));
        }
        if let Ok(Some(m)) = mounts::find(&mnt) {
            if m.is_dagfs() {
                return Err(CliError::Mount(format!(
                    "{} is already a dagfs mount (of {})",
                    mnt.display(),
                    m.source
                )));
            }
        }
        if !mnt.is_dir() {
            return Err(CliError::Mount(format!(
                "{}: mountpoint does not exist or is not a directory",
                mnt.display()
            )));
        }
        check_apart(&store, &mnt)?;
        if !opts.nonempty && dir_has_entries(&mnt) {
            return Err(CliError::Mount(format!(
                "{} is not empty: the mount would hide what is in it (-o nonempty mounts over it anyway)",
                mnt.display()
            )));
        }
        if a.foreground {
            serve(&store, &mnt, &opts, a.ui.as_deref(), ready.as_ref())
        } else {
            detach(&store, &mnt, &a)
        }
    })();
    if let (Err(e), Some(fd)) = (&result, &ready) {
        let _ = std::fs::File::from(fd.try_clone().expect("dup ready fd"))
            .write_all(format!("error: {e}\n").as_bytes());
    }
    result
}

/// `p` with symlinks and `..` resolved, also when its last components do
/// not exist yet (a store `mount` is about to create).
fn resolved(p: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut at = p;
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return missing.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                at = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// Refuse a mount point inside the store (the mount would hide `blobs/`,
/// `index/`, … from the daemon itself, and a repair through it would drop
/// every entry) and a store inside the mount point (hidden by the mount).
fn check_apart(store: &Path, mnt: &Path) -> Result<(), CliError> {
    let (store, mnt) = (resolved(store), resolved(mnt));
    if mnt.starts_with(&store) {
        return Err(CliError::Mount(format!(
            "{} is inside the store {}: choose a mount point outside it",
            mnt.display(),
            store.display()
        )));
    }
    if store.starts_with(&mnt) {
        return Err(CliError::Mount(format!(
            "the store {} is inside the mount point {}, which would hide it: choose a mount point outside it",
            store.display(),
            mnt.display()
        )));
    }
    Ok(())
}

/// Whether `dir` lists anything (an unreadable one counts as empty: the
/// mount itself then says what is wrong).
fn dir_has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_some())
}

/// Whether a daemon already serves `store` (one answers on its socket),
/// and where.
fn served_by(store: &Path) -> Option<String> {
    if dagfs::store::read_only_reason(store).is_some() {
        // A read-only store's daemon has no socket: its mount tells.
        let me = std::fs::canonicalize(store).ok()?;
        let live = mounts::mounts().ok()?.into_iter().find(|m| {
            m.is_dagfs()
                && std::fs::canonicalize(&m.source).is_ok_and(|s| s == me)
                && !mounts::is_stale(&m.mountpoint)
        });
        return live.map(|m| {
            format!(
                "store already served at {} (a read-only store's daemon)",
                m.mountpoint.display()
            )
        });
    }
    match client::connect(store) {
        Ok(Some(c)) => Some(format!(
            "store already served by pid {} at {}",
            c.server.pid.map_or("?".into(), |p| p.to_string()),
            c.server.mountpoint.as_deref().unwrap_or("?")
        )),
        Ok(None) => None,
        Err(e) => Some(format!("store already served by a daemon ({e})")),
    }
}

/// A stop signal (SIGTERM, SIGINT, SIGHUP: blocked in every thread) that
/// is pending, taken off the queue.
fn pending_stop_signal(sigs: &nix::sys::signal::SigSet) -> Option<i32> {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid signal set and timeout; no siginfo wanted.
    let sig = unsafe { libc::sigtimedwait(sigs.as_ref(), std::ptr::null_mut(), &zero) };
    (sig > 0).then_some(sig)
}

/// Whether nobody reads the readiness pipe any more (the `dagfs mount`
/// that started this daemon is gone).
fn reader_gone(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLERR != 0
}

/// Where a detached daemon logs: `<store>/daemon.log`, or for a store this
/// process cannot write, a file named after the store in the runtime (or
/// temporary) directory.
fn log_path(store: &Path) -> PathBuf {
    if dagfs::store::read_only_reason(store).is_none() {
        return store.join("daemon.log");
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let id = blake3::hash(store.as_os_str().as_encoded_bytes()).to_hex();
    dir.join(format!("dagfs-daemon-{}.log", &id[..16]))
}

/// Start `mount -f` as a detached daemon and wait until it reports.
fn detach(store: &Path, mnt: &Path, a: &MountArgs) -> Result<(), CliError> {
    let fail = |what: &str, e: std::io::Error| CliError::Mount(format!("{what}: {e}"));
    dagfs::store::create_store_dir(store).map_err(|e| CliError::Mount(e.to_string()))?;
    let log_path = log_path(store);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| fail("daemon.log", e))?;
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail("pipe", e.into()))?;
    let exe = std::env::current_exe().map_err(|e| fail("current executable", e))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--store")
        .arg(store)
        .arg("mount")
        .arg(mnt)
        .arg("-f")
        .arg("--ready-fd")
        .arg("3");
    for o in &a.options {
        cmd.arg("-o").arg(o);
    }
    if let Some(ui) = &a.ui {
        cmd.arg("--ui").arg(ui);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| fail("daemon.log", e))?)
        .stderr(log);
    let wfd = w.as_raw_fd();
    // SAFETY: only async-signal-safe calls (setsid, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| fail("starting the daemon", e))?;
    drop(w);
    // Lines "wait: ..." (passed on), then one "ok PID" or "error: ..."
    // (the daemon keeps the pipe open).
    let mut pipe = std::io::BufReader::new(std::fs::File::from(r));
    let mut line = String::new();
    let report = loop {
        line.clear();
        if !matches!(std::io::BufRead::read_line(&mut pipe, &mut line), Ok(n) if n > 0) {
            break String::new();
        }
        match line.trim().strip_prefix("wait: ") {
            Some(msg) => eprintln!("dagfs: {msg}"),
            None => break line.trim().to_string(),
        }
    };
    let report = report.as_str();
    if let Some(rest) = report.strip_prefix("ok") {
        let pid = rest.trim();
        eprintln!(
            "dagfs: mounted {} on {} (daemon pid {pid}; log {})",
            store.display(),
            mnt.display(),
            log_path.display()
        );
        return Ok(());
    }
    drop(child);
    if let Some(msg) = report.strip_prefix("error: ") {
        return Err(CliError::Mount(msg.to_string()));
    }
    let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(5).collect();
    Err(CliError::Mount(format!(
        "the daemon exited before the mount was live; last lines of {}:\n  {}",
        log_path.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
    )))
}

/// glibc gives each thread that allocates its own arena and keeps what is
/// freed there: the daemon's request threads and sled's made its resident
/// size 158 MB after listing a million keys, 107 MB with two arenas (92 MB
/// before listing). Set before any thread starts; only glibc has it.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes a malloc tunable; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Open the store for the daemon, waiting for its lock (and telling the
/// `dagfs mount` that started it why), or giving up on a stop signal, a
/// daemon that took the store meanwhile, or a starter that is gone.
fn open_store(
    store: &Path,
    sigs: &nix::sys::signal::SigSet,
    ready: Option<&OwnedFd>,
) -> Result<Arc<Cache>, CliError> {
    let mut told = false;
    let cache = Cache::open_waiting(store, CachePolicy::default(), &mut |holder| {
        use std::ops::ControlFlow::{Break, Continue};
        if let Some(sig) = pending_stop_signal(sigs) {
            return Break(format!(
                "stopped by signal {sig} while waiting for the store lock on {} (held by {holder})",
                store.display()
            ));
        }
        // NB: checked on every poll, not only once: the holder may be a
        // daemon that had not bound its socket yet.
        if let Some(served) = served_by(store) {
            return Break(served);
        }
        if ready.is_some_and(reader_gone) {
            return Break("the `dagfs mount` that started this daemon is gone".into());
        }
        if !std::mem::replace(&mut told, true) {
            let msg = format!(
                "waiting for the store lock on {} (held by {holder})",
                store.display()
            );
            eprintln!("dagfs: {msg}");
            tell(ready, &format!("wait: {msg}"));
        }
        Continue(())
    })
    .map_err(|e| match e {
        CacheError::Store(StoreError::GaveUp { reason, .. }) => CliError::Mount(reason),
        e => e.into(),
    })?;
    for note in cache.notes() {
        eprintln!("dagfs: {note}");
    }
    Ok(Arc::new(cache))
}

/// A line to the `dagfs mount` that started this daemon, if one did.
fn tell(ready: Option<&OwnedFd>, line: &str) {
    if let Some(fd) = ready {
        let _ = std::fs::File::from(fd.try_clone().expect("dup ready fd"))
            .write_all(format!("{line}\n").as_bytes());
    }
}

/// Mount the FUSE view and wait until the mount table shows it.
fn mount_view(
    store: &Path,
    mnt: &Path,
    o: &MountOpts,
    view: CacheView,
) -> Result<(fuser::BackgroundSession, Arc<Invalidator>), CliError> {
    let fs_opts = FsOptions {
        passthrough: o.passthrough,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        allow_other: o.allow_other,
        n_threads: o.threads.unwrap_or(DEFAULT_THREADS),
        fsname: store.display().to_string(),
        debug: o.debug,
        verify: o.verify,
    };
    let fs = DagFs::new(Arc::new(view), &fs_opts, Arc::new(FsCounters::default()));
    let inodes = fs.inodes();
    let session = dfs::mount(fs, mnt, &fs_opts)
        .map_err(|e| CliError::Mount(format!("cannot mount {}: {e}", mnt.display())))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mounts::is_dagfs_mount(mnt) {
        if Instant::now() > deadline {
            return Err(CliError::Mount(format!(
                "{} did not appear in mountinfo within 10 s",
                mnt.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let invalidator = Arc::new(Invalidator::new(inodes, session.notifier()));
    Ok((session, invalidator))
}

/// The socket server: each request runs as `cli::execute` would, with the
/// daemon's context.
fn start_server(
    store: &Path,
    mnt: &Path,
    cache: &Arc<Cache>,
    ctx: Ctx,
    on_removed: Arc<Invalidator>,
    gauges: Arc<Gauges>,
    stop_tx: &crossbeam::channel::Sender<()>,
) -> Result<Server, CliError> {
    let (handler_cache, release_cache) = (cache.clone(), cache.clone());
    Server::start(ServerConfig {
        socket: store.join("daemon.sock"),
        hello: Hello {
            protocol: PROTOCOL,
            agent: client::agent(),
            pid: Some(std::process::id()),
            mountpoint: Some(mnt.display().to_string()),
        },
        handler: Arc::new(move |session, req, out, err| {
            let mut ctx = ctx.clone();
            ctx.session = Some(session);
            let generation = handler_cache.store.blob_generation();
            let r = serve_request(req, out, err, &handler_cache, &ctx);
            // NB: blobs removed (gc, fsck --repair): the mount lets
            // go of their files now (their space returns).
            if handler_cache.store.blob_generation() != generation {
                on_removed.blobs_removed();
            }
            r
        }),
        on_session_end: Arc::new(move |session| release_cache.release(session)),
        gauges,
        on_shutdown: stop_tx.clone(),
    })
    .map_err(|e| {
        CliError::Mount(format!(
            "{}: cannot listen: {e}",
            store.join("daemon.sock").display()
        ))
    })
}

/// Send on `stop_tx` at a stop signal, or when an external `umount` ends
/// the FUSE session.
fn watch_for_stop(
    sigs: nix::sys::signal::SigSet,
    mnt: &Path,
    stop_tx: &crossbeam::channel::Sender<()>,
) {
    let tx = stop_tx.clone();
    std::thread::spawn(move || {
        if let Ok(sig) = sigs.wait() {
            eprintln!("dagfs: {sig:?}");
            let _ = tx.send(());
        }
    });
    let (tx, mnt) = (stop_tx.clone(), mnt.to_path_buf());
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250));
        if !mounts::is_dagfs_mount(&mnt) {
            let _ = tx.send(());
            return;
        }
    });
}

/// The daemon's remote tier for a store it can write: its settings, the
/// background uploader, the mount's lookups.
fn remote_tier(
    cache: &Arc<Cache>,
    runs: &Arc<Inflight>,
    o: &MountOpts,
) -> Result<(Arc<Uploader>, Arc<Lookups>), CliError> {
    let var = |k: &str| std::env::var(k).ok();
    let settings = Arc::new(RemoteSettings::new(
        cache.clone(),
        var("DAGFS_REMOTE"),
        var("DAGFS_REMOTE_TOKEN"),
    ));
    let uploader = Uploader::start(settings.clone())
        .map_err(|e| CliError::Mount(format!("cannot start the uploader: {e}")))?;
    let lookups = Lookups::new(settings, runs.clone(), o.remote_timeout);
    Ok((uploader, Arc::new(lookups)))
}

/// The daemon.
fn serve(
    store: &Path,
    mnt: &Path,
    o: &MountOpts,
    ui: Option<&str>,
    ready: Option<&OwnedFd>,
) -> Result<(), CliError> {
    limit_malloc_arenas();
    let sigs = super::block_stop_signals();
    let cache = open_store(store, &sigs, ready)?;
    // NB: a store this process cannot write has no socket (it would live
    // in the store), no uploads and no fetches: commands then run
    // embedded, reading it, and the daemon stops with its mount.
    let read_only = cache.store.read_only().is_some();
    let gauges = Arc::new(Gauges::default());
    let mut view = CacheView::new(cache.clone(), gauges.clone());
    // The runs' claims, shared by every request (identical keys join).
    let inflight: Arc<Inflight> = Arc::default();
    let (mut uploader, mut lookups) = (None, None);
    if !read_only {
        let (u, l) = remote_tier(&cache, &inflight, o)?;
        view = view.with_lookups(l.clone());
        (uploader, lookups) = (Some(u), Some(l));
    }
    let (session, invalidator) = mount_view(store, mnt, o, view)?;
    let watches = Arc::new(Watches::new(
        cache.clone(),
        gauges.watches.clone(),
        gauges.watch_answers.clone(),
    ));
    let uis = Arc::new(crate::ui::Servers::default());
    if let Some(listen) = ui {
        let token = std::env::var("DAGFS_UI_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let (url, _) = uis
            .start(cache.clone(), listen, token)
            .map_err(|e| CliError::Mount(format!("--ui {listen}: {e}")))?;
        eprintln!("dagfs: web view at {url}");
        // NB: a "wait: " line is passed on to the user by `detach`.
        tell(ready, &format!("wait: web view at {url}"));
    }
    let on_change = invalidator.clone();
    let ctx = Ctx {
        uis: Some(uis.clone()),
        watches: Some(watches.clone()),
        session: None,
        inflight,
        inputs_via: Some(mnt.to_path_buf()),
        running: Some(gauges.inflight_tasks.clone()),
        syncs: Some(gauges.syncs.clone()),
        on_change: Some(Arc::new(move |c: Change<'_>| match c {
            Change::Task { dag, task } => on_change.task_changed(dag, task),
            Change::Run(id) => on_change.run_finished(id),
        })),
        uploader: uploader.clone(),
    };
    let (stop_tx, stop_rx) = crossbeam::channel::bounded::<()>(8);
    let mut server = if read_only {
        eprintln!(
            "dagfs: the store {} is read-only: no socket (commands read it directly)",
            store.display()
        );
        None
    } else {
        Some(start_server(
            store,
            mnt,
            &cache,
            ctx,
            invalidator,
            gauges,
            &stop_tx,
        )?)
    };
    watch_for_stop(sigs, mnt, &stop_tx);
    // NB: before reporting ready, so `dagfs sync --list` right after
    // `dagfs mount` shows the watches a previous daemon had.
    if !read_only {
        watches.resume();
    }
    tell(ready, &format!("ok {}", std::process::id()));
    eprintln!(
        "dagfs: serving {} on {} (pid {}); stop with `dagfs umount {}`",
        store.display(),
        mnt.display(),
        std::process::id(),
        mnt.display()
    );
    let _ = stop_rx.recv();
    eprintln!("dagfs: stopping: letting running requests finish");
    if let Some(server) = server.as_mut() {
        server.stop();
    }
    if let Some(u) = &uploader {
        u.stop(Duration::from_secs(2));
    }
    if let Some(l) = &lookups {
        l.stop(Duration::from_secs(10));
    }
    watches.stop_all();
    uis.stop_all();
    cache.flush()?;
    drop(session);
    if mounts::is_dagfs_mount(mnt) {
        let _ = mounts::lazy_unmount(mnt);
    }
    eprintln!("dagfs: unmounted {}", mnt.display());
    Ok(())
}

/// FUSE request threads when `-o threads=N` is not given. Measured with
/// `scripts/bench-fuse` (2 vCPUs): warm reads and walks send no requests,
/// so the count only matters cold, where 4 beat 2 by ~10% for one reader and
/// lost by ~5% to it with two; 1 and 8 were slower.
const DEFAULT_THREADS: usize = 4;

pub fn umount(mnt: &Path) -> Result<(), CliError> {
    let mnt = absolute(mnt)?;
    let m = mounts::find(&mnt).map_err(|e| CliError::Mount(format!("reading mountinfo: {e}")))?;
    let Some(m) = m else {
        return Err(CliError::NotFound(format!(
            "{} is not mounted",
            mnt.display()
        )));
    };
    if !m.is_dagfs() {
        return Err(CliError::Usage(format!(
            "{} is a {} mount, not dagfs",
            mnt.display(),
            m.fstype
        )));
    }
    let store = PathBuf::from(&m.source);
    match client::connect(&store) {
        Ok(Some(mut c)) => {
            c.shutdown()?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while mounts::is_dagfs_mount(&mnt) {
                if Instant::now() > deadline {
                    return Err(CliError::Mount(format!(
                        "the daemon did not unmount {} within 60 s",
                        mnt.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // The daemon removes its socket last: wait for it, so a command
            // right after this one runs embedded, not against a dying daemon.
            while store.join("daemon.sock").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            eprintln!("dagfs: unmounted {}", mnt.display());
        }
        _ if dagfs::store::read_only_reason(&store).is_some() && !mounts::is_stale(&mnt) => {
            mounts::lazy_unmount(&mnt)
                .map_err(|e| CliError::Mount(format!("{}: {e}", mnt.display())))?;
            eprintln!(
                "dagfs: unmounted {} (the daemon of a read-only store has no socket; it stops with its mount)",
                mnt.display()
            );
        }
        _ => {
            mounts::lazy_unmount(&mnt)
                .map_err(|e| CliError::Mount(format!("{}: {e}", mnt.display())))?;
            eprintln!(
                "dagfs: no daemon serves {} (it died); unmounted it lazily",
                mnt.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options() {
        let o = parse_opts(&[
            "allow_other,passthrough=off".into(),
            "store=/s,threads=8,defaults,x-systemd.automount".into(),
        ])
        .unwrap();
        assert!(o.allow_other && o.passthrough == Passthrough::Off);
        assert_eq!(
            parse_opts(&["passthrough=on".into()]).unwrap().passthrough,
            Passthrough::On
        );
        assert_eq!(o.threads, Some(8));
        assert_eq!(o.store, Some(PathBuf::from("/s")));
        assert!(parse_opts(&["rw".into()]).is_err());
        let e = parse_opts(&["bogus".into()]).unwrap_err();
        assert!(e.to_string().contains("bogus"));
        assert!(parse_opts(&["threads=0".into()]).is_err());
        assert_eq!(parse_opts(&[]).unwrap().verify, Verify::FirstOpen);
        let v = parse_opts(&["verify=always".into()]).unwrap();
        assert_eq!(v.verify, Verify::Always);
        assert!(parse_opts(&["verify=maybe".into()]).is_err());
        assert_eq!(parse_opts(&[]).unwrap().remote_timeout, REMOTE_TIMEOUT);
        for (v, ms) in [("250ms", 250), ("2s", 2000), ("1m", 60_000)] {
            let o = parse_opts(&[format!("remote_timeout={v}")]).unwrap();
            assert_eq!(o.remote_timeout, Duration::from_millis(ms), "{v}");
        }
        for v in ["0s", "soon", "11m", ""] {
            let e = parse_opts(&[format!("remote_timeout={v}")]).unwrap_err();
            assert!(e.to_string().contains("remote_timeout"), "{v}: {e}");
        }
    }
}
