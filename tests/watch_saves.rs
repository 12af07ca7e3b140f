//! `dagfs sync --watch` under the way tools really save files (issue 12,
//! item 4): write a temp file and rename it over the original, vim's
//! backup-and-rename, and `git checkout` of a large tree. A file vanishing
//! between an event and its read is a normal event: the watch keeps going
//! and, once the writer stops, its latest snapshot is what a fresh sync of
//! the directory stores.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{dagfs, text};

/// A foreground `dagfs sync DIR --watch --json`, its snapshots read from
/// its stdout; stopped (SIGINT) when dropped.
struct Watch {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<serde_json::Value>,
}

impl Watch {
    fn start(store: &Path, dir: &Path) -> Watch {
        let mut child = dagfs(store, &["sync", dir.to_str().unwrap(), "--watch", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut w = Watch {
            child,
            lines,
            seen: Vec::new(),
        };
        w.wait_for("the first snapshot", |_| true);
        w
    }

    /// Wait (30 s at most) for a snapshot that `pred` accepts; fails if
    /// the watch exits first.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
        if self.seen.last().is_some_and(&pred) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                    let ok = pred(&v);
                    self.seen.push(v);
                    if ok {
                        return;
                    }
                }
                Err(_) => {
                    if let Some(status) = self.child.try_wait().unwrap() {
                        let mut err = String::new();
                        if let Some(mut e) = self.child.stderr.take() {
                            let _ = std::io::Read::read_to_string(&mut e, &mut err);
                        }
                        panic!("the watch exited ({status}) waiting for {what}: {err}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "timed out waiting for {what}; last: {:?}",
                        self.seen.last()
                    );
                }
            }
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tree a fresh sync of `dir` stores (in a store of its own).
fn fresh_tree(dir: &Path) -> String {
    let t = tempfile::tempdir().unwrap();
    let o = dagfs(t.path(), &["sync", dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["tree"].as_str().unwrap().to_string()
}

/// Save `path` as editors do, `n` times over `names` files: write a temp
/// file and rename it over the original, then vim's way (rename the
/// original to a backup, write a new file, delete the backup).
fn save_like_editors(dir: &Path, names: &[&str], n: usize) {
    for i in 0..n {
        let name = names[i % names.len()];
        let f = dir.join(name);
        let tmp = dir.join(format!(".{name}.swp"));
        fs::write(&tmp, format!("temp-and-rename {i}\n")).unwrap();
        fs::rename(&tmp, &f).unwrap();
        let backup = dir.join(format!("{name}~"));
        fs::rename(&f, &backup).unwrap();
        fs::write(&f, format!("backup-and-rename {i}\n")).unwrap();
        fs::remove_file(&backup).unwrap();
    }
}

/// Regression (issue 12, item 4): at ~200 saves/s the watch exited 8
/// within a second (`…/.f.swp: No such file or directory`).
#[test]
fn a_watch_survives_editors_saving_by_rename() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let dir = t.path().join("d");
    fs::create_dir(&dir).unwrap();
    let names = ["a.txt", "b.txt", "c.txt", "d.txt"];
    for n in names {
        fs::write(dir.join(n), "start\n").unwrap();
    }
    let mut w = Watch::start(&store, &dir);
    // Several seconds of saves as fast as they go (far more than 200/s).
    let until = Instant::now() + Duration::from_secs(3);
    let mut saves = 0;
    while Instant::now() < until {
        save_like_editors(&dir, &names, 40);
        saves += 40;
        assert!(w.alive(), "the watch died after {saves} saves");
    }
    let want = fresh_tree(&dir);
    w.wait_for("the final state", |v| v["tree"] == want.as_str());
    assert!(w.alive());
}

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "advice.detachedHead=false",
        ])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("git");
    assert!(o.status.success(), "git {args:?}: {}", text(&o));
}

/// A tree of `dirs` × `files` files (with directories only one branch has).
fn write_tree(dir: &Path, dirs: usize, files: usize, tag: &str) -> Vec<PathBuf> {
    let mut made = Vec::new();
    for d in 0..dirs {
        let sub = dir
            .join(format!("{tag}-only-{}", d % 3))
            .join(format!("d{d}"));
        let shared = dir.join(format!("shared/d{d}"));
        for s in [&sub, &shared] {
            fs::create_dir_all(s).unwrap();
        }
        for f in 0..files {
            let p = shared.join(format!("f{f}"));
            fs::write(&p, format!("{tag} {d} {f}\n")).unwrap();
            made.push(p);
            if f % 4 == 0 {
                let p = sub.join(format!("f{f}"));
                fs::write(&p, format!("{tag} only {d} {f}\n")).unwrap();
                made.push(p);
            }
        }
    }
    made
}

