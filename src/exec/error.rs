//! Errors of the exec layer. Each validation class is its own variant, so the
//! CLI can give each its own exit code.

use crate::index::IndexError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Unreadable file, bad TOML, unknown field, missing `run`, bad value.
    #[error("{0}")]
    Config(String),
    #[error("{location}duplicate task `{name}`")]
    DuplicateTask { name: String, location: String },
    #[error("{location}task `{task}` depends on unknown task `{dep}`")]
    UnknownDep {
        task: String,
        dep: String,
        location: String,
    },
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("no task named `{0}` in the pipeline")]
    UnknownTask(String),
    #[error("input `{input}` of task `{task}`: {reason}")]
    Input {
        task: String,
        input: String,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("task `{task}`: could not start: {source}")]
    Spawn {
        task: String,
        source: std::io::Error,
    },
}

impl From<crate::cache::CacheError> for ExecError {
    fn from(e: crate::cache::CacheError) -> Self {
        match e {
            crate::cache::CacheError::Store(s) => ExecError::Store(s),
            crate::cache::CacheError::Index(i) => ExecError::Index(i),
        }
    }
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;
