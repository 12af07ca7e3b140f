//! The web view's pages and JSON, each a function of the cache (read as
//! the mounted tree reads it: the index's runs, latest keys and counters,
//! entry records, trees and blobs, sync logs). No page writes anything.
//! Every string that comes from users is escaped (`html::esc`) or
//! percent-encoded (`html::url`) where it is written.

use std::fmt::Write;
use std::io::Read;

use dagfs::cache::{now_ms, Cache, Lookup};
use dagfs::exec::explain;
use dagfs::hash::Digest;
use dagfs::index::stats::format_size;
use dagfs::index::RunRecord;
use dagfs::store::tree::Node as TreeNode;

use super::html::{esc, url};
use super::model::{short_duration, Graph, State};
use super::render::{svg, SvgOptions};

/// An answer: status, content type, body, extra headers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub ctype: &'static str,
    pub body: Vec<u8>,
    /// A file served from the store: a stricter policy (no script at all).
    pub raw: bool,
}

impl Reply {
    fn html(body: String) -> Reply {
        Reply {
            status: 200,
            ctype: "text/html; charset=utf-8",
            body: body.into_bytes(),
            raw: false,
        }
    }
    pub fn json(v: &serde_json::Value) -> Reply {
        Reply {
            status: 200,
            ctype: "application/json",
            body: (serde_json::to_string_pretty(v).expect("json") + "\n").into_bytes(),
            raw: false,
        }
    }
    pub fn error(status: u16, msg: &str) -> Reply {
        Reply {
            status,
            ctype: "text/html; charset=utf-8",
            body: page(
                "error",
                "",
                &format!("<h1>{status}</h1><p class=\"error\">{}</p>", esc(msg)),
            )
            .into_bytes(),
            raw: false,
        }
    }
    pub fn json_error(status: u16, msg: &str) -> Reply {
        let mut r = Reply::json(&serde_json::json!({ "error": msg }));
        r.status = status;
        r
    }
}

/// Where a failure to read the cache shows.
type Res = Result<Reply, Reply>;

fn internal(e: impl std::fmt::Display) -> Reply {
    Reply::error(500, &format!("reading the store: {e}"))
}

const STYLE: &str = "body{font-family:sans-serif;margin:0;color:#212121}\
header{background:#263238;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center}\
header a{color:#cfd8dc;text-decoration:none}header a.on{color:#fff;font-weight:bold}\
main{padding:12px 16px}table{border-collapse:collapse}td,th{border-bottom:1px solid #e0e0e0;padding:3px 8px;text-align:left;vertical-align:top}\
pre{background:#f5f5f5;padding:8px;overflow:auto;max-height:32em}.banner{background:#fff8e1;border:1px solid #ffcc80;padding:6px 10px;margin:8px 0}\
.error{color:#b71c1c}.legend span{display:inline-block;margin:2px 10px 2px 0}.swatch{display:inline-block;width:12px;height:12px;border:1.5px solid;border-radius:3px;vertical-align:middle;margin-right:4px}\
.dagbox{overflow:auto;border:1px solid #eceff1}code{font-size:90%}";

/// The frame of every page. `<!--banner-->` is where the server puts a
/// note (a busy store, a stale copy); `live.js` only adds live updates.
pub fn page(title: &str, active: &str, body: &str) -> String {
    let mut nav = String::new();
    for (href, name) in [
        ("/", "DAG"),
        ("/runs", "Runs"),
        ("/stats", "Stats"),
        ("/syncs", "Syncs"),
    ] {
        let _ = write!(
            nav,
            "<a href=\"{href}\"{}>{name}</a>",
            if name == active { " class=\"on\"" } else { "" }
        );
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · dagfs</title>\
<meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style>\
<script src=\"/live.js\" defer></script></head>\n<body><header><b>dagfs</b>{nav}<span id=\"live\"></span></header>\
<main><!--banner-->\n{body}\n</main></body></html>\n",
        esc(title)
    )
}

