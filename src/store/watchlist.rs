//! The watch list: the syncs a daemon watches, `<store>/watches.json`, so
//! a daemon started later re-arms them (`daemon::watches::Watches::resume`).
//!
//! ```text
//! {"version": 1,
//!  "watches": [{"name": "src", "root": "/abs/dir",
//!               "include": ["*.rs"], "exclude": [], "skip_unreadable": false}, …]}
//! ```
//!
//! A record is added when a daemon starts a watch and removed by `dagfs
//! sync --stop`; a daemon that stops keeps it. Written whole, atomically
//! (`tmp/` then rename, both made durable): a crash leaves the old list or
//! the new one. A missing file is an empty list; an unreadable one is
//! `Corrupt` (the daemon reports it and watches nothing rather than guess),
//! and the next `set_watch_record` replaces it (with only the record it
//! adds, or with none after a `--stop`).

use std::fs;

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::Store;
use crate::hash::Digest;

const FILE: &str = "watches.json";
const VERSION: u32 = 1;

/// One watched sync: what `dagfs sync DIR --watch` was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRecord {
    pub name: String,
    /// The host directory, absolute.
    pub root: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub skip_unreadable: bool,
}

#[derive(Serialize, Deserialize)]
struct WatchList {
    version: u32,
    watches: Vec<WatchRecord>,
}

impl Store {
    /// The recorded watches, by name.
    pub fn watch_records(&self) -> Result<Vec<WatchRecord>> {
        let p = self.root().join(FILE);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Io { path: p, source: e }),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            digest: Digest::default(),
            path: p.clone(),
            reason,
        };
        let list: WatchList =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("watch list: {e}")))?;
        if list.version != VERSION {
            return Err(corrupt(format!(
                "watch list version {} (this dagfs reads {VERSION})",
                list.version
            )));
        }
        Ok(list.watches)
    }

    /// Record `rec` (replacing a record of the same name), or with `None`
    /// drop the record of `name`.
    pub fn set_watch_record(&self, name: &str, rec: Option<WatchRecord>) -> Result<()> {
        let mut all = self.watch_records().unwrap_or_default();
        all.retain(|r| r.name != name);
        all.extend(rec);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let list = WatchList {
            version: VERSION,
            watches: all,
        };
        let tmp = self
            .tmp_root()
            .join(format!("watches-{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(&list).expect("watch list serializes");
        self.replace_file(&tmp, &self.root().join(FILE), &bytes)
    }
}
