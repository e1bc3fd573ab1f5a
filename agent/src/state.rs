//! The agent's small state files in its data directory: enrollment, consent, status.
//!
//! Owns their paths, formats and atomic replacement (write a temporary file, sync, rename,
//! sync the directory), so a crash leaves either the old or the new file, never half of one.
//! Never stores input data: the spool (`spool/`) holds sealed records, and only the daemon
//! writes there.
//!
//! | file | written by | content |
//! |---|---|---|
//! | `device.key` (0600) | `enroll` | the device's Ed25519 private key, PKCS#8 |
//! | `enrollment.json` | `enroll` | [`Enrollment`]: server URL, device id, verifier key, CA |
//! | `consent.json` | `consent grant/withdraw` | [`ConsentFile`]: the user's last decision |
//! | `consent-sent.json` | the daemon | the last decision sealed into the spool |
//! | `status.json` | the daemon | [`AgentStatus`], refreshed on change |
//! | `recent.jsonl` (0600) | the daemon | [`Recent`]: the last records sealed, as sent |
//! | `privacy.html`, `recent.html` | the tray | pages the tray's menu opens |
//! | `agent.sock` | the daemon | control socket: `reload`, `status` |
//!
//! # `recent.jsonl`
//!
//! The transparency file: the last [`Recent::KEEP`] records the daemon sealed for the
//! verifier, oldest first, one JSON object per line, written as
//! `{"seq":N,"kind":"features","sealed_at_ms":T,"payload":P}` where `P` is the record's
//! payload byte for byte as it went into the envelope (JSON text the agent wrote). It holds
//! exactly what leaves the device and nothing more; it is replaced whole (atomically) on each
//! record and readable only by the user. Heartbeats are not kept (their two fields are the
//! state and the queue length, which `status` shows).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cadence_wire::records::{Decision, MonitoringState};
use cadence_wire::{DeviceId, DeviceSigningKey, VerifierPublicKey};
use serde::{Deserialize, Serialize};

/// Problems with the agent's own files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file could not be read or written (permissions, disk full).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file exists but does not parse: edited by hand or damaged.
    #[error("{path}: damaged ({reason}); re-run the command that writes it")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// The device has not been enrolled with a verifier yet.
    #[error("this device is not enrolled: run `cadence-agent enroll --server URL --token T`")]
    NotEnrolled,
    /// No per-user data directory could be determined (no home directory).
    #[error("no data directory for this user; pass --data-dir")]
    NoDataDir,
}

/// The agent's data directory: `--data-dir` or the per-OS per-user location.
pub fn data_dir(given: Option<&Path>) -> Result<PathBuf, StateError> {
    if let Some(d) = given {
        return Ok(d.to_owned());
    }
    directories::ProjectDirs::from("", "", "cadence")
        .map(|p| p.data_local_dir().join("agent"))
        .ok_or(StateError::NoDataDir)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The OS account this agent runs for.
pub fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// This machine's host name.
pub fn hostname() -> String {
    fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the data directory (0700 on Unix).
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

/// Replaces `path` atomically with `bytes`; `private` files get mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(parent) = path.parent()
        && let Ok(d) = fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StateError::Damaged {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), StateError> {
    let mut s = serde_json::to_vec_pretty(v).map_err(|e| StateError::Damaged {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    s.push(b'\n');
    write_atomic(path, &s, false)
}

/// What enrollment established.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// The verifier's base URL (`https://host:port`).
    pub server: String,
    /// This device's id at the verifier.
    pub device_id: DeviceId,
    /// The verifier's HPKE public key: every envelope is sealed to it.
    pub verifier_public_key: VerifierPublicKey,
    /// The CA certificate (PEM) pinned for the verifier's TLS.
    pub ca_pem: String,
    /// The OS user enrolled.
    pub os_user: String,
    /// When, milliseconds since the Unix epoch.
    pub enrolled_at_ms: u64,
}

impl Enrollment {
    /// Loads the enrollment and the device key, or [`StateError::NotEnrolled`].
    pub fn load(dir: &Path) -> Result<(Enrollment, DeviceSigningKey), StateError> {
        let Some(e) = read_json::<Enrollment>(&dir.join("enrollment.json"))? else {
            return Err(StateError::NotEnrolled);
        };
        let key_path = dir.join("device.key");
        let pkcs8 = match fs::read(&key_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotEnrolled);
            }
            Err(e) => {
                return Err(StateError::Io {
                    path: key_path,
                    source: e,
                });
            }
        };
        let key = DeviceSigningKey::from_pkcs8(&pkcs8).map_err(|e| StateError::Damaged {
            path: key_path,
            reason: e.to_string(),
        })?;
        Ok((e, key))
    }

    /// Whether the device is enrolled.
    pub fn exists(dir: &Path) -> bool {
        dir.join("enrollment.json").is_file() && dir.join("device.key").is_file()
    }

    /// Stores the enrollment and the device key (0600).
    pub fn save(&self, dir: &Path, key: &DeviceSigningKey) -> Result<(), StateError> {
        ensure_dir(dir)?;
        write_atomic(&dir.join("device.key"), key.pkcs8_bytes(), true)?;
        write_json(&dir.join("enrollment.json"), self)
    }
}

/// The user's last consent decision on this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentFile {
    /// Granted or withdrawn.
    pub decision: Decision,
    /// SHA-256 (hex) of the notice text the decision was about.
    pub notice_sha256: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who decided.
    pub os_user: String,
    /// For a pause: when it ends by itself, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

impl ConsentFile {
    /// The recorded decision, if any.
    pub fn load(dir: &Path) -> Result<Option<ConsentFile>, StateError> {
        read_json(&dir.join("consent.json"))
    }

    /// Records a decision durably.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        ensure_dir(dir)?;
        write_json(&dir.join("consent.json"), self)
    }

    /// Whether this decision lets capture run under `notice_sha256`: only an explicit grant of
    /// the notice currently in force counts.
    pub fn allows_capture(&self, notice_sha256: &str) -> bool {
        self.decision == Decision::Granted && self.notice_sha256 == notice_sha256
    }
}

