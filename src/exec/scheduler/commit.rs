//! Group commit: how a run makes its outputs durable.
//!
//! Workers stage outputs; the coordinator commits their blobs in batches
//! (one syncfs per batch), early only when a reader cannot wait (a task
//! about to start reads an uncommitted output, or another run joined the
//! key), and publishes the entry records of committed blobs with one more
//! syncfs (see `Store::commit_blobs`, `Store::publish_entries`). Nothing is
//! reported done before the run's `finish` and the index flush after it.
//!
//! May call: `store`, `index` (through `cache`). Guarantees: an entry
//! record is published only after its blobs are durable; a record the
//! index no longer names (evicted while pending) is dropped, not
//! resurrected.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::exec::error::Result;
use crate::hash::Digest;
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
    /// Staged entry records, published once their blobs are committed.
    pending: Vec<(PathBuf, Digest)>,
    /// When the oldest member of `batch`/`pending` arrived.
    since: Instant,
}

impl<'a> GroupCommit<'a> {
    pub(super) fn new(cache: &'a Cache) -> Self {
        GroupCommit {
            cache,
            batch: Staged::default(),
            uncommitted: HashSet::new(),
            pending: Vec::new(),
            since: Instant::now(),
        }
    }

    /// Take node `idx`'s staged output. Its record is published only when
    /// `keep` (the index kept the entry); NB: its blobs are committed
    /// either way: this run's dependents read them.
    pub(super) fn add(&mut self, idx: usize, mut staged: Staged, keep: bool) {
        if self.batch.is_empty() && self.pending.is_empty() {
            self.since = Instant::now();
        }
        let records = staged.take_entries();
        if keep {
            self.pending.extend(records);
        }
        self.batch.append(staged);
        self.uncommitted.insert(idx);
    }

    /// Whether any of `nodes` has its output blobs still uncommitted.
    pub(super) fn any_uncommitted(&self, nodes: &[usize]) -> bool {
        nodes.iter().any(|d| self.uncommitted.contains(d))
    }

    /// Make the batch's blobs durable now: a reader cannot wait.
    pub(super) fn commit_now(&mut self) -> Result<()> {
        let records = self
            .cache
            .store
            .commit_blobs(std::mem::take(&mut self.batch))?;
        self.pending.extend(records);
        self.uncommitted.clear();
        Ok(())
    }

    /// Commit and publish when the batch is large or old enough.
    pub(super) fn maybe_flush(&mut self) -> Result<()> {
        if self.pending.len() + self.batch.blob_count() >= MAX_BATCH
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
