//! Hostile input at the edges: names a user (or a program) types under the
//! mount, symlinks a task or a synced directory holds, and files swapped for
//! symlinks while dagfs reads them.
//!
//! - Over 10,000 crafted names (traversal, separators, NUL, empty, too long,
//!   non-UTF-8, Unicode look-alikes of hex digits, wrong-length and
//!   upper-case hex, short prefixes, mutations of real names) are looked up
//!   in every directory of the mount's tree through the FUSE lookup logic
//!   (`fs::node::Resolver` over the daemon's real `CacheView`), and a sample
//!   of them through a real FUSE mount. Each must resolve exactly as an
//!   independent model of the store says (only the store's own objects, by
//!   full name or unique hex prefix) and be ENOENT otherwise.
//! - Output trees and synced directories with symlinks out of them
//!   (`/etc/passwd`, `../../..`, a host file holding a secret marker) store
//!   the links, never what they point at; the mount shows the stored target.
//! - Swap races: while ingest or sync reads a tree, another thread swaps a
//!   file and a directory of it with symlinks to a host secret (atomically,
//!   `renameat2(RENAME_EXCHANGE)`), 1,000 times each (50 times through the
//!   `dagfs sync` binary): no host byte ever lands in a blob, and the host
//!   files are never moved, removed or chmod-ed.
//!
//! The mount test needs root and /dev/fuse, as tests/mount_fs.rs does.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagfs::daemon::view::CacheView;
use dagfs::daemon::Gauges;
use dagfs::exec::runner::ShellRunner;
use dagfs::exec::scheduler::{self, Options};
use dagfs::exec::{shell, Pipeline};
use dagfs::fs::node::{Found, Node, Resolver, Top};
use dagfs::fs::tree_cache::TreeCache;
use dagfs::fs::view::RunInfo;
use dagfs::fs::view::{EntryInfo, StoreView, ViewError};
use dagfs::fs::{errno, mount, DagFs, FsCounters, FsOptions};
use dagfs::hash::{Digest, HexPrefix};
use dagfs::store::ingest::{ingest_dir, Sink};
use dagfs::store::tree::{Node as TNode, Tree};
use dagfs::store::{Staged, Store};
use dagfs::sync::ScanOptions;
use dagfs::{Cache, CachePolicy};

const BIN: &str = env!("CARGO_BIN_EXE_dagfs");

// ---------------------------------------------------------------------------
// deterministic randomness
// ---------------------------------------------------------------------------

/// splitmix64: a fixed seed gives the same names on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

// ---------------------------------------------------------------------------
// a store holding links out of it
// ---------------------------------------------------------------------------

/// A host file no blob may ever hold, with a marker to search blobs for.
struct Secret {
    dir: PathBuf,
    file: PathBuf,
    bytes: Vec<u8>,
}

const MARKER: &[u8] = b"DAGFS-HOST-SECRET-5b1d0c";

fn make_secret(root: &Path) -> Secret {
    let dir = root.join("host");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret.txt");
    let mut bytes = MARKER.to_vec();
    bytes.extend_from_slice(b" do not ingest\n");
    fs::write(&file, &bytes).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    Secret { dir, file, bytes }
}

impl Secret {
    /// Still where it was, with its bytes and mode.
    fn assert_untouched(&self) {
        let md = fs::symlink_metadata(&self.file).expect("the host secret is still there");
        assert!(md.is_file());
        assert_eq!(md.mode() & 0o7777, 0o600, "the host secret was chmod-ed");
        assert_eq!(fs::read(&self.file).unwrap(), self.bytes);
    }
}

/// `build` leaves links out of its output; `report` reads `build`'s output.
fn pipeline(secret: &Path) -> String {
    let s = secret.display();
    let rel = format!(
        "{}{}",
        "../".repeat(40),
        s.to_string().trim_start_matches('/')
    );
    format!(
        r#"
name = "app"

[tasks.build]
run = '''
set -e
o="$DAGFS_OUT"
mkdir -p "$o/bin" "$o/sub/deep"
printf 'hello\n' > "$o/hello.txt"
printf '#!/bin/sh\necho hi\n' > "$o/bin/greet"
chmod 755 "$o/bin/greet"
ln -s /etc/passwd "$o/passwd-link"
ln -s ../../.. "$o/up3"
ln -s ../.. "$o/bin/up"
ln -s {s} "$o/secret-abs"
ln -s {rel} "$o/secret-rel"
ln -s {dir} "$o/hostdir-link"
printf 'deep\n' > "$o/sub/deep/leaf"
'''

[tasks.report]
deps = ["build"]
run = 'wc -c < "$DAGFS_IN/build/hello.txt" > "$DAGFS_OUT/size.txt"'
"#,
        dir = secret.parent().unwrap().display()
    )
}