/// SHA-256 of a notice text, hex.
pub fn notice_hash(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The notice shown until the organization configures its own (managed configuration, later).
pub const DEFAULT_NOTICE: &str = "Your organization uses Cadence to check that the person at this \
computer is you. Cadence measures the timing of key presses and pointer movement, never which \
keys you press or what you type, and sends only statistical summaries to your organization's \
verifier. You can withdraw at any time with `cadence-agent consent withdraw`.";

/// The consent decision the daemon sealed into the spool last. Compared whole, not by time:
/// a clock that steps back must not hide a newer decision.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConsentSent {
    /// The decision sealed last.
    pub last: Option<ConsentFile>,
}

impl ConsentSent {
    /// Loads the marker (zero when none).
    pub fn load(dir: &Path) -> Result<ConsentSent, StateError> {
        Ok(read_json(&dir.join("consent-sent.json"))?.unwrap_or_default())
    }
    /// Stores the marker.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        write_json(&dir.join("consent-sent.json"), self)
    }
}

/// One record as sealed, from the transparency file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentRecord {
    /// Its sequence number.
    pub seq: u64,
    /// Its kind (`features`, `consent`, `alert`, `gap`).
    pub kind: String,
    /// When it was sealed, ms since the Unix epoch.
    pub sealed_at_ms: u64,
    /// The payload exactly as sealed (JSON text).
    pub payload: String,
}

impl RecentRecord {
    fn prefix(seq: u64, kind: &str, sealed_at_ms: u64) -> String {
        format!(
            "{{\"seq\":{seq},\"kind\":{},\"sealed_at_ms\":{sealed_at_ms},\"payload\":",
            serde_json::Value::from(kind)
        )
    }

    /// The record as one line of the file (and of `show --json`).
    pub fn to_line(&self) -> String {
        format!(
            "{}{}}}",
            Self::prefix(self.seq, &self.kind, self.sealed_at_ms),
            self.payload
        )
    }

    /// Reads one line back; `None` for a line that is not exactly what [`to_line`] writes.
    ///
    /// [`to_line`]: RecentRecord::to_line
    pub fn from_line(line: &str) -> Option<RecentRecord> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let seq = v.get("seq")?.as_u64()?;
        let kind = v.get("kind")?.as_str()?.to_owned();
        let at = v.get("sealed_at_ms")?.as_u64()?;
        let prefix = Self::prefix(seq, &kind, at);
        let payload = line.strip_prefix(&prefix)?.strip_suffix('}')?;
        serde_json::from_str::<serde::de::IgnoredAny>(payload).ok()?;
        Some(RecentRecord {
            seq,
            kind,
            sealed_at_ms: at,
            payload: payload.to_owned(),
        })
    }
}

/// The transparency file `recent.jsonl`: the last records sealed, exactly as sent.
pub struct Recent;

impl Recent {
    /// How many records the file keeps.
    pub const KEEP: usize = 50;

    fn path(dir: &Path) -> PathBuf {
        dir.join("recent.jsonl")
    }

