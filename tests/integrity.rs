//! Integrity: `dagfs fsck` finds exactly the blobs whose bytes were damaged
//! (one flipped bit each), `--repair` quarantines them and drops the entries
//! that use them, the next run re-creates them; a mount with verified reads
//! answers EIO for each damaged file. Also: exit bits for what `--repair`
//! cannot fix, key/manifest mismatches, and `--rebuild-index`.
//!
//! The mount test needs root and /dev/fuse; its daemon is stopped and the
//! mount removed by `Mounted::drop`, on every path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dagfs::store::{Entry, Node, Tree};
use dagfs::Digest;

mod common;

use common::{dagfs, text, Mounted, Sandbox, BIN};
const TASKS: usize = 60;
const FILES: usize = 3;

/// What file `k` of task `i` holds.
fn content(i: usize, k: usize) -> Vec<u8> {
    format!("task {i} file {k}\n")
        .repeat(40 * (k + 1) + i)
        .into_bytes()
}

/// `TASKS` tasks of `FILES` distinct files each, and one task reading a few.
fn pipeline() -> String {
    let mut s = String::from("name = \"app\"\n");
    for i in 0..TASKS {
        let mut run = String::new();
        for k in 0..FILES {
            run += &format!(
                "yes 'task {i} file {k}' | head -n {} > $DAGFS_OUT/f{k}; ",
                40 * (k + 1) + i
            );
        }
        s += &format!("[tasks.t{i}]\nrun = \"{run}\"\n");
    }
    s += "[tasks.sum]\nrun = 'cat $DAGFS_IN/t0/f0 $DAGFS_IN/t1/f1 | wc -l > $DAGFS_OUT/lines'\ndeps = [\"t0\", \"t1\"]\n";
    s
}

/// The shared `Sandbox` with this file's pipeline in `<root>/p`.
struct Env {
    sb: Sandbox,
    dir: PathBuf,
}

impl std::ops::Deref for Env {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.sb
    }
}

fn env() -> Env {
    let sb = Sandbox::new();
    let dir = sb.pipeline("p", &pipeline());
    Env { sb, dir }
}

impl Env {
    fn run(&self) -> String {
        let f = self.dir.join("dagfs.toml");
        let o = dagfs(&self.store, &["run", "-j2", "-f", f.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "run failed: {}", text(&o));
        text(&o)
    }

    /// `dagfs fsck ARGS --json`: (exit code, report).
    fn fsck(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut a = vec!["fsck", "--json"];
        a.extend_from_slice(args);
        let o = dagfs(&self.store, &a).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("fsck printed no JSON ({e}): {}", text(&o)));
        let code = o.status.code().expect("exited");
        assert_eq!(v["exit_code"], code, "{v:#}");
        (code, v)
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.store.join("blobs").join(&hex[..2]).join(hex)
    }

