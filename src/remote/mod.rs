//! remote: the second tier, a shared cache spoken to over the Bazel Remote
//! Execution API v2 (ActionCache, ContentAddressableStorage, ByteStream,
//! Capabilities), so a team shares results through Buildbarn, BuildBuddy,
//! NativeLink, bazel-remote or BuildGrid. dagfs writes no server.
//!
//! Owns: the remote settings (`config`, `<store>/remote.json`), the mapping
//! of entries onto REAPI messages (`mapping`), the gRPC calls (`client`),
//! the read path (`fetch`: a local miss asks the server, verifies every
//! digest, rebuilds the tree and commits an ordinary local entry), the
//! entries found by their dagfs key alone (`by_key`: a key record filed
//! beside each uploaded result, for the daemon's mount), the
//! write path (`upload`) and its durable queue (`queue`,
//! `<store>/remote-queue/`), the SHA-256 ↔ BLAKE3 map (index tree
//! `remote`), the counters and the circuit breaker.
//! May call: `hash`, `store`, `index`, `cache`, `exec::scheduler` (only
//! the Tier trait, which it implements; `exec` does not know this module),
//! `exec::key` (the recipe).
//! Never the mounted tree.
//!
//! Guarantees: the remote never fails a run. Every error becomes one
//! warning line (the first), a counter, and local-only work: connect gives
//! up after `client::CONNECT_TIMEOUT`, a lookup after
//! `client::LOOKUP_DEADLINE`, and after `MAX_ERRORS` errors the tier is off
//! for `REPROBE` (circuit breaker). A remote result becomes a local entry
//! only when every blob matched its digest and the rebuilt output tree
//! equals the output digest its record names; anything else is rejected
//! and counted, and the task runs. tokio runs on one dedicated thread of
//! this module's own runtime; callers block (`Remote` is synchronous).

pub mod by_key;
pub mod client;
pub mod config;
pub mod error;
mod fetch;
pub mod mapping;
pub mod queue;
pub mod sign;
mod upload;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::exec::scheduler::Tier;
use crate::hash::Digest;
use crate::index::{CachePolicy, EntryMeta};
use crate::store::Entry;

pub use config::{DigestPin, RemoteConfig, RemoteUrl};
pub use error::RemoteError;
pub use upload::UploadReport;

/// Errors after which the tier turns itself off (circuit breaker).
pub const MAX_ERRORS: u32 = 3;
/// How long it stays off before it is tried again (`DAGFS_REMOTE_REPROBE_MS`
/// overrides it: tests, or a team that wants it sooner).
pub const REPROBE: Duration = Duration::from_secs(60);

/// What one process did with the remote (persisted into `dagfs stats` by
/// `Remote::persist`).
#[derive(Debug, Default)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
    pub wait_ms: AtomicU64,
    /// Entries kept local only (a name REAPI cannot carry, a closure task).
    pub local_only: AtomicU64,
    pub uploaded: AtomicU64,
}

/// The counters' names in the index's `stats` tree (`remote.<name>`).
pub const COUNTERS: [&str; 8] = [
    "misses",
    "rejected",
    "errors",
    "bytes_down",
    "bytes_up",
    "wait_ms",
    "local_only",
    "uploaded",
];

