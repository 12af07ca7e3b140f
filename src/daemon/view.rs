//! `StoreView` over the cache: what the daemon's FUSE mount reads.

use std::io::Read;
use std::sync::Arc;

use crate::cache::{Cache, CacheError};
use crate::exec::explain;
use crate::fs::view::{
    BlobData, EntryInfo, RunInfo, RunTaskInfo, SnapshotInfo, StoreView, SyncInfo, ViewError,
};
use crate::hash::{Digest, HexPrefix};
use crate::index::{IndexError, RunRecord};
use crate::store::syncs::SyncLog;
use crate::store::{StoreError, Tree};

use super::remote::Lookups;
use super::Gauges;

pub struct CacheView {
    cache: Arc<Cache>,
    gauges: Arc<Gauges>,
    /// Keys the store lacks, asked of the remote (`super::remote`).
    lookups: Option<Arc<Lookups>>,
}

impl CacheView {
    pub fn new(cache: Arc<Cache>, gauges: Arc<Gauges>) -> CacheView {
        CacheView {
            cache,
            gauges,
            lookups: None,
        }
    }

    /// Answer lookups of keys the store lacks from the remote.
    pub fn with_lookups(mut self, lookups: Arc<Lookups>) -> CacheView {
        self.lookups = Some(lookups);
        self
    }
}

impl From<StoreError> for ViewError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Missing(_) => ViewError::NotFound,
            StoreError::Corrupt { digest, .. } => ViewError::Corrupt(digest),
            StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ViewError::NotFound
            }
            StoreError::Io { source, .. } => ViewError::Io(source),
            other => ViewError::Other(other.to_string()),
        }
    }
}

impl From<IndexError> for ViewError {
    fn from(e: IndexError) -> Self {
        ViewError::Other(e.to_string())
    }
}

impl From<CacheError> for ViewError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Store(s) => s.into(),
            CacheError::Index(i) => i.into(),
        }
    }
}

fn unique(v: Vec<Digest>) -> Option<Digest> {
    match v.as_slice() {
        [d] => Some(*d),
        _ => None,
    }
}

impl StoreView for CacheView {
    fn blob_generation(&self) -> u64 {
        self.cache.store.blob_generation()
    }
    fn keys_after(&self, after: Option<&Digest>, max: usize) -> Result<Vec<Digest>, ViewError> {
        Ok(self.cache.index.keys_after(after, max)?)
    }

    fn resolve_key(&self, prefix: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        Ok(unique(self.cache.index.keys_with_prefix(prefix)?))
    }

    fn entry(&self, key: &Digest) -> Result<Option<EntryInfo>, ViewError> {
        Ok(self.cache.index.get(key)?.map(|m| EntryInfo {
            key: *key,
            output: m.output,
            dag: m.dag,
            task: m.task,
            created_ms: m.created_ms,
        }))
    }

    fn fetch_entry(&self, key: &Digest) -> Result<Option<EntryInfo>, ViewError> {
        let Some(l) = &self.lookups else {
            return Ok(None);
        };
        match l.fetch(key) {
            Ok(true) => self.entry(key),
            Ok(false) => Ok(None),
            Err(e) => Err(ViewError::Other(e.0)),
        }
    }

