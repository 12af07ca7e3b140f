//! The stat cache's copy in a plain file (`DiskCopy`): what a one-shot
//! `dagfs sync` validates while the index opens. Layout and write order
//! below, beside the codec.

use super::*;

/// A copy of one root's records in a plain file, `<store>/statcache/<root
/// id>`, that a one-shot `dagfs sync` validates against the disk *while*
/// it opens the index (sled's open is most of a rescan's fixed cost). The
/// index stays the truth: the copy's result is used only if its root record
/// is byte for byte the index's (`DiskCopy::agrees`). That is enough: every
/// change of content changes the root's tree digest, so equal root
/// records mean equal trees; a copy behind the index in anything else (a
/// file's stat after a touch) can only mark more paths dirty, which are
/// then read again, never fewer. Layout: magic, count (u64 LE), per
/// record: relative directory (u32 length, bytes), record (u32 length,
/// bytes); then the BLAKE3 of everything before. Written with a rename and
/// no fsync: a torn or lost copy fails its checksum or disagrees.
pub(crate) struct DiskCopy {
    /// The file, and where its records lie in it: (relative directory,
    /// record) as (start, end) pairs, in key order. NB: not copied out on
    /// the way to a result (this is a rescan's critical path); mapped, not
    /// read: reading 10 MB (100,000 files) into memory took 7.5-8 ms here,
    /// mapping it with its pages populated 0.8 ms. The file is only ever
    /// replaced by a rename, never changed in place.
    bytes: memmap2::Mmap,
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

impl DiskCopy {
    /// Read the copy for `root_id` in store `store` (not opened: no lock
    /// is held) and validate it against `root`. None if there is no copy,
    /// it is damaged, or it cannot vouch for anything.
    pub fn validate(
        store: &Path,
        root: &Path,
        root_id: &[u8; 16],
        threads: usize,
    ) -> Option<DiskCopy> {
        let f = std::fs::File::open(copy_path(store, root_id)).ok()?;
        // SAFETY: a private read-only mapping of a file this store replaces
        // only by rename (see `bytes`).
        let b = unsafe { memmap2::MmapOptions::new().populate().map(&f) }.ok()?;
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
        Some(DiskCopy {
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

/// Write a root's records (relative directory, record; in key order) as its
/// copy. Best effort.
pub(super) fn write_copy_file(store: &Path, root_id: &[u8; 16], raw: &[(&[u8], &[u8])]) {
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
