//! `EntryMeta`: what the index keeps about each entry (the `entries`
//! tree's value), its binary record and the codec, in one place.

use serde::{Deserialize, Serialize};

use super::{corrupt, digest_of, Result};
use crate::hash::Digest;
use crate::store::Entry;

/// What the index keeps about an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub dag: String,
    pub task: String,
    pub output: Digest,
    pub size: u64,
    pub files: u64,
    pub created_ms: u64,
    pub last_used_ms: u64,
    pub ttl_secs: Option<u64>,
    pub exit_status: i32,
    pub duration_ms: u64,
}

/// Version byte of `EntryMeta`'s binary record (JSON records, which
/// begin with `{`, are still read).
const META_V1: u8 = 1;

impl EntryMeta {
    /// The index record: `META_V1`, the output digest, then `size`,
    /// `files`, `created_ms`, `last_used_ms`, `ttl_secs` (0 = none, else
    /// ttl + 1, saturating), `duration_ms` as LEB128, `exit_status` as zigzag LEB128,
    /// and `dag`, `task` as length-prefixed bytes. A third of the JSON's
    /// size: the index's memory after opening scales with its pages.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.dag.len() + self.task.len());
        b.push(META_V1);
        b.extend_from_slice(self.output.as_bytes());
        for v in [
            self.size,
            self.files,
            self.created_ms,
            self.last_used_ms,
            self.ttl_secs.map_or(0, |t| t.saturating_add(1)),
            self.duration_ms,
            ((self.exit_status << 1) ^ (self.exit_status >> 31)) as u32 as u64,
        ] {
            leb128(&mut b, v);
        }
        for s in [&self.dag, &self.task] {
            leb128(&mut b, s.len() as u64);
            b.extend_from_slice(s.as_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<EntryMeta> {
        if b.first() == Some(&b'{') {
            return serde_json::from_slice(b).map_err(|e| corrupt("entries", e));
        }
        let bad = |what: &str| corrupt("entries", format!("binary record: {what}"));
        let mut r = match b.split_first() {
            Some((&META_V1, rest)) => rest,
            Some((v, _)) => return Err(bad(&format!("unknown version {v}"))),
            None => return Err(bad("empty")),
        };
        if r.len() < 32 {
            return Err(bad("truncated digest"));
        }
        let output = digest_of("entries", &r[..32])?;
        r = &r[32..];
        let mut n = [0u64; 7];
        for v in &mut n {
            *v = read_leb128(&mut r).ok_or_else(|| bad("truncated number"))?;
        }
        let mut text = || -> Result<String> {
            let len = read_leb128(&mut r).ok_or_else(|| bad("truncated length"))?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= r.len())
                .ok_or_else(|| bad("truncated text"))?;
            let (s, rest) = r.split_at(len);
            r = rest;
            String::from_utf8(s.to_vec()).map_err(|_| bad("text is not UTF-8"))
        };
        let (dag, task) = (text()?, text()?);
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let z = u32::try_from(n[6]).map_err(|_| bad("exit status out of range"))?;
        Ok(EntryMeta {
            dag,
            task,
            output,
            size: n[0],
            files: n[1],
            created_ms: n[2],
            last_used_ms: n[3],
            ttl_secs: n[4].checked_sub(1),
            duration_ms: n[5],
            exit_status: ((z >> 1) as i32) ^ -((z & 1) as i32),
        })
    }
    pub fn from_entry(e: &Entry) -> EntryMeta {
        EntryMeta {
            dag: e.dag.clone(),
            task: e.task.clone(),
            output: e.output,
            size: e.size,
            files: e.files,
            created_ms: e.created_ms,
            last_used_ms: e.created_ms,
            ttl_secs: e.ttl_secs,
            exit_status: e.exit_status,
            duration_ms: e.duration_ms,
        }
    }

    /// Expired at `now_ms` under the entry's own TTL or the policy's.
    pub fn expired(&self, now_ms: u64, policy_ttl: Option<std::time::Duration>) -> bool {
        let ttl = match (self.ttl_secs, policy_ttl.map(|d| d.as_secs())) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        now_ms >= self.created_ms.saturating_add(ttl.saturating_mul(1000))
    }
}

fn leb128(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn read_leb128(r: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = r.split_first()?;
        *r = rest;
        if shift == 63 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::meta;

    #[test]
    fn entry_meta_binary_round_trips_and_is_smaller_than_json() {
        for (status, ttl) in [
            (0, None),
            (-1, Some(0)),
            (i32::MIN, Some(u64::MAX)),
            (i32::MAX, Some(7)),
        ] {
            let m = meta(status, ttl);
            let b = m.encode();
            let back = EntryMeta::decode(&b).unwrap();
            // NB: a TTL of u64::MAX seconds is kept as one second less.
            let want = EntryMeta {
                ttl_secs: ttl.map(|t| t.min(u64::MAX - 1)),
                ..m.clone()
            };
            assert_eq!(back, want);
            assert!(b.len() * 2 < serde_json::to_vec(&m).unwrap().len());
        }
    }

    #[test]
    fn entry_meta_reads_json_records_of_older_indexes() {
        let m = meta(2, Some(60));
        assert_eq!(
            EntryMeta::decode(&serde_json::to_vec(&m).unwrap()).unwrap(),
            m
        );
    }

    #[test]
    fn entry_meta_rejects_every_truncation_and_trailing_bytes() {
        let b = meta(-3, Some(1)).encode();
        for n in 0..b.len() {
            assert!(EntryMeta::decode(&b[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(EntryMeta::decode(&long).is_err());
        let mut v2 = b;
        v2[0] = 2;
        assert!(EntryMeta::decode(&v2).is_err());
        assert!(read_leb128(&mut &[0xff; 11][..]).is_none());
    }
}
