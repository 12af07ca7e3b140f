//! cli: argument parsing, output formatting, progress, exit codes.
//!
//! May call everything below it. Errors become exit codes in exactly one
//! place, `CliError::exit_code`.

mod inspect;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use dagfs::cache::{Cache, CacheError};
use dagfs::exec::ExecError;
use dagfs::index::CachePolicy;
use dagfs::store::StoreError;

const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   a task failed (or was skipped because an upstream task failed)
  2   usage error
  3   bad pipeline file (unreadable, bad TOML with file:line:col, unknown field, missing `run`, bad value, bad input)
  4   duplicate task name
  5   unknown dependency
  6   dependency cycle (printed as a -> b -> c -> a)
  7   unknown task named on the command line
  8   store error (I/O, lock, corruption)
  9   store format not supported by this dagfs
  10  not found (cat/explain target)";

#[derive(Parser, Debug)]
#[command(name = "dagfs", version, about = "A content-addressed cache for the outputs of DAG pipelines", after_help = EXIT_CODES)]
pub struct Cli {
    /// Store directory [default: $DAGFS_STORE, else $XDG_CACHE_HOME/dagfs, else ~/.cache/dagfs]
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a pipeline, answering from the cache where possible
    Run(run::RunArgs),
    /// Cache statistics (persist across runs)
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Each task's latest key, size and age
    Ls {
        /// Only this pipeline
        dag: Option<String>,
    },
    /// A task's key components, and what differs from its previous key
    Explain {
        #[arg(short = 'f', long = "file", default_value = "dagfs.toml")]
        file: PathBuf,
        task: String,
    },
    /// Print a stored file (or list a directory): DAG/TASK/PATH or KEYPREFIX/PATH
    Cat { path: String },
    /// Show or set the store's cache policy (max_entries, max_bytes, ttl; "none" clears)
    Config {
        key: Option<String>,
        value: Option<String>,
    },
    /// Apply the cache policy, then remove blobs no entry references
    Gc {
        #[arg(long)]
        dry_run: bool,
    },
    /// Rebuild the index from entries/ (the store's source of truth)
    Fsck {
        #[arg(long, required = true)]
        rebuild_index: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Output(std::io::Error),
    /// Tasks failed; already reported.
    #[error("")]
    TasksFailed,
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Cache(CacheError::Store(e))
    }
}

impl From<dagfs::index::IndexError> for CliError {
    fn from(e: dagfs::index::IndexError) -> Self {
        CliError::Cache(CacheError::Index(e))
    }
}

impl CliError {
    /// The one place errors become exit codes (documented in EXIT_CODES).
    pub fn exit_code(&self) -> i32 {
        fn store(e: &StoreError) -> i32 {
            match e {
                StoreError::Format { .. } => 9,
                _ => 8,
            }
        }
        match self {
            CliError::TasksFailed => 1,
            CliError::Usage(_) => 2,
            CliError::Exec(e) => match e {
                ExecError::Config(_) | ExecError::Input { .. } => 3,
                ExecError::DuplicateTask { .. } => 4,
                ExecError::UnknownDep { .. } => 5,
                ExecError::Cycle(_) => 6,
                ExecError::UnknownTask(_) => 7,
                ExecError::Store(s) => store(s),
                ExecError::Index(_) | ExecError::Spawn { .. } => 8,
            },
            CliError::Cache(CacheError::Store(s)) => store(s),
            CliError::Cache(CacheError::Index(_)) => 8,
            CliError::NotFound(_) => 10,
            CliError::Output(_) => 8,
        }
    }
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match dispatch(cli) {
        Ok(()) => 0,
        Err(e) => {
            match &e {
                CliError::TasksFailed => {}
                CliError::Output(io) if io.kind() == std::io::ErrorKind::BrokenPipe => return 0,
                e => eprintln!("dagfs: error: {e}"),
            }
            e.exit_code()
        }
    }
}

fn store_dir(explicit: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(s) = explicit {
        return Ok(s);
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(s) = env("DAGFS_STORE") {
        return Ok(s);
    }
    if let Some(x) = env("XDG_CACHE_HOME") {
        return Ok(x.join("dagfs"));
    }
    if let Some(h) = env("HOME") {
        return Ok(h.join(".cache").join("dagfs"));
    }
    Err(CliError::Usage(
        "no store: pass --store DIR or set DAGFS_STORE".into(),
    ))
}

pub fn open_cache(store: Option<PathBuf>, policy: CachePolicy) -> Result<Cache, CliError> {
    let dir = store_dir(store)?;
    let cache = Cache::open_with(&dir, policy, &mut |holder| {
        eprintln!(
            "dagfs: waiting for the store lock on {} (held by {holder})",
            dir.display()
        );
    })?;
    for note in cache.notes() {
        eprintln!("dagfs: {note}");
    }
    Ok(cache)
}

fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
        Cmd::Run(args) => run::run(cli.store, args),
        Cmd::Stats { json } => {
            inspect::stats(&open_cache(cli.store, CachePolicy::default())?, json)
        }
        Cmd::Ls { dag } => inspect::ls(
            &open_cache(cli.store, CachePolicy::default())?,
            dag.as_deref(),
        ),
        Cmd::Explain { file, task } => inspect::explain(&file, &task, cli.store),
        Cmd::Cat { path } => inspect::cat(&open_cache(cli.store, CachePolicy::default())?, &path),
        Cmd::Config { key, value } => {
            inspect::config(open_cache(cli.store, CachePolicy::default())?, key, value)
        }
        Cmd::Gc { dry_run } => {
            inspect::gc(&open_cache(cli.store, CachePolicy::default())?, dry_run)
        }
        Cmd::Fsck { .. } => inspect::rebuild_index(&open_cache(cli.store, CachePolicy::default())?),
    }
}