impl Counters {
    fn get(&self, name: &str) -> &AtomicU64 {
        match name {
            "hits" => &self.hits,
            "misses" => &self.misses,
            "rejected" => &self.rejected,
            "errors" => &self.errors,
            "bytes_down" => &self.bytes_down,
            "bytes_up" => &self.bytes_up,
            "wait_ms" => &self.wait_ms,
            "local_only" => &self.local_only,
            _ => &self.uploaded,
        }
    }
    pub fn load(&self, name: &str) -> u64 {
        self.get(name).load(Ordering::Relaxed)
    }
    fn add(&self, name: &str, n: u64) {
        self.get(name).fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Breaker {
    /// Consecutive errors.
    errors: u32,
    /// Errors since this process started.
    total: u32,
    off_until: Option<Instant>,
    /// It turned off at least once.
    tripped: bool,
}

/// The remote tier of one process, blocking. Cheap until first used: the
/// connection is made at the first call.
/// The environment a remote reads (`DAGFS_REMOTE_TOKEN`).
pub type Env = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub struct Remote {
    pub url: RemoteUrl,
    cfg: RemoteConfig,
    env: Env,
    rt: tokio::runtime::Runtime,
    conn: Mutex<Option<Arc<client::Conn>>>,
    breaker: Mutex<Breaker>,
    warnings: Mutex<Vec<String>>,
    pub counters: Counters,
    store: PathBuf,
    /// This store's signing key (`remote_sign_key`).
    signer: Option<sign::SignKey>,
    /// Only results signed by these are accepted (`remote_trusted_keys`).
    trusted: Option<sign::Trusted>,
    /// Results rejected as untrusted were warned about (once a process).
    untrusted_warned: std::sync::atomic::AtomicBool,
    /// How long the breaker keeps the tier off.
    reprobe: Duration,
    /// How long a blob the server confirmed is not asked about again.
    known_ttl: Duration,
    /// The server lost a blob it had confirmed (restarted with an
    /// in-memory CAS, wiped): nothing remembered of it is trusted until
    /// the next upload pass checks again (`upload::sentinel_holds`).
    forget_known: std::sync::atomic::AtomicBool,
}

impl Remote {
    /// The remote for `store` under `cfg`, `over` the run's choice of URL
    /// (`--remote`, `--no-remote` = "none", `DAGFS_REMOTE`). None: no remote.
    pub fn new(
        store: &std::path::Path,
        cfg: RemoteConfig,
        over: Option<&str>,
        env: Env,
    ) -> Result<Option<Remote>, RemoteError> {
        let Some(url) = cfg.effective_url(over)? else {
            return Ok(None);
        };
        let signer = cfg
            .sign_key
            .as_deref()
            .map(sign::SignKey::load)
            .transpose()?;
        let trusted = cfg
            .trusted_keys
            .as_deref()
            .map(sign::Trusted::load)
            .transpose()?;
        let ms = |name: &str, default: Duration| -> Result<Duration, RemoteError> {
            match env(name) {
                None => Ok(default),
                Some(v) => v.trim().parse().map(Duration::from_millis).map_err(|_| {
                    RemoteError::Usage(format!("{name}: {v:?} is not a number of milliseconds"))
                }),
            }
        };
        let reprobe = ms("DAGFS_REMOTE_REPROBE_MS", REPROBE)?;
        let known_ttl = ms("DAGFS_REMOTE_KNOWN_TTL_MS", upload::KNOWN_TTL)?;
        // NB: one worker thread: the rest of dagfs stays synchronous and
        // blocks on it.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dagfs-remote")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Server {
                url: url.to_string(),
                what: format!("cannot start its runtime: {e}"),
            })?;
        Ok(Some(Remote {
            url,
            cfg,
            env,
            rt,
            conn: Mutex::new(None),
            breaker: Mutex::new(Breaker::default()),
            warnings: Mutex::new(Vec::new()),
            counters: Counters::default(),
            store: store.to_path_buf(),
            signer,
            trusted,
            untrusted_warned: std::sync::atomic::AtomicBool::new(false),
            reprobe,
            known_ttl,
            forget_known: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn uploads(&self) -> bool {
        self.cfg.upload
    }

    /// Warnings to show the user (the first error, the breaker tripping);
    /// each is returned once.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn warn(&self, w: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(w);
    }

    /// The connection, made now if needed; Err when off or unreachable.
    fn conn(&self) -> Result<Arc<client::Conn>, RemoteError> {
        {
            let b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = b.off_until {
                if Instant::now() < t {
                    return Err(RemoteError::Disabled {
                        url: self.url.to_string(),
                        errors: b.total,
                    });
                }
            }
        }
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &*c {
            return Ok(c.clone());
        }
        let t = Instant::now();
        let made = self
            .rt
            .block_on(client::Conn::connect(&self.url, &self.cfg, &*self.env));
        self.counters.add("wait_ms", t.elapsed().as_millis() as u64);
        match made {
            Ok(conn) => {
                let conn = Arc::new(conn);
                *c = Some(conn.clone());
                Ok(conn)
            }
            Err(what) => {
                drop(c);
                let e = RemoteError::Unreachable {
                    url: self.url.to_string(),
                    what,
                };
                // NB: an unreachable server is off at once: every lookup
                // would otherwise wait for its own connect timeout.
                self.failed(&e, true);
                Err(e)
            }
        }
    }

    /// Count an error; the first is a warning; `MAX_ERRORS` in a row (or
    /// `now`) turn the tier off for `REPROBE` (`self.reprobe`).
    fn failed(&self, e: &RemoteError, now: bool) {
        self.counters.add("errors", 1);
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.errors += 1;
        b.total += 1;
        if b.total == 1 {
            self.warn(format!("{e}; going on without it where it fails"));
        }
        if now || b.errors >= MAX_ERRORS {
            b.off_until = Some(Instant::now() + self.reprobe);
            b.tripped = true;
            b.errors = 0;
            *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    fn succeeded(&self) {
        self.breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .errors = 0;
    }

    /// Run a future on the tier's runtime, timing the wait.
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let t = Instant::now();
        let r = self.rt.block_on(f);
        self.counters.add("wait_ms", t.elapsed().as_millis() as u64);
        r
    }

    /// `remote: N hits, N misses, N rejected[, disabled after N errors]`.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let mut s = format!(
            "remote: {} hits, {} misses, {} rejected",
            c.load("hits"),
            c.load("misses"),
            c.load("rejected")
        );
        let b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if b.tripped {
            s.push_str(&format!(", disabled after {} errors", b.total));
        } else if b.total > 0 {
            s.push_str(&format!(", {} errors", b.total));
        }
        s
    }

    /// Add this process's counters to the store's (`dagfs stats`).
    pub fn persist(&self, cache: &Cache) -> Result<(), RemoteError> {
        for name in COUNTERS {
            let n = self.counters.get(name).swap(0, Ordering::Relaxed);
            if n > 0 {
                cache.index.add(&format!("remote.{name}"), n as i64)?;
            }
        }
        Ok(())
    }

    /// Server facts for `dagfs remote status`.
    pub fn status(&self) -> Result<Status, RemoteError> {
        let conn = self.conn()?;
        let rtt = self
            .block(conn.ping())
            .map_err(|what| RemoteError::Server {
                url: self.url.to_string(),
                what,
            })?;
        let cc = conn.caps.cache_capabilities.clone().unwrap_or_default();
        let names = |v: &[i32]| -> Vec<String> {
            v.iter()
                .map(|d| {
                    bazel_remote_apis::build::bazel::remote::execution::v2::digest_function::Value::try_from(*d)
                        .map(|v| v.as_str_name().to_lowercase())
                        .unwrap_or_else(|_| d.to_string())
                })
                .collect()
        };
        let ver = |v: &Option<bazel_remote_apis::build::bazel::semver::SemVer>| {
            v.as_ref()
                .map(|v| format!("{}.{}", v.major, v.minor))
                .unwrap_or_default()
        };
        Ok(Status {
            server: self.url.to_string(),
            instance: self.url.instance.clone(),
            digest_function: conn.f.name().into(),
            digest_functions: names(&cc.digest_functions),
            action_cache_updates: cc
                .action_cache_update_capabilities
                .map(|u| u.update_enabled)
                .unwrap_or(false),
            max_batch_bytes: cc.max_batch_total_size_bytes.max(0) as u64,
            api: format!(
                "{}..{}",
                ver(&conn.caps.low_api_version),
                ver(&conn.caps.high_api_version)
            ),
            rtt_ms: rtt.as_secs_f64() * 1000.0,
            upload: self.cfg.upload,
            queued: queue::len(&self.store),
            signing_key: self.signer.as_ref().map(|k| k.public()),
            trusted_keys: self.trusted.as_ref().map(|t| t.len()),
        })
    }
}

/// `dagfs remote status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub server: String,
    pub instance: String,
    pub digest_function: String,
    pub digest_functions: Vec<String>,
    pub action_cache_updates: bool,
    pub max_batch_bytes: u64,
    pub api: String,
    pub rtt_ms: f64,
    pub upload: bool,
    pub queued: usize,
    /// The public key of `remote_sign_key`, if uploads are signed.
    pub signing_key: Option<String>,
    /// How many keys `remote_trusted_keys` trusts (None: any result).
    pub trusted_keys: Option<usize>,
}

/// Only shell tasks travel: a closure's code is not part of its recipe.
fn travels(e: &Entry) -> bool {
    e.manifest.command != "closure"
}

impl Tier for Remote {
    fn fetch(
        &self,
        cache: &Cache,
        entry: &Entry,
        protected: &HashSet<Digest>,
        policy: &CachePolicy,
    ) -> Option<EntryMeta> {
        if !travels(entry) {
            return None;
        }
        match self.fetch_entry(cache, entry, protected, policy) {
            Ok(Some(meta)) => {
                self.counters.add("hits", 1);
                self.succeeded();
                Some(meta)
            }
            Ok(None) => {
                self.counters.add("misses", 1);
                self.succeeded();
                None
            }
            Err(RemoteError::Rejected { key, why }) => {
                self.counters.add("rejected", 1);
                self.warn(format!(
                    "remote result for {key} rejected ({why}); running the task"
                ));
                None
            }
            Err(RemoteError::Untrusted { key, why }) => {
                // NB: one warning a process: a consumer trusting CI's key
                // meets every laptop-made result the same way.
                self.counters.add("rejected", 1);
                if !self.untrusted_warned.swap(true, Ordering::Relaxed) {
                    self.warn(format!(
                        "remote result for {key} rejected ({why}); running the task (results not signed by a trusted key are rejected: counted, not warned again)"
                    ));
                }
                None
            }
            Err(RemoteError::Disabled { .. } | RemoteError::Unreachable { .. }) => None,
            Err(e) => {
                self.failed(&e, false);
                None
            }
        }
    }

    fn produced(&self, cache: &Cache, entry: &Entry) {
        if !self.cfg.upload || !travels(entry) {
            return;
        }
        if let Err(e) = queue::push(cache.store.root(), &entry.key) {
            self.warn(format!(
                "cannot queue {} for upload: {e}",
                entry.key.short()
            ));
        }
    }
}
