//! Trust: producers sign what they upload, consumers accept only results
//! signed by a key they trust (`remote_sign_key`, `remote_trusted_keys`).
//!
//! What is signed: the producer's entry record as uploaded (the bytes of
//! the output file `.dagfs/entry.json`), under a domain prefix. The record
//! names the key, the recipe (task digest and dependency outputs), the
//! output digest and the stdout/stderr digests, and the read path already
//! checks that the fetched tree rebuilds to that output and the logs to
//! those digests; so a valid signature vouches for the whole result.
//! The signature travels as a second output file of the ActionResult,
//! `.dagfs/signature`: `ed25519:<public key hex> <signature hex>`.
//!
//! Files (all text; `#` starts a comment line):
//! - a private key: `ed25519-private:<32-byte seed, hex>` (written 0600 by
//!   `dagfs remote keygen`; refused if group or others may read it);
//! - trusted keys: one public key `ed25519:<hex>` a line, optionally
//!   followed by a name (`ed25519:ab12… ci@team`).
//!
//! ed25519-dalek: the maintained, audited pure-Rust Ed25519 (RustCrypto's
//! `signature` traits, deterministic signatures, strict verification), so
//! no hand-written curve code.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::error::RemoteError;

/// The output file of an ActionResult that carries the signature.
pub const SIG_FILE: &str = ".dagfs/signature";
const PRIVATE: &str = "ed25519-private:";
const PUBLIC: &str = "ed25519:";
/// Domain separation: a dagfs result signature is good for nothing else.
const DOMAIN: &[u8] = b"dagfs remote result v1\0";

fn bad(path: &Path, why: impl Into<String>) -> RemoteError {
    RemoteError::Key {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    crate::hash::Digest::from_hex(s).map(|d| *d.as_bytes())
}

/// `ed25519:<hex>`.
pub fn public_text(k: &VerifyingKey) -> String {
    format!("{PUBLIC}{}", crate::hash::to_hex(k.as_bytes()))
}

fn parse_public(s: &str) -> Result<VerifyingKey, String> {
    let hex = s
        .strip_prefix(PUBLIC)
        .ok_or_else(|| format!("{s:?} is not a public key (ed25519:<64 hex digits>)"))?;
    let raw = hex32(hex).ok_or_else(|| format!("{s:?}: the key is not 64 hex digits"))?;
    VerifyingKey::from_bytes(&raw).map_err(|_| format!("{s:?} is not a valid ed25519 point"))
}

/// A new key in `path` (created 0600, never overwriting); its public key.
pub fn keygen(path: &Path) -> Result<String, RemoteError> {
    use std::io::Write;
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| bad(path, format!("no randomness from the system: {e}")))?;
    let k = SigningKey::from_bytes(&seed);
    let public = public_text(&k.verifying_key());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => bad(path, "it exists already (not overwritten)"),
            _ => bad(path, format!("cannot create it: {e}")),
        })?;
    let body = format!(
        "# dagfs remote signing key (ed25519). Keep it secret; its public key:\n# {public}\n{PRIVATE}{}\n",
        crate::hash::to_hex(&seed)
    );
    f.write_all(body.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| bad(path, format!("cannot write it: {e}")))?;
    Ok(public)
}

/// The lines of a key file that are not blank or comments.
fn lines(path: &Path) -> Result<Vec<(usize, String)>, RemoteError> {
    let s = std::fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read it: {e}")))?;
    Ok(s.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect())
}

/// A producer's key.
pub struct SignKey {
    key: SigningKey,
}

impl SignKey {
    pub fn load(path: &Path) -> Result<SignKey, RemoteError> {
        let meta =
            std::fs::metadata(path).map_err(|e| bad(path, format!("cannot read it: {e}")))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad(
                path,
                format!(
                    "a private key others may read (mode {:o}; chmod 600 it)",
                    meta.permissions().mode() & 0o777
                ),
            ));
        }
        let l = lines(path)?;
        let [(n, line)] = &l[..] else {
            return Err(bad(
                path,
                "not a dagfs signing key (one line `ed25519-private:<64 hex digits>`; make one with `dagfs remote keygen FILE`)",
            ));
        };
        let seed = line
            .strip_prefix(PRIVATE)
            .and_then(hex32)
            .ok_or_else(|| {
                bad(
                    path,
                    format!("line {n}: not `ed25519-private:<64 hex digits>` (make a key with `dagfs remote keygen FILE`)"),
                )
            })?;
        Ok(SignKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public(&self) -> String {
        public_text(&self.key.verifying_key())
    }

    /// The content of `SIG_FILE` for this entry record.
    pub fn sign(&self, record: &[u8]) -> Vec<u8> {
        let sig = self.key.sign(&message(record));
        format!(
            "{} {}\n",
            self.public(),
            crate::hash::to_hex(&sig.to_bytes())
        )
        .into_bytes()
    }
}

