//! Kernel invalidation for the live views: when a task's latest key or the
//! latest run changes, tell the kernel to drop its cached dentries for
//! `/dags/<dag>/<task>`, `/why/<dag>/<task>` and `/runs/latest`, so readers
//! see the change at once instead of after the views' 1 s TTL.
//!
//! May call: fuser's `Notifier`. Never called from inside a FUSE request
//! handler (a notification there could deadlock the kernel).

use std::ffi::OsStr;
use std::sync::Arc;

use fuser::{INodeNo, Notifier};

use super::inode::{Ino, InodeTable};
use super::node::{Node, Top};

/// A mount's inode table, shared with its invalidator.
pub struct Inodes(pub(super) Arc<InodeTable<Node>>);

pub struct Invalidator {
    inodes: Arc<InodeTable<Node>>,
    notifier: Notifier,
}

impl Invalidator {
    pub fn new(inodes: Inodes, notifier: Notifier) -> Invalidator {
        Invalidator {
            inodes: inodes.0,
            notifier,
        }
    }

    /// `dag/task` has a new latest key (or lost it).
    pub fn task_changed(&self, dag: &str, task: &str) {
        for top in [Top::Dags, Top::Why] {
            let top = Ino(top.ino());
            // NB: errors only mean the kernel holds nothing to drop.
            let _ = self.notifier.inval_entry(INodeNo(top.0), OsStr::new(dag));
            let dir = self.inodes.peek(top, dag.as_bytes());
            let _ = self.notifier.inval_entry(INodeNo(dir.0), OsStr::new(task));
            let file = self.inodes.peek(dir, task.as_bytes());
            let _ = self.notifier.inval_inode(INodeNo(file.0), 0, 0);
        }
    }

    /// A run finished: `/runs/latest` moved and `/runs/<id>` appeared.
    pub fn run_finished(&self, id: u64) {
        let runs = INodeNo(Top::Runs.ino());
        let _ = self.notifier.inval_entry(runs, OsStr::new("latest"));
        let _ = self.notifier.inval_entry(runs, OsStr::new(&id.to_string()));
    }
}
