//! Execution: the DAG model and its validation, `dagfs.toml` pipelines,
//! cache keys, the scheduler, and running tasks (shell commands, or
//! closures for library users).
//!
//! May call: `hash`, `host`, `store`, `index`, `cache`, `sync` (task inputs
//! are snapshotted by its scanner). Tasks start only through
//! `runner::Runner`. Guarantees: a pipeline is fully validated before any
//! task runs; graph algorithms are iterative; failures are never cached.

pub mod dag;
pub mod error;
pub mod executor;
pub mod explain;
pub mod hermetic;
pub mod isolate;
pub mod key;
pub mod memo;
pub mod pipeline;
pub mod runner;
pub mod scheduler;
pub mod shell;

pub use dag::{Dag, DagBuilder};
pub use error::ExecError;
pub use executor::{CachedExecutor, ExecutionResult, NodeResult, Task, TaskInputs};
pub use key::{CacheKey, KeyBuilder};
pub use pipeline::{Pipeline, TaskDef};
