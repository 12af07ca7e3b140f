//! End-to-end tests of the `dagfs` command: each test drives the real binary
//! in its own temporary directory with its own `--store`.
//!
//! Per-task lines on stderr (stderr is a pipe here, never a terminal):
//!
//! ```text
//! hit   NAME  KEY8  (route)
//! ran   NAME  1.23s  KEY8  (reason)
//! FAIL  NAME  message
//! skip  NAME
//! summary: N tasks: A executed, B cached, C failed, D skipped; ...
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;

use common::{Sandbox, BIN};

// ---------------------------------------------------------------------------
// harness
// ---------------------------------------------------------------------------

/// What one `dagfs` invocation did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().expect("dagfs exited by a signal"),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    tasks: usize,
    executed: usize,
    cached: usize,
    failed: usize,
    skipped: usize,
}

/// A parsed `dagfs run`.
#[derive(Debug)]
struct Run {
    code: i32,
    stderr: String,
    /// task -> miss reason
    ran: BTreeMap<String, String>,
    /// task -> route
    hit: BTreeMap<String, String>,
    failed: BTreeSet<String>,
    skipped: BTreeSet<String>,
    /// task -> KEY8, for tasks that ran or hit
    keys: BTreeMap<String, String>,
    summary: Summary,
}

impl Run {
    fn parse(out: Out) -> Run {
        let mut r = Run {
            code: out.code,
            stderr: out.stderr.clone(),
            ran: BTreeMap::new(),
            hit: BTreeMap::new(),
            failed: BTreeSet::new(),
            skipped: BTreeSet::new(),
            keys: BTreeMap::new(),
            summary: Summary::default(),
        };
        let mut saw_summary = false;
        for line in out.stderr.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let paren = |from: usize| {
                words[from..]
                    .join(" ")
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .to_string()
            };
            match words.first().copied() {
                Some("ran") if words.len() >= 5 => {
                    assert!(words[2].ends_with('s'), "duration in {line:?}");
                    r.ran.insert(words[1].into(), paren(4));
                    r.keys.insert(words[1].into(), words[3].into());
                }
                Some("hit") if words.len() >= 4 => {
                    r.hit.insert(words[1].into(), paren(3));
                    r.keys.insert(words[1].into(), words[2].into());
                }
                Some("FAIL") => {
                    r.failed.insert(words[1].into());
                }
                Some("skip") => {
                    r.skipped.insert(words[1].into());
                }
                Some("summary:") => {
                    saw_summary = true;
                    r.summary = parse_summary(line);
                }
                _ => {}
            }
        }
        if saw_summary {
            // The per-task lines and the summary must agree.
            assert_eq!(r.summary.executed, r.ran.len(), "{}", r.stderr);
            assert_eq!(r.summary.cached, r.hit.len(), "{}", r.stderr);
            assert_eq!(r.summary.failed, r.failed.len(), "{}", r.stderr);
            assert_eq!(r.summary.skipped, r.skipped.len(), "{}", r.stderr);
        }
        r
    }

    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "dagfs run failed:\n{}", self.stderr);
        self
    }

    fn ran(&self) -> BTreeSet<&str> {
        self.ran.keys().map(String::as_str).collect()
    }

    fn hits(&self) -> BTreeSet<&str> {
        self.hit.keys().map(String::as_str).collect()
    }
}

/// `summary: N tasks: A executed, B cached, C failed, D skipped; ...`
fn parse_summary(line: &str) -> Summary {
    let body = line.strip_prefix("summary: ").expect("summary line");
    let (total, rest) = body.split_once(" tasks: ").expect("N tasks:");
    let counts = rest.split(';').next().unwrap();
    let mut s = Summary {
        tasks: total.parse().expect("task count"),
        ..Default::default()
    };
    for part in counts.split(", ") {
        let (n, what) = part.split_once(' ').expect("N what");
        let n: usize = n.parse().expect("count");
        match what {
            "executed" => s.executed = n,
            "cached" => s.cached = n,
            "failed" => s.failed = n,
            "skipped" => s.skipped = n,
            other => panic!("unknown summary field {other:?} in {line:?}"),
        }
    }
    s
}

fn set<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
    names.into_iter().collect()
}

impl Sandbox {
    fn dagfs(&self, args: &[&str]) -> Out {
        Out::from(self.command(args).output().expect("spawn dagfs"))
    }

    fn run_cmd(&self, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
        let file = dir.join("dagfs.toml");
        let mut args = vec!["run", "-f", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut c = self.command(&args);
        c.envs(env.iter().copied());
        c
    }

    fn run_env(&self, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
        Run::parse(Out::from(
            self.run_cmd(dir, extra, env).output().expect("spawn dagfs"),
        ))
    }

    fn run(&self, dir: &Path, extra: &[&str]) -> Run {
        self.run_env(dir, extra, &[])
    }

    /// `dagfs cat SPEC`, which must succeed.
    fn cat(&self, spec: &str) -> Vec<u8> {
        let o = self.dagfs(&["cat", spec]);
        assert_eq!(o.code, 0, "dagfs cat {spec}: {}", o.stderr);
        o.stdout
    }

    fn cat_str(&self, spec: &str) -> String {
        String::from_utf8(self.cat(spec)).expect("utf-8")
    }

    fn stats(&self) -> Value {
        let o = self.dagfs(&["stats", "--json"]);
        assert_eq!(o.code, 0, "dagfs stats: {}", o.stderr);
        serde_json::from_slice(&o.stdout).expect("stats --json is JSON")
    }

    fn entries(&self) -> u64 {
        self.stats()["total_entries"].as_u64().unwrap()
    }

    /// `dagfs ls DAG`: task -> cached? (`false` for `(evicted)` rows).
    fn ls(&self, dag: &str) -> BTreeMap<String, bool> {
        let o = self.dagfs(&["ls", dag]);
        assert_eq!(o.code, 0, "dagfs ls: {}", o.stderr);
        let text = o.stdout_str();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("TASK"), "{text}");
        lines
            .map(|l| {
                let name = l.split_whitespace().next().unwrap();
                let task = name
                    .strip_prefix(&format!("{dag}/"))
                    .unwrap_or_else(|| panic!("{name} is not in {dag}"));
                (task.to_string(), !l.contains("(evicted)"))
            })
            .collect()
    }

    /// Files under `<store>/<top>/` (entries or blobs), straight from disk.
    fn files_under(&self, top: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let dir = self.store.join(top);
        for shard in fs::read_dir(&dir).unwrap() {
            for e in fs::read_dir(shard.unwrap().path()).unwrap() {
                out.insert(e.unwrap().file_name().to_string_lossy().into_owned());
            }
        }
        out
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.store.join("blobs").join(&hex[..2]).join(hex)
    }
}

