//! Open file and directory handles (the `fh` the kernel passes back).
//!
//! Owns: what each open holds: a stored file's descriptor or its
//! passthrough backing id, a generated file's snapshot, a directory's
//! decoded listing. May call: nothing but std and `fuser::BackingId`.
//! Guarantees: a handle lives from open/opendir to release/releasedir;
//! readers clone an `Arc` out and never hold the table lock during I/O;
//! handle numbers are never reused within a mount; at most `MAX_HANDLES`
//! are open at once (an open past it answers ENFILE, and the table does
//! not grow).

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

/// Open handles one mount keeps at most (each may hold a descriptor).
pub const MAX_HANDLES: usize = 65_536;

pub struct HandleTable {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Handle>>,
    max: usize,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable::with_limit(MAX_HANDLES)
    }
}

impl HandleTable {
    pub fn with_limit(max: usize) -> Self {
        HandleTable {
            next: AtomicU64::new(1),
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// A new handle for `h`, or `TooManyHandles` (and `h` dropped) when
    /// the table is full.
    pub fn insert(&self, h: Handle) -> Result<u64, FsError> {
        let mut map = lock(&self.map);
        if map.len() >= self.max {
            drop(map);
            drop(h);
            return Err(FsError::TooManyHandles(self.max));
        }
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        map.insert(fh, h);
        Ok(fh)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_refuses_until_a_handle_is_released() {
        let t = HandleTable::with_limit(2);
        let a = t.insert(Handle::Bytes(Arc::from(&b"a"[..]))).unwrap();
        let b = t.insert(Handle::Bytes(Arc::from(&b"b"[..]))).unwrap();
        let err = t.insert(Handle::Bytes(Arc::from(&b"c"[..]))).unwrap_err();
        assert!(matches!(err, FsError::TooManyHandles(2)), "{err}");
        assert_eq!(super::super::error::errno(&err), fuser::Errno::ENFILE);
        assert_eq!(t.len(), 2);
        assert!(t.remove(a).is_some());
        let c = t.insert(Handle::Bytes(Arc::from(&b"c"[..]))).unwrap();
        // Numbers are never reused.
        assert!(c > b);
        assert!(matches!(t.source(c), Ok(Source::Bytes(ref x)) if &x[..] == b"c"));
    }
}
