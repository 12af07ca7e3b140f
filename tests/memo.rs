//! Run memos (`exec::memo`, `index::memo`): a fully cached run answered
//! without the index, and never once anything its answer depends on has
//! changed: an input (even written in place with its old mtime), a declared
//! env var, an entry the index lost, a blob the store lost, another
//! pipeline moving a task's latest output, the dagfs binary. The memo's
//! answer prints what the full path prints, and its runs reach the
//! statistics and the run records.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// What one `dagfs run` printed: the tasks that ran, the tasks that hit
/// (with their per-task lines), the summary line.
struct Run {
    ran: BTreeSet<String>,
    hit_lines: Vec<String>,
    summary: String,
    text: String,
}

impl Run {
    fn hits(&self) -> usize {
        self.hit_lines.len()
    }
}

impl Sandbox {
    fn run_in(&self, dir: &Path, env: &[(&str, &str)]) -> Run {
        self.run_with(BIN.as_ref(), dir, env)
    }

    fn run_with(&self, bin: &Path, dir: &Path, env: &[(&str, &str)]) -> Run {
        let mut c = std::process::Command::new(bin);
        c.arg("--store")
            .arg(&self.store)
            .args(["run", "-f"])
            .arg(dir.join("dagfs.toml"))
            .current_dir(&self.root)
            .stdin(std::process::Stdio::null());
        for v in TEST_VARS {
            c.env_remove(v);
        }
        let o = c.envs(env.iter().copied()).output().unwrap();
        let text = ok(&o);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        let mut r = Run {
            ran: BTreeSet::new(),
            hit_lines: Vec::new(),
            summary: String::new(),
            text,
        };
        for line in stderr.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first().copied() {
                Some("ran") => {
                    r.ran.insert(words[1].to_string());
                }
                Some("hit") => r.hit_lines.push(line.to_string()),
                Some("summary:") => r.summary = line.to_string(),
                _ => {}
            }
        }
        assert!(!r.summary.is_empty(), "no summary: {}", r.text);
        r
    }

    /// How many runs memos answered that nothing has counted yet (any
    /// command that opens the index folds them).
    fn memo_answers(&self) -> u64 {
        let Ok(list) = fs::read_dir(self.store.join("memo")) else {
            return 0;
        };
        list.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".hits"))
            .map(|e| e.metadata().unwrap().len() / 8)
            .sum()
    }

    fn memos(&self) -> usize {
        fs::read_dir(self.store.join("memo")).map_or(0, |l| {
            l.flatten().filter(|e| e.file_name().len() == 32).count()
        })
    }
}

/// A chain `a -> b`; `a` reads `in/a.txt` and the directory `src/`, and
/// declares `FOO`.
fn chain(sb: &Sandbox, dir: &str, name: &str) -> PathBuf {
    sb.write(&format!("{dir}/in/a.txt"), "one\n");
    sb.write(&format!("{dir}/src/x.c"), "int x;\n");
    let d = sb.pipeline(
        dir,
        &format!(
            r#"name = "{name}"
[tasks.a]
run = 'cat in/a.txt src/x.c > "$DAGFS_OUT/a"; echo "$FOO" >> "$DAGFS_OUT/a"'
inputs = ["in/a.txt", "src"]
env = ["FOO"]
[tasks.b]
run = 'cat "$DAGFS_IN/a/a" > "$DAGFS_OUT/b"'
deps = ["a"]
"#
        ),
    );
    // NB: a path stamped within 2 s of a run's start gets no memo.
    settle();
    d
}

/// Past the memo's settle time (`exec::memo::SETTLE_NS`, 2 s): stamps
/// older than that are trusted.
fn settle() {
    std::thread::sleep(Duration::from_millis(2_100));
}

/// Run until a memo answers: the first run executes, the second writes
/// the memo (or the first does), the next is answered. A run that opens
/// the index folds the answers noted so far (to 0).
fn until_answered(sb: &Sandbox, d: &Path, env: &[(&str, &str)]) -> Run {
    let before = sb.memo_answers();
    let r = sb.run_in(d, env);
    let now = sb.memo_answers();
    if now == before + 1 {
        return r;
    }
    assert_eq!(now, 0, "a full run folds the answers: {}", r.text);
    let r = sb.run_in(d, env);
    assert_eq!(sb.memo_answers(), 1, "a memo answered: {}", r.text);
    r
}

/// A cold run of `d`, then runs until a memo answers one.
fn answered(sb: &Sandbox, d: &Path) -> Run {
    sb.run_in(d, &[]);
    until_answered(sb, d, &[])
}

