//! fsck, the store half: re-hash every blob, check every entry record and
//! what it references, check the sync logs' snapshots; and the repairs that
//! touch only the store (quarantine, modes). The index half (index ↔
//! `entries/` agreement) is `Cache::fsck`, which drives both.
//!
//! Owns: the fsck report model (`Problem`, `Report`, in `report`). May call: `hash`,
//! `store` (blobs, trees, entries, syncs, quarantine). Key re-derivation is
//! `exec`'s, so it comes in as a function (`Rederive`).
//!
//! Guarantees:
//! - Blobs are hashed streaming (a fixed buffer per worker, never a whole
//!   blob in memory), in parallel, each once.
//! - A problem is reported once per damaged thing: a corrupt blob once
//!   (`corrupt-blob`), and each entry that references it once per reference
//!   (`corrupt-reference`).
//! - Nothing is deleted: damaged blobs, entry records and stray files are
//!   moved to `quarantine/` (see `quarantine`); the only in-place repair is
//!   a blob's mode back to 0444.
//! - Unreferenced (orphan) blobs are not problems: a crash between a blob's
//!   rename and its entry's leaves them by design; they are counted, and
//!   `dagfs gc` removes them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::error::{IoContext, Result, StoreError};
use super::quarantine::Kind;
use super::tree::{Node, Tree};
use super::{Entry, Manifest, Store};
use crate::hash::Digest;

mod report;
pub use report::{Phase, Problem, ProblemKind, Progress, Report, FIXED, FOUND, UNFIXED};

/// Re-derive (task digest, key) from a manifest (`exec::KeyBuilder`).
pub type Rederive<'a> = &'a (dyn Fn(&Manifest) -> (Digest, Digest) + Sync);

/// What is known of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    Intact,
    Corrupt,
    Unreadable,
    Missing,
}

/// The result of hashing every blob.
#[derive(Debug, Default)]
pub struct BlobScan {
    states: HashMap<Digest, (BlobState, u64)>,
    pub problems: Vec<Problem>,
    /// Paths (under the store) of stray files, with their problem index.
    strays: Vec<(PathBuf, usize)>,
    /// Writable blobs, with their problem index.
    modes: Vec<(Digest, usize)>,
    pub bytes: u64,
}

const BUF: usize = 256 * 1024;

/// What hashing one blob file found: (digest, size, mode).
type Hashed = std::io::Result<(Digest, u64, u32)>;

/// Hash one file, streaming: (digest, size, mode).
fn hash_file(path: &Path, buf: &mut [u8]) -> Hashed {
    // NB: O_NONBLOCK: a FIFO in a blob's place must not block fsck.
    let mut f: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mode = meta.mode();
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    loop {
        match f.read(buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((Digest::from_blake3(h.finalize()), n, mode))
}

/// Hash blob `d` where a pack holds it; None if none does. An error: a
/// pack could not be read for a reason that may pass (no answer, so no
/// state: see `BlobScan::state`).
fn hash_packed(store: &Store, d: &Digest) -> Result<Option<Hashed>> {
    for p in store.packs()?.iter() {
        if let Some((off, len)) = p.find(d)? {
            let read = p.read_raw(off, len);
            return Ok(Some(read.map(|b| (Digest::of(&b), b.len() as u64, 0o444))));
        }
    }
    Ok(None)
}

/// The system ran out of something (descriptors, memory): that says
/// nothing of the blob, so it is no state (`Unreadable` is quarantined by
/// repair), and fsck stops.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN)
    )
}

