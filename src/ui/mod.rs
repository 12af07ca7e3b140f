//! ui: seeing the DAG. `dagfs graph` (DOT, SVG, JSON, Mermaid) and the
//! local web view `dagfs ui` (HTTP, HTML, inline SVG, JSON).
//!
//! Owns: rendering a run as a graph (`model`, `layout`, `render`), the
//! pages (`pages`), the HTTP server (`server`) and the daemon's runs in
//! progress (`live`). May call: `cache`, `index`, `store`, `hash`,
//! `exec::pipeline`, `exec::explain`, `exec::scheduler` (its events) and
//! `sync::changes`, to read them the way the mounted tree does (it never
//! writes to the store). It sits at the edge beside `cli`: `cli`
//! hands it the `graph` and `ui` commands and the daemon starts its
//! server (`Servers`); no library layer calls it, and it does not call
//! `cli` (its errors become exit codes in `CliError::exit_code`).
//! Guarantees: every string from users is escaped where it is written
//! (`html`); output is deterministic (no graphviz, no clock in a graph).

pub mod html;
pub mod layout;
pub mod live;
pub mod model;
pub mod pages;
pub mod render;
pub mod server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use dagfs::cache::{Cache, CacheError};
use dagfs::exec::{ExecError, Pipeline};

pub use server::Servers;

/// The default address of `dagfs ui`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// A bad `--listen`, or a non-loopback one without a token.
    #[error("{0}")]
    Usage(String),
    /// No such run (`--run ID`).
    #[error("{0}")]
    NoRun(String),
    /// The server could not listen (address in use, not permitted).
    #[error("{0}")]
    Listen(String),
    /// The pipeline file: missing, unreadable, invalid.
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Output(std::io::Error),
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    Dot,
    Svg,
    Json,
    Mermaid,
}

#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
pub struct GraphArgs {
    /// Pipeline file
    #[arg(short = 'f', long = "file", default_value = "dagfs.toml")]
    pub file: PathBuf,
    /// Colour the tasks by this run [default: the pipeline's last run]
    #[arg(long, value_name = "ID")]
    pub run: Option<u64>,
    /// Output format: dot (graphviz), svg (drawn by dagfs, no graphviz
    /// needed), json (nodes: name, key, state, route, reason, duration_ms;
    /// edges), mermaid
    #[arg(long, value_enum, default_value = "dot")]
    pub format: Format,
}

#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
pub struct UiArgs {
    /// Address to serve on: loopback by default; any other address needs a
    /// token. Port 0 picks a free port (the URL is printed)
    #[arg(long, value_name = "IP:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// A token every request must carry (required for a non-loopback
    /// --listen) [default: $DAGFS_UI_TOKEN]
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// `dagfs graph`: the pipeline's tasks and edges, coloured by a run.
pub fn graph(args: &GraphArgs, cache: &Cache, out: &mut dyn Write) -> Result<(), UiError> {
    let pipeline = Pipeline::load(&args.file)?;
    let record = match args.run {
        Some(id) => {
            let r = cache
                .index
                .run(id)
                .map_err(CacheError::from)?
                .ok_or_else(|| {
                    UiError::NoRun(format!(
                        "no run {id} in the store (`dagfs ui` lists the runs; the last is {})",
                        cache.index.stats().map(|s| s.runs).unwrap_or(0)
                    ))
                })?;
            if r.dag != pipeline.name {
                return Err(UiError::NoRun(format!(
                    "run {id} is of pipeline `{}`, not `{}` ({})",
                    r.dag,
                    pipeline.name,
                    args.file.display()
                )));
            }
            Some(r)
        }
        None => last_run_of(cache, &pipeline.name)?,
    };
    let names: Vec<String> = pipeline.tasks.iter().map(|t| t.name.clone()).collect();
    let deps: Vec<Vec<String>> = pipeline.tasks.iter().map(|t| t.deps.clone()).collect();
    let g = model::Graph::build(&pipeline.name, &names, &deps, record.as_ref(), Some(cache));
    let text = match args.format {
        Format::Dot => render::dot(&g),
        Format::Json => render::json(&g),
        Format::Mermaid => render::mermaid(&g),
        Format::Svg => render::svg(
            &g,
            &render::SvgOptions {
                link: None,
                standalone: true,
            },
        ),
    };
    out.write_all(text.as_bytes()).map_err(UiError::Output)
}

/// The newest run record of pipeline `dag`.
fn last_run_of(cache: &Cache, dag: &str) -> Result<Option<dagfs::index::RunRecord>, UiError> {
    let ids = cache.index.run_ids().map_err(CacheError::from)?;
    for id in ids.iter().rev() {
        if let Some(r) = cache.index.run(*id).map_err(CacheError::from)? {
            if r.dag == dag {
                return Ok(Some(r));
            }
        }
    }
    Ok(None)
}

/// `dagfs ui` with no daemon: serve the store at `dir` in the foreground
/// until `stop` is set.
pub fn serve_store(
    dir: &Path,
    args: &UiArgs,
    token: Option<String>,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<(), UiError> {
    let (server, addr) = server::bind(&args.listen, token.as_deref())?;
    writeln!(
        out,
        "dagfs ui: serving {} at {}{} (Ctrl-C stops)",
        dir.display(),
        server::url_of(addr),
        if token.is_some() {
            " (token required)"
        } else {
            ""
        }
    )
    .and_then(|()| out.flush())
    .map_err(UiError::Output)?;
    server::serve(
        &server,
        addr,
        &server::Source::Store(dir.to_path_buf()),
        token.as_deref(),
        stop,
    );
    Ok(())
}
