//! fsck's report model: each kind of problem, a problem found (with what
//! was done about it), the report and its exit-code mask, and the progress
//! a caller can watch.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A blob's bytes do not hash to its name.
    CorruptBlob,
    /// A blob that cannot be read (I/O error).
    UnreadableBlob,
    /// A blob that is writable (blobs are 0444).
    BlobMode,
    /// A file under `blobs/` or `entries/` that is not a blob or record.
    StrayFile,
    /// An entry record that does not decode, or is filed under another key.
    BadEntry,
    /// An entry whose manifest does not derive its key.
    KeyMismatch,
    /// An entry that references a blob that is not in the store.
    MissingBlob,
    /// An entry that references a corrupt (or unreadable) blob.
    CorruptReference,
    /// An entry whose output names, as a tree, a blob that is not a tree.
    BadTree,
    /// A sync snapshot that references a missing or corrupt blob.
    SyncSnapshot,
    /// A sync log (`syncs/<name>`) that does not decode.
    BadSyncRecord,
    /// The index lists a key that has no entry record.
    IndexOrphan,
    /// The index's record of an entry differs from the entry record.
    IndexStale,
    /// The index's entry and byte totals differ from its entries.
    IndexTotals,
    /// The index has records that do not decode.
    IndexDamaged,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::CorruptBlob => "corrupt-blob",
            ProblemKind::UnreadableBlob => "unreadable-blob",
            ProblemKind::BlobMode => "blob-mode",
            ProblemKind::StrayFile => "stray-file",
            ProblemKind::BadEntry => "bad-entry",
            ProblemKind::KeyMismatch => "key-mismatch",
            ProblemKind::MissingBlob => "missing-blob",
            ProblemKind::CorruptReference => "corrupt-reference",
            ProblemKind::BadTree => "bad-tree",
            ProblemKind::SyncSnapshot => "sync-snapshot",
            ProblemKind::BadSyncRecord => "bad-sync-record",
            ProblemKind::IndexOrphan => "index-orphan",
            ProblemKind::IndexStale => "index-stale",
            ProblemKind::IndexTotals => "index-totals",
            ProblemKind::IndexDamaged => "index-damaged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// What is damaged: a blob digest, an entry key, or a path relative to
    /// the store.
    pub subject: String,
    /// `dag/task`, for problems of an entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub detail: String,
    /// `--repair` can fix it.
    pub repairable: bool,
    /// `--repair` fixed it (how: `action`).
    pub repaired: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

impl Problem {
    pub fn new(
        kind: ProblemKind,
        subject: impl Into<String>,
        detail: impl Into<String>,
    ) -> Problem {
        // NB: a damaged snapshot is healed by syncing its directory again
        // (the same bytes store the same blobs), not by dropping history.
        let repairable = !matches!(kind, ProblemKind::SyncSnapshot);
        Problem {
            kind,
            subject: subject.into(),
            task: None,
            detail: detail.into(),
            repairable,
            repaired: false,
            action: None,
        }
    }

    pub(super) fn of_task(mut self, e: &Entry) -> Problem {
        self.task = Some(format!("{}/{}", e.dag, e.task));
        self
    }
}

/// Everything one fsck found (and, with repair, did).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub repair: bool,
    pub blobs: u64,
    pub bytes_hashed: u64,
    pub entries: u64,
    pub sync_snapshots: u64,
    /// Intact blobs that nothing references (`dagfs gc` removes them).
    pub orphan_blobs: u64,
    pub orphan_bytes: u64,
    /// Entry records the index does not list (a run stopped between the
    /// record and its index flush); `--repair` indexes them.
    pub unindexed_entries: u64,
    pub indexed: u64,
    /// Entries dropped (records quarantined, removed from the index): they
    /// miss with reason `corrupt` and re-run.
    pub dropped_entries: Vec<String>,
    pub quarantined: u64,
    pub problems: Vec<Problem>,
    pub elapsed_ms: u64,
}

/// Exit-code bits (`dagfs fsck`; see the CLI's exit-code table).
pub const FOUND: u8 = 1;
pub const FIXED: u8 = 2;
pub const UNFIXED: u8 = 4;

impl Report {
    /// FOUND if any problem; FIXED if repair fixed any; UNFIXED if any is
    /// left that repair cannot fix (or, with repair, did not).
    pub fn mask(&self) -> u8 {
        let mut m = 0;
        for p in &self.problems {
            m |= FOUND;
            if p.repaired {
                m |= FIXED;
            } else if !p.repairable || self.repair {
                m |= UNFIXED;
            }
        }
        m
    }

    pub fn count(&self, kind: ProblemKind) -> usize {
        self.problems.iter().filter(|p| p.kind == kind).count()
    }
}

/// Phases, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Listing = 0,
    Hashing = 1,
    /// Waiting for running pipelines to finish (daemon).
    Waiting = 2,
    Entries = 3,
    Index = 4,
    Repair = 5,
    Done = 6,
}

/// Live figures of a running fsck, read by another thread.
#[derive(Debug, Default)]
pub struct Progress {
    phase: AtomicU8,
    pub blobs_total: AtomicU64,
    pub blobs_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub entries_total: AtomicU64,
    pub entries_done: AtomicU64,
}

impl Progress {
    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Listing,
            1 => Phase::Hashing,
            2 => Phase::Waiting,
            3 => Phase::Entries,
            4 => Phase::Index,
            5 => Phase::Repair,
            _ => Phase::Done,
        }
    }
}
