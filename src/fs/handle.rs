//! Open file and directory handles (the `fh` the kernel passes back).
//!
//! Owns: what each open holds: a stored file's descriptor or its
//! passthrough backing id, a generated file's snapshot, a directory's
//! decoded listing. May call: nothing but std and `fuser::BackingId`.
//! Guarantees: a handle lives from open/opendir to release/releasedir;
//! readers clone an `Arc` out and never hold the table lock during I/O;
//! handle numbers are never reused within a mount.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::BackingId;

use super::error::FsError;
use super::inode::{lock, Ino};
use super::node::{Entries, Kind};

/// A directory as listed: `.` and `..` then `entries`. Offsets the kernel
/// sees are `index + 1` into that sequence.
pub struct Listing {
    pub dot: Ino,
    pub dotdot: Ino,
    pub entries: Entries,
}

impl Listing {
    /// Entries including `.` and `..`.
    pub fn count(&self) -> u64 {
        self.entries.len() as u64 + 2
    }

    /// Entry `i` (>= 2): its name and kind.
    pub fn entry(&self, i: u64) -> Option<(Cow<'_, [u8]>, Kind)> {
        self.entries.get(i.checked_sub(2)? as usize)
    }
}

pub enum Handle {
    /// A stored file read by `pread`.
    Blob(Arc<File>),
    /// A stored file the kernel reads itself (passthrough); the backing id
    /// (shared by the inode's opens) must outlive the open. No descriptor is
    /// kept: the backing id holds the kernel's own reference to the file.
    Passthrough {
        _backing: Arc<BackingId>,
    },
    /// A generated file, snapshotted at open.
    Bytes(Arc<[u8]>),
    Dir(Arc<Listing>),
}

/// What a read is served from.
pub enum Source {
    File(Arc<File>),
    Bytes(Arc<[u8]>),
}

pub struct HandleTable {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Handle>>,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            next: AtomicU64::new(1),
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl HandleTable {
    pub fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.map).insert(fh, h);
        fh
    }

    pub fn remove(&self, fh: u64) -> Option<Handle> {
        lock(&self.map).remove(&fh)
    }

    pub fn source(&self, fh: u64) -> Result<Source, FsError> {
        match lock(&self.map).get(&fh) {
            Some(Handle::Blob(file)) => Ok(Source::File(file.clone())),
            // NB: the kernel never sends reads for a passthrough open.
            Some(Handle::Passthrough { .. }) => Err(FsError::BadHandle(fh)),
            Some(Handle::Bytes(b)) => Ok(Source::Bytes(b.clone())),
            Some(Handle::Dir(_)) => Err(FsError::IsDir),
            None => Err(FsError::BadHandle(fh)),
        }
    }

    pub fn listing(&self, fh: u64) -> Result<Arc<Listing>, FsError> {
        match lock(&self.map).get(&fh) {
            Some(Handle::Dir(l)) => Ok(l.clone()),
            Some(_) => Err(FsError::NotDir),
            None => Err(FsError::BadHandle(fh)),
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }
}