    /// The records kept, oldest first. Lines that do not read back are skipped.
    pub fn load(dir: &Path) -> Result<Vec<RecentRecord>, StateError> {
        let path = Self::path(dir);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().filter_map(RecentRecord::from_line).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Adds one record, dropping the oldest beyond [`Recent::KEEP`].
    pub fn push(dir: &Path, rec: RecentRecord) -> Result<(), StateError> {
        let mut all = Self::load(dir)?;
        all.push(rec);
        let cut = all.len().saturating_sub(Self::KEEP);
        let mut text = String::new();
        for r in &all[cut..] {
            text.push_str(&r.to_line());
            text.push('\n');
        }
        write_atomic(&Self::path(dir), text.as_bytes(), true)
    }
}

/// What `cadence-agent status` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Whether a daemon answered (false: read from the last status file).
    pub running: bool,
    /// Monitoring state.
    pub state: Option<MonitoringState>,
    /// Whether the device is enrolled, and where.
    pub server: Option<String>,
    /// The device id at the verifier.
    pub device_id: Option<String>,
    /// Capture backend in use.
    pub backend: Option<String>,
    /// Windows closed and emitted since the daemon started.
    pub windows_produced: u64,
    /// Records written durably to the spool since the daemon started.
    pub spooled: u64,
    /// Records acknowledged by the verifier since the daemon started.
    pub sent: u64,
    /// Records waiting in the spool now.
    pub queued: u64,
    /// Input events dropped because the capture queue was full.
    pub dropped_events: u64,
    /// The last error, in words.
    pub last_error: Option<String>,
    /// The last delivery attempt failed: the verifier cannot be reached (records wait).
    #[serde(default)]
    pub offline: bool,
    /// While paused: when monitoring resumes by itself, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until_ms: Option<u64>,
    /// Last successful contact with the verifier, ms since the Unix epoch.
    pub last_contact_ms: Option<u64>,
    /// Time from a window's close to the verifier's acknowledgement of its record (sealed,
    /// spooled, sent, committed), p50 over the most recent records, in ms.
    pub delivery_ms_p50: Option<f64>,
    /// As `delivery_ms_p50`, the 99th percentile.
    pub delivery_ms_p99: Option<f64>,
}

impl AgentStatus {
    /// The last status the daemon wrote.
    pub fn load(dir: &Path) -> Result<Option<AgentStatus>, StateError> {
        read_json(&dir.join("status.json"))
    }
    /// Writes the status file.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        write_json(&dir.join("status.json"), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_private_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("cadence-state-{}", std::process::id()));
        let key = DeviceSigningKey::generate().unwrap();
        let e = Enrollment {
            server: "https://127.0.0.1:1".into(),
            device_id: DeviceId::random().unwrap(),
            verifier_public_key: cadence_wire::VerifierKeyPair::generate()
                .unwrap()
                .public_key(),
            ca_pem: "pem".into(),
            os_user: "u".into(),
            enrolled_at_ms: 1,
        };
        e.save(&dir, &key).unwrap();
        let (back, k2) = Enrollment::load(&dir).unwrap();
        assert_eq!(back, e);
        assert_eq!(k2.public_key(), key.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("device.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn recent_keeps_the_last_records_byte_for_byte() {
        let dir = std::env::temp_dir().join(format!("cadence-recent-{}", std::process::id()));
        ensure_dir(&dir).unwrap();
        // Key order and spacing as written, never re-serialized.
        let payload = |i: u64| format!("{{\"z\":{i},\"a\":[1.50,2e3],\"s\":\"}}\\\"x\"}}");
        for i in 0..(Recent::KEEP as u64 + 7) {
            Recent::push(
                &dir,
                RecentRecord {
                    seq: i + 1,
                    kind: "features".into(),
                    sealed_at_ms: 1000 + i,
                    payload: payload(i),
                },
            )
            .unwrap();
        }
        let all = Recent::load(&dir).unwrap();
        assert_eq!(all.len(), Recent::KEEP);
        assert_eq!(all[0].seq, 8, "the oldest went first");
        let last = all.last().unwrap();
        assert_eq!(last.payload, payload(Recent::KEEP as u64 + 6));
        assert_eq!(
            RecentRecord::from_line(&last.to_line()).as_ref(),
            Some(last)
        );
        assert!(RecentRecord::from_line("{\"seq\":1}").is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("recent.jsonl"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn only_a_grant_of_the_current_notice_allows_capture() {
        let c = ConsentFile {
            decision: Decision::Granted,
            notice_sha256: notice_hash("a"),
            at_ms: 1,
            os_user: "u".into(),
            until_ms: None,
        };
        assert!(c.allows_capture(&notice_hash("a")));
        assert!(
            !c.allows_capture(&notice_hash("b")),
            "a changed notice needs a new decision"
        );
        let w = ConsentFile {
            decision: Decision::Withdrawn,
            ..c
        };
        assert!(!w.allows_capture(&notice_hash("a")));
    }
}
