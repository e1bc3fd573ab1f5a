//! Uplink: enrollment and delivery of sealed records to the verifier over pinned TLS.
//!
//! Owns the HTTPS client (reqwest + rustls with the ring provider, trusting only the pinned CA),
//! the enrollment exchange, batch delivery and the retry policy (exponential backoff with full
//! jitter; a 429 or 503 answer's `Retry-After` is honoured). Hands acknowledgements back to the
//! caller, who deletes from the spool only what the verifier acknowledged.
//!
//! Never deletes anything itself, never sends anything that is not a sealed envelope (except
//! the enrollment request), and never trusts a certificate outside the pinned CA.

use std::sync::Once;
use std::time::Duration;

use cadence_wire::DevicePublicKey;
use cadence_wire::records::{
    EnrollRequest, EnrollResponse, ErrorBody, IngestResponse, encode_batch,
};
use reqwest::{Certificate, StatusCode};

/// Why a call to the verifier failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    /// The pinned CA certificate does not parse.
    #[error("the verifier CA certificate is not valid PEM: {0}")]
    BadCa(String),
    /// The server URL does not parse.
    #[error("invalid server URL {0:?}")]
    BadUrl(String),
    /// The verifier could not be reached (down, network, TLS failure).
    #[error("cannot reach the verifier: {0}")]
    Unreachable(String),
    /// The verifier is overloaded or restarting; try again after the given time.
    #[error("the verifier is busy (HTTP {status}); retry in {retry_after:?}")]
    Busy {
        /// 429 or 503.
        status: u16,
        /// From `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// The verifier refused the request for good (bad token, unknown device, bad envelope).
    #[error("the verifier refused the request (HTTP {status}): {message}")]
    Refused {
        /// The 4xx status.
        status: u16,
        /// The verifier's reason.
        message: String,
    },
    /// The verifier answered with something that is not the expected JSON.
    #[error("unexpected answer from the verifier: {0}")]
    Protocol(String),
}

impl UplinkError {
    /// Whether retrying the same request later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, UplinkError::Unreachable(_) | UplinkError::Busy { .. })
            || matches!(self, UplinkError::Refused { status, .. } if *status >= 500)
    }
}

static PROVIDER: Once = Once::new();

/// Installs rustls's ring provider once per process; reqwest panics without one.
pub fn install_crypto_provider() {
    PROVIDER.call_once(|| {
        // Err means another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An HTTPS client bound to one verifier.
#[derive(Debug, Clone)]
pub struct Uplink {
    client: reqwest::Client,
    base: String,
}

impl Uplink {
    /// A client for `server` (`https://host:port`) trusting only `ca_pem`.
    pub fn new(server: &str, ca_pem: &str) -> Result<Uplink, UplinkError> {
        install_crypto_provider();
        let url =
            reqwest::Url::parse(server).map_err(|_| UplinkError::BadUrl(server.to_owned()))?;
        if url.scheme() != "https" {
            return Err(UplinkError::BadUrl(format!("{server} (must be https)")));
        }
        let ca = Certificate::from_pem(ca_pem.as_bytes())
            .map_err(|e| UplinkError::BadCa(e.to_string()))?;
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| UplinkError::BadCa(e.to_string()))?;
        Ok(Uplink {
            client,
            base: server.trim_end_matches('/').to_owned(),
        })
    }

    /// Registers this device's public key with an enrollment token.
    pub async fn enroll(
        &self,
        token: &str,
        key: &DevicePublicKey,
        os_user: &str,
        hostname: &str,
    ) -> Result<EnrollResponse, UplinkError> {
        let req = EnrollRequest {
            token: token.to_owned(),
            device_public_key: *key,
            os_user: os_user.to_owned(),
            hostname: hostname.to_owned(),
        };
        exchange(
            self.client
                .post(format!("{}/v1/enroll", self.base))
                .json(&req),
        )
        .await
    }

    /// Sends sealed envelopes as one batch; the answer says which were committed.
    pub async fn send(&self, envelopes: &[Vec<u8>]) -> Result<IngestResponse, UplinkError> {
        let body = encode_batch(envelopes.iter().map(Vec::as_slice));
        let req = self
            .client
            .post(format!("{}/v1/ingest", self.base))
            .header("content-type", "application/octet-stream")
            .body(body);
        exchange(req).await
    }
}

/// Sends a request and reads its JSON answer, mapping every failure to an [`UplinkError`].
async fn exchange<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
) -> Result<T, UplinkError> {
    let resp = req
        .send()
        .await
        .map_err(|e| UplinkError::Unreachable(chain(&e)))?;
    let resp = check(resp).await?;
    resp.json()
        .await
        .map_err(|e| UplinkError::Protocol(e.to_string()))
}

/// The whole error chain in one line: reqwest hides the useful part (refused, TLS) in sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response, UplinkError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(UplinkError::Busy {
            status: status.as_u16(),
            retry_after,
        });
    }
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| b.error)
        .unwrap_or(text);
    Err(UplinkError::Refused {
        status: status.as_u16(),
        message,
    })
}

/// Exponential backoff with full jitter: after the n-th failure in a row, wait a uniformly
/// random time up to `min(cap, base * 2^n)`, so a fleet that lost its verifier does not come
/// back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    rng_state: u64,
}

impl Backoff {
    /// A backoff from `base` doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
            ^ u64::from(std::process::id());
        Backoff {
            base,
            cap,
            failures: 0,
            rng_state: seed | 1,
        }
    }

    /// A failure: how long to wait before the next try. `at_least` (a `Retry-After`) wins when
    /// longer.
    pub fn fail(&mut self, at_least: Option<Duration>) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(20));
        self.failures = self.failures.saturating_add(1);
        let ceiling = exp.min(self.cap);
        // xorshift64*: jitter needs no cryptographic quality.
        self.rng_state ^= self.rng_state >> 12;
        self.rng_state ^= self.rng_state << 25;
        self.rng_state ^= self.rng_state >> 27;
        let r = self.rng_state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
        let wait = ceiling.mul_f64(frac).max(Duration::from_millis(50));
        at_least.map_or(wait, |a| a.max(wait))
    }

    /// A success: the next failure starts from the base again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let waits: Vec<Duration> = (0..12).map(|_| b.fail(None)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(5)));
        assert!(waits[0] <= Duration::from_millis(100));
        assert!(
            waits
                .iter()
                .skip(6)
                .any(|w| *w > Duration::from_millis(400)),
            "{waits:?}"
        );
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 6, "jitter: {waits:?}");
        assert_eq!(
            b.fail(Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        b.reset();
        assert!(b.fail(None) <= Duration::from_millis(100));
    }

    #[test]
    fn only_https_and_valid_ca() {
        assert!(matches!(
            Uplink::new("http://127.0.0.1:1", "x"),
            Err(UplinkError::BadUrl(_))
        ));
        assert!(matches!(
            Uplink::new("not a url", "x"),
            Err(UplinkError::BadUrl(_))
        ));
    }
}
