//! Crash safety: `dagfs run` (embedded), or the daemon running it, is killed
//! with SIGKILL at random points while it ingests many files (and so is
//! `dagfs sync`, which stores small files in packs); after every
//! kill the store must be consistent: every blob's bytes match its name (no
//! partial blob is ever visible), every entry on disk names only blobs that
//! exist, every run that reported success before a kill is fully present,
//! and `dagfs fsck` (which opens the store, sweeping `tmp/`) finds nothing.
//!
//! `DAGFS_CRASH_KILLS` sets the number of kills per test (default 20; CI
//! sets 60: `.ci/run`), `DAGFS_CRASH_SEED` the kill points; `scripts/crash-loop N`
//! runs both with N. The daemon test needs root and /dev/fuse; its mount is
//! removed by a guard on every path.

use std::collections::HashSet;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dagfs::store::{Entry, Node, Tree};
use dagfs::Digest;

mod common;

use common::{pid_alive, Mounted, BIN};

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

/// Rounds run against one store before the next starts empty. The checks
/// after each kill read the whole store (every blob re-hashed, twice), so
/// with one store for all rounds they would grow with the round number and
/// 200 kills would take half an hour; with a fresh store every so often,
/// every kill is still followed by a check of the whole store it hit.
const ROUNDS_PER_STORE: u32 = 16;

/// Removes `old` (checked clean after its last round) and returns the path
/// of an empty store for the rounds from `round` on.
fn fresh_store(old: &Path, round: u32) -> PathBuf {
    fs::remove_dir_all(old).unwrap();
    old.with_file_name(format!("store-{round}"))
}

fn blob_path(store: &Path, d: &Digest) -> PathBuf {
    let hex = d.to_hex();
    store.join("blobs").join(&hex[..2]).join(hex)
}

/// The entries of directory `d`; none when it does not exist (a run killed
/// while it created the store may leave part of the layout: the next open
/// completes it).
fn listing(d: &Path) -> Vec<fs::DirEntry> {
    match fs::read_dir(d) {
        Ok(rd) => rd.map(Result::unwrap).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", d.display()),
    }
}

/// The blobs of every pack whose index exists, read with this test's own
/// reading of the format (README, "Store on disk"): (hex digest, bytes).
/// Asserts each index whole (checksum, order, ranges, record headers).
fn packed_blobs(store: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in listing(&store.join("packs")) {
        let name = e.file_name().into_string().unwrap();
        let Some(id) = name.strip_suffix(".idx") else {
            continue;
        };
        let idx = fs::read(e.path()).unwrap();
        let pack = fs::read(store.join("packs").join(format!("{id}.pack")))
            .unwrap_or_else(|e| panic!("pack {id} has an index but no pack: {e}"));
        assert_eq!(&pack[..16], b"dagfs-pack 1\n\0\0\0", "pack {id}");
        let (body, sum) = idx.split_at(idx.len() - 32);
        assert_eq!(blake3::hash(body).as_bytes(), sum, "index {id} checksum");
        let count = u64::from_le_bytes(body[16..24].try_into().unwrap()) as usize;
        let table = &body[24..];
        assert_eq!(table.len(), count * 44, "index {id} size");
        assert_eq!(blake3::hash(table).to_hex().as_str(), id, "index {id} name");
        let mut prev: Option<&[u8]> = None;
        for row in table.chunks(44) {
            let d = &row[..32];
            assert!(prev.is_none_or(|p| p < d), "index {id} order");
            prev = Some(d);
            let off = u64::from_le_bytes(row[32..40].try_into().unwrap()) as usize;
            let len = u32::from_le_bytes(row[40..44].try_into().unwrap()) as usize;
            assert_eq!(&pack[off - 36..off - 4], d, "record header in pack {id}");
            assert_eq!(
                u32::from_le_bytes(pack[off - 4..off].try_into().unwrap()) as usize,
                len
            );
            out.push((
                Digest(d.try_into().unwrap()).to_hex(),
                pack[off..off + len].to_vec(),
            ));
        }
    }
    out
}

