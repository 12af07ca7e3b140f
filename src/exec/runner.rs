//! Starting task processes. `exec` runs commands only through the `Runner`
//! trait, so tests can substitute a fake.
//!
//! `ShellRunner` runs `sh -c COMMAND` in its own process group with a
//! scrubbed environment, stdin from /dev/null and stdout/stderr to files,
//! isolated (`isolate`: its own PID and mount namespaces, the store
//! read-only but for its output and temporary directory) where the command
//! asks and the kernel allows. When the shell exits, every process of its
//! namespace is gone (the kernel kills them before the shell, PID 1, can be
//! reaped); not isolated, its whole group is killed. So no leftover
//! background process can still write into the output while it is ingested.
//! A command with a `timeout` that is still running when it expires is
//! killed by pid (isolated: its leader, and so its namespace) and group
//! (before it is reaped, so the ids cannot have been reused) and reports
//! `timed_out`.
//!
//! A command with an `output_limit` has its output directory measured while
//! it runs (first after 50 ms, then at an interval twenty times as long as
//! the last measurement took, between 100 ms and 1 s); once its files add
//! up to more than the limit, its group is killed the same way and the exit
//! reports `output_over`. So a runaway task cannot fill the disk: it writes
//! at most about one interval's worth past its limit.
//!
//! The process groups of the tasks running now are kept in a process-wide
//! registry, so the daemon can tell a task's processes from its clients
//! (`task_of`): a task must not drive the daemon that runs it.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use super::hermetic::{self, Observed};

/// What to run.
#[derive(Debug, Clone)]
pub struct Command {
    pub script: String,
    pub cwd: PathBuf,
    /// The complete environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Kill the command's process group if it runs longer than this.
    pub timeout: Option<Duration>,
    /// Kill the command's process group once the regular files under this
    /// directory add up to more than this many bytes.
    pub output_limit: Option<(PathBuf, u64)>,
    /// Run it isolated (`isolate`), where the kernel allows.
    pub isolation: Option<super::isolate::Isolation>,
}

#[derive(Debug, Clone)]
pub struct Exit {
    /// The exit code, or 128 + signal number.
    pub code: i32,
    pub duration: Duration,
    /// Killed because it ran past `Command::timeout`.
    pub timed_out: bool,
    /// Killed because its output grew past `Command::output_limit`: the
    /// bytes measured then.
    pub output_over: Option<u64>,
    /// What it opened, where the command's isolation asked (`hermetic`).
    pub observed: super::hermetic::Observed,
}

