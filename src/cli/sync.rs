//! `dagfs sync DIR`: snapshot a host directory and print its change set.

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use dagfs::cache::Cache;
use dagfs::index::units::format_size;
use dagfs::sync::changes::ChangesJson;
use dagfs::sync::{self, ChangeKind, ScanOptions};

use dagfs::daemon::watches::WatchError;

use super::{CacheSource, CliError, Ctx, Io};

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct SyncArgs {
    /// The directory to snapshot
    #[arg(required_unless_present_any = ["list", "stop", "log"])]
    pub dir: Option<PathBuf>,
    /// Record it under this name [default: the directory's base name]
    #[arg(long)]
    pub name: Option<String>,
    /// Print the whole report, every changed path included, as JSON
    #[arg(long)]
    pub json: bool,
    /// Leave out paths matching GLOB (repeatable; also .gitignore, .dagfsignore)
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Only take paths matching GLOB (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave unreadable files out (listed) instead of failing
    #[arg(long)]
    pub skip_unreadable: bool,
    /// Keep running: take a new snapshot whenever the directory changes
    /// (Ctrl-C stops); with --json, one JSON document per line
    #[arg(long)]
    pub watch: bool,
    /// Check every file's stat even when the daemon watches the directory
    /// (by default its watch answers, as watchman's `since` does; writes
    /// inotify cannot see, to a shared mmap or through a hard link from
    /// outside, are found only by a scan)
    #[arg(long, conflicts_with = "watch")]
    #[serde(default)]
    pub rescan: bool,
    /// List synced directories (and the daemon's watches) instead
    #[arg(long, conflicts_with_all = ["dir", "watch", "stop"])]
    pub list: bool,
    /// Stop the daemon's watch of NAME
    #[arg(long, value_name = "NAME", conflicts_with_all = ["dir", "watch"])]
    pub stop: Option<String>,
    /// Show what each snapshot of NAME changed (NAME@N: snapshot N only,
    /// every changed path)
    #[arg(long, value_name = "NAME[@N]", conflicts_with_all = ["dir", "watch", "stop", "list"])]
    pub log: Option<String>,
}

/// How many changed paths the text report lists.
const LIST: usize = 20;

pub fn sync(a: SyncArgs, src: &mut CacheSource, io: &mut Io, ctx: &Ctx) -> Result<(), CliError> {
    if a.list {
        return list_syncs(src, io, ctx, a.json);
    }
    if let Some(spec) = &a.log {
        return change_log(src.get(io)?, spec, a.json, io);
    }
    if let Some(name) = &a.stop {
        let Some(w) = &ctx.watches else {
            return Err(CliError::NotFound(format!(
                "no daemon is running, so no watch `{name}` to stop (a `dagfs sync --watch` without a daemon stops with Ctrl-C)"
            )));
        };
        let info = w.stop(name).map_err(watch_error)?;
        writeln!(
            io.out,
            "stopped watching {} ({}): {} snapshots taken, latest {}@{}",
            info.name,
            info.root.display(),
            info.snapshots,
            info.name,
            info.latest_seq
        )
        .map_err(CliError::Output)?;
        return Ok(());
    }
    let dir = a
        .dir
        .clone()
        .expect("clap: dir required without --list/--stop");
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(CliError::Usage(format!(
                "{}: not a directory (dagfs sync snapshots directories)",
                dir.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::NotFound(format!(
                "{}: no such directory",
                dir.display()
            )))
        }
        // Anything else (permissions, …) is reported by the scan itself.
        Err(_) => {}
    }
    let opts = ScanOptions {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
        skip_unreadable: a.skip_unreadable,
        ..ScanOptions::default()
    };
    // A one-shot sync in this process: validate the stat-cache copy while
    // the cache opens (see `sync::prevalidate`).
    let pre = match &*src {
        CacheSource::Embedded {
            dir: store,
            cache: None,
        } if !a.watch && ctx.syncs.is_none() => sync::prevalidate(store, &dir, &opts),
        _ => None,
    };
    let cache = src.get(io)?;
    if a.watch {
        if let Some(w) = &ctx.watches {
            // The daemon owns the watch: report the first snapshot and return.
            let r = w
                .start(&dir, a.name.as_deref(), opts)
                .map_err(watch_error)?;
            if a.json {
                print_json(io.out, &r, true)
            } else {
                print_text(io.out, &r).and_then(|_| {
                    writeln!(
                        io.out,
                        "watching {} as `{}` in the daemon; `dagfs sync --list` shows it, `dagfs sync --stop {}` stops it",
                        r.root.display(),
                        r.name,
                        r.name
                    )
                })
            }
            .map_err(CliError::Output)?;
            if let Some(note) = ignored_lockfile(cache, &r) {
                let _ = writeln!(io.err, "dagfs: note: {note}");
            }
            return Ok(());
        }
        let sigs = super::block_stop_signals();
        let (stop_tx, stop_rx) = crossbeam::channel::bounded::<()>(1);
        std::thread::spawn(move || {
            if sigs.wait().is_ok() {
                let _ = stop_tx.send(());
            }
        });
        let json = a.json;
        let out = &mut *io.out;
        let mut failed = None;
        let queries = crossbeam::channel::never();
        sync::watch::watch(
            cache,
            &dir,
            a.name.as_deref(),
            &opts,
            &stop_rx,
            &queries,
            &mut |r| {
                let res = if json {
                    print_json(out, r, false)
                } else {
                    print_text(out, r)
                };
                let res = res.and_then(|_| out.flush());
                match res {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            },
        )?;
        return failed.map_or(Ok(()), |e| Err(CliError::Output(e)));
    }
    let r = one_shot(&a, cache, &dir, &opts, pre, ctx)?;
    let res = if a.json {
        print_json(io.out, &r, true)
    } else {
        print_text(io.out, &r)
    };
    res.map_err(CliError::Output)?;
    if let Some(note) = ignored_lockfile(cache, &r) {
        let _ = writeln!(io.err, "dagfs: note: {note}");
    }
    Ok(())
}

/// A one-shot sync's report: its own, or one shared with concurrent syncs
/// in the daemon (held until printed).
enum OneShot {
    Own(Box<sync::SyncReport>),
    Shared(sync::shared::Held),
}

impl std::ops::Deref for OneShot {
    type Target = sync::SyncReport;
    fn deref(&self) -> &sync::SyncReport {
        match self {
            OneShot::Own(r) => r,
            OneShot::Shared(h) => h,
        }
    }
}

/// A one-shot sync: answered by the daemon's watch of `dir` if it has one
/// (and `--rescan` was not asked for), else a scan, shared with concurrent
/// syncs of the same directory in a daemon.
fn one_shot(
    a: &SyncArgs,
    cache: &Cache,
    dir: &std::path::Path,
    opts: &ScanOptions,
    pre: Option<sync::Prevalidated>,
    ctx: &Ctx,
) -> Result<OneShot, CliError> {
    let answer = match &ctx.watches {
        Some(w) if !a.rescan => w.answer(dir, a.name.as_deref(), opts),
        _ => None,
    };
    Ok(match (answer, &ctx.syncs) {
        (Some(r), _) => OneShot::Own(Box::new(r)),
        (None, Some(reg)) => OneShot::Shared(reg.sync(cache, dir, a.name.as_deref(), opts)?),
        (None, None) => OneShot::Own(Box::new(sync::sync_dir_prevalidated(
            cache,
            dir,
            a.name.as_deref(),
            opts,
            pre,
        )?)),
    })
}

/// A crate (or workspace) whose `Cargo.lock` an ignore file left out of the
/// snapshot cannot be built from it read-only: cargo then writes a new one
/// (`failed to write …/Cargo.lock: Read-only file system`). Say so, with
/// the way to keep it. Only the synced root is checked (one stat).
fn ignored_lockfile(cache: &Cache, r: &sync::SyncReport) -> Option<String> {
    let lock = r.root.join("Cargo.lock");
    if !lock.is_file() {
        return None;
    }
    let tree = cache.store.read_tree(&r.snapshot.tree).ok()?;
    if tree.find(b"Cargo.toml").is_none() || tree.find(b"Cargo.lock").is_some() {
        return None;
    }
    Some(format!(
        "{} is ignored (.gitignore, .dagfsignore or --exclude), so a cargo build from this snapshot must write one and fails on the read-only mount; a line `!Cargo.lock` in {} keeps it",
        lock.display(),
        r.root.join(".dagfsignore").display()
    ))
}

fn watch_error(e: WatchError) -> CliError {
    match e {
        WatchError::Sync(e) => CliError::Sync(e),
        WatchError::NotWatched(_) => CliError::NotFound(e.to_string()),
        WatchError::AlreadyWatched { .. } => CliError::Usage(e.to_string()),
        WatchError::Spawn(e) => CliError::Output(e),
    }
}

/// `dagfs sync --log NAME[@N]`: each snapshot's change set against the
/// one before it (the first: everything added), computed from the
/// recorded trees (equal subtrees are skipped, so the cost is what
/// changed). With `@N` only that snapshot, every changed path listed.
fn change_log(cache: &Cache, spec: &str, json: bool, io: &mut Io) -> Result<(), CliError> {
    let (name, only) = match spec.split_once('@') {
        Some((n, seq)) => (
            n,
            Some(seq.parse::<u64>().map_err(|_| {
                CliError::Usage(format!("--log {spec}: want NAME or NAME@N (N a number)"))
            })?),
        ),
        None => (spec, None),
    };
    let log = cache.store.sync_log(name)?.ok_or_else(|| {
        CliError::NotFound(format!(
            "no synced directory named `{name}` (`dagfs sync --list` shows them)"
        ))
    })?;
    if let Some(n) = only {
        if !log.snapshots.iter().any(|s| s.seq == n) {
            return Err(CliError::NotFound(format!(
                "`{name}` has no snapshot {n} (`dagfs sync --log {name}` lists them)"
            )));
        }
    }
    let lossy = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let mut docs = Vec::new();
    let mut text = String::new();
    let mut previous = None;
    for snap in &log.snapshots {
        let prev = previous.replace(snap.tree);
        if only.is_some_and(|n| n != snap.seq) {
            continue;
        }
        let changes = dagfs::sync::changes::diff(&cache.store, prev.as_ref(), &snap.tree)?;
        if json {
            docs.push(serde_json::json!({
                "name": log.name,
                "seq": snap.seq,
                "tree": snap.tree,
                "previous": prev,
                "created_ms": snap.created_ms,
                "files": snap.files,
                "bytes": snap.bytes,
                "changes": ChangesJson(&changes.changes),
                "counts": ChangeKind::ALL.iter().map(|k| (k.as_str(), changes.count(*k))).collect::<std::collections::BTreeMap<_, _>>(),
            }));
            continue;
        }
        let counts: Vec<String> = ChangeKind::ALL
            .iter()
            .map(|k| format!("{} {}", changes.count(*k), k.as_str()))
            .collect();
        text += &format!(
            "{}@{}  {} ago  {} files, {}, tree {}  changes: {}\n",
            log.name,
            snap.seq,
            super::inspect::age(snap.created_ms),
            snap.files,
            format_size(snap.bytes),
            snap.tree.short(),
            counts.join(", ")
        );
        let limit = if only.is_some() { usize::MAX } else { LIST };
        for c in changes.changes.iter().take(limit) {
            text += &format!("  {:<13} {}\n", c.kind.as_str(), lossy(&c.path));
        }
        if changes.changes.len() > limit {
            text += &format!(
                "  … and {} more (`dagfs sync --log {}@{}` lists them all)\n",
                changes.changes.len() - limit,
                log.name,
                snap.seq
            );
        }
    }
    if json {
        text = serde_json::to_string_pretty(&docs).expect("json") + "\n";
    }
    io.out.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// `dagfs sync --list`: every recorded sync, and whether the daemon
/// watches it.
fn list_syncs(src: &mut CacheSource, io: &mut Io, ctx: &Ctx, json: bool) -> Result<(), CliError> {
    let logs = src.get(io)?.store.sync_logs()?;
    let watches = ctx.watches.as_ref().map(|w| w.list()).unwrap_or_default();
    let watch_of = |name: &str| watches.iter().find(|w| w.name == name);
    if json {
        let v: Vec<_> = logs
            .iter()
            .map(|l| {
                let w = watch_of(&l.name);
                serde_json::json!({
                    "name": l.name,
                    "root": l.root,
                    "snapshots": l.snapshots.len(),
                    "latest": l.latest().map(|s| serde_json::json!({"seq": s.seq, "tree": s.tree, "files": s.files, "bytes": s.bytes, "created_ms": s.created_ms})),
                    "watched": w.is_some_and(|w| w.error.is_none()),
                    "watch_error": w.and_then(|w| w.error.clone()),
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&v).expect("json");
        return writeln!(io.out, "{text}").map_err(CliError::Output);
    }
    let mut o = String::new();
    if logs.is_empty() {
        o.push_str("no synced directories\n");
    }
    for l in &logs {
        let latest = l.latest().map_or("no snapshot".to_string(), |s| {
            format!(
                "{}@{}: {} files, {}, tree {}",
                l.name,
                s.seq,
                s.files,
                format_size(s.bytes),
                s.tree.short()
            )
        });
        let state = match watch_of(&l.name) {
            Some(w) if w.error.is_none() => format!("watched ({} snapshots)", w.snapshots),
            Some(w) => format!("watch FAILED: {}", w.error.as_deref().unwrap_or_default()),
            None => "not watched".to_string(),
        };
        o.push_str(&format!(
            "{:<16} {:<40} {latest}  [{state}]\n",
            l.name, l.root
        ));
    }
    if ctx.watches.is_none() {
        o.push_str("(no daemon is running: watches run in the daemon, or in the foreground with `dagfs sync --watch`)\n");
    }
    io.out.write_all(o.as_bytes()).map_err(CliError::Output)
}

/// A sync's report as JSON, keys in order (as `serde_json::Value` sorts
/// them).
#[derive(Serialize)]
struct ReportJson<'a> {
    bytes: u64,
    changes: ChangesJson<'a>,
    counts: std::collections::BTreeMap<&'static str, usize>,
    files: u64,
    from_watch: bool,
    hashed: u64,
    name: &'a str,
    new_snapshot: bool,
    notes: &'a [String],
    previous: Option<dagfs::hash::Digest>,
    retries: u64,
    root: Lossy<'a>,
    seq: u64,
    special: LossyList<'a>,
    stat_cache_hits: u64,
    tree: dagfs::hash::Digest,
    unreadable: LossyList<'a>,
}

/// A path as JSON, lossily as UTF-8 (as change paths are): a name that is
/// not UTF-8 must not fail the report of a snapshot already recorded.
struct Lossy<'a>(&'a std::path::Path);

impl Serialize for Lossy<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string_lossy())
    }
}

struct LossyList<'a>(&'a [PathBuf]);

