//! The read path: on a local miss, the server's ActionResult for the
//! recipe becomes an ordinary local entry, or nothing.
//!
//! Order: GetActionResult (short deadline) → the producer's entry record
//! (its recipe must be ours) → the `Tree` → every file blob the store
//! lacks (BatchReadBlobs under the server's limit, ByteStream above it),
//! each checked against its REAPI digest → the dagfs trees rebuilt bottom
//! up; the root must equal the record's output digest, and stdout/stderr
//! their digests → blobs committed, then the entry published and its
//! record renamed in (the scheduler's write order, `store/commit.rs`).

use std::collections::{HashMap, HashSet};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use crate::cache::Cache;
use crate::hash::Digest;
use crate::index::{CachePolicy, EntryMeta};
use crate::store::tree::{Node, Tree};
use crate::store::{Entry, Staged};

use super::client::Conn;
use super::mapping::{self, dkey, ActionMsgs, DigestFn};
use super::{Remote, RemoteError};

type Key = (String, i64);
/// REAPI digest → the dagfs name of the blob.
type Known = HashMap<Key, Digest>;

/// Blob reads in flight at once on the read path (one connection, HTTP/2
/// streams): enough to overlap round trips, few enough not to crowd a
/// server.
pub const IN_FLIGHT: usize = 6;

fn reject(key: &Digest, why: impl Into<String>) -> RemoteError {
    RemoteError::Rejected {
        key: key.short(),
        why: why.into(),
    }
}

fn missing(key: &Digest, d: &re::Digest) -> RemoteError {
    reject(
        key,
        format!("blob {}/{} is missing on the server", d.hash, d.size_bytes),
    )
}

/// What the server's result says, decoded and checked (`Remote::lookup`).
struct Found {
    /// The producer's entry record.
    theirs: Entry,
    root: re::Directory,
    children: Vec<re::Directory>,
    dirs: HashMap<Key, re::Directory>,
    /// stdout, stderr.
    logs: [Option<re::Digest>; 2],
    /// The blobs read so far (the record, the Tree, the signature).
    read: Vec<re::Digest>,
}

/// One read call: a batch of small blobs, or one large blob by ByteStream.
enum Call {
    Batch(Vec<re::Digest>),
    Stream(re::Digest),
}

