//! Inspection and maintenance commands: stats, ls, explain, config, gc,
//! fsck (`cat` has its own file).

use std::collections::HashSet;

use std::path::Path;
use std::sync::Arc;

use dagfs::cache::{now_ms, Cache};
use dagfs::exec::runner::ShellRunner;
use dagfs::exec::{explain, shell, ExecError, Pipeline};
use dagfs::index::units::{format_duration, format_size, parse_duration, parse_size};
use dagfs::index::CachePolicy;
use dagfs::store::fsck::{Phase, Progress, Report};
use dagfs::store::Manifest;
use dagfs::KeyBuilder;

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

pub(super) fn age(ms: u64) -> String {
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
    cache.store_policy(p)?;
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

/// `dagfs fsck [--repair] [--json]`: the report (one line per problem and a
/// summary, or JSON), a progress line on a terminal, and the exit bitmask.
pub fn fsck(
    cache: &Cache,
    repair: bool,
    json: bool,
    jobs: Option<usize>,
    io: &mut Io,
) -> Result<(), CliError> {
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 64);
    let progress = Progress::default();
    let rederive = |m: &Manifest| (KeyBuilder::task_digest(m), KeyBuilder::key_of(m));
    let tty = io.stderr_tty;
    let result = std::thread::scope(|s| {
        let h = s.spawn(|| cache.fsck(repair, jobs, &rederive, &progress));
        let mut shown = false;
        while tty && !h.is_finished() {
            let _ = write!(io.err, "\r\x1b[Kfsck: {}", progress_line(&progress));
            let _ = io.err.flush();
            shown = true;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if shown {
            let _ = write!(io.err, "\r\x1b[K");
            let _ = io.err.flush();
        }
        h.join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    let report = result?;
    let mask = report.mask();
    if json {
        let mut v = serde_json::to_value(&report).expect("report serializes");
        v["exit_code"] = serde_json::json!(if mask == 0 {
            0
        } else {
            super::FSCK_BASE | i32::from(mask)
        });
        writeln!(
            io.out,
            "{}",
            serde_json::to_string_pretty(&v).expect("json")
        )
        .map_err(CliError::Output)?;
    } else {
        io.out
            .write_all(report_text(&report).as_bytes())
            .map_err(CliError::Output)?;
    }
    if mask == 0 {
        Ok(())
    } else {
        Err(CliError::Fsck(mask))
    }
}

fn progress_line(p: &Progress) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    match p.phase() {
        Phase::Listing => "listing blobs".into(),
        Phase::Hashing => format!(
            "hashing blobs {}/{} ({})",
            p.blobs_done.load(Relaxed),
            p.blobs_total.load(Relaxed),
            format_size(p.bytes_done.load(Relaxed))
        ),
        Phase::Waiting => "waiting for running pipelines to finish".into(),
        Phase::Entries => format!(
            "checking entries {}/{}",
            p.entries_done.load(Relaxed),
            p.entries_total.load(Relaxed)
        ),
        Phase::Index => "checking the index".into(),
        Phase::Repair => "repairing".into(),
        Phase::Done => "done".into(),
    }
}

/// One line per problem, then a summary.
fn report_text(r: &Report) -> String {
    let mut o = String::new();
    for p in &r.problems {
        let task = p
            .task
            .as_deref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default();
        let action = p
            .action
            .as_deref()
            .map(|a| format!(" [{a}]"))
            .unwrap_or_default();
        let unfixable = if p.repairable {
            ""
        } else {
            " [not repairable]"
        };
        o += &format!(
            "{:<18} {}{task}: {}{action}{unfixable}\n",
            p.kind.as_str(),
            p.subject,
            p.detail
        );
    }
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for p in &r.problems {
        match kinds.iter_mut().find(|(k, _)| *k == p.kind.as_str()) {
            Some((_, n)) => *n += 1,
            None => kinds.push((p.kind.as_str(), 1)),
        }
    }
    let found = if r.problems.is_empty() {
        "no problems".to_string()
    } else {
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!("{} problems ({})", r.problems.len(), list.join(", "))
    };
    o += &format!(
        "fsck: {} blobs ({}) hashed, {} entries, {} sync snapshots in {:.2}s: {found}\n",
        r.blobs,
        format_size(r.bytes_hashed),
        r.entries,
        r.sync_snapshots,
        r.elapsed_ms as f64 / 1000.0
    );
    if r.orphan_blobs > 0 {
        o += &format!(
            "fsck: {} unreferenced blobs ({}): not a problem; `dagfs gc` removes them\n",
            r.orphan_blobs,
            format_size(r.orphan_bytes)
        );
    }
    if r.unindexed_entries > 0 {
        let done = if r.repair {
            format!("; indexed {}", r.indexed)
        } else {
            "; `dagfs fsck --repair` indexes them".into()
        };
        o += &format!(
            "fsck: {} entries not in the index (a run stopped before its index flush): not a problem{done}\n",
            r.unindexed_entries
        );
    }
    if r.repair {
        let fixed = r.problems.iter().filter(|p| p.repaired).count();
        o += &format!(
            "fsck: repaired {fixed} of {} problems: {} files quarantined (in quarantine/), {} entries dropped (they re-run on the next `dagfs run`)\n",
            r.problems.len(),
            r.quarantined,
            r.dropped_entries.len()
        );
    } else if r.problems.iter().any(|p| p.repairable) {
        o += "fsck: `dagfs fsck --repair` fixes what is marked repairable\n";
    }
    o
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
    )
    .map_err(|e| match (&e, cache.store.read_only()) {
        // A changed input's snapshot must be stored to key it: that
        // failed, writing inside the store.
        (ExecError::Input { reason, .. }, Some(_))
            if reason.contains(&*cache.store.root().to_string_lossy()) =>
        {
            CliError::ReadOnly(format!(
            "{e}: an input of `{task}` changed since the store was written, and explaining it would store the input's new snapshot"
        ))
        }
        _ => e.into(),
    })?;

    let current = explain::current(cache, &plan, task)?;
    let text = explain::text(cache, &pipeline.name, task, &current)?;
    io.out.write_all(text.as_bytes()).map_err(CliError::Output)
}
