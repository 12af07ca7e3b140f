//! `Pipeline::parse` (dagfs.toml → validated pipeline): arbitrary text never
//! panics; whatever parses holds the validation's promises (names that are
//! safe path components, relative inputs and cwd, known deps in topological
//! order), and writing the parsed pipeline back as TOML parses to the same
//! pipeline.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Component, Path};

use dagfs::exec::pipeline::{valid_name, Pipeline};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;

#[derive(Serialize)]
struct OutFile {
    name: String,
    tasks: BTreeMap<String, OutTask>,
}

#[derive(Serialize)]
struct OutTask {
    run: String,
    deps: Vec<String>,
    inputs: Vec<String>,
    env: Vec<String>,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    cache: bool,
    cwd: String,
}

fn inside(p: &str) -> bool {
    let p = Path::new(p);
    !p.is_absolute() && !p.components().any(|c| c == Component::ParentDir)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/nonexistent/dagfs-fuzz/dagfs.toml");
    let p = match Pipeline::parse(file, text) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(valid_name(&p.name), "{:?}", p.name);
    assert_eq!(p.dag.len(), p.tasks.len());
    let order = p.dag.topo_order();
    assert_eq!(order.len(), p.tasks.len());
    let mut pos = vec![usize::MAX; order.len()];
    for (k, &i) in order.iter().enumerate() {
        pos[i] = k;
    }
    for (i, t) in p.tasks.iter().enumerate() {
        assert!(valid_name(&t.name), "{:?}", t.name);
        assert_eq!(p.dag.name(i), t.name);
        assert!(!t.run.trim().is_empty());
        assert!(
            t.inputs.iter().all(|x| !x.is_empty() && inside(x)),
            "{:?}",
            t.inputs
        );
        assert!(inside(&t.cwd), "{:?}", t.cwd);
        for d in &t.deps {
            let j = p.dag.lookup(d).expect("deps are known tasks");
            assert!(pos[j] < pos[i], "{d} runs before {}", t.name);
        }
    }
    // Round trip through TOML.
    let out = OutFile {
        name: p.name.clone(),
        tasks: p
            .tasks
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    OutTask {
                        run: t.run.clone(),
                        deps: t.deps.clone(),
                        inputs: t.inputs.clone(),
                        env: t.env.clone(),
                        version: t.version.clone(),
                        ttl: t.ttl.map(|d| format!("{}s", d.as_secs())),
                        cache: t.cache,
                        cwd: t.cwd.clone(),
                    },
                )
            })
            .collect(),
    };
    let text2 = toml::to_string(&out).expect("a parsed pipeline serializes");
    let p2 = Pipeline::parse(file, &text2)
        .unwrap_or_else(|e| panic!("re-parse of\n{text2}\nfailed: {e}"));
    assert_eq!(p2.name, p.name);
    assert_eq!(p2.tasks, p.tasks, "\n{text2}");
});
