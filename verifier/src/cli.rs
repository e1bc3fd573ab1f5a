//! The command line: flags parsed once into [`Cli`], and the commands other than `serve`.
//!
//! Owns the flags, the read-only commands (`devices`, `windows`, `alerts`, `timeline`),
//! `token create`, `baseline reset`, `eval`, and the text and JSON forms those print. Hands
//! lines of text to the binary, which is the only place that writes to the terminal. Never
//! prints a stored token (only a new one, once), a webhook secret or a whole webhook URL, or a
//! feature value in a plain-text listing; `windows --json` prints vectors because that is what
//! the operator asked for. Scores and trust levels are not feature values: `timeline` and
//! `alerts` show them.
//!
//! `--user U` (timeline, baseline reset) takes a device id (32 hex digits, as `devices` shows
//! it) or an OS user name, which means every device enrolled for that user.

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cadence_wire::features::check_previous;
use cadence_wire::{DeviceId, FeatureVector, Kind};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::Error;
use crate::alerts::evidence;
use crate::api::now_ms;
use crate::config::{Settings, default_data_dir, redact_webhook_url};
use crate::keys::{Token, create_data_dir};
use crate::scoring::eval::{EvalOptions, evaluate, read_labels, read_vectors};
use crate::scoring::{Modality, ScoringError, UserProfile};
use crate::store::{AlertSummary, DeviceSummary, Store, StoredRecord, TimelineEntry};

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
    /// List alerts, oldest first: trust alerts and the agents' keystroke-injection alerts.
    Alerts {
        /// One JSON object per line, with the evidence and webhook deliveries.
        #[arg(long)]
        json: bool,
        /// Only this device's alerts.
        #[arg(long, value_name = "ID")]
        device: Option<DeviceId>,
    },
    /// Each window's scores and the trust level over time, for a device or an OS user.
    Timeline {
        /// A device id, or an OS user name (all of that user's devices).
        #[arg(long, value_name = "USER")]
        user: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Baselines.
    Baseline {
        /// What to do with baselines.
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Evaluate the production scoring on recorded vectors (`cadence-agent replay` output):
    /// EER, FAR at FRR 1% and 5%, ROC AUC, per-user spread, ANGA/ANIA. Uses the `[scoring]`
    /// table of --config.
    Eval {
        /// JSON lines of labelled feature vectors.
        #[arg(long, value_name = "FILE")]
        vectors: PathBuf,
        /// Enrollment windows per user (default: the configuration's count per modality).
        #[arg(long, value_name = "N")]
        enroll: Option<usize>,
        /// Impostor users per genuine user (default 100).
        #[arg(long, value_name = "K")]
        impostors: Option<usize>,
        /// Leave out users with fewer windows than this (default and floor: enrollment + 1).
        #[arg(long, value_name = "N")]
        min_windows: Option<usize>,
        /// Labels file (`filename,is_illegal`): score labelled test sessions instead.
        #[arg(long, value_name = "FILE")]
        labels: Option<PathBuf>,
        /// The report as one JSON object.
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

/// Baseline commands.
#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Forget a user's baseline: the next windows enroll afresh, and trust is back to full.
    /// Works while serving.
    Reset {
        /// A device id, or an OS user name (all of that user's devices).
        #[arg(long, value_name = "USER")]
        user: String,
        /// Which baseline.
        #[arg(long, value_enum, default_value_t = ModalityChoice::All)]
        modality: ModalityChoice,
    },
}

/// A modality, or both, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModalityChoice {
    /// The keyboard baseline.
    Keyboard,
    /// The mouse baseline.
    Mouse,
    /// Both.
    All,
}

impl ModalityChoice {
    fn modalities(self) -> Vec<Modality> {
        match self {
            ModalityChoice::Keyboard => vec![Modality::Keyboard],
            ModalityChoice::Mouse => vec![Modality::Mouse],
            ModalityChoice::All => Modality::ALL.to_vec(),
        }
    }
}

impl Cli {
    /// The checked settings these flags (and the configuration file) give.
    pub fn settings(&self) -> Result<Settings, Error> {
        let listen = match self.command {
            Command::Serve { listen } => listen,
            _ => None,
        };
        let data_dir = match (&self.data_dir, &self.command) {
            (Some(dir), _) => Some(dir.clone()),
            // eval reads no data directory, only --config's [scoring] table.
            (None, Command::Eval { .. }) => {
                Some(default_data_dir().unwrap_or_else(|_| PathBuf::from(".")))
            }
            (None, _) => None,
        };
        Settings::load(data_dir, self.config.as_deref(), listen)
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
    let now = now_ms();
    devices?
        .iter()
        .map(|d| {
            let status = device_status(d, now, settings.silent_after_secs);
            if json {
                to_json(&DeviceJson { device: d, status })
            } else {
                Ok(device_line(d, status))
            }
        })
        .collect()
}

/// What `devices` shows a device as: the state it last reported (`monitoring`, `paused`,
/// `withdrawn`, `waiting`, `error`), or `silent` when nothing arrived from it (no heartbeat,
/// no record) for `silent_after_secs` of the verifier's clock: its agent stopped, lost its
/// network, or was tampered with. Computed when asked, from the last envelope's arrival.
pub fn device_status(d: &DeviceSummary, now_ms: u64, silent_after_secs: u64) -> &'static str {
    let heard = d.last_seen_ms.unwrap_or(d.enrolled_ms);
    if now_ms.saturating_sub(heard) > silent_after_secs.saturating_mul(1000) {
        return "silent";
    }
    match d.state.as_deref() {
        Some("monitoring") => "monitoring",
        Some("paused") => "paused",
        Some("withdrawn") => "withdrawn",
        Some("error") => "error",
        // Waiting for consent, or nothing reported yet.
        _ => "waiting",
    }
}

/// One device in the JSON form `devices --json` prints: the stored summary and its status.
#[derive(Debug, Serialize)]
pub struct DeviceJson<'a> {
    /// The stored summary (`state` is the last state the agent reported).
    #[serde(flatten)]
    pub device: &'a DeviceSummary,
    /// What the device is shown as now (see [`device_status`]).
    pub status: &'static str,
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

/// `alerts`: stored alerts, oldest first, one line each.
pub async fn alerts(
    settings: &Settings,
    device: Option<DeviceId>,
    json: bool,
) -> Result<Vec<String>, Error> {
    let store = Store::open_existing(&settings.database).await?;
    let result = async {
        if let Some(d) = device
            && !store.device_exists(d).await?
        {
            return Err(Error::UnknownDevice(d.to_string()));
        }
        store.alerts(device).await
    }
    .await;
    store.close().await;
    result?
        .iter()
        .map(|a| {
            if json {
                to_json(&AlertJson::from(a))
            } else {
                Ok(alert_line(a))
            }
        })
        .collect()
}

/// One alert in the JSON form `alerts --json` prints.
#[derive(Debug, Serialize)]
pub struct AlertJson<'a> {
    /// Its id.
    pub id: u64,
    /// `trust` or `injection`.
    pub kind: &'static str,
    /// When it happened (device clock, ms since the Unix epoch).
    pub created_ms: u64,
    /// When the verifier stored it (verifier clock).
    pub raised_ms: u64,
    /// The device.
    pub device_id: DeviceId,
    /// The device's OS user.
    pub os_user: &'a str,
    /// The device's host name.
    pub hostname: &'a str,
    /// The window or record that raised it.
    pub seq: Option<u64>,
    /// The trust level that crossed the lockout (trust alerts).
    pub trust: Option<f64>,
    /// The evidence object.
    pub evidence: serde_json::Value,
    /// Its webhook deliveries.
    pub deliveries: Vec<DeliveryJson<'a>>,
}

