//! What a path under the mount names, and how a name resolves in a
//! directory (see ARCHITECTURE.md, "5. The mounted tree").
//!
//! ```text
//! /                      Root
//! /keys /trees /blobs    Top(..)      static, permanent inodes 2..=9
//! /dags /runs /why /.dagfs /syncs
//! /keys/<key>            KeyRoot      output tree root of an entry
//! /keys/<key>/…          Dir/File/Symlink (within: that entry)
//! /trees/<digest>/…      Dir/File/Symlink (within: nothing)
//! /blobs/<digest>        Blob
//! /dags/<dag>            DagDir       /dags/<dag>/<task>  KeyRoot (the latest key)
//! /runs/<id>             RunDir       /runs/<id>/<task>   KeyRoot (that run's key)
//! /runs/latest           Latest
//! /why/<dag>             WhyDir       /why/<dag>/<task>   Why
//! /.dagfs/stats|metrics  Stats, Metrics
//! /syncs/<name>[@<seq>]  Dir          a snapshot's tree (within: that snapshot)
//! ```
//!
//! `/dags/<dag>/<task>`, `/runs/<id>/<task>` and `/syncs/<name>` are
//! directories (not links), so `find`, `grep -r`, `du` and `rsync -a` walk
//! them; `user.dagfs.key` and `/keys` still name the entry. Every node
//! carries its mtime (`Ctx`; see `ops` for the rules). A path whose content
//! can change (`/dags/<dag>/<task>`, `/syncs/<name>`) resolves to a node
//! whose inode name includes what it shows (`Found::canonical`: key and
//! time, or snapshot), so new content is a new inode, never old pages or
//! attributes under the same number.
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

/// Where a node of a stored tree was reached from, and its mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    /// The entry it is part of (under `/keys`, `/dags`, `/runs`): its key
    /// and `dag/task` (xattrs `user.dagfs.key`, `user.dagfs.task`).
    pub entry: Option<(Digest, Arc<str>)>,
    /// This node's mtime (Unix ms).
    pub mtime_ms: u64,
    /// Under `/syncs`: the snapshot, and this directory's path in it (a
    /// file or link shares its directory's).
    pub sync: Option<Arc<SyncAt>>,
}

impl Ctx {
    /// Everything under an entry's root shows the root's mtime.
    pub fn entry(key: Digest, task: &str, mtime_ms: u64) -> Ctx {
        Ctx {
            entry: Some((key, Arc::from(task))),
            mtime_ms,
            sync: None,
        }
    }
}