/// Every visible blob, loose or packed, each checked to have exactly the
/// bytes its name says.
struct Stored<'s> {
    store: &'s Path,
    /// Hex names of every blob.
    names: HashSet<String>,
    packed: std::collections::HashMap<String, Vec<u8>>,
}

impl Stored<'_> {
    fn of(store: &Path) -> Stored<'_> {
        let mut names = HashSet::new();
        for shard in listing(&store.join("blobs")) {
            for e in listing(&shard.path()) {
                let name = e.file_name().into_string().unwrap();
                let bytes = fs::read(e.path()).unwrap();
                assert_eq!(
                    blake3::hash(&bytes).to_hex().as_str(),
                    name,
                    "partial or wrong blob {name}"
                );
                names.insert(name);
            }
        }
        let mut packed = std::collections::HashMap::new();
        for (name, bytes) in packed_blobs(store) {
            assert_eq!(
                blake3::hash(&bytes).to_hex().as_str(),
                name,
                "partial or wrong packed blob {name}"
            );
            names.insert(name.clone());
            packed.insert(name, bytes);
        }
        Stored {
            store,
            names,
            packed,
        }
    }

    fn read(&self, d: &Digest) -> Vec<u8> {
        match self.packed.get(&d.to_hex()) {
            Some(b) => b.clone(),
            None => fs::read(blob_path(self.store, d)).unwrap(),
        }
    }
}

