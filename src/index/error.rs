//! Errors of the index layer.

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{}", sled_message(.0))]
    Sled(#[from] sled::Error),
    /// A record that does not decode: the index needs `dagfs fsck --rebuild-index`.
    #[error("corrupt index record in {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    /// A file the index keeps beside sled (the run records, `runs.rs`).
    #[error("{}", crate::store::error::io_message(path, source))]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// `index database: error`, or, for ENOSPC, the message every full disk gets.
fn sled_message(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => format!(
            "the store's filesystem is full (index database: {io}); `dagfs gc` or freeing space fixes it"
        ),
        e => format!("index database: {e}"),
    }
}

impl IndexError {
    /// Another handle holds the database's lock.
    pub fn is_locked(&self) -> bool {
        // NB: sled reports a lock conflict only as an `Other` I/O error
        // with this text.
        matches!(self, IndexError::Sled(sled::Error::Io(io))
            if io.to_string().contains("could not acquire lock"))
    }

    /// sled failed because the filesystem is full.
    pub fn is_no_space(&self) -> bool {
        match self {
            IndexError::Sled(sled::Error::Io(io)) | IndexError::Io { source: io, .. } => {
                io.raw_os_error() == Some(libc::ENOSPC)
            }
            _ => false,
        }
    }
}
