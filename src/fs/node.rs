//! What a path under the mount names, and how a name resolves in a
//! directory (see DESIGN.md "The mounted tree").
//!
//! ```text
//! /                      Root
//! /keys /trees /blobs    Top(..)      static, permanent inodes 2..=8
//! /dags /runs /why /.dagfs
//! /keys/<key>            KeyRoot      output tree root of an entry
//! /keys/<key>/…          Dir/File/Symlink (within: that key)
//! /trees/<digest>/…      Dir/File/Symlink (within: no key)
//! /blobs/<digest>        Blob
//! /dags/<dag>            DagDir       /dags/<dag>/<task>  DagLink
//! /runs/<id>             RunDir       /runs/<id>/<task>   RunLink
//! /runs/latest           Latest
//! /why/<dag>             WhyDir       /why/<dag>/<task>   Why
//! /.dagfs/stats|metrics  Stats, Metrics
//! ```
//!
//! `/keys` lists every key; `/trees` and `/blobs` list nothing (they are
//! lookup-only: enumerating every blob of a store is never what a user
//! wants from `ls`), yet any stored digest, or unique prefix of at least 8
//! hex digits, resolves in them.
//!
//! Owns: the `Node` model and `Resolver`. May call: `StoreView` (the only way
//! into the store), `TreeCache`, `names`. Guarantees: a name reaches the
//! view only after `names` validated it; a prefix resolves to the same node
//! (and canonical name, hence inode) as the full hex name.

use std::borrow::Cow;
use std::sync::Arc;

use super::error::FsError;
use super::names;
use super::tree_cache::TreeCache;
use super::view::StoreView;
use crate::hash::Digest;
use crate::store::tree::{self, Tree};

/// The static directories right under the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Top {
    Keys,
    Trees,
    Blobs,
    Dags,
    Runs,
    Why,
    Meta,
    Syncs,
}

/// Inodes below this are static (root = 1, tops = 2..=9); hashed inodes
/// start here.
pub const FIRST_DYNAMIC_INO: u64 = 16;

impl Top {
    pub const ALL: [Top; 8] = [
        Top::Keys,
        Top::Trees,
        Top::Blobs,
        Top::Dags,
        Top::Runs,
        Top::Why,
        Top::Meta,
        Top::Syncs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Top::Keys => "keys",
            Top::Trees => "trees",
            Top::Blobs => "blobs",
            Top::Dags => "dags",
            Top::Runs => "runs",
            Top::Why => "why",
            Top::Meta => ".dagfs",
            Top::Syncs => "syncs",
        }
    }

    pub fn ino(self) -> u64 {
        2 + Top::ALL.iter().position(|t| *t == self).unwrap() as u64
    }

    pub fn from_name(name: &[u8]) -> Option<Top> {
        Top::ALL.into_iter().find(|t| t.name().as_bytes() == name)
    }

    pub fn from_ino(ino: u64) -> Option<Top> {
        Top::ALL.into_iter().find(|t| t.ino() == ino)
    }
}

/// Where a node of a stored tree was reached from: under `/keys/<key>` it
/// carries the key (xattr `user.dagfs.key`, mtime = the entry's creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCtx {
    pub key: Digest,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Root,
    Top(Top),
    KeyRoot {
        ctx: KeyCtx,
        output: Digest,
        /// `dag/task`
        task: String,
    },
    Dir {
        tree: Digest,
        within: Option<KeyCtx>,
    },
    File {
        digest: Digest,
        size: u64,
        exec: bool,
        within: Option<KeyCtx>,
    },
    Symlink {
        target: Box<[u8]>,
        within: Option<KeyCtx>,
    },
    Blob {
        digest: Digest,
        size: u64,
    },
    DagDir {
        dag: String,
    },
    DagLink {
        dag: String,
        task: String,
        key: Digest,
    },
    RunDir {
        id: u64,
    },
    RunLink {
        dag: String,
        task: String,
        key: Digest,
    },
    Latest {
        id: u64,
    },
    WhyDir {
        dag: String,
    },
    Why {
        dag: String,
        task: String,
    },
    Stats,
    Metrics,
    /// `/syncs/<name>` (the latest snapshot) or `/syncs/<name>@<seq>`: a
    /// link to the snapshot's tree.
    SyncLink {
        tree: Digest,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// How long the kernel may cache what it learns about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Content named by digest: never changes.
    Immutable,
    /// A view of the index (latest keys, runs, listings): changes any time.
    Live,
    /// Text generated per open (`why`, `.dagfs/*`): size changes any time.
    Generated,
}