/// The script: polls `/api/state` every 2 s and reloads the page when the
/// store changed (a run started or ended, an entry landed, a sync), saying
/// what it sees meanwhile. Pages work without it.
pub const LIVE_JS: &str = r#"(function () {
  var seen = null;
  var live = document.getElementById('live');
  function tick() {
    fetch('/api/state', {credentials: 'same-origin', cache: 'no-store'})
      .then(function (r) { return r.json(); })
      .then(function (s) {
        if (live) { live.textContent = s.note || ''; }
        if (seen !== null && s.version !== seen) { location.reload(); return; }
        seen = s.version;
        setTimeout(tick, 2000);
      })
      .catch(function () { if (live) { live.textContent = 'dagfs ui: not answering'; } setTimeout(tick, 5000); });
  }
  tick();
})();
"#;

/// `2026-12-06 05:12:03Z` (UTC).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn run_or_latest(cache: &Cache, id: Option<u64>) -> Result<Option<RunRecord>, Reply> {
    match id {
        Some(id) => match cache.index.run(id).map_err(internal)? {
            Some(r) => Ok(Some(r)),
            None => Err(Reply::error(404, &format!("no run {id} in this store"))),
        },
        None => cache.index.last_run().map_err(internal),
    }
}

/// Whether a run is going on: the run counter is ahead of the last record
/// (a run takes its id when it starts and records itself when it ends).
fn in_progress(cache: &Cache) -> Option<u64> {
    let seq = cache.index.stats().ok()?.runs;
    let last = cache.index.last_run().ok().flatten().map_or(0, |r| r.id);
    (seq > last).then_some(seq)
}

fn legend(g: &Graph) -> String {
    let mut o = String::from("<p class=\"legend\">");
    for (s, c) in g.counts() {
        let (fill, stroke) = s.colours();
        let _ = write!(
            o,
            "<span class=\"{}\"><i class=\"swatch\" style=\"background:{fill};border-color:{stroke}\"></i>{} {c}</span>",
            s.class(),
            esc(&s.label())
        );
    }
    o + "</p>"
}

/// `/` and `/runs/<id>`: the run's DAG as inline SVG, each task a link.
pub fn dag(cache: &Cache, live: Option<&super::live::Live>, id: Option<u64>) -> Res {
    let mut body = String::new();
    let running = live.map(|l| l.graphs()).unwrap_or_default();
    for (g, done, started) in &running {
        let _ = write!(
            body,
            "<section class=\"live-run\"><h2>In progress: {} <small>{done} of {} tasks done, started {}</small></h2>",
            esc(&g.dag),
            g.nodes.len(),
            utc(*started)
        );
        body += &legend(g);
        body += "<div class=\"dagbox\">";
        body += &svg(
            g,
            &SvgOptions {
                link: None,
                standalone: false,
            },
        );
        body += "</div></section><h2>The last run that ended</h2>";
    }
    if let (Some(n), true) = (in_progress(cache), running.is_empty()) {
        let _ = write!(
            body,
            "<p class=\"banner\" id=\"in-progress\">run {n} is in progress; this page updates when it ends</p>"
        );
    }
    let Some(rec) = run_or_latest(cache, id)? else {
        body += "<h1>No runs yet</h1><p>Run a pipeline (<code>dagfs run</code>) and its DAG shows here.</p>";
        return Ok(Reply::html(page("DAG", "DAG", &body)));
    };
    let g = Graph::from_run(cache, &rec);
    let run = rec.id;
    let link = move |n: &super::model::Node| format!("/task/{run}/{}", url(&n.name));
    let _ = write!(
        body,
        "<h1>{} · run {run} <small>({})</small></h1><p>{} · {} · {} tasks{}</p>",
        esc(&rec.dag),
        if rec.ok { "ok" } else { "failed" },
        utc(rec.started_ms),
        short_duration(rec.finished_ms.saturating_sub(rec.started_ms)),
        g.nodes.len(),
        match (cache.index.run(run.saturating_sub(1)), run > 1) {
            (Ok(Some(_)), true) => format!(" · <a href=\"/runs/{}\">previous run</a>", run - 1),
            _ => String::new(),
        }
    );
    body += &legend(&g);
    let compact = g.nodes.len() > super::render::COMPACT_ABOVE;
    if compact {
        let _ = write!(
            body,
            "<p>{} tasks, drawn compact: hover a box for its name and state, click it for its page. The tasks that failed and ran are listed below.</p>",
            g.nodes.len()
        );
    }
    body += "<div class=\"dagbox\">";
    body += &svg(
        &g,
        &SvgOptions {
            link: Some(&link),
            standalone: false,
        },
    );
    body += "</div>";
    if compact {
        // NB: at most `LISTED` names per group; the legend has the counts.
        const LISTED: usize = 300;
        let failed = |s: &State| matches!(s, State::Failed);
        let ran = |s: &State| matches!(s, State::Ran { .. });
        for (title, pick) in [
            ("Failed", &failed as &dyn Fn(&State) -> bool),
            ("Ran", &ran),
        ] {
            let group: Vec<&super::model::Node> =
                g.nodes.iter().filter(|n| pick(&n.state)).collect();
            if group.is_empty() {
                continue;
            }
            let _ = write!(
                body,
                "<h2>{title} ({})</h2><p class=\"listed\">",
                group.len()
            );
            for n in group.iter().take(LISTED) {
                let _ = write!(
                    body,
                    "<a href=\"{}\" title=\"{}\">{}</a> ",
                    esc(&link(n)),
                    esc(&n.state.label()),
                    esc(&n.name)
                );
            }
            if group.len() > LISTED {
                let _ = write!(body, "… and {} more", group.len() - LISTED);
            }
            body += "</p>";
        }
    }
    Ok(Reply::html(page(
        &format!("{} run {run}", rec.dag),
        "DAG",
        &body,
    )))
}