struct World {
    root: PathBuf,
    store: PathBuf,
    cache: Arc<Cache>,
    view: Arc<CacheView>,
    secret: Secret,
    build_key: Digest,
    run_id: u64,
    _tmp: tempfile::TempDir,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let secret = make_secret(&root);
    fs::write(root.join("dagfs.toml"), pipeline(&secret.file)).unwrap();
    let store = root.join("store");
    let cache = Arc::new(Cache::open(&store, CachePolicy::default()).unwrap());
    let p = Pipeline::load(&root.join("dagfs.toml")).unwrap();
    let plan = shell::plan(&p, &[], Arc::new(ShellRunner), &cache).unwrap();
    let report = scheduler::run(&cache, &plan, &Options::default(), &mut |_| {}).unwrap();
    for (n, o) in report.names.iter().zip(&report.outcomes) {
        assert!(o.error.is_none(), "{n}: {:?} {:?}", o.error, o.log_tail);
    }
    let view = Arc::new(CacheView::new(cache.clone(), Arc::new(Gauges::default())));
    let tasks: BTreeMap<String, Digest> = view.tasks("app").unwrap().into_iter().collect();
    World {
        build_key: tasks["build"],
        run_id: report.run_id,
        root,
        store,
        cache,
        view,
        secret,
        _tmp: tmp,
    }
}