pub trait Runner: Send + Sync {
    fn run(&self, cmd: &Command) -> std::io::Result<Exit>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ShellRunner;

impl Runner for ShellRunner {
    fn run(&self, cmd: &Command) -> std::io::Result<Exit> {
        let start = Instant::now();
        let stdout = File::create(&cmd.stdout)?;
        let stderr = File::create(&cmd.stderr)?;
        let mut observer = None;
        let mut observed = Observed::NotAsked;
        let mut mounts = Vec::new();
        let mut prepared = None;
        if let Some(iso) = &cmd.isolation {
            use super::isolate::{status, Prepared, Status};
            let root = *status() == Status::Root;
            if iso.observe.is_some() {
                match hermetic::unobservable(root) {
                    Some(why) => observed = Observed::Unobservable(why),
                    None => match hermetic::Observer::for_task() {
                        Ok(o) => observer = Some(o),
                        Err(e) => {
                            observed = Observed::Unobservable(format!("fanotify refused: {e}"))
                        }
                    },
                }
            }
            match status() {
                Status::Root => {
                    let p = Prepared::new(iso, false, observer.as_ref())?;
                    mounts = p.watched();
                    prepared = Some(p);
                }
                Status::User => prepared = Some(Prepared::new(iso, true, None)?),
                Status::Off(_) => {}
            }
        }
        // NB: spawned and registered under `SPAWNING`, so `task_of` cannot
        // look at one of its processes before its group is known.
        let spawning = SPAWNING.read().unwrap_or_else(|p| p.into_inner());
        let mut child = match prepared {
            Some(p) => {
                use std::os::fd::AsRawFd;
                let null = File::open("/dev/null")?;
                let exec = super::isolate::Exec::new(
                    "/bin/sh",
                    &["-c", &cmd.script],
                    &cmd.env,
                    &cmd.cwd,
                    [null.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
                )?;
                Proc::Isolated(p.spawn(&exec)?)
            }
            None => Proc::Plain(
                std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&cmd.script)
                    .current_dir(&cmd.cwd)
                    .env_clear()
                    .envs(cmd.env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .stdout(stdout)
                    .stderr(stderr)
                    .process_group(0)
                    .spawn()?,
            ),
        };
        let watching = match observer.map(|o| o.start()) {
            None => None,
            Some(Ok(w)) => Some(w),
            Some(Err(e)) => {
                observed = Observed::Unobservable(format!("cannot watch the task's opens: {e}"));
                None
            }
        };
        let pgid = child.id() as i32;
        TASK_GROUPS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pgid);
        drop(spawning);
        let _registered = Registered(pgid);
        let mut timed_out = false;
        let mut output_over = None;
        let deadline = cmd.timeout.map(|t| start + t);
        let mut next_check = start + FIRST_CHECK;
        loop {
            let wake = match (&cmd.output_limit, deadline) {
                (None, None) => break,
                (None, Some(d)) => d,
                (Some(_), None) => next_check,
                (Some(_), Some(d)) => d.min(next_check),
            };
            if exits_before(&mut child, wake)? {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                timed_out = true;
                kill_task(pgid);
                break;
            }
            if let Some((dir, limit)) = &cmd.output_limit {
                let t = Instant::now();
                let bytes = bytes_under(dir, *limit);
                if bytes > *limit {
                    output_over = Some(bytes);
                    kill_task(pgid);
                    break;
                }
                next_check = Instant::now() + (t.elapsed() * 20).clamp(MIN_CHECK, MAX_CHECK);
            }
        }
        let status = child.wait()?;
        match &child {
            // NB: PID 1 was reaped, so nothing of the task is left (and
            // its leader, still in the group, is exiting).
            Proc::Isolated(c) if c.task_is_over() => {}
            // The leader died first (a kill): PID 1 and its namespace die
            // with it, but after; the group kill waits for them.
            _ => kill_group(pgid),
        }
        // NB: isolated, the shell's exit is seen only once every process of
        // its namespace is gone: nothing opens anything after this.
        if let Some(w) = watching {
            observed = match w.finish() {
                Ok(seen) => Observed::Seen { seen, mounts },
                Err(e) => Observed::Unobservable(format!("watching the task's opens failed: {e}")),
            };
        }
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Ok(Exit {
            code,
            duration: start.elapsed(),
            timed_out,
            output_over,
            observed,
        })
    }
}

/// When a running task's output is first measured, and the bounds of the
/// interval between measurements after that.
const FIRST_CHECK: Duration = Duration::from_millis(50);
const MIN_CHECK: Duration = Duration::from_millis(100);
const MAX_CHECK: Duration = Duration::from_secs(1);

/// The bytes of the regular files under `dir` (symlinks not followed),
/// counting no further once past `limit`. Entries that vanish or cannot be
/// read while the task changes them are skipped: the output is measured
/// again at the next check, and in full when it is ingested.
fn bytes_under(dir: &std::path::Path, limit: u64) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                if let Ok(m) = e.metadata() {
                    total = total.saturating_add(m.len());
                    if total > limit {
                        return total;
                    }
                }
            }
        }
    }
    total
}

/// Process group ids (= the shell's pid) of the tasks running now.
static TASK_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Held shared by each spawn until its group is registered, and exclusively
/// by `task_of`: spawns do not wait for each other (a spawn with its mounts
/// is a large part of a short task), only for a `task_of` in progress.
static SPAWNING: RwLock<()> = RwLock::new(());