/// One webhook delivery in `alerts --json`.
#[derive(Debug, Serialize)]
pub struct DeliveryJson<'a> {
    /// The webhook's scheme and host (never its whole URL: it may hold a secret).
    pub webhook: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was delivered.
    pub delivered_ms: Option<u64>,
    /// Whether delivery was given up.
    pub failed: bool,
    /// The last attempt's error.
    pub last_error: Option<&'a str>,
}

impl<'a> From<&'a AlertSummary> for AlertJson<'a> {
    fn from(a: &'a AlertSummary) -> AlertJson<'a> {
        AlertJson {
            id: a.id,
            kind: a.kind.as_str(),
            created_ms: a.created_ms,
            raised_ms: a.raised_ms,
            device_id: a.device_id,
            os_user: &a.os_user,
            hostname: &a.hostname,
            seq: a.seq,
            trust: a.trust,
            evidence: evidence(&a.evidence),
            deliveries: a
                .deliveries
                .iter()
                .map(|d| DeliveryJson {
                    webhook: redact_webhook_url(&d.url),
                    attempts: d.attempts,
                    delivered_ms: d.delivered_ms,
                    failed: d.failed,
                    last_error: d.last_error.as_deref(),
                })
                .collect(),
        }
    }
}

/// One alert as text: id, time, kind, device, user, trust, evidence summary, deliveries.
pub fn alert_line(a: &AlertSummary) -> String {
    let mut line = format!(
        "#{}  {}  {}  device={}  user={}  host={}  trust={}  evidence: {}",
        a.id,
        utc(a.created_ms),
        a.kind.as_str(),
        a.device_id,
        a.os_user,
        a.hostname,
        opt(a.trust, 1),
        evidence_summary(&a.evidence)
    );
    if !a.deliveries.is_empty() {
        let delivered = a
            .deliveries
            .iter()
            .filter(|d| d.delivered_ms.is_some())
            .count();
        let failed = a.deliveries.iter().filter(|d| d.failed).count();
        line.push_str(&format!(
            "  webhooks: {delivered}/{} delivered{}",
            a.deliveries.len(),
            if failed > 0 {
                format!(", {failed} given up")
            } else {
                String::new()
            }
        ));
    }
    line
}