/// The keys a consumer trusts.
#[derive(Debug, Clone)]
pub struct Trusted(Vec<VerifyingKey>);

impl Trusted {
    pub fn load(path: &Path) -> Result<Trusted, RemoteError> {
        let mut keys = Vec::new();
        for (n, line) in lines(path)? {
            let word = line.split_whitespace().next().unwrap_or("");
            keys.push(parse_public(word).map_err(|w| bad(path, format!("line {n}: {w}")))?);
        }
        if keys.is_empty() {
            return Err(bad(
                path,
                "it names no key (one `ed25519:<64 hex digits>` a line): trusting nobody would reject every result",
            ));
        }
        Ok(Trusted(keys))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when `sig` (the content of `SIG_FILE`, None: absent) is a valid
    /// signature of `record` by a trusted key; else why not.
    pub fn check(&self, record: &[u8], sig: Option<&[u8]>) -> Result<(), String> {
        let sig = sig.ok_or("it is not signed")?;
        let sig = std::str::from_utf8(sig).map_err(|_| "its signature is not text")?;
        let mut w = sig.split_whitespace();
        let (Some(k), Some(s), None) = (w.next(), w.next(), w.next()) else {
            return Err("its signature is not `ed25519:<key> <signature>`".into());
        };
        let key = parse_public(k).map_err(|w| format!("its signature names a bad key: {w}"))?;
        if !self.0.contains(&key) {
            return Err(format!("it is signed by {k}, a key not trusted here"));
        }
        let raw: [u8; 64] = hex64(s).ok_or("its signature is not 128 hex digits")?;
        key.verify_strict(&message(record), &Signature::from_bytes(&raw))
            .map_err(|_| format!("its signature by {k} does not verify"))
    }
}

fn hex64(s: &str) -> Option<[u8; 64]> {
    if s.len() != 128 {
        return None;
    }
    let a = hex32(&s[..64])?;
    let b = hex32(&s[64..])?;
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&a);
    out[32..].copy_from_slice(&b);
    Some(out)
}

fn message(record: &[u8]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(blake3::hash(record).as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_check() {
        let d = tempfile::tempdir().unwrap();
        let (p, q) = (d.path().join("k"), d.path().join("k2"));
        let public = keygen(&p).unwrap();
        keygen(&q).unwrap();
        assert!(keygen(&p).unwrap_err().to_string().contains("exists"));
        let s = SignKey::load(&p).unwrap();
        assert_eq!(s.public(), public);
        let other = SignKey::load(&q).unwrap();
        let t = d.path().join("trusted");
        std::fs::write(&t, format!("# CI\n\n{public} ci@team\n")).unwrap();
        let trusted = Trusted::load(&t).unwrap();
        let sig = s.sign(b"record");
        assert_eq!(trusted.check(b"record", Some(&sig)), Ok(()));
        assert!(trusted
            .check(b"other", Some(&sig))
            .unwrap_err()
            .contains("does not verify"));
        assert!(trusted
            .check(b"record", None)
            .unwrap_err()
            .contains("not signed"));
        let e = trusted
            .check(b"record", Some(&other.sign(b"record")))
            .unwrap_err();
        assert!(e.contains("not trusted"), "{e}");
        // One flipped bit of the signature.
        let mut bad = sig.clone();
        let i = bad.len() - 2;
        bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
        assert!(trusted.check(b"record", Some(&bad)).is_err());
    }

    #[test]
    fn bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, "ed25519-private:zz\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SignKey::load(&p)
            .err()
            .unwrap()
            .to_string()
            .contains("line 1"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SignKey::load(&p)
            .err()
            .unwrap()
            .to_string()
            .contains("chmod 600"));
        let t = d.path().join("t");
        std::fs::write(&t, "# nobody\n").unwrap();
        assert!(Trusted::load(&t)
            .unwrap_err()
            .to_string()
            .contains("names no key"));
        std::fs::write(&t, "ed25519:1234\n").unwrap();
        assert!(Trusted::load(&t)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }
}
