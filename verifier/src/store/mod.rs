//! Storage: what the verifier knows, behind one [`Store`] type.
//!
//! Owns enrolled devices, enrollment-token hashes, stored records (each `(device, seq)` once),
//! consent events and gaps; and, for scoring, each device's profile, the population, one score
//! row per scored window, alerts and the webhook outbox. Hands on plain values
//! ([`DeviceSummary`], [`StoredRecord`], [`Outcome`], [`AlertSummary`], [`TimelineEntry`],
//! [`Delivery`]); no SQL type leaves this module, and scoring state travels as the JSON text
//! the scoring module wrote. Never stores a record without the transaction committing before
//! the caller acknowledges it, never stores a token in clear, and never decides what is
//! valid: ingest checks envelopes and payloads before they get here, the scorer decides
//! scores.
//!
//! An alert is stored in the same transaction as its outbox rows (one per webhook URL
//! configured at the time), so an alert is never stored without its deliveries queued.
//!
//! Two backends with the same semantics: SQLite (`sqlite.rs`, one process writes) and
//! PostgreSQL (`postgres.rs`, any number of verifier replicas write at once; how each
//! read-decide-write stays atomic across replicas is in its module doc). Each has its schema
//! in `migrations/<backend>/`, embedded and applied on open.

use cadence_wire::records::{ConsentRecord, Decision, GapRecord, MonitoringState};
use cadence_wire::{DeviceId, DevicePublicKey, Kind};

use crate::Error;
use crate::config::Database;

mod postgres;
mod sqlite;

/// The verifier's storage. Cheap to clone: clones share the connection pools.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

/// The database behind a [`Store`].
#[derive(Clone, Debug)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

/// A device asking to enroll, its token already checked.
#[derive(Debug, Clone)]
pub struct NewDevice<'a> {
    /// Its fresh Ed25519 public key.
    pub public_key: DevicePublicKey,
    /// The OS account the agent runs for.
    pub os_user: &'a str,
    /// The device's host name.
    pub hostname: &'a str,
}

/// An enrolled device as listed by `cadence-verifier devices`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceSummary {
    /// Its id (named as in [`EnrollResponse`](cadence_wire::records::EnrollResponse)).
    pub device_id: DeviceId,
    /// The OS account it enrolled for.
    pub os_user: String,
    /// Its host name at enrollment.
    pub hostname: String,
    /// When it enrolled (verifier clock, ms since the Unix epoch).
    pub enrolled_ms: u64,
    /// When an envelope from it last opened (verifier clock), if ever.
    pub last_seen_ms: Option<u64>,
    /// Its monitoring state from the newest heartbeat or consent record, if any.
    pub state: Option<String>,
    /// Records stored for it.
    pub records: u64,
}

/// A stored record, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The sending device.
    pub device: DeviceId,
    /// Its sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: Kind,
    /// When the agent made it (device clock).
    pub created_ms: u64,
    /// When the verifier committed it (verifier clock).
    pub received_ms: u64,
    /// The payload, validated JSON.
    pub payload: String,
}

/// A record that opened and whose payload was valid, ready to store.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Its sequence number.
    pub seq: u64,
    /// Its kind (never [`Kind::Heartbeat`]: those are [`HeartbeatUpdate`]s).
    pub kind: Kind,
    /// When the agent made it (device clock).
    pub created_ms: u64,
    /// The payload as JSON text.
    pub payload: String,
    /// SHA-256 of the whole envelope, to tell a resend from a reused sequence number.
    pub envelope_sha256: [u8; 32],
    /// What else storing it changes.
    pub effect: Effect,
}

/// What storing a record changes besides the records table.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Nothing.
    None,
    /// A consent decision: kept as an event, and sets the device's state if newer.
    Consent(ConsentRecord),
    /// A gap: kept for reports.
    Gap(GapRecord),
    /// The agent's guard raised an alert: stored as an [`AlertKind::Injection`] alert too, with
    /// the payload as evidence, and queued for these webhook URLs.
    Alert {
        /// The webhook URLs configured now.
        webhooks: Vec<String>,
    },
}

