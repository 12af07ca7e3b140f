//! Quarantine: where damaged store files go instead of being deleted.
//!
//! ```text
//! <store>/quarantine/
//!   blobs/<hex>[.<ms>-<n>] blobs whose bytes do not match their name
//!   entries/<key>[.<ms>-<n>] entry records that do not decode, whose key does
//!                          not match their manifest, or that name a damaged
//!                          or missing blob
//!   stray/<name>[.<ms>-<n>] files that have no business under blobs/ or entries/,
//!                          and `packs_<id>.pack`: a pack found without its
//!                          `.idx` when the store was opened
//!   log                    one line per move: `<unix ms> <kind> <name> <reason>`
//!   syncs/<name>[.<ms>-<n>] sync logs that do not decode, or name a tree not
//!                          stored (a fresh history starts under the name)
//!   index/broken-<ms>/     an index (sled) that did not open, rebuilt
//! ```
//!
//! Owns: `<store>/quarantine/`. May call: `hash`.
//! Guarantees: a file is moved by one `rename` on the store's filesystem
//! (never copied, never deleted), under a name that is never reused: a second
//! quarantine of the same name gets a `.<ms>-<n>` suffix. The move is made
//! durable (`syncfs`) before `quarantine_*` returns, so a blob that was
//! reported quarantined is not back under `blobs/` after a crash. Moving a
//! file that is already gone is not an error (`Ok(false)`): fsck and a
//! verified read in the mount may race to quarantine the same blob.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::{IoContext, Result, StoreError};
use super::{rename_noreplace, Store};
use crate::hash::Digest;

/// What kind of file a quarantine move is about (its subdirectory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Blob,
    Entry,
    Stray,
    Sync,
    Index,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Blob => "blobs",
            Kind::Entry => "entries",
            Kind::Stray => "stray",
            Kind::Sync => "syncs",
            Kind::Index => "index",
        }
    }
}

impl Store {
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root().join("quarantine")
    }

    /// Move blob `d` into quarantine. Ok(false) if it is not in `blobs/`.
    ///
    /// A packed blob: its bytes as stored are copied out and that copy is
    /// quarantined (durably), then every pack holding it is rewritten
    /// without it (`Store::repack`).
    pub fn quarantine_blob(&self, d: &Digest, reason: &str) -> Result<bool> {
        let loose = self.blob_path(d);
        let mut holding = Vec::new();
        for p in self.packs()? {
            if let Some(at) = p.find(d)? {
                holding.push((p, at));
            }
        }
        if loose.exists() || holding.is_empty() {
            return self.quarantine_path(&loose, Kind::Blob, &d.to_hex(), reason);
        }
        let work = self.tempdir("quarantine-")?;
        let copy = work.path().join(d.to_hex());
        let (first, (off, len)) = &holding[0];
        // NB: bytes that cannot be read are not dropped from the pack.
        let bytes = first
            .read_raw(*off, *len)
            .at(first.pack_path(self.packs_dir()))?;
        fs::write(&copy, bytes).at(&copy)?;
        let reason = format!("{reason} (from pack {})", first.id);
        let moved = self.quarantine_path(&copy, Kind::Blob, &d.to_hex(), &reason)?;
        for (p, _) in holding {
            self.repack(&p, |x| x != d)?;
        }
        Ok(moved)
    }

    /// Move the record of entry `key` into quarantine (the entry is gone
    /// from `entries/` afterwards). Ok(false) if there is no such record.
    pub fn quarantine_entry(&self, key: &Digest, reason: &str) -> Result<bool> {
        self.quarantine_path(&self.entry_path(key), Kind::Entry, &key.to_hex(), reason)
    }

    /// Move any file under the store into quarantine, as `kind`.
    pub fn quarantine_path(
        &self,
        from: &Path,
        kind: Kind,
        name: &str,
        reason: &str,
    ) -> Result<bool> {
        if kind == Kind::Blob && from.exists() {
            self.new_blob_generation()?;
        }
        let dir = self.quarantine_dir().join(kind.dir());
        fs::create_dir_all(&dir).at(&dir)?;
        let mut to = dir.join(name);
        let mut n = 0u32;
        loop {
            match rename_noreplace(from, &to) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && n < 1000 => {
                    n += 1;
                    to = dir.join(format!("{name}.{}-{n}", now_ms()));
                }
                Err(source) => {
                    return Err(StoreError::Io {
                        path: from.to_path_buf(),
                        source,
                    })
                }
            }
        }
        let log = self.quarantine_dir().join("log");
        let line = format!(
            "{} {} {} {}\n",
            now_ms(),
            kind.dir(),
            to.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            reason.replace('\n', " ")
        );
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .at(&log)?;
        // NB: durable before anyone is told the file is quarantined.
        self.barrier()?;
        Ok(true)
    }

    /// Files in quarantine, by kind (names as stored, suffix included).
    pub fn quarantined(&self, kind: Kind) -> Result<Vec<String>> {
        let dir = self.quarantine_dir().join(kind.dir());
        let mut out: Vec<String> = super::dir_names(&dir)?
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Staged;

    #[test]
    fn a_blob_is_moved_never_deleted_and_a_second_one_keeps_the_first() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path(), &mut |_| {}).unwrap();
        let put = |bytes: &[u8]| {
            let work = s.tempdir("t").unwrap();
            let mut st = Staged::default();
            let d = s.stage_bytes(work.path(), bytes, &mut st).unwrap();
            s.commit(st).unwrap();
            d
        };
        let d = put(b"payload");
        assert!(s.quarantine_blob(&d, "test").unwrap());
        assert!(!s.has_blob(&d));
        assert!(!s.quarantine_blob(&d, "again").unwrap(), "already gone");
        put(b"payload");
        assert!(s.quarantine_blob(&d, "second").unwrap());
        let q = s.quarantined(Kind::Blob).unwrap();
        assert_eq!(q.len(), 2, "{q:?}");
        assert!(q.contains(&d.to_hex()));
        for name in q {
            let p = s.quarantine_dir().join("blobs").join(name);
            assert_eq!(fs::read(p).unwrap(), b"payload");
        }
        let log = fs::read_to_string(s.quarantine_dir().join("log")).unwrap();
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(log.contains("second"), "{log}");
    }
}