/// `store.tmp/` holds nothing once a command has finished.
fn assert_tmp_empty(sb: &Sandbox) {
    let left: Vec<_> = fs::read_dir(sb.store.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind in tmp/: {left:?}");
}

// ---------------------------------------------------------------------------
// caching basics
// ---------------------------------------------------------------------------

const CHAIN: &str = r#"
name = "chain"

[tasks.gen]
run = 'printf "alpha\nbeta\n" > "$DAGFS_OUT/words.txt"'

[tasks.upper]
run = 'tr a-z A-Z < "$DAGFS_IN/gen/words.txt" > "$DAGFS_OUT/upper.txt"'
deps = ["gen"]

[tasks.count]
run = 'mkdir -p "$DAGFS_OUT/out" && wc -l < "$DAGFS_IN/upper/upper.txt" | tr -d " " > "$DAGFS_OUT/out/n.txt"'
deps = ["upper"]
"#;

#[test]
fn first_run_executes_everything_and_second_run_is_all_hits() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", CHAIN);

    let first = sb.run(&p, &[]).ok();
    assert_eq!(
        first.summary,
        Summary {
            tasks: 3,
            executed: 3,
            ..Default::default()
        }
    );
    assert!(first.ran.values().all(|r| r == "new"), "{:?}", first.ran);

    let second = sb.run(&p, &[]).ok();
    assert_eq!(
        second.summary,
        Summary {
            tasks: 3,
            cached: 3,
            ..Default::default()
        }
    );
    assert!(second.hit.values().all(|r| r == "key"), "{:?}", second.hit);
    assert_eq!(first.keys, second.keys, "keys are stable across runs");
    assert!(
        second.stderr.contains("hit rate 100.0%"),
        "{}",
        second.stderr
    );

    // Outputs, by DAG/TASK/PATH and by key prefix.
    assert_eq!(sb.cat_str("chain/upper/upper.txt"), "ALPHA\nBETA\n");
    assert_eq!(sb.cat_str("chain/count/out/n.txt"), "2\n");
    let key = &second.keys["count"];
    assert_eq!(key.len(), 8);
    assert_eq!(sb.cat_str(&format!("{key}/out/n.txt")), "2\n");

    let s = sb.stats();
    assert_eq!(s["hits"], 3);
    assert_eq!(s["misses"], 3);
    assert_eq!(s["total_entries"], 3);
    assert_eq!(s["hits_by_route"]["key"], 3);
    assert_eq!(s["misses_by_reason"]["new"], 3);
    assert_eq!(s["hit_rate"].as_f64(), Some(0.5));
    let ls = sb.ls("chain");
    assert_eq!(
        ls.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        set(["gen", "upper", "count"])
    );
    assert_tmp_empty(&sb);
}

#[test]
fn store_layout_has_readonly_blobs_and_json_entries() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", CHAIN);
    sb.run(&p, &[]).ok();
    assert_eq!(
        fs::read_to_string(sb.store.join("FORMAT")).unwrap(),
        "dagfs-store\nversion 4\n"
    );
    let content = b"ALPHA\nBETA\n";
    let hex = blake3::hash(content).to_hex().to_string();
    let blob = sb.blob_path(&hex);
    assert_eq!(
        fs::read(&blob).unwrap(),
        content,
        "blob named by its BLAKE3"
    );
    let mode = fs::metadata(&blob).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444, "blobs are read-only");
    let entries = sb.files_under("entries");
    assert_eq!(entries.len(), 3);
    for key in &entries {
        let path = sb.store.join("entries").join(&key[..2]).join(key);
        let v: Value = serde_json::from_slice(&fs::read(path).unwrap()).expect("entry is JSON");
        assert_eq!(v["dag"], "chain");
    }
    assert!(sb.store.join("index").is_dir());
}

const DIAMOND: &str = r#"
name = "diamond"

[tasks.a]
run = 'cp in/a.txt "$DAGFS_OUT/a"'
inputs = ["in/a.txt"]

[tasks.b]
run = 'cp in/b.txt "$DAGFS_OUT/b"'
inputs = ["in/b.txt"]

[tasks.ua]
run = 'tr a-z A-Z < "$DAGFS_IN/a/a" > "$DAGFS_OUT/ua"'
deps = ["a"]

[tasks.ub]
run = 'tr a-z A-Z < "$DAGFS_IN/b/b" > "$DAGFS_OUT/ub"'
deps = ["b"]

[tasks.join]
run = 'cat "$DAGFS_IN/ua/ua" "$DAGFS_IN/ub/ub" > "$DAGFS_OUT/all"'
deps = ["ua", "ub"]
"#;

#[test]
fn changing_one_input_reruns_exactly_its_dependents() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", DIAMOND);
    sb.write("p/in/a.txt", "one\n");
    sb.write("p/in/b.txt", "two\n");
    assert_eq!(sb.run(&p, &[]).ok().summary.executed, 5);
    assert_eq!(sb.cat_str("diamond/join/all"), "ONE\nTWO\n");

    sb.write("p/in/a.txt", "uno\n");
    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.ran(), set(["a", "ua", "join"]));
    assert_eq!(r.hits(), set(["b", "ub"]));
    assert_eq!(r.ran["a"], "input changed");
    assert_eq!(sb.cat_str("diamond/join/all"), "UNO\nTWO\n");

    sb.write("p/in/b.txt", "dos\n");
    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.ran(), set(["b", "ub", "join"]));
    assert_eq!(r.hits(), set(["a", "ua"]));
    assert_eq!(sb.cat_str("diamond/join/all"), "UNO\nDOS\n");

    // Back to an earlier content: that key is still stored, so it hits.
    sb.write("p/in/a.txt", "one\n");
    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.hits(), set(["a", "ua", "b", "ub"]));
    assert_eq!(r.ran(), set(["join"]), "ONE+DOS is a new combination");
    assert_eq!(sb.cat_str("diamond/join/all"), "ONE\nDOS\n");
}

/// `dagfs cat DAG/TASK/...` shows the output the task had in its latest
/// successful run, also when that run was a hit on an older key.
#[test]
fn hit_on_an_older_key_becomes_the_tasks_latest_output() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", DIAMOND);
    sb.write("p/in/a.txt", "one\n");
    sb.write("p/in/b.txt", "two\n");
    let first = sb.run(&p, &[]).ok();
    sb.write("p/in/a.txt", "uno\n");
    sb.run(&p, &[]).ok();
    assert_eq!(sb.cat_str("diamond/a/a"), "uno\n");

    sb.write("p/in/a.txt", "one\n");
    let r = sb.run(&p, &["a"]).ok();
    assert_eq!(r.hits(), set(["a"]));
    assert_eq!(sb.cat_str("diamond/a/a"), "one\n");
    let ls = sb.dagfs(&["ls", "diamond"]).stdout_str();
    let row = ls.lines().find(|l| l.starts_with("diamond/a ")).unwrap();
    assert!(row.contains(&first.keys["a"]), "{ls}");
}

/// Keys do not include the pipeline's name: the same task (name, command,
/// inputs, deps) in another pipeline is a hit, and is that pipeline's too.
#[test]
fn identical_task_in_another_pipeline_is_a_hit_listed_under_both() {
    let sb = Sandbox::new();
    let one = sb.pipeline("one", CHAIN);
    let two = sb.pipeline(
        "two",
        &CHAIN.replace("name = \"chain\"", "name = \"chain2\""),
    );
    sb.run(&one, &[]).ok();
    let r = sb.run(&two, &[]).ok();
    assert_eq!(r.summary.cached, 3);
    assert_eq!(sb.cat_str("chain2/upper/upper.txt"), "ALPHA\nBETA\n");
    assert_eq!(sb.ls("chain2").len(), 3);
}