/// Check every invariant; returns the number of entries.
fn check_store(store: &Path) -> usize {
    let stored = Stored::of(store);
    let (blobs, read_blob) = (&stored.names, |d: &Digest| stored.read(d));
    // Every entry names only blobs that exist (walking its whole tree).
    let mut entries = 0;
    for shard in listing(&store.join("entries")) {
        for e in listing(&shard.path()) {
            let bytes = fs::read(e.path()).unwrap();
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
                let tree = Tree::decode(&read_blob(&t)).unwrap();
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
    for shard in listing(&store.join("entries")) {
        for e in listing(&shard.path()) {
            out.insert(e.file_name().into_string().unwrap());
        }
    }
    out
}

/// Where kill points are drawn from: 5 ms after the start of a run up to
/// `ms`. It starts at how long the fastest of three uncut runs took, plus a
/// fifth, and then adapts: longer after a kill, shorter after a run that
/// finished first, settling where about one run in three finishes. So kill
/// points cover the whole of a run, its last commits included, on a
/// machine of any speed and load (a run after a kill also does the
/// recovery work of the next open, so it is slower than an uncut one).
struct Window {
    ms: f64,
}

impl Window {
    /// Runs three pipelines (from `salt` on) to the end in `store`.
    fn measure(store: &Path, dir: &Path, salt: u32) -> Window {
        let mut best = u64::MAX;
        for s in salt..salt + 3 {
            fs::write(dir.join("dagfs.toml"), pipeline(s)).unwrap();
            let t = std::time::Instant::now();
            let out = run(store, dir).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            best = best.min(t.elapsed().as_millis() as u64);
        }
        eprintln!("the fastest of three uncut runs took {best} ms");
        Window {
            ms: (best as f64 * 1.2).max(50.0),
        }
    }

    fn draw(&self, seed: &mut u64) -> Duration {
        Duration::from_millis(5 + next(seed) % self.ms as u64)
    }

    fn update(&mut self, killed: bool) {
        // NB: balanced at about one run in three finishing; and fast
        // enough that a machine busier than when the window was measured
        // (the other tests of the suite) still sees runs finish.
        self.ms = if killed {
            self.ms * 1.05
        } else {
            (self.ms * 0.9).max(50.0)
        };
    }
}

/// Let `child` run to a kill point drawn from `window`, SIGKILL it if it
/// is still running, and adapt the window: its exit status, and whether
/// the signal killed it (NB: judged by the status: a run may end on its
/// own between the look and the signal, and then it was not killed).
fn kill_at_random_point(
    mut child: std::process::Child,
    window: &mut Window,
    seed: &mut u64,
) -> (std::process::ExitStatus, bool) {
    std::thread::sleep(window.draw(seed));
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    let killed = status.signal() == Some(libc::SIGKILL);
    window.update(killed);
    (status, killed)
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

/// The rounds of one crash test: when to stop (`wanted` kills made), a
/// fresh store every `ROUNDS_PER_STORE` rounds, and the checks after each.
struct Rounds {
    store: PathBuf,
    wanted: u32,
    rounds: u32,
    kills: u32,
    completed: u32,
    /// Entries of runs that reported success (in this store).
    durable: HashSet<String>,
    t0: std::time::Instant,
}

impl Rounds {
    fn new(store: PathBuf, wanted: u32) -> Rounds {
        Rounds {
            durable: entry_keys(&store),
            store,
            wanted,
            rounds: 0,
            kills: 0,
            completed: 0,
            t0: std::time::Instant::now(),
        }
    }

    /// The next round's number, None once enough kills are made.
    fn next(&mut self) -> Option<u32> {
        let round = self.rounds;
        if self.kills == self.wanted {
            return None;
        }
        assert!(
            round < self.wanted * 4 + 10,
            "{} kills in {round} rounds: the kill points are too late",
            self.kills
        );
        if round > 0 && round.is_multiple_of(ROUNDS_PER_STORE) {
            self.store = fresh_store(&self.store, round);
            self.durable.clear();
        }
        self.rounds += 1;
        Some(round)
    }

    /// After round `round`, which was `killed` or not and ended in
    /// `success` or not: every check of the store.
    fn after(&mut self, round: u32, killed: bool, success: bool) {
        check_store(&self.store);
        assert_present(&self.store, &self.durable, round);
        assert_fsck_clean(&self.store, round);
        if killed {
            self.kills += 1;
        }
        if success {
            self.completed += 1;
            self.durable = entry_keys(&self.store);
        }
    }

    fn summary(&self, window: &Window) -> String {
        format!(
            "{} rounds, {} killed mid-run, {} completed, store checked and fsck clean after each, in {:.1}s; kill points in the end from 5..{:.0} ms",
            self.rounds,
            self.kills,
            self.completed,
            self.t0.elapsed().as_secs_f64(),
            window.ms + 5.0
        )
    }
}

#[test]
fn sigkill_at_random_points_never_leaves_a_wrong_blob_or_dangling_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let dir = tmp.path().join("p");
    fs::create_dir_all(&dir).unwrap();
    let mut seed = seed();
    // NB: kill points spread over how long a cold run takes on this machine
    // now (measured, not assumed: the machine may be loaded), and a little past.
    let mut window = Window::measure(&store, &dir, u32::MAX - 3);
    let mut r = Rounds::new(store, kills_wanted(20));
    while let Some(round) = r.next() {
        fs::write(dir.join("dagfs.toml"), pipeline(round)).unwrap();
        let child = run(&r.store, &dir).spawn().unwrap();
        let (status, killed) = kill_at_random_point(child, &mut window, &mut seed);
        r.after(round, killed, status.success());
        if status.success() {
            // Reported success: the whole run is present, so a re-run is all hits.
            let out = run(&r.store, &dir).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{err}");
            assert!(
                err.contains("0 executed, 50 cached"),
                "round {round}: {err}"
            );
        }
    }
    // After the last kill, the store still works and converges.
    let out = run(&r.store, &dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = check_store(&r.store);
    assert!(entries >= 50, "{entries} entries");
    eprintln!("{}", r.summary(&window));
    assert!(
        r.completed > 0,
        "no run completed: the kill points are too early"
    );
    assert!(
        r.kills > 0,
        "no run was killed: the kill points are too late"
    );
    assert_eq!(
        fs::read_dir(r.store.join("tmp")).unwrap().count(),
        0,
        "tmp/ is swept on open"
    );
}

#[test]
fn sigkill_of_the_daemon_mid_run_never_leaves_a_wrong_blob_or_dangling_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let dir = tmp.path().join("p");
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let mut seed = seed() ^ 0xdae0;
    let mut window = {
        let _daemon = Mounted::new(&store, &mnt);
        Window::measure(&store, &dir, 999)
    };
    let mut r = Rounds::new(store, kills_wanted(20));
    while let Some(round) = r.next() {
        fs::write(dir.join("dagfs.toml"), pipeline(1000 + round)).unwrap();
        let daemon = Mounted::new(&r.store, &mnt);
        // Through the daemon's socket: the daemon ingests.
        let mut client = run(&r.store, &dir).spawn().unwrap();
        std::thread::sleep(window.draw(&mut seed));
        let killed = client.try_wait().unwrap().is_none();
        window.update(killed);
        if killed {
            // SAFETY: our own daemon.
            unsafe { libc::kill(daemon.pid, libc::SIGKILL) };
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
        r.after(round, killed, status.success());
        assert!(
            status.success() || killed,
            "round {round}: the run failed without a kill"
        );
    }
    let out = run(&r.store, &dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_store(&r.store);
    assert_fsck_clean(&r.store, r.rounds);
    eprintln!("daemon: {}", r.summary(&window));
    assert!(
        r.kills > 0,
        "no daemon was killed: the kill points are too late"
    );
}

/// Every snapshot in the store's sync logs names a tree that is whole:
/// every tree and file blob under it stored (loose or packed) with the
/// bytes its name says (`Stored::of` checks those).
fn check_snapshots(store: &Path) -> usize {
    let stored = Stored::of(store);
    let (blobs, read) = (&stored.names, |d: &Digest| stored.read(d));
    let mut n = 0;
    for log in listing(&store.join("syncs")) {
        // JSON lines: a header, then one snapshot per line. NB: a kill can
        // cut an append short (a last line without its newline, which
        // readers leave out: it was never reported); every whole line
        // decodes.
        let bytes = fs::read(log.path()).unwrap();
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let lines: Vec<serde_json::Value> = bytes[..whole]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("whole sync log lines decode"))
            .collect();
        assert!(!lines.is_empty(), "a sync log has its header");
        for snap in &lines[1..] {
            n += 1;
            let mut stack = vec![Digest::from_hex(snap["tree"].as_str().unwrap()).unwrap()];
            while let Some(t) = stack.pop() {
                assert!(
                    blobs.contains(&t.to_hex()),
                    "snapshot names missing tree {t}"
                );
                for te in Tree::decode(&read(&t)).unwrap().entries {
                    match te.node {
                        Node::Dir { digest } => stack.push(digest),
                        Node::File { digest, .. } => assert!(
                            blobs.contains(&digest.to_hex()),
                            "snapshot names missing blob {digest}"
                        ),
                        Node::Symlink { .. } => {}
                    }
                }
            }
        }
    }
    n
}

/// A tree of 2,000 small files (packed) and a few large ones (loose), whose
/// contents depend on `round` in a fifth of the files.
fn write_tree(dir: &Path, round: u32) {
    for d in 0..20 {
        let sub = dir.join(format!("d{d:02}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..100 {
            let salt = if (d * 100 + f) % 5 == (round % 5) as usize {
                round
            } else {
                0
            };
            fs::write(
                sub.join(format!("f{f:02}")),
                format!("{d} {f} {salt}\n").repeat(1 + f % 9),
            )
            .unwrap();
        }
    }
    fs::write(dir.join("large"), format!("{round}\n").repeat(40_000)).unwrap();
}

fn sync_cmd(store: &Path, dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--store")
        .arg(store)
        .args(["sync", "--json"])
        .arg(dir);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The tree digest a completed `dagfs sync --json` reports.
fn synced_tree(store: &Path, dir: &Path) -> String {
    let o = sync_cmd(store, dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["tree"].as_str().unwrap().to_string()
}

#[test]
fn sigkill_of_a_sync_never_leaves_a_wrong_blob_or_a_snapshot_naming_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let dir = tmp.path().join("tree");
    let mut seed = seed() ^ 0x5157;
    write_tree(&dir, u32::MAX);
    let t = std::time::Instant::now();
    synced_tree(&tmp.path().join("warm"), &dir);
    let mut window = Window {
        ms: (t.elapsed().as_millis() as f64 * 1.2).max(50.0),
    };
    fs::remove_dir_all(tmp.path().join("warm")).unwrap();
    let mut r = Rounds::new(store, kills_wanted(20));
    while let Some(round) = r.next() {
        write_tree(&dir, round);
        let child = sync_cmd(&r.store, &dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (status, killed) = kill_at_random_point(child, &mut window, &mut seed);
        r.after(round, killed, status.success());
        check_snapshots(&r.store);
        assert!(
            !listing(&r.store.join("packs")).iter().any(|e| {
                let n = e.file_name().into_string().unwrap();
                n.strip_suffix(".pack")
                    .is_some_and(|id| !r.store.join("packs").join(format!("{id}.idx")).exists())
            }),
            "round {round}: a pack without its index survived an open"
        );
        // The next sync, after whatever the kill left (stat-cache records
        // included), snapshots exactly what a fresh store does.
        let fresh = tmp.path().join(format!("fresh-{round}"));
        let want = synced_tree(&fresh, &dir);
        fs::remove_dir_all(&fresh).unwrap();
        assert_eq!(synced_tree(&r.store, &dir), want, "round {round}");
    }
    let snapshots = check_snapshots(&r.store);
    eprintln!(
        "{} ({snapshots} snapshots in the last store)",
        r.summary(&window)
    );
    assert!(
        r.completed > 0,
        "no sync completed: the kill points are too early"
    );
    assert!(
        r.kills > 0,
        "no sync was killed: the kill points are too late"
    );
}

/// A task starts before its dependency's output is durable (it reads the
/// staged bytes, `store::unsynced`): the dependent saw no blob committed
/// in a fresh store, only its dependency's bytes; a SIGKILL while it runs
/// leaves a store fsck finds clean and no entry; and the next run makes
/// both again. It had waited for a commit (fdatasync of every blob and
/// fsync of their directories) on every link of a chain.
#[test]
fn a_dependent_reads_its_dependency_before_the_commit_and_a_kill_then_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let dir = t.path().join("p");
    fs::create_dir_all(&dir).unwrap();
    let marker = t.path().join("b-started");
    let release = t.path().join("release");
    let toml = |wait: bool| {
        format!(
            "name = \"p\"\n\
             [tasks.a]\nrun = 'echo payload-of-a > \"$DAGFS_OUT/f\"'\n\
             [tasks.b]\nrun = 'ls \"{blobs}\" > \"$DAGFS_OUT/seen\"; cat \"$DAGFS_IN/a/f\" >> \"$DAGFS_OUT/seen\"; {wait}'\ndeps = [\"a\"]\n",
            blobs = store.join("blobs").display(),
            wait = if wait {
                format!(
                    "touch \"{}\"; for i in $(seq 600); do [ -e \"{}\" ] && break; sleep 0.1; done",
                    marker.display(),
                    release.display()
                )
            } else {
                "true".to_string()
            },
        )
    };
    // Killed while b runs: nothing is committed, so nothing is published.
    fs::write(dir.join("dagfs.toml"), toml(true)).unwrap();
    let mut child = run(&store, &dir).spawn().unwrap();
    common::wait_for("b to start", || marker.exists());
    child.kill().unwrap();
    child.wait().unwrap();
    // NB: a task left running where it could not be isolated ends too.
    fs::write(&release, "").unwrap();
    assert_fsck_clean(&store, 0);
    assert!(entry_keys(&store).is_empty(), "no entry was published");
    // Again to the end: b saw no committed blob, and a's bytes.
    fs::write(dir.join("dagfs.toml"), toml(false)).unwrap();
    let o = run(&store, &dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cat = Command::new(BIN)
        .arg("--store")
        .arg(&store)
        .args(["cat", "p/b/seen"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "payload-of-a\n");
    assert_eq!(entry_keys(&store).len(), 2);
    assert_fsck_clean(&store, 1);
}
