//! Run memos: the whole answer of a fully cached run, kept in a plain file
//! so that the next identical run is answered without opening the index.
//!
//! A fully cached `dagfs run` used to parse the pipeline, open sled, derive
//! every key and look each one up: 30-40 ms for 1,000 tasks. When nothing
//! it depends on changed since, its answer is the same as the last one's.
//! A memo is that answer and what it depended on; `exec::memo` decides
//! whether it still holds (the pipeline file's bytes, the declared env vars'
//! values, the stats of every declared input path, the dagfs binary) and
//! this module keeps it, with what only the index can vouch for:
//!
//! - **The memo generation** (`<store>/memo/generation`, decimal): it
//!   changes before the index loses an entry, moves a task's `latest`,
//!   takes a new policy or is rebuilt, so a memo (which names the
//!   generation it was written in) holds only while none of that happened.
//!   The first such change after an open, or after a memo was written,
//!   writes generation + 1 durably (temporary file, fsync, rename, fsync of
//!   the directory) *before* the change: a crash never leaves a changed
//!   index beside an unchanged generation. Later changes in the same
//!   process need no new generation, since no memo names the new one yet.
//!   One fsync at most per process and per memo written.
//! - **The store's blob generation** (`Store::blob_generation`), which
//!   changes before any blob is removed.
//!
//! A memo answers only for what the index already holds durably: it is
//! written after the run's flush. It is written to a temporary name and
//! renamed, without fsync; a torn or lost memo fails its checksum and the
//! run takes the full path, which writes it again.
//!
//! **Hits** are counted without the index too: each run a memo answers
//! appends its time (u64 LE) to `<name>.hits`. The next process that opens
//! the index writable folds those files (`Index::fold_memo_hits`): the
//! hits and `hit.key` counters grow by runs × tasks, and every task's entry
//! is used at the newest of those times (through the uses journal). A
//! crash between the fold's writes and the index's flush loses those uses
//! and counts, never an entry.
//!
//! | file                | what                                             |
//! |---------------------|--------------------------------------------------|
//! | `memo/<name>`       | `dagfs-memo 1 <BLAKE3 of the rest, hex>\n` then the `Memo` as JSON |
//! | `memo/<name>.hits`  | one u64 LE (ms) per run it answered, until folded |
//! | `memo/generation`   | the memo generation, decimal                      |
//!
//! `<name>` is 32 hex digits: a hash of the pipeline file's path, the tasks
//! asked for and the flags that reach a key (`exec::memo::Probe`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use super::{Index, IndexError, Result};
use crate::hash::Digest;

/// The stats counter of runs memos answered.
pub const C_MEMO_RUNS: &str = "memo_runs";

/// The memo file's format; a memo of another format is not read.
pub const FORMAT: u32 = 1;

const MAGIC: &str = "dagfs-memo";
const GENERATION: &str = "generation";
const HITS: &str = ".hits";

/// A path's stat as a memo saw it: `[dev, ino, mode, size, mtime ns,
/// ctime ns]`, or None where nothing was there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Absolute (a path that is not UTF-8 makes no memo).
    pub path: String,
    pub stat: Option<[i64; 6]>,
}

/// One fully cached run's answer and what it depended on. In its file,
/// `tasks` is a binary table and `record_tasks` raw JSON (see `encode`):
/// a 1,000-task memo reads in well under a millisecond.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memo {
    pub format: u32,
    /// The dagfs binary that wrote it (its stat: another build may key
    /// differently).
    pub exe: Option<[i64; 6]>,
    /// BLAKE3 of the pipeline file's bytes.
    pub pipeline: Digest,
    /// The memo generation it was written in (set by `Index::write_memo`).
    pub generation: u64,
    /// The store's blob generation it was written in.
    pub blob_generation: u64,
    /// When its first entry expires (ms), if any can.
    pub expires_ms: Option<u64>,
    /// Every env var a task of the pipeline declares, and BLAKE3 of its
    /// value (None: unset).
    pub env: Vec<(String, Option<Digest>)>,
    /// Every path under the pipeline's declared inputs.
    pub seen: Vec<Seen>,
    /// The pipeline's name (the runs' `dag`).
    pub dag: String,
    /// Each task of the run: (name, key, output), in the run's order.
    #[serde(skip)]
    pub tasks: Vec<(String, Digest, Digest)>,
    /// The `tasks` of the record of a run it answers, as JSON: a JSON
    /// array of `RunTask`.
    #[serde(skip)]
    pub record_tasks: Vec<u8>,
}