/// A heartbeat that opened: updates the device's state when newer than the last one applied.
#[derive(Debug, Clone)]
pub struct HeartbeatUpdate {
    /// When the agent sent it (device clock); an older one than the last applied is a replay.
    pub created_ms: u64,
    /// The agent's monitoring state.
    pub state: MonitoringState,
    /// Records waiting in the agent's spool.
    pub queued: u64,
}

/// What became of one [`NewRecord`] in [`Store::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now.
    Stored,
    /// The same envelope was already stored: nothing stored, acknowledge it.
    Duplicate,
    /// Another envelope already holds this sequence number: refuse it.
    Reused,
}

/// What raised an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The device's trust level fell below the lockout after a run of unlike windows.
    Trust,
    /// The agent's guard saw keystroke injection.
    Injection,
}

impl AlertKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Trust => "trust",
            AlertKind::Injection => "injection",
        }
    }

    fn parse(s: &str) -> Result<AlertKind, Error> {
        match s {
            "trust" => Ok(AlertKind::Trust),
            "injection" => Ok(AlertKind::Injection),
            other => Err(Error::Corrupt(format!("alert kind {other:?}"))),
        }
    }
}

/// A device's scoring profile as stored: the scoring module's JSON and its write version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProfile {
    /// `scoring::UserProfile` JSON.
    pub json: String,
    /// Goes up by one with every write; 0 for "no row yet".
    pub version: u64,
}

/// The population as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPopulation {
    /// Bumped on every re-learn.
    pub generation: u64,
    /// `scoring::Population` JSON.
    pub json: String,
    /// Devices whose windows it was learned from.
    pub users: u64,
    /// Devices with a keyboard baseline when it was learned.
    pub keyboard_users: u64,
    /// Devices with a mouse baseline when it was learned.
    pub mouse_users: u64,
    /// When it was learned (verifier clock).
    pub learned_ms: u64,
}

/// What scoring one window gave, to store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScoreRow {
    /// The window's sequence number.
    pub seq: u64,
    /// When the agent closed the window (device clock).
    pub created_ms: u64,
    /// When the verifier stored it (verifier clock).
    pub received_ms: u64,
    /// Keyboard score, if scored.
    pub keyboard: Option<f64>,
    /// Mouse score, if scored.
    pub mouse: Option<f64>,
    /// Fused score, if any modality was scored.
    pub score: Option<f64>,
    /// Whether the scores were cohort-normalized.
    pub calibrated: bool,
    /// The trust level after this window, when trust moved.
    pub trust: Option<f64>,
    /// Whether this window raised a trust alert.
    pub alert: bool,
    /// JSON object modality → windows still needed, when the window went into enrollment.
    pub enrolling: Option<String>,
    /// Why the window was refused instead of scored.
    pub rejected: Option<String>,
}

/// An alert to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    /// The window or record that raised it.
    pub seq: Option<u64>,
    /// When it happened (device clock).
    pub created_ms: u64,
    /// What raised it.
    pub kind: AlertKind,
    /// The trust level that crossed the lockout (trust alerts).
    pub trust: Option<f64>,
    /// Evidence, a JSON object.
    pub evidence: String,
}

/// One scorer pass over a device's windows, written in one transaction.
#[derive(Debug, Clone)]
pub struct ScoringUpdate<'a> {
    /// The device.
    pub device: DeviceId,
    /// Its profile after the pass (`scoring::UserProfile` JSON).
    pub profile: &'a str,
    /// The profile version the pass started from: if another writer changed the profile in
    /// between, nothing is written.
    pub expected_version: u64,
    /// A score row per window taken in.
    pub scores: &'a [ScoreRow],
    /// Alerts raised.
    pub alerts: &'a [NewAlert],
    /// Webhook URLs to queue each alert for.
    pub webhooks: &'a [String],
    /// Verifier clock.
    pub now_ms: u64,
}

