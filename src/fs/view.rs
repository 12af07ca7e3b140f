//! The narrow read interface the FUSE layer sees. `fs` never touches sled or
//! the store's paths directly except through this trait; the daemon
//! implements it over the cache (`daemon::view`), tests can fake it.
//!
//! What crosses it are the view's own types (`EntryInfo`, `RunInfo`,
//! `SyncInfo`): only what the mount shows, so the index's and the sync
//! log's records can change without `fs` noticing. Stored trees cross as
//! `store::tree::Tree` (the tree format is what the mount lists).

use crate::hash::{Digest, HexPrefix};
use crate::store::tree::Tree;

/// Errors a view can report. `fs::error::errno` maps them to errno values.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("not found")]
    NotFound,
    /// Stored bytes that do not match their name, or a tree that does not
    /// decode.
    #[error("corrupt object {0}")]
    Corrupt(Digest),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// An open blob (`StoreView::open_blob`).
#[derive(Debug)]
pub enum BlobData {
    File(std::fs::File),
    Bytes(std::sync::Arc<[u8]>),
    /// A packed blob whose bytes do not hash to its name.
    Corrupt,
}

/// What the mount shows about one cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub key: Digest,
    /// Root tree of the output.
    pub output: Digest,
    pub dag: String,
    pub task: String,
    /// Unix time, milliseconds (used as the mtime of everything under it).
    pub created_ms: u64,
}

/// What the mount shows of one run (`/runs/<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// Unix ms: the time shown for a task whose `since_ms` is unknown.
    pub finished_ms: u64,
    pub tasks: Vec<RunTaskInfo>,
}

/// One task of a run (`/runs/<id>/<task>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTaskInfo {
    pub task: String,
    /// Its cache key; None if it was never keyed (skipped).
    pub key: Option<Digest>,
    /// When that key became the task's latest (Unix ms), if known.
    pub since_ms: Option<u64>,
}

/// What the mount shows of one synced directory (`/syncs/<name>`,
/// `/syncs/<name>@<seq>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncInfo {
    pub name: String,
    /// Oldest first.
    pub snapshots: Vec<SnapshotInfo>,
}

impl SyncInfo {
    pub fn latest(&self) -> Option<&SnapshotInfo> {
        self.snapshots.last()
    }
}

/// One snapshot of a synced directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// 1, 2, … within its sync.
    pub seq: u64,
    /// Its root tree.
    pub tree: Digest,
    /// Unix ms.
    pub created_ms: u64,
}

