//! Verified reads: a stored file's blob is re-hashed before the mount serves
//! its bytes, so bit rot on disk becomes EIO for the reader, never wrong
//! bytes handed on as a task's output.
//!
//! Owns: the set of blobs verified in this mount's lifetime, and the verify
//! counters shown in `/.dagfs/stats` and `/.dagfs/metrics`. May call:
//! `StoreView::quarantine`, `unopened::BlobFiles` (to close a bad blob).
//! Guarantees:
//!
//! - `Verify::FirstOpen` (the default): the first read of a blob in the
//!   mount's lifetime (or its open, when the kernel sends opens: passthrough)
//!   hashes the whole blob, streaming, before any byte of it is answered;
//!   later reads of a verified blob cost nothing. The kernel sends no open
//!   requests in the default read path (see `passthrough`), so "first open"
//!   is in practice the first read request.
//! - `Verify::Always`: every open request and every read at offset 0 (a
//!   new pass over the file) verifies again. Reads the kernel answers from
//!   its page cache never reach dagfs, so no mode re-verifies those.
//! - `Verify::Off`: no hashing.
//! - A mismatch answers EIO (through `errno`, as `ViewError::Corrupt`), closes
//!   the blob, moves it to `<store>/quarantine/` through the view, and, when
//!   the file was reached under `/keys/<key>`, drops that entry (it misses
//!   with reason `corrupt` and re-runs); it is counted and logged. Later
//!   reads of it answer EIO (the blob is gone: `MissingBlob`).
//! - The verified set holds at most `MAX_VERIFIED` digests; past that it is
//!   cleared (those blobs are verified again at their next read).

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::FsError;
use super::inode::lock;
use super::node::Node;
use super::view::ViewError;
use super::DagFs;
use crate::hash::Digest;

const MAX_VERIFIED: usize = 1 << 20;
const BUF: usize = 256 * 1024;
/// A blob larger than this is read in chunks of this size, the next read
/// while the last is hashed on every core (`blake3`'s rayon mode): a cold
/// first read of a large file then costs about its disk read, not that
/// plus one core's hashing.
const CHUNK: usize = 4 << 20;

/// When reads of stored files are verified (`-o verify=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    #[default]
    FirstOpen,
    Always,
    Off,
}

impl Verify {
    pub fn parse(s: &str) -> Option<Verify> {
        match s {
            "first-open" => Some(Verify::FirstOpen),
            "always" => Some(Verify::Always),
            "off" => Some(Verify::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verify::FirstOpen => "first-open",
            Verify::Always => "always",
            Verify::Off => "off",
        }
    }
}

#[derive(Debug, Default)]
pub struct Verifier {
    mode: Verify,
    verified: Mutex<HashSet<Digest>>,
    /// Blobs hashed and found intact.
    pub intact: AtomicU64,
    /// Blobs hashed and found corrupt (each answered EIO).
    pub corrupt: AtomicU64,
    /// Of those, moved to quarantine by this mount.
    pub quarantined: AtomicU64,
    pub bytes: AtomicU64,
}

impl Verifier {
    pub fn new(mode: Verify) -> Verifier {
        Verifier {
            mode,
            ..Verifier::default()
        }
    }

    /// Does a read of `d` have to hash it? `fresh`: an open, or a read at
    /// offset 0.
    fn due(&self, d: &Digest, fresh: bool) -> bool {
        match self.mode {
            Verify::Off => false,
            Verify::FirstOpen => !lock(&self.verified).contains(d),
            Verify::Always => fresh || !lock(&self.verified).contains(d),
        }
    }

    /// Hash `file` (the blob `d`), streaming. Ok(false) on a mismatch.
    fn hash(&self, d: &Digest, file: &File) -> std::io::Result<bool> {
        let (h, at) = digest_of(file)?;
        self.bytes.fetch_add(at, Ordering::Relaxed);
        let ok = Digest::from_blake3(h) == *d;
        let mut set = lock(&self.verified);
        if ok {
            if set.len() >= MAX_VERIFIED {
                set.clear();
            }
            set.insert(*d);
            self.intact.fetch_add(1, Ordering::Relaxed);
        } else {
            set.remove(d);
            self.corrupt.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ok)
    }

    pub fn to_text(&self) -> String {
        format!(
            "fs verify    {}: {} blobs intact ({} bytes hashed), {} corrupt, {} quarantined\n",
            self.mode.as_str(),
            self.intact.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.corrupt.load(Ordering::Relaxed),
            self.quarantined.load(Ordering::Relaxed),
        )
    }

