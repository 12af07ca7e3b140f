//! Merkle trees: the canonical binary encoding of one directory level.
//!
//! A tree is stored as a blob; its digest (plain BLAKE3 of the encoding) is
//! the directory's digest, and the root tree's digest is a task's **output
//! digest**.
//!
//! ```text
//! tree    := magic "DAGT" | version u8 (=1) | count u32le | entry{count}
//! entry   := kind u8 | name_len u16le | name[name_len] | payload
//! kind 1  file        payload := size u64le | digest[32]
//! kind 2  executable  payload := size u64le | digest[32]
//! kind 3  symlink     payload := target_len u32le | target[target_len]
//! kind 4  directory   payload := digest[32]            (the child tree blob)
//! ```
//!
//! Invariants the decoder enforces (so any decodable tree is canonical and
//! safe to serve): entries strictly ascending by name bytes (no duplicates);
//! names 1..=255 bytes with no `/` or NUL and not `.` or `..`; symlink
//! targets 1..=4095 bytes with no NUL (kept byte-exact, never followed); no
//! trailing bytes.

use crate::hash::Digest;

pub const MAGIC: &[u8; 4] = b"DAGT";
pub const VERSION: u8 = 1;
pub const MAX_NAME: usize = 255;
pub const MAX_TARGET: usize = 4095;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        size: u64,
        digest: Digest,
        exec: bool,
    },
    Symlink {
        target: Vec<u8>,
    },
    Dir {
        digest: Digest,
    },
}