/// A sandbox with `chain`'s pipeline (in `p`, named `memo`) answered by
/// its memo once.
fn answered_chain() -> (Sandbox, PathBuf) {
    let sb = Sandbox::new();
    let d = chain(&sb, "p", "memo");
    answered(&sb, &d);
    (sb, d)
}

#[test]
fn a_cached_run_is_answered_by_its_memo_and_prints_what_the_full_path_prints() {
    let sb = Sandbox::new();
    let d = chain(&sb, "p", "memo");
    let first = sb.run_in(&d, &[("FOO", "1")]);
    assert_eq!(first.ran, ["a", "b"].map(String::from).into());
    assert_eq!(sb.memos(), 1, "written after the run: {}", first.text);
    let answered = until_answered(&sb, &d, &[("FOO", "1")]);
    assert_eq!(answered.hits(), 2);
    // The answered run is in the statistics (folded by the stats' open)
    // and the run records.
    let hits = || {
        let stats = ok(&sb.command(&["stats", "--json"]).output().unwrap());
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        v["hits"].as_u64().unwrap()
    };
    assert_eq!(hits(), 2, "one answered run of two tasks");
    let stats = ok(&sb.command(&["stats"]).output().unwrap());
    assert!(stats.contains("memo runs    1"), "{stats}");
    assert_eq!(sb.memo_answers(), 0, "folded");
    // The full path (no memo) prints the same lines.
    fs::remove_dir_all(sb.store.join("memo")).unwrap();
    let full = sb.run_in(&d, &[("FOO", "1")]);
    assert_eq!(full.hit_lines, answered.hit_lines);
    assert_eq!(sb.memo_answers(), 0);
    let strip = |s: &str| s.split("; ").next().unwrap().to_string();
    assert_eq!(strip(&full.summary), strip(&answered.summary));
    assert_eq!(hits(), 4);
    let runs = fs::read_dir(sb.store.join("runs")).unwrap().count();
    assert_eq!(runs, 3, "one record a run");
    let id: u64 = answered
        .summary
        .rsplit("(run ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(
        &fs::read(sb.store.join("runs").join(format!("{id:020}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["tasks"][1]["task"], "b");
    assert_eq!(rec["tasks"][1]["status"], "cached");
    assert_eq!(rec["tasks"][1]["deps"][0], "a");
    // The next run of the index numbers past it.
    let after = sb.run_in(&d, &[("FOO", "1")]);
    assert!(
        after.summary.ends_with(&format!("(run {})", id + 2)),
        "{}",
        after.summary
    );
    fsck_clean(&sb.store);
}

#[test]
fn an_input_written_in_place_with_its_old_mtime_is_never_answered_from_the_memo() {
    let (sb, d) = answered_chain();
    let f = d.join("in/a.txt");
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    fs::write(&f, "two\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    settle();
    let r = sb.run_in(&d, &[]);
    assert_eq!(r.ran, ["a", "b"].map(String::from).into(), "{}", r.text);
    assert_eq!(sb.cat_out("memo/b/b"), "two\nint x;\n\n");
}

#[test]
fn a_file_added_to_an_input_directory_or_an_env_change_reruns() {
    let sb = Sandbox::new();
    let d = chain(&sb, "p", "memo");
    sb.run_in(&d, &[("FOO", "1")]);
    until_answered(&sb, &d, &[("FOO", "1")]);
    let r = sb.run_in(&d, &[("FOO", "2")]);
    assert!(r.ran.contains("a"), "{}", r.text);
    until_answered(&sb, &d, &[("FOO", "2")]);
    sb.write("p/src/new.c", "int y;\n");
    settle();
    let r = sb.run_in(&d, &[("FOO", "2")]);
    assert_eq!(
        r.ran,
        ["a".to_string()].into(),
        "a directory input gained a file: {}",
        r.text
    );
}

#[test]
fn an_entry_another_run_evicted_is_never_answered_from_the_memo() {
    let (sb, d) = answered_chain();
    let other = sb.pipeline(
        "q",
        "name = \"other\"\n[tasks.z]\nrun = 'echo z > \"$DAGFS_OUT/z\"'\n",
    );
    let o = sb
        .command(&[
            "run",
            "-f",
            other.join("dagfs.toml").to_str().unwrap(),
            "--max-entries",
            "1",
        ])
        .output()
        .unwrap();
    let t = ok(&o);
    assert!(t.contains("evicted"), "the other run made room: {t}");
    let r = sb.run_in(&d, &[]);
    assert!(!r.ran.is_empty(), "evicted entries ran again: {}", r.text);
}

#[test]
fn a_lost_output_blob_is_never_answered_from_the_memo() {
    let (sb, d) = answered_chain();
    // Every blob and pack goes (outputs are trees, which live in packs).
    for top in ["blobs", "packs"] {
        let mut stack = vec![sb.store.join(top)];
        while let Some(p) = stack.pop() {
            for e in fs::read_dir(&p).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    fs::remove_file(e.path()).unwrap();
                }
            }
        }
    }
    assert_eq!(sb.memo_answers(), 1);
    let o = sb.run_raw(&d);
    let t = text(&o);
    assert_eq!(sb.memo_answers(), 0, "the full path ran (and folded): {t}");
    assert!(
        !t.lines().any(|l| l.starts_with("hit ")),
        "no output the store lost is a hit: {t}"
    );
}

#[test]
fn another_pipeline_moving_the_latest_output_is_never_hidden_by_a_memo() {
    let sb = Sandbox::new();
    let toml =
        |word: &str| format!("name = \"x\"\n[tasks.t]\nrun = 'echo {word} > \"$DAGFS_OUT/f\"'\n");
    let a = sb.pipeline("a", &toml("A"));
    let b = sb.pipeline("b", &toml("B"));
    settle();
    answered(&sb, &a);
    assert_eq!(sb.cat_out("x/t/f"), "A\n");
    sb.run_in(&b, &[]);
    assert_eq!(sb.cat_out("x/t/f"), "B\n");
    let r = sb.run_in(&a, &[]);
    assert_eq!(r.hits(), 1);
    assert_eq!(
        sb.cat_out("x/t/f"),
        "A\n",
        "the run moved x/t back to A's output"
    );
}

#[test]
fn another_dagfs_binary_does_not_use_the_memo() {
    let (sb, d) = answered_chain();
    let copy = sb.root.join("dagfs-copy");
    fs::copy(BIN, &copy).unwrap();
    assert_eq!(sb.memo_answers(), 1);
    let r = sb.run_with(&copy, &d, &[]);
    assert_eq!(r.hits(), 2);
    assert_eq!(
        sb.memo_answers(),
        0,
        "the full path ran (and folded): the memo named another binary"
    );
}

#[test]
fn an_input_stamped_in_the_future_gets_no_memo_until_it_settles() {
    let sb = Sandbox::new();
    let d = chain(&sb, "p", "memo");
    let f = d.join("in/a.txt");
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(later)
        .unwrap();
    sb.run_in(&d, &[]);
    sb.run_in(&d, &[]);
    assert_eq!(sb.memos(), 0, "a racy stamp: no memo");
    assert_eq!(sb.memo_answers(), 0);
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    settle();
    let r = sb.run_in(&d, &[]);
    assert_eq!(r.hits(), 2, "{}", r.text);
    assert_eq!(sb.memos(), 1);
    until_answered(&sb, &d, &[]);
}

#[test]
fn concurrent_answered_runs_each_get_their_own_run_record() {
    let (sb, d) = answered_chain();
    let file = d.join("dagfs.toml");
    let kids: Vec<_> = (0..4)
        .map(|_| {
            sb.command(&["run", "-f", file.to_str().unwrap()])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = BTreeSet::new();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        let t = ok(&o);
        let id = t
            .rsplit("(run ")
            .next()
            .unwrap()
            .trim()
            .trim_end_matches(')')
            .to_string();
        ids.insert(id);
    }
    assert_eq!(ids.len(), 4, "distinct run ids: {ids:?}");
}

impl Sandbox {
    /// `dagfs run -f <d>/dagfs.toml`, whatever it does.
    fn run_raw(&self, d: &Path) -> std::process::Output {
        self.command(&["run", "-f", d.join("dagfs.toml").to_str().unwrap()])
            .output()
            .unwrap()
    }

    /// `dagfs cat SPEC`'s text.
    fn cat_out(&self, spec: &str) -> String {
        let o = self.command(&["cat", spec]).output().unwrap();
        ok(&o);
        String::from_utf8(o.stdout).unwrap()
    }
}

#[test]
fn a_pipeline_file_linked_from_two_directories_answers_each_for_its_own() {
    let sb = Sandbox::new();
    let toml =
        "[tasks.build]\nrun = 'cat src.txt > \"$DAGFS_OUT/out.txt\"'\ninputs = [\"src.txt\"]\n";
    sb.write("shared/dagfs.toml", toml);
    for (dir, text) in [("a", "AAA"), ("b", "BBB")] {
        sb.write(&format!("{dir}/src.txt"), text);
        std::os::unix::fs::symlink("../shared/dagfs.toml", sb.root.join(dir).join("dagfs.toml"))
            .unwrap();
    }
    settle();
    let a = sb.root.join("a");
    answered(&sb, &a);
    let r = sb.run_in(&sb.root.join("b"), &[]);
    assert_eq!(
        r.ran,
        ["build".to_string()].into(),
        "b is its own pipeline: {}",
        r.text
    );
    assert_eq!(sb.cat_out("b/build/out.txt"), "BBB");
}

#[test]
fn an_input_deleted_during_the_run_is_never_answered_as_there() {
    let sb = Sandbox::new();
    sb.write("p/src.txt", "one");
    let d = sb.pipeline(
        "p",
        "[tasks.build]\nrun = 'cat src.txt > \"$DAGFS_OUT/o\"; sleep 0.5'\ninputs = [\"src.txt\"]\n",
    );
    settle();
    let mut kid = sb
        .command(&["run", "-f", d.join("dagfs.toml").to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(250));
    fs::remove_file(d.join("src.txt")).unwrap();
    assert!(kid.wait().unwrap().success());
    settle();
    let o = sb.run_raw(&d);
    assert_eq!(
        o.status.code(),
        Some(3),
        "the full path refuses a missing input: {}",
        text(&o)
    );
}

#[test]
fn a_directory_on_the_way_to_an_input_turned_symlink_is_refused_as_the_full_path_does() {
    let sb = Sandbox::new();
    sb.write("p/sub/f.txt", "f");
    let scope = sb.root.join("scope");
    fs::create_dir(&scope).unwrap();
    let d = sb.pipeline(
        "p",
        &format!(
            "hermetic_scope = [{:?}]\n[tasks.t]\nrun = 'cat sub/f.txt > \"$DAGFS_OUT/o\"'\ninputs = [\"sub/f.txt\"]\n",
            scope.to_str().unwrap()
        ),
    );
    settle();
    answered(&sb, &d);
    // A hermetic_scope tree that went.
    fs::remove_dir(&scope).unwrap();
    let o = sb.run_raw(&d);
    assert_eq!(
        o.status.code(),
        Some(3),
        "a missing hermetic_scope: {}",
        text(&o)
    );
    fs::create_dir(&scope).unwrap();
    settle();
    answered(&sb, &d);
    // A directory on the way, now a symlink to the same files.
    fs::rename(d.join("sub"), d.join("real")).unwrap();
    std::os::unix::fs::symlink("real", d.join("sub")).unwrap();
    let o = sb.run_raw(&d);
    assert_eq!(
        o.status.code(),
        Some(3),
        "an input through a symlink: {}",
        text(&o)
    );
}

#[test]
fn a_store_that_lost_its_top_directories_is_not_answered_from_a_memo() {
    let (sb, d) = answered_chain();
    fs::remove_dir_all(sb.store.join("index")).unwrap();
    fs::remove_dir_all(sb.store.join("entries")).unwrap();
    let r = sb.run_in(&d, &[]);
    assert!(
        r.text.contains("lost its top directories"),
        "the full path says so: {}",
        r.text
    );
}

#[test]
fn files_made_beside_the_pipeline_file_leave_its_memo_standing() {
    let (sb, d) = answered_chain();
    // What make or an editor leaves next to dagfs.toml is no input.
    fs::create_dir(d.join("build")).unwrap();
    sb.write("p/build/app.o", "o");
    let before = sb.memo_answers();
    sb.run_in(&d, &[]);
    assert_eq!(sb.memo_answers(), before + 1, "still answered by the memo");
}

#[test]
fn a_mount_s_daemon_answers_from_the_memo_too_and_shows_the_run() {
    let sb = Sandbox::new();
    let d = chain(&sb, "p", "memo");
    let m = match Mounted::try_new(&sb.store, &sb.mnt) {
        Ok(m) => m,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let memo_runs = || {
        let stats = ok(&sb.command(&["stats", "--json"]).output().unwrap());
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        v["memo_runs"].as_u64().unwrap()
    };
    let first = sb.run_in(&d, &[]);
    assert_eq!(first.ran.len(), 2, "{}", first.text);
    assert_eq!(memo_runs(), 0);
    let second = sb.run_in(&d, &[]);
    assert_eq!(second.hits(), 2, "{}", second.text);
    assert_eq!(memo_runs(), 1, "the daemon answered from the memo");
    let id = second
        .summary
        .rsplit("(run ")
        .next()
        .unwrap()
        .trim_end_matches(')');
    assert_eq!(
        fs::read_link(m.mnt.join("runs/latest"))
            .unwrap()
            .to_str()
            .unwrap(),
        id,
        "/runs/latest is the answered run"
    );
    assert_eq!(
        fs::read_to_string(m.mnt.join(format!("runs/{id}/b/b"))).unwrap(),
        "one\nint x;\n\n"
    );
    // An input edit reaches the daemon's runs as it does the others.
    sb.write("p/in/a.txt", "two\n");
    let third = sb.run_in(&d, &[]);
    assert_eq!(
        third.ran,
        ["a", "b"].map(String::from).into(),
        "{}",
        third.text
    );
    drop(m);
}
