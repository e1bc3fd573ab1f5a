//! Alerts: delivery of stored alerts to the configured webhooks.
//!
//! Owns the webhook request (body, signature, headers), the retry schedule and the background
//! task that works through the outbox ([`Dispatcher`]). Alerts themselves are raised elsewhere
//! (trust alerts by [`crate::scorer`], injection alerts by [`crate::ingest`]) and stored with
//! one outbox row per configured webhook in the same transaction; this module only reads the
//! outbox and records each attempt. Hands on nothing but HTTP requests. Never logs or prints a
//! webhook secret or a whole webhook URL (URLs often carry a secret of their own: logs name a
//! webhook by scheme and host), never follows a redirect (the signed alert would go where the
//! operator did not send it), and never sends a feature value: the evidence is scores or the
//! guard's aggregate timing.
//!
//! # The request
//!
//! `POST <url>` with `Content-Type: application/json`, `X-Cadence-Delivery: <alert_id>` (the
//! same on every retry, so a receiver can drop a duplicate) and `X-Cadence-Signature:
//! sha256=<hex>`, the HMAC-SHA256 of the exact body bytes under the webhook's shared secret.
//! The body is one JSON object:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `alert_id` | integer | the alert's id in this verifier, increasing |
//! | `kind` | string | `trust` (trust level fell below the lockout) or `injection` (the agent's guard) |
//! | `device_id` | string | the device (32 hex digits) |
//! | `os_user` | string | the OS account it enrolled for |
//! | `hostname` | string | its host name at enrollment |
//! | `created_ms` | integer | when it happened (device clock, ms since the Unix epoch) |
//! | `trust` | number or null | the trust level that crossed the lockout (trust alerts) |
//! | `evidence` | object | trust alerts: scores, level and lockout; injection alerts: the guard's payload |
//!
//! # Retries
//!
//! A 2xx answer is a delivery. Anything else (another status, a refused connection, a
//! timeout of [`REQUEST_TIMEOUT`]) is retried after [`retry_delay`]: 1 s doubling up to 1 h,
//! plus up to a quarter more at random so that many alerts do not retry in lockstep. After
//! [`MAX_ATTEMPTS`] failed attempts the delivery is given up (`failed = 1`, logged as an
//! error). Delivery is at least once: an attempt cut off by shutdown is made again on the next
//! start.

use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::Error;
use crate::api::now_ms;
use crate::config::Webhook;
use crate::store::{AlertSummary, Delivery, DeliveryOutcome, Store};

/// Attempts before a delivery is given up.
pub const MAX_ATTEMPTS: u32 = 15;
/// The wait after the first failed attempt; it doubles with each further one.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(3600);
/// How long one attempt may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries attempted at once.
const CONCURRENT: u32 = 16;
/// The longest the dispatcher sleeps without looking at the outbox.
const IDLE_POLL: Duration = Duration::from_secs(60);
/// The wait after the store failed, before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The delivery header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-cadence-signature";
/// The delivery header carrying the alert id.
pub const DELIVERY_HEADER: &str = "x-cadence-delivery";

/// What raisers of alerts need: the webhook URLs to queue each alert for, and a way to wake
/// the dispatcher once the alert is committed. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    urls: Arc<[String]>,
    /// Wakes the dispatcher; a wake-up sent while it is busy is kept until it next waits.
    wake: Arc<Notify>,
}

impl Outbox {
    /// The configured webhook URLs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Tells the dispatcher that new deliveries are queued (call after the commit).
    pub fn wake(&self) {
        if !self.urls.is_empty() {
            self.wake.notify_one();
        }
    }
}

/// One configured webhook, ready to send to.
struct Endpoint {
    url: String,
    /// Scheme and host only, for logs.
    name: String,
    key: hmac::Key,
    client: reqwest::Client,
}

