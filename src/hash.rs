//! Identity: the `Digest` newtype (32-byte BLAKE3), its hex form, and the
//! domain-separation contexts every other layer hashes with.
//!
//! Owns: nothing on disk. May call: `blake3` only.
//! Guarantees: a `Digest` always prints as 64 lowercase hex digits and parses
//! back from exactly that; each kind of hashed object has its own context
//! string, so a blob can never collide with a key or a task digest.

use std::fmt;
use std::str::FromStr;

/// Context for cache keys (see `exec::key`).
pub const CTX_KEY: &str = "dagfs cache key v1";
/// Context for task digests (see `exec::key`).
pub const CTX_TASK: &str = "dagfs task digest v1";
/// Context for `KeyBuilder::hash_value` and `CacheKey` values.
pub const CTX_VALUE: &str = "dagfs value v1";

/// A 32-byte BLAKE3 digest. Blobs are named by the plain BLAKE3 of their
/// bytes (so `b3sum` agrees); keys and task digests are derived-key hashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub const LEN: usize = 32;

    /// BLAKE3 of `bytes` (the blob naming function).
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_blake3(h: blake3::Hash) -> Digest {
        Digest(*h.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_slice(b: &[u8]) -> Option<Digest> {
        let arr: [u8; 32] = b.try_into().ok()?;
        Some(Digest(arr))
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// The first 8 hex digits, for display.
    pub fn short(&self) -> String {
        to_hex(&self.0[..4])
    }

    /// Parse exactly 64 lowercase-or-uppercase hex digits.
    pub fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a digest (want 64 hex digits): {0:?}")]
pub struct BadDigest(pub String);

impl FromStr for Digest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::from_hex(s).ok_or_else(|| BadDigest(s.to_string()))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).ok_or_else(|| serde::de::Error::custom(BadDigest(s)))
    }
}

/// A hex prefix of a key or digest as typed by a user (`3fa9c2d1`): at least
/// 8 and at most 64 hex digits. Anything else is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexPrefix(String);

impl HexPrefix {
    pub const MIN_LEN: usize = 8;

    pub fn parse(s: &str) -> Option<HexPrefix> {
        if s.len() < Self::MIN_LEN || s.len() > 64 || !s.bytes().all(|b| nibble(b).is_some()) {
            return None;
        }
        Some(HexPrefix(s.to_ascii_lowercase()))
    }

    /// The byte range `[lo, hi]` of digests that start with this prefix, for
    /// a range scan over an ordered index.
    pub fn range(&self) -> ([u8; 32], [u8; 32]) {
        let mut lo = [0u8; 32];
        let mut hi = [0xffu8; 32];
        for (i, c) in self.0.bytes().enumerate() {
            let n = nibble(c).expect("validated");
            let byte = i / 2;
            if i % 2 == 0 {
                lo[byte] = n << 4;
                hi[byte] = (n << 4) | 0x0f;
            } else {
                lo[byte] |= n;
                hi[byte] = (hi[byte] & 0xf0) | n;
            }
        }
        (lo, hi)
    }

    pub fn matches(&self, d: &Digest) -> bool {
        d.to_hex().starts_with(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

/// A canonical, length-prefixed encoder feeding a BLAKE3 hasher. Every field
/// is tagged with its length, so no two different field sequences encode to
/// the same bytes (`("ab","c")` ≠ `("a","bc")`).
pub struct CanonicalHasher {
    h: blake3::Hasher,
}

impl CanonicalHasher {
    pub fn new(context: &str) -> Self {
        CanonicalHasher {
            h: blake3::Hasher::new_derive_key(context),
        }
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.h.update(&(b.len() as u64).to_le_bytes());
        self.h.update(b);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.h.update(&v.to_le_bytes());
        self
    }

    pub fn digest(&mut self, d: &Digest) -> &mut Self {
        self.h.update(&d.0);
        self
    }

    /// An optional value: a tag byte, then the value if present.
    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => {
                self.h.update(&[0]);
            }
            Some(s) => {
                self.h.update(&[1]);
                self.str(s);
            }
        }
        self
    }

    pub fn finish(&self) -> Digest {
        Digest::from_blake3(self.h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let d = Digest::of(b"hello");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(d.to_hex().len(), 64);
        assert_eq!(d.to_hex(), blake3::hash(b"hello").to_hex().as_str());
    }

    #[test]
    fn bad_hex_rejected() {
        assert!(Digest::from_hex("zz").is_none());
        assert!(Digest::from_hex(&"g".repeat(64)).is_none());
        assert!(Digest::from_hex(&"a".repeat(63)).is_none());
    }

    #[test]
    fn prefix_rules() {
        assert!(
            HexPrefix::parse("3fa9c2d").is_none(),
            "7 digits is too short"
        );
        assert!(HexPrefix::parse("3fa9c2dz").is_none());
        assert!(HexPrefix::parse("../../etc").is_none());
        let d = Digest::of(b"x");
        let p = HexPrefix::parse(&d.to_hex()[..9]).unwrap();
        assert!(p.matches(&d));
        let (lo, hi) = p.range();
        assert!(lo <= d.0 && d.0 <= hi);
    }

    #[test]
    fn canonical_fields_do_not_alias() {
        let a = CanonicalHasher::new(CTX_VALUE).str("ab").str("c").finish();
        let b = CanonicalHasher::new(CTX_VALUE).str("a").str("bc").finish();
        assert_ne!(a, b);
        let c = CanonicalHasher::new(CTX_KEY).str("ab").str("c").finish();
        assert_ne!(a, c, "contexts separate domains");
    }
}
