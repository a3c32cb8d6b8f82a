//! Webhook delivery: each configured destination claims its channel's pending actions and
//! POSTs them as JSON, at least once: one action per request, or `batch_size` actions per
//! request as `{"actions": [...]}` for receivers that take batches.
//!
//! A single-action request carries the action's `Idempotency-Key` header; every action, in
//! either shape, carries its `idempotency_key` in the body (the same on every attempt, so a
//! receiver that honours it sees each action once). `X-C360-Signature: sha256=<hex>` is the
//! HMAC-SHA256 of the body under the destination's secret. A 2xx acknowledges every action
//! of the request; a 429, a 5xx, a timeout or a refused connection retries after an
//! exponential backoff with jitter; any other answer, or the last allowed attempt,
//! dead-letters the action (status `dead`, with the error). Requests to one destination
//! are spaced so that at most `rate_per_second` actions leave per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::{Action, Queue};
use crate::config::Destination;

/// Actions claimed per round trip to the queue, at least.
const CLAIM_BATCH: usize = 256;
/// Requests in flight per destination.
const CONCURRENCY: usize = 32;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_POLL: Duration = Duration::from_millis(100);
const FIRST_BACKOFF_MICROS: i64 = 1_000_000;
const MAX_BACKOFF_MICROS: i64 = 3_600 * 1_000_000;

/// Runs one delivery loop per destination until `stop` turns true.
pub async fn run(
    queue: Arc<Queue>,
    destinations: Vec<Destination>,
    visibility_micros: i64,
    stop: watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "webhook delivery cannot start");
            return;
        }
    };
    let loops = destinations.into_iter().map(|destination| {
        deliver_to(
            Arc::clone(&queue),
            client.clone(),
            destination,
            visibility_micros,
            stop.clone(),
        )
    });
    futures::future::join_all(loops).await;
}

