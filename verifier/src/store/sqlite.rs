//! The SQLite backend: one file, WAL, `synchronous = FULL`.
//!
//! Owns the connection pools and the SQL. Writes go through a pool of exactly one connection,
//! so transactions in this process never contend for SQLite's single write lock (a waiting
//! request queues for the connection instead, and gets [`Error::Busy`] if it waits too long);
//! reads use a small pool of their own, which WAL lets run beside the writer. Other processes
//! (the `token create` command) take the lock with `BEGIN IMMEDIATE` and wait up to
//! [`BUSY_TIMEOUT`]. Never commits a record with `synchronous` below `FULL`: an acknowledged
//! record must survive power loss.

use std::path::Path;
use std::time::Duration;

use cadence_wire::{DeviceId, DevicePublicKey, Kind};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};

use super::{
    AlertKind, AlertSummary, Delivery, DeliveryOutcome, DeliveryState, DeviceSummary, Effect,
    HeartbeatUpdate, NewAlert, NewDevice, NewRecord, Outcome, ScoreRow, ScoringUpdate,
    StoredPopulation, StoredProfile, StoredRecord, TimelineEntry, consent_effect, state_name,
};
use crate::Error;

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a free connection before the verifier answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent readers.
const READ_CONNECTIONS: u32 = 4;

/// Embedded migrations, in order; each ends by setting `PRAGMA user_version` to its number.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_init.sql")),
    (2, include_str!("migrations/sqlite/0002_scoring.sql")),
];

/// Starts a write transaction that holds the write lock from its first statement, so it can
/// never fail half-way with `SQLITE_BUSY` on upgrading a read lock.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// The columns [`alert_summary`] reads: an alert (`a`) and its device (`d`). A macro so that
/// queries stay `&'static str` (sqlx refuses strings built at run time).
macro_rules! alert_columns {
    () => {
        "a.id, a.device_id, a.seq, a.created_ms, a.raised_ms, a.kind, a.trust, a.evidence,
         d.os_user, d.hostname"
    };
}

#[derive(Clone, Debug)]
pub(super) struct SqliteStore {
    /// The only connection that writes (one writer per process, by design).
    write: SqlitePool,
    /// Connections for the read-only queries.
    read: SqlitePool,
}

impl SqliteStore {
    pub(super) async fn open(path: &Path, create: bool) -> Result<SqliteStore, Error> {
        if !create && !path.exists() {
            return Err(Error::Io {
                action: "opening database",
                path: path.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no verifier database here (has `cadence-verifier serve` run with this --data-dir?)",
                ),
            });
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            // A file that cannot be opened at start is not "busy": say what failed.
            .map_err(Error::Database)?;
        migrate(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(SqliteStore { write, read })
    }

    pub(super) async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    pub(super) async fn token_count(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.read)
            .await?;
        Ok(from_db_count(n))
    }

