//! Crash safety: `dagfs run` (embedded), or the daemon running it, is killed
//! with SIGKILL at random points while it ingests many files; after every
//! kill the store must be consistent: every blob's bytes match its name (no
//! partial blob is ever visible), every entry on disk names only blobs that
//! exist, every run that reported success before a kill is fully present,
//! and `dagfs fsck` (which opens the store, sweeping `tmp/`) finds nothing.
//!
//! `DAGFS_CRASH_KILLS` sets the number of kills per test (default 20 and
//! 8), `DAGFS_CRASH_SEED` the kill points; `scripts/crash-loop N` runs both
//! with N. The daemon test needs root and /dev/fuse; its mount is removed
//! by a guard on every path.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dagfs::store::{Entry, Node, Tree};
use dagfs::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_dagfs");

/// 40 independent tasks and 10 that depend on them, each writing several
/// files whose content depends on `salt` (so each round ingests new blobs).
fn pipeline(salt: u32) -> String {
    let mut s = String::from("name = \"crash\"\n");
    for i in 0..40 {
        s += &format!(
            "[tasks.t{i}]\nrun = 'mkdir -p $DAGFS_OUT/d; for k in 1 2 3 4 5; do head -c 20000 /dev/zero | tr \"\\\\0\" x > $DAGFS_OUT/d/f$k; echo {salt}-{i}-$k >> $DAGFS_OUT/d/f$k; done'\nversion = \"{salt}\"\n"
        );
    }
    for j in 0..10 {
        s += &format!(
            "[tasks.u{j}]\nrun = 'cat $DAGFS_IN/t{a}/d/f1 $DAGFS_IN/t{b}/d/f2 > $DAGFS_OUT/joined'\ndeps = [\"t{a}\", \"t{b}\"]\n",
            a = j * 4,
            b = j * 4 + 1
        );
    }
    s
}

fn blob_path(store: &Path, d: &Digest) -> PathBuf {
    let hex = d.to_hex();
    store.join("blobs").join(&hex[..2]).join(hex)
}

/// Check every invariant; returns the number of entries.
fn check_store(store: &Path) -> usize {
    // Every visible blob has exactly the bytes its name says.
    let mut blobs = HashSet::new();
    for shard in fs::read_dir(store.join("blobs")).unwrap() {
        for e in fs::read_dir(shard.unwrap().path()).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let bytes = fs::read(e.path()).unwrap();
            assert_eq!(
                blake3::hash(&bytes).to_hex().as_str(),
                name,
                "partial or wrong blob {name}"
            );
            blobs.insert(name);
        }
    }
    // Every entry names only blobs that exist (walking its whole tree).
    let mut entries = 0;
    for shard in fs::read_dir(store.join("entries")).unwrap() {
        for e in fs::read_dir(shard.unwrap().path()).unwrap() {
            let bytes = fs::read(e.unwrap().path()).unwrap();
            let entry = Entry::from_json(&bytes).expect("entry records are never partial");
            entries += 1;
            for d in [entry.stdout, entry.stderr] {
                assert!(
                    blobs.contains(&d.to_hex()),
                    "entry {} names missing log blob",
                    entry.key
                );
            }
            let mut stack = vec![entry.output];
            while let Some(t) = stack.pop() {
                assert!(
                    blobs.contains(&t.to_hex()),
                    "entry {} names missing tree {t}",
                    entry.key
                );
                let tree = Tree::decode(&fs::read(blob_path(store, &t)).unwrap()).unwrap();
                for te in tree.entries {
                    match te.node {
                        Node::Dir { digest } => stack.push(digest),
                        Node::File { digest, .. } => {
                            assert!(
                                blobs.contains(&digest.to_hex()),
                                "entry {} names missing blob",
                                entry.key
                            )
                        }
                        Node::Symlink { .. } => {}
                    }
                }
            }
        }
    }
    entries
}

/// Kills each test makes (`DAGFS_CRASH_KILLS`); it runs rounds until it
/// has, each run either killed or left to complete.
fn kills_wanted(default: u32) -> u32 {
    std::env::var("DAGFS_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("DAGFS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e3779b97f4a7c15)
}

fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

