//! The socket server: one thread per connection (session), requests run by
//! a handler the CLI supplies (so the daemon runs exactly the code embedded
//! mode runs), graceful shutdown that lets running requests finish.
//!
//! Only the store owner's uid may connect, and never a process of a task
//! this daemon is running (`exec::runner::task_of`): a task could otherwise
//! gc, re-run or stop the daemon it runs under, or deadlock it.

use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::protocol::{self, Hello, Request, PROTOCOL};
use super::Gauges;

/// Runs one request: (session id, request, stdout, stderr) → exit code.
pub type Handler = dyn Fn(u64, Request, &mut dyn Write, &mut dyn Write) -> i32 + Send + Sync;
/// Called when a session ends (its leases are released).
pub type OnEnd = dyn Fn(u64) + Send + Sync;

pub struct ServerConfig {
    pub socket: PathBuf,
    pub hello: Hello,
    pub handler: Arc<Handler>,
    pub on_session_end: Arc<OnEnd>,
    pub gauges: Arc<Gauges>,
    /// Signalled when a client asks the daemon to stop.
    pub on_shutdown: crossbeam::channel::Sender<()>,
}

/// Connections served at once; one more is refused at once (each holds a
/// thread: 1,000 idle connections held 1,016 threads).
pub const MAX_CONNECTIONS: u64 = 128;
/// A connection that has not finished its HELLO after this long is closed.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

struct Shared {
    cfg: ServerConfig,
    /// Connections being served (see `MAX_CONNECTIONS`).
    open: AtomicU64,
    stopping: AtomicBool,
    /// Requests running now.
    active: Mutex<u64>,
    idle: Condvar,
}

pub struct Server {
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Bind the socket (0600; a stale one is replaced: the caller holds the
    /// store lock, so no live daemon owns it) and start accepting.
    pub fn start(cfg: ServerConfig) -> io::Result<Server> {
        match std::fs::remove_file(&cfg.socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&cfg.socket)?;
        std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))?;
        let shared = Arc::new(Shared {
            cfg,
            open: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            active: Mutex::new(0),
            idle: Condvar::new(),
        });
        let next_id = AtomicU64::new(1);
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("dagfs-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if sh.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = conn else { continue };
                    if sh.open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        sh.open.fetch_sub(1, Ordering::SeqCst);
                        // NB: one small frame: the socket buffer takes it.
                        let _ = stream.set_write_timeout(Some(std::time::Duration::from_millis(100)));
                        refuse(&mut stream, &format!("refused: the daemon serves {MAX_CONNECTIONS} connections at most; try again when one ends"));
                        continue;
                    }
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    let sh = sh.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("dagfs-session-{id}"))
                        .spawn({
                            let sh = sh.clone();
                            move || {
                                // NB: a client that connects and says
                                // nothing is dropped, not kept.
                                let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
                                let g = &sh.cfg.gauges;
                                g.sessions.fetch_add(1, Ordering::SeqCst);
                                g.sessions_total.fetch_add(1, Ordering::SeqCst);
                                session(&sh, id, stream);
                                (sh.cfg.on_session_end)(id);
                                g.sessions.fetch_sub(1, Ordering::SeqCst);
                                sh.open.fetch_sub(1, Ordering::SeqCst);
                            }
                        });
                    if spawned.is_err() {
                        sh.open.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })?;
        Ok(Server {
            shared,
            accept: Some(accept),
        })
    }

    /// Stop accepting, wait for running requests to finish, remove the
    /// socket.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.shared.cfg.socket);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let mut active = self.shared.active.lock().unwrap_or_else(|p| p.into_inner());
        while *active > 0 {
            active = self
                .shared
                .idle
                .wait(active)
                .unwrap_or_else(|p| p.into_inner());
        }
        let _ = std::fs::remove_file(&self.shared.cfg.socket);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.stop();
        }
    }
}

/// The uid and pid of the peer, from SO_PEERCRED (as of its connect).
fn peer(s: &UnixStream) -> io::Result<(u32, i32)> {
    let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok((cred.uid(), cred.pid()))
}

fn refuse(stream: &mut UnixStream, why: &str) {
    let _ = protocol::write_frame(stream, protocol::ERROR, why.as_bytes());
}

