//! A bounded load generator for the real node: real HTTP requests to a Service or pod
//! address of the test bed, one connection each (so kube-proxy balances every
//! request afresh), at a fixed rate, for at most a given time. Each answer records
//! when it came, which version served it (the workload's `x-version` header) and its
//! status, or why it failed, so a test can say what real requests saw.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// One request's outcome.
#[derive(Clone, Debug)]
pub struct Answer {
    /// When the request was sent.
    pub sent: Instant,
    /// The HTTP status, or the error that left it without one.
    pub outcome: std::result::Result<u16, String>,
    /// The version that served it, from `x-version`.
    pub version: Option<String>,
}

impl Answer {
    /// Whether the request got a 2xx.
    pub fn succeeded(&self) -> bool {
        self.outcome
            .as_ref()
            .is_ok_and(|status| (200..300).contains(status))
    }
}

/// Requests in flight until [`Load::stop`] or the time limit.
pub struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    workers: Vec<JoinHandle<()>>,
}

const WORKERS: u32 = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `address` is one this test bed owns: loopback, the real node's pod range
/// or the Service range. The generator refuses anything else.
fn is_test_bed_address(address: &SocketAddr) -> bool {
    match address.ip() {
        IpAddr::V4(ip) => {
            ip.is_loopback()
                || in_range(ip, Ipv4Addr::new(10, 88, 0, 0), 16)
                || in_range(ip, Ipv4Addr::new(10, 96, 0, 0), 16)
        }
        IpAddr::V6(ip) => ip.is_loopback(),
    }
}

fn in_range(ip: Ipv4Addr, network: Ipv4Addr, prefix: u32) -> bool {
    let mask = u32::MAX << (32 - prefix);
    u32::from(ip) & mask == u32::from(network) & mask
}

impl Load {
    /// Sends `rate` requests a second to `target` (path `/`) until stopped, or for
    /// `limit` at most.
    pub fn start(target: SocketAddr, rate: f64, limit: Duration) -> Result<Self> {
        if !is_test_bed_address(&target) {
            bail!("{target} is outside the test bed: loopback, 10.88.0.0/16 and 10.96.0.0/16 only");
        }
        if !(rate > 0.0 && rate <= 2000.0) {
            bail!("a rate of {rate} requests a second is outside (0, 2000]");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let period = Duration::from_secs_f64(f64::from(WORKERS) / rate);
        let workers = (0..WORKERS)
            .map(|worker| {
                let (stop, answers) = (Arc::clone(&stop), Arc::clone(&answers));
                let offset = period.mul_f64(f64::from(worker) / f64::from(WORKERS));
                thread::spawn(move || {
                    let mut next = started + offset;
                    while !stop.load(Ordering::Relaxed) && next < started + limit {
                        let now = Instant::now();
                        if next > now {
                            thread::sleep(next - now);
                        }
                        let answer = request(target, next, &[]);
                        if let Ok(mut all) = answers.lock() {
                            all.push(answer);
                        }
                        next += period;
                    }
                })
            })
            .collect();
        Ok(Self {
            stop,
            answers,
            workers,
        })
    }

    /// Returns once a request to `target` is answered, or fails after `limit`: a new
    /// Service answers only once kube-proxy (or a gateway) has caught up with it, and
    /// requests sent before that are refused by the proxy, not lost by a rollout.
    pub fn wait_answering(target: SocketAddr, limit: Duration) -> Result<()> {
        let until = std::time::Instant::now() + limit;
        loop {
            let probe = Self::start(target, 20.0, Duration::from_millis(500))?;
            thread::sleep(Duration::from_millis(600));
            if probe.stop().iter().any(Answer::succeeded) {
                return Ok(());
            }
            if std::time::Instant::now() > until {
                bail!("{target} answered no request within {limit:?}");
            }
        }
    }

    /// Sends one request to `target` with these extra headers (an experiment's
    /// header or cookie) and returns its answer.
    pub fn ask(target: SocketAddr, headers: &[(&str, &str)]) -> Result<Answer> {
        if !is_test_bed_address(&target) {
            bail!("{target} is outside the test bed: loopback, 10.88.0.0/16 and 10.96.0.0/16 only");
        }
        Ok(request(target, Instant::now(), headers))
    }

    /// The answers so far.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Stops sending, waits for the requests in flight, and returns every answer in
    /// the order they were sent.
    pub fn stop(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        let mut answers = self.answers();
        answers.sort_by_key(|answer| answer.sent);
        answers
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn request(target: SocketAddr, sent: Instant, headers: &[(&str, &str)]) -> Answer {
    let outcome = exchange(target, headers);
    let (outcome, version) = match outcome {
        Ok((status, version)) => (Ok(status), version),
        Err(error) => (Err(error), None),
    };
    Answer {
        sent,
        outcome,
        version,
    }
}

fn exchange(
    target: SocketAddr,
    headers: &[(&str, &str)],
) -> std::result::Result<(u16, Option<String>), String> {
    let mut stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let ask = format!("GET / HTTP/1.1\r\nHost: {target}\r\n{extra}Connection: close\r\n\r\n");
    stream
        .write_all(ask.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, _) = reply
        .split_once("\r\n\r\n")
        .ok_or("a reply without headers")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let version = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-version")
            .then(|| value.trim().to_owned())
    });
    Ok((status, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_test_bed_addresses_are_loaded() {
        let allowed = ["127.0.0.1:80", "10.88.0.7:8080", "10.96.3.4:80", "[::1]:80"];
        for address in allowed {
            assert!(is_test_bed_address(&address.parse().unwrap()), "{address}");
        }
        for address in ["10.89.0.1:80", "192.168.1.1:80", "8.8.8.8:53"] {
            assert!(!is_test_bed_address(&address.parse().unwrap()), "{address}");
        }
        assert!(Load::start("8.8.8.8:80".parse().unwrap(), 10.0, Duration::from_secs(1)).is_err());
    }
}