/// `dagfs fsck --json` finds no problem (and sweeps `tmp/` as it opens the
/// store, when no daemon holds it).
fn assert_fsck_clean(store: &Path, round: u32) {
    let o = Command::new(BIN)
        .arg("--store")
        .arg(store)
        .args(["fsck", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "round {round}: fsck printed no report ({e}): {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert_eq!(
        o.status.code(),
        Some(0),
        "round {round}: fsck after the kill: {v:#}"
    );
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v:#}");
}

/// Every entry that a successful run left must still be there.
fn assert_present(store: &Path, keys: &HashSet<String>, round: u32) {
    for k in keys {
        let p = store.join("entries").join(&k[..2]).join(k);
        assert!(
            p.exists(),
            "round {round}: entry {k} of a successful run is gone"
        );
    }
}

fn entry_keys(store: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    for shard in fs::read_dir(store.join("entries")).unwrap() {
        for e in fs::read_dir(shard.unwrap().path()).unwrap() {
            out.insert(e.unwrap().file_name().into_string().unwrap());
        }
    }
    out
}

/// Run pipeline `salt` to the end, uncut: how long it took (ms) plus a
/// half, the window kill points are drawn from (so about a third of the
/// runs finish before their kill point).
fn cold_run_ms(store: &Path, dir: &Path, salt: u32) -> u64 {
    fs::write(dir.join("dagfs.toml"), pipeline(salt)).unwrap();
    let t = std::time::Instant::now();
    let out = run(store, dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ms = t.elapsed().as_millis() as u64;
    eprintln!(
        "a cold run took {ms} ms: kill points in 5..{} ms",
        ms * 3 / 2 + 5
    );
    (ms * 3 / 2).max(50)
}

fn run(store: &Path, dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--store")
        .arg(store)
        .args(["run", "-j2", "-f"])
        .arg(dir.join("dagfs.toml"));
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[test]
fn sigkill_at_random_points_never_leaves_a_wrong_blob_or_dangling_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let dir = tmp.path().join("p");
    fs::create_dir_all(&dir).unwrap();
    let wanted = kills_wanted(20);
    let mut seed = seed();
    let mut kills = 0;
    let mut completed = 0;
    let t0 = std::time::Instant::now();
    // NB: kill points spread over how long a cold run takes on this machine
    // now (measured, not assumed: the machine may be loaded), and a little past.
    let window = cold_run_ms(&store, &dir, u32::MAX);
    let mut durable = entry_keys(&store);
    let mut rounds = 0;
    for round in 0.. {
        if kills == wanted {
            break;
        }
        assert!(
            round < wanted * 4 + 10,
            "{kills} kills in {round} rounds: the kill points are too late"
        );
        rounds += 1;
        fs::write(dir.join("dagfs.toml"), pipeline(round)).unwrap();
        let mut child = run(&store, &dir).spawn().unwrap();
        let delay = Duration::from_millis(5 + next(&mut seed) % window);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        let status = child.wait().unwrap();
        check_store(&store);
        assert_present(&store, &durable, round);
        assert_fsck_clean(&store, round);
        if status.success() {
            completed += 1;
            durable = entry_keys(&store);
            // Reported success: the whole run is present, so a re-run is all hits.
            let out = run(&store, &dir).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{err}");
            assert!(
                err.contains("0 executed, 50 cached"),
                "round {round}: {err}"
            );
        }
    }
    // After the last kill, the store still works and converges.
    let out = run(&store, &dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = check_store(&store);
    assert!(entries >= 50, "{entries} entries");
    eprintln!(
        "{rounds} rounds, {kills} killed mid-run, {completed} completed, store checked and fsck clean after each, in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        completed > 0,
        "no run completed: the kill points are too early"
    );
    assert!(kills > 0, "no run was killed: the kill points are too late");
    assert_eq!(
        fs::read_dir(store.join("tmp")).unwrap().count(),
        0,
        "tmp/ is swept on open"
    );
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn is_dagfs_mount(mnt: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    dagfs::daemon::mounts::parse_mountinfo(&info)
        .iter()
        .any(|m| m.mountpoint == mnt && m.fstype == "fuse.dagfs")
}

/// Stops the daemon (if it still runs) and removes its mount, dead or alive,
/// on drop.
struct Daemon {
    store: PathBuf,
    mnt: PathBuf,
    pid: i32,
}

impl Daemon {
    fn start(store: &Path, mnt: &Path) -> Daemon {
        let o = Command::new(BIN)
            .arg("--store")
            .arg(store)
            .args(["mount", mnt.to_str().unwrap(), "-o", "passthrough=off"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "mount: {t}");
        let pid = t
            .split("daemon pid ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no daemon pid in: {t}"));
        Daemon {
            store: store.to_path_buf(),
            mnt: mnt.to_path_buf(),
            pid,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if pid_alive(self.pid) && is_dagfs_mount(&self.mnt) {
            let _ = Command::new(BIN)
                .arg("--store")
                .arg(&self.store)
                .args(["umount", self.mnt.to_str().unwrap()])
                .output();
        }
        if is_dagfs_mount(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while pid_alive(self.pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if pid_alive(self.pid) {
            // SAFETY: our own daemon.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn sigkill_of_the_daemon_mid_run_never_leaves_a_wrong_blob_or_dangling_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let dir = tmp.path().join("p");
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let wanted = kills_wanted(8);
    let mut seed = seed() ^ 0xdae0;
    let (mut kills, mut completed) = (0, 0);
    let t0 = std::time::Instant::now();
    let window = {
        let _daemon = Daemon::start(&store, &mnt);
        cold_run_ms(&store, &dir, 999)
    };
    let mut durable = entry_keys(&store);
    let mut rounds = 0;
    for round in 0.. {
        if kills == wanted {
            break;
        }
        assert!(
            round < wanted * 4 + 10,
            "{kills} kills in {round} rounds: the kill points are too late"
        );
        rounds += 1;
        fs::write(dir.join("dagfs.toml"), pipeline(1000 + round)).unwrap();
        let daemon = Daemon::start(&store, &mnt);
        // Through the daemon's socket: the daemon ingests.
        let mut client = run(&store, &dir).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(5 + next(&mut seed) % window));
        let killed = client.try_wait().unwrap().is_none();
        if killed {
            // SAFETY: our own daemon.
            unsafe { libc::kill(daemon.pid, libc::SIGKILL) };
            kills += 1;
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while pid_alive(daemon.pid) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "daemon outlived SIGKILL"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let status = client.wait().unwrap();
        drop(daemon);
        check_store(&store);
        assert_present(&store, &durable, round);
        assert_fsck_clean(&store, round);
        if status.success() {
            completed += 1;
            durable = entry_keys(&store);
        } else {
            assert!(killed, "round {round}: the run failed without a kill");
        }
    }
    let out = run(&store, &dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_store(&store);
    assert_fsck_clean(&store, rounds);
    eprintln!(
        "daemon: {rounds} rounds, {kills} killed mid-run, {completed} completed, store checked and fsck clean after each, in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        kills > 0,
        "no daemon was killed: the kill points are too late"
    );
}
