//! `dagfs sync DIR`: snapshot a host directory and print its change set.

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use dagfs::index::stats::format_size;
use dagfs::sync::{self, ChangeKind, ScanOptions};

use super::{CacheSource, CliError, Io};

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
}

/// How many changed paths the text report lists.
const LIST: usize = 20;

pub fn sync(a: SyncArgs, src: &mut CacheSource, io: &mut Io) -> Result<(), CliError> {
    let cache = src.get(io)?;
    let opts = ScanOptions {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
        skip_unreadable: a.skip_unreadable,
        skip: Vec::new(),
        threads: 0,
    };
    let r = sync::sync_dir(cache, &a.dir, a.name.as_deref(), &opts)?;
    let lossy = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    if a.json {
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
        return writeln!(
            io.out,
            "{}",
            serde_json::to_string_pretty(&v).expect("json")
        )
        .map_err(CliError::Output);
    }
    let o = &mut *io.out;
    let w = |e| CliError::Output(e);
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
    )
    .map_err(w)?;
    if r.changes.is_empty() {
        writeln!(o, "no changes").map_err(w)?;
    } else {
        let counts: Vec<String> = ChangeKind::ALL
            .iter()
            .map(|k| format!("{} {}", r.changes.count(*k), k.as_str()))
            .collect();
        writeln!(o, "changes: {}", counts.join(", ")).map_err(w)?;
        for c in r.changes.changes.iter().take(LIST) {
            writeln!(o, "  {:<13} {}", c.kind.as_str(), lossy(&c.path)).map_err(w)?;
        }
        if r.changes.changes.len() > LIST {
            writeln!(
                o,
                "  (… {} more; --json lists all)",
                r.changes.changes.len() - LIST
            )
            .map_err(w)?;
        }
    }
    if !r.scan.unreadable.is_empty() {
        writeln!(
            o,
            "left out {} unreadable: {}",
            r.scan.unreadable.len(),
            list(&r.scan.unreadable)
        )
        .map_err(w)?;
    }
    if !r.scan.special.is_empty() {
        writeln!(
            o,
            "left out {} special files (fifo, socket, device): {}",
            r.scan.special.len(),
            list(&r.scan.special)
        )
        .map_err(w)?;
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
