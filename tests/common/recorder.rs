//! An upstream that keeps every byte each connection brought, and reads request bodies by
//! `Content-Length` only (as Python's `http.server` and many WSGI servers do): a chunked body
//! is not read, so an upstream request framed that way shows as an empty body.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The bytes one connection brought.
type Seen = Arc<Mutex<Vec<u8>>>;

/// A running recorder; the thread ends with the test process.
pub struct Recorder {
    pub addr: String,
    conns: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let all = Arc::clone(&conns);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(Arc::clone(&seen));
                std::thread::spawn(move || serve(stream, seen));
            }
        });
        Recorder { addr, conns }
    }

    /// Connections that brought at least one byte.
    pub fn carried(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .filter(|c| !c.lock().unwrap().is_empty())
            .count()
    }

    /// Everything every connection brought, in the order they were accepted.
    pub fn received(&self) -> String {
        let conns = self.conns.lock().unwrap();
        let mut all = Vec::new();
        for c in conns.iter() {
            all.extend_from_slice(&c.lock().unwrap());
        }
        String::from_utf8_lossy(&all).into_owned()
    }
}

/// Answer each request with `{"head": ..., "body": ...}`: what was read of it.
fn serve(mut stream: TcpStream, seen: Seen) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    pending.extend_from_slice(&buf[..n]);
                }
            }
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while pending.len() < end + length {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    pending.extend_from_slice(&buf[..n]);
                }
            }
        }
        let body = String::from_utf8_lossy(&pending[end..end + length]).into_owned();
        pending.drain(..end + length);
        let json = serde_json::json!({ "head": head, "body": body }).to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
            json.len()
        );
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
