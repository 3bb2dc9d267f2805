//! The HTTP server loop both binaries run: axum's router on hyper, with the timeouts that
//! `axum::serve` does not set, and a graceful shutdown.
//!
//! Why not `axum::serve`: it gives hyper no timer, so a client that opens a connection and sends
//! half a request head (or nothing) holds it forever; a few thousand such clients use up the
//! process's file descriptors (slowloris). Here every connection must deliver each request head
//! within [`ServeOptions::header_read_timeout`] (which also closes keep-alive connections idle for
//! that long), and handlers bound their whole body read (see [`read_body`]): a per-chunk timeout
//! would let a client trickle one byte at a time.
//!
//! Also the reading of credential headers both binaries share ([`single_header`],
//! [`bearer_token`]).

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// Time limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a connection may take to send a request head, counted from when the server
    /// starts waiting for one (so an idle keep-alive connection is closed after it, too).
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and lets the
/// connections finish their requests in progress (for at most `shutdown_grace`). Handlers see
/// the peer address as `ConnectInfo<SocketAddr>`, as with axum's own server.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) {
    // HTTP/1.1 only. hyper's protocol auto-detection first waits, without any timeout, for the
    // bytes that tell HTTP/1 from HTTP/2, so a client that sends nothing would be held forever;
    // devices speak HTTP/1.1, and HTTP/2 belongs on a TLS-terminating proxy in front.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors or a connection reset while queued: back off a
                    // little instead of spinning, and keep serving the connections already open.
                    tracing::warn!(module = "http", error = %e, "Cannot accept a connection; retrying.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that vanishes or sends garbage ends only its own connection.
            if let Err(e) = conn.await {
                tracing::debug!(module = "http", error = %e, %peer, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!(module = "http", "Connections still open after the shutdown grace period; closing them.");
        }
    }
}

/// How long a request body may take, as a request extension for extractors that cannot see the
/// configuration.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyReadError {
    #[error("the body is over the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("the body could not be read: {0}")]
    Broken(String),
}

/// Reads a whole request body, refusing at once (before reading a byte, so before a
/// `100 Continue`) one whose `Content-Length` is over `limit`, and giving up on one that does not
/// arrive within `timeout` (a client that stalls mid-body would otherwise hold its connection).
pub async fn read_body(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyReadError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyReadError::TooLarge { limit });
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyReadError::Timeout(timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                BodyReadError::TooLarge { limit }
            } else {
                BodyReadError::Broken(e.to_string())
            })
        }
    }
}

/// The value of a header given exactly once: `Some(None)` when it is absent, `None` when it is
/// repeated or not visible ASCII. For credentials: of two values, which one the client meant is
/// a guess, and a guess is not authentication.
pub fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Option<Option<&'h str>> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Some(None),
        (Some(v), None) => v.to_str().ok().map(Some),
        (Some(_), Some(_)) => None,
    }
}

/// The token of an `Authorization` value `Bearer <token>` (the scheme in any case), else `None`.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
