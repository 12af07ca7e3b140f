//! `mount.dagfs`, the mount(8) helper (`mount-helper/`), driven the way
//! mount(8) and people run it.
//!
//! - Option checks, with `-f` (fake): `rw` and unknown options fail naming
//!   them; `-s` lets unknown ones through, and `-f` mounts nothing.
//! - End to end: a real FUSE mount of a store holding one task's output,
//!   through `mount -t dagfs` when `/sbin/mount.dagfs` is there (or this test
//!   may put it there: as root with `CI=true` or `DAGFS_TEST_INSTALL=1`), else
//!   through the helper run directly; then `umount` (util-linux) or
//!   `dagfs umount`.
//!
//! The helper is the workspace binary `mount-dagfs` (Cargo refuses a `.` in
//! a binary's name), built next to `dagfs` by `cargo build --workspace`; the
//! tests copy both into a `bin/` as `dagfs` and `mount.dagfs`, as
//! `scripts/install` does, so the helper finds this build's `dagfs` next to
//! itself.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const SBIN_HELPER: &str = "/sbin/mount.dagfs";

fn dagfs_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dagfs"))
}

/// The built helper, beside the built `dagfs`.
fn helper_exe() -> PathBuf {
    let helper = dagfs_exe().parent().unwrap().join("mount-dagfs");
    assert!(
        helper.is_file(),
        "{} is missing: `cargo build --workspace` (or `cargo build -p mount-helper`) builds it",
        helper.display()
    );
    helper
}

/// A scratch area: `bin/` with both binaries as installed, an empty store
/// directory and a mount point. Paths are canonical, as /proc/mounts shows
/// them.
struct Scratch {
    _tmp: TempDir,
    bin: PathBuf,
    store: PathBuf,
    mnt: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (bin, store, mnt) = (root.join("bin"), root.join("store"), root.join("mnt"));
        for dir in [&bin, &store, &mnt] {
            fs::create_dir(dir).unwrap();
        }
        fs::copy(dagfs_exe(), bin.join("dagfs")).unwrap();
        fs::copy(helper_exe(), bin.join("mount.dagfs")).unwrap();
        Scratch {
            _tmp: tmp,
            bin,
            store,
            mnt,
        }
    }

    fn helper(&self) -> Command {
        Command::new(self.bin.join("mount.dagfs"))
    }

    fn dagfs(&self) -> Command {
        Command::new(self.bin.join("dagfs"))
    }
}

/// How long any one command may take: `dagfs mount` must return once the
/// mount is live, and `dagfs umount` gives up on its own after 60 s.
const COMMAND_LIMIT: Duration = Duration::from_secs(90);

/// Runs `cmd` to completion, or kills it after `limit` and says so.
/// NB: stdout and stderr go to files, not pipes: `dagfs mount` leaves a
/// daemon behind, and a daemon holding a pipe would keep a reader waiting.
fn try_run(limit: Duration, cmd: &mut Command) -> Result<Output, String> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut status = None;
    wait_for(limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let stderr = fs::read(err.path()).unwrap();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "{cmd:?} did not finish within {limit:?}; its stderr: {}",
            text(&stderr)
        ));
    };
    Ok(Output {
        status,
        stdout: fs::read(out.path()).unwrap(),
        stderr,
    })
}

/// [`try_run`] with [`COMMAND_LIMIT`], failing the test if it times out.
fn run(cmd: &mut Command) -> Output {
    try_run(COMMAND_LIMIT, cmd).unwrap_or_else(|e| panic!("{e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One line of /proc/mounts.
#[derive(Debug)]
struct MountEntry {
    source: String,
    fstype: String,
    options: Vec<String>,
}

/// The entry mounted at `target` (the last one: the one on top), if any.
fn mount_at(target: &Path) -> Option<MountEntry> {
    let table = fs::read_to_string("/proc/mounts").unwrap();
    table.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        (f.len() >= 4 && unescape(f[1]) == target.to_string_lossy()).then(|| MountEntry {
            source: unescape(f[0]),
            fstype: f[2].to_owned(),
            options: f[3].split(',').map(str::to_owned).collect(),
        })
    })
}

/// Undoes /proc/mounts' octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `done` every 20 ms until it holds or `timeout` passes.
fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective uid.
    fs::metadata("/proc/self").unwrap().uid() == 0
}

