//! Committing to a store: staging blobs and entry records under `tmp/`
//! (`Staged`), making them durable and renaming them into place
//! (`commit_blobs`, `publish_entries`, see the write order in `store`'s
//! header), packs in and out, and the durability barrier (`barrier`: one
//! shared `syncfs` for concurrent callers).

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{IoContext, Result, StoreError};
use super::*;

/// A commit of at most this many loose blobs (and no packs) is
/// `commit_few`'s: fsyncs of each file and directory instead of the
/// whole filesystem, unless the system has little dirty data.
const FSYNC_EACH: usize = 8;

/// Dirty and writeback bytes on the whole system at most this, and a few
/// blobs are made durable by `syncfs` (`Store::commit_few`). A `syncfs`
/// here costs about 0.1 ms plus 0.37 ms a MiB it writes; fsyncs file by
/// file, 1.1 to 1.4 ms for a one-file change.
const QUIET_DIRTY: u64 = 2 << 20;

/// Group commit state for `Store::barrier`.
#[derive(Debug, Default)]
pub(super) struct BarrierGate {
    state: std::sync::Mutex<GateState>,
    cv: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    started: u64,
    completed: u64,
    running: bool,
}

/// Work staged under `tmp/` that `Store::commit` moves into `blobs/` and
/// `entries/` in crash-safe order.
#[derive(Debug, Default)]
pub struct Staged {
    blobs: Vec<StagedBlob>,
    entries: Vec<(PathBuf, Digest)>,
    /// Digests staged (by `stage_bytes` or `stage_file`), so identical
    /// content (two empty directories of one output, say) is staged once.
    bytes_staged: std::collections::HashSet<Digest>,
    /// Small blobs from `stage_bytes`, appended to packs (see `pack`).
    packs: Vec<pack::PackWriter>,
    /// Whose staging this is: blobs found stored are held for it (see
    /// `holds`).
    pub(crate) holder: Option<u64>,
}

impl Staged {
    /// A staging whose blobs found stored are held for `holder` until it
    /// is released (`Store::stored_for`).
    pub fn held_by(holder: u64) -> Staged {
        Staged {
            holder: Some(holder),
            ..Staged::default()
        }
    }
}

#[derive(Debug)]
struct StagedBlob {
    tmp: PathBuf,
    digest: Digest,
    /// (dev, ino) of the file as it was hashed, for files taken over in place.
    inode: Option<(u64, u64)>,
    /// Created by the store with its final mode (0444) already.
    read_only: bool,
}

impl Staged {
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.entries.is_empty() && self.packs.iter().all(|p| p.len() == 0)
    }
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Whether blob `d` is staged in this batch already.
    pub(crate) fn has_digest(&self, d: &Digest) -> bool {
        self.bytes_staged.contains(d)
    }

    /// Move every staged blob file into `dir` (same filesystem, under
    /// `tmp/`), named `<prefix>-<n>`: the directory it was staged in can then
    /// be reused while the blobs wait for a batched `Store::commit_blobs`.
    /// A rename keeps the inode, so the take-over check still holds.
    pub fn relocate(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        for (n, b) in self.blobs.iter_mut().enumerate() {
            let to = dir.join(format!("{prefix}-{n}"));
            fs::rename(&b.tmp, &to).at(&to)?;
            b.tmp = to;
        }
        for (n, p) in self.packs.iter_mut().enumerate() {
            // NB: the writer's descriptor follows the rename; a pack still
            // in memory has no file to move.
            let to = dir.join(format!("{prefix}-pack-{n}.pack"));
            if p.on_disk() {
                fs::rename(&p.path, &to).at(&to)?;
            }
            p.path = to;
        }
        Ok(())
    }

    /// Add `other`'s blobs and entries to this batch.
    pub fn append(&mut self, other: Staged) {
        self.blobs.extend(other.blobs);
        self.entries.extend(other.entries);
        self.packs.extend(other.packs);
    }

    /// Take the staged entry records out (for `Store::publish_entries`).
    pub fn take_entries(&mut self) -> Vec<(PathBuf, Digest)> {
        std::mem::take(&mut self.entries)
    }

    /// Where each blob of this staging can be read before its commit (see
    /// `unsynced`): a loose one's file, a packed one's bytes. None when a
    /// pack has spilled to its file: its bytes are not copied into memory
    /// (a pack holds at most `SPILL`, 1 MiB, there), and the commit may
    /// rewrite it loose or merge it before its blobs are published.
    pub fn readable(&self) -> Option<Vec<(Digest, unsynced::Source)>> {
        let mut out: Vec<_> = self
            .blobs
            .iter()
            .map(|b| (b.digest, unsynced::Source::File(b.tmp.clone())))
            .collect();
        for p in &self.packs {
            for (d, bytes) in p.in_memory()? {
                out.push((d, unsynced::Source::Bytes(bytes.into())));
            }
        }
        Some(out)
    }
}