/// One delivery of an alert to a webhook, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    /// The webhook URL (may hold a secret: show it through `config::redact_webhook_url`).
    pub url: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was delivered (verifier clock).
    pub delivered_ms: Option<u64>,
    /// Whether delivery was given up.
    pub failed: bool,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// A stored alert with its device and deliveries, as `alerts` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSummary {
    /// Its id, increasing.
    pub id: u64,
    /// The device.
    pub device_id: DeviceId,
    /// The device's OS user.
    pub os_user: String,
    /// The device's host name.
    pub hostname: String,
    /// The window or record that raised it.
    pub seq: Option<u64>,
    /// When it happened (device clock).
    pub created_ms: u64,
    /// When the verifier stored it.
    pub raised_ms: u64,
    /// What raised it.
    pub kind: AlertKind,
    /// The trust level that crossed the lockout.
    pub trust: Option<f64>,
    /// Evidence, JSON object text.
    pub evidence: String,
    /// One per webhook it was queued for.
    pub deliveries: Vec<DeliveryState>,
}

/// A webhook delivery that is due, with what its body needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The alert (its `deliveries` left empty).
    pub alert: AlertSummary,
    /// The webhook URL.
    pub url: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The row's `next_attempt_ms` as taking it left it (PostgreSQL: the end of this
    /// replica's lease). [`Store::record_delivery`] writes only while it is unchanged.
    pub lease_ms: u64,
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Delivered (2xx) at this time.
    Delivered {
        /// Verifier clock.
        at_ms: u64,
    },
    /// Failed; try again at `next_attempt_ms`.
    Retry {
        /// When to try again.
        next_attempt_ms: u64,
        /// What went wrong.
        error: String,
    },
    /// Failed for the last time: given up.
    GaveUp {
        /// What went wrong.
        error: String,
    },
}