/// A directory of a sync snapshot (`sync::stamps` gives its mtimes).
#[derive(Debug, PartialEq, Eq)]
pub struct SyncAt {
    pub name: Arc<str>,
    /// Relative path in the snapshot ("" at its root).
    pub path: Box<[u8]>,
    /// When the snapshot was taken.
    pub snap_ms: u64,
    /// When the stamps' history began (None: no base record for this log:
    /// a path without a record falls back to `snap_ms`).
    pub base_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Root,
    Top(Top),
    /// An entry's output root: `/keys/<key>`, `/dags/<dag>/<task>`,
    /// `/runs/<id>/<task>` (`ctx.entry` is set).
    KeyRoot {
        ctx: Ctx,
        output: Digest,
    },
    Dir {
        tree: Digest,
        within: Option<Ctx>,
    },
    File {
        digest: Digest,
        size: u64,
        exec: bool,
        within: Option<Ctx>,
    },
    Symlink {
        target: Box<[u8]>,
        within: Option<Ctx>,
    },
    Blob {
        digest: Digest,
        size: u64,
    },
    DagDir {
        dag: String,
    },
    RunDir {
        id: u64,
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
/// that differs from the name asked for: a prefix resolves to the full hex,
/// a path whose content can change to a name of what it shows now. Either
/// way the kernel may keep the name's entry a second only.
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
            Node::Symlink { .. } | Node::Latest { .. } => Kind::Symlink,
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
            | Node::RunDir { .. }
            | Node::Latest { .. }
            | Node::WhyDir { .. } => Lifetime::Live,
        }
    }

    /// Where this node of a stored tree was reached from, and its mtime.
    pub fn ctx(&self) -> Option<&Ctx> {
        match self {
            Node::KeyRoot { ctx, .. } => Some(ctx),
            Node::Dir { within, .. } | Node::File { within, .. } | Node::Symlink { within, .. } => {
                within.as_ref()
            }
            _ => None,
        }
    }

    /// The key of the entry this node is part of.
    pub fn entry_key(&self) -> Option<Digest> {
        self.ctx().and_then(|c| c.entry.as_ref()).map(|e| e.0)
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

    /// The stored tree this directory node shows, and where it is.
    pub fn tree(&self) -> Option<(Digest, Option<&Ctx>)> {
        match self {
            Node::KeyRoot { ctx, output } => Some((*output, Some(ctx))),
            Node::Dir { tree, within } => Some((*tree, within.as_ref())),
            _ => None,
        }
    }

    /// A symlink's target bytes, exactly as stored.
    pub fn link_target(&self) -> Option<Vec<u8>> {
        match self {
            Node::Symlink { target, .. } => Some(target.to_vec()),
            Node::Latest { id } => Some(id.to_string().into_bytes()),
            _ => None,
        }
    }

    /// Extended attributes: identity of what this node shows.
    pub fn xattrs(&self) -> Vec<(&'static str, Vec<u8>)> {
        let hex = |d: &Digest| d.to_hex().into_bytes();
        let mut out = Vec::new();
        if let Some((key, task)) = self.ctx().and_then(|c| c.entry.as_ref()) {
            out.push((XATTR_KEY, hex(key)));
            out.push((XATTR_TASK, task.as_bytes().to_vec()));
        }
        match self {
            Node::KeyRoot { output, .. } => out.push((XATTR_DIGEST, hex(output))),
            Node::Dir { tree, .. } => out.push((XATTR_DIGEST, hex(tree))),
            Node::File { digest, .. } | Node::Blob { digest, .. } => {
                out.push((XATTR_DIGEST, hex(digest)))
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

/// The node of entry `e` of a stored tree, within `within` (whose mtime
/// it shows: see `Resolver::tree_node` for snapshots).
pub fn child_of_tree(e: &tree::TreeEntry, within: Option<Ctx>) -> Node {
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

/// `prefix/name` (`name` alone at the root).
fn join(prefix: &[u8], name: &[u8]) -> Box<[u8]> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p.into_boxed_slice()
}

impl Resolver<'_> {
    /// The node of entry `e` of the directory whose context is `within`.
    /// Under `/syncs` each node gets its own mtime, from its stamp.
    pub fn tree_node(&self, e: &tree::TreeEntry, within: Option<&Ctx>) -> Result<Node, FsError> {
        let Some(at) = within.and_then(|c| c.sync.as_ref()) else {
            return Ok(child_of_tree(e, within.cloned()));
        };
        let path = join(&at.path, &e.name);
        let mtime_ms = self.stamped(at, &path, &e.node.content_digest())?;
        let sync = match e.node {
            tree::Node::Dir { .. } => Arc::new(SyncAt {
                name: at.name.clone(),
                path,
                snap_ms: at.snap_ms,
                base_ms: at.base_ms,
            }),
            _ => at.clone(),
        };
        let ctx = Ctx {
            entry: None,
            mtime_ms,
            sync: Some(sync),
        };
        Ok(child_of_tree(e, Some(ctx)))
    }

    /// The mtime of `path` showing `digest` in a snapshot of `at.name`:
    /// when the path took that content (`sync::stamps`); without a record,
    /// when the history began; else the snapshot's time.
    fn stamped(&self, at: &SyncAt, path: &[u8], digest: &Digest) -> Result<u64, FsError> {
        Ok(match self.view.sync_stamp(&at.name, path)? {
            Some((d, ms)) if d == *digest => ms,
            None => at.base_ms.unwrap_or(at.snap_ms),
            Some(_) => at.snap_ms,
        })
    }

    fn tree_child(
        &self,
        tree: &Digest,
        name: &[u8],
        within: Option<&Ctx>,
    ) -> Result<Found, FsError> {
        let t = self.trees.get(self.view, tree)?;
        let e = t.find(name).ok_or(FsError::NotFound)?;
        Found::plain(self.tree_node(e, within)?)
    }

    /// The output root of entry `key`, showing mtime `mtime_ms` (None: the
    /// entry's creation).
    fn entry_root(&self, key: &Digest, mtime_ms: Option<u64>) -> Result<Node, FsError> {
        let e = self.view.entry(key)?.ok_or(FsError::NotFound)?;
        let task = format!("{}/{}", e.dag, e.task);
        Ok(Node::KeyRoot {
            ctx: Ctx::entry(*key, &task, mtime_ms.unwrap_or(e.created_ms)),
            output: e.output,
        })
    }

    /// `/syncs/<name>` (`seq` None: the latest snapshot) or `<name>@<seq>`.
    fn sync_root(&self, name: &str, seq: Option<u64>) -> Result<Found, FsError> {
        let log = self.view.sync_log(name)?.ok_or(FsError::NotFound)?;
        let snap = match seq {
            None => log.latest(),
            Some(s) => log.snapshots.iter().find(|x| x.seq == s),
        }
        .ok_or(FsError::NotFound)?;
        // NB: a base record of another history (not this log's first
        // snapshot) vouches for nothing.
        let first = log.snapshots.first().map(|s| s.tree);
        let base_ms = match self.view.sync_base(name)? {
            Some((d, ms)) if Some(d) == first => Some(ms),
            _ => None,
        };
        let at = SyncAt {
            name: Arc::from(name),
            path: Box::from(&b""[..]),
            snap_ms: snap.created_ms,
            base_ms,
        };
        let mtime_ms = self.stamped(&at, b"", &snap.tree)?;
        let node = Node::Dir {
            tree: snap.tree,
            within: Some(Ctx {
                entry: None,
                mtime_ms,
                sync: Some(Arc::new(at)),
            }),
        };
        // The latest is a new inode for each snapshot (module doc).
        let canonical = seq
            .is_none()
            .then(|| format!("{name}\0{}", snap.seq).into_bytes());
        Ok(Found { node, canonical })
    }

    /// `name` in the directory `parent`.
    pub fn child(&self, parent: &Node, name: &[u8]) -> Result<Found, FsError> {
        let name = names::component(name).ok_or(FsError::NotFound)?;
        let v = self.view;
        match parent {
            Node::Root => Found::plain(Node::Top(Top::from_name(name).ok_or(FsError::NotFound)?)),
            Node::Top(Top::Keys) => {
                let prefix = names::hex_prefix(name).ok_or(FsError::NotFound)?;
                let key = match v.resolve_key(&prefix)? {
                    Some(k) => k,
                    // A full key the store lacks: a second tier may have it.
                    None => {
                        let full = Digest::from_hex(prefix.as_str()).ok_or(FsError::NotFound)?;
                        v.fetch_entry(&full)?.ok_or(FsError::NotFound)?.key
                    }
                };
                Found::named(self.entry_root(&key, None)?, name, &key)
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
                if !crate::store::names::valid_sync_name(sync) {
                    return Err(FsError::NotFound);
                }
                self.sync_root(sync, seq)
            }
            Node::Top(Top::Meta) => match name {
                b"stats" => Found::plain(Node::Stats),
                b"metrics" => Found::plain(Node::Metrics),
                _ => Err(FsError::NotFound),
            },
            Node::KeyRoot { ctx, output } => self.tree_child(output, name, Some(ctx)),
            Node::Dir { tree, within } => self.tree_child(tree, name, within.as_ref()),
            Node::DagDir { dag } => {
                let task = names::label(name).ok_or(FsError::NotFound)?;
                let (key, moved) = v.task_latest(dag, task)?.ok_or(FsError::NotFound)?;
                let node = self.entry_root(&key, (moved != 0).then_some(moved))?;
                let ms = node.ctx().map_or(0, |c| c.mtime_ms);
                // A new inode whenever the latest key or its time moves
                // (module doc).
                let canonical = format!("{task}\0{}\0{ms}", key.to_hex()).into_bytes();
                Ok(Found {
                    node,
                    canonical: Some(canonical),
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
                // NB: a record from before `since_ms` shows the run's end.
                let ms = t.since_ms.unwrap_or(rec.finished_ms);
                Found::plain(self.entry_root(&key, Some(ms))?)
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
                    .map(|n| (n, Kind::Dir))
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
                    Kind::Dir
                } else {
                    Kind::File
                };
                names(tasks.into_iter().map(|(t, _)| t).collect(), kind)
            }
            Node::RunDir { id } => {
                let rec = v.run(*id)?.ok_or(FsError::NotFound)?;
                let mut tasks = Vec::new();
                for t in rec.tasks {
                    // NB: only those whose entry is still cached resolve.
                    if let Some(k) = t.key {
                        if v.entry(&k)?.is_some() {
                            tasks.push(t.task);
                        }
                    }
                }
                names(tasks, Kind::Dir)
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
        let ctx = Ctx::entry(key, "app/build", 5);
        let root = Node::KeyRoot {
            ctx: ctx.clone(),
            output: Digest::of(b"o"),
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
        assert_eq!(file.xattrs()[1], (XATTR_TASK, b"app/build".to_vec()));
        assert_eq!(file.xattrs()[2].1, Digest::of(b"f").to_hex().into_bytes());
    }
}
