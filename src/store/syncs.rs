//! Sync logs: the durable record of each synced host directory's snapshots,
//! `<store>/syncs/<name>` (JSON). Part of the source of truth: gc keeps
//! every snapshot tree a log names.

use std::fs;

use serde::{Deserialize, Serialize};

use super::error::{IoContext, Result, StoreError};
use super::Store;
use crate::hash::Digest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// 1, 2, … within its name (`/syncs/<name>@<seq>`).
    pub seq: u64,
    pub tree: Digest,
    pub created_ms: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncLog {
    pub name: String,
    /// The host directory, absolute.
    pub root: String,
    pub snapshots: Vec<Snapshot>,
}

impl SyncLog {
    pub fn latest(&self) -> Option<&Snapshot> {
        self.snapshots.last()
    }
}

/// A sync log that does not decode: (name, why).
pub type Damaged = (String, String);

impl Store {
    fn syncs_dir(&self) -> std::path::PathBuf {
        self.root().join("syncs")
    }

    pub fn sync_log(&self, name: &str) -> Result<Option<SyncLog>> {
        let p = self.syncs_dir().join(name);
        match fs::read(&p) {
            Ok(b) => match serde_json::from_slice::<SyncLog>(&b) {
                Ok(log) if log.name == name => Ok(Some(log)),
                Ok(log) => Err(StoreError::Corrupt {
                    digest: Digest::default(),
                    path: p,
                    reason: format!("sync log: names {:?}, filed as {name:?}", log.name),
                }),
                Err(e) => Err(StoreError::Corrupt {
                    digest: Digest::default(),
                    path: p,
                    reason: format!("sync log: {e}"),
                }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    /// Write a sync log durably (its snapshot trees must be committed).
    pub fn put_sync_log(&self, log: &SyncLog) -> Result<()> {
        let dir = self.syncs_dir();
        fs::create_dir_all(&dir).at(&dir)?;
        let tmp = self
            .tmp_root()
            .join(format!("sync-{}-{}", log.name, std::process::id()));
        let bytes = serde_json::to_vec_pretty(log).expect("sync log serializes");
        self.replace_file(&tmp, &dir.join(&log.name), &bytes)
    }

    /// Every sync log that decodes. A damaged one (`sync_logs_checked`)
    /// is left out: it stops nothing about the other syncs.
    pub fn sync_logs(&self) -> Result<Vec<SyncLog>> {
        Ok(self.sync_logs_checked()?.0)
    }

    /// Every sync log that decodes, and the damaged ones: (name, why).
    pub fn sync_logs_checked(&self) -> Result<(Vec<SyncLog>, Vec<Damaged>)> {
        let dir = self.syncs_dir();
        let (mut out, mut damaged) = (Vec::new(), Vec::new());
        for name in super::dir_names(&dir)? {
            let Some(n) = name.to_str() else {
                damaged.push((
                    name.to_string_lossy().into_owned(),
                    "name is not UTF-8".into(),
                ));
                continue;
            };
            match self.sync_log(n) {
                Ok(Some(log)) => out.push(log),
                Ok(None) => {}
                Err(StoreError::Corrupt { reason, .. }) => damaged.push((n.to_string(), reason)),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        damaged.sort();
        Ok((out, damaged))
    }

    /// Move the sync log `name` into quarantine (`quarantine/syncs/`): the
    /// next `dagfs sync` under that name starts a fresh history.
    pub fn quarantine_sync_log(&self, name: &str, reason: &str) -> Result<bool> {
        self.quarantine_path(
            &self.syncs_dir().join(name),
            super::quarantine::Kind::Sync,
            name,
            reason,
        )
    }
}