fn is_hex_name(n: &str, len: usize) -> bool {
    n.len() == len
        && n.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn rel(store: &Store, p: &Path) -> String {
    p.strip_prefix(store.root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Every file under `<store>/<top>/`: (well-named digests, strays).
fn list(store: &Store, top: &str) -> Result<(Vec<Digest>, Vec<PathBuf>)> {
    let dir = store.root().join(top);
    let (mut good, mut stray) = (Vec::new(), Vec::new());
    for shard in fs::read_dir(&dir).at(&dir)? {
        let shard = shard.at(&dir)?;
        let sname = shard.file_name().to_string_lossy().into_owned();
        let spath = shard.path();
        if !shard.file_type().at(&spath)?.is_dir() || !is_hex_name(&sname, 2) {
            stray.push(spath);
            continue;
        }
        for e in fs::read_dir(&spath).at(&spath)? {
            let e = e.at(&spath)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ok = e.file_type().at(e.path())?.is_file()
                && is_hex_name(&name, 64)
                && name.starts_with(&sname);
            match Digest::from_hex(&name).filter(|_| ok) {
                Some(d) => good.push(d),
                None => stray.push(e.path()),
            }
        }
    }
    Ok((good, stray))
}

impl BlobScan {
    /// The state of blob `d`: from the scan, else looked at now (a blob
    /// committed after the scan listed `blobs/`). An error: a pack could
    /// not be read for a reason that may pass; repair would act on a
    /// state it does not know.
    pub fn state(&mut self, store: &Store, d: &Digest) -> Result<BlobState> {
        if let Some((s, _)) = self.states.get(d) {
            return Ok(*s);
        }
        let mut buf = vec![0u8; BUF];
        let hashed = match hash_file(&store.blob_path(d), &mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                hash_packed(store, d)?.unwrap_or_else(|| Err(std::io::ErrorKind::NotFound.into()))
            }
            r => r,
        };
        let s = match hashed {
            Ok((got, n, _)) if got == *d => {
                self.states.insert(*d, (BlobState::Intact, n));
                return Ok(BlobState::Intact);
            }
            Ok(_) => BlobState::Corrupt,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BlobState::Missing,
            Err(e) if out_of_resources(&e) => {
                let path = store.blob_path(d);
                return Err(StoreError::Io { path, source: e });
            }
            Err(_) => BlobState::Unreadable,
        };
        if s != BlobState::Missing {
            // Found now, not by the scan: report it as the scan would have.
            let kind = if s == BlobState::Corrupt {
                ProblemKind::CorruptBlob
            } else {
                ProblemKind::UnreadableBlob
            };
            self.problems
                .push(Problem::new(kind, d.to_hex(), "found after the scan"));
        }
        self.states.insert(*d, (s, 0));
        Ok(s)
    }

    /// Whether something references a blob the store does not have.
    pub fn any_missing(&self) -> bool {
        self.states.values().any(|(s, _)| *s == BlobState::Missing)
    }

    pub fn damaged(&self) -> impl Iterator<Item = Digest> + '_ {
        self.states
            .iter()
            .filter(|(_, (s, _))| matches!(s, BlobState::Corrupt | BlobState::Unreadable))
            .map(|(d, _)| *d)
    }
}

/// Hash every blob under `blobs/` with `jobs` threads; list strays.
pub fn scan_blobs(store: &Store, jobs: usize, progress: &Progress) -> Result<BlobScan> {
    progress.set_phase(Phase::Listing);
    let (digests, strays) = list(store, "blobs")?;
    let mut scan = BlobScan::default();
    for p in strays {
        let i = scan.problems.len();
        scan.problems.push(Problem::new(
            ProblemKind::StrayFile,
            rel(store, &p),
            "not a blob (blobs are regular files named by their 64-hex BLAKE3, in the shard of their first two digits)",
        ));
        scan.strays.push((p, i));
    }
    progress
        .blobs_total
        .store(digests.len() as u64, Ordering::Relaxed);
    progress.set_phase(Phase::Hashing);
    let next = AtomicU64::new(0);
    let results: Mutex<Vec<(Digest, Hashed)>> = Mutex::new(Vec::with_capacity(digests.len()));
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                let mut buf = vec![0u8; BUF];
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(d) = digests.get(i) else { break };
                    let r = hash_file(&store.blob_path(d), &mut buf);
                    if let Ok((_, n, _)) = &r {
                        progress.bytes_done.fetch_add(*n, Ordering::Relaxed);
                    }
                    progress.blobs_done.fetch_add(1, Ordering::Relaxed);
                    mine.push((*d, r));
                }
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(mine);
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(d, _)| *d);
    for (d, r) in results {
        let path = store.blob_path(&d);
        match r {
            Ok((got, n, mode)) if got == d => {
                scan.bytes += n;
                scan.states.insert(d, (BlobState::Intact, n));
                if mode & 0o7777 != 0o444 {
                    scan.modes.push((d, scan.problems.len()));
                    scan.problems.push(Problem::new(
                        ProblemKind::BlobMode,
                        d.to_hex(),
                        format!("mode {:04o}, not 0444", mode & 0o7777),
                    ));
                }
            }
            Ok((got, n, _)) => {
                scan.bytes += n;
                scan.states.insert(d, (BlobState::Corrupt, n));
                scan.problems.push(Problem::new(
                    ProblemKind::CorruptBlob,
                    d.to_hex(),
                    format!("{n} bytes that hash to {got}"),
                ));
            }
            // Removed since it was listed (gc, or a verified read that
            // quarantined it): not a problem of this scan.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if out_of_resources(&e) => return Err(StoreError::Io { path, source: e }),
            Err(e) => {
                scan.states.insert(d, (BlobState::Unreadable, 0));
                scan.problems.push(Problem::new(
                    ProblemKind::UnreadableBlob,
                    d.to_hex(),
                    format!("{}: {e}", rel(store, &path)),
                ));
            }
        }
    }
    scan_packs(store, &mut scan, progress)?;
    Ok(scan)
}