/// Every blob file of a store: (digest, bytes). Asserts each is a plain
/// file (never a symlink) named by its content.
fn all_blobs(store: &Path) -> Vec<(Digest, Vec<u8>)> {
    let mut out = Vec::new();
    for shard in fs::read_dir(store.join("blobs")).unwrap() {
        for e in fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            assert!(md.is_file(), "{} is not a regular file", p.display());
            let bytes = fs::read(&p).unwrap();
            let d = Digest::from_hex(p.file_name().unwrap().to_str().unwrap()).unwrap();
            assert_eq!(Digest::of(&bytes), d, "{}", p.display());
            out.push((d, bytes));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// No blob holds the secret marker or the host's /etc/passwd.
fn assert_no_host_bytes(store: &Path, secret: &Secret) {
    let passwd = fs::read("/etc/passwd").unwrap_or_default();
    for (d, bytes) in all_blobs(store) {
        assert!(!contains(&bytes, MARKER), "blob {d} holds the host secret");
        assert!(
            passwd.len() < 16 || !contains(&bytes, &passwd),
            "blob {d} holds /etc/passwd"
        );
    }
    secret.assert_untouched();
}

// ---------------------------------------------------------------------------
// names: an independent model of what may resolve
// ---------------------------------------------------------------------------

/// Wraps the real view and checks that every name reaching it was
/// validated (the `names` layer's promise).
struct Checked(Arc<CacheView>, AtomicU64);

fn safe_component(n: &[u8]) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n != b"."
        && n != b".."
        && !n.contains(&b'/')
        && !n.contains(&0)
}

fn check_prefix(p: &HexPrefix) {
    let s = p.as_str();
    assert!(
        (8..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "an unvalidated prefix reached the store: {s:?}"
    );
}

impl StoreView for Checked {
    fn keys_after(&self, after: Option<&Digest>, max: usize) -> Result<Vec<Digest>, ViewError> {
        self.0.keys_after(after, max)
    }
    fn syncs(&self) -> Result<Vec<dagfs::fs::view::SyncInfo>, ViewError> {
        self.0.syncs()
    }
    fn sync_log(&self, name: &str) -> Result<Option<dagfs::fs::view::SyncInfo>, ViewError> {
        assert!(
            dagfs::sync::valid_name(name),
            "an unvalidated sync name reached the store: {name:?}"
        );
        self.0.sync_log(name)
    }
    fn resolve_key(&self, p: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        check_prefix(p);
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.resolve_key(p)
    }
    fn entry(&self, key: &Digest) -> Result<Option<EntryInfo>, ViewError> {
        self.0.entry(key)
    }
    fn resolve_blob(&self, p: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        check_prefix(p);
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.resolve_blob(p)
    }
    fn read_tree(&self, tree: &Digest) -> Result<Tree, ViewError> {
        self.0.read_tree(tree)
    }
    fn is_tree(&self, d: &Digest) -> Result<bool, ViewError> {
        self.0.is_tree(d)
    }
    fn open_blob(&self, d: &Digest) -> std::io::Result<dagfs::fs::view::BlobData> {
        self.0.open_blob(d)
    }
    fn blob_size(&self, d: &Digest) -> Result<u64, ViewError> {
        self.0.blob_size(d)
    }
    fn dags(&self) -> Result<Vec<String>, ViewError> {
        self.0.dags()
    }
    fn tasks(&self, dag: &str) -> Result<Vec<(String, Digest)>, ViewError> {
        assert!(safe_component(dag.as_bytes()), "{dag:?}");
        self.0.tasks(dag)
    }
    fn runs(&self) -> Result<Vec<u64>, ViewError> {
        self.0.runs()
    }
    fn run(&self, id: u64) -> Result<Option<RunInfo>, ViewError> {
        self.0.run(id)
    }
    fn why(&self, dag: &str, task: &str) -> Result<Option<String>, ViewError> {
        assert!(safe_component(dag.as_bytes()) && safe_component(task.as_bytes()));
        self.0.why(dag, task)
    }
    fn stats_text(&self) -> Result<String, ViewError> {
        self.0.stats_text()
    }
    fn metrics_text(&self) -> Result<String, ViewError> {
        self.0.metrics_text()
    }
}

/// How a directory of the mount takes names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Naming {
    /// Exactly one of a fixed set of names.
    Exact,
    /// A digest, in full or by a unique prefix of 8..=64 hex digits (any
    /// case); `among` are the candidates prefixes are matched against.
    Hex,
}

/// One directory: its node, where it is under the mount, and the model of
/// what resolves in it.
struct Dir {
    node: Node,
    rel: String,
    naming: Naming,
    /// Exact: the names. Hex: the digests that resolve here.
    names: BTreeSet<Vec<u8>>,
    /// Hex: every digest a prefix is matched against (uniqueness).
    among: Vec<Vec<u8>>,
}

impl Dir {
    /// What the model says `name` resolves to: the canonical name, or None.
    fn expect(&self, name: &[u8]) -> Option<Vec<u8>> {
        match self.naming {
            Naming::Exact => self.names.contains(name).then(|| name.to_vec()),
            Naming::Hex => {
                if !(8..=64).contains(&name.len()) || !name.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let lower = name.to_ascii_lowercase();
                let hits: Vec<&Vec<u8>> = self
                    .among
                    .iter()
                    .filter(|d| d.starts_with(&lower))
                    .collect();
                match hits.as_slice() {
                    [d] if self.names.contains(*d) => Some(d.to_vec()),
                    _ => None,
                }
            }
        }
    }
}

fn hex(d: &Digest) -> Vec<u8> {
    d.to_hex().into_bytes()
}

fn tree_names(store: &Store, d: &Digest) -> BTreeSet<Vec<u8>> {
    store
        .read_tree(d)
        .unwrap()
        .entries
        .iter()
        .map(|e| e.name.clone())
        .collect()
}

/// Every directory that takes names, modelled from the store on disk (not
/// through the code under test).
fn dirs(w: &World, r: &Resolver) -> Vec<Dir> {
    let store = &w.cache.store;
    let blobs: Vec<(Digest, Vec<u8>)> = all_blobs(&w.store);
    let all: Vec<Vec<u8>> = blobs.iter().map(|(d, _)| hex(d)).collect();
    let trees: BTreeSet<Vec<u8>> = blobs
        .iter()
        .filter(|(_, b)| Tree::decode(b).is_ok())
        .map(|(d, _)| hex(d))
        .collect();
    let keys: Vec<Vec<u8>> = w
        .cache
        .store
        .entry_keys()
        .unwrap()
        .iter()
        .map(hex)
        .collect();
    assert_eq!(keys.len(), 2);
    let exact = |node: Node, rel: &str, names: &[&[u8]]| Dir {
        node,
        rel: rel.into(),
        naming: Naming::Exact,
        names: names.iter().map(|n| n.to_vec()).collect(),
        among: Vec::new(),
    };
    let key_root = r
        .child(&Node::Top(Top::Keys), &hex(&w.build_key))
        .unwrap()
        .node;
    let output = match &key_root {
        Node::KeyRoot { output, .. } => *output,
        n => panic!("{n:?}"),
    };
    let bin = r.child(&key_root, b"bin").unwrap().node;
    let bin_tree = match &bin {
        Node::Dir { tree, .. } => *tree,
        n => panic!("{n:?}"),
    };
    let bk = w.build_key.to_hex();
    let run = w.run_id.to_string();
    vec![
        exact(
            Node::Root,
            "",
            &[
                b"keys", b"trees", b"blobs", b"dags", b"runs", b"why", b".dagfs",
            ],
        ),
        Dir {
            node: Node::Top(Top::Keys),
            rel: "keys".into(),
            naming: Naming::Hex,
            names: keys.iter().cloned().collect(),
            among: keys.clone(),
        },
        Dir {
            node: Node::Top(Top::Trees),
            rel: "trees".into(),
            naming: Naming::Hex,
            names: trees,
            among: all.clone(),
        },
        Dir {
            node: Node::Top(Top::Blobs),
            rel: "blobs".into(),
            naming: Naming::Hex,
            names: all.iter().cloned().collect(),
            among: all,
        },
        exact(Node::Top(Top::Dags), "dags", &[b"app"]),
        exact(Node::Top(Top::Why), "why", &[b"app"]),
        exact(Node::Top(Top::Runs), "runs", &[run.as_bytes(), b"latest"]),
        exact(Node::Top(Top::Meta), ".dagfs", &[b"stats", b"metrics"]),
        Dir {
            node: key_root,
            rel: format!("keys/{bk}"),
            naming: Naming::Exact,
            names: tree_names(store, &output),
            among: Vec::new(),
        },
        Dir {
            node: bin,
            rel: format!("keys/{bk}/bin"),
            naming: Naming::Exact,
            names: tree_names(store, &bin_tree),
            among: Vec::new(),
        },
        Dir {
            node: Node::Dir {
                tree: output,
                within: None,
            },
            rel: format!("trees/{}", output.to_hex()),
            naming: Naming::Exact,
            names: tree_names(store, &output),
            among: Vec::new(),
        },
        exact(
            Node::DagDir { dag: "app".into() },
            "dags/app",
            &[b"build", b"report"],
        ),
        exact(
            Node::WhyDir { dag: "app".into() },
            "why/app",
            &[b"build", b"report"],
        ),
        exact(
            Node::RunDir { id: w.run_id },
            &format!("runs/{run}"),
            &[b"build", b"report"],
        ),
    ]
}

/// Look-alikes of `0-9a-f` that are not ASCII: fullwidth digits and
/// letters, Cyrillic and Greek letters, Arabic-Indic and Devanagari digits,
/// mathematical digits, a zero-width space.
const LOOKALIKES: &[&str] = &[
    "０", "１", "２", "３", "９", "ａ", "ｂ", "ｃ", "ｆ", "Ａ", "Ｆ", "а", "в", "с", "е", "А", "В",
    "С", "Е", "о", "Ο", "ο", "α", "β", "٠", "١", "०", "१", "𝟎", "𝟏", "\u{200b}", "\u{feff}", "ß",
];

const CLASSICS: &[&[u8]] = &[
    b"",
    b".",
    b"..",
    b"...",
    b"/",
    b"//",
    b"./",
    b"../",
    b"../x",
    b"../../etc/passwd",
    b"../../../../../../../../etc/passwd",
    b"/etc/passwd",
    b"/etc",
    b"etc/passwd",
    b"x/..",
    b"x/../..",
    b"a/b",
    b"\0",
    b"a\0b",
    b"..\0",
    b"\0..",
    b"latest/..",
    b"keys",
    b"..\\..\\etc",
    b"%2e%2e",
    b"%2e%2e%2fetc",
    b".%2e",
    b" ",
    b"\n",
    b"\t..",
    b".. ",
    b"~",
    b"~root",
    b"$HOME",
    b"*",
    b"?",
    b"-1",
    b"+1",
    b"01",
    b"00",
    b"0x10",
    b"1e3",
    b"18446744073709551616",
    b"99999999999999999999",
    b".dagfs/stats",
    b"stats/",
    b"app/",
    b"app/build",
    b"../keys",
    b"\xff",
    b"\xc0\xae\xc0\xae",
    b"\xe2\x80\xae..",
];

/// At least `n` distinct crafted names, built from `reals` (names that do
/// resolve somewhere) and from scratch.
fn crafted(rng: &mut Rng, reals: &[Vec<u8>], n: usize) -> Vec<Vec<u8>> {
    let mut out: BTreeSet<Vec<u8>> = CLASSICS.iter().map(|c| c.to_vec()).collect();
    for len in [254, 255, 256, 257, 300, 1024, 4096] {
        out.insert(vec![b'a'; len]);
        out.insert(
            b"0123456789abcdef"
                .iter()
                .cycle()
                .take(len)
                .copied()
                .collect(),
        );
    }
    let hexdigits = b"0123456789abcdefABCDEF";
    while out.len() < n {
        let r = rng.pick(reals).clone();
        let name: Vec<u8> = match rng.below(20) {
            0 => r.to_ascii_uppercase(),
            1 => {
                // every prefix length, short ones included
                let k = 1 + rng.below(r.len().max(1));
                r[..k.min(r.len())].to_vec()
            }
            2 => [r.as_slice(), b"/"].concat(),
            3 => [b"/".as_slice(), &r].concat(),
            4 => [r.as_slice(), b"/.."].concat(),
            5 => [b"../".as_slice(), &r].concat(),
            6 => {
                let mut v = r.clone();
                let i = rng.below(v.len() + 1);
                v.insert(i, 0);
                v
            }
            7 => {
                let mut v = r.clone();
                if !v.is_empty() {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                v
            }
            8 => [r.as_slice(), &[*rng.pick(hexdigits)]].concat(),
            9 => [r.as_slice(), &r].concat(),
            10 | 11 => {
                // replace one or more characters by look-alikes
                let s = String::from_utf8_lossy(&r).into_owned();
                let mut chars: Vec<String> = s.chars().map(String::from).collect();
                for _ in 0..1 + rng.below(3) {
                    if !chars.is_empty() {
                        let i = rng.below(chars.len());
                        chars[i] = rng.pick(LOOKALIKES).to_string();
                    }
                }
                let v = chars.concat().into_bytes();
                if rng.below(2) == 0 && v.len() > 8 {
                    v[..8 + rng.below(v.len() - 8)].to_vec()
                } else {
                    v
                }
            }
            12 => {
                // non-UTF-8: a stray continuation or overlong byte
                let mut v = r.clone();
                let i = rng.below(v.len() + 1);
                v.insert(i, *rng.pick(&[0x80u8, 0xc0, 0xc1, 0xfe, 0xff, 0xed]));
                v
            }
            13 => [
                r.as_slice(),
                *rng.pick(&[&b" "[..], b"\n", b"\t", b".", b"~"]),
            ]
            .concat(),
            14 => [
                *rng.pick(&[&b" "[..], b"./", b".", b"+", b"-"]),
                r.as_slice(),
            ]
            .concat(),
            15 => {
                // wrong-length hex from scratch
                let len = *rng.pick(&[1usize, 2, 7, 63, 65, 66, 96, 128, 255, 256]);
                (0..len).map(|_| *rng.pick(hexdigits)).collect()
            }
            16 => {
                // random bytes, any length
                let len = rng.below(300);
                (0..len).map(|_| rng.next() as u8).collect()
            }
            17 => {
                // random from a traversal alphabet
                let len = 1 + rng.below(12);
                (0..len).map(|_| *rng.pick(b"./\0a")).collect()
            }
            18 => {
                // valid-looking hex of a legal length, mostly not in the store
                let len = 8 + rng.below(57);
                (0..len).map(|_| *rng.pick(&hexdigits[..16])).collect()
            }
            _ => {
                // a real name padded to 256+ bytes
                let mut v = r.clone();
                while v.len() <= 255 {
                    v.extend_from_slice(&r);
                    v.push(b'0');
                }
                v
            }
        };
        out.insert(name);
    }
    out.into_iter().collect()
}

fn reals(dirs: &[Dir]) -> Vec<Vec<u8>> {
    let mut v: BTreeSet<Vec<u8>> = BTreeSet::new();
    for d in dirs {
        v.extend(d.names.iter().cloned());
    }
    v.into_iter().collect()
}

/// Which digests a node shows, for the "only the store's own objects" check.
fn digests_of(node: &Node) -> Vec<Digest> {
    match node {
        Node::KeyRoot { output, .. } => vec![node.entry_key().expect("an entry's root"), *output],
        Node::Dir { tree, .. } => vec![*tree],
        Node::File { digest, .. } | Node::Blob { digest, .. } => vec![*digest],
        _ => Vec::new(),
    }
}

#[test]
fn ten_thousand_crafted_names_resolve_only_to_the_stores_own_objects() {
    let w = world();
    let checked = Checked(w.view.clone(), AtomicU64::new(0));
    let trees = TreeCache::new(64, 1 << 16);
    let r = Resolver {
        view: &checked,
        trees: &trees,
    };
    let dirs = dirs(&w, &r);
    let reals = reals(&dirs);
    let names = crafted(&mut Rng(0xdaf5_0001), &reals, 10_000);
    assert!(names.len() >= 10_000);
    let blob_files: BTreeSet<Digest> = all_blobs(&w.store).into_iter().map(|(d, _)| d).collect();
    let keys: BTreeSet<Digest> = w.cache.store.entry_keys().unwrap().into_iter().collect();
    let (mut resolved, mut refused) = (0usize, 0usize);
    // Every crafted name, and every real name, in every directory.
    for dir in &dirs {
        for name in names.iter().chain(&reals) {
            let got = r.child(&dir.node, name);
            let want = dir.expect(name);
            match (got, want) {
                (Ok(Found { node, canonical }), Some(full)) => {
                    resolved += 1;
                    assert!(safe_component(name));
                    if full != *name {
                        assert_eq!(
                            canonical.as_deref(),
                            Some(full.as_slice()),
                            "{}/{name:?}",
                            dir.rel
                        );
                        let by_full = r.child(&dir.node, &full).unwrap().node;
                        assert_eq!(
                            node, by_full,
                            "a prefix names the same node as the full hex"
                        );
                    }
                    for d in digests_of(&node) {
                        assert!(
                            blob_files.contains(&d) || keys.contains(&d),
                            "{}/{name:?} resolved to {d}, not an object of the store",
                            dir.rel
                        );
                    }
                    if let Node::File { digest, .. } | Node::Blob { digest, .. } = &node {
                        // A stored blob: a file under blobs/, or a packed one.
                        assert!(matches!(
                            w.view.open_blob(digest),
                            Ok(dagfs::fs::view::BlobData::File(_)
                                | dagfs::fs::view::BlobData::Bytes(_))
                        ));
                    }
                    if let Node::Symlink { target, .. } = &node {
                        // Links are served as stored, never resolved.
                        assert!(!target.is_empty());
                    }
                }
                (Ok(f), None) => panic!(
                    "{}/{name:?} resolved to {:?}, which the model refuses",
                    dir.rel, f.node
                ),
                (Err(e), Some(_)) => panic!("{}/{name:?} should resolve: {e}", dir.rel),
                (Err(e), None) => {
                    refused += 1;
                    assert_eq!(errno(&e), fuser::Errno::ENOENT, "{}/{name:?}: {e}", dir.rel);
                }
            }
        }
    }
    eprintln!(
        "{} names x {} directories: {resolved} resolved, {refused} ENOENT, {} prefix lookups reached the store",
        names.len() + reals.len(),
        dirs.len(),
        checked.1.load(Ordering::Relaxed)
    );
    // The set is not vacuous: real names and their prefixes resolve.
    assert!(resolved > 100, "{resolved}");
    assert!(checked.1.load(Ordering::Relaxed) > 1000);
}

// ---------------------------------------------------------------------------
// the same names through a real mount
// ---------------------------------------------------------------------------

struct Unmount(Option<fuser::BackgroundSession>, PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            if let Err(e) = s.umount_and_join() {
                eprintln!("umount {}: {e}; detaching", self.1.display());
            }
        }
        if is_mounted(&self.1) {
            let c = CString::new(self.1.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path; no memory is shared.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn is_mounted(mnt: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mnt.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(want))
}

fn mount_world(w: &World) -> (Unmount, PathBuf) {
    let opts = FsOptions::default();
    let fs_ = DagFs::new(w.view.clone(), &opts, Arc::new(FsCounters::default()));
    let mnt = w.root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let session = mount(fs_, &mnt, &opts).expect("mount");
    let guard = Unmount(Some(session), mnt.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(is_mounted(&mnt) && fs::metadata(mnt.join("keys")).is_ok()) {
        assert!(Instant::now() < deadline, "timed out waiting for the mount");
        std::thread::sleep(Duration::from_millis(10));
    }
    (guard, mnt)
}

fn lstat_errno(p: &Path) -> Result<libc::stat, i32> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: `st` is a plain struct lstat fills; `c` is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn crafted_names_through_a_real_mount_are_enoent() {
    let w = world();
    let trees = TreeCache::new(64, 1 << 16);
    let r = Resolver {
        view: &*w.view,
        trees: &trees,
    };
    let dirs = dirs(&w, &r);
    let reals = reals(&dirs);
    let names = crafted(&mut Rng(0xdaf5_0002), &reals, 2_000);
    let (_guard, mnt) = mount_world(&w);
    let mount_dev = fs::metadata(&mnt).unwrap().dev();
    // One component each: a `/` would make several lookups, NUL cannot
    // cross the syscall, and `.`/`..` the kernel answers itself.
    let sample: Vec<&Vec<u8>> = names
        .iter()
        .filter(|n| {
            !n.is_empty() && !n.contains(&b'/') && !n.contains(&0) && *n != b"." && *n != b".."
        })
        .collect();
    let (mut ok, mut enoent, mut toolong) = (0, 0, 0);
    for dir in &dirs {
        let base = if dir.rel.is_empty() {
            mnt.clone()
        } else {
            mnt.join(&dir.rel)
        };
        for name in sample.iter().copied().chain(&reals) {
            let p = base.join(std::ffi::OsStr::from_bytes(name));
            match (lstat_errno(&p), dir.expect(name)) {
                (Ok(st), Some(_)) => {
                    ok += 1;
                    assert_eq!(st.st_dev, mount_dev, "{} left the mount", p.display());
                }
                (Ok(_), None) => panic!("{} exists; the model refuses it", p.display()),
                (Err(e), Some(_)) => panic!("{}: errno {e}, should exist", p.display()),
                // FUSE passes names of up to 1024 bytes (FUSE_NAME_MAX) on
                // to dagfs, which answers ENOENT; the kernel refuses longer.
                (Err(e), None) if name.len() > 1024 => {
                    assert_eq!(e, libc::ENAMETOOLONG, "{}", p.display());
                    toolong += 1;
                }
                (Err(e), None) => {
                    assert_eq!(e, libc::ENOENT, "{}", p.display());
                    enoent += 1;
                }
            }
        }
    }
    eprintln!(
        "{} names x {} directories through the mount: {ok} found, {enoent} ENOENT, {toolong} ENAMETOOLONG",
        sample.len() + reals.len(),
        dirs.len()
    );
    assert!(ok > 50 && enoent > 1000, "{ok} {enoent}");
}

// ---------------------------------------------------------------------------
// symlinks out of outputs and synced directories
// ---------------------------------------------------------------------------

fn readlink(p: &Path) -> Vec<u8> {
    fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec()
}

#[test]
fn links_out_of_an_output_are_stored_as_links_and_the_mount_never_reads_through_them() {
    let w = world();
    let e = w.view.entry(&w.build_key).unwrap().unwrap();
    let tree = w.cache.store.read_tree(&e.output).unwrap();
    let link = |n: &[u8]| match &tree.find(n).unwrap().node {
        TNode::Symlink { target } => target.clone(),
        other => panic!("{n:?} stored as {other:?}"),
    };
    let secret = w.secret.file.as_os_str().as_bytes().to_vec();
    assert_eq!(link(b"passwd-link"), b"/etc/passwd");
    assert_eq!(link(b"up3"), b"../../..");
    assert_eq!(link(b"secret-abs"), secret);
    assert!(link(b"secret-rel").ends_with(&secret[1..]));
    assert_eq!(link(b"hostdir-link"), w.secret.dir.as_os_str().as_bytes());
    assert_no_host_bytes(&w.store, &w.secret);

    let (_guard, mnt) = mount_world(&w);
    let mount_dev = fs::metadata(&mnt).unwrap().dev();
    let k = mnt.join("keys").join(w.build_key.to_hex());
    for name in [
        "passwd-link",
        "up3",
        "secret-abs",
        "secret-rel",
        "hostdir-link",
    ] {
        let p = k.join(name);
        assert_eq!(readlink(&p), link(name.as_bytes()), "{name}");
        let md = fs::symlink_metadata(&p).unwrap();
        assert!(md.file_type().is_symlink());
        assert_eq!(md.dev(), mount_dev);
        assert_eq!(md.len(), link(name.as_bytes()).len() as u64);
        // The mount serves the link itself, never the bytes behind it.
        let err = fs::OpenOptions::new()
            .read(true)
            .custom_flags_nofollow()
            .open(&p)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{name}");
    }
    // A relative link resolves relative to where the mount shows it:
    // keys/<key>/bin/up -> ../.. is keys/.
    let up = fs::metadata(k.join("bin/up")).unwrap();
    let keys = fs::metadata(mnt.join("keys")).unwrap();
    assert_eq!((up.dev(), up.ino()), (keys.dev(), keys.ino()));
    // Through /trees and /blobs alike.
    let t = mnt.join("trees").join(e.output.to_hex());
    assert_eq!(readlink(&t.join("secret-abs")), secret);
    assert_eq!(readlink(&t.join("passwd-link")), b"/etc/passwd");
    // Everything readable under the mount's keys holds no host byte.
    let mut stack = vec![k.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                assert!(!contains(&fs::read(&p).unwrap(), MARKER), "{}", p.display());
            }
        }
    }
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW)
    }
}

