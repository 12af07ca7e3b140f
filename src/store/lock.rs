//! The store lock: one process owns a store at a time (`<store>/lock`, an
//! exclusive `flock`). The holder writes its pid and command into the file
//! so a waiter can say whom it waits for. A waiter polls (`POLL`) and asks
//! its `Waiting` each time whether to go on, so it can stop on a signal or
//! when waiting has become pointless (a daemon already serves the store).
//! A process that cannot write the store (read-only) takes it shared, only
//! while it copies the index (see `Cache`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::Path;

use super::error::{IoContext, Result, StoreError};

/// How often a waiter checks the lock (and asks its `Waiting` whether to
/// keep waiting).
const POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Called while a process waits for the lock: at once, then every `POLL`,
/// with the holder's description; `Break(reason)` stops waiting (the open
/// fails with `StoreError::GaveUp`).
pub type Waiting<'a> = dyn FnMut(&str) -> ControlFlow<String> + 'a;

#[derive(Debug)]
pub struct StoreLock {
    /// None: a read-only store without a lock file (nobody can write it).
    _file: Option<File>,
}

/// Who holds a lock, as written in the lock file.
pub fn holder(path: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.replace('\n', " "))
}

impl StoreLock {
    /// Take the lock; while another process holds it, ask `waiting` every
    /// `POLL` whether to go on (so a waiter can notice a signal, or that
    /// waiting has become pointless).
    pub fn acquire(path: &Path, waiting: &mut Waiting<'_>) -> Result<StoreLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .at(path)?;
        wait_for_lock(&file, path, Mode::Exclusive, waiting)?;
        let me = format!(
            "pid {} ({})\n",
            std::process::id(),
            std::env::args().take(2).collect::<Vec<_>>().join(" ")
        );
        // NB: written over the last holder's line, then cut to length only
        // if that was longer: truncating to 0 frees the file's block, which
        // costs more than the rest of a cached run's store open here.
        file.seek(SeekFrom::Start(0)).at(path)?;
        file.write_all(me.as_bytes()).at(path)?;
        let len = me.len() as u64;
        if file.metadata().at(path)?.len() > len {
            file.set_len(len).at(path)?;
        }
        Ok(StoreLock { _file: Some(file) })
    }
}

impl StoreLock {
    /// No lock (a read-only store's reader once its index is copied).
    pub fn none() -> StoreLock {
        StoreLock { _file: None }
    }

    /// A reader's lock on a store it cannot write: shared, waiting (as
    /// `acquire`) while a writer holds it; none if there is no lock file.
    pub fn shared(path: &Path, waiting: &mut Waiting<'_>) -> Result<StoreLock> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StoreLock { _file: None })
            }
            Err(e) => return Err(e).at(path),
        };
        wait_for_lock(&file, path, Mode::Shared, waiting)?;
        Ok(StoreLock { _file: Some(file) })
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Exclusive,
    Shared,
}

/// One non-blocking attempt; Ok(false) when another process holds the
/// lock. std's `File::try_lock` is `flock(2)` on Linux (Rust 1.89), so the
/// lock is the same one older dagfs versions and `flock(1)` take.
fn try_flock(file: &File, mode: Mode) -> std::io::Result<bool> {
    let r = match mode {
        Mode::Exclusive => file.try_lock(),
        Mode::Shared => file.try_lock_shared(),
    };
    match r {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Take the lock in `mode` on `file`, polling while another
/// process holds it and asking `waiting` (told who) whether to go on.
fn wait_for_lock(file: &File, path: &Path, mode: Mode, waiting: &mut Waiting<'_>) -> Result<()> {
    while !try_flock(file, mode).at(path)? {
        let who = holder(path).unwrap_or_else(|| "another process".into());
        if let ControlFlow::Break(reason) = waiting(&who) {
            return Err(StoreError::GaveUp {
                path: path.to_path_buf(),
                reason,
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The holder's line replaces the last one whole, whichever was longer.
    #[test]
    fn the_holder_line_replaces_a_longer_or_shorter_one() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("lock");
        let mine = format!(
            "pid {} ({})",
            std::process::id(),
            std::env::args().take(2).collect::<Vec<_>>().join(" ")
        );
        for old in ["x".repeat(4000), String::new(), "pid 1 (a)\n".into()] {
            std::fs::write(&path, &old).unwrap();
            let lock = StoreLock::acquire(&path, &mut |_| ControlFlow::Continue(())).unwrap();
            assert_eq!(
                holder(&path).as_deref(),
                Some(mine.as_str()),
                "after {old:?}"
            );
            drop(lock);
        }
    }
}
