//! The gRPC side: one connection to a REAPI v2 server and the calls dagfs
//! makes on it (Capabilities, ActionCache, ContentAddressableStorage,
//! ByteStream). Async; only `remote::Remote` drives it, on its own tokio
//! runtime. Every call has a deadline.

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::config::{RemoteConfig, RemoteUrl};
use super::mapping::DigestFn;

/// Connecting gives up after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// GetActionResult on a local miss, unless `remote_lookup_timeout` says
/// otherwise: a slow remote must not slow a run.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(2);
/// Any other call (blob transfers scale with their size: see `transfer_deadline`).
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// Used when the server does not say (REAPI's usual 4 MiB gRPC message limit, less headroom).
pub const DEFAULT_BATCH: usize = 4 * 1024 * 1024 - 64 * 1024;
const CHUNK: usize = 1 << 20;

/// Adds the `authorization` header, if any.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

type Svc = InterceptedService<Channel, Auth>;

pub struct Conn {
    pub instance: String,
    pub f: DigestFn,
    pub caps: re::ServerCapabilities,
    /// The most bytes one BatchUpdate/BatchRead carries.
    pub max_batch: usize,
    /// GetActionResult's deadline.
    pub lookup_deadline: Duration,
    cas: ContentAddressableStorageClient<Svc>,
    ac: ActionCacheClient<Svc>,
    capc: CapabilitiesClient<Svc>,
    bs: bs::byte_stream_client::ByteStreamClient<Svc>,
}

fn status(s: tonic::Status) -> String {
    let m = s.message();
    if m.is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {m}", s.code())
    }
}

async fn deadline<T>(
    d: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, fut).await {
        Ok(r) => r.map_err(|e| format!("{what}: {}", status(e))),
        Err(_) => Err(format!("{what}: no answer within {}s", d.as_secs_f64())),
    }
}

/// Time to move `bytes`: the base deadline, plus a second per 8 MiB.
fn transfer_deadline(bytes: u64) -> Duration {
    CALL_DEADLINE + Duration::from_secs(bytes / (8 << 20))
}

/// The token: `DAGFS_REMOTE_TOKEN`, else the configured file's first line.
fn token(
    cfg: &RemoteConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    if let Some(t) = env("DAGFS_REMOTE_TOKEN").filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    match &cfg.token_file {
        None => Ok(None),
        Some(p) => {
            let s = std::fs::read_to_string(p)
                .map_err(|e| format!("token file {}: {e}", p.display()))?;
            Ok(s.lines()
                .next()
                .map(|l| l.trim().to_string())
                .filter(|t| !t.is_empty()))
        }
    }
}

