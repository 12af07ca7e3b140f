//! Errors of the index layer.

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index database: {0}")]
    Sled(#[from] sled::Error),
    /// A record that does not decode: the index needs `dagfs fsck --rebuild-index`.
    #[error("corrupt index record in {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;
