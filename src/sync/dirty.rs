//! Dirty paths: what `--watch` learned from the watcher since its last
//! snapshot, and the `Plan` that narrows the next walk to them.
//!
//! A dirty path is re-examined: a file is stat'ed again (and read only if
//! the stat cache cannot vouch for it), a directory is re-listed. A path
//! marked *whole* (a directory that appeared, was moved in, or replaced)
//! is walked whole, as is anything the previous tree did not have as a
//! directory. An edit to an ignore file marks its directory whole: the
//! rules of the whole subtree may have changed. Spurious marks cost time,
//! never correctness: every mark is answered from the disk as it is now.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::types::{DAGFS_IGNORE, GIT_IGNORE};
use super::SyncError;
use crate::hash::Digest;
use crate::store::{Node, Store, Tree};

#[derive(Debug, Default, Clone)]
pub struct Dirty {
    /// Entries to re-examine (absolute paths under the root).
    paths: HashSet<PathBuf>,
    /// Of those, directories to walk whole.
    whole: HashSet<PathBuf>,
    /// Nothing short of a full rescan will do (lost events).
    rescan: bool,
}

impl Dirty {
    /// Mark `path` for re-examination; `whole`: if it is a directory, walk
    /// all of it (its identity may have changed: created, moved, replaced).
    pub fn mark(&mut self, path: PathBuf, whole: bool) {
        let name = path.file_name();
        if name == Some(GIT_IGNORE.as_ref()) || name == Some(DAGFS_IGNORE.as_ref()) {
            if let Some(dir) = path.parent() {
                self.whole.insert(dir.to_path_buf());
                self.paths.insert(dir.to_path_buf());
            }
        }
        if whole {
            self.whole.insert(path.clone());
        }
        self.paths.insert(path);
    }

    pub fn mark_rescan(&mut self) {
        self.rescan = true;
    }

    pub fn needs_rescan(&self) -> bool {
        self.rescan
    }

    pub fn is_empty(&self) -> bool {
        !self.rescan && self.paths.is_empty()
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn merge(&mut self, other: Dirty) {
        self.paths.extend(other.paths);
        self.whole.extend(other.whole);
        self.rescan |= other.rescan;
    }
}

/// What an incremental walk knows of the previous tree (built by `plan`,
/// followed by `walk`).
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Directories to re-list (absolute), with their previous trees. The
    /// root is always one; so is every ancestor of a dirty path.
    pub partial: HashMap<PathBuf, Tree>,
    /// Entries to examine again (absolute).
    pub dirty: HashSet<PathBuf>,
    /// Directories to walk whole even though the previous tree has them.
    pub whole: HashSet<PathBuf>,
    /// A watch's pass whose events tell every change (set by
    /// `Incremental::sync`): every directory that appeared is in `whole`,
    /// which a plan the stat cache made cannot promise, and no dagfs mount
    /// came or went under the directory since the last pass (that changes
    /// no directory's stat). Only such a plan may be small (`walk`).
    pub watched: bool,
}

impl Plan {
    /// Walked on one thread: no directory to walk whole, and few entries
    /// to examine (each dirty file may be read and hashed; more than a
    /// handful, as a checkout makes, are worth the parallel walk).
    pub fn is_small(&self) -> bool {
        // NB: a path walked whole that is not a directory (now) is one
        // entry examined (a file the previous tree had not as a directory,
        // or one gone).
        self.dirty.len() <= SMALL_PLAN
            && !self
                .whole
                .iter()
                .any(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()))
    }
}

/// Most entries a `Plan` examines and still `is_small`.
const SMALL_PLAN: usize = 32;

/// The plan for walking `root` again after `dirty`, given the tree `old` of
/// its previous walk. None: walk everything (the root itself is whole).
pub(crate) fn plan(
    store: &Store,
    root: &Path,
    old: &Digest,
    dirty: &Dirty,
) -> Result<Option<Plan>, SyncError> {
    if dirty.rescan || dirty.whole.contains(root) {
        return Ok(None);
    }
    let mut partial = HashMap::from([(root.to_path_buf(), store.read_tree(old)?)]);
    let mut whole = HashSet::new();
    let mut examine = HashSet::new();
    for p in &dirty.paths {
        let Ok(rel) = p.strip_prefix(root) else {
            continue;
        };
        let comps: Vec<_> = rel.components().collect();
        let mut cur = root.to_path_buf();
        for (i, c) in comps.iter().enumerate() {
            let child = cur.join(c);
            let last = i + 1 == comps.len();
            let old_dir = match partial[&cur].find(c.as_os_str().as_encoded_bytes()) {
                Some(e) => match e.node {
                    Node::Dir { digest } => Some(digest),
                    _ => None,
                },
                None => None,
            };
            examine.insert(child.clone());
            match old_dir {
                // Not a directory before: whatever is there now is new.
                None => {
                    whole.insert(child);
                    break;
                }
                Some(_) if last && dirty.whole.contains(p) => {
                    whole.insert(child);
                    break;
                }
                Some(d) => {
                    if !partial.contains_key(&child) {
                        partial.insert(child.clone(), store.read_tree(&d)?);
                    }
                    cur = child;
                }
            }
        }
    }
    // A directory walked whole is not also re-listed against its old tree,
    // nor is anything under it.
    partial.retain(|d, _| !d.ancestors().any(|a| whole.contains(a)));
    Ok(Some(Plan {
        partial,
        dirty: examine,
        whole,
        watched: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ignore_file_edit_marks_its_directory_whole() {
        let mut d = Dirty::default();
        d.mark(PathBuf::from("/r/a/.gitignore"), false);
        assert!(d.whole.contains(Path::new("/r/a")));
        d.mark(PathBuf::from("/r/b/.dagfsignore"), false);
        assert!(d.whole.contains(Path::new("/r/b")));
        d.mark(PathBuf::from("/r/c/file"), false);
        assert!(!d.whole.contains(Path::new("/r/c")));
        assert_eq!(d.len(), 5);
    }
}
