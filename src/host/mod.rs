//! host: facts about the machine this process runs on that several layers
//! need: its mount table (`mounts`), how many threads to use
//! (`default_jobs`), and how much waits to be written (`dirty_bytes`).
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

/// Bytes of the page cache waiting to be written, the whole system's
/// (`Dirty` and `Writeback` of `/proc/meminfo`), if the kernel says.
pub fn dirty_bytes() -> Option<u64> {
    dirty_in(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `dirty_bytes` of a `/proc/meminfo` text: None if either field is
/// missing or not a number of kB.
fn dirty_in(meminfo: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kb = line[name.len()..].trim().strip_suffix("kB")?.trim();
        kb.parse::<u64>().ok()?.checked_mul(1024)
    };
    field("Dirty:")?.checked_add(field("Writeback:")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_bytes_add_dirty_and_writeback() {
        let info = "MemTotal:       24576000 kB\nDirty:              1376 kB\n\
                    Writeback:            12 kB\nWritebackTmp:          0 kB\n";
        assert_eq!(dirty_in(info), Some((1376 + 12) * 1024));
        assert_eq!(dirty_in("Dirty:  5 kB\n"), None, "no Writeback line");
        assert_eq!(dirty_in("Dirty:  x kB\nWriteback: 0 kB\n"), None);
        assert_eq!(dirty_in("Dirty:  5 MB\nWriteback: 0 kB\n"), None);
        // The machine's own, where there is one.
        if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
            assert!(dirty_in(&info).is_some(), "{info}");
        }
    }
}