/// `want` cut into calls: blobs above `max_batch` alone by ByteStream, the
/// rest in batches of at most `max_batch` bytes.
fn calls(want: Vec<re::Digest>, max_batch: usize) -> Vec<Call> {
    let mut out = Vec::new();
    let mut batch: Vec<re::Digest> = Vec::new();
    let mut batch_bytes = 0usize;
    for d in want {
        let size = d.size_bytes.max(0) as usize;
        if size > max_batch {
            out.push(Call::Stream(d));
            continue;
        }
        if batch_bytes + size > max_batch && !batch.is_empty() {
            out.push(Call::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch_bytes += size;
        batch.push(d);
    }
    if !batch.is_empty() {
        out.push(Call::Batch(batch));
    }
    out
}

/// Run `calls`, at most `IN_FLIGHT` at once; the first error stops it.
async fn read_all(conn: &Conn, calls: Vec<Call>) -> Result<Vec<(re::Digest, Vec<u8>)>, String> {
    use futures_util::stream::{StreamExt, TryStreamExt};
    let results: Vec<Vec<(re::Digest, Vec<u8>)>> = futures_util::stream::iter(calls)
        .map(|c| async move {
            match c {
                Call::Batch(b) => conn.batch_read(b).await,
                Call::Stream(d) => Ok(conn.read(&d).await?.map(|b| (d, b)).into_iter().collect()),
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(results.into_iter().flatten().collect())
}

impl Remote {
    pub(super) fn server_err(&self, what: String) -> RemoteError {
        RemoteError::Server {
            url: self.url.to_string(),
            what,
        }
    }

    /// Read `want` (deduplicated), small ones batched under the server's
    /// limit, large ones by ByteStream, up to `IN_FLIGHT` calls at once;
    /// every blob checked against its digest. A blob the server lacks is
    /// absent from the answer; a blob whose bytes do not match is
    /// `Rejected`.
    pub(super) fn read_blobs(
        &self,
        conn: &Conn,
        key: &Digest,
        want: &[re::Digest],
    ) -> Result<HashMap<Key, Vec<u8>>, RemoteError> {
        let mut seen = HashSet::new();
        let want: Vec<_> = want
            .iter()
            .filter(|d| seen.insert(dkey(d)))
            .cloned()
            .collect();
        let got = self
            .block(read_all(conn, calls(want, conn.max_batch)))
            .map_err(|w| self.server_err(w))?;
        let mut out = HashMap::new();
        for (d, bytes) in got {
            self.counters.add("bytes_down", bytes.len() as u64);
            let real = conn.f.of(&bytes);
            if real.hash != d.hash || real.size_bytes != d.size_bytes {
                return Err(reject(
                    key,
                    format!("blob {}/{} has other bytes", d.hash, d.size_bytes),
                ));
            }
            out.insert(dkey(&d), bytes);
        }
        Ok(out)
    }

    /// The read path (module header). Ok(None): the server has no result.
    pub(super) fn fetch_entry(
        &self,
        cache: &Cache,
        ours: &Entry,
        protected: &HashSet<Digest>,
        policy: &CachePolicy,
    ) -> Result<Option<EntryMeta>, RemoteError> {
        let conn = self.conn()?;
        let Some(mut found) = self.lookup(&conn, ours)? else {
            return Ok(None);
        };
        let key = &ours.key;
        let stage_dir = cache.store.tempdir("remote-")?;
        let mut staged = Staged::default();
        let (known, map_rows) =
            self.fetch_files(cache, &conn, key, &mut found, stage_dir.path(), &mut staged)?;
        let mut built: HashMap<Key, (Digest, u64, u64)> = HashMap::new();
        let (out, size, nfiles) = self.build(
            cache,
            key,
            &found.root,
            &found.dirs,
            &known,
            &mut built,
            stage_dir.path(),
            &mut staged,
            0,
        )?;
        let theirs = &found.theirs;
        if out != theirs.output {
            return Err(reject(
                key,
                format!(
                    "its tree rebuilds to {}, not the recorded output {}",
                    out.short(),
                    theirs.output.short()
                ),
            ));
        }
        let entry = Entry {
            output: out,
            size,
            files: nfiles,
            created_ms: theirs.created_ms,
            duration_ms: theirs.duration_ms,
            exit_status: 0,
            stdout: theirs.stdout,
            stderr: theirs.stderr,
            hermetic: theirs.hermetic.clone(),
            origin: Some(crate::store::entry::Origin {
                route: "remote".into(),
                key: theirs.key,
                dag: theirs.dag.clone(),
                task: theirs.task.clone(),
            }),
            ..ours.clone()
        };
        cache
            .store
            .stage_entry(stage_dir.path(), &entry, &mut staged)?;
        let pending = cache.store.commit_blobs(staged)?;
        self.remember(cache, &map_rows)?;
        let published = cache.publish(&entry, protected, policy)?;
        if !published.kept {
            cache.store.publish_entries(&pending, |_| false)?;
            return Ok(None);
        }
        let index = &cache.index;
        cache
            .store
            .publish_entries(&pending, |k| matches!(index.get(k), Ok(Some(_))))?;
        // What was just read is on the server: a later upload need not ask.
        let scope = self.known_scope(&conn);
        self.remember_known(cache, &scope, &found.read, crate::cache::now_ms())?;
        if let Some(rd) = found.read.iter().rfind(|rd| rd.size_bytes > 0) {
            self.set_sentinel(cache, &scope, rd)?;
        }
        Ok(Some(EntryMeta::from_entry(&entry)))
    }

    /// GetActionResult, then the producer's entry record (signed by a
    /// trusted key, if keys are trusted here; for our recipe) and its
    /// `Tree`. Ok(None): the server has no result.
    fn lookup(&self, conn: &Conn, ours: &Entry) -> Result<Option<Found>, RemoteError> {
        let f = conn.f;
        let key = &ours.key;
        let msgs = ActionMsgs::new(&ours.manifest, f);
        let Some(ar) = self
            .block(conn.get_action_result(&msgs.action_digest))
            .map_err(|w| self.server_err(w))?
        else {
            return Ok(None);
        };
        if ar.exit_code != 0 {
            return Err(reject(
                key,
                format!("it records exit code {}", ar.exit_code),
            ));
        }
        let file = |path: &str| {
            ar.output_files
                .iter()
                .find(|o| o.path == path)
                .and_then(|o| o.digest.clone())
        };
        let ef = file(mapping::ENTRY_FILE)
            .ok_or_else(|| reject(key, "no dagfs entry record in it (not written by dagfs)"))?;
        let sd = file(super::sign::SIG_FILE);
        let od = ar
            .output_directories
            .iter()
            .find(|o| o.path == mapping::OUT)
            .and_then(|o| o.tree_digest.clone())
            .ok_or_else(|| reject(key, "no output directory in it"))?;
        let mut want = vec![ef.clone(), od.clone()];
        want.extend(sd.clone().filter(|_| self.trusted.is_some()));
        let mut first = self.read_blobs(conn, key, &want)?;
        let read = want.clone();
        let theirs = first.remove(&dkey(&ef)).ok_or_else(|| missing(key, &ef))?;
        if let Some(t) = &self.trusted {
            let sig = match &sd {
                Some(d) => Some(first.remove(&dkey(d)).ok_or_else(|| missing(key, d))?),
                None => None,
            };
            t.check(&theirs, sig.as_deref())
                .map_err(|why| RemoteError::Untrusted {
                    key: key.short(),
                    why,
                })?;
        }
        let theirs = Entry::from_json(&theirs)
            .map_err(|e| reject(key, format!("its entry record does not decode: {e}")))?;
        let m = &ours.manifest;
        if mapping::recipe(&theirs.manifest.task_digest, &theirs.manifest.deps)
            != mapping::recipe(&m.task_digest, &m.deps)
        {
            return Err(reject(key, "its entry record is for another recipe"));
        }
        let tree = first.remove(&dkey(&od)).ok_or_else(|| missing(key, &od))?;
        let tree = re::Tree::decode(&tree[..])
            .map_err(|e| reject(key, format!("its Tree does not decode: {e}")))?;
        let root = tree
            .root
            .clone()
            .ok_or_else(|| reject(key, "its Tree has no root"))?;
        let dirs = tree
            .children
            .iter()
            .map(|c| (dkey(&f.of(&c.encode_to_vec())), c.clone()))
            .collect();
        Ok(Some(Found {
            theirs,
            root,
            dirs,
            logs: [ar.stdout_digest.clone(), ar.stderr_digest.clone()],
            children: tree.children,
            read,
        }))
    }

    /// Every file blob of the result and its logs: known here (mapped and
    /// stored) or fetched (added to `found.read`) and staged; the logs checked
    /// against the record.
    /// Returns REAPI digest → dagfs name, and the SHA-256 map rows to keep.
    fn fetch_files(
        &self,
        cache: &Cache,
        conn: &Conn,
        key: &Digest,
        found: &mut Found,
        stage: &std::path::Path,
        staged: &mut Staged,
    ) -> Result<(Known, Vec<(Digest, String)>), RemoteError> {
        let f = conn.f;
        let mut known = Known::new();
        let mut need: Vec<re::Digest> = Vec::new();
        let mut files: Vec<re::Digest> = Vec::new();
        for d in std::iter::once(&found.root).chain(found.children.iter()) {
            files.extend(d.files.iter().filter_map(|fl| fl.digest.clone()));
        }
        files.extend(found.logs.iter().flatten().cloned());
        for rd in files {
            match self.local_name(cache, f, &rd)? {
                Some(b) => {
                    known.insert(dkey(&rd), b);
                }
                None => need.push(rd),
            }
        }
        let fetched = self.read_blobs(conn, key, &need)?;
        found.read.extend(need.iter().cloned());
        let mut map_rows = Vec::new();
        for rd in &need {
            let bytes = fetched.get(&dkey(rd)).ok_or_else(|| missing(key, rd))?;
            let b = cache.store.stage_bytes(stage, bytes, staged)?;
            if f == DigestFn::Sha256 {
                map_rows.push((b, rd.hash.clone()));
            }
            known.insert(dkey(rd), b);
        }
        let want = [found.theirs.stdout, found.theirs.stderr];
        for (rd, want) in found.logs.iter().zip(want) {
            let got = match rd {
                Some(rd) => known.get(&dkey(rd)).copied(),
                None => Some(cache.store.stage_bytes(stage, b"", staged)?),
            };
            if got != Some(want) {
                return Err(reject(
                    key,
                    "its stdout or stderr is not the one its record names",
                ));
            }
        }
        Ok((known, map_rows))
    }

    /// The dagfs tree of `d` (staged), its size and file count.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        cache: &Cache,
        key: &Digest,
        d: &re::Directory,
        dirs: &HashMap<Key, re::Directory>,
        known: &HashMap<Key, Digest>,
        built: &mut HashMap<Key, (Digest, u64, u64)>,
        stage: &std::path::Path,
        staged: &mut Staged,
        depth: usize,
    ) -> Result<(Digest, u64, u64), RemoteError> {
        if depth > 4096 {
            return Err(reject(
                key,
                "its tree is deeper than 4096 levels (a cycle?)",
            ));
        }
        let mut size = 0u64;
        let mut files = 0u64;
        let mut sub: Vec<(Key, (Digest, u64, u64))> = Vec::new();
        for c in &d.directories {
            let rd = c
                .digest
                .clone()
                .ok_or_else(|| reject(key, "a directory has no digest"))?;
            let k = dkey(&rd);
            let r = match built.get(&k) {
                Some(r) => *r,
                None => {
                    let child = dirs.get(&k).ok_or_else(|| {
                        reject(key, format!("directory {} is not in its Tree", rd.hash))
                    })?;
                    let r = self.build(
                        cache,
                        key,
                        child,
                        dirs,
                        known,
                        built,
                        stage,
                        staged,
                        depth + 1,
                    )?;
                    built.insert(k.clone(), r);
                    r
                }
            };
            size += r.1;
            files += r.2;
            sub.push((k, r));
        }
        let t: Tree = mapping::tree_of(
            d,
            |rd| {
                known
                    .get(&dkey(rd))
                    .copied()
                    .ok_or_else(|| format!("blob {} missing", rd.hash))
            },
            |rd| {
                sub.iter()
                    .find(|(k, _)| *k == dkey(rd))
                    .map(|(_, r)| r.0)
                    .ok_or_else(|| format!("directory {} missing", rd.hash))
            },
        )
        .map_err(|w| reject(key, w))?;
        for e in &t.entries {
            if let Node::File { size: s, .. } = e.node {
                size += s;
                files += 1;
            }
        }
        let bytes = t.encode();
        Tree::decode(&bytes)
            .map_err(|e| reject(key, format!("a directory is not a valid dagfs tree: {e}")))?;
        let digest = cache.store.stage_bytes(stage, &bytes, staged)?;
        Ok((digest, size, files))
    }
}