#[test]
fn links_out_of_a_synced_directory_are_stored_as_links() {
    let w = world();
    let src = w.root.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"mine\n").unwrap();
    symlink("/etc/passwd", src.join("passwd-link")).unwrap();
    symlink(&w.secret.file, src.join("secret-abs")).unwrap();
    symlink(&w.secret.dir, src.join("sub/hostdir")).unwrap();
    symlink("../../../../../../../../..", src.join("sub/up")).unwrap();
    let rep = dagfs::sync::sync_dir(&w.cache, &src, Some("src"), &ScanOptions::default()).unwrap();
    let root = w.cache.store.read_tree(&rep.snapshot.tree).unwrap();
    let link = |t: &Tree, n: &[u8]| match &t.find(n).unwrap().node {
        TNode::Symlink { target } => target.clone(),
        other => panic!("{n:?} stored as {other:?}"),
    };
    assert_eq!(link(&root, b"passwd-link"), b"/etc/passwd");
    assert_eq!(
        link(&root, b"secret-abs"),
        w.secret.file.as_os_str().as_bytes()
    );
    let sub = match &root.find(b"sub").unwrap().node {
        TNode::Dir { digest } => w.cache.store.read_tree(digest).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(link(&sub, b"hostdir"), w.secret.dir.as_os_str().as_bytes());
    assert_eq!(link(&sub, b"up"), b"../../../../../../../../..");
    assert_no_host_bytes(&w.store, &w.secret);
}