impl Memo {
    /// The record of a run it answered, as `RunRecord` JSON.
    pub fn record_json(&self, id: u64, started_ms: u64, finished_ms: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.record_tasks.len() + 128);
        b.extend_from_slice(format!("{{\"id\":{id},\"dag\":").as_bytes());
        serde_json::to_writer(&mut b, &self.dag).expect("a string serializes");
        b.extend_from_slice(
            format!(
                ",\"started_ms\":{started_ms},\"finished_ms\":{finished_ms},\"ok\":true,\"tasks\":"
            )
            .as_bytes(),
        );
        b.extend_from_slice(&self.record_tasks);
        b.push(b'}');
        b
    }
}

/// The file's body: the rest of the memo as JSON, then the task table,
/// then `record_tasks`, each behind its length (u64 LE). The table, per
/// task: name length (u32 LE), name, key (32), output (32).
fn encode(m: &Memo) -> Vec<u8> {
    let head = serde_json::to_vec(m).expect("memo serializes");
    let mut table = Vec::with_capacity(m.tasks.len() * 80);
    for (name, key, output) in &m.tasks {
        table.extend_from_slice(&(name.len() as u32).to_le_bytes());
        table.extend_from_slice(name.as_bytes());
        table.extend_from_slice(key.as_bytes());
        table.extend_from_slice(output.as_bytes());
    }
    let mut b = Vec::with_capacity(head.len() + table.len() + m.record_tasks.len() + 24);
    for part in [&head, &table, &m.record_tasks] {
        b.extend_from_slice(&(part.len() as u64).to_le_bytes());
        b.extend_from_slice(part);
    }
    b
}

fn decode(b: &[u8]) -> Option<Memo> {
    let mut rest = b;
    let mut part = || -> Option<&[u8]> {
        let n = usize::try_from(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)).ok()?;
        let p = rest.get(8..8usize.checked_add(n)?)?;
        rest = &rest[8 + n..];
        Some(p)
    };
    let (head, mut table, record_tasks) = (part()?, part()?, part()?);
    let mut m: Memo = serde_json::from_slice(head).ok()?;
    while !table.is_empty() {
        let n = u32::from_le_bytes(table.get(..4)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(table.get(4..4 + n)?).ok()?.to_string();
        let key = Digest::from_slice(table.get(4 + n..36 + n)?)?;
        let output = Digest::from_slice(table.get(36 + n..68 + n)?)?;
        m.tasks.push((name, key, output));
        table = &table[68 + n..];
    }
    m.record_tasks = record_tasks.to_vec();
    Some(m)
}

/// The memo directory of a store whose run records are in `runs`.
pub fn dir_beside(runs: &Path) -> PathBuf {
    runs.with_file_name("memo")
}

fn io_err(path: &Path, e: std::io::Error) -> IndexError {
    IndexError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// The memo named `name` in `dir`, if there is one that reads whole and
/// is of this format.
pub fn read(dir: &Path, name: &str) -> Option<Memo> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&bytes[..nl]).ok()?;
    let body = &bytes[nl + 1..];
    let mut parts = head.split(' ');
    let ok = parts.next() == Some(MAGIC)
        && parts.next() == Some(&FORMAT.to_string())
        && parts.next().and_then(Digest::from_hex) == Some(Digest::of(body));
    if !ok {
        return None;
    }
    decode(body).filter(|m| m.format == FORMAT)
}