/// Removes a task's group from the registry once it is gone (any path).
struct Registered(i32);

impl Drop for Registered {
    fn drop(&mut self) {
        TASK_GROUPS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// The process group of the running task (of this process) that `pid`
/// belongs to: it is in that group, or descends from its shell (even after
/// `setsid`). `Some(-1)` when `pid` cannot be looked at (already gone) while
/// tasks run: it cannot be told apart. A process that left the group *and*
/// was reparented away from the task (double fork + setsid) is not found.
pub fn task_of(pid: i32) -> Option<i32> {
    let _quiet = SPAWNING.write().unwrap_or_else(|p| p.into_inner());
    let groups = TASK_GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    if groups.is_empty() {
        return None;
    }
    let me = std::process::id() as i32;
    let mut p = pid;
    // Bounded: a parent chain is never longer than the pid space, and a
    // pid reused mid-walk must not loop forever.
    for _ in 0..4096 {
        if p == me || p <= 1 {
            return None;
        }
        if groups.contains(&p) {
            return Some(p);
        }
        let Some((ppid, pgrp)) = stat_parent_group(p) else {
            // /proc itself unreadable: nothing can be checked.
            return std::fs::metadata("/proc/self/stat").is_ok().then_some(-1);
        };
        if groups.contains(&pgrp) {
            return Some(pgrp);
        }
        p = ppid;
    }
    None
}

/// (ppid, pgrp) of `pid`, from `/proc/<pid>/stat`.
fn stat_parent_group(pid: i32) -> Option<(i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`: comm may hold anything but ends at
    // the last `)`.
    let mut f = s.rsplit_once(')')?.1.split_whitespace().skip(1);
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// A task's shell: spawned by std (not isolated), or by `isolate`.
enum Proc {
    Plain(std::process::Child),
    Isolated(super::isolate::Spawned),
}

impl Proc {
    fn id(&self) -> u32 {
        match self {
            Proc::Plain(c) => c.id(),
            Proc::Isolated(c) => c.id(),
        }
    }

    /// The task's status once it is over: the shell's (isolated: PID 1's,
    /// once every process of its namespace is gone).
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Proc::Plain(c) => c.wait(),
            Proc::Isolated(c) => c.wait_task(),
        }
    }
}

/// Wait until `child` has exited (true) or `deadline` has passed (false),
/// without reaping it: its pid, and so its process group id, stay ours.
fn exits_before(child: &mut Proc, deadline: Instant) -> std::io::Result<bool> {
    use std::os::fd::{FromRawFd, OwnedFd};
    if let Proc::Isolated(c) = child {
        // Readable once PID 1's status was sent (or the leader died).
        return match c.done_fd() {
            Some(fd) => readable_before(fd, deadline),
            None => Ok(true),
        };
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        // No pidfd (Linux < 5.3): poll the child. NB: `try_wait` reaps only
        // when it has exited, and then the group is killed right after.
        loop {
            let exited = match child {
                Proc::Plain(c) => c.try_wait()?.is_some(),
                Proc::Isolated(_) => true,
            };
            if exited {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by no one else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    readable_before(std::os::fd::AsRawFd::as_raw_fd(&pidfd), deadline)
}

/// Wait until `fd` is readable (true) or `deadline` has passed (false).
fn readable_before(fd: std::os::fd::RawFd, deadline: Instant) -> std::io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, its count, a timeout.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            n if n > 0 => return Ok(true),
            0 => {}
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Kill a running task: its process by pid (unreaped, so still ours):
/// isolated, the leader, whose death takes PID 1 and so every process of
/// the namespace along, even a shell that left the group (`exec setsid`);
/// then its group.
fn kill_task(pid: i32) {
    // SAFETY: our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    kill_group(pid);
}

/// SIGKILL a process group and wait (bounded) for it to be gone.
fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let pg = Pid::from_raw(pgid);
    if killpg(pg, Signal::SIGKILL).is_err() {
        return; // ESRCH: nothing left.
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        if killpg(pg, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
