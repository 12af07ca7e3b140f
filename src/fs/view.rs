//! The narrow read interface the FUSE layer sees. `fs` never touches sled or
//! the store's paths directly except through this trait; the daemon
//! implements it over the cache (`daemon::view`), tests can fake it.

use crate::hash::{Digest, HexPrefix};
use crate::index::RunRecord;
use crate::store::syncs::SyncLog;
use crate::store::Tree;

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

pub trait StoreView: Send + Sync + 'static {
    /// Up to `max` cache keys after `after` (from the first if None),
    /// ascending: `/keys` is listed a page at a time.
    fn keys_after(&self, after: Option<&Digest>, max: usize) -> Result<Vec<Digest>, ViewError>;
    /// The single cache key starting with `prefix`; None if none or several.
    fn resolve_key(&self, prefix: &HexPrefix) -> Result<Option<Digest>, ViewError>;
    fn entry(&self, key: &Digest) -> Result<Option<EntryInfo>, ViewError>;
    /// The single stored blob (any blob: file, tree, log) starting with
    /// `prefix`; None if none or several.
    fn resolve_blob(&self, prefix: &HexPrefix) -> Result<Option<Digest>, ViewError>;
    /// Decode a stored tree (`Corrupt` if the blob is not a tree).
    fn read_tree(&self, tree: &Digest) -> Result<Tree, ViewError>;
    /// Is this blob a tree? (`/trees/<digest>` accepts only trees.)
    fn is_tree(&self, d: &Digest) -> Result<bool, ViewError>;
    /// Open a blob for reading: a loose blob's file (pread, passthrough;
    /// read-only, 0444), or a packed blob's bytes, checked against its name
    /// (`BlobData::Corrupt` if they do not match). NotFound if not stored.
    fn open_blob(&self, d: &Digest) -> std::io::Result<BlobData>;
    fn blob_size(&self, d: &Digest) -> Result<u64, ViewError>;
    /// Pipeline names with at least one task, ascending.
    fn dags(&self) -> Result<Vec<String>, ViewError>;
    /// (task, latest key) for one pipeline, ascending by task; only tasks
    /// whose latest key is still cached.
    fn tasks(&self, dag: &str) -> Result<Vec<(String, Digest)>, ViewError>;
    /// Run ids, ascending.
    fn runs(&self) -> Result<Vec<u64>, ViewError>;
    fn run(&self, id: u64) -> Result<Option<RunRecord>, ViewError>;
    /// The text of `/why/<dag>/<task>` (as `dagfs explain` prints it for the
    /// task's latest key).
    fn why(&self, dag: &str, task: &str) -> Result<Option<String>, ViewError>;
    /// `/.dagfs/stats`: human-readable statistics.
    fn stats_text(&self) -> Result<String, ViewError>;
    /// `/.dagfs/metrics`: Prometheus text format.
    fn metrics_text(&self) -> Result<String, ViewError>;
    /// Synced host directories' snapshot logs, by name (`/syncs`).
    fn syncs(&self) -> Result<Vec<SyncLog>, ViewError> {
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
    /// The log of one synced directory; `name` is a valid sync name.
    fn sync_log(&self, name: &str) -> Result<Option<SyncLog>, ViewError> {
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