pub fn graph_json(cache: &Cache, id: Option<u64>) -> Res {
    match run_or_latest(cache, id)
        .map_err(|r| Reply::json_error(r.status, &String::from_utf8_lossy(&r.body)))?
    {
        Some(rec) => Ok(Reply::json(&Graph::from_run(cache, &rec).to_json())),
        None => Ok(Reply::json(
            &serde_json::json!({ "run": null, "nodes": [], "edges": [] }),
        )),
    }
}

fn run_counts(r: &RunRecord) -> (usize, usize, usize, usize) {
    let mut c = (0, 0, 0, 0);
    for t in &r.tasks {
        match t.status.as_str() {
            "cached" => c.0 += 1,
            "executed" => c.1 += 1,
            "failed" => c.2 += 1,
            _ => c.3 += 1,
        }
    }
    c
}

/// Every run record, newest first (at most `limit`).
fn runs_list(cache: &Cache, limit: usize) -> Result<Vec<RunRecord>, Reply> {
    let ids = cache.index.run_ids().map_err(internal)?;
    let mut out = Vec::new();
    for id in ids.iter().rev().take(limit) {
        if let Some(r) = cache.index.run(*id).map_err(internal)? {
            out.push(r);
        }
    }
    Ok(out)
}

pub fn runs(cache: &Cache) -> Res {
    let list = runs_list(cache, 500)?;
    let mut body = String::from("<h1>Runs</h1>");
    if let Some(n) = in_progress(cache) {
        let _ = write!(body, "<p class=\"banner\">run {n} is in progress</p>");
    }
    body += "<table id=\"runs\"><tr><th>run</th><th>pipeline</th><th>started</th><th>took</th><th>result</th><th>hit</th><th>ran</th><th>failed</th><th>skipped</th></tr>";
    for r in &list {
        let (h, x, f, s) = run_counts(r);
        let _ = write!(
            body,
            "<tr><td><a href=\"/runs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{h}</td><td>{x}</td><td>{f}</td><td>{s}</td></tr>",
            esc(&r.dag),
            utc(r.started_ms),
            short_duration(r.finished_ms.saturating_sub(r.started_ms)),
            if r.ok { "ok" } else { "<span class=\"error\">failed</span>" },
            id = r.id
        );
    }
    body += "</table>";
    if list.is_empty() {
        body += "<p>No runs yet.</p>";
    }
    Ok(Reply::html(page("Runs", "Runs", &body)))
}

pub fn runs_json(cache: &Cache) -> Res {
    let list = runs_list(cache, 500)?;
    Ok(Reply::json(&serde_json::json!({
        "in_progress": in_progress(cache),
        "runs": list.iter().map(|r| {
            let (h, x, f, s) = run_counts(r);
            serde_json::json!({
                "id": r.id, "dag": r.dag, "started_ms": r.started_ms,
                "finished_ms": r.finished_ms, "ok": r.ok,
                "hit": h, "ran": x, "failed": f, "skipped": s,
            })
        }).collect::<Vec<_>>(),
    })))
}