/// One features window of a device with its score row, if scored, as `timeline` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    /// The device.
    pub device_id: DeviceId,
    /// The score row; `None` while the window waits for the scorer.
    pub score: Option<ScoreRow>,
    /// The window's sequence number.
    pub seq: u64,
    /// When the agent closed it (device clock).
    pub created_ms: u64,
    /// When the verifier stored it.
    pub received_ms: u64,
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub async fn open(database: &Database) -> Result<Store, Error> {
        match database {
            Database::Sqlite(path) => Ok(Store {
                backend: Backend::Sqlite(sqlite::SqliteStore::open(path, true).await?),
            }),
            Database::Postgres(url) => Ok(Store {
                backend: Backend::Postgres(postgres::PostgresStore::open(url, true).await?),
            }),
        }
    }

    /// Opens an existing database for the read-only commands; a missing file is an error
    /// rather than a new, empty database.
    pub async fn open_existing(database: &Database) -> Result<Store, Error> {
        match database {
            Database::Sqlite(path) => Ok(Store {
                backend: Backend::Sqlite(sqlite::SqliteStore::open(path, false).await?),
            }),
            Database::Postgres(url) => Ok(Store {
                backend: Backend::Postgres(postgres::PostgresStore::open(url, false).await?),
            }),
        }
    }

    /// Waits for every connection to close cleanly (SQLite: checkpoints the WAL).
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(s) => s.close().await,
        }
    }

    /// Checks that this verifier seals to the same HPKE key as every other replica on this
    /// database, recording it if it is the first. PostgreSQL only: a SQLite database has one
    /// verifier process, whose key sits in the same data directory.
    pub async fn check_verifier_key(
        &self,
        public_key: &cadence_wire::VerifierPublicKey,
        now_ms: u64,
    ) -> Result<(), Error> {
        let Backend::Postgres(s) = &self.backend else {
            return Ok(());
        };
        let key = public_key.to_string();
        match s.claim_verifier_key(&key, now_ms).await? {
            None => Ok(()),
            Some(recorded) => Err(Error::Key(format!(
                "this replica's HPKE key ({public_key}) is not the one the other replicas on this \
                 database use ({recorded}): copy hpke.key and the TLS certificate and key from \
                 the data directory of a running replica (see the README, \"Fleets\")"
            ))),
        }
    }

    /// How many enrollment tokens are stored.
    pub async fn token_count(&self) -> Result<u64, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.token_count().await,
            Backend::Postgres(s) => s.token_count().await,
        }
    }

    /// Stores a token's hash.
    pub async fn add_token(&self, sha256: &[u8; 32], now_ms: u64) -> Result<(), Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.add_token(sha256, now_ms).await,
            Backend::Postgres(s) => s.add_token(sha256, now_ms).await,
        }
    }

    /// Whether a token with this hash is stored.
    pub async fn token_known(&self, sha256: &[u8; 32]) -> Result<bool, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.token_known(sha256).await,
            Backend::Postgres(s) => s.token_known(sha256).await,
        }
    }

    /// Enrolls a device under `new_id`, or returns the id it already has when its public key
    /// is enrolled (an agent retrying after a lost answer gets the same id).
    pub async fn enroll(
        &self,
        device: &NewDevice<'_>,
        new_id: DeviceId,
        now_ms: u64,
    ) -> Result<DeviceId, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.enroll(device, new_id, now_ms).await,
            Backend::Postgres(s) => s.enroll(device, new_id, now_ms).await,
        }
    }

    /// The public key a device enrolled with, or `None` for an unknown device.
    pub async fn device_key(&self, device: DeviceId) -> Result<Option<DevicePublicKey>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.device_key(device).await,
            Backend::Postgres(s) => s.device_key(device).await,
        }
    }

    /// The stored envelope hashes of those of `seqs` this device already has.
    pub async fn stored_hashes(
        &self,
        device: DeviceId,
        seqs: &[u64],
    ) -> Result<Vec<(u64, [u8; 32])>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.stored_hashes(device, seqs).await,
            Backend::Postgres(s) => s.stored_hashes(device, seqs).await,
        }
    }

    /// Stores `records` and applies `heartbeats` for one device in one transaction, committed
    /// before this returns. Returns one [`Outcome`] per record, in order.
    pub async fn commit(
        &self,
        device: DeviceId,
        received_ms: u64,
        records: &[NewRecord],
        heartbeats: &[HeartbeatUpdate],
    ) -> Result<Vec<Outcome>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.commit(device, received_ms, records, heartbeats).await,
            Backend::Postgres(s) => s.commit(device, received_ms, records, heartbeats).await,
        }
    }

    /// Every enrolled device, oldest enrollment first.
    pub async fn devices(&self) -> Result<Vec<DeviceSummary>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.devices().await,
            Backend::Postgres(s) => s.devices().await,
        }
    }

    /// One enrolled device (one key lookup), or `None` when no device has that id.
    pub async fn device(&self, device: DeviceId) -> Result<Option<DeviceSummary>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.device(device).await,
            Backend::Postgres(s) => s.device(device).await,
        }
    }

    /// Whether a device is enrolled.
    pub async fn device_exists(&self, device: DeviceId) -> Result<bool, Error> {
        Ok(self.device_key(device).await?.is_some())
    }

    /// Stored records of one kind for one device, by sequence number.
    pub async fn records(&self, device: DeviceId, kind: Kind) -> Result<Vec<StoredRecord>, Error> {
        self.records_page(device, kind, None, u32::MAX).await
    }

    /// Up to `limit` stored records of one kind for one device after sequence number `after`
    /// (from the first when `None`), by sequence number.
    pub async fn records_page(
        &self,
        device: DeviceId,
        kind: Kind,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.records_page(device, kind, after, limit).await,
            Backend::Postgres(s) => s.records_page(device, kind, after, limit).await,
        }
    }

    /// The devices an operator means by `user`: the device with that id, or every device of
    /// that OS user. Empty when there is none.
    pub async fn find_devices(&self, user: &str) -> Result<Vec<DeviceSummary>, Error> {
        let all = self.devices().await?;
        let by_id: Vec<DeviceSummary> = match user.parse::<DeviceId>() {
            Ok(id) => all.iter().filter(|d| d.device_id == id).cloned().collect(),
            Err(_) => Vec::new(),
        };
        if !by_id.is_empty() {
            return Ok(by_id);
        }
        Ok(all.into_iter().filter(|d| d.os_user == user).collect())
    }

    /// Up to `limit` features records of `device` that have no score row yet, by sequence
    /// number.
    pub async fn unscored_windows(
        &self,
        device: DeviceId,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.unscored_windows(device, limit).await,
            Backend::Postgres(s) => s.unscored_windows(device, limit).await,
        }
    }

    /// Devices with at least one features record that has no score row.
    pub async fn devices_with_unscored_windows(&self) -> Result<Vec<DeviceId>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.devices_with_unscored_windows().await,
            Backend::Postgres(s) => s.devices_with_unscored_windows().await,
        }
    }

    /// A device's scoring profile, if one was stored.
    pub async fn profile(&self, device: DeviceId) -> Result<Option<StoredProfile>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.profile(device).await,
            Backend::Postgres(s) => s.profile(device).await,
        }
    }

    /// Every stored profile.
    pub async fn profiles(&self) -> Result<Vec<(DeviceId, StoredProfile)>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.profiles().await,
            Backend::Postgres(s) => s.profiles().await,
        }
    }

    /// Writes a profile unless its version moved past `expected_version` (0: no row yet).
    /// Returns whether it was written.
    pub async fn save_profile(
        &self,
        device: DeviceId,
        json: &str,
        expected_version: u64,
        now_ms: u64,
    ) -> Result<bool, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.save_profile(device, json, expected_version, now_ms).await,
            Backend::Postgres(s) => s.save_profile(device, json, expected_version, now_ms).await,
        }
    }

    /// Writes one scorer pass (profile, score rows, alerts and their outbox rows) in one
    /// transaction, unless the profile changed since it was read (then nothing is written and
    /// this returns `Ok(None)`). Returns the ids of the alerts stored.
    pub async fn save_scoring(
        &self,
        update: &ScoringUpdate<'_>,
    ) -> Result<Option<Vec<u64>>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.save_scoring(update).await,
            Backend::Postgres(s) => s.save_scoring(update).await,
        }
    }

    /// The stored population, if one was learned.
    pub async fn population(&self) -> Result<Option<StoredPopulation>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.population().await,
            Backend::Postgres(s) => s.population().await,
        }
    }

    /// Replaces the stored population unless one of the same or a later generation is
    /// stored (another replica learned it first); returns whether it was written.
    pub async fn save_population(&self, population: &StoredPopulation) -> Result<bool, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.save_population(population).await,
            Backend::Postgres(s) => s.save_population(population).await,
        }
    }

    /// The stored population's generation, if one was learned: a cheap check for a newer one.
    pub async fn population_generation(&self) -> Result<Option<u64>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.population_generation().await,
            Backend::Postgres(s) => s.population_generation().await,
        }
    }

    /// Stored alerts, oldest first, of one device or of all.
    pub async fn alerts(&self, device: Option<DeviceId>) -> Result<Vec<AlertSummary>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.alerts(device).await,
            Backend::Postgres(s) => s.alerts(device).await,
        }
    }

    /// Every features window of `device`, by sequence number, with its score row.
    pub async fn timeline(&self, device: DeviceId) -> Result<Vec<TimelineEntry>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.timeline(device, None).await,
            Backend::Postgres(s) => s.timeline(device, None).await,
        }
    }

    /// The last `n` features windows of `device` (fewer when it has fewer), by sequence
    /// number, with their score rows; the database reads only those.
    pub async fn timeline_tail(
        &self,
        device: DeviceId,
        n: u32,
    ) -> Result<Vec<TimelineEntry>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.timeline(device, Some(n)).await,
            Backend::Postgres(s) => s.timeline(device, Some(n)).await,
        }
    }

    /// Up to `limit` pending deliveries to any of `urls` due at `now_ms`, earliest first.
    pub async fn due_deliveries(
        &self,
        now_ms: u64,
        urls: &[String],
        limit: u32,
    ) -> Result<Vec<Delivery>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.due_deliveries(now_ms, urls, limit).await,
            Backend::Postgres(s) => s.due_deliveries(now_ms, urls, limit).await,
        }
    }

    /// When the next pending delivery to any of `urls` is due, if there is one.
    pub async fn next_delivery_ms(&self, urls: &[String]) -> Result<Option<u64>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.next_delivery_ms(urls).await,
            Backend::Postgres(s) => s.next_delivery_ms(urls).await,
        }
    }

    /// Records the outcome of one attempt at a delivery taken by [`Store::due_deliveries`]
    /// (counts the attempt), unless the row moved on since it was taken: delivered or given
    /// up, or taken again by another replica after this one's lease ran out. Returns whether
    /// it was recorded.
    pub async fn record_delivery(
        &self,
        delivery: &Delivery,
        outcome: &DeliveryOutcome,
    ) -> Result<bool, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_delivery(delivery, outcome).await,
            Backend::Postgres(s) => s.record_delivery(delivery, outcome).await,
        }
    }
}

