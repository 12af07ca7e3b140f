//! The HTTP server of the web view: `tiny_http` (synchronous, like the rest
//! of dagfs: no async runtime for a local page; small, with few
//! dependencies of its own; it hands over whole requests, and
//! `recv_timeout`/`unblock` let a stop flag end it). One thread answers
//! requests in turn.
//!
//! Guarantees: bound to loopback unless a non-loopback address was asked
//! for, and then only with a token; with a token, every request must
//! carry it (`Authorization: Bearer T`, the cookie it sets, or `?token=T`
//! once, which sets the cookie). On loopback, a request naming another
//! `Host` is refused (a page elsewhere cannot reach it through DNS
//! rebinding). Only GET and HEAD. Pages get a content security policy
//! that allows only our own script; files from the store are served as
//! text or bytes in a sandbox, never as HTML. A page that panics answers
//! 500 and the server goes on; a token that a cookie could not carry as
//! it is is refused at start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dagfs::cache::{Cache, CacheError};
use dagfs::index::CachePolicy;
use dagfs::store::StoreError;

use super::html::{esc, unurl};
use super::live::Live;
use super::pages::{self, Reply};
use super::UiError;

/// What the pages read.
pub enum Source {
    /// The daemon's cache (runs through the daemon change it), and the
    /// runs in progress in it.
    Shared(Arc<Cache>, Arc<Live>),
    /// A store no daemon serves: opened for each request and closed
    /// after it, so `dagfs run` and the other commands are held up for
    /// one request at most. While another process holds the store, the
    /// last copy of a page is served with a note (`Stale`).
    Store(PathBuf),
}

/// Parse `--listen`: `IP:PORT` (`[::1]:PORT`), or `localhost:PORT`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, UiError> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| UiError::Usage(format!("--listen {s}: the port is not a number")))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        UiError::Usage(format!(
            "--listen {s}: want IP:PORT (127.0.0.1:8470, [::1]:8470, 0.0.0.0:8470) or localhost:PORT"
        ))
    })
}

/// Bind, refusing a non-loopback address without a token.
pub fn bind(listen: &str, token: Option<&str>) -> Result<(tiny_http::Server, SocketAddr), UiError> {
    let addr = parse_listen(listen)?;
    if !addr.ip().is_loopback() && token.is_none_or(|t| t.is_empty()) {
        return Err(UiError::Usage(format!(
            "--listen {listen} is not a loopback address: anyone who can reach it could read the store; give a token (--token T or DAGFS_UI_TOKEN=T), which every request must then carry"
        )));
    }
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        // NB: it goes into a cookie and is compared as typed: no character
        // a header or a cookie would need quoted.
        if let Some(c) = t
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-._~+/=".contains(*c)))
        {
            return Err(UiError::Usage(format!(
                "the token may hold only letters, digits and -._~+/= (it has {c:?})"
            )));
        }
    }
    let server = tiny_http::Server::http(addr)
        .map_err(|e| UiError::Listen(format!("cannot listen on {addr}: {e}")))?;
    let bound = match server.server_addr() {
        tiny_http::ListenAddr::IP(a) => a,
        #[allow(unreachable_patterns)]
        _ => addr,
    };
    Ok((server, bound))
}

pub fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// Answer requests until `stop` is set (checked every 250 ms) or the
/// server is unblocked.
pub fn serve(
    server: &tiny_http::Server,
    addr: SocketAddr,
    source: &Source,
    token: Option<&str>,
    stop: &AtomicBool,
) {
    let mut stale: HashMap<String, Reply> = HashMap::new();
    let gate = Gate {
        addr,
        token: token.filter(|t| !t.is_empty()).map(str::to_string),
    };
    while !stop.load(Ordering::Relaxed) {
        let req = match server.recv_timeout(Duration::from_millis(250)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => break,
        };
        let (reply, cookie) = match gate.check(&req) {
            Err(r) => (r, None),
            // NB: a bug in a page answers 500; the server stays up.
            Ok(cookie) => (
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    answer(req.url(), source, &mut stale)
                }))
                .unwrap_or_else(|_| {
                    Reply::error(500, "internal error: this page panicked (a bug)")
                }),
                cookie,
            ),
        };
        let head = req.method() == &tiny_http::Method::Head;
        let _ = req.respond(response(reply, cookie, head));
    }
}

