//! The Prometheus helper: the real server starts on a free loopback port, scrapes
//! the targets it is given, answers queries, and is gone after it is dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use serin_e2e::prometheus::{Prometheus, ScrapeJob};

/// Serves one counter in the Prometheus text format until `stop` is set.
fn serve_counter(listener: TcpListener, value: u64, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).ok();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).ok();
                stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let body = format!(
                    "# TYPE serin_probe_requests_total counter\nserin_probe_requests_total {value}\n"
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn prometheus_scrapes_a_target_and_answers_queries_then_stops() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let target = listener.local_addr()?.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let server = thread::spawn({
        let stop = Arc::clone(&stop);
        move || serve_counter(listener, 42, stop)
    });

    let mut prometheus = Prometheus::start(
        &[ScrapeJob {
            name: "probe".into(),
            targets: vec![target],
        }],
        Duration::from_secs(1),
    )?;
    let url = prometheus.url();
    let deadline = Instant::now() + Duration::from_secs(30);
    let sample = loop {
        let result = prometheus.query("serin_probe_requests_total{job=\"probe\"}")?;
        if let Some(value) = result[0]["value"][1].as_str() {
            break value.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no sample scraped within 30s: {result}"
        );
        thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(sample, "42");
    let up = prometheus.query("up{job=\"probe\"}")?;
    assert_eq!(up[0]["value"][1], "1", "{up}");

    drop(prometheus);
    let address = url.trim_start_matches("http://");
    assert!(
        TcpStream::connect(address).is_err(),
        "prometheus still listens on {address} after being dropped"
    );
    stop.store(true, Ordering::Relaxed);
    server.join().ok();
    Ok(())
}
