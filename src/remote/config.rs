//! The remote tier's settings: the server URL (`grpc://HOST:PORT[/INSTANCE]`
//! or `grpcs://…`), whether this store uploads, TLS files and the auth
//! token's source. Kept in `<store>/remote.json` (tmp, fsync, rename), the
//! one file of the remote tier beside `FORMAT`; a run may override the URL
//! (`--remote`, `--no-remote`, `DAGFS_REMOTE`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::RemoteError;

/// A parsed remote address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// REAPI instance name ("" = the default instance).
    pub instance: String,
}

impl RemoteUrl {
    /// Parse `grpc://HOST:PORT[/INSTANCE]` or `grpcs://HOST:PORT[/INSTANCE]`.
    pub fn parse(s: &str) -> Result<RemoteUrl, RemoteError> {
        let bad = |why: &str| RemoteError::BadUrl {
            url: s.to_string(),
            why: why.to_string(),
        };
        let (tls, rest) = if let Some(r) = s.strip_prefix("grpc://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("grpcs://") {
            (true, r)
        } else {
            return Err(bad("it must start with grpc:// or grpcs://"));
        };
        let (hostport, instance) = match rest.split_once('/') {
            Some((h, i)) => (h, i.trim_end_matches('/')),
            None => (rest, ""),
        };
        if instance.split('/').any(|c| c == "." || c == "..")
            || instance.contains("//")
            || instance.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(bad("the instance name has an empty, `.` or `..` component, a space or a control character"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| bad("an IPv6 host is written [ADDR]:PORT"))?;
            (format!("[{h}]"), p)
        } else {
            let (h, p) = hostport
                .rsplit_once(':')
                .ok_or_else(|| bad("it has no port (HOST:PORT)"))?;
            (h.to_string(), p)
        };
        if host.is_empty() || host.contains('@') || host.contains('?') || host.contains('#') {
            return Err(bad("the host is empty or not a plain host name"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        Ok(RemoteUrl {
            tls,
            host,
            port,
            instance: instance.to_string(),
        })
    }

    /// The HTTP/2 endpoint tonic connects to.
    pub fn endpoint(&self) -> String {
        format!(
            "{}://{}:{}",
            if self.tls { "https" } else { "http" },
            self.host,
            self.port
        )
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            if self.tls { "grpcs" } else { "grpc" },
            self.host,
            self.port
        )?;
        if !self.instance.is_empty() {
            write!(f, "/{}", self.instance)?;
        }
        Ok(())
    }
}

/// Which digest function to use with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestPin {
    /// BLAKE3 if the server offers it, else SHA-256.
    #[default]
    Auto,
    Sha256,
    Blake3,
}

/// The store's remote settings (`<store>/remote.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteConfig {
    /// None: no remote.
    pub url: Option<String>,
    /// Upload this store's results (off: read only).
    pub upload: bool,
    pub digest: DigestPin,
    /// PEM file of the CA that signs the server's certificate (grpcs).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key (mTLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A file holding the bearer token (its content is never printed).
    /// `DAGFS_REMOTE_TOKEN` overrides it.
    pub token_file: Option<PathBuf>,
    /// GetActionResult's deadline on a local miss (default
    /// `client::LOOKUP_DEADLINE`).
    pub lookup_timeout_ms: Option<u64>,
    /// The private key this store signs its uploads with (`sign`).
    pub sign_key: Option<PathBuf>,
    /// Public keys, one a line: when set, only results signed by one of
    /// them are accepted.
    pub trusted_keys: Option<PathBuf>,
}

pub const FILE: &str = "remote.json";

impl RemoteConfig {
    pub fn load(store: &Path) -> Result<RemoteConfig, RemoteError> {
        let p = store.join(FILE);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RemoteError::Config {
                path: p,
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RemoteConfig::default()),
            Err(e) => Err(RemoteError::Io { path: p, source: e }),
        }
    }

    /// Write whole: `tmp/remote.json-<pid>`, fsync, rename, fsync of the root.
    pub fn save(&self, store: &Path) -> Result<(), RemoteError> {
        use std::io::Write;
        let dst = store.join(FILE);
        let tmp = store
            .join("tmp")
            .join(format!("{FILE}-{}", std::process::id()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RemoteError::Io { path, source }
        };
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let body = serde_json::to_vec_pretty(self).expect("config serializes");
        f.write_all(&body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        std::fs::File::open(store)
            .and_then(|d| d.sync_all())
            .map_err(io(store))?;
        Ok(())
    }

    /// The URL in force: `over` (a run's `--remote`/`--no-remote` or
    /// `DAGFS_REMOTE`; `none` = no remote) else the stored one.
    pub fn effective_url(&self, over: Option<&str>) -> Result<Option<RemoteUrl>, RemoteError> {
        match over.or(self.url.as_deref()) {
            None | Some("none") | Some("") => Ok(None),
            Some(u) => RemoteUrl::parse(u).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_urls() {
        let u = RemoteUrl::parse("grpc://127.0.0.1:50051").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.instance.as_str()),
            (false, "127.0.0.1", 50051, "")
        );
        let u = RemoteUrl::parse("grpcs://cache.example:443/main/ci").unwrap();
        assert_eq!((u.tls, u.port, u.instance.as_str()), (true, 443, "main/ci"));
        assert_eq!(u.to_string(), "grpcs://cache.example:443/main/ci");
        assert_eq!(u.endpoint(), "https://cache.example:443");
        let u = RemoteUrl::parse("grpc://[::1]:9092/x").unwrap();
        assert_eq!(u.endpoint(), "http://[::1]:9092");
    }

    #[test]
    fn rejects_bad_urls_naming_the_problem() {
        for (url, why) in [
            ("http://h:1", "grpc://"),
            ("grpc://h", "no port"),
            ("grpc://h:0", "port"),
            ("grpc://h:99999", "port"),
            ("grpc://:80", "host"),
            ("grpc://h:80/a/../b", "instance"),
            ("grpc://u@h:80", "host"),
        ] {
            let e = RemoteUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(url), "{url}: {e}");
        }
    }
}
