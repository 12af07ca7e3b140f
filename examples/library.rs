//! The dagfs library in a few lines: a three-node DAG of closures, run twice
//! over a temporary store. The first run executes every node; the second is
//! answered from the cache.
//!
//! ```sh
//! cargo run --example library
//! ```

use dagfs::{Cache, CachePolicy, CachedExecutor, Dag, Task};

#[derive(serde::Serialize, serde::Deserialize)]
struct WordCount {
    words: usize,
    longest: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = tempfile::tempdir()?;
    let cache = Cache::open(store.path(), CachePolicy::default().max_entries(100))?;

    // fetch -> count -> report, and report also reads fetch.
    let dag = Dag::builder()
        .add_node("fetch")
        .add_node("count")
        .add_node("report")
        .add_edge("fetch", "count")
        .add_edge("count", "report")
        .add_edge("fetch", "report")
        .build()?;

    let text = "a content addressed cache for pipeline outputs";
    let tasks = || {
        [
            (
                "fetch",
                // State a closure captures enters its key through key_input.
                Task::new(move |_| Ok(text.as_bytes().to_vec()))
                    .key_input("text", text)
                    .version("1"),
            ),
            (
                "count",
                Task::json(|inputs| {
                    let text = String::from_utf8_lossy(inputs.get("fetch").unwrap_or_default());
                    let words: Vec<&str> = text.split_whitespace().collect();
                    let longest = words.iter().max_by_key(|w| w.len()).unwrap_or(&"");
                    Ok(WordCount {
                        words: words.len(),
                        longest: longest.to_string(),
                    })
                })
                .version("1"),
            ),
            (
                "report",
                Task::new(|inputs| {
                    let c: WordCount = inputs.json("count")?;
                    let bytes = inputs.get("fetch").map_or(0, <[u8]>::len);
                    Ok(
                        format!("{} words, {bytes} bytes, longest {:?}", c.words, c.longest)
                            .into_bytes(),
                    )
                })
                .version("1"),
            ),
        ]
    };

    for run in 1..=2 {
        let result = CachedExecutor::new(&dag, &cache)
            .name("example")
            .jobs(2)
            .execute(tasks())?;
        let report = result.nodes["report"].output.as_deref().unwrap_or_default();
        println!(
            "run {run}: {} hits, {} misses ({} executed, {} cached): {}",
            result.cache_hits,
            result.cache_misses,
            result.nodes_executed,
            result.nodes_cached,
            String::from_utf8_lossy(report)
        );
    }

    let stats = cache.index.stats()?;
    println!(
        "store {}: {} entries, {} bytes, hit rate {:.0}%",
        store.path().display(),
        stats.total_entries,
        stats.total_size_bytes,
        stats.hit_rate() * 100.0
    );
    Ok(())
}
