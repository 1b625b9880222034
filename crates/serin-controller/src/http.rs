//! The controller's HTTP endpoints: `/metrics` on one address, `/healthz` and
//! `/readyz` on another, so probes and scrapes can be exposed separately.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::warn;

/// Answers a path with a status, a content type and a body.
pub type Handler = Arc<dyn Fn(&str) -> (StatusCode, &'static str, String) + Send + Sync>;

/// What `/metrics` serves: the OpenMetrics text `prometheus-client` encodes.
/// Prometheus 3 refuses to scrape a target that names no content type.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Plain text, for probes and errors.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Binds `address` and serves `handler` in the background; returns the bound
/// address (useful with port 0).
pub async fn serve(address: SocketAddr, handler: Handler) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (status, content_type, body) = handler(request.uri().path());
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(content_type),
                    );
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    warn!(%error, "serving an HTTP connection");
                }
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn answers_name_their_content_type() {
        let handler: Handler =
            Arc::new(|_| (StatusCode::OK, METRICS_CONTENT_TYPE, "# EOF\n".into()));
        let bound = serve(SocketAddr::from(([127, 0, 0, 1], 0)), handler)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut stream = tokio::net::TcpStream::connect(bound)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            reply
                .to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{reply}"
        );
    }
}
