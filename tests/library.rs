//! The Rust library API: `Dag`, `Cache`, `CachePolicy`, `CachedExecutor`,
//! `Task`, each test over its own temporary store.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use dagfs::exec::scheduler::Status;
use dagfs::exec::ExecError;
use dagfs::index::Route;
use dagfs::{Cache, CachePolicy, CachedExecutor, Dag, Task};

/// Counts how often each task body runs.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn open(dir: &Path) -> Cache {
    Cache::open(dir, CachePolicy::default()).expect("open cache")
}

/// a -> b -> c, and d on its own.
fn chain() -> Dag {
    Dag::builder()
        .add_node("a")
        .add_node("b")
        .add_node("c")
        .add_node("d")
        .add_edge("a", "b")
        .add_edge("b", "c")
        .build()
        .expect("valid dag")
}

/// Tasks for `chain()`: a yields `seed`, b uppercases, c appends, d is
/// constant; every body bumps its counter.
fn chain_tasks(seed: &str, version: &str, runs: &[Counter; 4]) -> Vec<(&'static str, Task)> {
    let [ra, rb, rc, rd] = runs.clone();
    let s = seed.to_string();
    vec![
        (
            "a",
            Task::new(move |_| {
                ra.bump();
                Ok(s.clone().into_bytes())
            })
            .key_input("seed", seed)
            .version(version),
        ),
        (
            "b",
            Task::new(move |i| {
                rb.bump();
                Ok(i.get("a").ok_or("no a")?.to_ascii_uppercase())
            })
            .version("1"),
        ),
        (
            "c",
            Task::new(move |i| {
                rc.bump();
                let mut v = i.get("b").ok_or("no b")?.to_vec();
                v.extend_from_slice(b"!");
                Ok(v)
            })
            .version("1"),
        ),
        (
            "d",
            Task::new(move |_| {
                rd.bump();
                Ok(b"constant".to_vec())
            })
            .version("1"),
        ),
    ]
}

fn counts(runs: &[Counter; 4]) -> [usize; 4] {
    [runs[0].get(), runs[1].get(), runs[2].get(), runs[3].get()]
}

fn executed(r: &dagfs::ExecutionResult) -> BTreeSet<&str> {
    r.nodes
        .iter()
        .filter(|(_, n)| n.status == Status::Executed)
        .map(|(k, _)| k.as_str())
        .collect()
}

// ---------------------------------------------------------------------------

#[test]
fn dag_builder_rejects_cycles_duplicates_and_unknown_nodes() {
    let err = Dag::builder()
        .add_node("a")
        .add_node("b")
        .add_node("c")
        .add_edge("a", "b")
        .add_edge("b", "c")
        .add_edge("c", "a")
        .build()
        .unwrap_err();
    let ExecError::Cycle(path) = &err else {
        panic!("want a cycle, got {err}")
    };
    assert_eq!(path.len(), 4, "{err}");
    assert_eq!(path.first(), path.last(), "{err}");
    let mut members = path[..3].to_vec();
    members.sort();
    assert_eq!(members, ["a", "b", "c"]);
    assert!(err.to_string().starts_with("dependency cycle: "), "{err}");
    assert_eq!(err.to_string().matches(" -> ").count(), 3, "{err}");

    let err = Dag::builder()
        .add_node("a")
        .add_node("a")
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, ExecError::DuplicateTask { name, .. } if name == "a"),
        "{err}"
    );

    let err = Dag::builder()
        .add_node("a")
        .add_edge("ghost", "a")
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, ExecError::UnknownDep { task, dep, .. } if task == "a" && dep == "ghost"),
        "{err}"
    );

    let err = Dag::builder()
        .add_node("a")
        .add_edge("a", "ghost")
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, ExecError::UnknownTask(t) if t == "ghost"),
        "{err}"
    );

    let dag = Dag::builder()
        .add_node("x")
        .add_node("y")
        .add_edge("x", "y")
        .add_edge("x", "y")
        .build()
        .unwrap();
    assert_eq!(dag.len(), 2);
    assert_eq!(
        dag.deps(dag.lookup("y").unwrap()),
        [dag.lookup("x").unwrap()]
    );
}

