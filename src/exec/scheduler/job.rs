//! The job boundary: what the scheduler hands a job (`JobContext`: its
//! output directory, its dependencies' trees) and what a job hands back
//! (`JobResult`, or a `JobError` when it could not run at all).
//!
//! May call: `store` (to read trees and blobs). Guarantees: each output
//! tree is materialized at most once per run, shared by all its readers;
//! damaged stored bytes are never handed to a job.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::hash::Digest;
use crate::store::materialize::materialize_from;
use crate::store::unsynced::{Source, Unsynced};
use crate::store::{Store, StoreError};

pub use crate::exec::error::JobError;

/// A unit of work: produces files in `ctx.out_dir`.
pub trait Job: Send + Sync {
    fn run(&self, ctx: &JobContext<'_>) -> Result<JobResult, JobError>;

    /// Whether it reads its dependencies' outputs only through `ctx`'s
    /// `tree_path` or `materialize_deps`, which find them staged: then it
    /// may start before they are committed (see `store::unsynced`). A job
    /// that reads the store itself, or a dependency's blob through
    /// `blob_path` (which reads the store), must wait for the commit.
    fn reads_deps_from_context(&self) -> bool {
        false
    }
}

/// What a job returns: its exit code and where its logs are.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub exit_code: i32,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Killed (with its process group) after running this long: its limit.
    pub timed_out: Option<Duration>,
    /// Killed (with its process group) when its output, measured while it
    /// ran, had grown to this many bytes, past `JobContext::max_output`.
    pub output_over: Option<u64>,
    /// What it read and wrote beyond its declaration (`hermetic`), where
    /// the job looked.
    pub hermetic: Option<crate::exec::hermetic::Checked>,
}

pub struct JobContext<'a> {
    pub store: &'a Store,
    /// Empty directory: what the job leaves here is its output.
    pub out_dir: &'a Path,
    /// Private scratch directory (contains `out_dir`).
    pub work_dir: &'a Path,
    /// (dependency name, output digest), sorted by name.
    pub deps: &'a [(String, Digest)],
    /// The most bytes `out_dir` may hold (the task's `max_output`). A job
    /// that runs a process should stop it once it writes past this;
    /// ingest refuses a larger output in any case.
    pub max_output: Option<u64>,
    pub(super) mats: &'a Materializer,
    pub(super) inputs_via: Option<&'a Path>,
}

impl JobContext<'_> {
    /// A read-only directory holding the stored tree `d` (under the mount
    /// when there is one, else materialized once per run).
    pub fn tree_path(&self, d: &Digest) -> Result<PathBuf, JobError> {
        match self.inputs_via {
            Some(mount) => Ok(mount.join("trees").join(d.to_hex())),
            None => self.mats.get(self.store, d),
        }
    }

    /// A read-only file holding the blob `d`. NB: never the store's own
    /// blob file: a task running as root could write through it.
    pub fn blob_path(&self, d: &Digest) -> Result<PathBuf, JobError> {
        match self.inputs_via {
            Some(mount) => Ok(mount.join("blobs").join(d.to_hex())),
            None => self.mats.blob(self.store, d),
        }
    }

    /// A directory with one read-only entry per dependency, `<dir>/<dep>`,
    /// holding that dependency's output tree.
    pub fn materialize_deps(&self) -> Result<PathBuf, JobError> {
        let dir = self.work_dir.join("in");
        std::fs::create_dir_all(&dir).map_err(JobError::io(&dir))?;
        for (name, digest) in self.deps {
            let src = self.tree_path(digest)?;
            let link = dir.join(name);
            std::os::unix::fs::symlink(&src, &link).map_err(JobError::io(&link))?;
        }
        Ok(dir)
    }
}

type MatCell = Arc<OnceLock<Result<PathBuf, Arc<StoreError>>>>;

/// Materializes each output tree once per run, shared by all tasks, and
/// holds the run's scratch and staging directories, made when the first
/// job needs them (a run that executes nothing creates and removes nothing)
/// and removed when it is dropped.
pub(super) struct Materializer {
    scratch: OnceLock<Result<tempfile::TempDir, String>>,
    /// See `Options::inputs_via`.
    pub(super) via: Option<PathBuf>,
    done: Mutex<HashMap<Digest, MatCell>>,
    /// This run's outputs staged and not committed yet.
    unsynced: Arc<Unsynced>,
}

impl Drop for Materializer {
    fn drop(&mut self) {
        // NB: `remove_all`, not the TempDir's own removal: materialized
        // trees hold read-only directories.
        if let Some(Ok(t)) = self.scratch.get() {
            let _ = crate::store::remove_all(t.path());
        }
    }
}

impl Materializer {
    pub(super) fn new(via: Option<PathBuf>, unsynced: Arc<Unsynced>) -> Materializer {
        Materializer {
            scratch: OnceLock::new(),
            via,
            done: Mutex::new(HashMap::new()),
            unsynced,
        }
    }

