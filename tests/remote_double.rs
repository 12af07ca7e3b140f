//! The remote tier against a test double built on the REAPI crate's server
//! stubs, for what a real BuildGrid cannot do: BLAKE3 (BuildGrid speaks
//! SHA-256 only), a slow server (lookups or writes), a server answering
//! UNAVAILABLE, and a blob
//! evicted after its result was written (BuildGrid checks the blobs of a
//! result itself and answers a miss). Tests only; tests/remote.rs runs the
//! rest against BuildGrid.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use common::{config, dagfs, env, fsck_clean, keygen, ok, text};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    /// hash hex -> bytes
    cas: HashMap<String, Vec<u8>>,
    ac: HashMap<String, re::ActionResult>,
    /// Every GetActionResult waits this long.
    delay: Duration,
    /// Every UpdateActionResult waits this long.
    write_delay: Duration,
    /// Every call answers UNAVAILABLE.
    unavailable: bool,
    /// digest_function of every request seen.
    functions: Vec<i32>,
    /// Every digest FindMissingBlobs was asked about (hash hex).
    asked: Vec<String>,
    /// Every blob read (BatchReadBlobs, ByteStream.Read) waits this long.
    read_delay: Duration,
    /// Blob reads being answered now, and the most at once.
    reading: usize,
    max_reading: usize,
}

impl Double {
    /// Count a blob read while it waits `read_delay`.
    async fn reading(&self) {
        let delay = {
            let mut s = self.state();
            s.reading += 1;
            s.max_reading = s.max_reading.max(s.reading);
            s.read_delay
        };
        tokio::time::sleep(delay).await;
        self.state().reading -= 1;
    }
}

#[derive(Clone, Default)]
struct Double(Arc<Mutex<State>>);

impl Double {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
    fn check(&self, f: i32) -> Result<(), Status> {
        let mut s = self.state();
        s.functions.push(f);
        if s.unavailable {
            return Err(Status::unavailable("the double is down"));
        }
        Ok(())
    }
}

