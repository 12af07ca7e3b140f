//! `mount.dagfs`: the mount(8) helper for dagfs.
//!
//! mount(8) runs `/sbin/mount.<type>` for a type it does not know in the
//! kernel (see `man 8 mount`, "EXTERNAL HELPERS"), so with this helper
//! installed as `/sbin/mount.dagfs`, `mount -t dagfs STORE DIR`, an
//! `/etc/fstab` line of type `dagfs` and a systemd `Type=dagfs` mount unit
//! all mount a dagfs store:
//!
//! ```text
//! mount.dagfs SOURCE DIR [-sfnvrw] [-N NAMESPACE] [-o OPTIONS]... [-t TYPE]
//! ```
//!
//! SOURCE is the store directory (or `-o store=PATH`, which wins), DIR the
//! mount point. The helper checks and normalizes the options
//! ([`options`]), finds `dagfs` ([`locate`]), and replaces itself with
//! `dagfs --store STORE mount DIR -o OPTIONS` ([`plan`]): `dagfs mount`
//! detaches its daemon and exits once the mount is live, or fails saying
//! why, and its exit status is the helper's. Flags: `-s` ignores unknown
//! options, `-f` does everything but the mount, `-v` says what it does, `-n`
//! (no mtab) and `-r` (read-only) change nothing, `-w` is refused, `-N`
//! mounts in that namespace, `-t` is accepted.
//!
//! Layers: `main` (process, environment, file system checks, exec) calls
//! `args` → `options` → `locate` → `plan`, which are pure but for `locate`'s
//! look at the file system. Errors and their exit codes live in [`error`].
//! The binary is built as `mount-dagfs` (Cargo refuses a `.` in a binary's
//! name) and installed as `mount.dagfs` by `scripts/install`.

mod args;
mod error;
mod locate;
mod options;
mod plan;

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use args::{Parsed, USAGE};
use error::Error;

fn main() -> ExitCode {
    match run(std::env::args_os().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mount.dagfs: {err}");
            if err.wants_usage() {
                eprintln!("{USAGE}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}

/// Returns only for `-f`, `--help`, `--version` or an error: otherwise the
/// process becomes `dagfs`.
fn run(argv: impl IntoIterator<Item = std::ffi::OsString>) -> Result<(), Error> {
    let inv = match args::parse(argv)? {
        Parsed::Mount(inv) => inv,
        Parsed::Help => {
            print!("{}", help());
            return Ok(());
        }
        Parsed::Version => {
            println!("mount.dagfs {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
    };
    if inv.read_write {
        return Err(Error::ReadWrite { how: "flag `-w`" });
    }
    let norm = options::normalize(&inv.options, inv.sloppy, caller_is_mount8())?;

    let store = existing_dir(&plan::store_path(&inv, &norm))
        .map_err(|(path, err)| Error::NoStore { path, err })?;
    let dir = existing_dir(Path::new(&inv.dir))
        .map_err(|(path, err)| Error::NoMountPoint { path, err })?;
    let own_exe = std::env::current_exe().ok();
    let dagfs = locate::find_dagfs(
        own_exe.as_deref(),
        std::env::var_os("PATH").as_deref(),
        locate::FALLBACKS,
    )?;
    let argv = plan::command(&inv, &norm, &dagfs, &store, &dir);

    if inv.verbose {
        for note in plan::notes(&inv, &norm) {
            eprintln!("mount.dagfs: {note}");
        }
        let verb = if inv.fake { "would run" } else { "running" };
        eprintln!("mount.dagfs: {verb}: {}", plan::shell_line(&argv));
    }
    if inv.fake {
        return Ok(());
    }
    exec(&argv)
}

/// Whether mount(8) ran this helper: then `rw` is its default, not a request
/// (see [`options`]). NB: mount(8) forks and the child execs the helper, so
/// the parent is mount(8) itself; `comm` is readable even when mount(8) runs
/// setuid for a user mount and this helper does not.
fn caller_is_mount8() -> bool {
    let ppid = std::os::unix::process::parent_id();
    std::fs::read_to_string(format!("/proc/{ppid}/comm"))
        .is_ok_and(|comm| comm.trim_end() == "mount")
}

/// `path` made absolute (`dagfs mount` detaches, so a relative path would
/// not survive), if it is a directory.
fn existing_dir(path: &Path) -> Result<PathBuf, (PathBuf, io::Error)> {
    let abs = std::path::absolute(path).map_err(|err| (path.to_owned(), err))?;
    match std::fs::metadata(&abs) {
        Ok(meta) if meta.is_dir() => Ok(abs),
        // NB: ENOTDIR (20 on Linux) by number: `ErrorKind::NotADirectory`
        // is newer than the workspace's rust-version.
        Ok(_) => Err((abs, io::Error::from_raw_os_error(20))),
        // ENOTCONN (107): a dead FUSE mount; `dagfs mount` recovers it.
        Err(err) if err.raw_os_error() == Some(107) => Ok(abs),
        Err(err) => Err((abs, err)),
    }
}

/// The `$PATH` `dagfs` gets when the helper has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Replaces this process with `argv`; returns only if that fails.
///
/// NB: util-linux mount(8) runs helpers without `$PATH` (and `$HOME`), but
/// `dagfs` may need one (`fusermount3` for a user's mount), and so does
/// finding `nsenter`: Rust looks a bare program name up in the `$PATH` set
/// here.
fn exec(argv: &[std::ffi::OsString]) -> Result<(), Error> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    let err = cmd.exec();
    Err(Error::Exec {
        program: PathBuf::from(&argv[0]),
        err,
    })
}

fn help() -> String {
    format!(
        "{USAGE}

Mounts the dagfs store SOURCE read-only at DIR, by running
`dagfs --store SOURCE mount DIR -o OPTIONS`. mount(8) runs it for
`mount -t dagfs`, fstab lines and systemd mount units of type dagfs.

  -o OPTIONS  comma-separated; may repeat. dagfs: allow_other, debug,
              passthrough=auto|on|off, threads=N, verify=first-open|always|off,
              store=PATH (instead of SOURCE),
              nosuid, nodev, noexec, exec, noatime, relatime, ro.
              Ignored: defaults, auto, noauto, user, users, nouser, nofail,
              _netdev, comment=..., x-*. Refused: rw.
  -s          sloppy: ignore unknown options instead of failing
  -f          fake: check everything, find dagfs, but do not mount
  -v          verbose: say what is ignored and the command run
  -n, -r      accepted (dagfs writes no mtab, and is always read-only)
  -w          refused: dagfs is read-only
  -N NS       mount in the mount namespace NS (a file or a pid), via nsenter
  -t TYPE     accepted
"
    )
}
