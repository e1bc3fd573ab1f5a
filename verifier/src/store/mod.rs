//! Storage: what the verifier knows, behind one [`Store`] type.
//!
//! Owns enrolled devices, enrollment-token hashes, stored records (each `(device, seq)` once),
//! consent events and gaps. Hands on plain values ([`DeviceSummary`], [`StoredRecord`],
//! [`Outcome`]); no SQL type leaves this module. Never stores a record without the
//! transaction committing before the caller acknowledges it, never stores a token in clear,
//! and never decides what is valid: ingest checks envelopes and payloads before they get here.
//!
//! SQLite is the only backend so far (`sqlite.rs`); PostgreSQL is to be added as a second
//! `Backend` variant with the same API. The schema is in `migrations/`, embedded and applied on
//! open.

use cadence_wire::records::{ConsentRecord, GapRecord, MonitoringState};
use cadence_wire::{DeviceId, DevicePublicKey, Kind};

use crate::Error;
use crate::config::Database;

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

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub async fn open(database: &Database) -> Result<Store, Error> {
        match database {
            Database::Sqlite(path) => Ok(Store {
                backend: Backend::Sqlite(sqlite::SqliteStore::open(path, true).await?),
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
        }
    }

    /// Waits for every connection to close cleanly (SQLite: checkpoints the WAL).
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.close().await,
        }
    }

    /// How many enrollment tokens are stored.
    pub async fn token_count(&self) -> Result<u64, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.token_count().await,
        }
    }

    /// Stores a token's hash.
    pub async fn add_token(&self, sha256: &[u8; 32], now_ms: u64) -> Result<(), Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.add_token(sha256, now_ms).await,
        }
    }

    /// Whether a token with this hash is stored.
    pub async fn token_known(&self, sha256: &[u8; 32]) -> Result<bool, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.token_known(sha256).await,
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
        }
    }

    /// The public key a device enrolled with, or `None` for an unknown device.
    pub async fn device_key(&self, device: DeviceId) -> Result<Option<DevicePublicKey>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.device_key(device).await,
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
        }
    }

    /// Every enrolled device, oldest enrollment first.
    pub async fn devices(&self) -> Result<Vec<DeviceSummary>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.devices().await,
        }
    }

    /// Whether a device is enrolled.
    pub async fn device_exists(&self, device: DeviceId) -> Result<bool, Error> {
        Ok(self.device_key(device).await?.is_some())
    }

    /// Stored records of one kind for one device, by sequence number.
    pub async fn records(&self, device: DeviceId, kind: Kind) -> Result<Vec<StoredRecord>, Error> {
        match &self.backend {
            Backend::Sqlite(s) => s.records(device, kind).await,
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