// ---------------------------------------------------------------------------
// swap races
// ---------------------------------------------------------------------------

/// Swap `a` and `b` atomically (either may be a symlink); false if one is
/// gone (ingest takes files over: moves them out of the output).
fn exchange(a: &Path, b: &Path) -> bool {
    nix::fcntl::renameat2(None, a, None, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE).is_ok()
}

/// Swap each (real, decoy) pair back and forth until `stop`, counting swaps
/// in `swaps`, holding each state for `hold` (zero: a spin). Leaves the
/// real ones in place.
fn swapper(
    pairs: Vec<(PathBuf, PathBuf)>,
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    hold: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (a, b) in &pairs {
                if exchange(a, b) {
                    n += 1;
                    swaps.store(n, Ordering::Relaxed);
                    pause(hold);
                    exchange(a, b);
                    pause(hold);
                }
            }
        }
    })
}

fn pause(hold: Duration) {
    if hold.is_zero() {
        std::hint::spin_loop();
    } else {
        std::thread::sleep(hold);
    }
}

/// A host directory laid out like the tree a race attacks, every file
/// holding the secret (same sizes as the real files, so a size check
/// cannot tell them apart).
fn host_twin(secret: &Secret, files: &[&str], size: usize) -> PathBuf {
    let twin = secret.dir.join("twin");
    fs::create_dir_all(&twin).unwrap();
    for f in files {
        let mut b = secret.bytes.clone();
        b.resize(size, b'#');
        fs::write(twin.join(f), &b).unwrap();
        fs::set_permissions(twin.join(f), fs::Permissions::from_mode(0o600)).unwrap();
    }
    twin
}

