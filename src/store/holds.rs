//! Holds: what a running ingest relies on before anything names it, kept
//! from gc.
//!
//! gc keeps what entries and sync logs name, and blobs younger than the
//! oldest running ingest. A run or a sync also relies on blobs stored long
//! before, when its content is the same (a file, an output tree): it does
//! not store them again. Until its entry is published, or its log names its
//! snapshot, nothing names them, and they are older than any cutoff. So an
//! ingest holds them: a run each blob it finds stored (`stored_for`), a
//! sync its new tree (`hold_tree_root`). gc marks from every hold and keeps
//! the holds locked until its sweep ends (`held`), so a hold is taken
//! wholly before a mark (kept) or after a sweep (the blob is then found
//! gone and stored again; a sync that finds its tree incomplete walks
//! again, see `Cache::hold_tree`).
//!
//! Owns: nothing on disk. May call: `hash`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::{Staged, Store};
use crate::hash::Digest;

/// One holder's digests: trees (gc marks all they name) and plain blobs.
#[derive(Debug, Default)]
struct Held {
    trees: Vec<Digest>,
    blobs: HashSet<Digest>,
}

#[derive(Debug, Default)]
pub(crate) struct Holds {
    held: Mutex<HashMap<u64, Held>>,
    next: AtomicU64,
}

impl Holds {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every hold, locked (see the module's doc): gc's mark and sweep run
/// while this lives.
pub struct HeldRoots<'a>(MutexGuard<'a, HashMap<u64, Held>>);

impl HeldRoots<'_> {
    /// Held trees: gc marks everything they name.
    pub fn trees(&self) -> impl Iterator<Item = Digest> + '_ {
        self.0.values().flat_map(|h| h.trees.iter().copied())
    }

    /// Held blobs: kept as they are (never read to look for children).
    pub fn blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        self.0.values().flat_map(|h| h.blobs.iter().copied())
    }
}

impl Store {
    /// A new holder (a run, a sync's record): release it with `release`.
    pub fn new_holder(&self) -> u64 {
        self.holds.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Everything `holder` holds is gc's again.
    pub fn release(&self, holder: u64) {
        self.holds.lock().remove(&holder);
    }

    /// Is blob `d` stored? For a staging that a holder owns
    /// (`Staged::held_by`), `d` is held for it first, so a stored blob
    /// stays stored until the holder is released. NB: held before the
    /// lookup, and the lock only for that: a gc that takes the lock
    /// after marks it; one that took it before has swept when the lookup
    /// runs. A digest found not stored stays held too (the staging stores
    /// it: young, kept anyway).
    pub fn stored_for(&self, staged: &Staged, d: &Digest) -> bool {
        if let Some(holder) = staged.holder {
            self.holds
                .lock()
                .entry(holder)
                .or_default()
                .blobs
                .insert(*d);
        }
        self.has_blob(d)
    }

    /// Hold tree `d` for `holder` (everything it names), and return the
    /// blob generation, read while no sweep runs.
    pub fn hold_tree_root(&self, holder: u64, d: Digest) -> u64 {
        let mut held = self.holds.lock();
        held.entry(holder).or_default().trees.push(d);
        self.blob_generation()
    }

    /// Every hold, locked until the result drops (gc).
    pub fn held(&self) -> HeldRoots<'_> {
        HeldRoots(self.holds.lock())
    }
}
