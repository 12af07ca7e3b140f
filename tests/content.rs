//! The `content` route: a key miss whose recipe (the key without the
//! task's name) is that of an entry already stored answers from it. The
//! same step under another task or pipeline name runs once per store.

mod common;

use std::path::{Path, PathBuf};

use common::{dagfs, env, text};

fn pipeline(dir: &Path, name: &str, leaf: &str, word: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("in.txt"), "input\n").unwrap();
    let toml = format!(
        "name = \"{name}\"\n\
         [tasks.gen]\nrun = 'cat in.txt > \"$DAGFS_OUT/g\"; echo made'\ninputs = [\"in.txt\"]\n\
         [tasks.{leaf}]\nrun = 'cat \"$DAGFS_IN/gen/g\" > \"$DAGFS_OUT/f\"; echo {word} >> \"$DAGFS_OUT/f\"'\ndeps = [\"gen\"]\n"
    );
    let p = dir.join("dagfs.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

fn run(store: &Path, file: &Path) -> String {
    let o = dagfs(store, &["run", "-f", file.to_str().unwrap()])
        .env_remove("DAGFS_REMOTE")
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    t
}

#[test]
fn the_same_recipe_under_other_names_is_a_content_hit() {
    let e = env();
    let s = &e.store;
    let one = pipeline(&e.root.join("one"), "one", "use", "w");
    let two = pipeline(&e.root.join("two"), "two", "consume", "w");
    let t = run(s, &one);
    assert_eq!(
        t.lines().filter(|l| l.starts_with("ran ")).count(),
        2,
        "{t}"
    );
    let t = run(s, &two);
    assert!(t.contains("0 executed, 2 cached"), "{t}");
    // NB: keys do not hold the pipeline's name: `gen` is the same key.
    let has = |t: &str, start: &str, end: &str| {
        t.lines().any(|l| l.starts_with(start) && l.ends_with(end))
    };
    assert!(has(&t, "hit   gen ", "(key)"), "{t}");
    assert!(has(&t, "hit   consume ", "(content)"), "{t}");
    // Now its own entries: key hits.
    let t = run(s, &two);
    assert_eq!(t.lines().filter(|l| l.ends_with("(key)")).count(), 2, "{t}");
    let o = dagfs(s, &["cat", "two/consume/f"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "input\nw\n");
    let o = dagfs(s, &["explain", "-f", two.to_str().unwrap(), "consume"])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(
        t.contains("route `content`") && t.contains("one/use"),
        "{t}"
    );
    let o = dagfs(s, &["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hits_by_route"]["content"], 1, "{v}");
    let o = dagfs(s, &["fsck"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // Another recipe (a different command) is no content hit.
    let three = pipeline(&e.root.join("three"), "three", "use", "other");
    let t = run(s, &three);
    assert!(has(&t, "ran   use ", ")"), "{t}");
}
