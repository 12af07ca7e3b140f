//! The cache policy's copy beside `FORMAT`: `<store>/policy`, so that an
//! index rebuilt from `entries/` (which know nothing of it) keeps it.
//!
//! Owns: `<store>/policy`. May call: `hash`. The policy itself is opaque
//! here (the index layer's JSON).
//!
//! ```text
//! dagfs-policy 1\n
//! <BLAKE3 of the body, 64 hex>\n
//! <body: the policy as JSON>
//! ```
//!
//! Written under `tmp/`, fsynced, renamed over the old one: a reader sees
//! the old copy or the new, whole. A copy whose checksum does not match is
//! damage: `read_policy` says so and callers keep the index's.

use std::fs;
use std::io::Write;

use super::error::{IoContext, Result, StoreError};
use super::Store;
use crate::hash::Digest;

const NAME: &str = "policy";
const MAGIC: &str = "dagfs-policy 1";

impl Store {
    /// Record the policy (`body`) durably.
    pub fn write_policy(&self, body: &[u8]) -> Result<()> {
        let tmp = self
            .tmp_root()
            .join(format!("{NAME}-{}", std::process::id()));
        let mut f = fs::File::create(&tmp).at(&tmp)?;
        writeln!(f, "{MAGIC}\n{}", Digest::of(body).to_hex()).at(&tmp)?;
        f.write_all(body).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        let dst = self.root().join(NAME);
        fs::rename(&tmp, &dst).at(&dst)?;
        fs::File::open(self.root())
            .and_then(|d| d.sync_all())
            .at(self.root())
    }

    /// The recorded policy's body; None if there is none.
    pub fn read_policy(&self) -> Result<Option<Vec<u8>>> {
        let path = self.root().join(NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let corrupt = |reason: &str| StoreError::Corrupt {
            digest: Digest::default(),
            path: path.clone(),
            reason: format!("policy copy: {reason}"),
        };
        let text = bytes.splitn(3, |&b| b == b'\n').collect::<Vec<_>>();
        let [magic, sum, body] = text[..] else {
            return Err(corrupt("truncated"));
        };
        if magic != MAGIC.as_bytes() {
            return Err(corrupt("not a policy file"));
        }
        let want = std::str::from_utf8(sum)
            .ok()
            .and_then(Digest::from_hex)
            .ok_or_else(|| corrupt("bad checksum line"))?;
        if Digest::of(body) != want {
            return Err(corrupt("checksum does not match"));
        }
        Ok(Some(body.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_round_trips_and_damage_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path(), &mut |_| {}).unwrap();
        assert_eq!(s.read_policy().unwrap(), None);
        s.write_policy(b"{\"max_entries\":3}").unwrap();
        assert_eq!(
            s.read_policy().unwrap().as_deref(),
            Some(&b"{\"max_entries\":3}"[..])
        );
        let p = t.path().join(NAME);
        let mut b = fs::read(&p).unwrap();
        let n = b.len();
        b[n - 2] ^= 1;
        fs::write(&p, b).unwrap();
        assert!(matches!(s.read_policy(), Err(StoreError::Corrupt { .. })));
    }
}
