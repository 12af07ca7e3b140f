//! The worker side of a run: each of `jobs` threads takes a job, runs it in
//! its own scratch directory, ingests its output into the run's staging
//! area and stages its entry record; the coordinator commits and publishes.
//!
//! May call: `store` (ingest, staging), `cache`/`index` for formatting only.
//! Guarantees: a job always starts from an empty output directory; a failed
//! job stages nothing the coordinator will publish.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel;

use super::job::{Job, JobContext, JobError, Materializer};
use super::Msg;
use crate::cache::now_ms;
use crate::exec::hermetic::Mode;
use crate::hash::Digest;
use crate::index::units::format_size;
use crate::store::ingest::{ingest_dir_limited, ingest_file, Limits, Sink};
use crate::store::{remove_all, Entry, Staged, Store, StoreError};

/// A miss handed to a worker.
pub(super) struct WorkItem {
    pub(super) idx: usize,
    pub(super) key: Digest,
    pub(super) entry: Entry,
    pub(super) job: Arc<dyn Job>,
    pub(super) limits: Limits,
    /// A dependent will read its output through `JobContext` (staged):
    /// the worker materializes it after answering (`Materializer::prefetch`).
    pub(super) feeds: bool,
}

/// A worker's answer for one `WorkItem`.
pub(super) struct WorkDone {
    pub(super) idx: usize,
    pub(super) key: Digest,
    /// The entry, and its staged (not yet committed) blobs and record.
    pub(super) result: Result<(Entry, Staged), Failure>,
    pub(super) start: Duration,
    pub(super) duration: Duration,
    pub(super) worker: usize,
}

/// Why a job failed: the task's failure message, its exit code when it
/// ran, and the end of its log.
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) exit_code: Option<i32>,
    pub(super) log_tail: Option<String>,
}

impl Failure {
    fn new(message: String) -> Failure {
        Failure {
            message,
            exit_code: None,
            log_tail: None,
        }
    }

    /// A job that ran and failed: `exit_code`, and the tail of its stderr
    /// (or stdout).
    fn ran(message: String, exit_code: i32, res: &super::JobResult) -> Failure {
        Failure {
            message,
            exit_code: Some(exit_code),
            log_tail: log_tail(&res.stderr).or_else(|| log_tail(&res.stdout)),
        }
    }
}

impl From<JobError> for Failure {
    fn from(e: JobError) -> Failure {
        Failure::new(e.to_string())
    }
}

/// Start `jobs` workers in `s`. Returns the queue to hand them work and the
/// channel they (and joined keys, see `Inflight`) answer on.
pub(super) fn spawn_workers<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    jobs: usize,
    gauge: Option<&Arc<AtomicU64>>,
    mats: &'scope Materializer,
    store: &'scope Store,
    holder: u64,
    t0: Instant,
) -> (
    channel::Sender<WorkItem>,
    channel::Sender<Msg>,
    channel::Receiver<Msg>,
) {
    let (work_tx, work_rx) = channel::unbounded::<WorkItem>();
    let (done_tx, done_rx) = channel::unbounded::<Msg>();
    for w in 0..jobs {
        let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
        let gauge = gauge.cloned();
        s.spawn(move || {
            // NB: made for the first job, so a run that executes nothing
            // creates (and removes) no directory at all.
            let mut dir = None;
            // NB: a fresh directory (`w<w>.<made>`) replaces one that could
            // not be emptied.
            let mut made = 0;
            let make = |made: usize| {
                let name = match made {
                    0 => format!("w{w}"),
                    n => format!("w{w}.{n}"),
                };
                mats.root(store).and_then(|r| WorkerDir::new(&r.join(name)))
            };
            for item in work_rx.iter() {
                let dir = dir.get_or_insert_with(|| make(0));
                // NB: counted as running from here, not when queued:
                // with -j2, two run however many wait.
                if let Some(g) = &gauge {
                    g.fetch_add(1, Ordering::Relaxed);
                }
                let _ = done_tx.send(Msg::Began { idx: item.idx });
                let start = t0.elapsed();
                let result = match &*dir {
                    Ok(dir) => execute(store, holder, mats, dir, &item),
                    Err(e) => Err(Failure::new(e.to_string())),
                };
                // NB: where its staged bytes are, taken before the answer
                // hands them to the coordinator. Only an output new to the
                // store (its tree staged here): one stored already is most
                // likely an output as before, whose dependents' keys are
                // unchanged, so they hit and read nothing.
                let fed = match (&result, item.feeds) {
                    (Ok((entry, staged)), true) if staged.has_digest(&entry.output) => {
                        staged.readable().map(|blobs| (entry.output, blobs))
                    }
                    _ => None,
                };
                let done = WorkDone {
                    idx: item.idx,
                    key: item.key,
                    result,
                    start,
                    duration: t0.elapsed() - start,
                    worker: w,
                };
                if done_tx.send(Msg::Done(Box::new(done))).is_err() {
                    return;
                }
                // NB: while the coordinator takes the answer and
                // dispatches the dependent, which then finds its input
                // made (or waits for it): in a chain that took 0.12-0.15
                // ms of each link.
                if let Some((tree, blobs)) = fed {
                    mats.prefetch(store, &tree, blobs);
                }
                // NB: emptied after the answer, not before: in a chain the
                // next task starts on another worker meanwhile (this took
                // 0.17-0.25 ms of each link, 1,000 links of `echo`).
                if let Ok(d) = &*dir {
                    if let Err(e) = d.reset() {
                        made += 1;
                        *dir = if made > MAX_FRESH {
                            Err(JobError::Task(format!(
                                "cannot clean the work directory ({e}), the {made}th that could not be emptied"
                            )))
                        } else {
                            log::warn!(
                                "worker {w}: cannot clean its work directory ({e}); the next task gets a fresh one"
                            );
                            make(made).map_err(|m| {
                                JobError::Task(format!(
                                    "cannot clean the work directory ({e}), nor make another: {m}"
                                ))
                            })
                        };
                    }
                }
            }
        });
    }
    (work_tx, done_tx, done_rx)
}

