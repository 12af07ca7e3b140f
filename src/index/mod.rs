//! The index: sled trees over the store, for fast lookups. Never the source
//! of truth for entries: `entries`, `latest`, `lru` and `expiry` are
//! rebuilt from `entries/` (`Index::rebuild`); the rest (statistics, runs,
//! the policy, `dropped`, the stat cache, sync stamps) is history or a
//! cache whose loss costs a rerun or a rescan, never a wrong answer.
//!
//! Owns: `<store>/index/`, `<store>/runs/` (the run records, one file a
//! run: `runs.rs`), `<store>/memo/` (whole-run memos and their
//! generation: `memo.rs`) and `<store>/stamps/` (sync stamps, one file a
//! sync name: `stamps.rs`). May call: `hash`, `store` (types only).
//!
//! | tree        | key                              | value                      |
//! |-------------|----------------------------------|----------------------------|
//! | `entries`   | cache key (32)                   | `EntryMeta` (binary, v1)   |
//! | `latest`    | dag ‖ 0x00 ‖ task                | key (32) ‖ moved ms (u64 LE): when it became the latest (older records: key only) |
//! | `lru`       | last use ms (u64 BE) ‖ key (32)  | empty                      |
//! | `expiry`    | expires ms (u64 BE) ‖ key (32)   | empty                      |
//! | `runs`      | run id (u64 BE)                  | `RunRecord` (JSON): older indexes only; runs are files now (`runs.rs`) |
//! | `stats`     | counter name (`run_seq`: the last run id; `memo_runs`: runs memos answered) | u64 LE |
//! | `config`    | `policy`; `flushed_ms`           | `CachePolicy` (JSON); u64 LE: when the index was last flushed with its entries durable |
//! | `statdirs`  | root id (16) ‖ relative dir path | its files' stats + digests (see `sync::statcache`) |
//! | `dropped`   | cache key (32)                   | why (UTF-8): entries fsck or a verified read dropped as corrupt, until the key is inserted again |
//! | `uses`      | sequence (u64 BE)                | uses not yet in `lru`: (key ‖ ms) × n (see `uses.rs`) |
//! | `stamps`    | sync name ‖ 0x00 ‖ relative path | digest (32) ‖ since ms (u64 LE): older indexes only; stamps are files now (`stamps.rs`), and a name moved there has the key sync name ‖ 0x00 ‖ `\0\0moved` |
//!
//! Memory: sled keeps a page-table record per node of at most 16 keys,
//! so the index's resident size after opening grows with the number of
//! keys in all trees (about 40 MB per million). Each entry therefore has
//! exactly two keys (`entries`, `lru`); a `by_output` tree that mapped
//! outputs back to keys was dropped for that (nothing read it), and is
//! removed from older indexes when they are opened.
//!
//! sled's background flush is off: the index becomes durable only at
//! `flush()`, which callers run after `Store::barrier`, so a durable index
//! record never refers to a non-durable entry file.

mod entry_meta;
pub mod error;
pub mod memo;
pub mod policy;
mod runs;
#[cfg(test)]
mod sled_tests;
mod stamps;
pub mod stats;
pub mod units;
mod uses;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use entry_meta::EntryMeta;
pub use error::{IndexError, Result};
pub use policy::CachePolicy;
pub use runs::{put_unindexed as put_run_unindexed, KEEP as RUNS_KEPT};
pub use stats::{CacheStats, MissReason, Route};

use crate::hash::{Digest, HexPrefix};
use crate::store::Entry;

/// One task's part in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTask {
    pub task: String,
    pub key: Option<Digest>,
    /// `key`, `content`, `joined`, `miss`, or empty when it did not get that far.
    pub route: String,
    /// `ok`, `failed`, `skipped`.
    pub status: String,
    pub miss_reason: Option<String>,
    /// When `key` became the task's latest, as of this run (the mtime of
    /// `/runs/<id>/<task>`); absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// The task's dependencies in this run (the graph's edges); absent in
    /// older records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<String>,
    /// How long it took in this run (a hit: the lookup); absent in older
    /// records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed or was skipped; absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: u64,
    pub dag: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub ok: bool,
    pub tasks: Vec<RunTask>,
}

