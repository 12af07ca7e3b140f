//! The client side of the socket: CLI commands find a running daemon
//! through `<store>/daemon.sock` and run there; without one they run
//! embedded.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::protocol::{self, FrameError, Hello, Request, PROTOCOL};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("daemon at {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("daemon refused: {0}")]
    Refused(String),
    #[error("daemon protocol error: {0}")]
    Protocol(#[from] FrameError),
}

pub struct Client {
    stream: UnixStream,
    pub server: Hello,
}

pub fn agent() -> String {
    format!("dagfs {}", env!("CARGO_PKG_VERSION"))
}

/// Connect to the daemon serving `store`, if one runs. A missing socket or
/// one nobody listens on (a daemon that died) means "no daemon".
pub fn connect(store: &Path) -> Result<Option<Client>, ClientError> {
    let sock = store.join("daemon.sock");
    let mut stream = match UnixStream::connect(&sock) {
        Ok(s) => s,
        // NB: ENOTDIR: the store is not a directory, so no daemon serves
        // it; opening it says what is wrong.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(ClientError::Io {
                path: sock.display().to_string(),
                source: e,
            })
        }
    };
    let io_err = |e| ClientError::Io {
        path: sock.display().to_string(),
        source: e,
    };
    let hello = Hello {
        protocol: PROTOCOL,
        agent: agent(),
        pid: None,
        mountpoint: None,
    };
    if let Err(e) = protocol::write_json(&mut stream, protocol::HELLO, &hello) {
        // A daemon that refused us without reading our HELLO (older ones
        // did) has still written why before it closed: report that.
        return match protocol::read_frame(&mut stream) {
            Ok((protocol::ERROR, p)) => Err(ClientError::Refused(
                String::from_utf8_lossy(&p).into_owned(),
            )),
            _ => Err(io_err(e)),
        };
    }
    match protocol::read_frame(&mut stream)? {
        (protocol::HELLO, p) => Ok(Some(Client {
            stream,
            server: protocol::parse_json("hello", &p)?,
        })),
        (protocol::ERROR, p) => Err(ClientError::Refused(
            String::from_utf8_lossy(&p).into_owned(),
        )),
        (k, _) => Err(FrameError::Kind(k).into()),
    }
}

impl Client {
    /// Run one request; its output goes to `out`/`err`. Returns its exit code.
    pub fn request(
        &mut self,
        req: &Request,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<i32, ClientError> {
        protocol::write_json(&mut self.stream, protocol::REQUEST, req).map_err(|e| {
            ClientError::Io {
                path: "socket".into(),
                source: e,
            }
        })?;
        loop {
            match protocol::read_frame(&mut self.stream)? {
                (protocol::STDOUT, p) => {
                    // NB: a closed stdout (`| head`) must not stop the request.
                    let _ = out.write_all(&p);
                }
                (protocol::STDERR, p) => {
                    let _ = err.write_all(&p);
                }
                (protocol::EXIT, p) => {
                    let _ = out.flush();
                    let code: [u8; 4] =
                        p.as_slice().try_into().map_err(|_| FrameError::Payload {
                            what: "exit",
                            reason: "not 4 bytes".into(),
                        })?;
                    return Ok(i32::from_le_bytes(code));
                }
                (protocol::ERROR, p) => {
                    return Err(ClientError::Refused(
                        String::from_utf8_lossy(&p).into_owned(),
                    ))
                }
                (k, _) => return Err(FrameError::Kind(k).into()),
            }
        }
    }

    /// Ask the daemon to stop.
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        protocol::write_frame(&mut self.stream, protocol::SHUTDOWN, &[]).map_err(|e| {
            ClientError::Io {
                path: "socket".into(),
                source: e,
            }
        })?;
        match protocol::read_frame(&mut self.stream) {
            Ok((protocol::ERROR, p)) => Err(ClientError::Refused(
                String::from_utf8_lossy(&p).into_owned(),
            )),
            _ => Ok(()),
        }
    }
}