/// A task's part in run `id`, its entry (if stored) and explanation.
struct TaskView {
    rec: RunRecord,
    graph: Graph,
    idx: usize,
    entry: Option<dagfs::store::Entry>,
}

fn task_view(cache: &Cache, id: u64, task: &str) -> Result<TaskView, Reply> {
    let rec = run_or_latest(cache, Some(id))?.expect("a run");
    let graph = Graph::from_run(cache, &rec);
    let Some(idx) = graph.nodes.iter().position(|n| n.name == task) else {
        return Err(Reply::error(
            404,
            &format!("run {id} has no task named `{task}`"),
        ));
    };
    let entry = match graph.nodes[idx].key {
        Some(k) => cache.store.read_entry(&k).map_err(internal)?,
        None => None,
    };
    Ok(TaskView {
        rec,
        graph,
        idx,
        entry,
    })
}

/// `explain`'s text for the task's key in that run ("what changed").
fn explanation(cache: &Cache, v: &TaskView) -> Result<Option<String>, Reply> {
    let Some(e) = &v.entry else { return Ok(None) };
    let cached = matches!(
        cache.lookup(&e.key, now_ms()).map_err(internal)?,
        Lookup::Hit(_)
    );
    let current = explain::Current::Known {
        key: e.key,
        manifest: e.manifest.clone(),
        cached,
    };
    explain::text(cache, &v.rec.dag, &e.task, &current)
        .map(Some)
        .map_err(internal)
}

/// At most this much of a log is shown in a page.
const LOG_SHOWN: usize = 256 * 1024;

fn read_text(cache: &Cache, d: &Digest) -> String {
    let mut buf = Vec::new();
    match cache.store.open_blob(d) {
        Ok(r) => {
            if let Err(e) = r.take(LOG_SHOWN as u64 + 1).read_to_end(&mut buf) {
                return format!("(cannot read it: {e})");
            }
        }
        Err(e) => return format!("(cannot read it: {e})"),
    }
    let cut = buf.len() > LOG_SHOWN;
    buf.truncate(LOG_SHOWN);
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    if cut {
        s += &format!(
            "\n… (cut at {}; the whole log is in `dagfs cat`)",
            format_size(LOG_SHOWN as u64)
        );
    }
    s
}

/// At most this many tree entries are listed on a task's page.
const TREE_SHOWN: usize = 2000;

fn tree_html(cache: &Cache, key: &Digest, root: &Digest, o: &mut String) {
    let mut shown = 0;
    tree_level(cache, key, root, "", o, &mut shown);
}

/// One directory as a nested list; paths in links are from the output's
/// root. NB: recursion is bounded: outputs nest at most 256 levels.
fn tree_level(
    cache: &Cache,
    key: &Digest,
    d: &Digest,
    prefix: &str,
    o: &mut String,
    shown: &mut usize,
) {
    o.push_str("<ul class=\"tree\">");
    match cache.store.read_tree(d) {
        Err(e) => {
            let _ = write!(o, "<li class=\"error\">{}</li>", esc(&e.to_string()));
        }
        Ok(tree) => {
            for e in &tree.entries {
                if *shown >= TREE_SHOWN {
                    let _ = write!(o, "<li>… (more than {TREE_SHOWN} entries)</li>");
                    break;
                }
                *shown += 1;
                let name = String::from_utf8_lossy(&e.name).into_owned();
                let path = format!("{prefix}{name}");
                let href = format!(
                    "/file/{key}/{}",
                    path.split('/').map(url).collect::<Vec<_>>().join("/")
                );
                match &e.node {
                    TreeNode::File { size, exec, .. } => {
                        let _ = write!(
                            o,
                            "<li><a href=\"{}\">{}</a>{} <small>{}</small></li>",
                            esc(&href),
                            esc(&name),
                            if *exec { "*" } else { "" },
                            format_size(*size)
                        );
                    }
                    TreeNode::Symlink { target } => {
                        let _ = write!(
                            o,
                            "<li>{} → {}</li>",
                            esc(&name),
                            esc(&String::from_utf8_lossy(target))
                        );
                    }
                    TreeNode::Dir { digest } => {
                        let _ = write!(o, "<li><a href=\"{}\">{}/</a>", esc(&href), esc(&name));
                        tree_level(cache, key, digest, &format!("{path}/"), o, shown);
                        o.push_str("</li>");
                    }
                }
            }
        }
    }
    o.push_str("</ul>");
}

