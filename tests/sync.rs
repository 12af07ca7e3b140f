//! `dagfs sync`: snapshots, exact change sets, the stat cache, racy files,
//! conflicts, ignore rules.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_dagfs");

fn sync(store: &Path, dir: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let o = Command::new(BIN)
        .arg("--store")
        .arg(store)
        .arg("sync")
        .arg(dir)
        .arg("--json")
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code().unwrap_or(-1), v, err)
}

/// What a path is, as the test sees it (independently of dagfs).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    File { bytes: Vec<u8>, exec: bool },
    Link(Vec<u8>),
    Dir,
}

fn model(root: &Path) -> BTreeMap<Vec<u8>, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let md = fs::symlink_metadata(&p).unwrap();
            let seen = if md.file_type().is_symlink() {
                Seen::Link(fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
            } else if md.is_dir() {
                stack.push(p.clone());
                Seen::Dir
            } else {
                Seen::File {
                    bytes: fs::read(&p).unwrap(),
                    exec: md.permissions().mode() & 0o111 != 0,
                }
            };
            out.insert(rel, seen);
        }
    }
    out
}

fn expected(
    old: &BTreeMap<Vec<u8>, Seen>,
    new: &BTreeMap<Vec<u8>, Seen>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let name = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    for (p, n) in new {
        let kind = match (old.get(p), n) {
            (None, _) => "added",
            (Some(Seen::File { bytes: a, exec: x }), Seen::File { bytes: b, exec: y }) => {
                if a != b {
                    "modified"
                } else if x != y {
                    "mode-changed"
                } else {
                    continue;
                }
            }
            (Some(Seen::Link(a)), Seen::Link(b)) => {
                if a != b {
                    "modified"
                } else {
                    continue;
                }
            }
            (Some(Seen::Dir), Seen::Dir) => continue,
            _ => "type-changed",
        };
        out.insert(name(p), kind.to_string());
    }
    for p in old.keys() {
        if !new.contains_key(p) {
            out.insert(name(p), "removed".to_string());
        }
    }
    out
}

fn reported(v: &serde_json::Value) -> BTreeMap<String, String> {
    listed_changes(v).into_iter().collect()
}

/// (path, kind) of a report's or a log entry's changes, in their order.
fn listed_changes(v: &serde_json::Value) -> Vec<(String, String)> {
    v["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes in {v}"))
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn write(p: &Path, b: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, b).unwrap();
}

#[test]
fn change_sets_match_an_independent_diff_over_random_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    for i in 0..40 {
        write(
            &dir.join(format!("d{}/e{}/f{i}.txt", i % 4, i % 3)),
            format!("file {i}").as_bytes(),
        );
    }
    write(&dir.join("deep/a/b/c/d/e/f/g/h/leaf"), b"deep");
    fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"non-utf8-\xff\xfe")),
        b"bytes",
    )
    .unwrap();
    symlink("d0/e0/f0.txt", dir.join("link")).unwrap();
    let mut before = model(&dir);
    let (code, v, err) = sync(&store, &dir, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        reported(&v),
        expected(&BTreeMap::new(), &before),
        "first sync: everything added"
    );
    let mut rng = Rng(7);
    for round in 0..12 {
        let files: Vec<PathBuf> = walk_files(&dir);
        for _ in 0..4 {
            let f = &files[rng.next(files.len() as u64) as usize];
            if !f.exists() && fs::symlink_metadata(f).is_err() {
                continue;
            }
            match rng.next(8) {
                0 => write(
                    &dir.join(format!("new{round}/x{}", rng.next(1000))),
                    b"added",
                ),
                1 => {
                    // Same size, same mtime: only ctime (and content) differ.
                    let md = fs::metadata(f);
                    if let Some(md) = md.ok().filter(|m| m.is_file()) {
                        let mut b = fs::read(f).unwrap();
                        if let Some(x) = b.first_mut() {
                            *x = x.wrapping_add(1);
                        }
                        fs::write(f, &b).unwrap();
                        let fh = fs::File::options().write(true).open(f).unwrap();
                        fh.set_modified(md.modified().unwrap()).unwrap();
                    }
                }
                2 => {
                    let _ = fs::remove_file(f);
                }
                3 => {
                    let to = f.with_extension(format!("r{round}"));
                    let _ = fs::rename(f, to);
                }
                4 => {
                    // file -> dir
                    if fs::remove_file(f).is_ok() {
                        write(&f.join("inner"), b"was a file");
                    }
                }
                5 => {
                    // file -> symlink
                    if fs::remove_file(f).is_ok() {
                        symlink("../elsewhere", f).unwrap();
                    }
                }
                6 => {
                    if let Some(md) = fs::metadata(f).ok().filter(|m| m.is_file()) {
                        let mode = md.permissions().mode() ^ 0o111;
                        fs::set_permissions(f, fs::Permissions::from_mode(mode)).unwrap();
                    }
                }
                _ => {
                    // dir -> file
                    if let Some(parent) = f.parent().filter(|p| *p != dir) {
                        fs::remove_dir_all(parent).unwrap();
                        fs::write(parent, b"now a file").unwrap();
                    }
                }
            }
        }
        let after = model(&dir);
        let (code, v, err) = sync(&store, &dir, &[]);
        assert_eq!(code, 0, "round {round}: {err}");
        assert_eq!(reported(&v), expected(&before, &after), "round {round}");
        before = after;
    }
}

fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn stat_cache_rehashes_only_changed_and_racy_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    for i in 0..200 {
        write(&dir.join(format!("f{i}")), format!("{i}").as_bytes());
    }
    // Out of the racy window (50 ms) before the first scan.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (_, v, err) = sync(&store, &dir, &[]);
    assert_eq!(v["hashed"], 200, "{err}");
    let (_, v, _) = sync(&store, &dir, &[]);
    assert_eq!(
        v["hashed"], 0,
        "nothing changed: everything from the stat cache"
    );
    assert_eq!(v["stat_cache_hits"], 200);
    assert_eq!(v["new_snapshot"], false);
    write(&dir.join("f7"), b"changed");
    let (_, v, _) = sync(&store, &dir, &[]);
    assert_eq!(v["hashed"], 1);
    assert_eq!(reported(&v).get("f7").map(String::as_str), Some("modified"));
    // f7 was written just before that scan: racy, so hashed again.
    let (_, v, _) = sync(&store, &dir, &[]);
    assert_eq!(v["hashed"], 1, "racy file re-hashed");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (_, _, _) = sync(&store, &dir, &[]);
    let (_, v, _) = sync(&store, &dir, &[]);
    assert_eq!(v["hashed"], 0, "no longer racy");
}

fn blob(store: &Path, hex: &str) -> PathBuf {
    store.join("blobs").join(&hex[..2]).join(hex)
}

#[test]
fn a_blob_quarantined_since_the_last_sync_is_read_and_stored_again() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    write(&dir.join("a"), b"alpha");
    write(&dir.join("sub/b"), b"bravo, to be damaged");
    write(&dir.join("sub/c"), b"charlie");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (_, v, err) = sync(&store, &dir, &[]);
    assert_eq!(v["hashed"], 3, "{err}");
    // Damage b's blob; fsck --repair moves it to quarantine/.
    let b = blob(
        &store,
        blake3::hash(b"bravo, to be damaged").to_hex().as_str(),
    );
    fs::set_permissions(&b, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&b, b"bravo, to be damagee").unwrap();
    let o = Command::new(BIN)
        .arg("--store")
        .arg(&store)
        .args(["fsck", "--repair"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!b.exists(), "fsck: {}", String::from_utf8_lossy(&o.stderr));
    // The stat cache still vouches for b, but its blob is gone since: b
    // alone is read again, and its blob is back.
    let (code, v, err) = sync(&store, &dir, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["hashed"], 1, "{err}");
    assert_eq!(v["stat_cache_hits"], 2);
    assert_eq!(fs::read(&b).unwrap(), b"bravo, to be damaged");
    let (_, v, _) = sync(&store, &dir, &[]);
    assert_eq!(v["hashed"], 0);
}

