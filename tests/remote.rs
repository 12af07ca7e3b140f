//! The remote tier against a real REAPI v2 server: BuildGrid (in-memory
//! CAS and action cache, `tests/reapi/buildgrid-cache.yml`), started by
//! this harness on a free port of 127.0.0.1 and killed in every path.
//! `scripts/buildgrid` installs it (scripts/test and .ci/run run it); the
//! tests find its `bgd` through `DAGFS_BGD`, else where that script puts it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{config, dagfs, env, fsck_clean, keygen, ok, text};

// ---------------------------------------------------------------------------
// the server
// ---------------------------------------------------------------------------

fn bgd() -> PathBuf {
    if let Some(p) = std::env::var_os("DAGFS_BGD") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME");
    for v in ["0.4.4", "0.9.1"] {
        let p = cache.join(format!("dagfs/buildgrid-{v}/bin/bgd"));
        if p.exists() {
            return p;
        }
    }
    panic!("no BuildGrid: run scripts/buildgrid (scripts/test and .ci/run do), or set DAGFS_BGD");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A BuildGrid serving 127.0.0.1:`port`, in its own process group, killed
/// (the whole group) when dropped.
struct BuildGrid {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// `grpc` or `grpcs`.
    scheme: &'static str,
    /// Settings (`dagfs config`) and environment the readiness probe needs.
    probe_config: Vec<(String, String)>,
    probe_env: Vec<(String, String)>,
}

impl BuildGrid {
    fn start() -> BuildGrid {
        BuildGrid::start_on(free_port())
    }

    fn start_on(port: u16) -> BuildGrid {
        let cfg = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reapi/buildgrid-cache.yml"),
        )
        .unwrap();
        BuildGrid::start_with(
            tempfile::tempdir().unwrap(),
            port,
            &cfg,
            "grpc",
            vec![],
            vec![],
        )
    }

    /// BuildGrid under the configuration `cfg` (its `127.0.0.1:50051` made
    /// `port`), probed over `scheme` with these settings and environment.
    fn start_with(
        dir: tempfile::TempDir,
        port: u16,
        cfg: &str,
        scheme: &'static str,
        probe_config: Vec<(String, String)>,
        probe_env: Vec<(String, String)>,
    ) -> BuildGrid {
        let cfg = cfg.replace("127.0.0.1:50051", &format!("127.0.0.1:{port}"));
        let cfg_path = dir.path().join("bgd.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("bgd.log")).unwrap();
        let child = Command::new(bgd())
            .args(["server", "start"])
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start bgd");
        let mut bg = BuildGrid {
            child: Some(child),
            port,
            dir,
            scheme,
            probe_config,
            probe_env,
        };
        bg.wait_ready();
        bg
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// Until GetCapabilities answers (about 3 s after start).
    fn wait_ready(&mut self) {
        let probe = self.dir.path().join("probe-store");
        for (k, v) in &self.probe_config {
            config(&probe, k, v);
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let o = dagfs(&probe, &["remote", "status"])
                .env("DAGFS_REMOTE", self.url())
                .envs(self.probe_env.iter().map(|(k, v)| (k, v)))
                .output()
                .unwrap();
            if o.status.success() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "bgd exited ({st}): {}",
                    std::fs::read_to_string(self.dir.path().join("bgd.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "BuildGrid did not answer GetCapabilities in 90 s: {}",
                text(&o)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the process group this harness made.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for BuildGrid {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// pipelines and stores
// ---------------------------------------------------------------------------

/// Five tasks: a tree with a subdirectory, a symlink, an executable, a
/// declared input, a dependency chain, and one file bigger than a
/// BatchUpdateBlobs (so it travels by ByteStream).
fn pipeline(dir: &Path, name: &str, leaf: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("input.txt"), "the input\n").unwrap();
    let toml = format!(
        r##"
name = "{name}"

[tasks.gen]
run = 'cd "$DAGFS_OUT" && mkdir -p sub/deeper && echo hello > sub/a.txt && echo deep > sub/deeper/d.txt && echo world > b.txt && ln -s b.txt link && echo gen says hi'
[tasks.copy]
run = 'cp input.txt "$DAGFS_OUT/copied" && printf "#!/bin/sh\necho x\n" > "$DAGFS_OUT/tool" && chmod +x "$DAGFS_OUT/tool"'
inputs = ["input.txt"]
[tasks.big]
run = 'i=0; while [ $i -lt 5200 ]; do printf "%01023d\n" $i; i=$((i+1)); done > "$DAGFS_OUT/big"; echo warn >&2'
[tasks.join]
run = 'cat "$DAGFS_IN/gen/sub/a.txt" "$DAGFS_IN/copy/copied" > "$DAGFS_OUT/joined"'
deps = ["gen", "copy"]
[tasks.{leaf}]
run = 'wc -c < "$DAGFS_IN/big/big" > "$DAGFS_OUT/count"; cp "$DAGFS_IN/join/joined" "$DAGFS_OUT/"'
deps = ["big", "join"]
"##
    );
    let p = dir.join("dagfs.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// Runs `dagfs run` there. NB: the store's lookups wait up to 20 s (not
/// the default 2 s), so a loaded machine never turns a hit into a miss.
fn run_in(store: &Path, file: &Path, args: &[&str]) -> Output {
    patient(store);
    let mut a = vec!["run", "-f", file.to_str().unwrap()];
    a.extend_from_slice(args);
    dagfs(store, &a)
        .env_remove("DAGFS_REMOTE")
        .env_remove("DAGFS_REMOTE_TOKEN")
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap()
}

fn patient(store: &Path) {
    config(store, "remote_lookup_timeout", "20s");
}

/// task -> output digest, from the store's entry records.
fn outputs(store: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for shard in std::fs::read_dir(store.join("entries")).unwrap() {
        for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            m.insert(
                v["task"].as_str().unwrap().to_string(),
                v["output"].as_str().unwrap().to_string(),
            );
        }
    }
    m
}

fn outputs_keys(store: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for shard in std::fs::read_dir(store.join("entries")).unwrap() {
        for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            v.push(e.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    v
}

fn entry_of(store: &Path, task: &str) -> dagfs::store::Entry {
    for shard in std::fs::read_dir(store.join("entries")).unwrap() {
        for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let e =
                dagfs::store::Entry::from_json(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            if e.task == task {
                return e;
            }
        }
    }
    panic!("no entry for {task}");
}

fn lines<'a>(t: &'a str, prefix: &str) -> Vec<&'a str> {
    t.lines().filter(|l| l.starts_with(prefix)).collect()
}

fn queued(store: &Path) -> usize {
    std::fs::read_dir(store.join("remote-queue"))
        .map(|d| d.count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------

/// Two stores share through one server: the second executes nothing, its
/// entries are whole (fsck), its outputs are the first's, and the same
/// recipes under another pipeline name and task name hit too.
#[test]
fn two_stores_share_through_one_server() {
    let bg = BuildGrid::start();
    let e = env();
    let (a, b, c) = (e.root.join("a"), e.root.join("b"), e.root.join("c"));
    let file = pipeline(&e.root.join("p"), "shared", "report");
    config(&a, "remote", &bg.url());
    config(&a, "remote_upload", "on");
    patient(&a);
    let t = ok(&run_in(&a, &file, &[]));
    assert_eq!(lines(&t, "ran ").len(), 5, "{t}");
    assert!(t.contains("remote: uploaded 5 results"), "{t}");
    assert_eq!(queued(&a), 0);

    // b reads only (upload is off by default) and executes nothing.
    let t = ok(&run_in(&b, &file, &["--remote", &bg.url()]));
    let hits = lines(&t, "hit ");
    assert_eq!(hits.len(), 5, "{t}");
    assert!(hits.iter().all(|l| l.ends_with("(remote)")), "{t}");
    assert!(lines(&t, "ran ").is_empty(), "{t}");
    assert!(t.contains("0 executed, 5 cached"), "{t}");
    assert!(t.contains("remote: 5 hits, 0 misses, 0 rejected"), "{t}");
    assert!(
        !t.contains("uploading"),
        "a read-only consumer uploads nothing: {t}"
    );
    fsck_clean(&b);
    assert_eq!(outputs(&a), outputs(&b));
    let cat = dagfs(&b, &["cat", "shared/report/count"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout).trim(), "5324800");
    let cat = dagfs(&b, &["cat", "shared/gen/link"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "world\n");

    // Now local: key hits, without the remote.
    let t = ok(&run_in(&b, &file, &["--no-remote"]));
    assert_eq!(lines(&t, "hit ").len(), 5, "{t}");
    assert!(
        lines(&t, "hit ").iter().all(|l| l.ends_with("(key)")),
        "{t}"
    );
    let o = dagfs(&b, &["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hits_by_route"]["remote"], 5, "{v}");
    assert!(
        v["remote"]["bytes_down"].as_u64().unwrap() >= 5_324_800,
        "{v}"
    );

    // The same recipes in another pipeline, the leaf under another name.
    let other = pipeline(&e.root.join("q"), "elsewhere", "summary");
    let t = ok(&run_in(&c, &other, &["--remote", &bg.url()]));
    assert_eq!(lines(&t, "hit ").len(), 5, "{t}");
    assert!(t.contains("hit   summary"), "{t}");
    fsck_clean(&c);

    // A second upload of the same results sends no blob.
    for k in outputs_keys(&a) {
        std::fs::write(a.join("remote-queue").join(k), "").unwrap();
    }
    let t = ok(&dagfs(&a, &["remote", "flush"]).output().unwrap());
    assert!(
        t.contains("remote: uploaded 5 (0 blobs, 0 bytes sent"),
        "{t}"
    );
}

/// A server down from the start: one warning naming it, the run is the
/// same as without a remote, the uploads stay queued; once a server
/// answers, `dagfs remote flush` sends them.
#[test]
fn server_down_from_the_start_then_flush() {
    let port = free_port();
    let url = format!("grpc://127.0.0.1:{port}");
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = pipeline(&e.root.join("p"), "down", "report");
    config(&a, "remote", &url);
    config(&a, "remote_upload", "on");
    let t = ok(&run_in(&a, &file, &[]));
    assert_eq!(lines(&t, "ran ").len(), 5, "{t}");
    let warnings: Vec<_> = t.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{t}");
    assert!(warnings[0].contains(&url), "{t}");
    assert!(
        t.contains("remote: 0 hits, 0 misses, 0 rejected, disabled after 1 errors"),
        "{t}"
    );
    assert!(
        t.contains("5 results left queued for `dagfs remote flush`"),
        "{t}"
    );
    assert_eq!(queued(&a), 5);
    fsck_clean(&a);
    let o = dagfs(&a, &["remote", "status"]).output().unwrap();
    assert_eq!(o.status.code(), Some(15), "{}", text(&o));
    let o = dagfs(&a, &["remote", "flush"]).output().unwrap();
    assert_eq!(o.status.code(), Some(15), "{}", text(&o));
    assert!(text(&o).contains("not uploaded"), "{}", text(&o));

    let bg = BuildGrid::start_on(port);
    let o = dagfs(&a, &["remote", "flush"]).output().unwrap();
    let t = ok(&o);
    assert!(t.contains("remote: uploaded 5"), "{t}");
    assert_eq!(queued(&a), 0);
    let t = ok(&run_in(&b, &file, &["--remote", &bg.url()]));
    assert!(t.contains("remote: 5 hits"), "{t}");
    assert_eq!(outputs(&a), outputs(&b));
}

/// The server killed while a task runs: the run still succeeds, says so
/// once, and keeps its uploads queued.
#[test]
fn server_killed_mid_run() {
    let mut bg = BuildGrid::start();
    let e = env();
    let a = e.root.join("a");
    let (mark, go) = (e.root.join("started"), e.root.join("go"));
    let mut toml = format!(
        "[tasks.gate]\nrun = 'touch {}; while [ ! -e {} ]; do sleep 0.05; done; echo gate > \"$DAGFS_OUT/g\"'\n",
        mark.display(),
        go.display()
    );
    for i in 0..6 {
        toml +=
            &format!("[tasks.after{i}]\nrun = 'echo {i} > \"$DAGFS_OUT/o\"'\ndeps = [\"gate\"]\n");
    }
    let file = e.pipeline("p", &toml).join("dagfs.toml");
    config(&a, "remote", &bg.url());
    config(&a, "remote_upload", "on");
    patient(&a);
    let child = dagfs(&a, &["run", "-f", file.to_str().unwrap()])
        .env_remove("DAGFS_REMOTE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for("the gate task", || mark.exists());
    bg.kill();
    std::fs::write(&go, "").unwrap();
    let o = child.wait_with_output().unwrap();
    let t = ok(&o);
    assert_eq!(lines(&t, "ran ").len(), 7, "{t}");
    assert_eq!(
        t.lines().filter(|l| l.contains("warning")).count(),
        1,
        "{t}"
    );
    let summary = t
        .lines()
        .find(|l| l.starts_with("remote: ") && l.contains("hits"))
        .unwrap();
    assert!(summary.contains("errors"), "{t}");
    assert_eq!(queued(&a), 7, "{t}");
    fsck_clean(&a);
}

/// A pipeline `name` of 24 independent tasks, each writing `bytes`
/// random bytes and its number; `extra` is added to each task.
fn random_tasks(name: &str, bytes: u64, extra: &str) -> String {
    let mut toml = format!("name = \"{name}\"\n");
    for i in 0..24 {
        toml += &format!(
            "[tasks.t{i}]\nrun = 'head -c {bytes} /dev/urandom > \"$DAGFS_OUT/r\"; echo {i} > \"$DAGFS_OUT/i\"'\n{extra}"
        );
    }
    toml
}

/// `kill -9` while results upload, and while tasks run: no upload is lost
/// (what was committed stays queued, `remote flush` sends it) and nothing
/// wrong is uploaded (a consumer verifies every result: none rejected).
#[test]
fn kill_9_during_uploads_loses_nothing() {
    let bg = BuildGrid::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let toml = random_tasks("many", 400_000, "env = [\"ROUND\"]\n");
    let file = e.pipeline("p", &toml).join("dagfs.toml");
    config(&a, "remote", &bg.url());
    config(&a, "remote_upload", "on");
    patient(&a);
    // Round 1: killed as the uploads start. Round 2: killed while tasks run.
    for (round, at_upload) in [("1", true), ("2", false)] {
        let mut child = dagfs(&a, &["run", "-j2", "-f", file.to_str().unwrap()])
            .env("ROUND", round)
            .env_remove("DAGFS_REMOTE")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let want = if at_upload {
            "remote: uploading"
        } else {
            "ran   t5"
        };
        loop {
            let mut l = String::new();
            if err.read_line(&mut l).unwrap() == 0 {
                panic!("the run ended before `{want}`: {seen}");
            }
            seen += &l;
            if l.starts_with(want) {
                break;
            }
        }
        // SAFETY: kill(2) on a child this test started.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
        assert!(
            queued(&a) > 0,
            "round {round}: nothing queued after the kill: {seen}"
        );
    }
    // Whatever was committed is queued; flush sends it all.
    let o = dagfs(&a, &["remote", "flush"]).output().unwrap();
    let t = ok(&o);
    assert_eq!(queued(&a), 0, "{t}");
    fsck_clean(&a);
    let produced = outputs(&a).len();
    assert!(produced >= 24, "round 1 ran every task: {produced}");
    // Every entry a has, b gets from the server, verified.
    patient(&b);
    for round in ["1", "2"] {
        let o = dagfs(
            &b,
            &["run", "-f", file.to_str().unwrap(), "--remote", &bg.url()],
        )
        .env("ROUND", round)
        .output()
        .unwrap();
        let t = ok(&o);
        assert!(t.contains(", 0 rejected"), "{t}");
        let hits = lines(&t, "hit ").len();
        let ran = lines(&t, "ran ").len();
        assert_eq!(hits + ran, 24, "{t}");
        if round == "1" {
            assert_eq!(
                hits, 24,
                "round 1 committed everything before its kill: {t}"
            );
        }
    }
    fsck_clean(&b);
}

/// A poisoned action cache: one result names another task's tree, another
/// carries another recipe's entry record. Both are rejected and counted,
/// the tasks run, and the store stays clean.
#[test]
fn poisoned_results_are_rejected_and_the_tasks_run() {
    use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
    use dagfs::remote::mapping::{ActionMsgs, DigestFn};
    let bg = BuildGrid::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = e.pipeline("p", "name = \"poison\"\n[tasks.one]\nrun = 'echo one > \"$DAGFS_OUT/f\"'\n[tasks.two]\nrun = 'echo two > \"$DAGFS_OUT/f\"; echo log'\n").join("dagfs.toml");
    config(&a, "remote", &bg.url());
    config(&a, "remote_upload", "on");
    patient(&a);
    ok(&run_in(&a, &file, &[]));
    let (one, two) = (entry_of(&a, "one"), entry_of(&a, "two"));
    let d1 = ActionMsgs::new(&one.manifest, DigestFn::Sha256).action_digest;
    let d2 = ActionMsgs::new(&two.manifest, DigestFn::Sha256).action_digest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ac = re::action_cache_client::ActionCacheClient::connect(format!(
            "http://127.0.0.1:{}",
            bg.port
        ))
        .await
        .unwrap();
        let get = |d: re::Digest| re::GetActionResultRequest {
            action_digest: Some(d),
            ..Default::default()
        };
        let r1 = ac
            .get_action_result(get(d1.clone()))
            .await
            .unwrap()
            .into_inner();
        let r2 = ac
            .get_action_result(get(d2.clone()))
            .await
            .unwrap()
            .into_inner();
        // one: its own record, two's tree.
        let mut p1 = r1.clone();
        p1.output_directories = r2.output_directories.clone();
        // two: one's record (another recipe). NB: a result naming a blob
        // the server lacks (evicted) BuildGrid itself answers as a miss.
        let mut p2 = r2.clone();
        p2.output_files = r1.output_files.clone();
        for (d, r) in [(d1, p1), (d2, p2)] {
            ac.update_action_result(re::UpdateActionResultRequest {
                action_digest: Some(d),
                action_result: Some(r),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });
    let t = ok(&run_in(&b, &file, &["--remote", &bg.url()]));
    assert_eq!(lines(&t, "ran ").len(), 2, "{t}");
    assert!(t.contains("remote: 0 hits, 0 misses, 2 rejected"), "{t}");
    assert!(t.contains("rebuilds to"), "{t}");
    assert!(t.contains("another recipe"), "{t}");
    fsck_clean(&b);
    assert_eq!(outputs(&a), outputs(&b));
    let o = dagfs(&b, &["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["remote"]["rejected"], 2, "{v}");
}

/// Settings and flags: bad URLs are refused with the reason (exit 2),
/// `none` clears, `--remote`/`--no-remote`/`DAGFS_REMOTE`, and `remote
/// status` without a remote.
#[test]
fn remote_settings_and_bad_urls() {
    let e = env();
    let s = &e.store;
    for bad in [
        "http://h:1",
        "grpc://h",
        "grpc://h:0",
        "grpc://:80",
        "grpc://h:1/a/../b",
    ] {
        let o = dagfs(s, &["config", "remote", bad]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        assert!(text(&o).contains("bad remote URL"), "{}", text(&o));
        assert!(text(&o).contains(bad), "{}", text(&o));
    }
    let o = dagfs(s, &["config", "remote_upload", "maybe"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = dagfs(s, &["config", "remote_lookup_timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    config(s, "remote_lookup_timeout", "500ms");
    let o = dagfs(s, &["config", "remote_lookup_timeout"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "500ms");
    config(s, "remote", "grpcs://cache.example:443/team/ci");
    let o = dagfs(s, &["config", "remote"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "grpcs://cache.example:443/team/ci"
    );
    let o = dagfs(s, &["config"]).output().unwrap();
    assert!(text(&o).contains("remote_upload = off"), "{}", text(&o));
    config(s, "remote", "none");
    let o = dagfs(s, &["remote", "status"])
        .env_remove("DAGFS_REMOTE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no remote configured"), "{}", text(&o));

    let file = pipeline(&e.root.join("p"), "flags", "report");
    let o = dagfs(
        s,
        &[
            "run",
            "-f",
            file.to_str().unwrap(),
            "--remote",
            "grpc://nope",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!s.join("entries").exists() || outputs(s).is_empty());
    let o = dagfs(s, &["run", "-f", file.to_str().unwrap()])
        .env("DAGFS_REMOTE", "grpc://h:99999")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("DAGFS_REMOTE"), "{}", text(&o));
    // --no-remote wins over DAGFS_REMOTE, even a bad one.
    let o = dagfs(s, &["run", "-f", file.to_str().unwrap(), "--no-remote"])
        .env("DAGFS_REMOTE", "grpc://127.0.0.1:1")
        .output()
        .unwrap();
    let t = ok(&o);
    assert!(!t.contains("remote:"), "{t}");
    let o = dagfs(
        s,
        &[
            "run",
            "-f",
            file.to_str().unwrap(),
            "--remote",
            "grpc://a:1",
            "--no-remote",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// A scratch directory with the test CA, the server's key and certificate,
/// a client's, and a JWT secret and token (`tests/reapi/tls_token.py`, run
/// by BuildGrid's Python).
fn tls_files() -> (tempfile::TempDir, PathBuf) {
    let python = bgd().with_file_name("python");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let o = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reapi/tls_token.py"))
        .arg(&d)
        .output()
        .unwrap();
    assert!(o.status.success(), "tls_token.py: {}", text(&o));
    (dir, d)
}

/// The loopback cache of `tests/reapi/buildgrid-cache.yml` (its storages,
/// caches and instances) behind a TLS channel with `tls_files`' server
/// certificate, asking for a client certificate if `client_ca`, with
/// `authorization` (the section's body).
fn tls_config(d: &Path, client_ca: bool, authorization: &str) -> String {
    let shared = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reapi/buildgrid-cache.yml"),
    )
    .unwrap();
    let cache = &shared[shared.find("storages:").expect("storages")..];
    let client = if client_ca {
        format!("      tls-client-certs: {}\n", d.join("ca.pem").display())
    } else {
        String::new()
    };
    format!(
        "server:\n  - !channel\n    address: \"127.0.0.1:50051\"\n    insecure-mode: false\n    credentials:\n      tls-server-key: {}\n      tls-server-cert: {}\n{client}authorization:\n{authorization}{cache}",
        d.join("server.key").display(),
        d.join("server.pem").display(),
    )
}

/// TLS (`grpcs://` with the CA in `remote_ca`) and a bearer token (a JWT
/// BuildGrid checks), on loopback: without the token or the CA the server
/// is unreachable (one warning, the run goes on); the token is never
/// printed.
#[test]
fn tls_and_bearer_token() {
    let (dir, d) = tls_files();
    let token = std::fs::read_to_string(d.join("token"))
        .unwrap()
        .trim()
        .to_string();
    let auth = format!(
        "  method: jwt\n  secret: {}\n  algorithm: hs256\n",
        d.join("secret").display()
    );
    let cfg = tls_config(&d, false, &auth);
    let ca = d.join("ca.pem").to_str().unwrap().to_string();
    let bg = BuildGrid::start_with(
        dir,
        free_port(),
        &cfg,
        "grpcs",
        vec![("remote_ca".into(), ca.clone())],
        vec![("DAGFS_REMOTE_TOKEN".into(), token.clone())],
    );
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = pipeline(&e.root.join("p"), "tls", "report");
    std::fs::write(e.root.join("token"), format!("{token}\n")).unwrap();
    config(&a, "remote", &bg.url());
    config(&a, "remote_ca", &ca);
    config(
        &a,
        "remote_token_file",
        e.root.join("token").to_str().unwrap(),
    );
    config(&a, "remote_upload", "on");
    let t = ok(&run_in(&a, &file, &[]));
    assert!(t.contains("remote: uploaded 5 results"), "{t}");
    let o = dagfs(&a, &["remote", "status", "--json"]).output().unwrap();
    let t = ok(&o);
    assert!(t.contains("\"reachable\": true"), "{t}");
    assert!(!t.contains(&token), "the token is printed: {t}");
    let o = dagfs(&a, &["config"]).output().unwrap();
    assert!(!text(&o).contains(&token), "{}", text(&o));

    // b: the CA but no token: refused, the run goes on locally.
    config(&b, "remote", &bg.url());
    config(&b, "remote_ca", &ca);
    let t = ok(&run_in(&b, &file, &[]));
    assert_eq!(lines(&t, "ran ").len(), 5, "{t}");
    assert_eq!(
        t.lines().filter(|l| l.contains("warning")).count(),
        1,
        "{t}"
    );
    // A wrong token: refused too, and not printed.
    let w = e.root.join("w");
    config(&w, "remote", &bg.url());
    config(&w, "remote_ca", &ca);
    patient(&w);
    let o = dagfs(&w, &["run", "-f", file.to_str().unwrap()])
        .env("DAGFS_REMOTE_TOKEN", "not-a-jwt-but-a-secret")
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    let t = ok(&o);
    assert!(t.contains("warning"), "{t}");
    assert!(!t.contains("not-a-jwt-but-a-secret"), "{t}");
    // The token and no CA (system roots): the certificate is refused.
    let c = e.root.join("c");
    config(&c, "remote", &bg.url());
    patient(&c);
    let o = dagfs(&c, &["run", "-f", file.to_str().unwrap()])
        .env("DAGFS_REMOTE_TOKEN", &token)
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    let t = ok(&o);
    assert_eq!(lines(&t, "ran ").len(), 5, "{t}");
    assert!(t.contains("disabled after 1 errors"), "{t}");
    // The token from the environment: every task from the server.
    let d2 = e.root.join("d");
    config(&d2, "remote", &bg.url());
    config(&d2, "remote_ca", &ca);
    patient(&d2);
    let o = dagfs(&d2, &["run", "-f", file.to_str().unwrap()])
        .env("DAGFS_REMOTE_TOKEN", &token)
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    let t = ok(&o);
    assert!(t.contains("remote: 5 hits, 0 misses, 0 rejected"), "{t}");
    assert!(!t.contains(&token), "{t}");
    fsck_clean(&d2);
}

/// Through a daemon: a store served by `dagfs mount` fetches from and
/// uploads to the remote the same way (the request's environment names
/// the remote), and the fetched outputs read through the mount.
#[test]
fn through_the_daemon() {
    let bg = BuildGrid::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = pipeline(&e.root.join("p"), "daemon", "report");
    config(&a, "remote_upload", "on");
    patient(&a);
    patient(&b);
    let m = match common::Mounted::try_new(&a, &e.root.join("mnt-a")) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    // Key files named relative to the caller's directory, set through the
    // daemon (whose working directory is not the caller's).
    let ci = keygen(&e.root.join("ci.key"));
    std::fs::write(e.root.join("trusted"), format!("{ci}\n")).unwrap();
    let o = dagfs(&a, &["config", "remote_sign_key", "ci.key"])
        .current_dir(&e.root)
        .output()
        .unwrap();
    assert!(
        ok(&o).contains(&format!(
            "remote_sign_key = {}",
            e.root.join("ci.key").display()
        )),
        "{}",
        text(&o)
    );
    let o = dagfs(&a, &["run", "-f", file.to_str().unwrap()])
        .env("DAGFS_REMOTE", bg.url())
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    let t = ok(&o);
    assert!(t.contains("remote: uploaded 5 results"), "{t}");
    drop(m);
    let m = common::Mounted::try_new(&b, &e.root.join("mnt-b")).unwrap();
    let o = dagfs(&b, &["config", "remote_trusted_keys", "trusted"])
        .current_dir(&e.root)
        .output()
        .unwrap();
    ok(&o);
    let o = dagfs(&b, &["run", "-f", file.to_str().unwrap()])
        .env("DAGFS_REMOTE", bg.url())
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    let t = ok(&o);
    assert!(t.contains("remote: 5 hits, 0 misses, 0 rejected"), "{t}");
    let joined = std::fs::read_to_string(m.mnt.join("dags/daemon/report/joined")).unwrap();
    assert_eq!(joined, "hello\nthe input\n");
    let stats = std::fs::read_to_string(m.mnt.join(".dagfs/metrics")).unwrap();
    assert!(
        stats.contains("dagfs_hits_total{route=\"remote\"} 5"),
        "{stats}"
    );
    drop(m);
    fsck_clean(&b);
}

// ---------------------------------------------------------------------------
// the daemon: background uploads, lookups answered from the remote
// ---------------------------------------------------------------------------

/// Mounted, or None (the test is skipped) where FUSE cannot be had.
fn mounted(store: &Path, mnt: &Path, opts: &str) -> Option<common::Mounted> {
    let m = if opts.is_empty() {
        common::Mounted::try_new(store, mnt)
    } else {
        Ok(common::Mounted::with_options(store, mnt, opts))
    };
    match m {
        Ok(m) => Some(m),
        Err(why) => {
            eprintln!("skipping: {why}");
            None
        }
    }
}

/// Through a daemon, `dagfs run` returns before its results are uploaded;
/// the daemon's uploader sends them, and a second store then gets them
/// all from the server. `remote status` shows the queue and the uploader.
#[test]
fn the_daemon_uploads_in_the_background() {
    let bg = BuildGrid::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = pipeline(&e.root.join("p"), "bgup", "report");
    config(&a, "remote", &bg.url());
    config(&a, "remote_upload", "on");
    patient(&a);
    let Some(m) = mounted(&a, &e.root.join("mnt-a"), "") else {
        return;
    };
    let t0 = Instant::now();
    let t = ok(&run_in(&a, &file, &[]));
    let ran_ms = t0.elapsed().as_millis();
    assert_eq!(lines(&t, "ran ").len(), 5, "{t}");
    assert!(
        t.contains("queued; the daemon uploads in the background"),
        "{t}"
    );
    assert!(!t.contains("remote: uploaded"), "{t}");
    common::wait_for("the background uploads", || queued(&a) == 0);
    eprintln!(
        "run through the daemon: {ran_ms} ms; queue empty {} ms after it started",
        t0.elapsed().as_millis()
    );
    let st = ok(&dagfs(&a, &["remote", "status"]).output().unwrap());
    assert!(st.contains("queued           0"), "{st}");
    assert!(st.contains("uploader         the daemon's"), "{st}");
    let log = std::fs::read_to_string(a.join("daemon.log")).unwrap();
    assert!(log.contains("remote: uploaded 5 result(s)"), "{log}");
    // Nothing left to do: flush through the daemon returns at once.
    let t = ok(&dagfs(&a, &["remote", "flush"]).output().unwrap());
    assert!(t.contains("remote: uploaded 0"), "{t}");
    drop(m);
    let t = ok(&run_in(&b, &file, &["--remote", &bg.url()]));
    assert!(t.contains("0 executed, 5 cached"), "{t}");
    assert!(t.contains("remote: 5 hits, 0 misses, 0 rejected"), "{t}");
    assert_eq!(outputs(&a), outputs(&b));
    fsck_clean(&a);
    fsck_clean(&b);
}

/// A daemon killed (-9) with its uploads pending (the server was down):
/// the next daemon uploads them at start, and `remote flush` through it
/// waits until the queue is empty.
#[test]
fn uploads_pending_at_a_daemon_kill_are_sent_by_the_next() {
    let port = free_port();
    let url = format!("grpc://127.0.0.1:{port}");
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = pipeline(&e.root.join("p"), "killed", "report");
    config(&a, "remote", &url);
    config(&a, "remote_upload", "on");
    patient(&a);
    let mnt = e.root.join("mnt-a");
    let Some(m) = mounted(&a, &mnt, "") else {
        return;
    };
    let t = ok(&run_in(&a, &file, &[]));
    assert_eq!(lines(&t, "ran ").len(), 5, "{t}");
    assert_eq!(queued(&a), 5, "{t}");
    let o = dagfs(&a, &["remote", "status", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(15), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["queued"], 5, "{v}");
    // SAFETY: kill(2) on the daemon this test started.
    unsafe {
        libc::kill(m.pid, libc::SIGKILL);
    }
    drop(m); // unmounts the dead mount, waits for the process to go
    assert_eq!(queued(&a), 5);

    // The next daemon sends them at its start, unasked.
    let mut bg = BuildGrid::start_on(port);
    let m = mounted(&a, &mnt, "").unwrap();
    common::wait_for("the uploads at start", || queued(&a) == 0);
    let log = std::fs::read_to_string(a.join("daemon.log")).unwrap();
    assert!(log.contains("remote: uploaded 5 result(s)"), "{log}");

    // Server gone again: a flush fails (exit 15, the uploader's remote off
    // for a minute); once it is back, a flush through the same daemon
    // tries it again at once and waits until all is sent.
    bg.kill();
    for k in outputs_keys(&a) {
        std::fs::write(a.join("remote-queue").join(k), "").unwrap();
    }
    let o = dagfs(&a, &["remote", "flush"]).output().unwrap();
    assert_eq!(o.status.code(), Some(15), "{}", text(&o));
    assert_eq!(queued(&a), 5);
    let bg = BuildGrid::start_on(port);
    let t = ok(&dagfs(&a, &["remote", "flush"]).output().unwrap());
    assert_eq!(queued(&a), 0, "{t}");
    assert!(t.contains("remote: uploaded 5"), "{t}");
    drop(m);
    fsck_clean(&a);
    let t = ok(&run_in(&b, &file, &["--remote", &bg.url()]));
    assert!(t.contains("remote: 5 hits, 0 misses, 0 rejected"), "{t}");
    assert_eq!(outputs(&a), outputs(&b));
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// A key the store lacks, looked up through its mount, is fetched from
/// the remote (whole, verified) and shown; an unknown key is ENOENT and
/// asked once; a hung server and a dead one answer EIO within the
/// mount's deadline, never an empty directory.
#[test]
fn lookups_through_the_mount_are_answered_from_the_remote() {
    let mut bg = BuildGrid::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = pipeline(&e.root.join("p"), "bykey", "report");
    config(&a, "remote", &bg.url());
    config(&a, "remote_upload", "on");
    patient(&a);
    ok(&run_in(&a, &file, &[]));
    assert_eq!(queued(&a), 0);
    let key = |task: &str| entry_of(&a, task).key.to_hex();

    config(&b, "remote", &bg.url());
    patient(&b);
    let mnt = e.root.join("mnt-b");
    let Some(m) = mounted(&b, &mnt, "passthrough=off,remote_timeout=2s") else {
        return;
    };
    let keys = mnt.join("keys");
    let t0 = Instant::now();
    let count = std::fs::read_to_string(keys.join(key("report")).join("count")).unwrap();
    eprintln!(
        "first lookup and read through the mount: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(count.trim(), "5324800");
    let mut names: Vec<String> = std::fs::read_dir(keys.join(key("gen")))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["b.txt", "link", "sub"]);
    assert_eq!(
        std::fs::read_to_string(keys.join(key("gen")).join("sub/deeper/d.txt")).unwrap(),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_link(keys.join(key("gen")).join("link")).unwrap(),
        Path::new("b.txt")
    );
    // A key nobody has: ENOENT, and the server is asked once.
    let unknown = "ab".repeat(32);
    for _ in 0..3 {
        assert_eq!(
            errno_of(std::fs::metadata(keys.join(&unknown))),
            Some(libc::ENOENT)
        );
    }
    // A prefix is not a key: only full keys are asked of the server.
    assert_eq!(
        errno_of(std::fs::metadata(keys.join(&key("copy")[..12]))),
        Some(libc::ENOENT)
    );
    let o = dagfs(&b, &["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["remote"]["misses"], 1, "{v}");

    // A hung server: EIO at the deadline (2 s), not a hang.
    let pgid = bg.child.as_ref().unwrap().id() as i32;
    // SAFETY: kill(2) on the process group the harness made.
    unsafe { libc::kill(-pgid, libc::SIGSTOP) };
    let t0 = Instant::now();
    let r = std::fs::read_dir(keys.join(key("copy")));
    let waited = t0.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGCONT) };
    assert_eq!(errno_of(r), Some(libc::EIO));
    eprintln!(
        "lookup with the server stopped: EIO after {} ms",
        waited.as_millis()
    );
    assert!(waited >= Duration::from_millis(1900), "{waited:?}");
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    // The fetch went on once the server woke: the entry is there.
    common::wait_for("the fetch to finish", || {
        std::fs::read_dir(keys.join(key("copy"))).is_ok()
    });
    assert_eq!(
        std::fs::read_to_string(keys.join(key("copy")).join("copied")).unwrap(),
        "the input\n"
    );

    let o = dagfs(&b, &["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hits_by_route"]["remote"], 3, "{v}");
    assert_eq!(v["total_entries"], 3, "{v}");

    // A dead server: EIO, at once.
    bg.kill();
    let t0 = Instant::now();
    let r = std::fs::read_dir(keys.join(key("big")));
    let waited = t0.elapsed();
    assert_eq!(errno_of(r), Some(libc::EIO));
    eprintln!(
        "lookup with the server dead: EIO after {} ms",
        waited.as_millis()
    );
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    drop(m);
    fsck_clean(&b);
}

/// `dagfs umount` while the daemon's uploader is busy: the daemon stops
/// promptly, what it did not send stays queued, and nothing wrong was
/// sent (a consumer verifies all of it after a flush).
#[test]
fn unmount_while_uploading_stops_promptly_and_loses_nothing() {
    let bg = BuildGrid::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let toml = random_tasks("stopped", 1_000_000, "");
    let file = e.pipeline("p", &toml).join("dagfs.toml");
    config(&a, "remote", &bg.url());
    config(&a, "remote_upload", "on");
    patient(&a);
    let mnt = e.root.join("mnt-a");
    let Some(m) = mounted(&a, &mnt, "") else {
        return;
    };
    ok(&run_in(&a, &file, &[]));
    common::wait_for("the first upload", || queued(&a) < 24);
    let t0 = Instant::now();
    ok(&dagfs(&a, &["umount", mnt.to_str().unwrap()])
        .output()
        .unwrap());
    common::wait_for("the daemon to exit", || !common::pid_alive(m.pid));
    let took = t0.elapsed();
    let left = queued(&a);
    eprintln!(
        "umount with uploads under way: daemon gone after {} ms, {left} of 24 left queued",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(m);
    fsck_clean(&a);
    let t = ok(&dagfs(&a, &["remote", "flush"]).output().unwrap());
    assert_eq!(queued(&a), 0, "{t}");
    let t = ok(&run_in(&b, &file, &["--remote", &bg.url()]));
    assert!(t.contains("remote: 24 hits, 0 misses, 0 rejected"), "{t}");
    assert_eq!(outputs(&a), outputs(&b));
}

/// A key record on the server that names another key's entry record (a
/// poisoned or mixed-up cache): the lookup through the mount is EIO,
/// counted as rejected, and nothing is stored; the right key still works.
#[test]
fn a_forged_key_record_is_rejected_by_the_mount() {
    use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
    use dagfs::remote::by_key::key_action_digest;
    use dagfs::remote::mapping::DigestFn;
    let bg = BuildGrid::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = pipeline(&e.root.join("p"), "forged", "report");
    config(&a, "remote", &bg.url());
    config(&a, "remote_upload", "on");
    patient(&a);
    ok(&run_in(&a, &file, &[]));
    let (gen, copy) = (entry_of(&a, "gen").key, entry_of(&a, "copy").key);
    let (dg, dc) = (
        key_action_digest(&gen, DigestFn::Sha256),
        key_action_digest(&copy, DigestFn::Sha256),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ac = re::action_cache_client::ActionCacheClient::connect(format!(
            "http://127.0.0.1:{}",
            bg.port
        ))
        .await
        .unwrap();
        let r_copy = ac
            .get_action_result(re::GetActionResultRequest {
                action_digest: Some(dc),
                ..Default::default()
            })
            .await
            .expect("the uploader filed copy's record under its key")
            .into_inner();
        // gen's key now names copy's record.
        ac.update_action_result(re::UpdateActionResultRequest {
            action_digest: Some(dg),
            action_result: Some(r_copy),
            ..Default::default()
        })
        .await
        .unwrap();
    });
    config(&b, "remote", &bg.url());
    patient(&b);
    let mnt = e.root.join("mnt-b");
    let Some(m) = mounted(&b, &mnt, "") else {
        return;
    };
    let keys = mnt.join("keys");
    assert_eq!(
        errno_of(std::fs::read_dir(keys.join(gen.to_hex()))),
        Some(libc::EIO)
    );
    assert_eq!(
        std::fs::read_to_string(keys.join(copy.to_hex()).join("copied")).unwrap(),
        "the input\n"
    );
    let o = dagfs(&b, &["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["remote"]["rejected"], 1, "{v}");
    assert_eq!(v["hits_by_route"]["remote"], 1, "{v}");
    let log = std::fs::read_to_string(b.join("daemon.log")).unwrap();
    assert!(log.contains("for another key"), "{log}");
    drop(m);
    assert_eq!(outputs_keys(&b), [copy.to_hex()]);
    fsck_clean(&b);
}

/// A key a run of the daemon is computing right now is left to that run:
/// a lookup meanwhile is EIO (not a second publisher of the key), and
/// once the run is done the key is there, the run's own.
#[test]
fn a_key_a_run_is_computing_is_left_to_it() {
    let bg = BuildGrid::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let (mark, go) = (e.root.join("started"), e.root.join("go"));
    let file = e.pipeline("p", &format!(
            "name = \"gated\"\n[tasks.gate]\nrun = 'touch {}; while [ ! -e {} ]; do sleep 0.05; done; echo gate > \"$DAGFS_OUT/g\"'\n",
            mark.display(),
            go.display()
        )).join("dagfs.toml");
    config(&a, "remote", &bg.url());
    config(&a, "remote_upload", "on");
    patient(&a);
    std::fs::write(&go, "").unwrap();
    ok(&run_in(&a, &file, &[]));
    let key = entry_of(&a, "gate").key.to_hex();
    std::fs::remove_file(&go).unwrap();
    std::fs::remove_file(&mark).unwrap();

    config(&b, "remote", &bg.url());
    patient(&b);
    let mnt = e.root.join("mnt-b");
    let Some(m) = mounted(&b, &mnt, "") else {
        return;
    };
    /// Opens the gate when dropped: no task is left waiting if this test
    /// fails half way.
    struct Gate(PathBuf);
    impl Drop for Gate {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let gate = Gate(go.clone());
    let child = dagfs(&b, &["run", "--no-remote", "-f", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for("the gate task", || mark.exists());
    let r = std::fs::read_dir(mnt.join("keys").join(&key));
    drop(gate);
    let t = ok(&child.wait_with_output().unwrap());
    assert_eq!(errno_of(r), Some(libc::EIO), "{t}");
    assert!(t.contains("ran   gate"), "{t}");
    assert_eq!(
        std::fs::read_to_string(mnt.join("keys").join(&key).join("g")).unwrap(),
        "gate\n"
    );
    let log = std::fs::read_to_string(b.join("daemon.log")).unwrap();
    assert!(log.contains("a run is computing it now"), "{log}");
    drop(m);
    let e_b = entry_of(&b, "gate");
    assert!(e_b.origin.is_none(), "the run's own entry: {e_b:?}");
    fsck_clean(&b);
}

/// Signing on a real server: a producer signing with the key a consumer
/// trusts gives it hits; an unsigned producer's results and those of a
/// producer signing with another key are rejected (counted, one warning,
/// the tasks run, the store stays clean).
#[test]
fn signed_results_on_buildgrid() {
    let bg = BuildGrid::start();
    let e = env();
    let keys = e.root.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let ci = keygen(&keys.join("ci.key"));
    keygen(&keys.join("other.key"));
    let trusted = keys.join("trusted");
    std::fs::write(&trusted, format!("{ci} the CI\n")).unwrap();
    // NB: each case its own recipes (a tag in the command), so no producer
    // hits another's results.
    for (tag, key, want) in [
        ("signed", Some("ci.key"), None),
        ("unsigned", None, Some("it is not signed")),
        (
            "stranger",
            Some("other.key"),
            Some("a key not trusted here"),
        ),
    ] {
        let dir = e.root.join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dagfs.toml");
        std::fs::write(
            &file,
            format!(
                "name = \"trust\"\n[tasks.one]\nrun = 'mkdir \"$DAGFS_OUT/d\" && echo {tag} > \"$DAGFS_OUT/d/f\"'\n[tasks.two]\nrun = 'cat \"$DAGFS_IN/one/d/f\" > \"$DAGFS_OUT/g\"'\ndeps = [\"one\"]\n"
            ),
        )
        .unwrap();
        let p = e.root.join(format!("{tag}-producer"));
        config(&p, "remote", &bg.url());
        config(&p, "remote_upload", "on");
        if let Some(k) = key {
            config(&p, "remote_sign_key", keys.join(k).to_str().unwrap());
        }
        patient(&p);
        let t = ok(&run_in(&p, &file, &[]));
        assert!(t.contains("remote: uploaded 2 results"), "{tag}: {t}");
        let c = e.root.join(format!("{tag}-consumer"));
        config(&c, "remote_trusted_keys", trusted.to_str().unwrap());
        let t = ok(&run_in(&c, &file, &["--remote", &bg.url()]));
        match want {
            None => {
                assert!(
                    t.contains("remote: 2 hits, 0 misses, 0 rejected"),
                    "{tag}: {t}"
                );
                assert!(!t.contains("warning"), "{tag}: {t}");
            }
            Some(why) => {
                assert!(
                    t.contains("remote: 0 hits, 0 misses, 2 rejected"),
                    "{tag}: {t}"
                );
                assert!(t.contains(why), "{tag}: {t}");
                assert_eq!(
                    t.lines().filter(|l| l.contains("warning")).count(),
                    1,
                    "{tag}: {t}"
                );
                assert_eq!(lines(&t, "ran ").len(), 2, "{tag}: {t}");
            }
        }
        fsck_clean(&c);
        assert_eq!(outputs(&p), outputs(&c), "{tag}");
    }
}

/// mTLS: BuildGrid asks for a client certificate signed by the test CA.
/// A store with `remote_cert`/`remote_key` uploads and another with them
/// gets every result; a store without a client certificate is refused by
/// the server: one warning, the run goes on locally and succeeds.
#[test]
fn mtls_client_certificate() {
    let (dir, d) = tls_files();
    let cfg = tls_config(&d, true, "  method: none\n");
    let path = |n: &str| d.join(n).to_str().unwrap().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client.key"));
    let client = vec![
        ("remote_ca".to_string(), ca.clone()),
        ("remote_cert".to_string(), cert.clone()),
        ("remote_key".to_string(), key.clone()),
    ];
    let bg = BuildGrid::start_with(dir, free_port(), &cfg, "grpcs", client.clone(), vec![]);
    let e = env();
    let file = pipeline(&e.root.join("p"), "mtls", "report");
    let (a, b, c) = (e.root.join("a"), e.root.join("b"), e.root.join("c"));
    for s in [&a, &b] {
        config(s, "remote", &bg.url());
        for (k, v) in &client {
            config(s, k, v);
        }
    }
    config(&a, "remote_upload", "on");
    let t = ok(&run_in(&a, &file, &[]));
    assert!(t.contains("remote: uploaded 5 results"), "{t}");
    let t = ok(&run_in(&b, &file, &[]));
    assert!(t.contains("remote: 5 hits, 0 misses, 0 rejected"), "{t}");
    fsck_clean(&b);
    assert_eq!(outputs(&a), outputs(&b));

    // c: the CA, no client certificate: the handshake is refused.
    config(&c, "remote", &bg.url());
    config(&c, "remote_ca", &ca);
    let t = ok(&run_in(&c, &file, &[]));
    assert_eq!(lines(&t, "ran ").len(), 5, "{t}");
    let warnings: Vec<_> = t.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{t}");
    assert!(warnings[0].contains(&bg.url()), "{t}");
    assert!(warnings[0].contains("client certificate"), "{t}");
    assert!(t.contains("disabled after 1 errors"), "{t}");
    fsck_clean(&c);
    assert_eq!(outputs(&a), outputs(&c));
}
