//! A webhook receiver on loopback: what a Slack, Teams or CloudEvents endpoint is
//! to Serin's notifications, and a gate's endpoint to its checks and hooks. It
//! answers each POST (200 unless told otherwise for its path, after a delay if
//! told) and keeps what it was sent, so a test can check every body as received.
//! It stops when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request's path, which tells the sinks apart.
    pub path: String,
    /// Its `Content-Type` header.
    pub content_type: String,
    /// Its `Idempotency-Key` header, if any.
    pub key: Option<String>,
    /// Its body, as JSON (Null when it is not JSON).
    pub body: Value,
}

/// The receiver, listening on `127.0.0.1:<port>` until dropped.
pub struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<HashMap<String, (u16, Duration)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Requests read at most, so a runaway sender cannot grow the test without bound.
const MOST: usize = 10_000;

impl Receiver {
    /// Starts listening on a free loopback port.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the receiver")?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let received = Arc::clone(&received);
            let answers = Arc::clone(&answers);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let received = Arc::clone(&received);
                    let answers = Arc::clone(&answers);
                    // A thread per request, so one held back delays no other.
                    thread::spawn(move || answer(stream, &received, &answers));
                }
            })
        };
        Ok(Self {
            port,
            received,
            answers,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// From now on, answers requests to `path` with `status` after `delay`.
    pub fn answer(&self, path: &str, status: u16, delay: Duration) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.insert(path.to_owned(), (status, delay));
        }
    }

    /// Everything received at `path` so far, in order.
    pub fn at(&self, path: &str) -> Vec<Received> {
        self.received
            .lock()
            .map(|all| all.iter().filter(|r| r.path == path).cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request (one per connection: the answer closes it), keeps it, and
/// answers as told for its path.
fn answer(
    stream: TcpStream,
    received: &Mutex<Vec<Received>>,
    answers: &Mutex<HashMap<String, (u16, Duration)>>,
) -> Option<()> {
    let request = read(&stream)?;
    let (status, delay) = answers
        .lock()
        .ok()
        .and_then(|answers| answers.get(&request.path).copied())
        .unwrap_or((200, Duration::ZERO));
    if let Ok(mut all) = received.lock()
        && all.len() < MOST
    {
        all.push(request);
    }
    thread::sleep(delay);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        if status < 300 { "OK" } else { "Refused" }
    )
    .ok()
}

fn read(stream: &TcpStream) -> Option<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let (mut length, mut content_type, mut key) = (0usize, String::new(), None);
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => value.trim().clone_into(&mut content_type),
            "idempotency-key" => key = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        path,
        content_type,
        key,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}
