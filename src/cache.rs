//! The cache: a store and its index opened together, with the policy that
//! bounds them. The one handle `exec`, the CLI and library users hold.
//!
//! Owns: lookups with TTL, publishing entries under the policy (LRU
//! eviction that counts the entry being inserted and never evicts a
//! protected entry), gc, index recovery, and fsck (the store's checks from
//! `store::fsck`, plus index ↔ `entries/` agreement, run while no pipeline
//! ingests: `Cache::fsck` waits for running ones and holds new ones).
//! A store this process cannot write (`Store::read_only`) is opened on a
//! private copy of its index (sled writes even to read): nothing is
//! written to the store, and the copy goes with the cache.
//! May call: `hash`, `store`, `index`.

mod check;

use std::collections::HashSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::hash::Digest;
use crate::index::{CachePolicy, EntryMeta, Index, IndexError, MissReason};
use crate::store::fsck::{self, Phase, Problem, ProblemKind, Progress, Report};
use crate::store::{gc, Entry, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct Cache {
    // NB: declared before `store` so the index (and sled's file lock) is
    // dropped before the store lock is released: the next owner can open it.
    pub index: Index,
    pub store: Store,
    policy: std::sync::Mutex<CachePolicy>,
    /// Keys each daemon session produced or used: never evicted or swept
    /// while the session lasts.
    leases: std::sync::Mutex<std::collections::HashMap<u64, HashSet<Digest>>>,
    /// Start times of runs ingesting now (gc keeps blobs younger than the
    /// oldest: they may belong to an entry not yet published).
    ingests: std::sync::Mutex<Vec<(u64, SystemTime)>>,
    next_ingest: std::sync::atomic::AtomicU64,
    /// Ingests hold it shared; fsck takes it exclusively to check and
    /// repair entries and the index while nothing publishes.
    gate: std::sync::RwLock<()>,
    notes: Vec<String>,
    /// A read-only store's index is a private copy (sled writes even to
    /// read); removed when the cache is. NB: after `index`, so dropped
    /// after it.
    index_copy: Option<tempfile::TempDir>,
    /// This process released the store's reserve to open it: it gives
    /// back what it did not use when it closes (see `store::reserve`).
    released_reserve: bool,
}

/// A running ingest, registered until dropped (see `Cache::begin_ingest`).
pub struct IngestGuard<'a> {
    cache: &'a Cache,
    id: u64,
    /// What it holds from gc (`store::holds`): released with it.
    holder: u64,
    _gate: std::sync::RwLockReadGuard<'a, ()>,
}

impl IngestGuard<'_> {
    /// Its holder: stagings made with `Staged::held_by(holder)` hold the
    /// blobs they find stored until the ingest ends.
    pub fn holder(&self) -> u64 {
        self.holder
    }
}

impl Drop for IngestGuard<'_> {
    fn drop(&mut self) {
        self.cache
            .ingests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| *id != self.id);
        self.cache.store.release(self.holder);
    }
}

/// A tree a sync is about to name in its log, kept from gc until dropped
/// (see `Cache::hold_tree`).
pub struct TreeHold<'a> {
    cache: &'a Cache,
    holder: u64,
}

impl Drop for TreeHold<'_> {
    fn drop(&mut self) {
        self.cache.store.release(self.holder);
    }
}

/// The answer to a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(EntryMeta),
    Miss(MissReason),
}

/// What `publish` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// False when the policy leaves no room that may be freed: the entry is
    /// not kept (its blobs are swept by the next gc).
    pub kept: bool,
    pub evicted: Vec<Digest>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub expired: u64,
    pub evicted: u64,
    pub sweep: gc::SweepReport,
}

/// How long to wait for a previous owner's index lock to go away.
const INDEX_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Open the index, waiting out a lock still held by a process that has
/// released the store lock but not yet exited.
fn open_index(dir: &Path, runs: &Path) -> std::result::Result<Index, IndexError> {
    Index::open_waiting(dir, runs, INDEX_LOCK_WAIT)
}

