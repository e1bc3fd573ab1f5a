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
//! | `consent.json` | `consent`, the tray | [`ConsentFile`]: the user's last decision |
//! | `consent-journal.jsonl` | `consent`, the tray | [`ConsentJournal`]: every decision, in order |
//! | `consent.lock` | `consent`, the tray | held while a decision is made and written |
//! | `consent-sealed.json` | the daemon | [`ConsentSealed`]: the last journal entry sealed |
//! | `consent-sent.json` | older agents | [`ConsentSent`]: read once, when taking over |
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

/// The temporary file [`write_atomic`] writes `path` through: named after the whole file name,
/// the process and a counter (`.recent.jsonl.tmp.PID.N`), so two files that differ only in
/// their extension (`recent.jsonl` and `recent.html`, written concurrently by the daemon and
/// the tray's page writer), two threads, or two processes never share one.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

/// Replaces `path` atomically with `bytes`; `private` files get mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), StateError> {
    let tmp = temp_path(path);
    let written = write_then_rename(&tmp, path, bytes, private);
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn write_then_rename(
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
    private: bool,
) -> Result<(), StateError> {
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(tmp).map_err(io(tmp))?;
        f.write_all(bytes).map_err(io(tmp))?;
        f.sync_all().map_err(io(tmp))?;
    }
    fs::rename(tmp, path).map_err(io(path))?;
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
    /// An enrollment with a fresh device id and verifier key, to a verifier nobody serves.
    #[cfg(test)]
    pub(crate) fn for_test() -> Enrollment {
        Enrollment {
            server: "https://127.0.0.1:1".into(),
            device_id: DeviceId::random().unwrap(),
            verifier_public_key: cadence_wire::VerifierKeyPair::generate()
                .unwrap()
                .public_key(),
            ca_pem: "pem".into(),
            os_user: "u".into(),
            enrolled_at_ms: 1,
        }
    }

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

/// The consent decision the daemon sealed into the spool last, as agents from before the
/// consent journal recorded it (`consent-sent.json`); read once, to take such a data
/// directory over without sealing its decision again.
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

/// One line of the consent journal `consent-journal.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    /// Its place in the journal: 1, 2, 3… without gaps.
    pub index: u64,
    /// The decision.
    pub consent: ConsentFile,
}

/// The consent journal: every decision ever made on this device, in order, so that each one is
/// sealed for the verifier, also two made in quick succession or while no agent runs.
///
/// `consent-journal.jsonl` holds one [`JournalEntry`] per line, appended and never rewritten;
/// `consent.json` is the current-state view (the last entry), kept for `status` and for the
/// daemon's quick look. Every writer (the `consent` command, the tray, a pause running out)
/// goes through [`ConsentJournal::decide`], which holds the lock file `consent.lock` while it
/// reads the current decision, decides and writes both files: a decision is always made about
/// the latest one, never about a stale copy. `consent.json` is written first, since capture
/// follows it; an entry a crash kept out of the journal is appended on the next decision or
/// daemon turn. A line cut short by a crash is skipped when read and the next entry starts on
/// a line of its own.
pub struct ConsentJournal;

impl ConsentJournal {
    fn path(dir: &Path) -> PathBuf {
        dir.join("consent-journal.jsonl")
    }

