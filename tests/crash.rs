//! Crash safety: `dagfs run` is killed with SIGKILL at random points while it
//! ingests many files; after every kill the store must be consistent:
//! every blob's bytes match its name (no partial blob is ever visible),
//! every entry on disk names only blobs that exist, and a run that reported
//! success before a kill is fully present.

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
    let rounds: u32 = std::env::var("DAGFS_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    // Kill points spread over the length of a cold run on this machine now
    // (timed once, not killed: a loaded machine runs slower).
    let span = {
        let calib = tmp.path().join("calibrate");
        fs::write(dir.join("dagfs.toml"), pipeline(rounds)).unwrap();
        let start = std::time::Instant::now();
        let out = run(&calib, &dir).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        start.elapsed().as_millis() as u64
    };
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut kills = 0;
    let mut completed = 0;
    for round in 0..rounds {
        fs::write(dir.join("dagfs.toml"), pipeline(round)).unwrap();
        let mut child = run(&store, &dir).spawn().unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // A kill point somewhere in the run, or a little after its end.
        let delay = Duration::from_millis(5 + (seed >> 33) % (span * 3 / 2 + 1));
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        let status = child.wait().unwrap();
        check_store(&store);
        if status.success() {
            completed += 1;
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
    eprintln!("{rounds} rounds, {kills} killed mid-run, {completed} completed");
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
