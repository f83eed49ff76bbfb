//! The demo upstream: answers every request with its method, path, query, headers and body as
//! JSON, and `/healthz` with 200. Used by `make run`, the tests and the benchmarks.
//!
//! Knobs for tests: `--name` (echoed as `server`), `--delay` (wait before answering),
//! `--status` (answer with this status), `--status-file` (answer with the status written in
//! this file, read at each request, so a test can make a live target fail and recover),
//! `--upgrade-delay` (wait before a 101). WebSocket upgrades are accepted and echo their
//! bytes. `GET /_hits` answers how many requests (besides health checks) it has served.
//! `/_reply?type=T&body=B&repeat=N&gzip=1&header=name:value&delay_ms=D` answers with that body (`B`
//! repeated `N` times, gzipped with `gzip=1`), content type and headers, so tests can shape
//! exactly what the gateway receives (after `D` ms with `delay_ms`). With `--tls-cert`/`--tls-key` it serves TLS (h2 and
//! HTTP/1.1 by ALPN; `--no-h2` for HTTP/1.1 only); answers say which `version` they came by.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use openssl::ssl::{AlpnError, Ssl, SslAcceptor, SslFiletype, SslMethod};
use pingora::tls::tokio_ssl::SslStream;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(name = "echo", about = "Pylon's demo upstream")]
struct Args {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name reported in every answer, to tell targets apart.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Wait this long before answering (not for /healthz), e.g. "2s".
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Answer every request (not /healthz) with this status.
    #[arg(long)]
    status: Option<u16>,
    /// Answer with the status this file holds, when it exists (read at each request).
    #[arg(long)]
    status_file: Option<std::path::PathBuf>,
    /// Wait this long before answering a WebSocket upgrade with 101.
    #[arg(long, value_parser = humantime::parse_duration)]
    upgrade_delay: Option<Duration>,
    /// Serve TLS with this PEM certificate (and `--tls-key`), offering h2 and HTTP/1.1 by ALPN.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
    /// With TLS, offer only HTTP/1.1 by ALPN.
    #[arg(long)]
    no_h2: bool,
    #[arg(skip)]
    hits: AtomicU64,
}

/// The TLS acceptor of `--tls-cert`: ALPN picks h2 when the client offers it (unless
/// `--no-h2`), else HTTP/1.1.
fn acceptor(args: &Args) -> std::io::Result<Option<SslAcceptor>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let fail = |e: openssl::error::ErrorStack| std::io::Error::other(e.to_string());
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(fail)?;
    builder.set_certificate_chain_file(cert).map_err(fail)?;
    builder
        .set_private_key_file(key, SslFiletype::PEM)
        .map_err(fail)?;
    let offer: &'static [u8] = if args.no_h2 {
        b"\x08http/1.1"
    } else {
        b"\x02h2\x08http/1.1"
    };
    builder.set_alpn_select_callback(move |_, client| {
        openssl::ssl::select_next_proto(offer, client).ok_or(AlpnError::NOACK)
    });
    Ok(Some(builder.build()))
}

impl Args {
    fn status(&self) -> Option<u16> {
        let from_file = self
            .status_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse().ok());
        from_file.or(self.status)
    }
}

async fn handle(
    args: Arc<Args>,
    peer: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    }
    if req.uri().path() == "/_hits" {
        let hits = args.hits.load(Ordering::Relaxed).to_string();
        return Ok(Response::new(Full::new(Bytes::from(hits))));
    }
    args.hits.fetch_add(1, Ordering::Relaxed);
    if req.uri().path() == "/_reply" {
        let query = req.uri().query().unwrap_or("");
        let delay = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "delay_ms")
            .and_then(|(_, v)| v.parse().ok());
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        return Ok(reply(query));
    }
    if is_websocket(&req) {
        if let Some(d) = args.upgrade_delay {
            tokio::time::sleep(d).await;
        }
        return Ok(upgrade(req));
    }
    if let Some(d) = args.delay {
        tokio::time::sleep(d).await;
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let version = format!("{:?}", req.version());
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let json = serde_json::json!({
        "server": args.name,
        "method": method,
        "path": path,
        "query": query,
        "version": version,
        // The connection it came on: tells a reused upstream connection from a new one.
        "peer": peer.to_string(),
        "headers": headers,
        "body": body,
    });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    *resp.status_mut() = args
        .status()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(
        "x-echo-server",
        args.name
            .parse()
            .unwrap_or_else(|_| HeaderValue::from_static("echo")),
    );
    Ok(resp)
}

/// The answer `/_reply` describes in its query.
fn reply(query: &str) -> Response<Full<Bytes>> {
    let mut body = String::new();
    let mut repeat = 1;
    let mut gzip = false;
    let mut resp = Response::new(Full::new(Bytes::new()));
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "body" => body = v.into_owned(),
            "repeat" => repeat = v.parse().unwrap_or(1),
            "gzip" => gzip = v == "1",
            "type" | "header" => {
                let (name, value) = match &*k {
                    "type" => ("content-type", &*v),
                    _ => v.split_once(':').unwrap_or((&*v, "")),
                };
                if let (Ok(n), Ok(v)) = (
                    hyper::header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value.trim()),
                ) {
                    resp.headers_mut().append(n, v);
                }
            }
            _ => {}
        }
    }
    let mut bytes = body.repeat(repeat).into_bytes();
    if gzip {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = enc.write_all(&bytes);
        bytes = enc.finish().unwrap_or_default();
        resp.headers_mut()
            .insert("content-encoding", HeaderValue::from_static("gzip"));
    }
    *resp.body_mut() = Full::new(Bytes::from(bytes));
    resp
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Switch protocols and echo raw bytes back; enough to prove the gateway tunnels upgrades.
fn upgrade(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert("connection", HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert("upgrade", HeaderValue::from_static("websocket"));
    resp
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Arc::new(Args::parse());
    let listener = TcpListener::bind(args.listen).await?;
    let tls = acceptor(&args)?.map(Arc::new);
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let args = Arc::clone(&args);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&args), peer, req));
            let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let Some(tls) = tls else {
                let _ = server
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
                return;
            };
            let Ok(ssl) = Ssl::new(tls.context()) else {
                return;
            };
            let Ok(mut stream) = SslStream::new(ssl, stream) else {
                return;
            };
            if std::pin::Pin::new(&mut stream).accept().await.is_ok() {
                let _ = server
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            }
        });
    }
}