async fn deliver_to(
    queue: Arc<Queue>,
    client: reqwest::Client,
    destination: Destination,
    visibility_micros: i64,
    mut stop: watch::Receiver<bool>,
) {
    let batch_size = destination.batch_size.max(1);
    let claim_size = (batch_size * CONCURRENCY).clamp(CLAIM_BATCH, 8_192);
    let per_action = Duration::from_secs_f64(1.0 / f64::from(destination.rate_per_second.max(1)));
    let mut next_start = Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        let claimed = {
            let queue = Arc::clone(&queue);
            let channel = destination.channel.clone();
            let now = now_micros();
            tokio::task::spawn_blocking(move || {
                queue.claim(&channel, claim_size, now, visibility_micros)
            })
            .await
        };
        let actions = match claimed {
            Ok(Ok(actions)) => actions,
            Ok(Err(e)) => {
                tracing::warn!(channel = %destination.channel, error = %e, "cannot claim actions");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim task failed");
                Vec::new()
            }
        };
        if actions.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        // Spaced starts enforce the rate limit; up to CONCURRENCY requests overlap.
        let requests: Vec<(Vec<Action>, Instant)> = chunks(actions, batch_size)
            .into_iter()
            .map(|chunk| {
                next_start = next_start.max(Instant::now());
                let start = next_start;
                next_start += per_action * chunk.len() as u32;
                (chunk, start)
            })
            .collect();
        let outcomes: Vec<(Vec<(u64, u32)>, Outcome)> = futures::stream::iter(requests)
            .map(|(chunk, start)| {
                let client = client.clone();
                let destination = &destination;
                async move {
                    tokio::time::sleep_until(start.into()).await;
                    let outcome = post(&client, destination, &chunk).await;
                    let ids = chunk.iter().map(|a| (a.action_id, a.attempts)).collect();
                    (ids, outcome)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let queue = Arc::clone(&queue);
        let max_attempts = destination.max_attempts;
        let channel = destination.channel.clone();
        let recorded =
            tokio::task::spawn_blocking(move || record(&queue, outcomes, max_attempts)).await;
        if let Ok(Err(e)) | Err(e) = recorded.map_err(|e| crate::C360Error::Queue(e.to_string())) {
            // Unrecorded outcomes are safe: the claims expire and the actions go out again,
            // with the same idempotency keys.
            tracing::warn!(channel = %channel, error = %e, "cannot record deliveries");
        }
    }
}

fn chunks(actions: Vec<Action>, size: usize) -> Vec<Vec<Action>> {
    let mut out = Vec::with_capacity(actions.len().div_ceil(size));
    let mut current = Vec::with_capacity(size);
    for action in actions {
        current.push(action);
        if current.len() == size {
            out.push(std::mem::replace(&mut current, Vec::with_capacity(size)));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

enum Outcome {
    Delivered,
    Retry(String),
    Permanent(String),
}

fn record(
    queue: &Queue,
    outcomes: Vec<(Vec<(u64, u32)>, Outcome)>,
    max_attempts: u32,
) -> crate::Result<()> {
    let now = now_micros();
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    for (ids, outcome) in outcomes {
        match outcome {
            Outcome::Delivered => delivered.extend(ids.into_iter().map(|(id, _)| id)),
            Outcome::Retry(error) => {
                for (id, attempts) in ids {
                    let retry_at =
                        (attempts < max_attempts).then(|| now + backoff_micros(attempts, id));
                    failed.push((id, error.clone(), retry_at));
                }
            }
            Outcome::Permanent(error) => {
                failed.extend(ids.into_iter().map(|(id, _)| (id, error.clone(), None)));
            }
        }
    }
    if !failed.is_empty() {
        queue.fail(&failed)?;
    }
    queue.ack(&delivered, now)?;
    Ok(())
}

/// Exponential backoff from one second, capped at an hour, with up to 50% jitter drawn from
/// the action id and attempt (so that retries of a burst spread out).
pub fn backoff_micros(attempts: u32, action_id: u64) -> i64 {
    let base = FIRST_BACKOFF_MICROS
        .saturating_mul(1i64 << attempts.saturating_sub(1).min(20))
        .min(MAX_BACKOFF_MICROS);
    let spread = (action_id
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(attempts))
        >> 33) as i64
        % 1_000;
    base + base / 2 * spread / 1_000
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Appends the JSON a receiver gets for one action.
fn write_action(out: &mut Vec<u8>, action: &Action) {
    let text = |out: &mut Vec<u8>, value: &str| {
        // Writing a &str to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    };
    out.extend_from_slice(format!("{{\"action_id\":{},\"trigger\":", action.action_id).as_bytes());
    text(out, &action.trigger);
    out.extend_from_slice(b",\"profile_id\":");
    text(out, &action.profile_id);
    out.extend_from_slice(b",\"channel\":");
    text(out, &action.channel);
    out.extend_from_slice(b",\"idempotency_key\":");
    text(out, &action.idempotency_key);
    out.extend_from_slice(
        format!(
            ",\"created_at\":{},\"attempt\":{},\"payload\":",
            action.created_at, action.attempts
        )
        .as_bytes(),
    );
    // The payload is a JSON object the queue rendered itself.
    out.extend_from_slice(action.payload.as_deref().unwrap_or("null").as_bytes());
    out.push(b'}');
}

/// The body of one request: the action itself, or `{"actions": [...]}` for a batch.
pub fn body(actions: &[Action], batched: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(actions.len() * 256);
    match (actions, batched) {
        ([single], false) => write_action(&mut out, single),
        _ => {
            out.extend_from_slice(b"{\"actions\":[");
            for (i, action) in actions.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_action(&mut out, action);
            }
            out.extend_from_slice(b"]}");
        }
    }
    out
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let mut out = String::from("sha256=");
    for byte in tag.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

async fn post(client: &reqwest::Client, destination: &Destination, actions: &[Action]) -> Outcome {
    let batched = destination.batch_size > 1;
    let body = body(actions, batched);
    let mut request = client
        .post(&destination.url)
        .header("Content-Type", "application/json")
        .header("X-C360-Signature", signature(&destination.secret, &body));
    if let [single] = actions
        && !batched
    {
        request = request.header("Idempotency-Key", &single.idempotency_key);
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Outcome::Delivered,
        Ok(response) => {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let error = format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            );
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Outcome::Retry(error)
            } else {
                Outcome::Permanent(error)
            }
        }
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = backoff_micros(1, 7);
        assert!((1_000_000..1_500_000).contains(&first), "{first}");
        let third = backoff_micros(3, 7);
        assert!((4_000_000..6_000_000).contains(&third), "{third}");
        assert!(backoff_micros(40, 7) <= MAX_BACKOFF_MICROS * 3 / 2);
        assert_ne!(
            backoff_micros(2, 1),
            backoff_micros(2, 2),
            "jitter spreads a burst"
        );
    }

    #[test]
    fn bodies_are_json_with_the_payload_inline() {
        let action = Action {
            action_id: 3,
            trigger: "t\"q".into(),
            profile_id: "p".into(),
            channel: "email".into(),
            payload: Some(r#"{"first_name":"Zoé"}"#.into()),
            idempotency_key: "t:p:1".into(),
            status: super::super::Status::Delivering,
            reason: None,
            created_at: 1,
            available_at: 2,
            attempts: 1,
            last_error: None,
            delivered_at: None,
        };
        let single: serde_json::Value =
            serde_json::from_slice(&body(&[action.clone()], false)).unwrap();
        assert_eq!(single["trigger"], "t\"q");
        assert_eq!(single["payload"]["first_name"], "Zoé");
        let batch: serde_json::Value =
            serde_json::from_slice(&body(&[action.clone(), action], true)).unwrap();
        assert_eq!(batch["actions"].as_array().map(Vec::len), Some(2));
        assert_eq!(batch["actions"][1]["idempotency_key"], "t:p:1");
    }

    #[test]
    fn signatures_are_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
