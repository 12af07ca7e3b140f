//! Staged blobs this process may read before they are committed.
//!
//! A run commits its outputs in groups (one `syncfs` per group, see
//! `exec::scheduler::commit`). A task whose dependency's output is still
//! staged used to force a commit of its own before it could start (its
//! inputs are read from the store), so a chain of tasks paid a full
//! durable commit, several fsyncs, per link. Instead the run exposes what
//! it staged (`Store::expose_staged`), and the store's readers
//! (`open_blob`, `copy_blob`, so `read_tree` and materializing) find a blob
//! that is in neither `blobs/` nor a pack in its staged file. Nothing about
//! durability changes: an entry record is still published only after its
//! blobs are committed, and a reader checks staged bytes against their
//! digest as it does committed ones.
//!
//! The commit that moves staged blobs into `blobs/` and `packs/` forgets
//! them only once it is done (`Store::commit_blobs`), so a reader that
//! misses everywhere while a blob is still listed here raced that commit
//! and looks again (`Store::open_blob`): it never reports a blob missing
//! that is being committed.
//!
//! May call: `hash` (digests); nothing else outside `store`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;

use crate::hash::Digest;

/// Where a staged blob's bytes are.
#[derive(Debug, Clone)]
pub(super) enum At {
    /// Its own file.
    File(PathBuf),
    /// A record of a pack being written (flushed).
    Packed {
        path: PathBuf,
        offset: u64,
        len: u32,
    },
}

#[derive(Debug, Default)]
pub(super) struct Pending {
    map: RwLock<HashMap<Digest, At>>,
    /// Whether anything is listed (readers skip the lock when not).
    any: std::sync::atomic::AtomicBool,
}

impl Pending {
    pub(super) fn add(&self, items: impl IntoIterator<Item = (Digest, At)>) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        m.extend(items);
        self.any
            .store(!m.is_empty(), std::sync::atomic::Ordering::Release);
    }

    pub(super) fn forget(&self, digests: &[Digest]) {
        if digests.is_empty() || !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        for d in digests {
            m.remove(d);
        }
        self.any
            .store(!m.is_empty(), std::sync::atomic::Ordering::Release);
    }

    pub(super) fn get(&self, d: &Digest) -> Option<At> {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(d)
            .cloned()
    }
}