#[test]
fn a_file_rewritten_while_it_is_read_is_retried_or_a_conflict_never_a_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    let f = dir.join("hot");
    write(&f, &vec![b'a'; 1 << 20]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (f, stop) = (f.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 0u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k = k.wrapping_add(1);
                // Not atomic: truncate, then write, so partial states exist.
                let len = (1 << 20) + (k as usize) * 4096;
                let _ = fs::write(&f, vec![b'a' + (k % 26); len]);
            }
        })
    };
    let mut conflicts = 0;
    let mut oks = 0;
    let mut retries = 0;
    for _ in 0..10 {
        let (code, v, err) = sync(&store, &dir, &[]);
        match code {
            0 => {
                oks += 1;
                retries += v["retries"].as_u64().unwrap();
                // The snapshot names a whole version of `hot`: one letter,
                // the length that letter was written with; never a mix.
                let tree = v["tree"].as_str().unwrap();
                let t = dagfs::store::Tree::decode(&fs::read(blob(&store, tree)).unwrap()).unwrap();
                let Some(dagfs::store::Node::File { digest, size, .. }) =
                    t.find(b"hot").map(|e| e.node.clone())
                else {
                    panic!("no file `hot` in the snapshot")
                };
                let bytes = fs::read(blob(&store, &digest.to_hex())).unwrap();
                assert_eq!(bytes.len() as u64, size);
                assert_eq!(blake3::hash(&bytes).to_hex().as_str(), digest.to_hex());
                // NB: the writer truncates, then writes: an empty file is a
                // state it really passes through, and so is any prefix of a
                // version (write(2) fills the page cache page by page, and
                // readers see the size grow). A read is kept only when the
                // stat was unchanged across it and, for a file this fresh, a
                // second read agreed: the writer was stopped mid-write for
                // that long, so the file really held those bytes. What must
                // never happen is bytes of two versions in one snapshot.
                assert!(
                    bytes.iter().all(|&c| c == bytes[0]),
                    "the snapshot's file mixes two versions"
                );
            }
            13 => {
                conflicts += 1;
                assert!(err.contains("conflict") && err.contains("hot"), "{err}");
            }
            c => panic!("exit {c}: {err}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!("{oks} clean syncs ({retries} retries), {conflicts} conflicts");
    assert!(
        retries + conflicts > 0,
        "the writer never overlapped a read: the test proves nothing"
    );
    assert_eq!(oks + conflicts, 10);
}

#[test]
fn ignore_rules_and_filters_leave_paths_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    write(&dir.join(".gitignore"), b"*.o\nbuild/\n");
    write(&dir.join(".dagfsignore"), b"secret.txt\n");
    for p in [
        "main.c",
        "main.o",
        "build/out.bin",
        "secret.txt",
        "notes.log",
        "sub/keep.c",
        ".git/HEAD",
    ] {
        write(&dir.join(p), p.as_bytes());
    }
    let (code, v, err) = sync(&store, &dir, &["--exclude", "*.log"]);
    assert_eq!(code, 0, "{err}");
    let got: Vec<String> = reported(&v).into_keys().collect();
    assert_eq!(
        got,
        [".dagfsignore", ".gitignore", "main.c", "sub", "sub/keep.c"]
    );
    let (code, v, err) = sync(&store, &dir, &["--name", "conly", "--include", "*.c"]);
    assert_eq!(code, 0, "{err}");
    let got: Vec<String> = reported(&v).into_keys().collect();
    assert_eq!(got, ["main.c", "sub", "sub/keep.c"]);
}

#[test]
fn unreadable_files_fail_clearly_or_are_skipped() {
    if unsafe { libc::geteuid() } == 0 && Command::new("setpriv").arg("--version").output().is_err()
    {
        eprintln!("skipping: root reads everything and setpriv is missing");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    write(&dir.join("ok.txt"), b"ok");
    write(&dir.join("locked.txt"), b"no");
    fs::set_permissions(dir.join("locked.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    let as_nobody = |extra: &[&str]| {
        let mut c = if unsafe { libc::geteuid() } == 0 {
            for p in [tmp.path(), &dir] {
                fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
            }
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
            c
        } else {
            Command::new(BIN)
        };
        c.arg("--store")
            .arg(&store)
            .arg("sync")
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = as_nobody(&[]);
    assert_eq!(
        o.status.code(),
        Some(14),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("locked.txt"));
    let o = as_nobody(&["--skip-unreadable"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("left out 1 unreadable") && out.contains("locked.txt"),
        "{out}"
    );
}

fn run(store: &Path, dir: &Path) -> (i32, String) {
    let o = Command::new(BIN)
        .arg("--store")
        .arg(store)
        .args(["run", "-f"])
        .arg(dir.join("dagfs.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn cat(store: &Path, spec: &str) -> String {
    let o = Command::new(BIN)
        .arg("--store")
        .arg(store)
        .args(["cat", spec])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn task_inputs_are_snapshots_read_back_exactly_as_keyed() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, p) = (tmp.path().join("store"), tmp.path().join("p"));
    write(&p.join("src/a.txt"), b"one\n");
    write(&p.join("src/.gitignore"), b"*.tmp\n");
    write(&p.join("conf.ini"), b"x=1\n");
    // The task tries to edit the host file before reading its input: it
    // cannot (isolated, its declared inputs are the read-only snapshot), and
    // reads the snapshot its key was computed from, in place or under
    // $DAGFS_INPUTS.
    write(
        &p.join("dagfs.toml"),
        br#"name = "snap"
[tasks.use]
run = '(echo edited > src/a.txt) 2>/dev/null; cat src/a.txt $DAGFS_INPUTS/src/a.txt $DAGFS_INPUTS/conf.ini > $DAGFS_OUT/seen'
inputs = ["src/", "conf.ini"]
"#,
    );
    let (code, err) = run(&store, &p);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cat(&store, "snap/use/seen"), "one\none\nx=1\n");
    assert_eq!(fs::read_to_string(p.join("src/a.txt")).unwrap(), "one\n");
    // The host file edited: a real change, so the task re-runs.
    write(&p.join("src/a.txt"), b"edited\n");
    let (_, err) = run(&store, &p);
    assert!(err.contains("1 executed"), "{err}");
    assert_eq!(cat(&store, "snap/use/seen"), "edited\nedited\nx=1\n");
    // An ignored file does not enter the snapshot, so it changes no key.
    write(&p.join("src/scratch.tmp"), b"noise");
    fs::write(
        p.join("dagfs.toml"),
        fs::read_to_string(p.join("dagfs.toml"))
            .unwrap()
            .replace("(echo edited > src/a.txt) 2>/dev/null; ", ""),
    )
    .unwrap();
    let (_, err) = run(&store, &p);
    assert!(err.contains("1 executed"), "the command changed: {err}");
    write(&p.join("src/scratch.tmp"), b"more noise");
    let (_, err) = run(&store, &p);
    assert!(
        err.contains("0 executed, 1 cached"),
        "an ignored file changed no key: {err}"
    );
    // gc keeps the input snapshots an entry's key names (explain reads
    // them). NB: the digest is read before gc, and nothing re-snapshots the
    // input between gc and the check.
    let o = Command::new(BIN)
        .arg("--store")
        .arg(&store)
        .args(["explain", "-f"])
        .arg(p.join("dagfs.toml"))
        .arg("use")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("input     src/"), "{text}");
    let tree = text
        .lines()
        .find(|l| l.contains("input     src/"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let o = Command::new(BIN)
        .arg("--store")
        .arg(&store)
        .arg("gc")
        .output()
        .unwrap();
    assert!(o.status.success());
    let found = fs::read_dir(store.join("blobs").join(&tree[..2]))
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(&tree));
    assert!(found, "gc swept the input snapshot {tree}");
}

/// Regression: a file input inside a directory input (`src/`, `src/a.h`)
/// made `$DAGFS_INPUTS` fail with "File exists".
#[test]
fn overlapping_inputs_are_each_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, p) = (tmp.path().join("store"), tmp.path().join("p"));
    write(&p.join("src/a.h"), b"A\n");
    write(
        &p.join("dagfs.toml"),
        br#"[tasks.t]
run = 'cat $DAGFS_INPUTS/src/a.h $DAGFS_INPUTS/src/a.h > $DAGFS_OUT/o'
inputs = ["src/a.h", "src/", "src"]
"#,
    );
    let (code, err) = run(&store, &p);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cat(&store, "p/t/o"), "A\nA\n");
}

/// A `dagfs sync --watch --json` child whose JSON lines are collected.
struct Watching {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Watching {
    fn start(store: &Path, dir: &Path) -> Watching {
        let mut child = Command::new(BIN)
            .arg("--store")
            .arg(store)
            .args(["sync", "--watch", "--json"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    let _ = tx.send(v);
                }
            }
        });
        Watching { child, lines }
    }

    /// The next snapshot for which `pred` holds (30 s at most).
    fn until(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no snapshot where {what}"));
            if pred(&v) {
                return v;
            }
        }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait().unwrap()
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[test]
fn watch_reports_each_change_and_stops_cleanly_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    write(&dir.join("a"), b"1");
    let w = Watching::start(&store, &dir);
    w.until("the first snapshot", |v| v["seq"] == 1);
    write(&dir.join("b"), b"2");
    let v = w.until("b is added", |v| {
        reported(v).get("b").map(String::as_str) == Some("added")
    });
    assert_eq!(reported(&v).len(), 1, "{v}");
    fs::remove_file(dir.join("a")).unwrap();
    let v = w.until("a is removed", |v| {
        reported(v).get("a").map(String::as_str) == Some("removed")
    });
    assert_eq!(v["files"], 1);
    let status = w.stop();
    assert!(status.success(), "Ctrl-C stops cleanly: {status}");
}

#[test]
fn watch_after_a_burst_of_100000_changes_has_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    write(&dir.join("seed"), b"0");
    let w = Watching::start(&store, &dir);
    w.until("the first snapshot", |v| v["seq"] == 1);
    // Far more events than inotify queues by default (16,384): the watcher
    // overflows, and the snapshot must still be complete.
    for d in 0..100 {
        let sub = dir.join(format!("d{d}"));
        fs::create_dir(&sub).unwrap();
        for f in 0..1000 {
            fs::write(sub.join(format!("f{f}")), [d as u8, (f % 256) as u8]).unwrap();
        }
    }
    let v = w.until("all 100,001 files are in", |v| v["files"] == 100_001);
    assert_eq!(v["files"], 100_001);
    assert!(w.stop().success());
    // And an independent check: a fresh sync under another name agrees.
    let (_, fresh, err) = sync(&store, &dir, &["--name", "fresh"]);
    assert_eq!(fresh["tree"], v["tree"], "{err}");
}

