//! Starting task processes. `exec` runs commands only through the `Runner`
//! trait, so tests can substitute a fake.
//!
//! `ShellRunner` runs `sh -c COMMAND` in its own process group with a
//! scrubbed environment, stdin from /dev/null and stdout/stderr to files.
//! When the shell exits, the whole group is killed, so no leftover
//! background process can still write into the output while it is ingested.

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + signal number.
    pub code: i32,
    pub duration: Duration,
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
        let status = child.wait()?;
        kill_group(pgid);
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Ok(Exit {
            code,
            duration: start.elapsed(),
        })
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
