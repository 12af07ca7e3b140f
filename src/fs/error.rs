//! Errors of the FUSE layer and the one place they become errno values.
//!
//! Owns: `FsError` and `errno`. May call: `fs::view` (for `ViewError`),
//! `fuser::Errno`. Guarantees: every error a request handler answers goes
//! through `errno` exactly once; nothing is mapped to a blanket EINVAL.

use fuser::Errno;

use super::view::ViewError;
use crate::hash::Digest;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The name does not exist here (including names that are not valid
    /// hex, `..`, too long, or ambiguous prefixes: all are plain ENOENT).
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    /// Opening a symlink itself (only with O_PATH-less, O_NOFOLLOW-less
    /// paths the kernel never sends; answered like open(O_NOFOLLOW)).
    #[error("is a symbolic link")]
    IsLink,
    /// readlink of something that is not a symlink (the kernel normally
    /// answers this itself): EINVAL, as readlink(2) specifies.
    #[error("not a symbolic link")]
    NotLink,
    /// Every write: the mount is read-only.
    #[error("read-only file system")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttr,
    /// The caller's buffer is smaller than the value (`needed` bytes).
    #[error("buffer too small: {needed} bytes needed")]
    Range { needed: usize },
    /// An inode the kernel should have forgotten, or never got from us.
    #[error("stale inode {0}")]
    StaleInode(u64),
    #[error("bad file handle {0}")]
    BadHandle(u64),
    /// The mount already holds its most open handles (`handle::MAX_HANDLES`).
    #[error("too many open files and directories on this mount (at most {0})")]
    TooManyHandles(usize),
    #[error("permission denied")]
    Access,
    /// The answer to open and opendir when the kernel can do without them:
    /// ENOSYS tells it to stop sending them (see `fs::passthrough`).
    #[error("no open requests wanted")]
    NoOpen,
    /// An extended attribute outside `user.`: EOPNOTSUPP, which tools take
    /// as "none here" and stop asking the mount for (`ls -l` asks for
    /// security.selinux and system.posix_acl_access on every file).
    #[error("attribute namespace not supported")]
    NotSupported,
    /// A file listed in a stored tree whose blob is gone (gc race or a
    /// damaged store): an I/O error, not "no such file".
    #[error("blob {0} of a listed file is missing from the store")]
    MissingBlob(Digest),
    #[error("{0}")]
    View(#[from] ViewError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The errno a request answers for `e`. The only such mapping in dagfs.
pub fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::IsLink => Errno::ELOOP,
        FsError::NotLink => Errno::EINVAL,
        FsError::ReadOnly => Errno::EROFS,
        FsError::NoAttr => Errno::NO_XATTR,
        FsError::Range { .. } => Errno::ERANGE,
        FsError::StaleInode(_) => Errno::ESTALE,
        FsError::BadHandle(_) => Errno::EBADF,
        FsError::TooManyHandles(_) => Errno::ENFILE,
        FsError::Access => Errno::EACCES,
        FsError::NoOpen => Errno::ENOSYS,
        FsError::NotSupported => Errno::EOPNOTSUPP,
        FsError::MissingBlob(_) => Errno::EIO,
        FsError::View(v) => match v {
            ViewError::NotFound => Errno::ENOENT,
            ViewError::Corrupt(_) => Errno::EIO,
            ViewError::Io(io) => io_errno(io),
            ViewError::Other(_) => Errno::EIO,
        },
        FsError::Io(io) => io_errno(io),
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(n) if n > 0 => Errno::from_i32(n),
        _ => Errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_errors_map_as_documented() {
        let n = |e: FsError| i32::from(errno(&e));
        assert_eq!(n(ViewError::NotFound.into()), libc::ENOENT);
        assert_eq!(n(ViewError::Corrupt(Digest::default()).into()), libc::EIO);
        assert_eq!(n(ViewError::Other("x".into()).into()), libc::EIO);
        let raw = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(n(ViewError::Io(raw).into()), libc::EACCES);
        let plain = std::io::Error::other("no errno");
        assert_eq!(n(ViewError::Io(plain).into()), libc::EIO);
    }

    #[test]
    fn fs_errors_are_specific() {
        let n = |e: FsError| i32::from(errno(&e));
        assert_eq!(n(FsError::ReadOnly), libc::EROFS);
        assert_eq!(n(FsError::NoAttr), libc::ENODATA);
        assert_eq!(n(FsError::Range { needed: 3 }), libc::ERANGE);
        assert_eq!(n(FsError::MissingBlob(Digest::default())), libc::EIO);
        assert_eq!(n(FsError::NotDir), libc::ENOTDIR);
        assert_eq!(n(FsError::NoOpen), libc::ENOSYS);
        assert_eq!(n(FsError::NotSupported), libc::EOPNOTSUPP);
    }
}
