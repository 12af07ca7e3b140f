//! The write path: queued entries to the server.
//!
//! For each queued key (`queue`), the entry record is read from `entries/`
//! (never from memory: only what was committed is uploaded). Its trees
//! become `Directory` messages and one `Tree`; every blob (files, logs,
//! directories, the tree, the record, the Command, the Action, the empty
//! input root, the key Action and its Command) is offered to
//! FindMissingBlobs unless the server confirmed it less than `KNOWN_TTL`
//! ago (index rows `h`), the missing ones are sent (BatchUpdateBlobs under
//! the server's limit, ByteStream above), and `UpdateActionResult` goes
//! **last**: the recipe's, then the key's (`by_key`). Then the marker is
//! removed.

use std::collections::{HashMap, HashSet};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use crate::cache::Cache;
use crate::hash::Digest;
use crate::store::tree::Node;

use super::client::Conn;
use super::mapping::{self, dkey, ActionMsgs, DigestFn};
use super::{queue, Remote, RemoteError};

/// What `Remote::upload` did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct UploadReport {
    /// Entries now on the server.
    pub uploaded: u64,
    /// Queued entries with nothing to upload (record gone, not kept).
    pub dropped: u64,
    /// Entries REAPI cannot carry (kept local only).
    pub local_only: u64,
    /// Entries that failed (still queued), with why.
    pub failed: Vec<(String, String)>,
    pub blobs_sent: u64,
    pub bytes_sent: u64,
    /// Blobs the server already had.
    pub blobs_present: u64,
    /// Of those, the ones not asked about: the server confirmed them less
    /// than `KNOWN_TTL` ago (index rows `h`).
    pub blobs_remembered: u64,
}

/// How long a blob the server confirmed is taken as there without asking
/// again (servers evict; `DAGFS_REMOTE_KNOWN_TTL_MS` overrides it).
pub const KNOWN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

enum Src {
    Bytes(Vec<u8>),
    Blob(Digest),
}

impl Remote {
    /// The REAPI digest of the stored blob `b` (SHA-256: from the map, else
    /// read and hashed once, and remembered).
    fn remote_digest(
        &self,
        cache: &Cache,
        f: DigestFn,
        b: &Digest,
        size: u64,
    ) -> Result<re::Digest, RemoteError> {
        if f == DigestFn::Blake3 {
            return Ok(re::Digest {
                hash: b.to_hex(),
                size_bytes: size as i64,
            });
        }
        let mut k = vec![b's'];
        k.extend_from_slice(b.as_bytes());
        if let Some(v) = cache.index.remote_get(&k)? {
            if v.len() == 32 {
                return Ok(re::Digest {
                    hash: crate::hash::to_hex(&v),
                    size_bytes: size as i64,
                });
            }
        }
        let bytes = cache.store.read_blob(b)?;
        let rd = f.of(&bytes);
        self.remember(cache, &[(*b, rd.hash.clone())])?;
        Ok(rd)
    }

    /// Record `blake3 ↔ sha256` pairs in the index (tree `remote`).
    pub(super) fn remember(
        &self,
        cache: &Cache,
        rows: &[(Digest, String)],
    ) -> Result<(), RemoteError> {
        let mut ops = Vec::new();
        for (b, sha) in rows {
            let Some(raw) = Digest::from_hex(sha) else {
                continue;
            };
            let mut s = vec![b's'];
            s.extend_from_slice(b.as_bytes());
            ops.push((s, raw.as_bytes().to_vec()));
            let mut r = vec![b'b'];
            r.extend_from_slice(raw.as_bytes());
            ops.push((r, b.as_bytes().to_vec()));
        }
        cache.index.remote_put(ops)?;
        Ok(())
    }

