//! The durable upload queue: `<store>/remote-queue/<key hex>`, one empty
//! file per entry waiting to be uploaded.
//!
//! Write order (crash safety): a marker is created when the scheduler
//! publishes an entry in the index, **before** the entry's record is
//! renamed into `entries/` (`Store::publish_entries` runs a `syncfs` first,
//! which makes the marker durable too). So a `kill -9` at any instant
//! leaves every durable entry of an uploading store with its marker: no
//! upload is lost. A marker whose entry never became durable (killed
//! before the record's rename; policy left no room) is dropped by the
//! uploader, which reads only `entries/` (the source of truth) and so can
//! upload nothing that was not committed. A marker goes only after the
//! server accepted the entry's `UpdateActionResult`, which is sent last,
//! after every blob: a kill during an upload leaves the marker, and the
//! next upload sends what is missing again (FindMissingBlobs) and nothing
//! else.

use std::path::{Path, PathBuf};

use crate::hash::Digest;

use super::error::RemoteError;

pub const DIR: &str = "remote-queue";

pub fn dir(store: &Path) -> PathBuf {
    store.join(DIR)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RemoteError {
    let path = path.to_path_buf();
    move |source| RemoteError::Io { path, source }
}

/// Queue `key` (durable with the store's next `syncfs`).
pub fn push(store: &Path, key: &Digest) -> Result<(), RemoteError> {
    let d = dir(store);
    let p = d.join(key.to_hex());
    match std::fs::File::create(&p) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
            std::fs::File::create(&p).map(|_| ()).map_err(io(&p))
        }
        Err(e) => Err(io(&p)(e)),
    }
}

/// Every queued key (names that are not keys are ignored).
pub fn list(store: &Path) -> Result<Vec<Digest>, RemoteError> {
    let d = dir(store);
    let rd = match std::fs::read_dir(&d) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&d)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io(&d))?;
        if let Some(k) = e.file_name().to_str().and_then(Digest::from_hex) {
            out.push(k);
        }
    }
    out.sort();
    Ok(out)
}

pub fn len(store: &Path) -> usize {
    list(store).map(|l| l.len()).unwrap_or(0)
}

/// Done with `key` (uploaded, or nothing to upload).
pub fn remove(store: &Path, key: &Digest) -> Result<(), RemoteError> {
    let p = dir(store).join(key.to_hex());
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&p)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_list_remove() {
        let t = tempfile::tempdir().unwrap();
        assert!(list(t.path()).unwrap().is_empty());
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        push(t.path(), &a).unwrap();
        push(t.path(), &b).unwrap();
        push(t.path(), &a).unwrap();
        std::fs::write(dir(t.path()).join("junk"), b"").unwrap();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(list(t.path()).unwrap(), want);
        remove(t.path(), &a).unwrap();
        remove(t.path(), &a).unwrap();
        assert_eq!(list(t.path()).unwrap(), vec![b]);
    }
}
