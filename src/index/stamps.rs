//! Sync stamps (meaning: `sync/stamps.rs`): one append-only file a sync
//! name, `<store>/stamps/<name>`.
//!
//! Not in sled: a key a path made every open of the index load a
//! page-table record per few stamps, whether or not anything read them
//! (only the mount's `/syncs` does). A store that 1,000 syncs of 64 new
//! files each had grown held 65,000 stamps, and a `dagfs cat` on it took
//! 9.1 ms against 6.0 ms for the same store without them (issue 17's
//! pack row). Here nothing is read until a name's stamps are asked for.
//!
//! File: `HEADER`, then batches, each `len u32 LE ‖ body ‖ check`, `check`
//! the first 8 bytes of the body's BLAKE3 hash, the body records of
//! `path len u32 LE ‖ path ‖ digest (32) ‖ since ms u64 LE`. Later records
//! of a path replace earlier ones. A batch that does not check (an append
//! torn by a crash) ends the file: it and anything after it are ignored,
//! and cut off before the next append. An append is synced
//! (`sync_data`) before it returns, or by the caller's `syncfs` after it
//! (`Index::set_stamps_unsynced`): a snapshot's records are durable
//! before its sync log names it. A new history, and a file holding over
//! twice what its live records need, is written whole to a temporary
//! name, synced and renamed over the file (the directory synced too).
//!
//! Older indexes kept stamps in the sled tree `stamps`. They are read,
//! never written, for a name whose file does not exist yet; the first
//! write of such a name copies them into the new file first and marks the
//! name moved in the tree (`moved_key`), so a lost file never makes the
//! old records answer again. The old records are not removed: removing
//! tens of thousands of keys leaves sled slower to open than keeping them.
//!
//! Only the process that holds the index writes these files, so it loads
//! a name's file once. A reader of a copied index (a read-only store:
//! `shared`) checks at each lookup that the file is the one it loaded (the
//! same inode, no shorter, the same 8 bytes before where its batches
//! checked) and reads what lies past that, so it sees appends too; any
//! other file is loaded anew.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{corrupt, digest_of, stamp_key, Result};
use crate::hash::Digest;

const HEADER: &[u8; 16] = b"dagfs-stamps v1\n";
/// Bytes of a record besides its path.
const RECORD: usize = 4 + 32 + 8;
/// A rewrite is due when the file is larger than twice its live records
/// plus this.
const SLACK: u64 = 64 << 10;

type FileId = (u64, u64, u64, i64, i64);

fn file_id(m: &std::fs::Metadata) -> FileId {
    (m.dev(), m.ino(), m.len(), m.ctime(), m.ctime_nsec())
}

/// The stamps of one name as loaded.
#[derive(Default)]
struct Loaded {
    /// The file was read (and, unless `shared`, is written only here).
    loaded: bool,
    /// (device, inode, size, ctime s, ctime ns) of the file loaded; None:
    /// no file.
    id: Option<FileId>,
    /// Bytes up to the end of the last batch that checks.
    valid: u64,
    /// path → (digest, since ms).
    map: HashMap<Vec<u8>, (Digest, u64)>,
    /// The bytes `map` needs in a file written whole (`live_bytes`).
    live: u64,
    /// The 8 bytes before `valid` in the file (a check, or the header's end).
    tail: [u8; 8],
}

impl Loaded {
    fn live_bytes(map: &HashMap<Vec<u8>, (Digest, u64)>) -> u64 {
        HEADER.len() as u64 + 4 + 8 + map.keys().map(|p| (RECORD + p.len()) as u64).sum::<u64>()
    }

    /// Whether `f` holds `tail` before `valid`.
    fn tail_is(&self, f: &mut std::fs::File) -> bool {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, self.valid - 8).is_ok() && b == self.tail
    }

    /// Note a record written to the file.
    fn note(&mut self, path: &[u8], d: Digest, ms: u64) {
        if self.map.insert(path.to_vec(), (d, ms)).is_none() {
            self.live += (RECORD + path.len()) as u64;
        }
    }
}

