//! `dagfs sync DIR`: snapshot a host directory and print its change set.

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use dagfs::index::stats::format_size;
use dagfs::sync::{self, ChangeKind, ScanOptions};

use super::{CacheSource, CliError, Ctx, Io};

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct SyncArgs {
    /// The directory to snapshot
    pub dir: PathBuf,
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
}

/// How many changed paths the text report lists.
const LIST: usize = 20;

pub fn sync(a: SyncArgs, src: &mut CacheSource, io: &mut Io, ctx: &Ctx) -> Result<(), CliError> {
    let in_daemon = matches!(src, CacheSource::Daemon(_));
    let cache = src.get(io)?;
    let opts = ScanOptions {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
        skip_unreadable: a.skip_unreadable,
        skip: Vec::new(),
        threads: 0,
    };
    if a.watch {
        if in_daemon {
            return Err(CliError::Usage(
                "dagfs sync --watch runs in its own process: stop the daemon first (daemon-owned watches are not implemented yet)".into(),
            ));
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
        sync::watch::watch(
            cache,
            &a.dir,
            a.name.as_deref(),
            &opts,
            &stop_rx,
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
    let (held, owned);
    let r: &sync::SyncReport = match &ctx.syncs {
        Some(reg) => {
            held = reg.sync(cache, &a.dir, a.name.as_deref(), &opts)?;
            &held
        }
        None => {
            owned = sync::sync_dir(cache, &a.dir, a.name.as_deref(), &opts)?;
            &owned
        }
    };
    let res = if a.json {
        print_json(io.out, r, true)
    } else {
        print_text(io.out, r)
    };
    res.map_err(CliError::Output)
}

fn print_json(
    o: &mut dyn std::io::Write,
    r: &sync::SyncReport,
    pretty: bool,
) -> std::io::Result<()> {
    let lossy = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    {
        let v = serde_json::json!({
            "name": r.name,
            "root": r.root,
            "seq": r.snapshot.seq,
            "tree": r.snapshot.tree,
            "new_snapshot": r.new_snapshot,
            "previous": r.previous,
            "files": r.scan.files,
            "bytes": r.scan.bytes,
            "hashed": r.scan.hashed,
            "stat_cache_hits": r.scan.reused,
            "retries": r.scan.retries,
            "changes": r.changes.changes.iter().map(|c| serde_json::json!({"path": lossy(&c.path), "kind": c.kind})).collect::<Vec<_>>(),
            "counts": ChangeKind::ALL.iter().map(|k| (k.as_str(), r.changes.count(*k))).collect::<std::collections::BTreeMap<_, _>>(),
            "unreadable": r.scan.unreadable,
            "special": r.scan.special,
        });
        let text = if pretty {
            serde_json::to_string_pretty(&v)
        } else {
            serde_json::to_string(&v)
        };
        writeln!(o, "{}", text.expect("json"))
    }
}

fn print_text(o: &mut dyn std::io::Write, r: &sync::SyncReport) -> std::io::Result<()> {
    let lossy = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    writeln!(
        o,
        "sync {}: snapshot {} (tree {}) of {}: {} files, {}; hashed {}, stat cache {}, {} retries",
        r.name,
        r.snapshot.seq,
        r.snapshot.tree.short(),
        r.root.display(),
        r.scan.files,
        format_size(r.scan.bytes),
        r.scan.hashed,
        r.scan.reused,
        r.scan.retries
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
