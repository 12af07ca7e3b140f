//! Cache keys.
//!
//! ```text
//! task digest = BLAKE3-derive("dagfs task digest v1",
//!                 command, cwd, version,
//!                 env   sorted by name:  (name, value | unset),
//!                 inputs sorted by path: (path, Merkle digest),
//!                 params sorted by name: (name, CacheKey digest))
//! cache key   = BLAKE3-derive("dagfs cache key v1",
//!                 task name, task digest,
//!                 deps sorted by name: (dep name, dep OUTPUT digest))
//! ```
//!
//! Every field is length-prefixed (`hash::CanonicalHasher`) and every list is
//! sorted before hashing, so declaration order never changes a key and no
//! two different manifests share an encoding. Keys take dependencies'
//! *output* digests, not their keys: an upstream task that re-runs and
//! produces identical bytes leaves every downstream key unchanged (early
//! cutoff).

use crate::hash::{CanonicalHasher, Digest, CTX_KEY, CTX_TASK, CTX_VALUE};

const CTX_RECIPE: &str = "dagfs remote recipe v1";
use crate::store::Manifest;

/// Builds task digests and cache keys (dagron's `CacheKeyBuilder`).
pub struct KeyBuilder;

impl KeyBuilder {
    /// Digest of an arbitrary value, domain-separated from blobs and keys.
    pub fn hash_value(bytes: &[u8]) -> Digest {
        CanonicalHasher::new(CTX_VALUE).bytes(bytes).finish()
    }

    /// The task digest of a manifest (its `task_digest` field is ignored).
    pub fn task_digest(m: &Manifest) -> Digest {
        let mut h = CanonicalHasher::new(CTX_TASK);
        h.str(&m.command).str(&m.cwd).str(&m.version);
        let mut env: Vec<_> = m.env.iter().collect();
        env.sort();
        h.u64(env.len() as u64);
        for (k, v) in env {
            h.str(k).opt_str(v.as_deref());
        }
        for list in [&m.inputs, &m.params] {
            let mut l: Vec<_> = list.iter().collect();
            l.sort();
            h.u64(l.len() as u64);
            for (k, d) in l {
                h.str(k).digest(d);
            }
        }
        h.finish()
    }

    /// The cache key from a task's name, its task digest, and its
    /// dependencies' output digests (any order).
    pub fn build_key(name: &str, task_digest: &Digest, deps: &[(String, Digest)]) -> Digest {
        let mut deps: Vec<_> = deps.iter().collect();
        deps.sort();
        let mut h = CanonicalHasher::new(CTX_KEY);
        h.str(name).digest(task_digest).u64(deps.len() as u64);
        for (n, d) in deps {
            h.str(n).digest(d);
        }
        h.finish()
    }

    /// A task's recipe: its key without its name (task digest and the
    /// dependencies' outputs), so the same step under another task or
    /// pipeline name has the same recipe (the `content` route; the remote
    /// tier's Action). Domain `dagfs remote recipe v1`.
    pub fn recipe(task_digest: &Digest, deps: &[(String, Digest)]) -> Digest {
        let mut deps: Vec<_> = deps.iter().collect();
        deps.sort();
        let mut h = CanonicalHasher::new(CTX_RECIPE);
        h.digest(task_digest).u64(deps.len() as u64);
        for (n, d) in deps {
            h.str(n).digest(d);
        }
        h.finish()
    }

    /// Re-derive the key a manifest describes (used by `fsck` and tests).
    pub fn key_of(m: &Manifest) -> Digest {
        Self::build_key(&m.name, &Self::task_digest(m), &m.deps)
    }
}

/// A value that supplies its own cache identity (dagron's
/// `__dagron_cache_key__`). Give one to a library task with
/// `Task::key_input`, so state a closure captures enters its key.
pub trait CacheKey {
    fn cache_key(&self) -> Digest;
}

impl CacheKey for [u8] {
    fn cache_key(&self) -> Digest {
        KeyBuilder::hash_value(self)
    }
}
impl CacheKey for str {
    fn cache_key(&self) -> Digest {
        KeyBuilder::hash_value(self.as_bytes())
    }
}
impl CacheKey for String {
    fn cache_key(&self) -> Digest {
        self.as_str().cache_key()
    }
}
impl CacheKey for Vec<u8> {
    fn cache_key(&self) -> Digest {
        self.as_slice().cache_key()
    }
}
impl CacheKey for Digest {
    fn cache_key(&self) -> Digest {
        *self
    }
}
macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn cache_key(&self) -> Digest {
                KeyBuilder::hash_value(&self.to_le_bytes())
            }
        }
    )*};
}
int_key!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, usize, isize);

/// Any serde value, keyed by its JSON encoding.
pub struct Json<'a, T: serde::Serialize>(pub &'a T);

impl<T: serde::Serialize> CacheKey for Json<'_, T> {
    fn cache_key(&self) -> Digest {
        KeyBuilder::hash_value(&serde_json::to_vec(self.0).expect("value serializes to JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "t".into(),
            command: "cc -c a.c".into(),
            cwd: ".".into(),
            env: vec![("CC".into(), Some("gcc".into())), ("LANG".into(), None)],
            inputs: vec![
                ("a.c".into(), Digest::of(b"a")),
                ("b.h".into(), Digest::of(b"b")),
            ],
            params: vec![],
            version: "1".into(),
            task_digest: Digest([0; 32]),
            deps: vec![
                ("x".into(), Digest::of(b"x")),
                ("y".into(), Digest::of(b"y")),
            ],
        }
    }

    #[test]
    fn every_component_changes_the_key() {
        let base = KeyBuilder::key_of(&manifest());
        type Edit = Box<dyn Fn(&mut Manifest)>;
        let edits: Vec<Edit> = vec![
            Box::new(|m| m.name = "u".into()),
            Box::new(|m| m.command.push(' ')),
            Box::new(|m| m.cwd = "src".into()),
            Box::new(|m| m.env[0].1 = Some("clang".into())),
            Box::new(|m| m.env[1].1 = Some(String::new())),
            Box::new(|m| m.inputs[0].1 = Digest::of(b"a2")),
            Box::new(|m| m.inputs[0].0 = "c.c".into()),
            Box::new(|m| m.params.push(("p".into(), Digest::of(b"p")))),
            Box::new(|m| m.version = "2".into()),
            Box::new(|m| m.deps[1].1 = Digest::of(b"y2")),
            Box::new(|m| {
                m.deps.pop();
            }),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut m = manifest();
            edit(&mut m);
            assert_ne!(KeyBuilder::key_of(&m), base, "edit {i} must change the key");
        }
    }

    #[test]
    fn unset_and_empty_env_differ() {
        let mut a = manifest();
        a.env[1].1 = None;
        let mut b = manifest();
        b.env[1].1 = Some(String::new());
        assert_ne!(KeyBuilder::task_digest(&a), KeyBuilder::task_digest(&b));
    }

    proptest! {
        #[test]
        fn keys_are_invariant_to_declaration_order(seed in any::<u64>()) {
            let m = manifest();
            let mut p = m.clone();
            let mut s = seed;
            let mut shuffle = |v: &mut Vec<(String, Digest)>| {
                for i in (1..v.len()).rev() {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    v.swap(i, (s >> 33) as usize % (i + 1));
                }
            };
            shuffle(&mut p.inputs);
            shuffle(&mut p.deps);
            if seed % 2 == 1 { p.env.reverse(); }
            prop_assert_eq!(KeyBuilder::key_of(&m), KeyBuilder::key_of(&p));
        }
    }
}
