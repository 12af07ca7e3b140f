//! Mounts `dagfs mount` refuses, and how: a store already served by a
//! daemon, a mount point inside the store (or the store inside it), a
//! non-empty mount point; and a daemon waiting for the store lock.
//!
//! Every mount is owned by a `Mounted` guard that unmounts on drop, and
//! every process a test starts is killed and reaped on every path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{dagfs, env, is_dagfs_mount, text, wait_for, Mounted};

/// A child process killed and reaped on drop, whatever happened.
struct Reaped(Child);

impl Reaped {
    /// Its exit status, if it exits within `secs`.
    fn exit_within(&mut self, secs: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `dagfs mount` that must exit within 20 s (it used to hang); a
/// mount it made anyway is undone.
fn mount_must_exit(store: &Path, mnt: &Path, extra: &[&str]) -> Output {
    let _ = fs::create_dir_all(mnt);
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut args = vec!["mount", mnt.to_str().unwrap(), "-o", "passthrough=off"];
    args.extend_from_slice(extra);
    let mut child = Reaped(
        dagfs(store, &args)
            .stdout(Stdio::null())
            .stderr(err.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let status = child.exit_within(20);
    let stderr = fs::read(err.path()).unwrap();
    if is_dagfs_mount(mnt) {
        let _ = dagfs(store, &["umount", mnt.to_str().unwrap()]).output();
    }
    let status = status.unwrap_or_else(|| {
        panic!(
            "`dagfs mount {}` did not exit within 20 s: {}",
            mnt.display(),
            String::from_utf8_lossy(&stderr)
        )
    });
    Output {
        status,
        stdout: Vec::new(),
        stderr,
    }
}

/// Regression: a second `dagfs mount` of a store already served hung
/// silently, leaving a daemon waiting for the store lock that mounted by
/// surprise once the first one stopped.
#[test]
fn second_mount_of_a_served_store_fails_at_once_naming_the_daemon() {
    let e = env();
    let (m1, m2) = (e.root.join("m1"), e.root.join("m2"));
    let first = Mounted::new(&e.store, &m1);
    let o = mount_must_exit(&e.store, &m2, &[]);
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
    let want = format!(
        "store already served by pid {} at {}",
        first.pid,
        m1.display()
    );
    assert!(text(&o).contains(&want), "want `{want}` in: {}", text(&o));
    drop(first);
    assert!(!is_dagfs_mount(&m2), "the second mount happened after all");
}

/// Two mounts of one store started at once: one serves it, the other says
/// so (neither waits for the other to stop).
#[test]
fn two_mounts_started_at_once_one_serves_the_other_says_so() {
    let e = env();
    // Created first, so neither mount waits for the other to make it.
    dagfs(&e.store, &["stats"]).output().unwrap();
    let mnts: Vec<PathBuf> = (0..2).map(|i| e.root.join(format!("m{i}"))).collect();
    let outs: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = mnts
            .iter()
            .map(|m| {
                let store = &e.store;
                s.spawn(move || {
                    let _ = fs::create_dir_all(m);
                    let err = tempfile::NamedTempFile::new().unwrap();
                    let mut c = Reaped(
                        dagfs(
                            store,
                            &["mount", m.to_str().unwrap(), "-o", "passthrough=off"],
                        )
                        .stdout(Stdio::null())
                        .stderr(err.reopen().unwrap())
                        .spawn()
                        .unwrap(),
                    );
                    let st = c.exit_within(20);
                    let stderr = fs::read(err.path()).unwrap();
                    Output {
                        // A hang is reported below as a failure (exit 99).
                        status: st.unwrap_or_else(|| {
                            use std::os::unix::process::ExitStatusExt;
                            ExitStatus::from_raw(99 << 8)
                        }),
                        stdout: Vec::new(),
                        stderr,
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let served: Vec<&PathBuf> = mnts.iter().filter(|m| is_dagfs_mount(m)).collect();
    for m in &served {
        let _ = dagfs(&e.store, &["umount", m.to_str().unwrap()]).output();
    }
    let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
    let all: String = outs.iter().map(text).collect();
    assert_eq!(served.len(), 1, "{codes:?}: {all}");
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(12)),
        "{codes:?}: {all}"
    );
    assert!(all.contains("store already served by pid"), "{all}");
}

/// Regression: a daemon waiting for the store lock had SIGTERM blocked, so
/// it could not be stopped while it waited.
#[test]
fn a_daemon_waiting_for_the_store_lock_stops_on_sigterm() {
    use std::os::fd::AsRawFd;
    let e = env();
    let mnt = e.root.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    dagfs(&e.store, &["stats"]).output().unwrap();
    // Hold the store lock as another dagfs process would.
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(e.store.join("lock"))
        .unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut daemon = Reaped(
        dagfs(&e.store, &["mount", mnt.to_str().unwrap(), "-f"])
            .stdout(Stdio::null())
            .stderr(err.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the daemon to wait for the lock", || {
        fs::read_to_string(err.path())
            .unwrap()
            .contains("waiting for the store lock")
    });
    // SAFETY: our own child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let st = daemon.exit_within(20);
    let log = fs::read_to_string(err.path()).unwrap();
    assert!(st.is_some(), "still waiting 20 s after SIGTERM: {log}");
    assert_eq!(st.unwrap().code(), Some(12), "{log}");
    assert!(log.contains("while waiting for the store lock"), "{log}");
    assert!(!is_dagfs_mount(&mnt));
}

/// Regression: `dagfs mount $STORE/blobs` (or `entries/`, `packs/`,
/// `index/`, `tmp/`) was accepted, and an `fsck --repair` through that
/// daemon then dropped every entry.
#[test]
fn mount_point_inside_the_store_is_refused() {
    let e = env();
    let o = dagfs(&e.store, &["stats"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for sub in [
        "",
        "blobs",
        "entries",
        "packs",
        "index",
        "tmp",
        "blobs/../tmp",
    ] {
        let mnt = e.store.join(sub);
        fs::create_dir_all(&mnt).unwrap();
        let o = mount_must_exit(&e.store, &mnt, &[]);
        assert_eq!(o.status.code(), Some(12), "{sub}: {}", text(&o));
        assert!(
            text(&o).contains("is inside the store"),
            "{sub}: {}",
            text(&o)
        );
    }
    // Through a symlink to it, too.
    let link = e.root.join("link");
    std::os::unix::fs::symlink(e.store.join("blobs"), &link).unwrap();
    let o = mount_must_exit(&e.store, &link, &[]);
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
    let o = dagfs(&e.store, &["fsck"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// The store inside the mount point would be hidden by the mount.
#[test]
fn store_inside_the_mount_point_is_refused() {
    let e = env();
    for store in [e.root.join("store"), e.root.join("new/store")] {
        let o = mount_must_exit(&store, &e.root, &[]);
        assert_eq!(o.status.code(), Some(12), "{}", text(&o));
        assert!(
            text(&o).contains("is inside the mount point"),
            "{}",
            text(&o)
        );
    }
}

/// Regression: mounting over a non-empty directory silently hid what was
/// in it; now it takes `-o nonempty`.
#[test]
fn non_empty_mount_point_needs_nonempty() {
    let e = env();
    let mnt = e.root.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    fs::write(mnt.join("precious.txt"), "mine\n").unwrap();
    let o = mount_must_exit(&e.store, &mnt, &[]);
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
    assert!(text(&o).contains("is not empty"), "{}", text(&o));
    assert!(text(&o).contains("-o nonempty"), "{}", text(&o));
    let m = Mounted::with_options(&e.store, &mnt, "passthrough=off,nonempty");
    assert!(mnt.join("keys").is_dir(), "mounted over it");
    drop(m);
    assert_eq!(
        fs::read_to_string(mnt.join("precious.txt")).unwrap(),
        "mine\n"
    );
}
