//! `dagfs cat REF/PATH`: prints a stored file, or lists a stored directory.
//!
//! REF is `DAG/TASK` (the task's latest key), a key prefix, `NAME@N` (sync
//! snapshot N of `NAME`, or `NAME@latest`), or a stored tree's digest
//! (prefix). PATH is walked inside that tree; a symlink on the way or at the
//! end is followed as the mount would show it, as long as it stays inside
//! the tree (an absolute target, or one that climbs out, is an error naming
//! it).

use std::collections::VecDeque;

use dagfs::cache::Cache;
use dagfs::hash::{Digest, HexPrefix};
use dagfs::store::Node;

use super::{CliError, Io};

/// Symlinks followed in one walk before giving up (Linux's ELOOP limit).
const MAX_LINKS: usize = 40;

pub fn cat(cache: &Cache, spec: &str, io: &mut Io) -> Result<(), CliError> {
    let parts: Vec<&str> = spec.split('/').filter(|p| !p.is_empty()).collect();
    let (root, rest) = root_of(cache, spec, &parts)?;
    match walk(cache, spec, root, rest)? {
        Node::File { digest, .. } => {
            // NB: checked whole before a byte is printed, as the mount does
            // (a packed blob's bytes are checked as they are read).
            let mut f = cache.store.open_blob(&digest)?;
            if let dagfs::store::BlobReader::File(file) = &mut f {
                check(&digest, file, &cache.store.blob_path(&digest))?;
            }
            std::io::copy(&mut f, io.out).map_err(CliError::Output)?;
        }
        Node::Dir { digest } => {
            let o = &mut *io.out;
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
        Node::Symlink { .. } => unreachable!("walk follows every symlink"),
    }
    Ok(())
}

/// Hash `file` (blob `d`'s) to its end and rewind it: `Corrupt` unless its
/// bytes are `d`'s.
fn check(d: &Digest, file: &mut std::fs::File, path: &std::path::Path) -> Result<(), CliError> {
    use std::io::{Seek, SeekFrom};
    let io_err = |e: std::io::Error| dagfs::store::StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut h = blake3::Hasher::new();
    h.update_reader(&mut *file).map_err(io_err)?;
    let got = Digest::from_blake3(h.finalize());
    if got != *d {
        return Err(dagfs::store::StoreError::Corrupt {
            digest: *d,
            path: path.to_path_buf(),
            reason: format!("its bytes hash to {got}; `dagfs fsck --repair` drops what is damaged"),
        }
        .into());
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    Ok(())
}

/// The tree REF names (or a single file blob), and the path after REF.
fn root_of<'a>(
    cache: &Cache,
    spec: &str,
    parts: &'a [&'a str],
) -> Result<(Node, &'a [&'a str]), CliError> {
    let not_found = |what: String| CliError::NotFound(format!("{spec}: {what}"));
    let Some(first) = parts.first() else {
        return Err(usage(spec));
    };
    let dag_task = match parts {
        [dag, task, ..] => cache.index.latest(dag, task)?,
        _ => None,
    };
    if let (Some((name, n)), None) = (first.split_once('@'), dag_task) {
        let log = if n == "latest" {
            cache.store.sync_log_latest(name)?
        } else {
            cache.store.sync_log(name)?
        };
        let log = log.ok_or_else(|| not_found(format!("no synced directory named `{name}`")))?;
        let snap = if n == "latest" {
            log.latest()
        } else {
            let seq: u64 = n.parse().map_err(|_| usage(spec))?;
            log.snapshots.iter().find(|s| s.seq == seq)
        };
        let snap = snap.ok_or_else(|| {
            not_found(format!(
                "`{name}` has no snapshot {n} (it has {})",
                match (log.snapshots.first(), log.latest()) {
                    (Some(a), Some(b)) => format!("{}..{}", a.seq, b.seq),
                    _ => "none".into(),
                }
            ))
        })?;
        return Ok((Node::Dir { digest: snap.tree }, &parts[1..]));
    }
    if let (Some(prefix), None) = (HexPrefix::parse(first), dag_task) {
        let keys = cache.index.keys_with_prefix(&prefix)?;
        let key = match keys.as_slice() {
            [k] => Some(*k),
            [] => None,
            _ => return Err(ambiguous(&prefix, keys.len(), "keys")),
        };
        if let Some(key) = key {
            let meta = cache
                .index
                .get(&key)?
                .ok_or_else(|| not_found(format!("key {} is no longer cached", key.short())))?;
            return Ok((
                Node::Dir {
                    digest: meta.output,
                },
                &parts[1..],
            ));
        }
        // Not a key: a stored tree (or file) by its digest.
        let blobs = cache.store.blobs_with_prefix(prefix.as_str())?;
        return match blobs.as_slice() {
            [d] if is_tree(cache, d) => Ok((Node::Dir { digest: *d }, &parts[1..])),
            [d] if parts.len() == 1 => Ok((
                Node::File {
                    size: 0,
                    digest: *d,
                    exec: false,
                },
                &parts[1..],
            )),
            [d] => Err(not_found(format!("{} is a file, not a tree", d.short()))),
            [] => Err(not_found(format!(
                "no key, tree or blob starts with {}",
                prefix.as_str()
            ))),
            _ => Err(ambiguous(&prefix, blobs.len(), "blobs")),
        };
    }
    if parts.len() >= 2 {
        let k = dag_task
            .ok_or_else(|| not_found(format!("no stored output of {}/{}", parts[0], parts[1])))?;
        let meta = cache
            .index
            .get(&k)?
            .ok_or_else(|| not_found(format!("key {} is no longer cached", k.short())))?;
        return Ok((
            Node::Dir {
                digest: meta.output,
            },
            &parts[2..],
        ));
    }
    Err(usage(spec))
}