impl Node {
    /// One digest for what this node holds: a file's blob, a directory's
    /// tree, the hash of a symlink's target. Sync stamps are keyed by it.
    pub fn content_digest(&self) -> Digest {
        match self {
            Node::File { digest, .. } | Node::Dir { digest } => *digest,
            Node::Symlink { target } => Digest::of(target),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub name: Vec<u8>,
    pub node: Node,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    pub entries: Vec<TreeEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("bad magic or version")]
    Header,
    #[error("truncated")]
    Truncated,
    #[error("trailing bytes")]
    Trailing,
    #[error("unknown entry kind {0}")]
    Kind(u8),
    #[error("invalid name {0:?}")]
    Name(String),
    #[error("entries not in strictly ascending order at {0:?}")]
    Order(String),
    #[error("invalid symlink target")]
    Target,
}

/// Why a name cannot be a tree entry, or None if it can.
pub fn name_problem(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME {
        Some("longer than 255 bytes")
    } else if name == b"." || name == b".." {
        Some("`.` or `..`")
    } else if name.contains(&b'/') || name.contains(&0) {
        Some("contains `/` or NUL")
    } else {
        None
    }
}

impl Tree {
    /// Sort entries into canonical order. Callers must not add a name twice.
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| a.name.cmp(&b.name));
    }

    pub fn find(&self, name: &[u8]) -> Option<&TreeEntry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Canonical encoding. Entries must already be sorted (see `sort`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.entries.len() * 48);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            let kind = match &e.node {
                Node::File { exec: false, .. } => 1,
                Node::File { exec: true, .. } => 2,
                Node::Symlink { .. } => 3,
                Node::Dir { .. } => 4,
            };
            out.push(kind);
            out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            out.extend_from_slice(&e.name);
            match &e.node {
                Node::File { size, digest, .. } => {
                    out.extend_from_slice(&size.to_le_bytes());
                    out.extend_from_slice(digest.as_bytes());
                }
                Node::Symlink { target } => {
                    out.extend_from_slice(&(target.len() as u32).to_le_bytes());
                    out.extend_from_slice(target);
                }
                Node::Dir { digest } => out.extend_from_slice(digest.as_bytes()),
            }
        }
        out
    }

    pub fn decode(mut b: &[u8]) -> Result<Tree, TreeError> {
        let header = take(&mut b, 5)?;
        if &header[..4] != MAGIC || header[4] != VERSION {
            return Err(TreeError::Header);
        }
        let count = u32::from_le_bytes(take(&mut b, 4)?.try_into().unwrap()) as usize;
        // Each entry is at least 1+2+1+32 bytes: bound the allocation by input.
        let mut entries = Vec::with_capacity(count.min(b.len() / 36 + 1));
        for _ in 0..count {
            let kind = take(&mut b, 1)?[0];
            let len = u16::from_le_bytes(take(&mut b, 2)?.try_into().unwrap()) as usize;
            let name = take(&mut b, len)?.to_vec();
            if name_problem(&name).is_some() {
                return Err(TreeError::Name(String::from_utf8_lossy(&name).into()));
            }
            if let Some(prev) = entries.last().map(|e: &TreeEntry| &e.name) {
                if prev.as_slice() >= name.as_slice() {
                    return Err(TreeError::Order(String::from_utf8_lossy(&name).into()));
                }
            }
            let node = match kind {
                1 | 2 => {
                    let size = u64::from_le_bytes(take(&mut b, 8)?.try_into().unwrap());
                    let digest = Digest::from_slice(take(&mut b, 32)?).unwrap();
                    Node::File {
                        size,
                        digest,
                        exec: kind == 2,
                    }
                }
                3 => {
                    let n = u32::from_le_bytes(take(&mut b, 4)?.try_into().unwrap()) as usize;
                    if n == 0 || n > MAX_TARGET {
                        return Err(TreeError::Target);
                    }
                    let target = take(&mut b, n)?.to_vec();
                    if target.contains(&0) {
                        return Err(TreeError::Target);
                    }
                    Node::Symlink { target }
                }
                4 => Node::Dir {
                    digest: Digest::from_slice(take(&mut b, 32)?).unwrap(),
                },
                k => return Err(TreeError::Kind(k)),
            };
            entries.push(TreeEntry { name, node });
        }
        if !b.is_empty() {
            return Err(TreeError::Trailing);
        }
        Ok(Tree { entries })
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], TreeError> {
    if b.len() < n {
        return Err(TreeError::Truncated);
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..40)
            .prop_filter("valid name", |n| name_problem(n).is_none())
    }

    fn arb_node() -> impl Strategy<Value = Node> {
        prop_oneof![
            (any::<u64>(), any::<[u8; 32]>(), any::<bool>()).prop_map(|(size, d, exec)| {
                Node::File {
                    size,
                    digest: Digest(d),
                    exec,
                }
            }),
            proptest::collection::vec(1u8..=255, 1..100)
                .prop_map(|target| Node::Symlink { target }),
            any::<[u8; 32]>().prop_map(|d| Node::Dir { digest: Digest(d) }),
        ]
    }

    proptest! {
        #[test]
        fn encoding_round_trips(entries in proptest::collection::btree_map(arb_name(), arb_node(), 0..30)) {
            let tree = Tree { entries: entries.into_iter().map(|(name, node)| TreeEntry { name, node }).collect() };
            let bytes = tree.encode();
            prop_assert_eq!(Tree::decode(&bytes).unwrap(), tree);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Tree::decode(&bytes);
        }
    }

    #[test]
    fn rejects_unsorted_and_bad_names() {
        let f = |name: &[u8]| TreeEntry {
            name: name.to_vec(),
            node: Node::Dir {
                digest: Digest([0; 32]),
            },
        };
        let unsorted = Tree {
            entries: vec![f(b"b"), f(b"a")],
        };
        assert!(matches!(
            Tree::decode(&unsorted.encode()),
            Err(TreeError::Order(_))
        ));
        let dup = Tree {
            entries: vec![f(b"a"), f(b"a")],
        };
        assert!(matches!(
            Tree::decode(&dup.encode()),
            Err(TreeError::Order(_))
        ));
        for bad in [&b".."[..], b".", b"a/b", b"a\0"] {
            let t = Tree {
                entries: vec![f(bad)],
            };
            assert!(
                matches!(Tree::decode(&t.encode()), Err(TreeError::Name(_))),
                "{bad:?}"
            );
        }
        let mut trailing = Tree::default().encode();
        trailing.push(0);
        assert_eq!(Tree::decode(&trailing), Err(TreeError::Trailing));
    }
}