/// Only damage is repaired by moving the index aside: a lock conflict,
/// permissions or a full disk are reported as they are.
fn index_is_corrupt(e: &IndexError) -> bool {
    match e {
        IndexError::Sled(sled::Error::Corruption { .. }) => true,
        IndexError::Sled(sled::Error::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
        IndexError::Sled(sled::Error::Unsupported(_)) => true,
        IndexError::Sled(_) => false,
        IndexError::Corrupt { .. } => true,
        // The run records' files: history, never a reason to quarantine.
        IndexError::Io { .. } => false,
    }
}

impl Cache {
    /// Open the cache at `dir`. The store's configured policy is overlaid
    /// with `policy` (limits set in `policy` win).
    pub fn open(dir: &Path, policy: CachePolicy) -> Result<Cache> {
        Self::open_with(dir, policy, &mut |_| {})
    }

    /// As `open`, calling `on_wait` with the holder if the store is locked.
    pub fn open_with(
        dir: &Path,
        policy: CachePolicy,
        on_wait: &mut dyn FnMut(&str),
    ) -> Result<Cache> {
        Self::from_store(Store::open(dir, on_wait)?, policy)
    }

    /// As `open`, asking `waiting` while the store lock is held elsewhere
    /// whether to go on (see `store::lock::Waiting`).
    pub fn open_waiting(
        dir: &Path,
        policy: CachePolicy,
        waiting: &mut crate::store::lock::Waiting<'_>,
    ) -> Result<Cache> {
        Self::from_store(Store::open_waiting(dir, waiting)?, policy)
    }

    /// The cache of a store opened already (`Store::open`).
    pub fn from_store(store: Store, policy: CachePolicy) -> Result<Cache> {
        if store.read_only().is_some() {
            return Self::from_read_only(store, policy);
        }
        let mut notes = Vec::new();
        if !store.recreated().is_empty() {
            notes.push(format!(
                "the store had lost its top directories {}: made them again (`dagfs fsck` tells what their loss broke)",
                store
                    .recreated()
                    .iter()
                    .map(|d| format!("{d}/"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // NB: before the index opens: sled writes a snapshot at every open.
        let mut released = store.release_reserve_if_full();
        let opened = match open_index(&store.index_dir(), &store.runs_dir()) {
            Err(e) if e.is_no_space() && !released && store.release_reserve() => {
                released = true;
                open_index(&store.index_dir(), &store.runs_dir())
            }
            r => r,
        };
        let index = match opened {
            Ok(i) => i,
            Err(e) if index_is_corrupt(&e) => {
                // NB: quarantined, never deleted: it may hold statistics.
                let name = format!("broken-{}", now_ms());
                store.quarantine_path(
                    &store.index_dir(),
                    crate::store::quarantine::Kind::Index,
                    &name,
                    &format!("open: {e}"),
                )?;
                let aside = store.quarantine_dir().join("index").join(&name);
                let index = Index::open(&store.index_dir(), &store.runs_dir())?;
                let n = rebuild(&store, &index)?;
                let policy = restore_policy(&store, &index)?;
                notes.push(format!(
                    "index did not open ({e}); moved it to {} and rebuilt it from {n} entries; {policy}; lost: its statistics (hits, misses, evictions) and the sync stat cache (the next sync reads every file)",
                    aside.display()
                ));
                index
            }
            Err(e) => return Err(e.into()),
        };
        let marker = dirty_marker(&store);
        let dirty = marker.exists();
        let dropped = reconcile(&store, &index, dirty)?;
        std::fs::write(&marker, b"").map_err(|source| StoreError::Io {
            path: marker.clone(),
            source,
        })?;
        if dropped > 0 {
            notes.push(format!(
                "dropped {dropped} index entries whose records a killed run had not written yet"
            ));
        }
        // NB: the runs memos answered without the index, into its counts.
        if let Err(e) = index.fold_memo_hits() {
            log::warn!("the runs answered from memos were not counted: {e}");
        }
        let stored = index.policy()?;
        let mut cache = Cache {
            store,
            index,
            policy: std::sync::Mutex::new(stored.overlay(policy)),
            leases: Default::default(),
            ingests: Default::default(),
            next_ingest: Default::default(),
            gate: Default::default(),
            notes,
            index_copy: None,
            released_reserve: released,
        };
        if released {
            // A full disk: what a failed run left (blobs no entry names)
            // goes, so the reserve can be made again and the next run that
            // fits works.
            let freed = cache.gc(false, &HashSet::new())?;
            let made = cache.store.ensure_reserve().unwrap_or(false);
            cache.notes.push(format!(
                "the store's filesystem is full: released the store's reserve to open it, swept {} unreferenced blobs ({}){}",
                freed.sweep.blobs_removed,
                crate::index::units::format_size(freed.sweep.bytes_removed),
                if made { "" } else { "; free space, `dagfs gc` or `dagfs config max_bytes` before the next run" }
            ));
        } else {
            // NB: best effort; a run checks it again (`scheduler::run`).
            let _ = cache.store.ensure_reserve();
        }
        Ok(cache)
    }

    /// A store this process cannot write: its index is copied to a private
    /// temporary directory (under the shared store lock, so the copy is
    /// consistent) and opened there; the lock is then released, so a
    /// reader never holds up the store's writer. What readers record
    /// (statistics, the stat cache) stays in the copy.
    fn from_read_only(mut store: Store, policy: CachePolicy) -> Result<Cache> {
        let copy = tempfile::Builder::new()
            .prefix("dagfs-index-")
            .tempdir()
            .map_err(|source| StoreError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let dst = copy.path().join("index");
        copy_dir(&store.index_dir(), &dst)?;
        store.release_read_lock()?;
        // NB: the run records are read where they are (nothing here writes one).
        let index = Index::open_with_memos(&dst, &store.runs_dir(), &copy.path().join("memo"))?;
        let stored = index.policy()?;
        Ok(Cache {
            store,
            index,
            policy: std::sync::Mutex::new(stored.overlay(policy)),
            leases: Default::default(),
            ingests: Default::default(),
            next_ingest: Default::default(),
            gate: Default::default(),
            notes: Vec::new(),
            index_copy: Some(copy),
            released_reserve: false,
        })
    }

    /// Messages about recovery done while opening (for the CLI to print).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn policy(&self) -> CachePolicy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_policy(&self, p: CachePolicy) {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    /// Register a run that stages and commits blobs until the guard drops.
    /// Waits while an fsck checks entries and the index.
    pub fn begin_ingest(&self) -> IngestGuard<'_> {
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let id = self
            .next_ingest
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // NB: a second of slack for coarse ctime granularity.
        let start = SystemTime::now() - std::time::Duration::from_secs(1);
        self.ingests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, start));
        IngestGuard {
            cache: self,
            id,
            holder: self.store.new_holder(),
            _gate: gate,
        }
    }

    /// Keep `tree` (and all it names) from gc until the hold drops: what a
    /// sync does between storing a snapshot and naming it in its log. A
    /// sync's blobs are young, but it also relies on blobs stored long
    /// before (the same content): gc, which marks only from what logs and
    /// entries name, would sweep those. `since` is the blob generation
    /// before the sync looked for any blob. If it moved (a sweep or a
    /// quarantine removed blobs since), the tree is checked whole, every
    /// blob it names; None when one is gone: the sync must store its
    /// snapshot again. NB: gc marks and sweeps under the same lock
    /// (`store::holds`), so once held, nothing the tree names is removed.
    pub fn hold_tree(&self, tree: Digest, since: u64) -> Option<TreeHold<'_>> {
        let holder = self.store.new_holder();
        let moved = self.store.hold_tree_root(holder, tree) != since;
        let hold = TreeHold {
            cache: self,
            holder,
        };
        if moved && !crate::store::gc::stored_whole(&self.store, &tree) {
            return None;
        }
        Some(hold)
    }

    /// Blobs renamed in after this may belong to unpublished entries.
    fn sweep_cutoff(&self) -> SystemTime {
        let ingests = self.ingests.lock().unwrap_or_else(|p| p.into_inner());
        ingests
            .iter()
            .map(|(_, t)| *t)
            .min()
            .unwrap_or_else(SystemTime::now)
    }

    /// Lease `keys` to `session` until `release(session)`.
    pub fn lease(&self, session: u64, keys: impl IntoIterator<Item = Digest>) {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(session)
            .or_default()
            .extend(keys);
    }

    pub fn release(&self, session: u64) {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&session);
    }

    /// Number of keys leased by live sessions.
    pub fn leased_count(&self) -> usize {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(HashSet::len)
            .sum()
    }

    fn leased(&self, k: &Digest) -> bool {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|s| s.contains(k))
    }

    /// Look a key up. Expired entries are removed and answer `Expired`; an
    /// entry whose output tree is gone answers `Missing`.
    pub fn lookup(&self, key: &Digest, now: u64) -> Result<Lookup> {
        self.lookup_with(key, now, &self.policy())
    }

    /// `lookup` under `policy` (a run's own limits).
    pub fn lookup_with(&self, key: &Digest, now: u64, policy: &CachePolicy) -> Result<Lookup> {
        let Some(meta) = self.index.get(key)? else {
            if self.index.dropped(key)?.is_some() {
                return Ok(Lookup::Miss(MissReason::Corrupt));
            }
            return Ok(Lookup::Miss(MissReason::New));
        };
        if meta.expired(now, policy.ttl) && !self.leased(key) {
            self.evict(key)?;
            self.index.add("expirations", 1)?;
            return Ok(Lookup::Miss(MissReason::Expired));
        }
        // NB: `stored`, not `has_blob`: a pack that could not be read is
        // an error here, never a reason to evict.
        if !self.store.stored(&meta.output)? {
            self.evict(key)?;
            return Ok(Lookup::Miss(MissReason::Missing));
        }
        Ok(Lookup::Hit(meta))
    }

    fn evict(&self, key: &Digest) -> Result<()> {
        self.index.remove(key)?;
        self.store.remove_entry(key)?;
        Ok(())
    }

    /// Insert a committed entry, evicting LRU entries not in `protected`
    /// until the policy holds *with* the new entry counted.
    pub fn publish(
        &self,
        entry: &Entry,
        protected: &HashSet<Digest>,
        policy: &CachePolicy,
    ) -> Result<Published> {
        let meta = EntryMeta::from_entry(entry);
        let replacing = self.index.get(&entry.key)?;
        let (add_n, add_b) = match &replacing {
            Some(old) => (0, meta.size as i64 - old.size as i64),
            None => (1, meta.size as i64),
        };
        let evicted = self.make_room(add_n, add_b, protected, Some(&entry.key), policy)?;
        let Some(evicted) = evicted else {
            if replacing.is_some() {
                self.evict(&entry.key)?;
            } else {
                self.store.remove_entry(&entry.key)?;
            }
            return Ok(Published {
                kept: false,
                evicted: Vec::new(),
            });
        };
        self.index.insert(&entry.key, &meta)?;
        Ok(Published {
            kept: true,
            evicted,
        })
    }

    /// Evict until `entries + add_n` and `bytes + add_b` are within the
    /// policy. Returns None (and evicts nothing) if that is impossible
    /// without touching protected entries.
    fn make_room(
        &self,
        add_n: u64,
        add_b: i64,
        protected: &HashSet<Digest>,
        skip: Option<&Digest>,
        p: &CachePolicy,
    ) -> Result<Option<Vec<Digest>>> {
        if p.max_entries.is_none() && p.max_size_bytes.is_none() {
            return Ok(Some(Vec::new()));
        }
        let stats = self.index.stats()?;
        let mut n = stats.total_entries + add_n;
        let mut b = (stats.total_size_bytes as i64 + add_b).max(0) as u64;
        let over = |n: u64, b: u64| {
            p.max_entries.is_some_and(|m| n > m) || p.max_size_bytes.is_some_and(|m| b > m)
        };
        if !over(n, b) {
            return Ok(Some(Vec::new()));
        }
        let mut victims = Vec::new();
        for k in self.index.lru_order()? {
            let k = k?;
            if protected.contains(&k) || Some(&k) == skip || self.leased(&k) {
                continue;
            }
            let Some(m) = self.index.get(&k)? else {
                continue;
            };
            victims.push(k);
            n -= 1;
            b = b.saturating_sub(m.size);
            if !over(n, b) {
                break;
            }
        }
        if over(n, b) {
            return Ok(None);
        }
        for k in &victims {
            self.evict(k)?;
        }
        self.index.add("evictions", victims.len() as i64)?;
        Ok(Some(victims))
    }

    /// Remove expired entries and evict until the policy holds.
    pub fn enforce(
        &self,
        protected: &HashSet<Digest>,
        now: u64,
        full_ttl_scan: bool,
        policy: &CachePolicy,
    ) -> Result<(u64, u64)> {
        let mut expired = self.index.expired_by_own_ttl(now)?;
        if full_ttl_scan && policy.ttl.is_some() {
            for kv in self.index.all_keys() {
                let (k, m) = kv?;
                if m.expired(now, policy.ttl) {
                    expired.push(k);
                }
            }
        }
        expired.sort();
        expired.dedup();
        expired.retain(|k| !protected.contains(k) && !self.leased(k));
        for k in &expired {
            self.evict(k)?;
        }
        self.index.add("expirations", expired.len() as i64)?;
        let evicted = self
            .make_room(0, 0, protected, None, policy)?
            .map(|v| v.len())
            .unwrap_or(0);
        Ok((expired.len() as u64, evicted as u64))
    }

    /// Apply the policy, then sweep blobs no entry references. Blobs renamed
    /// in after `cutoff` are kept (ingests that may still be running).
    pub fn gc(&self, dry_run: bool, protected: &HashSet<Digest>) -> Result<GcReport> {
        let now = now_ms();
        let (expired, evicted) = if dry_run {
            (0, 0)
        } else {
            self.enforce(protected, now, true, &self.policy())?
        };
        // NB: before anything is read to mark from, to the end of the
        // sweep (`store::holds`): a hold released before this has its
        // entry or log on disk for the mark to read; one released after
        // waits for the sweep. The cutoff too: an ingest that ends before
        // this published what it staged.
        let held = self.store.held();
        let cutoff = self.sweep_cutoff();
        let mut roots = Vec::new();
        for key in self.store.entry_keys()? {
            if let Some(e) = self.store.read_entry(&key)? {
                if !dry_run {
                    // A record a failed index flush left out: indexed, so
                    // the policy can evict it (it is a whole entry).
                    self.index.adopt(&key, &EntryMeta::from_entry(&e))?;
                }
                roots.extend([e.output, e.stdout, e.stderr]);
                // NB: an entry keeps the input snapshots its key names.
                roots.extend(e.manifest.inputs.iter().map(|(_, d)| *d));
            }
        }
        roots.extend(held.trees());
        for log in self.store.sync_logs()? {
            roots.extend(log.snapshots.iter().map(|s| s.tree));
        }
        let mut live = gc::reachable(&self.store, roots)?;
        // NB: blobs running ingests rely on, not yet named (`store::holds`).
        live.extend(held.blobs());
        let sweep = gc::sweep(&self.store, &live, cutoff, dry_run)?;
        if sweep.blobs_removed > 0 && !dry_run {
            // NB: raised again once every removal is done (the sweep raised
            // it before the first): a walk that read the generation during
            // the sweep and relied on a blob removed after that read sees
            // it move (`Cache::hold_tree`, the stat cache).
            self.store.new_blob_generation()?;
        }
        drop(held);
        if !dry_run {
            let _ = self.store.ensure_reserve();
        }
        Ok(GcReport {
            expired,
            evicted,
            sweep,
        })
    }

    /// Drop entry `key` because a blob it references is corrupt (a verified
    /// read in the mount found it so): out of the index (it then misses
    /// with reason `corrupt`), its record into quarantine.
    pub fn drop_corrupt(&self, key: &Digest, why: &str) -> Result<()> {
        self.index.drop_corrupt(key, why)?;
        self.store.quarantine_entry(key, why)?;
        self.index.flush()?;
        Ok(())
    }

    /// Insert an entry's index record, leaving its task's latest key as it is.
    fn reindex(&self, key: &Digest, meta: &EntryMeta) -> Result<()> {
        let latest = self.index.latest_moved(&meta.dag, &meta.task)?;
        self.index.insert(key, meta)?;
        // NB: exactly as it was, time included (it is `/dags`' mtime).
        if let Some((l, moved)) = latest {
            self.index
                .restore_latest(&meta.dag, &meta.task, &l, moved)?;
        }
        Ok(())
    }

    /// Make everything done so far durable: store first, then index.
    pub fn flush(&self) -> Result<()> {
        self.store.barrier_if_changed()?;
        // NB: the flush time is recorded only when something was written:
        // an older one makes `reconcile` check more entries, never fewer,
        // and a process that wrote nothing (a rescan that found nothing
        // changed) then writes and fsyncs nothing.
        if self.index.flush()? > 0 {
            self.index.set_flushed_ms(now_ms())?;
            self.index.flush()?;
        }
        Ok(())
    }
}

/// How far before the last flush an entry may have been stamped and still
/// been indexed after it (a task that ended just before another run's flush
/// publishes just after).
const RECONCILE_SLACK_MS: u64 = 10 * 60 * 1000;

/// An entry is indexed when its task ends, its record renamed into
/// `entries/` in the next batch; sled may write the index record to its
/// file before `flush` (when its buffer fills), so a process killed in
/// between leaves the index naming an entry without a record, whose blobs
/// may not all be committed. Such entries (only those used since shortly
/// before the last flush need checking) are dropped from the index.
/// Only after an unclean end (`dirty`: the marker a killed process left);
/// the entry totals are then recounted too: a kill between an entry's write
/// and its totals' leaves them off by one. (After a clean end, a missing
/// record is damage for `fsck` to report.)
fn reconcile(store: &Store, index: &Index, dirty: bool) -> Result<usize> {
    if !dirty {
        return Ok(0);
    }
    let since = index
        .flushed_ms()?
        .map_or(0, |ms| ms.saturating_sub(RECONCILE_SLACK_MS));
    let mut dropped = 0;
    for (ms, key) in index.used_since(since)? {
        if !store.entry_path(&key).exists() {
            index.forget(&key, ms)?;
            dropped += 1;
        }
    }
    {
        index.recount()?;
        index.flush()?;
    }
    Ok(dropped)
}

/// Present while a process has the cache open; left behind by one that
/// was killed (see `reconcile`).
fn dirty_marker(store: &Store) -> std::path::PathBuf {
    store.root().join("dirty")
}

impl Cache {
    /// Close the cache of a process that exits next: flush (as `drop`
    /// does), then leave the rest to the exit. sled's own teardown would
    /// only fsync its file again (after this flush, that covers its free
    /// segments, which an open zeroes where they are not zero) and walk its
    /// page table;
    /// the kernel closes the files and releases both locks.
    pub fn close_for_exit(mut self: Box<Self>) {
        if let Some(copy) = self.index_copy.take() {
            // Nothing of a read-only store to make durable; the copy goes.
            drop(self);
            drop(copy);
            return;
        }
        if self.flush().is_ok() {
            let _ = std::fs::remove_file(dirty_marker(&self.store));
            self.restore_reserve();
            self.store.drop_spare_dirs();
            std::mem::forget(self);
        }
    }

    /// Give back what was released of the reserve and not used.
    fn restore_reserve(&self) {
        if self.released_reserve {
            let _ = self.store.restore_reserve();
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        if self.store.read_only().is_some() {
            return;
        }
        if self.flush().is_ok() {
            let _ = std::fs::remove_file(dirty_marker(&self.store));
        }
        self.restore_reserve();
    }
}

/// After a rebuild from scratch: put back the policy from its copy beside
/// `FORMAT` (see `store::policy`). Returns what was done, for the note.
fn restore_policy(store: &Store, index: &Index) -> Result<String> {
    match store.read_policy() {
        Ok(Some(body)) => match serde_json::from_slice::<CachePolicy>(&body) {
            Ok(p) => {
                index.set_policy(&p)?;
                Ok("the cache policy was restored from its copy".into())
            }
            Err(e) => Ok(format!(
                "the cache policy's copy does not decode ({e}): policy lost"
            )),
        },
        Ok(None) => Ok("no cache policy was set".into()),
        Err(e) => Ok(format!("{e}: policy lost")),
    }
}

impl Cache {
    /// Set the store's cache policy: in the index, and its copy beside
    /// `FORMAT` (which an index rebuild reads back).
    pub fn store_policy(&self, p: CachePolicy) -> Result<()> {
        self.index.set_policy(&p)?;
        self.store
            .write_policy(&serde_json::to_vec(&p).expect("policy serializes"))?;
        self.set_policy(p);
        Ok(())
    }
}

/// Copy the directory tree `from` to `to` (files and directories).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    for e in std::fs::read_dir(from).map_err(io(from))? {
        let e = e.map_err(io(from))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().map_err(io(&src))?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

/// Rebuild the index from `entries/`.
pub fn rebuild(store: &Store, index: &Index) -> Result<usize> {
    let mut entries = Vec::new();
    for k in store.entry_keys()? {
        if let Some(e) = store.read_entry(&k)? {
            entries.push(e);
        }
    }
    Ok(index.rebuild(entries)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run relies on a blob stored long before (its output has the same
    /// content) that nothing references until the run publishes its entry;
    /// older than any cutoff, a gc meanwhile swept it, and the entry was
    /// published naming a blob that was gone. Now the run's staging holds
    /// it (`store::holds`) until the run ends.
    #[test]
    fn gc_keeps_an_old_blob_a_running_run_relies_on() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(&t.path().join("store"), Default::default()).unwrap();
        let work = cache.store.tempdir("t").unwrap();
        let mut st = crate::store::Staged::default();
        let old = cache
            .store
            .stage_bytes(work.path(), b"stored long before", &mut st)
            .unwrap();
        cache.store.commit(st).unwrap();
        // Older than the cutoff of an ingest that starts now.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let run = cache.begin_ingest();
        let mut st = crate::store::Staged::held_by(run.holder());
        let again = cache
            .store
            .stage_bytes(work.path(), b"stored long before", &mut st)
            .unwrap();
        assert_eq!(again, old);
        let r = cache.gc(false, &HashSet::new()).unwrap();
        assert!(
            cache.store.has_blob(&old),
            "swept while a run relied on it: {r:?}"
        );
        drop(run);
        let r = cache.gc(false, &HashSet::new()).unwrap();
        assert_eq!(r.sweep.blobs_removed, 1, "{r:?}");
        assert!(
            !cache.store.has_blob(&old),
            "unreferenced once the run ended"
        );
    }
}
