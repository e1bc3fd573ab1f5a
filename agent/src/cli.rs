//! The agent's command line: flags are parsed once into checked settings, then each command
//! runs against the library. All output to the terminal goes through [`Out`].
//!
//! Commands: `preview` (live capture, print each closed window) and `replay` (recorded data
//! through the same capture boundary and feature code).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cadence_config::{Managed, RawWindowPolicy, WindowPolicy};
use cadence_wire::FeatureVector;
use cadence_wire::features::{KEYBOARD_FEATURES, MOUSE_FEATURES};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::capture::replay::Speed;
use crate::capture::replay::{self, Format};
use crate::capture::{self, InputSource, MonoClock, Recv, StopFlag};
use crate::consent::{self, Request, Standing};
use crate::daemon::{self, PartialWindow, RunConfig, SourceSpec};
use crate::features::{Windower, window_recording};
use crate::guard::{Guard, LocalAction};
use crate::state::{self, AgentStatus, ConsentFile, Enrollment};
use crate::uplink::Uplink;
use cadence_wire::DeviceSigningKey;
use cadence_wire::records::{Decision, MonitoringState};

#[path = "cli_config.rs"]
mod config_cmd;

/// Cadence agent: verifies the person at the keyboard from typing and pointer *timing* only.
#[derive(Debug, Parser)]
#[command(name = "cadence-agent", version, about, long_about = None)]
struct Cli {
    /// The agent's data directory (default: the per-user location for this OS).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The organization's managed configuration (default: the system location for this OS,
    /// e.g. /etc/cadence/agent.toml).
    #[arg(long, global = true, value_name = "FILE")]
    managed: Option<PathBuf>,
    /// Your own settings file, for the keys the organization lets users set (default: the
    /// per-user location, e.g. ~/.config/cadence/agent.toml).
    #[arg(long, global = true, value_name = "FILE")]
    user_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture live input and print each closed window's features; nothing is stored or sent.
    Preview(PreviewArgs),
    /// Run recorded data through the capture boundary and feature code; one JSON line per window.
    Replay(ReplayArgs),
    /// Register this device (and OS user) with a verifier.
    Enroll(EnrollArgs),
    /// Record your decision about monitoring on this device: grant, withdraw, or show it.
    Consent(ConsentArgs),
    /// Run the agent: capture, features, seal, spool and deliver, while consent is granted.
    Run(RunArgs),
    /// Show the agent's state: consent, capture, windows produced, spooled, sent, errors.
    Status(StatusArgs),
    /// Show the last records sent to the verifier, exactly as sent (before encryption).
    Show(ShowArgs),
    /// Check the configuration, or show the effective one and where each value came from.
    Config(config_cmd::ConfigArgs),
    /// Say which capture backend this system would use, why, and what permission is missing.
    Doctor(crate::doctor::DoctorArgs),
}

#[derive(Debug, Args)]
struct EnrollArgs {
    /// The verifier's URL, e.g. https://verifier.example:8443.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The enrollment token from the verifier's administrator.
    #[arg(long, value_name = "TOKEN")]
    token: String,
    /// The CA certificate (PEM) the verifier's TLS certificate must chain to.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConsentAction {
    /// Allow monitoring of input timing on this device.
    Grant,
    /// Stop monitoring now.
    Withdraw,
    /// Pause monitoring for 30 minutes (where the organization's policy allows it).
    Pause,
    /// End a pause now.
    Resume,
    /// Show the current decision.
    Status,
}