fn write(dir: &Path, name: &str, memo: &Memo) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let body = encode(memo);
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            writeln!(f, "{MAGIC} {FORMAT} {}", Digest::of(&body).to_hex())?;
            f.write_all(&body)
        })
        .map_err(|e| io_err(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Keep the newest [`KEPT`] memos (by their own or their hits' mtime),
/// removing the rest with their hits, which the open of this index has
/// folded already (no other process answers from a memo while this one
/// has the index open: both need the store lock; a daemon's own answers
/// go to its index, not to hits files). Best effort: a memo left is only
/// disk.
fn prune(dir: &Path, keep: &str) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut memos: Vec<(std::time::SystemTime, String)> = list
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if name.len() != 32 || name == keep || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let hits = mtime(&dir.join(format!("{name}{HITS}")));
            let at = mtime(&e.path())?.max(hits.unwrap_or(std::time::UNIX_EPOCH));
            Some((at, name))
        })
        .collect();
    if memos.len() < KEPT {
        return;
    }
    memos.sort();
    for (_, name) in &memos[..memos.len() + 1 - KEPT] {
        let _ = std::fs::remove_file(dir.join(format!("{name}{HITS}")));
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// How many memos a store keeps (one per pipeline file, tasks asked for
/// and `--timeout`).
pub const KEPT: usize = 64;

/// The memo generation (0 before the first). None: the file does not read
/// as one, so no memo holds.
pub fn generation(dir: &Path) -> Option<u64> {
    match std::fs::read_to_string(dir.join(GENERATION)) {
        Ok(s) => s.trim().parse().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
    }
}

/// Note that memo `name` answered a run at `ms` (see the module doc).
pub fn note_hit(dir: &Path, name: &str, ms: u64) -> Result<()> {
    let path = dir.join(format!("{name}{HITS}"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&ms.to_le_bytes()))
        .map_err(|e| io_err(&path, e))
}

/// The index's side of the memos: when a new generation is due, and the
/// gate between changes and a memo being written.
pub(super) struct Memos {
    dir: PathBuf,
    /// A memo may name the current generation: the next change must move
    /// it first. True at every open (some earlier process may have written
    /// one).
    due: AtomicBool,
    /// Held shared by each change (`before_change`, to its end) and
    /// exclusively while a memo is made (`Index::memo_writer`), so a change
    /// that found no generation due never lands while a memo is being made
    /// of the index (a daemon runs sessions at once).
    gate: RwLock<()>,
    /// One generation move at a time (changes hold the gate shared, so
    /// several may find one due at once).
    advancing: Mutex<()>,
}

/// A change in progress (see `Memos::gate`).
pub(super) struct Change<'a>(#[allow(dead_code)] RwLockReadGuard<'a, ()>);

/// A memo being made (see `Memos::gate`): no change lands meanwhile.
pub struct MemoWriter<'a>(#[allow(dead_code)] RwLockWriteGuard<'a, ()>);

impl Memos {
    pub(super) fn new(dir: PathBuf) -> Memos {
        Memos {
            dir,
            due: AtomicBool::new(true),
            gate: RwLock::new(()),
            advancing: Mutex::new(()),
        }
    }

