//! The smallest HTTP client the harness needs: GET on loopback (or the real node's
//! bridge), for readiness probes and Prometheus queries.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// GETs `path` from `127.0.0.1:port` and returns the status code and body, or None
/// when nothing answers.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    get_at("127.0.0.1", port, path)
}

/// GETs `path` from `host:port`, as [`get`] does on loopback.
pub fn get_at(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect((host, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}
