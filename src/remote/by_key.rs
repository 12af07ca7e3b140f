//! Entries found by their dagfs key alone (a lookup of `/keys/<key>`
//! through a daemon's mount, issue 15's read path).
//!
//! A result is filed under its recipe's Action (`mapping`), whose digest
//! needs the whole manifest (command, cwd, env values, inputs, deps): a
//! key names the manifest but cannot be turned back into it. So the
//! uploader files each entry record a second time, under an Action that
//! is a function of the key alone:
//!
//! ```text
//! Command = {arguments: ["dagfs", "entry", <key hex>], output_paths: [".dagfs/entry.json"]}
//! Action  = {command_digest, input_root_digest: the empty Directory,
//!            salt: "dagfs key v1\0" ++ the 32 key bytes}
//! ActionResult = {output_files: [{path: ".dagfs/entry.json", digest: the record}]}
//! ```
//!
//! sent after the recipe's `UpdateActionResult`. A consumer reads that
//! record, trusts nothing in it until its manifest re-derives to the key
//! asked for (`KeyBuilder::key_of`, and its `task_digest` field to the
//! manifest's own), then takes the ordinary read path (`fetch_entry`) for
//! that manifest's recipe, which checks every blob and the output digest.
//! A forged key record can at worst name another recipe of the same key,
//! which cannot exist (BLAKE3).

use std::collections::HashSet;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use crate::cache::Cache;
use crate::exec::key::KeyBuilder;
use crate::hash::Digest;
use crate::index::EntryMeta;
use crate::store::Entry;

use super::mapping::{self, dkey, DigestFn};
use super::{Remote, RemoteError};

const SALT: &[u8] = b"dagfs key v1\0";

/// The messages that file an entry record under its key.
pub(super) struct KeyAction {
    pub action: Vec<u8>,
    pub command: Vec<u8>,
    pub digest: re::Digest,
}

pub(super) fn key_action(key: &Digest, f: DigestFn) -> KeyAction {
    let command = re::Command {
        arguments: vec!["dagfs".into(), "entry".into(), key.to_hex()],
        output_paths: vec![mapping::ENTRY_FILE.into()],
        ..Default::default()
    }
    .encode_to_vec();
    let mut salt = SALT.to_vec();
    salt.extend_from_slice(key.as_bytes());
    let action = re::Action {
        command_digest: Some(f.of(&command)),
        input_root_digest: Some(f.of(&re::Directory::default().encode_to_vec())),
        salt,
        ..Default::default()
    }
    .encode_to_vec();
    KeyAction {
        digest: f.of(&action),
        action,
        command,
    }
}

/// The digest under which the record of entry `key` is filed.
pub fn key_action_digest(key: &Digest, f: DigestFn) -> re::Digest {
    key_action(key, f).digest
}

/// The key Action's result: only the entry record.
pub(super) fn key_result(record: re::Digest) -> re::ActionResult {
    re::ActionResult {
        output_files: vec![re::OutputFile {
            path: mapping::ENTRY_FILE.into(),
            digest: Some(record),
            ..Default::default()
        }],
        ..Default::default()
    }
}

impl Remote {
    /// The entry `key` from the server, made an ordinary local entry (the
    /// read path's checks, `fetch_entry`), for a store that lacks it.
    /// Ok(None): the server knows no such key (or the store kept no room
    /// for it). Counted as a hit (route `remote` in the store's stats, as
    /// a run's), a miss or a rejection; the task's
    /// `latest` key in this store is left as it was, if it had one.
    pub fn fetch_key(&self, cache: &Cache, key: &Digest) -> Result<Option<EntryMeta>, RemoteError> {
        let r = self.fetch_key_inner(cache, key);
        match &r {
            Ok(Some(_)) => {
                self.counters.add("hits", 1);
                self.succeeded();
            }
            Ok(None) => {
                self.counters.add("misses", 1);
                self.succeeded();
            }
            Err(RemoteError::Rejected { .. }) => self.counters.add("rejected", 1),
            Err(RemoteError::Disabled { .. } | RemoteError::Unreachable { .. }) => {}
            Err(e) => self.failed(e, false),
        }
        r
    }

    fn fetch_key_inner(
        &self,
        cache: &Cache,
        key: &Digest,
    ) -> Result<Option<EntryMeta>, RemoteError> {
        let conn = self.conn()?;
        let ka = key_action(key, conn.f);
        let Some(ar) = self
            .block(conn.get_action_result(&ka.digest))
            .map_err(|w| self.server_err(w))?
        else {
            return Ok(None);
        };
        let reject = |why: &str| RemoteError::Rejected {
            key: key.short(),
            why: why.into(),
        };
        let rd = ar
            .output_files
            .iter()
            .find(|o| o.path == mapping::ENTRY_FILE)
            .and_then(|o| o.digest.clone())
            .ok_or_else(|| reject("its key record names no entry record"))?;
        let mut got = self.read_blobs(&conn, key, std::slice::from_ref(&rd))?;
        let bytes = got
            .remove(&dkey(&rd))
            .ok_or_else(|| reject("its entry record is missing on the server"))?;
        let theirs = Entry::from_json(&bytes)
            .map_err(|e| reject(&format!("its entry record does not decode: {e}")))?;
        let m = &theirs.manifest;
        if theirs.key != *key
            || KeyBuilder::key_of(m) != *key
            || KeyBuilder::task_digest(m) != m.task_digest
        {
            return Err(reject("its entry record is for another key"));
        }
        let latest = cache.index.latest_moved(&theirs.dag, &theirs.task)?;
        let ours = Entry {
            previous: None,
            origin: None,
            ..theirs.clone()
        };
        let policy = cache.policy();
        let Some(meta) = self.fetch_entry(cache, &ours, &HashSet::new(), &policy)? else {
            return Ok(None);
        };
        cache
            .index
            .set_recipe(&KeyBuilder::recipe(&m.task_digest, &m.deps), key)?;
        // NB: a hit with route `remote` in `dagfs stats`, as a run's is.
        cache.index.record_hit(crate::index::stats::Route::Remote)?;
        // NB: a lookup is a read: the task's latest key in this store (what
        // `/dags` shows, what `explain` compares with) stays as it was.
        if let Some((l, moved)) = latest {
            cache
                .index
                .restore_latest(&theirs.dag, &theirs.task, &l, moved)?;
        }
        cache.flush()?;
        Ok(Some(meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_action_is_a_function_of_the_key_only() {
        for f in [DigestFn::Sha256, DigestFn::Blake3] {
            let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
            assert_eq!(key_action(&a, f).digest, key_action(&a, f).digest);
            assert_ne!(key_action(&a, f).digest, key_action(&b, f).digest);
        }
    }
}
