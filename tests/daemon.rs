//! The daemon: `dagfs mount` (detached) serving FUSE and the socket, CLI
//! commands going through it, sessions and leases, joins across clients,
//! stale-mount recovery after `kill -9`.
//!
//! Every mount is owned by a `Mounted` guard that unmounts (and stops the
//! daemon) on drop, on every path.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::{dagfs, env, is_dagfs_mount, pid_alive, text, wait_for, Mounted, BIN};
use dagfs::hash::Digest;

/// Lazily unmounts a (possibly dead) dagfs mount on drop, whatever happened.
struct LazyUnmount(PathBuf);

impl Drop for LazyUnmount {
    fn drop(&mut self) {
        if is_dagfs_mount(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn pipeline(dir: &Path, toml: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let f = dir.join("dagfs.toml");
    fs::write(&f, toml).unwrap();
    f
}

const PIPE: &str = r##"
name = "app"
[tasks.gen]
run = 'mkdir -p $DAGFS_OUT/bin && printf "#!/bin/sh\necho hi\n" > $DAGFS_OUT/bin/tool && chmod +x $DAGFS_OUT/bin/tool && echo data > $DAGFS_OUT/data.txt'
[tasks.use]
run = 'readlink $DAGFS_IN/gen > $DAGFS_OUT/via && cat $DAGFS_IN/gen/data.txt > $DAGFS_OUT/copy && $DAGFS_IN/gen/bin/tool > $DAGFS_OUT/ran'
deps = ["gen"]
"##;

#[test]
fn commands_run_through_the_daemon_and_views_update_live() {
    let e = env();
    let m = Mounted::new(&e.store, &e.mnt);
    assert!(e.store.join("daemon.sock").exists());
    let f = pipeline(&e.root.join("p"), PIPE);
    let o = dagfs(&e.store, &["run", "-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 executed, 0 cached"), "{}", text(&o));
    // The run finished while mounted: dags/ shows it without remounting.
    let via_mount = fs::read_to_string(e.mnt.join("dags/app/use/copy")).unwrap();
    assert_eq!(via_mount, "data\n");
    // Tasks run by the daemon read their inputs through the mount.
    let via = fs::read_to_string(e.mnt.join("dags/app/use/via")).unwrap();
    assert!(
        via.starts_with(e.mnt.join("trees").to_str().unwrap()),
        "{via}"
    );
    assert_eq!(
        fs::read_to_string(e.mnt.join("dags/app/use/ran")).unwrap(),
        "hi\n"
    );
    // Same output and exit codes as embedded mode.
    let again = dagfs(&e.store, &["run", "-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        text(&again).contains("0 executed, 2 cached"),
        "{}",
        text(&again)
    );
    let bad = pipeline(
        &e.root.join("bad"),
        "[tasks.a]\nrun = \"x\"\ndeps = [\"nope\"]\n",
    );
    let o = dagfs(&e.store, &["run", "-f", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let o = dagfs(&e.store, &["cat", "app/gen/data.txt"])
        .output()
        .unwrap();
    assert_eq!(o.stdout, b"data\n");
    let o = dagfs(&e.store, &["cat", "app/nope/x"]).output().unwrap();
    assert_eq!(o.status.code(), Some(10));
    // Relative -f resolves against the client's cwd, not the daemon's.
    let o = dagfs(&e.store, &["explain", "-f", "dagfs.toml", "use"])
        .current_dir(e.root.join("p"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let explain = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(explain.contains("task     app/use"), "{explain}");
    let stats = dagfs(&e.store, &["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["total_entries"], 2);
    // A re-run that changes an output shows at once (the daemon invalidates
    // the kernel's cached entries; without that, only after the 1 s TTL).
    assert_eq!(
        fs::read_to_string(e.mnt.join("dags/app/gen/data.txt")).unwrap(),
        "data\n"
    );
    let latest_before = fs::read_link(e.mnt.join("runs/latest")).unwrap();
    fs::write(&f, PIPE.replace("echo data", "echo data2")).unwrap();
    let o = dagfs(&e.store, &["run", "-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(e.mnt.join("dags/app/gen/data.txt")).unwrap(),
        "data2\n"
    );
    assert_ne!(
        fs::read_link(e.mnt.join("runs/latest")).unwrap(),
        latest_before
    );
    let runs = fs::read_dir(e.mnt.join("runs")).unwrap().count();
    assert!(runs >= 2, "runs/ lists the runs: {runs}");
    drop(m);
    assert!(!is_dagfs_mount(&e.mnt));
    assert!(
        !e.store.join("daemon.sock").exists(),
        "the socket is removed on umount"
    );
    // Embedded mode sees everything the daemon stored.
    let o = dagfs(&e.store, &["run", "-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(text(&o).contains("0 executed, 2 cached"), "{}", text(&o));
}

#[test]
fn identical_tasks_from_two_clients_execute_once() {
    let e = env();
    let _m = Mounted::new(&e.store, &e.mnt);
    let marker = e.root.join("executions");
    let task = format!(
        "[tasks.slow]\nrun = 'echo x >> {m}; sleep 1; echo done > $DAGFS_OUT/out'\n",
        m = marker.display()
    );
    let f1 = pipeline(&e.root.join("one"), &format!("name = \"one\"\n{task}"));
    let f2 = pipeline(&e.root.join("two"), &format!("name = \"two\"\n{task}"));
    let c1 = dagfs(&e.store, &["run", "-f", f1.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the first client claim the task before the second asks for it.
    wait_for("the first execution to start", || marker.exists());
    let c2 = dagfs(&e.store, &["run", "-f", f2.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (o1, o2) = (
        c1.wait_with_output().unwrap(),
        c2.wait_with_output().unwrap(),
    );
    assert!(
        o1.status.success() && o2.status.success(),
        "{}\n{}",
        text(&o1),
        text(&o2)
    );
    assert_eq!(
        fs::read_to_string(&marker).unwrap().lines().count(),
        1,
        "executed once"
    );
    assert!(text(&o2).contains("(joined)"), "{}", text(&o2));
    let stats = dagfs(&e.store, &["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["hits_by_route"]["joined"], 1, "{v}");
    assert_eq!(
        fs::read_to_string(e.mnt.join("dags/two/slow/out")).unwrap(),
        "done\n"
    );
}

#[test]
fn a_running_session_leases_what_it_uses() {
    let e = env();
    let _m = Mounted::new(&e.store, &e.mnt);
    let started = e.root.join("started");
    let release = e.root.join("release");
    let f = pipeline(
        &e.root.join("p"),
        &format!(
            "name = \"lease\"\n[tasks.a]\nrun = 'echo a > $DAGFS_OUT/a'\n[tasks.b]\nrun = 'touch {s}; while [ ! -e {r} ]; do sleep 0.05; done; cp $DAGFS_IN/a/a $DAGFS_OUT/b'\ndeps = [\"a\"]\n",
            s = started.display(),
            r = release.display()
        ),
    );
    let run = dagfs(&e.store, &["run", "-f", f.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("task b to start", || started.exists());
    // Another client shrinks the cache to nothing while the run holds `a`.
    let o = dagfs(&e.store, &["config", "max_entries", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let gc = dagfs(&e.store, &["gc"]).output().unwrap();
    assert!(gc.status.success(), "{}", text(&gc));
    let o = dagfs(&e.store, &["cat", "lease/a/a"]).output().unwrap();
    assert_eq!(o.stdout, b"a\n", "the leased entry survived: {}", text(&o));
    fs::write(&release, "").unwrap();
    let o = run.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // The session ended: its leases are gone, so the policy now applies.
    let gc = dagfs(&e.store, &["gc"]).output().unwrap();
    assert!(gc.status.success(), "{}", text(&gc));
    let stats = dagfs(&e.store, &["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["total_entries"], 0, "{v}");
}

#[test]
fn killed_daemon_leaves_a_stale_mount_that_mount_recovers() {
    let e = env();
    let m = Mounted::new(&e.store, &e.mnt);
    let _cleanup = LazyUnmount(e.mnt.clone());
    // SAFETY: our own daemon.
    unsafe { libc::kill(m.pid, libc::SIGKILL) };
    wait_for("the daemon to die", || !pid_alive(m.pid));
    // NB: statfs: a stat of the root may still be answered from the
    // kernel's attribute cache.
    let err = nix::sys::statfs::statfs(&e.mnt).unwrap_err();
    assert_eq!(err, nix::errno::Errno::ENOTCONN, "a dead FUSE mount");
    // Without a daemon, commands run embedded (the stale socket is ignored).
    let o = dagfs(&e.store, &["stats"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // The dead daemon's guard must not unmount what replaces it.
    std::mem::forget(m);
    let m2 = Mounted::new(&e.store, &e.mnt);
    let o = dagfs(&e.store, &["stats"]).output().unwrap();
    assert!(o.status.success());
    assert!(fs::read_dir(e.mnt.join("keys")).is_ok());
    drop(m2);
}

#[test]
fn protocol_version_mismatch_is_a_clear_error() {
    use dagfs::daemon::protocol::{self, Hello};
    let e = env();
    let _m = Mounted::new(&e.store, &e.mnt);
    let mut s = UnixStream::connect(e.store.join("daemon.sock")).unwrap();
    let hello = Hello {
        protocol: 999,
        agent: "test".into(),
        pid: None,
        mountpoint: None,
    };
    protocol::write_json(&mut s, protocol::HELLO, &hello).unwrap();
    let (kind, payload) = protocol::read_frame(&mut s).unwrap();
    assert_eq!(kind, protocol::ERROR);
    let msg = String::from_utf8_lossy(&payload);
    assert!(
        msg.contains("999") && msg.contains(&protocol::PROTOCOL.to_string()),
        "{msg}"
    );
    // Garbage instead of a HELLO does not take the daemon down.
    let mut g = UnixStream::connect(e.store.join("daemon.sock")).unwrap();
    use std::io::Write;
    let _ = g.write_all(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]);
    drop(g);
    let o = dagfs(&e.store, &["stats"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn socket_is_private_and_other_users_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let e = env();
    let _m = Mounted::new(&e.store, &e.mnt);
    let mode = fs::metadata(e.store.join("daemon.sock"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    if !can_run_as_nobody() {
        eprintln!("skipping the other-uid part: needs root and setpriv");
        return;
    }
    // Let `nobody` reach the socket file, so the daemon's own check is what refuses.
    for d in [e.root.as_path(), e.store.as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(
        e.store.join("daemon.sock"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "--store",
        ])
        .arg(&e.store)
        .arg("stats")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));
    assert!(
        text(&o).contains("refused: uid 65534 is not the store owner"),
        "{}",
        text(&o)
    );
}

/// Regression: the daemon closed a refused connection before reading the
/// client's HELLO, so the client often saw `Broken pipe` or a reset instead
/// of why (106 of 200 attempts with 4 parallel clients).
#[test]
fn parallel_refused_clients_all_see_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    if !can_run_as_nobody() {
        eprintln!("skipping: needs root and setpriv");
        return;
    }
    let e = env();
    let _m = Mounted::new(&e.store, &e.mnt);
    for d in [e.root.as_path(), e.store.as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sock = e.store.join("daemon.sock");
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut bad = Vec::new();
                    for _ in 0..25 {
                        let o = Command::new("setpriv")
                            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
                            .arg("--store")
                            .arg(&e.store)
                            .arg("stats")
                            .stdin(std::process::Stdio::null())
                            .output()
                            .unwrap();
                        let t = text(&o);
                        if o.status.code() != Some(11) || !t.contains("is not the store owner") {
                            bad.push(format!("exit {:?}: {t}", o.status.code()));
                        }
                    }
                    bad
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of 100 refused clients did not see why, e.g. {}",
        failures.len(),
        failures[0]
    );
}

/// Whether this test can run commands as `nobody` (root, with setpriv).
fn can_run_as_nobody() -> bool {
    let have_setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    have_setpriv && nix_is_root()
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Regression: `mount.dagfs` refused a stale mount point (stat fails with
/// ENOTCONN) instead of letting `dagfs mount` recover it.
#[test]
fn mount_helper_recovers_a_stale_mount_too() {
    let helper = Path::new(BIN).with_file_name("mount-dagfs");
    if !helper.exists() {
        eprintln!(
            "skipping: {} is not built (cargo build --workspace)",
            helper.display()
        );
        return;
    }
    let e = env();
    let m = Mounted::new(&e.store, &e.mnt);
    let _cleanup = LazyUnmount(e.mnt.clone());
    // SAFETY: our own daemon.
    unsafe { libc::kill(m.pid, libc::SIGKILL) };
    wait_for("the daemon to die", || !pid_alive(m.pid));
    std::mem::forget(m);
    let o = Command::new(&helper)
        .arg(&e.store)
        .arg(&e.mnt)
        .args(["-o", "passthrough=off"])
        .env(
            "PATH",
            format!(
                "{}:{}",
                Path::new(BIN).parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("dead dagfs mount"), "{}", text(&o));
    assert!(fs::read_dir(e.mnt.join("keys")).is_ok());
    let pid: i32 = text(&o)
        .split("daemon pid ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    drop(Mounted {
        store: e.store.clone(),
        mnt: e.mnt.clone(),
        pid,
        log: None,
    });
}

#[test]
fn packed_blobs_read_through_the_mount_and_a_corrupt_one_is_eio_and_quarantined() {
    let e = env();
    let src = e.root.join("src");
    fs::create_dir_all(&src).unwrap();
    let content = |i: usize| format!("file {i}\n").repeat(1 + i % 13);
    for i in 0..300 {
        fs::write(src.join(format!("f{i:03}")), content(i)).unwrap();
    }
    let big = "x".repeat(200_000);
    fs::write(src.join("big"), &big).unwrap();
    let o = dagfs(&e.store, &["sync", src.to_str().unwrap(), "--name", "many"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let packs: Vec<_> = fs::read_dir(e.store.join("packs"))
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(packs.iter().any(|n| n.ends_with(".idx")), "{packs:?}");
    // One small file's bytes flipped inside the pack (before any read).
    let victim = content(7);
    // NB: a sync's walker threads write a pack each: find the victim's.
    let (pack, mut bytes, at) = packs
        .iter()
        .filter(|n| n.ends_with(".pack"))
        .find_map(|n| {
            let p = e.store.join("packs").join(n);
            let b = fs::read(&p).unwrap();
            let at = b
                .windows(victim.len())
                .position(|w| w == victim.as_bytes())?;
            Some((p, b, at))
        })
        .expect("the victim's bytes in a pack");
    bytes[at] ^= 0x20;
    fs::set_permissions(&pack, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    fs::write(&pack, &bytes).unwrap();

    let m = Mounted::new(&e.store, &e.mnt);
    for i in (0..300).filter(|i| *i != 7) {
        let p = e.mnt.join(format!("syncs/many/f{i:03}"));
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            content(i),
            "{}",
            p.display()
        );
    }
    assert_eq!(
        fs::read_to_string(e.mnt.join("syncs/many/big")).unwrap(),
        big
    );
    let hex = blake3::hash(content(8).as_bytes()).to_hex().to_string();
    assert_eq!(
        fs::read_to_string(e.mnt.join("blobs").join(&hex)).unwrap(),
        content(8)
    );
    let err = fs::read(e.mnt.join("syncs/many/f007")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let bad = blake3::hash(victim.as_bytes()).to_hex().to_string();
    assert!(
        e.store.join("quarantine/blobs").join(&bad).exists(),
        "the corrupt packed blob is moved to quarantine"
    );
    // The rest of the pack is intact, rewritten without it.
    assert_eq!(
        fs::read_to_string(e.mnt.join("syncs/many/f008")).unwrap(),
        content(8)
    );
    drop(m);
    // A new sync stores the file again; fsck is then clean.
    let o = dagfs(&e.store, &["sync", src.to_str().unwrap(), "--name", "many"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = dagfs(&e.store, &["fsck"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no problems"), "{}", text(&o));
}

#[test]
fn a_watched_sync_is_owned_by_the_daemon_and_shown_under_syncs() {
    let e = env();
    let src = e.root.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "alpha\n").unwrap();
    let m = Mounted::new(&e.store, &e.mnt);
    let s = src.to_str().unwrap();
    // Without a daemon-side name clash, the client returns after the first snapshot.
    let o = dagfs(&e.store, &["sync", s, "--watch", "--name", "code"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("watching"), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(e.mnt.join("syncs/code/a.txt")).unwrap(),
        "alpha\n"
    );
    // Directories (not links), naming the snapshot's tree.
    let digest = |p: &str| xattr_text(&e.mnt.join(p), "user.dagfs.digest");
    let first = digest("syncs/code@1");
    assert_eq!(first.len(), 64, "{first:?}");
    assert!(fs::symlink_metadata(e.mnt.join("syncs/code"))
        .unwrap()
        .is_dir());
    assert_eq!(digest("syncs/code"), first);
    // The client is gone; the daemon's watch takes the next change.
    // NB: written whole, then renamed in: a plain write could be caught
    // between its creation and its bytes on a loaded machine (a snapshot
    // of the empty file, then another), and this counts snapshots.
    fs::write(e.root.join("b.tmp"), "beta\n").unwrap();
    fs::rename(e.root.join("b.tmp"), src.join("b.txt")).unwrap();
    wait_for("the watch's second snapshot under /syncs", || {
        fs::read_to_string(e.mnt.join("syncs/code@2/b.txt")).is_ok_and(|t| t == "beta\n")
    });
    wait_for("/syncs/code to follow it", || {
        fs::read_to_string(e.mnt.join("syncs/code/b.txt")).is_ok()
    });
    let mut listed: Vec<String> = fs::read_dir(e.mnt.join("syncs"))
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["code", "code@1", "code@2"]);
    let list = dagfs(&e.store, &["sync", "--list"]).output().unwrap();
    assert!(list.status.success(), "{}", text(&list));
    assert!(
        text(&list).contains("watched (2 snapshots)"),
        "{}",
        text(&list)
    );
    let metrics = fs::read_to_string(e.mnt.join(".dagfs/metrics")).unwrap();
    assert!(metrics.contains("dagfs_sync_watches 1"), "{metrics}");
    // One watch per name.
    let again = dagfs(&e.store, &["sync", s, "--watch", "--name", "code"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("already watched"), "{}", text(&again));
    // Stopped, it takes no more snapshots.
    let stop = dagfs(&e.store, &["sync", "--stop", "code"])
        .output()
        .unwrap();
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(text(&stop).contains("2 snapshots"), "{}", text(&stop));
    fs::write(src.join("c.txt"), "gamma\n").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(fs::metadata(e.mnt.join("syncs/code@3")).is_err());
    let list = dagfs(&e.store, &["sync", "--list"]).output().unwrap();
    assert!(text(&list).contains("not watched"), "{}", text(&list));
    let missing = dagfs(&e.store, &["sync", "--stop", "code"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(10), "{}", text(&missing));
    // Invalid names under /syncs are ENOENT.
    for bad in ["code@0", "code@x", "code@01", "nope", "code@@1", "..@1"] {
        assert!(
            fs::symlink_metadata(e.mnt.join("syncs").join(bad)).is_err(),
            "{bad}"
        );
    }
    drop(m);
}

#[test]
fn sync_list_and_stop_without_a_daemon() {
    let e = env();
    let src = e.root.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "x").unwrap();
    let o = dagfs(&e.store, &["sync", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let list = dagfs(&e.store, &["sync", "--list"]).output().unwrap();
    assert!(list.status.success(), "{}", text(&list));
    assert!(text(&list).contains("src@1: 1 files"), "{}", text(&list));
    assert!(
        text(&list).contains("no daemon is running"),
        "{}",
        text(&list)
    );
    let stop = dagfs(&e.store, &["sync", "--stop", "src"])
        .output()
        .unwrap();
    assert_eq!(stop.status.code(), Some(10), "{}", text(&stop));
    let none = dagfs(&e.store, &["sync"]).output().unwrap();
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
}

/// `-o allow_other` lets other users read the mount, with the kernel
/// checking modes (`default_permissions`), and the mount stays `ro`,
/// `nosuid`, `nodev`; without it, other users are refused. Root needs
/// nothing in /etc/fuse.conf for that.
#[test]
fn allow_other_mounts_ro_nosuid_nodev_with_default_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let e = env();
    let f = pipeline(&e.root.join("p"), PIPE);
    let o = dagfs(&e.store, &["run", "-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let file = e.mnt.join("dags/app/gen/data.txt");
    let m = Mounted::with_options(&e.store, &e.mnt, "allow_other,passthrough=off");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let entry = dagfs::daemon::mounts::parse_mountinfo(&info)
        .into_iter()
        .find(|m| m.mountpoint == e.mnt)
        .expect("the mount is in mountinfo");
    let opts: Vec<&str> = entry.options.split(',').collect();
    for want in [
        "ro",
        "nosuid",
        "nodev",
        "default_permissions",
        "allow_other",
    ] {
        assert!(opts.contains(&want), "no `{want}` in {entry:?}");
    }
    assert_eq!(fs::read_to_string(&file).unwrap(), "data\n");
    if !can_run_as_nobody() {
        eprintln!("skipping the other-uid part: needs root and setpriv");
        return;
    }
    // `nobody` must reach the mount point; the mount is all that may refuse.
    fs::set_permissions(&e.root, fs::Permissions::from_mode(0o755)).unwrap();
    let cat_as_nobody = |path: &Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(path)
            .output()
            .unwrap()
    };
    let o = cat_as_nobody(&file);
    assert!(o.status.success(), "allow_other: {}", text(&o));
    assert_eq!(o.stdout, b"data\n");
    drop(m);
    assert!(!is_dagfs_mount(&e.mnt));
    let _m = Mounted::new(&e.store, &e.mnt);
    let o = cat_as_nobody(&file);
    assert!(
        !o.status.success(),
        "read without allow_other: {}",
        text(&o)
    );
    assert!(text(&o).contains("Permission denied"), "{}", text(&o));
    // The mounting user still reads it.
    assert_eq!(fs::read_to_string(&file).unwrap(), "data\n");
}

/// A user xattr of `p`, as text.
fn xattr_text(p: &std::path::Path, name: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated; the buffer is as long as said.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(
        n >= 0,
        "getxattr {p:?}: {}",
        std::io::Error::last_os_error()
    );
    buf.truncate(n as usize);
    String::from_utf8(buf).unwrap()
}

/// Regression (issue 12.10): the daemon held files of blobs gc had deleted
/// (up to 32) until the mount's next read, so their space came back late.
#[test]
fn gc_through_the_daemon_lets_go_of_deleted_blob_files_at_once() {
    let e = env();
    let toml = |v: u32| {
        format!("name = \"app\"\n[tasks.big]\nrun = \"echo version-{v} > $DAGFS_OUT/big; head -c 300000 /dev/zero >> $DAGFS_OUT/big\"\n")
    };
    let file = pipeline(&e.root.join("p"), &toml(1));
    let f = file.to_str().unwrap();
    let m = Mounted::new(&e.store, &e.mnt);
    let ok = |args: &[&str]| {
        let o = dagfs(&e.store, args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    };
    ok(&["run", "-f", f]);
    // A read through the mount: the daemon holds the blob's file open.
    let big = fs::read(e.mnt.join("dags/app/big/big")).unwrap();
    assert!(big.starts_with(b"version-1\n"));
    let mut bytes = b"version-1\n".to_vec();
    bytes.resize(10 + 300_000, 0);
    let hex = Digest::of(&bytes).to_hex();
    let held = || {
        fs::read_dir(format!("/proc/{}/fd", m.pid))
            .unwrap()
            .filter_map(|d| fs::read_link(d.ok()?.path()).ok())
            .any(|t| t.to_string_lossy().contains(&hex))
    };
    assert!(held(), "the read leaves the blob's file held");
    // The entry is evicted by a second version, and gc removes its blob.
    ok(&["config", "max_entries", "1"]);
    fs::write(&file, toml(2)).unwrap();
    ok(&["run", "-f", f]);
    ok(&["gc"]);
    assert!(!e.store.join("blobs").join(&hex[..2]).join(&hex).exists());
    assert!(!held(), "the daemon still holds the deleted blob's file");
    drop(m);
}
