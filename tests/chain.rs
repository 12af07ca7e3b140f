//! A chain of shell tasks, each reading its dependency's output: the run
//! commits its outputs in groups, not once per link (issue 17's cold
//! chain), and every link still reads exactly its dependency's bytes.

use std::fs;
use std::sync::Arc;
use std::time::Instant;

use dagfs::exec::runner::ShellRunner;
use dagfs::exec::scheduler::{self, Options};
use dagfs::exec::{shell, Pipeline};
use dagfs::{Cache, CachePolicy};

const LINKS: usize = 30;

/// Regression: a task whose dependency's output was staged but not yet
/// committed forced a durable commit (fsyncs of each blob and directory)
/// before it could start, so an N-task chain made N commits. Its inputs
/// are now read from the staged files (checked against their digests).
#[test]
fn a_chain_reads_staged_outputs_and_commits_in_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let mut toml =
        String::from("name = \"chain\"\n[tasks.t0]\nrun = \"echo 0 > $DAGFS_OUT/out\"\n");
    for i in 1..LINKS {
        toml.push_str(&format!(
            "[tasks.t{i}]\nrun = \"cat $DAGFS_IN/t{p}/out > $DAGFS_OUT/out && echo {i} >> $DAGFS_OUT/out\"\ndeps = [\"t{p}\"]\n",
            p = i - 1
        ));
    }
    fs::write(root.join("dagfs.toml"), toml).unwrap();
    let cache = Arc::new(Cache::open(&root.join("store"), CachePolicy::default()).unwrap());
    let p = Pipeline::load(&root.join("dagfs.toml")).unwrap();
    let plan = shell::plan(&p, &[], Arc::new(ShellRunner), &cache).unwrap();
    let opts = Options {
        jobs: 2,
        ..Options::default()
    };
    let before = cache.store.blob_commits();
    let t = Instant::now();
    let report = scheduler::run(&cache, &plan, &opts, &mut |_| {}).unwrap();
    let took = t.elapsed();
    for (n, o) in report.names.iter().zip(&report.outcomes) {
        assert!(o.error.is_none(), "{n}: {:?} {:?}", o.error, o.log_tail);
    }
    let commits = cache.store.blob_commits() - before;
    // One at the end, and one per half second the batch waited (see
    // `exec::scheduler::commit`), however slow the machine: not one per link.
    let allowed = 2 + took.as_millis() as u64 / 500;
    assert!(
        commits <= allowed && commits < LINKS as u64 / 2,
        "{commits} commits for {LINKS} links in {took:?} (at most {allowed})"
    );
    // The last link holds every link's line, in order: each read exactly
    // its dependency's output.
    let last = report
        .names
        .iter()
        .position(|n| n == &format!("t{}", LINKS - 1))
        .unwrap();
    let out = report.outcomes[last].output.unwrap();
    let tree = cache.store.read_tree(&out).unwrap();
    let file = tree.entries.iter().find(|e| e.name == b"out").unwrap();
    let dagfs::store::tree::Node::File { digest, .. } = file.node else {
        panic!("out is not a file")
    };
    let want: String = (0..LINKS).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        String::from_utf8(cache.store.read_blob(&digest).unwrap()).unwrap(),
        want
    );
    drop(cache);
}
