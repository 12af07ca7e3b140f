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
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("task `{task}`: could not start: {source}")]
    Spawn {
        task: String,
        source: std::io::Error,
    },
}

/// Why a job could not run or finish (a non-zero exit is not an error: it
/// is the job's result). The scheduler turns it into the task's failure
/// message.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// An input could not be given to the task (materializing a tree,
    /// copying a blob). Damaged stored bytes are never handed to a task.
    #[error("{}", input_message(.0))]
    Input(#[source] std::sync::Arc<StoreError>),
    /// Preparing the task's directories or writing its files.
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The task's process could not be started.
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// A failure the task's own code reported (a closure task that could
    /// not read a dependency).
    #[error("{0}")]
    Task(String),
}

impl JobError {
    /// `map_err(JobError::io(path))`: an I/O error at `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> JobError + '_ {
        move |source| JobError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn input_message(e: &StoreError) -> String {
    match e {
        StoreError::Corrupt { .. } => format!(
            "an input is damaged in the store, so the task was not run: {e} (`dagfs fsck --repair` drops what is damaged; the next run then stores it again)"
        ),
        e => e.to_string(),
    }
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;