/// The background task that delivers due outbox rows.
pub struct Dispatcher {
    store: Store,
    endpoints: Vec<Endpoint>,
    outbox: Outbox,
    rng: SystemRandom,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.endpoints.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("Dispatcher")
            .field("webhooks", &names)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher for `webhooks` over `store`, and the [`Outbox`] handle raisers use.
    pub fn new(store: Store, webhooks: &[Webhook]) -> Result<(Dispatcher, Outbox), Error> {
        crate::tls::install_crypto_provider();
        let mut endpoints = Vec::with_capacity(webhooks.len());
        for (i, w) in webhooks.iter().enumerate() {
            let mut builder = reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(REQUEST_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("cadence-verifier/", env!("CARGO_PKG_VERSION")));
            if let Some(path) = &w.ca_file {
                let problem = |what: String| Error::Config {
                    problems: vec![format!("webhooks[{i}].ca_file: {what}")],
                };
                let pem = std::fs::read(path)
                    .map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| problem(format!("{}: {e}", path.display())))?;
                builder = builder.tls_certs_only(certs);
            }
            let client = builder
                .build()
                .map_err(|e| Error::Tls(format!("webhook client for {}: {e}", w.name())))?;
            endpoints.push(Endpoint {
                url: w.url.clone(),
                name: w.name(),
                key: hmac::Key::new(hmac::HMAC_SHA256, w.secret.expose()),
                client,
            });
        }
        let outbox = Outbox {
            urls: webhooks.iter().map(|w| w.url.clone()).collect(),
            wake: Arc::new(Notify::new()),
        };
        Ok((
            Dispatcher {
                store,
                endpoints,
                outbox: outbox.clone(),
                rng: SystemRandom::new(),
            },
            outbox,
        ))
    }

    /// Delivers due outbox rows until `shutdown` turns true (or its sender is dropped).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if self.endpoints.is_empty() {
            return;
        }
        let this = Arc::new(self);
        let urls: Vec<String> = this.outbox.urls().to_vec();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = now_ms();
            match this.store.due_deliveries(now, &urls, CONCURRENT).await {
                Ok(due) if !due.is_empty() => {
                    let mut set = JoinSet::new();
                    for d in due {
                        set.spawn(this.clone().deliver(d));
                    }
                    tokio::select! {
                        () = async { while set.join_next().await.is_some() {} } => {}
                        () = stopped(&mut shutdown) => {
                            // Cut-off attempts are not counted: they are made again on the
                            // next start (at least once; receivers dedupe by delivery id).
                            set.abort_all();
                            break;
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the webhook outbox");
                    tokio::select! {
                        () = tokio::time::sleep(STORE_RETRY) => continue,
                        () = stopped(&mut shutdown) => break,
                    }
                }
            }
            let wait = match this.store.next_delivery_ms(&urls).await {
                Ok(Some(at)) => Duration::from_millis(at.saturating_sub(now_ms())),
                Ok(None) => IDLE_POLL,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the webhook outbox");
                    STORE_RETRY
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait.min(IDLE_POLL)) => {}
                () = this.outbox.wake.notified() => {}
                () = stopped(&mut shutdown) => break,
            }
        }
    }

    /// Makes one attempt and records its outcome.
    async fn deliver(self: Arc<Self>, d: Delivery) {
        let Some(endpoint) = self.endpoints.iter().find(|e| e.url == d.url) else {
            return; // only rows of configured URLs are read
        };
        let attempt = d.attempts.saturating_add(1);
        let outcome = match self.post(endpoint, &d.alert).await {
            Ok(()) => {
                tracing::info!(
                    alert = d.alert.id,
                    webhook = %endpoint.name,
                    attempt,
                    "alert delivered"
                );
                DeliveryOutcome::Delivered { at_ms: now_ms() }
            }
            Err(error) if attempt >= MAX_ATTEMPTS => {
                tracing::error!(
                    alert = d.alert.id,
                    webhook = %endpoint.name,
                    attempt,
                    %error,
                    "alert delivery given up"
                );
                DeliveryOutcome::GaveUp { error }
            }
            Err(error) => {
                let delay = retry_delay(attempt, self.jitter());
                tracing::warn!(
                    alert = d.alert.id,
                    webhook = %endpoint.name,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    %error,
                    "alert delivery failed"
                );
                DeliveryOutcome::Retry {
                    next_attempt_ms: now_ms()
                        .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
                    error,
                }
            }
        };
        match self.store.record_delivery(&d, &outcome).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(alert = d.alert.id, webhook = %endpoint.name,
                "webhook delivery attempt not recorded: another replica took the delivery over \
                 after this one's lease ran out"),
            Err(e) => tracing::error!(alert = d.alert.id, webhook = %endpoint.name, error = %e,
                "cannot record a webhook delivery attempt"),
        }
    }

    /// One POST; `Err` says why it did not count as delivered (never with the URL in it).
    async fn post(&self, endpoint: &Endpoint, alert: &AlertSummary) -> Result<(), String> {
        let body = body(alert);
        let tag = hmac::sign(&endpoint.key, &body);
        let response = endpoint
            .client
            .post(&endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, format!("sha256={}", hex(tag.as_ref())))
            .header(DELIVERY_HEADER, alert.id.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| error_chain(&e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }

    /// A random number in [0, 1) for the retry jitter (0 if the system has no randomness).
    fn jitter(&self) -> f64 {
        let mut b = [0u8; 4];
        match self.rng.fill(&mut b) {
            Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
            Err(_) => 0.0,
        }
    }
}

/// The wait after the `attempts`-th failed attempt: [`FIRST_RETRY`] doubled `attempts − 1`
/// times, at most [`MAX_RETRY`], plus `jitter` (in [0, 1)) times a quarter of that.
pub fn retry_delay(attempts: u32, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(31);
    let base = FIRST_RETRY.saturating_mul(1u32 << doublings).min(MAX_RETRY);
    base + base.mul_f64(jitter.clamp(0.0, 1.0) / 4.0)
}

/// The JSON body sent for an alert (documented in the module docs).
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    /// The alert's id.
    pub alert_id: u64,
    /// `trust` or `injection`.
    pub kind: &'static str,
    /// The device.
    pub device_id: String,
    /// The device's OS user.
    pub os_user: &'a str,
    /// The device's host name.
    pub hostname: &'a str,
    /// When it happened (device clock).
    pub created_ms: u64,
    /// The trust level that crossed the lockout.
    pub trust: Option<f64>,
    /// The evidence object.
    pub evidence: serde_json::Value,
}

