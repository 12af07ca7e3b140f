//! What every part of a scan shares: its options and output, a file's
//! stat as the stat cache compares it (`Meta`), when a stamp is racy, the
//! ignore files, and the tree-totals memo. Imports nothing else of `sync`,
//! so `scan`, `walk`, `dirty`, `statcache` and `watch` depend on it and not
//! on each other in a circle.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::hash::Digest;

/// A file stamped this close to (or after) the start of the scan that read
/// it is racy: the kernel stamps files from a coarse clock (one tick, at
/// most 10 ms), so a later write within the same tick could leave every
/// stat field unchanged. 50 ms covers a tick with margin.
pub const RACY_NS: i64 = 50_000_000;

/// Reads of one file before it is declared in conflict (a racy file needs
/// two that agree).
pub const MAX_TRIES: u32 = 4;

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub skip_unreadable: bool,
    /// Directories never entered (the store, mount points).
    pub skip: Vec<PathBuf>,
    /// Walking and hashing threads (0: available cores).
    pub threads: usize,
    /// Set by the sync itself: the name has no snapshot yet, so its change
    /// set will list every path (see `walk::walk`).
    #[doc(hidden)]
    pub first_snapshot: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ScanOutput {
    pub tree: Digest,
    pub files: u64,
    pub bytes: u64,
    /// Files read and hashed this time.
    pub hashed: u64,
    /// Files answered by the stat cache.
    pub reused: u64,
    /// Reads retried because the file changed meanwhile.
    pub retries: u64,
    pub unreadable: Vec<PathBuf>,
    /// FIFOs, sockets, devices: not storable, left out.
    pub special: Vec<PathBuf>,
}

/// What the stat cache compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
}

impl Meta {
    /// All zero: a placeholder where a record has no stat.
    pub(crate) const NONE: Meta = Meta {
        dev: 0,
        ino: 0,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        mode: 0,
    };

    /// Stamped within `RACY_NS` of (or after) `scan_start`.
    pub(crate) fn racy(&self, scan_start: i64) -> bool {
        self.mtime_ns >= scan_start - RACY_NS || self.ctime_ns >= scan_start - RACY_NS
    }

    pub(crate) fn of(md: &std::fs::Metadata) -> Meta {
        Meta {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.mtime_nsec()),
            ctime_ns: md
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.ctime_nsec()),
            mode: md.mode(),
        }
    }

    /// The same, from a raw `fstatat`.
    pub(crate) fn of_stat(st: &nix::sys::stat::FileStat) -> Meta {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Meta {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
            ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
            mode: st.st_mode,
        }
    }

    /// What differs, in words (for conflict errors).
    pub(crate) fn differences(&self, after: &Meta) -> String {
        let mut d = Vec::new();
        if self.size != after.size {
            d.push(format!("size {} -> {}", self.size, after.size));
        }
        if self.mtime_ns != after.mtime_ns {
            d.push("mtime".to_string());
        }
        if self.ctime_ns != after.ctime_ns {
            d.push("ctime".to_string());
        }
        if self.mode != after.mode {
            d.push(format!("mode {:o} -> {:o}", self.mode, after.mode));
        }
        if self.ino != after.ino || self.dev != after.dev {
            d.push("replaced by another file".to_string());
        }
        d.join(", ")
    }
}

/// The ignore files a scan honours in every directory (`.gitignore` as git
/// does, `.dagfsignore` with the same syntax and higher precedence).
pub const GIT_IGNORE: &str = ".gitignore";
pub const DAGFS_IGNORE: &str = ".dagfsignore";

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The ignore files whose stats a record keeps (see `scan`).
pub(crate) const IGNORE_FILES: [&str; 2] = [GIT_IGNORE, DAGFS_IGNORE];

/// (files, bytes) under a tree, by tree digest. A memo: trees are immutable.
pub(crate) type Totals = HashMap<Digest, (u64, u64)>;