impl Store {
    /// Stage `bytes` as a blob: written under `dir` (inside `tmp/`) unless the
    /// blob already exists. Durable only after `commit`.
    pub fn stage_bytes(&self, dir: &Path, bytes: &[u8], staged: &mut Staged) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if staged.bytes_staged.contains(&digest) || self.stored_for(staged, &digest) {
            return Ok(digest);
        }
        staged.bytes_staged.insert(digest);
        self.writable()?;
        if bytes.len() <= pack::MAX_PACKED {
            if staged.packs.is_empty() {
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = dir.join(format!("pack-{n}.pack"));
                staged.packs.push(pack::PackWriter::create(path)?);
            }
            let w = staged.packs.last_mut().expect("just made");
            w.add(digest, bytes)?;
        } else {
            stage_loose(dir, digest, bytes, staged)?;
        }
        Ok(digest)
    }

    /// Stage a file already under `tmp/` to be renamed into `blobs/`.
    pub(crate) fn stage_file(
        &self,
        tmp: PathBuf,
        digest: Digest,
        inode: Option<(u64, u64)>,
        staged: &mut Staged,
    ) {
        staged.bytes_staged.insert(digest);
        staged.blobs.push(StagedBlob {
            tmp,
            digest,
            inode,
            read_only: false,
        });
    }

    /// Stage an entry record (written under `dir`).
    pub fn stage_entry(&self, dir: &Path, entry: &Entry, staged: &mut Staged) -> Result<()> {
        let tmp = dir.join(format!("entry-{}", entry.key.to_hex()));
        fs::write(&tmp, entry.to_json()).at(&tmp)?;
        staged.entries.push((tmp, entry.key));
        Ok(())
    }

    /// Make staged work durable and visible, in the order described in the
    /// module doc. On return every staged blob and entry is durable.
    pub fn commit(&self, staged: Staged) -> Result<()> {
        let (entries, pending) = self.commit_blobs_pending(staged)?;
        if entries.is_empty() && pending {
            // NB: names published after the data barrier, durable too.
            self.barrier()?;
        }
        self.publish_entries(&entries, |_| true)
    }

    /// Tests only: make `commit_few` take `syncfs` (true) or fsync file by
    /// file (false), whatever the system's dirty data.
    #[cfg(test)]
    pub(crate) fn force_few_by_syncfs(&self, syncfs: bool) {
        let by = if syncfs { 1 } else { 2 };
        self.few_by.store(by, std::sync::atomic::Ordering::Relaxed);
    }

    /// `commit` of a batch without entry records (a sync's blobs), except
    /// that names only the next `barrier` makes durable (a large batch's,
    /// or a few blobs' on a quiet system: `commit_few`) are left to the
    /// caller's (returns true then): one flush then also covers what the
    /// caller writes meanwhile (a sync's stamps, before its log names the
    /// snapshot).
    pub fn commit_leaving_names(&self, staged: Staged) -> Result<bool> {
        let (entries, pending) = self.commit_blobs_pending(staged)?;
        if entries.is_empty() {
            return Ok(pending);
        }
        self.publish_entries(&entries, |_| true)?;
        Ok(false)
    }

    /// First half of `commit`: make staged blobs durable and visible (their
    /// names may wait for the next `barrier`, which `publish_entries` and
    /// `barrier_if_changed` take). Returns the staged entry records, to be
    /// given to `publish_entries` (callers batch those, so one `syncfs`
    /// covers many entries).
    ///
    /// A commit that leaves more than `AUTO_PACK_LIMIT` packs then merges
    /// packs (`consolidate_packs`), as `git gc --auto` does.
    pub fn commit_blobs(&self, staged: Staged) -> Result<Vec<(PathBuf, Digest)>> {
        Ok(self.commit_blobs_pending(staged)?.0)
    }

    /// `commit_blobs`, and whether names it published may not be durable
    /// yet (a batch too large to fsync file by file, or a few blobs on a
    /// quiet system: its data was made durable by a `syncfs` before the
    /// renames, the names wait for the next one; `note_change` marks them).
    fn commit_blobs_pending(&self, staged: Staged) -> Result<(Vec<(PathBuf, Digest)>, bool)> {
        let packed = !staged.packs.is_empty();
        let r = self.commit_blobs_now(staged)?;
        if packed {
            // NB: a merge is an optimisation of what is already durable
            // and published: one that fails (a pack that does not open
            // now, a full disk) leaves the packs as they were, and the
            // next commit tries again. Failing the commit would fail a
            // run or sync whose blobs are stored.
            if let Err(e) = self.consolidate_packs() {
                log::warn!(
                    "packs were not merged after a commit (the next commit tries again): {e}"
                );
            }
        }
        Ok(r)
    }

    /// More packs than this after a commit and it merges them: a blob lookup
    /// searches each pack's index in turn, and an open maps every index.
    pub const AUTO_PACK_LIMIT: usize = 32;

    /// Merge packs once there are more than `AUTO_PACK_LIMIT`: every pack
    /// but the largest when that one holds at least half of the packed
    /// bytes (so a big pack is not rewritten for a few small ones: the
    /// bytes rewritten stay proportional to what was added, as in git's
    /// geometric repack), else all of them. The merged pack is durable
    /// before the blob generation is raised and the old packs are removed,
    /// as `repack` does; a crash in between leaves blobs in two packs,
    /// which the next merge folds. Every blob is checked against its digest
    /// on the way: on a mismatch nothing is merged (fsck names the damage),
    /// so a merge never spreads or loses bytes. Returns whether it merged.
    pub(crate) fn consolidate_packs(&self) -> Result<bool> {
        if self.packs.all().len() <= Self::AUTO_PACK_LIMIT {
            return Ok(false);
        }
        // NB: a merge running on another thread does this one's work.
        let Ok(_merging) = self.merging.try_lock() else {
            return Ok(false);
        };
        // NB: only now are the indexes checked whole (not at every commit).
        let all = self.packs.checked()?;
        if all.len() <= Self::AUTO_PACK_LIMIT {
            return Ok(false);
        }
        let total: u64 = all.iter().map(|p| p.size()).sum();
        let mut merge = all;
        merge.sort_by_key(|p| std::cmp::Reverse(p.size()));
        if merge[0].size().saturating_mul(2) >= total {
            merge.remove(0);
        }
        let work = self.tempdir("repack-")?;
        let mut w = pack::PackWriter::create(work.path().join("merged.pack"))?;
        let mut seen = std::collections::HashSet::new();
        for p in &merge {
            let path = p.pack_path(&self.packs.dir);
            for (d, off, len) in p.rows() {
                if !seen.insert(d) {
                    continue;
                }
                let bytes = p.read_raw(off, len).at(&path)?;
                if Digest::of(&bytes) != d {
                    let _ = fs::remove_file(&w.path);
                    return Ok(false);
                }
                w.add(d, &bytes)?;
            }
        }
        let mut staged = Staged::default();
        staged.packs.push(w);
        self.commit_blobs_now(staged)?;
        // NB: the merged names durable before the old ones go.
        self.barrier()?;
        self.new_blob_generation()?;
        for p in &merge {
            self.remove_pack(&p.id)?;
        }
        Ok(true)
    }

    /// `commit_blobs_pending` without merging packs after it.
    fn commit_blobs_now(&self, mut staged: Staged) -> Result<(Vec<(PathBuf, Digest)>, bool)> {
        if !staged.blobs.is_empty() || !staged.packs.is_empty() {
            self.writable()?;
        }
        let mut finished = Vec::new();
        let mut full = Vec::new();
        for w in merge_small_packs(std::mem::take(&mut staged.packs))? {
            if w.len() == 0 {
                let _ = fs::remove_file(&w.path);
            } else if w.len() >= pack::MIN_PACK {
                full.push(w);
            } else {
                // Too few to be worth a pack: loose files.
                let dir = w.path.parent().map(Path::to_path_buf).unwrap_or_default();
                for (digest, bytes) in w.into_blobs()? {
                    stage_loose(&dir, digest, &bytes, &mut staged)?;
                }
            }
        }
        finished.extend(finish_packs(full)?);
        if staged.blobs.is_empty() && !finished.is_empty() {
            // Packs only: fsync just their files, where `syncfs` would wait
            // for every other writer's dirty data on the filesystem too;
            // then the renames, made durable by fsync of `packs/`.
            // NB: writeback of every file started first: a sync's walker
            // threads each finish a pack, and the disk takes them together.
            sync_files(
                finished
                    .iter()
                    .flat_map(|f| [f.pack.as_path(), f.idx.as_path()]),
            )?;
            for f in finished {
                self.publish_pack(f)?;
            }
            let dir = &self.packs.dir;
            File::open(dir).and_then(|f| f.sync_all()).at(dir)?;
        } else if finished.is_empty() && (1..=FSYNC_EACH).contains(&staged.blobs.len()) {
            let pending = self.commit_few(&staged.blobs)?;
            return Ok((staged.take_entries(), pending));
        } else if !staged.blobs.is_empty() || !finished.is_empty() {
            self.barrier()?; // NB: data durable before any name in blobs/ points at it.
            self.publish_blobs(&staged.blobs)?;
            for f in finished {
                self.publish_pack(f)?;
            }
            // NB: after the renames (see `commit_few`).
            self.note_change();
            return Ok((staged.take_entries(), true));
        }
        Ok((staged.take_entries(), false))
    }

    /// Make a few loose blobs (a watched change, a rescan that found one
    /// file changed) durable and visible without waiting for much of
    /// anyone else's dirty data. On a quiet system (`host::dirty_bytes` at
    /// most `QUIET_DIRTY`): a `barrier` (data), then the names, which the
    /// next `barrier` makes durable (returns true, as a large batch's
    /// commit does). Else each file, then each shard, is fsynced (all at
    /// once), where `syncfs` would write every other writer's dirty data
    /// too: a flush each, 8 to 10 for a one-file change.
    fn commit_few(&self, blobs: &[StagedBlob]) -> Result<bool> {
        let quiet = match self.few_by.load(std::sync::atomic::Ordering::Relaxed) {
            0 => crate::host::dirty_bytes().is_some_and(|b| b <= QUIET_DIRTY),
            by => by == 1,
        };
        if quiet {
            self.barrier()?; // NB: data durable before any name points at it.
            self.publish_blobs(blobs)?;
            // NB: after the renames: a barrier that started before them
            // (and cleared the mark) did not make them durable.
            self.note_change();
            return Ok(true);
        }
        sync_files(blobs.iter().map(|b| b.tmp.as_path()))?;
        self.publish_blobs(blobs)?;
        let mut dirs: Vec<PathBuf> = blobs
            .iter()
            .filter_map(|b| self.blob_path(&b.digest).parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        // NB: `blobs/` too, unless every shard's own name is known durable:
        // a shard may have been made just now (or by a writer that died
        // before it made it durable). Its fsync makes every shard listed
        // before it durable: all are known from then on.
        let blobs_dir = self.root.join("blobs");
        let known = |d: &PathBuf| {
            self.durable_shards
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(d)
        };
        let listed = if dirs.iter().all(known) {
            None
        } else {
            let listed: Vec<PathBuf> = fs::read_dir(&blobs_dir)
                .and_then(|shards| shards.map(|e| e.map(|e| e.path())).collect())
                .at(&blobs_dir)?;
            dirs.push(blobs_dir);
            Some(listed)
        };
        sync_at_once(&dirs, |d| File::open(d).and_then(|f| f.sync_all()).at(d))?;
        if let Some(listed) = listed {
            dirs.pop(); // NB: `blobs/` itself, pushed last.
            let mut known = self
                .durable_shards
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            known.extend(listed.into_iter().chain(dirs));
        }
        Ok(false)
    }

    /// Rename a finished pack into `packs/`: the pack, then its index (its
    /// blobs exist from then on). Its bytes are durable already.
    pub(crate) fn publish_pack(&self, f: pack::FinishedPack) -> Result<()> {
        let dir = &self.packs.dir;
        fs::create_dir_all(dir).at(dir)?;
        let pack_to = dir.join(format!("{}.pack", f.id));
        let idx_to = dir.join(format!("{}.idx", f.id));
        // NB: the id names the index table, so an existing pack of that id
        // holds the same blobs at the same places.
        for (from, to) in [(&f.pack, &pack_to), (&f.idx, &idx_to)] {
            match rename_noreplace(from, to) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let _ = fs::remove_file(from);
                }
                Err(e) => {
                    return Err(StoreError::Io {
                        path: to.clone(),
                        source: e,
                    })
                }
            }
        }
        let loaded = pack::Pack::load(dir, &f.id).map_err(|b| StoreError::Corrupt {
            digest: Digest::default(),
            path: b.path,
            reason: format!("a pack just written does not load: {}", b.reason),
        })?;
        let loaded = std::sync::Arc::new(loaded);
        // NB: a pack of the same id (the same table) already in the set
        // may have lost its `.pack` (opened at first need, it then holds
        // nothing for the life of the process): the one just loaded
        // replaces it.
        self.packs.update(|l| {
            l.retain(|p| p.id != loaded.id);
            l.push(loaded);
        });
        Ok(())
    }

    /// Remove pack `id` (its index first: its blobs are gone from then on).
    /// NB: callers raise the blob generation first.
    pub(crate) fn remove_pack(&self, id: &str) -> Result<()> {
        let dir = &self.packs.dir;
        self.note_change();
        // NB: a `.pack` is opened at first need; opened now, it stays
        // readable to whoever holds this set of packs after the unlink.
        if let Some(p) = self.packs.all().iter().find(|p| p.id == id) {
            let _ = p.check();
        }
        for ext in ["idx", "pack"] {
            let p = dir.join(format!("{id}.{ext}"));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path: p, source: e }),
            }
        }
        self.packs.update(|l| l.retain(|p| p.id != id));
        Ok(())
    }

    /// Write the blobs of pack `id` that `keep` accepts into a new pack (or
    /// loose files, if few), durably, then remove the old pack. Returns the
    /// (count, bytes) dropped. NB: raises the blob generation before the
    /// old pack goes.
    pub(crate) fn repack(
        &self,
        old: &pack::Pack,
        mut keep: impl FnMut(&Digest) -> bool,
    ) -> Result<(u64, u64)> {
        let work = self.tempdir("repack-")?;
        let mut staged = Staged::default();
        let mut dropped = (0u64, 0u64);
        let old_path = old.pack_path(&self.packs.dir);
        let mut kept = 0usize;
        for (d, off, len) in old.rows() {
            if !keep(&d) {
                dropped.0 += 1;
                dropped.1 += u64::from(len);
                continue;
            }
            let bytes = old.read_raw(off, len).at(&old_path)?;
            if staged.packs.is_empty() {
                staged
                    .packs
                    .push(pack::PackWriter::create(work.path().join("repack.pack"))?);
            }
            staged.packs[0].add(d, &bytes)?;
            kept += 1;
        }
        if kept > 0 {
            self.commit_blobs_now(staged)?;
            // NB: the new names durable before the old ones go.
            self.barrier()?;
        }
        self.new_blob_generation()?;
        self.remove_pack(&old.id)?;
        Ok(dropped)
    }

    /// Second half of `commit`: one `syncfs` makes every blob name committed
    /// so far durable, then the entry records (those `keep` accepts) are
    /// renamed into `entries/`. Records not kept are deleted.
    pub fn publish_entries(
        &self,
        entries: &[(PathBuf, Digest)],
        mut keep: impl FnMut(&Digest) -> bool,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.barrier()?; // NB: blob names durable before an entry can reference them.
        let renamed = entries.iter().try_for_each(|(tmp, key)| {
            if keep(key) {
                let dst = self.entry_path(key);
                rename_into_shard(tmp, &dst, |a, b| fs::rename(a, b)).at(&dst)?;
            } else {
                let _ = fs::remove_file(tmp);
            }
            Ok(())
        });
        // NB: after the renames, those done before an error too (see
        // `remove_entry`).
        self.note_change();
        renamed
    }

    /// `publish_blob` each, on a few threads when there are many (each is
    /// a rename into one of 256 directories: they proceed in parallel).
    fn publish_blobs(&self, blobs: &[StagedBlob]) -> Result<()> {
        const PER_THREAD: usize = 512;
        let threads = crate::host::default_jobs()
            .min(4)
            .min(blobs.len() / PER_THREAD);
        if threads <= 1 {
            return blobs.iter().try_for_each(|b| self.publish_blob(b));
        }
        let chunk = blobs.len().div_ceil(threads);
        std::thread::scope(|s| {
            let workers: Vec<_> = blobs
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().try_for_each(|b| self.publish_blob(b))))
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    }

    fn publish_blob(&self, b: &StagedBlob) -> Result<()> {
        let dst = self.blob_path(&b.digest);
        if !b.read_only {
            fs::set_permissions(&b.tmp, fs::Permissions::from_mode(0o444)).at(&b.tmp)?;
        }
        match rename_into_shard(&b.tmp, &dst, rename_noreplace) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(()),
            Err(e) => {
                return Err(StoreError::Io {
                    path: dst,
                    source: e,
                })
            }
        }
        if let Some((dev, ino)) = b.inode {
            // A file taken over in place must be the very inode we hashed.
            let md = fs::symlink_metadata(&dst).at(&dst)?;
            if md.dev() != dev || md.ino() != ino || !md.is_file() {
                let _ = fs::remove_file(&dst);
                return Err(StoreError::Changed {
                    path: b.tmp.clone(),
                    what: "replaced by another file between hashing and storing".into(),
                });
            }
        }
        Ok(())
    }

    /// Replace `dst` with `bytes`, atomically and durably: written to
    /// `tmp`, fsynced, renamed over `dst`, and `dst`'s directory fsynced.
    /// Only these bytes wait for the disk, where `barrier`'s `syncfs` waits
    /// for every other writer's dirty data on the filesystem too (40 ms
    /// behind a build here, for a 12 KB sync log). For a small record
    /// whose own bytes are all that must be durable.
    pub(crate) fn replace_file(&self, tmp: &Path, dst: &Path, bytes: &[u8]) -> Result<()> {
        let mut f = File::create(tmp).at(tmp)?;
        f.write_all(bytes).and_then(|()| f.sync_data()).at(tmp)?;
        drop(f);
        fs::rename(tmp, dst).at(dst)?;
        let dir = dst.parent().unwrap_or(&self.root);
        File::open(dir).and_then(|d| d.sync_all()).at(dir)
    }

    /// Durability barrier: returns once a `syncfs` that *started after this
    /// call* has completed. Concurrent callers share one `syncfs` (group
    /// commit): a caller arriving while one runs waits for the next, which
    /// the first of the waiters issues for all of them.
    pub fn barrier(&self) -> Result<()> {
        self.changed
            .store(false, std::sync::atomic::Ordering::Release);
        let gate = &self.gate;
        let mut st = gate.state.lock().unwrap_or_else(|p| p.into_inner());
        // The first sync to start after now: the running one started too early.
        let need = st.started + 1;
        loop {
            if st.completed >= need {
                return Ok(());
            }
            if !st.running {
                st.running = true;
                st.started += 1;
                let mine = st.started;
                drop(st);
                let res = self.syncfs();
                st = gate.state.lock().unwrap_or_else(|p| p.into_inner());
                st.running = false;
                if res.is_ok() {
                    st.completed = mine;
                }
                gate.cv.notify_all();
                res?;
                continue;
            }
            st = gate.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// `barrier`, if any name in the store changed since the last one started
    /// (a command that only read pays no `syncfs`, which would also flush
    /// every other process's writes to the filesystem).
    pub fn barrier_if_changed(&self) -> Result<()> {
        if self.changed.load(std::sync::atomic::Ordering::Acquire) {
            self.barrier()?;
        }
        Ok(())
    }

    /// Note that a name in the store changed (see `barrier_if_changed`).
    pub(crate) fn note_change(&self) {
        self.changed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn syncfs(&self) -> Result<()> {
        nix::unistd::syncfs(self.root_fd.as_raw_fd()).map_err(|e| StoreError::Io {
            path: self.root.clone(),
            source: e.into(),
        })
    }

    pub fn remove_entry(&self, key: &Digest) -> Result<()> {
        let p = self.entry_path(key);
        let r = match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path: p, source: e })
            }
            _ => Ok(()),
        };
        // NB: after the unlink: a barrier that started before it could
        // clear the mark and miss it (see `commit_few`).
        self.note_change();
        r
    }

    /// Start a new blob generation, durably, before removing any blob.
    pub fn new_blob_generation(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        // NB: one writer of the temporary file at a time (this process
        // holds the store's lock, so only its threads write it).
        let _bumping = self.bumping.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.blob_generation.load(Ordering::Acquire) + 1;
        let path = self.root.join(BLOB_GENERATION);
        let tmp = self.root.join(format!("{BLOB_GENERATION}.tmp"));
        let mut f = File::create(&tmp).at(&tmp)?;
        writeln!(f, "{next}").at(&tmp)?;
        f.sync_all().at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)?;
        self.root_fd.sync_all().at(&self.root)?;
        self.blob_generation.store(next, Ordering::Release);
        Ok(())
    }
}

