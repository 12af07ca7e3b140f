//! The stat cache: for each synced root (and filter set), one index record
//! per directory, holding the stat, digest and blob generation of each
//! regular file directly in it (sorted by name), the directory's own stat
//! from just before it was listed, the stats of its ignore files, and the
//! names of its subdirectories. The root's record also names the tree the
//! walk that wrote the records produced.
//!
//! One record per directory, not per file: a rescan reads 1,000 records
//! for 100,000 files in 1,000 directories, not 100,000.
//!
//! With the directory stats, a rescan is *validated* before anything is
//! walked (`validate`), as git's untracked cache does: every directory and
//! file the records name is stat'ed (in parallel, with `fstatat` from the
//! open directory), and only what differs is marked dirty. A directory
//! whose stat is unchanged has the same names in it (creating, removing or
//! renaming an entry changes the directory's mtime), so it is not listed
//! again. The dirty paths then drive the same incremental walk as
//! `--watch` (`dirty::plan`) from the recorded tree; with none, the
//! recorded tree is the snapshot, and nothing is listed or read at all.
//!
//! A record also says which blob generation of the store its digests were
//! known to be stored in (`Store::blob_generation`): while no blob has been
//! removed since (no gc sweep, no quarantine), the blobs are there and need
//! not be looked for. The validation is used only when the root's record is
//! of the current generation; otherwise a full walk checks every blob.
//!
//! Anything stamped within `RACY_NS` of the scan that recorded it is not
//! trusted (a later write in the same clock tick could keep its stat).
//!
//! Record layout, version 2 (LE integers): version byte; flags (1: has the
//! directory's stat, 2: that stat is racy, 4: complete, every file of its
//! tree has a record, 8: root information follows); the directory's stat if
//! flagged; for `.gitignore` then `.dagfsignore`, a presence byte and a stat;
//! root information if flagged (tree digest, files, bytes, generation);
//! the directory's own tree if flagged (16: digest, files, bytes);
//! subdirectory count (u32) and names (u16 length, bytes); then per file:
//! name length (u16), name, stat, racy (u8), generation (u64), digest. A stat
//! is dev, ino, size, mtime ns, ctime ns (u64 each) and mode (u32). A record
//! that does not decode is treated as absent.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::dirty::Dirty;
use super::scan::Meta;
use crate::hash::Digest;
use crate::index::Index;
use crate::store::{Node, TreeEntry};

const VERSION: u8 = 2;
const META: usize = 8 * 5 + 4;
const FIXED: usize = META + 1 + 8 + 32;
const F_DIR: u8 = 1;
const F_DIR_RACY: u8 = 2;
const F_COMPLETE: u8 = 4;
const F_ROOT: u8 = 8;
const F_TREE: u8 = 16;

/// The ignore files whose stats a record keeps (see `scan`).
pub(crate) const IGNORE_FILES: [&str; 2] = [super::scan::GIT_IGNORE, super::scan::DAGFS_IGNORE];

/// What the cache holds for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileRec {
    pub meta: Meta,
    /// Stamped so close to the scan that recorded it that a later write in
    /// the same clock tick could keep every field: not to be trusted.
    pub racy: bool,
    /// The store's blob generation when `digest` was known to be stored.
    pub generation: u64,
    pub digest: Digest,
}

/// What the walk that wrote the records made of the whole root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RootInfo {
    pub tree: Digest,
    pub files: u64,
    pub bytes: u64,
    pub generation: u64,
}

/// What a record says of its directory as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// The directory's stat from just before it was listed.
    pub dir: Option<Meta>,
    pub dir_racy: bool,
    /// Every file of the directory's tree has a record here.
    pub complete: bool,
    /// Stats of `IGNORE_FILES` in it (None: absent).
    pub ignore: [Option<Meta>; 2],
    /// The root's record only.
    pub root: Option<RootInfo>,
    /// The directory's tree as that walk stored it: (digest, files, bytes).
    pub tree: Option<(Digest, u64, u64)>,
}

/// One directory's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DirRec {
    pub head: Head,
    /// Subdirectories in its tree, sorted.
    pub subdirs: Vec<Vec<u8>>,
    /// Files, sorted by name.
    pub files: Vec<(Vec<u8>, FileRec)>,
}