    pub(super) async fn add_token(&self, sha256: &[u8; 32], now_ms: u64) -> Result<(), Error> {
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        sqlx::query("INSERT OR IGNORE INTO tokens (sha256, created_ms) VALUES (?1, ?2)")
            .bind(&sha256[..])
            .bind(ms_to_db(now_ms))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn token_known(&self, sha256: &[u8; 32]) -> Result<bool, Error> {
        let row = sqlx::query("SELECT 1 FROM tokens WHERE sha256 = ?1")
            .bind(&sha256[..])
            .fetch_optional(&self.read)
            .await?;
        Ok(row.is_some())
    }

    pub(super) async fn enroll(
        &self,
        device: &NewDevice<'_>,
        new_id: DeviceId,
        now_ms: u64,
    ) -> Result<DeviceId, Error> {
        let key = device.public_key.to_string();
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT device_id FROM devices WHERE public_key = ?1")
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(id) = existing {
            tx.commit().await?;
            return parse_device_id(&id);
        }
        sqlx::query(
            "INSERT INTO devices (device_id, public_key, os_user, hostname, enrolled_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(new_id.to_string())
        .bind(&key)
        .bind(device.os_user)
        .bind(device.hostname)
        .bind(ms_to_db(now_ms))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(new_id)
    }

    pub(super) async fn device_key(
        &self,
        device: DeviceId,
    ) -> Result<Option<DevicePublicKey>, Error> {
        let key: Option<String> =
            sqlx::query_scalar("SELECT public_key FROM devices WHERE device_id = ?1")
                .bind(device.to_string())
                .fetch_optional(&self.read)
                .await?;
        key.map(|k| {
            k.parse()
                .map_err(|e| Error::Corrupt(format!("public key of device {device}: {e}")))
        })
        .transpose()
    }

    pub(super) async fn stored_hashes(
        &self,
        device: DeviceId,
        seqs: &[u64],
    ) -> Result<Vec<(u64, [u8; 32])>, Error> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        // One query for the whole batch: the sequence numbers travel as a JSON array.
        let list = serde_json::Value::from(seqs.iter().map(|s| seq_to_db(*s)).collect::<Vec<_>>());
        let rows = sqlx::query(
            "SELECT seq, envelope_sha256 FROM records
             WHERE device_id = ?1 AND seq IN (SELECT value FROM json_each(?2))",
        )
        .bind(device.to_string())
        .bind(list.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    seq_from_db(r.try_get("seq")?),
                    hash_from_db(r.try_get("envelope_sha256")?)?,
                ))
            })
            .collect()
    }

    pub(super) async fn commit(
        &self,
        device: DeviceId,
        received_ms: u64,
        records: &[NewRecord],
        heartbeats: &[HeartbeatUpdate],
    ) -> Result<Vec<Outcome>, Error> {
        let id = device.to_string();
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        let mut outcomes = Vec::with_capacity(records.len());
        for r in records {
            outcomes.push(insert_record(&mut tx, &id, received_ms, r).await?);
        }
        for hb in heartbeats {
            sqlx::query(
                "UPDATE devices SET
                    last_heartbeat_ms = ?2,
                    queued = ?3,
                    last_state = CASE WHEN state_ms IS NULL OR state_ms <= ?2 THEN ?4 ELSE last_state END,
                    state_ms = MAX(COALESCE(state_ms, ?2), ?2)
                 WHERE device_id = ?1 AND (last_heartbeat_ms IS NULL OR last_heartbeat_ms < ?2)",
            )
            .bind(&id)
            .bind(ms_to_db(hb.created_ms))
            .bind(ms_to_db(hb.queued))
            .bind(state_name(hb.state))
            .execute(&mut *tx)
            .await?;
        }
        if !heartbeats.is_empty() || outcomes.contains(&Outcome::Stored) {
            sqlx::query(
                "UPDATE devices SET last_seen_ms = MAX(COALESCE(last_seen_ms, ?2), ?2)
                 WHERE device_id = ?1",
            )
            .bind(&id)
            .bind(ms_to_db(received_ms))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    pub(super) async fn devices(&self) -> Result<Vec<DeviceSummary>, Error> {
        let rows = sqlx::query(
            "SELECT d.device_id, d.os_user, d.hostname, d.enrolled_ms, d.last_seen_ms,
                    d.last_state,
                    (SELECT COUNT(*) FROM records r WHERE r.device_id = d.device_id) AS records
             FROM devices d ORDER BY d.enrolled_ms, d.device_id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(device_summary).collect()
    }

    pub(super) async fn device(&self, device: DeviceId) -> Result<Option<DeviceSummary>, Error> {
        let row = sqlx::query(
            "SELECT d.device_id, d.os_user, d.hostname, d.enrolled_ms, d.last_seen_ms,
                    d.last_state,
                    (SELECT COUNT(*) FROM records r WHERE r.device_id = d.device_id) AS records
             FROM devices d WHERE d.device_id = ?1",
        )
        .bind(device.to_string())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(device_summary).transpose()
    }

    pub(super) async fn records_page(
        &self,
        device: DeviceId,
        kind: Kind,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, Error> {
        // Sequence numbers are stored as i64 with the same bits, so "after" is compared in
        // that order; agents number from 1, far below where the two orders differ.
        let rows = sqlx::query(
            "SELECT seq, created_ms, received_ms, payload FROM records
             WHERE device_id = ?1 AND kind = ?2 AND (?3 IS NULL OR seq > ?3)
             ORDER BY seq LIMIT ?4",
        )
        .bind(device.to_string())
        .bind(kind.as_str())
        .bind(after.map(seq_to_db))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| stored_record(r, device, kind))
            .collect()
    }

    pub(super) async fn unscored_windows(
        &self,
        device: DeviceId,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, Error> {
        let rows = sqlx::query(
            "SELECT r.seq, r.created_ms, r.received_ms, r.payload FROM records r
             WHERE r.device_id = ?1 AND r.kind = ?2
               AND NOT EXISTS (SELECT 1 FROM scores s
                               WHERE s.device_id = r.device_id AND s.seq = r.seq)
             ORDER BY r.seq LIMIT ?3",
        )
        .bind(device.to_string())
        .bind(Kind::Features.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| stored_record(r, device, Kind::Features))
            .collect()
    }

    pub(super) async fn devices_with_unscored_windows(&self) -> Result<Vec<DeviceId>, Error> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT r.device_id FROM records r
             WHERE r.kind = ?1
               AND NOT EXISTS (SELECT 1 FROM scores s
                               WHERE s.device_id = r.device_id AND s.seq = r.seq)
             ORDER BY r.device_id",
        )
        .bind(Kind::Features.as_str())
        .fetch_all(&self.read)
        .await?;
        ids.iter().map(|id| parse_device_id(id)).collect()
    }

    pub(super) async fn profile(&self, device: DeviceId) -> Result<Option<StoredProfile>, Error> {
        let row = sqlx::query("SELECT profile, version FROM profiles WHERE device_id = ?1")
            .bind(device.to_string())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| {
            Ok(StoredProfile {
                json: r.try_get("profile")?,
                version: from_db_count(r.try_get("version")?),
            })
        })
        .transpose()
    }

    pub(super) async fn profiles(&self) -> Result<Vec<(DeviceId, StoredProfile)>, Error> {
        let rows =
            sqlx::query("SELECT device_id, profile, version FROM profiles ORDER BY device_id")
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse_device_id(&r.try_get::<String, _>("device_id")?)?,
                    StoredProfile {
                        json: r.try_get("profile")?,
                        version: from_db_count(r.try_get("version")?),
                    },
                ))
            })
            .collect()
    }

    pub(super) async fn save_profile(
        &self,
        device: DeviceId,
        json: &str,
        expected_version: u64,
        now_ms: u64,
    ) -> Result<bool, Error> {
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        let saved = write_profile(&mut tx, device, json, expected_version, now_ms).await?;
        if saved {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(saved)
    }

    pub(super) async fn save_scoring(
        &self,
        u: &ScoringUpdate<'_>,
    ) -> Result<Option<Vec<u64>>, Error> {
        let id = u.device.to_string();
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        if !write_profile(&mut tx, u.device, u.profile, u.expected_version, u.now_ms).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        for s in u.scores {
            let inserted = sqlx::query(
                "INSERT INTO scores (device_id, seq, created_ms, received_ms, scored_ms, keyboard,
                                     mouse, score, calibrated, trust, alert, enrolling, rejected)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (device_id, seq) DO NOTHING",
            )
            .bind(&id)
            .bind(seq_to_db(s.seq))
            .bind(ms_to_db(s.created_ms))
            .bind(ms_to_db(s.received_ms))
            .bind(ms_to_db(u.now_ms))
            .bind(finite(s.keyboard))
            .bind(finite(s.mouse))
            .bind(finite(s.score))
            .bind(s.calibrated)
            .bind(finite(s.trust))
            .bind(s.alert)
            .bind(&s.enrolling)
            .bind(&s.rejected)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // Another writer scored this window since the pass read its windows (as in
                // the PostgreSQL backend): the pass is stale, run it again.
                tx.rollback().await?;
                return Ok(None);
            }
        }
        let mut ids = Vec::with_capacity(u.alerts.len());
        for a in u.alerts {
            ids.push(insert_alert(&mut tx, &id, a, u.webhooks, u.now_ms).await?);
        }
        tx.commit().await?;
        Ok(Some(ids))
    }

    pub(super) async fn population(&self) -> Result<Option<StoredPopulation>, Error> {
        let row = sqlx::query(
            "SELECT generation, data, users, keyboard_users, mouse_users, learned_ms
             FROM population WHERE id = 1",
        )
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(StoredPopulation {
                generation: from_db_count(r.try_get("generation")?),
                json: r.try_get("data")?,
                users: from_db_count(r.try_get("users")?),
                keyboard_users: from_db_count(r.try_get("keyboard_users")?),
                mouse_users: from_db_count(r.try_get("mouse_users")?),
                learned_ms: ms_from_db(r.try_get("learned_ms")?),
            })
        })
        .transpose()
    }

    pub(super) async fn save_population(&self, p: &StoredPopulation) -> Result<bool, Error> {
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        let written = sqlx::query(
            "INSERT INTO population (id, generation, data, users, keyboard_users, mouse_users,
                                     learned_ms)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET generation = excluded.generation,
                data = excluded.data, users = excluded.users,
                keyboard_users = excluded.keyboard_users, mouse_users = excluded.mouse_users,
                learned_ms = excluded.learned_ms
             WHERE population.generation < excluded.generation",
        )
        .bind(ms_to_db(p.generation))
        .bind(&p.json)
        .bind(ms_to_db(p.users))
        .bind(ms_to_db(p.keyboard_users))
        .bind(ms_to_db(p.mouse_users))
        .bind(ms_to_db(p.learned_ms))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(written == 1)
    }

    pub(super) async fn population_generation(&self) -> Result<Option<u64>, Error> {
        let g: Option<i64> = sqlx::query_scalar("SELECT generation FROM population WHERE id = 1")
            .fetch_optional(&self.read)
            .await?;
        Ok(g.map(from_db_count))
    }

    pub(super) async fn alerts(
        &self,
        device: Option<DeviceId>,
    ) -> Result<Vec<AlertSummary>, Error> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            alert_columns!(),
            " FROM alerts a JOIN devices d ON d.device_id = a.device_id
             WHERE (?1 IS NULL OR a.device_id = ?1) ORDER BY a.id"
        ))
        .bind(device.map(|d| d.to_string()))
        .fetch_all(&self.read)
        .await?;
        let mut alerts: Vec<AlertSummary> =
            rows.iter().map(alert_summary).collect::<Result<_, _>>()?;
        let deliveries = sqlx::query(
            "SELECT o.alert_id, o.url, o.attempts, o.delivered_ms, o.failed, o.last_error
             FROM webhook_outbox o JOIN alerts a ON a.id = o.alert_id
             WHERE (?1 IS NULL OR a.device_id = ?1) ORDER BY o.alert_id, o.url",
        )
        .bind(device.map(|d| d.to_string()))
        .fetch_all(&self.read)
        .await?;
        for r in &deliveries {
            let alert_id = from_db_count(r.try_get("alert_id")?);
            let state = DeliveryState {
                url: r.try_get("url")?,
                attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                delivered_ms: r.try_get::<Option<i64>, _>("delivered_ms")?.map(ms_from_db),
                failed: r.try_get("failed")?,
                last_error: r.try_get("last_error")?,
            };
            // Both lists are ordered by alert id.
            if let Ok(i) = alerts.binary_search_by_key(&alert_id, |a| a.id) {
                alerts[i].deliveries.push(state);
            }
        }
        Ok(alerts)
    }

    pub(super) async fn timeline(
        &self,
        device: DeviceId,
        last: Option<u32>,
    ) -> Result<Vec<TimelineEntry>, Error> {
        // Newest first so that LIMIT keeps the last ones (-1: all), turned round below.
        let rows = sqlx::query(
            "SELECT r.seq, r.created_ms, r.received_ms, s.seq IS NOT NULL AS scored, s.keyboard,
                    s.mouse, s.score, s.calibrated, s.trust, s.alert, s.enrolling, s.rejected
             FROM records r
             LEFT JOIN scores s ON s.device_id = r.device_id AND s.seq = r.seq
             WHERE r.device_id = ?1 AND r.kind = ?2
             ORDER BY r.seq DESC LIMIT ?3",
        )
        .bind(device.to_string())
        .bind(Kind::Features.as_str())
        .bind(last.map_or(-1, i64::from))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .rev()
            .map(|r| {
                let seq = seq_from_db(r.try_get("seq")?);
                let created_ms = ms_from_db(r.try_get("created_ms")?);
                let received_ms = ms_from_db(r.try_get("received_ms")?);
                let score = if r.try_get::<bool, _>("scored")? {
                    Some(ScoreRow {
                        seq,
                        created_ms,
                        received_ms,
                        keyboard: r.try_get("keyboard")?,
                        mouse: r.try_get("mouse")?,
                        score: r.try_get("score")?,
                        calibrated: r.try_get("calibrated")?,
                        trust: r.try_get("trust")?,
                        alert: r.try_get("alert")?,
                        enrolling: r.try_get("enrolling")?,
                        rejected: r.try_get("rejected")?,
                    })
                } else {
                    None
                };
                Ok(TimelineEntry {
                    device_id: device,
                    score,
                    seq,
                    created_ms,
                    received_ms,
                })
            })
            .collect()
    }

    pub(super) async fn due_deliveries(
        &self,
        now_ms: u64,
        urls: &[String],
        limit: u32,
    ) -> Result<Vec<Delivery>, Error> {
        if urls.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            alert_columns!(),
            ", o.url, o.attempts, o.next_attempt_ms
             FROM webhook_outbox o
             JOIN alerts a ON a.id = o.alert_id
             JOIN devices d ON d.device_id = a.device_id
             WHERE o.delivered_ms IS NULL AND o.failed = 0 AND o.next_attempt_ms <= ?1
               AND o.url IN (SELECT value FROM json_each(?2))
             ORDER BY o.next_attempt_ms, a.id LIMIT ?3"
        ))
        .bind(ms_to_db(now_ms))
        .bind(serde_json::Value::from(urls.to_vec()).to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Delivery {
                    alert: alert_summary(r)?,
                    url: r.try_get("url")?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                    lease_ms: ms_from_db(r.try_get("next_attempt_ms")?),
                })
            })
            .collect()
    }

    pub(super) async fn next_delivery_ms(&self, urls: &[String]) -> Result<Option<u64>, Error> {
        if urls.is_empty() {
            return Ok(None);
        }
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_ms) FROM webhook_outbox
             WHERE delivered_ms IS NULL AND failed = 0
               AND url IN (SELECT value FROM json_each(?1))",
        )
        .bind(serde_json::Value::from(urls.to_vec()).to_string())
        .fetch_one(&self.read)
        .await?;
        Ok(next.map(ms_from_db))
    }

    pub(super) async fn record_delivery(
        &self,
        delivery: &Delivery,
        outcome: &DeliveryOutcome,
    ) -> Result<bool, Error> {
        let (delivered, next, failed, error) = match outcome {
            DeliveryOutcome::Delivered { at_ms } => (Some(ms_to_db(*at_ms)), None, false, None),
            DeliveryOutcome::Retry {
                next_attempt_ms,
                error,
            } => (None, Some(ms_to_db(*next_attempt_ms)), false, Some(error)),
            DeliveryOutcome::GaveUp { error } => (None, None, true, Some(error)),
        };
        // Only while the row is as this attempt took it (one process writes here, but an
        // attempt recorded twice must not count twice nor undo a delivery).
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        let updated = sqlx::query(
            "UPDATE webhook_outbox SET attempts = attempts + 1,
                delivered_ms = ?3,
                next_attempt_ms = COALESCE(?4, next_attempt_ms),
                failed = ?5,
                last_error = COALESCE(?6, last_error)
             WHERE alert_id = ?1 AND url = ?2 AND delivered_ms IS NULL AND failed = 0
               AND next_attempt_ms = ?7",
        )
        .bind(ms_to_db(delivery.alert.id))
        .bind(&delivery.url)
        .bind(delivered)
        .bind(next)
        .bind(failed)
        .bind(error)
        .bind(ms_to_db(delivery.lease_ms))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(updated == 1)
    }
}

