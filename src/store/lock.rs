//! The store lock: one process owns a store at a time (`<store>/lock`, an
//! `flock`). The holder writes its pid and command into the file so a waiter
//! can say whom it waits for.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::error::{IoContext, Result};

#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// Who holds a lock, as written in the lock file.
pub fn holder(path: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.replace('\n', " "))
}

impl StoreLock {
    /// Take the lock, waiting if another process holds it. `on_wait` is
    /// called once, with the holder's description, before blocking.
    pub fn acquire(path: &Path, on_wait: &mut dyn FnMut(&str)) -> Result<StoreLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .at(path)?;
        if !try_flock(&file, libc::LOCK_EX | libc::LOCK_NB).at(path)? {
            let who = holder(path).unwrap_or_else(|| "another process".into());
            on_wait(&who);
            try_flock(&file, libc::LOCK_EX).at(path)?;
        }
        let me = format!(
            "pid {} ({})\n",
            std::process::id(),
            std::env::args().take(2).collect::<Vec<_>>().join(" ")
        );
        file.set_len(0).at(path)?;
        file.seek(SeekFrom::Start(0)).at(path)?;
        file.write_all(me.as_bytes()).at(path)?;
        Ok(StoreLock { _file: file })
    }
}

/// Returns Ok(false) when a non-blocking attempt finds the lock taken.
fn try_flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}
