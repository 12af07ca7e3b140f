//! The web view's pages and JSON, each a function of the cache (read as
//! the mounted tree reads it: the index's runs, latest keys and counters,
//! entry records, trees and blobs, sync logs). No page writes anything.
//! Every string that comes from users is escaped (`html::esc`) or
//! percent-encoded (`html::url`) where it is written.

mod stats;
mod task;

pub use stats::{stats, stats_json, syncs, syncs_json};
pub use task::{file, task, task_json};

use std::fmt::Write;

use dagfs::cache::Cache;
use dagfs::index::RunRecord;

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
pub(super) type Res = Result<Reply, Reply>;

pub(super) fn internal(e: impl std::fmt::Display) -> Reply {
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

pub(super) fn run_or_latest(cache: &Cache, id: Option<u64>) -> Result<Option<RunRecord>, Reply> {
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

pub(super) fn run_counts(r: &RunRecord) -> (usize, usize, usize, usize) {
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
pub(super) fn runs_list(cache: &Cache, limit: usize) -> Result<Vec<RunRecord>, Reply> {
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
}