    pub fn to_prometheus(&self) -> String {
        format!(
            "# HELP dagfs_fs_verified_blobs_total Blobs hashed before being served, by result.\n\
             # TYPE dagfs_fs_verified_blobs_total counter\n\
             dagfs_fs_verified_blobs_total{{result=\"intact\"}} {}\n\
             dagfs_fs_verified_blobs_total{{result=\"corrupt\"}} {}\n\
             # HELP dagfs_fs_quarantined_blobs_total Corrupt blobs this mount moved to quarantine.\n\
             # TYPE dagfs_fs_quarantined_blobs_total counter\n\
             dagfs_fs_quarantined_blobs_total {}\n\
             # HELP dagfs_fs_verified_bytes_total Bytes hashed to verify reads.\n\
             # TYPE dagfs_fs_verified_bytes_total counter\n\
             dagfs_fs_verified_bytes_total {}\n",
            self.intact.load(Ordering::Relaxed),
            self.corrupt.load(Ordering::Relaxed),
            self.quarantined.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl DagFs {
    /// Verify blob `d` of `node`, open as `file`, before serving it (see the
    /// module doc). Err answers the read (or open) EIO.
    pub(super) fn verify_blob(
        &self,
        node: &Node,
        d: &Digest,
        file: &File,
        fresh: bool,
    ) -> Result<(), FsError> {
        if !self.verifier.due(d, fresh) {
            return Ok(());
        }
        if self.verifier.hash(d, file)? {
            return Ok(());
        }
        Err(self.found_corrupt(node, d))
    }

    /// Blob `d` of `node` does not match its name: quarantine it (and drop
    /// the entry it was read under); the error answers the request EIO.
    pub(super) fn found_corrupt(&self, node: &Node, d: &Digest) -> FsError {
        self.blob_files.forget(d);
        let key = node.entry_key();
        match self.view.quarantine(d, key.as_ref()) {
            Ok(()) => {
                self.verifier.quarantined.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "blob {d} does not match its name: answered EIO, moved it to quarantine{}",
                    key.map(|k| format!(", dropped entry {k} (it re-runs)"))
                        .unwrap_or_default()
                );
            }
            Err(e) => log::error!(
                "blob {d} does not match its name: answered EIO; quarantine failed: {e}"
            ),
        }
        FsError::View(ViewError::Corrupt(*d))
    }
}

/// The BLAKE3 of `file`'s bytes, and how many there were.
fn digest_of(file: &File) -> std::io::Result<(blake3::Hash, u64)> {
    let mut h = blake3::Hasher::new();
    if file.metadata()?.len() <= CHUNK as u64 {
        let mut buf = vec![0u8; BUF];
        let mut at = 0u64;
        loop {
            match read_at(file, &mut buf, at)? {
                0 => return Ok((h.finalize(), at)),
                n => {
                    h.update(&buf[..n]);
                    at += n as u64;
                }
            }
        }
    }
    // NB: the kernel's readahead grows for a file read in order; the
    // descriptor is shared with later (random) reads: back to normal after.
    let advise = |a| {
        let _ = nix::fcntl::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(file), 0, 0, a);
    };
    advise(nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
    let digest = pipelined(file);
    advise(nix::fcntl::PosixFadviseAdvice::POSIX_FADV_NORMAL);
    digest
}

/// `digest_of` for a large file: a reader thread and the hasher, two
/// buffers between them.
fn pipelined(file: &File) -> std::io::Result<(blake3::Hash, u64)> {
    let mut h = blake3::Hasher::new();
    let (full_tx, full_rx) = crossbeam::channel::bounded::<std::io::Result<Vec<u8>>>(1);
    let (empty_tx, empty_rx) = crossbeam::channel::bounded::<Vec<u8>>(2);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut at = 0u64;
            for mut buf in empty_rx {
                buf.resize(CHUNK, 0);
                let mut len = 0;
                let res = loop {
                    match read_at(file, &mut buf[len..], at + len as u64) {
                        Ok(0) => break Ok(()),
                        Ok(n) if len + n == CHUNK => {
                            len = CHUNK;
                            break Ok(());
                        }
                        Ok(n) => len += n,
                        Err(e) => break Err(e),
                    }
                };
                if let Err(e) = res {
                    let _ = full_tx.send(Err(e));
                    return;
                }
                if len == 0 {
                    return;
                }
                buf.truncate(len);
                at += len as u64;
                if full_tx.send(Ok(buf)).is_err() {
                    return;
                }
            }
        });
        for _ in 0..2 {
            let _ = empty_tx.send(Vec::with_capacity(CHUNK));
        }
        let mut at = 0u64;
        for buf in full_rx {
            let buf = buf?;
            h.update_rayon(&buf);
            at += buf.len() as u64;
            let _ = empty_tx.send(buf);
        }
        Ok((h.finalize(), at))
    })
}

/// `pread`, retried when interrupted.
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    loop {
        match file.read_at(buf, at) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn blob(bytes: &[u8]) -> (tempfile::NamedTempFile, Digest) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        (f, Digest::of(bytes))
    }

    #[test]
    fn first_open_hashes_once_always_on_each_fresh_read_off_never() {
        let (f, d) = blob(&vec![7u8; 600_000]);
        let file = f.reopen().unwrap();
        let v = Verifier::new(Verify::FirstOpen);
        assert!(v.due(&d, false));
        assert!(v.hash(&d, &file).unwrap());
        assert!(!v.due(&d, true), "verified once is enough");
        assert_eq!(v.bytes.load(Ordering::Relaxed), 600_000);
        let a = Verifier::new(Verify::Always);
        assert!(a.hash(&d, &file).unwrap());
        assert!(a.due(&d, true) && !a.due(&d, false));
        assert!(!Verifier::new(Verify::Off).due(&d, true));
    }

    #[test]
    fn a_flipped_bit_is_found_and_not_remembered_as_verified() {
        let mut bytes = vec![1u8; 300_000];
        let (_, d) = blob(&bytes);
        bytes[299_999] ^= 0x10;
        let (f, _) = blob(&bytes);
        let v = Verifier::new(Verify::FirstOpen);
        assert!(!v.hash(&d, &f.reopen().unwrap()).unwrap());
        assert!(v.due(&d, false));
        assert_eq!(v.corrupt.load(Ordering::Relaxed), 1);
        assert!(v.to_prometheus().contains("result=\"corrupt\"} 1\n"));
    }

    #[test]
    fn options_parse() {
        for m in [Verify::FirstOpen, Verify::Always, Verify::Off] {
            assert_eq!(Verify::parse(m.as_str()), Some(m));
        }
        assert_eq!(Verify::parse("sometimes"), None);
    }
}
