//! The verifier's settings: flags and an optional TOML file, checked once into [`Settings`].
//!
//! Owns the defaults (everything works with no file at all: SQLite and a development CA in
//! the data directory, HTTPS on `127.0.0.1:8443`) and the file format. Hands on [`Settings`],
//! whose values are already checked. Never half-accepts a file: every problem is reported at
//! once with its field path ([`Error::Config`]), and an unknown field is a problem.
//!
//! # File format (`--config FILE`, TOML, every field optional)
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `listen` | string | socket address to serve on, e.g. `"0.0.0.0:443"`; `--listen` overrides it |
//! | `tls_cert` | path | PEM certificate chain (server certificate first); needs `tls_key` |
//! | `tls_key` | path | PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert` |
//! | `database_url` | string | `sqlite://PATH`, or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (also `postgresql://`) for fleets: see [`PostgresUrl`] |
//! | `enroll_tokens` | array of strings | tokens accepted besides those made by `token create` |
//! | `max_body_bytes` | integer | largest ingest body accepted, at most 8 MiB (the default) |
//! | `admin_tokens` | array of strings | tokens that open the dashboard and its API (`/dashboard`), at least 32 characters each; none: the dashboard is closed |
//! | `metrics_tokens` | array of strings | tokens that may only read `/metrics` (an admin token may too), at least 32 characters each |
//! | `[scoring]` | table | [`ScoringConfig`] fields (enrollment windows, method, `[scoring.trust]`, ...); each optional |
//! | `[[webhooks]]` | array of tables | where alerts are POSTed, each with the fields below |
//! | `webhooks[].url` | string | `http://` or `https://` URL; each URL once |
//! | `webhooks[].secret` | string | shared HMAC-SHA256 key for `X-Cadence-Signature`, at least 16 characters |
//! | `webhooks[].ca_file` | path | PEM CA certificate(s) to trust for this `https` webhook instead of the system's roots |
//! | `[devices] silent_after_secs` | integer | a device that sent nothing for this long is listed as `silent` (default 300, 5..=604800) |
//!
//! Relative paths are relative to the file's directory. Without `tls_cert`/`tls_key`, a
//! development CA and a server certificate for `127.0.0.1`, `::1` and `localhost` are made in
//! the data directory on first start.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use cadence_wire::records::MAX_BATCH_BYTES;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::Error;
use crate::scoring::{ScoringConfig, ScoringError};

/// Where the verifier listens when neither `--listen` nor the file says.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);
/// The SQLite file's name inside the data directory, when `database_url` is not set.
pub const DATABASE_FILE: &str = "verifier.db";
/// Shortest enrollment token accepted from the file: anything shorter can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;
/// Smallest `max_body_bytes`: one small envelope and its frame must fit.
pub const MIN_BODY_BYTES: usize = 1024;
/// Shortest webhook secret accepted: anything shorter can be guessed.
pub const MIN_WEBHOOK_SECRET_LEN: usize = 16;
/// Shortest admin or metrics token accepted: they open every device's data.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// Checked settings of one verifier.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The data directory: keys, development CA, SQLite database.
    pub data_dir: PathBuf,
    /// Where to listen for HTTPS.
    pub listen: SocketAddr,
    /// Where the TLS certificate comes from.
    pub tls: TlsSource,
    /// Which database to use.
    pub database: Database,
    /// Enrollment tokens from the file, accepted besides the stored ones. Secret.
    pub extra_tokens: Vec<String>,
    /// Largest ingest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Tokens that open the dashboard and its API. Secret.
    pub admin_tokens: Vec<SecretToken>,
    /// Tokens that may read `/metrics` only. Secret.
    pub metrics_tokens: Vec<SecretToken>,
    /// Scoring parameters, checked.
    pub scoring: ScoringConfig,
    /// Where alerts are delivered.
    pub webhooks: Vec<Webhook>,
    /// A device that sent nothing (no heartbeat, no record) for this long is listed as
    /// `silent`: its agent stopped, lost its network, or was tampered with.
    pub silent_after_secs: u64,
}

/// Default of `[devices] silent_after_secs`: five heartbeat periods of the agent's default 60 s.
pub const DEFAULT_SILENT_AFTER_SECS: u64 = 300;

