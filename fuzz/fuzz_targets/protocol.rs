//! The daemon's frame decoder (`protocol::decode_all`, `read_frame`) and the
//! JSON payloads it carries: arbitrary bytes never panic; every frame that
//! decodes re-encodes to the very bytes it came from; a HELLO that parses
//! round-trips through `write_json`.
#![no_main]

use dagfs::daemon::protocol::{self, Hello, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frames = protocol::decode_all(data);
    let mut reencoded = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let Ok((kind, payload)) = f else {
            assert_eq!(i, frames.len() - 1, "an error ends the stream");
            continue;
        };
        assert!((protocol::HELLO..=protocol::SHUTDOWN).contains(kind));
        protocol::write_frame(&mut reencoded, *kind, payload).unwrap();
        match *kind {
            protocol::HELLO => {
                if let Ok(h) = protocol::parse_json::<Hello>("hello", payload) {
                    let mut buf = Vec::new();
                    protocol::write_json(&mut buf, protocol::HELLO, &h).unwrap();
                    let (k, p) = protocol::read_frame(&mut buf.as_slice()).unwrap();
                    assert_eq!(k, protocol::HELLO);
                    assert_eq!(protocol::parse_json::<Hello>("hello", &p).unwrap(), h);
                }
            }
            protocol::REQUEST => {
                if let Ok(r) = protocol::parse_json::<Request>("request", payload) {
                    let mut buf = Vec::new();
                    protocol::write_json(&mut buf, protocol::REQUEST, &r).unwrap();
                    let (k, p) = protocol::read_frame(&mut buf.as_slice()).unwrap();
                    assert_eq!(k, protocol::REQUEST);
                    let back = protocol::parse_json::<Request>("request", &p).unwrap();
                    // NB: serde_json may move a float by one ULP; the rest is exact.
                    assert_eq!(
                        (&back.cwd, &back.env, back.stderr_tty),
                        (&r.cwd, &r.env, r.stderr_tty)
                    );
                }
            }
            _ => {}
        }
    }
    assert!(
        data.starts_with(&reencoded),
        "frames that decoded re-encode to the input they came from"
    );
    if frames.iter().all(Result::is_ok) {
        assert_eq!(reencoded.len(), data.len(), "no bytes left over");
    }
});
