//! A task's page in a run (its state, explain's text, its logs, its output
//! tree) and the files of an output.

use std::fmt::Write;
use std::io::Read;

use dagfs::cache::{now_ms, Cache, Lookup};
use dagfs::exec::explain;
use dagfs::hash::Digest;
use dagfs::index::stats::format_size;
use dagfs::index::RunRecord;
use dagfs::store::tree::Node as TreeNode;

use super::{internal, page, run_or_latest, Reply, Res};
use crate::ui::html::{esc, url};
use crate::ui::model::{short_duration, Graph, State};

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