/// One checked webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `http` or `https` URL alerts are POSTed to. May carry a secret of its own (many
    /// services put one in the path): logs show only its scheme and host ([`Webhook::name`]).
    pub url: String,
    /// The shared HMAC key.
    pub secret: WebhookSecret,
    /// PEM CA certificates to trust instead of the system's roots (https only).
    pub ca_file: Option<PathBuf>,
}

impl Webhook {
    /// The URL cut to scheme, host and port, safe to log and print.
    pub fn name(&self) -> String {
        redact_webhook_url(&self.url)
    }
}

/// A webhook URL cut to scheme, host and port (path, query and credentials dropped).
pub fn redact_webhook_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}/…", u.scheme()),
                None => format!("{}://{host}/…", u.scheme()),
            }
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// A webhook's shared secret: never printed (`Debug` says `<redacted>`), wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Zeroizing<String>);

impl WebhookSecret {
    /// A secret from its text.
    pub fn new(secret: impl Into<String>) -> WebhookSecret {
        WebhookSecret(Zeroizing::new(secret.into()))
    }

    /// The key bytes, for the HMAC.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// An admin or metrics token from the file: never printed (`Debug` says `<redacted>`), wiped
/// on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(Zeroizing<String>);

impl SecretToken {
    /// A token from its text.
    pub fn new(token: impl Into<String>) -> SecretToken {
        SecretToken(Zeroizing::new(token.into()))
    }

    /// The token's text, to compare against (in constant time) or derive keys from.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

/// Where the server's certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A development CA and server certificate in the data directory, made on first start.
    DevCa,
    /// Files given by the operator.
    Files {
        /// PEM certificate chain, server certificate first.
        cert: PathBuf,
        /// PEM private key.
        key: PathBuf,
    },
}

/// Which database holds the verifier's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Database {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database (which must exist; its tables are made on first start). Any
    /// number of verifier replicas may share one.
    Postgres(PostgresUrl),
}

/// A checked PostgreSQL connection URL: `postgres://` or `postgresql://`, a host, a database
/// name, and only the query parameters this build honours (`sslmode=disable`,
/// `application_name`, `options`, `host` for a socket directory, `port`, `user`, `password`,
/// `dbname`, `statement-cache-capacity`).
///
/// This build has no TLS for PostgreSQL: the database is to be reached over loopback, a Unix
/// socket or a private network, so `sslmode=require`, `verify-ca` and `verify-full` are
/// refused rather than failing at the first connection, and so are `prefer` and `allow`,
/// which would quietly mean plaintext here. The URL may hold a password: its
/// `Debug` and [`PostgresUrl::redacted`] show only host, port and database.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(Zeroizing<String>);

impl PostgresUrl {
    /// Checks `url`; the error says what is wrong without quoting a password.
    pub fn parse(url: &str) -> Result<PostgresUrl, String> {
        const HONOURED: &[&str] = &[
            "sslmode",
            "application_name",
            "options",
            "host",
            "port",
            "user",
            "password",
            "dbname",
            "statement-cache-capacity",
        ];
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("a PostgreSQL URL starts with postgres:// or postgresql://".to_owned());
        }
        // Never quote the URL in an error: it may carry a password.
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("not a valid PostgreSQL URL ({e})"))?;
        let socket_dir = parsed
            .query_pairs()
            .any(|(k, v)| k == "host" && v.starts_with('/'));
        if parsed.host_str().is_none_or(str::is_empty) && !socket_dir {
            return Err(
                "no host: write postgres://USER@HOST[:PORT]/DATABASE (or ?host=/socket/dir)"
                    .to_owned(),
            );
        }
        let has_dbname = parsed.query_pairs().any(|(k, _)| k == "dbname");
        if parsed.path().trim_start_matches('/').is_empty() && !has_dbname {
            return Err("no database name: write postgres://USER@HOST[:PORT]/DATABASE".to_owned());
        }
        if parsed.path().trim_start_matches('/').contains('/') {
            return Err("the path must be just the database name".to_owned());
        }
        for (key, value) in parsed.query_pairs() {
            if !HONOURED.contains(&key.as_ref()) {
                return Err(format!(
                    "unknown query parameter {key:?} (known: {})",
                    HONOURED.join(", ")
                ));
            }
            if key == "sslmode" && value != "disable" {
                return Err(format!(
                    "sslmode={value}: this verifier has no TLS for PostgreSQL (so `prefer` and \
                     `allow` would mean plaintext); reach the database over loopback, a Unix \
                     socket or a private network and write sslmode=disable, or leave sslmode out"
                ));
            }
        }
        // The driver's own parser has the last word (ports, percent-encoding, numbers).
        <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url)
            .map_err(|e| format!("not a valid PostgreSQL URL ({e})"))?;
        Ok(PostgresUrl(Zeroizing::new(url.to_owned())))
    }

    /// The URL, password included, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `postgres://HOST:PORT/DATABASE`, safe to log and print.
    pub fn redacted(&self) -> String {
        match reqwest::Url::parse(&self.0) {
            Ok(u) => format!(
                "postgres://{}:{}{}",
                u.host_str().unwrap_or(""),
                u.port().unwrap_or(5432),
                u.path()
            ),
            Err(_) => "postgres://<invalid>".to_owned(),
        }
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({})", self.redacted())
    }
}

