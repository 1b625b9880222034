//! A loopback relay in front of a real server that holds each response back for a
//! delay the test sets, and counts the requests waiting for an answer: how a test
//! sees whether a slow Prometheus makes the controller pile queries up.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Result;

#[derive(Default)]
struct Counts {
    delay_ms: AtomicU64,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    requests: AtomicUsize,
    stop: AtomicBool,
}

impl Counts {
    fn asked(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.most_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    fn settled(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection's request: waiting for its answer, and whether the client left.
#[derive(Default)]
struct Exchange {
    state: Mutex<(bool, bool)>,
    client_left: Condvar,
}

/// A running relay; dropping it stops accepting connections.
pub struct SlowProxy {
    port: u16,
    counts: Arc<Counts>,
}

impl SlowProxy {
    /// Relays `127.0.0.1:<port>` → `127.0.0.1:<upstream>`, at first without delay.
    pub fn start(upstream: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new(Counts::default());
        let shared = Arc::clone(&counts);
        thread::Builder::new()
            .name("slow-proxy".into())
            .spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let counts = Arc::clone(&shared);
                            thread::spawn(move || relay(client, upstream, &counts));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(Self { port, counts })
    }

    /// Base URL, for example `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Holds every response back this long from now on.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.counts.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Requests relayed so far.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// The most requests that were ever waiting for an answer at once.
    pub fn most_in_flight(&self) -> usize {
        self.counts.most_in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.counts.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies one connection both ways. A request counts as in flight from its first
/// bytes until its answer starts, or until the client gives up and closes.
fn relay(client: TcpStream, upstream: u16, counts: &Arc<Counts>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let exchange = Arc::new(Exchange::default());
    let asking = {
        let (exchange, counts) = (Arc::clone(&exchange), Arc::clone(counts));
        thread::spawn(move || {
            let mut buffer = [0u8; 16 * 1024];
            while let Ok(read @ 1..) = client_in.read(&mut buffer) {
                if let Ok(mut state) = exchange.state.lock()
                    && !state.0
                {
                    state.0 = true;
                    counts.asked();
                }
                if server_out.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
            if let Ok(mut state) = exchange.state.lock() {
                state.1 = true;
                if std::mem::take(&mut state.0) {
                    counts.settled();
                }
            }
            exchange.client_left.notify_all();
            let _ = server_out.shutdown(Shutdown::Write);
        })
    };
    let (mut server_in, mut client_out) = (server, client);
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(read @ 1..) = server_in.read(&mut buffer) {
        let delay = Duration::from_millis(counts.delay_ms.load(Ordering::Relaxed));
        let Ok(state) = exchange.state.lock() else {
            break;
        };
        let answering = state.0;
        let Ok((mut state, _)) = exchange.client_left.wait_timeout_while(
            state,
            if answering { delay } else { Duration::ZERO },
            |s| !s.1,
        ) else {
            break;
        };
        if state.1 {
            break;
        }
        if std::mem::take(&mut state.0) {
            counts.settled();
        }
        drop(state);
        if client_out.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = client_out.shutdown(Shutdown::Both);
    let _ = asking.join();
}
