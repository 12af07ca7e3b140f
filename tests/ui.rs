//! `dagfs graph` and the web view (`dagfs ui`, `dagfs mount --ui`): the
//! formats' content for a known pipeline, the HTTP server's pages and JSON,
//! its refusals (Host, method, token), a busy store, and a real browser
//! (Debian's chromium, headless) rendering the DAG and following a link.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{dagfs, env, text, wait_for};

/// fetch -> build -> test (fails) -> deploy (skipped); lint alone. The
/// first run runs all; after `in.txt` changes, fetch re-runs (input
/// changed), build and lint hit, test fails again, deploy is skipped.
/// Returns the pipeline file.
fn known_pipeline(root: &Path, store: &Path) -> PathBuf {
    let p = root.join("p");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("dagfs.toml"),
        r#"name = "demo"
[tasks.fetch]
run = "echo fetched > $DAGFS_OUT/data.txt; mkdir $DAGFS_OUT/sub; echo '<i>x</i>' > $DAGFS_OUT/sub/x.txt; echo hi > \"$DAGFS_OUT/<img src=x onerror=alert(1)>.txt\"; echo '<script>alert(1)</script>'"
inputs = ["in.txt"]
[tasks.build]
run = "cat $DAGFS_IN/fetch/data.txt > $DAGFS_OUT/b"
deps = ["fetch"]
[tasks.test]
run = "exit 3"
deps = ["build"]
[tasks.deploy]
run = "true"
deps = ["test"]
[tasks.lint]
run = "echo lint > $DAGFS_OUT/l"
"#,
    )
    .unwrap();
    let file = p.join("dagfs.toml");
    std::fs::write(p.join("in.txt"), "1").unwrap();
    let f = file.to_str().unwrap();
    let o = dagfs(store, &["run", "-f", f, "--keep-going"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    std::fs::write(p.join("in.txt"), "2").unwrap();
    let o = dagfs(store, &["run", "-f", f, "--keep-going"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    file
}

fn graph(store: &Path, file: &Path, args: &[&str]) -> std::process::Output {
    let mut a = vec!["graph", "-f", file.to_str().unwrap()];
    a.extend_from_slice(args);
    dagfs(store, &a).output().unwrap()
}

#[test]
fn graph_formats_show_nodes_edges_routes_and_colours() {
    let e = env();
    let file = known_pipeline(&e.root, &e.store);

    let o = graph(&e.store, &file, &["--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["dag"], "demo");
    assert_eq!(j["run"], 2);
    let node = |n: &str| {
        j["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap_or_else(|| panic!("no node {n} in {j}"))
            .clone()
    };
    assert_eq!(node("fetch")["state"], "ran");
    assert_eq!(node("fetch")["route"], "miss");
    assert_eq!(node("fetch")["reason"], "input changed");
    assert_eq!(node("fetch")["key"].as_str().unwrap().len(), 64);
    assert!(node("fetch")["duration_ms"].is_u64());
    assert_eq!(node("build")["state"], "hit");
    assert_eq!(node("build")["route"], "key");
    assert_eq!(node("test")["state"], "failed");
    assert_eq!(node("test")["error"], "exited with status 3");
    assert_eq!(node("deploy")["state"], "skipped");
    assert_eq!(node("lint")["route"], "key");
    let mut edges: Vec<(String, String)> = j["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    edges.sort();
    let want: Vec<(String, String)> = [("build", "test"), ("fetch", "build"), ("test", "deploy")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(edges, want);

    // The first run: everything new.
    let o = graph(&e.store, &file, &["--format", "json", "--run", "1"]);
    let j1: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(j1["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "ran")
        .all(|n| n["reason"] == "new"));

    let o = graph(&e.store, &file, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let dot = String::from_utf8(o.stdout).unwrap();
    assert!(dot.starts_with("digraph \"demo\" {"), "{dot}");
    assert!(dot.contains("\"fetch\" -> \"build\";"), "{dot}");
    assert!(dot.contains("\"test\" -> \"deploy\";"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 3, "{dot}");
    for (task, colour, class) in [
        ("fetch", "#ffcc80", "ran-input-changed"),
        ("build", "#a5d6a7", "hit-key"),
        ("test", "#ef9a9a", "failed"),
        ("deploy", "#eeeeee", "skipped"),
    ] {
        let line = dot
            .split("\n  ")
            .find(|l| l.starts_with(&format!("\"{task}\" [label")))
            .unwrap_or_else(|| panic!("no node {task}: {dot}"));
        assert!(line.contains(&format!("fillcolor=\"{colour}\"")), "{line}");
        assert!(line.contains(&format!("class=\"{class}\"")), "{line}");
    }

    let o = graph(&e.store, &file, &["--format", "mermaid"]);
    let m = String::from_utf8(o.stdout).unwrap();
    assert!(m.starts_with("flowchart TD\n"), "{m}");
    assert_eq!(m.matches(" --> ").count(), 3, "{m}");
    assert!(m.contains(":::failed"), "{m}");
    assert!(m.contains("classDef ran_input_changed fill:#ffcc80"), "{m}");

    let o = graph(&e.store, &file, &["--format", "svg"]);
    let s = String::from_utf8(o.stdout).unwrap();
    assert!(s.starts_with("<?xml"), "{s}");
    assert_eq!(s.matches("<g class=\"node ").count(), 5, "{s}");
    assert_eq!(s.matches("<path class=\"edge\"").count(), 3, "{s}");
    assert!(
        s.contains("data-task=\"test\" data-state=\"failed\""),
        "{s}"
    );
    assert!(s.contains("fill=\"#ef9a9a\""), "{s}");
}

#[test]
fn graph_errors_have_their_own_exit_codes() {
    let e = env();
    let file = known_pipeline(&e.root, &e.store);
    let o = graph(&e.store, &file, &["--run", "99"]);
    assert_eq!(o.status.code(), Some(10), "{}", text(&o));
    assert!(text(&o).contains("no run 99"), "{}", text(&o));
    let o = graph(&e.store, &file, &["--run", "abc"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = graph(&e.store, &file, &["--format", "png"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("png"), "{}", text(&o));
    let o = graph(&e.store, &e.root.join("missing.toml"), &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("missing.toml"), "{}", text(&o));
    // A run of another pipeline.
    let other = e.root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("dagfs.toml"),
        "name = \"other\"\n[tasks.a]\nrun = \"true\"\n",
    )
    .unwrap();
    let o = graph(&e.store, &other.join("dagfs.toml"), &["--run", "1"]);
    assert_eq!(o.status.code(), Some(10), "{}", text(&o));
    assert!(text(&o).contains("pipeline `demo`"), "{}", text(&o));
    // No run of it yet: every task `not run`, exit 0.
    let o = graph(&e.store, &other.join("dagfs.toml"), &["--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["nodes"][0]["state"], "not-run");
    assert_eq!(j["run"], serde_json::Value::Null);
}

/// A child killed in every path.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `dagfs ui` killed in every path.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(store: &Path, args: &[&str], envs: &[(&str, &str)]) -> Served {
    let mut a = vec!["ui", "--listen", "127.0.0.1:0"];
    a.extend_from_slice(args);
    let mut c = dagfs(store, &a);
    for (k, v) in envs {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let served = Served {
        url: line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string(),
        child,
    };
    served
}

struct Resp {
    status: u16,
    head: String,
    body: String,
}

/// A GET over a plain socket (with `extra` header lines).
fn get_with(url: &str, path: &str, extra: &str) -> Resp {
    request(url, "GET", path, extra)
}

fn request(url: &str, method: &str, path: &str, extra: &str) -> Resp {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let host_line = if extra.starts_with("Host:") {
        String::new()
    } else {
        format!("Host: {host}\r\n")
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\n{host_line}Connection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let all = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Resp {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn get(url: &str, path: &str) -> Resp {
    get_with(url, path, "")
}

fn json(url: &str, path: &str) -> serde_json::Value {
    let r = get(url, path);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
}

#[test]
fn ui_serves_the_dag_task_pages_runs_stats_syncs_and_json() {
    let e = env();
    known_pipeline(&e.root, &e.store);
    let synced = e.root.join("synced");
    std::fs::create_dir_all(&synced).unwrap();
    std::fs::write(synced.join("a"), "a").unwrap();
    let o = dagfs(&e.store, &["sync", synced.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(synced.join("<b>new&x"), "b").unwrap();
    let o = dagfs(&e.store, &["sync", synced.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = serve(&e.store, &[], &[]);

    let r = get(&s.url, "/");
    assert_eq!(r.status, 200);
    assert!(
        r.head
            .contains("Content-Security-Policy: default-src 'none'; script-src 'self'"),
        "{}",
        r.head
    );
    assert!(
        r.body
            .contains("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"dag\""),
        "{}",
        r.body
    );
    assert!(r.body.contains("demo · run 2"), "{}", r.body);
    assert_eq!(r.body.matches("<g class=\"node ").count(), 5, "{}", r.body);
    assert!(
        r.body.contains("<a href=\"/task/2/test\"><g class=\"node failed\" data-task=\"test\" data-state=\"failed\""),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("data-task=\"build\" data-state=\"hit-key\""),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("data-from=\"fetch\" data-to=\"build\""),
        "{}",
        r.body
    );
    assert!(r.body.contains("<script src=\"/live.js\" defer></script>"));
    assert!(!r.body.contains("<script>"), "no inline script");

    // The task page: state, explain's "what changed", stdout escaped, the
    // output tree (an odd file name escaped) with links to files.
    let r = get(&s.url, "/task/2/fetch");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .contains("<span id=\"state\" class=\"ran-input-changed\">ran input changed</span>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("input `in.txt` changed"), "{}", r.body);
    assert!(
        r.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("<script>alert"), "{}", r.body);
    assert!(!r.body.contains("<img src=x"), "{}", r.body);
    assert!(
        r.body.contains("&lt;img src=x onerror=alert(1)&gt;.txt"),
        "{}",
        r.body
    );
    let href = r
        .body
        .split("href=\"")
        .map(|h| h.split('"').next().unwrap())
        .find(|h| h.ends_with("/sub/x.txt"))
        .unwrap_or_else(|| panic!("no link to sub/x.txt: {}", r.body))
        .to_string();
    let f = get(&s.url, &href);
    assert_eq!(f.status, 200);
    assert_eq!(f.body, "<i>x</i>\n");
    assert!(
        f.head.contains("Content-Type: text/plain; charset=utf-8"),
        "{}",
        f.head
    );
    assert!(
        f.head
            .contains("Content-Security-Policy: default-src 'none'; sandbox"),
        "{}",
        f.head
    );
    let odd = r
        .body
        .split("href=\"")
        .map(|h| h.split('"').next().unwrap())
        .find(|h| h.contains("%3Cimg"))
        .unwrap_or_else(|| panic!("no link to the odd file: {}", r.body))
        .replace("&amp;", "&");
    assert_eq!(get(&s.url, &odd).body, "hi\n");

    let r = get(&s.url, "/task/2/test");
    assert!(r.body.contains("exited with status 3"), "{}", r.body);
    assert!(r.body.contains("class=\"failed\""), "{}", r.body);

    let r = get(&s.url, "/runs");
    assert!(r.body.contains("<a href=\"/runs/1\">1</a>"), "{}", r.body);
    assert!(r.body.contains("<a href=\"/runs/2\">2</a>"), "{}", r.body);
    let r = get(&s.url, "/runs/1");
    assert!(
        r.body
            .contains("data-task=\"fetch\" data-state=\"ran-new\""),
        "{}",
        r.body
    );

    let r = get(&s.url, "/stats");
    assert!(r.body.contains("id=\"hit-rate\""), "{}", r.body);
    assert_eq!(
        r.body.matches("class=\"run-point\"").count(),
        2,
        "{}",
        r.body
    );
    assert!(r.body.contains("store on disk"), "{}", r.body);

    let r = get(&s.url, "/syncs");
    assert!(r.body.contains("2 snapshots"), "{}", r.body);
    assert!(
        r.body.contains("added <code>&lt;b&gt;new&amp;x</code>"),
        "{}",
        r.body
    );

    let g = json(&s.url, "/api/graph");
    assert_eq!(g["run"], 2);
    assert_eq!(g["edges"].as_array().unwrap().len(), 3);
    let g1 = json(&s.url, "/api/graph?run=1");
    assert_eq!(g1["run"], 1);
    let runs = json(&s.url, "/api/runs");
    assert_eq!(runs["runs"][0]["id"], 2);
    assert_eq!(runs["runs"][0]["hit"], 2);
    assert_eq!(runs["runs"][0]["failed"], 1);
    let st = json(&s.url, "/api/stats");
    assert_eq!(st["hits"], 2);
    assert_eq!(st["hit_rate_by_run"].as_array().unwrap().len(), 2);
    assert!(st["disk_bytes"].as_u64().unwrap() > 0);
    let t = json(&s.url, "/api/task/2/fetch");
    assert_eq!(t["reason"], "input changed");
    assert!(t["explain"].as_str().unwrap().contains("in.txt"));
    assert!(t["stdout"].as_str().unwrap().contains("<script>"));
    let sy = json(&s.url, "/api/syncs");
    assert_eq!(sy[0]["changes"][0]["kind"], "added");
    let state = json(&s.url, "/api/state");
    assert_eq!(state["latest_run"], 2);
    assert_eq!(state["busy"], false);

    assert_eq!(get(&s.url, "/runs/77").status, 404);
    assert_eq!(get(&s.url, "/task/2/nope").status, 404);
    assert_eq!(get(&s.url, "/api/graph?run=77").status, 404);
    assert_eq!(get(&s.url, "/nope").status, 404);
    assert_eq!(get(&s.url, "/live.js").status, 200);
    // Another Host (DNS rebinding) and writes are refused.
    assert_eq!(get_with(&s.url, "/", "Host: evil.example\r\n").status, 421);
    assert_eq!(
        request(&s.url, "POST", "/", "Content-Length: 0\r\n").status,
        405
    );
}

#[test]
fn ui_needs_a_token_off_loopback_and_checks_it_on_every_request() {
    let e = env();
    let o = dagfs(&e.store, &["ui", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("token"), "{}", text(&o));
    let o = dagfs(&e.store, &["ui", "--listen", "no-such-address"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // The port taken: its own exit code.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let o = dagfs(&e.store, &["ui", "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(24), "{}", text(&o));
    assert!(text(&o).contains("cannot listen"), "{}", text(&o));

    let s = serve(&e.store, &[], &[("DAGFS_UI_TOKEN", "s3cret")]);
    assert_eq!(get(&s.url, "/").status, 401);
    assert_eq!(get(&s.url, "/api/state").status, 401);
    assert_eq!(get(&s.url, "/?token=wrong").status, 401);
    assert_eq!(
        get_with(&s.url, "/", "Authorization: Bearer wrong\r\n").status,
        401
    );
    assert_eq!(
        get_with(&s.url, "/api/state", "Authorization: Bearer s3cret\r\n").status,
        200
    );
    let r = get(&s.url, "/?token=s3cret");
    assert_eq!(r.status, 200);
    assert!(
        r.head
            .contains("Set-Cookie: dagfs_ui_token=s3cret; HttpOnly; SameSite=Strict"),
        "{}",
        r.head
    );
    assert_eq!(
        get_with(&s.url, "/runs", "Cookie: dagfs_ui_token=s3cret\r\n").status,
        200
    );
}

#[test]
fn ui_says_the_store_is_busy_while_a_run_holds_it_then_shows_the_run() {
    let e = env();
    let p = e.root.join("p");
    std::fs::create_dir_all(&p).unwrap();
    let flag = e.root.join("go");
    std::fs::write(
        p.join("dagfs.toml"),
        format!(
            "name = \"slow\"\n[tasks.wait]\nrun = \"while [ ! -e {} ]; do sleep 0.02; done\"\ncache = false\n",
            flag.display()
        ),
    )
    .unwrap();
    let s = serve(&e.store, &[], &[]);
    let r = get(&s.url, "/");
    assert!(r.body.contains("No runs yet"), "{}", r.body);
    let mut run = dagfs(
        &e.store,
        &["run", "-f", p.join("dagfs.toml").to_str().unwrap()],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let run = KillOnDrop(&mut run);
    wait_for("the ui to see the store busy", || {
        json(&s.url, "/api/state")["busy"] == true
    });
    let r = get(&s.url, "/");
    assert_eq!(r.status, 200, "the last copy, with a note");
    assert!(r.body.contains("id=\"busy\""), "{}", r.body);
    assert!(r.body.contains("dagfs run"), "{}", r.body);
    assert_eq!(get(&s.url, "/api/runs").status, 503);
    std::fs::write(&flag, "").unwrap();
    wait_for("the run to end", || {
        json(&s.url, "/api/state")["busy"] == false
    });
    drop(run);
    let r = get(&s.url, "/");
    assert!(
        r.body
            .contains("data-task=\"wait\" data-state=\"ran-skip-cache\""),
        "{}",
        r.body
    );
}

#[test]
fn the_daemon_serves_the_ui_on_request_and_runs_through_it_show_up() {
    let e = env();
    std::fs::create_dir_all(&e.mnt).unwrap();
    let m = match common::Mounted::try_new(&e.store, &e.mnt) {
        Ok(m) => m,
        Err(err) => {
            eprintln!("SKIPPED: cannot mount: {err}");
            return;
        }
    };
    let o = dagfs(&e.store, &["ui", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("the daemon serves"), "{out}");
    let url = out
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    // Asked again: the same server.
    let o = dagfs(&e.store, &["ui", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("already serves {url}")));
    assert!(get(&url, "/").body.contains("No runs yet"));
    known_pipeline(&e.root, &e.store);
    let r = get(&url, "/");
    assert!(
        r.body
            .contains("data-task=\"build\" data-state=\"hit-key\""),
        "{}",
        r.body
    );
    assert_eq!(json(&url, "/api/state")["latest_run"], 2);

    // A run in progress shows live: its DAG with the running task.
    let p = e.root.join("slow");
    std::fs::create_dir_all(&p).unwrap();
    let flag = e.root.join("go");
    std::fs::write(
        p.join("dagfs.toml"),
        format!(
            "name = \"slow\"\n[tasks.first]\nrun = \"true\"\n[tasks.wait]\nrun = \"while [ ! -e {} ]; do sleep 0.02; done\"\ndeps = [\"first\"]\ncache = false\n[tasks.after]\nrun = \"true\"\ndeps = [\"wait\"]\n",
            flag.display()
        ),
    )
    .unwrap();
    let mut run = dagfs(
        &e.store,
        &["run", "-f", p.join("dagfs.toml").to_str().unwrap()],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let run = KillOnDrop(&mut run);
    wait_for("the live run on /", || {
        get(&url, "/")
            .body
            .contains("data-task=\"wait\" data-state=\"running\"")
    });
    let r = get(&url, "/");
    assert!(r.body.contains("In progress: slow"), "{}", r.body);
    assert!(
        r.body
            .contains("data-task=\"after\" data-state=\"waiting\""),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("data-task=\"first\" data-state=\"ran-new\""),
        "{}",
        r.body
    );
    assert!(json(&url, "/api/state")["note"]
        .as_str()
        .unwrap()
        .contains("slow: 1 of 3 tasks done"));
    assert!(
        r.body.contains("aria-label=\"slow · in progress\""),
        "{}",
        r.body
    );
    std::fs::write(&flag, "").unwrap();
    // NB: the record is written before the run leaves the live board.
    wait_for("the run to end", || {
        json(&url, "/api/state")["latest_run"] == 3 && !get(&url, "/").body.contains("In progress")
    });
    drop(run);
    let r = get(&url, "/");
    assert!(
        r.body
            .contains("data-task=\"after\" data-state=\"ran-new\""),
        "{}",
        r.body
    );
    drop(m);
    // The daemon stopped: so did its web view.
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    assert!(
        TcpStream::connect(host).is_err(),
        "still listening after umount"
    );
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|b| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(b))
                .find(|p| p.is_file())
        })
    })
}

/// Run headless chromium on `url` with `args`; its stdout.
fn headless(bin: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let o = Command::new("timeout")
        .arg("120")
        .arg(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "chromium {args:?} {url}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_browser_renders_the_dag_in_colour_and_follows_a_task_link() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is missing in CI (.ci/run installs it)"
        );
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install chromium); CI runs this test"
        );
        return;
    };
    let e = env();
    known_pipeline(&e.root, &e.store);
    let s = serve(&e.store, &[], &[]);
    let profile = e.root.join("chromium-profile");

    let dom = headless(&bin, &profile, &["--dump-dom"], &s.url);
    // The DOM chromium built: the inline SVG's nodes, with their colours.
    for (task, state, fill) in [
        ("fetch", "ran-input-changed", "#ffcc80"),
        ("build", "hit-key", "#a5d6a7"),
        ("lint", "hit-key", "#a5d6a7"),
        ("test", "failed", "#ef9a9a"),
        ("deploy", "skipped", "#eeeeee"),
    ] {
        let at = dom
            .find(&format!("data-task=\"{task}\" data-state=\"{state}\""))
            .unwrap_or_else(|| panic!("no node {task} ({state}) in the DOM: {dom}"));
        let rest = &dom[at..];
        let node = &rest[..rest.find("</g>").unwrap()];
        assert!(node.contains(&format!("fill=\"{fill}\"")), "{task}: {node}");
    }
    assert_eq!(dom.matches("class=\"edge\"").count(), 3, "{dom}");
    // Follow the link the browser has for `test`.
    let at = dom.find("data-task=\"test\"").unwrap();
    let a = dom[..at]
        .rfind("<a href=\"")
        .expect("a link around the node");
    let href = dom[a + 9..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert_eq!(href, "/task/2/test");
    let page = headless(
        &bin,
        &profile,
        &["--dump-dom"],
        &format!("{}{}", s.url.trim_end_matches('/'), href),
    );
    assert!(
        page.contains("<span id=\"state\" class=\"failed\">failed</span>"),
        "{page}"
    );
    assert!(page.contains("exited with status 3"), "{page}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &bin,
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,800",
        ],
        &s.url,
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}
