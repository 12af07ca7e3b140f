//! Inspection and maintenance commands: stats, ls, explain, cat, config,
//! gc, fsck --rebuild-index.

use std::collections::HashSet;

use std::path::Path;
use std::sync::Arc;

use dagfs::cache::{now_ms, Cache};
use dagfs::exec::runner::ShellRunner;
use dagfs::exec::{explain, shell, ExecError, Pipeline};
use dagfs::hash::HexPrefix;
use dagfs::index::stats::{format_duration, format_size, parse_duration, parse_size};
use dagfs::index::CachePolicy;
use dagfs::store::Node;

use super::{CacheSource, CliError, Io};

pub fn stats(cache: &Cache, json: bool, io: &mut Io) -> Result<(), CliError> {
    let s = cache.index.stats()?;
    let o = &mut *io.out;
    if json {
        let mut v = serde_json::to_value(&s).expect("stats serialize");
        v["hit_rate"] = serde_json::json!(s.hit_rate());
        writeln!(o, "{}", serde_json::to_string_pretty(&v).expect("json"))
            .map_err(CliError::Output)?;
        return Ok(());
    }
    let text = s.to_text(&cache.policy());
    o.write_all(text.as_bytes()).map_err(CliError::Output)
}

fn age(ms: u64) -> String {
    let s = now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub fn ls(cache: &Cache, dag: Option<&str>, io: &mut Io) -> Result<(), CliError> {
    let rows = cache.index.latest_all(dag)?;
    if rows.is_empty() {
        if let Some(d) = dag {
            return Err(CliError::NotFound(format!(
                "no pipeline named `{d}` in the store"
            )));
        }
    }
    let o = &mut *io.out;
    let w = rows
        .iter()
        .map(|(d, t, _)| d.len() + t.len() + 1)
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        o,
        "{:<w$}  {:<8}  {:>10}  {:>6}  {:>5}  {:>8}",
        "TASK", "KEY", "SIZE", "FILES", "AGE", "RAN"
    )
    .map_err(CliError::Output)?;
    for (d, t, key) in rows {
        let name = format!("{d}/{t}");
        let line = match cache.index.get(&key)? {
            Some(m) => format!(
                "{name:<w$}  {}  {:>10}  {:>6}  {:>5}  {:>7.2}s",
                key.short(),
                format_size(m.size),
                m.files,
                age(m.created_ms),
                m.duration_ms as f64 / 1000.0
            ),
            None => format!("{name:<w$}  {}  {:>10}", key.short(), "(evicted)"),
        };
        writeln!(o, "{line}").map_err(CliError::Output)?;
    }
    Ok(())
}

/// Resolve `REF/PATH` to a node: REF is DAG/TASK or a key prefix.
pub fn cat(cache: &Cache, spec: &str, io: &mut Io) -> Result<(), CliError> {
    let parts: Vec<&str> = spec.split('/').filter(|p| !p.is_empty()).collect();
    let not_found = || CliError::NotFound(format!("{spec}: not found"));
    let (key, rest) = match parts.first().and_then(|p| HexPrefix::parse(p)) {
        Some(prefix) => {
            let keys = cache.index.keys_with_prefix(&prefix)?;
            match keys.as_slice() {
                [k] => (*k, &parts[1..]),
                [] => return Err(not_found()),
                _ => {
                    return Err(CliError::Usage(format!(
                        "key prefix {} is ambiguous ({} keys)",
                        prefix.as_str(),
                        keys.len()
                    )))
                }
            }
        }
        None if parts.len() >= 2 => {
            let k = cache
                .index
                .latest(parts[0], parts[1])?
                .ok_or_else(not_found)?;
            (k, &parts[2..])
        }
        None => {
            return Err(CliError::Usage(format!(
                "{spec}: want DAG/TASK/PATH or KEYPREFIX/PATH"
            )))
        }
    };
    let meta = cache.index.get(&key)?.ok_or_else(|| {
        CliError::NotFound(format!("{spec}: key {} is no longer cached", key.short()))
    })?;
    let mut node = Node::Dir {
        digest: meta.output,
    };
    for (i, comp) in rest.iter().enumerate() {
        let Node::Dir { digest } = node else {
            return Err(not_found());
        };
        let tree = cache.store.read_tree(&digest)?;
        let e = tree.find(comp.as_bytes()).ok_or_else(not_found)?;
        if matches!(e.node, Node::Symlink { .. }) && i + 1 < rest.len() {
            return Err(CliError::NotFound(format!(
                "{spec}: `{comp}` is a symlink (not followed)"
            )));
        }
        node = e.node.clone();
    }
    let o = &mut *io.out;
    match node {
        Node::File { digest, .. } => {
            let mut f = cache.store.open_blob(&digest)?;
            std::io::copy(&mut f, o).map_err(CliError::Output)?;
        }
        Node::Symlink { target } => {
            o.write_all(&target)
                .and_then(|_| o.write_all(b"\n"))
                .map_err(CliError::Output)?;
        }
        Node::Dir { digest } => {
            for e in cache.store.read_tree(&digest)?.entries {
                let suffix = match e.node {
                    Node::Dir { .. } => "/",
                    Node::Symlink { .. } => "@",
                    Node::File { exec: true, .. } => "*",
                    _ => "",
                };
                o.write_all(&e.name)
                    .and_then(|_| writeln!(o, "{suffix}"))
                    .map_err(CliError::Output)?;
            }
        }
    }
    Ok(())
}