/// Regression (issue 12, item 4): `git checkout` between two branches of a
/// large tree (whole directories removed and made, every file replaced)
/// under a watch: the watch keeps going and ends at the checked-out tree.
/// (30 checkouts: with 6 the old code often survived; with 30 it died at
/// checkout 1 and 22 in two tries.) Slow: 40-55 s on 2 busy cores.
#[test]
fn a_watch_survives_git_checkout_of_a_large_tree() {
    if Command::new("git").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no git");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let dir = t.path().join("repo");
    fs::create_dir(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "one"]);
    write_tree(&dir, 40, 50, "one");
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-qm", "one"]);
    git(&dir, &["checkout", "-q", "-b", "two"]);
    fs::remove_dir_all(dir.join("shared")).unwrap();
    for i in 0..3 {
        let _ = fs::remove_dir_all(dir.join(format!("one-only-{i}")));
    }
    write_tree(&dir, 40, 50, "two");
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-qm", "two"]);
    // NB: .git changes too (index, HEAD): it is part of the snapshot.
    let mut w = Watch::start(&store, &dir);
    for round in 0..30 {
        let branch = if round % 2 == 0 { "one" } else { "two" };
        git(&dir, &["checkout", "-q", branch]);
        assert!(w.alive(), "the watch died at checkout {round}");
    }
    let want = fresh_tree(&dir);
    w.wait_for("the checked-out tree", |v| v["tree"] == want.as_str());
    assert!(w.alive());
}

/// Regression (issue 12, item 4): under editor saves, the daemon's watch
/// showed `watch FAILED` and `/syncs/NAME` went stale. Now it stays
/// watched and its latest snapshot reaches the final state.
#[test]
fn a_daemon_watch_survives_editors_saving_by_rename() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let dir = t.path().join("d");
    fs::create_dir(&dir).unwrap();
    let names = ["a.txt", "b.txt", "c.txt"];
    for n in names {
        fs::write(dir.join(n), "start\n").unwrap();
    }
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _m = match common::Mounted::try_new(&store, &mnt) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount: {e}");
            return;
        }
    };
    let o = dagfs(
        &store,
        &["sync", dir.to_str().unwrap(), "--watch", "--name", "d"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let list = || {
        let o = dagfs(&store, &["sync", "--list", "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array().unwrap()[0].clone()
    };
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        save_like_editors(&dir, &names, 40);
        let l = list();
        assert_eq!(l["watched"], true, "{l}");
    }
    let want = fresh_tree(&dir);
    common::wait_for("the daemon's watch to reach the final state", || {
        let l = list();
        assert!(l["watch_error"].is_null(), "{l}");
        l["latest"]["tree"] == want.as_str()
    });
    let listed: Vec<String> = fs::read_dir(mnt.join("syncs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(listed.contains(&"d".to_string()), "{listed:?}");
}

/// A watched edit of a file's content, in directories whose stat is as the
/// stat cache recorded it, is taken without listing them (the previous
/// tree's names; `sync/walk/unlisted.rs`); creates and removes between
/// edits take the listing walk. Every snapshot names its change; the last
/// is what a fresh sync stores; and the stat-cache records those passes
/// wrote let a later one-shot sync see a file made after them.
#[test]
fn edits_taken_without_listing_agree_with_a_fresh_sync() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let dir = t.path().join("d");
    let mut files = Vec::new();
    for (sub, n) in [("a/b", 10), ("a", 5), ("c", 5)] {
        fs::create_dir_all(dir.join(sub)).unwrap();
        for i in 0..n {
            let rel = format!("{sub}/f{i}");
            fs::write(dir.join(&rel), format!("start {rel}\n")).unwrap();
            files.push(rel);
        }
    }
    // NB: stamps older than the racy window, so the records vouch for them.
    std::thread::sleep(Duration::from_millis(50));
    let mut w = Watch::start(&store, &dir);
    let names_it = |rel: String| {
        move |v: &serde_json::Value| {
            v["changes"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["path"] == rel.as_str()))
        }
    };
    for i in 0..40 {
        let rel = if i % 8 == 7 {
            // A name made (or, every other time, removed): a listing.
            let rel = format!("a/b/new{}", i / 16);
            match dir.join(&rel).exists() {
                true => fs::remove_file(dir.join(&rel)).unwrap(),
                false => fs::write(dir.join(&rel), format!("made {i}")).unwrap(),
            }
            rel
        } else {
            let rel = files[(i * 7) % files.len()].clone();
            fs::write(dir.join(&rel), format!("edit {i} of {rel}\n")).unwrap();
            rel
        };
        w.wait_for(&format!("change {i} ({rel})"), names_it(rel.clone()));
    }
    let want = fresh_tree(&dir);
    w.wait_for("the final state", |v| v["tree"] == want.as_str());
    drop(w);
    let one_shot = |what: &str| {
        let o = dagfs(&store, &["sync", dir.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{what}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["tree"], fresh_tree(&dir).as_str(), "{what}: {v}");
    };
    one_shot("a one-shot sync after the watch");
    // NB: `c` had edits only: its record was written by passes that did
    // not list it.
    fs::write(dir.join("c/late"), "made after the watch").unwrap();
    one_shot("a file made in a directory the watch never listed again");
    common::fsck_clean(&store);
}
