//! The optional admin endpoint (`flumen run --admin 127.0.0.1:PORT`): `GET /status` shows every
//! stage with its module hash, counters and watermark, and the last reload's outcome;
//! `POST /reload` asks for a reload, as SIGHUP does.

use crate::reload::Trigger;
use serde::Serialize;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

/// What `GET /status` answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub pipeline: String,
    pub stages: Vec<StageStatus>,
    pub last_reload: Option<ReloadOutcome>,
}

/// One stage in the status.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub name: String,
    pub kind: &'static str,
    pub module_hash: Option<String>,
    pub records_in: u64,
    pub outputs: std::collections::BTreeMap<String, u64>,
    pub dead_letters: u64,
    pub watermark: Option<i64>,
}

/// The result of the last reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// Milliseconds since the Unix epoch.
    pub at: u128,
    pub ok: bool,
    /// What changed, or why nothing did.
    pub lines: Vec<String>,
}

impl ReloadOutcome {
    pub fn now(ok: bool, lines: Vec<String>) -> Self {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        ReloadOutcome { at, ok, lines }
    }
}

/// Shared between the executor (which fills it), the reloader and the endpoint.
pub type SharedStatus = Arc<Mutex<Status>>;

/// Serves the endpoint on `address` from a thread of its own.
pub fn serve(address: &str, status: SharedStatus, reload: Sender<Trigger>) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(address)
        .map_err(|e| anyhow::anyhow!("cannot serve the admin endpoint on {address}: {e}"))?;
    tracing::info!(address, "admin endpoint: GET /status, POST /reload");
    std::thread::Builder::new()
        .name("flumen-admin".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (code, body) = match (request.method(), request.url()) {
                    (tiny_http::Method::Get, "/status") => {
                        let status = status.lock().map(|s| s.clone()).unwrap_or_default();
                        (
                            200,
                            serde_json::to_string_pretty(&status).unwrap_or_default(),
                        )
                    }
                    (tiny_http::Method::Post, "/reload") => match reload.send(Trigger::Asked) {
                        Ok(()) => (202, r#"{"reload": "requested"}"#.to_string()),
                        Err(_) => (503, r#"{"error": "the reloader has stopped"}"#.to_string()),
                    },
                    _ => (
                        404,
                        r#"{"error": "try GET /status or POST /reload"}"#.to_string(),
                    ),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
                    .unwrap_or_else(|()| unreachable!("a constant header is valid"));
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(code)
                    .with_header(header);
                let _ = request.respond(response);
            }
        })?;
    Ok(())
}