fn b3(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

#[tonic::async_trait]
impl re::capabilities_server::Capabilities for Double {
    async fn get_capabilities(
        &self,
        _: Request<re::GetCapabilitiesRequest>,
    ) -> Result<Response<re::ServerCapabilities>, Status> {
        self.check(0)?;
        Ok(Response::new(re::ServerCapabilities {
            cache_capabilities: Some(re::CacheCapabilities {
                digest_functions: vec![
                    re::digest_function::Value::Sha256 as i32,
                    re::digest_function::Value::Blake3 as i32,
                ],
                action_cache_update_capabilities: Some(re::ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                max_batch_total_size_bytes: 1 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl re::action_cache_server::ActionCache for Double {
    async fn get_action_result(
        &self,
        r: Request<re::GetActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        let r = r.into_inner();
        self.check(r.digest_function)?;
        let delay = self.state().delay;
        tokio::time::sleep(delay).await;
        let d = r.action_digest.unwrap_or_default();
        match self.state().ac.get(&d.hash) {
            Some(a) => Ok(Response::new(a.clone())),
            None => Err(Status::not_found("no result")),
        }
    }
    async fn update_action_result(
        &self,
        r: Request<re::UpdateActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        let r = r.into_inner();
        self.check(r.digest_function)?;
        let delay = self.state().write_delay;
        tokio::time::sleep(delay).await;
        let a = r.action_result.unwrap_or_default();
        self.state()
            .ac
            .insert(r.action_digest.unwrap_or_default().hash, a.clone());
        Ok(Response::new(a))
    }
}

type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl re::content_addressable_storage_server::ContentAddressableStorage for Double {
    async fn find_missing_blobs(
        &self,
        r: Request<re::FindMissingBlobsRequest>,
    ) -> Result<Response<re::FindMissingBlobsResponse>, Status> {
        let r = r.into_inner();
        self.check(r.digest_function)?;
        let mut s = self.state();
        s.asked
            .extend(r.blob_digests.iter().map(|d| d.hash.clone()));
        Ok(Response::new(re::FindMissingBlobsResponse {
            missing_blob_digests: r
                .blob_digests
                .into_iter()
                .filter(|d| !s.cas.contains_key(&d.hash))
                .collect(),
        }))
    }
    async fn batch_update_blobs(
        &self,
        r: Request<re::BatchUpdateBlobsRequest>,
    ) -> Result<Response<re::BatchUpdateBlobsResponse>, Status> {
        let r = r.into_inner();
        self.check(r.digest_function)?;
        let mut out = Vec::new();
        for q in r.requests {
            let d = q.digest.unwrap_or_default();
            // The double checks what it is sent, under BLAKE3.
            let code = if b3(&q.data) == d.hash { 0 } else { 3 };
            if code == 0 {
                self.state().cas.insert(d.hash.clone(), q.data);
            }
            out.push(re::batch_update_blobs_response::Response {
                digest: Some(d),
                status: Some(bazel_remote_apis::google::rpc::Status {
                    code,
                    ..Default::default()
                }),
            });
        }
        Ok(Response::new(re::BatchUpdateBlobsResponse {
            responses: out,
        }))
    }
    async fn batch_read_blobs(
        &self,
        r: Request<re::BatchReadBlobsRequest>,
    ) -> Result<Response<re::BatchReadBlobsResponse>, Status> {
        let r = r.into_inner();
        self.check(r.digest_function)?;
        self.reading().await;
        let s = self.state();
        Ok(Response::new(re::BatchReadBlobsResponse {
            responses: r
                .digests
                .into_iter()
                .map(|d| {
                    let (data, code) = match s.cas.get(&d.hash) {
                        Some(b) => (b.clone(), 0),
                        None => (Vec::new(), 5),
                    };
                    re::batch_read_blobs_response::Response {
                        digest: Some(d),
                        data,
                        status: Some(bazel_remote_apis::google::rpc::Status {
                            code,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                })
                .collect(),
        }))
    }
    type GetTreeStream = Stream<re::GetTreeResponse>;
    async fn get_tree(
        &self,
        _: Request<re::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        Err(Status::unimplemented("not in the double"))
    }
    async fn split_blob(
        &self,
        _: Request<re::SplitBlobRequest>,
    ) -> Result<Response<re::SplitBlobResponse>, Status> {
        Err(Status::unimplemented("not in the double"))
    }
    type GetChunkMappingStream = Stream<re::GetChunkMappingResponse>;
    async fn get_chunk_mapping(
        &self,
        _: Request<re::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Status::unimplemented("not in the double"))
    }
    async fn splice_blob(
        &self,
        _: Request<re::SpliceBlobRequest>,
    ) -> Result<Response<re::SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("not in the double"))
    }
    async fn register_chunk_mapping(
        &self,
        _: Request<tonic::Streaming<re::RegisterChunkMappingRequest>>,
    ) -> Result<Response<re::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("not in the double"))
    }
}

/// `[instance/]blobs/blake3/HASH/SIZE` or `…/uploads/UUID/blobs/blake3/HASH/SIZE`.
fn hash_of(resource: &str) -> Option<String> {
    let p: Vec<&str> = resource.split('/').collect();
    let i = p.iter().position(|c| *c == "blobs")?;
    match p.get(i + 1) {
        Some(&"blake3") => p.get(i + 2).map(|s| s.to_string()),
        other => other.map(|s| s.to_string()),
    }
}

#[tonic::async_trait]
impl bs::byte_stream_server::ByteStream for Double {
    type ReadStream = Stream<bs::ReadResponse>;
    async fn read(
        &self,
        r: Request<bs::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.check(-1)?;
        self.reading().await;
        let h = hash_of(&r.into_inner().resource_name)
            .ok_or_else(|| Status::invalid_argument("name"))?;
        let data = self
            .state()
            .cas
            .get(&h)
            .cloned()
            .ok_or_else(|| Status::not_found("no blob"))?;
        let chunks: Vec<Result<bs::ReadResponse, Status>> = data
            .chunks(64 * 1024)
            .map(|c| Ok(bs::ReadResponse { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
    async fn write(
        &self,
        r: Request<tonic::Streaming<bs::WriteRequest>>,
    ) -> Result<Response<bs::WriteResponse>, Status> {
        self.check(-1)?;
        let mut s = r.into_inner();
        let mut name = String::new();
        let mut data = Vec::new();
        while let Some(m) = s.message().await? {
            if name.is_empty() {
                name = m.resource_name;
            }
            data.extend_from_slice(&m.data);
        }
        let h = hash_of(&name).ok_or_else(|| Status::invalid_argument("name"))?;
        if b3(&data) != h {
            return Err(Status::invalid_argument("digest mismatch"));
        }
        let n = data.len() as i64;
        self.state().cas.insert(h, data);
        Ok(Response::new(bs::WriteResponse { committed_size: n }))
    }
    async fn query_write_status(
        &self,
        _: Request<bs::QueryWriteStatusRequest>,
    ) -> Result<Response<bs::QueryWriteStatusResponse>, Status> {
        Err(Status::unimplemented("not in the double"))
    }
}

/// The double serving on a free port of 127.0.0.1 from its own thread;
/// stopped when dropped.
struct Served {
    double: Double,
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start() -> Served {
        let double = Double::default();
        let d = double.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ptx, prx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ptx.send(l.local_addr().unwrap().port()).unwrap();
                tonic::transport::Server::builder()
                    .add_service(re::capabilities_server::CapabilitiesServer::new(d.clone()))
                    .add_service(re::action_cache_server::ActionCacheServer::new(d.clone()))
                    .add_service(
                        re::content_addressable_storage_server::ContentAddressableStorageServer::new(
                            d.clone(),
                        ),
                    )
                    .add_service(bs::byte_stream_server::ByteStreamServer::new(d))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(l),
                        async {
                            let _ = rx.await;
                        },
                    )
                    .await
                    .unwrap();
            });
        });
        let port = prx.recv_timeout(Duration::from_secs(10)).unwrap();
        Served {
            double,
            port,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pipeline(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut toml = String::from("name = \"dbl\"\n");
    toml += "[tasks.big]\nrun = 'i=0; while [ $i -lt 1200 ]; do printf \"%01023d\\n\" $i; i=$((i+1)); done > \"$DAGFS_OUT/big\"'\n";
    for i in 0..4 {
        toml += &format!(
            "[tasks.t{i}]\nrun = 'mkdir \"$DAGFS_OUT/d\" && echo {i} > \"$DAGFS_OUT/d/f\"'\n"
        );
    }
    let p = dir.join("dagfs.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

fn run(store: &Path, file: &Path, args: &[&str]) -> Output {
    let mut a = vec!["run", "-f", file.to_str().unwrap()];
    a.extend_from_slice(args);
    dagfs(store, &a)
        .env_remove("DAGFS_REMOTE")
        .env_remove("DAGFS_REMOTE_TOKEN")
        .output()
        .unwrap()
}

/// BLAKE3 when the server offers it: blobs travel under their dagfs names
/// (no second hash), and a second store gets every result.
#[test]
fn blake3_mode_uses_dagfs_names() {
    let s = Served::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = pipeline(&e.root.join("p"));
    config(&a, "remote", &s.url());
    config(&a, "remote_upload", "on");
    let t = ok(&run(&a, &file, &[]));
    assert!(t.contains("remote: uploaded 5 results"), "{t}");
    let o = dagfs(&a, &["remote", "status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["digest_function"], "blake3", "{v}");
    // The 1.2 MB file is above the double's 1 MiB batch: it went by ByteStream,
    // under its dagfs name.
    let big: Vec<u8> = (0..1200)
        .flat_map(|i| format!("{i:01023}\n").into_bytes())
        .collect();
    assert!(s.double.state().cas.contains_key(&b3(&big)));
    assert!(s
        .double
        .state()
        .functions
        .iter()
        .all(|f| *f == -1 || *f == 0 || *f == re::digest_function::Value::Blake3 as i32));
    let t = ok(&run(&b, &file, &["--remote", &s.url()]));
    assert!(t.contains("remote: 5 hits, 0 misses, 0 rejected"), "{t}");
    fsck_clean(&b);
    let cat = dagfs(&b, &["cat", "dbl/big/big"]).output().unwrap();
    assert_eq!(cat.stdout, big);
}

/// A blob evicted after its result was written: the result is rejected
/// (missing blob), counted, and the task runs.
#[test]
fn evicted_blob_is_rejected_and_the_task_runs() {
    let s = Served::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = pipeline(&e.root.join("p"));
    config(&a, "remote", &s.url());
    config(&a, "remote_upload", "on");
    ok(&run(&a, &file, &[]));
    assert!(s.double.state().cas.remove(&b3(b"2\n")).is_some());
    let t = ok(&run(&b, &file, &["--remote", &s.url()]));
    assert!(t.contains("remote: 4 hits, 0 misses, 1 rejected"), "{t}");
    assert!(t.contains("ran   t2"), "{t}");
    assert!(t.contains("missing on the server"), "{t}");
    fsck_clean(&b);
}

/// A server answering UNAVAILABLE, and a slow one (each lookup past its
/// deadline): the run is the same as without a remote, with one warning,
/// and the tier turns itself off after 3 errors.
#[test]
fn unavailable_and_slow_servers_are_turned_off() {
    let s = Served::start();
    let e = env();
    let file = pipeline(&e.root.join("p"));
    s.double.state().unavailable = true;
    let t = ok(&run(&e.root.join("a"), &file, &["--remote", &s.url()]));
    assert_eq!(
        t.lines().filter(|l| l.starts_with("ran ")).count(),
        5,
        "{t}"
    );
    assert_eq!(
        t.lines().filter(|l| l.contains("warning")).count(),
        1,
        "{t}"
    );
    assert!(t.contains("disabled after 1 errors"), "{t}");

    s.double.state().unavailable = false;
    s.double.state().delay = Duration::from_secs(5);
    let t = ok(&run(
        &e.root.join("b"),
        &file,
        &["--remote", &s.url(), "-j1"],
    ));
    assert_eq!(
        t.lines().filter(|l| l.starts_with("ran ")).count(),
        5,
        "{t}"
    );
    assert_eq!(
        t.lines().filter(|l| l.contains("warning")).count(),
        1,
        "{t}"
    );
    assert!(t.contains("no answer within"), "{t}");
    assert!(t.contains("disabled after 3 errors"), "{t}");
}

/// A name that is not UTF-8 (REAPI names are strings): that entry stays
/// local, counted and said; the others travel.
#[test]
fn non_utf8_names_stay_local() {
    let s = Served::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = e.pipeline("p", "name = \"names\"\n[tasks.odd]\nrun = 'touch \"$DAGFS_OUT/$(printf \"\\377\")\"'\n[tasks.fine]\nrun = 'echo ok > \"$DAGFS_OUT/ok\"'\n").join("dagfs.toml");
    config(&a, "remote", &s.url());
    config(&a, "remote_upload", "on");
    let t = ok(&run(&a, &file, &[]));
    assert!(t.contains("remote: uploaded 1 result"), "{t}");
    assert!(t.contains("1 kept local only"), "{t}");
    let t = ok(&run(&b, &file, &["--remote", &s.url()]));
    assert!(t.contains("remote: 1 hits, 1 misses, 0 rejected"), "{t}");
    assert!(t.contains("ran   odd"), "{t}");
    let o = dagfs(&a, &["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["remote"]["local_only"], 1, "{v}");
}

/// Through a daemon, with a server slow to take results (1 s per
/// UpdateActionResult, two per entry): `dagfs run` returns with its
/// uploads still queued, `dagfs remote flush` waits until the daemon's
/// uploader has sent them all; then a second store, mounted, reads an
/// entry by key from the server (BLAKE3 mode).
#[test]
fn the_daemon_uploads_in_the_background_and_flush_waits() {
    let s = Served::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = pipeline(&e.root.join("p"));
    config(&a, "remote", &s.url());
    config(&a, "remote_upload", "on");
    s.double.state().write_delay = Duration::from_secs(1);
    let m = match common::Mounted::try_new(&a, &e.root.join("mnt-a")) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    let t0 = std::time::Instant::now();
    let t = ok(&run(&a, &file, &[]));
    let ran = t0.elapsed();
    let left = queued(&a);
    eprintln!(
        "run through the daemon: {} ms, {left} of 5 still queued",
        ran.as_millis()
    );
    assert!(
        t.contains("5 results queued; the daemon uploads in the background"),
        "{t}"
    );
    // Each entry takes at least 2 s to upload, and the uploader starts
    // when the run ends: at most one can be done by now, however slow.
    assert!(left >= 4, "{t}");
    let t0 = std::time::Instant::now();
    let o = dagfs(&a, &["remote", "flush"]).output().unwrap();
    let t = ok(&o);
    eprintln!(
        "remote flush through the daemon: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(queued(&a), 0, "{t}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "{t}");
    drop(m);
    s.double.state().write_delay = Duration::ZERO;

    config(&b, "remote", &s.url());
    let m = match common::Mounted::try_new(&b, &e.root.join("mnt-b")) {
        Ok(m) => m,
        Err(why) => panic!("{why}"),
    };
    let key = entry_key(&a, "big");
    let big = std::fs::read(m.mnt.join("keys").join(&key).join("big")).unwrap();
    assert_eq!(big.len(), 1200 * 1024);
    drop(m);
    fsck_clean(&b);
}

fn queued(store: &Path) -> usize {
    std::fs::read_dir(store.join("remote-queue"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The key of `task`'s entry in `store`.
fn entry_key(store: &Path, task: &str) -> String {
    for shard in std::fs::read_dir(store.join("entries")).unwrap() {
        for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let e =
                dagfs::store::Entry::from_json(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            if e.task == task {
                return e.key.to_hex();
            }
        }
    }
    panic!("no entry for {task}");
}

fn warnings(t: &str) -> usize {
    t.lines().filter(|l| l.contains("warning")).count()
}

/// Signing: a result signed by a trusted key hits; an unsigned one, one
/// signed by a key not trusted, and one whose signature was tampered with
/// are rejected (counted, one warning, the tasks run). Bad key files are
/// refused with exit 25.
#[test]
fn signed_results_and_trusted_keys() {
    let s = Served::start();
    let e = env();
    let file = pipeline(&e.root.join("p"));
    let keys = e.root.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let ci = keygen(&keys.join("ci.key"));
    let other = keygen(&keys.join("other.key"));
    assert!(ci.starts_with("ed25519:") && ci != other, "{ci} {other}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(keys.join("ci.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let trusted = keys.join("trusted");
    std::fs::write(&trusted, format!("# the CI's key\n{ci} ci@team\n")).unwrap();
    let trusted = trusted.to_str().unwrap();
    // NB: each producer overwrites the last one's results: the server
    // forgets them first (else the producer would hit them, not run).
    let produce = |name: &str, key: Option<&str>| {
        s.double.state().ac.clear();
        let p = e.root.join(name);
        config(&p, "remote", &s.url());
        config(&p, "remote_upload", "on");
        if let Some(k) = key {
            config(&p, "remote_sign_key", keys.join(k).to_str().unwrap());
        }
        let t = ok(&run(&p, &file, &[]));
        assert!(t.contains("remote: uploaded 5 results"), "{t}");
    };
    let consume = |name: &str| {
        let c = e.root.join(name);
        config(&c, "remote_trusted_keys", trusted);
        config(&c, "remote_lookup_timeout", "20s");
        ok(&run(&c, &file, &["--remote", &s.url()]))
    };

    produce("ci", Some("ci.key"));
    let o = dagfs(&e.root.join("ci"), &["remote", "status"])
        .output()
        .unwrap();
    assert!(
        ok(&o).contains(&format!("signs with       {ci}")),
        "{}",
        text(&o)
    );
    let t = consume("c1");
    assert!(t.contains("remote: 5 hits, 0 misses, 0 rejected"), "{t}");
    assert_eq!(warnings(&t), 0, "{t}");
    fsck_clean(&e.root.join("c1"));

    // Unsigned: the same actions, overwritten by a store that does not sign.
    produce("laptop", None);
    let t = consume("c2");
    assert!(t.contains("remote: 0 hits, 0 misses, 5 rejected"), "{t}");
    assert_eq!(warnings(&t), 1, "{t}");
    assert!(t.contains("it is not signed"), "{t}");
    assert_eq!(
        t.lines().filter(|l| l.starts_with("ran ")).count(),
        5,
        "{t}"
    );
    let o = dagfs(&e.root.join("c2"), &["stats", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["remote"]["rejected"], 5, "{v}");
    // A store without trusted keys still takes them.
    let t = ok(&run(&e.root.join("any"), &file, &["--remote", &s.url()]));
    assert!(t.contains("remote: 5 hits"), "{t}");

    // Signed by a key the consumer does not trust.
    produce("stranger", Some("other.key"));
    let t = consume("c3");
    assert!(t.contains("remote: 0 hits, 0 misses, 5 rejected"), "{t}");
    assert!(t.contains("a key not trusted here"), "{t}");
    assert!(t.contains(&other), "{t}");
    assert_eq!(warnings(&t), 1, "{t}");

    // Signed by the CI again, then every signature tampered with (one hex
    // digit of the signature changed, stored under its new digest).
    produce("ci2", Some("ci.key"));
    {
        let mut st = s.double.state();
        let st = &mut *st;
        let mut signed = 0;
        // NB: the records filed under their keys (`by_key`) carry no
        // signature; the recipe's results do.
        for ar in st.ac.values_mut() {
            let Some(of) = ar
                .output_files
                .iter_mut()
                .find(|o| o.path == ".dagfs/signature")
            else {
                continue;
            };
            signed += 1;
            let d = of.digest.as_mut().unwrap();
            let mut sig = st.cas[&d.hash].clone();
            let i = sig.len() - 3;
            sig[i] = if sig[i] == b'a' { b'b' } else { b'a' };
            d.hash = b3(&sig);
            st.cas.insert(d.hash.clone(), sig);
        }
        assert!(signed >= 5, "every recipe result is signed ({signed})");
    }
    let t = consume("c4");
    assert!(t.contains("remote: 0 hits, 0 misses, 5 rejected"), "{t}");
    assert!(t.contains("does not verify"), "{t}");
    assert_eq!(warnings(&t), 1, "{t}");
    fsck_clean(&e.root.join("c4"));

    // Bad key files: exit 25, naming the file and the problem.
    let bad = |key: &str, path: &Path, why: &str| {
        let o = dagfs(
            &e.root.join("cfg"),
            &["config", key, path.to_str().unwrap()],
        )
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(25), "{key}: {}", text(&o));
        assert!(text(&o).contains(path.to_str().unwrap()), "{}", text(&o));
        assert!(text(&o).contains(why), "{}", text(&o));
    };
    let loose = keys.join("loose.key");
    std::fs::copy(keys.join("ci.key"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    bad("remote_sign_key", &loose, "chmod 600");
    // A public key where the private one belongs.
    let public = keys.join("public.key");
    std::fs::write(&public, format!("{ci}\n")).unwrap();
    std::fs::set_permissions(&public, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    bad("remote_sign_key", &public, "ed25519-private:");
    let junk = keys.join("junk");
    std::fs::write(&junk, format!("{ci}\nssh-ed25519 AAAA\n")).unwrap();
    bad("remote_trusted_keys", &junk, "line 2");
    let empty = keys.join("empty");
    std::fs::write(&empty, "# nobody yet\n").unwrap();
    bad("remote_trusted_keys", &empty, "names no key");
    let o = dagfs(
        &e.root.join("cfg"),
        &["remote", "keygen", keys.join("ci.key").to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(25), "{}", text(&o));
    assert!(text(&o).contains("exists already"), "{}", text(&o));
    // A key file spoiled after it was set: the run says so, exit 25.
    let c = e.root.join("c1");
    std::fs::write(keys.join("trusted"), "garbage\n").unwrap();
    let o = run(&c, &file, &["--remote", &s.url()]);
    assert_eq!(o.status.code(), Some(25), "{}", text(&o));
    assert!(text(&o).contains("line 1"), "{}", text(&o));
}

/// The circuit breaker re-probes: a server answering UNAVAILABLE when a
/// run starts turns the tier off (one warning); once it answers again and
/// the re-probe interval (`DAGFS_REMOTE_REPROBE_MS`, here 300 ms) has
/// passed, the same run's later lookups hit and its upload goes through.
/// With the default interval (60 s) the same run stays local to its end.
#[test]
fn the_breaker_reprobes_after_its_interval() {
    let s = Served::start();
    let e = env();
    let (mark, go) = (e.root.join("started"), e.root.join("go"));
    let mut toml = format!(
        "name = \"probe\"\n[tasks.gate]\nrun = 'touch {}; while [ ! -e {} ]; do sleep 0.05; done; echo gate > \"$DAGFS_OUT/g\"'\n",
        mark.display(),
        go.display()
    );
    for i in 0..6 {
        toml +=
            &format!("[tasks.after{i}]\nrun = 'echo {i} > \"$DAGFS_OUT/o\"'\ndeps = [\"gate\"]\n");
    }
    let file = e.pipeline("p", &toml).join("dagfs.toml");
    // The producer: every result on the server.
    std::fs::write(&go, "").unwrap();
    let a = e.root.join("a");
    config(&a, "remote", &s.url());
    config(&a, "remote_upload", "on");
    let t = ok(&run(&a, &file, &[]));
    assert!(t.contains("remote: uploaded 7 results"), "{t}");

    let gated = |store: &Path, reprobe: Option<&str>| -> String {
        let _ = std::fs::remove_file(&go);
        let _ = std::fs::remove_file(&mark);
        s.double.state().unavailable = true;
        config(store, "remote", &s.url());
        config(store, "remote_upload", "on");
        config(store, "remote_lookup_timeout", "20s");
        let mut cmd = dagfs(store, &["run", "-f", file.to_str().unwrap()]);
        cmd.env_remove("DAGFS_REMOTE")
            .env_remove("DAGFS_REMOTE_REPROBE_MS")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(ms) = reprobe {
            cmd.env("DAGFS_REMOTE_REPROBE_MS", ms);
        }
        let child = cmd.spawn().unwrap();
        common::wait_for("the gate task", || mark.exists());
        s.double.state().unavailable = false;
        std::thread::sleep(Duration::from_millis(800));
        std::fs::write(&go, "").unwrap();
        ok(&child.wait_with_output().unwrap())
    };
    let t = gated(&e.root.join("b"), Some("300"));
    assert!(t.contains("ran   gate"), "{t}");
    assert_eq!(
        t.lines().filter(|l| l.starts_with("hit ")).count(),
        6,
        "{t}"
    );
    assert!(
        t.contains("remote: 6 hits, 0 misses, 0 rejected, disabled after 1 errors"),
        "{t}"
    );
    assert!(t.contains("remote: uploaded 1 result"), "{t}");
    assert_eq!(warnings(&t), 1, "{t}");
    fsck_clean(&e.root.join("b"));

    let t = gated(&e.root.join("c"), None);
    assert_eq!(
        t.lines().filter(|l| l.starts_with("ran ")).count(),
        7,
        "{t}"
    );
    assert!(t.contains("remote: 0 hits"), "{t}");
    assert!(t.contains("left queued"), "{t}");

    // A bad interval is refused, naming the variable.
    let o = dagfs(&e.root.join("c"), &["run", "-f", file.to_str().unwrap()])
        .env("DAGFS_REMOTE_REPROBE_MS", "soon")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("DAGFS_REMOTE_REPROBE_MS"), "{}", text(&o));
}

/// Queue every entry of `store` for upload again.
fn requeue(store: &Path) -> usize {
    let q = store.join("remote-queue");
    std::fs::create_dir_all(&q).unwrap();
    let mut n = 0;
    for shard in std::fs::read_dir(store.join("entries")).unwrap() {
        for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            std::fs::write(q.join(e.unwrap().file_name()), "").unwrap();
            n += 1;
        }
    }
    n
}

/// What the server has is remembered (per server, instance and digest
/// function, for a TTL): a second upload of the same results asks
/// FindMissingBlobs only about the sentinel (the blob confirmed last); a
/// new result sharing blobs with them asks only about its own; past the
/// TTL, on another instance, or once the server lost the sentinel (wiped),
/// every blob is asked about again.
#[test]
fn blobs_the_server_has_are_remembered() {
    let s = Served::start();
    let e = env();
    let a = e.root.join("a");
    let file = pipeline(&e.root.join("p"));
    config(&a, "remote", &s.url());
    config(&a, "remote_upload", "on");
    let t = ok(&run(&a, &file, &[]));
    assert!(t.contains("remote: uploaded 5 results"), "{t}");
    let first = std::mem::take(&mut s.double.state().asked);
    assert!(first.len() >= 15, "{first:?}");

    let flush = |envs: &[(&str, &str)]| {
        let mut c = dagfs(&a, &["remote", "flush"]);
        c.env_remove("DAGFS_REMOTE");
        for (k, v) in envs {
            c.env(k, v);
        }
        ok(&c.output().unwrap())
    };
    assert_eq!(requeue(&a), 5);
    let t = flush(&[]);
    assert!(
        t.contains("remote: uploaded 5 (0 blobs, 0 bytes sent"),
        "{t}"
    );
    // Only the sentinel is asked about (the blob the server confirmed
    // last: a server that lost it lost the rest too).
    assert_eq!(
        s.double.state().asked.len(),
        1,
        "{:?}",
        s.double.state().asked
    );

    // A new result whose file is t1's: only its own blobs are asked about.
    let dir = e.root.join("q");
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("dagfs.toml");
    std::fs::write(
        &other,
        "name = \"dbl2\"\n[tasks.same]\nrun = 'mkdir \"$DAGFS_OUT/d\" && echo 1 > \"$DAGFS_OUT/d/f\" # another recipe'\n",
    )
    .unwrap();
    let t = ok(&run(&a, &other, &[]));
    assert!(t.contains("remote: uploaded 1 result"), "{t}");
    let asked = std::mem::take(&mut s.double.state().asked);
    let shared = b3(b"1\n");
    assert!(first.contains(&shared));
    assert!(!asked.contains(&shared), "{asked:?}");
    assert!(!asked.is_empty() && asked.len() < 8, "{asked:?}");

    // A store that fetched t1's result from the server knows the server
    // has its blobs: its own upload of `same` does not ask about them.
    let c = e.root.join("c");
    config(&c, "remote", &s.url());
    let t = ok(&run(&c, &file, &[]));
    assert!(t.contains("remote: 5 hits"), "{t}");
    s.double.state().asked.clear();
    s.double.state().ac.clear();
    config(&c, "remote_upload", "on");
    let t = ok(&run(&c, &other, &[]));
    assert!(t.contains("remote: uploaded 1 result"), "{t}");
    let asked = std::mem::take(&mut s.double.state().asked);
    assert!(!asked.contains(&shared), "{asked:?}");
    assert!(!asked.is_empty(), "{asked:?}");

    // Past the TTL: asked again (and present: nothing sent).
    requeue(&a);
    let t = flush(&[("DAGFS_REMOTE_KNOWN_TTL_MS", "0")]);
    assert!(
        t.contains("remote: uploaded 6 (0 blobs, 0 bytes sent"),
        "{t}"
    );
    let asked = std::mem::take(&mut s.double.state().asked);
    assert!(asked.len() >= first.len(), "{asked:?}");
    // Another instance of the same server: asked again.
    requeue(&a);
    let t = flush(&[("DAGFS_REMOTE", &format!("{}/other", s.url()))]);
    assert!(t.contains("remote: uploaded 6"), "{t}");
    assert!(s.double.state().asked.len() >= first.len());

    // The server lost everything (restarted with an in-memory CAS): the
    // sentinel is missing, so every blob is asked about and sent again,
    // and another store gets every result from it.
    {
        let mut st = s.double.state();
        st.cas.clear();
        st.ac.clear();
        st.asked.clear();
    }
    requeue(&a);
    let t = flush(&[]);
    assert!(t.contains("remote: uploaded 6"), "{t}");
    assert!(!t.contains("(0 blobs, 0 bytes sent"), "{t}");
    assert!(s.double.state().asked.len() >= first.len());
    let d = e.root.join("d");
    config(&d, "remote", &s.url());
    let t = ok(&run(&d, &file, &[]));
    assert!(t.contains("remote: 5 hits, 0 misses, 0 rejected"), "{t}");
}

/// The read path reads several blobs at once (bounded): a result of ten
/// files of 600 kB (one BatchReadBlobs each under the double's 1 MiB
/// limit) and one of 1.2 MB (ByteStream), each read taking 100 ms, is
/// fetched with more than one read in flight and never more than 6.
#[test]
fn blobs_are_read_several_at_once() {
    let s = Served::start();
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    let file = e.pipeline("p", "name = \"wide\"\n[tasks.wide]\nrun = 'for i in 0 1 2 3 4 5 6 7 8 9; do head -c 600000 /dev/urandom > \"$DAGFS_OUT/f$i\"; done; head -c 1200000 /dev/urandom > \"$DAGFS_OUT/big\"'\n").join("dagfs.toml");
    config(&a, "remote", &s.url());
    config(&a, "remote_upload", "on");
    ok(&run(&a, &file, &[]));
    s.double.state().read_delay = Duration::from_millis(100);
    config(&b, "remote_lookup_timeout", "20s");
    let t = ok(&run(&b, &file, &["--remote", &s.url()]));
    assert!(t.contains("remote: 1 hits, 0 misses, 0 rejected"), "{t}");
    fsck_clean(&b);
    let most = s.double.state().max_reading;
    assert!((2..=6).contains(&most), "{most} reads at once");
    for i in 0..10 {
        let name = format!("wide/wide/f{i}");
        let x = dagfs(&a, &["cat", &name]).output().unwrap();
        let y = dagfs(&b, &["cat", &name]).output().unwrap();
        assert!(x.stdout.len() == 600_000 && x.stdout == y.stdout, "{name}");
    }
}
