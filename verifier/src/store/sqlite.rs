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

use cadence_wire::records::Decision;
use cadence_wire::{DeviceId, DevicePublicKey, Kind};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};

use super::{
    DeviceSummary, Effect, HeartbeatUpdate, NewDevice, NewRecord, Outcome, StoredRecord, state_name,
};
use crate::Error;

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a free connection before the verifier answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent readers.
const READ_CONNECTIONS: u32 = 4;

/// Embedded migrations, in order; each ends by setting `PRAGMA user_version` to its number.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("migrations/0001_init.sql"))];

/// Starts a write transaction that holds the write lock from its first statement, so it can
/// never fail half-way with `SQLITE_BUSY` on upgrading a read lock.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

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
            .await?;
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
        rows.iter()
            .map(|r| {
                Ok(DeviceSummary {
                    device_id: parse_device_id(&r.try_get::<String, _>("device_id")?)?,
                    os_user: r.try_get("os_user")?,
                    hostname: r.try_get("hostname")?,
                    enrolled_ms: ms_from_db(r.try_get("enrolled_ms")?),
                    last_seen_ms: r.try_get::<Option<i64>, _>("last_seen_ms")?.map(ms_from_db),
                    state: r.try_get("last_state")?,
                    records: from_db_count(r.try_get("records")?),
                })
            })
            .collect()
    }

    pub(super) async fn records(
        &self,
        device: DeviceId,
        kind: Kind,
    ) -> Result<Vec<StoredRecord>, Error> {
        let rows = sqlx::query(
            "SELECT seq, created_ms, received_ms, payload FROM records
             WHERE device_id = ?1 AND kind = ?2 ORDER BY seq",
        )
        .bind(device.to_string())
        .bind(kind.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredRecord {
                    device,
                    seq: seq_from_db(r.try_get("seq")?),
                    kind,
                    created_ms: ms_from_db(r.try_get("created_ms")?),
                    received_ms: ms_from_db(r.try_get("received_ms")?),
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }
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
            let (decision, state) = match c.decision {
                Decision::Granted => ("granted", "monitoring"),
                Decision::Withdrawn => ("withdrawn", "withdrawn"),
            };
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
