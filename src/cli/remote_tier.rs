//! `dagfs remote status|flush`, the remote settings of `dagfs config`, and
//! what `dagfs run` does with the remote tier around the scheduler
//! (`remote::Remote`): warnings, uploads before it returns, the summary.

use std::sync::Arc;

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use dagfs::cache::Cache;
use dagfs::daemon::remote::Uploader;
use dagfs::remote::{DigestPin, Remote, RemoteConfig, RemoteUrl};

use super::{CliError, Ctx, Io};

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum RemoteCmd {
    /// The remote in force: server, instance, digest function, capabilities,
    /// round-trip time, upload queue, counters (exit 15 if unreachable)
    Status {
        /// Print it as JSON (on stdout)
        #[arg(long)]
        json: bool,
    },
    /// Upload every queued result and wait (exit 15 if something could not
    /// be uploaded, saying what)
    Flush,
    /// Make a signing key: writes the private key to FILE (mode 0600, never
    /// overwriting) and prints its public key, for other stores'
    /// `remote_trusted_keys` (exit 25 if FILE cannot be made)
    Keygen {
        /// Where the private key goes
        file: std::path::PathBuf,
    },
}

/// The settings `dagfs config` shows and sets for the remote.
pub const KEYS: [&str; 10] = [
    "remote",
    "remote_upload",
    "remote_digest",
    "remote_ca",
    "remote_cert",
    "remote_key",
    "remote_token_file",
    "remote_lookup_timeout",
    "remote_sign_key",
    "remote_trusted_keys",
];

/// The settings whose value is a file (made absolute before a command
/// goes to a daemon).
pub const FILE_KEYS: [&str; 6] = [
    "remote_ca",
    "remote_cert",
    "remote_key",
    "remote_token_file",
    "remote_sign_key",
    "remote_trusted_keys",
];

pub fn show(cfg: &RemoteConfig) -> String {
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none".into())
    };
    format!(
        "remote = {}\nremote_upload = {}\nremote_digest = {}\nremote_ca = {}\nremote_cert = {}\nremote_key = {}\nremote_token_file = {}\nremote_lookup_timeout = {}\nremote_sign_key = {}\nremote_trusted_keys = {}\n",
        cfg.url.as_deref().unwrap_or("none"),
        if cfg.upload { "on" } else { "off" },
        match cfg.digest {
            DigestPin::Auto => "auto",
            DigestPin::Sha256 => "sha256",
            DigestPin::Blake3 => "blake3",
        },
        path(&cfg.ca),
        path(&cfg.cert),
        path(&cfg.key),
        path(&cfg.token_file),
        cfg.lookup_timeout_ms
            .map(|ms| format!("{}ms", ms))
            .unwrap_or_else(|| "none".into()),
        path(&cfg.sign_key),
        path(&cfg.trusted_keys),
    )
}