/// A page of `/keys`: the keys at positions `base..` of a listing.
pub struct KeyPage {
    pub base: usize,
    pub keys: Vec<Digest>,
}

/// Keys per page of `/keys` (32 KB).
pub const KEY_PAGE: usize = 1024;

/// A directory's entries, decoded once per listing.
pub enum Entries {
    Tree(Arc<Tree>),
    Names(Vec<(Vec<u8>, Kind)>),
    /// `/keys`: one page of keys (a million keys would take 32 MB, 100 MB
    /// as names), the `base`th key of the listing first.
    Keys(Arc<KeyPage>),
}

impl Entries {
    pub fn len(&self) -> usize {
        match self {
            Entries::Tree(t) => t.entries.len(),
            Entries::Names(v) => v.len(),
            Entries::Keys(p) => p.base + p.keys.len(),
        }
    }

    pub fn get(&self, i: usize) -> Option<(Cow<'_, [u8]>, Kind)> {
        match self {
            Entries::Tree(t) => t
                .entries
                .get(i)
                .map(|e| (Cow::Borrowed(e.name.as_slice()), tree_kind(&e.node))),
            Entries::Names(v) => v.get(i).map(|(n, k)| (Cow::Borrowed(n.as_slice()), *k)),
            Entries::Keys(p) => p
                .keys
                .get(i.checked_sub(p.base)?)
                .map(|k| (Cow::Owned(k.to_hex().into_bytes()), Kind::Dir)),
        }
    }

    /// The `i`th entry of a stored tree (what a listing with attributes
    /// needs to build the child's node without a lookup).
    pub fn tree_entry(&self, i: usize) -> Option<&tree::TreeEntry> {
        match self {
            Entries::Tree(t) => t.entries.get(i),
            _ => None,
        }
    }
}

fn tree_kind(n: &tree::Node) -> Kind {
    match n {
        tree::Node::File { .. } => Kind::File,
        tree::Node::Symlink { .. } => Kind::Symlink,
        tree::Node::Dir { .. } => Kind::Dir,
    }
}

/// What a lookup found: the node, and the name its inode derives from when
/// that differs from the name asked for (a prefix resolves to the full hex).
pub struct Found {
    pub node: Node,
    pub canonical: Option<Vec<u8>>,
}

impl Found {
    fn plain(node: Node) -> Result<Found, FsError> {
        Ok(Found {
            node,
            canonical: None,
        })
    }

    fn named(node: Node, asked: &[u8], full: &Digest) -> Result<Found, FsError> {
        let full = full.to_hex().into_bytes();
        let canonical = (asked != full.as_slice()).then_some(full);
        Ok(Found { node, canonical })
    }
}

/// `../../keys/<hex>`: where dags and runs links point.
pub fn key_link(key: &Digest) -> Vec<u8> {
    format!("../../keys/{}", key.to_hex()).into_bytes()
}

pub const XATTR_KEY: &str = "user.dagfs.key";
pub const XATTR_TASK: &str = "user.dagfs.task";
pub const XATTR_DIGEST: &str = "user.dagfs.digest";

impl Node {
    pub fn kind(&self) -> Kind {
        match self {
            Node::Root
            | Node::Top(_)
            | Node::KeyRoot { .. }
            | Node::Dir { .. }
            | Node::DagDir { .. }
            | Node::RunDir { .. }
            | Node::WhyDir { .. } => Kind::Dir,
            Node::File { .. }
            | Node::Blob { .. }
            | Node::Why { .. }
            | Node::Stats
            | Node::Metrics => Kind::File,
            Node::Symlink { .. }
            | Node::DagLink { .. }
            | Node::RunLink { .. }
            | Node::SyncLink { .. }
            | Node::Latest { .. } => Kind::Symlink,
        }
    }

    pub fn lifetime(&self) -> Lifetime {
        match self {
            Node::KeyRoot { .. }
            | Node::Dir { .. }
            | Node::File { .. }
            | Node::Symlink { .. }
            | Node::Blob { .. } => Lifetime::Immutable,
            Node::Why { .. } | Node::Stats | Node::Metrics => Lifetime::Generated,
            Node::Root
            | Node::Top(_)
            | Node::DagDir { .. }
            | Node::DagLink { .. }
            | Node::RunDir { .. }
            | Node::RunLink { .. }
            | Node::SyncLink { .. }
            | Node::Latest { .. }
            | Node::WhyDir { .. } => Lifetime::Live,
        }
    }