#[derive(Debug, Args)]
struct ConsentArgs {
    /// grant, withdraw, pause, resume or status.
    #[arg(value_enum)]
    action: ConsentAction,
    /// Print JSON (status).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Input: auto (the live backend `doctor` names), x11[:DISPLAY], evdev,
    /// replay:FORMAT:PATH (aalto, balabit) or synthetic[:MINUTES].
    #[arg(long, value_name = "SOURCE", default_value = "auto")]
    source: String,
    /// Live capture backend: auto, x11 or evdev (overrides --source).
    #[arg(long, value_name = "BACKEND", value_parser = ["auto", "x11", "evdev"], conflicts_with = "source")]
    capture: Option<String>,
    /// Replay speed: max, real, or a factor of real time (e.g. 20).
    #[arg(long, value_name = "SPEED", default_value = "real")]
    speed: String,
    /// Settings (each also a configuration key; allowed only where the organization lets
    /// users set it).
    #[command(flatten)]
    settings: config_cmd::SettingArgs,
    /// At shutdown, emit (if above the minima) or discard the partial window.
    #[arg(long, value_name = "POLICY", value_parser = ["emit", "discard"], default_value = "emit")]
    on_shutdown: String,
    /// Exit once the source has ended and every record is delivered (replay, demos, tests).
    #[arg(long)]
    exit_when_done: bool,
    /// Show no consent dialog and no tray icon, even in a graphical session (decide with
    /// `cadence-agent consent`, watch with `cadence-agent status`).
    #[arg(long)]
    no_ui: bool,
    /// Started at logon: on Windows, leave the console window Windows opens for the agent
    /// (nothing is printed to a terminal afterwards). Changes nothing elsewhere.
    #[arg(long)]
    background: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// How many of the most recent records (the agent keeps the last 50).
    #[arg(long, value_name = "N", default_value_t = 10)]
    last: usize,
    /// One JSON object per record: seq, kind, sealed_at_ms and the payload as sent.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct WindowArgs {
    /// Close a window this many seconds after its first event [default: 60].
    #[arg(long, value_name = "N")]
    window_secs: Option<f64>,
    /// Emit keyboard features only for windows with at least N key presses [default: 40].
    #[arg(long, value_name = "N")]
    min_keys: Option<u32>,
    /// Emit mouse features only for windows with at least N pointer events [default: 100].
    #[arg(long, value_name = "N")]
    min_mouse: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutFormat {
    /// One JSON object per line.
    Json,
    /// A readable table per window.
    Table,
}

#[derive(Debug, Args)]
struct PreviewArgs {
    #[command(flatten)]
    window: WindowArgs,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long = "for", value_name = "SECS")]
    for_secs: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: OutFormat,
    /// X display to capture (default: $DISPLAY).
    #[arg(long, value_name = "DISPLAY")]
    display: Option<String>,
    /// Live capture backend: auto (the one `doctor` names), x11 or evdev.
    #[arg(long, value_name = "BACKEND", value_parser = ["auto", "x11", "evdev"], default_value = "auto")]
    capture: String,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Recorded format: aalto or balabit.
    #[arg(long, value_name = "FORMAT", value_parser = ["aalto", "balabit"])]
    format: String,
    /// Files or directories (a directory means every data file under it).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Write the JSON lines here instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    window: WindowArgs,
    /// Close a window at N key presses.
    #[arg(long, value_name = "N")]
    window_keys: Option<u32>,
    /// Close a window at N pointer events.
    #[arg(long, value_name = "N")]
    window_mouse_events: Option<u32>,
    /// Close a window at each segment boundary (an Aalto sentence).
    #[arg(long)]
    segment_windows: bool,
}

/// The one place that writes to the terminal or an output file.
pub struct Out {
    /// Where results go (standard output or `--out`).
    data: Box<dyn Write>,
}

impl Out {
    fn stdout() -> Self {
        Out {
            data: Box::new(BufWriter::new(io::stdout())),
        }
    }

    fn file(path: &PathBuf) -> io::Result<Self> {
        Ok(Out {
            data: Box::new(BufWriter::new(File::create(path)?)),
        })
    }

    /// Writes one result line.
    fn line(&mut self, s: &str) -> io::Result<()> {
        self.data.write_all(s.as_bytes())?;
        self.data.write_all(b"\n")
    }

    /// Writes one result line and flushes, for live output.
    fn live_line(&mut self, s: &str) -> io::Result<()> {
        self.line(s)?;
        self.data.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.data.flush()
    }

    /// A message for the person at the terminal (standard error).
    fn say(msg: &str) {
        let _ = writeln!(io::stderr().lock(), "{msg}");
    }
}

