//! The inode table: which inode number names which node, and how many
//! kernel lookups keep it alive.
//!
//! Owns: the live-inode map. May call: `blake3`. Guarantees:
//!
//! - An inode number is derived from (parent inode, name) with BLAKE3, so
//!   the same path gets the same number for the daemon's lifetime, also
//!   after the kernel forgot it and looks it up again.
//! - Numbers below `first` (the root and the static top-level directories)
//!   are never handed out here.
//! - Two different (parent, name) pairs whose numbers collide while both
//!   are live are told apart by a 128-bit identity; the later one probes to
//!   the next free number. (After the first is forgotten, a re-lookup of the
//!   second gets the first's number: with 64-bit hashes this needs a
//!   collision among live inodes, about 2^-40 at a million live inodes.)
//! - Each `remember` is one kernel lookup; `forget` subtracts the kernel's
//!   count and drops the entry at zero, so memory follows what the kernel
//!   holds, not what has ever been walked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A FUSE inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(1);
}

/// Identity of a (parent, name) pair beyond its inode number.
type Ident = [u8; 16];

struct Slot<N> {
    ident: Ident,
    parent: Ino,
    node: Arc<N>,
    nlookup: u64,
}

pub struct InodeTable<N> {
    first: u64,
    slots: Mutex<HashMap<u64, Slot<N>>>,
}

/// Lock a mutex whose data stays consistent even if a holder panicked (every
/// critical section in `fs` is a single map operation).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn derive(parent: Ino, name: &[u8], first: u64) -> (u64, Ident) {
    let mut h = blake3::Hasher::new_derive_key("dagfs fs inode v1");
    h.update(&parent.0.to_le_bytes());
    h.update(name);
    let out = h.finalize();
    let b = out.as_bytes();
    let raw = u64::from_le_bytes(b[..8].try_into().unwrap());
    let ident: Ident = b[8..24].try_into().unwrap();
    let ino = if raw < first { raw + first } else { raw };
    (ino, ident)
}

impl<N> InodeTable<N> {
    /// A table that hands out numbers `>= first` only.
    pub fn new(first: u64) -> Self {
        InodeTable {
            first,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn next(&self, ino: u64) -> u64 {
        if ino == u64::MAX {
            self.first
        } else {
            ino + 1
        }
    }

    /// Record one kernel lookup of `name` in `parent`, (re)binding it to
    /// `node` (a live view may have changed since the last lookup).
    pub fn remember(&self, parent: Ino, name: &[u8], node: N) -> Ino {
        let (mut ino, ident) = derive(parent, name, self.first);
        let mut slots = lock(&self.slots);
        loop {
            match slots.get_mut(&ino) {
                None => {
                    slots.insert(
                        ino,
                        Slot {
                            ident,
                            parent,
                            node: Arc::new(node),
                            nlookup: 1,
                        },
                    );
                    return Ino(ino);
                }
                Some(s) if s.ident == ident => {
                    s.node = Arc::new(node);
                    s.nlookup += 1;
                    return Ino(ino);
                }
                Some(_) => ino = self.next(ino),
            }
        }
    }

    /// The number `remember` would give `name` in `parent` now, without
    /// recording a lookup (for `readdir`'s d_ino).
    pub fn peek(&self, parent: Ino, name: &[u8]) -> Ino {
        let (mut ino, ident) = derive(parent, name, self.first);
        let slots = lock(&self.slots);
        while let Some(s) = slots.get(&ino) {
            if s.ident == ident {
                break;
            }
            ino = self.next(ino);
        }
        Ino(ino)
    }

    /// The node and parent of a live inode.
    pub fn get(&self, ino: Ino) -> Option<(Arc<N>, Ino)> {
        lock(&self.slots)
            .get(&ino.0)
            .map(|s| (s.node.clone(), s.parent))
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get_mut(&ino.0) {
            s.nlookup = s.nlookup.saturating_sub(n);
            if s.nlookup == 0 {
                slots.remove(&ino.0);
            }
        }
    }

    /// Live inodes (not counting the static ones).
    pub fn len(&self) -> usize {
        lock(&self.slots).len()
    }

    /// Test hook: bind `ino` directly, to force a collision.
    #[cfg(test)]
    fn occupy(&self, ino: u64, parent: Ino, node: N) {
        lock(&self.slots).insert(
            ino,
            Slot {
                ident: [0xee; 16],
                parent,
                node: Arc::new(node),
                nlookup: 1,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_across_forget() {
        let t = InodeTable::<&str>::new(16);
        let a = t.remember(Ino::ROOT, b"a", "a");
        let b = t.remember(Ino::ROOT, b"b", "b");
        assert_ne!(a, b);
        assert!(a.0 >= 16 && b.0 >= 16);
        assert_eq!(t.remember(Ino::ROOT, b"a", "a2"), a);
        assert_eq!(*t.get(a).unwrap().0, "a2", "re-lookup rebinds the node");
        t.forget(a, 1);
        assert!(t.get(a).is_some(), "one lookup still outstanding");
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.len(), 1);
        assert_eq!(t.peek(Ino::ROOT, b"a"), a);
        assert_eq!(
            t.remember(Ino::ROOT, b"a", "a3"),
            a,
            "same number after forget"
        );
        let other_parent = t.remember(b, b"a", "x");
        assert_ne!(other_parent, a, "the parent is part of the identity");
    }

    #[test]
    fn batch_forget_of_everything_empties_the_table() {
        let t = InodeTable::<u32>::new(16);
        let inos: Vec<Ino> = (0..1000u32)
            .map(|i| t.remember(Ino::ROOT, i.to_string().as_bytes(), i))
            .collect();
        assert_eq!(t.len(), 1000);
        for i in inos {
            t.forget(i, 1);
        }
        assert_eq!(t.len(), 0);
        t.forget(Ino(12345), 3); // unknown: ignored
    }

    #[test]
    fn collisions_probe_to_the_next_number() {
        let t = InodeTable::<&str>::new(16);
        let want = t.peek(Ino::ROOT, b"x");
        t.occupy(want.0, Ino::ROOT, "squatter");
        let got = t.peek(Ino::ROOT, b"x");
        assert_eq!(got.0, want.0.wrapping_add(1).max(16));
        assert_eq!(t.remember(Ino::ROOT, b"x", "x"), got);
        assert_eq!(*t.get(want).unwrap().0, "squatter", "untouched");
        assert_eq!(*t.get(got).unwrap().0, "x");
    }
}