#[test]
fn explain_names_the_component_that_changed() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", DIAMOND);
    sb.write("p/in/a.txt", "one\n");
    sb.write("p/in/b.txt", "two\n");
    sb.run(&p, &[]).ok();
    sb.write("p/in/a.txt", "uno\n");
    let file = p.join("dagfs.toml");
    let o = sb.dagfs(&["explain", "-f", file.to_str().unwrap(), "a"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let text = o.stdout_str();
    assert!(text.contains("not cached"), "{text}");
    assert!(text.contains("input `in/a.txt` changed"), "{text}");
    let o = sb.dagfs(&["explain", "-f", file.to_str().unwrap(), "b"]);
    assert!(o.stdout_str().contains("cached: the next run is a hit"));
}

#[test]
fn early_cutoff_identical_upstream_output_keeps_downstream_cached() {
    let sb = Sandbox::new();
    let p = sb.pipeline(
        "p",
        r#"
[tasks.strip]
run = 'grep -v "^#" in/src.txt > "$DAGFS_OUT/clean.txt"'
inputs = ["in/src.txt"]

[tasks.count]
run = 'echo count >> ../count.log; wc -l < "$DAGFS_IN/strip/clean.txt" > "$DAGFS_OUT/n"'
deps = ["strip"]
"#,
    );
    sb.write("p/in/src.txt", "x = 1\ny = 2\n");
    sb.run(&p, &[]).ok();

    sb.write(
        "p/in/src.txt",
        "# a comment the task strips\nx = 1\ny = 2\n",
    );
    let r = sb.run(&p, &[]).ok();
    assert_eq!(
        r.ran.get("strip").map(String::as_str),
        Some("input changed")
    );
    assert_eq!(r.hits(), set(["count"]), "{}", r.stderr);
    assert_eq!(sb.read("count.log"), "count\n", "count ran only once");

    // A real change does propagate.
    sb.write("p/in/src.txt", "x = 1\n");
    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.ran(), set(["strip", "count"]));
    assert_eq!(sb.read("count.log"), "count\ncount\n");
}

// ---------------------------------------------------------------------------
// environment
// ---------------------------------------------------------------------------

#[test]
fn declared_env_change_reruns_and_undeclared_env_is_invisible() {
    let sb = Sandbox::new();
    let p = sb.pipeline(
        "p",
        r#"
name = "envy"

[tasks.declared]
run = 'printf %s "$DAGFS_TEST_FOO" > "$DAGFS_OUT/foo"; env > "$DAGFS_OUT/env"'
env = ["DAGFS_TEST_FOO"]

[tasks.undeclared]
run = 'printf %s "${DAGFS_TEST_BAR-unset}" > "$DAGFS_OUT/bar"'
"#,
    );
    let r = sb.run_env(
        &p,
        &[],
        &[("DAGFS_TEST_FOO", "one"), ("DAGFS_TEST_BAR", "x")],
    );
    r.ok();
    assert_eq!(sb.cat_str("envy/declared/foo"), "one");
    assert_eq!(sb.cat_str("envy/undeclared/bar"), "unset");

    // The task's whole environment: only what the contract allows.
    let env = sb.cat_str("envy/declared/env");
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let allowed = set([
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "DAGFS_TEST_FOO",
        "DAGFS_OUT",
        "DAGFS_IN",
        "DAGFS_INPUTS",
        "DAGFS_TASK",
        "DAGFS_DAG",
        "TMPDIR",
        // set by the shell itself
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ]);
    for k in vars.keys() {
        assert!(allowed.contains(k), "{k} leaked into the task env:\n{env}");
    }
    assert_eq!(vars.get("DAGFS_TASK"), Some(&"declared"));
    assert_eq!(vars.get("DAGFS_DAG"), Some(&"envy"));
    for k in ["DAGFS_OUT", "DAGFS_IN", "TMPDIR"] {
        assert!(vars.contains_key(k), "{k} missing:\n{env}");
    }

    // Undeclared change: no re-run.
    let r = sb
        .run_env(
            &p,
            &[],
            &[("DAGFS_TEST_FOO", "one"), ("DAGFS_TEST_BAR", "y")],
        )
        .ok();
    assert_eq!(r.hits(), set(["declared", "undeclared"]));

    // Declared change: that task re-runs, and sees the new value.
    let r = sb
        .run_env(
            &p,
            &[],
            &[("DAGFS_TEST_FOO", "two"), ("DAGFS_TEST_BAR", "y")],
        )
        .ok();
    assert_eq!(r.ran(), set(["declared"]));
    assert_eq!(r.ran["declared"], "input changed");
    assert_eq!(r.hits(), set(["undeclared"]));
    assert_eq!(sb.cat_str("envy/declared/foo"), "two");

    // Unset is a value of its own too.
    let r = sb.run_env(&p, &[], &[]).ok();
    assert_eq!(r.ran(), set(["declared"]));
    assert_eq!(sb.cat_str("envy/declared/foo"), "");
}

// ---------------------------------------------------------------------------
// ttl, --no-cache, cache = false
// ---------------------------------------------------------------------------

#[test]
fn entry_past_its_ttl_reruns_with_reason_expired() {
    let sb = Sandbox::new();
    let p = sb.pipeline(
        "p",
        r#"
[tasks.short]
run = 'echo short >> ../short.log; echo fresh > "$DAGFS_OUT/t"'
ttl = "1s"

[tasks.long]
run = 'echo stable > "$DAGFS_OUT/s"'

[tasks.after_short]
run = 'cat "$DAGFS_IN/short/t" > "$DAGFS_OUT/copy"'
deps = ["short"]
"#,
    );
    sb.run(&p, &[]).ok();
    // Still fresh right away.
    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.summary.cached, 3, "{}", r.stderr);

    std::thread::sleep(Duration::from_millis(1200));
    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.ran(), set(["short"]), "{}", r.stderr);
    assert_eq!(r.ran["short"], "expired");
    assert_eq!(
        r.hits(),
        set(["long", "after_short"]),
        "same output: cutoff"
    );
    assert_eq!(sb.read("short.log"), "short\nshort\n");
    let s = sb.stats();
    assert_eq!(s["misses_by_reason"]["expired"], 1);
    assert!(s["expirations"].as_u64().unwrap() >= 1);
    assert_eq!(s["total_entries"], 3);
}

#[test]
fn no_cache_reexecutes_every_task_and_still_stores() {
    let sb = Sandbox::new();
    let p = sb.pipeline(
        "p",
        r#"
name = "nc"

[tasks.a]
run = 'echo a >> ../exec.log; echo A > "$DAGFS_OUT/a"'

[tasks.b]
run = 'echo b >> ../exec.log; cat "$DAGFS_IN/a/a" > "$DAGFS_OUT/b"'
deps = ["a"]
"#,
    );
    let r = sb.run(&p, &["--no-cache"]).ok();
    assert_eq!(r.ran(), set(["a", "b"]));
    assert!(r.ran.values().all(|v| v == "skip-cache"), "{:?}", r.ran);
    assert_eq!(sb.entries(), 2, "--no-cache still stores");

    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.hits(), set(["a", "b"]), "what --no-cache stored is used");
    assert_eq!(sb.read("exec.log"), "a\nb\n");

    let r = sb.run(&p, &["--no-cache"]).ok();
    assert_eq!(r.ran(), set(["a", "b"]));
    assert_eq!(sb.read("exec.log"), "a\nb\na\nb\n");
    assert_eq!(sb.stats()["misses_by_reason"]["skip-cache"], 4);
    assert_eq!(sb.cat_str("nc/b/b"), "A\n");
}

#[test]
fn cache_false_task_always_runs_but_is_stored() {
    let sb = Sandbox::new();
    let p = sb.pipeline(
        "p",
        r#"
name = "vol"

[tasks.volatile]
run = 'echo v >> ../exec.log; echo same > "$DAGFS_OUT/v"'
cache = false

[tasks.consumer]
run = 'echo c >> ../exec.log; cat "$DAGFS_IN/volatile/v" > "$DAGFS_OUT/c"'
deps = ["volatile"]
"#,
    );
    sb.run(&p, &[]).ok();
    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.ran(), set(["volatile"]));
    assert_eq!(r.ran["volatile"], "skip-cache");
    assert_eq!(r.hits(), set(["consumer"]));
    assert_eq!(sb.read("exec.log"), "v\nc\nv\n");
    assert_eq!(sb.cat_str("vol/volatile/v"), "same\n", "still stored");
}

