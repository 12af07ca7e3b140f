//! Kernel invalidation for the live views: when a task's latest key or the
//! latest run changes, tell the kernel to drop its cached dentries for
//! `/dags/<dag>/<task>`, `/why/<dag>/<task>` and `/runs/latest`, and its
//! cached listings of the directories that list them (`/keys`, `/dags`,
//! `/dags/<dag>`, `/why`, `/why/<dag>`, `/runs`), so readers see the change
//! at once instead of after the views' 1 s TTL. The `/why` text of the task
//! is generated afresh at its next read.
//!
//! May call: fuser's `Notifier`. Never called from inside a FUSE request
//! handler (a notification there could deadlock the kernel).

use std::ffi::OsStr;
use std::sync::Arc;

use fuser::{INodeNo, Notifier};

use super::inode::{Ino, InodeTable};
use super::node::{Node, Top};
use super::unopened::Snapshots;

/// A mount's inode table and generated-file snapshots, shared with its
/// invalidator.
pub struct Inodes(
    pub(super) Arc<InodeTable<Node>>,
    pub(super) Arc<Snapshots>,
    pub(super) Arc<super::unopened::BlobFiles>,
);

pub struct Invalidator {
    inodes: Arc<InodeTable<Node>>,
    snapshots: Arc<Snapshots>,
    blob_files: Arc<super::unopened::BlobFiles>,
    notifier: Notifier,
}

impl Invalidator {
    pub fn new(inodes: Inodes, notifier: Notifier) -> Invalidator {
        Invalidator {
            inodes: inodes.0,
            snapshots: inodes.1,
            blob_files: inodes.2,
            notifier,
        }
    }

    /// Drop the kernel's attributes, pages and cached listing of `ino`.
    fn inval_inode(&self, ino: Ino) {
        // NB: errors only mean the kernel holds nothing to drop.
        let _ = self.notifier.inval_inode(INodeNo(ino.0), 0, 0);
    }

    /// `dag/task` has a new latest key (or lost it).
    pub fn task_changed(&self, dag: &str, task: &str) {
        let why = Node::Why {
            dag: dag.into(),
            task: task.into(),
        };
        if let Some(k) = why.generated_key() {
            self.snapshots.forget(&k);
        }
        self.inval_inode(Ino(Top::Keys.ino()));
        for top in [Top::Dags, Top::Why] {
            let top = Ino(top.ino());
            let _ = self.notifier.inval_entry(INodeNo(top.0), OsStr::new(dag));
            self.inval_inode(top);
            let dir = self.inodes.peek(top, dag.as_bytes());
            let _ = self.notifier.inval_entry(INodeNo(dir.0), OsStr::new(task));
            self.inval_inode(dir);
            self.inval_inode(self.inodes.peek(dir, task.as_bytes()));
        }
    }

    /// Blobs were removed from the store (gc, quarantine): close every blob
    /// file the mount holds open, so their space returns now, not at the
    /// mount's next read.
    pub fn blobs_removed(&self) {
        self.blob_files.clear();
    }

    /// A run finished: `/runs/latest` moved and `/runs/<id>` appeared.
    pub fn run_finished(&self, id: u64) {
        let runs = INodeNo(Top::Runs.ino());
        let _ = self.notifier.inval_entry(runs, OsStr::new("latest"));
        let _ = self.notifier.inval_entry(runs, OsStr::new(&id.to_string()));
        self.inval_inode(Ino(runs.0));
    }
}