fn put_meta(v: &mut Vec<u8>, m: &Meta) {
    for x in [m.dev, m.ino, m.size, m.mtime_ns as u64, m.ctime_ns as u64] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&m.mode.to_le_bytes());
}

fn get_meta(f: &[u8]) -> Meta {
    let u = |i: usize| u64::from_le_bytes(f[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Meta {
        dev: u(0),
        ino: u(1),
        size: u(2),
        mtime_ns: u(3) as i64,
        ctime_ns: u(4) as i64,
        mode: u32::from_le_bytes(f[40..44].try_into().expect("4 bytes")),
    }
}

/// A reader over a record's bytes: None once past the end.
struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<usize> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn meta(&mut self) -> Option<Meta> {
        Some(get_meta(self.take(META)?))
    }
}

impl DirRec {
    pub fn get(&self, name: &[u8]) -> Option<&FileRec> {
        self.files
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .ok()
            .map(|i| &self.files[i].1)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(256 + self.files.len() * (FIXED + 12));
        v.push(VERSION);
        let mut flags = 0;
        if self.head.dir.is_some() {
            flags |= F_DIR;
        }
        if self.head.dir_racy {
            flags |= F_DIR_RACY;
        }
        if self.head.complete {
            flags |= F_COMPLETE;
        }
        if self.head.root.is_some() {
            flags |= F_ROOT;
        }
        if self.head.tree.is_some() {
            flags |= F_TREE;
        }
        v.push(flags);
        if let Some(m) = &self.head.dir {
            put_meta(&mut v, m);
        }
        for m in &self.head.ignore {
            v.push(m.is_some() as u8);
            put_meta(&mut v, &m.unwrap_or(Meta::NONE));
        }
        if let Some(r) = &self.head.root {
            v.extend_from_slice(r.tree.as_bytes());
            for x in [r.files, r.bytes, r.generation] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        if let Some((d, files, bytes)) = &self.head.tree {
            v.extend_from_slice(d.as_bytes());
            for x in [files, bytes] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        v.extend_from_slice(&(self.subdirs.len() as u32).to_le_bytes());
        for name in &self.subdirs {
            let len = u16::try_from(name.len()).expect("names are at most 255 bytes");
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(name);
        }
        for (name, r) in &self.files {
            let len = u16::try_from(name.len()).expect("names are at most 255 bytes");
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(name);
            put_meta(&mut v, &r.meta);
            v.push(r.racy as u8);
            v.extend_from_slice(&r.generation.to_le_bytes());
            v.extend_from_slice(r.digest.as_bytes());
        }
        v
    }

    /// None: not a record this version wrote (or damaged).
    pub fn decode(b: &[u8]) -> Option<DirRec> {
        let v = DirView::parse(b)?;
        let files = v.files().collect::<Option<Vec<_>>>()?;
        let files: Vec<_> = files.into_iter().map(|(n, r)| (n.to_vec(), r)).collect();
        // Sorted and unique, or it is not ours.
        if files.windows(2).any(|w| w[0].0 >= w[1].0) || v.subdirs.windows(2).any(|w| w[0] >= w[1])
        {
            return None;
        }
        Some(DirRec {
            head: v.head,
            subdirs: v.subdirs.iter().map(|n| n.to_vec()).collect(),
            files,
        })
    }
}

/// A record read in place: its header and subdirectories parsed, its files
/// parsed as they are iterated (a rescan's check allocates nothing per file).
pub(crate) struct DirView<'b> {
    pub head: Head,
    pub subdirs: Vec<&'b [u8]>,
    files: &'b [u8],
}

/// A name a record may hold: one path component (see `Tree`).
fn valid_name(n: &[u8]) -> bool {
    crate::store::tree::name_problem(n).is_none()
}

impl<'b> DirView<'b> {
    pub fn parse(b: &'b [u8]) -> Option<DirView<'b>> {
        let mut r = Reader(b);
        if r.u8()? != VERSION {
            return None;
        }
        let flags = r.u8()?;
        let dir = if flags & F_DIR != 0 {
            Some(r.meta()?)
        } else {
            None
        };
        let mut ignore = [None; 2];
        for m in &mut ignore {
            let present = r.u8()? == 1;
            let meta = r.meta()?;
            *m = present.then_some(meta);
        }
        let root = if flags & F_ROOT != 0 {
            Some(RootInfo {
                tree: Digest::from_slice(r.take(32)?)?,
                files: r.u64()?,
                bytes: r.u64()?,
                generation: r.u64()?,
            })
        } else {
            None
        };
        let tree = if flags & F_TREE != 0 {
            Some((Digest::from_slice(r.take(32)?)?, r.u64()?, r.u64()?))
        } else {
            None
        };
        let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let mut subdirs = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let len = r.u16()?;
            let name = r.take(len)?;
            if !valid_name(name) {
                return None;
            }
            subdirs.push(name);
        }
        Some(DirView {
            head: Head {
                dir,
                dir_racy: flags & F_DIR_RACY != 0,
                complete: flags & F_COMPLETE != 0,
                ignore,
                root,
                tree,
            },
            subdirs,
            files: r.0,
        })
    }

    /// The files, in record order; a None item: the rest is damaged.
    pub fn files(&self) -> impl Iterator<Item = Option<(&'b [u8], FileRec)>> + 'b {
        let mut r = Reader(self.files);
        let mut broken = false;
        std::iter::from_fn(move || {
            if broken || r.0.is_empty() {
                return None;
            }
            let item = (|| {
                let len = r.u16()?;
                let name = r.take(len)?;
                let meta = r.meta()?;
                let racy = r.u8()? == 1;
                let generation = r.u64()?;
                let digest = Digest::from_slice(r.take(32)?)?;
                valid_name(name).then_some((
                    name,
                    FileRec {
                        meta,
                        racy,
                        generation,
                        digest,
                    },
                ))
            })();
            broken = item.is_none();
            Some(item)
        })
    }
}

/// The index key of a directory's record: root id ‖ path relative to the
/// root (empty for the root itself).
pub(crate) fn key(root_id: &[u8; 16], rel_dir: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + rel_dir.len());
    k.extend_from_slice(root_id);
    k.extend_from_slice(rel_dir);
    k
}

/// The records of one root, loaded on first use and shared by the walker
/// threads.
pub(crate) struct StatCache<'a> {
    index: &'a Index,
    root_id: [u8; 16],
    loaded: Mutex<HashMap<Vec<u8>, Arc<DirRec>>>,
    /// Index writes collected by `record` and `unlisted`, for `apply`.
    ops: Mutex<Vec<Op>>,
}

/// An index write: a put (Some) or a delete (None), by key (`apply`
/// returns them by relative directory).
pub(crate) type Op = (Vec<u8>, Option<Vec<u8>>);

impl<'a> StatCache<'a> {
    pub fn new(index: &'a Index, root_id: &[u8; 16]) -> StatCache<'a> {
        StatCache {
            index,
            root_id: *root_id,
            loaded: Mutex::new(HashMap::new()),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// The record of `rel_dir` (empty if there is none).
    pub fn dir(&self, rel_dir: &[u8]) -> crate::index::Result<Arc<DirRec>> {
        if let Some(r) = lock(&self.loaded).get(rel_dir) {
            return Ok(r.clone());
        }
        let rec = self
            .index
            .stat_get(&key(&self.root_id, rel_dir))?
            .and_then(|b| DirRec::decode(&b))
            .unwrap_or_default();
        let rec = Arc::new(rec);
        lock(&self.loaded).insert(rel_dir.to_vec(), rec.clone());
        Ok(rec)
    }

    /// The index writes that record directory `rel_dir` as a walk listed
    /// it: `entries` its tree's (sorted), `seen` its stats from before the
    /// listing, `found` the files the walk examined in it, `root` (for the
    /// root only) the whole walk's result. Files the walk kept from a
    /// previous tree keep their records (if they name the same digest).
    /// Subdirectories gone from the tree lose their records.
    pub fn record(
        &self,
        rel_dir: &[u8],
        listing: Listing<'_>,
        found: Vec<(Vec<u8>, FileRec)>,
        root: Option<RootInfo>,
        scan_start: i64,
    ) -> crate::index::Result<()> {
        let Listing {
            entries,
            seen,
            tree,
        } = listing;
        let old = self.dir(rel_dir)?;
        let mut ops = lock(&self.ops);
        let mut found = found;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let mut new = DirRec {
            head: Head {
                dir: seen.dir,
                dir_racy: seen.dir.is_none_or(|m| m.racy(scan_start)),
                complete: true,
                ignore: seen.ignore,
                root,
                tree: Some(tree),
            },
            subdirs: Vec::new(),
            files: Vec::new(),
        };
        for e in entries {
            match &e.node {
                Node::Dir { .. } => new.subdirs.push(e.name.clone()),
                Node::File { digest, .. } => {
                    let rec = match found.binary_search_by(|(n, _)| n.cmp(&e.name)) {
                        Ok(i) => Some(found[i].1),
                        Err(_) => old.get(&e.name).copied(),
                    };
                    match rec.filter(|r| r.digest == *digest) {
                        Some(r) => new.files.push((e.name.clone(), r)),
                        None => new.head.complete = false,
                    }
                }
                Node::Symlink { .. } => {}
            }
        }
        for gone in old
            .subdirs
            .iter()
            .filter(|d| new.subdirs.binary_search(d).is_err())
        {
            let mut k = key(&self.root_id, rel_dir);
            if !rel_dir.is_empty() {
                k.push(b'/');
            }
            k.extend_from_slice(gone);
            ops.push((k.clone(), None));
            k.push(b'/');
            ops.extend(self.index.stat_keys(&k)?.into_iter().map(|k| (k, None)));
        }
        if new != *old {
            ops.push((key(&self.root_id, rel_dir), Some(new.encode())));
        }
        Ok(())
    }

    /// After a full walk: the writes that remove the records of directories
    /// it did not list (gone, or now ignored or skipped).
    pub fn unlisted(
        &self,
        listed: &std::collections::HashSet<Vec<u8>>,
    ) -> crate::index::Result<()> {
        let mut ops = lock(&self.ops);
        for k in self.index.stat_keys(&self.root_id)? {
            if !listed.contains(&k[16..]) {
                ops.push((k, None));
            }
        }
        Ok(())
    }

    /// Make the writes `record` and `unlisted` collected.
    /// Returns them (relative directory, record or None for a removal).
    pub fn apply(&self) -> crate::index::Result<Vec<Op>> {
        let ops = std::mem::take(&mut *lock(&self.ops));
        // NB: nothing to write, nothing written: an empty batch still
        // appends to sled's log, which the flush after a rescan that
        // changed nothing would then fsync.
        if ops.is_empty() {
            return Ok(ops);
        }
        self.index.stat_apply(ops.clone())?;
        Ok(ops
            .into_iter()
            .map(|(k, v)| (k[16..].to_vec(), v))
            .collect())
    }

    /// Check the records against the disk (see the module doc): None when
    /// they cannot vouch for anything (no complete root record of the
    /// current blob generation), else the recorded
    /// result and what differs from it now.
    pub fn validate(
        &self,
        root: &Path,
        generation: u64,
        threads: usize,
    ) -> crate::index::Result<Option<Validated>> {
        let raw = self.index.stat_scan(&self.root_id)?;
        let recs: HashMap<&[u8], DirView> = raw
            .iter()
            .filter_map(|(k, v)| Some((&k[16..], DirView::parse(v)?)))
            .collect();
        Ok(check(&recs, root, generation, threads))
    }

    /// The root's record as the index holds it (raw), if any.
    pub fn root_record(&self) -> crate::index::Result<Option<Vec<u8>>> {
        self.index.stat_get(&key(&self.root_id, b""))
    }

    /// Write every record of this root to its copy under `<store>/statcache/`
    /// (see `Copy`). Best effort: without it, the next sync reads the index.
    pub fn write_copy(&self, store: &Path) {
        let Ok(raw) = self.index.stat_scan(&self.root_id) else {
            return;
        };
        let recs: Vec<(&[u8], &[u8])> = raw.iter().map(|(k, v)| (&k[16..], &v[..])).collect();
        write_copy_file(store, &self.root_id, &recs);
    }

    /// `write_copy` from the copy this sync validated, `base`, with the
    /// writes `apply` made on top: no scan of the index. (What `base` was
    /// behind the index in stays behind: that only marks paths dirty.)
    pub fn write_copy_over(&self, store: &Path, base: &Copy, applied: &[Op]) {
        let mut m: std::collections::BTreeMap<&[u8], &[u8]> = base.records().collect();
        for (k, v) in applied {
            match v {
                Some(v) => {
                    m.insert(k, v);
                }
                None => {
                    m.remove(&k[..]);
                }
            }
        }
        let recs: Vec<(&[u8], &[u8])> = m.into_iter().collect();
        write_copy_file(store, &self.root_id, &recs);
    }
}

/// Write a root's records (relative directory, record; in key order) as its
/// copy. Best effort.
fn write_copy_file(store: &Path, root_id: &[u8; 16], raw: &[(&[u8], &[u8])]) {
    use std::io::Write;
    let path = copy_path(store, root_id);
    let Some(dir) = path.parent() else { return };
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        // NB: streamed and hashed as written: no second copy in memory.
        let mut h = blake3::Hasher::new();
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let mut put = |b: &[u8]| -> std::io::Result<()> {
            h.update(b);
            w.write_all(b)
        };
        put(COPY_MAGIC)?;
        put(&(raw.len() as u64).to_le_bytes())?;
        for (rel, v) in raw {
            put(&(rel.len() as u32).to_le_bytes())?;
            put(rel)?;
            put(&(v.len() as u32).to_le_bytes())?;
            put(v)?;
        }
        w.write_all(h.finalize().as_bytes())?;
        w.into_inner().map_err(|e| e.into_error())?;
        // NB: the old copy is unlinked first, so the rename replaces
        // nothing: ext4 flushes a file renamed over another at once
        // (auto_da_alloc), which this cache does not need.
        let _ = std::fs::remove_file(&path);
        std::fs::rename(&tmp, &path)
    };
    if write().is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The validation itself (`StatCache::validate`), over records however read.
fn check(
    recs: &HashMap<&[u8], DirView>,
    root: &Path,
    generation: u64,
    threads: usize,
) -> Option<Validated> {
    let base = match recs.get(&b""[..]).and_then(|r| r.head.root) {
        // NB: blobs are removed only after the generation is raised, so
        // the recorded tree is still stored (no lookup: with packs, the
        // first lookup loads their indexes).
        Some(b) if b.generation == generation => b,
        _ => return None,
    };
    // The directories reachable from the root's record.
    let mut dirty = Dirty::default();
    let mut list: Vec<(PathBuf, &DirView)> = Vec::new();
    let mut totals = Vec::new();
    let mut stack = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(std::ffi::OsStr::from_bytes(&rel))
        };
        let Some(rec) = recs.get(rel.as_slice()) else {
            dirty.mark(abs, true);
            continue;
        };
        for s in &rec.subdirs {
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(s);
            stack.push(r);
        }
        if let Some((d, files, bytes)) = rec.head.tree {
            totals.push((d, (files, bytes)));
        }
        list.push((abs, rec));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let checked = std::sync::atomic::AtomicU64::new(0);
    let found: Mutex<Dirty> = Mutex::new(Dirty::default());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, 16) {
            s.spawn(|| {
                let mut mine = Dirty::default();
                let mut ok = 0u64;
                loop {
                    let i = next.fetch_add(16, std::sync::atomic::Ordering::Relaxed);
                    let Some(chunk) = list.get(i..(i + 16).min(list.len())) else {
                        break;
                    };
                    if chunk.is_empty() {
                        break;
                    }
                    for (abs, rec) in chunk {
                        ok += check_dir(abs, rec, &mut mine);
                    }
                }
                lock(&found).merge(mine);
                checked.fetch_add(ok, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    dirty.merge(found.into_inner().unwrap_or_else(|p| p.into_inner()));
    Some(Validated {
        base,
        dirty,
        checked: checked.into_inner(),
        totals,
    })
}

/// A copy of one root's records in a plain file, `<store>/statcache/<root
/// id>`, that a one-shot `dagfs sync` validates against the disk *while*
/// it opens the index (sled's open is most of a rescan's fixed cost). The
/// index stays the truth: the copy's result is used only if its root record
/// is byte for byte the index's (`Copy::agrees`). That is enough: every
/// change of content changes the root's tree digest, so equal root
/// records mean equal trees; a copy behind the index in anything else (a
/// file's stat after a touch) can only mark more paths dirty, which are
/// then read again, never fewer. Layout: magic, count (u64 LE), per
/// record: relative directory (u32 length, bytes), record (u32 length,
/// bytes); then the BLAKE3 of everything before. Written with a rename and
/// no fsync: a torn or lost copy fails its checksum or disagrees.
pub(crate) struct Copy {
    /// The file, and where its records lie in it: (relative directory,
    /// record) as (start, end) pairs, in key order. NB: not copied out on
    /// the way to a result (this is a rescan's critical path).
    bytes: Vec<u8>,
    spans: Vec<[usize; 4]>,
    root_record: Vec<u8>,
    generation: u64,
    pub validated: Option<Validated>,
    /// When the validation ended.
    done: std::time::Instant,
}

/// How old a copy's validation may be when it is used: it stands for the
/// disk as it was then (a sync that waited for the store lock validates
/// again).
const COPY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

const COPY_MAGIC: &[u8; 16] = b"dagfs-statcopy1\n";

fn copy_path(store: &Path, root_id: &[u8; 16]) -> PathBuf {
    store.join("statcache").join(crate::hash::to_hex(root_id))
}

impl Copy {
    /// Read the copy for `root_id` in store `store` (not opened: no lock
    /// is held) and validate it against `root`. None if there is no copy,
    /// it is damaged, or it cannot vouch for anything.
    pub fn validate(store: &Path, root: &Path, root_id: &[u8; 16], threads: usize) -> Option<Copy> {
        let b = std::fs::read(copy_path(store, root_id)).ok()?;
        if b.len() < COPY_MAGIC.len() + 8 + 32 || &b[..16] != COPY_MAGIC {
            return None;
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return None;
        }
        let count = u64::from_le_bytes(body[16..24].try_into().ok()?);
        let mut r = &body[24..];
        fn take<'b>(r: &mut &'b [u8]) -> Option<&'b [u8]> {
            let n = u32::from_le_bytes(r.get(..4)?.try_into().ok()?) as usize;
            let v = r.get(4..4usize.checked_add(n)?)?;
            *r = &r[4 + n..];
            Some(v)
        }
        let mut raw = Vec::new();
        for _ in 0..count {
            let k = take(&mut r)?;
            let v = take(&mut r)?;
            raw.push((k, v));
        }
        if !r.is_empty() {
            return None;
        }
        let generation = crate::store::read_blob_generation(store).ok()?;
        let root_record = raw.iter().find(|(k, _)| k.is_empty())?.1.to_vec();
        let recs: HashMap<&[u8], DirView> = raw
            .iter()
            .filter_map(|(k, v)| Some((*k, DirView::parse(v)?)))
            .collect();
        let validated = check(&recs, root, generation, threads)?;
        let at = |s: &[u8]| s.as_ptr() as usize - b.as_ptr() as usize;
        let spans = raw
            .iter()
            .map(|(k, v)| [at(k), at(k) + k.len(), at(v), at(v) + v.len()])
            .collect();
        drop(recs);
        drop(raw);
        Some(Copy {
            bytes: b,
            spans,
            root_record,
            generation,
            validated: Some(validated),
            done: std::time::Instant::now(),
        })
    }

    /// Its records: (relative directory, record), in key order.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .map(|s| (&self.bytes[s[0]..s[1]], &self.bytes[s[2]..s[3]]))
    }

    /// Does the index agree (see the type's doc), and is the validation
    /// recent (`COPY_MAX_AGE`)?
    pub fn agrees(&self, root_record: Option<&[u8]>, generation: u64) -> bool {
        self.generation == generation
            && root_record == Some(self.root_record.as_slice())
            && self.done.elapsed() <= COPY_MAX_AGE
    }
}

/// A directory as a walk listed it, for `StatCache::record`.
pub(crate) struct Listing<'e> {
    /// Its tree's entries, sorted.
    pub entries: &'e [TreeEntry],
    /// Its stats from before the listing.
    pub seen: Seen,
    /// Its tree: (digest, files, bytes).
    pub tree: (Digest, u64, u64),
}

/// What `validate` found.
pub(crate) struct Validated {
    /// The result of the walk that wrote the records.
    pub base: RootInfo,
    /// What differs from it now.
    pub dirty: Dirty,
    /// Files whose stat matched.
    pub checked: u64,
    /// (files, bytes) of each recorded directory's tree, by digest (a
    /// tree's totals never change): an incremental walk need not read the
    /// subtrees it keeps to count them.
    pub totals: Vec<(Digest, (u64, u64))>,
}

/// A directory's stats as a walk saw them just before listing it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen {
    pub dir: Option<Meta>,
    pub ignore: [Option<Meta>; 2],
}

impl Seen {
    /// `lstat` of `dir` and of its ignore files.
    pub fn of(dir: &Path) -> Seen {
        let meta = |p: &Path| std::fs::symlink_metadata(p).ok().map(|m| Meta::of(&m));
        Seen {
            dir: meta(dir).filter(|m| m.mode & libc::S_IFMT == libc::S_IFDIR),
            ignore: IGNORE_FILES.map(|n| meta(&dir.join(n))),
        }
    }
}

/// Check one directory's record against the disk, marking what differs in
/// `dirty`; returns how many of its files matched.
fn check_dir(abs: &Path, rec: &DirView, dirty: &mut Dirty) -> u64 {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let fd = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(abs)
    {
        Ok(f) => f,
        Err(_) => {
            // Gone or replaced: its parent's stat has changed too.
            dirty.mark(abs.to_path_buf(), true);
            return 0;
        }
    };
    let stat = |name: &[u8]| {
        nix::sys::stat::fstatat(
            Some(fd.as_raw_fd()),
            std::ffi::OsStr::from_bytes(name),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()
        .map(|st| Meta::of_stat(&st))
    };
    let now = nix::sys::stat::fstat(fd.as_raw_fd())
        .ok()
        .map(|st| Meta::of_stat(&st));
    let head = &rec.head;
    let same_names = !(head.dir.is_none() || head.dir_racy || now != head.dir);
    if !same_names {
        dirty.mark(abs.to_path_buf(), false);
    }
    if !head.complete {
        dirty.mark(abs.to_path_buf(), true);
    }
    for (name, was) in IGNORE_FILES.iter().zip(&head.ignore) {
        // NB: no name appears in a directory without changing its mtime,
        // so an ignore file that was absent still is.
        if was.is_none() && same_names {
            continue;
        }
        if stat(name.as_bytes()) != *was {
            dirty.mark(abs.join(name), false);
        }
    }
    let mut ok = 0;
    for f in rec.files() {
        let Some((name, r)) = f else {
            // Damaged: whatever it held is examined again.
            dirty.mark(abs.to_path_buf(), true);
            break;
        };
        if !r.racy && stat(name) == Some(r.meta) {
            ok += 1;
        } else {
            dirty.mark(abs.join(std::ffi::OsStr::from_bytes(name)), false);
        }
    }
    ok
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> FileRec {
        FileRec {
            meta: Meta {
                dev: i,
                ino: i + 1,
                size: i + 2,
                mtime_ns: -(i as i64),
                ctime_ns: i as i64 * 7,
                mode: 0o100644,
            },
            racy: i.is_multiple_of(2),
            generation: i * 3,
            digest: Digest::of(&i.to_le_bytes()),
        }
    }

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let mut d = DirRec {
            head: Head {
                dir: Some(rec(5).meta),
                dir_racy: true,
                complete: true,
                ignore: [None, Some(rec(6).meta)],
                root: Some(RootInfo {
                    tree: Digest::of(b"t"),
                    files: 3,
                    bytes: 99,
                    generation: 4,
                }),
                tree: Some((Digest::of(b"u"), 7, 8)),
            },
            subdirs: vec![b"x".to_vec(), vec![0xfe; 255]],
            files: vec![
                (b"a".to_vec(), rec(1)),
                (b"b".to_vec(), rec(3)),
                (vec![0xff; 255], rec(9)),
            ],
        };
        assert_eq!(d.get(b"b"), Some(&rec(3)));
        assert_eq!(d.get(b"c"), None);
        let b = d.encode();
        assert_eq!(DirRec::decode(&b), Some(d.clone()));
        // A cut inside the header or a file's fields is refused; one between
        // files reads as fewer files (hashed again): never as other data.
        for cut in 0..b.len() {
            if let Some(got) = DirRec::decode(&b[..cut]) {
                assert!(d.files.starts_with(&got.files), "cut at {cut}");
                assert_eq!((got.head, &got.subdirs), (d.head, &d.subdirs));
            }
        }
        let mut other = b.clone();
        other[0] = 1;
        assert_eq!(DirRec::decode(&other), None);
        d.files.swap(0, 1);
        assert_eq!(DirRec::decode(&d.encode()), None, "unsorted");
        let empty = DirRec::default();
        assert_eq!(DirRec::decode(&empty.encode()), Some(empty));
    }
}
