//! The cache policy: limits on the number of entries, their total size and
//! their age. Stored in the index (`config`) and copied, checksummed, to
//! `<store>/policy` (`store::policy`) so a rebuilt index gets it back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits on the cache. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePolicy {
    pub max_entries: Option<u64>,
    pub max_size_bytes: Option<u64>,
    #[serde(with = "opt_secs")]
    pub ttl: Option<Duration>,
}

impl CachePolicy {
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self
    }
    pub fn max_size_bytes(mut self, n: u64) -> Self {
        self.max_size_bytes = Some(n);
        self
    }
    pub fn ttl(mut self, d: Duration) -> Self {
        self.ttl = Some(d);
        self
    }
    /// `other`'s limits where set, else ours.
    pub fn overlay(self, other: CachePolicy) -> CachePolicy {
        CachePolicy {
            max_entries: other.max_entries.or(self.max_entries),
            max_size_bytes: other.max_size_bytes.or(self.max_size_bytes),
            ttl: other.ttl.or(self.ttl),
        }
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}
