//! The bytes of a pipelined next request, out of Pingora's keep-alive settings.
//!
//! With pipelining on, a finished HTTP/1 session hands the bytes it read past the end of its
//! request (the start of the next one, RFC 9112 §9.3) to the next session inside
//! [`HttpPersistentSettings`]. The keep-alive loop (`keepalive.rs`) needs them itself: it waits
//! for a request's first bytes before it builds a session, and checks them (`head.rs`) before
//! Pingora parses them; with bytes already in hand it must not wait (the client is waiting for
//! an answer, not sending), and those bytes must be checked like any others. Pingora 0.9 has
//! no accessor for them, so they are read off the settings' derived `Debug`, which writes them
//! as a byte string; the writer below decodes it as it is written, stops formatting as soon as
//! the field is read, and allocates only when there are bytes. The unit tests hold this to
//! Pingora's own output, so a release that changes it fails them.
//!
//! That costs about 1,400 instructions, so it is done only when Pingora can hold such bytes:
//! when it read from the connection while serving the request (its body, or what the client
//! sent during the answer), or when the bytes handed to it held more than the request
//! (`connection::Watched` counts the first, `head.rs` measures the second).

use bytes::BytesMut;
use pingora::apps::HttpPersistentSettings;
use std::fmt::{self, Write};

/// The pipelined bytes `settings` carries for the next request, if any.
pub fn prefix(settings: &HttpPersistentSettings) -> Option<BytesMut> {
    let mut reader = Reader::default();
    // The reader stops the formatting with an error once it has what it needs.
    let _ = write!(reader, "{settings:?}");
    match reader.state {
        State::Done => Some(reader.bytes),
        _ => None,
    }
}

/// Where the reader is in the `Debug` text.
#[derive(Default, PartialEq)]
enum State {
    /// Before the field's name.
    #[default]
    Seek,
    /// After the name: `None`, or `Some(` and the byte string.
    Value,
    /// Inside `b"..."`.
    Bytes,
    /// After a backslash.
    Escape,
    /// In `\x..`, with the high digit if read.
    Hex(Option<u8>),
    /// The byte string has ended.
    Done,
    /// The field is `None`.
    Absent,
}

const FIELD: &str = "pipelined_prefix";

#[derive(Default)]
struct Reader {
    state: State,
    bytes: BytesMut,
}

impl Write for Reader {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self.state {
            // `debug_struct` writes each field's name as a piece of its own.
            State::Seek => {
                if s == FIELD {
                    self.state = State::Value;
                }
                Ok(())
            }
            State::Value => match s {
                "None" => {
                    self.state = State::Absent;
                    Err(fmt::Error)
                }
                _ => {
                    if let Some(i) = s.find("b\"") {
                        self.state = State::Bytes;
                        self.decode(&s[i + 2..])
                    } else {
                        Ok(())
                    }
                }
            },
            State::Done | State::Absent => Err(fmt::Error),
            _ => self.decode(s),
        }
    }
}

impl Reader {
    /// Decode the byte string's escapes (those of `bytes`' `Debug`: `\n \r \t \\ \" \0 \xHH`).
    fn decode(&mut self, s: &str) -> fmt::Result {
        for &c in s.as_bytes() {
            self.state = match (&self.state, c) {
                (State::Bytes, b'\\') => State::Escape,
                (State::Bytes, b'"') => {
                    self.state = State::Done;
                    return Err(fmt::Error);
                }
                (State::Bytes, c) => {
                    self.bytes.extend_from_slice(&[c]);
                    State::Bytes
                }
                (State::Escape, b'x') => State::Hex(None),
                (State::Escape, c) => {
                    let b = match c {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'0' => 0,
                        c => c,
                    };
                    self.bytes.extend_from_slice(&[b]);
                    State::Bytes
                }
                (State::Hex(high), c) => {
                    let digit = (c as char).to_digit(16).ok_or(fmt::Error)? as u8;
                    match high {
                        None => State::Hex(Some(digit)),
                        Some(high) => {
                            self.bytes.extend_from_slice(&[high << 4 | digit]);
                            State::Bytes
                        }
                    }
                }
                _ => return Err(fmt::Error),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::http::ServerSession;

    fn settings(prefix: Option<&[u8]>) -> HttpPersistentSettings {
        let io = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
        let mut session = ServerSession::new_http1(io);
        session.set_keepalive(Some(60));
        session.set_pipelining_enabled(true);
        let mut s = HttpPersistentSettings::for_session(&session);
        if let Some(p) = prefix {
            s.set_pipelined_prefix(BytesMut::from(p));
        }
        s
    }

    #[test]
    fn no_bytes_is_none() {
        assert_eq!(prefix(&settings(None)), None);
    }

    #[test]
    fn a_pipelined_request_comes_out_as_sent() {
        let req = b"GET /b HTTP/1.1\r\nHost: \"a\"\\\tb\r\n\r\nPOST / HTTP/1.1\r\n";
        assert_eq!(prefix(&settings(Some(req))).as_deref(), Some(&req[..]));
    }

    #[test]
    fn every_byte_value_comes_out_as_sent() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        assert_eq!(prefix(&settings(Some(&all))).as_deref(), Some(&all[..]));
    }

    #[test]
    fn a_user_context_before_the_field_is_passed_over() {
        let mut s = settings(Some(b"GET"));
        s.set_user_context(Box::new(String::from("pipelined_prefix: Some(b\"x\")")));
        assert_eq!(prefix(&s).as_deref(), Some(&b"GET"[..]));
    }
}