struct Gate {
    addr: SocketAddr,
    token: Option<String>,
}

fn header<'a>(req: &'a tiny_http::Request, name: &str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Compare without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

const COOKIE: &str = "dagfs_ui_token";

impl Gate {
    /// Ok(Some(token)): a good token came in the query (set the cookie).
    fn check(&self, req: &tiny_http::Request) -> Result<Option<String>, Reply> {
        if !matches!(
            req.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        ) {
            return Err(Reply::error(405, "only GET and HEAD"));
        }
        if self.addr.ip().is_loopback() {
            let host = header(req, "Host").unwrap_or("");
            let port = self.addr.port();
            let ok = [
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
                self.addr.to_string(),
            ]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host));
            if !ok {
                return Err(Reply::error(
                    421,
                    &format!("this server answers only as {}", self.addr),
                ));
            }
        }
        let Some(token) = &self.token else {
            return Ok(None);
        };
        if let Some(b) = header(req, "Authorization").and_then(|v| v.strip_prefix("Bearer ")) {
            if same(b.trim(), token) {
                return Ok(None);
            }
        }
        if let Some(c) = header(req, "Cookie") {
            for part in c.split(';') {
                if let Some(v) = part
                    .trim()
                    .strip_prefix(COOKIE)
                    .and_then(|v| v.strip_prefix('='))
                {
                    if same(v, token) {
                        return Ok(None);
                    }
                }
            }
        }
        let query = req.url().split_once('?').map_or("", |(_, q)| q);
        for kv in query.split('&') {
            if let Some(v) = kv.strip_prefix("token=") {
                if unurl(v).is_some_and(|v| same(&v, token)) {
                    return Ok(Some(token.clone()));
                }
            }
        }
        Err(Reply::error(
            401,
            "this server needs its token: open it once with ?token=T, or send Authorization: Bearer T",
        ))
    }
}

fn response(
    r: Reply,
    cookie: Option<String>,
    head: bool,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let h = |k: &str, v: &str| {
        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("header")
    };
    let csp = if r.raw {
        "default-src 'none'; sandbox"
    } else {
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    };
    let body = if head { Vec::new() } else { r.body };
    let mut resp = tiny_http::Response::from_data(body)
        .with_status_code(r.status)
        .with_header(h("Content-Type", r.ctype))
        .with_header(h("Cache-Control", "no-store"))
        .with_header(h("X-Content-Type-Options", "nosniff"))
        .with_header(h("Referrer-Policy", "no-referrer"))
        .with_header(h("X-Frame-Options", "DENY"))
        .with_header(h("Content-Security-Policy", csp));
    if r.ctype == "application/octet-stream" {
        resp = resp.with_header(h("Content-Disposition", "attachment"));
    }
    if let Some(t) = cookie {
        // NB: the token is checked to be what we were given; it holds no
        // `;` a user could smuggle in beyond that.
        resp = resp.with_header(h(
            "Set-Cookie",
            &format!("{COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/"),
        ));
    }
    resp
}

/// What a URL asks for.
enum Route {
    Dag(Option<u64>),
    Runs,
    Task(u64, String),
    File(String, Vec<String>),
    Stats,
    Syncs,
    GraphJson(Option<u64>),
    RunsJson,
    TaskJson(u64, String),
    StatsJson,
    SyncsJson,
    State,
}