pub fn task(cache: &Cache, id: u64, name: &str) -> Res {
    let v = task_view(cache, id, name)?;
    let n = &v.graph.nodes[v.idx];
    let (fill, stroke) = n.state.colours();
    let run = v.rec.id;
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>{} <small>in <a href=\"/runs/{run}\">run {run}</a> of {}</small></h1>",
        esc(&n.name),
        esc(&v.rec.dag)
    );
    let _ = write!(
        b,
        "<table id=\"task\"><tr><th>state</th><td><i class=\"swatch\" style=\"background:{fill};border-color:{stroke}\"></i><span id=\"state\" class=\"{}\">{}</span></td></tr>",
        n.state.class(),
        esc(&n.state.label())
    );
    match &n.state {
        State::Hit { route } => {
            let _ = write!(b, "<tr><th>route</th><td>{}</td></tr>", esc(route));
        }
        State::Ran { reason } => {
            let _ = write!(b, "<tr><th>miss reason</th><td>{}</td></tr>", esc(reason));
        }
        _ => {}
    }
    let _ = write!(
        b,
        "<tr><th>key</th><td><code id=\"key\">{}</code></td></tr>",
        n.key
            .map(|k| k.to_string())
            .unwrap_or_else(|| "(none)".into())
    );
    if let Some(ms) = n.duration_ms {
        let _ = write!(
            b,
            "<tr><th>{}</th><td>{}</td></tr>",
            if matches!(n.state, State::Hit { .. }) {
                "ran for (when stored)"
            } else {
                "took"
            },
            short_duration(ms)
        );
    }
    if let Some(e) = &n.error {
        let _ = write!(
            b,
            "<tr><th>error</th><td class=\"error\">{}</td></tr>",
            esc(e)
        );
    }
    let deps: Vec<String> = v
        .graph
        .edges
        .iter()
        .filter(|(_, t)| *t == v.idx)
        .map(|&(f, _)| {
            let d = &v.graph.nodes[f].name;
            format!("<a href=\"/task/{run}/{}\">{}</a>", url(d), esc(d))
        })
        .collect();
    let users: Vec<String> = v
        .graph
        .edges
        .iter()
        .filter(|(f, _)| *f == v.idx)
        .map(|&(_, t)| {
            let d = &v.graph.nodes[t].name;
            format!("<a href=\"/task/{run}/{}\">{}</a>", url(d), esc(d))
        })
        .collect();
    let _ = write!(
        b,
        "<tr><th>depends on</th><td>{}</td></tr><tr><th>used by</th><td>{}</td></tr></table>",
        if deps.is_empty() {
            "—".into()
        } else {
            deps.join(", ")
        },
        if users.is_empty() {
            "—".into()
        } else {
            users.join(", ")
        }
    );
    match explanation(cache, &v)? {
        Some(text) => {
            let _ = write!(b, "<h2>What changed (explain)</h2><pre id=\"explain\">{}</pre>", esc(&text));
        }
        None => b += "<h2>What changed</h2><p>No entry is stored for this task in this run (a failed or skipped task is never cached), so there is nothing to explain.</p>",
    }
    if let Some(e) = &v.entry {
        let _ = write!(
            b,
            "<h2>stdout</h2><pre id=\"stdout\">{}</pre><h2>stderr</h2><pre id=\"stderr\">{}</pre>",
            esc(&read_text(cache, &e.stdout)),
            esc(&read_text(cache, &e.stderr))
        );
        let _ = write!(
            b,
            "<h2>Output <small>{} files, {}, tree <code>{}</code></small></h2>",
            e.files,
            format_size(e.size),
            e.output.short()
        );
        tree_html(cache, &e.key, &e.output, &mut b);
    }
    Ok(Reply::html(page(
        &format!("{} run {run}", n.name),
        "DAG",
        &b,
    )))
}