/// What a consent record does to a device, in storage terms: the name its decision is kept
/// under in the consent events, and the monitoring state the device is in after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentEffect {
    /// The decision's stored name (its serde name): `granted`, `withdrawn`, `paused`, `resumed`.
    pub decision: &'static str,
    /// The device's monitoring state after the decision.
    pub state: MonitoringState,
}

/// The one mapping from a consent decision to its stored name and the device state it sets.
/// Every backend calls it, so SQLite and PostgreSQL never disagree about what a decision means.
pub fn consent_effect(decision: Decision) -> ConsentEffect {
    let (name, state) = match decision {
        Decision::Granted => ("granted", MonitoringState::Monitoring),
        Decision::Withdrawn => ("withdrawn", MonitoringState::Withdrawn),
        Decision::Paused => ("paused", MonitoringState::Paused),
        Decision::Resumed => ("resumed", MonitoringState::Monitoring),
    };
    ConsentEffect {
        decision: name,
        state,
    }
}

/// A device's trust level after its newest window that moved trust, as the dashboard lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustLevel {
    /// The device.
    pub device_id: DeviceId,
    /// The window that set it.
    pub seq: u64,
    /// When the agent closed that window (device clock).
    pub created_ms: u64,
    /// The trust level after it.
    pub trust: f64,
    /// That window's fused score.
    pub score: Option<f64>,
}

