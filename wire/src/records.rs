//! Payloads of the envelope kinds other than features, and the HTTP API's JSON bodies.
//!
//! Owns the JSON shape of consent, gap and heartbeat records (each sealed in an envelope of the
//! matching [`Kind`](crate::envelope::Kind)) and of the verifier's enrollment and ingest
//! exchanges. Never carries input data: a consent record says who decided what and when, a
//! gap record which sequence numbers were lost, a heartbeat the agent's monitoring state.
//!
//! # Ingest batch (body of `POST /v1/ingest`, `application/octet-stream`)
//!
//! A concatenation of frames, each `length: u32 big-endian` then that many bytes of one sealed
//! envelope. At most [`MAX_BATCH_ENVELOPES`] frames and [`MAX_BATCH_BYTES`] bytes in all; every
//! envelope of a batch is from the same device. [`encode_batch`] and [`decode_batch`] are the
//! only code that reads or writes the framing.

use serde::{Deserialize, Serialize};

use crate::envelope::{DeviceId, DevicePublicKey, MAX_ENVELOPE_BYTES, VerifierPublicKey};

/// Most envelopes in one ingest batch.
pub const MAX_BATCH_ENVELOPES: usize = 256;
/// Most bytes in one ingest batch body.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// A user's decision about monitoring on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The user chose "Allow".
    Granted,
    /// The user withdrew consent: capture stopped.
    Withdrawn,
    /// The user paused monitoring for a while ([`ConsentRecord::until_ms`]); the grant stands.
    Paused,
    /// Monitoring resumed after a pause (the pause ran out, or the user ended it).
    Resumed,
}

/// Payload of a `consent` envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecord {
    /// What the user decided.
    pub decision: Decision,
    /// SHA-256 (hex) of the notice text the user was shown.
    pub notice_sha256: String,
    /// When the decision was made, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The OS account that decided.
    pub os_user: String,
    /// For [`Decision::Paused`]: when monitoring resumes by itself, ms since the Unix epoch.
    /// Absent on every other decision, so grant and withdrawal records keep their original
    /// shape and an older verifier still reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

/// Payload of a `gap` envelope: records the agent had to drop before they were delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GapRecord {
    /// First sequence number lost.
    pub first_seq: u64,
    /// Last sequence number lost (inclusive).
    pub last_seq: u64,
    /// Records lost.
    pub count: u64,
    /// Why, in words (for example `spool full`).
    pub reason: String,
}

/// The agent's monitoring state as a heartbeat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitoringState {
    /// Consent granted, capture running.
    Monitoring,
    /// Consent granted, capture paused by the user.
    Paused,
    /// No decision yet: nothing is captured.
    WaitingForConsent,
    /// Consent withdrawn: nothing is captured.
    Withdrawn,
    /// Capture cannot run (no display, no permission).
    Error,
}

/// Payload of a `heartbeat` envelope. Heartbeats are not spooled: they say "alive now".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The agent's monitoring state.
    pub state: MonitoringState,
    /// Records waiting in the agent's spool.
    pub queued: u64,
}

/// `POST /v1/enroll` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// An enrollment token issued by the verifier's administrator.
    pub token: String,
    /// The device's fresh Ed25519 public key.
    pub device_public_key: DevicePublicKey,
    /// The OS account the agent runs for.
    pub os_user: String,
    /// The device's host name.
    pub hostname: String,
}

/// `POST /v1/enroll` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// The identifier the verifier assigned to this (device, OS user).
    pub device_id: DeviceId,
    /// The verifier's HPKE public key, to seal envelopes to.
    pub verifier_public_key: VerifierPublicKey,
}

/// One envelope the verifier refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Its sequence number, when the header could be read.
    pub seq: Option<u64>,
    /// Why it was refused.
    pub reason: String,
    /// The reason as a stable code: `malformed`, `version`, `too_large`, `bad_payload` (the
    /// record itself can never be accepted) or `unknown_device`, `wrong_recipient`,
    /// `bad_signature`, `seq_reused` (a problem of enrollment or keys, which the agent must not
    /// answer by deleting the record).
    #[serde(default)]
    pub code: String,
}

impl Rejected {
    /// Whether the record itself is at fault, so that no verifier will ever accept it.
    pub fn record_at_fault(&self) -> bool {
        matches!(
            self.code.as_str(),
            "malformed" | "version" | "too_large" | "bad_payload"
        )
    }
}

