//! A bounded cache of decoded trees, so that `ls -l` on a directory of N
//! entries decodes its tree once, not N times (one lookup per entry).
//!
//! Owns: decoded `Tree`s, shared as `Arc`. May call: `StoreView::read_tree`.
//! Guarantees: at most `max_trees` trees and about `max_entries` entries are
//! held (the tree inserted last is always kept, however large, so a lookup
//! storm in one huge directory stays linear); eviction is least recently
//! used. Trees are immutable (named by digest), so a cached tree is never
//! stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::inode::lock;
use super::view::{StoreView, ViewError};
use crate::hash::Digest;
use crate::store::tree::Tree;

pub struct TreeCache {
    max_trees: usize,
    max_entries: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Digest, (Arc<Tree>, u64)>,
    tick: u64,
    entries: usize,
}

impl TreeCache {
    pub fn new(max_trees: usize, max_entries: usize) -> Self {
        TreeCache {
            max_trees: max_trees.max(1),
            max_entries,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn get(&self, view: &dyn StoreView, d: &Digest) -> Result<Arc<Tree>, ViewError> {
        {
            let mut inner = lock(&self.inner);
            inner.tick += 1;
            let tick = inner.tick;
            if let Some((t, used)) = inner.map.get_mut(d) {
                *used = tick;
                return Ok(t.clone());
            }
        }
        // NB: decode outside the lock; two threads may both decode the same
        // tree, and the second insert just replaces an identical value.
        let tree = Arc::new(view.read_tree(d)?);
        let mut inner = lock(&self.inner);
        inner.tick += 1;
        let tick = inner.tick;
        let n = tree.entries.len();
        if let Some((old, _)) = inner.map.insert(*d, (tree.clone(), tick)) {
            inner.entries -= old.entries.len();
        }
        inner.entries += n;
        while inner.map.len() > 1
            && (inner.map.len() > self.max_trees || inner.entries > self.max_entries)
        {
            let victim = inner
                .map
                .iter()
                .filter(|(k, _)| *k != d)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            match victim.and_then(|k| inner.map.remove(&k)) {
                Some((t, _)) => inner.entries -= t.entries.len(),
                None => break,
            }
        }
        Ok(tree)
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let inner = lock(&self.inner);
        (inner.map.len(), inner.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tree::{Node, TreeEntry};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serves trees of `d.0[0]` entries and counts decodes.
    #[derive(Default)]
    struct Trees(AtomicUsize);

    impl StoreView for Trees {
        fn read_tree(&self, d: &Digest) -> Result<Tree, ViewError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let entries = (0..d.0[0])
                .map(|i| TreeEntry {
                    name: vec![b'a' + i],
                    node: Node::Symlink {
                        target: b"x".to_vec(),
                    },
                })
                .collect();
            Ok(Tree { entries })
        }
        fn is_tree(&self, _: &Digest) -> Result<bool, ViewError> {
            Ok(true)
        }
        fn blob_size(&self, _: &Digest) -> Result<u64, ViewError> {
            Ok(0)
        }
    }

    fn digest(n: u8, tag: u8) -> Digest {
        let mut d = [0u8; 32];
        d[0] = n;
        d[1] = tag;
        Digest(d)
    }

    #[test]
    fn decodes_once_and_stays_bounded() {
        let view = Trees::default();
        let c = TreeCache::new(3, 10);
        for _ in 0..5 {
            assert_eq!(c.get(&view, &digest(4, 0)).unwrap().entries.len(), 4);
        }
        assert_eq!(view.0.load(Ordering::SeqCst), 1, "decoded once");
        c.get(&view, &digest(4, 1)).unwrap();
        c.get(&view, &digest(4, 2)).unwrap();
        let (trees, entries) = c.held();
        assert!(
            trees <= 3 && entries <= 10,
            "{trees} trees, {entries} entries"
        );
        // Bigger than the whole budget: still kept, everything else evicted.
        c.get(&view, &digest(20, 3)).unwrap();
        assert_eq!(c.held(), (1, 20));
        c.get(&view, &digest(20, 3)).unwrap();
        assert_eq!(view.0.load(Ordering::SeqCst), 4);
    }
}