    /// The run's scratch directory in `store` (with `entries/` and
    /// `staging/`), made on first use.
    pub(super) fn root(&self, store: &Store) -> Result<&Path, JobError> {
        let made = self.scratch.get_or_init(|| {
            let t = store.tempdir("run-").map_err(|e| e.to_string())?;
            for d in ["entries", "staging"] {
                let p = t.path().join(d);
                std::fs::create_dir(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            Ok(t)
        });
        match made {
            Ok(t) => Ok(t.path()),
            Err(e) => Err(JobError::Task(format!(
                "cannot make the run's scratch directory: {e}"
            ))),
        }
    }

    /// Where workers stage entry records until the coordinator publishes them.
    pub(super) fn pending(&self, store: &Store) -> Result<PathBuf, JobError> {
        Ok(self.root(store)?.join("entries"))
    }

    /// Where workers move staged blobs until the coordinator commits them.
    pub(super) fn staging(&self, store: &Store) -> Result<PathBuf, JobError> {
        Ok(self.root(store)?.join("staging"))
    }

    /// A private read-only copy of one blob, made once per run.
    fn blob(&self, store: &Store, d: &Digest) -> Result<PathBuf, JobError> {
        let root = self.root(store)?;
        let p = root.join(format!("{}.blob", d.to_hex()));
        if !p.exists() {
            let tmp = root.join(format!(
                "{}.blob.{:?}",
                d.to_hex(),
                std::thread::current().id()
            ));
            store
                .copy_blob(d, &tmp)
                .map_err(|e| JobError::Input(Arc::new(e)))?;
            std::fs::rename(&tmp, &p).map_err(JobError::io(&p))?;
        }
        Ok(p)
    }

    fn get(&self, store: &Store, d: &Digest) -> Result<PathBuf, JobError> {
        self.get_from(store, d, &self.unsynced)
    }

    /// Materialize tree `d`, an output just made, whose staged blobs are
    /// `blobs`, for the dependents about to read it. They wait for it
    /// (`get`) rather than make it again. Its blobs are read from `blobs`
    /// (the coordinator has not taken them into the run's `unsynced` yet),
    /// or from the store once a commit has moved them there. A failure
    /// (a full disk, say) is not kept for them: what it made is removed,
    /// and a dependent tries again itself (one waiting meanwhile has it).
    pub(super) fn prefetch(&self, store: &Store, d: &Digest, blobs: Vec<(Digest, Source)>) {
        let own = Unsynced::default();
        own.add(blobs);
        if self.get_from(store, d, &own).is_ok() {
            return;
        }
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(root) = self.root(store) {
            let _ = crate::store::remove_all(&root.join(d.to_hex()));
        }
        done.remove(d);
    }

    fn get_from(
        &self,
        store: &Store,
        d: &Digest,
        unsynced: &Unsynced,
    ) -> Result<PathBuf, JobError> {
        let root = self.root(store)?.to_path_buf();
        let cell = self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*d)
            .or_default()
            .clone();
        cell.get_or_init(|| {
            let p = root.join(d.to_hex());
            materialize_from(store, Some(unsynced), d, &p)
                .map(|_| p)
                .map_err(Arc::new)
        })
        .clone()
        .map_err(JobError::Input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ingest::{ingest_dir_limited, Limits, Sink};
    use crate::store::Staged;

    /// A store, and a task's output (a file in a subdirectory) ingested
    /// into a staging: (its tempdirs, the staging, the tree's digest).
    fn staged_output(store: &Store) -> (tempfile::TempDir, tempfile::TempDir, Staged, Digest) {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::write(out.join("sub/f"), b"made by the task").unwrap();
        let work = store.tempdir("w").unwrap();
        let mut staged = Staged::default();
        let sink = Sink::Store {
            store,
            work: work.path(),
            staged: &mut staged,
        };
        let tree = ingest_dir_limited(&out, sink, Limits::default()).unwrap();
        (t, work, staged, tree.digest)
    }

    /// A worker's prefetch makes its output's tree from the staged bytes it
    /// is given (neither the store nor the run's `unsynced` holds them
    /// yet), and a reader then finds it made.
    #[test]
    fn a_prefetched_output_is_made_from_its_staged_bytes() {
        let s = tempfile::tempdir().unwrap();
        let store = Store::open(s.path(), &mut |_| {}).unwrap();
        let (_t, _work, staged, tree) = staged_output(&store);
        assert!(!store.has_blob(&tree));
        let alone = Materializer::new(None, Arc::new(Unsynced::default()));
        assert!(
            alone.get(&store, &tree).is_err(),
            "a reader alone finds its bytes nowhere"
        );
        let mats = Materializer::new(None, Arc::new(Unsynced::default()));
        mats.prefetch(&store, &tree, staged.readable().unwrap());
        let p = mats.get(&store, &tree).unwrap();
        assert_eq!(std::fs::read(p.join("sub/f")).unwrap(), b"made by the task");
    }

    /// A prefetch that fails leaves no error and nothing half made for the
    /// dependent, which then makes the tree itself.
    #[test]
    fn a_failed_prefetch_is_not_kept() {
        let s = tempfile::tempdir().unwrap();
        let store = Store::open(s.path(), &mut |_| {}).unwrap();
        let (_t, _work, staged, tree) = staged_output(&store);
        let run = Arc::new(Unsynced::default());
        let mats = Materializer::new(None, run.clone());
        // NB: given none of its bytes: it fails.
        mats.prefetch(&store, &tree, Vec::new());
        assert!(!mats.root(&store).unwrap().join(tree.to_hex()).exists());
        run.add(staged.readable().unwrap());
        let p = mats.get(&store, &tree).unwrap();
        assert_eq!(std::fs::read(p.join("sub/f")).unwrap(), b"made by the task");
    }
}