#[test]
fn second_execute_is_all_cached_with_the_same_outputs() {
    let t = tempfile::tempdir().unwrap();
    let cache = open(t.path());
    let dag = chain();
    let runs: [Counter; 4] = Default::default();

    let first = CachedExecutor::new(&dag, &cache)
        .jobs(2)
        .execute(chain_tasks("hello", "1", &runs))
        .unwrap();
    assert_eq!(first.nodes_executed, 4);
    assert_eq!(first.cache_misses, 4);
    assert_eq!(first.cache_hits, 0);
    assert_eq!(counts(&runs), [1, 1, 1, 1]);
    assert_eq!(first.nodes["c"].output.as_deref(), Some(&b"HELLO!"[..]));

    let second = CachedExecutor::new(&dag, &cache)
        .jobs(2)
        .execute(chain_tasks("hello", "1", &runs))
        .unwrap();
    assert_eq!(second.nodes_cached, 4);
    assert_eq!(second.cache_hits, 4);
    assert_eq!(second.cache_misses, 0);
    assert_eq!(second.nodes_executed, 0);
    assert_eq!(counts(&runs), [1, 1, 1, 1], "no task body ran again");
    for (name, node) in &second.nodes {
        assert_eq!(node.status, Status::Cached);
        assert_eq!(node.route, Some(Route::Key));
        assert_eq!(node.output, first.nodes[name].output, "{name}");
        assert_eq!(node.key, first.nodes[name].key, "{name}");
    }
}

#[test]
fn key_input_change_reruns_the_task_and_what_its_output_changes() {
    let t = tempfile::tempdir().unwrap();
    let cache = open(t.path());
    let dag = chain();
    let runs: [Counter; 4] = Default::default();
    let exec = |seed: &str| {
        CachedExecutor::new(&dag, &cache)
            .execute(chain_tasks(seed, "1", &runs))
            .unwrap()
    };
    exec("hello");
    let r = exec("world");
    assert_eq!(executed(&r), BTreeSet::from(["a", "b", "c"]));
    assert_eq!(r.nodes["d"].status, Status::Cached);
    assert_eq!(r.nodes["c"].output.as_deref(), Some(&b"WORLD!"[..]));
    assert_eq!(counts(&runs), [2, 2, 2, 1]);

    // Same bytes out of `a` for a different key input: `b` and `c` hit.
    let runs2: [Counter; 4] = Default::default();
    let [ra, ..] = runs2.clone();
    let mut tasks = chain_tasks("unused", "1", &runs2);
    tasks[0].1 = Task::new(move |_| {
        ra.bump();
        Ok(b"world".to_vec())
    })
    .key_input("seed", "another seed")
    .version("1");
    let r = CachedExecutor::new(&dag, &cache).execute(tasks).unwrap();
    assert_eq!(executed(&r), BTreeSet::from(["a"]), "early cutoff");
    assert_eq!(counts(&runs2), [1, 0, 0, 0]);
}

#[test]
fn version_change_reruns_the_task() {
    let t = tempfile::tempdir().unwrap();
    let cache = open(t.path());
    let dag = chain();
    let runs: [Counter; 4] = Default::default();
    let exec = |version: &str| {
        CachedExecutor::new(&dag, &cache)
            .execute(chain_tasks("hello", version, &runs))
            .unwrap()
    };
    exec("1");
    let r = exec("2");
    assert_eq!(executed(&r), BTreeSet::from(["a"]));
    assert_eq!(counts(&runs), [2, 1, 1, 1]);
    let r = exec("1");
    assert_eq!(r.nodes_cached, 4, "the old version is still cached");
}

#[test]
fn default_version_is_stable_within_one_executable() {
    let t = tempfile::tempdir().unwrap();
    let cache = open(t.path());
    let dag = Dag::builder().add_node("a").build().unwrap();
    let runs = Counter::default();
    let task = || {
        let r = runs.clone();
        [(
            "a",
            Task::new(move |_| {
                r.bump();
                Ok(b"x".to_vec())
            }),
        )]
    };
    CachedExecutor::new(&dag, &cache).execute(task()).unwrap();
    let r = CachedExecutor::new(&dag, &cache).execute(task()).unwrap();
    assert_eq!(r.nodes_cached, 1);
    assert_eq!(runs.get(), 1);
    // An explicit version is another identity.
    let r = CachedExecutor::new(&dag, &cache)
        .execute([("a", Task::new(|_| Ok(b"x".to_vec())).version("1"))])
        .unwrap();
    assert_eq!(r.nodes_executed, 1);
}