    /// The entry this node belongs to, if it is under `/keys/<key>`.
    pub fn key_ctx(&self) -> Option<KeyCtx> {
        match self {
            Node::KeyRoot { ctx, .. } => Some(*ctx),
            Node::Dir { within, .. } | Node::File { within, .. } | Node::Symlink { within, .. } => {
                *within
            }
            _ => None,
        }
    }

    /// The blob holding a regular file's bytes, and its size.
    pub fn blob(&self) -> Option<(Digest, u64)> {
        match self {
            Node::File { digest, size, .. } | Node::Blob { digest, size } => Some((*digest, *size)),
            _ => None,
        }
    }

    pub fn is_exec(&self) -> bool {
        matches!(self, Node::File { exec: true, .. })
    }

    /// What names a generated file's snapshot (`unopened::Snapshots`).
    pub fn generated_key(&self) -> Option<String> {
        match self {
            Node::Why { dag, task } => Some(format!("why/{dag}/{task}")),
            Node::Stats => Some("stats".into()),
            Node::Metrics => Some("metrics".into()),
            _ => None,
        }
    }

    /// The stored tree this directory node shows, and the key it is within.
    pub fn tree(&self) -> Option<(Digest, Option<KeyCtx>)> {
        match self {
            Node::KeyRoot { ctx, output, .. } => Some((*output, Some(*ctx))),
            Node::Dir { tree, within } => Some((*tree, *within)),
            _ => None,
        }
    }

    /// A symlink's target bytes, exactly as stored.
    pub fn link_target(&self) -> Option<Vec<u8>> {
        match self {
            Node::Symlink { target, .. } => Some(target.to_vec()),
            Node::DagLink { key, .. } | Node::RunLink { key, .. } => Some(key_link(key)),
            Node::Latest { id } => Some(id.to_string().into_bytes()),
            Node::SyncLink { tree } => Some(format!("../trees/{}", tree.to_hex()).into_bytes()),
            _ => None,
        }
    }

    /// Extended attributes: identity of what this node shows.
    pub fn xattrs(&self) -> Vec<(&'static str, Vec<u8>)> {
        let hex = |d: &Digest| d.to_hex().into_bytes();
        let mut out = Vec::new();
        if let Some(ctx) = self.key_ctx() {
            out.push((XATTR_KEY, hex(&ctx.key)));
        }
        match self {
            Node::KeyRoot { output, task, .. } => {
                out.push((XATTR_TASK, task.clone().into_bytes()));
                out.push((XATTR_DIGEST, hex(output)));
            }
            Node::Dir { tree, .. } | Node::SyncLink { tree } => out.push((XATTR_DIGEST, hex(tree))),
            Node::File { digest, .. } | Node::Blob { digest, .. } => {
                out.push((XATTR_DIGEST, hex(digest)))
            }
            Node::DagLink { dag, task, key } | Node::RunLink { dag, task, key } => {
                out.push((XATTR_KEY, hex(key)));
                out.push((XATTR_TASK, format!("{dag}/{task}").into_bytes()));
            }
            _ => {}
        }
        out
    }
}

/// Resolves names and lists directories through the view.
pub struct Resolver<'a> {
    pub view: &'a dyn StoreView,
    pub trees: &'a TreeCache,
}

/// The node of entry `e` of a stored tree.
pub fn child_of_tree(e: &tree::TreeEntry, within: Option<KeyCtx>) -> Node {
    match &e.node {
        tree::Node::File { size, digest, exec } => Node::File {
            digest: *digest,
            size: *size,
            exec: *exec,
            within,
        },
        tree::Node::Symlink { target } => Node::Symlink {
            target: target.clone().into_boxed_slice(),
            within,
        },
        tree::Node::Dir { digest } => Node::Dir {
            tree: *digest,
            within,
        },
    }
}

