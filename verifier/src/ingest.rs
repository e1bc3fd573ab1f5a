//! Ingest: from one batch body to records stored once and an answer for the agent.
//!
//! Owns the checks every envelope passes before anything is stored: framing
//! ([`decode_batch`]), the clear header ([`peek_header`]), one sending device per batch, an
//! enrolled device, decryption under the verifier's key and the device's signature ([`open`]),
//! and the payload's shape for its kind. Hands on [`NewRecord`]s and [`HeartbeatUpdate`]s to
//! the [`Store`] in one transaction, and an [`Answer`] naming every envelope acknowledged or
//! refused. An `alert` record (the agent's guard) is also stored as an `injection` alert, in
//! the same transaction, with its webhook deliveries queued; once committed, a device with new
//! features records is queued for the [`Scorer`]. Never acknowledges before the store has
//! committed, never stores an envelope that did not open under the enrolled key, never panics
//! on input, and never logs a payload: a refusal is logged with the device and a short reason
//! only.
//!
//! Deduplication: an envelope whose `(device, seq)` is stored with the same SHA-256 is a resend,
//! acknowledged as a duplicate without being opened again (the same bytes opened before). The
//! same `(device, seq)` with other bytes is refused ("sequence number reused") once it opens.
//! Heartbeats are never stored as records; each is acknowledged, and changes the device's
//! state only when it is newer than the last heartbeat applied (an older one is a replay).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use cadence_wire::records::{
    BatchError, ConsentRecord, GapRecord, Heartbeat, IngestResponse, Rejected, decode_batch,
};
use cadence_wire::{
    DeviceId, DevicePublicKey, EnvelopeError, FeatureVector, Header, Kind, VerifierKeyPair, open,
    peek_header,
};
use tokio::sync::Semaphore;

use crate::Error;
use crate::alerts::Outbox;
use crate::keys::sha256;
use crate::metrics::Metrics;
use crate::scorer::Scorer;
use crate::store::{Effect, HeartbeatUpdate, NewRecord, Outcome, Store};

/// Why one envelope was refused. Each maps to one HTTP status (see [`crate::api`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The header is not a Cadence v1 header (bad magic, reserved bytes, unknown kind,
    /// truncated).
    Malformed(String),
    /// The envelope says another format version.
    WrongVersion(u8),
    /// The envelope is over the size limit.
    TooLarge(usize),
    /// No device with this id is enrolled.
    UnknownDevice,
    /// It does not decrypt under this verifier's key: sealed to another verifier, or altered.
    WrongRecipient,
    /// It decrypts, but the enrolled device key did not sign it: forged, or another device's.
    BadSignature,
    /// It opened, but the payload is not what its kind requires.
    BadPayload(String),
    /// Another envelope is already stored under this `(device, seq)`.
    SeqReused,
}