/// The evidence object's plain fields as `key=value`, numbers rounded.
fn evidence_summary(text: &str) -> String {
    match evidence(text) {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "kind")
            .filter_map(|(k, v)| {
                let v = match v {
                    serde_json::Value::Number(n) if n.is_f64() => {
                        format!("{:.2}", n.as_f64().unwrap_or(f64::NAN))
                    }
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some(format!("{k}={v}"))
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// `timeline`: every window of the user's devices with its scores and the trust level.
pub async fn timeline(settings: &Settings, user: &str, json: bool) -> Result<Vec<String>, Error> {
    let store = Store::open_existing(&settings.database).await?;
    let result = async {
        let devices = store.find_devices(user).await?;
        if devices.is_empty() {
            return Err(Error::UnknownUser(user.to_owned()));
        }
        let mut out = Vec::new();
        for d in &devices {
            for e in store.timeline(d.device_id).await? {
                out.push(if json {
                    to_json(&TimelineJson::new(&e, &d.os_user))?
                } else {
                    timeline_line(&e)
                });
            }
        }
        Ok(out)
    }
    .await;
    store.close().await;
    result
}

/// What became of a window, as `timeline` shows it.
fn window_state(e: &TimelineEntry) -> &'static str {
    match &e.score {
        None => "pending",
        Some(s) if s.rejected.is_some() => "rejected",
        Some(s) if s.score.is_some() => "scored",
        Some(s) if s.enrolling.is_some() => "enrolling",
        Some(_) => "unscored",
    }
}

/// One window in the JSON form `timeline --json` prints.
#[derive(Debug, Serialize)]
pub struct TimelineJson<'a> {
    /// The device.
    pub device_id: DeviceId,
    /// Its OS user.
    pub os_user: &'a str,
    /// The window's sequence number.
    pub seq: u64,
    /// When the agent closed it (device clock).
    pub created_ms: u64,
    /// When the verifier stored it.
    pub received_ms: u64,
    /// `scored`, `enrolling`, `rejected`, `pending` (not scored yet) or `unscored` (no
    /// baseline could score it).
    pub state: &'static str,
    /// Keyboard score.
    pub keyboard: Option<f64>,
    /// Mouse score.
    pub mouse: Option<f64>,
    /// Fused score.
    pub score: Option<f64>,
    /// Whether the scores were cohort-normalized (only then does trust move).
    pub calibrated: bool,
    /// Trust level after the window, when it moved.
    pub trust: Option<f64>,
    /// Whether the window raised a trust alert.
    pub alert: bool,
    /// Modalities this window went into enrollment for, with windows still needed.
    pub enrolling: Option<serde_json::Value>,
    /// Why it was refused instead of scored.
    pub rejected: Option<&'a str>,
}

impl<'a> TimelineJson<'a> {
    fn new(e: &'a TimelineEntry, os_user: &'a str) -> TimelineJson<'a> {
        let s = e.score.as_ref();
        TimelineJson {
            device_id: e.device_id,
            os_user,
            seq: e.seq,
            created_ms: e.created_ms,
            received_ms: e.received_ms,
            state: window_state(e),
            keyboard: s.and_then(|s| s.keyboard),
            mouse: s.and_then(|s| s.mouse),
            score: s.and_then(|s| s.score),
            calibrated: s.is_some_and(|s| s.calibrated),
            trust: s.and_then(|s| s.trust),
            alert: s.is_some_and(|s| s.alert),
            enrolling: s.and_then(|s| s.enrolling.as_deref()).map(evidence),
            rejected: s.and_then(|s| s.rejected.as_deref()),
        }
    }
}

/// One window as text.
pub fn timeline_line(e: &TimelineEntry) -> String {
    let mut line = format!(
        "{}  seq={}  created={}  received={}",
        e.device_id,
        e.seq,
        utc(e.created_ms),
        utc(e.received_ms)
    );
    let Some(s) = &e.score else {
        line.push_str("  pending (not scored yet)");
        return line;
    };
    if let Some(why) = &s.rejected {
        line.push_str(&format!("  rejected: {why}"));
        return line;
    }
    if s.score.is_some() {
        line.push_str(&format!(
            "  keyboard={}  mouse={}  score={}  calibrated={}  trust={}  alert={}",
            opt(s.keyboard, 2),
            opt(s.mouse, 2),
            opt(s.score, 2),
            yes_no(s.calibrated),
            opt(s.trust, 1),
            yes_no(s.alert)
        ));
    }
    if let Some(serde_json::Value::Object(map)) = s.enrolling.as_deref().map(evidence) {
        let parts: Vec<String> = map
            .iter()
            .map(|(m, left)| match left.as_u64() {
                Some(0) => format!("{m} baseline complete"),
                Some(n) => format!("{m} {n} more window(s) to go"),
                None => m.clone(),
            })
            .collect();
        line.push_str(&format!("  enrolling: {}", parts.join(", ")));
    }
    line
}

/// `baseline reset`: forgets the chosen baselines of the user's devices and resets trust.
/// Writes the profile row only, so it works while a server runs (the server's scorer notices
/// the change and never writes over it).
pub async fn baseline_reset(
    settings: &Settings,
    user: &str,
    modality: ModalityChoice,
) -> Result<Vec<String>, Error> {
    let store = Store::open_existing(&settings.database).await?;
    let result = async {
        let devices = store.find_devices(user).await?;
        if devices.is_empty() {
            return Err(Error::UnknownUser(user.to_owned()));
        }
        let mut out = Vec::new();
        for d in &devices {
            out.push(reset_one(&store, d, modality).await?);
        }
        Ok(out)
    }
    .await;
    store.close().await;
    result
}

async fn reset_one(
    store: &Store,
    d: &DeviceSummary,
    modality: ModalityChoice,
) -> Result<String, Error> {
    let who = format!("{} ({}@{})", d.device_id, d.os_user, d.hostname);
    // A scorer may write the row between our read and our write: then read it again.
    for _ in 0..10 {
        let Some(stored) = store.profile(d.device_id).await? else {
            return Ok(format!("{who}: nothing learned yet, nothing to reset"));
        };
        let mut profile = serde_json::from_str::<UserProfile>(&stored.json).unwrap_or_default();
        let mut done = Vec::new();
        for m in modality.modalities() {
            let mp = profile.modality(m);
            let what = match (&mp.baseline, mp.pending.len()) {
                (Some(b), _) => format!(
                    "{m} baseline ({} enrollment windows, {} adapted)",
                    b.enrolled, b.adapted
                ),
                (None, 0) => format!("{m} (nothing learned yet)"),
                (None, n) => format!("{m} enrollment ({n} windows collected)"),
            };
            profile.reset_baseline(m);
            done.push(what);
        }
        let json = serde_json::to_string(&profile)
            .map_err(|e| Error::Corrupt(format!("profile of {}: {e}", d.device_id)))?;
        if store
            .save_profile(d.device_id, &json, stored.version, now_ms())
            .await?
        {
            return Ok(format!(
                "{who}: reset {}; trust back to 100; the next windows enroll afresh",
                done.join(", ")
            ));
        }
    }
    Err(Error::Busy)
}

/// `eval`: the evaluation report as text lines, or one JSON line.
pub fn eval(
    settings: &Settings,
    vectors: &Path,
    enroll: Option<usize>,
    impostors: Option<usize>,
    min_windows: Option<usize>,
    labels: Option<&Path>,
    json: bool,
) -> Result<Vec<String>, Error> {
    let open = |p: &Path| {
        File::open(p)
            .map(BufReader::new)
            .map_err(Error::io("reading", p))
    };
    let data = read_vectors(open(vectors)?)?;
    let labels = match labels {
        Some(p) => Some(read_labels(open(p)?)?),
        None => None,
    };
    let defaults = EvalOptions::default();
    let opts = EvalOptions {
        enroll,
        impostors: impostors.unwrap_or(defaults.impostors),
        min_windows,
        config: settings.scoring.clone(),
        ..defaults
    };
    let report = evaluate(&data, labels.as_ref(), &opts).map_err(|e| {
        // Nothing to report figures on: still say what was refused, and why.
        if data.rejected.is_empty() {
            return Error::Scoring(e);
        }
        let mut counts: Vec<String> = data
            .rejected
            .iter()
            .map(|(reason, n)| format!("{reason}: {n}"))
            .collect();
        counts.sort();
        let first = match e {
            ScoringError::Input(why) => why,
            other => other.to_string(),
        };
        let mut why = format!(
            "{first}\n{} lines, {} accepted, rejected: {}",
            data.lines,
            data.windows.len(),
            counts.join(", ")
        );
        for example in &data.rejection_examples {
            why.push_str(&format!("\n  rejected {example}"));
        }
        Error::Scoring(ScoringError::Input(why))
    })?;
    if json {
        Ok(vec![to_json(&report)?])
    } else {
        Ok(report.to_text())
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// One device as text.
pub fn device_line(d: &DeviceSummary, status: &str) -> String {
    format!(
        "{}  user={}  host={}  enrolled={}  last_seen={}  status={}  last_state={}  records={}",
        d.device_id,
        d.os_user,
        d.hostname,
        utc(d.enrolled_ms),
        d.last_seen_ms.map_or_else(|| "never".to_owned(), utc),
        status,
        d.state.as_deref().unwrap_or("-"),
        d.records
    )
}

/// One stored window in the JSON form `windows --json` prints. The vector is as stored: a
/// [`FeatureVector`], or the JSON of a previous schema's vector from an older agent.
#[derive(Debug, Serialize)]
pub struct WindowJson<'a, V: Serialize = FeatureVector> {
    /// The device.
    pub device: DeviceId,
    /// The record's sequence number.
    pub seq: u64,
    /// When the agent closed the window (device clock, ms since the Unix epoch).
    pub created_ms: u64,
    /// When the verifier committed it (verifier clock).
    pub received_ms: u64,
    /// The feature vector.
    pub vector: &'a V,
}

/// One stored window as a line: JSON, or a text summary without feature values.
pub fn window_line(r: &StoredRecord, json: bool) -> Result<String, Error> {
    let vector = match FeatureVector::from_json(&r.payload) {
        Ok(v) => v,
        Err(e) => match check_previous(&r.payload) {
            Ok(schema) => return previous_window_line(r, schema, json),
            Err(_) => {
                return Err(Error::Corrupt(format!(
                    "stored window {} of {}: {e}",
                    r.seq, r.device
                )));
            }
        },
    };
    if json {
        return window_json(r, &vector);
    }
    let blocks: Vec<&str> = [
        vector.keyboard.is_some().then_some("keyboard"),
        vector.mouse.is_some().then_some("mouse"),
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(window_summary(
        r,
        vector.duration_ms as f64,
        &vector.keys,
        &vector.mouse_events,
        &blocks,
    ))
}

/// A stored window of a previous `schema` (an older agent's), shown as stored.
fn previous_window_line(r: &StoredRecord, schema: &str, json: bool) -> Result<String, Error> {
    let v: serde_json::Value =
        serde_json::from_str(&r.payload).map_err(|e| Error::Corrupt(e.to_string()))?;
    if json {
        return window_json(r, &v);
    }
    let blocks: Vec<&str> = ["keyboard", "mouse"]
        .into_iter()
        .filter(|b| !v[*b].is_null())
        .collect();
    let line = window_summary(
        r,
        v["duration_ms"].as_f64().unwrap_or(0.0),
        &v["keys"],
        &v["mouse_events"],
        &blocks,
    );
    Ok(format!("{line}  schema={schema} (older agent: not scored)"))
}

fn window_json<V: Serialize>(r: &StoredRecord, vector: &V) -> Result<String, Error> {
    to_json(&WindowJson {
        device: r.device,
        seq: r.seq,
        created_ms: r.created_ms,
        received_ms: r.received_ms,
        vector,
    })
}

fn window_summary(
    r: &StoredRecord,
    duration_ms: f64,
    keys: &dyn std::fmt::Display,
    mouse_events: &dyn std::fmt::Display,
    blocks: &[&str],
) -> String {
    format!(
        "seq={}  created={}  received={}  duration={:.1}s  keys={}  mouse_events={}  blocks={}",
        r.seq,
        utc(r.created_ms),
        utc(r.received_ms),
        duration_ms / 1000.0,
        keys,
        mouse_events,
        blocks.join(",")
    )
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
    fn a_device_is_silent_after_the_configured_time_whatever_it_said_last() {
        let d = |state: Option<&str>, last_seen_ms: Option<u64>| DeviceSummary {
            device_id: DeviceId::random().unwrap(),
            os_user: "u".into(),
            hostname: "h".into(),
            enrolled_ms: 1_000,
            last_seen_ms,
            state: state.map(str::to_owned),
            records: 0,
        };
        let now = 1_000_000;
        let recent = Some(now - 299_000);
        for (state, shown) in [
            (Some("monitoring"), "monitoring"),
            (Some("paused"), "paused"),
            (Some("withdrawn"), "withdrawn"),
            (Some("waiting_for_consent"), "waiting"),
            (Some("error"), "error"),
            (None, "waiting"),
        ] {
            assert_eq!(device_status(&d(state, recent), now, 300), shown);
            assert_eq!(
                device_status(&d(state, Some(now - 301_000)), now, 300),
                "silent",
                "{state:?}"
            );
        }
        // Never heard from since enrollment, long ago.
        assert_eq!(device_status(&d(None, None), now, 300), "silent");
        let line = device_line(&d(Some("paused"), recent), "paused");
        assert!(line.contains("status=paused"), "{line}");
    }

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