impl Resolver<'_> {
    fn tree_child(
        &self,
        tree: &Digest,
        name: &[u8],
        within: Option<KeyCtx>,
    ) -> Result<Found, FsError> {
        let t = self.trees.get(self.view, tree)?;
        let e = t.find(name).ok_or(FsError::NotFound)?;
        Found::plain(child_of_tree(e, within))
    }

    /// `name` in the directory `parent`.
    pub fn child(&self, parent: &Node, name: &[u8]) -> Result<Found, FsError> {
        let name = names::component(name).ok_or(FsError::NotFound)?;
        let v = self.view;
        match parent {
            Node::Root => Found::plain(Node::Top(Top::from_name(name).ok_or(FsError::NotFound)?)),
            Node::Top(Top::Keys) => {
                let prefix = names::hex_prefix(name).ok_or(FsError::NotFound)?;
                let key = v.resolve_key(&prefix)?.ok_or(FsError::NotFound)?;
                let e = v.entry(&key)?.ok_or(FsError::NotFound)?;
                let node = Node::KeyRoot {
                    ctx: KeyCtx {
                        key,
                        created_ms: e.created_ms,
                    },
                    output: e.output,
                    task: format!("{}/{}", e.dag, e.task),
                };
                Found::named(node, name, &key)
            }
            Node::Top(Top::Trees) => {
                let prefix = names::hex_prefix(name).ok_or(FsError::NotFound)?;
                let d = v.resolve_blob(&prefix)?.ok_or(FsError::NotFound)?;
                if !v.is_tree(&d)? {
                    return Err(FsError::NotFound);
                }
                Found::named(
                    Node::Dir {
                        tree: d,
                        within: None,
                    },
                    name,
                    &d,
                )
            }
            Node::Top(Top::Blobs) => {
                let prefix = names::hex_prefix(name).ok_or(FsError::NotFound)?;
                let d = v.resolve_blob(&prefix)?.ok_or(FsError::NotFound)?;
                let size = v.blob_size(&d)?;
                Found::named(Node::Blob { digest: d, size }, name, &d)
            }
            Node::Top(t @ (Top::Dags | Top::Why)) => {
                let dag = names::label(name).ok_or(FsError::NotFound)?;
                if v.tasks(dag)?.is_empty() {
                    return Err(FsError::NotFound);
                }
                let dag = dag.to_string();
                Found::plain(match t {
                    Top::Dags => Node::DagDir { dag },
                    _ => Node::WhyDir { dag },
                })
            }
            Node::Top(Top::Runs) => {
                if name == b"latest" {
                    let id = *v.runs()?.last().ok_or(FsError::NotFound)?;
                    return Found::plain(Node::Latest { id });
                }
                let id = names::run_id(name).ok_or(FsError::NotFound)?;
                v.run(id)?.ok_or(FsError::NotFound)?;
                Found::plain(Node::RunDir { id })
            }
            Node::Top(Top::Syncs) => {
                let name = names::label(name).ok_or(FsError::NotFound)?;
                let (sync, seq) = match name.rsplit_once('@') {
                    Some((n, seq)) => (
                        n,
                        Some(names::run_id(seq.as_bytes()).ok_or(FsError::NotFound)?),
                    ),
                    None => (name, None),
                };
                if !crate::sync::valid_name(sync) {
                    return Err(FsError::NotFound);
                }
                let log = v.sync_log(sync)?.ok_or(FsError::NotFound)?;
                let snap = match seq {
                    None => log.latest(),
                    Some(s) => log.snapshots.iter().find(|x| x.seq == s),
                };
                Found::plain(Node::SyncLink {
                    tree: snap.ok_or(FsError::NotFound)?.tree,
                })
            }
            Node::Top(Top::Meta) => match name {
                b"stats" => Found::plain(Node::Stats),
                b"metrics" => Found::plain(Node::Metrics),
                _ => Err(FsError::NotFound),
            },
            Node::KeyRoot { ctx, output, .. } => self.tree_child(output, name, Some(*ctx)),
            Node::Dir { tree, within } => self.tree_child(tree, name, *within),
            Node::DagDir { dag } => {
                let task = names::label(name).ok_or(FsError::NotFound)?;
                let key = v
                    .tasks(dag)?
                    .into_iter()
                    .find(|(t, _)| t == task)
                    .ok_or(FsError::NotFound)?
                    .1;
                Found::plain(Node::DagLink {
                    dag: dag.clone(),
                    task: task.to_string(),
                    key,
                })
            }
            Node::RunDir { id } => {
                let task = names::label(name).ok_or(FsError::NotFound)?;
                let rec = v.run(*id)?.ok_or(FsError::NotFound)?;
                let t = rec
                    .tasks
                    .iter()
                    .find(|t| t.task == task)
                    .ok_or(FsError::NotFound)?;
                let key = t.key.ok_or(FsError::NotFound)?;
                Found::plain(Node::RunLink {
                    dag: rec.dag.clone(),
                    task: task.to_string(),
                    key,
                })
            }
            Node::WhyDir { dag } => {
                let task = names::label(name).ok_or(FsError::NotFound)?;
                v.why(dag, task)?.ok_or(FsError::NotFound)?;
                Found::plain(Node::Why {
                    dag: dag.clone(),
                    task: task.to_string(),
                })
            }
            _ => Err(FsError::NotDir),
        }
    }

    /// The entries of the directory `dir`, in a fixed order.
    pub fn list(&self, dir: &Node) -> Result<Entries, FsError> {
        let v = self.view;
        let names = |it: Vec<String>, kind: Kind| {
            Entries::Names(it.into_iter().map(|n| (n.into_bytes(), kind)).collect())
        };
        Ok(match dir {
            Node::Root => names(
                Top::ALL.iter().map(|t| t.name().to_string()).collect(),
                Kind::Dir,
            ),
            Node::Top(Top::Keys) => Entries::Keys(Arc::new(KeyPage {
                base: 0,
                keys: v.keys_after(None, KEY_PAGE)?,
            })),
            Node::Top(Top::Trees | Top::Blobs) => Entries::Names(Vec::new()),
            Node::Top(Top::Dags | Top::Why) => names(v.dags()?, Kind::Dir),
            Node::Top(Top::Runs) => {
                let ids = v.runs()?;
                let mut out: Vec<(Vec<u8>, Kind)> = ids
                    .iter()
                    .map(|id| (id.to_string().into_bytes(), Kind::Dir))
                    .collect();
                if !ids.is_empty() {
                    out.push((b"latest".to_vec(), Kind::Symlink));
                }
                Entries::Names(out)
            }
            Node::Top(Top::Meta) => names(vec!["stats".into(), "metrics".into()], Kind::File),
            Node::Top(Top::Syncs) => Entries::Names(
                v.syncs()?
                    .into_iter()
                    .flat_map(|log| {
                        let seqs: Vec<u64> = log.snapshots.iter().map(|s| s.seq).collect();
                        std::iter::once(log.name.clone().into_bytes()).chain(
                            seqs.into_iter()
                                .map(move |s| format!("{}@{s}", log.name).into_bytes()),
                        )
                    })
                    .map(|n| (n, Kind::Symlink))
                    .collect(),
            ),
            Node::KeyRoot { output, .. } => Entries::Tree(self.trees.get(v, output)?),
            Node::Dir { tree, .. } => Entries::Tree(self.trees.get(v, tree)?),
            Node::DagDir { dag } | Node::WhyDir { dag } => {
                let tasks = v.tasks(dag)?;
                if tasks.is_empty() {
                    return Err(FsError::NotFound);
                }
                let kind = if matches!(dir, Node::DagDir { .. }) {
                    Kind::Symlink
                } else {
                    Kind::File
                };
                names(tasks.into_iter().map(|(t, _)| t).collect(), kind)
            }
            Node::RunDir { id } => {
                let rec = v.run(*id)?.ok_or(FsError::NotFound)?;
                names(
                    rec.tasks
                        .into_iter()
                        .filter(|t| t.key.is_some())
                        .map(|t| t.task)
                        .collect(),
                    Kind::Symlink,
                )
            }
            _ => return Err(FsError::NotDir),
        })
    }
}