fn assert_twin_untouched(twin: &Path, files: &[&str], size: usize) {
    for f in files {
        let p = twin.join(f);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(md.is_file() && md.len() == size as u64, "{}", p.display());
        assert_eq!(md.mode() & 0o7777, 0o600, "{} was chmod-ed", p.display());
    }
}

const RACE_FILES: &[&str] = &["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"];
const RACE_SIZE: usize = 64;

/// Lay out `dir/f` and `dir/d/f0..f7` (task bytes), and decoys beside them:
/// symlinks to the host secret and to its twin directory.
fn race_tree(dir: &Path, decoys: &Path, secret: &Secret, twin: &Path) -> Vec<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir.join("d")).unwrap();
    fs::create_dir_all(decoys).unwrap();
    fs::write(dir.join("f"), vec![b'f'; RACE_SIZE]).unwrap();
    for f in RACE_FILES {
        fs::write(dir.join("d").join(f), vec![b't'; RACE_SIZE]).unwrap();
    }
    symlink(&secret.file, decoys.join("f")).unwrap();
    symlink(twin, decoys.join("d")).unwrap();
    vec![
        (dir.join("f"), decoys.join("f")),
        (dir.join("d"), decoys.join("d")),
    ]
}

/// No blob named in `tree` (recursively) nor in the store holds host bytes.
fn secret_digests(secret: &Secret) -> BTreeSet<Digest> {
    let mut twin = secret.bytes.clone();
    twin.resize(RACE_SIZE, b'#');
    [Digest::of(&secret.bytes), Digest::of(&twin)].into()
}