pub(super) struct StampFiles {
    dir: PathBuf,
    legacy: sled::Tree,
    /// Another process writes the files (see the module's doc).
    shared: bool,
    /// One lock a name: a lookup waits only for a write of its own name.
    names: Mutex<HashMap<String, Arc<Mutex<Loaded>>>>,
}

fn io_err(path: &Path, e: std::io::Error) -> super::IndexError {
    super::IndexError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// The legacy tree's mark that `sync`'s stamps live in a file: a path no
/// stamp has (every real path is free of NUL; `MARK` is one NUL).
fn moved_key(sync: &str) -> Vec<u8> {
    super::stamp_key(sync, b"\0\0moved")
}

fn encode_batch(records: &[(&[u8], Digest, u64)]) -> Vec<u8> {
    let body_len: usize = records.iter().map(|(p, _, _)| RECORD + p.len()).sum();
    let mut out = Vec::with_capacity(4 + body_len + 8);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    for (p, d, ms) in records {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(d.as_bytes());
        out.extend_from_slice(&ms.to_le_bytes());
    }
    let check = blake3::hash(&out[4..]);
    out.extend_from_slice(&check.as_bytes()[..8]);
    out
}

/// Apply the batches of `bytes` (which follow the header, at file offset
/// `base`) to `map`; returns the offset after the last batch that checks.
fn apply_batches(bytes: &[u8], base: u64, map: &mut HashMap<Vec<u8>, (Digest, u64)>) -> u64 {
    let mut at = 0usize;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(body) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        let Some(check) = bytes.get(at + 4 + len..at + 4 + len + 8) else {
            break;
        };
        if blake3::hash(body).as_bytes()[..8] != *check {
            break;
        }
        let Some(records) = decode_body(body) else {
            break;
        };
        for (p, d, ms) in records {
            map.insert(p, (d, ms));
        }
        at += 4 + len + 8;
    }
    base + at as u64
}

fn decode_body(mut body: &[u8]) -> Option<Vec<(Vec<u8>, Digest, u64)>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let n = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
        let path = body.get(4..4 + n)?.to_vec();
        let d = Digest::from_slice(body.get(4 + n..4 + n + 32)?)?;
        let ms = u64::from_le_bytes(body.get(4 + n + 32..RECORD + n)?.try_into().ok()?);
        out.push((path, d, ms));
        body = &body[RECORD + n..];
    }
    Some(out)
}