/// The nodes with fixed inode numbers.
pub fn static_node(ino: u64) -> Option<Node> {
    if ino == 1 {
        return Some(Node::Root);
    }
    Top::from_ino(ino).map(Node::Top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_inodes_are_below_the_dynamic_range() {
        for t in Top::ALL {
            assert!(t.ino() > 1 && t.ino() < FIRST_DYNAMIC_INO);
            assert_eq!(Top::from_ino(t.ino()), Some(t));
            assert_eq!(Top::from_name(t.name().as_bytes()), Some(t));
            assert_eq!(static_node(t.ino()), Some(Node::Top(t)));
        }
        assert_eq!(static_node(1), Some(Node::Root));
        assert_eq!(static_node(FIRST_DYNAMIC_INO), None);
    }

    #[test]
    fn xattrs_name_the_identity() {
        let key = Digest::of(b"k");
        let ctx = KeyCtx { key, created_ms: 5 };
        let root = Node::KeyRoot {
            ctx,
            output: Digest::of(b"o"),
            task: "app/build".into(),
        };
        let names: Vec<&str> = root.xattrs().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, [XATTR_KEY, XATTR_TASK, XATTR_DIGEST]);
        let link = Node::Symlink {
            target: Box::from(&b"x"[..]),
            within: None,
        };
        assert!(link.xattrs().is_empty(), "no key, no digest outside /keys");
        let file = Node::File {
            digest: Digest::of(b"f"),
            size: 1,
            exec: false,
            within: Some(ctx),
        };
        assert_eq!(file.xattrs()[0], (XATTR_KEY, key.to_hex().into_bytes()));
        assert_eq!(file.xattrs()[1].1, Digest::of(b"f").to_hex().into_bytes());
        assert_eq!(key_link(&key).len(), 11 + 64);
    }
}
