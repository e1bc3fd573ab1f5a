//! The crate's one error type.
//!
//! Owns the ways the verifier can fail as a whole (start-up, storage, configuration, commands).
//! A problem with one request or one envelope is not an [`Error`]: ingest answers it with a 4xx
//! and keeps serving (see [`crate::ingest`]).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the verifier, or one of its commands, could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file or the flags hold one or more problems, each with its field path.
    /// Every problem is listed at once, so one edit can fix them all.
    #[error("invalid configuration:\n  - {}", problems.join("\n  - "))]
    Config {
        /// One line per problem: `field: what is wrong`.
        problems: Vec<String>,
    },
    /// A file or directory could not be read or written: wrong permissions on the data
    /// directory, a full disk, or a path that does not exist.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`reading`, `creating`, ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// No per-user data directory could be found (no home directory): pass `--data-dir`.
    #[error("no data directory could be determined for this user; pass --data-dir")]
    NoDataDir,
    /// The database failed: a corrupt file, a full disk, or a schema from a newer verifier.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The database is locked, every connection is in use, or the connection to the database
    /// was lost (server restarting, network cut): the verifier is overloaded, another process
    /// holds a long write lock, or the database is briefly away. Retrying later helps (503).
    #[error("database busy, try again later")]
    Busy,
    /// The database was written by a newer verifier than this one.
    #[error("database schema version {found} is newer than this verifier's ({supported})")]
    SchemaTooNew {
        /// The version found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A key file is corrupt or has the wrong length, or the system random source failed.
    #[error("key error: {0}")]
    Key(String),
    /// The TLS certificate or key is unusable: unreadable PEM, a key that does not match the
    /// certificate, or certificate generation failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The listening address could not be bound: already in use, or not an address of this
    /// machine.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A device id given on the command line is not enrolled here.
    #[error("no device {0} is enrolled")]
    UnknownDevice(String),
    /// `--user` names neither an enrolled device id nor the OS user of an enrolled device.
    #[error("no device is enrolled with id or OS user {0:?}")]
    UnknownUser(String),
    /// A file given on the command line could not be used: the evaluation's vectors or labels
    /// are unreadable, or hold nothing to evaluate.
    #[error("{0}")]
    Scoring(#[from] crate::scoring::ScoringError),
    /// Stored data that this verifier wrote cannot be read back: a corrupt or hand-edited
    /// database.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        if is_busy(&e) {
            Error::Busy
        } else {
            Error::Database(e)
        }
    }
}

/// Whether a database error means "try again later" rather than "broken": contention, or
/// a connection that failed (the request did not commit; an agent resends it).
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        // No free connection in time, the pool shut, or the socket to the server failed.
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                return pg_code_is_busy(pg.code());
            }
            // SQLite primary result codes SQLITE_BUSY (5) and SQLITE_LOCKED (6); extended codes
            // keep the primary code in their low byte.
            db.code()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6))
        }
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs that mean "try again": serialization failure, deadlock (one side is
/// aborted), lock not available, too many connections, the server shutting down
/// (administrator or crash) or starting, and every connection exception (class 08).
fn pg_code_is_busy(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "55P03" | "53300" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_and_contention_are_busy() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            assert!(matches!(Error::from(e), Error::Busy));
        }
        assert!(matches!(
            Error::from(sqlx::Error::RowNotFound),
            Error::Database(_)
        ));
        for code in [
            "40001", "40P01", "57P01", "57P03", "08006", "08003", "08000",
        ] {
            assert!(pg_code_is_busy(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "57014"] {
            assert!(!pg_code_is_busy(code), "{code}");
        }
    }
}