pub struct Index {
    db: sled::Db,
    entries: sled::Tree,
    latest: sled::Tree,
    lru: sled::Tree,
    expiry: sled::Tree,
    runs: runs::RunLog,
    stats: sled::Tree,
    config: sled::Tree,
    statcache: sled::Tree,
    dropped: sled::Tree,
    stamps: stamps::StampFiles,
    remote: sled::Tree,
    recipes: sled::Tree,
    uses: sled::Tree,
    /// Hits not yet journaled: (key, ms) (see `uses.rs`).
    pending_uses: std::sync::Mutex<Vec<(Digest, u64)>>,
    /// When the memo generation must move (`memo.rs`).
    memos: memo::Memos,
}

const C_ENTRIES: &str = "entries";
const C_BYTES: &str = "bytes";

fn lru_key(ms: u64, key: &Digest) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&ms.to_be_bytes());
    k[8..].copy_from_slice(key.as_bytes());
    k
}

/// A `latest` record: the key and when it became the task's latest.
fn latest_value(key: &Digest, moved_ms: u64) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..32].copy_from_slice(key.as_bytes());
    v[32..].copy_from_slice(&moved_ms.to_le_bytes());
    v
}

/// (key, moved ms) of a `latest` record; an older record holds the key
/// alone (moved ms 0: unknown).
fn decode_latest(v: &[u8]) -> Result<(Digest, u64)> {
    match v.len() {
        32 => Ok((digest_of("latest", v)?, 0)),
        40 => Ok((
            digest_of("latest", &v[..32])?,
            u64::from_le_bytes(v[32..].try_into().expect("8 bytes")),
        )),
        _ => Err(corrupt("latest", "value is not a key and a time")),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn stamp_key(sync: &str, path: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(sync.len() + 1 + path.len());
    k.extend_from_slice(sync.as_bytes());
    k.push(0);
    k.extend_from_slice(path);
    k
}

fn latest_key(dag: &str, task: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(dag.len() + task.len() + 1);
    k.extend_from_slice(dag.as_bytes());
    k.push(0);
    k.extend_from_slice(task.as_bytes());
    k
}

fn corrupt(tree: &'static str, reason: impl std::fmt::Display) -> IndexError {
    IndexError::Corrupt {
        tree,
        reason: reason.to_string(),
    }
}

fn digest_of(tree: &'static str, b: &[u8]) -> Result<Digest> {
    Digest::from_slice(b).ok_or_else(|| corrupt(tree, "value is not a 32-byte digest"))
}

impl Index {
    /// Open the index in `dir`, its run records in `runs` (created when
    /// the first is written).
    pub fn open(dir: &std::path::Path, runs: &std::path::Path) -> Result<Index> {
        Self::open_in(dir, runs, &memo::dir_beside(runs), false)
    }

    /// As `open`, waiting up to `wait` for a lock on the database that
    /// another holder has not let go of yet (a process that released the
    /// store lock but has not exited, or this one's previous handle, whose
    /// sled threads still hold it a moment after it is dropped).
    pub fn open_waiting(
        dir: &std::path::Path,
        runs: &std::path::Path,
        wait: std::time::Duration,
    ) -> Result<Index> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Index::open(dir, runs) {
                Err(e) if e.is_locked() && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// As `open`, with the run memos' generation kept in `memos` (a
    /// private copy of a read-only store's index keeps its own).
    /// Its stamp files are another process's: each lookup looks for
    /// appends.
    pub fn open_with_memos(
        dir: &std::path::Path,
        runs: &std::path::Path,
        memos: &std::path::Path,
    ) -> Result<Index> {
        Self::open_in(dir, runs, memos, true)
    }

    fn open_in(
        dir: &std::path::Path,
        runs: &std::path::Path,
        memos: &std::path::Path,
        others_stamps: bool,
    ) -> Result<Index> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .cache_capacity(16 << 20)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        // Older indexes have it; nothing reads it any more.
        db.drop_tree("by_output")?;
        // Older indexes kept one stat-cache record per file there.
        db.drop_tree("statcache")?;
        let ix = Index {
            entries: db.open_tree("entries")?,
            latest: db.open_tree("latest")?,
            lru: db.open_tree("lru")?,
            expiry: db.open_tree("expiry")?,
            runs: runs::RunLog::new(runs.to_path_buf(), db.open_tree("runs")?),
            stats: db.open_tree("stats")?,
            config: db.open_tree("config")?,
            statcache: db.open_tree("statdirs")?,
            dropped: db.open_tree("dropped")?,
            stamps: stamps::StampFiles::new(
                runs.with_file_name("stamps"),
                db.open_tree("stamps")?,
                others_stamps,
            ),
            remote: db.open_tree("remote")?,
            recipes: db.open_tree("recipes")?,
            uses: db.open_tree("uses")?,
            pending_uses: Default::default(),
            memos: memo::Memos::new(memos.to_path_buf()),
            db,
        };
        // NB: a new database (the old one deleted) holds none of what a
        // memo may name.
        if !ix.db.was_recovered() {
            drop(ix.memos.before_change()?);
        }
        Ok(ix)
    }

    /// Make every write so far durable; returns how many bytes that took
    /// (0: nothing was written since the last flush).
    pub fn flush(&self) -> Result<usize> {
        self.journal_uses()?;
        Ok(self.db.flush()?)
    }

    pub fn get(&self, key: &Digest) -> Result<Option<EntryMeta>> {
        match self.entries.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => EntryMeta::decode(&v).map(Some),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Insert (or replace) an entry and make it its task's latest.
    pub fn insert(&self, key: &Digest, meta: &EntryMeta) -> Result<()> {
        if let Some(old) = self.get(key)? {
            self.unlink(key, &old)?;
        }
        // NB: the LRU key first: a process killed in the middle leaves a
        // key `used_since` finds, so opening can undo the rest.
        self.lru.insert(lru_key(meta.last_used_ms, key), &[])?;
        self.entries.insert(key.as_bytes(), meta.encode())?;
        if let Some(ttl) = meta.ttl_secs {
            self.expiry.insert(
                lru_key(
                    meta.created_ms.saturating_add(ttl.saturating_mul(1000)),
                    key,
                ),
                &[],
            )?;
        }
        self.set_latest(&meta.dag, &meta.task, key)?;
        self.dropped.remove(key.as_bytes())?;
        self.add(C_ENTRIES, 1)?;
        self.add(C_BYTES, meta.size as i64)?;
        Ok(())
    }

    /// Index a record `entries/` holds and the index lacks (a run whose
    /// index flush failed), keeping its task's `latest` key if it has one
    /// (and the time it became the latest: it is `/dags`' mtime). Returns
    /// whether it was added.
    pub fn adopt(&self, key: &Digest, meta: &EntryMeta) -> Result<bool> {
        if self.get(key)?.is_some() || self.dropped(key)?.is_some() {
            return Ok(false);
        }
        let latest = self.latest_moved(&meta.dag, &meta.task)?;
        self.insert(key, meta)?;
        // NB: exactly as it was, time included (it is `/dags`' mtime).
        if let Some((l, moved)) = latest {
            self.restore_latest(&meta.dag, &meta.task, &l, moved)?;
        }
        Ok(true)
    }

    /// Record a use. It reaches the LRU order when that is next read
    /// (`lru_order`), through the uses journal (`uses.rs`); `meta` (the
    /// caller's copy) shows it at once.
    pub fn touch(&self, key: &Digest, meta: &mut EntryMeta, now_ms: u64) -> Result<()> {
        if meta.last_used_ms >= now_ms {
            return Ok(());
        }
        meta.last_used_ms = now_ms;
        self.pending_uses
            .lock()
            .expect("uses lock")
            .push((*key, now_ms));
        Ok(())
    }

    /// Move `key` (whose record is `meta`) to its LRU place for a use at
    /// `ms`, unless it was used later already.
    fn move_in_lru(&self, key: &Digest, meta: &mut EntryMeta, ms: u64) -> Result<()> {
        if meta.last_used_ms >= ms {
            return Ok(());
        }
        self.lru.remove(lru_key(meta.last_used_ms, key))?;
        meta.last_used_ms = ms;
        self.lru.insert(lru_key(ms, key), &[])?;
        self.entries.insert(key.as_bytes(), meta.encode())?;
        Ok(())
    }

    fn unlink(&self, key: &Digest, meta: &EntryMeta) -> Result<()> {
        let _change = self.memos.before_change()?;
        self.entries.remove(key.as_bytes())?;
        self.lru.remove(lru_key(meta.last_used_ms, key))?;
        if let Some(ttl) = meta.ttl_secs {
            self.expiry.remove(lru_key(
                meta.created_ms.saturating_add(ttl.saturating_mul(1000)),
                key,
            ))?;
        }
        self.add(C_ENTRIES, -1)?;
        self.add(C_BYTES, -(meta.size as i64))?;
        Ok(())
    }

    /// Remove an entry. Its task's `latest` pointer stays (it is history for
    /// `explain`); lookups through it simply miss.
    pub fn remove(&self, key: &Digest) -> Result<Option<EntryMeta>> {
        let Some(meta) = self.get(key)? else {
            return Ok(None);
        };
        self.unlink(key, &meta)?;
        Ok(Some(meta))
    }

    /// Remove an entry found corrupt: later lookups of `key` miss with
    /// reason `corrupt` (until it is inserted again).
    pub fn drop_corrupt(&self, key: &Digest, why: &str) -> Result<Option<EntryMeta>> {
        self.dropped.insert(key.as_bytes(), why.as_bytes())?;
        self.remove(key)
    }

    /// Why `key` was dropped as corrupt, if it was (and is not back).
    pub fn dropped(&self, key: &Digest) -> Result<Option<String>> {
        Ok(self
            .dropped
            .get(key.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The entry and byte totals (`stats`) as counted over `entries`:
    /// (recorded, actual) for each.
    pub fn totals(&self) -> Result<((u64, u64), (u64, u64))> {
        let (mut n, mut b) = (0u64, 0u64);
        for kv in self.all_keys() {
            let (_, m) = kv?;
            n += 1;
            b += m.size;
        }
        Ok(((self.counter(C_ENTRIES)?, n), (self.counter(C_BYTES)?, b)))
    }

    /// Set the entry and byte totals.
    pub fn set_totals(&self, entries: u64, bytes: u64) -> Result<()> {
        self.stats.insert(C_ENTRIES, &entries.to_le_bytes())?;
        self.stats.insert(C_BYTES, &bytes.to_le_bytes())?;
        Ok(())
    }

    /// Make `key` the task's latest (a hit, possibly on an entry another
    /// pipeline or an older run produced). Returns when it became the
    /// latest: now if it was not already, else the time it did (nothing is
    /// written then). NB: that time is the mtime `/dags/<dag>/<task>` shows,
    /// so it moves forward whenever the content there changes, also back to
    /// an older entry, and never otherwise (`fs::ops`).
    pub fn set_latest(&self, dag: &str, task: &str, key: &Digest) -> Result<u64> {
        let k = latest_key(dag, task);
        if let Some(v) = self.latest.get(&k)? {
            if let Ok((old, moved)) = decode_latest(&v) {
                if old == *key && moved != 0 {
                    return Ok(moved);
                }
            }
        }
        let now = now_ms();
        let _change = self.memos.before_change()?;
        self.latest.insert(k, &latest_value(key, now)[..])?;
        Ok(now)
    }

    /// Put back a `latest_moved` record exactly as it was (moved 0: as an
    /// older index had it).
    pub fn restore_latest(&self, dag: &str, task: &str, key: &Digest, moved_ms: u64) -> Result<()> {
        let k = latest_key(dag, task);
        let _change = self.memos.before_change()?;
        if moved_ms == 0 {
            self.latest.insert(k, key.as_bytes())?;
        } else {
            self.latest.insert(k, &latest_value(key, moved_ms)[..])?;
        }
        Ok(())
    }

    pub fn latest(&self, dag: &str, task: &str) -> Result<Option<Digest>> {
        Ok(self.latest_moved(dag, task)?.map(|(k, _)| k))
    }

    /// The task's latest key and when it became the latest (0: unknown, an
    /// index written before that was recorded).
    pub fn latest_moved(&self, dag: &str, task: &str) -> Result<Option<(Digest, u64)>> {
        self.latest
            .get(latest_key(dag, task))?
            .map(|v| decode_latest(&v))
            .transpose()
    }

    /// (dag, task, key) of every task's latest key, optionally for one dag.
    pub fn latest_all(&self, dag: Option<&str>) -> Result<Vec<(String, String, Digest)>> {
        let iter = match dag {
            Some(d) => self.latest.scan_prefix(latest_key(d, "")),
            None => self.latest.iter(),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (k, v) = kv?;
            let mut parts = k.splitn(2, |b| *b == 0);
            let d = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let t = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            out.push((d, t, decode_latest(&v)?.0));
        }
        Ok(out)
    }

    /// Keys oldest-use first (every use so far counted: the uses journal
    /// is folded in first).
    pub fn lru_order(&self) -> Result<impl Iterator<Item = Result<Digest>> + '_> {
        self.fold_uses()?;
        Ok(self.lru.iter().map(|kv| digest_of("lru", &kv?.0[8..])))
    }

    /// Keys whose own TTL ran out at or before `now_ms`.
    pub fn expired_by_own_ttl(&self, now_ms: u64) -> Result<Vec<Digest>> {
        self.expiry
            .range(..lru_key(now_ms, &Digest([0xff; 32])))
            .map(|kv| digest_of("expiry", &kv?.0[8..]))
            .collect()
    }

    pub fn all_keys(&self) -> impl Iterator<Item = Result<(Digest, EntryMeta)>> + '_ {
        self.entries.iter().map(|kv| {
            let (k, v) = kv?;
            Ok((digest_of("entries", &k)?, EntryMeta::decode(&v)?))
        })
    }

    /// Up to `max` keys after `after` (from the first if None), ascending.
    pub fn keys_after(&self, after: Option<&Digest>, max: usize) -> Result<Vec<Digest>> {
        use std::ops::Bound;
        let lo = match after {
            Some(a) => Bound::Excluded(a.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        self.entries
            .range::<Vec<u8>, _>((lo, Bound::Unbounded))
            .keys()
            .take(max)
            .map(|k| digest_of("entries", &k?))
            .collect()
    }

    /// Keys starting with `prefix`.
    pub fn keys_with_prefix(&self, prefix: &HexPrefix) -> Result<Vec<Digest>> {
        let (lo, hi) = prefix.range();
        self.entries
            .range(lo..=hi)
            .map(|kv| digest_of("entries", &kv?.0))
            .collect()
    }

    // --- runs ---

    pub fn next_run_id(&self) -> Result<u64> {
        let id = self.add("run_seq", 1)?;
        let free = self.runs.free_id(id)?;
        if free != id {
            self.stats.insert("run_seq", &free.to_le_bytes())?;
        }
        Ok(free)
    }

    pub fn put_run(&self, run: &RunRecord) -> Result<()> {
        self.runs.put(run)
    }

    /// As `put_run`, the record given as its JSON (a memo's, `memo.rs`).
    pub fn put_run_json(&self, id: u64, json: &[u8]) -> Result<()> {
        self.runs.put_json(id, json)
    }

    /// Run `id`'s record; None if it was never written, is no longer kept
    /// (`RUNS_KEPT`) or a crash left it damaged.
    pub fn run(&self, id: u64) -> Result<Option<RunRecord>> {
        self.runs.get(id)
    }

    /// Every run id, ascending.
    pub fn run_ids(&self) -> Result<Vec<u64>> {
        self.runs.ids()
    }

    pub fn last_run(&self) -> Result<Option<RunRecord>> {
        self.runs.last()
    }

    // --- stats ---

    /// Add `delta` to a counter (saturating at 0); returns the new value.
    pub fn add(&self, name: &str, delta: i64) -> Result<u64> {
        let v = self.stats.update_and_fetch(name, |old| {
            let cur = old
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            let new = if delta >= 0 {
                cur.saturating_add(delta as u64)
            } else {
                cur.saturating_sub(delta.unsigned_abs())
            };
            Some(new.to_le_bytes().to_vec())
        })?;
        Ok(v.and_then(|b| b.as_ref().try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0))
    }

    fn counter(&self, name: &str) -> Result<u64> {
        Ok(self
            .stats
            .get(name)?
            .and_then(|b| b.as_ref().try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0))
    }

    pub fn record_hit(&self, route: Route) -> Result<()> {
        self.add("hits", 1)?;
        self.add(&format!("hit.{}", route.as_str()), 1)?;
        Ok(())
    }

    pub fn record_miss(&self, reason: MissReason) -> Result<()> {
        self.add("misses", 1)?;
        self.add(&format!("miss.{}", reason.as_str()), 1)?;
        Ok(())
    }

    pub fn stats(&self) -> Result<CacheStats> {
        let mut s = CacheStats {
            hits: self.counter("hits")?,
            misses: self.counter("misses")?,
            evictions: self.counter("evictions")?,
            expirations: self.counter("expirations")?,
            total_entries: self.counter(C_ENTRIES)?,
            total_size_bytes: self.counter(C_BYTES)?,
            runs: self.counter("run_seq")?,
            memo_runs: self.counter(memo::C_MEMO_RUNS)?,
            hits_by_route: BTreeMap::new(),
            misses_by_reason: BTreeMap::new(),
            remote: BTreeMap::new(),
        };
        for kv in self.stats.scan_prefix("remote.") {
            let (k, v) = kv?;
            if let (Ok(name), Ok(b)) = (std::str::from_utf8(&k[7..]), <[u8; 8]>::try_from(&v[..])) {
                s.remote.insert(name.to_string(), u64::from_le_bytes(b));
            }
        }
        for r in [Route::Key, Route::Content, Route::Joined, Route::Remote] {
            s.hits_by_route.insert(
                r.as_str().into(),
                self.counter(&format!("hit.{}", r.as_str()))?,
            );
        }
        for r in MissReason::ALL {
            s.misses_by_reason.insert(
                r.as_str().into(),
                self.counter(&format!("miss.{}", r.as_str()))?,
            );
        }
        Ok(s)
    }

    // --- recipes (the `content` route) ---

    /// `key` is an entry whose task has this recipe (see `exec::key`).
    pub fn set_recipe(&self, recipe: &Digest, key: &Digest) -> Result<()> {
        self.recipes
            .insert(recipe.as_bytes(), key.as_bytes().as_slice())?;
        Ok(())
    }

    /// The last entry stored with this recipe, if any (it may be gone since).
    pub fn by_recipe(&self, recipe: &Digest) -> Result<Option<Digest>> {
        match self.recipes.get(recipe.as_bytes())? {
            None => Ok(None),
            Some(v) => digest_of("recipes", &v).map(Some),
        }
    }

    // --- remote digest map (owned by `remote`, opaque here) ---

    pub fn remote_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.remote.get(key)?.map(|v| v.to_vec()))
    }

    /// Insert the pairs in one batch.
    pub fn remote_put(&self, rows: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<()> {
        let mut b = sled::Batch::default();
        for (k, v) in rows {
            b.insert(k, v);
        }
        self.remote.apply_batch(b)?;
        Ok(())
    }

    // --- stat cache (owned by `sync`, opaque here) ---

    pub fn stat_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.statcache.get(key)?.map(|v| v.to_vec()))
    }

    /// Apply puts (Some) and deletes (None) in one batch.
    pub fn stat_apply(
        &self,
        ops: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<()> {
        let mut b = sled::Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.statcache.apply_batch(b)?;
        Ok(())
    }

    /// Every (key, value) under `prefix`. NB: sled's own buffers (shared,
    /// not copied: a rescan reads every record of a tree).
    pub fn stat_scan(&self, prefix: &[u8]) -> Result<Vec<(sled::IVec, sled::IVec)>> {
        Ok(self
            .statcache
            .scan_prefix(prefix)
            .collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// Every key under `prefix`.
    pub fn stat_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.statcache
            .scan_prefix(prefix)
            .keys()
            .map(|k| Ok(k?.to_vec()))
            .collect()
    }

    // --- sync stamps ---

    /// When `path` of sync `name` last took content `digest` (None: no
    /// record, so unchanged since the sync's first snapshot). See
    /// `stamps.rs`.
    pub fn stamp(&self, sync: &str, path: &[u8]) -> Result<Option<(Digest, u64)>> {
        self.stamps.get(sync, path)
    }

    /// Record that each `(path, digest)` of sync `name` took its content at
    /// `since_ms`, in one batch, durable when this returns.
    pub fn set_stamps<'p>(
        &self,
        sync: &str,
        since_ms: u64,
        stamps: impl IntoIterator<Item = (&'p [u8], Digest)>,
    ) -> Result<()> {
        self.stamps.set(sync, since_ms, stamps, true)
    }

    /// `set_stamps`, except that an append to the name's file is not
    /// synced: the caller's next `syncfs` of the store's filesystem (which
    /// holds `stamps/`) makes it durable, before anything names the
    /// snapshot. (A new or rewritten file is synced all the same.)
    pub fn set_stamps_unsynced<'p>(
        &self,
        sync: &str,
        since_ms: u64,
        stamps: impl IntoIterator<Item = (&'p [u8], Digest)>,
    ) -> Result<()> {
        self.stamps.set(sync, since_ms, stamps, false)
    }

    /// Forget every stamp of sync `name` (its history starts again).
    pub fn clear_stamps(&self, sync: &str) -> Result<()> {
        self.stamps.clear(sync)
    }

    // --- config ---

    /// Record that everything indexed so far has its entry record durable
    /// (called by `Cache::flush` between the store's sync and sled's).
    pub fn set_flushed_ms(&self, ms: u64) -> Result<()> {
        self.config.insert("flushed_ms", &ms.to_le_bytes())?;
        Ok(())
    }

    pub fn flushed_ms(&self) -> Result<Option<u64>> {
        Ok(self
            .config
            .get("flushed_ms")?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_le_bytes))
    }

    /// (last use, key) of keys last used (or inserted) at or after `ms`.
    pub fn used_since(&self, ms: u64) -> Result<Vec<(u64, Digest)>> {
        self.lru
            .range(lru_key(ms, &Digest::default())..)
            .map(|kv| {
                let k = kv?.0;
                let ms = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
                Ok((ms, digest_of("lru", &k[8..])?))
            })
            .collect()
    }

    /// Remove whatever of `key` an interrupted insert left, including its
    /// LRU key at `lru_ms`.
    pub fn forget(&self, key: &Digest, lru_ms: u64) -> Result<()> {
        self.remove(key)?;
        self.lru.remove(lru_key(lru_ms, key))?;
        Ok(())
    }

    /// Recompute the entry and byte totals from `entries` (after a process
    /// was killed between an entry's write and its totals'). Returns them.
    pub fn recount(&self) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0u64, 0u64);
        for kv in self.entries.iter() {
            let (_, v) = kv?;
            n += 1;
            bytes = bytes.saturating_add(EntryMeta::decode(&v)?.size);
        }
        self.stats.insert(C_ENTRIES, &n.to_le_bytes())?;
        self.stats.insert(C_BYTES, &bytes.to_le_bytes())?;
        Ok((n, bytes))
    }

    pub fn policy(&self) -> Result<CachePolicy> {
        match self.config.get("policy")? {
            None => Ok(CachePolicy::default()),
            Some(v) => serde_json::from_slice(&v).map_err(|e| corrupt("config", e)),
        }
    }

    pub fn set_policy(&self, p: &CachePolicy) -> Result<()> {
        let _change = self.memos.before_change()?;
        self.config
            .insert("policy", serde_json::to_vec(p).expect("policy serializes"))?;
        Ok(())
    }

    /// Drop every rebuildable tree and refill it from `entries`. Counters of
    /// hits and misses survive; entry totals are recomputed.
    pub fn rebuild(&self, entries: impl IntoIterator<Item = Entry>) -> Result<usize> {
        {
            // NB: the inserts below each hold their own.
            let _change = self.memos.before_change()?;
            for t in [
                &self.entries,
                &self.latest,
                &self.lru,
                &self.expiry,
                &self.uses,
            ] {
                t.clear()?;
            }
        }
        self.pending_uses.lock().expect("uses lock").clear();
        self.stats.insert(uses::C_JOURNALED, &0u64.to_le_bytes())?;
        self.stats.insert(C_ENTRIES, &0u64.to_le_bytes())?;
        self.stats.insert(C_BYTES, &0u64.to_le_bytes())?;
        let mut newest: BTreeMap<(String, String), (u64, Digest)> = BTreeMap::new();
        let mut n = 0;
        for e in entries {
            self.insert(&e.key, &EntryMeta::from_entry(&e))?;
            let slot = newest
                .entry((e.dag.clone(), e.task.clone()))
                .or_insert((0, e.key));
            if e.created_ms >= slot.0 {
                *slot = (e.created_ms, e.key);
            }
            n += 1;
        }
        // NB: moved now, not at the entry's creation: what `/dags` showed
        // before may have been another entry, made the latest later, and an
        // mtime going back would hide the change from make.
        let now = now_ms();
        let _change = self.memos.before_change()?;
        for ((dag, task), (_, key)) in newest {
            self.latest
                .insert(latest_key(&dag, &task), &latest_value(&key, now)[..])?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn meta(exit_status: i32, ttl_secs: Option<u64>) -> EntryMeta {
        EntryMeta {
            dag: "pipé".into(),
            task: "t/1".into(),
            output: Digest::of(b"out"),
            size: u64::MAX,
            files: 3,
            created_ms: 1_763_000_000_000,
            last_used_ms: 1_763_000_000_500,
            ttl_secs,
            exit_status,
            duration_ms: 0,
        }
    }

    #[test]
    fn latest_moves_only_when_its_key_changes() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(t.path(), &t.path().join("runs")).unwrap();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let t1 = ix.set_latest("d", "t", &a).unwrap();
        assert_eq!(ix.latest_moved("d", "t").unwrap(), Some((a, t1)));
        std::thread::sleep(std::time::Duration::from_millis(3));
        assert_eq!(
            ix.set_latest("d", "t", &a).unwrap(),
            t1,
            "same key: same time"
        );
        let t2 = ix.set_latest("d", "t", &b).unwrap();
        assert!(t2 > t1);
        std::thread::sleep(std::time::Duration::from_millis(3));
        let t3 = ix.set_latest("d", "t", &a).unwrap();
        assert!(t3 > t2, "back to an older key is a move forward");
        ix.restore_latest("d", "t", &b, t2).unwrap();
        assert_eq!(ix.latest_moved("d", "t").unwrap(), Some((b, t2)));
        // An older index's record: the key alone, time unknown.
        ix.restore_latest("d", "t", &a, 0).unwrap();
        assert_eq!(ix.latest_moved("d", "t").unwrap(), Some((a, 0)));
        assert!(
            ix.set_latest("d", "t", &a).unwrap() > 0,
            "upgraded on its next use"
        );
        assert_eq!(
            ix.latest_all(None).unwrap(),
            vec![("d".into(), "t".into(), a)]
        );
    }
}
