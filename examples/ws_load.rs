//! The WebSocket load of `make bench`: `ws_load HOST:PORT PATH CONNECTIONS SECONDS SIZE`.
//!
//! Opens CONNECTIONS WebSocket connections to PATH (the upgrade handshake, checked for its
//! `101`), then on each, for SECONDS, sends one masked binary frame of SIZE payload bytes and
//! waits for as many bytes back: a round trip per message, as an echo behind a proxy answers.
//! The bench's upstream echoes the bytes it gets, so a proxy tunnels the same byte stream as it
//! would for an echo server that re-frames its answers. Prints `messages/s: N`.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connection(
    addr: String,
    path: String,
    until: Instant,
    size: usize,
) -> std::io::Result<u64> {
    let mut stream = TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(handshake.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("closed during the handshake"));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let status = String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned();
        return Err(std::io::Error::other(format!("no 101: {status}")));
    }
    let frame = frame(size);
    let mut back = vec![0u8; frame.len()];
    let mut messages = 0;
    while Instant::now() < until {
        stream.write_all(&frame).await?;
        stream.read_exact(&mut back).await?;
        messages += 1;
    }
    Ok(messages)
}

/// One final binary frame of `size` bytes, masked as a client's must be.
fn frame(size: usize) -> Vec<u8> {
    let mut out = vec![0x82];
    match size {
        0..=125 => out.push(0x80 | size as u8),
        126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(size as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(size as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend((0..size).map(|i| b'x' ^ mask[i % 4]));
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, path, connections, seconds, size] = &args[..] else {
        eprintln!("usage: ws_load HOST:PORT PATH CONNECTIONS SECONDS SIZE");
        std::process::exit(2);
    };
    let connections: usize = connections.parse().expect("CONNECTIONS");
    let seconds: f64 = seconds.parse().expect("SECONDS");
    let size: usize = size.parse().expect("SIZE");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let total = runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|_| tokio::spawn(connection(addr.clone(), path.clone(), until, size)))
            .collect();
        let mut total = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(n) => total += n,
                Err(e) => {
                    eprintln!("ws_load: {e}");
                    std::process::exit(1);
                }
            }
        }
        total
    });
    let took = started.elapsed().as_secs_f64();
    println!("messages/s: {:.0}", total as f64 / took);
}