/// Write `bytes` (named `digest`) as a loose blob file under `dir`, staged
/// in `staged`. NB: created read-only (the descriptor still writes), which
/// saves a chmod per blob at publish, unless the umask would take bits off
/// 0444. A file of that name there already (the same content from another
/// part of the batch) is left as it is.
fn stage_loose(dir: &Path, digest: Digest, bytes: &[u8], staged: &mut Staged) -> Result<()> {
    let tmp = dir.join(format!("blob-{}", digest.to_hex()));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&tmp)
    {
        Ok(mut f) => f.write_all(bytes).at(&tmp)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => {
            return Err(StoreError::Io {
                path: tmp,
                source: e,
            })
        }
    }
    staged.blobs.push(StagedBlob {
        tmp,
        digest,
        inode: None,
        read_only: umask_keeps_0444(),
    });
    Ok(())
}

/// `rename(from, to)` by `how`, making `to`'s shard directory first if it
/// is not there yet (shards are made on first use).
fn rename_into_shard(
    from: &Path,
    to: &Path,
    how: impl Fn(&Path, &Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match how(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && from.exists() => {
            if let Some(shard) = to.parent() {
                match fs::create_dir(shard) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            how(from, to)
        }
        r => r,
    }
}

/// Finish `packs` (sort each index, write it), on as many threads as
/// there are packs and cores: a sync's walker threads each fill a pack,
/// and finishing two of 50,000 rows each took 20 ms one after the other.
fn finish_packs(packs: Vec<pack::PackWriter>) -> Result<Vec<pack::FinishedPack>> {
    if packs.len() < 2 || crate::host::default_jobs() < 2 {
        return packs.into_iter().map(pack::PackWriter::finish).collect();
    }
    let helpers = crate::host::default_jobs().min(packs.len()) - 1;
    let queue = std::sync::Mutex::new(packs);
    let take = || queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let finish_queued = || {
        let mut done = Vec::new();
        while let Some(w) = take() {
            done.push(w.finish());
        }
        done
    };
    let results: Vec<Result<pack::FinishedPack>> = std::thread::scope(|s| {
        // NB: a thread that cannot be made leaves its share to this one.
        let helpers: Vec<_> = (0..helpers)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .spawn_scoped(s, finish_queued)
                    .ok()
            })
            .collect();
        let mut all = finish_queued();
        for h in helpers {
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    results.into_iter().collect()
}

/// Make the data of `files` durable: writeback of every file is started
/// first (`sync_file_range`), so the disk takes the writes together and
/// each `fdatasync` after it mostly waits for its own flush.
fn sync_files<'a>(files: impl Iterator<Item = &'a Path>) -> Result<()> {
    let mut open = Vec::new();
    for p in files {
        let f = File::open(p).at(p)?;
        // NB: a hint only (errors show in the fdatasync below).
        // SAFETY: a valid descriptor; offset 0, length 0: the whole file.
        unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        open.push((p, f));
    }
    sync_at_once(&open, |(p, f)| f.sync_data().at(p))
}

/// At most this many syncs at once (`sync_at_once`); more wait their turn.
const SYNCS_AT_ONCE: usize = 8;

/// `sync` each of `items`, all at once: a thread each (this one takes the
/// first), up to `SYNCS_AT_ONCE`. Every fsync ends in a flush of the
/// disk's cache, and flushes that wait at the same time may overlap: on
/// this machine's virtual disk they barely do (four new blob files and
/// their shards: 1.10 ms one after the other, 0.98 ms at once).
/// A thread that cannot be made leaves its share to this one.
fn sync_at_once<T: Sync>(items: &[T], sync: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    if items.len() < 2 {
        return items.iter().try_for_each(&sync);
    }
    let per = items.len().div_ceil(SYNCS_AT_ONCE);
    let mut chunks = items.chunks(per);
    let first = chunks.next().unwrap_or_default();
    let sync = &sync;
    std::thread::scope(|s| {
        let helpers: Vec<_> = chunks
            .map(|c| {
                std::thread::Builder::new()
                    .spawn_scoped(s, move || c.iter().try_for_each(sync))
                    .map_err(|_| c)
            })
            .collect();
        let mut result = first.iter().try_for_each(sync);
        for h in helpers {
            let r = match h {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                Err(c) => c.iter().try_for_each(sync),
            };
            result = result.and(r);
        }
        result
    })
}

/// Pack writers of one commit (a sync's walker threads write one each),
/// with those too small to be a pack of their own (`MIN_PACK`) moved into
/// another when together they are enough: whether a small file is packed
/// does not depend on how the walk happened to share the files out.
fn merge_small_packs(mut ws: Vec<pack::PackWriter>) -> Result<Vec<pack::PackWriter>> {
    ws.sort_by_key(|w| std::cmp::Reverse(w.len()));
    let total: usize = ws.iter().map(|w| w.len()).sum();
    if ws.len() < 2 || total < pack::MIN_PACK {
        return Ok(ws);
    }
    // Sorted largest first: the small ones (the tail) join the largest.
    let first_small = ws
        .iter()
        .position(|w| w.len() < pack::MIN_PACK)
        .unwrap_or(ws.len())
        .max(1);
    for w in ws.split_off(first_small) {
        for (d, b) in w.into_blobs()? {
            ws[0].add(d, &b)?;
        }
    }
    Ok(ws)
}

/// Whether this process's umask leaves a file created with mode 0444 at
/// 0444 (read once from /proc; unknown: no).
fn umask_keeps_0444() -> bool {
    static KEEPS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KEEPS.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
            })
            .is_some_and(|m| m & 0o444 == 0)
    })
}

pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let from_c = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let to_c = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated paths; AT_FDCWD resolves them as given.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
