//! The remote tier's errors. None of them fails a run: the run goes on
//! locally and the error is counted (see `remote::Remote`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("bad remote URL {url:?}: {why} (e.g. grpc://127.0.0.1:50051 or grpcs://cache.example:443/INSTANCE)")]
    BadUrl { url: String, why: String },
    #[error("{}: {why}", path.display())]
    Config { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The server could not be reached or answered an error.
    #[error("remote {url}: {what}")]
    Server { url: String, what: String },
    /// The server's answer was wrong (a digest that does not match, a
    /// result that does not rebuild the recorded output).
    #[error("remote result for {key} rejected: {why}")]
    Rejected { key: String, why: String },
    /// Connecting failed (already counted and warned about).
    #[error("remote {url}: {what}")]
    Unreachable { url: String, what: String },
    /// Turned off after repeated errors for the rest of this process.
    #[error("remote {url} disabled after {errors} errors")]
    Disabled { url: String, errors: u32 },
    /// A setting of the environment that is not usable (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A signing key or trusted-keys file that cannot be used.
    #[error("{}: {why}", path.display())]
    Key { path: PathBuf, why: String },
    /// A result not signed by a trusted key (`remote_trusted_keys`).
    #[error("remote result for {key} rejected: {why}")]
    Untrusted { key: String, why: String },
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

impl From<crate::store::StoreError> for RemoteError {
    fn from(e: crate::store::StoreError) -> Self {
        RemoteError::Cache(e.into())
    }
}

impl From<crate::index::IndexError> for RemoteError {
    fn from(e: crate::index::IndexError) -> Self {
        RemoteError::Cache(e.into())
    }
}
