//! The PostgreSQL backend: one database shared by any number of verifier replicas.
//!
//! Owns the connection pool, the PostgreSQL SQL and its schema (`migrations/postgres/`). Has
//! the same semantics as the SQLite backend, operation for operation; what differs is that
//! several processes write at once, so every read-decide-write is made atomic in the
//! database, never by a lock in this process:
//!
//! - **Records, once per `(device, seq)`**: `INSERT ... ON CONFLICT DO NOTHING`. A replica
//!   inserting a sequence number another replica's open transaction holds waits for that
//!   transaction, then finds the row and compares envelope hashes (duplicate or reuse).
//! - **Device state** (heartbeats, consent, last seen): single conditional `UPDATE`s
//!   (`GREATEST`, `WHERE state_ms <= $n`), which PostgreSQL re-checks against the newest row
//!   version after waiting for a concurrent writer, so the newest by device clock wins.
//! - **Scoring state**: versioned compare-and-swap on `profiles.version`. A scorer pass
//!   writes `UPDATE ... WHERE version = $read` (or inserts with `ON CONFLICT DO NOTHING` when
//!   it read no row); zero rows changed means another replica wrote first, and the whole pass
//!   (profile, score rows, alerts) rolls back to be run again from the newer profile. A score
//!   row that already exists (another replica scored that window from the same profile in the
//!   meantime) rolls the pass back the same way. Chosen over `SELECT ... FOR UPDATE` because
//!   a pass reads, then computes without holding a transaction open; compare-and-swap keeps
//!   transactions short and gives the same guarantee: no update is lost, none applied twice.
//! - **Webhook deliveries**: taking due rows moves them a lease ([`DELIVERY_LEASE`]) ahead in
//!   the same statement (`FOR UPDATE SKIP LOCKED`), so two replicas never post one delivery at
//!   once; a replica that dies mid-attempt leaves the row due again when the lease ends. An
//!   attempt's outcome is written only while the row is still undelivered, not given up, and
//!   under the lease that attempt took (`next_attempt_ms` unchanged), so a replica that
//!   outlived its lease can neither undo another's delivery nor count an attempt twice.
//! - **Migrations**: one transaction under a transaction-level advisory lock, so replicas
//!   starting together apply each migration once.
//! - **Key material** stays in each replica's files; the database records the first
//!   replica's HPKE public key (`verifier_identity`), and a replica with another one is
//!   refused at start ([`super::Store::check_verifier_key`]).
//!
//! Never commits with `synchronous_commit` below the server's default (`on`): an
//! acknowledged record must survive the database server's crash. Serialization failures and
//! deadlocks come back as [`Error::Busy`] (503: the agent retries), never as lost data.

use std::str::FromStr;
use std::time::Duration;

use cadence_wire::{DeviceId, DevicePublicKey, Kind};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgSslMode};
use sqlx::{PgConnection, Row};

use super::{
    AlertKind, AlertSummary, Delivery, DeliveryOutcome, DeliveryState, DeviceSummary, Effect,
    HeartbeatUpdate, NewAlert, NewDevice, NewRecord, Outcome, ScoreRow, ScoringUpdate,
    StoredPopulation, StoredProfile, StoredRecord, TimelineEntry, consent_effect, state_name,
};
use crate::Error;
use crate::config::PostgresUrl;

/// How long a request waits for a free connection before the verifier answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per replica. Ingest holds one per batch; two cores serve about this many
/// transactions at once, and replicas multiply it (PostgreSQL's default limit is 100).
const MAX_CONNECTIONS: u32 = 10;
/// How long a replica owns a webhook delivery it took: longer than an attempt can last
/// (`alerts::REQUEST_TIMEOUT`), so another replica takes it only after the owner died.
pub(super) const DELIVERY_LEASE: Duration = Duration::from_secs(60);

/// The advisory lock key migrations run under ("cadence" in ASCII).
const MIGRATION_LOCK: i64 = 0x0063_6164_656e_6365;

/// Embedded migrations, in order; each is recorded in `cadence_schema`.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres/0001_init.sql")),
    (2, include_str!("migrations/postgres/0002_identity.sql")),
];