    /// What the rows of blobs the server has are kept under: the server,
    /// its instance and the digest function (another server, instance or
    /// function knows nothing of them).
    pub(super) fn known_scope(&self, conn: &Conn) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(self.url.to_string().as_bytes());
        h.update(b"\0");
        h.update(conn.instance.as_bytes());
        h.update(b"\0");
        h.update(conn.f.name().as_bytes());
        *h.finalize().as_bytes()
    }

    fn known_key(scope: &[u8; 32], rd: &re::Digest) -> Option<Vec<u8>> {
        let raw = Digest::from_hex(&rd.hash)?;
        let mut k = Vec::with_capacity(1 + 32 + 32 + 8);
        k.push(b'h');
        k.extend_from_slice(scope);
        k.extend_from_slice(raw.as_bytes());
        k.extend_from_slice(&rd.size_bytes.to_le_bytes());
        Some(k)
    }

    /// The row of the sentinel: the blob the server confirmed last.
    fn sentinel_key(scope: &[u8; 32]) -> Vec<u8> {
        let mut k = Vec::with_capacity(33);
        k.push(b'H');
        k.extend_from_slice(scope);
        k
    }

    /// Remember `rd` as the sentinel of `scope`: the server has it now.
    pub(super) fn set_sentinel(
        &self,
        cache: &Cache,
        scope: &[u8; 32],
        rd: &re::Digest,
    ) -> Result<(), RemoteError> {
        let v = format!("{}/{}", rd.hash, rd.size_bytes).into_bytes();
        cache.index.remote_put([(Self::sentinel_key(scope), v)])?;
        Ok(())
    }

    /// Whether what this store remembers of the server still holds: the
    /// sentinel (the blob it confirmed last) is asked about, once an
    /// upload pass. A server that lost it (restarted with an in-memory
    /// CAS, wiped) has lost the rest too; then every blob is asked about
    /// again in this pass (the rows are stamped anew as blobs are
    /// confirmed). Single blobs a server evicts within the TTL are not
    /// caught: their results are a miss or rejected for readers, never
    /// wrong.
    fn sentinel_holds(&self, cache: &Cache, conn: &Conn) -> bool {
        let scope = self.known_scope(conn);
        let Ok(Some(v)) = cache.index.remote_get(&Self::sentinel_key(&scope)) else {
            // Nothing remembered yet (or the index cannot say): trust
            // nothing that is not asked about.
            return false;
        };
        let s = String::from_utf8_lossy(&v);
        let Some(rd) = s.split_once('/').and_then(|(hash, size)| {
            Some(re::Digest {
                hash: hash.to_string(),
                size_bytes: size.parse().ok()?,
            })
        }) else {
            return false;
        };
        matches!(self.block(conn.find_missing(vec![rd])), Ok(m) if m.is_empty())
    }

    /// The server confirmed `rd` less than the TTL ago.
    fn known(
        &self,
        cache: &Cache,
        scope: &[u8; 32],
        rd: &re::Digest,
        now: u64,
    ) -> Result<bool, RemoteError> {
        let Some(k) = Self::known_key(scope, rd) else {
            return Ok(false);
        };
        if self.forget_known.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        Ok(match cache.index.remote_get(&k)? {
            Some(v) if v.len() == 8 => {
                let at = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
                now.saturating_sub(at) < self.known_ttl.as_millis() as u64
            }
            _ => false,
        })
    }

    /// Record that the server has every blob of `rds`, as of `now`.
    pub(super) fn remember_known(
        &self,
        cache: &Cache,
        scope: &[u8; 32],
        rds: &[re::Digest],
        now: u64,
    ) -> Result<(), RemoteError> {
        let rows = rds
            .iter()
            .filter_map(|rd| Self::known_key(scope, rd))
            .map(|k| (k, now.to_le_bytes().to_vec()));
        cache.index.remote_put(rows)?;
        Ok(())
    }

    /// The dagfs name of a blob the server names `rd`, if this store has it.
    pub(super) fn local_name(
        &self,
        cache: &Cache,
        f: DigestFn,
        rd: &re::Digest,
    ) -> Result<Option<Digest>, RemoteError> {
        let b = match f {
            DigestFn::Blake3 => Digest::from_hex(&rd.hash),
            DigestFn::Sha256 => {
                let Some(raw) = Digest::from_hex(&rd.hash) else {
                    return Ok(None);
                };
                let mut k = vec![b'b'];
                k.extend_from_slice(raw.as_bytes());
                cache
                    .index
                    .remote_get(&k)?
                    .and_then(|v| Digest::from_slice(&v))
            }
        };
        Ok(b.filter(|b| cache.store.has_blob(b)))
    }

    /// Upload every queued entry; `progress(done, total)` after each.
    pub fn upload(
        &self,
        cache: &Cache,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<UploadReport, RemoteError> {
        let keys = queue::list(cache.store.root())?;
        self.upload_keys(cache, &keys, progress, &|| true)
    }

    /// Upload these queued entries, one after another; once `go_on` says
    /// no (checked before each), the rest stay queued untouched (the
    /// daemon's uploader stopping).
    pub fn upload_keys(
        &self,
        cache: &Cache,
        keys: &[Digest],
        progress: &mut dyn FnMut(usize, usize),
        go_on: &dyn Fn() -> bool,
    ) -> Result<UploadReport, RemoteError> {
        let root = cache.store.root().to_path_buf();
        let mut r = UploadReport::default();
        if keys.is_empty() {
            return Ok(r);
        }
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => {
                let why = e.to_string();
                r.failed = keys.iter().map(|k| (k.to_hex(), why.clone())).collect();
                return Ok(r);
            }
        };
        let holds = self.sentinel_holds(cache, &conn);
        self.forget_known
            .store(!holds, std::sync::atomic::Ordering::Relaxed);
        for (i, key) in keys.iter().enumerate() {
            if !go_on() {
                break;
            }
            match self.upload_one(cache, &conn, key, &mut r) {
                Ok(Some(true)) => {
                    r.uploaded += 1;
                    self.counters.add("uploaded", 1);
                    queue::remove(&root, key)?;
                }
                Ok(Some(false)) => {
                    r.local_only += 1;
                    self.counters.add("local_only", 1);
                    queue::remove(&root, key)?;
                }
                Ok(None) => {
                    r.dropped += 1;
                    queue::remove(&root, key)?;
                }
                Err(e) => {
                    r.failed.push((key.to_hex(), e.to_string()));
                    if !matches!(
                        e,
                        RemoteError::Disabled { .. } | RemoteError::Unreachable { .. }
                    ) {
                        self.failed(&e, false);
                    }
                    if self.conn().is_err() {
                        // The rest stay queued.
                        for k in &keys[i + 1..] {
                            r.failed
                                .push((k.to_hex(), "not tried: the remote is off".into()));
                        }
                        progress(keys.len(), keys.len());
                        return Ok(r);
                    }
                }
            }
            progress(i + 1, keys.len());
        }
        Ok(r)
    }

    /// Some(true): uploaded; Some(false): REAPI cannot carry it; None:
    /// nothing to upload (no durable record, or a closure task).
    fn upload_one(
        &self,
        cache: &Cache,
        conn: &Conn,
        key: &Digest,
        r: &mut UploadReport,
    ) -> Result<Option<bool>, RemoteError> {
        let Some(entry) = cache.store.read_entry(key)? else {
            // NB: a record the index has is being committed by a run of
            // this store right now: keep its marker.
            if cache.index.get(key)?.is_some() {
                return Err(RemoteError::Server {
                    url: self.url.to_string(),
                    what: format!("{} is not committed yet", key.short()),
                });
            }
            return Ok(None);
        };
        if !super::travels(&entry) {
            return Ok(None);
        }
        let f = conn.f;
        let mut blobs: Vec<(re::Digest, Src)> = Vec::new();
        let Some((root_rd, tree_rd)) = self.output_tree(cache, f, entry.output, &mut blobs)? else {
            return Ok(Some(false));
        };
        let json = entry.to_json();
        let json_rd = f.of(&json);
        let mut outputs = vec![re::OutputFile {
            path: mapping::ENTRY_FILE.into(),
            digest: Some(json_rd.clone()),
            ..Default::default()
        }];
        if let Some(k) = &self.signer {
            let sig = k.sign(&json);
            let rd = f.of(&sig);
            outputs.push(re::OutputFile {
                path: super::sign::SIG_FILE.into(),
                digest: Some(rd.clone()),
                ..Default::default()
            });
            blobs.push((rd, Src::Bytes(sig)));
        }
        blobs.push((json_rd.clone(), Src::Bytes(json)));
        let mut logs = Vec::new();
        for b in [entry.stdout, entry.stderr] {
            let size = cache.store.blob_size(&b)?;
            let rd = self.remote_digest(cache, f, &b, size)?;
            blobs.push((rd.clone(), Src::Blob(b)));
            logs.push(rd);
        }
        let msgs = ActionMsgs::new(&entry.manifest, f);
        blobs.push((f.of(&msgs.command), Src::Bytes(msgs.command.clone())));
        blobs.push((f.of(&msgs.input_root), Src::Bytes(msgs.input_root.clone())));
        blobs.push((msgs.action_digest.clone(), Src::Bytes(msgs.action.clone())));
        let by_key = super::by_key::key_action(key, f);
        blobs.push((f.of(&by_key.command), Src::Bytes(by_key.command)));
        blobs.push((by_key.digest.clone(), Src::Bytes(by_key.action)));

        self.send_missing(cache, conn, blobs, r)?;
        let result = re::ActionResult {
            output_files: outputs,
            output_directories: vec![re::OutputDirectory {
                path: mapping::OUT.into(),
                tree_digest: Some(tree_rd),
                root_directory_digest: Some(root_rd),
                ..Default::default()
            }],
            exit_code: entry.exit_status,
            stdout_digest: Some(logs[0].clone()),
            stderr_digest: Some(logs[1].clone()),
            ..Default::default()
        };
        self.block(conn.update_action_result(&msgs.action_digest, result))
            .map_err(|w| self.server_err(w))?;
        // The record again, under the key (`by_key`): after the recipe's.
        self.block(conn.update_action_result(&by_key.digest, super::by_key::key_result(json_rd)))
            .map_err(|w| self.server_err(w))?;
        self.set_sentinel(cache, &self.known_scope(conn), &msgs.action_digest)?;
        self.succeeded();
        Ok(Some(true))
    }

    /// The output tree `output` as REAPI `Directory` messages (children
    /// first) and one `Tree`: their blobs and the files' pushed onto
    /// `blobs`; the root directory's digest and the Tree's. None: a name
    /// REAPI cannot carry.
    fn output_tree(
        &self,
        cache: &Cache,
        f: DigestFn,
        output: Digest,
        blobs: &mut Vec<(re::Digest, Src)>,
    ) -> Result<Option<(re::Digest, re::Digest)>, RemoteError> {
        // Directories, children first.
        let mut dirs: HashMap<Digest, (re::Digest, re::Directory)> = HashMap::new();
        let mut order: Vec<Digest> = Vec::new();
        let mut stack = vec![(output, false)];
        while let Some((t, expanded)) = stack.pop() {
            if dirs.contains_key(&t) {
                continue;
            }
            let tree = cache.store.read_tree(&t)?;
            if !expanded {
                stack.push((t, true));
                for e in &tree.entries {
                    if let Node::Dir { digest } = e.node {
                        if !dirs.contains_key(&digest) {
                            stack.push((digest, false));
                        }
                    }
                }
                continue;
            }
            let mut files = Vec::new();
            for e in &tree.entries {
                if let Node::File { size, digest, .. } = e.node {
                    files.push((digest, self.remote_digest(cache, f, &digest, size)?));
                }
            }
            let d = match mapping::directory(
                &tree,
                |b, _| {
                    files
                        .iter()
                        .find(|(x, _)| x == b)
                        .map(|(_, rd)| rd.clone())
                        .unwrap_or_default()
                },
                |c| dirs.get(c).map(|(rd, _)| rd.clone()).unwrap_or_default(),
            ) {
                Ok(d) => d,
                Err(_) => return Ok(None),
            };
            for (b, rd) in files {
                blobs.push((rd, Src::Blob(b)));
            }
            let bytes = d.encode_to_vec();
            let rd = f.of(&bytes);
            blobs.push((rd.clone(), Src::Bytes(bytes)));
            dirs.insert(t, (rd, d));
            order.push(t);
        }
        let (root_rd, root) = dirs.get(&output).cloned().expect("root built");
        let mut seen = HashSet::new();
        let children: Vec<re::Directory> = order
            .iter()
            .filter(|t| **t != output)
            .filter_map(|t| dirs.get(t))
            .filter(|(rd, _)| seen.insert(dkey(rd)))
            .map(|(_, d)| d.clone())
            .collect();
        let tree = re::Tree {
            root: Some(root),
            children,
        }
        .encode_to_vec();
        let tree_rd = f.of(&tree);
        blobs.push((tree_rd.clone(), Src::Bytes(tree)));
        Ok(Some((root_rd, tree_rd)))
    }

    /// Send what of `blobs` the server lacks: not asked about if it
    /// confirmed them within the TTL, else FindMissingBlobs; then all are
    /// remembered as there.
    fn send_missing(
        &self,
        cache: &Cache,
        conn: &Conn,
        blobs: Vec<(re::Digest, Src)>,
        r: &mut UploadReport,
    ) -> Result<(), RemoteError> {
        let mut uniq: HashMap<(String, i64), Src> = HashMap::new();
        let mut all = Vec::new();
        for (rd, src) in blobs {
            if let std::collections::hash_map::Entry::Vacant(v) = uniq.entry(dkey(&rd)) {
                v.insert(src);
                all.push(rd);
            }
        }
        let total = all.len() as u64;
        let now = crate::cache::now_ms();
        let scope = self.known_scope(conn);
        let mut ask = Vec::new();
        for rd in &all {
            if !self.known(cache, &scope, rd, now)? {
                ask.push(rd.clone());
            }
        }
        r.blobs_remembered += total - ask.len() as u64;
        let missing = if ask.is_empty() {
            Vec::new()
        } else {
            self.block(conn.find_missing(ask))
                .map_err(|w| self.server_err(w))?
        };
        r.blobs_present += total - missing.len() as u64;
        self.write_blobs(cache, conn, missing, &mut uniq, r)?;
        // Every blob of the result is on the server now.
        self.remember_known(cache, &scope, &all, now)?;
        Ok(())
    }

    fn write_blobs(
        &self,
        cache: &Cache,
        conn: &Conn,
        missing: Vec<re::Digest>,
        srcs: &mut HashMap<(String, i64), Src>,
        r: &mut UploadReport,
    ) -> Result<(), RemoteError> {
        let mut batch: Vec<(re::Digest, Vec<u8>)> = Vec::new();
        let mut batch_bytes = 0usize;
        let send = |batch: &mut Vec<(re::Digest, Vec<u8>)>| {
            if batch.is_empty() {
                return Ok(());
            }
            self.block(conn.batch_update(std::mem::take(batch)))
                .map_err(|w| self.server_err(w))
        };
        for rd in missing {
            let bytes = match srcs.remove(&dkey(&rd)) {
                Some(Src::Bytes(b)) => b,
                // NB: read_blob checks the bytes against their name.
                Some(Src::Blob(b)) => cache.store.read_blob(&b)?,
                None => {
                    return Err(self.server_err(format!(
                        "FindMissingBlobs named a blob not asked about: {}/{}",
                        rd.hash, rd.size_bytes
                    )))
                }
            };
            r.blobs_sent += 1;
            r.bytes_sent += bytes.len() as u64;
            self.counters.add("bytes_up", bytes.len() as u64);
            if bytes.len() > conn.max_batch {
                self.block(conn.write(&rd, bytes))
                    .map_err(|w| self.server_err(w))?;
                continue;
            }
            if batch_bytes + bytes.len() > conn.max_batch {
                send(&mut batch)?;
                batch_bytes = 0;
            }
            batch_bytes += bytes.len();
            batch.push((rd, bytes));
        }
        send(&mut batch)
    }
}