#[test]
fn failing_closure_is_not_cached_and_its_dependents_are_skipped() {
    let t = tempfile::tempdir().unwrap();
    let cache = open(t.path());
    let dag = chain();
    let broken = Arc::new(AtomicBool::new(true));
    let runs_b = Counter::default();
    let tasks = || {
        let (broken, rb) = (broken.clone(), runs_b.clone());
        vec![
            ("a", Task::new(|_| Ok(b"a".to_vec())).version("1")),
            (
                "b",
                Task::new(move |_| {
                    rb.bump();
                    if broken.load(Ordering::SeqCst) {
                        Err("the flux capacitor is broken".to_string())
                    } else {
                        Ok(b"b".to_vec())
                    }
                })
                .version("1"),
            ),
            ("c", Task::new(|_| Ok(b"c".to_vec())).version("1")),
            ("d", Task::new(|_| Ok(b"d".to_vec())).version("1")),
        ]
    };
    let r = CachedExecutor::new(&dag, &cache)
        .jobs(1)
        .fail_fast(false)
        .execute(tasks())
        .unwrap();
    assert_eq!(r.nodes_failed, 1);
    assert_eq!(r.nodes_skipped, 1);
    assert_eq!(r.nodes_executed, 2);
    assert_eq!(r.nodes["b"].status, Status::Failed);
    let err = r.nodes["b"].error.as_deref().unwrap_or_default();
    assert!(err.contains("the flux capacitor is broken"), "{err}");
    assert_eq!(r.nodes["b"].output, None);
    assert_eq!(r.nodes["c"].status, Status::Skipped);
    assert_eq!(r.nodes["d"].status, Status::Executed, "not downstream");
    assert_eq!(cache.index.stats().unwrap().total_entries, 2);

    // Same identity, now working: it runs, it was not cached.
    broken.store(false, Ordering::SeqCst);
    let r = CachedExecutor::new(&dag, &cache).execute(tasks()).unwrap();
    assert_eq!(executed(&r), BTreeSet::from(["b", "c"]));
    assert_eq!(runs_b.get(), 2);
    assert_eq!(r.nodes["c"].output.as_deref(), Some(&b"c"[..]));
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Stats {
    count: usize,
    words: Vec<String>,
}

#[test]
fn outputs_pass_between_nodes_as_bytes_and_json() {
    let t = tempfile::tempdir().unwrap();
    let cache = open(t.path());
    let dag = Dag::builder()
        .add_node("text")
        .add_node("parse")
        .add_node("report")
        .add_edge("text", "parse")
        .add_edge("text", "report")
        .add_edge("parse", "report")
        .build()
        .unwrap();
    let tasks = || {
        vec![
            (
                "text",
                Task::new(|_| Ok(b"to be or not".to_vec())).version("1"),
            ),
            (
                "parse",
                Task::json(|i| {
                    let text = std::str::from_utf8(i.get("text").ok_or("no text")?)
                        .map_err(|e| e.to_string())?;
                    let words: Vec<String> = text.split(' ').map(String::from).collect();
                    Ok(Stats {
                        count: words.len(),
                        words,
                    })
                })
                .version("1"),
            ),
            (
                "report",
                Task::new(|i| {
                    let names: Vec<&str> = i.names().collect();
                    if names != ["parse", "text"] {
                        return Err(format!("inputs {names:?}"));
                    }
                    if i.get("report").is_some() || i.json::<Stats>("nope").is_ok() {
                        return Err("saw an input it does not have".into());
                    }
                    let s: Stats = i.json("parse")?;
                    Ok(format!("{} words, first {}", s.count, s.words[0]).into_bytes())
                })
                .version("1"),
            ),
        ]
    };
    for round in 0..2 {
        let r = CachedExecutor::new(&dag, &cache).execute(tasks()).unwrap();
        assert_eq!(r.nodes_failed, 0, "{:?}", r.nodes["report"].error);
        let parsed: Stats =
            serde_json::from_slice(r.nodes["parse"].output.as_deref().unwrap()).unwrap();
        assert_eq!(parsed.count, 4);
        assert_eq!(
            r.nodes["report"].output.as_deref(),
            Some(&b"4 words, first to"[..]),
            "round {round}"
        );
        assert_eq!(r.nodes_cached, if round == 0 { 0 } else { 3 });
    }
}

#[test]
fn stats_persist_across_reopening_the_cache() {
    let t = tempfile::tempdir().unwrap();
    let dag = chain();
    let runs: [Counter; 4] = Default::default();
    {
        let cache = open(t.path());
        CachedExecutor::new(&dag, &cache)
            .execute(chain_tasks("hello", "1", &runs))
            .unwrap();
        CachedExecutor::new(&dag, &cache)
            .execute(chain_tasks("hello", "1", &runs))
            .unwrap();
    }
    let cache = open(t.path());
    let s = cache.index.stats().unwrap();
    assert_eq!(s.hits, 4);
    assert_eq!(s.misses, 4);
    assert_eq!(s.total_entries, 4);
    assert_eq!(s.runs, 2);
    assert_eq!(s.hits_by_route["key"], 4);
    assert_eq!(s.misses_by_reason["new"], 4);
    assert_eq!(s.hit_rate(), 0.5);
    // And the entries themselves survived.
    let r = CachedExecutor::new(&dag, &cache)
        .execute(chain_tasks("hello", "1", &runs))
        .unwrap();
    assert_eq!(r.nodes_cached, 4);
    assert_eq!(counts(&runs), [1, 1, 1, 1]);
    assert_eq!(cache.index.stats().unwrap().hits, 8);
}

/// Runs a one-node DAG named `name`; returns whether its body ran.
fn run_single(cache: &Cache, name: &str) -> bool {
    let dag = Dag::builder().add_node(name).build().unwrap();
    let ran = Counter::default();
    let r2 = ran.clone();
    let body = name.to_string();
    CachedExecutor::new(&dag, cache)
        .execute([(
            name,
            Task::new(move |_| {
                r2.bump();
                Ok(body.clone().into_bytes())
            })
            .version("1"),
        )])
        .unwrap();
    ran.get() == 1
}

#[test]
fn max_entries_policy_holds_and_evicts_least_recently_used() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path(), CachePolicy::default().max_entries(2)).unwrap();
    let wait_next_ms = || {
        // Distinct last-use times (LRU order is by millisecond).
        let start = dagfs::cache::now_ms();
        while dagfs::cache::now_ms() == start {
            std::hint::spin_loop();
        }
    };
    assert!(run_single(&cache, "one"));
    wait_next_ms();
    assert!(run_single(&cache, "two"));
    wait_next_ms();
    assert!(
        !run_single(&cache, "one"),
        "hit: `one` is now the most recent"
    );
    wait_next_ms();
    assert!(run_single(&cache, "three"));
    let s = cache.index.stats().unwrap();
    assert_eq!(s.total_entries, 2);
    assert_eq!(s.evictions, 1);
    assert!(!run_single(&cache, "one"), "kept");
    assert!(!run_single(&cache, "three"), "kept");
    assert!(run_single(&cache, "two"), "`two` was evicted");
    assert_eq!(cache.index.stats().unwrap().total_entries, 2);
}