/// Work directories a worker replaces (one that could not be emptied)
/// before its next tasks fail instead.
const MAX_FRESH: usize = 8;

/// A worker's scratch directory, reused from task to task and emptied
/// between them. NB: reuse matters: creating and deleting ~10 inodes per
/// task made ext4's inode allocator (`recently_deleted`) half of a cold
/// run's CPU time (perf, 1,000 trivial tasks).
struct WorkerDir {
    root: PathBuf,
    out: PathBuf,
    stage: PathBuf,
}

impl WorkerDir {
    fn new(root: &Path) -> Result<WorkerDir, JobError> {
        let d = WorkerDir {
            root: root.to_path_buf(),
            out: root.join("out"),
            stage: root.join("stage"),
        };
        for p in [
            &d.root,
            &d.out,
            &d.stage,
            &root.join("tmp"),
            &root.join("in"),
            &root.join("inputs"),
        ] {
            std::fs::create_dir_all(p).map_err(JobError::io(p))?;
        }
        Ok(d)
    }

    /// Empty `out`, `stage`, `tmp`, `in` and `inputs` for the next task.
    fn reset(&self) -> Result<(), String> {
        for d in [
            &self.out,
            &self.stage,
            &self.root.join("tmp"),
            &self.root.join("in"),
            &self.root.join("inputs"),
        ] {
            let rd = std::fs::read_dir(d).map_err(|e| format!("{}: {e}", d.display()))?;
            for e in rd {
                let p = e.map_err(|e| format!("{}: {e}", d.display()))?.path();
                remove_all(&p).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Worker side: run the job, ingest its output and stage its entry.
/// `holder`: the run's (`Cache::begin_ingest`): the blobs its outputs
/// find stored are held from gc until the run ends (`store::holds`).
fn execute(
    store: &Store,
    holder: u64,
    mats: &Materializer,
    dir: &WorkerDir,
    item: &WorkItem,
) -> Result<(Entry, Staged), Failure> {
    let (out, stage) = (&dir.out, &dir.stage);
    let ctx = JobContext {
        store,
        out_dir: out,
        work_dir: &dir.root,
        deps: &item.entry.manifest.deps,
        max_output: item.limits.max_bytes,
        mats,
        inputs_via: mats.via.as_deref(),
    };
    let started = Instant::now();
    let res = item.job.run(&ctx)?;
    let duration = started.elapsed();
    if let Some(limit) = res.timed_out {
        return Err(Failure::ran(
            format!(
                "timed out after {} (killed with its process group)",
                crate::index::units::format_duration(limit)
            ),
            res.exit_code,
            &res,
        ));
    }
    if let Some(bytes) = res.output_over {
        return Err(Failure::ran(
            format!(
                "the output is larger than its limit, max_output = {} bytes ({bytes} bytes written when it was killed, with its process group)",
                item.limits.max_bytes.unwrap_or(0)
            ),
            res.exit_code,
            &res,
        ));
    }
    if res.exit_code != 0 {
        // NB: a task's stderr lives on the store's filesystem too, so
        // on a full disk its own `No space left on device` is often lost.
        let full = disk_full(store)
            .map(|d| format!("; {d}"))
            .unwrap_or_default();
        return Err(Failure::ran(
            format!("exited with status {}{full}", res.exit_code),
            res.exit_code,
            &res,
        ));
    }
    let findings = match &res.hermetic {
        None => None,
        Some(c) => match (&c.findings, c.mode) {
            (Ok(f), Mode::Strict) if f.undeclared() => {
                return Err(Failure {
                    message: format!(
                        "hermetic = \"strict\": {}",
                        f.sentences(&item.entry.task).join("; ")
                    ),
                    exit_code: Some(res.exit_code),
                    log_tail: None,
                });
            }
            (Err(why), Mode::Strict) => {
                return Err(Failure {
                    message: format!(
                        "hermetic = \"strict\", but its reads cannot be checked here: {why}"
                    ),
                    exit_code: Some(res.exit_code),
                    log_tail: None,
                });
            }
            (Ok(f), _) => Some(f.clone()),
            (Err(_), _) => None,
        },
    };
    let mut staged = Staged::held_by(holder);
    let ingest_fail = |e: StoreError| match disk_full(store).filter(|_| e.is_no_space()) {
        Some(d) => Failure::new(format!("{d}: {e}")),
        None => Failure::new(e.to_string()),
    };
    fn sink<'a>(store: &'a Store, work: &'a Path, staged: &'a mut Staged) -> Sink<'a> {
        Sink::Store {
            store,
            work,
            staged,
        }
    }
    let tree = ingest_dir_limited(out, sink(store, stage, &mut staged), item.limits)
        .map_err(ingest_fail)?;
    let (stdout, _, _) =
        ingest_file(&res.stdout, sink(store, stage, &mut staged)).map_err(ingest_fail)?;
    let (stderr, _, _) =
        ingest_file(&res.stderr, sink(store, stage, &mut staged)).map_err(ingest_fail)?;
    let mut entry = item.entry.clone();
    entry.output = tree.digest;
    entry.size = tree.bytes;
    entry.files = tree.files;
    entry.created_ms = now_ms();
    entry.duration_ms = duration.as_millis() as u64;
    entry.stdout = stdout;
    entry.stderr = stderr;
    entry.hermetic = findings;
    let stage_fail = |e: StoreError| Failure::new(e.to_string());
    store
        .stage_entry(
            &mats
                .pending(store)
                .map_err(|e| Failure::new(e.to_string()))?,
            &entry,
            &mut staged,
        )
        .map_err(stage_fail)?;
    staged
        .relocate(
            &mats
                .staging(store)
                .map_err(|e| Failure::new(e.to_string()))?,
            &format!("n{}", item.idx),
        )
        .map_err(stage_fail)?;
    Ok((entry, staged))
}

/// Free space on the store's filesystem below which a failure is blamed
/// on a full disk: less than one task's worth of small writes.
const NEARLY_FULL: u64 = 1 << 20;

/// `the store's filesystem is full (…)` when it has (nearly) no space left
/// for unprivileged writers, checked while the failed task's files are
/// still there.
fn disk_full(store: &Store) -> Option<String> {
    let at = store.tmp_root();
    let st = nix::sys::statvfs::statvfs(&at).ok()?;
    let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    (free < NEARLY_FULL).then(|| {
        format!(
            "the store's filesystem is full (No space left on device: {} free at {})",
            format_size(free),
            at.display()
        )
    })
}

/// Why a task may not run now: the store's reserve is gone and cannot be
/// made again (the filesystem is full). None: it may run.
pub(super) fn no_reserve(store: &Store) -> Option<String> {
    match store.ensure_reserve() {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "not run: the store's filesystem is full ({} free at {}; a task runs only with the store's {} reserve in place, and making it again needs that much free and as much again); `dagfs gc` or freeing space fixes it",
            format_size(crate::store::reserve::free_bytes(store.root()).unwrap_or(0)),
            store.root().display(),
            format_size(crate::store::reserve::RESERVE),
        )),
        Err(e) if e.is_no_space() => Some(format!("not run: {e}")),
        // NB: a store the reserve cannot be written in for another reason
        // (permissions): the task's own writes will tell.
        Err(_) => None,
    }
}

/// The last 20 lines (at most 4 KiB) of a log file.
fn log_tail(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let start = bytes.len().saturating_sub(4096);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}
