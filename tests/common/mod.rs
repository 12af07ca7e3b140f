//! Helpers shared by the integration tests that run the `dagfs` binary and
//! mount stores (each test file uses some of them).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dagfs");

pub fn dagfs(store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--store").arg(store).args(args).stdin(Stdio::null());
    c.env_remove("DAGFS_STORE");
    c
}

/// `o` succeeded: its text (stdout and stderr); else fail showing it.
pub fn ok(o: &Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "exit {:?}: {t}", o.status.code());
    t
}

/// `dagfs config KEY VALUE` on `store`, which must succeed.
pub fn config(store: &Path, key: &str, value: &str) {
    ok(&dagfs(store, &["config", key, value]).output().unwrap());
}

/// `dagfs remote keygen FILE`: the private key in `file`, its public key
/// returned.
pub fn keygen(file: &Path) -> String {
    let o = Command::new(BIN)
        .args(["remote", "keygen"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "keygen: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// `dagfs fsck` on `store` finds nothing.
pub fn fsck_clean(store: &Path) {
    let o = dagfs(store, &["fsck"]).output().unwrap();
    assert!(o.status.success(), "fsck: {}", text(&o));
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn is_dagfs_mount(mnt: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    dagfs::daemon::mounts::parse_mountinfo(&info)
        .iter()
        .any(|m| m.mountpoint == mnt && m.fstype == "fuse.dagfs")
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` still runs: any of its threads does. A zombie does not: a
/// daemon detaches from the test, so once it exits it waits for init to
/// reap it, which can take seconds in a container. NB: every thread, not
/// the process's state: after SIGKILL, the main thread is a zombie while
/// the others are still exiting (and still hold the FUSE device open).
pub fn pid_alive(pid: i32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses
            // and may itself contain them.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    })
}

/// A detached daemon serving `store` on `mnt`.
pub struct Mounted {
    pub store: PathBuf,
    pub mnt: PathBuf,
    pub pid: i32,
    /// Where the daemon logs, as `dagfs mount` said. Outside the store (a
    /// store the daemon cannot write logs under the temporary directory),
    /// it is removed when the mount is dropped.
    pub log: Option<PathBuf>,
}

impl Mounted {
    pub fn new(store: &Path, mnt: &Path) -> Mounted {
        Mounted::with_options(store, mnt, "passthrough=off")
    }

    /// Mounted with `-o OPTS`.
    pub fn with_options(store: &Path, mnt: &Path, opts: &str) -> Mounted {
        Mounted::try_with_options(store, mnt, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Mounted (`passthrough=off`), or why `dagfs mount` failed (for tests
    /// that skip where FUSE cannot be had).
    pub fn try_new(store: &Path, mnt: &Path) -> Result<Mounted, String> {
        Mounted::try_with_options(store, mnt, "passthrough=off")
    }

    fn try_with_options(store: &Path, mnt: &Path, opts: &str) -> Result<Mounted, String> {
        // NB: not create_dir_all: on a stale mount, stat fails and mkdir says EEXIST.
        let _ = fs::create_dir(mnt);
        let o = dagfs(store, &["mount", mnt.to_str().unwrap(), "-o", opts])
            .output()
            .unwrap();
        if !o.status.success() {
            return Err(format!("mount failed: {}", text(&o)));
        }
        let t = text(&o);
        let pid: i32 = t
            .split("daemon pid ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no daemon pid in: {t}"));
        // `dagfs mount` returns only once the mount is live.
        assert!(
            is_dagfs_mount(mnt),
            "mount returned before the mount was live"
        );
        let log = t
            .split("; log ")
            .nth(1)
            .and_then(|r| r.lines().next())
            .and_then(|l| l.strip_suffix(')'))
            .map(PathBuf::from);
        Ok(Mounted {
            store: store.to_path_buf(),
            mnt: mnt.to_path_buf(),
            pid,
            log,
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_dagfs_mount(&self.mnt) {
            let _ = dagfs(&self.store, &["umount", self.mnt.to_str().unwrap()]).output();
        }
        if is_dagfs_mount(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while pid_alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if pid_alive(self.pid) {
            // SAFETY: our own child daemon.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        if let Some(log) = self.log.as_ref().filter(|l| !l.starts_with(&self.store)) {
            let _ = fs::remove_file(log);
        }
    }
}

/// Bytes free on the filesystem holding `at`.
pub fn free_bytes(at: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(at).expect("statvfs");
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// Write zeros to `path` until it is `bytes` long, or the disk is full.
pub fn fill(path: &Path, bytes: u64) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        match f.write(&chunk[..n]) {
            Ok(0) | Err(_) => break,
            Ok(w) => left -= w as u64,
        }
    }
}

/// The environment variables a test's `dagfs` never inherits from the
/// shell that runs the tests (they would change what it does).
pub const TEST_VARS: [&str; 6] = [
    "DAGFS_STORE",
    "DAGFS_REMOTE",
    "DAGFS_TEST_FOO",
    "DAGFS_TEST_BAR",
    "CC",
    "CFLAGS",
];

/// The one test sandbox: a scratch directory (removed on drop) with a
/// store path and a mount point path in it (neither made). Test files add
/// their own methods in an `impl Sandbox` of their own (what a run's
/// output means to them), or wrap it with what their fixtures add.
pub struct Sandbox {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub store: PathBuf,
    pub mnt: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        Sandbox {
            store: root.join("store"),
            mnt: root.join("mnt"),
            root,
            _tmp: tmp,
        }
    }

    /// A sandbox whose store lives elsewhere (a small tmpfs, say).
    pub fn with_store(store: PathBuf) -> Sandbox {
        Sandbox {
            store,
            ..Sandbox::new()
        }
    }

    /// Write `<root>/<dir>/dagfs.toml`; returns the pipeline directory.
    pub fn pipeline(&self, dir: &str, toml: &str) -> PathBuf {
        let d = self.root.join(dir);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("dagfs.toml"), toml).unwrap();
        d
    }

    /// Write `<root>/<rel>`, making its directories.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// `<root>/<rel>`'s text; empty if it cannot be read.
    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root.join(rel)).unwrap_or_default()
    }

    /// `dagfs --store <store> ARGS`, run in `<root>`, stdin closed, none of
    /// `TEST_VARS` inherited.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--store").arg(&self.store).args(args);
        c.current_dir(&self.root).stdin(Stdio::null());
        for v in TEST_VARS {
            c.env_remove(v);
        }
        c
    }
}

/// A new `Sandbox`.
pub fn env() -> Sandbox {
    Sandbox::new()
}
