//! The daemon's remote tier: one `Remote` for the store's own settings
//! (`Settings`, re-read when `remote.json` changes), the background
//! uploader (`Uploader`) and the mount's lookups of keys the store lacks
//! (`Lookups`).
//!
//! The uploader is one thread. It drains the durable queue
//! (`remote::queue`) when asked (after each `run` the daemon serves, by
//! `dagfs remote flush`), once at start (markers a killed daemon left),
//! and again every `RETRY` while markers stay. It uploads only entries
//! whose record is in `entries/`; a marker whose entry a run is still
//! committing waits for that run's own request. Stopping sets a flag it
//! reads before each entry: the entry being sent is finished if that takes
//! less than the daemon's wait (`Uploader::stop`), the rest stay queued
//! for the next daemon.
//!
//! A lookup of `/keys/<key>` the store lacks asks the server
//! (`Remote::fetch_key`: the whole entry, every digest checked, committed
//! as an ordinary local entry) on a thread of its own, and waits at most
//! the mount's deadline: past it, or on any error, the lookup answers EIO
//! (the fetch goes on, and a later lookup finds the entry or joins it).
//! Concurrent lookups of one key share one fetch; a key the server does
//! not know is remembered for `NEGATIVE_TTL`; a key a run of the daemon
//! holds (`Inflight`) is left to that run (EIO now, there once it ends).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::exec::scheduler::Inflight;
use crate::hash::Digest;
use crate::remote::{queue, Remote, RemoteConfig, RemoteUrl, UploadReport};

/// How long a key the server does not know answers ENOENT without asking.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Fetches at once for lookups; more answer EIO at once.
pub const MAX_FETCHES: usize = 32;
/// The uploader tries markers left behind (a failed upload) again after this.
pub const RETRY: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The daemon's `Remote`: the store's settings with the daemon's own
/// `DAGFS_REMOTE` and `DAGFS_REMOTE_TOKEN`, made again when they change.
pub struct Settings {
    pub cache: Arc<Cache>,
    env_url: Option<String>,
    token: Option<String>,
    current: Mutex<Option<(RemoteConfig, Arc<Remote>)>>,
    /// The last settings error, logged once.
    told: Mutex<Option<String>>,
}

impl Settings {
    pub fn new(cache: Arc<Cache>, env_url: Option<String>, token: Option<String>) -> Settings {
        Settings {
            cache,
            env_url: env_url.filter(|u| !u.is_empty()),
            token,
            current: Mutex::new(None),
            told: Mutex::new(None),
        }
    }

    /// The remote in force now, if any.
    pub fn remote(&self) -> Option<Arc<Remote>> {
        let root = self.cache.store.root();
        let made = RemoteConfig::load(root).and_then(|cfg| {
            let mut cur = lock(&self.current);
            if let Some((c, r)) = &*cur {
                if *c == cfg {
                    return Ok(Some(r.clone()));
                }
            }
            let token = self.token.clone();
            let env = Box::new(move |k: &str| {
                (k == "DAGFS_REMOTE_TOKEN").then(|| token.clone()).flatten()
            });
            let r = Remote::new(root, cfg.clone(), self.env_url.as_deref(), env)?.map(Arc::new);
            *cur = r.clone().map(|r| (cfg, r));
            Ok(r)
        });
        match made {
            Ok(r) => r,
            Err(e) => {
                let e = e.to_string();
                if lock(&self.told).as_deref() != Some(&e) {
                    log::warn!("remote: {e}");
                    *lock(&self.told) = Some(e);
                }
                None
            }
        }
    }

    /// Forget the remote in force: the next use connects afresh (a user's
    /// `remote flush` re-probes a server the breaker turned off).
    pub fn reset(&self) {
        *lock(&self.current) = None;
    }

    /// The remote the uploader sends to, if uploads are on.
    pub fn uploading(&self) -> Option<Arc<Remote>> {
        self.remote().filter(|r| r.uploads())
    }

    /// Log the remote's warnings and record its counters (`dagfs stats`).
    fn settle(&self, r: &Remote) {
        for w in r.take_warnings() {
            log::warn!("remote: {w}");
        }
        if let Err(e) = r.persist(&self.cache) {
            log::warn!("remote: cannot record the counters: {e}");
        }
    }
}

#[derive(Default)]
struct UpState {
    /// Drains asked for (a counter) and the one the last drain served.
    asked: u64,
    finished: u64,
    last: Option<Result<UploadReport, String>>,
    /// When the queue was last left non-empty.
    left: Option<Instant>,
    /// The thread has returned.
    exited: bool,
}

/// The background uploader (module header).
pub struct Uploader {
    settings: Arc<Settings>,
    st: Mutex<UpState>,
    cv: Condvar,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Why the last drain left something queued (logged once).
    last_failure: Mutex<Option<String>>,
}

