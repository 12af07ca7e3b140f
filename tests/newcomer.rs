//! Small things a newcomer hit (issue 11, item 8), each pinned by a test
//! that drives the real `dagfs` binary in its own temporary store.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::{dagfs, env, text, Sandbox};

fn run(store: &Path, args: &[&str]) -> Output {
    dagfs(store, args).output().unwrap()
}

fn ok(store: &Path, args: &[&str]) -> String {
    let o = run(store, args);
    assert!(o.status.success(), "dagfs {args:?}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// A pipeline `p` whose task `t` leaves `f.txt`, a link `l -> f.txt`, a
/// directory link `dl -> d`, `d/g.txt` and a link climbing out.
fn links_pipeline(e: &Sandbox) -> PathBuf {
    let dir = e.root.join("p");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("dagfs.toml"),
        r#"
name = "p"
[tasks.t]
run = "cd $DAGFS_OUT && echo file > f.txt && ln -s f.txt l && mkdir d && echo g > d/g.txt && ln -s d dl && ln -s ../../etc/passwd out && ln -s /etc/passwd abs && ln -s ../f.txt d/up"
"#,
    )
    .unwrap();
    dir.join("dagfs.toml")
}

/// Regression: `dagfs cat` of a symlink printed its target, and a path
/// through a directory symlink was refused.
#[test]
fn cat_follows_symlinks_inside_the_tree() {
    let e = env();
    let f = links_pipeline(&e);
    ok(&e.store, &["run", "-f", f.to_str().unwrap()]);
    assert_eq!(ok(&e.store, &["cat", "p/t/l"]), "file\n");
    assert_eq!(ok(&e.store, &["cat", "p/t/dl/g.txt"]), "g\n");
    assert_eq!(ok(&e.store, &["cat", "p/t/dl/up"]), "file\n");
    assert_eq!(ok(&e.store, &["cat", "p/t/d/../f.txt"]), "file\n");
    for (path, why) in [
        ("p/t/out", "climbs out of the stored tree"),
        ("p/t/abs", "outside the stored tree"),
        ("p/t/f.txt/x", "not a directory"),
    ] {
        let o = run(&e.store, &["cat", path]);
        assert_eq!(o.status.code(), Some(10), "{path}: {}", text(&o));
        assert!(text(&o).contains(why), "{path}: {}", text(&o));
    }
}

/// Regression: `dagfs cat` could not read sync snapshots (`NAME@N/PATH`)
/// or a tree by its digest.
#[test]
fn cat_reads_sync_snapshots_and_trees() {
    let e = env();
    let src = e.root.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/a.txt"), "one\n").unwrap();
    ok(&e.store, &["sync", src.to_str().unwrap(), "--name", "s"]);
    fs::write(src.join("sub/a.txt"), "two\n").unwrap();
    let report = ok(
        &e.store,
        &["sync", src.to_str().unwrap(), "--name", "s", "--json"],
    );
    assert_eq!(ok(&e.store, &["cat", "s@1/sub/a.txt"]), "one\n");
    assert_eq!(ok(&e.store, &["cat", "s@2/sub/a.txt"]), "two\n");
    assert_eq!(ok(&e.store, &["cat", "s@latest/sub/a.txt"]), "two\n");
    assert_eq!(ok(&e.store, &["cat", "s@1/sub"]), "a.txt\n");
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let tree = find_tree_digest(&v).unwrap_or_else(|| panic!("no tree digest in {report}"));
    assert_eq!(
        ok(&e.store, &["cat", &format!("{tree}/sub/a.txt")]),
        "two\n"
    );
    assert_eq!(
        ok(&e.store, &["cat", &format!("{}/sub/a.txt", &tree[..12])]),
        "two\n"
    );
    for (spec, code) in [("s@3/sub/a.txt", 10), ("nosuch@1/x", 10), ("s@x/a", 2)] {
        let o = run(&e.store, &["cat", spec]);
        assert_eq!(o.status.code(), Some(code), "{spec}: {}", text(&o));
    }
}

/// The snapshot's tree digest in a `sync --json` report.
fn find_tree_digest(v: &serde_json::Value) -> Option<String> {
    ["tree", "digest", "root"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|t| t.as_str()).map(str::to_string))
}