/// Set one remote setting (validated first); the store's `remote.json`.
pub fn set(cache: &Cache, key: &str, value: &str) -> Result<RemoteConfig, CliError> {
    let root = cache.store.root();
    let mut cfg = RemoteConfig::load(root)?;
    let none = value == "none";
    let file = |v: &str| -> Result<Option<std::path::PathBuf>, CliError> {
        if none {
            return Ok(None);
        }
        let p =
            std::fs::canonicalize(v).map_err(|e| CliError::Usage(format!("{key}: {v}: {e}")))?;
        Ok(Some(p))
    };
    match key {
        "remote" => {
            cfg.url = if none {
                None
            } else {
                Some(RemoteUrl::parse(value)?.to_string())
            }
        }
        "remote_upload" => {
            cfg.upload = match value {
                "on" => true,
                "off" => false,
                _ => {
                    return Err(CliError::Usage(format!(
                        "remote_upload: {value:?} is not `on` or `off`"
                    )))
                }
            }
        }
        "remote_digest" => {
            cfg.digest = match value {
                "auto" => DigestPin::Auto,
                "sha256" => DigestPin::Sha256,
                "blake3" => DigestPin::Blake3,
                _ => {
                    return Err(CliError::Usage(format!(
                        "remote_digest: {value:?} is not auto, sha256 or blake3"
                    )))
                }
            }
        }
        "remote_ca" => cfg.ca = file(value)?,
        "remote_cert" => cfg.cert = file(value)?,
        "remote_key" => cfg.key = file(value)?,
        "remote_token_file" => cfg.token_file = file(value)?,
        // NB: checked now, so a bad key file is found when it is set.
        "remote_sign_key" => {
            cfg.sign_key = file(value)?;
            if let Some(p) = &cfg.sign_key {
                dagfs::remote::sign::SignKey::load(p)?;
            }
        }
        "remote_trusted_keys" => {
            cfg.trusted_keys = file(value)?;
            if let Some(p) = &cfg.trusted_keys {
                dagfs::remote::sign::Trusted::load(p)?;
            }
        }
        "remote_lookup_timeout" => {
            cfg.lookup_timeout_ms = if none {
                None
            } else {
                let ms = value
                    .strip_suffix("ms")
                    .and_then(|n| n.parse::<u64>().ok())
                    .or_else(|| {
                        dagfs::index::stats::parse_duration(value)
                            .map(|d| d.as_millis() as u64)
                    })
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        CliError::Usage(format!(
                            "remote_lookup_timeout: {value:?} is not a duration like 500ms or 5s (or `none`)"
                        ))
                    })?;
                Some(ms)
            }
        }
        _ => unreachable!("checked by the caller"),
    }
    cfg.save(root)?;
    Ok(cfg)
}

/// What of the caller's environment the remote reads: the token, the
/// breaker's re-probe interval, how long a blob the server confirmed is
/// trusted to be there.
fn remote_env(io: &Io) -> dagfs::remote::Env {
    let token = (io.env)("DAGFS_REMOTE_TOKEN");
    let reprobe = (io.env)("DAGFS_REMOTE_REPROBE_MS").filter(|v| !v.is_empty());
    let ttl = (io.env)("DAGFS_REMOTE_KNOWN_TTL_MS").filter(|v| !v.is_empty());
    Box::new(move |k: &str| match k {
        "DAGFS_REMOTE_TOKEN" => token.clone(),
        "DAGFS_REMOTE_REPROBE_MS" => reprobe.clone(),
        "DAGFS_REMOTE_KNOWN_TTL_MS" => ttl.clone(),
        _ => None,
    })
}

/// `dagfs remote keygen FILE` (runs in the calling process: it needs no
/// store).
pub fn keygen(file: &std::path::Path, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    let public = dagfs::remote::sign::keygen(file)?;
    writeln!(out, "{public}").map_err(CliError::Output)
}

/// The remote for one run, or None. `flag`: `--remote URL` or
/// `--no-remote` ("none"); else `DAGFS_REMOTE`; else the store's setting.
pub fn for_run(
    cache: &Cache,
    flag: Option<&str>,
    io: &Io,
) -> Result<Option<Arc<Remote>>, CliError> {
    let cfg = RemoteConfig::load(cache.store.root())?;
    let over = over_of(flag, io);
    let env = remote_env(io);
    Ok(Remote::new(cache.store.root(), cfg, over.as_deref(), env)?.map(Arc::new))
}

/// The URL a run's flag or `DAGFS_REMOTE` puts over the store's setting.
fn over_of(flag: Option<&str>, io: &Io) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| (io.env)("DAGFS_REMOTE").filter(|v| !v.is_empty()))
}

/// Whether a run with `flag` (as `for_run`'s) has no remote tier in the
/// store at `root`; false where that cannot be told (a bad setting, which
/// the full path reports).
pub fn none_for_run(root: &std::path::Path, flag: Option<&str>, io: &Io) -> bool {
    let over = over_of(flag, io);
    RemoteConfig::load(root)
        .and_then(|c| c.effective_url(over.as_deref()))
        .is_ok_and(|u| u.is_none())
}