pub fn task_json(cache: &Cache, id: u64, name: &str) -> Res {
    let v = task_view(cache, id, name)
        .map_err(|r| Reply::json_error(r.status, &String::from_utf8_lossy(&r.body)))?;
    let mut j = v.graph.nodes[v.idx].to_json();
    j["run"] = serde_json::json!(v.rec.id);
    j["dag"] = serde_json::json!(v.rec.dag);
    j["deps"] = serde_json::json!(v
        .graph
        .edges
        .iter()
        .filter(|(_, t)| *t == v.idx)
        .map(|&(f, _)| v.graph.nodes[f].name.clone())
        .collect::<Vec<_>>());
    j["explain"] = serde_json::json!(
        explanation(cache, &v).map_err(|r| Reply::json_error(r.status, "reading the store"))?
    );
    if let Some(e) = &v.entry {
        j["output"] = serde_json::json!(e.output.to_string());
        j["files"] = serde_json::json!(e.files);
        j["size"] = serde_json::json!(e.size);
        j["stdout"] = serde_json::json!(read_text(cache, &e.stdout));
        j["stderr"] = serde_json::json!(read_text(cache, &e.stderr));
    }
    Ok(Reply::json(&j))
}

/// `/file/<key>/<path>`: a file of an entry's output (its bytes, served as
/// plain text or octet-stream, never as HTML), or a directory's listing.
pub fn file(cache: &Cache, key: &str, path: &[String]) -> Res {
    let key: Digest = key
        .parse()
        .map_err(|_| Reply::error(400, &format!("`{key}` is not a key")))?;
    let Some(entry) = cache.store.read_entry(&key).map_err(internal)? else {
        return Err(Reply::error(404, &format!("no entry {key} in this store")));
    };
    let mut node = TreeNode::Dir {
        digest: entry.output,
    };
    for (i, part) in path.iter().enumerate() {
        let TreeNode::Dir { digest } = &node else {
            return Err(Reply::error(
                404,
                &format!("{} is not a directory", path[..i].join("/")),
            ));
        };
        let tree = cache.store.read_tree(digest).map_err(internal)?;
        node = match tree.find(part.as_bytes()) {
            Some(e) => e.node.clone(),
            None => {
                return Err(Reply::error(
                    404,
                    &format!(
                        "no {} in the output of {}/{}",
                        path.join("/"),
                        entry.dag,
                        entry.task
                    ),
                ))
            }
        };
    }
    match node {
        TreeNode::File { digest, .. } => {
            let bytes = cache.store.read_blob(&digest).map_err(internal)?;
            let text =
                !bytes[..bytes.len().min(8192)].contains(&0) && std::str::from_utf8(&bytes).is_ok();
            Ok(Reply {
                status: 200,
                ctype: if text {
                    "text/plain; charset=utf-8"
                } else {
                    "application/octet-stream"
                },
                body: bytes,
                raw: true,
            })
        }
        TreeNode::Symlink { target } => Ok(Reply {
            status: 200,
            ctype: "text/plain; charset=utf-8",
            body: format!("symlink → {}\n", String::from_utf8_lossy(&target)).into_bytes(),
            raw: true,
        }),
        TreeNode::Dir { digest } => {
            let mut b = format!(
                "<h1>{}/{}: {}/</h1>",
                esc(&entry.dag),
                esc(&entry.task),
                esc(&path.join("/"))
            );
            let prefix: String = path.iter().map(|p| format!("{p}/")).collect();
            tree_level(cache, &key, &digest, &prefix, &mut b, &mut 0);
            Ok(Reply::html(page("output", "DAG", &b)))
        }
    }
}

/// The size of the store on disk: every file under it (stopping after
/// `MAX_FILES`).
fn disk_usage(root: &std::path::Path) -> (u64, u64, bool) {
    const MAX_FILES: u64 = 200_000;
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                use std::os::unix::fs::MetadataExt;
                bytes += m.blocks() * 512;
                files += 1;
                if files >= MAX_FILES {
                    return (bytes, files, true);
                }
            }
        }
    }
    (bytes, files, false)
}

/// Hit rate per run (hits / tasks looked up), oldest first.
fn hit_rates(list: &[RunRecord]) -> Vec<(u64, f64, usize)> {
    list.iter()
        .rev()
        .filter_map(|r| {
            let (h, x, f, _) = run_counts(r);
            let looked = h + x + f;
            (looked > 0).then(|| (r.id, h as f64 / looked as f64, looked))
        })
        .collect()
}