    /// Before a change that can make a memo wrong: a new generation,
    /// durably, if one is due. Hold what it returns until the change is
    /// made. NB: never while holding another (a waiting writer would
    /// deadlock the two).
    pub(super) fn before_change(&self) -> Result<Change<'_>> {
        let g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        if self.due.load(Ordering::Acquire) {
            let _one = self.advancing.lock().unwrap_or_else(|e| e.into_inner());
            if self.due.load(Ordering::Acquire) {
                self.advance()?;
                self.due.store(false, Ordering::Release);
            }
        }
        Ok(Change(g))
    }

    /// Write generation + 1 durably. Where that cannot be written (a full
    /// disk), every memo is removed instead, which needs no space.
    fn advance(&self) -> Result<()> {
        if !self.dir.exists() {
            // NB: no memo was ever written here, so none can name anything.
            return Ok(());
        }
        let Some(current) = generation(&self.dir) else {
            // NB: a generation that does not read could go back to one an
            // old memo names: every memo goes instead, then it starts again.
            self.remove_all().map_err(|e| io_err(&self.dir, e))?;
            let _ = std::fs::remove_file(self.dir.join(GENERATION));
            return self.advance();
        };
        let next = current.wrapping_add(1);
        let path = self.dir.join(GENERATION);
        let tmp = self.dir.join(format!(".{GENERATION}.tmp"));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                writeln!(f, "{next}")?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all());
        match written {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.remove_all().map_err(|_| io_err(&path, e)).map(|()| {
                    log::warn!("the run memos were removed: their generation could not be written")
                })
            }
        }
    }

    fn remove_all(&self) -> std::io::Result<()> {
        for e in std::fs::read_dir(&self.dir)? {
            let p = e?.path();
            if p.file_name().is_some_and(|n| n != GENERATION) {
                match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

impl Index {
    /// Write memo `name`, naming the current memo generation (the next
    /// change of the index will move it).
    pub fn write_memo(&self, name: &str, memo: &mut Memo) -> Result<()> {
        let dir = &self.memos.dir;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        memo.generation = generation(dir).ok_or_else(|| {
            io_err(
                &dir.join(GENERATION),
                std::io::Error::other("does not hold a number"),
            )
        })?;
        self.memos.due.store(true, Ordering::Release);
        write(dir, name, memo)?;
        prune(dir, name);
        Ok(())
    }

    /// A new memo generation now (the index was replaced or rebuilt).
    pub fn invalidate_memos(&self) -> Result<()> {
        self.memos.due.store(true, Ordering::Release);
        self.memos.before_change().map(drop)
    }

    /// Hold while a memo is made, from reading the index to `write_memo`:
    /// no change lands meanwhile.
    pub fn memo_writer(&self) -> MemoWriter<'_> {
        MemoWriter(self.memos.gate.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// Uses of `keys` at `ms` (a run a memo answered, with the index
    /// open), as a hit notes them (`touch`).
    pub fn note_uses(&self, keys: impl IntoIterator<Item = Digest>, ms: u64) {
        self.pending_uses
            .lock()
            .expect("uses lock")
            .extend(keys.into_iter().map(|k| (k, ms)));
    }

    /// Fold the runs memos answered into the statistics and the uses (see
    /// the module doc). Returns how many runs that was.
    pub fn fold_memo_hits(&self) -> Result<u64> {
        let dir = self.memos.dir.clone();
        let list = match std::fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(&dir, e)),
        };
        let mut runs = 0;
        for e in list {
            let e = e.map_err(|e| io_err(&dir, e))?;
            let file = e.file_name();
            let Some(name) = file.to_str().and_then(|n| n.strip_suffix(HITS)) else {
                continue;
            };
            let path = e.path();
            let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
            if bytes.len() < 8 {
                continue;
            }
            let n = (bytes.len() / 8) as u64;
            let newest = bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .max()
                .unwrap_or(0);
            if let Some(memo) = read(&dir, name) {
                self.fold_one(&memo, n, newest)?;
            }
            runs += n;
            std::fs::File::create(&path).map_err(|e| io_err(&path, e))?;
        }
        if runs > 0 {
            self.add(C_MEMO_RUNS, runs as i64)?;
            // NB: those runs took ids past the counter (`runs::put_unindexed`).
            if let Some(&newest) = self.runs.ids()?.last() {
                if newest > self.counter("run_seq")? {
                    self.stats.insert("run_seq", &newest.to_le_bytes())?;
                }
            }
        }
        Ok(runs)
    }

    fn fold_one(&self, memo: &Memo, runs: u64, at_ms: u64) -> Result<()> {
        let tasks = memo.tasks.len() as i64;
        for (_, key, _) in &memo.tasks {
            if let Some(mut meta) = self.get(key)? {
                self.touch(key, &mut meta, at_ms)?;
            }
        }
        let hits = tasks.saturating_mul(runs as i64);
        self.add("hits", hits)?;
        self.add("hit.key", hits)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{RunRecord, RunTask};

    fn memo(key: Digest) -> Memo {
        let task = RunTask {
            task: "t".into(),
            key: Some(key),
            route: "key".into(),
            status: "cached".into(),
            miss_reason: None,
            since_ms: Some(3),
            deps: vec!["u\"v".into()],
            duration_ms: Some(0),
            error: None,
        };
        Memo {
            format: FORMAT,
            exe: None,
            pipeline: Digest::of(b"p"),
            generation: 0,
            blob_generation: 0,
            expires_ms: None,
            env: vec![("CC".into(), Some(Digest::of(b"gcc")))],
            seen: vec![Seen {
                path: "/x".into(),
                stat: Some([1, 2, 3, 4, 5, 6]),
            }],
            dag: "d\u{e9}\"q".into(),
            tasks: vec![("t".into(), key, Digest::of(b"o"))],
            record_tasks: serde_json::to_vec(&vec![task]).unwrap(),
        }
    }

    #[test]
    fn a_memo_s_record_is_the_run_record_serde_reads() {
        let m = memo(Digest::of(b"k"));
        let r: RunRecord = serde_json::from_slice(&m.record_json(7, 8, 9)).unwrap();
        assert_eq!((r.id, r.started_ms, r.finished_ms, r.ok), (7, 8, 9, true));
        assert_eq!(r.dag, m.dag);
        assert_eq!(serde_json::to_vec(&r.tasks).unwrap(), m.record_tasks);
    }

    #[test]
    fn a_memo_reads_back_whole_and_a_damaged_one_not_at_all() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("memo");
        let m = memo(Digest::of(b"k"));
        write(&dir, "n", &m).unwrap();
        assert_eq!(read(&dir, "n"), Some(m.clone()));
        assert_eq!(read(&dir, "other"), None);
        let mut bytes = std::fs::read(dir.join("n")).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        std::fs::write(dir.join("n"), &bytes).unwrap();
        assert_eq!(read(&dir, "n"), None, "a flipped byte fails the checksum");
        std::fs::write(dir.join("n"), b"").unwrap();
        assert_eq!(read(&dir, "n"), None, "an empty file (a torn write)");
    }

    #[test]
    fn the_first_change_after_a_memo_moves_the_generation_and_later_ones_do_not() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(&t.path().join("index"), &t.path().join("runs")).unwrap();
        let dir = t.path().join("memo");
        let mut m = memo(Digest::of(b"k"));
        ix.write_memo("n", &mut m).unwrap();
        assert_eq!(m.generation, 0);
        assert_eq!(generation(&dir), Some(0));
        ix.set_latest("d", "t", &Digest::of(b"k")).unwrap();
        assert_eq!(generation(&dir), Some(1), "a moved latest moves it");
        ix.set_latest("d", "t", &Digest::of(b"k2")).unwrap();
        assert_eq!(generation(&dir), Some(1), "no memo names 1: no new one");
        ix.write_memo("n", &mut m).unwrap();
        assert_eq!(m.generation, 1);
        ix.set_latest("d", "t", &Digest::of(b"k2")).unwrap();
        assert_eq!(
            generation(&dir),
            Some(1),
            "an unchanged latest is no change"
        );
        ix.remove(&Digest::of(b"absent")).unwrap();
        assert_eq!(generation(&dir), Some(1), "nothing removed");
        ix.set_policy(&crate::index::CachePolicy::default())
            .unwrap();
        assert_eq!(generation(&dir), Some(2), "a new policy moves it");
        drop(ix);
        let ix = crate::index::sled_tests::reopen(&t.path().join("index"), &t.path().join("runs"));
        ix.set_latest("d", "t", &Digest::of(b"k3")).unwrap();
        assert_eq!(generation(&dir), Some(3), "a new open owes one at once");
        std::fs::write(dir.join(GENERATION), b"junk").unwrap();
        assert_eq!(
            generation(&dir),
            None,
            "an unreadable generation holds no memo"
        );
        drop(ix);
        let ix = crate::index::sled_tests::reopen(&t.path().join("index"), &t.path().join("runs"));
        ix.set_latest("d", "t", &Digest::of(b"k4")).unwrap();
        assert!(
            !dir.join("n").exists(),
            "never back to a generation a memo names: they go"
        );
        assert_eq!(generation(&dir), Some(1));
    }

    #[test]
    fn no_change_lands_while_a_memo_is_made() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(&t.path().join("index"), &t.path().join("runs")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let w = ix.memo_writer();
            s.spawn(|| {
                ix.set_latest("d", "t", &Digest::of(b"k")).unwrap();
                tx.send(()).unwrap();
            });
            assert!(
                rx.recv_timeout(std::time::Duration::from_millis(200))
                    .is_err(),
                "the change waited for the memo"
            );
            drop(w);
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .expect("then it landed");
        });
        assert_eq!(ix.latest("d", "t").unwrap(), Some(Digest::of(b"k")));
    }

    #[test]
    fn a_store_keeps_the_newest_memos() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(&t.path().join("index"), &t.path().join("runs")).unwrap();
        let dir = t.path().join("memo");
        let names: Vec<String> = (0..KEPT + 3).map(|i| format!("{i:032x}")).collect();
        for (i, n) in names.iter().enumerate() {
            ix.write_memo(n, &mut memo(Digest::of(b"k"))).unwrap();
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(dir.join(n))
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
        let left: Vec<String> = names
            .iter()
            .filter(|n| dir.join(n).exists())
            .cloned()
            .collect();
        assert_eq!(left.len(), KEPT);
        assert_eq!(left[0], names[3], "the oldest went");
    }

    #[test]
    fn hits_fold_into_the_counters_and_the_uses_once() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(&t.path().join("index"), &t.path().join("runs")).unwrap();
        let dir = t.path().join("memo");
        let key = Digest::of(b"k");
        let meta = crate::index::EntryMeta {
            dag: "d".into(),
            task: "t".into(),
            output: Digest::of(b"o"),
            size: 1,
            files: 1,
            created_ms: 10,
            last_used_ms: 10,
            ttl_secs: None,
            exit_status: 0,
            duration_ms: 1,
        };
        ix.insert(&key, &meta).unwrap();
        ix.write_memo("n", &mut memo(key)).unwrap();
        note_hit(&dir, "n", 500).unwrap();
        note_hit(&dir, "n", 700).unwrap();
        note_hit(&dir, "gone", 900).unwrap();
        assert_eq!(ix.fold_memo_hits().unwrap(), 3);
        assert_eq!(
            ix.counter("hits").unwrap(),
            2,
            "two runs of one task; the lost memo's run has no tasks to count"
        );
        assert_eq!(ix.counter("hit.key").unwrap(), 2);
        assert_eq!(
            ix.counter(C_MEMO_RUNS).unwrap(),
            3,
            "runs, the lost memo's too"
        );
        let order: Vec<Digest> = ix.lru_order().unwrap().map(|k| k.unwrap()).collect();
        assert_eq!(order, vec![key]);
        assert_eq!(ix.get(&key).unwrap().unwrap().last_used_ms, 700);
        assert_eq!(ix.fold_memo_hits().unwrap(), 0, "folded once");
        assert_eq!(ix.counter("hits").unwrap(), 2);
    }
}