/// Every method has a default that answers as an empty store does (no
/// keys, no blobs, no pipelines, no runs): a view implements what it
/// serves, and a test fake only what its test reads.
pub trait StoreView: Send + Sync + 'static {
    /// Up to `max` cache keys after `after` (from the first if None),
    /// ascending: `/keys` is listed a page at a time.
    fn keys_after(&self, after: Option<&Digest>, max: usize) -> Result<Vec<Digest>, ViewError> {
        let _ = (after, max);
        Ok(Vec::new())
    }
    /// The single cache key starting with `prefix`; None if none or several.
    fn resolve_key(&self, prefix: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        let _ = prefix;
        Ok(None)
    }
    fn entry(&self, key: &Digest) -> Result<Option<EntryInfo>, ViewError> {
        let _ = key;
        Ok(None)
    }
    /// Entry `key`, which the store lacks, fetched from a second tier (the
    /// daemon's remote) and stored: None if no tier has it; an error (the
    /// lookup answers EIO) if the tier failed or did not answer in time.
    /// Called for a full key only; it must return within a bounded time.
    fn fetch_entry(&self, key: &Digest) -> Result<Option<EntryInfo>, ViewError> {
        let _ = key;
        Ok(None)
    }
    /// The single stored blob (any blob: file, tree, log) starting with
    /// `prefix`; None if none or several.
    fn resolve_blob(&self, prefix: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        let _ = prefix;
        Ok(None)
    }
    /// Decode a stored tree (`Corrupt` if the blob is not a tree).
    fn read_tree(&self, tree: &Digest) -> Result<Tree, ViewError> {
        let _ = tree;
        Err(ViewError::NotFound)
    }
    /// Is this blob a tree? (`/trees/<digest>` accepts only trees.)
    fn is_tree(&self, d: &Digest) -> Result<bool, ViewError> {
        let _ = d;
        Ok(false)
    }
    /// Open a blob for reading: a loose blob's file (pread, passthrough;
    /// read-only, 0444), or a packed blob's bytes, checked against its name
    /// (`BlobData::Corrupt` if they do not match). NotFound if not stored.
    fn open_blob(&self, d: &Digest) -> std::io::Result<BlobData> {
        let _ = d;
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn blob_size(&self, d: &Digest) -> Result<u64, ViewError> {
        let _ = d;
        Err(ViewError::NotFound)
    }
    /// Pipeline names with at least one task, ascending.
    fn dags(&self) -> Result<Vec<String>, ViewError> {
        Ok(Vec::new())
    }
    /// (task, latest key) for one pipeline, ascending by task; only tasks
    /// whose latest key is still cached.
    fn tasks(&self, dag: &str) -> Result<Vec<(String, Digest)>, ViewError> {
        let _ = dag;
        Ok(Vec::new())
    }
    /// Run ids, ascending.
    fn runs(&self) -> Result<Vec<u64>, ViewError> {
        Ok(Vec::new())
    }
    fn run(&self, id: u64) -> Result<Option<RunInfo>, ViewError> {
        let _ = id;
        Ok(None)
    }
    /// The text of `/why/<dag>/<task>` (as `dagfs explain` prints it for the
    /// task's latest key).
    fn why(&self, dag: &str, task: &str) -> Result<Option<String>, ViewError> {
        let _ = (dag, task);
        Ok(None)
    }
    /// `/.dagfs/stats`: human-readable statistics.
    fn stats_text(&self) -> Result<String, ViewError> {
        Ok(String::new())
    }
    /// `/.dagfs/metrics`: Prometheus text format.
    fn metrics_text(&self) -> Result<String, ViewError> {
        Ok(String::new())
    }
    /// Synced host directories' snapshot logs, by name (`/syncs`).
    fn syncs(&self) -> Result<Vec<SyncInfo>, ViewError> {
        Ok(Vec::new())
    }
    /// A task's latest key and when it became the latest (Unix ms; 0:
    /// unknown), if that key is still cached.
    fn task_latest(&self, dag: &str, task: &str) -> Result<Option<(Digest, u64)>, ViewError> {
        Ok(self
            .tasks(dag)?
            .into_iter()
            .find(|(t, _)| t == task)
            .map(|(_, k)| (k, 0)))
    }
    /// The stamp of `path` in sync `name` (`sync::stamps`): the content it
    /// took last and when (Unix ms).
    fn sync_stamp(&self, name: &str, path: &[u8]) -> Result<Option<(Digest, u64)>, ViewError> {
        let _ = (name, path);
        Ok(None)
    }
    /// Sync `name`'s base record (`sync::stamps`): the first snapshot's
    /// tree it vouches for and when that was taken (Unix ms).
    fn sync_base(&self, name: &str) -> Result<Option<(Digest, u64)>, ViewError> {
        let _ = name;
        Ok(None)
    }
    /// The log of one synced directory; `name` is a valid sync name.
    fn sync_log(&self, name: &str) -> Result<Option<SyncInfo>, ViewError> {
        Ok(self.syncs()?.into_iter().find(|l| l.name == name))
    }
    /// The store's blob generation (see `store::Store::blob_generation`):
    /// it moves on when gc or quarantine may remove blobs. 0: never.
    fn blob_generation(&self) -> u64 {
        0
    }
    /// A verified read found blob `blob` corrupt: move it out of the store
    /// (into quarantine) and, if it was read under `/keys/<key>`, drop that
    /// entry so it misses and re-runs. A view over no store cannot.
    fn quarantine(&self, blob: &Digest, key: Option<&Digest>) -> Result<(), ViewError> {
        let _ = (blob, key);
        Err(ViewError::Other("this view has no quarantine".into()))
    }
}