fn rate_plot(points: &[(u64, f64, usize)]) -> String {
    let (w, h, l, t) = (640.0, 200.0, 40.0, 10.0);
    let (pw, ph) = (w - l - 10.0, h - t - 30.0);
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"hit-rate\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"10\" role=\"img\" aria-label=\"hit rate per run\">"
    );
    for pct in [0, 50, 100] {
        let y = t + ph * (1.0 - f64::from(pct) / 100.0);
        let _ = write!(
            o,
            "<line x1=\"{l}\" x2=\"{:.0}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/><text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{pct}%</text>",
            l + pw,
            l - 4.0,
            y + 3.0
        );
    }
    if points.is_empty() {
        o += "<text x=\"200\" y=\"90\">no runs yet</text></svg>";
        return o;
    }
    let n = points.len();
    let x = |i: usize| {
        l + if n == 1 {
            pw / 2.0
        } else {
            pw * i as f64 / (n - 1) as f64
        }
    };
    let y = |r: f64| t + ph * (1.0 - r);
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.1)))
        .collect();
    let _ = write!(
        o,
        "<polyline fill=\"none\" stroke=\"#2e7d32\" stroke-width=\"1.5\" points=\"{}\"/>",
        line.join(" ")
    );
    for (i, (id, r, looked)) in points.iter().enumerate() {
        let _ = write!(
            o,
            "<circle class=\"run-point\" data-run=\"{id}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#2e7d32\"><title>run {id}: {:.0}% of {looked} tasks hit</title></circle>",
            x(i),
            y(*r),
            r * 100.0
        );
    }
    let _ = write!(
        o,
        "<text x=\"{l}\" y=\"{:.0}\">run {}</text><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">run {}</text></svg>",
        h - 8.0,
        points[0].0,
        l + pw,
        h - 8.0,
        points[n - 1].0
    );
    o
}

