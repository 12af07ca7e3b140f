//! Watches the daemon owns outlive it (recorded in the store, re-armed by
//! the next daemon), and every snapshot's change set can be read back
//! (`dagfs sync --log NAME[@N]`).
//!
//! Every mount is owned by a `Mounted` guard that unmounts on drop.

use std::fs;
use std::path::Path;
use std::process::Output;

mod common;

use common::{dagfs, env, text, wait_for, Mounted};

fn run(store: &Path, args: &[&str]) -> Output {
    dagfs(store, args).output().unwrap()
}

fn ok(store: &Path, args: &[&str]) -> String {
    let o = run(store, args);
    assert!(o.status.success(), "dagfs {args:?}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// `sync --list --json`'s record of `name`.
fn listed(store: &Path, name: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&ok(store, &["sync", "--list", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no sync `{name}` in {v}"))
}

/// Regression: watches the daemon owned were lost when it stopped: after a
/// remount `sync --list` showed them unwatched and nothing re-armed them.
#[test]
fn daemon_watches_are_re_armed_after_a_remount() {
    let e = env();
    let src = e.root.join("src");
    let gone = e.root.join("gone");
    for d in [&src, &gone] {
        fs::create_dir_all(d).unwrap();
        fs::write(d.join("a.txt"), "one\n").unwrap();
    }
    {
        let _m = Mounted::new(&e.store, &e.mnt);
        ok(
            &e.store,
            &["sync", src.to_str().unwrap(), "--name", "s", "--watch"],
        );
        ok(
            &e.store,
            &["sync", gone.to_str().unwrap(), "--name", "g", "--watch"],
        );
        assert_eq!(listed(&e.store, "s")["watched"], true);
    }
    // While no daemon runs, the directory changes and one goes away.
    fs::write(src.join("b.txt"), "two\n").unwrap();
    fs::remove_dir_all(&gone).unwrap();

    let m = Mounted::new(&e.store, &e.mnt);
    // Re-armed before `dagfs mount` returned: its first snapshot took the
    // change made while no daemon ran.
    let s = listed(&e.store, "s");
    assert_eq!(s["watched"], true, "{s}");
    assert_eq!(s["latest"]["seq"], 2, "{s}");
    let g = listed(&e.store, "g");
    assert_eq!(g["watched"], false, "{g}");
    let why = g["watch_error"].as_str().unwrap_or_default();
    assert!(why.contains("could not be re-armed"), "{g}");

    // And it keeps watching.
    // NB: written whole, then renamed in: a plain write could be caught
    // between its creation and its bytes on a loaded machine (a snapshot
    // of the empty file, then another); CI saw `s@3/c.txt` empty once.
    fs::write(e.root.join("c.tmp"), "three\n").unwrap();
    fs::rename(e.root.join("c.tmp"), src.join("c.txt")).unwrap();
    wait_for("the re-armed watch to take the change", || {
        listed(&e.store, "s")["latest"]["seq"] == 3
    });
    assert_eq!(ok(&e.store, &["cat", "s@3/c.txt"]), "three\n");

    // `--stop` ends it for good: the next daemon does not re-arm it.
    ok(&e.store, &["sync", "--stop", "s"]);
    ok(&e.store, &["sync", "--stop", "g"]);
    drop(m);
    let _m = Mounted::new(&e.store, &e.mnt);
    assert_eq!(listed(&e.store, "s")["watched"], false);
    assert!(listed(&e.store, "g")["watch_error"].is_null());
}

/// Regression: the change set of each snapshot went only to the daemon's
/// log (as counts); `dagfs sync --log NAME` reads them back.
#[test]
fn sync_log_shows_every_change_set() {
    let e = env();
    let src = e.root.join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a.txt"), "one\n").unwrap();
    fs::write(src.join("d/b.txt"), "two\n").unwrap();
    let dir = src.to_str().unwrap();
    ok(&e.store, &["sync", dir, "--name", "s"]);
    fs::write(src.join("a.txt"), "one, edited\n").unwrap();
    fs::remove_file(src.join("d/b.txt")).unwrap();
    fs::write(src.join("c.txt"), "three\n").unwrap();
    ok(&e.store, &["sync", dir, "--name", "s"]);

    let log = ok(&e.store, &["sync", "--log", "s"]);
    let first = log.find("s@1 ").unwrap_or_else(|| panic!("{log}"));
    let second = log.find("s@2 ").unwrap_or_else(|| panic!("{log}"));
    assert!(first < second, "{log}");
    let (one, two) = log.split_at(second);
    for (line, within) in [
        ("added         a.txt", one),
        ("added         d/b.txt", one),
        ("modified      a.txt", two),
        ("removed       d/b.txt", two),
        ("added         c.txt", two),
    ] {
        assert!(within.contains(line), "no `{line}` in:\n{within}");
    }
    assert!(two.contains("1 added, 1 modified, 1 removed"), "{two}");

    let v: serde_json::Value =
        serde_json::from_str(&ok(&e.store, &["sync", "--log", "s@2", "--json"])).unwrap();
    let docs = v.as_array().unwrap();
    assert_eq!(docs.len(), 1, "{v}");
    let changes: Vec<(String, String)> = docs[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("a.txt", "modified"),
        ("c.txt", "added"),
        ("d/b.txt", "removed"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, k)| (p.to_string(), k.to_string()))
        .collect();
    assert_eq!(changes, want);

    for (spec, code) in [("nosuch", 10), ("s@9", 10), ("s@x", 2)] {
        let o = run(&e.store, &["sync", "--log", spec]);
        assert_eq!(o.status.code(), Some(code), "{spec}: {}", text(&o));
    }
}
