//! Parsing the names a user types under the mount: key and digest prefixes,
//! run ids, pipeline and task labels.
//!
//! Owns: nothing. May call: `hash` (for `HexPrefix`). Guarantees: a name
//! that passes here is one path component of at most 255 bytes, with no
//! `/`, NUL, `.` or `..`; anything else is "not found", never a host path.

use crate::hash::HexPrefix;

/// The longest name any directory of the mount holds (NAME_MAX).
pub const MAX_NAME: usize = 255;

/// `name` if it is a plausible single path component.
pub fn component(name: &[u8]) -> Option<&[u8]> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0);
    ok.then_some(name)
}

/// A key or digest given in full (64 hex digits) or by a prefix of at least
/// 8; anything else (7 digits, non-hex, 65 digits) is None.
pub fn hex_prefix(name: &[u8]) -> Option<HexPrefix> {
    HexPrefix::parse(std::str::from_utf8(component(name)?).ok()?)
}

/// A run id in canonical decimal (`17`, not `017` or `+17`).
pub fn run_id(name: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(component(name)?).ok()?;
    if !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// A pipeline or task name: one UTF-8 component.
pub fn label(name: &[u8]) -> Option<&str> {
    std::str::from_utf8(component(name)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_reject_traversal_and_separators() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(component(bad).is_none(), "{bad:?}");
        }
        assert!(component(&[b'x'; 255]).is_some());
        assert!(component(b"...").is_some());
    }

    #[test]
    fn hex_prefixes_need_8_to_64_hex_digits() {
        assert!(hex_prefix(b"3fa9c2d").is_none());
        assert!(hex_prefix(b"3fa9c2dz").is_none());
        assert!(hex_prefix(b"../../etc").is_none());
        assert!(hex_prefix(&[b'a'; 65]).is_none());
        assert!(hex_prefix(&[0xff, 0xfe, b'a', b'a', b'a', b'a', b'a', b'a']).is_none());
        assert_eq!(hex_prefix(b"3FA9C2D1").unwrap().as_str(), "3fa9c2d1");
        assert!(hex_prefix(&[b'0'; 64]).is_some());
    }

    #[test]
    fn run_ids_are_canonical_decimal() {
        assert_eq!(run_id(b"0"), Some(0));
        assert_eq!(run_id(b"17"), Some(17));
        assert_eq!(run_id(b"017"), None);
        assert_eq!(run_id(b"+1"), None);
        assert_eq!(run_id(b"latest"), None);
        assert_eq!(run_id(b"99999999999999999999999"), None);
    }

    #[test]
    fn labels_are_utf8_components() {
        assert_eq!(label(b"build"), Some("build"));
        assert_eq!(label(b".."), None);
        assert_eq!(label(&[0xe9]), None);
    }
}