    /// Every entry on disk.
    fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for shard in fs::read_dir(self.store.join("entries")).unwrap() {
            for e in fs::read_dir(shard.unwrap().path()).unwrap() {
                out.push(Entry::from_json(&fs::read(e.unwrap().path()).unwrap()).unwrap());
            }
        }
        out
    }

    /// (task, file name) -> (key, file digest) of every file of `t*` outputs.
    fn files(&self) -> BTreeMap<(String, String), (Digest, Digest)> {
        let mut out = BTreeMap::new();
        for e in self.entries() {
            let tree = Tree::decode(&fs::read(self.blob_path(&e.output)).unwrap()).unwrap();
            for te in tree.entries {
                if let Node::File { digest, .. } = te.node {
                    let name = String::from_utf8(te.name).unwrap();
                    out.insert((e.task.clone(), name), (e.key, digest));
                }
            }
        }
        out
    }

    /// Flip one pseudo-random bit in each of `n` distinct file blobs.
    fn corrupt(&self, n: usize, seed: &mut u64) -> BTreeSet<Digest> {
        let files = self.files();
        let mut pool: Vec<Digest> = files
            .values()
            .map(|(_, d)| *d)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(pool.len() >= n, "only {} distinct file blobs", pool.len());
        let mut next = || {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 33) as usize
        };
        let mut chosen = BTreeSet::new();
        while chosen.len() < n {
            let d = pool.swap_remove(next() % pool.len());
            let p = self.blob_path(&d);
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            let mut bytes = fs::read(&p).unwrap();
            let at = next() % bytes.len();
            bytes[at] ^= 1 << (next() % 8);
            fs::write(&p, &bytes).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
            chosen.insert(d);
        }
        chosen
    }

    /// Every file of every `t*` task holds what its task wrote.
    fn assert_outputs_correct(&self) {
        let files = self.files();
        let mut seen = 0;
        for ((task, name), (_, d)) in &files {
            let Some(i) = task.strip_prefix('t').and_then(|i| i.parse().ok()) else {
                continue;
            };
            let k: usize = name.strip_prefix('f').unwrap().parse().unwrap();
            let bytes = fs::read(self.blob_path(d)).unwrap();
            assert_eq!(bytes, content(i, k), "{task}/{name}");
            seen += 1;
        }
        assert_eq!(seen, TASKS * FILES);
    }
}

