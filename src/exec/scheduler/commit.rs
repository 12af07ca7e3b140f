//! Group commit: how a run makes its outputs durable.
//!
//! Workers stage outputs; the coordinator commits their blobs in batches
//! (one syncfs per batch), early only when a reader cannot wait (a task
//! about to start reads an uncommitted output it cannot read staged, see
//! `store::unsynced`, or another run joined the key), and publishes the entry records of committed blobs with one more
//! syncfs (see `Store::commit_blobs`, `Store::publish_entries`). Nothing is
//! reported done before the run's `finish` and the index flush after it.
//!
//! May call: `store`, `index` (through `cache`). Guarantees: an entry
//! record is published only after its blobs are durable; a record the
//! index no longer names (evicted while pending) is dropped, not
//! resurrected.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::exec::error::Result;
use crate::hash::Digest;
use crate::store::unsynced::Unsynced;
use crate::store::Staged;

/// A batch is committed and published once it holds this many blobs and
/// records together...
const MAX_BATCH: usize = 512;
/// ... or once its oldest member has waited this long.
const MAX_WAIT: Duration = Duration::from_millis(500);

pub(super) struct GroupCommit<'a> {
    cache: &'a Cache,
    /// Staged blobs, not yet durable.
    batch: Staged,
    /// Plan nodes whose output blobs are in `batch`.
    uncommitted: HashSet<usize>,
    /// Those of them whose blobs `unsynced` holds: this run's tasks can
    /// read them before the commit.
    readable: HashSet<usize>,
    unsynced: Arc<Unsynced>,
    /// Staged entry records whose blobs are in `batch`: they join
    /// `pending` only once it is committed, so a commit that fails
    /// publishes none of them (the run's `Unpublished` guard then removes
    /// their index rows).
    waiting: Vec<(PathBuf, Digest)>,
    /// Staged entry records of committed blobs, published next.
    pending: Vec<(PathBuf, Digest)>,
    /// When the oldest member of `batch`/`waiting`/`pending` arrived.
    /// NB: checked only when a task finishes (`maybe_flush`), so a
    /// dependency can stay staged while a long dependent runs.
    since: Instant,
}

impl<'a> GroupCommit<'a> {
    pub(super) fn new(cache: &'a Cache, unsynced: Arc<Unsynced>) -> Self {
        GroupCommit {
            cache,
            batch: Staged::default(),
            uncommitted: HashSet::new(),
            readable: HashSet::new(),
            unsynced,
            waiting: Vec::new(),
            pending: Vec::new(),
            since: Instant::now(),
        }
    }

    /// Take node `idx`'s staged output. Its record is published only when
    /// `keep` (the index kept the entry); NB: its blobs are committed
    /// either way: this run's dependents read them. `readers`: some task
    /// of this run will read them, so they are made readable uncommitted.
    pub(super) fn add(&mut self, idx: usize, mut staged: Staged, keep: bool, readers: bool) {
        if self.batch.is_empty() && self.waiting.is_empty() && self.pending.is_empty() {
            self.since = Instant::now();
        }
        if readers {
            // NB: a reader of a node not made readable (a pack spilled to
            // its file: past `pack::MIN_PACK` small blobs or 1 MiB) has the
            // batch committed first (`must_commit_for`).
            if let Some(blobs) = staged.readable() {
                self.unsynced.add(blobs);
                self.readable.insert(idx);
            }
        }
        let records = staged.take_entries();
        if keep {
            self.waiting.extend(records);
        }
        self.batch.append(staged);
        self.uncommitted.insert(idx);
    }

    /// Whether a task reading the outputs of `nodes` must wait for a
    /// commit: one of them is uncommitted, and the task cannot read it
    /// staged (`staged_ok`: it reads through `JobContext`, not the mount)
    /// or it was not made readable.
    pub(super) fn must_commit_for(&self, nodes: &[usize], staged_ok: bool) -> bool {
        nodes
            .iter()
            .any(|d| self.uncommitted.contains(d) && !(staged_ok && self.readable.contains(d)))
    }

    /// Make the batch's blobs durable now (their names may wait for the
    /// next barrier, as `Store::commit_blobs` says): a reader cannot wait.
    pub(super) fn commit_now(&mut self) -> Result<()> {
        let waiting = std::mem::take(&mut self.waiting);
        // NB: on an error the batch is gone, and so are its records: they
        // name blobs that may not be durable.
        let records = self
            .cache
            .store
            .commit_blobs(std::mem::take(&mut self.batch))?;
        self.pending.extend(waiting);
        // NB: empty today (`add` takes each staging's records out into
        // `waiting`); kept so a staging that carries records still has
        // them published after its commit.
        self.pending.extend(records);
        self.uncommitted.clear();
        // NB: a reader that looked a blob up before this finds its staged
        // file gone and reads the store, where it is now.
        self.unsynced.clear();
        self.readable.clear();
        Ok(())
    }

    /// Commit and publish when the batch is large or old enough.
    pub(super) fn maybe_flush(&mut self) -> Result<()> {
        if self.pending.len() + self.waiting.len() + self.batch.blob_count() >= MAX_BATCH
            || self.since.elapsed() >= MAX_WAIT
        {
            self.commit_now()?;
            self.publish()?;
        }
        Ok(())
    }

    /// Commit and publish everything left (the run's end).
    pub(super) fn finish(mut self) -> Result<()> {
        self.commit_now()?;
        self.publish()
    }

    fn publish(&mut self) -> Result<()> {
        // NB: entries evicted while pending are dropped, not resurrected.
        let index = &self.cache.index;
        self.cache
            .store
            .publish_entries(&self.pending, |k| matches!(index.get(k), Ok(Some(_))))?;
        self.pending.clear();
        Ok(())
    }
}

/// Entries this run put in the index, checked when a run ends early
/// (a commit failed): those whose record was never published are removed
/// from the index again (best effort; what is left, the `dirty` marker
/// makes the next open drop).
pub(super) struct Unpublished<'a> {
    pub(super) cache: &'a Cache,
    pub(super) keys: &'a HashSet<Digest>,
    pub(super) armed: bool,
}

impl Unpublished<'_> {
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Unpublished<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for k in self.keys {
            if !self.cache.store.entry_path(k).exists() {
                let _ = self.cache.index.remove(k);
            }
        }
        let _ = self.cache.flush();
    }
}
