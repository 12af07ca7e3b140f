//! The names a user types under the mount (`fs::names`, `HexPrefix`,
//! `Digest::from_hex`) and the FUSE lookup logic (`fs::node::Resolver`) over
//! a fake store: arbitrary bytes never panic; a name that passes is one safe
//! path component; a prefix matches exactly the digests it should; and no
//! name reaches the store's read interface unvalidated or resolves to
//! anything but the fake store's own objects.
#![no_main]


use dagfs::fs::names;
use dagfs::fs::node::{Node, Resolver, Top};
use dagfs::fs::tree_cache::TreeCache;
use dagfs::fs::view::{EntryInfo, StoreView, ViewError};
use dagfs::hash::{Digest, HexPrefix};
use dagfs::fs::view::RunInfo;
use dagfs::store::tree::{Node as TNode, Tree, TreeEntry};
use libfuzzer_sys::fuzz_target;

fn safe_component(n: &[u8]) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n != b"."
        && n != b".."
        && !n.contains(&b'/')
        && !n.contains(&0)
}

fn valid_prefix(p: &HexPrefix) -> bool {
    let s = p.as_str();
    (8..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A store of one key, one output tree, one file blob; every call checks
/// that what reaches it was validated.
struct Fake {
    key: Digest,
    tree: Digest,
    file: Digest,
}

impl Fake {
    fn new() -> Fake {
        let file = Digest::of(b"file");
        let t = Tree {
            entries: vec![TreeEntry {
                name: b"out.txt".to_vec(),
                node: TNode::File {
                    size: 4,
                    digest: file,
                    exec: false,
                },
            }],
        };
        Fake {
            key: Digest::of(b"key"),
            tree: Digest::of(&t.encode()),
            file,
        }
    }
    fn blobs(&self) -> [Digest; 2] {
        [self.tree, self.file]
    }
}

impl StoreView for Fake {
    fn keys_after(&self, after: Option<&Digest>, _max: usize) -> Result<Vec<Digest>, ViewError> {
        Ok(if after.is_some_and(|a| *a >= self.key) {
            vec![]
        } else {
            vec![self.key]
        })
    }
    fn resolve_key(&self, p: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        assert!(valid_prefix(p), "{p:?}");
        Ok(p.matches(&self.key).then_some(self.key))
    }
    fn entry(&self, key: &Digest) -> Result<Option<EntryInfo>, ViewError> {
        Ok((*key == self.key).then(|| EntryInfo {
            key: self.key,
            output: self.tree,
            dag: "app".into(),
            task: "build".into(),
            created_ms: 1,
        }))
    }
    fn resolve_blob(&self, p: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        assert!(valid_prefix(p), "{p:?}");
        Ok(self.blobs().into_iter().find(|d| p.matches(d)))
    }
    fn read_tree(&self, d: &Digest) -> Result<Tree, ViewError> {
        assert_eq!(*d, self.tree, "only stored trees are read");
        Ok(Tree {
            entries: vec![TreeEntry {
                name: b"out.txt".to_vec(),
                node: TNode::File {
                    size: 4,
                    digest: self.file,
                    exec: false,
                },
            }],
        })
    }
    fn is_tree(&self, d: &Digest) -> Result<bool, ViewError> {
        Ok(*d == self.tree)
    }
    fn open_blob(&self, d: &Digest) -> std::io::Result<dagfs::fs::view::BlobData> {
        assert!(self.blobs().contains(d));
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn blob_size(&self, d: &Digest) -> Result<u64, ViewError> {
        assert!(self.blobs().contains(d));
        Ok(4)
    }
    fn dags(&self) -> Result<Vec<String>, ViewError> {
        Ok(vec!["app".into()])
    }
    fn tasks(&self, dag: &str) -> Result<Vec<(String, Digest)>, ViewError> {
        assert!(safe_component(dag.as_bytes()), "{dag:?}");
        Ok(if dag == "app" {
            vec![("build".into(), self.key)]
        } else {
            vec![]
        })
    }
    fn runs(&self) -> Result<Vec<u64>, ViewError> {
        Ok(vec![1])
    }
    fn run(&self, _id: u64) -> Result<Option<RunInfo>, ViewError> {
        Ok(None)
    }
    fn why(&self, dag: &str, task: &str) -> Result<Option<String>, ViewError> {
        assert!(safe_component(dag.as_bytes()) && safe_component(task.as_bytes()));
        Ok(None)
    }
    fn stats_text(&self) -> Result<String, ViewError> {
        Ok(String::new())
    }
    fn metrics_text(&self) -> Result<String, ViewError> {
        Ok(String::new())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(c) = names::component(data) {
        assert!(safe_component(c));
    } else {
        assert!(!safe_component(data));
    }
    if let Some(p) = names::hex_prefix(data) {
        assert!(valid_prefix(&p));
        assert_eq!(p.as_str().as_bytes(), data.to_ascii_lowercase());
        let (lo, hi) = p.range();
        assert!(p.matches(&Digest(lo)) && p.matches(&Digest(hi)));
        let d = Digest::from_hex(&format!(
            "{}{}",
            p.as_str(),
            "0".repeat(64 - p.as_str().len())
        ))
        .expect("a prefix padded to 64 digits is a digest");
        assert!(p.matches(&d) && lo <= d.0 && d.0 <= hi);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(d) = Digest::from_hex(s) {
            assert_eq!(d.to_hex(), s.to_ascii_lowercase());
        }
        if let Some(p) = HexPrefix::parse(s) {
            assert!(valid_prefix(&p));
        }
    }
    if let Some(id) = names::run_id(data) {
        assert_eq!(
            id.to_string().as_bytes(),
            data,
            "run ids are canonical decimal"
        );
    }
    if let Some(l) = names::label(data) {
        assert!(safe_component(l.as_bytes()));
    }

    // The lookup logic, in every directory that takes names.
    let view = Fake::new();
    let trees = TreeCache::new(4, 64);
    let r = Resolver {
        view: &view,
        trees: &trees,
    };
    let key_root = r
        .child(&Node::Top(Top::Keys), view.key.to_hex().as_bytes())
        .unwrap()
        .node;
    let mut parents: Vec<Node> = vec![Node::Root, key_root];
    parents.extend(Top::ALL.into_iter().map(Node::Top));
    parents.push(Node::DagDir { dag: "app".into() });
    parents.push(Node::WhyDir { dag: "app".into() });
    parents.push(Node::RunDir { id: 1 });
    for parent in &parents {
        let Ok(found) = r.child(parent, data) else {
            continue;
        };
        assert!(safe_component(data), "{parent:?} resolved an unsafe name");
        match &found.node {
            Node::KeyRoot { output, .. } => {
                assert_eq!((found.node.entry_key(), *output), (Some(view.key), view.tree))
            }
            Node::Dir { tree, .. } => assert_eq!(*tree, view.tree),
            Node::File { digest, .. } | Node::Blob { digest, .. } => {
                assert!(view.blobs().contains(digest))
            }
            Node::DagDir { dag } | Node::WhyDir { dag } => assert_eq!(dag, "app"),
            Node::Top(_) | Node::Latest { .. } | Node::Stats | Node::Metrics => {}
            other => panic!("{parent:?}/{data:?} resolved to {other:?}"),
        }
        if let Some(c) = &found.canonical {
            if matches!(parent, Node::DagDir { .. }) {
                // A live path: its inode name is the task, its key and time.
                assert!(c.starts_with(data) && c.get(data.len()) == Some(&0), "{c:?}");
            } else {
                assert_eq!(c.len(), 64, "a prefix canonicalizes to the full hex");
            }
        }
    }
});
