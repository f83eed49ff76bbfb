//! Raw HTTP/1.1 connections for tests that need exact bytes on the wire.

use std::time::Duration;

/// One HTTP/1.1 connection, spoken by hand: exact framing (`content-length` or chunked) and
/// bodies as bytes, with no decompression, over a connection reused for the next request.
pub struct Raw {
    stream: std::net::TcpStream,
    pending: Vec<u8>,
}

/// A response read off a [`Raw`] connection.
pub struct RawResp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// `true` when the body came chunked.
    pub chunked: bool,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            stream,
            pending: Vec::new(),
        }
    }

    /// Send `method path` with `headers` and `body` (framed by `content-length`), read the
    /// whole response.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResp {
        use std::io::Write;
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str("Host: pylon.test\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).unwrap();
        self.read_response(method == "HEAD")
    }

    /// Write one byte (to dribble a request).
    pub fn write_byte(&mut self, b: u8) -> std::io::Result<()> {
        use std::io::Write;
        self.stream.write_all(&[b])
    }

    /// Whether the server has closed the connection (a read ends or fails).
    pub fn closed(&mut self) -> bool {
        use std::io::Read;
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    fn fill(&mut self) {
        use std::io::Read;
        let mut buf = [0u8; 16384];
        let n = self.stream.read(&mut buf).expect("reading a response");
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&self.pending)
        );
        self.pending.extend_from_slice(&buf[..n]);
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            self.fill();
        }
        self.pending.drain(..n).collect()
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(i + 2);
                return String::from_utf8_lossy(&line[..i]).into_owned();
            }
            self.fill();
        }
    }

    /// Write bytes as they are: several requests at once, a request in pieces.
    pub fn write_all(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    /// Read the next whole response (`head_only` for the answer to a `HEAD`).
    pub fn read_response(&mut self, head_only: bool) -> RawResp {
        let (status, headers, used) = loop {
            let mut parsed = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut parsed);
            if let httparse::Status::Complete(used) = resp.parse(&self.pending).unwrap() {
                let mut headers = http::HeaderMap::new();
                for h in resp.headers.iter() {
                    headers.append(
                        http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                        http::HeaderValue::from_bytes(h.value).unwrap(),
                    );
                }
                break (resp.code.unwrap(), headers, used);
            }
            self.fill();
        };
        self.pending.drain(..used);
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|v| v.to_str().unwrap().contains("chunked"));
        let mut body = Vec::new();
        if head_only || status == 204 || status == 304 {
        } else if chunked {
            loop {
                let size = usize::from_str_radix(self.line().split(';').next().unwrap().trim(), 16)
                    .expect("a chunk size");
                if size == 0 {
                    while !self.line().is_empty() {}
                    break;
                }
                body.extend(self.take(size));
                assert_eq!(self.take(2), b"\r\n", "chunk ends with CRLF");
            }
        } else {
            let length: usize = headers
                .get("content-length")
                .map(|v| v.to_str().unwrap().parse().unwrap())
                .expect("a response framed by content-length or chunked");
            body = self.take(length);
        }
        RawResp {
            status,
            headers,
            body,
            chunked,
        }
    }
}

/// Send `raw` on a fresh connection to `port`; everything answered until the gateway closes.
pub fn send_raw(port: u16, raw: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
