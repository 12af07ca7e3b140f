//! The daemon's socket protocol (`<store>/daemon.sock`, a Unix stream
//! socket, mode 0600; peers of another uid are refused via SO_PEERCRED).
//!
//! ```text
//! frame   := len u32le | kind u8 | payload[len - 1]      (len ≤ MAX_FRAME)
//! kind 1  HELLO     JSON Hello; the client's first frame, and the server's reply
//! kind 2  REQUEST   JSON Request: one CLI command to run as if embedded
//! kind 3  STDOUT    raw bytes for the client's stdout
//! kind 4  STDERR    raw bytes for the client's stderr
//! kind 5  EXIT      i32le exit code; the request is done
//! kind 6  ERROR     UTF-8 text: the server refuses (e.g. version mismatch)
//! kind 7  SHUTDOWN  empty: stop the daemon (finish in-flight work, flush, unmount)
//! ```
//!
//! A connection is a session: it sends HELLO, then any number of REQUESTs
//! (each answered by STDOUT/STDERR frames and one EXIT) or one SHUTDOWN. The
//! server answers a HELLO whose `protocol` differs from `PROTOCOL` with an
//! ERROR naming both versions and closes the connection.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

pub const PROTOCOL: u32 = 1;
/// Largest frame accepted (a pipeline's environment fits easily).
pub const MAX_FRAME: u32 = 64 << 20;

pub const HELLO: u8 = 1;
pub const REQUEST: u8 = 2;
pub const STDOUT: u8 = 3;
pub const STDERR: u8 = 4;
pub const EXIT: u8 = 5;
pub const ERROR: u8 = 6;
pub const SHUTDOWN: u8 = 7;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// `dagfs <version>` of the sender.
    pub agent: String,
    /// Server only: its pid and the mountpoint it serves.
    pub pid: Option<u32>,
    pub mountpoint: Option<String>,
}

/// One CLI command, run by the daemon with the client's context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The parsed command (the CLI's own type, as JSON; paths absolute).
    pub command: serde_json::Value,
    pub cwd: String,
    /// The client's environment (tasks see its declared vars, as embedded).
    pub env: Vec<(String, String)>,
    /// Whether the client's stderr is a terminal (progress display).
    pub stderr_tty: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(u32),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("bad {what} frame: {reason}")]
    Payload { what: &'static str, reason: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len() + 1).map_err(|_| io::Error::other("frame too large"))?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind;
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

pub fn write_json(w: &mut impl Write, kind: u8, v: &impl Serialize) -> io::Result<()> {
    write_frame(
        w,
        kind,
        &serde_json::to_vec(v).expect("protocol values serialize"),
    )
}

/// Read one frame: (kind, payload).
pub fn read_frame(r: &mut impl Read) -> Result<(u8, Vec<u8>), FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    decode_payload(r, u32::from_le_bytes(len))
}

fn decode_payload(r: &mut impl Read, len: u32) -> Result<(u8, Vec<u8>), FrameError> {
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind).map_err(eof)?;
    if !(HELLO..=SHUTDOWN).contains(&kind[0]) {
        return Err(FrameError::Kind(kind[0]));
    }
    let mut payload = Vec::new();
    r.take(u64::from(len - 1)).read_to_end(&mut payload)?;
    if payload.len() as u64 != u64::from(len - 1) {
        return Err(FrameError::Closed);
    }
    Ok((kind[0], payload))
}

fn eof(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

pub fn parse_json<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    payload: &[u8],
) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::Payload {
        what,
        reason: e.to_string(),
    })
}

/// Decode every frame in `bytes` (the fuzz target's entry point): never
/// panics, whatever the input.
pub fn decode_all(mut bytes: &[u8]) -> Vec<Result<(u8, Vec<u8>), String>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match read_frame(&mut bytes) {
            Ok(f) => out.push(Ok(f)),
            Err(e) => {
                out.push(Err(e.to_string()));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, STDOUT, b"hello").unwrap();
        write_json(&mut buf, EXIT, &3).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r).unwrap(), (STDOUT, b"hello".to_vec()));
        assert_eq!(read_frame(&mut r).unwrap(), (EXIT, b"3".to_vec()));
        assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));
    }

    #[test]
    fn hostile_frames_are_errors() {
        let big = (MAX_FRAME + 1).to_le_bytes();
        assert!(matches!(
            read_frame(&mut &big[..]),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            read_frame(&mut &[0, 0, 0, 0][..]),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            read_frame(&mut &[1, 0, 0, 0, 99][..]),
            Err(FrameError::Kind(99))
        ));
        assert!(matches!(
            read_frame(&mut &[9, 0, 0, 0, 3, 1][..]),
            Err(FrameError::Closed)
        ));
        assert!(parse_json::<Hello>("hello", b"{").is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_all(&bytes);
        }
    }
}