/// Parses the command line and runs the command. The binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(&cli.command, Command::Run(a) if a.background) {
        crate::detach::from_console();
    }
    init_logging();
    let dir = cli.data_dir;
    let checks_files = matches!(&cli.command, Command::Config(a) if a.checks_files());
    let system = config_cmd::system_managed();
    if let Err(msg) =
        config_cmd::allow_managed_flag(cli.managed.as_deref(), system.as_deref(), checks_files)
    {
        Out::say(&format!("cadence-agent: {msg}"));
        return ExitCode::from(2);
    }
    if let Command::Config(a) = &cli.command {
        return config_cmd::main(cli.managed.as_deref(), cli.user_config.as_deref(), a);
    }
    // Diagnostics must work even when the configuration does not.
    if let Command::Doctor(a) = &cli.command {
        return doctor(a);
    }
    let no_flags = config_cmd::SettingArgs::default();
    let flags = match &cli.command {
        Command::Run(a) => &a.settings,
        _ => &no_flags,
    };
    let effective =
        match config_cmd::resolve(cli.managed.as_deref(), cli.user_config.as_deref(), flags) {
            Ok(e) => e,
            Err(msg) => {
                Out::say(&format!("cadence-agent: refusing to start: {msg}"));
                return ExitCode::from(config_cmd::EXIT_CONFIG);
            }
        };
    if let Command::Run(_) = &cli.command {
        config_cmd::log_effective(&effective);
    }
    let managed = effective.config;
    let result = match cli.command {
        Command::Preview(a) => preview(a),
        Command::Replay(a) => replay(a),
        Command::Enroll(a) => with_runtime(enroll(dir, &managed, a)),
        Command::Consent(a) => with_runtime(consent(dir, &managed, a)),
        // On macOS the main thread stays for the tray icon's AppKit events.
        Command::Run(a) => {
            crate::ui::uiloop::with_main_thread_ui(|| with_runtime(run(dir, &managed, a)))
        }
        Command::Status(a) => with_runtime(status(dir, a)),
        Command::Show(a) => show(dir, a),
        // INVARIANT: handled before the configuration is resolved, above.
        Command::Config(_) => Ok(ExitCode::SUCCESS),
        // INVARIANT: handled before the configuration is resolved, above.
        Command::Doctor(_) => Ok(ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            Out::say(&format!("cadence-agent: {msg}"));
            ExitCode::from(2)
        }
    }
}

fn with_runtime(
    f: impl std::future::Future<Output = Result<ExitCode, String>>,
) -> Result<ExitCode, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?
        .block_on(f)
}