/// Regression: a `--store` that is a regular file was reported as a daemon
/// error (exit 11, `daemon at …/daemon.sock: Not a directory`).
#[test]
fn a_store_that_is_a_file_is_a_store_error() {
    let e = env();
    fs::create_dir_all(&e.root).unwrap();
    let file = e.root.join("file");
    fs::write(&file, "not a store").unwrap();
    for args in [
        &["stats"][..],
        &["ls"],
        &["cat", "a/b/c"],
        &["sync", "--list"],
    ] {
        let o = run(&file, args);
        assert_eq!(o.status.code(), Some(8), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("not a directory"),
            "{args:?}: {}",
            text(&o)
        );
        assert!(!text(&o).contains("daemon"), "{args:?}: {}", text(&o));
    }
    let mnt = e.root.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let o = run(&file, &["mount", mnt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
    assert!(text(&o).contains("is not a directory"), "{}", text(&o));
}

/// Regression: `dagfs sync` of a missing directory was a store error
/// (exit 8); it is "not found" (10), and a file is a usage error (2).
#[test]
fn sync_of_a_missing_directory_is_not_found() {
    let e = env();
    let missing = e.root.join("nope");
    let o = run(&e.store, &["sync", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(10), "{}", text(&o));
    assert!(text(&o).contains("no such directory"), "{}", text(&o));
    let file = e.root.join("f");
    fs::write(&file, "x").unwrap();
    let o = run(&e.store, &["sync", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a directory"), "{}", text(&o));
}

/// `explain` of a task the pipeline does not have exits 7, as `run` does;
/// the exit-code table in `--help` said 10 ("cat/explain target").
#[test]
fn explain_of_an_unknown_task_exits_7_as_documented() {
    let e = env();
    let f = links_pipeline(&e);
    let o = run(&e.store, &["explain", "-f", f.to_str().unwrap(), "nosuch"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(text(&o).contains("nosuch"), "{}", text(&o));
    let help = ok(&e.store, &["--help"]);
    let line = |code: &str| {
        help.lines()
            .find(|l| l.trim_start().starts_with(code))
            .unwrap_or_else(|| panic!("no exit code {code} in --help: {help}"))
            .to_string()
    };
    assert!(line("7 ").contains("explain"), "{}", line("7 "));
    assert!(!line("10 ").contains("explain"), "{}", line("10 "));
}

/// Releases the gated tasks of `status_line_shows_running_and_queued_apart`
/// and kills the run on every path.
struct Gate {
    dir: PathBuf,
    child: std::process::Child,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("go"), "");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status line's last state in a terminal's output (`\r` redraws).
fn status_lines(tty: &str) -> Vec<String> {
    let plain: String = {
        // Drop ANSI escapes (`ESC [ ... letter`).
        let mut out = String::new();
        let mut chars = tty.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    plain
        .split(['\r', '\n'])
        .filter(|l| l.starts_with('[') && l.contains(" running"))
        .map(str::to_string)
        .collect()
}

/// Regression: with `-j2`, the terminal's status line said `6 running`
/// while two ran: every miss handed to the workers counted as running.
#[test]
fn status_line_shows_running_and_queued_apart() {
    let have_script = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_script {
        eprintln!("skipping: needs script(1) for a terminal");
        return;
    }
    let e = env();
    let gate = e.root.join("gate");
    fs::create_dir_all(&gate).unwrap();
    let dir = e.root.join("j");
    fs::create_dir_all(&dir).unwrap();
    let mut toml = String::from("name = \"j\"\n");
    for i in 0..6 {
        // Each task waits (at most 30 s) until the test lets it finish.
        toml += &format!(
            "[tasks.t{i}]\nenv = [\"DAGFS_TEST_GATE\"]\nrun = 'touch \"$DAGFS_TEST_GATE/started-$DAGFS_TASK\"; i=0; while [ ! -e \"$DAGFS_TEST_GATE/go\" ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; echo $DAGFS_TASK > $DAGFS_OUT/x'\n"
        );
    }
    fs::write(dir.join("dagfs.toml"), toml).unwrap();
    let log = e.root.join("tty.log");
    let cmd = format!(
        "{} --store {} run -j2 -f {}",
        common::BIN,
        e.store.display(),
        dir.join("dagfs.toml").display()
    );
    let child = std::process::Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("DAGFS_TEST_GATE", &gate)
        .env_remove("DAGFS_STORE")
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut g = Gate {
        dir: gate.clone(),
        child,
    };
    let started = || {
        fs::read_dir(&gate)
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                n.to_string_lossy().starts_with("started-")
            })
            .count()
    };
    common::wait_for("two tasks to start", || started() == 2);
    common::wait_for("the status line to show 2 running and 4 queued", || {
        let t = fs::read_to_string(&log).unwrap_or_default();
        status_lines(&t)
            .last()
            .is_some_and(|l| l.contains(" 2 running") && l.ends_with("; 4 queued"))
    });
    assert_eq!(started(), 2, "-j2 ran more than two at once");
    fs::write(gate.join("go"), "").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(st) = g.child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "the run did not end");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let t = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{t}");
    for l in status_lines(&t) {
        let n: usize = l
            .split(" running")
            .next()
            .and_then(|h| h.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {l:?}"));
        assert!(n <= 2, "more than -j2 running: {l:?}");
    }
}

/// Regression: `dagfs stats` listed a hit route (`content`) the README
/// never explained. Every route and miss reason it prints is documented.
#[test]
fn every_route_and_miss_reason_in_stats_is_documented() {
    let e = env();
    let v: serde_json::Value = serde_json::from_str(&ok(&e.store, &["stats", "--json"])).unwrap();
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let stats_doc = readme
        .split("Statistics persist in the index")
        .nth(1)
        .and_then(|s| s.split("\n\n").next())
        .expect("README documents the statistics");
    for field in ["hits_by_route", "misses_by_reason"] {
        let names = v[field]
            .as_object()
            .unwrap_or_else(|| panic!("{field} in {v}"));
        assert!(!names.is_empty());
        for name in names.keys() {
            assert!(
                stats_doc.contains(&format!("`{name}`")),
                "{field} `{name}` is not explained in the README's statistics paragraph"
            );
        }
    }
}

/// Regression: `scripts/demo` built and showed no `mount-dagfs`, the mount
/// helper `mount -t dagfs` runs.
#[test]
fn demo_builds_and_shows_the_mount_helper() {
    let bin = Path::new(common::BIN);
    if !bin.with_file_name("mount-dagfs").exists() {
        eprintln!("skipping: mount-dagfs is not built (cargo build --workspace)");
        return;
    }
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo");
    let o = std::process::Command::new(demo)
        .env("DAGFS_BIN", bin)
        .env_remove("DAGFS_STORE")
        .env_remove("KEEP")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("the mount helper"), "{t}");
    assert!(t.contains("mount.dagfs: would run: "), "{t}");
}

/// Regression: a crate whose `.gitignore` lists `Cargo.lock` synced without
/// it, and cargo could not build it from the read-only mount (it must write
/// a new lock file). `dagfs sync` now says so and how to keep it (the
/// README's route: `!Cargo.lock` in `.dagfsignore`), and that route builds.
#[test]
fn an_ignored_cargo_lock_is_pointed_out_and_dagfsignore_keeps_it() {
    let e = env();
    let krate = e.root.join("krate");
    fs::create_dir_all(krate.join("src")).unwrap();
    fs::write(
        krate.join("Cargo.toml"),
        "[package]\nname = \"krate\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    fs::write(krate.join("src/main.rs"), "fn main() {}\n").unwrap();
    // What `cargo generate-lockfile` writes for a crate without dependencies.
    fs::write(
        krate.join("Cargo.lock"),
        "# This file is automatically @generated by Cargo.\n# It is not intended for manual editing.\nversion = 4\n\n[[package]]\nname = \"krate\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    fs::write(krate.join(".gitignore"), "/target\nCargo.lock\n").unwrap();
    let k = krate.to_str().unwrap();
    let o = run(&e.store, &["sync", k, "--name", "k"]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Cargo.lock is ignored"), "{err}");
    assert!(err.contains("`!Cargo.lock`"), "{err}");
    assert_eq!(
        run(&e.store, &["cat", "k@1/Cargo.lock"]).status.code(),
        Some(10)
    );

    fs::write(krate.join(".dagfsignore"), "!Cargo.lock\n").unwrap();
    let o = run(&e.store, &["sync", k, "--name", "k"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("Cargo.lock is ignored"), "{}", text(&o));
    assert!(ok(&e.store, &["cat", "k@2/Cargo.lock"]).contains("name = \"krate\""));

    // And cargo builds it from the mount (offline: no registry needed).
    let have_cargo = std::process::Command::new("cargo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_cargo {
        eprintln!("skipping the cargo build: no cargo");
        return;
    }
    let mnt = e.root.join("mnt");
    let _m = common::Mounted::new(&e.store, &mnt);
    let build = |snapshot: &str| {
        std::process::Command::new("cargo")
            .args(["build", "--offline", "--quiet", "--manifest-path"])
            .arg(mnt.join("syncs").join(snapshot).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(e.root.join("target"))
            .env_remove("CARGO_TARGET_DIR")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let o = build("k@1");
    assert!(!o.status.success(), "built without its Cargo.lock?");
    assert!(text(&o).contains("Cargo.lock"), "{}", text(&o));
    let o = build("k@2");
    assert!(o.status.success(), "{}", text(&o));
}
