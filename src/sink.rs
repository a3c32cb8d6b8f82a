//! A webhook receiver that honours idempotency keys: the demo's destination (mounted on the
//! server's own HTTP port, so that messages visibly flow) and `c360 sink` (standalone, for
//! trying a configuration or measuring delivery).
//!
//! It checks the `X-C360-Signature` when it knows secrets, takes single actions or
//! `{"actions": [...]}` batches, counts each idempotency key once, logs what arrives and
//! shows the latest messages at `GET /sink`.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::actions::delivery::signature;
use crate::error::{C360Error, Result};

/// Idempotency keys remembered (oldest forgotten first): beyond any retry window here.
const KEYS_KEPT: usize = 1_000_000;
/// Messages `GET /sink` shows.
const RECENT_KEPT: usize = 100;

#[derive(Debug, Default)]
struct Received {
    seen: HashSet<String>,
    order: VecDeque<String>,
    recent: VecDeque<Value>,
    messages: u64,
    duplicates: u64,
    refused: u64,
}

/// The receiver's state: what it has seen, and how to check signatures.
#[derive(Debug)]
pub struct Sink {
    secrets: Vec<String>,
    /// Log one line per request rather than per message (for benchmarks).
    quiet: bool,
    received: Mutex<Received>,
}

impl Sink {
    /// A receiver that accepts bodies signed with any of `secrets` (any body if none).
    pub fn new(secrets: Vec<String>, quiet: bool) -> Arc<Sink> {
        Arc::new(Sink {
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
            quiet,
            received: Mutex::new(Received::default()),
        })
    }

    /// `POST /sink` and `GET /sink`.
    pub fn router(self: &Arc<Sink>) -> Router {
        Router::new()
            .route("/sink", get(show).post(receive))
            .with_state(Arc::clone(self))
    }

    /// How many distinct messages arrived, and how many repeats of one were dropped.
    pub fn counts(&self) -> (u64, u64) {
        let received = self.lock();
        (received.messages, received.duplicates)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        // The state is counters and sets; one left by a panicking request is still usable.
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn signed(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        if self.secrets.is_empty() {
            return true;
        }
        let Some(given) = headers
            .get("x-c360-signature")
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        self.secrets
            .iter()
            .any(|secret| signature(secret, body) == given)
    }
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({ "error": reason }))).into_response()
}

async fn receive(State(sink): State<Arc<Sink>>, headers: HeaderMap, body: Bytes) -> Response {
    if !sink.signed(&headers, &body) {
        sink.lock().refused += 1;
        return refuse(StatusCode::UNAUTHORIZED, "bad or missing X-C360-Signature");
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            sink.lock().refused += 1;
            return refuse(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}"));
        }
    };
    let actions = match parsed.get("actions") {
        Some(Value::Array(actions)) => actions.clone(),
        _ => vec![parsed],
    };
    if actions
        .iter()
        .any(|a| a.get("idempotency_key").and_then(Value::as_str).is_none())
    {
        sink.lock().refused += 1;
        return refuse(
            StatusCode::BAD_REQUEST,
            "every action needs a string idempotency_key",
        );
    }
    let mut fresh = Vec::new();
    {
        let mut received = sink.lock();
        for action in actions {
            let key = action
                .get("idempotency_key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !received.seen.insert(key.clone()) {
                received.duplicates += 1;
                continue;
            }
            received.order.push_back(key);
            if received.order.len() > KEYS_KEPT
                && let Some(oldest) = received.order.pop_front()
            {
                received.seen.remove(&oldest);
            }
            received.messages += 1;
            if received.recent.len() == RECENT_KEPT {
                received.recent.pop_front();
            }
            received.recent.push_back(action.clone());
            fresh.push(action);
        }
    }
    log(&sink, &fresh);
    StatusCode::OK.into_response()
}

fn log(sink: &Sink, fresh: &[Value]) {
    let field = |a: &Value, name: &str| {
        a.get(name)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    if sink.quiet || fresh.len() > 10 {
        if let Some(first) = fresh.first() {
            tracing::info!(
                messages = fresh.len(),
                first_trigger = %field(first, "trigger"),
                "sink received messages"
            );
        }
        return;
    }
    for action in fresh {
        tracing::info!(
            trigger = %field(action, "trigger"),
            channel = %field(action, "channel"),
            profile = %field(action, "profile_id"),
            payload = %action.get("payload").cloned().unwrap_or_default(),
            "sink received a message"
        );
    }
}

async fn show(State(sink): State<Arc<Sink>>) -> Response {
    let received = sink.lock();
    axum::Json(json!({
        "messages": received.messages,
        "duplicates": received.duplicates,
        "refused": received.refused,
        "recent": received.recent.iter().rev().collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `c360 sink`: serves the receiver alone until `stop` resolves.
pub async fn serve(
    listen: SocketAddr,
    secrets: Vec<String>,
    quiet: bool,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let sink = Sink::new(secrets, quiet);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| C360Error::Listen {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| C360Error::io("sink listener", e))?;
    println!("c360 sink is up: POST http://{addr}/sink (GET shows the latest messages)");
    axum::serve(listener, sink.router())
        .with_graceful_shutdown(stop)
        .await
        .map_err(|source| C360Error::Listen {
            addr: addr.to_string(),
            source,
        })
}