#[test]
fn no_cache_task_always_runs() {
    let t = tempfile::tempdir().unwrap();
    let cache = open(t.path());
    let dag = Dag::builder()
        .add_node("clock")
        .add_node("user")
        .add_edge("clock", "user")
        .build()
        .unwrap();
    let runs = Counter::default();
    let tasks = || {
        let r = runs.clone();
        vec![
            (
                "clock",
                Task::new(move |_| {
                    r.bump();
                    Ok(b"tick".to_vec())
                })
                .version("1")
                .no_cache(),
            ),
            (
                "user",
                Task::new(|i| Ok(i.get("clock").unwrap().to_vec())).version("1"),
            ),
        ]
    };
    CachedExecutor::new(&dag, &cache).execute(tasks()).unwrap();
    let r = CachedExecutor::new(&dag, &cache).execute(tasks()).unwrap();
    assert_eq!(runs.get(), 2);
    assert_eq!(r.nodes["clock"].status, Status::Executed);
    assert_eq!(r.nodes["user"].status, Status::Cached);
}

#[test]
fn execute_rejects_missing_and_unknown_tasks() {
    let t = tempfile::tempdir().unwrap();
    let cache = open(t.path());
    let dag = Dag::builder().add_node("a").add_node("b").build().unwrap();
    let task = || Task::new(|_| Ok(Vec::new())).version("1");
    let err = CachedExecutor::new(&dag, &cache)
        .execute([("a", task())])
        .unwrap_err();
    assert!(err.to_string().contains("`b`"), "{err}");
    let err = CachedExecutor::new(&dag, &cache)
        .execute([("a", task()), ("b", task()), ("zz", task())])
        .unwrap_err();
    assert!(
        matches!(&err, ExecError::UnknownTask(t) if t == "zz"),
        "{err}"
    );
    assert_eq!(cache.index.stats().unwrap().total_entries, 0, "nothing ran");
}