pub fn config(
    cache: &Cache,
    key: Option<String>,
    value: Option<String>,
    io: &mut Io,
) -> Result<(), CliError> {
    let mut p = cache.index.policy()?;
    let show = |p: &CachePolicy| {
        format!(
            "max_entries = {}\nmax_bytes = {}\nttl = {}\n",
            p.max_entries
                .map(|n| n.to_string())
                .unwrap_or_else(|| "none".into()),
            p.max_size_bytes
                .map(|n| n.to_string())
                .unwrap_or_else(|| "none".into()),
            p.ttl.map(format_duration).unwrap_or_else(|| "none".into())
        )
    };
    let Some(key) = key else {
        return io
            .out
            .write_all(show(&p).as_bytes())
            .map_err(CliError::Output);
    };
    let Some(value) = value else {
        let line = show(&p)
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .map(str::to_string);
        let line = line.ok_or_else(|| {
            CliError::Usage(format!(
                "unknown setting `{key}` (max_entries, max_bytes, ttl)"
            ))
        })?;
        return writeln!(io.out, "{}", line.split(" = ").nth(1).unwrap_or(""))
            .map_err(CliError::Output);
    };
    let none = value == "none";
    let bad = |what: &str| CliError::Usage(format!("{key}: {value:?} is not {what} (or `none`)"));
    match key.as_str() {
        "max_entries" => {
            p.max_entries = if none {
                None
            } else {
                Some(value.parse().map_err(|_| bad("a count"))?)
            }
        }
        "max_bytes" => {
            p.max_size_bytes = if none {
                None
            } else {
                Some(parse_size(&value).ok_or_else(|| bad("a size like 10G"))?)
            }
        }
        "ttl" => {
            p.ttl = if none {
                None
            } else {
                Some(parse_duration(&value).ok_or_else(|| bad("a duration like 7d"))?)
            }
        }
        _ => {
            return Err(CliError::Usage(format!(
                "unknown setting `{key}` (max_entries, max_bytes, ttl)"
            )))
        }
    }
    cache.index.set_policy(&p)?;
    cache.set_policy(p);
    let (expired, evicted) = cache.enforce(&HashSet::new(), now_ms(), true, &p)?;
    cache.flush()?;
    let o = &mut *io.out;
    o.write_all(show(&p).as_bytes()).map_err(CliError::Output)?;
    if expired + evicted > 0 {
        writeln!(o, "applied: {evicted} evicted, {expired} expired").map_err(CliError::Output)?;
    }
    Ok(())
}

pub fn gc(cache: &Cache, dry_run: bool, io: &mut Io) -> Result<(), CliError> {
    let r = cache.gc(dry_run, &HashSet::new())?;
    cache.flush()?;
    let verb = if dry_run { "would remove" } else { "removed" };
    writeln!(
        io.out,
        "gc: {} expired, {} evicted; {verb} {} of {} blobs ({}); {} young blobs kept",
        r.expired,
        r.evicted,
        r.sweep.blobs_removed,
        r.sweep.blobs_total,
        format_size(r.sweep.bytes_removed),
        r.sweep.blobs_kept_young
    )
    .map_err(CliError::Output)
}

pub fn rebuild_index(cache: &Cache, io: &mut Io) -> Result<(), CliError> {
    let n = dagfs::cache::rebuild(&cache.store, &cache.index)?;
    cache.flush()?;
    writeln!(io.out, "index rebuilt from {n} entries").map_err(CliError::Output)
}

/// `dagfs explain TASK`: the key's components, and what differs from the
/// task's previous key.
pub fn explain(
    file: &Path,
    task: &str,
    src: &mut CacheSource,
    io: &mut Io,
) -> Result<(), CliError> {
    let pipeline = Pipeline::load(file)?;
    if pipeline.dag.lookup(task).is_none() {
        return Err(ExecError::UnknownTask(task.to_string()).into());
    }
    let cache = src.get(io)?;
    let plan = shell::plan_with_env(
        &pipeline,
        &[task.to_string()],
        Arc::new(ShellRunner),
        io.env,
        cache,
    )?;

    let current = explain::current(cache, &plan, task)?;
    let text = explain::text(cache, &pipeline.name, task, &current)?;
    io.out.write_all(text.as_bytes()).map_err(CliError::Output)
}