/// Every file, symlink and directory under `root` (not `root`), sorted.
fn walk_all(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut leaves, mut dirs) = (Vec::new(), Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
                dirs.push(p);
            } else {
                leaves.push(p);
            }
        }
    }
    leaves.sort();
    dirs.sort();
    (leaves, dirs)
}

impl Watching {
    /// Wait until the latest snapshot's tree is `want` (`last` holds the
    /// latest seen so far, and is updated).
    fn converge(&self, want: &str, last: &mut String, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while last != want {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => *last = v["tree"].as_str().unwrap_or_default().to_string(),
                Err(_) => return false,
            }
        }
        true
    }
}

/// One round of 1 to 5 random edits of `dir` (`outside`: a scratch
/// directory on the same filesystem); returns the kinds of edit made.
fn random_edits(rng: &mut Rng, dir: &Path, outside: &Path, round: u32) -> Vec<u64> {
    // Edits may meet a path an earlier edit made a file: then they do nothing.
    let put = |p: &Path, b: &[u8]| {
        let _ = fs::create_dir_all(p.parent().unwrap());
        let _ = fs::write(p, b);
    };
    let mut did = Vec::new();
    for _ in 0..1 + rng.next(5) {
        let (leaves, dirs) = walk_all(dir);
        let pick = |rng: &mut Rng, v: &[PathBuf]| -> Option<PathBuf> {
            (!v.is_empty()).then(|| v[rng.next(v.len() as u64) as usize].clone())
        };
        let some_dir = pick(rng, &dirs).unwrap_or_else(|| dir.to_path_buf());
        let n = rng.next(1000);
        let op = rng.next(16);
        match op {
            0 => put(&some_dir.join(format!("new{n}")), format!("{n}").as_bytes()),
            1 => {
                if let Some(f) = pick(rng, &leaves).filter(|f| f.is_file()) {
                    fs::write(&f, format!("changed {n}")).unwrap();
                }
            }
            2 => {
                if let Some(f) = pick(rng, &leaves) {
                    fs::remove_file(f).unwrap();
                }
            }
            3 => {
                if let Some(d) = pick(rng, &dirs) {
                    fs::remove_dir_all(d).unwrap();
                }
            }
            4 => {
                // A file renamed into another directory.
                if let Some(f) = pick(rng, &leaves) {
                    let _ = fs::rename(f, some_dir.join(format!("moved{n}")));
                }
            }
            5 => {
                // A directory renamed into another (not into itself).
                if let Some(d) = pick(rng, &dirs).filter(|d| !some_dir.starts_with(d)) {
                    let _ = fs::rename(d, some_dir.join(format!("dmoved{n}")));
                }
            }
            6 => {
                // file -> dir, dir -> file
                if let Some(f) = pick(rng, &leaves) {
                    fs::remove_file(&f).unwrap();
                    put(&f.join("inner"), b"was a file");
                } else if let Some(d) = pick(rng, &dirs) {
                    fs::remove_dir_all(&d).unwrap();
                    fs::write(&d, b"was a dir").unwrap();
                }
            }
            7 => {
                // file -> symlink, symlink -> file
                if let Some(f) = pick(rng, &leaves) {
                    let was_link = fs::symlink_metadata(&f).unwrap().file_type().is_symlink();
                    fs::remove_file(&f).unwrap();
                    if was_link {
                        fs::write(&f, b"was a link").unwrap();
                    } else {
                        symlink(format!("../target{n}"), &f).unwrap();
                    }
                }
            }
            8 => {
                if let Some(f) = pick(rng, &leaves).filter(|f| f.is_file()) {
                    let mode = fs::metadata(&f).unwrap().permissions().mode() ^ 0o111;
                    fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
                }
            }
            9 => {
                // Ignored files: no change at all.
                put(&some_dir.join(format!("obj{n}.o")), b"ignored");
                put(&dir.join(format!("build/b{n}")), b"ignored");
            }
            10 => {
                // An ignore-file edit changes what is in, without any
                // event on the files it covers.
                let pats = [
                    "*.o\nbuild/\n",
                    "*.o\nbuild/\ne1/\n",
                    "build/\n",
                    "*.txt\n!f1*.txt\n",
                    // Ignores itself: not in the tree, still in force.
                    ".gitignore\n*.o\nd2/\n",
                ];
                let gi = pick(rng, &dirs)
                    .unwrap_or_else(|| dir.to_path_buf())
                    .join(".gitignore");
                let gi = if rng.next(2) == 0 {
                    dir.join(".gitignore")
                } else {
                    gi
                };
                put(&gi, pats[rng.next(pats.len() as u64) as usize].as_bytes());
            }
            11 => {
                // A whole tree made outside, then moved in: no events
                // for what is inside it.
                let t = outside.join(format!("t{round}-{n}"));
                put(&t.join("a/b/one"), b"1");
                put(&t.join("two"), b"2");
                symlink("one", t.join("a/b/l")).unwrap();
                let _ = fs::rename(&t, some_dir.join(format!("in{n}")));
            }
            12 | 15 => {
                // A directory replaced by another of the same name,
                // with subdirectories of the same names.
                if let Some(d) = pick(rng, &dirs) {
                    let subs: Vec<_> = fs::read_dir(&d)
                        .unwrap()
                        .map(|e| e.unwrap())
                        .filter(|e| e.file_type().unwrap().is_dir())
                        .map(|e| e.file_name())
                        .collect();
                    let r = outside.join(format!("new{round}-{n}"));
                    put(&r.join("fresh"), b"replacement");
                    for s in subs {
                        put(&r.join(s).join("fresh"), b"replacement");
                    }
                    fs::rename(&d, outside.join(format!("gone{round}-{n}"))).unwrap();
                    fs::rename(&r, &d).unwrap();
                }
            }
            13 => {
                // A new directory, filled at once (races the watcher
                // adding its watch).
                let nd = some_dir.join(format!("burst{n}"));
                for k in 0..50 {
                    put(&nd.join(format!("s{}/f{k}", k % 3)), &[k as u8]);
                }
            }
            14 => {
                // Moved out of the tree.
                if let Some(f) = pick(rng, &leaves) {
                    fs::rename(f, outside.join(format!("out{round}-{n}"))).unwrap();
                }
            }
            _ => unreachable!(),
        }
        did.push(op);
    }
    did
}

