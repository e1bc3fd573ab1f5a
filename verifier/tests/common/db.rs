//! The databases a store test runs against: SQLite always, PostgreSQL when
//! `CADENCE_TEST_POSTGRES_URL` names a server (e.g. `postgres://postgres@127.0.0.1:5432/test`).
//!
//! Each PostgreSQL test gets a database of its own (`CREATE DATABASE cadence_t_...`, made
//! through the URL's database), so tests run in parallel without seeing each other's rows, and
//! the database is dropped when the [`TestDb`] is. Without the variable the PostgreSQL half is
//! skipped and says so; with `CI=true` a missing variable fails the test instead.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use cadence_verifier::Settings;
use cadence_verifier::config::{DATABASE_FILE, Database, PostgresUrl};
use sqlx::Connection;

/// The environment variable naming the PostgreSQL server tests may create databases on.
pub const POSTGRES_ENV: &str = "CADENCE_TEST_POSTGRES_URL";
/// A configuration file holding only `database_url`, written into a PostgreSQL test's data
/// directory so that commands run there with `--data-dir` find the same database.
pub const CONFIG_FILE: &str = "database.toml";

/// One database for one test.
pub enum TestDb {
    /// The verifier's default: a SQLite file in the data directory.
    Sqlite,
    /// A fresh PostgreSQL database, dropped with this value.
    Postgres {
        /// Its name.
        name: String,
        /// The URL of the server's maintenance database (from the environment).
        admin: String,
        /// The URL of the fresh database.
        url: PostgresUrl,
    },
}

impl TestDb {
    /// SQLite, then PostgreSQL when configured: the backends every store test runs on.
    pub async fn all(test: &str) -> Vec<TestDb> {
        let mut dbs = vec![TestDb::Sqlite];
        if let Some(pg) = TestDb::postgres(test).await {
            dbs.push(pg);
        }
        dbs
    }

    /// A fresh PostgreSQL database, or `None` (saying so) when no server is configured.
    /// Panics when none is configured and `CI=true`: CI must run the PostgreSQL half.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let Some(admin) = std::env::var(POSTGRES_ENV).ok().filter(|v| !v.is_empty()) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {POSTGRES_ENV} is not set, and CI=true requires the PostgreSQL tests"
            );
            eprintln!("{test}: PostgreSQL half SKIPPED: set {POSTGRES_ENV} to run it");
            return None;
        };
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cadence_t_{}_{}_{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("{test}: cannot connect to {POSTGRES_ENV}: {e}"));
        // The name is made here from digits and a fixed prefix: nothing to inject.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let mut url = reqwest::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        Some(TestDb::Postgres {
            name,
            admin,
            url: PostgresUrl::parse(url.as_str()).unwrap(),
        })
    }

    /// Which backend, for messages.
    pub fn label(&self) -> &'static str {
        match self {
            TestDb::Sqlite => "sqlite",
            TestDb::Postgres { .. } => "postgres",
        }
    }

    /// The database a verifier with this data directory uses.
    pub fn database(&self, data_dir: &Path) -> Database {
        match self {
            TestDb::Sqlite => Database::Sqlite(data_dir.join(DATABASE_FILE)),
            TestDb::Postgres { url, .. } => Database::Postgres(url.clone()),
        }
    }

    /// Points `settings` at this database (and, for PostgreSQL, writes [`CONFIG_FILE`] into
    /// the data directory for the commands a test runs there).
    pub fn apply(&self, settings: &mut Settings) {
        settings.database = self.database(&settings.data_dir);
        if let TestDb::Postgres { .. } = self {
            std::fs::create_dir_all(&settings.data_dir).unwrap();
            std::fs::write(
                settings.data_dir.join(CONFIG_FILE),
                self.config_line(&settings.data_dir),
            )
            .unwrap();
        }
    }

    /// The `database_url` line for a configuration file.
    pub fn config_line(&self, data_dir: &Path) -> String {
        match self {
            TestDb::Sqlite => format!(
                "database_url = \"sqlite://{}\"\n",
                data_dir.join(DATABASE_FILE).display()
            ),
            TestDb::Postgres { url, .. } => format!("database_url = \"{}\"\n", url.expose()),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let TestDb::Postgres { name, admin, .. } = self else {
            return;
        };
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let admin = admin.clone();
        // Drop runs inside the test's runtime: drop the database from a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {name}: {dropped:?}");
        }
    }
}