/// `POST /v1/ingest` response (status 200).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    /// Sequence numbers the agent may now delete: committed now, or already stored before.
    pub acked: Vec<u64>,
    /// Those of `acked` that were already stored (a resend); informational.
    pub duplicates: Vec<u64>,
    /// Envelopes refused for good; resending them will not help.
    pub rejected: Vec<Rejected>,
}

/// Error body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, in words.
    pub error: String,
}

/// Why a batch body could not be split into envelopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The body is larger than [`MAX_BATCH_BYTES`].
    #[error("batch larger than {MAX_BATCH_BYTES} bytes")]
    TooLarge,
    /// More than [`MAX_BATCH_ENVELOPES`] frames.
    #[error("more than {MAX_BATCH_ENVELOPES} envelopes in one batch")]
    TooMany,
    /// A frame's length runs past the end of the body (truncated upload).
    #[error("truncated frame at byte {0}")]
    Truncated(usize),
    /// A frame longer than an envelope can be.
    #[error("frame of {0} bytes exceeds the envelope limit")]
    FrameTooLarge(usize),
    /// A batch with no frames.
    #[error("empty batch")]
    Empty,
}

/// Frames envelopes into one batch body.
pub fn encode_batch<'a>(envelopes: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in envelopes {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Splits a batch body into envelope byte slices, checking every limit.
pub fn decode_batch(body: &[u8]) -> Result<Vec<&[u8]>, BatchError> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge);
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let Some(len_bytes) = body.get(at..at + 4) else {
            return Err(BatchError::Truncated(at));
        };
        let len =
            u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        if len > MAX_ENVELOPE_BYTES {
            return Err(BatchError::FrameTooLarge(len));
        }
        let Some(frame) = body.get(at + 4..at + 4 + len) else {
            return Err(BatchError::Truncated(at));
        };
        if out.len() == MAX_BATCH_ENVELOPES {
            return Err(BatchError::TooMany);
        }
        out.push(frame);
        at += 4 + len;
    }
    if out.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_and_limits() {
        let a = [1u8; 10];
        let b = [2u8; 300];
        let body = encode_batch([&a[..], &b[..]]);
        assert_eq!(decode_batch(&body).unwrap(), vec![&a[..], &b[..]]);
        for cut in 1..body.len() {
            if cut == 14 {
                continue; // a whole first frame is a valid batch
            }
            assert!(decode_batch(&body[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode_batch(&[]), Err(BatchError::Empty));
        let huge = (MAX_ENVELOPE_BYTES as u32 + 1).to_be_bytes();
        assert!(matches!(
            decode_batch(&huge),
            Err(BatchError::FrameTooLarge(_))
        ));
        let many: Vec<Vec<u8>> = (0..=MAX_BATCH_ENVELOPES).map(|_| vec![0u8; 1]).collect();
        let body = encode_batch(many.iter().map(|v| &v[..]));
        assert_eq!(decode_batch(&body), Err(BatchError::TooMany));
    }

    #[test]
    fn only_record_faults_let_the_agent_drop_a_record() {
        let r = |code: &str| Rejected {
            seq: Some(1),
            reason: String::new(),
            code: code.into(),
        };
        for code in ["malformed", "version", "too_large", "bad_payload"] {
            assert!(r(code).record_at_fault(), "{code}");
        }
        for code in [
            "unknown_device",
            "wrong_recipient",
            "bad_signature",
            "seq_reused",
            "",
            "new",
        ] {
            assert!(!r(code).record_at_fault(), "{code}");
        }
        // An answer from a verifier without codes keeps the record.
        let old: Rejected = serde_json::from_str(r#"{"seq":3,"reason":"x"}"#).unwrap();
        assert!(!old.record_at_fault());
    }

    #[test]
    fn consent_json_is_strict() {
        let c = ConsentRecord {
            decision: Decision::Granted,
            notice_sha256: "ab".into(),
            at_ms: 5,
            os_user: "alice".into(),
            until_ms: None,
        };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"granted\""));
        assert!(
            !s.contains("until_ms"),
            "a grant keeps its original shape: {s}"
        );
        let p = ConsentRecord {
            decision: Decision::Paused,
            until_ms: Some(1_805_000),
            ..c.clone()
        };
        let ps = serde_json::to_string(&p).unwrap();
        assert!(ps.contains("\"paused\"") && ps.contains("\"until_ms\":1805000"));
        assert_eq!(serde_json::from_str::<ConsentRecord>(&ps).unwrap(), p);
        assert_eq!(serde_json::from_str::<ConsentRecord>(&s).unwrap(), c);
        assert!(serde_json::from_str::<ConsentRecord>(&s.replace("}", ",\"x\":1}")).is_err());
    }
}
