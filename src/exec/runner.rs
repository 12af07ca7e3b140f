//! Starting task processes. `exec` runs commands only through the `Runner`
//! trait, so tests can substitute a fake.
//!
//! `ShellRunner` runs `sh -c COMMAND` in its own process group with a
//! scrubbed environment, stdin from /dev/null and stdout/stderr to files.
//! When the shell exits, the whole group is killed, so no leftover
//! background process can still write into the output while it is ingested.
//! A command with a `timeout` that is still running when it expires has its
//! whole group killed the same way (before the shell is reaped, so the
//! group id cannot have been reused) and reports `timed_out`.

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + signal number.
    pub code: i32,
    pub duration: Duration,
    /// Killed because it ran past `Command::timeout`.
    pub timed_out: bool,
}

pub trait Runner: Send + Sync {
    fn run(&self, cmd: &Command) -> std::io::Result<Exit>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ShellRunner;

impl Runner for ShellRunner {
    fn run(&self, cmd: &Command) -> std::io::Result<Exit> {
        let start = Instant::now();
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd.script)
            .current_dir(&cmd.cwd)
            .env_clear()
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(File::create(&cmd.stdout)?)
            .stderr(File::create(&cmd.stderr)?)
            .process_group(0)
            .spawn()?;
        let pgid = child.id() as i32;
        let mut timed_out = false;
        if let Some(limit) = cmd.timeout {
            if !exits_before(&mut child, start + limit)? {
                timed_out = true;
                kill_group(pgid);
            }
        }
        let status = child.wait()?;
        kill_group(pgid);
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Ok(Exit {
            code,
            duration: start.elapsed(),
            timed_out,
        })
    }
}

/// Wait until `child` has exited (true) or `deadline` has passed (false),
/// without reaping it: its pid, and so its process group id, stay ours.
fn exits_before(child: &mut std::process::Child, deadline: Instant) -> std::io::Result<bool> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        // No pidfd (Linux < 5.3): poll the child. NB: `try_wait` reaps only
        // when it has exited, and then the group is killed right after.
        loop {
            if child.try_wait()?.is_some() {
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
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&pidfd),
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
