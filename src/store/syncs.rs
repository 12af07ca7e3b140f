//! Sync logs: the durable record of each synced host directory's snapshots,
//! `<store>/syncs/<name>`. Part of the source of truth: gc keeps every
//! snapshot tree a log names.
//!
//! The file is JSON lines: a header `{"name", "root"}`, then one
//! `Snapshot` per line, oldest first. A new snapshot is appended (one
//! write and one `fdatasync`: a watch records a pass without rewriting the
//! whole history); anything else rewrites the file whole (temporary file,
//! `fdatasync`, rename, directory fsync). A last line without its newline
//! is a record torn by a crash during its append, never reported: readers
//! leave it out and the next append writes over it. Logs written as one
//! JSON object (`SyncLog`) by older versions are read as they are and
//! rewritten in lines at their next write.

use std::fs;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use super::error::{IoContext, Result, StoreError};
use super::Store;
use crate::hash::Digest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// 1, 2, … within its name (`/syncs/<name>@<seq>`).
    pub seq: u64,
    pub tree: Digest,
    pub created_ms: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncLog {
    pub name: String,
    /// The host directory, absolute.
    pub root: String,
    pub snapshots: Vec<Snapshot>,
}

impl SyncLog {
    pub fn latest(&self) -> Option<&Snapshot> {
        self.snapshots.last()
    }
}

/// A sync log that does not decode: (name, why).
pub type Damaged = (String, String);

/// The sync names held in one process (`Store::hold_sync_name`).
pub(crate) type SyncNames = std::sync::Arc<(
    std::sync::Mutex<std::collections::HashSet<String>>,
    std::sync::Condvar,
)>;

/// A sync name held (`Store::hold_sync_name`) until this is dropped.
#[derive(Debug)]
pub struct SyncName {
    names: SyncNames,
    name: String,
}

impl Drop for SyncName {
    fn drop(&mut self) {
        let mut held = self.names.0.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.name);
        self.names.1.notify_all();
    }
}

/// The first line of a sync log.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    root: String,
}

/// Where a sync log's whole records end: the next append goes there
/// (None: a log in the old one-object form, which is rewritten instead).
pub type LogEnd = Option<u64>;

/// Decode a sync log file (either form); `Err(reason)` if it does not.
fn decode(bytes: &[u8]) -> std::result::Result<(SyncLog, LogEnd), String> {
    decode_from(bytes, false)
}

/// The log of `bytes` with its latest snapshot alone: the header and the
/// last whole line, nothing between decoded (a 1,000-snapshot log took a
/// third of a `dagfs cat NAME@latest/PATH`). So a damaged line before the
/// last goes unseen here; `decode` (every sync, gc, fsck) finds it.
fn decode_latest(bytes: &[u8]) -> std::result::Result<SyncLog, String> {
    decode_from(bytes, true).map(|(log, _)| log)
}

fn decode_from(bytes: &[u8], last_only: bool) -> std::result::Result<(SyncLog, LogEnd), String> {
    if bytes.first() == Some(&b'{') {
        if let Ok(mut log) = serde_json::from_slice::<SyncLog>(bytes) {
            if last_only {
                let latest = log.snapshots.pop();
                log.snapshots = latest.into_iter().collect();
            }
            return Ok((log, None));
        }
    }
    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
        return Err("no header line".into());
    };
    let h: Header = serde_json::from_slice(&bytes[..nl]).map_err(|e| format!("header: {e}"))?;
    let mut log = SyncLog {
        name: h.name,
        root: h.root,
        snapshots: Vec::new(),
    };
    let mut end = nl + 1;
    if last_only {
        // From the start of the last whole line.
        let last_nl = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .expect("the header's newline");
        if let Some(i) = bytes[..last_nl].iter().rposition(|&b| b == b'\n') {
            end = end.max(i + 1);
        }
    }
    // NB: a last line without its newline is a torn append: left out.
    while let Some(n) = bytes[end..].iter().position(|&b| b == b'\n') {
        let line = &bytes[end..end + n];
        let snap = serde_json::from_slice(line)
            .map_err(|e| format!("record {}: {e}", log.snapshots.len() + 1))?;
        log.snapshots.push(snap);
        end += n + 1;
    }
    Ok((log, Some(end as u64)))
}