fn route(url: &str) -> Result<Route, Reply> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut parts = Vec::new();
    for p in path.split('/').filter(|p| !p.is_empty()) {
        parts.push(unurl(p).ok_or_else(|| Reply::error(400, "bad percent-encoding in the URL"))?);
    }
    let run_q = || -> Result<Option<u64>, Reply> {
        match query.split('&').find_map(|kv| kv.strip_prefix("run=")) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Reply::json_error(400, &format!("run={v}: not a run id"))),
        }
    };
    let id = |s: &str| -> Result<u64, Reply> {
        s.parse()
            .map_err(|_| Reply::error(404, &format!("`{s}` is not a run id")))
    };
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(match p.as_slice() {
        [] => Route::Dag(None),
        ["runs"] => Route::Runs,
        ["runs", r] => Route::Dag(Some(id(r)?)),
        ["task", r, t] => Route::Task(id(r)?, t.to_string()),
        ["file", key, rest @ ..] => Route::File(
            key.to_string(),
            rest.iter().map(|s| s.to_string()).collect(),
        ),
        ["stats"] => Route::Stats,
        ["syncs"] => Route::Syncs,
        ["api", "graph"] => Route::GraphJson(run_q()?),
        ["api", "runs"] => Route::RunsJson,
        ["api", "task", r, t] => Route::TaskJson(id(r)?, t.to_string()),
        ["api", "stats"] => Route::StatsJson,
        ["api", "syncs"] => Route::SyncsJson,
        ["api", "state"] => Route::State,
        _ => return Err(Reply::error(404, &format!("no page {path}"))),
    })
}

fn answer_with(cache: &Cache, live: Option<&Live>, r: &Route) -> Reply {
    let res = match r {
        Route::Dag(id) => pages::dag(cache, live, *id),
        Route::Runs => pages::runs(cache),
        Route::Task(id, t) => pages::task(cache, *id, t),
        Route::File(k, p) => pages::file(cache, k, p),
        Route::Stats => pages::stats(cache),
        Route::Syncs => pages::syncs(cache),
        Route::GraphJson(id) => pages::graph_json(cache, *id),
        Route::RunsJson => pages::runs_json(cache),
        Route::TaskJson(id, t) => pages::task_json(cache, *id, t),
        Route::StatsJson => pages::stats_json(cache),
        Route::SyncsJson => pages::syncs_json(cache),
        Route::State => pages::state(cache, live),
    };
    res.unwrap_or_else(|e| e)
}

fn is_json(r: &Route) -> bool {
    matches!(
        r,
        Route::GraphJson(_)
            | Route::RunsJson
            | Route::TaskJson(..)
            | Route::StatsJson
            | Route::SyncsJson
            | Route::State
    )
}

/// The store is held by another process: `holder` says who.
fn busy(url: &str, r: &Route, holder: &str, stale: &HashMap<String, Reply>) -> Reply {
    let mut note = format!("the store is in use by {holder}; this page updates when it is free");
    if holder.contains(" mount") {
        note += " (a daemon took the store: run `dagfs ui` again and the daemon serves this view, live)";
    }
    if matches!(r, Route::State) {
        return Reply::json(&serde_json::json!({
            "version": "busy", "busy": true, "note": note,
        }));
    }
    if is_json(r) {
        return Reply::json_error(503, &note);
    }
    match stale.get(url) {
        Some(old) => {
            let mut r = old.clone();
            let text = String::from_utf8_lossy(&r.body).replacen(
                "<!--banner-->",
                &format!(
                    "<p class=\"banner\" id=\"busy\">{} (shown: this page as it was last read)</p>",
                    esc(&note)
                ),
                1,
            );
            r.body = text.into_bytes();
            r
        }
        None => {
            let mut r = Reply::error(503, &note);
            r.status = 503;
            r
        }
    }
}

