//! Cache statistics (with the hit rate per run as a plot) and synced
//! directories with their latest change sets.

use std::fmt::Write;

use dagfs::cache::Cache;
use dagfs::index::stats::format_size;
use dagfs::index::RunRecord;

use super::{internal, page, run_counts, runs_list, utc, Reply, Res};
use crate::ui::html::esc;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_has_a_point_per_run() {
        let p = rate_plot(&[(1, 0.0, 4), (2, 0.75, 4), (3, 1.0, 4)]);
        assert_eq!(p.matches("class=\"run-point\"").count(), 3);
        assert!(p.contains("run 2: 75% of 4 tasks hit"));
    }
}