/// Why this peer may not use the socket, if it may not.
fn refusal(stream: &UnixStream) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    match peer(stream) {
        Ok((uid, pid)) if uid == me => {
            let group = crate::exec::runner::task_of(pid)?;
            let whose = if group > 0 {
                format!("belongs to task process group {group}")
            } else {
                "is gone, and tasks are running".into()
            };
            Some(format!("refused: pid {pid} {whose}: a task run by the daemon may not use its socket (read dependencies under $DAGFS_IN)"))
        }
        Ok((uid, _)) => Some(format!(
            "refused: uid {uid} is not the store owner (uid {me})"
        )),
        Err(e) => Some(format!("refused: cannot read peer credentials: {e}")),
    }
}

/// How long a refused peer has to send its HELLO.
const REFUSED_HELLO_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn session(sh: &Shared, id: u64, mut stream: UnixStream) {
    // NB: the HELLO is read before any refusal: closed with it unread, the
    // client's write of it fails (broken pipe) and it never sees why.
    let why = refusal(&stream);
    if why.is_some() {
        let _ = stream.set_read_timeout(Some(REFUSED_HELLO_WAIT));
    }
    let first = protocol::read_frame(&mut stream);
    if let Some(why) = why {
        return refuse(&mut stream, &why);
    }
    match first {
        Ok((protocol::HELLO, p)) => match protocol::parse_json::<Hello>("hello", &p) {
            Ok(h) if h.protocol == PROTOCOL => {}
            Ok(h) => {
                return refuse(
                    &mut stream,
                    &format!("protocol version {} is not supported: this daemon speaks version {PROTOCOL} ({})", h.protocol, sh.cfg.hello.agent),
                )
            }
            Err(e) => return refuse(&mut stream, &e.to_string()),
        },
        Ok(_) => return refuse(&mut stream, "the first frame must be HELLO"),
        Err(_) => return,
    }
    if protocol::write_json(&mut stream, protocol::HELLO, &sh.cfg.hello).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(None);
    loop {
        let (kind, payload) = match protocol::read_frame(&mut stream) {
            Ok(f) => f,
            Err(_) => return, // closed (or garbage): the session ends.
        };
        match kind {
            protocol::REQUEST => {
                let req: Request = match protocol::parse_json("request", &payload) {
                    Ok(r) => r,
                    Err(e) => return refuse(&mut stream, &e.to_string()),
                };
                {
                    let mut active = sh.active.lock().unwrap_or_else(|p| p.into_inner());
                    if sh.stopping.load(Ordering::SeqCst) {
                        drop(active);
                        return refuse(&mut stream, "the daemon is shutting down");
                    }
                    *active += 1;
                }
                let code = run_request(sh, id, req, &stream);
                {
                    let mut active = sh.active.lock().unwrap_or_else(|p| p.into_inner());
                    *active -= 1;
                    sh.idle.notify_all();
                }
                if protocol::write_frame(&mut stream, protocol::EXIT, &code.to_le_bytes()).is_err()
                {
                    return;
                }
            }
            protocol::SHUTDOWN => {
                let _ = sh.cfg.on_shutdown.send(());
                let _ = protocol::write_frame(&mut stream, protocol::EXIT, &0i32.to_le_bytes());
                return;
            }
            _ => return refuse(&mut stream, &format!("unexpected frame kind {kind}")),
        }
    }
}

fn run_request(sh: &Shared, id: u64, req: Request, stream: &UnixStream) -> i32 {
    let Ok(s1) = stream.try_clone() else { return 8 };
    let Ok(s2) = stream.try_clone() else { return 8 };
    let lock = Arc::new(Mutex::new(()));
    let mut out = BufWriter::with_capacity(
        64 << 10,
        FrameWriter {
            stream: s1,
            kind: protocol::STDOUT,
            lock: lock.clone(),
        },
    );
    let mut err = BufWriter::with_capacity(
        8 << 10,
        FrameWriter {
            stream: s2,
            kind: protocol::STDERR,
            lock,
        },
    );
    // NB: a panicking command must not take the session thread (and with it
    // the session's lease bookkeeping) down.
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (sh.cfg.handler)(id, req, &mut out, &mut err)
    }))
    .unwrap_or_else(|_| {
        let _ = writeln!(
            err,
            "dagfs: internal error: the command panicked in the daemon (see its log)"
        );
        70
    });
    // The client may have gone away; the work is done either way.
    let _ = out.flush();
    let _ = err.flush();
    code
}

/// Writes become STDOUT or STDERR frames.
struct FrameWriter {
    stream: UnixStream,
    kind: u8,
    lock: Arc<Mutex<()>>,
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(1 << 20);
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        protocol::write_frame(&mut self.stream, self.kind, &buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
