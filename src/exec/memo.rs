//! Whole-run memos: answering a fully cached `dagfs run` without parsing
//! the pipeline or opening the index, when nothing its answer depends on
//! has changed since the last run that gave it. The memo file, its
//! generation and the folding of its hits are `index::memo`'s; this module
//! decides when a memo is written and whether it still holds.
//!
//! A memo holds when all of these are as they were when it was written:
//! - the pipeline file's bytes (BLAKE3), by the same name in the same
//!   directory (resolved; not the file's: a linked pipeline file runs in
//!   the link's directory), with the same tasks asked for and `--timeout`
//!   (the memo's name, `Probe`);
//! - the dagfs binary (its stat: a new build may derive other keys);
//! - the value of every env var any task declares;
//! - the stat (`lstat`: device, inode, mode, size, mtime and ctime, in ns)
//!   of every path under every declared input, directories included, of
//!   each directory on the way to an input (one replaced by a symlink is
//!   refused by the full path) and of each `hermetic_scope` tree: a file
//!   written in place changes its ctime, and an entry made, removed or
//!   renamed changes its directory's. The stats are taken before the
//!   inputs are snapshotted and again after the run, and the memo is
//!   written only if both agree, every input is there, and no stamp is
//!   within [`SETTLE_NS`] of the first look (or later): a write within the
//!   same clock tick could keep a stamp, and some filesystems stamp to the
//!   second (FAT to two). A stamp further in the future than that (a
//!   server whose clock is ahead) makes no memo either;
//! - the memo generation (no entry lost, no `latest` moved, no new
//!   policy) and the store's blob generation (no blob removed);
//! - no entry has expired, and each task's output is still in the store
//!   (`Store::has_blob`, as a hit checks it);
//! - the store recreated no top directory when it opened (the full path
//!   says what was lost).
//!
//! A memo is written only after a run in which every task was a key hit or
//! ran and was kept, with the index flushed and each task's `latest` still
//! its key (checked under `Index::memo_writer`: a daemon's other sessions
//! change nothing meanwhile), when the run has no remote tier, no cache
//! limits of its own and caching on (the caller, `cli/run.rs`, checks the
//! flags), and no task has `cache = false`. A pipeline whose
//! inputs hold more than [`MAX_SEEN`] paths, or a path that is not UTF-8,
//! gets no memo.
//!
//! May call: as `exec` (`hash`, `host`, `store`, `index`, `cache`).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::pipeline::Pipeline;
use super::scheduler::{Outcome, Report, Status};
use crate::cache::{now_ms, Cache};
use crate::hash::{CanonicalHasher, Digest};
use crate::index::memo::{self, Memo, Seen};
use crate::index::Route;
use crate::store::Store;

/// The most paths under a pipeline's declared inputs a memo watches.
pub const MAX_SEEN: usize = 20_000;

/// Within this of the first look a path's stamp is not trusted (two
/// seconds: the coarsest stamps, FAT's, and a clock step or two of skew).
pub const SETTLE_NS: i64 = 2_000_000_000;

/// Which memo a run would use: its name, and the pipeline it was given.
pub struct Probe {
    pub name: String,
    digest: Digest,
}

impl Probe {
    /// For the pipeline `file` (whose bytes are `text`), the tasks asked
    /// for (`targets`, none: all) and the `--timeout` flag.
    pub fn new(file: &Path, text: &[u8], targets: &[String], timeout: Option<&str>) -> Probe {
        // NB: the directory resolved, not the file: a pipeline file that is a
        // symlink runs in the directory of the link (its inputs, its name).
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let path = std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .join(file.file_name().unwrap_or_default());
        let mut h = CanonicalHasher::new("dagfs 2026 run memo name v1");
        h.bytes(path.as_os_str().as_encoded_bytes())
            .opt_str(timeout)
            .u64(targets.len() as u64);
        for t in targets {
            h.str(t);
        }
        Probe {
            name: h.finish().to_hex()[..32].to_string(),
            digest: Digest::of(text),
        }
    }
}