/// The body bytes for `alert`.
pub fn body(alert: &AlertSummary) -> Vec<u8> {
    let body = WebhookBody {
        alert_id: alert.id,
        kind: alert.kind.as_str(),
        device_id: alert.device_id.to_string(),
        os_user: &alert.os_user,
        hostname: &alert.hostname,
        created_ms: alert.created_ms,
        trust: alert.trust,
        evidence: evidence(&alert.evidence),
    };
    // Serializing a struct of strings, numbers and a Value cannot fail; an empty body would be
    // refused by any receiver and retried, never silently accepted.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Stored evidence as a JSON value (stored by this verifier as an object; anything else is
/// passed on as a string rather than dropped).
pub fn evidence(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// The `X-Cadence-Signature` value for `body` under `secret`: `sha256=<hex>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex(hmac::sign(&key, body).as_ref()))
}

/// Whether `header` is a valid `X-Cadence-Signature` of `body` under `secret` (compared in
/// constant time): what a receiver checks.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(tag) = header.strip_prefix("sha256=").and_then(unhex) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, body, &tag).is_ok()
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// An error and its causes on one line (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Completes once `shutdown` is true or its sender is gone.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An Err means the sender was dropped: that is a shutdown too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_from_one_second_to_an_hour() {
        let secs: Vec<u64> = (1..=MAX_ATTEMPTS)
            .map(|n| retry_delay(n, 0.0).as_secs())
            .collect();
        assert_eq!(&secs[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(secs[12], 3600, "{secs:?}");
        assert_eq!(*secs.last().unwrap(), 3600);
        assert_eq!(retry_delay(1, 0.999_999).as_millis(), 1249);
        assert_eq!(retry_delay(u32::MAX, 0.5), Duration::from_secs(4050));
    }

    #[test]
    fn signatures_verify_only_with_the_same_secret_and_body() {
        let sig = signature(b"0123456789abcdef", b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert!(verify_signature(b"0123456789abcdef", b"{\"a\":1}", &sig));
        assert!(!verify_signature(b"0123456789abcdeX", b"{\"a\":1}", &sig));
        assert!(!verify_signature(b"0123456789abcdef", b"{\"a\":2}", &sig));
        assert!(!verify_signature(
            b"0123456789abcdef",
            b"{\"a\":1}",
            "sha256=zz"
        ));
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
