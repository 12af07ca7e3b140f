//! The durable record of one cache entry: `entries/ab/<key>`, JSON.
//!
//! The record holds the key's full manifest (every component the key was
//! derived from), so `dagfs explain` can diff two keys and `fsck` can
//! re-derive a key; and everything the index keeps about the entry, so the
//! index can be rebuilt from `entries/` alone.

use serde::{Deserialize, Serialize};

use crate::hash::Digest;

pub const ENTRY_FORMAT: u32 = 1;

/// The components of a cache key (see `exec::key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Manifest {
    /// Task name.
    pub name: String,
    /// The shell command (or, for library closures, `closure`).
    pub command: String,
    /// Working directory relative to the pipeline file.
    pub cwd: String,
    /// Declared env vars, sorted by name; `None` = unset.
    pub env: Vec<(String, Option<String>)>,
    /// Declared host inputs, sorted by path, with their Merkle digests.
    pub inputs: Vec<(String, Digest)>,
    /// Values supplied through the `CacheKey` trait, sorted by name.
    pub params: Vec<(String, Digest)>,
    pub version: String,
    /// Digest of all the above.
    pub task_digest: Digest,
    /// Dependencies' output digests, sorted by name.
    pub deps: Vec<(String, Digest)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub format: u32,
    pub key: Digest,
    pub dag: String,
    pub task: String,
    pub manifest: Manifest,
    /// Root tree digest of the output.
    pub output: Digest,
    /// Sum of output file sizes.
    pub size: u64,
    pub files: u64,
    /// Unix time, milliseconds.
    pub created_ms: u64,
    pub duration_ms: u64,
    pub exit_status: i32,
    pub stdout: Digest,
    pub stderr: Digest,
    pub ttl_secs: Option<u64>,
    /// The task's latest key when this one was produced (for `explain`).
    pub previous: Option<Digest>,
    /// What the run that produced it did beyond what it declared
    /// (`exec::hermetic`); None: not observed. Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hermetic: Option<Findings>,
}

impl Entry {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("entry serializes")
    }

    pub fn from_json(b: &[u8]) -> Result<Entry, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

/// What one run of a task did beyond what it declared. Paths under the
/// pipeline directory are relative to it (directories end in `/`); others
/// (in a `hermetic_scope`) are absolute. Each list is sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Findings {
    /// Files it read that are not among its inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// Directories it listed that are not among its inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listed: Vec<String>,
    /// Files it wrote outside `$DAGFS_OUT` and `$TMPDIR`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wrote: Vec<String>,
    /// Declared inputs it never opened (not an error: worth a look).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<String>,
}
