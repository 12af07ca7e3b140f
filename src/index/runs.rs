//! Run records: one JSON file per run, `<store>/runs/<id>.json` (the id in
//! decimal, zero-padded to 20 digits so the names sort as the ids do).
//!
//! Not in sled: a record names every task of its run (about 200 bytes a
//! task), so a 1,000-task pipeline's record is 200 KB. In sled such values
//! made its pages blob files of megabytes, each rewritten as the `runs`
//! tree grew and read back at every open (sled's recovery reads the blobs
//! its log names): a fully cached 1,000-task run spent more time on the
//! history of earlier runs than on its own lookups, and the history grew
//! without bound. Here a run writes one file, and nothing reads it unless
//! asked (`/runs`, the web view, `graph --run`).
//!
//! History, not truth: a record is written to a temporary name and
//! renamed, without fsync. A crash may lose the newest record or leave it
//! empty; such a file reads as no record (and is said to be damaged in the
//! log). The newest [`KEEP`] runs are kept; each new one removes the one
//! [`KEEP`] before it. The ids come from the index's `run_seq` counter;
//! an id whose file exists already (the counter was lost with a
//! quarantined index) moves past the newest file.
//!
//! Older indexes kept the records in the sled tree `runs`: those are still
//! read (the file wins where both exist) and never written.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{corrupt, Result, RunRecord};

/// How many runs are kept.
pub const KEEP: u64 = 500;

pub(super) struct RunLog {
    dir: PathBuf,
    legacy: sled::Tree,
}

fn io_err(path: &Path, e: std::io::Error) -> super::IndexError {
    super::IndexError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// The id a run file's name holds, if it is one.
fn id_of(name: &std::ffi::OsStr) -> Option<u64> {
    let s = name.to_str()?.strip_suffix(".json")?;
    if s.len() != 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Run `id`'s file in `dir`.
fn run_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.json"))
}

/// Remove the run `KEEP` before `id` (each new run removes one).
fn drop_expired(dir: &Path, id: u64) -> Result<()> {
    if id <= KEEP {
        return Ok(());
    }
    let old = run_path(dir, id - KEEP);
    match std::fs::remove_file(&old) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&old, e)),
    }
}

/// The ids of the run files in `dir`, unordered.
fn file_ids(dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(list) => {
            for e in list {
                let e = e.map_err(|e| io_err(dir, e))?;
                ids.extend(id_of(&e.file_name()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dir, e)),
    }
    Ok(ids)
}

/// Write the record of a run made without the index (one a memo answered,
/// `memo.rs`) into `dir`: `json(id)` is its `RunRecord` JSON. Its id is the
/// one after the newest file's, taken by a hard link, so no two runs share
/// one, and the next run of the index moves past it (`free_id`). Returns
/// the id.
pub fn put_unindexed(dir: &Path, json: &dyn Fn(u64) -> Vec<u8>) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut id = file_ids(dir)?.into_iter().max().unwrap_or(0) + 1;
    let tmp = dir.join(format!(".unindexed-{}.json.tmp", std::process::id()));
    loop {
        std::fs::write(&tmp, json(id)).map_err(|e| io_err(&tmp, e))?;
        let path = run_path(dir, id);
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => id += 1,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err(&path, e));
            }
        }
    }
    let _ = std::fs::remove_file(&tmp);
    drop_expired(dir, id)?;
    Ok(id)
}

impl RunLog {
    pub(super) fn new(dir: PathBuf, legacy: sled::Tree) -> RunLog {
        RunLog { dir, legacy }
    }

    fn path(&self, id: u64) -> PathBuf {
        run_path(&self.dir, id)
    }

    /// `id`, or past the newest file if `id`'s exists already.
    pub(super) fn free_id(&self, id: u64) -> Result<u64> {
        if !self.path(id).exists() {
            return Ok(id);
        }
        Ok(self.ids()?.last().map_or(id, |&n| n.max(id) + 1))
    }

    pub(super) fn put(&self, run: &RunRecord) -> Result<()> {
        self.put_json(run.id, &serde_json::to_vec(run).expect("run serializes"))
    }

    /// Write run `id`'s record, given as its `RunRecord` JSON.
    pub(super) fn put_json(&self, id: u64, json: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let path = self.path(id);
        let tmp = self.dir.join(format!(".{id:020}.json.tmp"));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(json))
            .map_err(|e| io_err(&tmp, e))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e)));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        drop_expired(&self.dir, id)
    }

    pub(super) fn get(&self, id: u64) -> Result<Option<RunRecord>> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => Ok(Some(r)),
                Err(e) => {
                    log::warn!(
                        "run record {} is damaged ({e}); it reads as absent",
                        path.display()
                    );
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.legacy_get(id),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn legacy_get(&self, id: u64) -> Result<Option<RunRecord>> {
        match self.legacy.get(id.to_be_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt("runs", e)),
        }
    }

    /// Every run id, ascending.
    pub(super) fn ids(&self) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        for k in self.legacy.iter().keys() {
            let k = k?;
            let b: [u8; 8] = k
                .as_ref()
                .try_into()
                .map_err(|_| corrupt("runs", "key is not a u64"))?;
            ids.push(u64::from_be_bytes(b));
        }
        ids.extend(file_ids(&self.dir)?);
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The newest run that reads.
    pub(super) fn last(&self) -> Result<Option<RunRecord>> {
        for id in self.ids()?.into_iter().rev() {
            if let Some(r) = self.get(id)? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> RunRecord {
        RunRecord {
            id,
            dag: "d".into(),
            started_ms: id,
            finished_ms: id + 1,
            ok: true,
            tasks: Vec::new(),
        }
    }

    #[test]
    fn runs_are_files_the_newest_kept_and_a_torn_one_reads_as_absent() {
        let t = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let legacy = db.open_tree("runs").unwrap();
        legacy
            .insert(1u64.to_be_bytes(), serde_json::to_vec(&record(1)).unwrap())
            .unwrap();
        let log = RunLog::new(t.path().join("runs"), legacy);
        assert_eq!(log.ids().unwrap(), vec![1], "an older index's record");
        assert_eq!(log.get(1).unwrap(), Some(record(1)));
        assert_eq!(log.last().unwrap(), Some(record(1)));
        for id in 2..=KEEP + 2 {
            log.put(&record(id)).unwrap();
        }
        let ids = log.ids().unwrap();
        assert_eq!(ids.len() as u64, KEEP + 1, "KEEP files and the legacy one");
        assert_eq!(ids[1], 3, "run 2 went when run KEEP + 2 came");
        assert_eq!(log.get(2).unwrap(), None);
        assert_eq!(log.last().unwrap(), Some(record(KEEP + 2)));
        // A record a crash left empty reads as absent; the one before it answers.
        std::fs::write(log.path(KEEP + 2), b"").unwrap();
        assert_eq!(log.get(KEEP + 2).unwrap(), None);
        assert_eq!(log.last().unwrap(), Some(record(KEEP + 1)));
        // A counter that went back (index rebuilt) never overwrites a run.
        assert_eq!(log.free_id(5).unwrap(), KEEP + 3);
        assert_eq!(log.free_id(KEEP + 9).unwrap(), KEEP + 9);
        // Files that are not run records are not runs.
        std::fs::write(t.path().join("runs/notes.txt"), b"x").unwrap();
        std::fs::write(t.path().join("runs/.00000000000000000099.json.tmp"), b"x").unwrap();
        assert_eq!(log.ids().unwrap().len() as u64, KEEP + 1);
    }
}