// ---------------------------------------------------------------------------
// failures
// ---------------------------------------------------------------------------

#[test]
fn failed_task_is_not_cached_and_its_dependents_are_skipped() {
    let sb = Sandbox::new();
    let p = sb.pipeline(
        "p",
        r#"
name = "fl"

[tasks.first]
run = 'echo ok > "$DAGFS_OUT/f"'

[tasks.flaky]
run = '''
echo "compiling..." >&2
if [ ! -f ../fixed ]; then echo "error: widget exploded" >&2; exit 3; fi
echo fine > "$DAGFS_OUT/x"
'''
deps = ["first"]

[tasks.after]
run = 'cat "$DAGFS_IN/flaky/x" > "$DAGFS_OUT/y"'
deps = ["flaky"]
"#,
    );
    let r = sb.run(&p, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        r.summary,
        Summary {
            tasks: 3,
            executed: 1,
            failed: 1,
            skipped: 1,
            ..Default::default()
        }
    );
    assert_eq!(r.failed, strs(&["flaky"]));
    assert!(r.skipped.contains("after"));
    assert!(r.stderr.contains("exited with status 3"), "{}", r.stderr);
    assert!(
        r.stderr.contains("| error: widget exploded"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("| compiling..."), "{}", r.stderr);
    assert_eq!(sb.entries(), 1, "only `first` is stored");
    assert!(!sb.ls("fl").contains_key("flaky"));
    assert_eq!(sb.dagfs(&["cat", "fl/flaky/x"]).code, 10);
    assert_tmp_empty(&sb);

    // Failing again: it is not served from the cache.
    let r = sb.run(&p, &[]);
    assert_eq!(r.code, 1);
    assert!(r.failed.contains("flaky"));
    assert_eq!(r.hits(), set(["first"]));

    // Fixed: it runs for the first time as far as the cache knows.
    sb.write("fixed", "");
    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.ran(), set(["flaky", "after"]));
    assert_eq!(r.ran["flaky"], "new");
    assert_eq!(sb.cat_str("fl/after/y"), "fine\n");
}

const BRANCHES: &str = r#"
[tasks.a_bad]
run = 'echo broken >&2; exit 1'

[tasks.b_ok]
run = 'echo b > "$DAGFS_OUT/b"'

[tasks.c_ok]
run = 'cat "$DAGFS_IN/b_ok/b" > "$DAGFS_OUT/c"'
deps = ["b_ok"]

[tasks.d_down]
run = 'echo d > "$DAGFS_OUT/d"'
deps = ["a_bad"]
"#;

#[test]
fn fail_fast_stops_dispatching_after_the_first_failure() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", BRANCHES);
    // One worker: a_bad and b_ok are queued together, a_bad fails first, so
    // c_ok (ready only after b_ok) is never dispatched.
    let r = sb.run(&p, &["-j", "1"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.failed.contains("a_bad"));
    assert!(r.skipped.contains("c_ok"), "{}", r.stderr);
    assert!(r.skipped.contains("d_down"), "{}", r.stderr);
}

#[test]
fn keep_going_runs_every_branch_not_downstream_of_a_failure() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", BRANCHES);
    let r = sb.run(&p, &["-j", "1", "--keep-going"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.ran(), set(["b_ok", "c_ok"]), "{}", r.stderr);
    assert!(r.failed.contains("a_bad"));
    assert_eq!(r.skipped, strs(&["d_down"]));
    assert!(r.stderr.contains("| broken"), "{}", r.stderr);
    assert_eq!(sb.entries(), 2);
}

#[test]
fn special_file_in_output_is_rejected_naming_its_path() {
    let sb = Sandbox::new();
    let p = sb.pipeline(
        "p",
        r#"
[tasks.weird]
run = 'echo data > "$DAGFS_OUT/ok.txt"; mkfifo "$DAGFS_OUT/pipe"'

[tasks.down]
run = 'echo d > "$DAGFS_OUT/d"'
deps = ["weird"]
"#,
    );
    let r = sb.run(&p, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.failed.contains("weird"));
    assert!(r.skipped.contains("down"));
    assert!(
        r.stderr
            .contains("/pipe: a FIFO is not allowed in a task output"),
        "{}",
        r.stderr
    );
    assert_eq!(sb.entries(), 0);
    assert_tmp_empty(&sb);
}

// ---------------------------------------------------------------------------
// validation: each error has its exit code, and nothing touches the store
// ---------------------------------------------------------------------------

/// A sandbox whose store already holds a successful run of `CHAIN`.
fn seeded() -> (Sandbox, Value) {
    let sb = Sandbox::new();
    let p = sb.pipeline("good", CHAIN);
    sb.run(&p, &[]).ok();
    let stats = sb.stats();
    (sb, stats)
}

