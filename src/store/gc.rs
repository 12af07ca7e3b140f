//! Blob sweep: remove blobs that no entry references.
//!
//! Mark: every entry on disk, its output tree (recursively), stdout and
//! stderr. Sweep: every unmarked blob older than the grace cutoff. The
//! cutoff protects blobs of ingests still in progress (they are staged in
//! `tmp/` and renamed in after `commit`, so they are younger than the start
//! of the oldest running ingest).

use std::collections::HashSet;
use std::time::SystemTime;

use super::error::Result;
use super::tree::Node;
use super::Store;
use crate::hash::Digest;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub blobs_total: u64,
    pub blobs_removed: u64,
    pub bytes_removed: u64,
    pub blobs_kept_young: u64,
}

/// Every blob digest reachable from `roots` (tree digests or plain blobs).
pub fn reachable(
    store: &Store,
    roots: impl IntoIterator<Item = Digest>,
) -> Result<HashSet<Digest>> {
    let mut seen = HashSet::new();
    let mut stack: Vec<Digest> = Vec::new();
    for r in roots {
        if seen.insert(r) {
            stack.push(r);
        }
    }
    while let Some(d) = stack.pop() {
        // Only trees have children; plain blobs fail to decode, which is
        // fine. A blob not stored names nothing; one that could not be read
        // stops the walk: what it names would be swept.
        let bytes = match store.read_blob_unchecked(&d) {
            Ok(b) => b,
            Err(super::StoreError::Missing(_)) => continue,
            Err(super::StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let Ok(tree) = super::Tree::decode(&bytes) else {
            continue;
        };
        for e in tree.entries {
            match e.node {
                Node::File { digest, .. } => {
                    seen.insert(digest);
                }
                Node::Dir { digest } => {
                    if seen.insert(digest) {
                        stack.push(digest);
                    }
                }
                Node::Symlink { .. } => {}
            }
        }
    }
    Ok(seen)
}

/// Whether every blob tree `d` names (itself included) is known to be
/// stored (false also when one could not be read: the caller stores the
/// tree again).
pub fn stored_whole(store: &Store, d: &Digest) -> bool {
    reachable(store, [*d]).is_ok_and(|all| all.iter().all(|b| store.has_blob(b)))
}

pub fn sweep(
    store: &Store,
    live: &HashSet<Digest>,
    cutoff: SystemTime,
    dry_run: bool,
) -> Result<SweepReport> {
    let mut rep = SweepReport::default();
    let mut new_generation = !dry_run;
    for (d, mtime, len) in store.blobs()? {
        rep.blobs_total += 1;
        if live.contains(&d) {
            continue;
        }
        if mtime >= cutoff {
            rep.blobs_kept_young += 1;
            continue;
        }
        if !dry_run {
            if std::mem::take(&mut new_generation) {
                store.new_blob_generation()?;
            }
            let p = store.blob_path(&d);
            store.note_change();
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(super::StoreError::Io { path: p, source: e }),
            }
        }
        rep.blobs_removed += 1;
        rep.bytes_removed += len;
    }
    // Packs: one that holds unreferenced blobs older than the cutoff is
    // rewritten with the rest (a blob held twice, by two packs, is kept
    // once).
    let mut kept: HashSet<Digest> = HashSet::new();
    for p in store.packs()?.iter() {
        let mut dead = (0u64, 0u64);
        let mut keep = HashSet::new();
        for (d, _, len) in p.rows() {
            rep.blobs_total += 1;
            if live.contains(&d) && !kept.contains(&d) {
                keep.insert(d);
            } else {
                dead.0 += 1;
                dead.1 += u64::from(len);
            }
        }
        if dead.0 == 0 {
            kept.extend(keep);
            continue;
        }
        if p.published >= cutoff {
            rep.blobs_kept_young += dead.0;
            kept.extend(p.rows().map(|r| r.0));
            continue;
        }
        if !dry_run {
            // NB: `repack` raises the blob generation before the old pack goes.
            store.repack(p, |d| keep.contains(d))?;
        }
        kept.extend(keep);
        rep.blobs_removed += dead.0;
        rep.bytes_removed += dead.1;
    }
    Ok(rep)
}