/// Read queries for the dashboard, `/metrics` and `/readyz` (see [`super::Store::ping`]).
impl SqliteStore {
    pub(super) async fn ping(&self) -> Result<(), Error> {
        sqlx::query_scalar::<_, i64>("SELECT 1")
            .fetch_one(&self.read)
            .await?;
        Ok(())
    }

    pub(super) async fn device_state_counts(&self) -> Result<Vec<(Option<String>, u64)>, Error> {
        let rows = sqlx::query(
            "SELECT last_state, COUNT(*) AS n FROM devices GROUP BY last_state ORDER BY last_state",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("last_state")?, from_db_count(r.try_get("n")?))))
            .collect()
    }

    pub(super) async fn trust_levels(&self) -> Result<Vec<super::TrustLevel>, Error> {
        let rows = sqlx::query(
            "SELECT s.device_id, s.seq, s.created_ms, s.trust, s.score
             FROM scores s
             JOIN (SELECT device_id, MAX(seq) AS seq FROM scores
                   WHERE trust IS NOT NULL GROUP BY device_id) m
               ON m.device_id = s.device_id AND m.seq = s.seq
             ORDER BY s.device_id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(super::TrustLevel {
                    device_id: parse_device_id(&r.try_get::<String, _>("device_id")?)?,
                    seq: seq_from_db(r.try_get("seq")?),
                    created_ms: ms_from_db(r.try_get("created_ms")?),
                    trust: r.try_get("trust")?,
                    score: r.try_get("score")?,
                })
            })
            .collect()
    }

    pub(super) async fn consent_events(
        &self,
        device: Option<DeviceId>,
        limit: u32,
    ) -> Result<Vec<super::ConsentEvent>, Error> {
        let rows = sqlx::query(
            "SELECT device_id, seq, decision, notice_sha256, at_ms, os_user FROM consent_events
             WHERE (?1 IS NULL OR device_id = ?1)
             ORDER BY at_ms DESC, device_id, seq DESC LIMIT ?2",
        )
        .bind(device.map(|d| d.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(super::ConsentEvent {
                    device_id: parse_device_id(&r.try_get::<String, _>("device_id")?)?,
                    seq: seq_from_db(r.try_get("seq")?),
                    decision: r.try_get("decision")?,
                    notice_sha256: r.try_get("notice_sha256")?,
                    at_ms: ms_from_db(r.try_get("at_ms")?),
                    os_user: r.try_get("os_user")?,
                })
            })
            .collect()
    }
}