/// The file as written, before any check.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    database_url: Option<String>,
    enroll_tokens: Option<Vec<String>>,
    max_body_bytes: Option<i64>,
    admin_tokens: Option<Vec<String>>,
    metrics_tokens: Option<Vec<String>>,
    scoring: Option<ScoringConfig>,
    webhooks: Option<Vec<RawWebhook>>,
    devices: Option<RawDevices>,
}

/// `[devices]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevices {
    silent_after_secs: Option<i64>,
}

/// One `[[webhooks]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Option<String>,
    secret: Option<String>,
    ca_file: Option<PathBuf>,
}

impl Settings {
    /// The defaults for `data_dir`: no file, no overrides.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Settings {
        let data_dir = data_dir.into();
        Settings {
            database: Database::Sqlite(data_dir.join(DATABASE_FILE)),
            data_dir,
            listen: DEFAULT_LISTEN,
            tls: TlsSource::DevCa,
            extra_tokens: Vec::new(),
            max_body_bytes: MAX_BATCH_BYTES,
            admin_tokens: Vec::new(),
            metrics_tokens: Vec::new(),
            scoring: ScoringConfig::default(),
            webhooks: Vec::new(),
            silent_after_secs: DEFAULT_SILENT_AFTER_SECS,
        }
    }

    /// Settings from the command line: the data directory (default: [`default_data_dir`]), an
    /// optional configuration file, and an optional `--listen` that wins over the file.
    pub fn load(
        data_dir: Option<PathBuf>,
        config_file: Option<&Path>,
        listen: Option<SocketAddr>,
    ) -> Result<Settings, Error> {
        let data_dir = match data_dir {
            Some(d) => d,
            None => default_data_dir()?,
        };
        let mut settings = match config_file {
            None => Settings::with_data_dir(data_dir),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(Error::io("reading", path))?;
                let base = path.parent().unwrap_or(Path::new("."));
                Settings::from_toml(&text, base, data_dir)?
            }
        };
        if let Some(listen) = listen {
            settings.listen = listen;
        }
        Ok(settings)
    }

    /// Parses and checks a configuration file's text; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path, data_dir: PathBuf) -> Result<Settings, Error> {
        let raw: RawFile = toml::from_str(text).map_err(|e| Error::Config {
            problems: vec![syntax_problem(text, e.message(), e.span())],
        })?;
        let mut settings = Settings::with_data_dir(data_dir);
        let mut problems = Vec::new();
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        if let Some(listen) = raw.listen {
            match listen.parse() {
                Ok(addr) => settings.listen = addr,
                Err(_) => problems.push(format!(
                    "listen: {listen:?} is not a socket address (like \"127.0.0.1:8443\" or \"[::]:443\")"
                )),
            }
        }
        match (raw.tls_cert, raw.tls_key) {
            (Some(cert), Some(key)) => {
                settings.tls = TlsSource::Files {
                    cert: resolve(cert),
                    key: resolve(key),
                }
            }
            (Some(_), None) => problems.push("tls_key: missing; tls_cert needs its key".to_owned()),
            (None, Some(_)) => {
                problems.push("tls_cert: missing; tls_key needs its certificate".to_owned())
            }
            (None, None) => {}
        }
        if let Some(url) = raw.database_url {
            if let Some(path) = url.strip_prefix("sqlite://") {
                if path.is_empty() {
                    problems.push("database_url: sqlite:// needs a file path".to_owned());
                } else {
                    settings.database = Database::Sqlite(resolve(PathBuf::from(path)));
                }
            } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                match PostgresUrl::parse(&url) {
                    Ok(pg) => settings.database = Database::Postgres(pg),
                    Err(why) => problems.push(format!("database_url: {why}")),
                }
            } else {
                problems.push(format!(
                    "database_url: {} is not a supported URL; use sqlite://PATH or \
                     postgres://USER@HOST[:PORT]/DATABASE",
                    redact_url(&url)
                ));
            }
        }
        if let Some(tokens) = raw.enroll_tokens {
            for (i, t) in tokens.iter().enumerate() {
                if t.len() < MIN_TOKEN_LEN {
                    problems.push(format!(
                        "enroll_tokens[{i}]: shorter than {MIN_TOKEN_LEN} characters, too easy to guess"
                    ));
                } else if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    problems.push(format!(
                        "enroll_tokens[{i}]: contains whitespace or control characters"
                    ));
                }
            }
            settings.extra_tokens = tokens;
        }
        for (field, tokens, into) in [
            ("admin_tokens", raw.admin_tokens, &mut settings.admin_tokens),
            (
                "metrics_tokens",
                raw.metrics_tokens,
                &mut settings.metrics_tokens,
            ),
        ] {
            for (i, t) in tokens.unwrap_or_default().into_iter().enumerate() {
                if t.chars().count() < MIN_ADMIN_TOKEN_LEN {
                    problems.push(format!(
                        "{field}[{i}]: shorter than {MIN_ADMIN_TOKEN_LEN} characters, too easy to guess"
                    ));
                } else if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    problems.push(format!(
                        "{field}[{i}]: contains whitespace or control characters"
                    ));
                } else {
                    into.push(SecretToken::new(t));
                }
            }
        }
        if let Some(n) = raw.max_body_bytes {
            match usize::try_from(n) {
                Ok(n) if (MIN_BODY_BYTES..=MAX_BATCH_BYTES).contains(&n) => {
                    settings.max_body_bytes = n
                }
                _ => problems.push(format!(
                    "max_body_bytes: {n} is outside {MIN_BODY_BYTES}..={MAX_BATCH_BYTES}"
                )),
            }
        }
        if let Some(scoring) = raw.scoring {
            match scoring.check() {
                Ok(()) => {}
                Err(ScoringError::Config { problems: p }) => {
                    problems.extend(p.into_iter().map(|p| format!("scoring.{p}")));
                }
                Err(e) => problems.push(format!("scoring: {e}")),
            }
            settings.scoring = scoring;
        }
        if let Some(n) = raw.devices.and_then(|d| d.silent_after_secs) {
            // At least a few seconds (tests use short heartbeats), at most a week.
            match u64::try_from(n) {
                Ok(n) if (5..=7 * 24 * 3600).contains(&n) => settings.silent_after_secs = n,
                _ => problems.push(format!(
                    "devices.silent_after_secs: {n} is outside 5..=604800 (seconds)"
                )),
            }
        }
        for (i, w) in raw.webhooks.unwrap_or_default().into_iter().enumerate() {
            if let Some(hook) = check_webhook(i, w, &resolve, &mut problems) {
                if settings.webhooks.iter().any(|h| h.url == hook.url) {
                    problems.push(format!(
                        "webhooks[{i}].url: {} is listed twice",
                        hook.name()
                    ));
                } else {
                    settings.webhooks.push(hook);
                }
            }
        }
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(Error::Config { problems })
        }
    }

    /// The development CA's certificate, when this verifier uses one.
    pub fn dev_ca_path(&self) -> Option<PathBuf> {
        match self.tls {
            TlsSource::DevCa => Some(self.data_dir.join(crate::tls::CA_CERT_FILE)),
            TlsSource::Files { .. } => None,
        }
    }
}