fn hex_set(v: &serde_json::Value, kind: &str) -> BTreeSet<String> {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == kind)
        .map(|p| p["subject"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn fsck_finds_exactly_100_flipped_bits_and_repair_makes_them_rerun() {
    let env = env();
    env.run();
    let (code, v) = env.fsck(&[]);
    assert_eq!(code, 0, "a fresh store is clean: {v:#}");
    let blobs_before = v["blobs"].as_u64().unwrap();
    assert!(blobs_before >= 100 + TASKS as u64, "{blobs_before} blobs");

    let mut seed = 0x5eed_f5c4;
    let chosen = env.corrupt(100, &mut seed);
    let want: BTreeSet<String> = chosen.iter().map(Digest::to_hex).collect();
    let t0 = Instant::now();
    let (code, v) = env.fsck(&[]);
    let took = t0.elapsed();
    assert_eq!(
        hex_set(&v, "corrupt-blob"),
        want,
        "exactly the flipped blobs"
    );
    // Every other problem is an entry referencing one of them.
    let files = env.files();
    let mut users = BTreeSet::new();
    for p in v["problems"].as_array().unwrap() {
        match p["kind"].as_str().unwrap() {
            "corrupt-blob" => assert_eq!(p["repairable"], true),
            "corrupt-reference" => {
                let detail = p["detail"].as_str().unwrap();
                assert!(want.iter().any(|d| detail.contains(d)), "{p}");
                users.insert(p["subject"].as_str().unwrap().to_string());
            }
            other => panic!("unexpected problem {other}: {p}"),
        }
    }
    let expected_users: BTreeSet<String> = files
        .values()
        .filter(|(_, d)| chosen.contains(d))
        .map(|(k, _)| k.to_hex())
        .collect();
    assert_eq!(users, expected_users);
    assert_eq!(code, 16 + 1, "found, all repairable: {v:#}");
    eprintln!(
        "fsck: {} blobs, {} corrupt found, {} entries referencing them, in {took:?}",
        v["blobs"],
        want.len(),
        users.len()
    );

    let (code, v) = env.fsck(&["--repair"]);
    assert_eq!(code, 16 + 1 + 2, "found and all repaired: {v:#}");
    assert!(v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["repaired"] == true));
    let quarantined: BTreeSet<String> = fs::read_dir(env.store.join("quarantine/blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(quarantined, want, "every flipped blob, moved, not deleted");
    for d in &chosen {
        assert!(!env.blob_path(d).exists());
        let q = env.store.join("quarantine/blobs").join(d.to_hex());
        let bytes = fs::read(q).unwrap();
        assert_ne!(
            Digest::of(&bytes),
            *d,
            "the damaged bytes are kept as found"
        );
    }
    assert_eq!(v["dropped_entries"].as_array().unwrap().len(), users.len());
    let (code, v) = env.fsck(&[]);
    assert_eq!(code, 0, "clean after repair: {v:#}");

    let out = env.run();
    let reruns = out.lines().filter(|l| l.contains("(corrupt)")).count();
    assert_eq!(reruns, users.len(), "{out}");
    let stats = dagfs(&env.store, &["stats", "--json"]).output().unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["misses_by_reason"]["corrupt"], users.len());
    for d in &chosen {
        assert!(env.blob_path(d).exists(), "re-created {d}");
    }
    let (code, v) = env.fsck(&[]);
    assert_eq!(code, 0, "clean after the re-run: {v:#}");
    assert_eq!(v["blobs"], blobs_before);
    env.assert_outputs_correct();
}

#[test]
fn what_repair_cannot_fix_sets_bit_4_key_mismatches_rerun_and_rebuild_index_works() {
    let env = env();
    env.run();
    // A synced directory whose snapshot loses a file's blob: not repairable
    // by fsck (a new sync stores it again).
    let src = env.dir.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "synced content\n").unwrap();
    let o = dagfs(&env.store, &["sync", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let d = Digest::of(b"synced content\n");
    let p = env.blob_path(&d);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, "synced CONTENT\n").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
    // An entry whose manifest was edited: its key no longer derives.
    let victim = env.entries().into_iter().find(|e| e.task == "t7").unwrap();
    let rec = env
        .store
        .join("entries")
        .join(&victim.key.to_hex()[..2])
        .join(victim.key.to_hex());
    let mut edited = victim.clone();
    edited.manifest.command = "echo something else".into();
    fs::write(&rec, edited.to_json()).unwrap();

    let (code, v) = env.fsck(&[]);
    assert_eq!(hex_set(&v, "corrupt-blob"), BTreeSet::from([d.to_hex()]));
    assert_eq!(
        hex_set(&v, "key-mismatch"),
        BTreeSet::from([victim.key.to_hex()])
    );
    assert_eq!(hex_set(&v, "sync-snapshot").len(), 1, "{v:#}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 3, "{v:#}");
    assert_eq!(code, 16 + 1 + 4, "found, some not repairable: {v:#}");

    let (code, v) = env.fsck(&["--repair"]);
    assert_eq!(code, 16 + 1 + 2 + 4, "repaired some, one remains: {v:#}");
    let (code, _) = env.fsck(&[]);
    assert_eq!(code, 16 + 1 + 4, "the snapshot still misses its blob");

    // Syncing again stores the file again; the re-run restores t7.
    let o = dagfs(&env.store, &["sync", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = env.run();
    assert!(
        out.lines()
            .any(|l| l.contains(" t7 ") && l.contains("(corrupt)")),
        "{out}"
    );
    let (code, v) = env.fsck(&[]);
    assert_eq!(code, 0, "{v:#}");

    // The index and entries/ disagree: fsck says so, --repair fixes it.
    let o = dagfs(&env.store, &["fsck", "--rebuild-index"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("index rebuilt from {} entries", TASKS + 1)));
    let victim = env.entries().into_iter().find(|e| e.task == "t3").unwrap();
    let rec = env
        .store
        .join("entries")
        .join(&victim.key.to_hex()[..2])
        .join(victim.key.to_hex());
    fs::remove_file(rec).unwrap();
    let (code, v) = env.fsck(&[]);
    assert_eq!(
        hex_set(&v, "index-orphan"),
        BTreeSet::from([victim.key.to_hex()])
    );
    assert_eq!(code, 17, "{v:#}");
    let (code, _) = env.fsck(&["--repair"]);
    assert_eq!(code, 19);
    let (code, v) = env.fsck(&[]);
    assert_eq!(code, 0, "{v:#}");

    // Human output: one line per problem and a summary; --help documents
    // the bits.
    let p = env.blob_path(&Digest::of(&content(5, 0)));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let o = dagfs(&env.store, &["fsck"]).output().unwrap();
    assert_eq!(o.status.code(), Some(17));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("blob-mode "), "{out}");
    assert!(out.contains("1 problems (1 blob-mode)"), "{out}");
    let help = Command::new(BIN).args(["fsck", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--repair") && help.contains("16-23"),
        "{help}"
    );
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("problems repaired (--repair)"));
}

// ---------------------------------------------------------------------------
// verified reads through a real mount
// ---------------------------------------------------------------------------

fn metric(mnt: &Path, line_start: &str) -> u64 {
    let m = fs::read_to_string(mnt.join(".dagfs/metrics")).unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in:\n{m}"))
}

#[test]
fn verified_reads_answer_eio_for_each_flipped_blob_and_fsck_runs_in_the_daemon() {
    let env = env();
    env.run();
    let mut seed = 0xfeed_beef;
    let chosen = env.corrupt(100, &mut seed);
    let files = env.files();
    let mounted = Mounted::with_options(&env.store, &env.mnt, "verify=first-open,passthrough=off");
    let mnt = &mounted.mnt;

    // NB: every file is opened (looked up) before any is read: a read that
    // finds a blob corrupt drops its entry, and a later lookup under that
    // key would be ENOENT, not the EIO under test.
    let mut open = Vec::new();
    for ((task, name), (key, d)) in &files {
        let p = mnt.join("keys").join(key.to_hex()).join(name);
        let f = fs::File::open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        open.push((task.clone(), name.clone(), *d, f));
    }
    let (mut eio, mut good) = (0, 0);
    for (task, name, d, mut f) in open {
        let mut buf = Vec::new();
        let r = std::io::Read::read_to_end(&mut f, &mut buf);
        if chosen.contains(&d) {
            let e = r.expect_err(&format!("{task}/{name} is corrupt: want EIO"));
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{task}/{name}: {e}");
            eio += 1;
        } else {
            r.unwrap_or_else(|e| panic!("{task}/{name} is intact: {e}"));
            assert_eq!(Digest::of(&buf), d, "{task}/{name}");
            good += 1;
        }
    }
    assert_eq!(eio, 100);
    eprintln!("mount: {eio} reads answered EIO, {good} intact files read");
    assert_eq!(
        metric(mnt, "dagfs_fs_verified_blobs_total{result=\"corrupt\"}"),
        100
    );
    assert_eq!(metric(mnt, "dagfs_fs_quarantined_blobs_total"), 100);
    assert_eq!(
        metric(mnt, "dagfs_fs_verified_blobs_total{result=\"intact\"}"),
        good
    );
    let quarantined = fs::read_dir(env.store.join("quarantine/blobs"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 100);

    // fsck through the daemon: the mount already moved the blobs away and
    // dropped the entries that use them, so there is nothing left to fix.
    let (code, v) = env.fsck(&[]);
    assert_eq!(code, 0, "{v:#}");
    // The dropped entries re-run (through the daemon) and are whole again.
    let out = env.run();
    let users: BTreeSet<Digest> = files
        .values()
        .filter(|(_, d)| chosen.contains(d))
        .map(|(k, _)| *k)
        .collect();
    let reruns = out.lines().filter(|l| l.contains("(corrupt)")).count();
    assert_eq!(reruns, users.len(), "{out}");
    for i in 0..TASKS {
        for k in 0..FILES {
            let p = mnt.join(format!("dags/app/t{i}/f{k}"));
            assert_eq!(fs::read(&p).unwrap(), content(i, k), "{}", p.display());
        }
    }
    drop(mounted);
    let (code, v) = env.fsck(&[]);
    assert_eq!(code, 0, "{v:#}");
    env.assert_outputs_correct();
}
