//! The reserve: `<store>/reserve`, `RESERVE` bytes of allocated space kept
//! between a full filesystem and a wedged store.
//!
//! Owns: `<store>/reserve`. May call: nothing outside `store`.
//! Guarantees: a command that opens the store on a filesystem with less than
//! `RESERVE / 2` free, or whose index fails to open for want of space,
//! releases the reserve first (`release_reserve_if_full`), so opening
//! the index (sled writes a snapshot at every open), `stats`, `gc`, `fsck`
//! and `config` work on a full disk. The reserve is made again, whenever
//! the filesystem has room for it and `RESERVE` more (`ensure_reserve`); a
//! task runs only with it in place (a cached one needs none), so a run can
//! never eat the space the commands that free space need. The user never
//! has to know about it.
//!
//! A command that had to release the reserve gives back what it did not
//! use when it closes (`restore_reserve`): the space it lent is not left for
//! another writer to take, so a disk some other process keeps full never
//! wedges the store either. The file is allocated with `fallocate` (else
//! zeros); it may be shorter than `RESERVE` for a while.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::{IoContext, Result};
use super::Store;

/// Bytes the reserve holds: room for sled's snapshot and a fresh segment
/// (512 KiB), twice over. (Measured on a full tmpfs: 256 KiB free was not
/// always enough to open the index, 512 KiB was.)
pub const RESERVE: u64 = 1 << 20;

const NAME: &str = "reserve";

/// Bytes free on the filesystem holding `at`, for unprivileged writers
/// (None: statvfs failed).
pub fn free_bytes(at: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(at).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

impl Store {
    fn reserve_path(&self) -> PathBuf {
        self.root().join(NAME)
    }

    /// Whether the reserve is in place (with its full size).
    pub fn has_reserve(&self) -> bool {
        fs::metadata(self.reserve_path()).is_ok_and(|m| m.len() == RESERVE)
    }

    /// Release the reserve if the filesystem has less than `RESERVE / 2`
    /// free (what opening the index may need). Returns whether it was
    /// released.
    pub fn release_reserve_if_full(&self) -> bool {
        let full = free_bytes(self.root()).is_some_and(|f| f < RESERVE / 2);
        full && self.release_reserve()
    }

    /// Release the reserve (an open of the index failed for want of space).
    /// Returns whether there was one.
    pub fn release_reserve(&self) -> bool {
        fs::remove_file(self.reserve_path()).is_ok()
    }

    /// Make the reserve whole if the filesystem has room for what it lacks
    /// and `RESERVE` more. Returns whether it is whole.
    pub fn ensure_reserve(&self) -> Result<bool> {
        self.grow_reserve(RESERVE)
    }

    /// Give back to the reserve what a command that released it did not
    /// use (at most `RESERVE`), leaving nothing free: the space it lent is
    /// not left for another writer to take.
    pub fn restore_reserve(&self) -> Result<bool> {
        self.grow_reserve(0)
    }

    /// Grow the reserve towards `RESERVE`, keeping `keep_free` bytes free
    /// (0: grow by what there is). Returns whether it is whole.
    fn grow_reserve(&self, keep_free: u64) -> Result<bool> {
        let path = self.reserve_path();
        let have = fs::metadata(&path).map_or(0, |m| m.len().min(RESERVE));
        if have == RESERVE {
            return Ok(true);
        }
        let free = free_bytes(self.root()).unwrap_or(0);
        let want = RESERVE - have;
        let add = match keep_free {
            0 => want.min(free / 4096 * 4096),
            k if free >= want + k => want,
            _ => return Ok(false),
        };
        if add == 0 {
            return Ok(false);
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        // SAFETY: fallocate on an owned, open descriptor.
        let rc =
            unsafe { libc::fallocate(f.as_raw_fd(), 0, have as libc::off_t, add as libc::off_t) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSPC) {
                return Err(e).at(&path);
            }
            // No fallocate here: zeros, appended.
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(have)).at(&path)?;
            let zeros = vec![0u8; 64 << 10];
            let mut left = add;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n]).at(&path)?;
                left -= n as u64;
            }
        }
        Ok(have + add == RESERVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_made_once_and_has_its_full_size() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path(), &mut |_| {}).unwrap();
        if free_bytes(t.path()).is_some_and(|f| f >= 2 * RESERVE) {
            assert!(s.ensure_reserve().unwrap());
            assert!(s.has_reserve());
            assert_eq!(fs::metadata(s.reserve_path()).unwrap().len(), RESERVE);
            assert!(
                !s.release_reserve_if_full(),
                "not released with room to spare"
            );
            assert!(s.has_reserve());
        }
    }
}