fn device_summary(r: &sqlx::sqlite::SqliteRow) -> Result<DeviceSummary, Error> {
    Ok(DeviceSummary {
        device_id: parse_device_id(&r.try_get::<String, _>("device_id")?)?,
        os_user: r.try_get("os_user")?,
        hostname: r.try_get("hostname")?,
        enrolled_ms: ms_from_db(r.try_get("enrolled_ms")?),
        last_seen_ms: r.try_get::<Option<i64>, _>("last_seen_ms")?.map(ms_from_db),
        state: r.try_get("last_state")?,
        records: from_db_count(r.try_get("records")?),
    })
}

fn alert_summary(r: &sqlx::sqlite::SqliteRow) -> Result<AlertSummary, Error> {
    Ok(AlertSummary {
        id: from_db_count(r.try_get("id")?),
        device_id: parse_device_id(&r.try_get::<String, _>("device_id")?)?,
        os_user: r.try_get("os_user")?,
        hostname: r.try_get("hostname")?,
        seq: r.try_get::<Option<i64>, _>("seq")?.map(seq_from_db),
        created_ms: ms_from_db(r.try_get("created_ms")?),
        raised_ms: ms_from_db(r.try_get("raised_ms")?),
        kind: AlertKind::parse(&r.try_get::<String, _>("kind")?)?,
        trust: r.try_get("trust")?,
        evidence: r.try_get("evidence")?,
        deliveries: Vec::new(),
    })
}