fn usage(spec: &str) -> CliError {
    CliError::Usage(format!(
        "{spec}: want DAG/TASK/PATH, KEYPREFIX/PATH, NAME@N/PATH (a sync snapshot) or TREEDIGEST/PATH"
    ))
}

fn ambiguous(prefix: &HexPrefix, n: usize, what: &str) -> CliError {
    CliError::Usage(format!(
        "prefix {} is ambiguous ({n} {what}); give more hex digits",
        prefix.as_str()
    ))
}

fn is_tree(cache: &Cache, d: &Digest) -> bool {
    cache.store.read_tree(d).is_ok()
}

/// Walk `path` from `root`, following symlinks inside the tree.
fn walk(cache: &Cache, spec: &str, root: Node, path: &[&str]) -> Result<Node, CliError> {
    let Node::Dir { digest } = root else {
        return Ok(root);
    };
    // The directories from the root down to where the walk is.
    let mut dirs: Vec<Digest> = vec![digest];
    let mut todo: VecDeque<Vec<u8>> = path.iter().map(|c| c.as_bytes().to_vec()).collect();
    let mut links = 0;
    let mut at_file: Option<Node> = None;
    while let Some(comp) = todo.pop_front() {
        if at_file.is_some() {
            return Err(CliError::NotFound(format!(
                "{spec}: not a directory before `{}`",
                String::from_utf8_lossy(&comp)
            )));
        }
        match comp.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if dirs.len() == 1 {
                    return Err(CliError::NotFound(format!(
                        "{spec}: `..` climbs out of the stored tree"
                    )));
                }
                dirs.pop();
                continue;
            }
            _ => {}
        }
        let tree = cache.store.read_tree(dirs.last().expect("root stays"))?;
        let name = String::from_utf8_lossy(&comp).into_owned();
        let e = tree
            .find(&comp)
            .ok_or_else(|| CliError::NotFound(format!("{spec}: `{name}` not found")))?;
        match &e.node {
            Node::Dir { digest } => dirs.push(*digest),
            f @ Node::File { .. } => at_file = Some(f.clone()),
            Node::Symlink { target } => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(CliError::NotFound(format!(
                        "{spec}: more than {MAX_LINKS} symlinks (a loop?)"
                    )));
                }
                if target.starts_with(b"/") {
                    return Err(CliError::NotFound(format!(
                        "{spec}: `{name}` is a symlink to {}, outside the stored tree",
                        String::from_utf8_lossy(target)
                    )));
                }
                for c in target.split(|&b| b == b'/').rev() {
                    todo.push_front(c.to_vec());
                }
            }
        }
    }
    Ok(at_file.unwrap_or(Node::Dir {
        digest: *dirs.last().expect("root stays"),
    }))
}