impl Reason {
    /// A short, fixed label for logs (never carries payload content).
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Malformed(_) => "malformed envelope",
            Reason::WrongVersion(_) => "unsupported envelope version",
            Reason::TooLarge(_) => "envelope too large",
            Reason::UnknownDevice => "unknown device",
            Reason::WrongRecipient => "does not decrypt (wrong verifier key or tampered)",
            Reason::BadSignature => "bad signature",
            Reason::BadPayload(_) => "bad payload",
            Reason::SeqReused => "sequence number reused",
        }
    }

    /// The stable code agents act on ([`Rejected::code`]).
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Malformed(_) => "malformed",
            Reason::WrongVersion(_) => "version",
            Reason::TooLarge(_) => "too_large",
            Reason::UnknownDevice => "unknown_device",
            Reason::WrongRecipient => "wrong_recipient",
            Reason::BadSignature => "bad_signature",
            Reason::BadPayload(_) => "bad_payload",
            Reason::SeqReused => "seq_reused",
        }
    }

    fn from_envelope(e: EnvelopeError) -> Reason {
        match e {
            EnvelopeError::UnsupportedVersion(v) => Reason::WrongVersion(v),
            EnvelopeError::TooLarge(n) => Reason::TooLarge(n),
            EnvelopeError::Decrypt => Reason::WrongRecipient,
            EnvelopeError::BadSignature => Reason::BadSignature,
            other => Reason::Malformed(other.to_string()),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Malformed(why) => write!(f, "malformed envelope: {why}"),
            Reason::WrongVersion(v) => write!(
                f,
                "envelope version {v} is not supported (this verifier reads version {})",
                cadence_wire::envelope::VERSION
            ),
            Reason::TooLarge(n) => write!(
                f,
                "envelope of {n} bytes is over the limit of {}",
                cadence_wire::MAX_ENVELOPE_BYTES
            ),
            Reason::UnknownDevice => f.write_str("unknown device: not enrolled here"),
            Reason::WrongRecipient => f.write_str(
                "envelope does not decrypt: sealed to another verifier key, or tampered with",
            ),
            Reason::BadSignature => {
                f.write_str("envelope signature does not verify under the enrolled device key")
            }
            Reason::BadPayload(why) => write!(f, "bad payload: {why}"),
            Reason::SeqReused => f.write_str(
                "sequence number reused: another envelope is stored under this sequence number",
            ),
        }
    }
}

/// Why a whole batch was refused before any envelope was looked at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The body's framing is broken or over a limit.
    #[error("bad batch: {0}")]
    Batch(#[from] BatchError),
    /// The framing announces a frame longer than the whole body: garbage or a cut-off upload.
    #[error("bad batch: {0} (longer than the whole body)")]
    Garbled(BatchError),
    /// The envelopes name more than one device.
    #[error("a batch must hold envelopes of one device only")]
    MixedDevices,
    /// The store failed (or is busy: see [`Error::Busy`]).
    #[error(transparent)]
    Store(#[from] Error),
    /// The opening task died (a bug: opening never panics on input).
    #[error("internal error while opening envelopes")]
    Internal,
}

/// The result of one batch.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// What the agent is told.
    pub response: IngestResponse,
    /// The first refusal, which decides the status when nothing was acknowledged.
    pub first_refusal: Option<Reason>,
}

/// What became of one envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    Stored,
    Duplicate,
    Heartbeat,
    Refused(Reason),
}

/// An envelope that opened and whose payload passed.
enum Opened {
    Record(NewRecord),
    Heartbeat(HeartbeatUpdate),
}

/// Checks and stores batches. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ingest {
    store: Store,
    /// The verifier's HPKE key pair that envelopes are sealed to.
    keys: Arc<VerifierKeyPair>,
    /// Bounds how many batches are decrypted at once (one per core): opening is CPU work done
    /// on blocking threads, and more of it at once would only make every request slower.
    crypto: Arc<Semaphore>,
    /// Told about devices with new windows, after the commit.
    scorer: Option<Scorer>,
    /// Webhook URLs injection alerts are queued for, and the dispatcher to wake.
    outbox: Outbox,
    /// Counts envelopes by fate and refused batches, for `/metrics`.
    metrics: Arc<Metrics>,
}