/// Runs `toml` (plus `extra` args); checks the exit code, that nothing ran,
/// and that the store is as it was. Returns stderr.
fn assert_rejected(toml: &str, extra: &[&str], code: i32) -> (String, PathBuf) {
    let (sb, before) = seeded();
    let p = sb.pipeline("bad", toml);
    let entries = sb.files_under("entries");
    let blobs = sb.files_under("blobs");
    let r = sb.run(&p, extra);
    assert_eq!(r.code, code, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("dagfs: error: "),
        "one clear error: {}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(!sb.root.join("bad/executed").exists(), "a task ran");
    assert_eq!(sb.files_under("entries"), entries);
    assert_eq!(sb.files_under("blobs"), blobs);
    let after = sb.stats();
    assert_eq!(after, before, "the store's statistics changed");
    (r.stderr, p.join("dagfs.toml"))
}

#[test]
fn bad_toml_is_reported_as_file_line_col_exit_3() {
    let (err, file) = assert_rejected("[tasks.a]\nrun = \"touch executed\"\nbogus = = 1\n", &[], 3);
    let msg = err.strip_prefix("dagfs: error: ").unwrap();
    let rest = msg
        .strip_prefix(&format!("{}:", file.display()))
        .unwrap_or_else(|| panic!("no file prefix: {msg}"));
    let mut parts = rest.splitn(3, ':');
    assert_eq!(parts.next(), Some("3"), "line: {msg}");
    assert_eq!(parts.next(), Some("9"), "column: {msg}");
}

#[test]
fn unknown_field_is_rejected_exit_3() {
    let (err, file) = assert_rejected("[tasks.a]\nrun = \"touch executed\"\nbogus = 1\n", &[], 3);
    assert!(
        err.contains(&format!("{}:3:1: unknown field `bogus`", file.display())),
        "{err}"
    );
}

#[test]
fn task_without_run_is_rejected_exit_3() {
    let (err, _) = assert_rejected(
        "[tasks.ok]\nrun = \"touch executed\"\n[tasks.a]\ndeps = []\n",
        &[],
        3,
    );
    assert!(err.contains("missing field `run`"), "{err}");
}

#[test]
fn missing_input_path_is_rejected_exit_3() {
    let (err, _) = assert_rejected(
        "[tasks.a]\nrun = \"touch executed\"\ninputs = [\"nope.txt\"]\n",
        &[],
        3,
    );
    assert!(err.contains("input `nope.txt` of task `a`"), "{err}");
}

#[test]
fn input_outside_the_pipeline_dir_is_rejected_exit_3() {
    let (err, _) = assert_rejected(
        "[tasks.a]\nrun = \"touch executed\"\ninputs = [\"../good\"]\n",
        &[],
        3,
    );
    assert!(err.contains("must be a relative path inside"), "{err}");
}

#[test]
fn duplicate_task_is_rejected_exit_4() {
    let (err, file) = assert_rejected(
        "[tasks.a]\nrun = \"touch executed\"\n[tasks.a]\nrun = \"y\"\n",
        &[],
        4,
    );
    assert!(
        err.contains(&format!("{}:3:1: duplicate task `a`", file.display())),
        "{err}"
    );
}

#[test]
fn unknown_dependency_is_rejected_exit_5() {
    let (err, _) = assert_rejected(
        "[tasks.a]\nrun = \"touch executed\"\ndeps = [\"zz\"]\n",
        &[],
        5,
    );
    assert!(
        err.contains("task `a` depends on unknown task `zz`"),
        "{err}"
    );
}

#[test]
fn cycle_is_rejected_with_its_full_path_exit_6() {
    // a needs c, c needs b, b needs a; d hangs off the cycle.
    let toml = r#"
[tasks.a]
run = "touch executed"
deps = ["c"]
[tasks.b]
run = "touch executed"
deps = ["a"]
[tasks.c]
run = "touch executed"
deps = ["b"]
[tasks.d]
run = "touch executed"
deps = ["a"]
[tasks.e]
run = "touch executed"
"#;
    let (err, _) = assert_rejected(toml, &[], 6);
    let path = err
        .trim()
        .strip_prefix("dagfs: error: dependency cycle: ")
        .unwrap_or_else(|| panic!("{err}"));
    let nodes: Vec<&str> = path.split(" -> ").collect();
    assert_eq!(nodes.len(), 4, "{path}");
    assert_eq!(nodes[0], nodes[3], "a cycle ends where it starts: {path}");
    let mut members = nodes[..3].to_vec();
    members.sort();
    assert_eq!(members, ["a", "b", "c"], "{path}");
    // Each step follows a dependency edge: x -> y means x depends on y.
    let deps: BTreeMap<&str, &str> = [("a", "c"), ("b", "a"), ("c", "b")].into();
    for w in nodes.windows(2) {
        assert_eq!(deps[w[0]], w[1], "{path}");
    }
}

#[test]
fn unknown_task_on_the_command_line_is_rejected_exit_7() {
    let (err, _) = assert_rejected("[tasks.a]\nrun = \"touch executed\"\n", &["a", "nosuch"], 7);
    assert!(err.contains("no task named `nosuch`"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let (sb, before) = seeded();
    let p = sb.root.join("good");
    for args in [
        &["-j", "0"][..],
        &["--max-bytes", "lots"],
        &["--ttl", "soon"],
        &["--no-such-flag"],
    ] {
        let r = sb.run(&p, args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.ran.is_empty() && r.hit.is_empty());
    }
    assert_eq!(sb.dagfs(&["frobnicate"]).code, 2);
    assert_eq!(sb.dagfs(&["config", "colour", "blue"]).code, 2);
    assert_eq!(sb.stats(), before);
}

#[test]
fn newer_store_format_is_refused_exit_9_and_left_untouched() {
    let (sb, _) = seeded();
    let entries = sb.files_under("entries");
    let format = sb.store.join("FORMAT");
    fs::write(&format, "dagfs-store\nversion 99\n").unwrap();
    let p = sb.root.join("good");
    let r = sb.run(&p, &[]);
    assert_eq!(r.code, 9, "{}", r.stderr);
    assert!(r.stderr.contains("version 99"), "{}", r.stderr);
    assert!(r.ran.is_empty() && r.hit.is_empty());
    for args in [
        &["stats"][..],
        &["ls"],
        &["gc"],
        &["cat", "chain/gen/words.txt"],
    ] {
        let o = sb.dagfs(args);
        assert_eq!(o.code, 9, "{args:?}: {}", o.stderr);
    }
    assert_eq!(
        fs::read_to_string(&format).unwrap(),
        "dagfs-store\nversion 99\n"
    );
    assert_eq!(sb.files_under("entries"), entries);
}

#[test]
fn directory_that_is_not_a_store_is_refused_exit_8() {
    let sb = Sandbox::new();
    fs::create_dir_all(&sb.store).unwrap();
    fs::write(sb.store.join("precious.txt"), "mine").unwrap();
    let p = sb.pipeline("p", CHAIN);
    let r = sb.run(&p, &[]);
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("not a dagfs store"), "{}", r.stderr);
    let names: Vec<_> = fs::read_dir(&sb.store)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["precious.txt"], "nothing was created in it");
}

#[test]
fn cat_and_ls_of_missing_things_exit_10() {
    let (sb, _) = seeded();
    for spec in [
        "chain/gen/nope.txt",
        "chain/nope/words.txt",
        "nope/gen/words.txt",
        "00000000/words.txt",
    ] {
        let o = sb.dagfs(&["cat", spec]);
        assert_eq!(o.code, 10, "{spec}: {}", o.stderr);
        assert!(o.stdout.is_empty());
    }
    assert_eq!(sb.dagfs(&["ls", "nope"]).code, 10);
}

// ---------------------------------------------------------------------------
// cache policy and gc
// ---------------------------------------------------------------------------

/// Independent tasks t1..tN in the DAG `ind`; each writes `size` bytes of its
/// own letter (t1: `b`, t2: `c`, ...) to `f`.
fn independent_tasks(n: usize, size: usize) -> String {
    let mut s = String::from("name = \"ind\"\n");
    for i in 1..=n {
        s += &format!(
            "[tasks.t{i}]\nrun = 'head -c {} /dev/zero | tr \"\\\\000\" {} > \"$DAGFS_OUT/f\"'\n",
            size,
            (b'a' + i as u8) as char
        );
    }
    s
}

fn present(sb: &Sandbox) -> BTreeSet<String> {
    sb.ls("ind")
        .into_iter()
        .filter(|(_, cached)| *cached)
        .map(|(t, _)| t)
        .collect()
}

fn strs(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn max_entries_holds_exactly_and_evicts_least_recently_used() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", &independent_tasks(4, 10));
    let o = sb.dagfs(&["config", "max_entries", "3"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(sb.dagfs(&["config", "max_entries"]).stdout_str(), "3\n");

    // Separate runs: distinct last-use times t1 < t2 < t3.
    for t in ["t1", "t2", "t3"] {
        sb.run(&p, &[t]).ok();
    }
    assert_eq!(sb.entries(), 3);
    // Using t1 makes t2 the least recently used.
    assert_eq!(sb.run(&p, &["t1"]).ok().hits(), set(["t1"]));

    let r = sb.run(&p, &["t4"]).ok();
    assert_eq!(r.ran(), set(["t4"]));
    assert_eq!(present(&sb), strs(&["t1", "t3", "t4"]));
    let s = sb.stats();
    assert_eq!(s["total_entries"], 3);
    assert_eq!(s["evictions"], 1);

    // The evicted one runs again; now t3 is the oldest.
    let r = sb.run(&p, &["t2"]).ok();
    assert_eq!(r.ran(), set(["t2"]), "evicted entries miss");
    assert_eq!(present(&sb), strs(&["t1", "t2", "t4"]));
    assert_eq!(sb.entries(), 3);
    assert_eq!(sb.files_under("entries").len(), 3, "entries/ on disk too");
}

#[test]
fn max_bytes_holds_exactly_and_evicts_least_recently_used() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", &independent_tasks(4, 100));
    for t in ["t1", "t2", "t3"] {
        sb.run(&p, &[t, "--max-bytes", "300"]).ok();
    }
    let s = sb.stats();
    assert_eq!(s["total_size_bytes"], 300, "exactly at the limit is fine");
    assert_eq!(s["evictions"], 0);

    sb.run(&p, &["t4", "--max-bytes", "300"]).ok();
    assert_eq!(present(&sb), strs(&["t2", "t3", "t4"]));
    assert_eq!(sb.stats()["total_size_bytes"], 300);

    sb.run(&p, &["t2", "--max-bytes", "250"]).ok();
    let s = sb.stats();
    assert_eq!(s["total_size_bytes"], 200);
    assert_eq!(
        present(&sb),
        strs(&["t2", "t4"]),
        "t3 was least recently used"
    );

    // Without the per-run limit nothing more is evicted.
    sb.run(&p, &["t1"]).ok();
    assert_eq!(sb.stats()["total_size_bytes"], 300);
}

#[test]
fn eviction_never_removes_what_the_current_run_uses() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", CHAIN);
    sb.run(&p, &["gen"]).ok();
    // gen is used (hit) and upper produced in this run: both protected, so
    // `count` cannot be kept under a limit of 2 even though gen is oldest.
    let r = sb.run(&p, &["--max-entries", "2"]).ok();
    assert_eq!(r.hits(), set(["gen"]));
    assert_eq!(r.ran(), set(["upper", "count"]));
    assert!(
        r.stderr.contains("`count` was not kept"),
        "a warning says so: {}",
        r.stderr
    );
    let ls = sb.ls("chain");
    assert_eq!(ls.get("gen"), Some(&true));
    assert_eq!(ls.get("upper"), Some(&true));
    assert_eq!(sb.entries(), 2);
}

/// Blobs are committed in batches; an output whose entry the policy cannot
/// keep must still be committed for the tasks downstream of it in the run.
#[test]
fn output_not_kept_by_the_policy_still_feeds_its_dependents() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", CHAIN);
    let r = sb.run(&p, &["--max-entries", "1"]).ok();
    assert_eq!(r.ran(), set(["gen", "upper", "count"]));
    assert!(r.stderr.contains("`upper` was not kept"), "{}", r.stderr);
    assert_eq!(sb.entries(), 1);
    assert_eq!(sb.cat_str("chain/gen/words.txt"), "alpha\nbeta\n");
    let o = sb.dagfs(&["cat", "chain/count/out/n.txt"]);
    assert_eq!(o.code, 10, "count was not kept either: {}", o.stderr);
}

