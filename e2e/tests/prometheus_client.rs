//! Serin's Prometheus client against the real server: one finite number per query
//! (evaluated at the time it is given, to the millisecond),
//! and an empty result, NaN, several series or an unreachable server each reported
//! as its own kind of no data, never as zero.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use serin_e2e::process::free_port;
use serin_e2e::prometheus::Prometheus as Server;
use serin_prometheus::{Credentials, Prometheus, QueryError};

#[test]
fn the_client_reads_one_number_and_reports_everything_else_as_no_data() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(&[], Duration::from_secs(1))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Prometheus::new(&server.url(), None, Duration::from_secs(5))?;
    runtime.block_on(async {
        assert_eq!(client.value("vector(42)").await, Ok(42.0));
        assert_eq!(client.value("scalar(vector(0.5))").await, Ok(0.5));
        // An analysis' queries are evaluated at its own time, to the millisecond.
        let at = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(
            client.value_at("time()", Some(at)).await,
            Ok(1_795_000_000.123)
        );
        assert_eq!(
            client.value("serin_no_such_metric_total").await,
            Err(QueryError::Empty)
        );
        assert!(matches!(
            client.value("vector(0) / 0").await,
            Err(QueryError::NotFinite(_))
        ));
        assert_eq!(
            client
                .value(r#"label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")"#)
                .await,
            Err(QueryError::Ambiguous(2))
        );
        assert!(matches!(
            client.value("sum(").await,
            Err(QueryError::Failed(_))
        ));
    });
    server.stop();
    let down = runtime.block_on(client.value("vector(1)"));
    assert!(matches!(down, Err(QueryError::Failed(_))), "{down:?}");

    let nothing = Prometheus::new(
        &format!("http://127.0.0.1:{}", free_port()?),
        None,
        Duration::from_secs(2),
    )?;
    let refused = runtime.block_on(nothing.value("vector(1)"));
    assert!(matches!(refused, Err(QueryError::Failed(_))), "{refused:?}");
    Ok(())
}

#[test]
fn the_client_authenticates_and_trusts_the_ca_its_secret_names() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (server, ca) = Server::start_secured("serin", "s3cret")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs(5);
    let secret = |pairs: &[(&str, &[u8])]| {
        Credentials::from_secret(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                .collect(),
        )
    };
    let good = Prometheus::new(
        &server.url(),
        Some(&secret(&[
            ("username", b"serin"),
            ("password", b"s3cret"),
            ("ca.crt", &ca),
        ])?),
        timeout,
    )?;
    // The server may still be starting behind its open port.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let value = loop {
        let value = runtime.block_on(good.value("vector(7)"));
        if value.is_ok() || std::time::Instant::now() > deadline {
            break value;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(value, Ok(7.0));

    let wrong_password = Prometheus::new(
        &server.url(),
        Some(&secret(&[
            ("username", b"serin"),
            ("password", b"guess"),
            ("ca.crt", &ca),
        ])?),
        timeout,
    )?;
    let refused = runtime.block_on(wrong_password.value("vector(7)"));
    assert!(
        matches!(&refused, Err(QueryError::Failed(m)) if m.contains("401") || m.to_lowercase().contains("unauthorized")),
        "{refused:?}"
    );

    let untrusted = Prometheus::new(
        &server.url(),
        Some(&secret(&[("username", b"serin"), ("password", b"s3cret")])?),
        timeout,
    )?;
    let unknown_ca = runtime.block_on(untrusted.value("vector(7)"));
    assert!(
        matches!(unknown_ca, Err(QueryError::Failed(_))),
        "{unknown_ca:?}"
    );
    Ok(())
}
