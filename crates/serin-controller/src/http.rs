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

/// Answers a path with a status and a body.
pub type Handler = Arc<dyn Fn(&str) -> (StatusCode, String) + Send + Sync>;

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
                    let (status, body) = handler(request.uri().path());
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
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