#[test]
fn gc_removes_unreferenced_blobs_and_nothing_referenced() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", &independent_tasks(2, 64));
    sb.run(&p, &["t1"]).ok();
    sb.run(&p, &["t2", "--max-entries", "1"]).ok();
    assert_eq!(present(&sb), strs(&["t2"]));

    let t1_blob = sb.blob_path(&blake3::hash(&[b'b'; 64]).to_hex());
    let t2_blob = sb.blob_path(&blake3::hash(&[b'c'; 64]).to_hex());
    assert!(t1_blob.exists(), "eviction leaves blobs to gc");
    let before = sb.files_under("blobs");

    let o = sb.dagfs(&["gc", "--dry-run"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout_str().contains("would remove 2 of"),
        "{}",
        o.stdout_str()
    );
    assert_eq!(sb.files_under("blobs"), before, "dry run removes nothing");

    let o = sb.dagfs(&["gc"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // t1's file and its tree.
    assert!(
        o.stdout_str().contains("removed 2 of"),
        "{}",
        o.stdout_str()
    );
    assert!(!t1_blob.exists());
    assert!(t2_blob.exists());
    assert_eq!(sb.files_under("blobs").len(), before.len() - 2);
    assert_eq!(sb.cat("ind/t2/f"), vec![b'c'; 64]);
    // t2 is still a hit (its whole tree is intact), t1 runs again.
    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.hits(), set(["t2"]));
    assert_eq!(r.ran(), set(["t1"]));

    let o = sb.dagfs(&["gc"]);
    assert!(
        o.stdout_str().contains("removed 0 of"),
        "{}",
        o.stdout_str()
    );
}

// ---------------------------------------------------------------------------
// concurrency
// ---------------------------------------------------------------------------

#[test]
fn two_processes_share_one_store() {
    let sb = Sandbox::new();
    let mk = |name: &str| {
        sb.pipeline(
            name,
            &format!(
                r#"
name = "{name}"
[tasks.a]
run = 'echo {name}-a > "$DAGFS_OUT/a"'
[tasks.b]
run = 'cat "$DAGFS_IN/a/a" > "$DAGFS_OUT/b"; echo {name}-b >> "$DAGFS_OUT/b"'
deps = ["a"]
[tasks.c]
run = 'echo {name}-c > "$DAGFS_OUT/c"'
[tasks.d]
run = 'cat "$DAGFS_IN/b/b" "$DAGFS_IN/c/c" > "$DAGFS_OUT/d"'
deps = ["b", "c"]
"#
            ),
        )
    };
    let p1 = mk("one");
    let p2 = mk("two");
    let spawn = |p: &Path| {
        sb.run_cmd(p, &[], &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dagfs")
    };
    let c1 = spawn(&p1);
    let c2 = spawn(&p2);
    let r1 = Run::parse(Out::from(c1.wait_with_output().unwrap())).ok();
    let r2 = Run::parse(Out::from(c2.wait_with_output().unwrap())).ok();
    assert_eq!(r1.summary.executed, 4);
    assert_eq!(r2.summary.executed, 4);
    for dag in ["one", "two"] {
        assert_eq!(
            sb.cat_str(&format!("{dag}/d/d")),
            format!("{dag}-a\n{dag}-b\n{dag}-c\n")
        );
    }
    assert_eq!(sb.entries(), 8);
    for p in [&p1, &p2] {
        assert_eq!(sb.run(p, &[]).ok().summary.cached, 4);
    }
    assert_tmp_empty(&sb);
}

// ---------------------------------------------------------------------------
// output trees
// ---------------------------------------------------------------------------

fn non_utf8_name() -> &'static OsStr {
    OsStr::from_bytes(b"caf\xe9.txt")
}

/// A tree with every kind of thing a task output may hold.
fn build_reference_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    fs::write(dir.join("data.bin"), &binary).unwrap();
    fs::write(dir.join("tool.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(dir.join("tool.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("sub/inner.txt"), "inner\n").unwrap();
    fs::write(dir.join("sp ace.txt"), "").unwrap();
    fs::write(dir.join(non_utf8_name()), "latin-1 name\n").unwrap();
    symlink("/etc/passwd", dir.join("passwd")).unwrap();
    symlink("../..", dir.join("up")).unwrap();
    symlink("sub/inner.txt", dir.join("rel")).unwrap();
    symlink("does/not/exist", dir.join("sub/dangling")).unwrap();
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    File { bytes: Vec<u8>, exec: bool },
    Dir,
    Link(Vec<u8>),
}

/// Every path under `root` (as bytes) with what it is; never follows links.
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Kind> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let md = fs::symlink_metadata(&path).unwrap();
            let kind = if md.file_type().is_symlink() {
                Kind::Link(
                    fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else if md.is_dir() {
                stack.push(path.clone());
                Kind::Dir
            } else {
                Kind::File {
                    bytes: fs::read(&path).unwrap(),
                    exec: md.permissions().mode() & 0o111 != 0,
                }
            };
            out.insert(rel, kind);
        }
    }
    out
}