    /// Every entry, oldest first (lines that do not read back are skipped).
    pub fn load(dir: &Path) -> Result<Vec<JournalEntry>, StateError> {
        let path = Self::path(dir);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Holds the journal's lock while `f` runs (released when the file closes).
    fn locked<T>(dir: &Path, f: impl FnOnce() -> Result<T, StateError>) -> Result<T, StateError> {
        ensure_dir(dir)?;
        let path = dir.join("consent.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        lock.lock().map_err(io(&path))?;
        let out = f();
        let _ = lock.unlock();
        out
    }

    /// Makes `c` the current decision, then journals it; its index. Call under the lock.
    ///
    /// `consent.json` first, because capture follows it: a crash or a failed write between
    /// the two leaves the new decision in force (a withdrawal stops capture at once) and the
    /// journal one entry behind, which [`ConsentJournal::catch_up`] then fills in with that
    /// same decision. The other order would leave the decision before in force (a grant the
    /// user has just withdrawn) and have it journaled again as if it were new.
    fn record(dir: &Path, c: &ConsentFile) -> Result<u64, StateError> {
        c.save(dir)?;
        #[cfg(test)]
        tests::crash_point(dir)?;
        Self::append(dir, c)
    }

    /// Appends `c` after the last entry; its index. Call under the lock.
    fn append(dir: &Path, c: &ConsentFile) -> Result<u64, StateError> {
        let path = Self::path(dir);
        let text = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let index = Self::load(dir)?.last().map_or(1, |e| e.index + 1);
        let entry = JournalEntry {
            index,
            consent: c.clone(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| StateError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        if !text.is_empty() && !text.ends_with(b"\n") {
            // The rest of a line cut short by a crash: the entry starts on its own line.
            line.insert(0, b'\n');
        }
        let mut opts = fs::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o644);
        }
        let mut f = opts.open(&path).map_err(io(&path))?;
        f.write_all(&line).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        Ok(index)
    }

    /// Brings the journal and `consent.json` together; the index of the entry it appended, if
    /// any. Call under the lock.
    ///
    /// A `consent.json` the journal does not end with is the decision in force that the
    /// journal missed (a crash between [`ConsentJournal::record`]'s two writes, a file written
    /// by hand or by an agent from before the journal): it is appended. One that is a copy of
    /// an earlier entry fell behind the journal instead (left by agents that journaled first
    /// and were cut off before `consent.json`, or restored from a backup): the journal's last
    /// entry is the user's latest decision, so it becomes current again and nothing is
    /// appended. (A new decision is never equal to an earlier one: each carries the
    /// millisecond it was made.)
    fn catch_up(dir: &Path) -> Result<Option<u64>, StateError> {
        let Some(current) = ConsentFile::load(dir)? else {
            return Ok(None);
        };
        let journal = Self::load(dir)?;
        match journal.split_last() {
            Some((last, _)) if last.consent == current => Ok(None),
            Some((last, earlier)) if earlier.iter().any(|e| e.consent == current) => {
                tracing::warn!(
                    index = last.index,
                    "consent.json held an earlier decision than the journal's last: the last is \
                     in force again"
                );
                last.consent.save(dir)?;
                Ok(None)
            }
            _ => Self::append(dir, &current).map(Some),
        }
    }

    /// Decides about the current decision under the lock: `f` sees the latest decision and
    /// returns the new one (`None`: nothing changes), which becomes current and is appended.
    /// `f`'s own refusal comes back as the inner error. The decision in force is journaled
    /// first if the journal missed it (as [`ConsentJournal::adopt`] does), so that every
    /// decision reaches the journal, in order.
    pub fn decide<E>(
        dir: &Path,
        f: impl FnOnce(Option<&ConsentFile>) -> Result<Option<ConsentFile>, E>,
    ) -> Result<Result<Option<ConsentFile>, E>, StateError> {
        Self::locked(dir, || {
            // A journal that cannot be read or written must not keep the user from stopping
            // capture (withdraw, pause): consent.json, which capture follows, is written
            // regardless, and the journal catches up once it can be written. Any other
            // decision waits for the journal, so that no decision in between is lost.
            let behind = Self::catch_up(dir).err();
            if let Some(e) = &behind {
                tracing::warn!("the consent journal cannot catch up: {e}");
            }
            let current = ConsentFile::load(dir)?;
            match f(current.as_ref()) {
                Ok(Some(new)) => {
                    if let Some(e) = behind
                        && !matches!(new.decision, Decision::Withdrawn | Decision::Paused)
                    {
                        return Err(e);
                    }
                    Self::record(dir, &new)?;
                    Ok(Ok(Some(new)))
                }
                other => Ok(other),
            }
        })
    }

    /// Takes a `consent.json` the journal does not end with (written by hand, by an agent
    /// from before the journal, or left by a crash before its entry) into it as a decision of
    /// its own; its index when it did. A `consent.json` that is a copy of an earlier entry is
    /// replaced by the journal's last entry instead, the user's latest decision.
    pub fn adopt(dir: &Path) -> Result<Option<u64>, StateError> {
        Self::locked(dir, || Self::catch_up(dir))
    }
}

/// Which journal entry the daemon sealed last, and under which spool sequence number.
///
/// Written before that record is appended to the spool (under the same lock that hands out
/// sequence numbers), so a crash can never seal an entry twice: after a restart, a `seq` the
/// spool has not reached yet (`seq >= next_seq`) means the append did not happen and the
/// entry is sealed again, under that same number; otherwise it is sealed.
///
/// Unknown fields are ignored (unlike the other state files): a marker written by a later
/// agent must not keep an earlier one from starting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentSealed {
    /// The journal entry.
    pub index: u64,
    /// The spool sequence number it went out under.
    pub seq: u64,
    /// When that entry's decision was made (its `at_ms`): a journal whose entry `index` holds
    /// another decision is not the one this marker speaks of. Absent in markers written by
    /// agents before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

impl ConsentSealed {
    /// The marker, if any.
    pub fn load(dir: &Path) -> Result<Option<ConsentSealed>, StateError> {
        read_json(&dir.join("consent-sealed.json"))
    }

    /// Stores the marker.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        write_json(&dir.join("consent-sealed.json"), self)
    }

    /// The last journal entry sealed, given the spool's next sequence number at start.
    pub fn sealed_through(marker: Option<ConsentSealed>, next_seq: u64) -> u64 {
        match marker {
            Some(m) if m.seq >= next_seq => m.index.saturating_sub(1),
            Some(m) => m.index,
            None => 0,
        }
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
    /// Where the state is shown on screen: `tray`, `notifications`, or `nowhere: WHY` (no
    /// tray and no notification service: only `status` tells it). `None` without a
    /// graphical session or with `--no-ui`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown_by: Option<String>,
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
        let e = Enrollment::for_test();
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
    fn files_that_differ_only_in_extension_never_share_a_temporary_file() {
        let dir = std::env::temp_dir().join(format!("cadence-atomic-{}", std::process::id()));
        ensure_dir(&dir).unwrap();
        assert_ne!(
            temp_path(&dir.join("recent.jsonl")),
            temp_path(&dir.join("recent.html"))
        );
        // The daemon's transparency file and the tray's page, written at the same time: each
        // file only ever holds what was written to it.
        let writer = |name: &'static str, fill: u8| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let path = dir.join(name);
                for i in 0..300usize {
                    let text = vec![fill; 1000 + i];
                    write_atomic(&path, &text, true).unwrap();
                    let back = fs::read(&path).unwrap();
                    assert!(
                        back.iter().all(|b| *b == fill),
                        "{name} holds another file's content"
                    );
                }
            })
        };
        let a = writer("recent.jsonl", b'j');
        let b = writer("recent.html", b'h');
        a.join().unwrap();
        b.join().unwrap();
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        fs::remove_dir_all(&dir).ok();
    }

    fn decision(d: Decision, at_ms: u64) -> ConsentFile {
        ConsentFile {
            decision: d,
            notice_sha256: notice_hash("n"),
            at_ms,
            os_user: "u".into(),
            until_ms: None,
        }
    }

    fn fresh(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cadence-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ensure_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn every_decision_is_journaled_once_in_order_also_when_made_at_once() {
        let dir = fresh("journal");
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for i in 0..10u64 {
                        // Each decides about the latest decision, whatever the others wrote.
                        ConsentJournal::decide(&dir, |cur| {
                            let next = match cur.map(|c| c.decision) {
                                Some(Decision::Granted) => Decision::Withdrawn,
                                _ => Decision::Granted,
                            };
                            Ok::<_, ()>(Some(decision(next, t * 100 + i)))
                        })
                        .unwrap()
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = ConsentJournal::load(&dir).unwrap();
        assert_eq!(
            all.iter().map(|e| e.index).collect::<Vec<_>>(),
            (1..=40).collect::<Vec<_>>()
        );
        // Each decided about the one before it: they alternate, none was lost.
        assert!(
            all.windows(2)
                .all(|w| w[0].consent.decision != w[1].consent.decision)
        );
        assert_eq!(
            ConsentFile::load(&dir).unwrap().as_ref(),
            Some(&all[39].consent),
            "consent.json is the last decision"
        );
        // A refusal writes nothing.
        assert_eq!(
            ConsentJournal::decide(&dir, |_| Err::<Option<ConsentFile>, _>("no")).unwrap(),
            Err("no")
        );
        assert_eq!(ConsentJournal::load(&dir).unwrap().len(), 40);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_line_cut_short_by_a_crash_does_not_hide_the_next_decision() {
        let dir = fresh("journal-torn");
        ConsentJournal::decide(&dir, |_| Ok::<_, ()>(Some(decision(Decision::Granted, 1))))
            .unwrap()
            .unwrap();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(dir.join("consent-journal.jsonl"))
            .unwrap();
        f.write_all(b"{\"index\":2,\"consent\":{\"deci").unwrap();
        drop(f);
        ConsentJournal::decide(&dir, |_| {
            Ok::<_, ()>(Some(decision(Decision::Withdrawn, 2)))
        })
        .unwrap()
        .unwrap();
        let all = ConsentJournal::load(&dir).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].index, 2);
        assert_eq!(all[1].consent.decision, Decision::Withdrawn);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_consent_file_written_by_hand_is_taken_into_the_journal_once() {
        let dir = fresh("journal-adopt");
        assert_eq!(
            ConsentJournal::adopt(&dir).unwrap(),
            None,
            "nothing to adopt"
        );
        decision(Decision::Granted, 5).save(&dir).unwrap();
        assert_eq!(ConsentJournal::adopt(&dir).unwrap(), Some(1));
        assert_eq!(ConsentJournal::adopt(&dir).unwrap(), None, "already there");
        decision(Decision::Withdrawn, 6).save(&dir).unwrap();
        assert_eq!(ConsentJournal::adopt(&dir).unwrap(), Some(2));
        fs::remove_dir_all(&dir).ok();
    }

    thread_local! {
        /// Set by a test: the next decision stops between its two writes, as if the process
        /// had been killed there (or the second write had failed).
        static CRASH_BETWEEN_WRITES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Called by [`ConsentJournal`] between its two writes of a decision.
    pub(super) fn crash_point(dir: &Path) -> Result<(), StateError> {
        if CRASH_BETWEEN_WRITES.with(|c| c.replace(false)) {
            return Err(StateError::Io {
                path: dir.to_owned(),
                source: std::io::Error::other("simulated crash between the two writes"),
            });
        }
        Ok(())
    }

    fn journaled(dir: &Path) -> Vec<(u64, Decision, u64)> {
        ConsentJournal::load(dir)
            .unwrap()
            .into_iter()
            .map(|e| (e.index, e.consent.decision, e.consent.at_ms))
            .collect()
    }

    /// A grant, its withdrawal and a new grant, at milliseconds 1, 2 and 3, as journaled.
    const GRANT_WITHDRAW_GRANT: [(u64, Decision, u64); 3] = [
        (1, Decision::Granted, 1),
        (2, Decision::Withdrawn, 2),
        (3, Decision::Granted, 3),
    ];

    /// Grants again at millisecond 3 after `check` has seen the decision in force, then checks
    /// the journal holds [`GRANT_WITHDRAW_GRANT`]; removes `dir`.
    fn grant_again(dir: &Path, check: impl FnOnce(Option<&ConsentFile>)) {
        ConsentJournal::decide(dir, |cur| {
            check(cur);
            Ok::<_, ()>(Some(decision(Decision::Granted, 3)))
        })
        .unwrap()
        .unwrap();
        assert_eq!(journaled(dir), GRANT_WITHDRAW_GRANT);
        fs::remove_dir_all(dir).ok();
    }

    fn decide_to(dir: &Path, c: ConsentFile) -> Result<(), StateError> {
        ConsentJournal::decide(dir, |_| Ok::<_, ()>(Some(c))).map(|r| {
            r.unwrap();
        })
    }

    #[test]
    fn a_withdrawal_cut_off_halfway_stops_capture_and_is_journaled_once() {
        let dir = fresh("journal-cut");
        decide_to(&dir, decision(Decision::Granted, 1)).unwrap();
        CRASH_BETWEEN_WRITES.with(|c| c.set(true));
        assert!(decide_to(&dir, decision(Decision::Withdrawn, 2)).is_err());
        // Capture follows consent.json: it must already say withdrawn.
        assert_eq!(
            ConsentFile::load(&dir).unwrap(),
            Some(decision(Decision::Withdrawn, 2)),
            "the withdrawal is in force"
        );
        // The next start takes the withdrawal into the journal, and only it.
        assert_eq!(ConsentJournal::adopt(&dir).unwrap(), Some(2));
        assert_eq!(ConsentJournal::adopt(&dir).unwrap(), None);
        assert_eq!(
            journaled(&dir),
            [(1, Decision::Granted, 1), (2, Decision::Withdrawn, 2)]
        );
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_decision_the_journal_cannot_take_is_still_in_force_and_journaled_later() {
        let dir = fresh("journal-unwritable");
        decide_to(&dir, decision(Decision::Granted, 1)).unwrap();
        let journal = dir.join("consent-journal.jsonl");
        let kept = fs::read(&journal).unwrap();
        // Something that cannot be appended to where the journal is.
        fs::remove_file(&journal).unwrap();
        fs::create_dir(&journal).unwrap();
        assert!(decide_to(&dir, decision(Decision::Withdrawn, 2)).is_err());
        assert_eq!(
            ConsentFile::load(&dir).unwrap().map(|c| c.decision),
            Some(Decision::Withdrawn),
            "a withdrawal stops capture also when the journal cannot be written"
        );
        // A grant while the withdrawal is still missing from the journal would lose the
        // withdrawal for the verifier: refused, and capture stays off.
        assert!(decide_to(&dir, decision(Decision::Granted, 3)).is_err());
        assert_eq!(
            ConsentFile::load(&dir).unwrap().map(|c| c.decision),
            Some(Decision::Withdrawn),
            "a grant was applied while the journal could not take the withdrawal"
        );
        fs::remove_dir(&journal).unwrap();
        fs::write(&journal, kept).unwrap();
        // The next decision is made about the withdrawal, which is journaled first.
        grant_again(&dir, |cur| {
            assert_eq!(cur.map(|c| c.decision), Some(Decision::Withdrawn));
        });
    }

    #[test]
    fn a_decision_is_made_only_after_the_one_in_force_is_journaled() {
        let dir = fresh("journal-behind");
        decide_to(&dir, decision(Decision::Granted, 1)).unwrap();
        // In force but not journaled: a crash between the two writes, or written by hand.
        decision(Decision::Withdrawn, 2).save(&dir).unwrap();
        grant_again(&dir, |cur| {
            assert_eq!(cur, Some(&decision(Decision::Withdrawn, 2)));
            assert_eq!(
                journaled(&dir).last(),
                Some(&(2, Decision::Withdrawn, 2)),
                "journaled before the next decision is made"
            );
        });
    }

    #[test]
    fn a_consent_file_left_behind_the_journal_never_brings_back_an_older_decision() {
        let dir = fresh("journal-stale");
        decide_to(&dir, decision(Decision::Granted, 1)).unwrap();
        decide_to(&dir, decision(Decision::Withdrawn, 2)).unwrap();
        // What an agent that journaled first left when cut off before consent.json.
        decision(Decision::Granted, 1).save(&dir).unwrap();
        assert_eq!(ConsentJournal::adopt(&dir).unwrap(), None);
        assert_eq!(
            ConsentFile::load(&dir).unwrap(),
            Some(decision(Decision::Withdrawn, 2)),
            "the latest decision is in force again"
        );
        decision(Decision::Granted, 1).save(&dir).unwrap();
        ConsentJournal::decide(&dir, |cur| {
            assert_eq!(cur, Some(&decision(Decision::Withdrawn, 2)));
            Ok::<_, ()>(None)
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            journaled(&dir),
            [(1, Decision::Granted, 1), (2, Decision::Withdrawn, 2)]
        );
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_entry_is_sealed_once_its_spool_append_happened() {
        let m = |index, seq| {
            Some(ConsentSealed {
                index,
                seq,
                at_ms: None,
            })
        };
        assert_eq!(ConsentSealed::sealed_through(None, 1), 0);
        // The marker names seq 7 and the spool goes on at 8: the append happened.
        assert_eq!(ConsentSealed::sealed_through(m(3, 7), 8), 3);
        // The spool still goes on at 7: the crash came before the append.
        assert_eq!(ConsentSealed::sealed_through(m(3, 7), 7), 2);
        assert_eq!(ConsentSealed::sealed_through(m(1, 0), 1), 1);
    }

    #[test]
    fn a_marker_from_a_later_agent_is_read() {
        let marker: ConsentSealed =
            serde_json::from_str(r#"{"index":4,"seq":9,"at_ms":5,"later":true}"#).unwrap();
        assert_eq!((marker.index, marker.seq, marker.at_ms), (4, 9, Some(5)));
        let older: ConsentSealed = serde_json::from_str(r#"{"index":4,"seq":9}"#).unwrap();
        assert_eq!(older.at_ms, None);
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