pub fn stats(cache: &Cache) -> Res {
    let s = cache.index.stats().map_err(internal)?;
    let list = runs_list(cache, 200)?;
    let (disk, files, capped) = disk_usage(cache.store.root());
    let mut b = String::from("<h1>Cache statistics</h1><table id=\"stats\">");
    let row = |b: &mut String, k: &str, v: String| {
        let _ = write!(b, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    row(&mut b, "hit rate", format!("{:.1}%", s.hit_rate() * 100.0));
    row(&mut b, "hits", s.hits.to_string());
    for (r, c) in &s.hits_by_route {
        row(&mut b, &format!("  by {r}"), c.to_string());
    }
    row(&mut b, "misses", s.misses.to_string());
    for (r, c) in &s.misses_by_reason {
        row(&mut b, &format!("  {r}"), c.to_string());
    }
    row(&mut b, "entries", s.total_entries.to_string());
    row(&mut b, "stored outputs", format_size(s.total_size_bytes));
    row(
        &mut b,
        "store on disk",
        format!(
            "{} in {}{files} files",
            format_size(disk),
            if capped { "at least " } else { "" }
        ),
    );
    row(&mut b, "evictions", s.evictions.to_string());
    row(&mut b, "expirations", s.expirations.to_string());
    row(&mut b, "runs", s.runs.to_string());
    b += "</table><h2>Hit rate per run</h2>";
    b += &rate_plot(&hit_rates(&list));
    Ok(Reply::html(page("Stats", "Stats", &b)))
}

pub fn stats_json(cache: &Cache) -> Res {
    let s = cache.index.stats().map_err(internal)?;
    let list = runs_list(cache, 200)?;
    let (disk, files, capped) = disk_usage(cache.store.root());
    let mut v = serde_json::to_value(&s).expect("stats serialize");
    v["hit_rate"] = serde_json::json!(s.hit_rate());
    v["disk_bytes"] = serde_json::json!(disk);
    v["disk_files"] = serde_json::json!(files);
    v["disk_counted_all"] = serde_json::json!(!capped);
    v["hit_rate_by_run"] = serde_json::json!(hit_rates(&list)
        .iter()
        .map(|(id, r, n)| serde_json::json!({"run": id, "hit_rate": r, "tasks": n}))
        .collect::<Vec<_>>());
    Ok(Reply::json(&v))
}

/// At most this many paths of a change set are shown.
const CHANGES_SHOWN: usize = 100;

fn sync_changes(
    cache: &Cache,
) -> Result<
    Vec<(
        dagfs::store::syncs::SyncLog,
        dagfs::sync::changes::ChangeSet,
    )>,
    Reply,
> {
    let logs = cache.store.sync_logs().map_err(internal)?;
    let mut out = Vec::new();
    for log in logs {
        let n = log.snapshots.len();
        let cs = match log.snapshots.last() {
            Some(last) => {
                let prev = n.checked_sub(2).map(|i| log.snapshots[i].tree);
                dagfs::sync::changes::diff(&cache.store, prev.as_ref(), &last.tree)
                    .map_err(internal)?
            }
            None => Default::default(),
        };
        out.push((log, cs));
    }
    Ok(out)
}

pub fn syncs(cache: &Cache) -> Res {
    let mut b = String::from("<h1>Synced directories</h1>");
    let all = sync_changes(cache)?;
    if all.is_empty() {
        b += "<p>None yet (<code>dagfs sync DIR</code>).</p>";
    }
    for (log, cs) in &all {
        let _ = write!(
            b,
            "<h2 class=\"sync\">{} <small>{}</small></h2>",
            esc(&log.name),
            esc(&log.root)
        );
        let Some(last) = log.latest() else { continue };
        let _ = write!(
            b,
            "<p>{} snapshots; latest @{} at {}: {} files, {}</p><p>its changes: ",
            log.snapshots.len(),
            last.seq,
            utc(last.created_ms),
            last.files,
            format_size(last.bytes)
        );
        let counts: Vec<String> = dagfs::sync::changes::ChangeKind::ALL
            .iter()
            .map(|k| format!("{} {}", cs.count(*k), k.as_str()))
            .collect();
        b += &esc(&counts.join(", "));
        b += "</p><ul>";
        for c in cs.changes.iter().take(CHANGES_SHOWN) {
            let _ = write!(
                b,
                "<li>{} <code>{}</code></li>",
                c.kind.as_str(),
                esc(&String::from_utf8_lossy(&c.path))
            );
        }
        if cs.changes.len() > CHANGES_SHOWN {
            let _ = write!(b, "<li>… {} more</li>", cs.changes.len() - CHANGES_SHOWN);
        }
        b += "</ul>";
    }
    Ok(Reply::html(page("Syncs", "Syncs", &b)))
}

pub fn syncs_json(cache: &Cache) -> Res {
    let all = sync_changes(cache)?;
    Ok(Reply::json(&serde_json::json!(all
        .iter()
        .map(|(log, cs)| serde_json::json!({
            "name": log.name,
            "root": log.root,
            "snapshots": log.snapshots.len(),
            "latest": log.latest(),
            "changes": cs.changes.iter().map(|c| serde_json::json!({
                "path": String::from_utf8_lossy(&c.path),
                "kind": c.kind.as_str(),
            })).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>())))
}

/// `/api/state`: what the live script compares. `version` changes when a
/// run starts or ends, an entry lands, or a sync takes a snapshot.
pub fn state(cache: &Cache, live: Option<&super::live::Live>) -> Res {
    let s = cache.index.stats().map_err(internal)?;
    let last = cache.index.last_run().map_err(internal)?.map(|r| r.id);
    let syncs: u64 = cache
        .store
        .sync_logs()
        .map_err(internal)?
        .iter()
        .map(|l| l.latest().map_or(0, |s| s.seq))
        .sum();
    let progress = in_progress(cache);
    Ok(Reply::json(&serde_json::json!({
        "version": format!("{}-{}-{}-{}-{syncs}-{}", s.runs, last.unwrap_or(0), s.total_entries, s.total_size_bytes, live.map_or(0, |l| l.version())),
        "latest_run": last,
        "in_progress": progress,
        "busy": false,
        "note": live
            .map(|l| l.graphs())
            .unwrap_or_default()
            .iter()
            .map(|(g, done, _)| format!("{}: {done} of {} tasks done", g.dag, g.nodes.len()))
            .next()
            .or_else(|| progress.map(|n| format!("run {n} in progress")))
            .unwrap_or_default(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_796_533_923_000), "2026-12-06 05:12:03Z");
    }

    #[test]
    fn the_plot_has_a_point_per_run() {
        let p = rate_plot(&[(1, 0.0, 4), (2, 0.75, 4), (3, 1.0, 4)]);
        assert_eq!(p.matches("class=\"run-point\"").count(), 3);
        assert!(p.contains("run 2: 75% of 4 tasks hit"));
    }
}