impl StampFiles {
    /// `shared`: another process writes the files (a copied index, read
    /// only). Else this process holds the store's lock, so no rewrite is
    /// in progress: the temporary files of one a crash cut short are
    /// removed.
    pub(super) fn new(dir: PathBuf, legacy: sled::Tree, shared: bool) -> StampFiles {
        if !shared {
            sweep_temporaries(&dir);
        }
        StampFiles {
            dir,
            legacy,
            shared,
            names: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, sync: &str) -> PathBuf {
        self.dir.join(sync)
    }

    fn name(&self, sync: &str) -> Arc<Mutex<Loaded>> {
        let mut names = self.names.lock().expect("stamps lock");
        match names.get(sync) {
            Some(l) => l.clone(),
            None => names.entry(sync.to_string()).or_default().clone(),
        }
    }

    /// Bring `l` up to date with the file of `sync` (loading what was
    /// appended since, or all of it if it was replaced).
    fn refresh(&self, sync: &str, l: &mut Loaded) -> Result<()> {
        if l.loaded && !self.shared {
            return Ok(());
        }
        let path = self.path(sync);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                *l = Loaded {
                    loaded: true,
                    ..Loaded::default()
                };
                return Ok(());
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let m = f.metadata().map_err(|e| io_err(&path, e))?;
        let id = file_id(&m);
        // What was loaded still stands if the file is the same one, no
        // shorter than what checked, with the same 8 bytes before `valid`
        // (a file replaced twice may reuse the first one's inode number,
        // and a torn tail may be cut and replaced by a batch of its size:
        // so even an unchanged identity is checked). Then only what lies
        // past `valid` is read, if anything does.
        let same = matches!(l.id, Some(old) if old.0 == id.0 && old.1 == id.1)
            && id.2 >= l.valid
            && l.valid >= 8
            && l.tail_is(&mut f);
        if same && (l.id == Some(id) && id.2 == l.valid) {
            return Ok(());
        }
        if !same {
            *l = Loaded::default();
            let mut head = [0u8; HEADER.len()];
            let whole = f.read_exact(&mut head).is_ok() && head == *HEADER;
            if !whole {
                // Not a stamps file of ours (or torn before its header was
                // whole): no records. The next write replaces it.
                l.id = Some(id);
                l.loaded = true;
                return Ok(());
            }
            l.valid = HEADER.len() as u64;
            l.tail.copy_from_slice(&HEADER[HEADER.len() - 8..]);
        }
        let mut rest = Vec::new();
        f.seek(SeekFrom::Start(l.valid))
            .and_then(|_| f.read_to_end(&mut rest))
            .map_err(|e| io_err(&path, e))?;
        let from = l.valid;
        l.valid = apply_batches(&rest, from, &mut l.map);
        if l.valid > from {
            let end = (l.valid - from) as usize;
            l.tail.copy_from_slice(&rest[end - 8..end]);
        }
        l.live = Loaded::live_bytes(&l.map);
        l.id = Some(id);
        l.loaded = true;
        Ok(())
    }

    /// When `path` of `sync` last took content `digest` (None: no record).
    pub(super) fn get(&self, sync: &str, path: &[u8]) -> Result<Option<(Digest, u64)>> {
        let name = self.name(sync);
        let mut l = name.lock().expect("stamps lock");
        self.refresh(sync, &mut l)?;
        if l.id.is_some() {
            return Ok(l.map.get(path).copied());
        }
        // NB: under the name's lock, so a first write (which copies these
        // records, then marks them moved) is wholly before or after.
        if self.legacy.contains_key(moved_key(sync))? {
            return Ok(None);
        }
        legacy_get(&self.legacy, sync, path)
    }

    /// Record each `(path, digest)` of `sync` as taken at `since_ms`:
    /// synced before it returns if `synced`, else the caller's next
    /// `syncfs` must make them durable before anything relies on them.
    pub(super) fn set<'p>(
        &self,
        sync: &str,
        since_ms: u64,
        stamps: impl IntoIterator<Item = (&'p [u8], Digest)>,
        synced: bool,
    ) -> Result<()> {
        let records: Vec<(&[u8], Digest, u64)> =
            stamps.into_iter().map(|(p, d)| (p, d, since_ms)).collect();
        let name = self.name(sync);
        let mut l = name.lock().expect("stamps lock");
        let l = &mut *l;
        self.refresh(sync, l)?;
        if l.id.is_none() || l.valid == 0 {
            return self.start(sync, &records, l);
        }
        let path = self.path(sync);
        let batch = encode_batch(&records);
        let mut f = match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Removed under us: start it again (with no older records:
                // the name is marked moved), so no base record either.
                *l = Loaded::default();
                return self.start(sync, &records, l);
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        // Cut off a torn batch, then append.
        let torn = l.id.map(|id| id.2) != Some(l.valid);
        (if torn { f.set_len(l.valid) } else { Ok(()) })
            .and_then(|()| f.seek(SeekFrom::Start(l.valid)))
            .and_then(|_| f.write_all(&batch))
            .and_then(|()| if synced { f.sync_data() } else { Ok(()) })
            .map_err(|e| io_err(&path, e))?;
        for (p, d, ms) in &records {
            l.note(p, *d, *ms);
        }
        l.valid += batch.len() as u64;
        l.tail.copy_from_slice(&batch[batch.len() - 8..]);
        let m = f.metadata().map_err(|e| io_err(&path, e))?;
        l.id = Some(file_id(&m));
        if l.valid > 2 * l.live + SLACK {
            let map = l.map.clone();
            let all: Vec<(&[u8], Digest, u64)> = map
                .iter()
                .map(|(p, (d, ms))| (p.as_slice(), *d, *ms))
                .collect();
            // The records are appended already (durable, or by the
            // caller's syncfs): a rewrite that fails (a full disk) leaves
            // the file as it was, to be tried again at the next append,
            // and fails no sync.
            let _ = self.replace(sync, &all, l);
        }
        Ok(())
    }

    /// Write `sync`'s first file (or a file that was not one of ours, or
    /// was removed): `records`, after those an older index holds (see the
    /// module's doc) when there was no file.
    fn start(&self, sync: &str, records: &[(&[u8], Digest, u64)], l: &mut Loaded) -> Result<()> {
        let mut old = if l.id.is_none() {
            self.legacy_records(sync)?
        } else {
            Vec::new()
        };
        for (p, d, ms) in records {
            old.push((p.to_vec(), *d, *ms));
        }
        let all: Vec<(&[u8], Digest, u64)> = old
            .iter()
            .map(|(p, d, ms)| (p.as_slice(), *d, *ms))
            .collect();
        self.replace(sync, &all, l)?;
        self.mark_moved(sync)
    }

    /// Forget every stamp of `sync` (its history starts again).
    pub(super) fn clear(&self, sync: &str) -> Result<()> {
        let name = self.name(sync);
        let mut l = name.lock().expect("stamps lock");
        self.replace(sync, &[], &mut l)?;
        self.mark_moved(sync)
    }

    /// Write `sync`'s file anew with `records` alone, atomically.
    fn replace(&self, sync: &str, records: &[(&[u8], Digest, u64)], l: &mut Loaded) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let path = self.path(sync);
        let mut bytes = HEADER.to_vec();
        if !records.is_empty() {
            bytes.extend_from_slice(&encode_batch(records));
        }
        // NB: 0666 as the store's other files (less the umask), so another
        // user may read a store it cannot write.
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(&self.dir)
            .map_err(|e| io_err(&self.dir, e))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| io_err(tmp.path(), e))?;
        let f = tmp.persist(&path).map_err(|e| io_err(&path, e.error))?;
        // The file is replaced: what was loaded no longer describes it (if
        // the next step fails, the next need loads it again).
        *l = Loaded::default();
        let m = f.metadata().map_err(|e| io_err(&path, e))?;
        *l = Loaded {
            loaded: true,
            id: Some(file_id(&m)),
            valid: bytes.len() as u64,
            map: HashMap::with_capacity(records.len()),
            live: Loaded::live_bytes(&HashMap::new()),
            tail: bytes[bytes.len() - 8..].try_into().expect("8 bytes"),
        };
        for (p, d, ms) in records {
            l.note(p, *d, *ms);
        }
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&self.dir, e))
    }

    /// The records of `sync` an older index keeps in sled (none once moved).
    fn legacy_records(&self, sync: &str) -> Result<Vec<(Vec<u8>, Digest, u64)>> {
        if self.legacy.contains_key(moved_key(sync))? {
            return Ok(Vec::new());
        }
        let prefix = stamp_key(sync, b"");
        let mut out = Vec::new();
        for kv in self.legacy.scan_prefix(&prefix) {
            let (k, v) = kv?;
            match legacy_value(&v) {
                Ok((d, ms)) => out.push((k[prefix.len()..].to_vec(), d, ms)),
                // One damaged record: none is copied, not even the base
                // record (dropping one record while keeping the base would
                // show its path as older than it is).
                Err(_) => return Ok(Vec::new()),
            }
        }
        Ok(out)
    }

    fn mark_moved(&self, sync: &str) -> Result<()> {
        if self
            .legacy
            .scan_prefix(stamp_key(sync, b""))
            .next()
            .is_some()
        {
            self.legacy.insert(moved_key(sync), &[][..])?;
        }
        Ok(())
    }
}

