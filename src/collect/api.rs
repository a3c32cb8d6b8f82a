//! The Segment HTTP tracking API's endpoints: `POST /v1/{track,identify,page,screen,group,
//! alias,batch}`. Each request is authenticated, size-checked, decompressed and validated
//! whole before any of it is buffered; the answer is 200 only once it is durable.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::ingest::{Ingest, Refused};
use super::metrics::Metrics;
use super::segment;

#[derive(Clone)]
pub struct Collector {
    pub ingest: Arc<Ingest>,
    /// Empty: any key is accepted (the listener is then loopback only).
    pub write_keys: Arc<HashSet<String>>,
    pub max_body_bytes: usize,
}

/// A 4xx or 5xx answer with a JSON reason.
struct Refusal {
    status: StatusCode,
    field: Option<String>,
    reason: String,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, field: Option<&str>, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            field: field.map(str::to_string),
            reason: reason.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut body = json!({"success": false, "error": self.reason});
        if let Some(field) = &self.field {
            body["field"] = json!(field);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub async fn post(
    State(collector): State<Collector>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(&collector, &kind, &headers, body).await {
        Ok(()) => axum::Json(json!({"success": true})).into_response(),
        Err(refusal) => {
            if refusal.status.is_client_error() {
                Metrics::count(&collector.ingest.metrics.rejected, 1);
            }
            refusal.into_response()
        }
    }
}

async fn handle(
    collector: &Collector,
    kind: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), Refusal> {
    if kind != "batch" && !segment::TYPES.contains(&kind) {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            None,
            format!("no endpoint /v1/{kind}"),
        ));
    }
    let header_key = basic_auth_user(headers)?;
    if let Some(key) = &header_key {
        check_key(collector, key)?;
    }
    let body = read_body(collector.max_body_bytes, headers, body).await?;
    let received_at = chrono::Utc::now().timestamp_micros();
    let (body_key, rows) = segment::parse_body(kind, &body, received_at).map_err(|invalid| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            Some(&invalid.field),
            format!("{}: {}", invalid.field, invalid.reason),
        )
    })?;
    if header_key.is_none() {
        check_key(collector, body_key.as_deref().unwrap_or(""))?;
    }
    collector.ingest.submit(rows).await.map_err(|refused| {
        let (reason, retry) = match refused {
            Refused::Busy(seconds) => ("the collector is busy; retry later".to_string(), seconds),
            Refused::Failed(why) => (format!("not stored ({why}); retry later"), 1),
        };
        let mut refusal = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, None, reason);
        refusal.retry_after = Some(retry);
        refusal
    })
}

/// The write key: the Basic-auth user, as Segment's SDKs send it (the password is empty).
fn basic_auth_user(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let unauthorized =
        |why: &str| Refusal::new(StatusCode::UNAUTHORIZED, Some("Authorization"), why);
    let text = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let encoded = text
        .strip_prefix("Basic ")
        .ok_or_else(|| unauthorized("expected Basic authentication with the write key as user"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| unauthorized("the Basic credentials are not base64"))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| unauthorized("the Basic credentials are not UTF-8"))?;
    let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
    Ok(Some(user.to_string()))
}

fn check_key(collector: &Collector, key: &str) -> Result<(), Refusal> {
    if collector.write_keys.is_empty() || collector.write_keys.contains(key) {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            Some("writeKey"),
            "unknown write key",
        ))
    }
}

/// The body, gunzipped if it says so, refused past `limit` bytes either way (a small gzip
/// body may inflate to gigabytes).
async fn read_body(limit: usize, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("body"),
            format!("the body is over the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let raw = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(raw.to_vec()),
        "gzip" | "x-gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        Some("body"),
                        format!("body: not valid gzip: {e}"),
                    )
                })?;
            if out.len() > limit {
                return Err(too_large());
            }
            Ok(out)
        }
        other => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            Some("Content-Encoding"),
            format!("Content-Encoding {other} is not supported (use gzip or none)"),
        )),
    }
}
