//! host: facts about the machine this process runs on that several layers
//! need: its mount table (`mounts`) and how many threads to use
//! (`default_jobs`).
//!
//! May call: std, `nix`. Nothing in the crate: it sits at the bottom, with
//! `hash`, so every layer may use it.

pub mod mounts;

/// The default number of worker threads (`-j`, a sync's scan threads): the
/// parallelism the OS gives this process, at least 1. Asked once: std
/// reads the cgroup's CPU quota files on every call.
pub fn default_jobs() -> usize {
    static JOBS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *JOBS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}