fn legacy_value(v: &[u8]) -> Result<(Digest, u64)> {
    if v.len() != 40 {
        return Err(corrupt("stamps", "value is not a digest and a time"));
    }
    Ok((
        digest_of("stamps", &v[..32])?,
        u64::from_le_bytes(v[32..].try_into().expect("8 bytes")),
    ))
}

/// Remove the temporary files of rewrites (`replace`) that did not end.
/// Best effort: one left stays until the next open.
fn sweep_temporaries(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name()
            .as_encoded_bytes()
            .starts_with(TEMP_PREFIX.as_bytes())
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The name prefix of a rewrite's temporary file. NB: '@' is in no sync
/// name.
const TEMP_PREFIX: &str = ".stamps@";

fn legacy_get(legacy: &sled::Tree, sync: &str, path: &[u8]) -> Result<Option<(Digest, u64)>> {
    match legacy.get(stamp_key(sync, path))? {
        None => Ok(None),
        Some(v) => legacy_value(&v).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{latest_value, Index};

    /// A history's base record (`sync::stamps::MARK`).
    const MARK: &[u8] = b"\0";

    fn open(t: &Path) -> Index {
        crate::index::sled_tests::reopen(&t.join("index"), &t.join("runs"))
    }

    /// Issue 17's pack row: a stamp a path in sled made every open of the
    /// index slower as syncs added paths. Stamps now add no key to it.
    #[test]
    fn stamps_add_no_key_to_the_index_and_survive_a_reopen() {
        let t = tempfile::tempdir().unwrap();
        let paths: Vec<Vec<u8>> = (0..500).map(|i| format!("d/f{i}").into_bytes()).collect();
        {
            let ix = open(t.path());
            ix.clear_stamps("s").unwrap();
            ix.set_stamps("s", 7, paths.iter().map(|p| (p.as_slice(), Digest::of(p))))
                .unwrap();
            ix.set_stamps("s", 9, [(&b"d/f3"[..], Digest::of(b"new"))])
                .unwrap();
            ix.flush().unwrap();
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode(&t.path().join("stamps/s")),
                mode(&t.path().join("index/db")),
                "a stamps file is as readable as the index"
            );
            let in_sled: usize = ix
                .db
                .tree_names()
                .iter()
                .map(|n| ix.db.open_tree(n).unwrap().len())
                .sum();
            assert_eq!(in_sled, 0, "stamps were written to sled");
        }
        let ix = open(t.path());
        assert_eq!(
            ix.stamp("s", b"d/f0").unwrap(),
            Some((Digest::of(b"d/f0"), 7))
        );
        assert_eq!(
            ix.stamp("s", b"d/f3").unwrap(),
            Some((Digest::of(b"new"), 9))
        );
        assert_eq!(ix.stamp("s", b"d/f500").unwrap(), None);
        assert_eq!(ix.stamp("other", b"d/f0").unwrap(), None);
    }

    /// An append left to the caller's `syncfs` (a watch's pass) writes the
    /// very bytes a synced one does, and a reopen reads it back.
    #[test]
    fn an_unsynced_append_is_the_same_append() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let base = [(&b"x"[..], Digest::of(b"1")), (&b"y"[..], Digest::of(b"2"))];
        let later = [(&b"y"[..], Digest::of(b"3"))];
        for (t, synced) in [(&a, true), (&b, false)] {
            let ix = open(t.path());
            ix.clear_stamps("s").unwrap();
            ix.set_stamps("s", 5, base).unwrap();
            if synced {
                ix.set_stamps("s", 6, later).unwrap();
            } else {
                ix.set_stamps_unsynced("s", 6, later).unwrap();
            }
        }
        let bytes = |t: &tempfile::TempDir| std::fs::read(t.path().join("stamps/s")).unwrap();
        assert_eq!(bytes(&a), bytes(&b));
        let ix = open(b.path());
        assert_eq!(ix.stamp("s", b"y").unwrap(), Some((Digest::of(b"3"), 6)));
        assert_eq!(ix.stamp("s", b"x").unwrap(), Some((Digest::of(b"1"), 5)));
    }

    /// A rewrite's temporary file left by a crash is removed at the next
    /// open that may write (the sync names' files stay).
    #[test]
    fn a_crashed_rewrite_s_temporary_is_removed_at_the_next_open() {
        let t = tempfile::tempdir().unwrap();
        {
            let ix = open(t.path());
            ix.clear_stamps("s").unwrap();
            ix.set_stamps("s", 7, [(&b"a"[..], Digest::of(b"a"))])
                .unwrap();
        }
        let left = t.path().join("stamps/.stamps@XyZ12");
        std::fs::write(&left, b"half a rewrite").unwrap();
        let ix = open(t.path());
        assert!(!left.exists(), "swept");
        assert_eq!(ix.stamp("s", b"a").unwrap(), Some((Digest::of(b"a"), 7)));
    }

    /// A torn append (a crash within it) is ignored, and cut off by the
    /// next append, which reads back whole.
    #[test]
    fn a_torn_append_is_ignored_and_cut_off() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("stamps/s");
        {
            let ix = open(t.path());
            ix.clear_stamps("s").unwrap();
            ix.set_stamps("s", 1, [(&b"a"[..], Digest::of(b"1"))])
                .unwrap();
        }
        let whole = std::fs::read(&file).unwrap();
        let torn = encode_batch(&[
            (&b"a"[..], Digest::of(b"2"), 2),
            (&b"b"[..], Digest::of(b"2"), 2),
        ]);
        for cut in [1, 4, torn.len() / 2, torn.len() - 1] {
            let mut bytes = whole.clone();
            bytes.extend_from_slice(&torn[..cut]);
            std::fs::write(&file, &bytes).unwrap();
            let ix = open(t.path());
            assert_eq!(
                ix.stamp("s", b"a").unwrap(),
                Some((Digest::of(b"1"), 1)),
                "cut at {cut}"
            );
            assert_eq!(ix.stamp("s", b"b").unwrap(), None, "cut at {cut}");
        }
        let ix = open(t.path());
        ix.set_stamps("s", 3, [(&b"b"[..], Digest::of(b"3"))])
            .unwrap();
        drop(ix);
        let ix = open(t.path());
        assert_eq!(ix.stamp("s", b"a").unwrap(), Some((Digest::of(b"1"), 1)));
        assert_eq!(ix.stamp("s", b"b").unwrap(), Some((Digest::of(b"3"), 3)));
        assert_eq!(
            std::fs::metadata(&file).unwrap().len() as usize,
            whole.len() + encode_batch(&[(&b"b"[..], Digest::of(b"3"), 3)]).len()
        );
    }

    /// Rewriting one path again and again does not grow the file without
    /// bound; the newest record of each path survives the rewrite.
    #[test]
    fn a_file_mostly_replaced_records_is_rewritten() {
        let t = tempfile::tempdir().unwrap();
        let ix = open(t.path());
        ix.clear_stamps("s").unwrap();
        ix.set_stamps("s", 1, [(&b"keep"[..], Digest::of(b"k"))])
            .unwrap();
        for i in 0..5000u64 {
            ix.set_stamps("s", 10 + i, [(&b"hot"[..], Digest::of(&i.to_le_bytes()))])
                .unwrap();
        }
        let len = std::fs::metadata(t.path().join("stamps/s")).unwrap().len();
        assert!(len < 2 * SLACK + 1024, "the file grew to {len} bytes");
        drop(ix);
        let ix = open(t.path());
        assert_eq!(ix.stamp("s", b"keep").unwrap(), Some((Digest::of(b"k"), 1)));
        assert_eq!(
            ix.stamp("s", b"hot").unwrap(),
            Some((Digest::of(&4999u64.to_le_bytes()), 5009))
        );
    }

    /// A reader of a copied index (a read-only store) sees what the
    /// index's owner appends and rewrites after it loaded the file.
    #[test]
    fn a_copied_index_sees_the_owner_s_appends() {
        let t = tempfile::tempdir().unwrap();
        let owner = open(t.path());
        owner.clear_stamps("s").unwrap();
        owner
            .set_stamps("s", 1, [(&b"a"[..], Digest::of(b"1"))])
            .unwrap();
        let reader = Index::open_with_memos(
            &t.path().join("copy"),
            &t.path().join("runs"),
            &t.path().join("m"),
        )
        .unwrap();
        assert_eq!(
            reader.stamp("s", b"a").unwrap(),
            Some((Digest::of(b"1"), 1))
        );
        owner
            .set_stamps("s", 2, [(&b"a"[..], Digest::of(b"2"))])
            .unwrap();
        assert_eq!(
            reader.stamp("s", b"a").unwrap(),
            Some((Digest::of(b"2"), 2))
        );
        owner.clear_stamps("s").unwrap();
        assert_eq!(reader.stamp("s", b"a").unwrap(), None);
        drop(owner);
        // A torn tail the reader saw, cut by the next owner and replaced
        // by a batch of the same size: same file, same size.
        let file = t.path().join("stamps/s");
        let next = encode_batch(&[(&b"b"[..], Digest::of(b"3"), 3)]);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.extend(std::iter::repeat_n(7u8, next.len()));
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(reader.stamp("s", b"b").unwrap(), None);
        let owner = open(t.path());
        owner
            .set_stamps("s", 3, [(&b"b"[..], Digest::of(b"3"))])
            .unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().len() as usize,
            bytes.len()
        );
        assert_eq!(
            reader.stamp("s", b"b").unwrap(),
            Some((Digest::of(b"3"), 3))
        );
    }

    /// A file removed under its owner is started again, without a base
    /// record (paths then show their snapshot's time, never an older one).
    #[test]
    fn a_file_removed_under_its_owner_is_started_again_without_a_base() {
        let t = tempfile::tempdir().unwrap();
        let ix = open(t.path());
        ix.clear_stamps("s").unwrap();
        ix.set_stamps(
            "s",
            1,
            [(MARK, Digest::of(b"t")), (&b"a"[..], Digest::of(b"1"))],
        )
        .unwrap();
        std::fs::remove_file(t.path().join("stamps/s")).unwrap();
        ix.set_stamps("s", 2, [(&b"b"[..], Digest::of(b"2"))])
            .unwrap();
        drop(ix);
        let ix = open(t.path());
        assert_eq!(ix.stamp("s", MARK).unwrap(), None);
        assert_eq!(ix.stamp("s", b"a").unwrap(), None);
        assert_eq!(ix.stamp("s", b"b").unwrap(), Some((Digest::of(b"2"), 2)));
    }

    /// One damaged record of an older index: none is copied, the base
    /// record included.
    #[test]
    fn a_damaged_older_record_copies_no_base() {
        let t = tempfile::tempdir().unwrap();
        let ix = open(t.path());
        let tree = ix.db.open_tree("stamps").unwrap();
        let v = latest_value(&Digest::of(b"old"), 5);
        tree.insert(stamp_key("s", MARK), &v[..]).unwrap();
        tree.insert(stamp_key("s", b"bad"), &b"short"[..]).unwrap();
        ix.set_stamps("s", 8, [(&b"b"[..], Digest::of(b"b"))])
            .unwrap();
        assert_eq!(ix.stamp("s", MARK).unwrap(), None);
        assert_eq!(ix.stamp("s", b"b").unwrap(), Some((Digest::of(b"b"), 8)));
    }

    /// An older index's stamps (in sled) answer until the name's first
    /// write, which copies them into its file; a lost file never makes
    /// them answer again.
    #[test]
    fn an_older_index_s_stamps_are_read_then_moved() {
        let t = tempfile::tempdir().unwrap();
        {
            let ix = open(t.path());
            let tree = ix.db.open_tree("stamps").unwrap();
            let v = latest_value(&Digest::of(b"old"), 5);
            tree.insert(stamp_key("s", b"a"), &v[..]).unwrap();
            tree.insert(stamp_key("s", MARK), &v[..]).unwrap();
            ix.flush().unwrap();
        }
        let ix = open(t.path());
        assert_eq!(ix.stamp("s", b"a").unwrap(), Some((Digest::of(b"old"), 5)));
        ix.set_stamps("s", 8, [(&b"b"[..], Digest::of(b"b"))])
            .unwrap();
        ix.flush().unwrap();
        assert_eq!(ix.stamp("s", b"a").unwrap(), Some((Digest::of(b"old"), 5)));
        assert_eq!(ix.stamp("s", MARK).unwrap(), Some((Digest::of(b"old"), 5)));
        assert_eq!(ix.stamp("s", b"b").unwrap(), Some((Digest::of(b"b"), 8)));
        drop(ix);
        std::fs::remove_file(t.path().join("stamps/s")).unwrap();
        let ix = open(t.path());
        assert_eq!(ix.stamp("s", MARK).unwrap(), None);
        assert_eq!(ix.stamp("s", b"a").unwrap(), None);
    }
}
