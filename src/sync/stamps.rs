//! Stamps: when each path of a synced directory last took its content, the
//! mtime the mount shows under `/syncs/<name>` (see `fs::ops`).
//!
//! A build tool that reads through the mount (make, ninja, cargo) rebuilds
//! when a prerequisite's mtime is newer than its target. So the mtime of a
//! path must move forward, past any build that read the old content,
//! whenever its content changes, and never otherwise (also not across
//! remounts). The host's mtimes cannot promise the first: a build that reads
//! the mount between an edit and its sync stamps its output later than the
//! edit, from the old content. The time of the snapshot that first showed
//! the content can: nobody read it through the mount before then.
//!
//! Records live beside the index, one file a name (`index/stamps.rs`):
//! `path → digest ‖ since`.
//! When a history starts (its first snapshot) every old record is dropped
//! and a base record (path `MARK`) written: a path without a record has kept
//! its content since then. Each later snapshot records every path whose
//! node differs from the previous snapshot's: changed files and symlinks,
//! and every directory on the way to them (a directory's digest is its
//! tree's). A path's content is its file digest, its tree digest, or the
//! digest of its link target.
//!
//! NB: the records of a snapshot are durable (`set_stamps` syncs them)
//! before its sync log names it, so a crash leaves records for a snapshot
//! that never became visible (they name other digests than the visible
//! one, which then falls back to its snapshot's time), never a visible
//! change without its record. Without the base record (a lost stamps
//! file) the fallback is the snapshot's own time, which is never earlier
//! than a change it shows.
//!
//! Owns: the stamp records' meaning. May call: `store` (trees), `index`.

use crate::hash::Digest;
use crate::index::Index;
use crate::store::{Node, Store, StoreError};

/// The path of the base record: no real path contains a NUL byte.
pub const MARK: &[u8] = b"\0";

/// The digest a path's content is stamped under (`Node::content_digest`).
pub fn node_digest(n: &Node) -> Digest {
    n.content_digest()
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// (path, digest) of every node of `new` that is not the same at its path
/// in `old`, the root (path "") included when they differ.
pub fn changed(
    store: &Store,
    old: &Digest,
    new: &Digest,
) -> Result<Vec<(Vec<u8>, Digest)>, StoreError> {
    let mut out = Vec::new();
    // (old node digest at the path, if a directory there; new tree; path)
    let mut stack: Vec<(Option<Digest>, Digest, Vec<u8>)> = vec![(Some(*old), *new, Vec::new())];
    while let Some((a, b, path)) = stack.pop() {
        if a == Some(b) {
            continue;
        }
        out.push((path.clone(), b));
        let old_tree = match a {
            Some(a) => Some(store.read_tree(&a)?),
            None => None,
        };
        for e in store.read_tree(&b)?.entries {
            let was = old_tree
                .as_ref()
                .and_then(|t| t.find(&e.name))
                .map(|x| &x.node);
            let p = join(&path, &e.name);
            match (&e.node, was) {
                (Node::Dir { digest }, Some(Node::Dir { digest: old })) => {
                    stack.push((Some(*old), *digest, p))
                }
                (Node::Dir { digest }, _) => stack.push((None, *digest, p)),
                (n, Some(w)) if node_digest(n) == node_digest(w) => {}
                (n, _) => out.push((p, node_digest(n))),
            }
        }
    }
    Ok(out)
}

/// Record snapshot `tree` of sync `name`, taken at `at_ms`, following
/// `previous` (None: a new history), durably (see the module's NB), or,
/// if `barrier_follows`, made durable by the caller's `Store::barrier`.
pub fn record(
    store: &Store,
    index: &Index,
    name: &str,
    (previous, tree): (Option<&Digest>, &Digest),
    at_ms: u64,
    barrier_follows: bool,
) -> Result<(), super::SyncError> {
    match previous {
        None => {
            index.clear_stamps(name)?;
            index.set_stamps(name, at_ms, [(MARK, *tree), (&b""[..], *tree)])?;
        }
        Some(p) => {
            let c = changed(store, p, tree)?;
            let records = c.iter().map(|(p, d)| (p.as_slice(), *d));
            if barrier_follows {
                index.set_stamps_unsynced(name, at_ms, records)?;
            } else {
                index.set_stamps(name, at_ms, records)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{sync_dir, ScanOptions};
    use crate::Cache;

    #[test]
    fn a_path_keeps_its_stamp_until_its_content_changes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("src");
        std::fs::create_dir_all(p.join("a/b")).unwrap();
        std::fs::create_dir_all(p.join("c")).unwrap();
        std::fs::write(p.join("a/b/x"), "1").unwrap();
        std::fs::write(p.join("a/y"), "2").unwrap();
        std::fs::write(p.join("c/z"), "3").unwrap();
        let cache = Cache::open(&t.path().join("store"), Default::default()).unwrap();
        let o = ScanOptions::default();
        let s1 = sync_dir(&cache, &p, Some("s"), &o).unwrap().snapshot;
        let ix = &cache.index;
        assert_eq!(ix.stamp("s", MARK).unwrap(), Some((s1.tree, s1.created_ms)));
        assert_eq!(
            ix.stamp("s", b"a/y").unwrap(),
            None,
            "unchanged since the base"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(p.join("a/b/x"), "changed").unwrap();
        std::fs::write(p.join("c/new"), "4").unwrap();
        let s2 = sync_dir(&cache, &p, Some("s"), &o).unwrap().snapshot;
        assert!(s2.created_ms > s1.created_ms);
        let x = ix.stamp("s", b"a/b/x").unwrap().unwrap();
        assert_eq!(x, (Digest::of(b"changed"), s2.created_ms));
        assert_eq!(
            ix.stamp("s", b"").unwrap().unwrap(),
            (s2.tree, s2.created_ms)
        );
        for d in ["a", "a/b", "c", "c/new"] {
            assert_eq!(
                ix.stamp("s", d.as_bytes()).unwrap().unwrap().1,
                s2.created_ms,
                "{d}"
            );
        }
        assert_eq!(ix.stamp("s", b"a/y").unwrap(), None);
        assert_eq!(ix.stamp("s", b"c/z").unwrap(), None);
        assert!(changed(&cache.store, &s2.tree, &s2.tree)
            .unwrap()
            .is_empty());
        // A new history (another name for the same directory) starts afresh.
        let s3 = sync_dir(&cache, &p, Some("t"), &o).unwrap().snapshot;
        assert_eq!(ix.stamp("t", b"a/b/x").unwrap(), None);
        assert_eq!(ix.stamp("t", MARK).unwrap().unwrap().1, s3.created_ms);
    }
}
