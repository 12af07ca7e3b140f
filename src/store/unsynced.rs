//! Blobs a run has staged and not yet committed, readable by the run's own
//! tasks (`Unsynced`): a task that depends on another need not wait for
//! its dependency's output to be made durable, only for its bytes.
//!
//! Why: a dependent read its dependencies' outputs from `blobs/`, so the
//! scheduler committed them (`fdatasync` each, then their directories)
//! before it started the dependent. In a chain that put a commit on every
//! link's critical path: 0.5-0.9 ms of a 2.5-3 ms link here. Durability
//! is what publishing an entry needs (`commit`: an entry record goes out
//! only after its blobs are durable), not what reading bytes needs.
//!
//! May call: `hash`. Guarantees: every byte read through it is checked
//! against its digest, as `Store::copy_blob` checks the store's; a source
//! gone from under a reader (committed meanwhile: renamed into `blobs/`) is
//! `None`, and the reader reads the store instead.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::{Result, StoreError};
use crate::hash::Digest;

/// Where a staged blob's bytes are until its commit.
#[derive(Clone, Debug)]
pub enum Source {
    /// A loose blob staged under `tmp/` (renamed into `blobs/` at the commit).
    File(PathBuf),
    /// A small blob held in a pack being written (see `pack::PackWriter`).
    Bytes(Arc<[u8]>),
}

/// The staged, uncommitted blobs of one run, by digest.
#[derive(Default, Debug)]
pub struct Unsynced {
    map: Mutex<HashMap<Digest, Source>>,
}

impl Unsynced {
    pub fn add(&self, blobs: impl IntoIterator<Item = (Digest, Source)>) {
        self.lock().extend(blobs);
    }

    /// Everything was committed: the store answers from now on.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// These were committed: the store answers for them from now on. NB:
    /// one staged again since (another task's identical output) is
    /// forgotten too, which is right: the store holds its bytes.
    pub fn forget(&self, committed: &[Digest]) {
        let mut map = self.lock();
        for d in committed {
            map.remove(d);
        }
    }

    pub fn get(&self, d: &Digest) -> Option<Source> {
        self.lock().get(d).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Source>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blob `d`'s bytes, checked; None where it is not staged here (or was
    /// committed while we looked).
    pub fn read(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        let (bytes, at) = match self.get(d) {
            None => return Ok(None),
            Some(Source::Bytes(b)) => (b.to_vec(), PathBuf::from(STAGED_PACK)),
            Some(Source::File(p)) => match fs::read(&p) {
                Ok(b) => (b, p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StoreError::Io { path: p, source: e }),
            },
        };
        check(d, &bytes, &at)?;
        Ok(Some(bytes))
    }

    /// Copy blob `d` to a new file `dst`, checked as it is copied (a
    /// mismatch is `Corrupt`, and `dst` is removed). Ok(false): not staged
    /// here (or committed while we looked); nothing was written.
    pub fn copy(&self, d: &Digest, dst: &Path) -> Result<bool> {
        match self.get(d) {
            None => Ok(false),
            Some(Source::Bytes(b)) => {
                check(d, &b, Path::new(STAGED_PACK))?;
                let written = File::create(dst).and_then(|mut f| f.write_all(&b));
                if let Err(e) = written {
                    let _ = fs::remove_file(dst);
                    return Err(StoreError::Io {
                        path: dst.to_path_buf(),
                        source: e,
                    });
                }
                Ok(true)
            }
            Some(Source::File(p)) => match File::open(&p) {
                Ok(src) => super::read::copy_checked(src, d, &p, dst).map(|()| true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(StoreError::Io { path: p, source: e }),
            },
        }
    }
}

/// Where an error says packed staged bytes were (they have no file yet).
const STAGED_PACK: &str = "(a pack being written, in memory)";

fn check(d: &Digest, bytes: &[u8], path: &Path) -> Result<()> {
    let got = Digest::of(bytes);
    if got == *d {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        digest: *d,
        path: path.to_path_buf(),
        reason: format!("its staged bytes hash to {got}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Staged, Store};
    use std::os::unix::fs::PermissionsExt;

    /// A staged loose blob and packed ones are read back checked; bytes
    /// changed after staging are `Corrupt` (and leave no copy); a staged
    /// file gone (committed meanwhile) and a digest never staged are
    /// "not here", so the reader goes to the store; `clear` forgets all.
    #[test]
    fn staged_blobs_are_read_checked_until_the_commit() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path(), &mut |_| {}).unwrap();
        let work = s.tempdir("t").unwrap();
        let mut st = Staged::default();
        let big = vec![7u8; crate::store::pack::MAX_PACKED + 1];
        let loose = s.stage_bytes(work.path(), &big, &mut st).unwrap();
        let small = s.stage_bytes(work.path(), b"small", &mut st).unwrap();
        let u = Unsynced::default();
        u.add(st.readable().unwrap());
        assert!(matches!(u.get(&loose), Some(Source::File(_))));
        assert!(matches!(u.get(&small), Some(Source::Bytes(_))));
        assert_eq!(u.read(&small).unwrap().unwrap(), b"small");
        assert_eq!(u.read(&loose).unwrap().unwrap(), big);
        let out = work.path().join("copy");
        assert!(u.copy(&loose, &out).unwrap());
        assert_eq!(fs::read(&out).unwrap(), big);
        assert!(!u
            .copy(&Digest::of(b"never"), &work.path().join("x"))
            .unwrap());
        // Changed after it was hashed: never handed on.
        let Some(Source::File(p)) = u.get(&loose) else {
            unreachable!()
        };
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let mut bad = big.clone();
        bad[0] ^= 1;
        fs::write(&p, &bad).unwrap();
        let out2 = work.path().join("copy2");
        assert!(matches!(
            u.copy(&loose, &out2),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!out2.exists(), "no partial copy is left");
        assert!(matches!(u.read(&loose), Err(StoreError::Corrupt { .. })));
        // Committed (renamed away) while a reader looked: the store's turn.
        fs::remove_file(&p).unwrap();
        assert!(!u.copy(&loose, &work.path().join("copy3")).unwrap());
        assert!(u.read(&loose).unwrap().is_none());
        u.forget(&[loose]);
        assert!(u.get(&loose).is_none());
        assert!(u.get(&small).is_some(), "forget leaves the others");
        u.clear();
        assert!(u.get(&small).is_none());
    }

    /// Registered, then committed: the staged file is gone (renamed into
    /// `blobs/`), the overlay says "not here", and the store has it. A
    /// pack spilled to its file is not made readable (its bytes would be
    /// copied into memory), so its readers wait for the commit.
    #[test]
    fn a_committed_blob_is_read_from_the_store_and_a_spilled_pack_is_not_readable() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path(), &mut |_| {}).unwrap();
        let work = s.tempdir("t").unwrap();
        let mut st = Staged::default();
        let big = vec![9u8; crate::store::pack::MAX_PACKED + 1];
        let loose = s.stage_bytes(work.path(), &big, &mut st).unwrap();
        let u = Unsynced::default();
        u.add(st.readable().unwrap());
        s.commit(st).unwrap();
        let out = work.path().join("copy");
        assert!(!u.copy(&loose, &out).unwrap());
        assert!(!out.exists());
        s.copy_blob(&loose, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), big);

        let mut many = Staged::default();
        for i in 0..crate::store::pack::MIN_PACK + 1 {
            s.stage_bytes(work.path(), format!("small {i}").as_bytes(), &mut many)
                .unwrap();
        }
        assert!(many.readable().is_none(), "spilled: not readable");
        s.commit(many).unwrap();
    }
}
