//! Persistent cache statistics (they live in the index) and their report.
//! The policy is in `policy`, the unit parsers and formatters in `units`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::policy::CachePolicy;
/// Kept here for their callers; they live in `units`.
pub use super::units::{format_duration, format_size, parse_duration, parse_size};

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// Found by its key.
    Key,
    /// Found by output digest (content fallback).
    Content,
    /// An identical task was already running; its result was shared.
    Joined,
    /// Not stored here: fetched from the remote tier, verified, and stored.
    Remote,
    /// Not found: the task ran.
    Miss,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Key => "key",
            Route::Content => "content",
            Route::Joined => "joined",
            Route::Remote => "remote",
            Route::Miss => "miss",
        }
    }
}

/// Why a lookup missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MissReason {
    /// The task never had an entry.
    #[serde(rename = "new")]
    New,
    /// The entry outlived its TTL.
    #[serde(rename = "expired")]
    Expired,
    /// The task had an entry under another key: some component changed.
    #[serde(rename = "input changed")]
    InputChanged,
    /// `--no-cache` or `cache = false`.
    #[serde(rename = "skip-cache")]
    SkipCache,
    /// The entry existed, but its output was gone (evicted blob, quarantine).
    #[serde(rename = "missing")]
    Missing,
    /// fsck or a verified read in the mount found a blob of the entry
    /// corrupt, and dropped the entry.
    #[serde(rename = "corrupt")]
    Corrupt,
}

impl MissReason {
    pub const ALL: [MissReason; 6] = [
        MissReason::New,
        MissReason::Expired,
        MissReason::InputChanged,
        MissReason::SkipCache,
        MissReason::Missing,
        MissReason::Corrupt,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            MissReason::New => "new",
            MissReason::Expired => "expired",
            MissReason::InputChanged => "input changed",
            MissReason::SkipCache => "skip-cache",
            MissReason::Missing => "missing",
            MissReason::Corrupt => "corrupt",
        }
    }
}

/// Cache statistics, persisted in the index across processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub total_entries: u64,
    pub total_size_bytes: u64,
    pub runs: u64,
    /// Runs a memo answered (`memo.rs`), counted among `runs`.
    #[serde(default)]
    pub memo_runs: u64,
    /// Hits by route (`key`, `content`, `joined`).
    pub hits_by_route: BTreeMap<String, u64>,
    /// Misses by reason (`new`, `expired`, `input changed`, `skip-cache`, `missing`, `corrupt`).
    pub misses_by_reason: BTreeMap<String, u64>,
    /// The remote tier's counters (`misses`, `rejected`, `errors`,
    /// `bytes_down`, `bytes_up`, `wait_ms`, `local_only`, `uploaded`);
    /// remote hits are `hits_by_route["remote"]`.
    #[serde(default)]
    pub remote: BTreeMap<String, u64>,
}

impl CacheStats {
    /// hits / (hits + misses); 0 when nothing was looked up.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

impl CacheStats {
    /// The human-readable report (`dagfs stats`, `/.dagfs/stats`).
    pub fn to_text(&self, p: &CachePolicy) -> String {
        let lim = |v: Option<String>| v.unwrap_or_else(|| "unlimited".into());
        let mut o = String::new();
        o += &format!(
            "entries      {} (max {})\n",
            self.total_entries,
            lim(p.max_entries.map(|n| n.to_string()))
        );
        o += &format!(
            "size         {} (max {})\n",
            format_size(self.total_size_bytes),
            lim(p.max_size_bytes.map(format_size))
        );
        o += &format!("ttl          {}\n", lim(p.ttl.map(format_duration)));
        o += &format!("hits         {}\n", self.hits);
        o += &format!("misses       {}\n", self.misses);
        o += &format!("hit rate     {:.1}%\n", self.hit_rate() * 100.0);
        o += &format!("evictions    {}\n", self.evictions);
        o += &format!("expirations  {}\n", self.expirations);
        o += &format!("runs         {}\n", self.runs);
        o += &format!("memo runs    {}\n", self.memo_runs);
        o += "hits by route:\n";
        for (k, v) in &self.hits_by_route {
            o += &format!("  {k:<14}{v}\n");
        }
        o += "misses by reason:\n";
        for (k, v) in &self.misses_by_reason {
            o += &format!("  {k:<14}{v}\n");
        }
        if !self.remote.is_empty() {
            o += "remote:\n";
            for (k, v) in &self.remote {
                o += &format!("  {k:<14}{v}\n");
            }
        }
        o
    }

    /// Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut o = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
            o += &format!("# HELP dagfs_{name} {help}\n# TYPE dagfs_{name} {kind}\n");
            for (labels, v) in rows {
                o += &format!("dagfs_{name}{labels} {v}\n");
            }
        };
        metric(
            "entries",
            "gauge",
            "Cache entries.",
            vec![(String::new(), self.total_entries)],
        );
        metric(
            "bytes",
            "gauge",
            "Logical bytes of cached outputs.",
            vec![(String::new(), self.total_size_bytes)],
        );
        metric(
            "hits_total",
            "counter",
            "Cache hits by route.",
            self.hits_by_route
                .iter()
                .map(|(k, v)| (format!("{{route=\"{k}\"}}"), *v))
                .collect(),
        );
        metric(
            "misses_total",
            "counter",
            "Cache misses by reason.",
            self.misses_by_reason
                .iter()
                .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), *v))
                .collect(),
        );
        metric(
            "evictions_total",
            "counter",
            "Entries evicted by the policy.",
            vec![(String::new(), self.evictions)],
        );
        metric(
            "expirations_total",
            "counter",
            "Entries expired by TTL.",
            vec![(String::new(), self.expirations)],
        );
        metric(
            "remote_total",
            "counter",
            "Remote tier counters (misses, rejected, errors, bytes_down, bytes_up, wait_ms, ...).",
            self.remote
                .iter()
                .map(|(k, v)| (format!("{{what=\"{k}\"}}"), *v))
                .collect(),
        );
        metric(
            "runs_total",
            "counter",
            "Pipeline runs.",
            vec![(String::new(), self.runs)],
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_of_nothing_is_zero() {
        assert_eq!(CacheStats::default().hit_rate(), 0.0);
        let s = CacheStats {
            hits: 3,
            misses: 1,
            ..Default::default()
        };
        assert_eq!(s.hit_rate(), 0.75);
    }
}