#[test]
fn output_tree_round_trips_byte_exact() {
    let sb = Sandbox::new();
    let p = sb.pipeline(
        "p",
        r#"
name = "rt"

[tasks.producer]
run = 'cp -a ref/. "$DAGFS_OUT/"'
inputs = ["ref"]

[tasks.consumer]
run = '''
set -e
diff -r --no-dereference ref "$DAGFS_IN/producer/"
ls -l ref | sed 1d | cut -c1,4 > "$TMPDIR/want"
ls -l "$DAGFS_IN/producer/" | sed 1d | cut -c1,4 > "$TMPDIR/got"
diff "$TMPDIR/want" "$TMPDIR/got"
cp -a "$DAGFS_IN/producer/." "$DAGFS_OUT/copy"
rm -rf ../roundtrip
cp -a "$DAGFS_IN/producer/." ../roundtrip
'''
deps = ["producer"]
"#,
    );
    let reference = p.join("ref");
    build_reference_tree(&reference);

    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.ran(), set(["producer", "consumer"]));
    let want = snapshot(&reference);
    assert_eq!(want.len(), 12, "the reference tree is complete");
    assert_eq!(snapshot(&sb.root.join("roundtrip")), want);

    // The stored files, straight from the store.
    assert_eq!(
        sb.cat("rt/producer/data.bin"),
        fs::read(reference.join("data.bin")).unwrap()
    );
    assert_eq!(
        sb.cat("rt/consumer/copy/data.bin"),
        sb.cat("rt/producer/data.bin")
    );
    let key = &r.keys["producer"];
    assert_eq!(sb.cat_str(&format!("{key}/sub/inner.txt")), "inner\n");
    // A symlink is followed only inside the stored tree, never out of it.
    assert_eq!(sb.dagfs(&["cat", "rt/producer/passwd"]).code, 10);
    assert_eq!(sb.dagfs(&["cat", "rt/producer/up"]).code, 10);
    assert_eq!(sb.dagfs(&["cat", "rt/producer/up/etc/passwd"]).code, 10);
    assert_eq!(sb.dagfs(&["cat", "rt/producer/rel/x"]).code, 10);
    let listing = sb.cat("rt/producer");
    for want in [
        &b"tool.sh*\n"[..],
        b"data.bin\n",
        b"empty/\n",
        b"passwd@\n",
        b"caf\xe9.txt\n",
    ] {
        assert!(
            listing.windows(want.len()).any(|w| w == want),
            "{:?} not in {}",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(&listing)
        );
    }
    assert_eq!(sb.cat_str("rt/producer/empty"), "");

    // Identical tree, identical keys.
    let again = sb.run(&p, &[]).ok();
    assert_eq!(again.hits(), set(["producer", "consumer"]));
}

/// Identical subtrees (two empty directories, two copies of one directory)
/// are one tree object, stored once.
#[test]
fn output_with_identical_subdirectories_is_stored() {
    let sb = Sandbox::new();
    let p = sb.pipeline(
        "p",
        r#"
name = "twins"
[tasks.t]
run = 'cd "$DAGFS_OUT" && mkdir -p e1 e2 x/e3 d1 && echo same > d1/f && cp -r d1 d2'
"#,
    );
    sb.run(&p, &[]).ok();
    assert_eq!(sb.cat_str("twins/t"), "d1/\nd2/\ne1/\ne2/\nx/\n");
    assert_eq!(sb.cat_str("twins/t/d2/f"), "same\n");
    assert_eq!(sb.cat_str("twins/t/x"), "e3/\n");
}

/// A task may leave read-only directories in its output (`chmod a-w`, or a
/// `cp -a` of a 0555 `$DAGFS_IN` tree). Ingest must still store them; as
/// root permissions never bite, so when the tests run as root this one
/// runs dagfs as `nobody` (through `setpriv`).
#[test]
fn read_only_directories_in_an_output_are_stored() {
    let sb = Sandbox::new();
    let p = sb.pipeline(
        "p",
        r#"
name = "ro"

[tasks.locked]
run = 'mkdir -p "$DAGFS_OUT/d/e"; echo fresh-content-1 > "$DAGFS_OUT/d/e/f"; echo fresh-content-2 > "$DAGFS_OUT/d/g"; chmod 555 "$DAGFS_OUT/d/e" "$DAGFS_OUT/d"'

[tasks.copy]
run = 'cp -a "$DAGFS_IN/locked/." "$DAGFS_OUT/c"; chmod -R u+w "$DAGFS_OUT/c"; echo more > "$DAGFS_OUT/c/d/new"; chmod -R a-w "$DAGFS_OUT/c"'
deps = ["locked"]
"#,
    );
    let file = p.join("dagfs.toml");
    let mut args: Vec<String> = Vec::new();
    // The sandbox was just created by this process: its owner is our euid.
    let as_root = fs::metadata(&sb.root).unwrap().uid() == 0;
    if as_root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("setpriv not found: running as root, which cannot show the problem");
        } else {
            fs::set_permissions(&sb.root, fs::Permissions::from_mode(0o777)).unwrap();
            args.extend(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                ]
                .map(String::from),
            );
        }
    }
    args.push(BIN.into());
    args.extend(["--store".into(), sb.store.display().to_string()]);
    args.extend(["run".into(), "-f".into(), file.display().to_string()]);
    let o = Command::new(&args[0])
        .args(&args[1..])
        .current_dir(&sb.root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let r = Run::parse(Out::from(o)).ok();
    assert_eq!(r.ran(), set(["locked", "copy"]));
    assert_eq!(sb.cat_str("ro/locked/d/e/f"), "fresh-content-1\n");
    assert_eq!(sb.cat_str("ro/copy/c/d/g"), "fresh-content-2\n");
    assert_eq!(sb.cat_str("ro/copy/c/d/new"), "more\n");
}

// ---------------------------------------------------------------------------
// --trace, TASK selection, the hello-c example
// ---------------------------------------------------------------------------

#[test]
fn trace_is_chrome_json_with_one_event_per_task() {
    let sb = Sandbox::new();
    let p = sb.pipeline("p", CHAIN);
    let trace = sb.root.join("trace.json");
    let tr = trace.to_str().unwrap();
    let r = sb.run(&p, &["--trace", tr]).ok();
    let doc: Value = serde_json::from_slice(&fs::read(&trace).unwrap()).expect("valid JSON");
    let events = doc["traceEvents"].as_array().expect("traceEvents");
    assert_eq!(events.len(), 3);
    let mut names = BTreeSet::new();
    for e in events {
        let name = e["name"].as_str().unwrap();
        names.insert(name.to_string());
        assert_eq!(e["ph"], "X");
        assert!(e["ts"].is_u64() && e["dur"].as_u64().unwrap() >= 1);
        let key = e["args"]["key"].as_str().expect("args.key");
        assert_eq!(key.len(), 64);
        assert!(key.starts_with(&r.keys[name]), "{key} vs {}", r.keys[name]);
        assert_eq!(e["args"]["route"], "miss");
    }
    assert_eq!(names, strs(&["gen", "upper", "count"]));

    sb.run(&p, &["--trace", tr]).ok();
    let doc: Value = serde_json::from_slice(&fs::read(&trace).unwrap()).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["args"]["route"] == "key"));
}