impl Serialize for LossyList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|p| Lossy(p)))
    }
}

fn print_json(
    o: &mut dyn std::io::Write,
    r: &sync::SyncReport,
    pretty: bool,
) -> std::io::Result<()> {
    let v = ReportJson {
        bytes: r.scan.bytes,
        changes: ChangesJson(&r.changes.changes),
        counts: ChangeKind::ALL
            .iter()
            .map(|k| (k.as_str(), r.changes.count(*k)))
            .collect(),
        files: r.scan.files,
        from_watch: r.from_watch,
        hashed: r.scan.hashed,
        name: &r.name,
        new_snapshot: r.new_snapshot,
        notes: &r.notes,
        previous: r.previous,
        retries: r.scan.retries,
        root: Lossy(&r.root),
        seq: r.snapshot.seq,
        special: LossyList(&r.scan.special),
        stat_cache_hits: r.scan.reused,
        tree: r.snapshot.tree,
        unreadable: LossyList(&r.scan.unreadable),
    };
    // NB: written whole, then once: a reader of a pipe sees one document.
    let text = if pretty {
        serde_json::to_vec_pretty(&v)
    } else {
        serde_json::to_vec(&v)
    };
    let mut text = text.map_err(std::io::Error::other)?;
    text.push(b'\n');
    o.write_all(&text)
}