/// Checks one `[[webhooks]]` entry, adding its problems to `problems`.
fn check_webhook(
    i: usize,
    raw: RawWebhook,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    problems: &mut Vec<String>,
) -> Option<Webhook> {
    let before = problems.len();
    let mut https = false;
    match &raw.url {
        None => problems.push(format!("webhooks[{i}].url: missing")),
        Some(url) => match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                https = u.scheme() == "https";
            }
            Ok(_) => problems.push(format!(
                "webhooks[{i}].url: {} is not an http:// or https:// URL with a host",
                redact_webhook_url(url)
            )),
            // Never quote the URL: it may carry a secret.
            Err(e) => problems.push(format!("webhooks[{i}].url: not a URL ({e})")),
        },
    }
    match &raw.secret {
        None => problems.push(format!("webhooks[{i}].secret: missing")),
        Some(s) if s.chars().count() < MIN_WEBHOOK_SECRET_LEN => problems.push(format!(
            "webhooks[{i}].secret: shorter than {MIN_WEBHOOK_SECRET_LEN} characters, too easy to guess"
        )),
        Some(_) => {}
    }
    let ca_file = raw.ca_file.map(resolve);
    if let Some(path) = &ca_file {
        if raw.url.is_some() && !https {
            problems.push(format!(
                "webhooks[{i}].ca_file: only an https:// webhook uses a CA file"
            ));
        }
        match std::fs::read(path) {
            Err(e) => problems.push(format!(
                "webhooks[{i}].ca_file: cannot read {}: {e}",
                path.display()
            )),
            Ok(pem) => match reqwest::Certificate::from_pem_bundle(&pem) {
                Ok(certs) if !certs.is_empty() => {}
                _ => problems.push(format!(
                    "webhooks[{i}].ca_file: {} holds no PEM certificate",
                    path.display()
                )),
            },
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(Webhook {
        url: raw.url?,
        secret: WebhookSecret(Zeroizing::new(raw.secret?)),
        ca_file,
    })
}

/// The per-OS default data directory: `directories`' data dir for `cadence`, then `verifier`.
pub fn default_data_dir() -> Result<PathBuf, Error> {
    directories::ProjectDirs::from("", "", "cadence")
        .map(|d| d.data_dir().join("verifier"))
        .ok_or(Error::NoDataDir)
}

/// A TOML error as `key: message (line L, column C)`, the key being the one assigned on the
/// line the error points at (when there is one). Never quotes the value: it may be a token.
fn syntax_problem(text: &str, message: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return message.to_owned();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    match key {
        Some(key) => format!("{key}: {message} (line {line_no}, column {column})"),
        None => format!("{message} (line {line_no}, column {column})"),
    }
}

/// A URL with any `user:password@` part blanked out, safe to print.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => format!("{url:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, Error> {
        Settings::from_toml(text, Path::new("/etc/cadence"), PathBuf::from("/data"))
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(Error::Config { problems }) => problems,
            other => panic!("expected config problems, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.listen, DEFAULT_LISTEN);
        assert_eq!(s.tls, TlsSource::DevCa);
        assert_eq!(
            s.database,
            Database::Sqlite(PathBuf::from("/data/verifier.db"))
        );
        assert_eq!(s.max_body_bytes, MAX_BATCH_BYTES);
        assert_eq!(s.dev_ca_path(), Some(PathBuf::from("/data/ca.pem")));
    }

    #[test]
    fn every_field_is_read_and_paths_are_resolved() {
        let s = parse(
            r#"
            listen = "0.0.0.0:443"
            tls_cert = "tls/cert.pem"
            tls_key = "/abs/key.pem"
            database_url = "sqlite://db/v.db"
            enroll_tokens = ["0123456789abcdef0123"]
            max_body_bytes = 65536
            "#,
        )
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:443".parse().unwrap());
        assert_eq!(
            s.tls,
            TlsSource::Files {
                cert: PathBuf::from("/etc/cadence/tls/cert.pem"),
                key: PathBuf::from("/abs/key.pem")
            }
        );
        assert_eq!(
            s.database,
            Database::Sqlite(PathBuf::from("/etc/cadence/db/v.db"))
        );
        assert_eq!(s.extra_tokens, vec!["0123456789abcdef0123".to_owned()]);
        assert_eq!(s.max_body_bytes, 65536);
        assert_eq!(s.dev_ca_path(), None);
    }

    #[test]
    fn every_problem_is_listed_with_its_field() {
        let p = problems(
            r#"
            listen = "localhost"
            tls_cert = "c.pem"
            database_url = "postgres://u:secret@db/cadence?sslmode=require"
            enroll_tokens = ["short", "0123456789abcdef 0123"]
            max_body_bytes = 0
            "#,
        );
        assert_eq!(p.len(), 6, "{p:#?}");
        assert!(p[0].starts_with("listen:"));
        assert!(p[1].starts_with("tls_key:"));
        assert!(p[2].starts_with("database_url: sslmode=require"), "{p:?}");
        assert!(p[3].starts_with("enroll_tokens[0]:"));
        assert!(p[4].starts_with("enroll_tokens[1]:"));
        assert!(p[5].starts_with("max_body_bytes:"));
        let all = p.join("\n");
        assert!(!all.contains("secret"), "{all}");
    }

    #[test]
    fn postgres_urls_are_accepted_and_checked() {
        for url in [
            "postgres://cadence:secret@db.internal:5433/cadence",
            "postgresql://cadence@127.0.0.1/cadence?sslmode=disable&application_name=v1",
            "postgres://cadence@localhost/cadence?host=/var/run/postgresql",
        ] {
            let s = parse(&format!("database_url = \"{url}\"")).unwrap();
            match &s.database {
                Database::Postgres(pg) => {
                    assert_eq!(pg.expose(), url);
                    assert!(!format!("{:?}", s.database).contains("secret"));
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        // After "postgres://u:secret@".
        for (rest, says) in [
            ("/cadence", "host"),
            ("db", "no database name"),
            ("db/a/b", "just the database name"),
            ("db:99999/x", "not a valid PostgreSQL URL"),
            ("db/x?sslmode=verify-full", "no TLS for PostgreSQL"),
            ("db/x?sslmode=prefer", "would mean plaintext"),
            ("db/x?sslmode=allow", "no TLS for PostgreSQL"),
            ("db/x?sslmode=bogus", "no TLS for PostgreSQL"),
            ("db/x?ssl=true", "unknown query parameter \"ssl\""),
            ("db/x?port=abc", "not a valid PostgreSQL URL"),
        ] {
            let url = format!("postgres://u:secret@{rest}");
            let p = problems(&format!("database_url = \"{url}\""));
            assert_eq!(p.len(), 1, "{url}: {p:?}");
            assert!(p[0].starts_with("database_url: "), "{url}: {p:?}");
            assert!(p[0].contains(says), "{url}: {p:?}");
            assert!(!p[0].contains("secret"), "{url}: {p:?}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_types_are_refused() {
        let p = problems("listen = \"127.0.0.1:1\"\ndatabase = \"x\"\n");
        assert!(p[0].contains("database"), "{p:?}");
        assert!(p[0].contains("line 2"), "{p:?}");
        let p = problems("max_body_bytes = \"big\"");
        assert!(p[0].starts_with("max_body_bytes:"), "{p:?}");
        let p = problems("database_url = \"mysql://x\"");
        assert!(p[0].starts_with("database_url:"), "{p:?}");
    }

    #[test]
    fn scoring_and_webhooks_are_read() {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::ensure_dev_ca(dir.path()).unwrap();
        let text = format!(
            r#"
            [scoring]
            keyboard_enroll_windows = 3
            min_population_users = 2
            [scoring.trust]
            lockout = 40.0

            [[webhooks]]
            url = "https://hooks.example.com/services/T0/B0/x"
            secret = "0123456789abcdef"
            ca_file = "{}"

            [[webhooks]]
            url = "http://127.0.0.1:9000/alerts"
            secret = "fedcba9876543210fedc"
            "#,
            dir.path().join("ca.pem").display()
        );
        let s = parse(&text).unwrap();
        assert_eq!(s.scoring.keyboard_enroll_windows, 3);
        assert_eq!(s.scoring.min_population_users, 2);
        assert_eq!(s.scoring.trust.lockout, 40.0);
        assert_eq!(
            s.scoring.mouse_enroll_windows,
            ScoringConfig::default().mouse_enroll_windows
        );
        assert_eq!(s.webhooks.len(), 2);
        assert_eq!(s.webhooks[0].name(), "https://hooks.example.com/…");
        assert_eq!(s.webhooks[0].secret.expose(), b"0123456789abcdef");
        assert!(s.webhooks[0].ca_file.is_some());
        assert_eq!(s.webhooks[1].name(), "http://127.0.0.1:9000/…");
        let debug = format!("{s:?}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
        assert_eq!(parse("").unwrap().scoring, ScoringConfig::default());
    }

    #[test]
    fn every_scoring_and_webhook_problem_is_listed_with_its_field() {
        let p = problems(
            r#"
            [scoring]
            keyboard_enroll_windows = 1
            [scoring.trust]
            width = 0.0

            [[webhooks]]
            url = "ftp://files.example.com/in"
            secret = "0123456789abcdef"

            [[webhooks]]
            url = "https://hooks.example.com/T0/s3cr3t"
            secret = "short"

            [[webhooks]]
            ca_file = "/nonexistent/ca.pem"

            [[webhooks]]
            url = "http://127.0.0.1:1/x"
            secret = "0123456789abcdef"
            ca_file = "/nonexistent/ca.pem"

            [[webhooks]]
            url = "http://127.0.0.1:2/x"
            secret = "0123456789abcdef"

            [[webhooks]]
            url = "http://127.0.0.1:2/x"
            secret = "0123456789abcdef"
            "#,
        );
        let all = p.join("\n");
        for needle in [
            "scoring.keyboard_enroll_windows:",
            "scoring.trust.width:",
            "webhooks[0].url:",
            "webhooks[1].secret:",
            "webhooks[2].url: missing",
            "webhooks[2].secret: missing",
            "webhooks[2].ca_file: cannot read",
            "webhooks[3].ca_file: only an https:// webhook",
            "webhooks[5].url: http://127.0.0.1:2/… is listed twice",
        ] {
            assert!(all.contains(needle), "{needle} not in:\n{all}");
        }
        assert!(!all.contains("s3cr3t") && !all.contains("short\""), "{all}");
        let p = problems("[scoring]\nmethod = \"nearest\"\n");
        assert!(p[0].contains("method"), "{p:?}");
        let p =
            problems("[[webhooks]]\nurl = \"http://x\"\nsecret = \"0123456789abcdef\"\nsign = 1\n");
        assert!(p[0].contains("sign"), "{p:?}");
    }

    #[test]
    fn admin_and_metrics_tokens_are_checked_and_never_printed() {
        let s = parse(
            "admin_tokens = [\"0123456789abcdef0123456789abcdef\"]\n\
             metrics_tokens = [\"fedcba9876543210fedcba9876543210\"]\n",
        )
        .unwrap();
        assert_eq!(
            s.admin_tokens[0].expose(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(s.metrics_tokens.len(), 1);
        assert!(!format!("{s:?}").contains("0123456789abcdef0123456789abcdef"));
        assert!(
            parse("").unwrap().admin_tokens.is_empty(),
            "closed by default"
        );
        let p = problems(
            "admin_tokens = [\"short\", \"0123456789abcdef 0123456789abcdef\"]\n\
             metrics_tokens = [\"0123456789abcdef0123456789abcde\"]\n",
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].starts_with("admin_tokens[0]: shorter than 32"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("admin_tokens[1]: contains whitespace"),
            "{p:?}"
        );
        assert!(
            p[2].starts_with("metrics_tokens[0]: shorter than 32"),
            "{p:?}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\n").unwrap();
        let s = Settings::load(Some(dir.path().to_owned()), Some(&file), None).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9000".parse().unwrap());
        let s = Settings::load(
            Some(dir.path().to_owned()),
            Some(&file),
            Some("127.0.0.1:0".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(s.listen.port(), 0);
    }
}
