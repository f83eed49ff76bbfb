//! A real browser for the tests of browser-facing features: headless Chromium (`make test`
//! installs it) showing a page from a small page server, which collects what the page reports.

use super::{scratch, Proc};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};

type Files = Arc<Mutex<HashMap<String, (&'static str, Vec<u8>)>>>;

/// Serves the files put in it, and takes `/report?r=...` (what a page found) onto `reports`.
pub struct Pages {
    pub port: u16,
    pub reports: mpsc::Receiver<String>,
    files: Files,
}

impl Pages {
    pub fn start() -> Pages {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, reports) = mpsc::channel();
        let files: Files = Arc::default();
        let served = Arc::clone(&files);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let target = line.split(' ').nth(1).unwrap_or("/").to_string();
                let (ty, body) = match target.strip_prefix("/report?") {
                    Some(q) => {
                        let parsed = form_urlencoded::parse(q.as_bytes());
                        if let Some((_, r)) = parsed.into_iter().find(|(k, _)| k == "r") {
                            let _ = tx.send(r.into_owned());
                        }
                        ("text/plain", Vec::new())
                    }
                    None => {
                        let files = served.lock().unwrap();
                        files
                            .get(&target)
                            .cloned()
                            .unwrap_or(("text/plain", Vec::new()))
                    }
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: {ty}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            }
        });
        Pages {
            port,
            reports,
            files,
        }
    }

    /// Serve `body` at `path`.
    pub fn put(&self, path: &str, content_type: &'static str, body: impl Into<Vec<u8>>) {
        let mut files = self.files.lock().unwrap();
        files.insert(path.to_string(), (content_type, body.into()));
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Headless Chromium showing `url` until dropped.
pub fn chromium(url: &str) -> Proc {
    let profile = scratch();
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium (make test installs it)");
    Proc(child)
}