impl Ingest {
    /// An ingest stage over `store`, opening envelopes with `keys`.
    pub fn new(store: Store, keys: Arc<VerifierKeyPair>) -> Ingest {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ingest {
            store,
            keys,
            crypto: Arc::new(Semaphore::new(cores)),
            scorer: None,
            outbox: Outbox::default(),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// The same stage, counting into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Ingest {
        self.metrics = metrics;
        self
    }

    /// The same stage, queuing devices with new windows for `scorer` and injection alerts for
    /// `outbox`'s webhooks.
    pub fn with_scoring(mut self, scorer: Scorer, outbox: Outbox) -> Ingest {
        self.scorer = Some(scorer);
        self.outbox = outbox;
        self
    }

    /// Checks, opens and stores one batch body; commits before it returns.
    pub async fn batch(&self, body: Bytes, now_ms: u64) -> Result<Answer, Refusal> {
        let frames = decode_batch(&body).map_err(|e| {
            self.metrics.batch_refused("bad_batch");
            match e {
                // A length beyond the body itself is garbage (or a cut-off upload), not a
                // real envelope over the limit.
                BatchError::FrameTooLarge(n) if n > body.len() => Refusal::Garbled(e),
                e => Refusal::Batch(e),
            }
        })?;
        self.metrics.received(frames.len());
        let headers: Vec<Result<Header, Reason>> = frames
            .iter()
            .map(|f| peek_header(f).map_err(Reason::from_envelope))
            .collect();
        let mut device: Option<DeviceId> = None;
        for h in headers.iter().flatten() {
            match device {
                Some(d) if d != h.device => {
                    self.metrics.batch_refused("mixed_devices");
                    return Err(Refusal::MixedDevices);
                }
                _ => device = Some(h.device),
            }
        }
        let mut fates: Vec<Option<Fate>> = headers
            .iter()
            .map(|h| h.as_ref().err().map(|r| Fate::Refused(r.clone())))
            .collect();

        if let Some(device) = device {
            match self.store.device_key(device).await? {
                None => {
                    for f in fates.iter_mut().filter(|f| f.is_none()) {
                        *f = Some(Fate::Refused(Reason::UnknownDevice));
                    }
                }
                Some(key) => {
                    self.open_and_store(device, key, &body, &frames, &headers, &mut fates, now_ms)
                        .await?;
                }
            }
        }

        let mut answer = Answer::default();
        let mut refusals: Vec<(Reason, usize, Option<u64>)> = Vec::new();
        for (fate, header) in fates.into_iter().zip(&headers) {
            let seq = header.as_ref().ok().map(|h| h.seq);
            // Every envelope got a fate above; should one not have, it is refused, never
            // acknowledged.
            let fate = fate.unwrap_or(Fate::Refused(Reason::Malformed("not processed".into())));
            match &fate {
                Fate::Stored => self.metrics.stored(),
                Fate::Duplicate => self.metrics.duplicate(),
                Fate::Heartbeat => self.metrics.heartbeat(),
                Fate::Refused(reason) => self.metrics.rejected(reason.code()),
            }
            match (fate, seq) {
                (Fate::Stored | Fate::Heartbeat, Some(seq)) => answer.response.acked.push(seq),
                (Fate::Duplicate, Some(seq)) => {
                    answer.response.acked.push(seq);
                    answer.response.duplicates.push(seq);
                }
                (Fate::Refused(reason), seq) => {
                    answer.first_refusal.get_or_insert_with(|| reason.clone());
                    match refusals
                        .iter_mut()
                        .find(|(r, _, _)| r.label() == reason.label())
                    {
                        Some((_, n, _)) => *n += 1,
                        None => refusals.push((reason.clone(), 1, seq)),
                    }
                    answer.response.rejected.push(Rejected {
                        seq,
                        reason: reason.to_string(),
                        code: reason.code().to_owned(),
                    });
                }
                (_, None) => {} // unreachable: an acknowledged envelope had a readable header
            }
        }
        let device = device.map_or_else(|| "unknown".to_owned(), |d| d.to_string());
        for (reason, count, first_seq) in refusals {
            tracing::warn!(%device, reason = reason.label(), count, first_seq, "envelopes rejected");
            tracing::debug!(%device, detail = %reason, "rejection detail");
        }
        tracing::debug!(
            %device,
            acked = answer.response.acked.len(),
            duplicates = answer.response.duplicates.len(),
            "batch ingested"
        );
        Ok(answer)
    }

    /// Sorts out resends, opens the rest, stores what passed, and fills in `fates`.
    #[allow(clippy::too_many_arguments)]
    async fn open_and_store(
        &self,
        device: DeviceId,
        key: DevicePublicKey,
        body: &Bytes,
        frames: &[&[u8]],
        headers: &[Result<Header, Reason>],
        fates: &mut [Option<Fate>],
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let hashes: Vec<[u8; 32]> = frames.iter().map(|f| sha256(f)).collect();
        let record_seqs: Vec<u64> = headers
            .iter()
            .flatten()
            .filter(|h| h.kind != Kind::Heartbeat)
            .map(|h| h.seq)
            .collect();
        let stored: HashMap<u64, [u8; 32]> = self
            .store
            .stored_hashes(device, &record_seqs)
            .await?
            .into_iter()
            .collect();

        // Which envelopes need opening; `reused` ones are refused once they prove genuine.
        let mut to_open: Vec<(usize, Bytes)> = Vec::new();
        let mut reused: Vec<bool> = vec![false; frames.len()];
        let mut first_in_batch: HashMap<u64, usize> = HashMap::new();
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for (i, h) in headers.iter().enumerate() {
            let Ok(h) = h else { continue };
            if h.kind != Kind::Heartbeat {
                if let Some(stored_hash) = stored.get(&h.seq) {
                    if *stored_hash == hashes[i] {
                        fates[i] = Some(Fate::Duplicate);
                        continue;
                    }
                    reused[i] = true;
                } else if let Some(&j) = first_in_batch.get(&h.seq) {
                    if hashes[j] == hashes[i] {
                        copies.push((i, j));
                        continue;
                    }
                    reused[i] = true;
                } else {
                    first_in_batch.insert(h.seq, i);
                }
            }
            to_open.push((i, body.slice_ref(frames[i])));
        }

        let opened = self.open_all(key, to_open, &hashes).await?;
        let mut records = Vec::new();
        let mut record_index = Vec::new();
        let mut heartbeats = Vec::new();
        for (i, result) in opened {
            match result {
                Err(reason) => fates[i] = Some(Fate::Refused(reason)),
                Ok(_) if reused[i] => fates[i] = Some(Fate::Refused(Reason::SeqReused)),
                Ok(Opened::Record(mut r)) => {
                    if let Effect::Alert { webhooks } = &mut r.effect {
                        *webhooks = self.outbox.urls().to_vec();
                    }
                    records.push(r);
                    record_index.push(i);
                }
                Ok(Opened::Heartbeat(hb)) => {
                    heartbeats.push(hb);
                    fates[i] = Some(Fate::Heartbeat);
                }
            }
        }
        if !records.is_empty() || !heartbeats.is_empty() {
            let outcomes = self
                .store
                .commit(device, now_ms, &records, &heartbeats)
                .await?;
            let (mut windows, mut alerts) = (false, false);
            for ((i, outcome), r) in record_index.into_iter().zip(outcomes).zip(&records) {
                if outcome == Outcome::Stored {
                    windows |= r.kind == Kind::Features;
                    if matches!(r.effect, Effect::Alert { .. }) {
                        alerts = true;
                        self.metrics.alert(crate::store::AlertKind::Injection);
                    }
                }
                fates[i] = Some(match outcome {
                    Outcome::Stored => Fate::Stored,
                    Outcome::Duplicate => Fate::Duplicate,
                    Outcome::Reused => Fate::Refused(Reason::SeqReused),
                });
            }
            if alerts {
                tracing::warn!(%device, "keystroke injection alert from the agent's guard");
                self.outbox.wake();
            }
            if windows && let Some(scorer) = &self.scorer {
                scorer.enqueue(device);
            }
        }
        for (i, j) in copies {
            fates[i] = Some(match &fates[j] {
                Some(Fate::Refused(r)) => Fate::Refused(r.clone()),
                _ => Fate::Duplicate,
            });
        }
        Ok(())
    }

    /// Opens envelopes on a blocking thread, at most one batch per core at a time.
    async fn open_all(
        &self,
        key: DevicePublicKey,
        envelopes: Vec<(usize, Bytes)>,
        hashes: &[[u8; 32]],
    ) -> Result<Vec<(usize, Result<Opened, Reason>)>, Refusal> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let permit = self
            .crypto
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Refusal::Internal)?;
        let keys = self.keys.clone();
        let hashes: Vec<[u8; 32]> = envelopes.iter().map(|(i, _)| hashes[*i]).collect();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            envelopes
                .into_iter()
                .zip(hashes)
                .map(|((i, bytes), hash)| (i, open_one(&bytes, &keys, &key, hash)))
                .collect()
        })
        .await
        .map_err(|_| Refusal::Internal)
    }
}

