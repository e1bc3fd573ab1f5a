//! The command line: flags parsed once into [`Cli`], and the commands other than `serve`.
//!
//! Owns the flags, the read-only commands (`devices`, `windows`), `token create`, and the text
//! and JSON forms those print. Hands lines of text to the binary, which is the only place that
//! writes to the terminal. Never prints a stored token (only a new one, once) or a feature
//! value in the plain-text listing; `windows --json` prints vectors because that is what the
//! operator asked for.

use std::net::SocketAddr;
use std::path::PathBuf;

use cadence_wire::{DeviceId, FeatureVector, Kind};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::Error;
use crate::api::now_ms;
use crate::config::Settings;
use crate::keys::{Token, create_data_dir};
use crate::store::{DeviceSummary, Store, StoredRecord};

/// `cadence-verifier`: the self-hosted verifier of Cadence agents' signed, encrypted records.
#[derive(Debug, Parser)]
#[command(name = "cadence-verifier", version, about)]
pub struct Cli {
    /// Data directory: keys, development CA and database. Default: the per-user data
    /// directory's `cadence/verifier`.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Configuration file (TOML): certificate and key, database URL, tokens, limits.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTPS API until Ctrl-C or SIGTERM (first start: makes keys, CA and a token).
    Serve {
        /// Address to listen on (default 127.0.0.1:8443; port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Enrollment tokens.
    Token {
        /// What to do with tokens.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List enrolled devices.
    Devices {
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the feature windows stored for one device.
    Windows {
        /// The device's id (32 hex digits, as `devices` shows it).
        #[arg(long, value_name = "ID")]
        device: DeviceId,
        /// One JSON object per line, with the whole feature vector.
        #[arg(long)]
        json: bool,
    },
}

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new enrollment token, store its hash, and print it (works while serving).
    Create,
}

impl Cli {
    /// The checked settings these flags (and the configuration file) give.
    pub fn settings(&self) -> Result<Settings, Error> {
        let listen = match self.command {
            Command::Serve { listen } => listen,
            _ => None,
        };
        Settings::load(self.data_dir.clone(), self.config.as_deref(), listen)
    }
}

/// `token create`: a new token, stored (as its hash) before it is returned.
pub async fn token_create(settings: &Settings) -> Result<Token, Error> {
    create_data_dir(&settings.data_dir)?;
    let store = Store::open(&settings.database).await?;
    let token = Token::generate()?;
    let result = store.add_token(&token.hash(), now_ms()).await;
    store.close().await;
    result.map(|()| token)
}

/// `devices`: every enrolled device, one line each.
pub async fn devices(settings: &Settings, json: bool) -> Result<Vec<String>, Error> {
    let store = Store::open_existing(&settings.database).await?;
    let devices = store.devices().await;
    store.close().await;
    devices?
        .iter()
        .map(|d| if json { to_json(d) } else { Ok(device_line(d)) })
        .collect()
}

/// `windows`: the feature windows stored for `device`, one line each, by sequence number.
pub async fn windows(
    settings: &Settings,
    device: DeviceId,
    json: bool,
) -> Result<Vec<String>, Error> {
    let store = Store::open_existing(&settings.database).await?;
    let result = async {
        if !store.device_exists(device).await? {
            return Err(Error::UnknownDevice(device.to_string()));
        }
        store.records(device, Kind::Features).await
    }
    .await;
    store.close().await;
    result?.iter().map(|r| window_line(r, json)).collect()
}

/// One device as text.
pub fn device_line(d: &DeviceSummary) -> String {
    format!(
        "{}  user={}  host={}  enrolled={}  last_seen={}  state={}  records={}",
        d.device_id,
        d.os_user,
        d.hostname,
        utc(d.enrolled_ms),
        d.last_seen_ms.map_or_else(|| "never".to_owned(), utc),
        d.state.as_deref().unwrap_or("-"),
        d.records
    )
}

/// One stored window in the JSON form `windows --json` prints.
#[derive(Debug, Serialize)]
pub struct WindowJson<'a> {
    /// The device.
    pub device: DeviceId,
    /// The record's sequence number.
    pub seq: u64,
    /// When the agent closed the window (device clock, ms since the Unix epoch).
    pub created_ms: u64,
    /// When the verifier committed it (verifier clock).
    pub received_ms: u64,
    /// The feature vector.
    pub vector: &'a FeatureVector,
}

/// One stored window as a line: JSON, or a text summary without feature values.
pub fn window_line(r: &StoredRecord, json: bool) -> Result<String, Error> {
    let vector = FeatureVector::from_json(&r.payload)
        .map_err(|e| Error::Corrupt(format!("stored window {} of {}: {e}", r.seq, r.device)))?;
    if json {
        return to_json(&WindowJson {
            device: r.device,
            seq: r.seq,
            created_ms: r.created_ms,
            received_ms: r.received_ms,
            vector: &vector,
        });
    }
    let blocks: Vec<&str> = [
        vector.keyboard.is_some().then_some("keyboard"),
        vector.mouse.is_some().then_some("mouse"),
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(format!(
        "seq={}  created={}  received={}  duration={:.1}s  keys={}  mouse_events={}  blocks={}",
        r.seq,
        utc(r.created_ms),
        utc(r.received_ms),
        vector.duration_ms as f64 / 1000.0,
        vector.keys,
        vector.mouse_events,
        blocks.join(",")
    ))
}

fn to_json<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(e.to_string()))
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_767_225_600_000), "2026-01-01T00:00:00Z");
        assert_eq!(utc(1_798_761_599_999), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn flags_parse_with_data_dir_anywhere() {
        let cli = Cli::try_parse_from([
            "cadence-verifier",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(cli.data_dir, Some(PathBuf::from("/tmp/x")));
        let s = cli.settings().unwrap();
        assert_eq!(s.listen.port(), 0);
        let cli = Cli::try_parse_from([
            "cadence-verifier",
            "--data-dir",
            "/tmp/y",
            "token",
            "create",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Token {
                command: TokenCommand::Create
            }
        ));
        assert!(Cli::try_parse_from(["cadence-verifier", "windows", "--device", "xyz"]).is_err());
    }
}