/// A temporary directory holding `src/` (60 files in nested directories,
/// ignore files, an ignored build output, a symlink) for `random_edits`,
/// an empty `outside/` beside it, and the path for a store: (the directory,
/// store, src, outside).
fn edit_fixture() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir, outside) = (
        tmp.path().join("store"),
        tmp.path().join("src"),
        tmp.path().join("outside"),
    );
    fs::create_dir_all(&outside).unwrap();
    for i in 0..60 {
        write(
            &dir.join(format!("d{}/e{}/f{i}.txt", i % 5, i % 3)),
            format!("file {i}").as_bytes(),
        );
    }
    write(&dir.join(".gitignore"), b"*.o\nbuild/\n");
    write(&dir.join("d1/.dagfsignore"), b"*.tmp\n");
    write(&dir.join("build/out.bin"), b"ignored");
    symlink("d0/e0/f0.txt", dir.join("link")).unwrap();
    (tmp, store, dir, outside)
}

/// The watch computes each snapshot from dirty paths alone, on top of the
/// previous tree: after every batch of random edits its snapshot must be
/// the very tree a fresh full sync (new store, no stat cache) computes.
#[test]
fn watched_snapshots_equal_a_fresh_full_sync_after_random_edits() {
    let (tmp, store, dir, outside) = edit_fixture();
    let w = Watching::start(&store, &dir);
    let first = w.until("the first snapshot", |v| v["seq"] == 1);
    let mut last = first["tree"].as_str().unwrap().to_string();
    let mut rng = Rng(11);
    let mut fresh_n = 0;
    for round in 0..30 {
        let did = random_edits(&mut rng, &dir, &outside, round);
        fresh_n += 1;
        let (code, fresh, err) = sync(&tmp.path().join(format!("fresh{fresh_n}")), &dir, &[]);
        assert_eq!(code, 0, "{err}");
        let want = fresh["tree"].as_str().unwrap().to_string();
        assert!(
            w.converge(&want, &mut last, std::time::Duration::from_secs(20)),
            "round {round} (edits {did:?}): the watch's snapshot {last} is not the full sync's {want}"
        );
    }
    assert!(w.stop().success());
}

