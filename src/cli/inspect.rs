//! Inspection and maintenance commands: stats, ls, explain, cat, config,
//! gc, fsck --rebuild-index.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dagfs::cache::{now_ms, Cache, Lookup};
use dagfs::exec::runner::ShellRunner;
use dagfs::exec::{shell, ExecError, KeyBuilder, Pipeline};
use dagfs::hash::{Digest, HexPrefix};
use dagfs::index::stats::{format_duration, format_size, parse_duration, parse_size};
use dagfs::index::CachePolicy;
use dagfs::store::{Manifest, Node};

use super::{open_cache, CliError};

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

pub fn stats(cache: &Cache, json: bool) -> Result<(), CliError> {
    let s = cache.index.stats()?;
    let mut o = out();
    if json {
        let mut v = serde_json::to_value(&s).expect("stats serialize");
        v["hit_rate"] = serde_json::json!(s.hit_rate());
        writeln!(o, "{}", serde_json::to_string_pretty(&v).expect("json"))
            .map_err(CliError::Output)?;
        return Ok(());
    }
    let p = cache.policy();
    let lim = |v: Option<String>| v.unwrap_or_else(|| "unlimited".into());
    let text = format!(
        "entries      {} (max {})\nsize         {} (max {})\nttl          {}\nhits         {}\nmisses       {}\nhit rate     {:.1}%\nevictions    {}\nexpirations  {}\nruns         {}\nhits by route:\n{}misses by reason:\n{}",
        s.total_entries,
        lim(p.max_entries.map(|n| n.to_string())),
        format_size(s.total_size_bytes),
        lim(p.max_size_bytes.map(format_size)),
        lim(p.ttl.map(format_duration)),
        s.hits,
        s.misses,
        s.hit_rate() * 100.0,
        s.evictions,
        s.expirations,
        s.runs,
        s.hits_by_route.iter().map(|(k, v)| format!("  {k:<14}{v}\n")).collect::<String>(),
        s.misses_by_reason.iter().map(|(k, v)| format!("  {k:<14}{v}\n")).collect::<String>(),
    );
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

pub fn ls(cache: &Cache, dag: Option<&str>) -> Result<(), CliError> {
    let rows = cache.index.latest_all(dag)?;
    if rows.is_empty() {
        if let Some(d) = dag {
            return Err(CliError::NotFound(format!(
                "no pipeline named `{d}` in the store"
            )));
        }
    }
    let mut o = out();
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
pub fn cat(cache: &Cache, spec: &str) -> Result<(), CliError> {
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
    let mut o = out();
    match node {
        Node::File { digest, .. } => {
            let mut f = cache.store.open_blob(&digest)?;
            std::io::copy(&mut f, &mut o).map_err(CliError::Output)?;
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

pub fn config(cache: Cache, key: Option<String>, value: Option<String>) -> Result<(), CliError> {
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
        return out()
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
        return writeln!(out(), "{}", line.split(" = ").nth(1).unwrap_or(""))
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
    let mut cache = cache;
    cache.set_policy(p);
    let (expired, evicted) = cache.enforce(&HashSet::new(), now_ms(), true)?;
    cache.flush()?;
    let mut o = out();
    o.write_all(show(&p).as_bytes()).map_err(CliError::Output)?;
    if expired + evicted > 0 {
        writeln!(o, "applied: {evicted} evicted, {expired} expired").map_err(CliError::Output)?;
    }
    Ok(())
}

pub fn gc(cache: &Cache, dry_run: bool) -> Result<(), CliError> {
    let r = cache.gc(dry_run, &HashSet::new())?;
    cache.flush()?;
    let verb = if dry_run { "would remove" } else { "removed" };
    writeln!(
        out(),
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

pub fn rebuild_index(cache: &Cache) -> Result<(), CliError> {
    let n = dagfs::cache::rebuild(&cache.store, &cache.index)?;
    cache.flush()?;
    writeln!(out(), "index rebuilt from {n} entries").map_err(CliError::Output)
}

/// `dagfs explain TASK`: the key's components, and what differs from the
/// task's previous key.
pub fn explain(file: &Path, task: &str, store: Option<PathBuf>) -> Result<(), CliError> {
    let pipeline = Pipeline::load(file)?;
    let Some(target) = pipeline.dag.lookup(task) else {
        return Err(ExecError::UnknownTask(task.to_string()).into());
    };
    let plan = shell::plan(&pipeline, &[task.to_string()], Arc::new(ShellRunner))?;
    let cache = open_cache(store, CachePolicy::default())?;
    let now = now_ms();
    // Derive keys in dependency order from cached outputs, as a run would.
    let mut outputs: Vec<Option<Digest>> = vec![None; plan.nodes.len()];
    let mut blocked_by: Vec<Option<String>> = vec![None; plan.nodes.len()];
    let mut key_of: Vec<Option<Digest>> = vec![None; plan.nodes.len()];
    for (i, node) in plan.nodes.iter().enumerate() {
        let mut deps = Vec::new();
        for &d in &node.deps {
            match (outputs[d], &blocked_by[d]) {
                (Some(o), _) => deps.push((plan.nodes[d].name.clone(), o)),
                (None, b) => {
                    blocked_by[i] = Some(b.clone().unwrap_or_else(|| plan.nodes[d].name.clone()))
                }
            }
        }
        if blocked_by[i].is_some() {
            continue;
        }
        let key = KeyBuilder::build_key(&node.name, &node.manifest.task_digest, &deps);
        key_of[i] = Some(key);
        if let Lookup::Hit(m) = cache.lookup(&key, now)? {
            outputs[i] = Some(m.output);
        }
    }
    let i = plan
        .nodes
        .iter()
        .position(|n| n.name == pipeline.dag.name(target))
        .expect("target planned");
    let node = &plan.nodes[i];
    let mut o = String::new();
    let previous = cache.index.latest(&pipeline.name, task)?;
    o += &format!("task     {}/{task}\n", pipeline.name);
    let mut current = node.manifest.clone();
    match (key_of[i], &blocked_by[i]) {
        (Some(k), _) => {
            o += &format!("key      {k}\n");
            o += &format!(
                "status   {}\n",
                if outputs[i].is_some() {
                    "cached: the next run is a hit"
                } else {
                    "not cached: the next run executes it"
                }
            );
            current.deps = node
                .deps
                .iter()
                .map(|&d| (plan.nodes[d].name.clone(), outputs[d].expect("dep known")))
                .collect();
            current.deps.sort();
        }
        (None, Some(up)) => {
            o += "key      (not known yet)\n";
            o += &format!("status   not cached: upstream task `{up}` has no cached output for its current key, so it runs first and this key depends on what it produces\n");
        }
        (None, None) => unreachable!("a key or a blocker"),
    }
    o += &components(&current, key_of[i].is_some());
    // Why it differs: from the previous key (a would-be miss), or, for a
    // cached key, why it missed when it was created.
    let (against, label) = match key_of[i] {
        Some(k) if outputs[i].is_some() => {
            match cache.store.read_entry(&k)?.and_then(|e| e.previous) {
                Some(p) if p != k => (
                    Some(p),
                    "when this key was created it missed; it differed from the previous key",
                ),
                _ => (None, ""),
            }
        }
        _ => match previous {
            Some(p) if Some(p) != key_of[i] => (Some(p), "differs from the previous key"),
            _ => (None, ""),
        },
    };
    match against {
        None if previous.is_none() => {
            o += "\nno previous key: the task has never run successfully in this store\n"
        }
        None => {}
        Some(p) => {
            o += &format!("\n{label} {}:\n", p.short());
            match cache.store.read_entry(&p)? {
                Some(prev) => {
                    let d = diff(&prev.manifest, &current, key_of[i].is_some());
                    if d.is_empty() {
                        o += "  (no component differs)\n";
                    }
                    for line in d {
                        o += &format!("  {line}\n");
                    }
                }
                None => {
                    o += "  (that entry is no longer stored; its components cannot be compared)\n"
                }
            }
        }
    }
    out().write_all(o.as_bytes()).map_err(CliError::Output)
}

fn components(m: &Manifest, deps_known: bool) -> String {
    let mut o = String::from("\ncomponents:\n");
    o += &format!("  command   {}\n", m.command.trim());
    o += &format!("  cwd       {}\n", m.cwd);
    o += &format!("  version   {:?}\n", m.version);
    for (k, v) in &m.env {
        o += &format!(
            "  env       {k}={}\n",
            v.as_deref()
                .map(|v| format!("{v:?}"))
                .unwrap_or_else(|| "(unset)".into())
        );
    }
    for (p, d) in &m.inputs {
        o += &format!("  input     {p}  {}\n", d.short());
    }
    o += &format!("  task      {}\n", m.task_digest.short());
    if deps_known {
        for (n, d) in &m.deps {
            o += &format!("  dep       {n}  output {}\n", d.short());
        }
    }
    o
}

/// Component-by-component differences from `old` to `new`.
fn diff(old: &Manifest, new: &Manifest, deps_known: bool) -> Vec<String> {
    let mut d = Vec::new();
    if old.command != new.command {
        d.push(format!(
            "command changed: {:?} -> {:?}",
            old.command.trim(),
            new.command.trim()
        ));
    }
    if old.cwd != new.cwd {
        d.push(format!("cwd changed: {} -> {}", old.cwd, new.cwd));
    }
    if old.version != new.version {
        d.push(format!(
            "version changed: {:?} -> {:?}",
            old.version, new.version
        ));
    }
    let show = |v: &Option<String>| {
        v.as_deref()
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| "(unset)".into())
    };
    pairs(&old.env, &new.env, &mut d, "env", |v| show(v));
    pairs(&old.inputs, &new.inputs, &mut d, "input", |v| {
        format!("content {}", v.short())
    });
    pairs(&old.params, &new.params, &mut d, "key input", |v| v.short());
    if deps_known {
        for (name, new_d) in &new.deps {
            match old.deps.iter().find(|(n, _)| n == name) {
                Some((_, od)) if od != new_d => d.push(format!(
                    "upstream task `{name}`'s output changed: {} -> {}",
                    od.short(),
                    new_d.short()
                )),
                None => d.push(format!("dependency `{name}` added")),
                _ => {}
            }
        }
        for (name, _) in &old.deps {
            if !new.deps.iter().any(|(n, _)| n == name) {
                d.push(format!("dependency `{name}` removed"));
            }
        }
    }
    d
}

fn pairs<V: PartialEq>(
    old: &[(String, V)],
    new: &[(String, V)],
    d: &mut Vec<String>,
    what: &str,
    show: impl Fn(&V) -> String,
) {
    for (k, v) in new {
        match old.iter().find(|(ok, _)| ok == k) {
            Some((_, ov)) if ov != v => {
                d.push(format!("{what} `{k}` changed: {} -> {}", show(ov), show(v)))
            }
            None => d.push(format!("{what} `{k}` added")),
            _ => {}
        }
    }
    for (k, _) in old {
        if !new.iter().any(|(nk, _)| nk == k) {
            d.push(format!("{what} `{k}` removed"));
        }
    }
}