fn stored_record(
    r: &sqlx::sqlite::SqliteRow,
    device: DeviceId,
    kind: Kind,
) -> Result<StoredRecord, Error> {
    Ok(StoredRecord {
        device,
        seq: seq_from_db(r.try_get("seq")?),
        kind,
        created_ms: ms_from_db(r.try_get("created_ms")?),
        received_ms: ms_from_db(r.try_get("received_ms")?),
        payload: r.try_get("payload")?,
    })
}

/// Writes a profile inside `tx` if its version is still `expected` (0: no row yet); says
/// whether it did.
async fn write_profile(
    tx: &mut SqliteConnection,
    device: DeviceId,
    json: &str,
    expected: u64,
    now_ms: u64,
) -> Result<bool, Error> {
    let id = device.to_string();
    let current: Option<i64> =
        sqlx::query_scalar("SELECT version FROM profiles WHERE device_id = ?1")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
    if current.map_or(0, from_db_count) != expected {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO profiles (device_id, profile, version, updated_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device_id) DO UPDATE SET profile = excluded.profile,
            version = excluded.version, updated_ms = excluded.updated_ms",
    )
    .bind(&id)
    .bind(json)
    .bind(ms_to_db(expected.saturating_add(1)))
    .bind(ms_to_db(now_ms))
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

/// Stores one alert and its outbox rows (one per webhook URL, due now); returns its id.
async fn insert_alert(
    tx: &mut SqliteConnection,
    device_id: &str,
    a: &NewAlert,
    webhooks: &[String],
    now_ms: u64,
) -> Result<u64, Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (device_id, seq, created_ms, raised_ms, kind, trust, evidence)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
    )
    .bind(device_id)
    .bind(a.seq.map(seq_to_db))
    .bind(ms_to_db(a.created_ms))
    .bind(ms_to_db(now_ms))
    .bind(a.kind.as_str())
    .bind(finite(a.trust))
    .bind(&a.evidence)
    .fetch_one(&mut *tx)
    .await?;
    for url in webhooks {
        sqlx::query(
            "INSERT INTO webhook_outbox (alert_id, url, attempts, next_attempt_ms, failed)
             VALUES (?1, ?2, 0, ?3, 0) ON CONFLICT (alert_id, url) DO NOTHING",
        )
        .bind(id)
        .bind(url)
        .bind(ms_to_db(now_ms))
        .execute(&mut *tx)
        .await?;
    }
    Ok(from_db_count(id))
}

