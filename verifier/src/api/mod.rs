//! The HTTP API: routes, request limits, and the mapping of every outcome to a status code.
//!
//! Owns `POST /v1/enroll`, `POST /v1/ingest` and `GET /healthz`. Hands requests on to
//! [`Ingest`] and the [`Store`]; answers with the JSON bodies of [`cadence_wire::records`].
//! Never panics on a request, never answers 200 to an ingest before the store committed, and
//! never logs a token or a payload.
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/enroll`, [`EnrollRequest`] | 200 [`EnrollResponse`]; 400 malformed; 401 token not accepted; 413 body over 64 KiB |
//! | `POST /v1/ingest`, batch body | 200 [`IngestResponse`] when at least one envelope was acknowledged, else the first refusal's status (below) |
//! | `GET /healthz` | 200 `ok` |
//! | anything else | 404 (405 for a wrong method) |
//!
//! Ingest refusals: 400 malformed framing, header, payload, wrong version, or envelopes of more
//! than one device; 401 unknown device, bad signature, or sealed to another verifier key;
//! 409 sequence number reused; 413 body, batch or envelope over its limit. Every error body is
//! an [`ErrorBody`]. When the store is busy the answer is 503 with `Retry-After`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cadence_wire::records::{BatchError, EnrollRequest, EnrollResponse, ErrorBody, IngestResponse};
use cadence_wire::{DeviceId, VerifierPublicKey};

use crate::Error;
use crate::ingest::{Ingest, Reason, Refusal};
use crate::keys::token_hash;
use crate::store::{NewDevice, Store};

/// Largest enrollment request body.
pub const MAX_ENROLL_BYTES: usize = 64 * 1024;
/// Longest `os_user` or `hostname` accepted at enrollment, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Seconds a client is asked to wait when the verifier is busy.
pub const RETRY_AFTER_SECS: u32 = 2;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The ingest stage.
    pub ingest: Ingest,
    /// The store, for enrollment.
    pub store: Store,
    /// The verifier's HPKE public key, returned at enrollment.
    pub public_key: VerifierPublicKey,
    /// SHA-256 of the tokens from the configuration file.
    pub extra_token_hashes: Vec<[u8; 32]>,
    /// Largest ingest body, for the 413 message.
    pub max_body_bytes: usize,
}

/// The API's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.max_body_bytes;
    Router::new()
        .route(
            "/v1/enroll",
            post(enroll).layer(DefaultBodyLimit::max(MAX_ENROLL_BYTES)),
        )
        .route(
            "/v1/ingest",
            post(ingest).layer(DefaultBodyLimit::max(max_body)),
        )
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
}

/// An error answer: a status and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// The answer for a failed store operation: 503 when busy, 500 otherwise.
    fn store(e: Error) -> ApiError {
        match e {
            Error::Busy => {
                tracing::warn!("store busy, asking the client to retry");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "verifier busy, retry later",
                )
            }
            other => {
                tracing::error!(error = %other, "store failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal storage error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// The status an ingest refusal of one envelope stands for.
pub fn reason_status(reason: &Reason) -> StatusCode {
    match reason {
        Reason::Malformed(_) | Reason::WrongVersion(_) | Reason::BadPayload(_) => {
            StatusCode::BAD_REQUEST
        }
        Reason::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Reason::UnknownDevice | Reason::WrongRecipient | Reason::BadSignature => {
            StatusCode::UNAUTHORIZED
        }
        Reason::SeqReused => StatusCode::CONFLICT,
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn enroll(
    State(state): State<Arc<AppState>>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let Json(request) = body.map_err(|rejection| {
        let status = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        tracing::warn!(
            status = status.as_u16(),
            "enrollment refused: malformed request"
        );
        ApiError::new(
            status,
            format!("malformed enrollment request: {}", rejection.body_text()),
        )
    })?;
    for (field, value) in [
        ("os_user", &request.os_user),
        ("hostname", &request.hostname),
    ] {
        if value.is_empty() || value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
            tracing::warn!(field, "enrollment refused: bad field");
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{field} must be 1 to {MAX_NAME_BYTES} bytes without control characters"),
            ));
        }
    }
    let hash = token_hash(&request.token);
    let known = state.extra_token_hashes.contains(&hash)
        || state
            .store
            .token_known(&hash)
            .await
            .map_err(ApiError::store)?;
    if !known {
        tracing::warn!(hostname = %request.hostname, "enrollment refused: token not accepted");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "enrollment token not accepted",
        ));
    }
    let new_id = DeviceId::random().map_err(|e| {
        tracing::error!(error = %e, "no device id");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not make a device id",
        )
    })?;
    let device = NewDevice {
        public_key: request.device_public_key,
        os_user: &request.os_user,
        hostname: &request.hostname,
    };
    let device_id = state
        .store
        .enroll(&device, new_id, now_ms())
        .await
        .map_err(ApiError::store)?;
    if device_id == new_id {
        tracing::info!(device = %device_id, hostname = %request.hostname, "device enrolled");
    } else {
        tracing::info!(device = %device_id, "device enrolled again with the same key");
    }
    Ok(Json(EnrollResponse {
        device_id,
        verifier_public_key: state.public_key,
    }))
}

async fn ingest(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestResponse>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            tracing::warn!(
                limit = state.max_body_bytes,
                "ingest refused: body over the limit"
            );
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over the limit of {} bytes", state.max_body_bytes),
            )
        } else {
            tracing::warn!("ingest refused: body could not be read");
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("body could not be read: {}", rejection.body_text()),
            )
        }
    })?;
    let answer = state.ingest.batch(body, now_ms()).await.map_err(|refusal| {
        let status = match &refusal {
            Refusal::Batch(BatchError::TooLarge | BatchError::TooMany | BatchError::FrameTooLarge(_)) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Refusal::Batch(_) | Refusal::Garbled(_) | Refusal::MixedDevices => {
                StatusCode::BAD_REQUEST
            }
            Refusal::Store(_) | Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        match refusal {
            Refusal::Store(e) => ApiError::store(e),
            other => {
                if status.is_server_error() {
                    tracing::error!(error = %other, "ingest failed");
                } else {
                    tracing::warn!(reason = %other, status = status.as_u16(), "ingest batch refused");
                }
                ApiError::new(status, other.to_string())
            }
        }
    })?;
    if answer.response.acked.is_empty() {
        // Nothing to acknowledge: the first refusal decides the status.
        return Err(match answer.first_refusal {
            Some(reason) => ApiError::new(reason_status(&reason), reason.to_string()),
            None => ApiError::new(StatusCode::BAD_REQUEST, "no envelope in batch"),
        });
    }
    Ok(Json(answer.response))
}

/// The verifier's clock, milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_store_asks_the_client_to_retry() {
        let response = ApiError::store(Error::Busy).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER).unwrap(),
            &RETRY_AFTER_SECS.to_string()
        );
        let response = ApiError::store(Error::Corrupt("x".into())).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn every_refusal_reason_has_a_client_error_status() {
        let reasons = [
            Reason::Malformed("x".into()),
            Reason::WrongVersion(2),
            Reason::TooLarge(1),
            Reason::UnknownDevice,
            Reason::WrongRecipient,
            Reason::BadSignature,
            Reason::BadPayload("x".into()),
            Reason::SeqReused,
        ];
        let statuses: Vec<u16> = reasons.iter().map(|r| reason_status(r).as_u16()).collect();
        assert_eq!(statuses, vec![400, 400, 413, 401, 401, 401, 400, 409]);
    }
}
