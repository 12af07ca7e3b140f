//! Group commit: how a run makes its outputs durable.
//!
//! Workers stage outputs; the coordinator commits their blobs in batches
//! (one syncfs per batch), early only when a reader cannot wait (a task
//! about to start reads an uncommitted output it cannot read staged, see
//! `store::unsynced`, or another run joined the key), and publishes the
//! entry records of committed blobs with one more syncfs (see
//! `Store::commit_blobs`, `Store::publish_entries`). Nothing is reported
//! done before the run's `finish` and the index flush after it.
//!
//! A batch that is merely due (large or old enough) is handed to the run's
//! committer thread (`committer`), which commits and publishes it while
//! the coordinator goes on dispatching: its two syncfs took 20-45 ms, every
//! 500 ms, off a cold chain's critical path. One batch is in flight at a
//! time; a reader that cannot wait for it, a commit made now, and the
//! run's end all wait for it first, and its error is the run's.
//!
//! May call: `store`, `index` (through `cache`). Guarantees: an entry
//! record is published only after its blobs are durable; a record the
//! index no longer names (evicted while pending) is dropped, not
//! resurrected.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel;

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
    /// Digests of `batch` that `unsynced` holds (forgotten once committed).
    staged_readable: Vec<Digest>,
    /// The committer thread's queue, while the run coordinates.
    committer: Option<channel::Sender<Handed>>,
    /// The batch the committer holds, if any.
    in_flight: Option<InFlight>,
    /// A commit failed: nothing staged since is committed or published
    /// (the run fails), only records whose blobs were committed before.
    failed: bool,
}

/// A batch handed to the committer: commit `staged`, then publish
/// `committed` (records whose blobs were committed before) and `records`
/// (those of `staged`; not if its commit fails).
pub(super) struct Handed {
    staged: Staged,
    committed: Vec<(PathBuf, Digest)>,
    records: Vec<(PathBuf, Digest)>,
    done: channel::Sender<Result<()>>,
}

/// What the coordinator keeps of a batch the committer holds.
struct InFlight {
    /// Its nodes (a reader that cannot read them staged waits for it), and
    /// those of them readable staged meanwhile.
    nodes: HashSet<usize>,
    readable: HashSet<usize>,
    /// Its digests `unsynced` holds.
    staged_readable: Vec<Digest>,
    done: channel::Receiver<Result<()>>,
}

/// The committer thread: commits and publishes each batch handed to it,
/// in order, and answers on the batch's own channel. Ends once `stop`
/// disconnects (the run's coordination is over, or unwound) and nothing is
/// queued.
pub(super) fn committer(
    cache: &Cache,
    batches: channel::Receiver<Handed>,
    stop: channel::Receiver<()>,
) {
    loop {
        channel::select! {
            recv(batches) -> b => match b {
                Ok(b) => {
                    answer(cache, b);
                }
                Err(_) => return,
            },
            recv(stop) -> _ => {
                for b in batches.try_iter() {
                    answer(cache, b);
                }
                return;
            }
        }
    }
}

/// Make `b`'s blobs durable, then publish its records (all of whose blobs
/// are durable now), and answer on its channel. A failed commit publishes
/// only the records committed before, as a failed commit on the
/// coordinator left them.
fn answer(cache: &Cache, b: Handed) {
    let Handed {
        staged,
        committed: mut records,
        records: theirs,
        done,
    } = b;
    let committed = cache.store.commit_blobs(staged).map(|more| {
        records.extend(theirs);
        records.extend(more);
    });
    let published = publish_records(cache, &records);
    let _ = done.send(committed.map_err(Into::into).and(published));
}