fn answer(url: &str, source: &Source, stale: &mut HashMap<String, Reply>) -> Reply {
    if url.split('?').next() == Some("/live.js") {
        return Reply {
            status: 200,
            ctype: "text/javascript; charset=utf-8",
            body: pages::LIVE_JS.as_bytes().to_vec(),
            raw: false,
        };
    }
    let r = match route(url) {
        Ok(r) => r,
        Err(e) => return e,
    };
    match source {
        Source::Shared(cache, live) => answer_with(cache, Some(live), &r),
        Source::Store(dir) => {
            let opened = Cache::open_waiting(dir, CachePolicy::default(), &mut |holder| {
                std::ops::ControlFlow::Break(holder.to_string())
            });
            match opened {
                Ok(cache) => {
                    let reply = answer_with(&cache, None, &r);
                    drop(cache);
                    if reply.status == 200 && reply.ctype.starts_with("text/html") {
                        if stale.len() >= 256 {
                            stale.clear();
                        }
                        stale.insert(url.to_string(), reply.clone());
                    }
                    reply
                }
                Err(CacheError::Store(StoreError::GaveUp { reason, .. })) => {
                    busy(url, &r, &reason, stale)
                }
                Err(e) => Reply::error(500, &format!("opening the store {}: {e}", dir.display())),
            }
        }
    }
}

/// The web views a daemon serves (`dagfs mount --ui`, or `dagfs ui` sent
/// to it), until it stops.
#[derive(Default)]
pub struct Servers {
    running: Mutex<Vec<Running>>,
    live: Arc<Live>,
}

struct Running {
    asked: String,
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Servers {
    /// The runs in progress, which every web view of the daemon shows.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Serve `cache` on `listen` (or say where it already is); returns the
    /// URL.
    pub fn start(
        &self,
        cache: Arc<Cache>,
        listen: &str,
        token: Option<String>,
    ) -> Result<(String, bool), UiError> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = parse_listen(listen)?;
        if let Some(r) = running
            .iter()
            .find(|r| r.asked == listen || (wanted.port() != 0 && r.addr == wanted))
        {
            return Ok((url_of(r.addr), false));
        }
        let (server, addr) = bind(listen, token.as_deref())?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, live) = (server.clone(), stop.clone(), self.live.clone());
        let thread = std::thread::Builder::new()
            .name("dagfs-ui".into())
            .spawn(move || {
                serve(
                    &s,
                    addr,
                    &Source::Shared(cache, live),
                    token.as_deref(),
                    &st,
                )
            })
            .map_err(|e| UiError::Listen(format!("starting the web view: {e}")))?;
        running.push(Running {
            asked: listen.to_string(),
            addr,
            server,
            stop,
            thread: Some(thread),
        });
        Ok((url_of(addr), true))
    }

    pub fn stop_all(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for r in running.iter_mut() {
            r.stop.store(true, Ordering::Relaxed);
            r.server.unblock();
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
        running.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_token() {
        let e = bind("0.0.0.0:0", None).err().expect("refused");
        assert!(
            matches!(e, UiError::Usage(ref m) if m.contains("token")),
            "{e}"
        );
        assert!(matches!(
            bind("0.0.0.0:0", Some("")),
            Err(UiError::Usage(_))
        ));
        // A token that a cookie or a header could not carry as it is.
        for bad in ["a b", "a;b", "a\nb", "é"] {
            assert!(
                matches!(bind("127.0.0.1:0", Some(bad)), Err(UiError::Usage(ref m)) if m.contains("token")),
                "{bad:?}"
            );
        }
        assert!(matches!(parse_listen("nonsense"), Err(UiError::Usage(_))));
        assert_eq!(
            parse_listen("localhost:80").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 80))
        );
    }

    #[test]
    fn routes() {
        assert!(matches!(route("/"), Ok(Route::Dag(None))));
        assert!(matches!(route("/runs/3"), Ok(Route::Dag(Some(3)))));
        assert!(matches!(route("/task/3/a%2Bb"), Ok(Route::Task(3, ref t)) if t == "a+b"));
        assert!(matches!(
            route("/api/graph?run=4"),
            Ok(Route::GraphJson(Some(4)))
        ));
        assert!(matches!(route("/file/ab/x/y"), Ok(Route::File(_, ref p)) if p.len() == 2));
        assert_eq!(route("/nope").err().map(|r| r.status), Some(404));
        assert_eq!(route("/runs/x").err().map(|r| r.status), Some(404));
        assert_eq!(route("/task/1/%zz").err().map(|r| r.status), Some(400));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