/// A rescan with `dagfs sync` is validated against the stat cache and then
/// walks only what changed (see `sync::statcache`): after every round of
/// random edits its snapshot must be the very tree a fresh full sync (new
/// store, no stat cache) computes, and a rescan with nothing changed reads
/// nothing.
#[test]
fn rescans_equal_a_fresh_full_sync_after_random_edits() {
    let (tmp, store, dir, outside) = edit_fixture();
    let (code, _, err) = sync(&store, &dir, &[]);
    assert_eq!(code, 0, "{err}");
    let mut rng = Rng(23);
    for round in 0..60 {
        // Half the rounds right after the last scan (racy stamps), half not.
        if round % 2 == 1 {
            std::thread::sleep(std::time::Duration::from_millis(60));
        }
        let did = random_edits(&mut rng, &dir, &outside, round);
        let (code, got, err) = sync(&store, &dir, &[]);
        assert_eq!(code, 0, "{err}");
        let (code, fresh, err) = sync(&tmp.path().join(format!("fresh{round}")), &dir, &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            got["tree"], fresh["tree"],
            "round {round} (edits {did:?}): the rescan's snapshot is not the full sync's"
        );
        assert_eq!(got["files"], fresh["files"], "round {round}");
        assert_eq!(got["bytes"], fresh["bytes"], "round {round}");
        fs::remove_dir_all(tmp.path().join(format!("fresh{round}"))).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (_, _, _) = sync(&store, &dir, &[]);
    let (_, v, _) = sync(&store, &dir, &[]);
    assert_eq!(v["hashed"], 0, "nothing changed: nothing read");
    assert_eq!(v["new_snapshot"], false);
    assert_eq!(v["stat_cache_hits"], v["files"]);
}

/// The stat-cache copy a one-shot sync validates while it opens the index
/// (`statcache::Copy`) is used only when its root record is the index's: a
/// stale copy (from before the last change) or a damaged one changes
/// nothing in what the sync finds; a copy behind the index in a file's
/// stat alone (a touch) agrees, and costs at most a re-read.
#[test]
fn a_stale_or_damaged_stat_cache_copy_is_never_trusted_over_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    write(&dir.join("sub/a"), b"alpha");
    write(&dir.join("sub/b"), b"bravo");
    write(&dir.join("c"), b"charlie");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (_, v, err) = sync(&store, &dir, &[]);
    assert_eq!(v["hashed"], 3, "{err}");
    let first_tree = v["tree"].as_str().unwrap().to_string();
    let copies: Vec<PathBuf> = fs::read_dir(store.join("statcache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(copies.len(), 1, "one copy per synced root: {copies:?}");
    let copy = &copies[0];
    let first = fs::read(copy).unwrap();

    write(&dir.join("sub/a"), b"alpha, longer now");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (_, v, err) = sync(&store, &dir, &[]);
    assert_eq!(v["hashed"], 1, "{err}");
    let tree = v["tree"].clone();
    let second = fs::read(copy).unwrap();
    assert_ne!(first, second, "the copy follows the index");

    let unchanged = |what: &str| {
        let (code, v, err) = sync(&store, &dir, &[]);
        assert_eq!(code, 0, "{what}: {err}");
        assert_eq!(v["tree"], tree, "{what}");
        assert_eq!(v["hashed"], 0, "{what}");
        assert_eq!(
            v["changes"].as_array().map(Vec::len),
            Some(0),
            "{what}: {v:#}"
        );
    };
    // A copy from before the last change: its root record differs.
    fs::write(copy, &first).unwrap();
    unchanged("a stale copy");
    // A damaged copy: its checksum fails.
    let mut bad = fs::read(copy).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    fs::write(copy, &bad).unwrap();
    unchanged("a damaged copy");
    fs::write(copy, b"").unwrap();
    unchanged("an empty copy");
    // A forged copy, whole and matching the disk but for the root's tree,
    // which names the earlier snapshot (still stored): only its root
    // record's disagreement with the index keeps it from being believed.
    unchanged("a fresh copy");
    let hex_bytes = |h: &str| -> Vec<u8> {
        (0..32)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    };
    let (t1, t2) = (hex_bytes(&first_tree), hex_bytes(tree.as_str().unwrap()));
    let mut forged = fs::read(copy).unwrap();
    let body = forged.len() - 32;
    let mut n = 0;
    for i in 0..body - 32 {
        if forged[i..i + 32] == t2[..] {
            forged[i..i + 32].copy_from_slice(&t1);
            n += 1;
        }
    }
    assert!(n > 0, "the root's tree is in the copy");
    let sum = blake3::hash(&forged[..body]);
    forged[body..].copy_from_slice(sum.as_bytes());
    fs::write(copy, &forged).unwrap();
    unchanged("a forged copy");

    // Behind in a stat alone: b touched (same bytes), the copy from before.
    let before_touch = fs::read(copy).unwrap();
    let f = fs::File::options()
        .write(true)
        .open(dir.join("sub/b"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (code, v, err) = sync(&store, &dir, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["tree"], tree);
    fs::write(copy, &before_touch).unwrap();
    let (code, v, err) = sync(&store, &dir, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["tree"], tree, "a copy behind in a stat");
    assert_eq!(v["changes"].as_array().map(Vec::len), Some(0), "{v:#}");
    unchanged("the copy written by that sync");
}

/// A sync that waited for the store lock does not take its copy's
/// validation from before the wait: an edit made meanwhile is in it.
#[test]
fn a_sync_that_waited_for_the_store_lock_sees_edits_made_while_it_waited() {
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    write(&dir.join("a"), b"alpha");
    write(&dir.join("b"), b"bravo");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (code, _, err) = sync(&store, &dir, &[]);
    assert_eq!(code, 0, "{err}");
    let (_, v, _) = sync(&store, &dir, &[]);
    assert_eq!(v["hashed"], 0);
    // Hold the store's lock as another owner would.
    let lock = fs::File::options()
        .read(true)
        .write(true)
        .open(store.join("lock"))
        .unwrap();
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let child = Command::new(BIN)
        .arg("--store")
        .arg(&store)
        .arg("sync")
        .arg(&dir)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    write(&dir.join("a"), b"alpha, edited while the sync waited");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(lock);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("waiting for the store lock"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hashed"], 1, "{v:#}");
    assert_eq!(v["changes"].as_array().map(Vec::len), Some(1), "{v:#}");
}

/// A first snapshot's change set is made from the trees the walk just
/// built, on a second thread (`sync::changes::Fresh`); `sync --log` makes
/// the same one from the stored trees. Both, in order, must agree, and be
/// sorted by path bytes (names that sort around `/` included).
#[test]
fn a_first_snapshots_change_set_is_the_one_the_store_gives_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    for p in ["a/x", "a.b", "a-b/y", "a0", "b/c/d/e", "b/c.d", "z"] {
        write(&dir.join(p), p.as_bytes());
    }
    for i in 0..300 {
        write(&dir.join(format!("many/d{}/f{i}", i % 7)), b"x");
    }
    fs::create_dir_all(dir.join("empty")).unwrap();
    fs::write(dir.join(std::ffi::OsStr::from_bytes(b"odd-\xff")), b"bytes").unwrap();
    symlink("a/x", dir.join("link")).unwrap();
    let (code, v, err) = sync(&store, &dir, &["--name", "s"]);
    assert_eq!(code, 0, "{err}");
    let first = listed_changes(&v);
    // 7 + 300 files, the link, the odd name; a, a-b, b, b/c, b/c/d,
    // many and its 7, empty.
    assert_eq!(first.len(), 307 + 2 + 5 + 8 + 1, "{first:?}");
    assert!(first.iter().all(|(_, k)| k == "added"), "{first:?}");
    let mut sorted = first.clone();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    assert_eq!(first, sorted, "not in path order");

    let o = Command::new(BIN)
        .arg("--store")
        .arg(&store)
        .args(["sync", "--log", "s@1", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed_changes(&log[0]), first);
}

/// A special file whose name is not UTF-8 is reported by `--json`, its name
/// lossily as UTF-8 (as change paths are): the report of a snapshot already
/// recorded once panicked there.
#[test]
fn json_reports_a_special_file_whose_name_is_not_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, dir) = (tmp.path().join("store"), tmp.path().join("src"));
    write(&dir.join("a"), b"a");
    let fifo = dir.join(std::ffi::OsStr::from_bytes(b"fifo-\xff"));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let (code, v, err) = sync(&store, &dir, &[]);
    assert_eq!(code, 0, "{err}");
    let special = v["special"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(special.len(), 1, "{v}");
    assert!(
        special[0].as_str().unwrap().ends_with("fifo-\u{fffd}"),
        "{v}"
    );
    assert_eq!(listed_changes(&v), [("a".to_string(), "added".to_string())]);
}