#[test]
fn ingest_never_reads_through_a_file_or_directory_swapped_for_a_symlink() {
    let w = world();
    let store = &w.cache.store;
    let twin = host_twin(&w.secret, RACE_FILES, RACE_SIZE);
    let bad = secret_digests(&w.secret);
    let (mut ok, mut refused, mut swaps_total) = (0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..1000 {
        let out = store.tempdir("race-out-").unwrap();
        let decoys = store.tempdir("race-decoy-").unwrap();
        let pairs = race_tree(out.path(), decoys.path(), &w.secret, &twin);
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let t = swapper(pairs, stop.clone(), swaps.clone(), Duration::ZERO);
        while swaps.load(Ordering::Relaxed) == 0 {
            std::hint::spin_loop();
        }
        let work = store.tempdir("race-work-").unwrap();
        let mut staged = Staged::default();
        let got = ingest_dir(
            out.path(),
            Sink::Store {
                store,
                work: work.path(),
                staged: &mut staged,
            },
        )
        .and_then(|got| {
            staged.relocate(work.path(), "moved")?;
            store.commit(staged)?;
            Ok(got)
        });
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        swaps_total += swaps.load(Ordering::Relaxed);
        match got {
            Ok(_) => ok += 1,
            Err(e) => {
                refused += 1;
                let kind = e.to_string();
                let kind = kind.rsplit(':').next().unwrap_or("").trim().to_string();
                *errors.entry(kind).or_default() += 1;
            }
        }
        for d in &bad {
            assert!(
                !store.has_blob(d),
                "iteration {i}: host bytes stored as blob {d}"
            );
        }
        w.secret.assert_untouched();
        assert_twin_untouched(&twin, RACE_FILES, RACE_SIZE);
    }
    eprintln!("1000 ingests racing {swaps_total} swaps: {ok} stored, {refused} refused {errors:?}");
    assert_no_host_bytes(&w.store, &w.secret);
    assert!(swaps_total >= 1000);
}

#[test]
fn sync_never_reads_through_a_file_or_directory_swapped_for_a_symlink() {
    let w = world();
    let twin = host_twin(&w.secret, RACE_FILES, RACE_SIZE);
    let bad = secret_digests(&w.secret);
    let src = w.root.join("synced");
    let decoys = w.root.join("decoys");
    let pairs = race_tree(&src, &decoys, &w.secret, &twin);
    let (mut ok, mut refused, mut swaps_total) = (0u64, 0u64, 0u64);
    for i in 0..1000 {
        // Touch the files, so the stat cache does not answer for them.
        for f in RACE_FILES {
            fs::write(src.join("d").join(f), format!("{i:0>64}")).unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let t = swapper(pairs.clone(), stop.clone(), swaps.clone(), Duration::ZERO);
        while swaps.load(Ordering::Relaxed) == 0 {
            std::hint::spin_loop();
        }
        let got = dagfs::sync::sync_dir(&w.cache, &src, Some("race"), &ScanOptions::default());
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        swaps_total += swaps.load(Ordering::Relaxed);
        match got {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        for d in &bad {
            assert!(
                !w.cache.store.has_blob(d),
                "iteration {i}: host bytes stored as blob {d}"
            );
        }
        w.secret.assert_untouched();
        assert_twin_untouched(&twin, RACE_FILES, RACE_SIZE);
    }
    eprintln!("1000 syncs racing {swaps_total} swaps: {ok} stored, {refused} refused");
    assert_no_host_bytes(&w.store, &w.secret);
    assert!(ok > 0, "some syncs got through between swaps");
}

#[test]
fn dagfs_sync_binary_never_reads_through_a_swapped_directory() {
    let w = world();
    let twin = host_twin(&w.secret, RACE_FILES, RACE_SIZE);
    let bad = secret_digests(&w.secret);
    let src = w.root.join("synced");
    let decoys = w.root.join("decoys");
    let pairs = race_tree(&src, &decoys, &w.secret, &twin);
    let store = w.store.clone();
    let secret_file = w.secret.file.clone();
    // The CLI opens the store itself: this process lets go of it first.
    drop(w.view);
    drop(w.cache);
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    // Each state held for a while: a process start is slow next to a swap.
    let t = swapper(pairs, stop.clone(), swaps.clone(), Duration::from_millis(3));
    let (mut ok, mut refused) = (0, 0);
    for i in 0..50 {
        for f in RACE_FILES {
            fs::write(src.join("d").join(f), format!("{i:0>64}")).unwrap();
        }
        let o = Command::new(BIN)
            .arg("--store")
            .arg(&store)
            .args(["sync", "--name", "race"])
            .arg(&src)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if o.status.success() {
            ok += 1;
        } else {
            refused += 1;
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let store_ = Store::open(&store, &mut |_| {}).unwrap();
    for d in &bad {
        assert!(!store_.has_blob(d), "host bytes stored as blob {d}");
    }
    let secret = Secret {
        dir: secret_file.parent().unwrap().to_path_buf(),
        file: secret_file,
        bytes: w.secret.bytes.clone(),
    };
    drop(store_);
    assert_no_host_bytes(&store, &secret);
    assert_twin_untouched(&twin, RACE_FILES, RACE_SIZE);
    eprintln!(
        "50 `dagfs sync` runs racing {} swaps: {ok} stored, {refused} refused",
        swaps.load(Ordering::Relaxed)
    );
}