#[test]
fn helper_refuses_rw_saying_dagfs_is_read_only() {
    let s = Scratch::new();
    let out = run(s
        .helper()
        .arg(&s.store)
        .arg(&s.mnt)
        .args(["-f", "-o", "rw"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("`rw`") && stderr.contains("read-only"),
        "stderr: {stderr}"
    );

    let out = run(s.helper().arg(&s.store).arg(&s.mnt).args(["-w", "-f"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("`-w`") && stderr.contains("read-only"),
        "stderr: {stderr}"
    );
    assert!(mount_at(&s.mnt).is_none());
}

#[test]
fn helper_refuses_unknown_options_naming_them() {
    let s = Scratch::new();
    let out = run(s
        .helper()
        .arg(&s.store)
        .arg(&s.mnt)
        .args(["-f", "-o", "allow_other,bogus"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("`bogus`"), "stderr: {stderr}");
    assert!(
        !stderr.contains("`allow_other`"),
        "only the unknown option is named: {stderr}"
    );
}

#[test]
fn sloppy_fake_helper_accepts_unknown_options_and_mounts_nothing() {
    let s = Scratch::new();
    // Flags after, between and before the operands, as mount(8) and people
    // write them.
    let out = run(s
        .helper()
        .args(["-s", "-o", "bogus,allow_other"])
        .arg(&s.store)
        .arg("-v")
        .arg(&s.mnt)
        .arg("-f"));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let planned = stderr
        .lines()
        .find_map(|l| l.strip_prefix("mount.dagfs: would run: "))
        .unwrap_or_else(|| panic!("-v names the command it would run: {stderr}"));
    let expected = format!(
        "{} --store {} mount {} -o allow_other",
        s.bin.join("dagfs").display(),
        s.store.display(),
        s.mnt.display()
    );
    assert_eq!(planned, expected);
    assert!(mount_at(&s.mnt).is_none(), "-f mounted {}", s.mnt.display());
    assert!(!s.store.join("daemon.sock").exists(), "-f started a daemon");
}

/// `/sbin/mount.dagfs`, put there by this test: a symlink to the scratch
/// `bin/mount.dagfs`, so that the helper finds this build's `dagfs` next to
/// itself (mount(8) runs helpers without `$PATH`). Removed on drop.
struct InstalledHelper;

impl InstalledHelper {
    fn install(helper: &Path) -> Option<InstalledHelper> {
        std::os::unix::fs::symlink(helper, SBIN_HELPER).ok()?;
        Some(InstalledHelper)
    }
}

impl Drop for InstalledHelper {
    fn drop(&mut self) {
        let _ = fs::remove_file(SBIN_HELPER);
    }
}

/// Unmounts on every path out of the test: `dagfs umount`, then a lazy
/// `umount -l` if the mount is still there; then waits (bounded) for the
/// daemon to let go of the store, which is about to be deleted.
struct MountGuard<'a> {
    s: &'a Scratch,
}

impl Drop for MountGuard<'_> {
    fn drop(&mut self) {
        let mnt = &self.s.mnt;
        if mount_at(mnt).is_some() {
            let _ = try_run(COMMAND_LIMIT, self.s.dagfs().arg("umount").arg(mnt));
        }
        if mount_at(mnt).is_some() {
            let _ = try_run(COMMAND_LIMIT, Command::new("umount").arg("-l").arg(mnt));
        }
        wait_for(Duration::from_secs(10), || {
            !self.s.store.join("daemon.sock").exists()
        });
    }
}

/// How the end-to-end test mounts.
enum Route {
    /// `mount -t dagfs` through `/sbin/mount.dagfs`, unmounted with `umount`.
    Mount8,
    /// The helper run directly, unmounted with `dagfs umount`.
    Direct,
}

#[test]
fn mounts_a_store_through_the_helper_and_unmounts_it() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: no /dev/fuse on this machine");
        return;
    }
    let fusermount = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !is_root() && !fusermount {
        eprintln!(
            "skipped: not root, and no fusermount3 (apt-get install fuse3) to mount as a user"
        );
        return;
    }
    let s = Scratch::new();

    // A store holding one task's output, to read back through the mount.
    let pipeline = s.store.parent().unwrap().join("pipeline");
    fs::create_dir(&pipeline).unwrap();
    fs::write(
        pipeline.join("dagfs.toml"),
        "name = \"helpertest\"\n\n[tasks.hello]\nrun = \"echo 'hello from dagfs' > $DAGFS_OUT/greeting.txt\"\n",
    )
    .unwrap();
    let out = run(s
        .dagfs()
        .arg("--store")
        .arg(&s.store)
        .arg("run")
        .arg("-f")
        .arg(pipeline.join("dagfs.toml")));
    assert!(out.status.success(), "dagfs run: {}", text(&out.stderr));

    let installed = fs::symlink_metadata(SBIN_HELPER).is_ok();
    let may_install = is_root()
        && (std::env::var("CI").as_deref() == Ok("true")
            || std::env::var("DAGFS_TEST_INSTALL").as_deref() == Ok("1"));
    // NB: declared before the mount guard, so the helper is removed only
    // after the unmount.
    let mut installed_here: Option<InstalledHelper> = None;
    let route = if installed {
        eprintln!(
            "note: using the installed {SBIN_HELPER}, which runs the dagfs next to it or \
             /usr/local/bin/dagfs, not necessarily this build"
        );
        Route::Mount8
    } else if may_install {
        installed_here = InstalledHelper::install(&s.bin.join("mount.dagfs"));
        if installed_here.is_some() {
            Route::Mount8
        } else {
            Route::Direct
        }
    } else {
        Route::Direct
    };

    let how = if matches!(route, Route::Direct) {
        "mount.dagfs"
    } else {
        "mount -t dagfs"
    };
    eprintln!("mounting with {how}");
    let guard = MountGuard { s: &s };
    let out = match &route {
        Route::Mount8 => run(Command::new("mount")
            .args(["-v", "-t", "dagfs", "-o", "passthrough=off"])
            .arg(&s.store)
            .arg(&s.mnt)),
        Route::Direct => {
            run(s
                .helper()
                .arg(&s.store)
                .arg(&s.mnt)
                .args(["-v", "-o", "passthrough=off"]))
        }
    };
    assert!(
        out.status.success(),
        "{how} failed ({}): {}",
        out.status,
        text(&out.stderr)
    );

    assert!(
        wait_for(Duration::from_secs(20), || mount_at(&s.mnt).is_some()),
        "{} never appeared in /proc/mounts after {how}",
        s.mnt.display()
    );
    let entry = mount_at(&s.mnt).unwrap();
    assert_eq!(entry.fstype, "fuse.dagfs", "{entry:?}");
    assert_eq!(entry.source, s.store.to_string_lossy(), "{entry:?}");
    for opt in ["ro", "nosuid", "nodev"] {
        assert!(
            entry.options.iter().any(|o| o == opt),
            "no `{opt}` in {entry:?}"
        );
    }

    let top: Vec<String> = fs::read_dir(&s.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for dir in ["keys", "dags", "runs"] {
        assert!(
            top.iter().any(|n| n == dir),
            "no {dir}/ at the top of the mount: {top:?}"
        );
    }
    let greeting = fs::read_to_string(s.mnt.join("dags/helpertest/hello/greeting.txt")).unwrap();
    assert_eq!(greeting, "hello from dagfs\n");

    let out = match &route {
        Route::Mount8 => run(Command::new("umount").arg(&s.mnt)),
        Route::Direct => run(s.dagfs().arg("umount").arg(&s.mnt)),
    };
    assert!(
        out.status.success(),
        "unmounting failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        wait_for(Duration::from_secs(20), || mount_at(&s.mnt).is_none()),
        "{} still mounted after unmounting",
        s.mnt.display()
    );
    // The daemon goes away with its mount, however it was unmounted: it
    // removes its socket last.
    assert!(
        wait_for(Duration::from_secs(30), || !s
            .store
            .join("daemon.sock")
            .exists()),
        "the daemon outlived its mount: {} is still there",
        s.store.join("daemon.sock").display()
    );
    drop(guard);
    drop(installed_here);
}