/// The columns [`alert_summary`] reads: an alert (`a`) and its device (`d`).
macro_rules! alert_columns {
    () => {
        "a.id, a.device_id, a.seq, a.created_ms, a.raised_ms, a.kind, a.trust, a.evidence,
         d.os_user, d.hostname"
    };
}

#[derive(Clone, Debug)]
pub(super) struct PostgresStore {
    /// Reads and writes alike: PostgreSQL runs writers side by side.
    pool: PgPool,
}

impl PostgresStore {
    /// Connects; with `create`, brings the schema up to date, else requires it to be there.
    pub(super) async fn open(url: &PostgresUrl, create: bool) -> Result<PostgresStore, Error> {
        // This build has no TLS for PostgreSQL: say so to the driver rather than let its
        // default (`prefer`, or `PGSSLMODE`) quietly mean plaintext (`config::PostgresUrl`
        // accepts only `sslmode=disable`).
        let options = PgConnectOptions::from_str(url.expose())
            .map_err(Error::Database)?
            .ssl_mode(PgSslMode::Disable)
            .application_name("cadence-verifier")
            .options([("synchronous_commit", "on")]);
        // A server that cannot be reached at start is a configuration problem, not "busy".
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(Error::Database)?;
        if create {
            migrate(&pool).await?;
        } else {
            let version = schema_version(&pool).await?;
            let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
            if version == 0 {
                pool.close().await;
                return Err(Error::Corrupt(format!(
                    "no verifier schema in {} (has `cadence-verifier serve` run with this database_url?)",
                    url.redacted()
                )));
            }
            if version > latest {
                pool.close().await;
                return Err(Error::SchemaTooNew {
                    found: version,
                    supported: latest,
                });
            }
        }
        Ok(PostgresStore { pool })
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    /// Records `public_key` as the replicas' HPKE key if none is yet; returns the recorded
    /// key when it is another one.
    pub(super) async fn claim_verifier_key(
        &self,
        public_key: &str,
        now_ms: u64,
    ) -> Result<Option<String>, Error> {
        sqlx::query(
            "INSERT INTO verifier_identity (id, hpke_public_key, claimed_ms) VALUES (1, $1, $2)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(public_key)
        .bind(ms_to_db(now_ms))
        .execute(&self.pool)
        .await?;
        let recorded: String =
            sqlx::query_scalar("SELECT hpke_public_key FROM verifier_identity WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok((recorded != public_key).then_some(recorded))
    }

    pub(super) async fn token_count(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.pool)
            .await?;
        Ok(from_db_count(n))
    }

    pub(super) async fn add_token(&self, sha256: &[u8; 32], now_ms: u64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO tokens (sha256, created_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&sha256[..])
        .bind(ms_to_db(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn token_known(&self, sha256: &[u8; 32]) -> Result<bool, Error> {
        let row = sqlx::query("SELECT 1 FROM tokens WHERE sha256 = $1")
            .bind(&sha256[..])
            .fetch_optional(&self.pool)
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
        // One statement: two replicas enrolling the same key at once both get the one id.
        sqlx::query(
            "INSERT INTO devices (device_id, public_key, os_user, hostname, enrolled_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (public_key) DO NOTHING",
        )
        .bind(new_id.to_string())
        .bind(&key)
        .bind(device.os_user)
        .bind(device.hostname)
        .bind(ms_to_db(now_ms))
        .execute(&self.pool)
        .await?;
        let id: String = sqlx::query_scalar("SELECT device_id FROM devices WHERE public_key = $1")
            .bind(&key)
            .fetch_one(&self.pool)
            .await?;
        parse_device_id(&id)
    }

    pub(super) async fn device_key(
        &self,
        device: DeviceId,
    ) -> Result<Option<DevicePublicKey>, Error> {
        let key: Option<String> =
            sqlx::query_scalar("SELECT public_key FROM devices WHERE device_id = $1")
                .bind(device.to_string())
                .fetch_optional(&self.pool)
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
        let list: Vec<i64> = seqs.iter().map(|s| seq_to_db(*s)).collect();
        let rows = sqlx::query(
            "SELECT seq, envelope_sha256 FROM records WHERE device_id = $1 AND seq = ANY($2)",
        )
        .bind(device.to_string())
        .bind(list)
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(records.len());
        for r in records {
            outcomes.push(insert_record(&mut tx, &id, received_ms, r).await?);
        }
        for hb in heartbeats {
            sqlx::query(
                "UPDATE devices SET
                    last_heartbeat_ms = $2,
                    queued = $3,
                    last_state = CASE WHEN state_ms IS NULL OR state_ms <= $2 THEN $4
                                      ELSE last_state END,
                    state_ms = GREATEST(state_ms, $2)
                 WHERE device_id = $1 AND (last_heartbeat_ms IS NULL OR last_heartbeat_ms < $2)",
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
                "UPDATE devices SET last_seen_ms = GREATEST(last_seen_ms, $2) WHERE device_id = $1",
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
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_summary).collect()
    }

    pub(super) async fn device(&self, device: DeviceId) -> Result<Option<DeviceSummary>, Error> {
        let row = sqlx::query(
            "SELECT d.device_id, d.os_user, d.hostname, d.enrolled_ms, d.last_seen_ms,
                    d.last_state,
                    (SELECT COUNT(*) FROM records r WHERE r.device_id = d.device_id) AS records
             FROM devices d WHERE d.device_id = $1",
        )
        .bind(device.to_string())
        .fetch_optional(&self.pool)
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
        // Sequence numbers are stored as i64 with the same bits, compared in that order (as
        // in SQLite); agents number from 1, far below where the two orders differ.
        let rows = sqlx::query(
            "SELECT seq, created_ms, received_ms, payload FROM records
             WHERE device_id = $1 AND kind = $2 AND ($3::BIGINT IS NULL OR seq > $3::BIGINT)
             ORDER BY seq LIMIT $4",
        )
        .bind(device.to_string())
        .bind(kind.as_str())
        .bind(after.map(seq_to_db))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
             WHERE r.device_id = $1 AND r.kind = $2
               AND NOT EXISTS (SELECT 1 FROM scores s
                               WHERE s.device_id = r.device_id AND s.seq = r.seq)
             ORDER BY r.seq LIMIT $3",
        )
        .bind(device.to_string())
        .bind(Kind::Features.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| stored_record(r, device, Kind::Features))
            .collect()
    }

    pub(super) async fn devices_with_unscored_windows(&self) -> Result<Vec<DeviceId>, Error> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT r.device_id FROM records r
             WHERE r.kind = $1
               AND NOT EXISTS (SELECT 1 FROM scores s
                               WHERE s.device_id = r.device_id AND s.seq = r.seq)
             ORDER BY r.device_id",
        )
        .bind(Kind::Features.as_str())
        .fetch_all(&self.pool)
        .await?;
        ids.iter().map(|id| parse_device_id(id)).collect()
    }

    pub(super) async fn profile(&self, device: DeviceId) -> Result<Option<StoredProfile>, Error> {
        let row = sqlx::query("SELECT profile, version FROM profiles WHERE device_id = $1")
            .bind(device.to_string())
            .fetch_optional(&self.pool)
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
                .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
        if !write_profile(&mut tx, u.device, u.profile, u.expected_version, u.now_ms).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        for s in u.scores {
            let inserted = sqlx::query(
                "INSERT INTO scores (device_id, seq, created_ms, received_ms, scored_ms, keyboard,
                                     mouse, score, calibrated, trust, alert, enrolling, rejected)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
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
                // Another replica scored this window since this pass read its windows: the
                // pass is stale, run it again.
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
        .fetch_optional(&self.pool)
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
        let written = sqlx::query(
            "INSERT INTO population (id, generation, data, users, keyboard_users, mouse_users,
                                     learned_ms)
             VALUES (1, $1, $2, $3, $4, $5, $6)
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
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(written == 1)
    }

    pub(super) async fn population_generation(&self) -> Result<Option<u64>, Error> {
        let g: Option<i64> = sqlx::query_scalar("SELECT generation FROM population WHERE id = 1")
            .fetch_optional(&self.pool)
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
             WHERE ($1::TEXT IS NULL OR a.device_id = $1::TEXT) ORDER BY a.id"
        ))
        .bind(device.map(|d| d.to_string()))
        .fetch_all(&self.pool)
        .await?;
        let mut alerts: Vec<AlertSummary> =
            rows.iter().map(alert_summary).collect::<Result<_, _>>()?;
        let deliveries = sqlx::query(
            "SELECT o.alert_id, o.url, o.attempts, o.delivered_ms, o.failed, o.last_error
             FROM webhook_outbox o JOIN alerts a ON a.id = o.alert_id
             WHERE ($1::TEXT IS NULL OR a.device_id = $1::TEXT) ORDER BY o.alert_id, o.url",
        )
        .bind(device.map(|d| d.to_string()))
        .fetch_all(&self.pool)
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
        // Newest first so that LIMIT keeps the last ones (NULL: all), turned round below.
        let rows = sqlx::query(
            "SELECT r.seq, r.created_ms, r.received_ms, s.seq IS NOT NULL AS scored, s.keyboard,
                    s.mouse, s.score, s.calibrated, s.trust, s.alert, s.enrolling, s.rejected
             FROM records r
             LEFT JOIN scores s ON s.device_id = r.device_id AND s.seq = r.seq
             WHERE r.device_id = $1 AND r.kind = $2
             ORDER BY r.seq DESC LIMIT $3",
        )
        .bind(device.to_string())
        .bind(Kind::Features.as_str())
        .bind(last.map(i64::from))
        .fetch_all(&self.pool)
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
        // Take the due rows and lease them in one statement: a concurrent replica skips the
        // rows this one locked and, after the commit, sees them due only when the lease ends.
        let lease_ms = u64::try_from(DELIVERY_LEASE.as_millis()).unwrap_or(u64::MAX);
        let rows = sqlx::query(concat!(
            "WITH taken AS (
                 SELECT alert_id, url FROM webhook_outbox
                 WHERE delivered_ms IS NULL AND NOT failed AND next_attempt_ms <= $1
                   AND url = ANY($2)
                 ORDER BY next_attempt_ms, alert_id LIMIT $3
                 FOR UPDATE SKIP LOCKED
             ),
             leased AS (
                 UPDATE webhook_outbox o SET next_attempt_ms = $4
                 FROM taken t WHERE o.alert_id = t.alert_id AND o.url = t.url
                 RETURNING o.alert_id, o.url, o.attempts, o.next_attempt_ms
             )
             SELECT ",
            alert_columns!(),
            ", l.url, l.attempts, l.next_attempt_ms
             FROM leased l
             JOIN alerts a ON a.id = l.alert_id
             JOIN devices d ON d.device_id = a.device_id
             ORDER BY a.id, l.url"
        ))
        .bind(ms_to_db(now_ms))
        .bind(urls.to_vec())
        .bind(i64::from(limit))
        .bind(ms_to_db(now_ms.saturating_add(lease_ms)))
        .fetch_all(&self.pool)
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
             WHERE delivered_ms IS NULL AND NOT failed AND url = ANY($1)",
        )
        .bind(urls.to_vec())
        .fetch_one(&self.pool)
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
        // Only while the row is still this attempt's: not completed by anyone, and still
        // under the lease this replica took (a replica whose lease ran out while it posted
        // must not undo the delivery another replica made since, nor move its lease).
        let updated = sqlx::query(
            "UPDATE webhook_outbox SET attempts = attempts + 1,
                delivered_ms = $3,
                next_attempt_ms = COALESCE($4, next_attempt_ms),
                failed = $5,
                last_error = COALESCE($6, last_error)
             WHERE alert_id = $1 AND url = $2 AND delivered_ms IS NULL AND NOT failed
               AND next_attempt_ms = $7",
        )
        .bind(ms_to_db(delivery.alert.id))
        .bind(&delivery.url)
        .bind(delivered)
        .bind(next)
        .bind(failed)
        .bind(error)
        .bind(ms_to_db(delivery.lease_ms))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }
}

