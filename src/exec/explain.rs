//! Explaining keys: a task's key components, and exactly which components
//! differ from its previous key (and which upstream output changed). One
//! text, printed by `dagfs explain` and served as `/why/<dag>/<task>`.

use crate::cache::{now_ms, Cache, CacheError, Lookup};
use crate::hash::Digest;
use crate::store::Manifest;

use super::key::KeyBuilder;
use super::scheduler::Plan;

/// What a task's key would be now.
#[derive(Debug, Clone)]
pub enum Current {
    /// All inputs known: the key, its manifest (deps filled) and whether it
    /// is cached.
    Known {
        key: Digest,
        manifest: Manifest,
        cached: bool,
    },
    /// An upstream task has no cached output for its current key, so this
    /// key is not known until it runs.
    Blocked {
        manifest: Manifest,
        upstream: String,
    },
}

/// Derive `task`'s current key from `plan` (which must contain it and its
/// dependencies) and the cache, as a run would, without running anything.
pub fn current(cache: &Cache, plan: &Plan, task: &str) -> Result<Current, CacheError> {
    let now = now_ms();
    let n = plan.nodes.len();
    let mut outputs: Vec<Option<Digest>> = vec![None; n];
    let mut blocked_by: Vec<Option<String>> = vec![None; n];
    let mut keys: Vec<Option<Digest>> = vec![None; n];
    // NB: plan nodes are in dependency order.
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
        keys[i] = Some(key);
        if let Lookup::Hit(m) = cache.lookup(&key, now)? {
            outputs[i] = Some(m.output);
        }
    }
    let i = plan
        .nodes
        .iter()
        .position(|nd| nd.name == task)
        .expect("task is in the plan");
    let node = &plan.nodes[i];
    let mut manifest = node.manifest.clone();
    Ok(match (keys[i], blocked_by[i].clone()) {
        (Some(key), _) => {
            manifest.deps = node
                .deps
                .iter()
                .map(|&d| (plan.nodes[d].name.clone(), outputs[d].expect("dep known")))
                .collect();
            manifest.deps.sort();
            Current::Known {
                key,
                manifest,
                cached: outputs[i].is_some(),
            }
        }
        (None, upstream) => Current::Blocked {
            manifest,
            upstream: upstream.expect("a key or a blocker"),
        },
    })
}

/// The explanation of `dag/task`'s latest key (what `/why` serves), or None
/// if the task has no latest key.
pub fn latest(cache: &Cache, dag: &str, task: &str) -> Result<Option<String>, CacheError> {
    let Some(key) = cache.index.latest(dag, task)? else {
        return Ok(None);
    };
    let Some(entry) = cache.store.read_entry(&key)? else {
        return Ok(None);
    };
    let cached = matches!(cache.lookup(&key, now_ms())?, Lookup::Hit(_));
    let current = Current::Known {
        key,
        manifest: entry.manifest,
        cached,
    };
    text(cache, dag, task, &current).map(Some)
}

/// The explanation text.
pub fn text(cache: &Cache, dag: &str, task: &str, current: &Current) -> Result<String, CacheError> {
    let previous = cache.index.latest(dag, task)?;
    let mut o = format!("task     {dag}/{task}\n");
    let (key, manifest, cached) = match current {
        Current::Known {
            key,
            manifest,
            cached,
        } => {
            o += &format!("key      {key}\n");
            o += &format!(
                "status   {}\n",
                if *cached {
                    "cached: the next run is a hit"
                } else {
                    "not cached: the next run executes it"
                }
            );
            (Some(*key), manifest, *cached)
        }
        Current::Blocked { manifest, upstream } => {
            o += "key      (not known yet)\n";
            o += &format!("status   not cached: upstream task `{upstream}` has no cached output for its current key, so it runs first and this key depends on what it produces\n");
            (None, manifest, false)
        }
    };
    o += &components(manifest, key.is_some());
    // Why it differs: from the previous key (a would-be miss), or, for a
    // cached key, why it missed when it was created.
    let (against, label) = match key {
        Some(k) if cached => match cache.store.read_entry(&k)?.and_then(|e| e.previous) {
            Some(p) if p != k => (
                Some(p),
                "when this key was created it missed; it differed from the previous key",
            ),
            _ => (None, ""),
        },
        _ => match previous {
            Some(p) if Some(p) != key => (Some(p), "differs from the previous key"),
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
                    let d = diff(&prev.manifest, manifest, key.is_some());
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
    // What the run that made the shown key (or the latest) read beyond
    // its declaration.
    let shown = match key {
        Some(k) if cached => Some(k),
        _ => previous,
    };
    if let Some(e) = shown
        .map(|k| cache.store.read_entry(&k))
        .transpose()?
        .flatten()
    {
        if let Some(f) = &e.hermetic {
            o += &format!("\nundeclared (hermetic), when {} ran:\n", e.key.short());
            let t = f.explain();
            if t.is_empty() {
                o += "  nothing: every file it opened in scope was declared, and it opened every input\n";
            } else {
                o += &t;
                for s in f.sentences(task) {
                    o += &format!("  fix: {s}\n");
                }
            }
        }
    }
    Ok(o)
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