async fn enroll(
    dir: Option<PathBuf>,
    managed: &Managed,
    a: EnrollArgs,
) -> Result<ExitCode, String> {
    let dir = state::data_dir(dir.as_deref()).map_err(|e| e.to_string())?;
    let ca_pem = std::fs::read_to_string(&a.ca).map_err(|e| format!("{}: {e}", a.ca.display()))?;
    let pin = managed.verifier_public_key.as_deref();
    let e = enroll_with(&dir, &a.server, &ca_pem, &a.token, pin, false)
        .await
        .map_err(|e| format!("enrollment failed: {e}"))?;
    Out::stdout()
        .live_line(&format!(
            "enrolled: device {} at {} (data directory {})",
            e.device_id,
            e.server,
            dir.display()
        ))
        .map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

async fn consent(
    dir: Option<PathBuf>,
    managed: &Managed,
    a: ConsentArgs,
) -> Result<ExitCode, String> {
    let notice = notice_text(managed);
    let dir = state::data_dir(dir.as_deref()).map_err(|e| e.to_string())?;
    let mut out = Out::stdout();
    let request = match a.action {
        ConsentAction::Grant => Request::Grant,
        ConsentAction::Withdraw => Request::Withdraw,
        ConsentAction::Pause => Request::Pause,
        ConsentAction::Resume => Request::Resume,
        ConsentAction::Status => {
            let c = ConsentFile::load(&dir).map_err(|e| e.to_string())?;
            let hash = state::notice_hash(notice);
            let who = c.as_ref().map(|c| c.os_user.clone()).unwrap_or_default();
            let text = match (consent::evaluate(c.as_ref(), &hash), a.json) {
                (_, true) => serde_json::to_string(&c).map_err(|e| e.to_string())?,
                (
                    Standing::Undecided {
                        notice_changed: false,
                    },
                    _,
                ) => "no decision yet: nothing is captured".to_owned(),
                (
                    Standing::Undecided {
                        notice_changed: true,
                    },
                    _,
                ) => "decided for an earlier notice: a new decision is needed".to_owned(),
                (Standing::Monitoring, _) => format!("granted by {who} (monitoring allowed)"),
                (Standing::Paused { until_ms }, _) => {
                    format!("paused by {who} until {until_ms} ms since 1970: nothing is captured")
                }
                (Standing::Withdrawn, _) => format!("withdrawn by {who}: nothing is captured"),
            };
            out.live_line(&text).map_err(|e| e.to_string())?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    if request == Request::Grant {
        out.line("You are agreeing to this notice:")
            .map_err(|e| e.to_string())?;
        out.line(&format!("  {notice}"))
            .map_err(|e| e.to_string())?;
    }
    // Decided and written under the consent journal's lock, about the latest decision.
    let decided = state::ConsentJournal::decide(&dir, |current| {
        consent::decide(
            current,
            request,
            &state::notice_hash(notice),
            managed.policy,
            state::now_ms(),
            &state::os_user(),
        )
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let Some(record) = decided else {
        let same = match request {
            Request::Grant => "consent is already granted: nothing to change",
            _ => "consent is already withdrawn: nothing to change",
        };
        out.live_line(same).map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    };
    let told = daemon::control::request(&dir, "reload").await.is_some();
    let what = match record.decision {
        Decision::Granted => "consent granted: monitoring of input timing may start",
        Decision::Withdrawn => "consent withdrawn: capture stops now",
        Decision::Paused => "monitoring paused for 30 minutes: capture stops now",
        Decision::Resumed => "monitoring resumed",
    };
    let tail = if told {
        ""
    } else if cfg!(unix) {
        " (no agent is running; it applies when one starts)"
    } else {
        // No control socket here: a running agent sees the file change within a second.
        " (a running agent applies it within a second; otherwise it applies when one starts)"
    };
    out.live_line(&format!("{what}{tail}"))
        .map_err(|e| e.to_string())?;
    if a.json {
        out.live_line(&serde_json::to_string(&record).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Registers a fresh device key with the verifier and stores the enrollment. With `retry`, a
/// verifier that cannot be reached is tried again with backoff (silent enrollment at start).
/// With a `pin` (the managed `verifier.public_key`), a verifier with another key is refused.
async fn enroll_with(
    dir: &std::path::Path,
    server: &str,
    ca_pem: &str,
    token: &str,
    pin: Option<&str>,
    retry: bool,
) -> Result<Enrollment, String> {
    let uplink = Uplink::new(server, ca_pem).map_err(|e| e.to_string())?;
    let key = DeviceSigningKey::generate().map_err(|e| e.to_string())?;
    let os_user = state::os_user();
    let mut backoff = crate::uplink::Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
    let resp = loop {
        match uplink
            .enroll(token, &key.public_key(), &os_user, &state::hostname())
            .await
        {
            Ok(r) => break r,
            Err(e) if retry && e.is_retryable() => {
                let wait = backoff.fail(None);
                tracing::warn!("enrollment: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    config_cmd::check_pin(pin, &resp.verifier_public_key)?;
    let e = Enrollment {
        server: server.trim_end_matches('/').to_owned(),
        device_id: resp.device_id,
        verifier_public_key: resp.verifier_public_key,
        ca_pem: ca_pem.to_owned(),
        os_user,
        enrolled_at_ms: state::now_ms(),
    };
    e.save(dir, &key).map_err(|e| e.to_string())?;
    Ok(e)
}

/// The notice in force: the organization's, or the built-in one.
fn notice_text(managed: &Managed) -> &str {
    managed.notice.as_deref().unwrap_or(state::DEFAULT_NOTICE)
}

/// Enrolls silently from the managed configuration when the device is not enrolled yet,
/// retrying while the verifier cannot be reached.
async fn enroll_from_managed(dir: &std::path::Path, managed: &Managed) -> Result<(), String> {
    let pin = managed.verifier_public_key.as_deref();
    if Enrollment::exists(dir) {
        let (e, _) = Enrollment::load(dir).map_err(|e| e.to_string())?;
        return config_cmd::check_pin(pin, &e.verifier_public_key)
            .map_err(|m| format!("{m}; enroll again to use the pinned verifier"));
    }
    let (Some(server), Some(ca_pem), Some(token)) = (
        &managed.verifier_url,
        &managed.ca_pem,
        &managed.enroll_token,
    ) else {
        return Err(state::StateError::NotEnrolled.to_string());
    };
    let e = enroll_with(dir, server, ca_pem, token, pin, true)
        .await
        .map_err(|e| format!("silent enrollment failed: {e}"))?;
    tracing::info!(device = %e.device_id, server = %e.server, "enrolled from the managed configuration");
    Ok(())
}

async fn run(dir: Option<PathBuf>, managed: &Managed, a: RunArgs) -> Result<ExitCode, String> {
    let dir = state::data_dir(dir.as_deref()).map_err(|e| e.to_string())?;
    enroll_from_managed(&dir, managed).await?;
    let speed = Speed::parse(&a.speed)
        .ok_or_else(|| format!("--speed: expected max, real or a factor, got {:?}", a.speed))?;
    let cfg = RunConfig {
        data_dir: dir,
        source: SourceSpec::parse(a.capture.as_deref().unwrap_or(&a.source), speed)?,
        policy: managed.window,
        spool_max_bytes: managed.spool_mib.max(1) * 1024 * 1024,
        heartbeat: Duration::from_secs(managed.heartbeat_secs.max(1)),
        notice: notice_text(managed).to_owned(),
        on_shutdown: if a.on_shutdown == "discard" {
            PartialWindow::Discard
        } else {
            PartialWindow::Emit
        },
        exit_when_done: a.exit_when_done,
        consent_policy: managed.policy,
        ui: !a.no_ui,
        on_injection: LocalAction::parse(&managed.on_injection.to_string()).ok_or_else(|| {
            format!(
                "policy.on_injection: expected none, lock or command:CMD, got {}",
                managed.on_injection
            )
        })?,
    };
    match daemon::run(cfg, shutdown_signal()).await {
        // One agent per user: the systemd unit and the XDG autostart entry (or launchd) may
        // both start one. The first runs; this one leaves without a failure status, so that no
        // service manager restarts it.
        Err(daemon::DaemonError::AlreadyRunning(d)) => {
            Out::say(&format!(
                "cadence-agent: another agent already runs for this user (data directory {}); \
                 this one exits",
                d.display()
            ));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.to_string()),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}

async fn status(dir: Option<PathBuf>, a: StatusArgs) -> Result<ExitCode, String> {
    let dir = state::data_dir(dir.as_deref()).map_err(|e| e.to_string())?;
    let live = daemon::control::request(&dir, "status").await;
    let mut st: AgentStatus = match live.as_deref().map(serde_json::from_str::<AgentStatus>) {
        Some(Ok(s)) => s,
        _ => {
            let mut s = AgentStatus::load(&dir)
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            s.running = false;
            if let Ok((e, _)) = Enrollment::load(&dir) {
                s.server = Some(e.server);
                s.device_id = Some(e.device_id.to_string());
            }
            s
        }
    };
    let consent = ConsentFile::load(&dir).map_err(|e| e.to_string())?;
    if !st.running {
        // Without a daemon nothing is captured, whatever the last status file said.
        st.state = match &consent {
            Some(c) if c.decision == Decision::Withdrawn => Some(MonitoringState::Withdrawn),
            Some(_) => None,
            None => Some(MonitoringState::WaitingForConsent),
        };
    }
    let mut out = Out::stdout();
    if a.json {
        let mut v = serde_json::to_value(&st).map_err(|e| e.to_string())?;
        v["consent"] = serde_json::to_value(&consent).map_err(|e| e.to_string())?;
        out.live_line(&v.to_string()).map_err(|e| e.to_string())?;
    } else {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let lines = [
            format!(
                "agent:            {}",
                if st.running { "running" } else { "not running" }
            ),
            format!(
                "state:            {}{}",
                st.state
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_else(|| "-".into()),
                st.paused_until_ms
                    .map(|t| format!(" (resumes at {t} ms since 1970)"))
                    .unwrap_or_default()
            ),
            format!("state shown by:   {}", opt(&st.shown_by)),
            format!(
                "consent:          {}",
                consent
                    .as_ref()
                    .map(|c| format!("{:?} at {} by {}", c.decision, c.at_ms, c.os_user))
                    .unwrap_or_else(|| "no decision".into())
            ),
            format!("verifier:         {}", opt(&st.server)),
            format!("device:           {}", opt(&st.device_id)),
            format!("capture backend:  {}", opt(&st.backend)),
            format!("windows produced: {}", st.windows_produced),
            format!("spooled:          {}", st.spooled),
            format!("sent:             {}", st.sent),
            format!("queued:           {}", st.queued),
            format!(
                "last contact:     {}",
                st.last_contact_ms
                    .map(|t| format!("{t} ms since epoch"))
                    .unwrap_or_else(|| "never".into())
            ),
            format!("last error:       {}", opt(&st.last_error)),
        ];
        for l in lines {
            out.line(&l).map_err(|e| e.to_string())?;
        }
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `show`: the transparency file, oldest of the last N first, payloads byte for byte.
fn show(dir: Option<PathBuf>, a: ShowArgs) -> Result<ExitCode, String> {
    let dir = state::data_dir(dir.as_deref()).map_err(|e| e.to_string())?;
    let all = state::Recent::load(&dir).map_err(|e| e.to_string())?;
    let recent = &all[all.len().saturating_sub(a.last)..];
    let mut out = Out::stdout();
    if recent.is_empty() && !a.json {
        Out::say(&format!(
            "nothing sent yet (records appear here once the agent seals them; {})",
            dir.join("recent.jsonl").display()
        ));
    }
    for r in recent {
        if a.json {
            out.line(&r.to_line()).map_err(|e| e.to_string())?;
        } else {
            out.line(&format!(
                "#{} {} sealed at {} ms since 1970:",
                r.seq, r.kind, r.sealed_at_ms
            ))
            .map_err(|e| e.to_string())?;
            out.line(&format!("  {}", r.payload))
                .map_err(|e| e.to_string())?;
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    let level = std::env::var("CADENCE_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(io::stderr)
        .with_target(false)
        .try_init();
}

fn policy(
    w: &WindowArgs,
    keys: Option<u32>,
    mouse: Option<u32>,
    seg: bool,
) -> Result<WindowPolicy, String> {
    let raw = RawWindowPolicy {
        window_secs: w.window_secs,
        window_keys: keys,
        window_mouse_events: mouse,
        min_keys: w.min_keys,
        min_mouse: w.min_mouse,
        segment_windows: Some(seg),
    };
    WindowPolicy::from_raw(&raw, "--").map_err(|e| e.to_string().replace('_', "-"))
}

/// A window's vector with the labels of the recording it came from.
#[derive(Serialize)]
struct Labelled<'a> {
    subject: &'a str,
    session: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    split: Option<&'a str>,
    #[serde(flatten)]
    vector: &'a FeatureVector,
}

fn replay(a: ReplayArgs) -> Result<ExitCode, String> {
    let format = Format::parse(&a.format).ok_or("unknown format")?;
    let policy = policy(
        &a.window,
        a.window_keys,
        a.window_mouse_events,
        a.segment_windows,
    )?;
    let files = replay::expand(format, &a.paths).map_err(|e| e.to_string())?;
    if files.is_empty() {
        return Err(format!("no {format} data files found in the given paths"));
    }
    let mut out = match &a.out {
        Some(p) => Out::file(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => Out::stdout(),
    };
    let (mut windows, mut bad, mut unusable) = (0u64, 0usize, 0usize);
    for path in &files {
        let (rec, diag) = match replay::read_file(format, path) {
            Ok(r) => r,
            Err(e) => {
                Out::say(&e.to_string());
                unusable += 1;
                continue;
            }
        };
        for b in diag.bad_lines.iter().take(10) {
            Out::say(&format!(
                "{}:{}: skipped: {}",
                path.display(),
                b.line,
                b.reason
            ));
        }
        if diag.bad_lines.len() > 10 {
            Out::say(&format!(
                "{}: … and {} more bad lines",
                path.display(),
                diag.bad_lines.len() - 10
            ));
        }
        if diag.clamped > 0 {
            Out::say(&format!(
                "{}: {} timestamps went backwards and were held",
                path.display(),
                diag.clamped
            ));
        }
        bad += diag.bad_lines.len();
        if rec.events() == 0 {
            Out::say(&format!("{}: no usable events", path.display()));
            unusable += 1;
            continue;
        }
        window_recording(&rec, policy, |seg, v| -> Result<(), String> {
            let line = Labelled {
                subject: &rec.subject,
                session: &rec.session,
                segment: seg.and_then(|s| rec.segments.get(s)).map(String::as_str),
                split: rec.split.as_deref(),
                vector: &v,
            };
            let s = serde_json::to_string(&line).map_err(|e| e.to_string())?;
            out.line(&s).map_err(|e| e.to_string())?;
            windows += 1;
            Ok(())
        })?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Out::say(&format!(
        "replayed {} files: {windows} windows, {bad} bad lines skipped, {unusable} files unusable",
        files.len()
    ));
    Ok(if unusable > 0 || windows == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn preview(a: PreviewArgs) -> Result<ExitCode, String> {
    let policy = policy(&a.window, None, None, false)?;
    let clock = MonoClock::start();
    let source = live_source(&a.capture, a.display.as_deref(), clock)?;
    let stop = StopFlag::new();
    let (rx, capture) = capture::spawn(source, stop.clone(), 65_536);
    let end = a
        .for_secs
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut out = Out::stdout();
    let mut w = Windower::new(policy);
    let mut guard = Guard::new();
    let mut n = 0u64;
    let mut show = |v: &FeatureVector, out: &mut Out| -> Result<(), String> {
        n += 1;
        let text = match a.format {
            OutFormat::Json => serde_json::to_string(v).map_err(|e| e.to_string())?,
            OutFormat::Table => table(n, v),
        };
        out.live_line(&text).map_err(|e| e.to_string())
    };
    loop {
        let window_deadline = w.deadline_us().map(|t| clock.instant_at(t));
        let deadline = match (window_deadline, end) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        match rx.recv(deadline) {
            Recv::Event(ev) => {
                if let Some(alert) = guard.push(&ev) {
                    let line = serde_json::to_string(&alert).map_err(|e| e.to_string())?;
                    out.live_line(&line).map_err(|e| e.to_string())?;
                }
                if let Some(v) = w.push(&ev) {
                    show(&v, &mut out)?;
                }
            }
            Recv::Timeout => {
                if let Some(v) = w.tick(clock.now_us()) {
                    show(&v, &mut out)?;
                }
            }
            Recv::Closed => break,
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
    }
    stop.raise();
    if let Some(v) = w.close() {
        show(&v, &mut out)?;
    }
    if rx.dropped() > 0 {
        tracing::warn!(
            dropped = rx.dropped(),
            "input events were dropped because the queue was full"
        );
    }
    drop(rx);
    match capture.join() {
        Ok(Err(e)) => Err(e.to_string()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The live capture backend for this system, checked so that a missing display, extension or
/// permission is one clear sentence before anything starts.
fn live_source(
    capture: &str,
    display: Option<&str>,
    clock: MonoClock,
) -> Result<Box<dyn InputSource>, String> {
    let requested = capture::live::Requested::parse(capture)
        .ok_or_else(|| format!("--capture: expected auto, x11 or evdev, got {capture:?}"))?;
    capture::live::choose_and_open(requested, display, clock).map_err(|e| e.to_string())
}

/// `doctor`: the checks are in [`crate::doctor`]; this prints their report.
fn doctor(a: &crate::doctor::DoctorArgs) -> ExitCode {
    let report = crate::doctor::diagnose(a);
    let mut out = Out::stdout();
    let written = if a.json {
        out.line(&report.json.to_string())
    } else {
        report.lines.iter().try_for_each(|l| out.line(l))
    };
    if written.and_then(|()| out.flush()).is_err() {
        return ExitCode::from(2);
    }
    if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn table(n: u64, v: &FeatureVector) -> String {
    let mut s = format!(
        "window {n}: {:.1} s, {} key presses, {} pointer events\n",
        v.duration_ms as f64 / 1000.0,
        v.keys,
        v.mouse_events
    );
    let block =
        |s: &mut String, title: &str, names: &[(&str, &str)], vals: Option<&[f64]>| match vals {
            None => s.push_str(&format!("  {title}: absent (below the minimum)\n")),
            Some(vals) => {
                s.push_str(&format!("  {title}:\n"));
                for (chunk_n, chunk_v) in names.chunks(3).zip(vals.chunks(3)) {
                    let row: Vec<String> = chunk_n
                        .iter()
                        .zip(chunk_v)
                        .map(|((name, _), val)| format!("{name:>22} {val:>10.3}"))
                        .collect();
                    s.push_str(&format!("  {}\n", row.join("")));
                }
            }
        };
    block(
        &mut s,
        "keyboard",
        &KEYBOARD_FEATURES,
        v.keyboard.as_ref().map(|k| &k.0[..]),
    );
    block(
        &mut s,
        "mouse",
        &MOUSE_FEATURES,
        v.mouse.as_ref().map(|m| &m.0[..]),
    );
    s
}
