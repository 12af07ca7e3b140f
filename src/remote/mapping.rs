//! How a dagfs entry maps onto REAPI v2 messages. Pure functions: no I/O.
//!
//! ```text
//! recipe  = BLAKE3-derive("dagfs remote recipe v1", task digest,
//!             deps sorted by name: (dep name, dep OUTPUT digest))
//!           (the cache key without the task's name: the same step in two
//!           pipelines or repositories shares one result)
//! Command = {arguments: ["/bin/sh", "-c", command],
//!            env: declared names, each value as `blake3:<16 hex>` (values may be secrets),
//!            working_directory: cwd, output_paths: ["out"]}   (for people browsing)
//! Action  = {command_digest, input_root_digest: the empty Directory,
//!            salt: the 32 recipe bytes}
//! ActionResult = {output_directories: [{path: "out", tree_digest, root_directory_digest}],
//!                 output_files: [{path: ".dagfs/entry.json"}]  (the producer's entry record),
//!                 exit_code, stdout_digest, stderr_digest}
//! ```
//!
//! A dagfs tree becomes one `Directory` per directory (files with their
//! REAPI digest and executable bit, subdirectories by digest, symlinks with
//! their target), and the whole output one `Tree` (root + every child), so
//! subtrees and files dedupe on the server. Under SHA-256 every blob is
//! hashed once more; under BLAKE3 a blob's REAPI hash is its dagfs name.

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;
use sha2::Digest as _;

use crate::hash::Digest;
use crate::store::tree::{Node, Tree, TreeEntry};
use crate::store::Manifest;

/// The path of the output directory in an ActionResult.
pub const OUT: &str = "out";
/// The path of the producer's entry record in an ActionResult.
pub const ENTRY_FILE: &str = ".dagfs/entry.json";

/// The digest function agreed with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestFn {
    Sha256,
    Blake3,
}

impl DigestFn {
    pub fn of(self, bytes: &[u8]) -> re::Digest {
        let hash = match self {
            DigestFn::Sha256 => crate::hash::to_hex(&sha2::Sha256::digest(bytes)),
            DigestFn::Blake3 => Digest::of(bytes).to_hex(),
        };
        re::Digest {
            hash,
            size_bytes: bytes.len() as i64,
        }
    }

    /// The value sent in requests' `digest_function` field.
    pub fn proto(self) -> i32 {
        match self {
            DigestFn::Sha256 => re::digest_function::Value::Sha256 as i32,
            DigestFn::Blake3 => re::digest_function::Value::Blake3 as i32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DigestFn::Sha256 => "sha256",
            DigestFn::Blake3 => "blake3",
        }
    }
}

/// The recipe of a task: its key without its name (see the module header).
pub fn recipe(task_digest: &Digest, deps: &[(String, Digest)]) -> Digest {
    crate::exec::key::KeyBuilder::recipe(task_digest, deps)
}

/// The messages that identify one recipe on the server.
pub struct ActionMsgs {
    pub action: Vec<u8>,
    pub command: Vec<u8>,
    pub input_root: Vec<u8>,
    pub action_digest: re::Digest,
}

impl ActionMsgs {
    pub fn new(m: &Manifest, f: DigestFn) -> ActionMsgs {
        let mut env: Vec<_> = m
            .env
            .iter()
            .filter_map(|(k, v)| {
                // NB: never the value itself: a declared variable may hold a
                // secret, and the server is shared. The salt carries identity.
                v.as_ref().map(|v| re::command::EnvironmentVariable {
                    name: k.clone(),
                    value: format!("blake3:{}", &Digest::of(v.as_bytes()).to_hex()[..16]),
                })
            })
            .collect();
        env.sort_by(|a, b| a.name.cmp(&b.name));
        let command = re::Command {
            arguments: vec!["/bin/sh".into(), "-c".into(), m.command.clone()],
            environment_variables: env,
            working_directory: m.cwd.trim_matches('/').to_string(),
            output_paths: vec![OUT.into()],
            ..Default::default()
        }
        .encode_to_vec();
        let input_root = re::Directory::default().encode_to_vec();
        let action = re::Action {
            command_digest: Some(f.of(&command)),
            input_root_digest: Some(f.of(&input_root)),
            salt: recipe(&m.task_digest, &m.deps).as_bytes().to_vec(),
            ..Default::default()
        }
        .encode_to_vec();
        ActionMsgs {
            action_digest: f.of(&action),
            action,
            command,
            input_root,
        }
    }
}

/// A name that REAPI cannot carry (not UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the name {0:?} is not UTF-8 (REAPI names are strings)")]
pub struct NotUtf8(pub String);