/// One stored consent decision, as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsentEvent {
    /// The device.
    pub device_id: DeviceId,
    /// The consent record's sequence number.
    pub seq: u64,
    /// `granted`, `withdrawn`, `paused` or `resumed`.
    pub decision: String,
    /// SHA-256 (hex) of the notice the user saw.
    pub notice_sha256: String,
    /// When the user decided (device clock).
    pub at_ms: u64,
    /// The OS user who decided.
    pub os_user: String,
}

/// Read queries for the dashboard, `/metrics` and `/readyz`. Each backend implements them with
/// the same plain SQL.
impl Store {
    /// Whether the database answers a trivial query (for `/readyz`).
    pub async fn ping(&self) -> Result<(), Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.ping().await,
            Backend::Postgres(s) => s.ping().await,
        }
    }

    /// How many devices are in each monitoring state (`None`: never reported one), for the
    /// `/metrics` gauge; one cheap `GROUP BY`, not a scan of the records.
    pub async fn device_state_counts(&self) -> Result<Vec<(Option<String>, u64)>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.device_state_counts().await,
            Backend::Postgres(s) => s.device_state_counts().await,
        }
    }

    /// Every device's trust after its newest window that moved trust; devices whose trust
    /// never moved are absent.
    pub async fn trust_levels(&self) -> Result<Vec<TrustLevel>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.trust_levels().await,
            Backend::Postgres(s) => s.trust_levels().await,
        }
    }

    /// Up to `limit` consent decisions, newest decision first (device clock), of one device
    /// or of all.
    pub async fn consent_events(
        &self,
        device: Option<DeviceId>,
        limit: u32,
    ) -> Result<Vec<ConsentEvent>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.consent_events(device, limit).await,
            Backend::Postgres(s) => s.consent_events(device, limit).await,
        }
    }
}

/// The name a monitoring state is stored and shown under (its serde name).
pub fn state_name(state: MonitoringState) -> &'static str {
    match state {
        MonitoringState::Monitoring => "monitoring",
        MonitoringState::Paused => "paused",
        MonitoringState::WaitingForConsent => "waiting_for_consent",
        MonitoringState::Withdrawn => "withdrawn",
        MonitoringState::Error => "error",
    }
}