fn stat_of(path: &Path) -> Option<[i64; 6]> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some([
        m.dev() as i64,
        m.ino() as i64,
        i64::from(m.mode()),
        m.size() as i64,
        m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
    ])
}

/// The running binary's stat.
fn exe() -> Option<[i64; 6]> {
    stat_of(&std::env::current_exe().ok()?)
}

/// BLAKE3 of env var `name`'s value, None where it is unset.
fn env_digest(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<Digest> {
    env(name).map(|v| Digest::of(v.as_bytes()))
}

/// Answer the run from its memo if that still holds: the run's report
/// (every task a key hit), its record written and its hit noted. None: the
/// run takes the full path.
pub fn answer(
    store: &Store,
    probe: &Probe,
    env: &dyn Fn(&str) -> Option<String>,
    t0: Instant,
) -> Option<Report> {
    let started_ms = now_ms();
    let m = holding(store, probe, env, started_ms)?;
    let dir = memo::dir_beside(&store.runs_dir());
    let run_id = match crate::index::put_run_unindexed(&store.runs_dir(), &|id| {
        m.record_json(id, started_ms, now_ms())
    }) {
        Ok(id) => id,
        Err(e) => {
            log::warn!("this run's record was not written, so /runs will not show it: {e}");
            0
        }
    };
    if let Err(e) = memo::note_hit(&dir, &probe.name, started_ms) {
        log::warn!("this run's hits were not noted for the statistics: {e}");
    }
    Some(report_of(m, run_id, t0))
}

/// As `answer`, in a process that has the index open (a daemon, for one
/// of its sessions): the run's record, hits and uses go to the index at
/// once, and its keys are leased to `session` as a run's are.
pub fn answer_indexed(
    cache: &Cache,
    probe: &Probe,
    env: &dyn Fn(&str) -> Option<String>,
    t0: Instant,
    session: Option<u64>,
) -> crate::index::Result<Option<Report>> {
    let started_ms = now_ms();
    let Some(m) = holding(&cache.store, probe, env, started_ms) else {
        return Ok(None);
    };
    let keys: Vec<Digest> = m.tasks.iter().map(|t| t.1).collect();
    if let Some(s) = session {
        cache.lease(s, keys.iter().copied());
    }
    // NB: again, once leased: a change since the first look moved the
    // generation before it landed, and none lands on a leased key after.
    let dir = memo::dir_beside(&cache.store.runs_dir());
    if memo::generation(&dir) != Some(m.generation)
        || m.blob_generation != cache.store.blob_generation()
    {
        return Ok(None);
    }
    let run_id = cache.index.next_run_id()?;
    let json = m.record_json(run_id, started_ms, now_ms());
    if let Err(e) = cache.index.put_run_json(run_id, &json) {
        log::warn!("run {run_id}'s record was not written, so /runs will not show it: {e}");
    }
    let hits = keys.len() as i64;
    cache.index.add("hits", hits)?;
    cache.index.add("hit.key", hits)?;
    cache.index.add(memo::C_MEMO_RUNS, 1)?;
    cache.index.note_uses(keys, started_ms);
    Ok(Some(report_of(m, run_id, t0)))
}

/// The memo of `probe` if it holds (see the module doc).
fn holding(
    store: &Store,
    probe: &Probe,
    env: &dyn Fn(&str) -> Option<String>,
    now_ms: u64,
) -> Option<Memo> {
    if !store.recreated().is_empty() {
        // NB: the full path says what was lost and heals the index.
        return None;
    }
    let dir = memo::dir_beside(&store.runs_dir());
    let m = memo::read(&dir, &probe.name)?;
    let holds = m.pipeline == probe.digest
        && m.exe.is_some()
        && m.exe == exe()
        && memo::generation(&dir) == Some(m.generation)
        && m.blob_generation == store.blob_generation()
        && m.expires_ms.is_none_or(|e| now_ms < e)
        && m.env.iter().all(|(name, d)| env_digest(env, name) == *d)
        && m.seen.iter().all(|s| stat_of(Path::new(&s.path)) == s.stat);
    if !holds {
        return None;
    }
    let mut checked = HashSet::new();
    for (_, _, o) in &m.tasks {
        if checked.insert(*o) && !store.has_blob(o) {
            return None;
        }
    }
    Some(m)
}

fn report_of(m: Memo, run_id: u64, t0: Instant) -> Report {
    Report {
        run_id,
        dag: m.dag,
        names: m.tasks.iter().map(|t| t.0.clone()).collect(),
        outcomes: m.tasks.iter().map(|t| Outcome::hit(t.1, t.2)).collect(),
        elapsed: t0.elapsed(),
        evicted: 0,
        expired: 0,
    }
}

/// After a run: write its memo if it can be one (see the module doc).
/// Returns whether it was written; the reason it was not is logged at
/// debug level.
pub fn record(
    cache: &Cache,
    probe: &Probe,
    pipeline: &Pipeline,
    report: &Report,
    before: Option<Look>,
    env: &dyn Fn(&str) -> Option<String>,
) -> crate::index::Result<bool> {
    let why_not = |why: &str| {
        log::debug!("no run memo: {why}");
        Ok(false)
    };
    let memoable = |o: &Outcome| match o.status {
        Status::Cached => o.route == Some(Route::Key),
        Status::Executed => o.kept,
        _ => false,
    };
    if !report.outcomes.iter().all(memoable) {
        return why_not("not every task was a key hit or ran and was kept");
    }
    if pipeline.tasks.iter().any(|t| !t.cache) {
        return why_not("a task has `cache = false`: it runs every time");
    }
    let Some(exe) = exe() else {
        return why_not("the dagfs binary has no stat");
    };
    let Some(before) = before else {
        return why_not(
            "the inputs could not be listed, hold too many paths or a path that is not UTF-8",
        );
    };
    let Some(after) = look(cache, pipeline) else {
        return why_not("the inputs could not be listed after the run");
    };
    // NB: the looks above read no index, and may be slow (up to MAX_SEEN
    // stats): from here, the first read of the index, to the memo's write,
    // no change lands (a daemon's other sessions wait).
    let _writer = cache.index.memo_writer();
    let Some(template) = cache.index.run(report.run_id)? else {
        return why_not("the run's record was not written");
    };
    if template.tasks.len() != report.outcomes.len() {
        return why_not("the run's record does not match the run");
    }
    let policy_ttl = cache.index.policy()?.ttl;
    let mut expires_ms: Option<u64> = None;
    let mut outputs = Vec::with_capacity(report.outcomes.len());
    for (o, t) in report.outcomes.iter().zip(&template.tasks) {
        let (Some(key), Some(output)) = (o.key, o.output) else {
            return why_not("a task has no key or output");
        };
        let Some(meta) = cache.index.get(&key)? else {
            return why_not("an entry of the run is gone already");
        };
        if meta.output != output || t.key != Some(key) {
            return why_not("an entry of the run changed already");
        }
        if cache.index.latest(&template.dag, &t.task)? != Some(key) {
            return why_not("another run moved a task's latest output since");
        }
        let ttl = match (meta.ttl_secs, policy_ttl.map(|d| d.as_secs())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(ttl) = ttl {
            let at = meta.created_ms.saturating_add(ttl.saturating_mul(1000));
            expires_ms = Some(expires_ms.map_or(at, |e| e.min(at)));
        }
        outputs.push(output);
    }
    if after.seen != before.seen {
        return why_not("an input changed during the run");
    }
    if !before.settled() {
        return why_not("an input was stamped just before the run (or in the future)");
    }
    let seen = after.seen;
    let mut names: Vec<String> = pipeline.tasks.iter().flat_map(|t| t.env.clone()).collect();
    names.sort();
    names.dedup();
    let mut tasks = template.tasks;
    for t in &mut tasks {
        t.route = Route::Key.as_str().to_string();
        t.status = Status::Cached.as_str().to_string();
        t.miss_reason = None;
        t.duration_ms = Some(0);
        t.error = None;
    }
    let mut m = Memo {
        format: memo::FORMAT,
        exe: Some(exe),
        pipeline: probe.digest,
        generation: 0,
        blob_generation: cache.store.blob_generation(),
        expires_ms,
        env: names
            .into_iter()
            .map(|n| {
                let d = env_digest(env, &n);
                (n, d)
            })
            .collect(),
        seen,
        dag: template.dag,
        tasks: report
            .names
            .iter()
            .zip(&report.outcomes)
            .zip(outputs)
            .map(|((n, o), out)| (n.clone(), o.key.expect("checked above"), out))
            .collect(),
        record_tasks: serde_json::to_vec(&tasks).expect("run tasks serialize"),
    };
    cache.index.write_memo(&probe.name, &mut m)?;
    Ok(true)
}

/// What a memo watches, and when it was looked at: take it before the
/// inputs are snapshotted (`record` compares a second look with it).
pub struct Look {
    at_ns: i64,
    seen: Vec<Seen>,
}

impl Look {
    /// Every declared input there, and every stamp settled: older than
    /// `SETTLE_NS` before the look, and not further than that after it.
    fn settled(&self) -> bool {
        let (old, new) = (self.at_ns - SETTLE_NS, self.at_ns + SETTLE_NS);
        self.seen.iter().all(|s| {
            s.stat
                .is_some_and(|st| st[4] < old && st[5] < old && st[4] <= new && st[5] <= new)
        })
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Look at what a memo of `pipeline` would watch: every path under its
/// declared inputs, each directory on the way to one (below the pipeline's
/// directory, whose resolved path names the memo: files made beside the
/// pipeline file, a build directory say, change nothing) and each
/// `hermetic_scope` tree, with its stat. None if
/// one cannot be listed, there are more than `MAX_SEEN` or one is not
/// UTF-8.
pub fn look(cache: &Cache, pipeline: &Pipeline) -> Option<Look> {
    let at_ns = now_ns();
    let dir = std::fs::canonicalize(&pipeline.dir).ok()?;
    let mut trees: Vec<PathBuf> = Vec::new();
    let mut single: Vec<PathBuf> = Vec::new();
    for t in &pipeline.tasks {
        for i in &t.inputs {
            let p = dir.join(i);
            let mut up = p.parent();
            while let Some(a) = up.filter(|a| a.starts_with(&dir) && *a != dir) {
                single.push(a.to_path_buf());
                up = a.parent();
            }
            trees.push(p);
        }
        single.extend(t.hermetic_scope.iter().cloned());
    }
    trees.sort();
    trees.dedup();
    single.sort();
    single.dedup();
    let mut skip = vec![std::fs::canonicalize(cache.store.root()).ok()?];
    skip.extend(crate::host::mounts::dagfs_mountpoints().unwrap_or_default());
    let mut seen = Vec::new();
    let mut done = HashSet::new();
    let note = |path: PathBuf, stat, seen: &mut Vec<Seen>| -> Option<()> {
        seen.push(Seen {
            path: path.into_os_string().into_string().ok()?,
            stat,
        });
        (seen.len() <= MAX_SEEN).then_some(())
    };
    // NB: a directory on the way may also be a tree of its own: `done` is
    // the trees' alone.
    for p in single {
        let stat = stat_of(&p);
        note(p, stat, &mut seen)?;
    }
    // NB: iterative: a deep tree never runs out of stack.
    let mut stack = trees;
    stack.reverse();
    while let Some(path) = stack.pop() {
        if skip.contains(&path) || !done.insert(path.clone()) {
            continue;
        }
        let stat = stat_of(&path);
        let is_dir = stat.is_some_and(|s| (s[2] as u32 & libc::S_IFMT) == libc::S_IFDIR);
        if is_dir {
            for e in std::fs::read_dir(&path).ok()? {
                stack.push(e.ok()?.path());
            }
        }
        note(path, stat, &mut seen)?;
    }
    Some(Look { at_ns, seen })
}
