//! Closing WebSocket tunnels at shutdown with a close frame (1001, going away) instead of
//! dropping them.
//!
//! Once a connection became a tunnel (a `101`), the gateway relays WebSocket frames it does not
//! parse. To say goodbye when the server shuts down it must write its close frame between two
//! of the server's frames, never inside one: [`Frames`] follows the server-to-client bytes just
//! enough to know where each frame ends (RFC 6455 §5.2: two header bytes, an extended length,
//! a mask key when masked, then the payload).

/// A close frame from the server (unmasked, as servers send them): status 1001, going away.
pub const GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xe9];

/// Where the server-to-client bytes are among their frames.
#[derive(Debug, Default)]
pub struct Frames {
    /// Before the first frame, the `101`'s head still going out: how much of its closing
    /// blank line has been seen.
    head: Option<usize>,
    /// The next frame's header bytes seen so far.
    header: [u8; 14],
    have: usize,
    /// The current frame's payload bytes still to come.
    payload: u64,
}

impl Frames {
    /// Frames that follow a response head not yet written (the `101`).
    pub fn after_head() -> Frames {
        Frames {
            head: Some(0),
            ..Frames::default()
        }
    }

    /// Follow `bytes`, written to the client.
    pub fn wrote(&mut self, mut bytes: &[u8]) {
        while let Some((&first, rest)) = bytes.split_first() {
            if let Some(matched) = self.head {
                const END: &[u8] = b"\r\n\r\n";
                let matched = match first {
                    b if b == END[matched] => matched + 1,
                    b'\r' => 1,
                    _ => 0,
                };
                self.head = (matched < END.len()).then_some(matched);
                bytes = rest;
                continue;
            }
            if self.payload > 0 {
                let n = usize::try_from(self.payload).map_or(bytes.len(), |p| p.min(bytes.len()));
                self.payload -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.header[self.have] = first;
            self.have += 1;
            bytes = rest;
            if self.header_len() == Some(self.have) {
                self.payload = self.payload_len();
                self.have = 0;
            }
        }
    }

    /// Between two frames: a frame of the gateway's may go here.
    pub fn at_boundary(&self) -> bool {
        self.head.is_none() && self.payload == 0 && self.have == 0
    }

    /// The header's length, once its first two bytes tell it.
    fn header_len(&self) -> Option<usize> {
        let second = *self.header.get(1).filter(|_| self.have >= 2)?;
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        Some(2 + extended + mask)
    }

    fn payload_len(&self) -> u64 {
        let h = &self.header;
        match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked binary frame of `len` bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        match len {
            0..=125 => f.push(len as u8),
            126..=65535 => {
                f.push(126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(7, len));
        f
    }

    #[test]
    fn boundaries_whatever_the_writes() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(frame(len));
        }
        let ends: Vec<usize> = [0, 5, 125, 126, 300, 70_000]
            .iter()
            .scan(0, |at, len| {
                *at += frame(*len).len();
                Some(*at)
            })
            .collect();
        // Written a byte at a time: a boundary exactly where each frame ends.
        let mut f = Frames::default();
        for (i, b) in stream.iter().enumerate() {
            f.wrote(std::slice::from_ref(b));
            assert_eq!(f.at_boundary(), ends.contains(&(i + 1)), "after byte {i}");
        }
        // In odd chunks: a boundary at the end.
        let mut f = Frames::default();
        for chunk in stream.chunks(997) {
            f.wrote(chunk);
        }
        assert!(f.at_boundary());
        // Mid-frame.
        let mut f = Frames::default();
        f.wrote(&frame(300)[..100]);
        assert!(!f.at_boundary());
    }

    #[test]
    fn frames_start_after_the_101s_head() {
        let mut f = Frames::after_head();
        f.wrote(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
        assert!(!f.at_boundary());
        f.wrote(b"\r");
        f.wrote(b"\n");
        assert!(f.at_boundary());
        f.wrote(&frame(10)[..5]);
        assert!(!f.at_boundary());
    }

    #[test]
    fn a_masked_header_has_its_key() {
        let mut f = Frames::default();
        f.wrote(&[0x81, 0x83, 1, 2, 3, 4]);
        assert!(!f.at_boundary());
        f.wrote(b"abc");
        assert!(f.at_boundary());
        f.wrote(&GOING_AWAY);
        assert!(f.at_boundary());
    }
}
