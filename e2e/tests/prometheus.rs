//! The Prometheus helper: the real server starts on a free loopback port, scrapes
//! the targets it is given, answers queries, and is gone after it is dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use serin_analysis::latency::slow_requests;
use serin_e2e::prometheus::{Prometheus, ScrapeJob};
use serin_prometheus::{Prometheus as Client, Variables, counted, counted_buckets};

/// Serves `body` (the Prometheus text format, changed by the test as it goes)
/// until `stop` is set.
fn serve(listener: TcpListener, body: Arc<Mutex<String>>, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).ok();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).ok();
                stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let body = body.lock().map(|b| b.clone()).unwrap_or_default();
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

/// A scrape target on a loopback port serving `body`, and its stop switch.
fn target(body: &Arc<Mutex<String>>) -> Result<(String, Arc<AtomicBool>, thread::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let server = thread::spawn({
        let (body, stop) = (Arc::clone(body), Arc::clone(&stop));
        move || serve(listener, body, stop)
    });
    Ok((address, stop, server))
}

#[test]
fn prometheus_scrapes_a_target_and_answers_queries_then_stops() -> Result<()> {
    let body = Arc::new(Mutex::new(
        "# TYPE serin_probe_requests_total counter\nserin_probe_requests_total 42\n".to_owned(),
    ));
    let (target, stop, server) = target(&body)?;

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

/// Waits until `query` has a sample, for at most 30 s.
fn wait_for_sample(prometheus: &mut Prometheus, query: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus.query(query)?[0]["value"][1].as_str().is_none() {
        anyhow::ensure!(Instant::now() < deadline, "no sample of {query} within 30s");
        thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// A Prometheus scraping `body` every second as job `job`, and the start of a
/// window: taken once `first` has samples, with samples on both sides of it.
fn window_started(
    body: &Arc<Mutex<String>>,
    job: &str,
    first: &str,
) -> Result<(
    Prometheus,
    SystemTime,
    Arc<AtomicBool>,
    thread::JoinHandle<()>,
)> {
    let (address, stop, server) = target(body)?;
    let jobs = [ScrapeJob {
        name: job.into(),
        targets: vec![address],
    }];
    let mut prometheus = Prometheus::start(&jobs, Duration::from_secs(1))?;
    wait_for_sample(&mut prometheus, first)?;
    thread::sleep(Duration::from_millis(1500));
    let since = SystemTime::now();
    thread::sleep(Duration::from_millis(2500));
    Ok((prometheus, since, stop, server))
}

/// Serin's client of `prometheus`, and a runtime to drive it from a test.
fn client_of(prometheus: &Prometheus) -> Result<(Client, tokio::runtime::Runtime)> {
    let client = Client::new(&prometheus.url(), None, Duration::from_secs(5))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((client, runtime))
}

/// The error-rate judge's counters against the real server: each series counts
/// what it gained between its samples at the window's two ends, a series that
/// appears in the window (a new pod, its first errors) counts from zero, one that
/// restarted counts from its restart, and one that ended (a pod scaled away) keeps
/// what it counted. `increase()` over the same window, the
/// query form's usual reading, misses the new series' first values.
#[test]
fn counters_are_read_from_their_samples_at_both_ends_of_the_window() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let body = Arc::new(Mutex::new(
        "# TYPE req_total counter
req_total{pod=\"old\",code=\"200\"} 100
req_total{pod=\"gone\",code=\"200\"} 50
req_total{pod=\"restarted\",code=\"200\"} 1000
"
        .to_owned(),
    ));
    let (prometheus, since, stop, server) =
        window_started(&body, "counters", "req_total{pod=\"old\"}")?;
    let serve_text = |text: &str| {
        if let Ok(mut body) = body.lock() {
            *body = text.to_owned();
        }
    };
    serve_text(
        "# TYPE req_total counter
req_total{pod=\"old\",code=\"200\"} 160
req_total{pod=\"gone\",code=\"200\"} 70
req_total{pod=\"restarted\",code=\"200\"} 7
req_total{pod=\"new\",code=\"200\"} 42
req_total{pod=\"new\",code=\"500\"} 3
",
    );
    thread::sleep(Duration::from_millis(2500));
    // A pod scaled away mid-window: its series ends, what it counted stays.
    serve_text(
        "# TYPE req_total counter
req_total{pod=\"old\",code=\"200\"} 160
req_total{pod=\"restarted\",code=\"200\"} 7
req_total{pod=\"new\",code=\"200\"} 42
req_total{pod=\"new\",code=\"500\"} 3
",
    );
    thread::sleep(Duration::from_millis(3000));
    let at = SystemTime::now();

    let (client, runtime) = client_of(&prometheus)?;
    let arm = Variables::example();
    let read = |query: String| runtime.block_on(client.value_at(&query, Some(at)));
    let requests = read(counted(r#"req_total{job="counters"}"#, &arm, since, false)?);
    let errors = read(counted(
        r#"req_total{job="counters",code="500"}"#,
        &arm,
        since,
        true,
    )?);
    assert_eq!(requests, Ok(60.0 + 20.0 + 7.0 + 42.0 + 3.0), "requests");
    assert_eq!(errors, Ok(3.0), "errors");
    let none = read(counted(
        r#"req_total{job="counters",code="503"}"#,
        &arm,
        since,
        true,
    )?);
    assert_eq!(none, Ok(0.0), "no errors series reads as zero errors");

    let elapsed = at.duration_since(since)?.as_millis();
    let increase = |selector: &str| read(format!("sum(increase({selector}[{elapsed}ms]))"));
    let increased = increase(r#"req_total{job="counters",code="500"}"#);
    assert!(
        increased.as_ref().is_ok_and(|errors| *errors < 3.0),
        "increase() sees the new series' errors after all: {increased:?}"
    );
    stop.store(true, Ordering::Relaxed);
    server.join().ok();
    Ok(())
}

/// A latency metric's buckets against the real server: each bucket bound counts
/// what its series gained in the window, as counters are read (a pod that appears
/// mid-window counts from zero), and the slow requests are every request less
/// those in the threshold's bucket.
#[test]
fn a_histograms_buckets_are_read_per_bound_from_their_samples_at_both_ends() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let histogram = |pod: &str, fast: u32, under_one: u32, all: u32| {
        format!(
            "latency_seconds_bucket{{pod=\"{pod}\",le=\"0.25\"}} {fast}
latency_seconds_bucket{{pod=\"{pod}\",le=\"1\"}} {under_one}
latency_seconds_bucket{{pod=\"{pod}\",le=\"+Inf\"}} {all}
latency_seconds_sum{{pod=\"{pod}\"}} 0
latency_seconds_count{{pod=\"{pod}\"}} {all}
"
        )
    };
    let header = "# TYPE latency_seconds histogram\n";
    let body = Arc::new(Mutex::new(format!(
        "{header}{}",
        histogram("old", 900, 990, 1000)
    )));
    let (prometheus, since, stop, server) =
        window_started(&body, "histogram", "latency_seconds_count")?;
    if let Ok(mut body) = body.lock() {
        *body = format!(
            "{header}{}{}",
            histogram("old", 1080, 1190, 1200),
            histogram("new", 40, 45, 50)
        );
    }
    thread::sleep(Duration::from_millis(3000));
    let at = SystemTime::now();

    let (client, runtime) = client_of(&prometheus)?;
    let query = counted_buckets(
        r#"latency_seconds_bucket{job="histogram"}"#,
        &Variables::example(),
        since,
    )?;
    let mut buckets = runtime.block_on(client.values_by_at(&query, "le", at))?;
    buckets.sort_by(|a, b| a.0.cmp(&b.0));
    let expected =
        [("+Inf", 250.0), ("0.25", 220.0), ("1", 245.0)].map(|(le, count)| (le.to_owned(), count));
    assert_eq!(buckets, expected);
    assert_eq!(slow_requests(&buckets, 0.25), Ok((250.0, 30.0)));
    assert_eq!(slow_requests(&buckets, 1.0), Ok((250.0, 5.0)));
    let no_bound = slow_requests(&buckets, 0.5);
    assert!(
        no_bound
            .as_ref()
            .is_err_and(|why| why.0.contains("0.25, 1")),
        "{no_bound:?}"
    );
    stop.store(true, Ordering::Relaxed);
    server.join().ok();
    Ok(())
}
