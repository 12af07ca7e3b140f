//! Live figures of the FUSE layer, shown in `/.dagfs/stats` and
//! `/.dagfs/metrics` (and to the daemon, which holds the same `Arc`).
//!
//! Owns: `FsCounters`. May call: nothing. Guarantees: every field is an
//! atomic updated without locks; `to_text` and `to_prometheus` read a
//! relaxed snapshot (fields may be a request apart from each other).

use std::sync::atomic::{AtomicU64, Ordering};

/// Request kinds counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Readdir,
    /// `open` and `opendir`.
    Open,
    Read,
    Readlink,
    Getxattr,
    /// Everything else (forget, release, listxattr, statfs, writes, …).
    Other,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Lookup,
        Op::Getattr,
        Op::Readdir,
        Op::Open,
        Op::Read,
        Op::Readlink,
        Op::Getxattr,
        Op::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Readdir => "readdir",
            Op::Open => "open",
            Op::Read => "read",
            Op::Readlink => "readlink",
            Op::Getxattr => "getxattr",
            Op::Other => "other",
        }
    }
}

#[derive(Debug, Default)]
pub struct FsCounters {
    pub lookup: AtomicU64,
    pub getattr: AtomicU64,
    pub readdir: AtomicU64,
    pub open: AtomicU64,
    pub read: AtomicU64,
    pub readlink: AtomicU64,
    pub getxattr: AtomicU64,
    pub other: AtomicU64,
    /// Bytes answered to `read` requests (reads that go through passthrough
    /// never reach dagfs and are not counted).
    pub bytes_read: AtomicU64,
    /// Requests answered EIO (including panics).
    pub eio_count: AtomicU64,
    /// Request handlers that panicked (each answered EIO; counted just
    /// after the EIO is sent, as the handler finishes unwinding).
    pub panics: AtomicU64,
    /// Open file and directory handles (gauge).
    pub open_handles: AtomicU64,
    /// Inodes the kernel holds, besides the static ones (gauge).
    pub inodes_live: AtomicU64,
    /// Opens of stored files served by FUSE passthrough.
    pub passthrough_opens: AtomicU64,
    /// Stored files opened for `pread` in dagfs: one per open request when
    /// the kernel sends them, else one per blob a read found not open (a few
    /// are kept open across reads).
    pub pread_opens: AtomicU64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl FsCounters {
    pub(crate) fn op(&self, op: Op) -> &AtomicU64 {
        match op {
            Op::Lookup => &self.lookup,
            Op::Getattr => &self.getattr,
            Op::Readdir => &self.readdir,
            Op::Open => &self.open,
            Op::Read => &self.read,
            Op::Readlink => &self.readlink,
            Op::Getxattr => &self.getxattr,
            Op::Other => &self.other,
        }
    }

    pub(crate) fn count(&self, op: Op) {
        self.op(op).fetch_add(1, Ordering::Relaxed);
    }

    pub fn to_text(&self) -> String {
        let ops: Vec<String> = Op::ALL
            .iter()
            .map(|o| format!("{} {}", o.name(), get(self.op(*o))))
            .collect();
        format!(
            "fs ops       {}\n\
             fs read      {} bytes\n\
             fs opens     {} passthrough, {} pread\n\
             fs handles   {} open\n\
             fs inodes    {} live\n\
             fs errors    {} EIO, {} panics\n",
            ops.join(", "),
            get(&self.bytes_read),
            get(&self.passthrough_opens),
            get(&self.pread_opens),
            get(&self.open_handles),
            get(&self.inodes_live),
            get(&self.eio_count),
            get(&self.panics),
        )
    }

    pub fn to_prometheus(&self) -> String {
        let mut o = String::new();
        o += "# HELP dagfs_fs_requests_total FUSE requests handled, by operation.\n";
        o += "# TYPE dagfs_fs_requests_total counter\n";
        for op in Op::ALL {
            o += &format!(
                "dagfs_fs_requests_total{{op=\"{}\"}} {}\n",
                op.name(),
                get(self.op(op))
            );
        }
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            o += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n");
        };
        one(
            "dagfs_fs_read_bytes_total",
            "counter",
            "Bytes answered to FUSE read requests (not counting passthrough reads).",
            get(&self.bytes_read),
        );
        one(
            "dagfs_fs_eio_total",
            "counter",
            "FUSE requests answered EIO.",
            get(&self.eio_count),
        );
        one(
            "dagfs_fs_panics_total",
            "counter",
            "FUSE request handlers that panicked (answered EIO).",
            get(&self.panics),
        );
        one(
            "dagfs_fs_open_handles",
            "gauge",
            "Open file and directory handles.",
            get(&self.open_handles),
        );
        one(
            "dagfs_fs_inodes_live",
            "gauge",
            "Inodes the kernel holds.",
            get(&self.inodes_live),
        );
        o += "# HELP dagfs_fs_opens_total Opens of stored files, by read path.\n";
        o += "# TYPE dagfs_fs_opens_total counter\n";
        o += &format!(
            "dagfs_fs_opens_total{{path=\"passthrough\"}} {}\n",
            get(&self.passthrough_opens)
        );
        o += &format!(
            "dagfs_fs_opens_total{{path=\"pread\"}} {}\n",
            get(&self.pread_opens)
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_prometheus_show_every_counter() {
        let c = FsCounters::default();
        c.count(Op::Lookup);
        c.count(Op::Lookup);
        c.bytes_read.store(1234, Ordering::Relaxed);
        c.panics.store(1, Ordering::Relaxed);
        let t = c.to_text();
        assert!(t.contains("lookup 2"), "{t}");
        assert!(t.contains("1234 bytes"), "{t}");
        assert!(t.contains("1 panics"), "{t}");
        let p = c.to_prometheus();
        assert!(
            p.contains("dagfs_fs_requests_total{op=\"lookup\"} 2\n"),
            "{p}"
        );
        assert!(p.contains("dagfs_fs_read_bytes_total 1234\n"), "{p}");
        assert!(p.contains("dagfs_fs_panics_total 1\n"), "{p}");
        for line in p.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("dagfs_fs_"), "{line}");
            value.parse::<u64>().unwrap();
        }
    }
}
