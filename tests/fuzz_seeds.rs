//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/`) are encodings
//! of real values made by the real encoders, plus edge cases; this test
//! checks the committed files are exactly those (so a format change that
//! leaves the seeds stale fails here), and that the valid seeds are valid.
//! `DAGFS_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_seeds` rewrites them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dagfs::daemon::protocol::{self, Hello, Request};
use dagfs::exec::Pipeline;
use dagfs::hash::Digest;
use dagfs::store::tree::{Node, Tree, TreeEntry};

fn file(size: u64, what: &[u8], exec: bool) -> Node {
    Node::File {
        size,
        digest: Digest::of(what),
        exec,
    }
}

fn tree(entries: Vec<(&[u8], Node)>) -> Tree {
    let mut t = Tree {
        entries: entries
            .into_iter()
            .map(|(n, node)| TreeEntry {
                name: n.to_vec(),
                node,
            })
            .collect(),
    };
    t.sort();
    t
}

/// (name, bytes, valid): valid seeds must decode/parse.
type Seeds = Vec<(&'static str, Vec<u8>, bool)>;

fn tree_seeds() -> Seeds {
    let full = tree(vec![
        (b"hello.txt", file(6, b"hello\n", false)),
        (b"greet", file(30, b"#!/bin/sh", true)),
        (
            b"passwd-link",
            Node::Symlink {
                target: b"/etc/passwd".to_vec(),
            },
        ),
        (
            b"up",
            Node::Symlink {
                target: b"../..".to_vec(),
            },
        ),
        (
            b"src",
            Node::Dir {
                digest: Digest::of(b"sub"),
            },
        ),
        (b"caf\xe9", file(0, b"", false)),
    ]);
    let long = tree(vec![
        (&[b'n'; 255], file(u64::MAX, b"x", false)),
        (
            b"t",
            Node::Symlink {
                target: vec![b'a'; 4095],
            },
        ),
    ]);
    let mut trailing = full.encode();
    trailing.push(0);
    let mut unsorted = full.clone();
    unsorted.entries.reverse();
    let dotdot = Tree {
        entries: vec![TreeEntry {
            name: b"..".to_vec(),
            node: Node::Dir {
                digest: Digest::of(b"up"),
            },
        }],
    };
    let mut huge_count = Tree::default().encode();
    huge_count[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
    let enc = full.encode();
    vec![
        ("empty", Tree::default().encode(), true),
        ("full", enc.clone(), true),
        ("long-name-and-target", long.encode(), true),
        ("truncated", enc[..enc.len() - 7].to_vec(), false),
        ("trailing", trailing, false),
        ("unsorted", unsorted.encode(), false),
        ("dotdot-name", dotdot.encode(), false),
        ("huge-count", huge_count, false),
        ("bad-magic", b"DAGX\x01\x00\x00\x00\x00".to_vec(), false),
    ]
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    protocol::write_frame(&mut b, kind, payload).unwrap();
    b
}

fn json_frame(kind: u8, v: &impl serde::Serialize) -> Vec<u8> {
    let mut b = Vec::new();
    protocol::write_json(&mut b, kind, v).unwrap();
    b
}

fn protocol_seeds() -> Seeds {
    let hello = Hello {
        protocol: protocol::PROTOCOL,
        agent: "dagfs 0.1.0".into(),
        pid: None,
        mountpoint: None,
    };
    let server = Hello {
        pid: Some(4242),
        mountpoint: Some("/mnt/dagfs".into()),
        ..hello.clone()
    };
    let request = Request {
        command: serde_json::json!({"Run": {"file": "/src/dagfs.toml", "jobs": 2, "keep_going": false}}),
        cwd: "/src".into(),
        env: vec![
            ("LANG".into(), "C.UTF-8".into()),
            ("PATH".into(), "/usr/bin".into()),
        ],
        stderr_tty: true,
    };
    let session = [
        json_frame(protocol::HELLO, &hello),
        json_frame(protocol::HELLO, &server),
        json_frame(protocol::REQUEST, &request),
        frame(protocol::STDOUT, b"summary: 2 hits\n"),
        frame(protocol::STDERR, b"\x1b[2K[2/2] build\r"),
        frame(protocol::EXIT, &0i32.to_le_bytes()),
        frame(protocol::SHUTDOWN, b""),
    ]
    .concat();
    vec![
        ("hello", json_frame(protocol::HELLO, &hello), true),
        ("hello-server", json_frame(protocol::HELLO, &server), true),
        ("request", json_frame(protocol::REQUEST, &request), true),
        ("session", session, true),
        (
            "exit-minus-one",
            frame(protocol::EXIT, &(-1i32).to_le_bytes()),
            true,
        ),
        ("error", frame(protocol::ERROR, b"protocol 2 != 1"), true),
        ("shutdown", frame(protocol::SHUTDOWN, b""), true),
        ("empty-frame", vec![0, 0, 0, 0], false),
        (
            "too-large",
            (protocol::MAX_FRAME + 1).to_le_bytes().to_vec(),
            false,
        ),
        ("unknown-kind", vec![1, 0, 0, 0, 99], false),
        ("truncated", vec![9, 0, 0, 0, protocol::STDOUT, b'x'], false),
        ("short-length", vec![5, 0], false),
        (
            "bad-json",
            frame(protocol::HELLO, b"{\"protocol\": \"one\""),
            true,
        ),
    ]
}

fn pipeline_seeds() -> Seeds {
    let s = |t: &str| t.as_bytes().to_vec();
    vec![
        (
            "design",
            s("[tasks.fetch]\nrun = \"cp data/input.csv $DAGFS_OUT/input.csv\"\ninputs = [\"data/\"]\nenv = [\"LANG\"]\n\n[tasks.report]\nrun = \"wc -l $DAGFS_IN/fetch/input.csv > $DAGFS_OUT/report.txt\"\ndeps = [\"fetch\"]\nttl = \"1h\"\ncache = true\n"),
            true,
        ),
        (
            "all-fields",
            s("name = \"app\"\n[tasks.a]\nrun = \"echo a\"\nversion = \"2\"\ncwd = \"sub/dir\"\nttl = \"7d\"\ncache = false\nenv = [\"_X1\", \"PATH\"]\ninputs = [\"src\", \"Cargo.toml\"]\n[tasks.\"b.c+d@e-f_g\"]\nrun = '''\nset -e\nprintf 'multi\\nline'\n'''\ndeps = [\"a\", \"a\"]\n"),
            true,
        ),
        ("diamond", s("[tasks.a]\nrun=\"a\"\n[tasks.b]\nrun=\"b\"\ndeps=[\"a\"]\n[tasks.c]\nrun=\"c\"\ndeps=[\"a\"]\n[tasks.d]\nrun=\"d\"\ndeps=[\"b\",\"c\"]\n"), true),
        ("empty", Vec::new(), true),
        ("cycle", s("[tasks.a]\nrun=\"x\"\ndeps=[\"c\"]\n[tasks.b]\nrun=\"y\"\ndeps=[\"a\"]\n[tasks.c]\nrun=\"z\"\ndeps=[\"b\"]\n"), false),
        ("unknown-dep", s("[tasks.a]\nrun = \"x\"\ndeps = [\"nope\"]\n"), false),
        ("duplicate", s("[tasks.a]\nrun = \"x\"\n[tasks.a]\nrun = \"y\"\n"), false),
        ("traversal", s("[tasks.\"../a\"]\nrun = \"x\"\ninputs = [\"../../etc\", \"/etc/passwd\"]\ncwd = \"..\"\n"), false),
        ("bad-values", s("[tasks.a]\nrun = \"  \"\nenv = [\"A B\", \"1X\"]\nttl = \"18446744073709551615w\"\n"), false),
        ("unicode-error-span", s("name = \"ａｐｐ\"\n[tasks.é]\nrun = \"é\"\nbogus = \"ü\"\n"), false),
        ("bad-toml", s("[tasks.a\nrun=1"), false),
    ]
}

fn names_seeds() -> Seeds {
    let d = Digest::of(b"dagfs");
    let h = d.to_hex();
    let b = |s: &[u8]| s.to_vec();
    vec![
        ("full-hex", b(h.as_bytes()), true),
        ("prefix-8", b(&h.as_bytes()[..8]), true),
        ("upper", b(h.to_ascii_uppercase().as_bytes()), true),
        ("prefix-7", b(&h.as_bytes()[..7]), true),
        ("hex-65", b(format!("{h}0").as_bytes()), true),
        ("dotdot", b(b".."), true),
        ("traversal", b(b"../../etc/passwd"), true),
        ("slash", b(b"a/b"), true),
        ("nul", b(b"3fa9c2d1\0"), true),
        ("empty", Vec::new(), true),
        ("long", vec![b'a'; 256], true),
        ("fullwidth", b("３ｆａ９ｃ２ｄ１".as_bytes()), true),
        ("cyrillic", b("3fа9с2d1".as_bytes()), true),
        ("non-utf8", b(b"3fa9\xffc2d1"), true),
        ("run-id", b(b"17"), true),
        ("run-id-leading-zero", b(b"017"), true),
        ("latest", b(b"latest"), true),
        ("label", b(b"build"), true),
    ]
}

fn check_valid(target: &str, name: &str, bytes: &[u8], valid: bool) {
    let ok = match target {
        "tree" => Tree::decode(bytes).is_ok(),
        "protocol" => protocol::decode_all(bytes).iter().all(Result::is_ok),
        "pipeline" => std::str::from_utf8(bytes)
            .ok()
            .is_some_and(|t| Pipeline::parse(Path::new("/nonexistent/x/dagfs.toml"), t).is_ok()),
        _ => true,
    };
    assert_eq!(
        ok, valid,
        "{target}/{name}: valid is {ok}, seeded as {valid}"
    );
}

#[test]
fn fuzz_seed_corpora_are_real_encodings_and_committed() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = std::env::var_os("DAGFS_WRITE_FUZZ_SEEDS").is_some();
    let all: BTreeMap<&str, Seeds> = [
        ("tree", tree_seeds()),
        ("protocol", protocol_seeds()),
        ("pipeline", pipeline_seeds()),
        ("names", names_seeds()),
    ]
    .into();
    for (target, seeds) in &all {
        let d = dir.join(target);
        if write {
            std::fs::create_dir_all(&d).unwrap();
        }
        for (name, bytes, valid) in seeds {
            check_valid(target, name, bytes, *valid);
            let p = d.join(name);
            if write {
                std::fs::write(&p, bytes).unwrap();
            } else {
                let on_disk = std::fs::read(&p).unwrap_or_else(|e| {
                    panic!("{}: {e} (DAGFS_WRITE_FUZZ_SEEDS=1 writes it)", p.display())
                });
                assert_eq!(&on_disk, bytes, "{} is stale", p.display());
            }
        }
    }
}