/// One dagfs tree as a `Directory`: `file` gives each file blob's REAPI
/// digest, `dir` each child tree's `Directory` digest.
pub fn directory(
    t: &Tree,
    mut file: impl FnMut(&Digest, u64) -> re::Digest,
    mut dir: impl FnMut(&Digest) -> re::Digest,
) -> Result<re::Directory, NotUtf8> {
    let mut d = re::Directory::default();
    for e in &t.entries {
        let name = String::from_utf8(e.name.clone())
            .map_err(|_| NotUtf8(String::from_utf8_lossy(&e.name).into_owned()))?;
        match &e.node {
            Node::File { size, digest, exec } => d.files.push(re::FileNode {
                name,
                digest: Some(file(digest, *size)),
                is_executable: *exec,
                ..Default::default()
            }),
            Node::Dir { digest } => d.directories.push(re::DirectoryNode {
                name,
                digest: Some(dir(digest)),
            }),
            Node::Symlink { target } => d.symlinks.push(re::SymlinkNode {
                name,
                target: String::from_utf8(target.clone())
                    .map_err(|_| NotUtf8(String::from_utf8_lossy(target).into_owned()))?,
                ..Default::default()
            }),
        }
    }
    Ok(d)
}

/// A `Directory` back as a dagfs tree: `file` maps a file's REAPI digest
/// to its dagfs digest, `dir` a child `Directory`'s digest to its tree
/// digest. The tree is sorted; the caller encodes and checks it.
pub fn tree_of(
    d: &re::Directory,
    mut file: impl FnMut(&re::Digest) -> Result<Digest, String>,
    mut dir: impl FnMut(&re::Digest) -> Result<Digest, String>,
) -> Result<Tree, String> {
    let mut t = Tree::default();
    let need = |d: &Option<re::Digest>, name: &str| {
        d.clone().ok_or_else(|| format!("`{name}` has no digest"))
    };
    for f in &d.files {
        let rd = need(&f.digest, &f.name)?;
        t.entries.push(TreeEntry {
            name: f.name.clone().into_bytes(),
            node: Node::File {
                size: u64::try_from(rd.size_bytes).map_err(|_| "negative size".to_string())?,
                digest: file(&rd)?,
                exec: f.is_executable,
            },
        });
    }
    for c in &d.directories {
        let rd = need(&c.digest, &c.name)?;
        t.entries.push(TreeEntry {
            name: c.name.clone().into_bytes(),
            node: Node::Dir { digest: dir(&rd)? },
        });
    }
    for s in &d.symlinks {
        t.entries.push(TreeEntry {
            name: s.name.clone().into_bytes(),
            node: Node::Symlink {
                target: s.target.clone().into_bytes(),
            },
        });
    }
    t.sort();
    Ok(t)
}

/// The key a digest has in maps (hash and size).
pub fn dkey(d: &re::Digest) -> (String, i64) {
    (d.hash.clone(), d.size_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str) -> Manifest {
        Manifest {
            name: name.into(),
            command: "cc -c a.c".into(),
            cwd: "src".into(),
            env: vec![("CC".into(), Some("gcc".into()))],
            task_digest: Digest::of(b"task"),
            deps: vec![("gen".into(), Digest::of(b"out"))],
            ..Default::default()
        }
    }

    #[test]
    fn action_digest_is_a_function_of_the_recipe_not_the_name() {
        for f in [DigestFn::Sha256, DigestFn::Blake3] {
            let a = ActionMsgs::new(&manifest("compile"), f).action_digest;
            let b = ActionMsgs::new(&manifest("other_name"), f).action_digest;
            assert_eq!(a, b);
            let mut m = manifest("compile");
            m.deps[0].1 = Digest::of(b"other output");
            assert_ne!(ActionMsgs::new(&m, f).action_digest, a);
            let mut m = manifest("compile");
            m.task_digest = Digest::of(b"other task");
            assert_ne!(ActionMsgs::new(&m, f).action_digest, a);
        }
        assert_eq!(
            DigestFn::Sha256.of(b"").hash,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(DigestFn::Blake3.of(b"x").hash, Digest::of(b"x").to_hex());
    }

    #[test]
    fn directory_round_trips_and_refuses_non_utf8() {
        let t = Tree {
            entries: vec![
                TreeEntry {
                    name: b"a".to_vec(),
                    node: Node::File {
                        size: 1,
                        digest: Digest::of(b"1"),
                        exec: true,
                    },
                },
                TreeEntry {
                    name: b"b".to_vec(),
                    node: Node::Dir {
                        digest: Digest::of(b"sub"),
                    },
                },
                TreeEntry {
                    name: b"c".to_vec(),
                    node: Node::Symlink {
                        target: b"a".to_vec(),
                    },
                },
            ],
        };
        let f = DigestFn::Sha256;
        let file = |d: &Digest, s: u64| re::Digest {
            hash: f.of(d.as_bytes()).hash,
            size_bytes: s as i64,
        };
        let d = directory(&t, file, |d| f.of(d.as_bytes())).unwrap();
        let back = tree_of(
            &d,
            |rd| {
                Ok(if rd.hash == f.of(Digest::of(b"1").as_bytes()).hash {
                    Digest::of(b"1")
                } else {
                    Digest::default()
                })
            },
            |_| Ok(Digest::of(b"sub")),
        )
        .unwrap();
        assert_eq!(back, t);
        let bad = Tree {
            entries: vec![TreeEntry {
                name: vec![0xff],
                node: Node::Symlink {
                    target: b"x".to_vec(),
                },
            }],
        };
        assert!(directory(&bad, file, |d| f.of(d.as_bytes())).is_err());
    }
}