/// Publish entry records whose blobs are durable. NB: entries evicted
/// while pending are dropped, not resurrected.
fn publish_records(cache: &Cache, records: &[(PathBuf, Digest)]) -> Result<()> {
    let index = &cache.index;
    cache
        .store
        .publish_entries(records, |k| matches!(index.get(k), Ok(Some(_))))?;
    Ok(())
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
            staged_readable: Vec::new(),
            committer: None,
            in_flight: None,
            failed: false,
        }
    }

    /// Hand due batches to `committer` (see the module doc) until
    /// `stop_background`.
    pub(super) fn background(&mut self, committer: channel::Sender<Handed>) {
        self.committer = Some(committer);
    }

    /// Commit on this thread from now on, once the batch in flight is
    /// answered (its error is returned).
    pub(super) fn stop_background(&mut self) -> Result<()> {
        self.committer = None;
        self.reap(true)
    }

    /// The committer's answer for the batch in flight, if any: waited for
    /// when `wait`, else taken only if there. Its blobs are then read from
    /// the store.
    fn reap(&mut self, wait: bool) -> Result<()> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        let answer = if wait {
            f.done.recv().ok()
        } else {
            match f.done.try_recv() {
                Ok(r) => Some(r),
                Err(channel::TryRecvError::Empty) => {
                    self.in_flight = Some(f);
                    return Ok(());
                }
                Err(channel::TryRecvError::Disconnected) => None,
            }
        };
        let r = match answer {
            Some(r) => r,
            None => Err(crate::store::StoreError::Io {
                path: self.cache.store.root().to_path_buf(),
                source: std::io::Error::other(
                    "the run's committer thread stopped before it committed a batch of outputs",
                ),
            }
            .into()),
        };
        match r {
            Ok(()) => self.unsynced.forget(&f.staged_readable),
            // NB: its staged files, those not renamed yet, can still be
            // read by a task already started.
            Err(_) => self.poison(),
        }
        r
    }

    /// A commit failed: drop what is staged and not committed, so the
    /// run's end publishes none of it (its records may name blobs that
    /// never reached the store), as a failed commit on the coordinator
    /// took its batch with it.
    fn poison(&mut self) {
        self.failed = true;
        drop(std::mem::take(&mut self.batch));
        self.waiting.clear();
        self.uncommitted.clear();
        self.readable.clear();
    }

    /// Take node `idx`'s staged output. Its record is published only when
    /// `keep` (the index kept the entry); NB: its blobs are committed
    /// either way: this run's dependents read them. `readers`: some task
    /// of this run will read them, so they are made readable uncommitted.
    pub(super) fn add(&mut self, idx: usize, mut staged: Staged, keep: bool, readers: bool) {
        if self.failed {
            return;
        }
        if self.batch.is_empty() && self.waiting.is_empty() && self.pending.is_empty() {
            self.since = Instant::now();
        }
        if readers {
            // NB: a reader of a node not made readable (a pack spilled to
            // its file: past `pack::MIN_PACK` small blobs or 1 MiB) has the
            // batch committed first (`commit_for`).
            if let Some(blobs) = staged.readable() {
                self.staged_readable.extend(blobs.iter().map(|(d, _)| *d));
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

    /// Before a task reading the outputs of `nodes` starts: commit what it
    /// cannot read staged (`staged_ok`: it reads through `JobContext`, not
    /// the mount; or the node was not made readable). If only the batch
    /// in flight holds such a node, its answer is waited for, no more.
    pub(super) fn commit_for(&mut self, nodes: &[usize], staged_ok: bool) -> Result<()> {
        self.reap(false)?;
        let unreadable = |uncommitted: &HashSet<usize>, readable: &HashSet<usize>| {
            nodes
                .iter()
                .any(|d| uncommitted.contains(d) && !(staged_ok && readable.contains(d)))
        };
        if unreadable(&self.uncommitted, &self.readable) {
            return self.commit_now();
        }
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| unreadable(&f.nodes, &f.readable))
        {
            return self.reap(true);
        }
        Ok(())
    }

    /// Make the batch's blobs durable now (their names may wait for the
    /// next barrier, as `Store::commit_blobs` says): a reader cannot wait.
    /// The batch in flight is answered first.
    pub(super) fn commit_now(&mut self) -> Result<()> {
        self.reap(true)?;
        if self.failed {
            return Ok(());
        }
        let waiting = std::mem::take(&mut self.waiting);
        // NB: on an error the batch is gone, and so are its records: they
        // name blobs that may not be durable.
        let records = match self
            .cache
            .store
            .commit_blobs(std::mem::take(&mut self.batch))
        {
            Ok(r) => r,
            Err(e) => {
                self.poison();
                return Err(e.into());
            }
        };
        self.pending.extend(waiting);
        // NB: empty today (`add` takes each staging's records out into
        // `waiting`); kept so a staging that carries records still has
        // them published after its commit.
        self.pending.extend(records);
        self.uncommitted.clear();
        // NB: a reader that looked a blob up before this finds its staged
        // file gone and reads the store, where it is now.
        self.unsynced.clear();
        self.staged_readable.clear();
        self.readable.clear();
        Ok(())
    }

    /// Commit and publish when the batch is large or old enough: on the
    /// committer thread when there is one (once the batch before is
    /// answered; this waits for it only past twice `MAX_BATCH`), else here.
    pub(super) fn maybe_flush(&mut self) -> Result<()> {
        self.reap(false)?;
        if self.failed {
            return Ok(());
        }
        let size = self.pending.len() + self.waiting.len() + self.batch.blob_count();
        if size < MAX_BATCH && self.since.elapsed() < MAX_WAIT {
            return Ok(());
        }
        if self.committer.is_none() {
            self.commit_now()?;
            return self.publish();
        }
        if self.in_flight.is_some() {
            if size < 2 * MAX_BATCH {
                return Ok(());
            }
            self.reap(true)?;
        }
        self.hand_off()
    }

    /// Give the batch, its records and those pending to the committer.
    fn hand_off(&mut self) -> Result<()> {
        let Some(tx) = &self.committer else {
            return Ok(());
        };
        let (done, answer) = channel::bounded(1);
        let handed = Handed {
            staged: std::mem::take(&mut self.batch),
            committed: std::mem::take(&mut self.pending),
            records: std::mem::take(&mut self.waiting),
            done,
        };
        self.in_flight = Some(InFlight {
            nodes: std::mem::take(&mut self.uncommitted),
            readable: std::mem::take(&mut self.readable),
            staged_readable: std::mem::take(&mut self.staged_readable),
            done: answer,
        });
        if tx.send(handed).is_err() {
            // NB: the answer channel's sender went with the batch: `reap`
            // says the committer is gone.
            return self.reap(true);
        }
        Ok(())
    }

    /// Commit and publish everything left (the run's end).
    pub(super) fn finish(mut self) -> Result<()> {
        self.commit_now()?;
        self.publish()
    }

    fn publish(&mut self) -> Result<()> {
        publish_records(self.cache, &self.pending)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::entry::ENTRY_FORMAT;
    use crate::store::pack::MAX_PACKED;
    use crate::store::{Entry, Manifest};

    /// Node `n`'s output: one loose blob, indexed, its record staged.
    fn output(cache: &Cache, work: &std::path::Path, n: u8) -> (Staged, Digest) {
        let mut st = Staged::default();
        let blob = cache
            .store
            .stage_bytes(work, &vec![n; MAX_PACKED + 1], &mut st)
            .unwrap();
        let entry = Entry {
            format: ENTRY_FORMAT,
            key: Digest::of(&[n]),
            dag: "d".into(),
            task: format!("t{n}"),
            manifest: Manifest::default(),
            output: blob,
            size: MAX_PACKED as u64 + 1,
            files: 1,
            created_ms: 0,
            duration_ms: 0,
            exit_status: 0,
            stdout: blob,
            stderr: blob,
            ttl_secs: None,
            previous: None,
            hermetic: None,
            origin: None,
        };
        let kept = cache
            .publish(&entry, &HashSet::new(), &cache.policy())
            .unwrap()
            .kept;
        assert!(kept);
        cache.store.stage_entry(work, &entry, &mut st).unwrap();
        (st, entry.key)
    }

    /// A cache, and outputs 0..N staged in it (see `output`).
    fn staged<const N: usize>() -> (
        tempfile::TempDir,
        Cache,
        tempfile::TempDir,
        [(Staged, Digest); N],
    ) {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(&t.path().join("store"), Default::default()).unwrap();
        let work = cache.store.tempdir("t").unwrap();
        let outs = std::array::from_fn(|n| output(&cache, work.path(), n as u8));
        (t, cache, work, outs)
    }

    /// A group commit of `cache` handing due batches to a committer that
    /// is not started yet: (it, the committer's queue, its stop channel).
    fn handing<'c>(
        cache: &'c Cache,
        unsynced: &Arc<Unsynced>,
    ) -> (
        GroupCommit<'c>,
        channel::Receiver<Handed>,
        (channel::Sender<()>, channel::Receiver<()>),
    ) {
        let mut gc = GroupCommit::new(cache, unsynced.clone());
        let (batches, handed) = channel::unbounded();
        gc.background(batches);
        (gc, handed, channel::bounded::<()>(0))
    }

    fn blob(n: u8) -> Digest {
        Digest::of(&vec![n; MAX_PACKED + 1])
    }

    /// A batch that is due goes to the committer thread. While it is in
    /// flight, a task that can read its nodes staged starts at once; one
    /// that cannot waits for its answer, and nothing more is committed for
    /// it. A commit made now waits for it too; the run's end publishes the
    /// rest.
    #[test]
    fn a_due_batch_is_committed_on_the_committer_thread() {
        let (_t, cache, _work, [(st0, k0), (st1, k1), (st2, k2), (st3, k3)]) = staged();
        let unsynced = Arc::new(Unsynced::default());
        let published = |k: &Digest| cache.store.entry_path(k).exists();
        std::thread::scope(|s| {
            let (mut gc, handed, (_stop, stop)) = handing(&cache, &unsynced);
            gc.add(0, st0, true, true);
            gc.add(1, st1, true, false);
            assert!(unsynced.get(&blob(0)).is_some());
            gc.maybe_flush().unwrap();
            assert!(gc.in_flight.is_none(), "not due yet: nothing handed");
            gc.since = Instant::now() - MAX_WAIT;
            gc.maybe_flush().unwrap();
            assert!(gc.in_flight.is_some(), "due: handed to the committer");
            assert!(gc.batch.is_empty() && gc.waiting.is_empty());
            // NB: the committer is not started yet: nothing is answered.
            gc.add(2, st2, true, false);
            gc.commit_for(&[0], true).unwrap();
            assert!(gc.in_flight.is_some(), "node 0 is read staged: no wait");
            let c = &cache;
            s.spawn(move || committer(c, handed, stop));
            gc.commit_for(&[1], true).unwrap();
            assert!(gc.in_flight.is_none(), "node 1 is not readable: answered");
            assert!(published(&k0) && published(&k1), "and published");
            assert!(unsynced.get(&blob(0)).is_none(), "read from the store now");
            assert!(!cache.store.has_blob(&blob(2)), "the next batch waits");
            gc.commit_for(&[0, 1], false).unwrap();
            assert!(!cache.store.has_blob(&blob(2)), "nothing of it is read");
            gc.commit_for(&[2], false).unwrap();
            assert!(cache.store.has_blob(&blob(2)), "committed for its reader");
            assert!(
                !published(&k2),
                "a commit made now publishes at the next flush"
            );
            gc.add(3, st3, true, false);
            gc.stop_background().unwrap();
            gc.finish().unwrap();
        });
        assert!(published(&k2) && published(&k3));
        for n in 0..4u8 {
            assert!(cache.store.has_blob(&blob(n)));
        }
    }

    /// A batch the committer fails (here its staged file is gone): the
    /// error is the run's, and nothing staged after it is committed or
    /// published at the run's end; a record whose blobs were committed
    /// before still is.
    #[test]
    fn after_a_failed_batch_nothing_staged_later_is_published() {
        let (_t, cache, work, [(st0, k0), (st1, k1), (st2, k2)]) = staged();
        let unsynced = Arc::new(Unsynced::default());
        let published = |k: &Digest| cache.store.entry_path(k).exists();
        std::thread::scope(|s| {
            let (mut gc, handed, (_stop, stop)) = handing(&cache, &unsynced);
            let c = &cache;
            s.spawn(move || committer(c, handed, stop));
            gc.add(0, st0, true, false);
            gc.commit_now().unwrap();
            let staged1 = work
                .path()
                .read_dir()
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| std::fs::read(p).is_ok_and(|b| Digest::of(&b) == blob(1)))
                .expect("node 1's staged blob");
            gc.add(1, st1, true, false);
            std::fs::remove_file(&staged1).unwrap();
            gc.since = Instant::now() - MAX_WAIT;
            gc.maybe_flush().unwrap();
            assert!(gc.in_flight.is_some());
            gc.add(2, st2, true, false);
            assert!(gc.stop_background().is_err(), "the batch's error");
            gc.finish().unwrap();
        });
        assert!(published(&k0), "committed before the failure");
        assert!(!published(&k1) && !published(&k2));
        assert!(
            !cache.store.has_blob(&blob(2)),
            "staged after: not committed"
        );
    }
}