/// Opens one envelope and checks its payload for its kind.
fn open_one(
    bytes: &[u8],
    keys: &VerifierKeyPair,
    key: &DevicePublicKey,
    envelope_sha256: [u8; 32],
) -> Result<Opened, Reason> {
    let (header, payload) = open(bytes, keys, key).map_err(Reason::from_envelope)?;
    let text = std::str::from_utf8(&payload)
        .map_err(|_| Reason::BadPayload("payload is not UTF-8 JSON".to_owned()))?;
    let bad = |what: &str, e: &dyn std::fmt::Display| Reason::BadPayload(format!("{what}: {e}"));
    let (payload, effect) = match header.kind {
        Kind::Heartbeat => {
            let hb: Heartbeat =
                serde_json::from_str(text).map_err(|e| bad("not a heartbeat", &e))?;
            return Ok(Opened::Heartbeat(HeartbeatUpdate {
                created_ms: header.created_ms,
                state: hb.state,
                queued: hb.queued,
            }));
        }
        Kind::Features => match FeatureVector::from_json(text) {
            Ok(v) => (canonical(&v)?, Effect::None),
            // An agent older than this verifier: its window is kept as it came (stored, not
            // scored) rather than refused and lost.
            Err(e) => match cadence_wire::features::check_previous(text) {
                Ok(_) => {
                    let v: serde_json::Value =
                        serde_json::from_str(text).map_err(|e| bad("not a feature vector", &e))?;
                    (canonical(&v)?, Effect::None)
                }
                // What is wrong with it as the schema it names, not as this one.
                Err(old) => match cadence_wire::features::names_previous(text) {
                    Some(schema) => return Err(bad(&format!("not a {schema} vector"), &old)),
                    None => return Err(bad("not a feature vector", &e)),
                },
            },
        },
        Kind::Consent => {
            let c: ConsentRecord =
                serde_json::from_str(text).map_err(|e| bad("not a consent record", &e))?;
            (canonical(&c)?, Effect::Consent(c))
        }
        Kind::Gap => {
            let g: GapRecord =
                serde_json::from_str(text).map_err(|e| bad("not a gap record", &e))?;
            if g.first_seq > g.last_seq {
                return Err(Reason::BadPayload(
                    "gap record: first_seq is after last_seq".to_owned(),
                ));
            }
            (canonical(&g)?, Effect::Gap(g))
        }
        Kind::Alert => {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| bad("alert is not JSON", &e))?;
            if !v.is_object() {
                return Err(Reason::BadPayload("alert is not a JSON object".to_owned()));
            }
            // The webhook URLs are filled in by the caller, which holds the configuration.
            (
                canonical(&v)?,
                Effect::Alert {
                    webhooks: Vec::new(),
                },
            )
        }
    };
    Ok(Opened::Record(NewRecord {
        seq: header.seq,
        kind: header.kind,
        created_ms: header.created_ms,
        payload,
        envelope_sha256,
        effect,
    }))
}

/// The compact JSON form a payload is stored in.
fn canonical<T: serde::Serialize>(value: &T) -> Result<String, Reason> {
    serde_json::to_string(value)
        .map_err(|e| Reason::BadPayload(format!("payload cannot be stored: {e}")))
}