fn print_text(o: &mut dyn std::io::Write, r: &sync::SyncReport) -> std::io::Result<()> {
    let lossy = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    for n in &r.notes {
        writeln!(o, "dagfs: {n}")?;
    }
    writeln!(
        o,
        "sync {}: snapshot {} (tree {}) of {}: {} files, {}; hashed {}, stat cache {}, {} retries{}",
        r.name,
        r.snapshot.seq,
        r.snapshot.tree.short(),
        r.root.display(),
        r.scan.files,
        format_size(r.scan.bytes),
        r.scan.hashed,
        r.scan.reused,
        r.scan.retries,
        if r.from_watch {
            " (answered by the daemon's watch)"
        } else {
            ""
        }
    )?;
    if r.changes.is_empty() {
        writeln!(o, "no changes")?;
    } else {
        let counts: Vec<String> = ChangeKind::ALL
            .iter()
            .map(|k| format!("{} {}", r.changes.count(*k), k.as_str()))
            .collect();
        writeln!(o, "changes: {}", counts.join(", "))?;
        for c in r.changes.changes.iter().take(LIST) {
            writeln!(o, "  {:<13} {}", c.kind.as_str(), lossy(&c.path))?;
        }
        if r.changes.changes.len() > LIST {
            writeln!(
                o,
                "  (… {} more; --json lists all)",
                r.changes.changes.len() - LIST
            )?;
        }
    }
    if !r.scan.unreadable.is_empty() {
        writeln!(
            o,
            "left out {} unreadable: {}",
            r.scan.unreadable.len(),
            list(&r.scan.unreadable)
        )?;
    }
    if !r.scan.special.is_empty() {
        writeln!(
            o,
            "left out {} special files (fifo, socket, device): {}",
            r.scan.special.len(),
            list(&r.scan.special)
        )?;
    }
    Ok(())
}

fn list(p: &[PathBuf]) -> String {
    let mut s: Vec<String> = p.iter().take(5).map(|p| p.display().to_string()).collect();
    if p.len() > 5 {
        s.push(format!("… {} more", p.len() - 5));
    }
    s.join(", ")
}