#[test]
fn library_results_are_visible_to_the_cli() {
    let t = tempfile::tempdir().unwrap();
    {
        let cache = open(t.path());
        let dag = Dag::builder().add_node("greet").build().unwrap();
        CachedExecutor::new(&dag, &cache)
            .name("embedded")
            .execute([(
                "greet",
                Task::new(|_| Ok(b"hi there".to_vec())).version("1"),
            )])
            .unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dagfs"))
        .arg("--store")
        .arg(t.path())
        .args(["cat", "embedded/greet/output"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hi there");
}

/// Indexes moved aside as broken (into `quarantine/index/`).
fn broken_indexes(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("quarantine/index"))
        .map(|rd| {
            rd.filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("broken-")
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn an_index_still_locked_by_a_previous_owner_is_waited_for_not_moved_aside() {
    let t = tempfile::tempdir().unwrap();
    let runs: [Counter; 4] = Default::default();
    {
        let cache = open(t.path());
        CachedExecutor::new(&chain(), &cache)
            .execute(chain_tasks("hello", "1", &runs))
            .unwrap();
    }
    // A previous owner that has released the store lock but still holds
    // sled's lock (a daemon in the middle of exiting).
    let held = dagfs::index::Index::open(&t.path().join("index"), &t.path().join("runs")).unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let cache = open(t.path());
    releaser.join().unwrap();
    assert_eq!(broken_indexes(t.path()), 0, "a lock conflict is not damage");
    assert!(cache.notes().is_empty(), "{:?}", cache.notes());
    let s = cache.index.stats().unwrap();
    assert_eq!((s.misses, s.runs), (4, 1), "statistics kept");
}

#[test]
fn a_corrupt_index_is_moved_aside_and_rebuilt_from_entries() {
    let t = tempfile::tempdir().unwrap();
    let runs: [Counter; 4] = Default::default();
    {
        let cache = open(t.path());
        CachedExecutor::new(&chain(), &cache)
            .execute(chain_tasks("hello", "1", &runs))
            .unwrap();
        cache.index.flush().unwrap();
    }
    // Damage sled's config file: it no longer parses.
    std::fs::write(t.path().join("index/conf"), b"\xff\x00 not a sled config").unwrap();
    let cache = open(t.path());
    assert_eq!(broken_indexes(t.path()), 1);
    assert!(
        cache
            .notes()
            .iter()
            .any(|n| n.contains("rebuilt it from 4 entries")),
        "{:?}",
        cache.notes()
    );
    let r = CachedExecutor::new(&chain(), &cache)
        .execute(chain_tasks("hello", "1", &runs))
        .unwrap();
    assert_eq!(r.nodes_cached, 4, "nothing stored was lost");
    assert_eq!(counts(&runs), [1, 1, 1, 1]);
}

#[test]
fn an_index_record_without_its_entry_record_is_dropped_on_open() {
    let t = tempfile::tempdir().unwrap();
    let runs: [Counter; 4] = Default::default();
    let ghost = dagfs::Digest::of(b"indexed, but its run was killed before the record");
    {
        let cache = open(t.path());
        CachedExecutor::new(&chain(), &cache)
            .execute(chain_tasks("hello", "1", &runs))
            .unwrap();
        // What sled may have written before a SIGKILL: an index record
        // whose entry record was never renamed into entries/.
        let (_, mut meta) = cache.index.all_keys().next().unwrap().unwrap();
        meta.task = "ghost".into();
        cache.index.insert(&ghost, &meta).unwrap();
        cache.index.flush().unwrap();
    }
    // After a clean end, that is damage for fsck: left alone.
    assert!(open(t.path()).index.get(&ghost).unwrap().is_some());
    // A killed process leaves its marker behind: then it is undone.
    std::fs::write(t.path().join("dirty"), b"").unwrap();
    let cache = open(t.path());
    assert!(cache.index.get(&ghost).unwrap().is_none());
    assert!(
        cache
            .notes()
            .iter()
            .any(|n| n.contains("dropped 1 index entries")),
        "{:?}",
        cache.notes()
    );
    assert_eq!(cache.index.stats().unwrap().total_entries, 4);
    let r = CachedExecutor::new(&chain(), &cache)
        .execute(chain_tasks("hello", "1", &runs))
        .unwrap();
    assert_eq!(r.nodes_cached, 4, "the real entries survive");
}