/// After the scheduler: warnings, the uploads (with a progress line; in a
/// daemon uploading to the same remote, handed to its background
/// uploader), the counters into the store's stats, and the summary line.
pub fn after_run(remote: &Remote, cache: &Cache, io: &mut Io, uploader: Option<&Uploader>) {
    let err = &mut *io.err;
    let background = uploader.filter(|u| remote.uploads() && u.serves(&remote.url));
    if let Some(u) = background {
        let queued = dagfs::remote::queue::len(cache.store.root());
        if queued > 0 {
            let _ = writeln!(
                err,
                "remote: {queued} result{} queued; the daemon uploads in the background (`dagfs remote flush` waits)",
                if queued == 1 { "" } else { "s" },
            );
        }
        u.poke();
    } else if remote.uploads() {
        let queued = dagfs::remote::queue::len(cache.store.root());
        if queued > 0 {
            let _ = writeln!(
                err,
                "remote: uploading {queued} result{} to {}",
                if queued == 1 { "" } else { "s" },
                remote.url
            );
            let tty = io.stderr_tty;
            let mut progress = |done: usize, total: usize| {
                if tty {
                    let _ = write!(err, "\r\x1b[Kremote: uploaded {done}/{total}");
                    let _ = err.flush();
                }
            };
            let r = remote.upload(cache, &mut progress);
            if tty {
                let _ = write!(err, "\r\x1b[K");
            }
            match r {
                Ok(r) if r.uploaded == 0 && !r.failed.is_empty() => {
                    let _ = writeln!(
                        err,
                        "remote: {} result{} left queued for `dagfs remote flush`",
                        r.failed.len(),
                        if r.failed.len() == 1 { "" } else { "s" }
                    );
                }
                Ok(r) => {
                    let _ = writeln!(
                        err,
                        "remote: uploaded {} result{} ({} blobs, {} bytes sent; {} blobs already there, {} of them known without asking){}{}",
                        r.uploaded,
                        if r.uploaded == 1 { "" } else { "s" },
                        r.blobs_sent,
                        r.bytes_sent,
                        r.blobs_present,
                        r.blobs_remembered,
                        if r.local_only > 0 {
                            format!("; {} kept local only (a name that is not UTF-8)", r.local_only)
                        } else {
                            String::new()
                        },
                        if r.failed.is_empty() {
                            String::new()
                        } else {
                            format!("; {} left queued for `dagfs remote flush`", r.failed.len())
                        }
                    );
                }
                Err(_) => {
                    let _ = writeln!(
                        err,
                        "remote: {queued} result{} left queued for `dagfs remote flush`",
                        if queued == 1 { "" } else { "s" }
                    );
                }
            }
        }
    }
    for w in remote.take_warnings() {
        let _ = writeln!(err, "dagfs: warning: {w}");
    }
    let _ = writeln!(err, "{}", remote.summary());
    if let Err(e) = remote.persist(cache) {
        let _ = writeln!(
            err,
            "dagfs: warning: cannot record the remote's counters: {e}"
        );
    }
}

fn configured(cache: &Cache, io: &Io) -> Result<Remote, CliError> {
    let cfg = RemoteConfig::load(cache.store.root())?;
    let env_url = (io.env)("DAGFS_REMOTE").filter(|v| !v.is_empty());
    let env = remote_env(io);
    Remote::new(cache.store.root(), cfg, env_url.as_deref(), env)?.ok_or_else(|| {
        CliError::Usage(
            "no remote configured (dagfs config remote grpc://HOST:PORT, or DAGFS_REMOTE)".into(),
        )
    })
}

