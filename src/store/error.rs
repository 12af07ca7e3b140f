//! Errors of the store layer.

use std::path::PathBuf;

use crate::hash::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", io_message(path, source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Stored bytes do not match their name, or a tree blob does not decode.
    #[error("corrupt object {digest} at {path}: {reason}")]
    Corrupt {
        digest: Digest,
        path: PathBuf,
        reason: String,
    },
    #[error("{path}: store format {found:?} is not supported by this dagfs (supports {supported}); upgrade dagfs")]
    Format {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("{path}: not a dagfs store ({reason})")]
    NotAStore { path: PathBuf, reason: String },
    #[error(
        "{path}: {kind} is not allowed in a task output (only files, directories and symlinks are)"
    )]
    SpecialFile { path: PathBuf, kind: &'static str },
    #[error("{path}: name is not storable: {reason}")]
    BadName { path: PathBuf, reason: String },
    #[error("object {0} is not in the store")]
    Missing(Digest),
    #[error(
        "{path}: the output is nested deeper than {max} directories, the limit of a stored tree"
    )]
    TooDeep { path: PathBuf, max: usize },
    #[error("the output is larger than its limit, max_output = {limit} bytes (reached at {path})")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: changed while it was being stored ({what})")]
    Changed { path: PathBuf, what: String },
    /// New content for a store this process cannot write (`path`: the
    /// store).
    #[error("{path}: the store cannot be written ({reason}), and this content is not in it")]
    ReadOnly { path: PathBuf, reason: String },
    /// A waiter for the store lock (`path`) stopped waiting.
    #[error("{reason}")]
    GaveUp { path: PathBuf, reason: String },
}

/// `path: error`, or, for ENOSPC, the message every full disk gets (the
/// index's files too: `index::error`).
pub(crate) fn io_message(path: &std::path::Path, e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        format!(
            "the store's filesystem is full ({}: {e}); `dagfs gc` or freeing space fixes it",
            path.display()
        )
    } else {
        format!("{}: {e}", path.display())
    }
}

impl StoreError {
    /// An I/O error that says the filesystem is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attach a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            path: path.into(),
            source,
        })
    }
}
