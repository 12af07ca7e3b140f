//! Helper of `scripts/bench-fuse`: fills a store's index with synthetic
//! cache entries, to measure the mount daemon's memory with a large index
//! without running a million tasks.
//!
//! ```sh
//! cargo run --release --example bench_entries -- STORE N
//! ```
//!
//! The store must hold at least one entry (the bench runs a one-task
//! pipeline first). Every synthetic entry is a copy of that entry's index
//! record (same output tree, so each resolves under `/keys`) under a key of
//! its own, until the index holds N entries. Only the index is written, not
//! `entries/` records: the store is a throwaway, and `dagfs fsck
//! --rebuild-index` on it would drop the synthetic entries again.

use std::path::PathBuf;
use std::time::Instant;

use dagfs::index::Index;
use dagfs::store::Store;
use dagfs::Digest;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(store), Some(n)) = (args.next(), args.next()) else {
        return Err("usage: bench_entries STORE N".into());
    };
    let n: u64 = n.parse()?;
    let store = Store::open(&PathBuf::from(store), &mut |holder| {
        eprintln!("waiting for the store lock (held by {holder})")
    })?;
    let index = Index::open(&store.index_dir(), &store.runs_dir())?;
    let (_, template) = index
        .all_keys()
        .next()
        .ok_or("the store has no entry to copy")??;
    let start = Instant::now();
    let have = index.len() as u64;
    // NB: one writer: two took as long (sled, not the CPU, is the limit).
    for i in have..n {
        let mut seed = *b"dagfs bench_entries synthetic key ........";
        seed[34..42].copy_from_slice(&i.to_le_bytes());
        let mut meta = template.clone();
        meta.task = format!("synthetic-{}", i % 1000);
        // NB: used long ago, and the index marked flushed below: opening the
        // store checks only entries used shortly before its last flush
        // against `entries/`, where these have no records.
        meta.last_used_ms = 1;
        index.insert(&Digest::of(&seed), &meta)?;
    }
    index.set_flushed_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64,
    )?;
    index.flush()?;
    eprintln!(
        "bench_entries: {} entries in the index ({} added in {:.1} s)",
        index.len(),
        n.saturating_sub(have),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