/// Read queries for the dashboard, `/metrics` and `/readyz` (see [`super::Store::ping`]).
impl PostgresStore {
    pub(super) async fn ping(&self) -> Result<(), Error> {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn device_state_counts(&self) -> Result<Vec<(Option<String>, u64)>, Error> {
        let rows = sqlx::query(
            "SELECT last_state, COUNT(*) AS n FROM devices GROUP BY last_state
             ORDER BY last_state NULLS FIRST",
        )
        .fetch_all(&self.pool)
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
        .fetch_all(&self.pool)
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
             WHERE ($1::TEXT IS NULL OR device_id = $1::TEXT)
             ORDER BY at_ms DESC, device_id, seq DESC LIMIT $2",
        )
        .bind(device.map(|d| d.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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

fn device_summary(r: &PgRow) -> Result<DeviceSummary, Error> {
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

fn alert_summary(r: &PgRow) -> Result<AlertSummary, Error> {
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

fn stored_record(r: &PgRow, device: DeviceId, kind: Kind) -> Result<StoredRecord, Error> {
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
/// whether it did. One statement either way, so the check and the write are atomic against
/// other replicas (an `UPDATE` waits for a concurrent writer, then re-checks `version`).
async fn write_profile(
    tx: &mut PgConnection,
    device: DeviceId,
    json: &str,
    expected: u64,
    now_ms: u64,
) -> Result<bool, Error> {
    let id = device.to_string();
    let written = if expected == 0 {
        sqlx::query(
            "INSERT INTO profiles (device_id, profile, version, updated_ms) VALUES ($1, $2, 1, $3)
             ON CONFLICT (device_id) DO NOTHING",
        )
        .bind(&id)
        .bind(json)
        .bind(ms_to_db(now_ms))
        .execute(&mut *tx)
        .await?
    } else {
        sqlx::query(
            "UPDATE profiles SET profile = $2, version = version + 1, updated_ms = $4
             WHERE device_id = $1 AND version = $3",
        )
        .bind(&id)
        .bind(json)
        .bind(ms_to_db(expected))
        .bind(ms_to_db(now_ms))
        .execute(&mut *tx)
        .await?
    };
    Ok(written.rows_affected() == 1)
}

/// Stores one alert and its outbox rows (one per webhook URL, due now); returns its id.
async fn insert_alert(
    tx: &mut PgConnection,
    device_id: &str,
    a: &NewAlert,
    webhooks: &[String],
    now_ms: u64,
) -> Result<u64, Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (device_id, seq, created_ms, raised_ms, kind, trust, evidence)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
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
             VALUES ($1, $2, 0, $3, FALSE) ON CONFLICT (alert_id, url) DO NOTHING",
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
    tx: &mut PgConnection,
    id: &str,
    received_ms: u64,
    r: &NewRecord,
) -> Result<Outcome, Error> {
    let seq = seq_to_db(r.seq);
    let inserted = sqlx::query(
        "INSERT INTO records (device_id, seq, kind, created_ms, received_ms, payload, envelope_sha256)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
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
            "SELECT envelope_sha256 FROM records WHERE device_id = $1 AND seq = $2",
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
                 VALUES ($1, $2, $3, $4, $5, $6)",
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
                "UPDATE devices SET last_state = $2, state_ms = $3
                 WHERE device_id = $1 AND (state_ms IS NULL OR state_ms <= $3)",
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
                 VALUES ($1, $2, $3, $4, $5, $6)",
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

/// The newest migration applied, 0 when the schema is not there.
async fn schema_version(pool: &PgPool) -> Result<i64, Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('cadence_schema') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(0);
    }
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM cadence_schema")
        .fetch_one(pool)
        .await?;
    Ok(version.unwrap_or(0))
}

/// Brings the schema to the newest version in one transaction, under an advisory lock that
/// makes replicas starting together wait for each other.
async fn migrate(pool: &PgPool) -> Result<(), Error> {
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('cadence_schema') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await?;
    let current: i64 = if exists {
        sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(version) FROM cadence_schema")
            .fetch_one(&mut *tx)
            .await?
            .unwrap_or(0)
    } else {
        0
    };
    if current > latest {
        return Err(Error::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(version, "applying database migration");
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO cadence_schema (version, applied_ms) VALUES ($1, $2)")
            .bind(*version)
            .bind(ms_to_db(crate::api::now_ms()))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A sequence number as stored: the i64 with the same 64 bits (BIGINT is signed).
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