impl Uploader {
    /// Start the thread; it drains once at once (leftovers of a killed
    /// daemon).
    pub fn start(settings: Arc<Settings>) -> std::io::Result<Arc<Uploader>> {
        let u = Arc::new(Uploader {
            settings,
            st: Mutex::new(UpState {
                asked: 1,
                ..Default::default()
            }),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            last_failure: Mutex::new(None),
        });
        let me = u.clone();
        let t = std::thread::Builder::new()
            .name("dagfs-upload".into())
            .spawn(move || me.work())?;
        *lock(&u.thread) = Some(t);
        Ok(u)
    }

    /// Whether uploads to `url` are this uploader's (the run's remote is
    /// the daemon's own).
    pub fn serves(&self, url: &RemoteUrl) -> bool {
        self.settings.uploading().is_some_and(|r| r.url == *url)
    }

    /// Ask for a drain; returns its number.
    pub fn poke(&self) -> u64 {
        let mut st = lock(&self.st);
        st.asked += 1;
        self.cv.notify_all();
        st.asked
    }

    /// Drain and wait for a drain that started after this call: its report,
    /// or why there was none (no remote uploading, the daemon stopping).
    pub fn flush(&self) -> Result<UploadReport, String> {
        // NB: asked for by a user: a server the breaker turned off is tried
        // again now, not after `REPROBE`.
        self.settings.reset();
        let n = self.poke();
        let mut st = lock(&self.st);
        while st.finished < n {
            if self.stop.load(Ordering::Relaxed) {
                return Err("the daemon is stopping; what is queued stays queued".into());
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.last
            .clone()
            .unwrap_or_else(|| Err("no drain has run".into()))
    }

    /// Stop after the entry being sent (queued ones stay queued), waiting
    /// for that at most `wait`: an entry cut off by the process's exit is
    /// no worse than a kill (its marker goes only after the server took
    /// its result).
    pub fn stop(&self, wait: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.cv.notify_all();
        let until = Instant::now() + wait;
        let mut st = lock(&self.st);
        while !st.exited {
            let now = Instant::now();
            if now >= until {
                log::info!("remote: the upload under way is cut off (it stays queued)");
                return;
            }
            st = self
                .cv
                .wait_timeout(st, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(st);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    fn work(&self) {
        self.drain_when_asked();
        lock(&self.st).exited = true;
        self.cv.notify_all();
    }

    fn drain_when_asked(&self) {
        loop {
            let n = {
                let mut st = lock(&self.st);
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if st.asked > st.finished {
                        break;
                    }
                    if st.left.is_some_and(|t| t.elapsed() >= RETRY) {
                        st.asked += 1;
                        break;
                    }
                    st = self
                        .cv
                        .wait_timeout(st, Duration::from_secs(1))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                st.asked
            };
            // NB: a panic must not leave a `remote flush` waiting forever.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.drain()))
                .unwrap_or_else(|_| Err("the uploader panicked (see daemon.log)".into()));
            let left = queue::len(self.settings.cache.store.root()) > 0;
            let mut st = lock(&self.st);
            st.finished = n;
            st.last = Some(r);
            st.left = left.then(Instant::now);
            self.cv.notify_all();
        }
    }

    fn drain(&self) -> Result<UploadReport, String> {
        let cache = &self.settings.cache;
        let Some(remote) = self.settings.uploading() else {
            return Ok(UploadReport::default());
        };
        let keys = queue::list(cache.store.root()).map_err(|e| e.to_string())?;
        if keys.is_empty() {
            return Ok(UploadReport::default());
        }
        // NB: an entry the index has but `entries/` not yet is being
        // committed by a run: its own request asks again when it is.
        let mut ready = Vec::new();
        let mut pending = Vec::new();
        for k in keys {
            match cache.store.read_entry(&k) {
                Ok(None) if matches!(cache.index.get(&k), Ok(Some(_))) => pending.push(k),
                _ => ready.push(k),
            }
        }
        let t = Instant::now();
        let r = remote.upload_keys(cache, &ready, &mut |_, _| {}, &|| {
            !self.stop.load(Ordering::Relaxed)
        });
        self.settings.settle(&remote);
        let mut r = r.map_err(|e| e.to_string())?;
        for k in pending {
            r.failed
                .push((k.to_hex(), "a run is still committing it".into()));
        }
        // NB: a server down for days is retried every `RETRY`: the same
        // failure is logged once, not every minute.
        let why = r.failed.first().map(|(_, w)| w.clone());
        let repeat = r.uploaded == 0 && why.is_some() && *lock(&self.last_failure) == why;
        if (r.uploaded > 0 || why.is_some()) && !repeat {
            log::info!(
                "remote: uploaded {} result(s) to {} in {} ms ({} blobs, {} bytes sent){}",
                r.uploaded,
                remote.url,
                t.elapsed().as_millis(),
                r.blobs_sent,
                r.bytes_sent,
                match &why {
                    None => String::new(),
                    Some(w) => format!("; {} still queued ({w})", r.failed.len()),
                }
            );
        }
        *lock(&self.last_failure) = why;
        Ok(r)
    }
}

/// Why a lookup could not be answered (the mount answers EIO).
#[derive(Debug, Clone)]
pub struct LookupFailed(pub String);

type Slot = Arc<(Mutex<Option<Result<bool, String>>>, Condvar)>;

/// Lookups of keys the store lacks (module header).
pub struct Lookups {
    settings: Arc<Settings>,
    /// The daemon's runs' claims: a key one of them holds is theirs.
    runs: Arc<Inflight>,
    deadline: Duration,
    negative: Mutex<HashMap<Digest, Instant>>,
    inflight: Mutex<HashMap<Digest, Slot>>,
    stopping: AtomicBool,
}

impl Lookups {
    pub fn new(settings: Arc<Settings>, runs: Arc<Inflight>, deadline: Duration) -> Lookups {
        Lookups {
            settings,
            runs,
            deadline,
            negative: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        }
    }

    /// Start no more fetches, and wait up to `wait` for those under way
    /// (each is bounded by its RPCs' deadlines; one cut off is no worse
    /// than a kill: nothing becomes visible before it is whole).
    pub fn stop(&self, wait: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        let until = Instant::now() + wait;
        while !lock(&self.inflight).is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ok(true): `key` is now a local entry; Ok(false): no remote, or the
    /// server does not know it; Err: no answer within the deadline, or the
    /// server failed.
    pub fn fetch(self: &Arc<Self>, key: &Digest) -> Result<bool, LookupFailed> {
        {
            let mut neg = lock(&self.negative);
            neg.retain(|_, t| t.elapsed() < NEGATIVE_TTL);
            if neg.contains_key(key) {
                return Ok(false);
            }
        }
        let slot = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(key) {
                Some(s) => s.clone(),
                None => {
                    if self.stopping.load(Ordering::Relaxed) {
                        return Err(LookupFailed("the daemon is stopping".into()));
                    }
                    // NB: a run of this daemon is executing or fetching it
                    // now: two publishers of one key could leave its index
                    // row and its record naming different outputs.
                    if self.runs.holds(key) {
                        let why = "a run is computing it now; look again when it is done";
                        log::warn!("remote: lookup of {}: {why}", key.short());
                        return Err(LookupFailed(why.into()));
                    }
                    let Some(remote) = self.settings.remote() else {
                        return Ok(false);
                    };
                    if inflight.len() >= MAX_FETCHES {
                        return Err(LookupFailed(format!(
                            "{MAX_FETCHES} fetches from the remote are under way"
                        )));
                    }
                    let s: Slot = Arc::default();
                    inflight.insert(*key, s.clone());
                    let (me, key, s2) = (self.clone(), *key, s.clone());
                    let spawned = std::thread::Builder::new()
                        .name("dagfs-fetch".into())
                        .spawn(move || me.run(remote, key, s2));
                    if let Err(e) = spawned {
                        inflight.remove(&key);
                        return Err(LookupFailed(format!("cannot start a fetch: {e}")));
                    }
                    s
                }
            }
        };
        let until = Instant::now() + self.deadline;
        let (m, cv) = &*slot;
        let mut got = lock(m);
        loop {
            if let Some(r) = &*got {
                return r.clone().map_err(LookupFailed);
            }
            let now = Instant::now();
            if now >= until {
                return Err(LookupFailed(format!(
                    "no answer from the remote within {} ms",
                    self.deadline.as_millis()
                )));
            }
            got = cv
                .wait_timeout(got, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn run(&self, remote: Arc<Remote>, key: Digest, slot: Slot) {
        let cache = &self.settings.cache;
        // NB: a panic must still fill the slot and free the key.
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            remote.fetch_key(cache, &key)
        }));
        let r = match got {
            Ok(Ok(Some(_))) => Ok(true),
            Ok(Ok(None)) => {
                lock(&self.negative).insert(key, Instant::now());
                Ok(false)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the fetch panicked (see daemon.log)".into()),
        };
        if let Err(e) = &r {
            log::warn!("remote: lookup of {}: {e}", key.short());
        }
        self.settings.settle(&remote);
        lock(&self.inflight).remove(&key);
        let (m, cv) = &*slot;
        *lock(m) = Some(r);
        cv.notify_all();
    }
}
