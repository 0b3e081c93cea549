//! The optional admin endpoint (`flumen run --admin 127.0.0.1:PORT`): `GET /` is the live web
//! view (one HTML page embedded in the binary, polling `/status`); `GET /status` shows the graph
//! and every stage with its module hash, counters, times, watermark, state and guest health, the
//! reload history and the checkpoints; `GET /metrics` the same in the Prometheus text format;
//! `POST /reload` asks for a reload, as SIGHUP does.
//!
//! A request is untrusted like a record: the endpoint runs on its own thread (axum on hyper,
//! on a tokio runtime of its own), answers each connection in a task of its own so a slow client
//! never blocks another, and bounds what a client can hold — connections at once, time to send
//! the headers, header size, a connection's lifetime, and the request body (never read, refused
//! from its `Content-Length`). An address other than loopback needs a token, which every request
//! must then present as `Authorization: Bearer <token>`.

use crate::reload::Trigger;
use crate::telemetry::SharedStatus;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// The longest a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection may stay open, however busy.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// The largest request headers read, in bytes.
pub const MAX_HEADER_BYTES: usize = 16 << 10;
/// The largest request body accepted (none of the endpoints reads one).
pub const MAX_BODY_BYTES: u64 = 64 << 10;

/// Where and how the endpoint is served.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `HOST:PORT`; port 0 picks a free one.
    pub address: String,
    /// The bearer token every request must carry; required off loopback.
    pub token: Option<String>,
}

#[derive(Clone)]
struct Shared {
    status: SharedStatus,
    reload: Sender<Trigger>,
    /// The SHA-256 of the token: compared digest to digest, so the comparison's time says
    /// nothing about the token.
    token_digest: Option<[u8; 32]>,
}

/// Binds the endpoint's address (so a bad one fails the start) and serves it from a thread of
/// its own. Returns the address bound.
pub fn serve(
    config: &AdminConfig,
    status: SharedStatus,
    reload: Sender<Trigger>,
) -> anyhow::Result<SocketAddr> {
    let address = &config.address;
    let token = config.token.as_deref().filter(|t| !t.is_empty());
    // Checked before binding: an address off loopback is never listened on without a token.
    if token.is_none() && !is_loopback(address)? {
        anyhow::bail!(
            "refusing to serve the admin endpoint on {address} without a token: anyone who \
             reaches it could reload the pipeline; give one with --admin-token or \
             FLUMEN_ADMIN_TOKEN, or bind to 127.0.0.1"
        );
    }
    let listener = TcpListener::bind(address)
        .map_err(|e| anyhow::anyhow!("cannot serve the admin endpoint on {address}: {e}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(address = %bound, "admin endpoint off loopback: the token travels in plain HTTP");
    }
    listener.set_nonblocking(true)?;
    let shared = Shared {
        status,
        reload,
        token_digest: token.map(digest),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("flumen-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept(listener, shared).await,
                    Err(e) => tracing::error!("admin endpoint stopped: {e}"),
                }
            })
        })?;
    tracing::info!(
        address = %bound,
        "admin endpoint: web view at http://{bound}/, GET /status, GET /metrics, POST /reload"
    );
    Ok(bound)
}

/// Whether every address `address` names is a loopback one.
fn is_loopback(address: &str) -> anyhow::Result<bool> {
    use std::net::ToSocketAddrs;
    let resolved: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("cannot serve the admin endpoint on {address}: {e}"))?
        .collect();
    Ok(!resolved.is_empty() && resolved.iter().all(|a| a.ip().is_loopback()))
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Accepts connections for ever, each served in a task of its own while there is room.
async fn accept(listener: tokio::net::TcpListener, shared: Shared) {
    let room = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let app = router(shared);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!("admin endpoint: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = room.clone().try_acquire_owned() else {
            tracing::warn!(
                "admin endpoint: {MAX_CONNECTIONS} connections open already; closing a new one"
            );
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES);
            let connection = http.serve_connection(io, service);
            // Past its lifetime a connection is dropped, whatever it is doing.
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(permit);
        });
    }
}

fn router(shared: Shared) -> axum::Router {
    axum::Router::new()
        .route("/", get(view))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/reload", post(reload))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Every request: the token if one is set, and a body small enough (from its declared length;
/// a body is never read).
async fn guard(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    // The page alone holds no data (it asks `/status` with the token from its URL's fragment).
    let page = request.uri().path() == "/" && request.method() == axum::http::Method::GET;
    if let Some(expected) = shared.token_digest.filter(|_| !page) {
        let given = bearer(request.headers()).map(digest);
        if given != Some(expected) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                json_error("missing or wrong token: send `Authorization: Bearer <token>`"),
            )
                .into_response();
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) || chunked {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            json_error(&format!(
                "request bodies are limited to {MAX_BODY_BYTES} bytes; no endpoint reads one"
            )),
        )
            .into_response();
    }
    next.run(request).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn json_error(message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn status(State(shared): State<Shared>) -> Response {
    let status = shared.status.lock().map(|s| s.clone()).unwrap_or_default();
    let body = serde_json::to_string_pretty(&status).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The web view.
const VIEW: &str = include_str!("view.html");

async fn view() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page runs only its own script and talks only to this endpoint.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self'",
            ),
        ],
        VIEW,
    )
        .into_response()
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let status = shared.status.lock().map(|s| s.clone()).unwrap_or_default();
    let body = crate::telemetry::metrics::render(&status);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn reload(State(shared): State<Shared>) -> Response {
    match shared.reload.send(Trigger::Asked) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"reload": "requested"}"#,
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json_error("the reloader has stopped"),
        )
            .into_response(),
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        json_error("try GET / (the web view), GET /status, GET /metrics or POST /reload"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_on(address: &str, token: Option<&str>) -> anyhow::Result<SocketAddr> {
        let (sender, _receiver) = std::sync::mpsc::channel();
        // Keep the reloader's end alive for the test's length.
        std::mem::forget(_receiver);
        serve(
            &AdminConfig {
                address: address.into(),
                token: token.map(String::from),
            },
            SharedStatus::default(),
            sender,
        )
    }

    #[test]
    fn an_address_off_loopback_needs_a_token() {
        let error = serve_on("0.0.0.0:0", None).unwrap_err().to_string();
        assert!(error.contains("without a token"), "{error}");
        assert!(!is_loopback("0.0.0.0:9090").unwrap());
        assert!(!is_loopback("192.0.2.1:9090").unwrap());
        assert!(is_loopback("localhost:9090").unwrap());
        assert!(is_loopback("[::1]:9090").unwrap());
        assert!(serve_on("127.0.0.1:0", None).is_ok());
        assert!(serve_on("127.0.0.1:0", Some("s3cret")).is_ok());
    }
}