/// A sync log as the file holds it, in lines.
fn encode(log: &SyncLog) -> Vec<u8> {
    let header = Header {
        name: log.name.clone(),
        root: log.root.clone(),
    };
    let mut out = serde_json::to_vec(&header).expect("a header serializes");
    out.push(b'\n');
    for s in &log.snapshots {
        serde_json::to_writer(&mut out, s).expect("a snapshot serializes");
        out.push(b'\n');
    }
    out
}

impl Store {
    fn syncs_dir(&self) -> std::path::PathBuf {
        self.root().join("syncs")
    }

    pub fn sync_log(&self, name: &str) -> Result<Option<SyncLog>> {
        Ok(self.sync_log_end(name)?.map(|(log, _)| log))
    }

    /// `sync_log` with its latest snapshot alone (none if it has none):
    /// only the log's first and last lines are decoded.
    pub fn sync_log_latest(&self, name: &str) -> Result<Option<SyncLog>> {
        self.read_sync_log(name, |b| decode_latest(b).map(|log| (log, None)))
            .map(|r| r.map(|(log, _)| log))
    }

    /// `sync_log`, and where its records end (for `append_snapshot`).
    ///
    /// The log this process last read or appended to is kept with its
    /// file's identity (`LogFile`): it is decoded again only when the file
    /// changed, so a watch's pass does not decode the whole history at
    /// every change.
    pub fn sync_log_end(&self, name: &str) -> Result<Option<(SyncLog, LogEnd)>> {
        let p = self.syncs_dir().join(name);
        let f = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path: p, source: e }),
        };
        // NB: taken before the bytes are read: a change after it changes
        // the identity, and the next read decodes again.
        let id = LogFile::of(&f.metadata().at(&p)?);
        if let Some((log, end)) = self.sync_logs.get(name, &id) {
            return Ok(Some((log, end)));
        }
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut b).at(&p)?;
        let (log, end) = named(name, &p, decode(&b))?;
        self.sync_logs.put(name, id, &log, end);
        Ok(Some((log, end)))
    }

    fn read_sync_log(
        &self,
        name: &str,
        decode: impl Fn(&[u8]) -> std::result::Result<(SyncLog, LogEnd), String>,
    ) -> Result<Option<(SyncLog, LogEnd)>> {
        let p = self.syncs_dir().join(name);
        match fs::read(&p) {
            Ok(b) => named(name, &p, decode(&b)).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    /// Write a sync log durably and whole (its snapshot trees must be
    /// committed).
    pub fn put_sync_log(&self, log: &SyncLog) -> Result<()> {
        let dir = self.syncs_dir();
        fs::create_dir_all(&dir).at(&dir)?;
        let tmp = self
            .tmp_root()
            .join(format!("sync-{}-{}", log.name, std::process::id()));
        self.replace_file(&tmp, &dir.join(&log.name), &encode(log))
    }

    /// Record `log`'s latest snapshot durably: appended where its file's
    /// records end (`end`, from `sync_log_end` of the log before that
    /// snapshot was pushed), over a torn record if a crash left one; the
    /// whole log rewritten if it cannot be (the old form, a file that
    /// changed size under us).
    pub fn append_snapshot(&self, log: &SyncLog, end: LogEnd) -> Result<()> {
        let p = self.syncs_dir().join(&log.name);
        let (Some(end), Some(snap)) = (end, log.latest()) else {
            return self.put_sync_log(log);
        };
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .at(&p)?;
        let len = f.metadata().at(&p)?.len();
        if len < end {
            drop(f);
            return self.put_sync_log(log);
        }
        if len > end {
            // Only a torn record (no newline) is written over: a whole one
            // past `end` is another writer's (see `SyncName`).
            let mut tail = vec![0u8; (len - end) as usize];
            f.read_exact_at(&mut tail, end).at(&p)?;
            if tail.contains(&b'\n') {
                return Err(StoreError::Corrupt {
                    digest: Digest::default(),
                    path: p,
                    reason: "sync log: another sync of this name recorded a snapshot meanwhile"
                        .into(),
                });
            }
            f.set_len(end).at(&p)?;
        }
        let mut line = serde_json::to_vec(snap).expect("a snapshot serializes");
        line.push(b'\n');
        let wrote = f.write_all_at(&line, end).and_then(|()| f.sync_data());
        if wrote.is_err() {
            // NB: a whole line left behind would be a snapshot nobody was told of.
            let _ = f.set_len(end);
        }
        wrote.at(&p)?;
        if let Ok(m) = f.metadata() {
            let end = end + line.len() as u64;
            self.sync_logs
                .put(&log.name, LogFile::of(&m), log, Some(end));
        }
        Ok(())
    }

    /// Hold sync name `name` in this process: a sync reads its log, walks,
    /// and appends its snapshot while holding it, so two syncs of one name
    /// in one process (a daemon's watch and a `--rescan`) take turns, never
    /// both appending to what each read. Other processes are kept out by
    /// the store lock.
    pub fn hold_sync_name(&self, name: &str) -> SyncName {
        let names = self.sync_names.clone();
        let mut held = names.0.lock().unwrap_or_else(|p| p.into_inner());
        while held.contains(name) {
            held = names.1.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.insert(name.to_string());
        drop(held);
        SyncName {
            names,
            name: name.to_string(),
        }
    }

    /// Every sync log that decodes. A damaged one (`sync_logs_checked`)
    /// is left out: it stops nothing about the other syncs.
    pub fn sync_logs(&self) -> Result<Vec<SyncLog>> {
        Ok(self.sync_logs_checked()?.0)
    }

    /// Every sync log that decodes, and the damaged ones: (name, why).
    pub fn sync_logs_checked(&self) -> Result<(Vec<SyncLog>, Vec<Damaged>)> {
        let dir = self.syncs_dir();
        let (mut out, mut damaged) = (Vec::new(), Vec::new());
        for name in super::dir_names(&dir)? {
            let Some(n) = name.to_str() else {
                damaged.push((
                    name.to_string_lossy().into_owned(),
                    "name is not UTF-8".into(),
                ));
                continue;
            };
            match self.sync_log(n) {
                Ok(Some(log)) => out.push(log),
                Ok(None) => {}
                Err(StoreError::Corrupt { reason, .. }) => damaged.push((n.to_string(), reason)),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        damaged.sort();
        Ok((out, damaged))
    }

    /// Move the sync log `name` into quarantine (`quarantine/syncs/`): the
    /// next `dagfs sync` under that name starts a fresh history.
    pub fn quarantine_sync_log(&self, name: &str, reason: &str) -> Result<bool> {
        self.quarantine_path(
            &self.syncs_dir().join(name),
            super::quarantine::Kind::Sync,
            name,
            reason,
        )
    }
}

/// A decoded log, checked to be filed under its own name.
fn named(
    name: &str,
    p: &std::path::Path,
    decoded: std::result::Result<(SyncLog, LogEnd), String>,
) -> Result<(SyncLog, LogEnd)> {
    let corrupt = |reason| StoreError::Corrupt {
        digest: Digest::default(),
        path: p.to_path_buf(),
        reason,
    };
    match decoded {
        Ok((log, end)) if log.name == name => Ok((log, end)),
        Ok((log, _)) => Err(corrupt(format!(
            "sync log: names {:?}, filed as {name:?}",
            log.name
        ))),
        Err(e) => Err(corrupt(format!("sync log: {e}"))),
    }
}

/// Which file a log was, and as what: any write or replacement since
/// changes one of these (size and times to the nanosecond, inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LogFile([i64; 7]);

impl LogFile {
    fn of(m: &fs::Metadata) -> LogFile {
        use std::os::unix::fs::MetadataExt;
        LogFile([
            m.dev() as i64,
            m.ino() as i64,
            m.size() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ])
    }
}

/// See `Store::sync_log_end`. NB: a hand edit of the same size within the
/// same clock tick as this process's own last append goes unseen by it
/// until the file changes again (a rename, any append, another size).
#[derive(Debug, Default)]
pub(crate) struct LogCache(
    std::sync::Mutex<std::collections::HashMap<String, (LogFile, SyncLog, LogEnd)>>,
);

impl LogCache {
    fn get(&self, name: &str, id: &LogFile) -> Option<(SyncLog, LogEnd)> {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match held.get(name) {
            Some((was, log, end)) if was == id => Some((log.clone(), *end)),
            _ => None,
        }
    }

    fn put(&self, name: &str, id: LogFile, log: &SyncLog, end: LogEnd) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(name.to_string(), (id, log.clone(), end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(seq: u64) -> Snapshot {
        Snapshot {
            seq,
            tree: Digest::of(&seq.to_le_bytes()),
            created_ms: 1000 + seq,
            files: seq,
            bytes: 10 * seq,
        }
    }

    fn log_of(n: u64) -> SyncLog {
        SyncLog {
            name: "s".into(),
            root: "/src".into(),
            snapshots: (1..=n).map(snap).collect(),
        }
    }

    /// A log this process read or appended to is answered without
    /// decoding it again while its file is unchanged, and always as a
    /// fresh decode of the file would answer: after an append, and after
    /// the file was written by another hand.
    #[test]
    fn a_kept_log_answers_as_its_file_does() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path(), &mut |_| {}).unwrap();
        let path = t.path().join("syncs/s");
        let fresh = || {
            let (log, end) = decode(&fs::read(&path).unwrap()).unwrap();
            (log, end)
        };
        store.put_sync_log(&log_of(3)).unwrap();
        for n in 4..8 {
            let (mut log, end) = store.sync_log_end("s").unwrap().unwrap();
            assert_eq!((log.clone(), end), fresh(), "before snapshot {n}");
            assert_eq!(
                store
                    .sync_logs
                    .get("s", &LogFile::of(&fs::metadata(&path).unwrap())),
                Some(fresh()),
                "kept, before snapshot {n}"
            );
            log.snapshots.push(snap(n));
            store.append_snapshot(&log, end).unwrap();
        }
        assert_eq!(store.sync_log_end("s").unwrap().unwrap(), fresh());
        assert_eq!(fresh().0, log_of(7));
        // Rewritten by another hand (a longer history): read again.
        fs::write(&path, encode(&log_of(9))).unwrap();
        assert_eq!(store.sync_log_end("s").unwrap().unwrap().0, log_of(9));
        fs::remove_file(&path).unwrap();
        assert_eq!(store.sync_log_end("s").unwrap(), None);
    }

    /// The latest snapshot alone reads as the whole log's latest: in lines
    /// (a torn last line left out), in the one-object form, and with none.
    #[test]
    fn the_latest_alone_is_the_whole_log_s_latest() {
        let lined = encode(&log_of(3));
        let mut torn = lined.clone();
        torn.extend_from_slice(br#"{"seq":4,"tr"#);
        let object = serde_json::to_vec_pretty(&log_of(2)).unwrap();
        for (bytes, seq) in [
            (lined, Some(3)),
            (torn, Some(3)),
            (object, Some(2)),
            (encode(&log_of(0)), None),
        ] {
            let whole = decode(&bytes).unwrap().0;
            let latest = decode_latest(&bytes).unwrap();
            assert_eq!(latest.latest().map(|s| s.seq), seq);
            assert_eq!(latest.latest(), whole.latest());
            assert_eq!((latest.name, latest.root), (whole.name, whole.root));
        }
        assert!(decode_latest(b"{\"name\":\"s\",\"root\":\"/\"}\nnot json\n").is_err());
    }

    /// A snapshot is appended as one line; a log in the older one-object
    /// form reads as it is and is rewritten in lines at its next write.
    #[test]
    fn snapshots_are_appended_and_an_old_log_is_rewritten_in_lines() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path(), &mut |_| {}).unwrap();
        let path = t.path().join("syncs/s");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, serde_json::to_vec_pretty(&log_of(2)).unwrap()).unwrap();
        let (mut log, end) = store.sync_log_end("s").unwrap().unwrap();
        assert_eq!((&log, end), (&log_of(2), None));
        log.snapshots.push(snap(3));
        store.append_snapshot(&log, end).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes, encode(&log_of(3)));
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 4);

        let (mut log, end) = store.sync_log_end("s").unwrap().unwrap();
        assert_eq!(end, Some(bytes.len() as u64));
        log.snapshots.push(snap(4));
        store.append_snapshot(&log, end).unwrap();
        assert_eq!(fs::read(&path).unwrap(), encode(&log_of(4)));
        assert_eq!(store.sync_log("s").unwrap().unwrap(), log_of(4));
    }

    /// A crash during an append leaves a last line without its newline:
    /// readers leave that record out (it was never reported), and the
    /// next append writes over it.
    #[test]
    fn a_torn_last_record_is_left_out_and_written_over() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path(), &mut |_| {}).unwrap();
        store.put_sync_log(&log_of(2)).unwrap();
        let path = t.path().join("syncs/s");
        let whole = fs::read(&path).unwrap();
        let mut torn = whole.clone();
        let line = serde_json::to_vec(&snap(3)).unwrap();
        torn.extend_from_slice(&line[..line.len() / 2]);
        fs::write(&path, &torn).unwrap();
        let (mut log, end) = store.sync_log_end("s").unwrap().unwrap();
        assert_eq!((&log, end), (&log_of(2), Some(whole.len() as u64)));
        log.snapshots.push(snap(3));
        store.append_snapshot(&log, end).unwrap();
        assert_eq!(fs::read(&path).unwrap(), encode(&log_of(3)));
    }

    /// Damage that is not a torn last record is a damaged log: a whole
    /// line that does not decode, or a header without its newline.
    #[test]
    fn a_bad_record_or_a_torn_header_is_a_damaged_log() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path(), &mut |_| {}).unwrap();
        let path = t.path().join("syncs/s");
        type Damage = fn(&mut Vec<u8>);
        let cases: [(&str, Damage); 3] = [
            ("record 1", |b| {
                let at = b.iter().position(|&c| c == b'\n').unwrap() + 3;
                b[at] = b'x';
            }),
            ("header", |b| b.truncate(10)),
            ("filed as", |b| b[9] = b't'),
        ];
        for (why, damage) in cases {
            store.put_sync_log(&log_of(2)).unwrap();
            let mut bytes = fs::read(&path).unwrap();
            damage(&mut bytes);
            fs::write(&path, &bytes).unwrap();
            match store.sync_log("s") {
                Err(StoreError::Corrupt { reason, .. }) => {
                    assert!(reason.contains(why), "{why}: {reason}")
                }
                r => panic!("{why}: {r:?}"),
            }
        }
    }

    /// An append never cuts off a whole record another writer appended
    /// after this sync read the log; a sync name is held by one sync of
    /// the process at a time, others wait, other names do not.
    #[test]
    fn syncs_of_one_name_take_turns_and_never_cut_each_others_records() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path(), &mut |_| {}).unwrap();
        store.put_sync_log(&log_of(1)).unwrap();
        let (mut a, end) = store.sync_log_end("s").unwrap().unwrap();
        let (mut b, _) = store.sync_log_end("s").unwrap().unwrap();
        b.snapshots.push(snap(2));
        store.append_snapshot(&b, end).unwrap();
        a.snapshots.push(snap(3));
        let err = store.append_snapshot(&a, end).unwrap_err().to_string();
        assert!(err.contains("another sync of this name"), "{err}");
        assert_eq!(store.sync_log("s").unwrap().unwrap(), log_of(2));

        let held = store.hold_sync_name("s");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                drop(store.hold_sync_name("t"));
                tx.send("t").unwrap();
                let _s = store.hold_sync_name("s");
                tx.send("s").unwrap();
            });
            assert_eq!(rx.recv().unwrap(), "t");
            let wait = std::time::Duration::from_millis(200);
            assert!(rx.recv_timeout(wait).is_err(), "s is held");
            drop(held);
            assert_eq!(rx.recv().unwrap(), "s");
        });
    }
}