    fn resolve_blob(&self, prefix: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        match self.cache.store.blobs_with_prefix(prefix.as_str()) {
            Ok(v) => Ok(unique(v)),
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn read_tree(&self, tree: &Digest) -> Result<Tree, ViewError> {
        Ok(self.cache.store.read_tree(tree)?)
    }

    fn is_tree(&self, d: &Digest) -> Result<bool, ViewError> {
        let mut head = [0u8; 5];
        let mut f = self.cache.store.open_blob(d)?;
        if f.read_exact(&mut head).is_err() || &head[..4] != crate::store::tree::MAGIC {
            return Ok(false);
        }
        Ok(self.cache.store.read_tree(d).is_ok())
    }

    fn open_blob(&self, d: &Digest) -> std::io::Result<BlobData> {
        use crate::store::{BlobReader, StoreError};
        match self.cache.store.open_loose(d) {
            Ok(f) => return Ok(BlobData::File(f)),
            // A symlink (or a FIFO) planted where a blob should be.
            Err(e) if crate::store::is_not_a_blob(&e).is_some() => return Ok(BlobData::Corrupt),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        match self.cache.store.open_blob(d) {
            Ok(BlobReader::Bytes(c)) => Ok(BlobData::Bytes(c.into_inner().into())),
            Ok(BlobReader::File(f)) => Ok(BlobData::File(f)),
            Err(StoreError::Corrupt { .. }) => Ok(BlobData::Corrupt),
            Err(StoreError::Missing(_)) => Err(std::io::ErrorKind::NotFound.into()),
            Err(StoreError::Io { source, .. }) => Err(source),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    fn blob_size(&self, d: &Digest) -> Result<u64, ViewError> {
        Ok(self.cache.store.blob_size(d)?)
    }

    fn dags(&self) -> Result<Vec<String>, ViewError> {
        let mut dags: Vec<String> = Vec::new();
        for (dag, _, key) in self.cache.index.latest_all(None)? {
            if dags.last() != Some(&dag) && self.cache.index.get(&key)?.is_some() {
                dags.push(dag);
            }
        }
        dags.dedup();
        Ok(dags)
    }

    fn tasks(&self, dag: &str) -> Result<Vec<(String, Digest)>, ViewError> {
        let mut out = Vec::new();
        for (d, task, key) in self.cache.index.latest_all(Some(dag))? {
            if d == dag && self.cache.index.get(&key)?.is_some() {
                out.push((task, key));
            }
        }
        Ok(out)
    }

    fn task_latest(&self, dag: &str, task: &str) -> Result<Option<(Digest, u64)>, ViewError> {
        match self.cache.index.latest_moved(dag, task)? {
            Some((key, ms)) if self.cache.index.get(&key)?.is_some() => Ok(Some((key, ms))),
            _ => Ok(None),
        }
    }

    fn sync_stamp(&self, name: &str, path: &[u8]) -> Result<Option<(Digest, u64)>, ViewError> {
        Ok(self.cache.index.stamp(name, path)?)
    }

    fn runs(&self) -> Result<Vec<u64>, ViewError> {
        Ok(self.cache.index.run_ids()?)
    }

    fn sync_base(&self, name: &str) -> Result<Option<(Digest, u64)>, ViewError> {
        Ok(self.cache.index.stamp(name, crate::sync::stamps::MARK)?)
    }

    fn syncs(&self) -> Result<Vec<SyncInfo>, ViewError> {
        match self.cache.store.sync_logs() {
            Ok(logs) => Ok(logs.into_iter().map(sync_info).collect()),
            Err(e) => Err(ViewError::Other(e.to_string())),
        }
    }

    fn sync_log(&self, name: &str) -> Result<Option<SyncInfo>, ViewError> {
        match self.cache.store.sync_log(name) {
            Ok(log) => Ok(log.map(sync_info)),
            Err(e) => Err(ViewError::Other(e.to_string())),
        }
    }

    fn run(&self, id: u64) -> Result<Option<RunInfo>, ViewError> {
        Ok(self.cache.index.run(id)?.map(run_info))
    }

    fn why(&self, dag: &str, task: &str) -> Result<Option<String>, ViewError> {
        Ok(explain::latest(&self.cache, dag, task)?)
    }

    fn stats_text(&self) -> Result<String, ViewError> {
        let mut t = self.cache.index.stats()?.to_text(&self.cache.policy());
        t += &self.gauges.to_text();
        Ok(t)
    }

    fn quarantine(&self, blob: &Digest, key: Option<&Digest>) -> Result<(), ViewError> {
        self.cache.store.quarantine_blob(
            blob,
            "a verified read in the mount: content does not match its name",
        )?;
        if let Some(k) = key {
            let why = format!("a verified read found blob {blob} corrupt");
            self.cache.drop_corrupt(k, &why)?;
        }
        Ok(())
    }

    fn metrics_text(&self) -> Result<String, ViewError> {
        let mut t = self.cache.index.stats()?.to_prometheus();
        t += &self.gauges.to_prometheus();
        Ok(t)
    }
}

/// What the mount shows of a run record.
fn run_info(r: RunRecord) -> RunInfo {
    RunInfo {
        finished_ms: r.finished_ms,
        tasks: r
            .tasks
            .into_iter()
            .map(|t| RunTaskInfo {
                task: t.task,
                key: t.key,
                since_ms: t.since_ms,
            })
            .collect(),
    }
}

/// What the mount shows of a sync log.
fn sync_info(log: SyncLog) -> SyncInfo {
    SyncInfo {
        name: log.name,
        snapshots: log
            .snapshots
            .iter()
            .map(|s| SnapshotInfo {
                seq: s.seq,
                tree: s.tree,
                created_ms: s.created_ms,
            })
            .collect(),
    }
}