#[test]
fn naming_tasks_runs_only_them_and_their_dependencies() {
    let sb = Sandbox::new();
    let mut toml = CHAIN.to_string();
    toml += "[tasks.other]\nrun = 'echo other > \"$DAGFS_OUT/o\"'\n";
    let p = sb.pipeline("p", &toml);
    let r = sb.run(&p, &["upper"]).ok();
    assert_eq!(r.summary.tasks, 2);
    assert_eq!(r.ran(), set(["gen", "upper"]));
    let r = sb.run(&p, &["count", "other"]).ok();
    assert_eq!(r.summary.tasks, 4);
    assert_eq!(r.hits(), set(["gen", "upper"]));
    assert_eq!(r.ran(), set(["count", "other"]));
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn hello_c_example_caches_and_reruns_only_what_an_edit_affects() {
    let sb = Sandbox::new();
    let p = sb.root.join("hello-c");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-c"),
        &p,
    );
    let r = sb.run(&p, &[]).ok();
    assert_eq!(
        r.summary,
        Summary {
            tasks: 8,
            executed: 8,
            ..Default::default()
        }
    );
    let report = sb.cat_str("hello-c/report/report.txt");
    assert!(report.contains("Hello, dagfs!"), "{report}");
    assert_eq!(sb.run(&p, &[]).ok().summary.cached, 8);

    // A comment leaves mathutil.o byte-identical: only its compile re-runs.
    let math = p.join("src/mathutil.c");
    let mut src = fs::read_to_string(&math).unwrap();
    src += "/* a comment only */\n";
    fs::write(&math, src).unwrap();
    let r = sb.run(&p, &[]).ok();
    assert_eq!(r.ran(), set(["compile_mathutil"]), "{}", r.stderr);

    // A real edit of main.c.
    let main = p.join("src/main.c");
    let src = fs::read_to_string(&main)
        .unwrap()
        .replace("Hello, dagfs!", "Hello again, dagfs!");
    fs::write(&main, src).unwrap();
    let r = sb.run(&p, &[]).ok();
    assert_eq!(
        r.ran(),
        set(["compile_main", "link", "report", "package"]),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.hits(),
        set([
            "compile_strutil",
            "compile_mathutil",
            "compile_tests",
            "test"
        ])
    );
    assert!(sb
        .cat_str("hello-c/report/report.txt")
        .contains("Hello again, dagfs!"));
    // A symlink is followed inside the tree (`latest -> bin/hello`).
    assert_eq!(
        sb.cat("hello-c/package/latest"),
        sb.cat("hello-c/package/bin/hello")
    );
    assert!(sb.cat_str("hello-c/package").contains("latest@"));
    assert_eq!(sb.cat_str("hello-c/package/var"), "", "empty dir kept");
}

/// Regression: with a relative `--store`, ingest compared the absolute output
/// path with the relative `tmp/` path, decided the output was not under the
/// store, and copied every file instead of renaming it in.
#[test]
fn relative_store_path_takes_over_output_files_without_copying() {
    use std::os::unix::fs::MetadataExt;
    let sb = Sandbox::new();
    sb.pipeline(
        "p",
        "[tasks.a]\nrun = \"echo hello > $DAGFS_OUT/out.txt; stat -c %i $DAGFS_OUT/out.txt > $DAGFS_OUT/ino\"\n",
    );
    let dagfs = |args: &[&str]| {
        Out::from(
            Command::new(BIN)
                .args(["--store", "rel-store"])
                .args(args)
                .current_dir(&sb.root)
                .stdin(Stdio::null())
                .output()
                .expect("spawn dagfs"),
        )
    };
    let o = dagfs(&["run", "-f", "p/dagfs.toml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let ino: u64 = dagfs(&["cat", "p/a/ino"])
        .stdout_str()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(dagfs(&["cat", "p/a/out.txt"]).stdout, b"hello\n");
    let hex = dagfs::Digest::of(b"hello\n").to_hex();
    let blob = sb.root.join("rel-store/blobs").join(&hex[..2]).join(&hex);
    assert_eq!(
        fs::metadata(&blob).unwrap().ino(),
        ino,
        "the output file was copied, not renamed in"
    );
}

/// A 1,000,000-task chain is parsed, validated, planned and scheduled
/// (its first task fails, so the rest are skipped) without overflowing the
/// stack: every graph algorithm is iterative.
#[test]
fn million_task_chain_validates_and_schedules() {
    use std::fmt::Write as _;
    let sb = Sandbox::new();
    let mut toml = String::with_capacity(45 << 20);
    toml.push_str("name = \"m\"\n[tasks.t0]\nrun = \"exit 3\"\n");
    for i in 1..1_000_000 {
        let _ = write!(
            toml,
            "[tasks.t{i}]\nrun = \"true\"\ndeps = [\"t{}\"]\n",
            i - 1
        );
    }
    let p = sb.pipeline("m", &toml);
    let r = sb.run(&p, &["-j2"]);
    assert_eq!(
        r.code,
        1,
        "{}",
        &r.stderr[r.stderr.len().saturating_sub(2000)..]
    );
    assert!(
        r.stderr
            .contains("1000000 tasks: 0 executed, 0 cached, 1 failed, 999999 skipped"),
        "{}",
        &r.stderr[r.stderr.len().saturating_sub(2000)..]
    );
}

// ---------------------------------------------------------------------------
// run --watch
// ---------------------------------------------------------------------------

/// `dagfs run --watch` re-runs exactly what a changed input affects, says
/// what changed and why each task ran, ignores undeclared files, and stops
/// cleanly on SIGINT.
#[test]
fn run_watch_reruns_what_a_changed_input_affects() {
    use std::io::{BufRead, BufReader};
    let s = Sandbox::new();
    s.write("w/src/a.txt", "one\n");
    s.write("w/other.txt", "not an input\n");
    let dir = s.pipeline(
        "w",
        r#"
name = "w"
[tasks.copy]
run = 'cat src/a.txt > "$DAGFS_OUT/a"'
inputs = ["src"]
[tasks.upper]
run = 'tr a-z A-Z < "$DAGFS_IN/copy/a" > "$DAGFS_OUT/a"'
deps = ["copy"]
[tasks.alone]
run = 'echo alone > "$DAGFS_OUT/x"'
"#,
    );
    let mut child = s
        .run_cmd(&dir, &["--watch", "-j1"], &[])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Lines up to and including the next "watching" line.
    let next_round = |what: &str| -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; saw {lines:#?}"));
            let done = l.starts_with("dagfs: watching");
            lines.push(l);
            if done {
                return lines;
            }
        }
    };
    let ran = |lines: &[String]| -> BTreeMap<String, String> {
        lines
            .iter()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.first() == Some(&"ran")).then(|| (w[1].to_string(), w[4..].join(" ")))
            })
            .collect()
    };
    let first = next_round("the first run");
    assert_eq!(ran(&first).len(), 3, "{first:#?}");
    // An edit of a declared input: copy and upper run again, alone does not.
    s.write("w/src/a.txt", "two\n");
    let second = next_round("the run after an input changed");
    assert!(
        second
            .iter()
            .any(|l| l.starts_with("dagfs: changed:") && l.contains("a.txt")),
        "{second:#?}"
    );
    let r = ran(&second);
    assert_eq!(
        r.keys().map(String::as_str).collect::<Vec<_>>(),
        ["copy", "upper"],
        "{second:#?}"
    );
    assert!(r.values().all(|why| why == "(input changed)"), "{r:?}");
    assert!(
        second.iter().any(|l| l.contains("hit   alone")),
        "{second:#?}"
    );
    // A file no task declares changes nothing.
    s.write("w/other.txt", "still not an input\n");
    assert!(
        rx.recv_timeout(Duration::from_millis(800)).is_err(),
        "an undeclared file triggered a run"
    );
    // SIGINT stops it; the exit code is the last run's.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("run --watch did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(s.cat_str("w/upper/a").trim(), "TWO");
}