impl Conn {
    /// Connect (at most `CONNECT_TIMEOUT`), then ask GetCapabilities and
    /// agree on a digest function.
    pub async fn connect(
        url: &RemoteUrl,
        cfg: &RemoteConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Conn, String> {
        let mut ep = Endpoint::from_shared(url.endpoint())
            .map_err(|e| format!("bad endpoint: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if url.tls {
            let mut tls = ClientTlsConfig::new().domain_name(url.host.trim_matches(['[', ']']));
            match &cfg.ca {
                Some(ca) => {
                    let pem =
                        std::fs::read(ca).map_err(|e| format!("CA file {}: {e}", ca.display()))?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                None => tls = tls.with_native_roots(),
            }
            match (&cfg.cert, &cfg.key) {
                (Some(c), Some(k)) => {
                    let c = std::fs::read(c)
                        .map_err(|e| format!("client certificate {}: {e}", c.display()))?;
                    let k =
                        std::fs::read(k).map_err(|e| format!("client key {}: {e}", k.display()))?;
                    tls = tls.identity(Identity::from_pem(c, k));
                }
                (None, None) => {}
                _ => return Err("remote_cert and remote_key go together (mTLS)".into()),
            }
            ep = ep.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
        }
        let auth = match token(cfg, env)? {
            None => Auth(None),
            Some(t) => Auth(Some(format!("Bearer {t}").parse().map_err(|_| {
                "the token holds characters a header cannot carry".to_string()
            })?)),
        };
        let chan =
            match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_millis(200), ep.connect())
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        let t = s.to_string();
                        if !msg.contains(&t) {
                            msg = format!("{msg}: {t}");
                        }
                        src = s.source();
                    }
                    return Err(format!("cannot connect: {msg}"));
                }
                Err(_) => {
                    return Err(format!(
                        "cannot connect within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ))
                }
            };
        let svc = |c: &Channel| InterceptedService::new(c.clone(), auth.clone());
        let mut capc = CapabilitiesClient::new(svc(&chan));
        let caps = deadline(
            CALL_DEADLINE,
            "GetCapabilities",
            capc.get_capabilities(re::GetCapabilitiesRequest {
                instance_name: url.instance.clone(),
            }),
        )
        .await
        .map_err(|e| {
            // NB: a TLS server that wants a client certificate and gets
            // none drops the connection after the handshake: all the
            // client sees is a transport error.
            if url.tls && cfg.cert.is_none() && e.contains("transport error") {
                format!("{e} (if the server asks for a client certificate: dagfs config remote_cert FILE and remote_key FILE)")
            } else {
                e
            }
        })?
        .into_inner();
        let cc = caps.cache_capabilities.unwrap_or_default();
        let offers = |v: re::digest_function::Value| cc.digest_functions.contains(&(v as i32));
        use super::config::DigestPin;
        let f = match cfg.digest {
            DigestPin::Blake3 if offers(re::digest_function::Value::Blake3) => DigestFn::Blake3,
            DigestPin::Blake3 => {
                return Err(
                    "digest function pinned to blake3, which the server does not offer".into(),
                )
            }
            DigestPin::Auto if offers(re::digest_function::Value::Blake3) => DigestFn::Blake3,
            // NB: a server listing nothing speaks SHA-256 (REAPI before 2.1).
            _ if offers(re::digest_function::Value::Sha256) || cc.digest_functions.is_empty() => {
                DigestFn::Sha256
            }
            _ => {
                return Err(format!(
                    "the server offers no digest function dagfs speaks (it offers {:?})",
                    cc.digest_functions
                ))
            }
        };
        if cc
            .action_cache_update_capabilities
            .is_some_and(|u| !u.update_enabled)
            && cfg.upload
        {
            // Not an error: reads still work; uploads will fail and say so.
        }
        let max_batch = match cc.max_batch_total_size_bytes {
            n if n > 0 => (n as usize).saturating_sub(64 * 1024).max(64 * 1024),
            _ => DEFAULT_BATCH,
        };
        Ok(Conn {
            instance: url.instance.clone(),
            f,
            caps: re::ServerCapabilities {
                cache_capabilities: Some(cc),
                ..caps
            },
            max_batch,
            lookup_deadline: cfg
                .lookup_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(LOOKUP_DEADLINE),
            cas: ContentAddressableStorageClient::new(svc(&chan))
                .max_decoding_message_size(64 << 20),
            ac: ActionCacheClient::new(svc(&chan)).max_decoding_message_size(64 << 20),
            bs: bs::byte_stream_client::ByteStreamClient::new(svc(&chan))
                .max_decoding_message_size(64 << 20),
            capc,
        })
    }

    /// One GetCapabilities round trip (for `remote status`).
    pub async fn ping(&self) -> Result<Duration, String> {
        let t = std::time::Instant::now();
        let mut c = self.capc.clone();
        deadline(
            CALL_DEADLINE,
            "GetCapabilities",
            c.get_capabilities(re::GetCapabilitiesRequest {
                instance_name: self.instance.clone(),
            }),
        )
        .await?;
        Ok(t.elapsed())
    }

    /// None when the server has no result for `action`.
    pub async fn get_action_result(
        &self,
        action: &re::Digest,
    ) -> Result<Option<re::ActionResult>, String> {
        let mut ac = self.ac.clone();
        let req = re::GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.clone()),
            inline_stdout: false,
            inline_stderr: false,
            digest_function: self.f.proto(),
            ..Default::default()
        };
        match tokio::time::timeout(self.lookup_deadline, ac.get_action_result(req)).await {
            Ok(Ok(r)) => Ok(Some(r.into_inner())),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(None),
            Ok(Err(s)) => Err(format!("GetActionResult: {}", status(s))),
            Err(_) => Err(format!(
                "GetActionResult: no answer within {}s",
                self.lookup_deadline.as_secs_f64()
            )),
        }
    }

    pub async fn update_action_result(
        &self,
        action: &re::Digest,
        r: re::ActionResult,
    ) -> Result<(), String> {
        let mut ac = self.ac.clone();
        deadline(
            CALL_DEADLINE,
            "UpdateActionResult",
            ac.update_action_result(re::UpdateActionResultRequest {
                instance_name: self.instance.clone(),
                action_digest: Some(action.clone()),
                action_result: Some(r),
                digest_function: self.f.proto(),
                ..Default::default()
            }),
        )
        .await?;
        Ok(())
    }

    /// Which of `digests` the server lacks.
    pub async fn find_missing(&self, digests: Vec<re::Digest>) -> Result<Vec<re::Digest>, String> {
        let mut out = Vec::new();
        // NB: 10,000 digests are well under any message limit.
        for chunk in digests.chunks(10_000) {
            let mut cas = self.cas.clone();
            let r = deadline(
                CALL_DEADLINE,
                "FindMissingBlobs",
                cas.find_missing_blobs(re::FindMissingBlobsRequest {
                    instance_name: self.instance.clone(),
                    blob_digests: chunk.to_vec(),
                    digest_function: self.f.proto(),
                }),
            )
            .await?;
            out.extend(r.into_inner().missing_blob_digests);
        }
        Ok(out)
    }

    /// Upload small blobs in one BatchUpdateBlobs (the caller keeps the
    /// batch under `max_batch`).
    pub async fn batch_update(&self, blobs: Vec<(re::Digest, Vec<u8>)>) -> Result<(), String> {
        let total: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum();
        let mut cas = self.cas.clone();
        let r = deadline(
            transfer_deadline(total),
            "BatchUpdateBlobs",
            cas.batch_update_blobs(re::BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests: blobs
                    .into_iter()
                    .map(|(digest, data)| re::batch_update_blobs_request::Request {
                        digest: Some(digest),
                        data,
                        ..Default::default()
                    })
                    .collect(),
                digest_function: self.f.proto(),
            }),
        )
        .await?;
        for resp in r.into_inner().responses {
            if let Some(s) = resp.status.filter(|s| s.code != 0) {
                let d = resp.digest.unwrap_or_default();
                return Err(format!(
                    "BatchUpdateBlobs {}/{}: code {}: {}",
                    d.hash, d.size_bytes, s.code, s.message
                ));
            }
        }
        Ok(())
    }

    /// Read small blobs in one BatchReadBlobs. A blob the server lacks is
    /// left out of the answer.
    pub async fn batch_read(
        &self,
        digests: Vec<re::Digest>,
    ) -> Result<Vec<(re::Digest, Vec<u8>)>, String> {
        let total: u64 = digests.iter().map(|d| d.size_bytes.max(0) as u64).sum();
        let mut cas = self.cas.clone();
        let r = deadline(
            transfer_deadline(total),
            "BatchReadBlobs",
            cas.batch_read_blobs(re::BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests,
                digest_function: self.f.proto(),
                ..Default::default()
            }),
        )
        .await?;
        let mut out = Vec::new();
        for resp in r.into_inner().responses {
            match resp.status {
                Some(s) if s.code != 0 => continue,
                _ => {}
            }
            if let Some(d) = resp.digest {
                out.push((d, resp.data.to_vec()));
            }
        }
        Ok(out)
    }

    fn resource(&self, d: &re::Digest) -> String {
        let mut s = String::new();
        if !self.instance.is_empty() {
            s.push_str(&self.instance);
            s.push('/');
        }
        s.push_str("blobs/");
        if self.f == DigestFn::Blake3 {
            s.push_str("blake3/");
        }
        s.push_str(&format!("{}/{}", d.hash, d.size_bytes));
        s
    }

    /// Read one (large) blob with ByteStream. None when the server lacks it.
    pub async fn read(&self, d: &re::Digest) -> Result<Option<Vec<u8>>, String> {
        let mut c = self.bs.clone();
        let name = self.resource(d);
        let dl = transfer_deadline(d.size_bytes.max(0) as u64);
        let fut = async move {
            let mut stream = match c
                .read(bs::ReadRequest {
                    resource_name: name,
                    read_offset: 0,
                    read_limit: 0,
                })
                .await
            {
                Ok(s) => s.into_inner(),
                Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
                Err(s) => return Err(s),
            };
            let mut out = Vec::with_capacity(d.size_bytes.clamp(0, 1 << 30) as usize);
            loop {
                match stream.message().await {
                    Ok(Some(m)) => out.extend_from_slice(&m.data),
                    Ok(None) => break,
                    Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
                    Err(s) => return Err(s),
                }
            }
            Ok(Some(out))
        };
        deadline(dl, "ByteStream.Read", fut).await
    }

    /// Write one (large) blob with ByteStream.
    pub async fn write(&self, d: &re::Digest, data: Vec<u8>) -> Result<(), String> {
        let mut c = self.bs.clone();
        let mut name = String::new();
        if !self.instance.is_empty() {
            name.push_str(&self.instance);
            name.push('/');
        }
        name.push_str(&format!("uploads/{}/", uuid()));
        name.push_str(
            &self.resource(d)[if self.instance.is_empty() {
                0
            } else {
                self.instance.len() + 1
            }..],
        );
        let len = data.len();
        let mut reqs = Vec::new();
        let mut off = 0usize;
        loop {
            let end = (off + CHUNK).min(len);
            reqs.push(bs::WriteRequest {
                resource_name: if off == 0 {
                    name.clone()
                } else {
                    String::new()
                },
                write_offset: off as i64,
                finish_write: end == len,
                data: data[off..end].to_vec(),
            });
            off = end;
            if off == len {
                break;
            }
        }
        let r = deadline(
            transfer_deadline(len as u64),
            "ByteStream.Write",
            c.write(tokio_stream::iter(reqs)),
        )
        .await?;
        let committed = r.into_inner().committed_size;
        if committed != len as i64 && committed != -1 {
            return Err(format!(
                "ByteStream.Write: server committed {committed} of {len} bytes"
            ));
        }
        Ok(())
    }
}

/// A UUID-shaped unique upload id (RFC 4122 layout, random-ish bits from
/// BLAKE3 of the time, pid and a counter: REAPI only needs it unique).
fn uuid() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(
        &N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&t.as_nanos().to_le_bytes());
    let b = h.finalize();
    let mut b: [u8; 16] = b.as_bytes()[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = crate::hash::to_hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}