/// A score as stored: NaN and infinities (never produced by the scorer) become NULL.
fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

/// Inserts one record unless its `(device, seq)` is taken; says which it was.
async fn insert_record(
    tx: &mut SqliteConnection,
    id: &str,
    received_ms: u64,
    r: &NewRecord,
) -> Result<Outcome, Error> {
    let seq = seq_to_db(r.seq);
    let inserted = sqlx::query(
        "INSERT INTO records (device_id, seq, kind, created_ms, received_ms, payload, envelope_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (device_id, seq) DO NOTHING",
    )
    .bind(id)
    .bind(seq)
    .bind(r.kind.as_str())
    .bind(ms_to_db(r.created_ms))
    .bind(ms_to_db(received_ms))
    .bind(&r.payload)
    .bind(&r.envelope_sha256[..])
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        let stored: Vec<u8> = sqlx::query_scalar(
            "SELECT envelope_sha256 FROM records WHERE device_id = ?1 AND seq = ?2",
        )
        .bind(id)
        .bind(seq)
        .fetch_one(&mut *tx)
        .await?;
        return Ok(if stored == r.envelope_sha256 {
            Outcome::Duplicate
        } else {
            Outcome::Reused
        });
    }
    match &r.effect {
        Effect::None => {}
        Effect::Consent(c) => {
            let effect = consent_effect(c.decision);
            let (decision, state) = (effect.decision, state_name(effect.state));
            sqlx::query(
                "INSERT INTO consent_events (device_id, seq, decision, notice_sha256, at_ms, os_user)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(id)
            .bind(seq)
            .bind(decision)
            .bind(&c.notice_sha256)
            .bind(ms_to_db(c.at_ms))
            .bind(&c.os_user)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE devices SET last_state = ?2, state_ms = ?3
                 WHERE device_id = ?1 AND (state_ms IS NULL OR state_ms <= ?3)",
            )
            .bind(id)
            .bind(state)
            .bind(ms_to_db(r.created_ms))
            .execute(&mut *tx)
            .await?;
        }
        Effect::Gap(g) => {
            sqlx::query(
                "INSERT INTO gaps (device_id, seq, first_seq, last_seq, count, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(id)
            .bind(seq)
            .bind(seq_to_db(g.first_seq))
            .bind(seq_to_db(g.last_seq))
            .bind(ms_to_db(g.count))
            .bind(&g.reason)
            .execute(&mut *tx)
            .await?;
        }
        Effect::Alert { webhooks } => {
            let alert = NewAlert {
                seq: Some(r.seq),
                created_ms: r.created_ms,
                kind: AlertKind::Injection,
                trust: None,
                evidence: r.payload.clone(),
            };
            insert_alert(&mut *tx, id, &alert, webhooks, received_ms).await?;
        }
    }
    Ok(Outcome::Stored)
}

/// Brings the schema to the newest version, one migration per transaction.
async fn migrate(pool: &SqlitePool) -> Result<(), Error> {
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    let mut tx = pool.begin_with(BEGIN_WRITE).await?;
    let current: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await?;
    if current > latest {
        return Err(Error::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(version, "applying database migration");
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A sequence number as stored: the i64 with the same 64 bits (SQLite integers are signed).
fn seq_to_db(seq: u64) -> i64 {
    i64::from_ne_bytes(seq.to_ne_bytes())
}

fn seq_from_db(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// A time or count as stored; values past `i64::MAX` (never real) are clamped.
fn ms_to_db(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn ms_from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn from_db_count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn parse_device_id(s: &str) -> Result<DeviceId, Error> {
    s.parse()
        .map_err(|e| Error::Corrupt(format!("device id {s:?}: {e}")))
}

fn hash_from_db(v: Vec<u8>) -> Result<[u8; 32], Error> {
    <[u8; 32]>::try_from(v.as_slice())
        .map_err(|_| Error::Corrupt(format!("envelope hash of {} bytes", v.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_keep_all_64_bits() {
        for seq in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(seq_from_db(seq_to_db(seq)), seq);
        }
    }
}