pub fn run(cmd: RemoteCmd, cache: &Cache, io: &mut Io, ctx: &Ctx) -> Result<(), CliError> {
    if let RemoteCmd::Keygen { file } = &cmd {
        return keygen(file, io.out);
    }
    let remote = configured(cache, io)?;
    let background = ctx
        .uploader
        .as_ref()
        .filter(|u| remote.uploads() && u.serves(&remote.url));
    match cmd {
        RemoteCmd::Keygen { .. } => unreachable!("answered above"),
        RemoteCmd::Status { json } => {
            let st = remote.status();
            let stats = cache.index.stats()?;
            let st = match st {
                Ok(s) => s,
                Err(e) => {
                    if json {
                        let v = serde_json::json!({
                            "server": remote.url.to_string(),
                            "reachable": false,
                            "error": e.to_string(),
                            "queued": dagfs::remote::queue::len(cache.store.root()),
                            "counters": stats.remote,
                        });
                        writeln!(
                            io.out,
                            "{}",
                            serde_json::to_string_pretty(&v).expect("json")
                        )
                        .map_err(CliError::Output)?;
                    }
                    return Err(e.into());
                }
            };
            let hits = stats.hits_by_route.get("remote").copied().unwrap_or(0);
            if json {
                let mut v = serde_json::to_value(&st).expect("status serializes");
                v["reachable"] = true.into();
                v["background"] = background.is_some().into();
                let mut counters = serde_json::to_value(&stats.remote).expect("json");
                counters["hits"] = hits.into();
                v["counters"] = counters;
                writeln!(
                    io.out,
                    "{}",
                    serde_json::to_string_pretty(&v).expect("json")
                )
                .map_err(CliError::Output)?;
                return Ok(());
            }
            let o = &mut *io.out;
            let mut s = format!(
                "server           {}\ninstance         {}\ndigest function  {} (server offers: {})\nac updates       {}\nmax batch        {} bytes\napi              {}\nround trip       {:.1} ms\nupload           {}\nqueued           {}\n",
                st.server,
                if st.instance.is_empty() { "(default)" } else { &st.instance },
                st.digest_function,
                if st.digest_functions.is_empty() { "none listed".to_string() } else { st.digest_functions.join(", ") },
                if st.action_cache_updates { "allowed" } else { "not allowed" },
                st.max_batch_bytes,
                st.api,
                st.rtt_ms,
                if st.upload { "on" } else { "off" },
                st.queued,
            );
            if background.is_some() {
                s += "uploader         the daemon's, in the background\n";
            }
            s += &format!(
                "signs with       {}\ntrusts           {}\n",
                st.signing_key.as_deref().unwrap_or("(unsigned)"),
                match st.trusted_keys {
                    None => "any result (no remote_trusted_keys)".to_string(),
                    Some(n) =>
                        format!("results signed by {n} key{}", if n == 1 { "" } else { "s" }),
                }
            );
            s += &format!("hits             {hits}\n");
            for (k, v) in &stats.remote {
                s += &format!("{:<17}{v}\n", k.replace('_', " "));
            }
            o.write_all(s.as_bytes()).map_err(CliError::Output)
        }
        RemoteCmd::Flush => {
            let queued = dagfs::remote::queue::len(cache.store.root());
            let err = &mut *io.err;
            let _ = writeln!(
                err,
                "remote: uploading {queued} queued result{} to {}",
                if queued == 1 { "" } else { "s" },
                remote.url
            );
            let r = match background {
                // NB: the daemon's uploader does it (one uploader per store).
                Some(u) => u.flush().map_err(|what| {
                    CliError::Remote(dagfs::remote::RemoteError::Server {
                        url: remote.url.to_string(),
                        what,
                    })
                }),
                None => remote.upload(cache, &mut |_, _| {}).map_err(CliError::from),
            };
            let _ = remote.persist(cache);
            cache.flush()?;
            let r = r?;
            let _ = writeln!(
                err,
                "remote: uploaded {} ({} blobs, {} bytes sent; {} blobs already there, {} of them known without asking; {} dropped, {} kept local only)",
                r.uploaded, r.blobs_sent, r.bytes_sent, r.blobs_present, r.blobs_remembered, r.dropped, r.local_only
            );
            if r.failed.is_empty() {
                return Ok(());
            }
            for (k, why) in &r.failed {
                let _ = writeln!(err, "remote: not uploaded: {k}: {why}");
            }
            Err(CliError::Remote(dagfs::remote::RemoteError::Server {
                url: remote.url.to_string(),
                what: format!(
                    "{} result(s) could not be uploaded; they stay queued",
                    r.failed.len()
                ),
            }))
        }
    }
}