/// The packs' part of `scan_blobs`: every index checked whole, every packed
/// blob hashed (but one whose loose copy was found intact). A pack with no
/// index or an index that does not load is a stray (its blobs do not
/// exist: whatever references them is reported missing).
fn scan_packs(store: &Store, scan: &mut BlobScan, progress: &Progress) -> Result<()> {
    let dir = store.packs_dir();
    let (ids, orphans) = super::pack::Packs::list_dir(dir)?;
    for p in orphans {
        let i = scan.problems.len();
        scan.problems.push(Problem::new(
            ProblemKind::StrayFile,
            rel(store, &p),
            "a pack without its index",
        ));
        scan.strays.push((p, i));
    }
    for id in ids {
        let pack = match super::pack::Pack::load(dir, &id) {
            Ok(p) => p,
            // Not a verdict on the pack (no descriptor left, an I/O
            // error): fsck stops rather than call it a stray.
            Err(super::pack::BadPack {
                path,
                passing: Some(source),
                ..
            }) => return Err(StoreError::Io { path, source }),
            Err(bad) => {
                for ext in ["idx", "pack"] {
                    let p = dir.join(format!("{id}.{ext}"));
                    if ext == "pack" && !p.exists() {
                        continue;
                    }
                    let i = scan.problems.len();
                    scan.problems.push(Problem::new(
                        ProblemKind::StrayFile,
                        rel(store, &p),
                        format!(
                            "pack {id} does not load ({}: {}); its blobs are not in the store",
                            rel(store, &bad.path),
                            bad.reason
                        ),
                    ));
                    scan.strays.push((p, i));
                }
                continue;
            }
        };
        progress
            .blobs_total
            .fetch_add(pack.count() as u64, Ordering::Relaxed);
        let path = rel(store, &pack.pack_path(dir));
        for (d, off, len) in pack.rows() {
            progress.blobs_done.fetch_add(1, Ordering::Relaxed);
            if matches!(scan.states.get(&d), Some((BlobState::Intact, _))) {
                continue;
            }
            let n = u64::from(len);
            match pack.read_raw(off, len) {
                Ok(b) => {
                    progress.bytes_done.fetch_add(n, Ordering::Relaxed);
                    scan.bytes += n;
                    let got = Digest::of(&b);
                    if got == d {
                        scan.states.insert(d, (BlobState::Intact, n));
                    } else {
                        scan.states.insert(d, (BlobState::Corrupt, n));
                        scan.problems.push(Problem::new(
                            ProblemKind::CorruptBlob,
                            d.to_hex(),
                            format!("{n} bytes in {path} that hash to {got}"),
                        ));
                    }
                }
                Err(e) => {
                    scan.states.insert(d, (BlobState::Unreadable, 0));
                    scan.problems.push(Problem::new(
                        ProblemKind::UnreadableBlob,
                        d.to_hex(),
                        format!("{path}: {e}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The entries found, and which must go.
#[derive(Debug, Default)]
pub struct EntryScan {
    /// Decodable records filed under their own key (including those to drop).
    pub entries: BTreeMap<Digest, Entry>,
    /// Keys whose entry must be dropped (record quarantined, index entry
    /// removed), with the reason: bad records, key mismatches, damaged
    /// references.
    pub drop: BTreeMap<Digest, String>,
    /// Stray files under `entries/`.
    bad_records: Vec<PathBuf>,
    pub problems: Vec<Problem>,
    /// Every blob an entry, a sync snapshot or an input names (reachable).
    pub reachable: HashSet<Digest>,
    pub sync_snapshots: u64,
    /// Sync logs that do not decode (names).
    bad_syncs: Vec<String>,
}

/// Walk the tree `root` (and everything under it), calling `bad` for each
/// blob that is not intact, with its path in the tree. Trees in `seen` are
/// not walked again.
fn walk(
    store: &Store,
    blobs: &mut BlobScan,
    root: Digest,
    seen: &mut HashSet<Digest>,
    bad: &mut dyn FnMut(Digest, BlobState, &str),
) -> Result<()> {
    let mut stack = vec![(root, String::new())];
    while let Some((t, path)) = stack.pop() {
        if !seen.insert(t) {
            continue;
        }
        match blobs.state(store, &t)? {
            BlobState::Intact => {}
            s => {
                bad(t, s, &path);
                continue;
            }
        }
        let tree = match store.read_blob_unchecked(&t).map(|b| Tree::decode(&b)) {
            Ok(Ok(tree)) => tree,
            // Quarantined or gone since it was hashed.
            Err(StoreError::Missing(_)) => {
                bad(t, BlobState::Missing, &path);
                continue;
            }
            // Hashed a moment ago: no answer now is no state.
            Err(e) => return Err(e),
            Ok(Err(_)) => {
                bad(t, BlobState::Intact, &path);
                continue;
            }
        };
        for e in tree.entries {
            let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            match e.node {
                Node::Dir { digest } => stack.push((digest, p)),
                Node::File { digest, .. } => {
                    seen.insert(digest);
                    match blobs.state(store, &digest)? {
                        BlobState::Intact => {}
                        // NB: a missing empty file is served as empty (the
                        // mount does so); ingest always stores it anyway.
                        s => bad(digest, s, &p),
                    }
                }
                Node::Symlink { .. } => {}
            }
        }
    }
    Ok(())
}

fn bad_ref(e: &Entry, d: Digest, s: BlobState, path: &str) -> Problem {
    let (kind, what) = match s {
        BlobState::Missing => (ProblemKind::MissingBlob, "missing"),
        BlobState::Intact => (ProblemKind::BadTree, "not a tree"),
        BlobState::Corrupt => (ProblemKind::CorruptReference, "corrupt"),
        BlobState::Unreadable => (ProblemKind::CorruptReference, "unreadable"),
    };
    let at = if path.is_empty() { "/" } else { path };
    Problem::new(
        kind,
        e.key.to_hex(),
        format!("references {what} blob {d} at {at}"),
    )
    .of_task(e)
}

/// Check every entry record (decoding, key, references) and every sync
/// snapshot, against `blobs`.
pub fn scan_entries(
    store: &Store,
    blobs: &mut BlobScan,
    rederive: Rederive<'_>,
    progress: &Progress,
) -> Result<EntryScan> {
    progress.set_phase(Phase::Entries);
    let (keys, strays) = list(store, "entries")?;
    let mut out = EntryScan::default();
    for p in strays {
        out.problems.push(Problem::new(
            ProblemKind::StrayFile,
            rel(store, &p),
            "not an entry record (records are named by their 64-hex key, in the shard of its first two digits)",
        ));
        out.bad_records.push(p);
    }
    progress
        .entries_total
        .store(keys.len() as u64, Ordering::Relaxed);
    let mut logs = Vec::new();
    for key in keys {
        progress.entries_done.fetch_add(1, Ordering::Relaxed);
        let path = store.entry_path(&key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.problems.push(Problem::new(
                    ProblemKind::BadEntry,
                    key.to_hex(),
                    format!("{}: {e}", rel(store, &path)),
                ));
                out.drop.insert(key, format!("unreadable: {e}"));
                continue;
            }
        };
        let entry = match Entry::from_json(&bytes) {
            Ok(e) if e.key == key => e,
            Ok(e) => {
                let why = format!("filed under {key} but records key {}", e.key);
                out.problems.push(
                    Problem::new(ProblemKind::BadEntry, key.to_hex(), why.clone()).of_task(&e),
                );
                out.drop.insert(key, why);
                continue;
            }
            Err(e) => {
                let why = format!("does not decode: {e}");
                out.problems.push(Problem::new(
                    ProblemKind::BadEntry,
                    key.to_hex(),
                    why.clone(),
                ));
                out.drop.insert(key, why);
                continue;
            }
        };
        let m = &entry.manifest;
        let (task_digest, derived) = rederive(m);
        let mismatch = if task_digest != m.task_digest {
            Some(format!(
                "its manifest's components derive task digest {task_digest}, not the recorded {}",
                m.task_digest
            ))
        } else if derived != key {
            Some(format!("its manifest derives key {derived}"))
        } else if m.name != entry.task {
            Some(format!(
                "its manifest names task `{}`, the entry `{}`",
                m.name, entry.task
            ))
        } else {
            None
        };
        if let Some(why) = mismatch {
            out.problems
                .push(Problem::new(ProblemKind::KeyMismatch, key.to_hex(), why).of_task(&entry));
            out.drop
                .insert(key, "key does not match its manifest".into());
        }
        let mut bad = Vec::new();
        let mut seen = HashSet::new();
        walk(store, blobs, entry.output, &mut seen, &mut |d, s, p| {
            bad.push(bad_ref(&entry, d, s, p))
        })?;
        for (d, what) in [(entry.stdout, "stdout"), (entry.stderr, "stderr")] {
            match blobs.state(store, &d)? {
                BlobState::Intact => {}
                s => bad.push(bad_ref(&entry, d, s, &format!("({what})"))),
            }
            seen.insert(d);
        }
        out.reachable.extend(seen);
        logs.extend(m.inputs.iter().map(|(_, d)| *d));
        if !bad.is_empty() {
            out.drop
                .entry(key)
                .or_insert_with(|| "references a damaged or missing blob".into());
            out.problems.extend(bad);
        }
        out.entries.insert(key, entry);
    }
    // Input snapshots: reachable (gc keeps them), but an entry does not
    // depend on them, so their state is not the entry's problem.
    out.reachable.extend(super::gc::reachable(store, logs)?);
    let mut seen = HashSet::new();
    let (logs, damaged) = store.sync_logs_checked()?;
    for (name, why) in damaged {
        out.problems.push(Problem::new(
            ProblemKind::BadSyncRecord,
            format!("syncs/{name}"),
            format!("{why} (the next `dagfs sync` under this name starts a fresh history)"),
        ));
        out.bad_syncs.push(name);
    }
    for log in logs {
        for snap in &log.snapshots {
            out.sync_snapshots += 1;
            let name = format!("syncs/{}@{}", log.name, snap.seq);
            let mut found = Vec::new();
            walk(store, blobs, snap.tree, &mut seen, &mut |d, s, p| {
                found.push(format!(
                    "{s:?} blob {d} at {}",
                    if p.is_empty() { "/" } else { p }
                ))
            })?;
            for f in found {
                out.problems.push(Problem::new(
                    ProblemKind::SyncSnapshot,
                    name.clone(),
                    format!(
                        "references {} (a new `dagfs sync` of {} stores the files again)",
                        f.to_lowercase(),
                        log.root
                    ),
                ));
            }
        }
    }
    out.reachable.extend(seen);
    Ok(out)
}

/// Intact blobs nothing references: (count, bytes).
pub fn orphans(blobs: &BlobScan, entries: &EntryScan) -> (u64, u64) {
    blobs
        .states
        .iter()
        .filter(|(d, (s, _))| *s == BlobState::Intact && !entries.reachable.contains(d))
        .fold((0, 0), |(n, b), (_, (_, len))| (n + 1, b + len))
}

fn mark(p: &mut Problem, r: std::result::Result<bool, String>, action: &str) {
    match r {
        Ok(_) => {
            p.repaired = true;
            p.action = Some(action.into());
        }
        Err(e) => p.detail += &format!(" (repair failed: {e})"),
    }
}

/// The store's repairs: quarantine damaged blobs, stray files and bad
/// records, make writable blobs 0444. Marks the problems repaired; returns
/// the number of files quarantined. Entries in `entries.drop` are *not*
/// touched here (the index must drop them first: `Cache::fsck`, then
/// `drop_entry`).
pub fn repair_store(store: &Store, blobs: &mut BlobScan, entries: &mut EntryScan) -> u64 {
    let mut moved = 0;
    let damaged: HashSet<Digest> = blobs.damaged().collect();
    for p in blobs.problems.iter_mut() {
        let Some(d) = Digest::from_hex(&p.subject) else {
            continue;
        };
        if matches!(
            p.kind,
            ProblemKind::CorruptBlob | ProblemKind::UnreadableBlob
        ) && damaged.contains(&d)
        {
            let r = store.quarantine_blob(&d, &format!("fsck: {}", p.kind.as_str()));
            moved += u64::from(matches!(r, Ok(true)));
            mark(p, r.map_err(|e| e.to_string()), "quarantined");
        }
    }
    for (d, i) in &blobs.modes {
        let path = store.blob_path(d);
        let r = fs::set_permissions(&path, fs::Permissions::from_mode(0o444))
            .map(|()| true)
            .map_err(|e| format!("{}: {e}", path.display()));
        mark(&mut blobs.problems[*i], r, "mode set to 0444");
    }
    for (path, i) in &blobs.strays {
        let name = rel(store, path).replace('/', "_");
        // NB: a stray of `packs/` may have been a pack whose blobs were
        // known stored (a kept tree, `Store::read_tree`): the generation
        // moves before it goes, as at open.
        if path.starts_with(store.packs_dir()) {
            if let Err(e) = store.new_blob_generation() {
                mark(&mut blobs.problems[*i], Err(e.to_string()), "quarantined");
                continue;
            }
        }
        let r = store.quarantine_path(
            path,
            Kind::Stray,
            &name,
            "fsck: stray file under blobs/ or packs/",
        );
        moved += u64::from(matches!(r, Ok(true)));
        mark(
            &mut blobs.problems[*i],
            r.map_err(|e| e.to_string()),
            "quarantined",
        );
    }
    for path in &entries.bad_records {
        let name = rel(store, path).replace('/', "_");
        let r = store
            .quarantine_path(path, Kind::Stray, &name, "fsck: stray file under entries/")
            .map_err(|e| e.to_string());
        moved += u64::from(matches!(r, Ok(true)));
        let subject = rel(store, path);
        for p in entries
            .problems
            .iter_mut()
            .filter(|p| p.kind == ProblemKind::StrayFile && p.subject == subject)
        {
            mark(p, r.clone(), "quarantined");
        }
    }
    for name in &entries.bad_syncs {
        // NB: held, and read again: a sync of this name in the same process
        // (a daemon's watch) may have replaced the damaged log since the
        // scan, or be between its read and its append.
        let _held = store.hold_sync_name(name);
        let (r, action) = match store.sync_log(name) {
            Err(super::StoreError::Corrupt { .. }) => (
                store
                    .quarantine_sync_log(name, "fsck: bad-sync-record")
                    .map_err(|e| e.to_string()),
                "quarantined: a fresh history starts",
            ),
            _ => (Ok(false), "a sync has since replaced it"),
        };
        moved += u64::from(matches!(r, Ok(true)));
        let subject = format!("syncs/{name}");
        for p in entries.problems.iter_mut().filter(|p| p.subject == subject) {
            mark(p, r.clone(), action);
        }
    }
    moved
}

/// Quarantine the record of an entry being dropped, and mark the problems
/// of that entry repaired.
pub fn drop_entry(store: &Store, entries: &mut EntryScan, key: &Digest) -> bool {
    let why = entries.drop.get(key).cloned().unwrap_or_default();
    let r = store
        .quarantine_entry(key, &format!("fsck: {why}"))
        .map_err(|e| e.to_string());
    let hex = key.to_hex();
    for p in entries.problems.iter_mut().filter(|p| p.subject == hex) {
        mark(
            p,
            r.clone(),
            "entry dropped: it re-runs (miss reason `corrupt`)",
        );
    }
    r.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Staged;

    fn put(s: &Store, bytes: &[u8]) -> Digest {
        let work = s.tempdir("t").unwrap();
        let mut st = Staged::default();
        let d = s.stage_bytes(work.path(), bytes, &mut st).unwrap();
        s.commit(st).unwrap();
        d
    }

    fn flip(s: &Store, d: &Digest) {
        let p = s.blob_path(d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let mut b = fs::read(&p).unwrap();
        b[0] ^= 1;
        fs::write(&p, b).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
    }

    #[test]
    fn scan_finds_exactly_the_flipped_blobs_strays_and_modes() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path(), &mut |_| {}).unwrap();
        let ds: Vec<Digest> = (0..50)
            .map(|i| put(&s, format!("blob {i}").repeat(i + 1).as_bytes()))
            .collect();
        for d in &ds[..7] {
            flip(&s, d);
        }
        fs::set_permissions(s.blob_path(&ds[9]), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir_all(s.root().join("blobs/00")).unwrap();
        fs::write(s.root().join("blobs/00/not-a-blob"), b"x").unwrap();
        let progress = Progress::default();
        let mut scan = scan_blobs(&s, 3, &progress).unwrap();
        assert_eq!(progress.blobs_done.load(Ordering::Relaxed), 50);
        let corrupt: HashSet<String> = scan
            .problems
            .iter()
            .filter(|p| p.kind == ProblemKind::CorruptBlob)
            .map(|p| p.subject.clone())
            .collect();
        let want: HashSet<String> = ds[..7].iter().map(Digest::to_hex).collect();
        assert_eq!(corrupt, want);
        assert_eq!(scan.problems.len(), 9, "{:#?}", scan.problems);
        let mut entries = EntryScan::default();
        assert_eq!(repair_store(&s, &mut scan, &mut entries), 8);
        assert!(
            scan.problems.iter().all(|p| p.repaired),
            "{:#?}",
            scan.problems
        );
        assert_eq!(s.quarantined(Kind::Blob).unwrap().len(), 7);
        let again = scan_blobs(&s, 2, &Progress::default()).unwrap();
        assert!(again.problems.is_empty(), "{:#?}", again.problems);
        assert_eq!(again.states.len(), 43);
    }

    /// `--repair` quarantines a damaged sync log only if it is still
    /// damaged when the repair comes to it: one a sync replaced since the
    /// scan (a daemon's watch) stays.
    #[test]
    fn repair_leaves_a_sync_log_replaced_since_the_scan() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path(), &mut |_| {}).unwrap();
        let mut entries = EntryScan::default();
        for name in ["a", "b"] {
            fs::create_dir_all(t.path().join("syncs")).unwrap();
            fs::write(t.path().join("syncs").join(name), b"{\"name").unwrap();
            entries.bad_syncs.push(name.into());
            let subject = format!("syncs/{name}");
            entries.problems.push(Problem::new(
                ProblemKind::BadSyncRecord,
                &subject,
                "damaged",
            ));
        }
        let fresh = crate::store::syncs::SyncLog {
            name: "b".into(),
            root: "/b".into(),
            snapshots: Vec::new(),
        };
        s.put_sync_log(&fresh).unwrap();
        let mut blobs = BlobScan::default();
        assert_eq!(repair_store(&s, &mut blobs, &mut entries), 1);
        assert_eq!(s.quarantined(Kind::Sync).unwrap().len(), 1);
        assert_eq!(s.sync_log("b").unwrap(), Some(fresh));
        let actions: Vec<_> = entries.problems.iter().map(|p| p.action.clone()).collect();
        assert_eq!(
            actions,
            [
                Some("quarantined: a fresh history starts".to_string()),
                Some("a sync has since replaced it".to_string())
            ]
        );
    }

    #[test]
    fn mask_bits() {
        let mut r = Report::default();
        assert_eq!(r.mask(), 0);
        r.problems
            .push(Problem::new(ProblemKind::CorruptBlob, "x", "y"));
        assert_eq!(r.mask(), FOUND);
        r.problems
            .push(Problem::new(ProblemKind::SyncSnapshot, "x", "y"));
        assert_eq!(r.mask(), FOUND | UNFIXED);
        r.repair = true;
        r.problems[0].repaired = true;
        assert_eq!(r.mask(), FOUND | FIXED | UNFIXED);
        r.problems.pop();
        assert_eq!(r.mask(), FOUND | FIXED);
    }
}
