//! dagfs: a content-addressed cache for the outputs of DAG pipelines.
//!
//! Layers, dependencies pointing down (see ARCHITECTURE.md, "1. Layers",
//! for each layer's "may call" line; `tests/layers.rs` checks them):
//!
//! ```text
//! cli      argument parsing, output, progress, exit codes (in the binary:
//!          src/main.rs, src/cli/)
//! daemon   the socket server and client, sessions, watched syncs, the
//!          mount's StoreView over the cache
//! fs       the FUSE view: node model, inodes, handles, reads, verified reads
//! exec     DAG model, pipelines, keys, scheduling, running tasks
//! sync     host directories as snapshots: walk, stat cache, watch, stamps
//! cache    store + index + policy: lookups, publishing, eviction, gc, fsck
//! index    sled trees and their encodings, statistics, policy
//! store    blobs, packs, Merkle trees, ingest, entries, sync logs, sweep,
//!          fsck, quarantine, the name rules
//! host     the mount table, the default thread count
//! hash     Digest, hex, BLAKE3 contexts
//! ```
//!
//! ```no_run
//! use dagfs::{Cache, CachePolicy, CachedExecutor, Dag, Task};
//! let dag = Dag::builder().add_node("a").add_node("b").add_edge("a", "b").build()?;
//! let cache = Cache::open("/tmp/dagfs-store".as_ref(), CachePolicy::default().max_entries(1000))?;
//! let result = CachedExecutor::new(&dag, &cache).jobs(2).execute([
//!     ("a", Task::new(|_| Ok(b"hello".to_vec())).version("1")),
//!     ("b", Task::new(|i| Ok(i.get("a").unwrap().to_ascii_uppercase())).version("1")),
//! ])?;
//! assert_eq!(result.nodes["b"].output.as_deref(), Some(&b"HELLO"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cache;
pub mod daemon;
pub mod exec;
pub mod fs;
pub mod hash;
pub mod host;
pub mod index;
pub mod store;
pub mod sync;

pub use cache::Cache;
pub use exec::{CacheKey, CachedExecutor, Dag, ExecutionResult, KeyBuilder, Task, TaskInputs};
pub use hash::Digest;
pub use index::{CachePolicy, CacheStats};
