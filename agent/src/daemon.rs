//! The agent daemon: capture → features → seal → spool → uplink, gated by consent.
//!
//! Owns the running pipeline and its threads: a capture thread per [`InputSource`], a producer
//! thread that windows events, seals each vector and appends it to the spool (durable before
//! it counts as produced), and async tasks for delivery, heartbeats, the control socket and
//! the status file.
//!
//! The employee's side runs here too: consent follows [`crate::consent`] (a pause ends by
//! itself after 30 minutes, and its end is recorded), the consent dialog is offered in a
//! graphical session whenever no decision about the notice in force exists, the tray icon
//! follows the status at once and its menu acts through the same state machine (without a
//! tray, desktop notifications show each change of state), and every
//! record sealed is also kept, as sent, in the transparency file (`recent.jsonl`).
//!
//! Never captures before an explicit grant of the notice in force, stops capture at once on
//! withdrawal or pause (discarding the partial window), and never deletes a record the
//! verifier has not acknowledged. Shutdown starts at the head: capture stops, the producer closes or discards
//! its partial window by policy, the spool syncs, one last delivery is tried under a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cadence_config::{Policy, WindowPolicy};
use cadence_wire::records::{ConsentRecord, GapRecord, Heartbeat, MonitoringState};
use cadence_wire::{DeviceSigningKey, FeatureVector, Header, Kind, seal};
use tokio::sync::Notify;

use crate::capture::replay::{self, Format, Recording, ReplaySource, Speed};
use crate::capture::{
    self, CaptureError, EventReceiver, InputSource, MonoClock, Recv, StopFlag, live,
};
use crate::consent::{self, Request, Standing};
use crate::features::Windower;
use crate::guard::{Guard, GuardAlert, LocalAction};
use crate::spool::{Gap, Spool, SpoolError};
use crate::state::{
    self, AgentStatus, ConsentFile, ConsentJournal, ConsentSealed, ConsentSent, Enrollment, Recent,
    RecentRecord, StateError,
};
use crate::ui::dialog::{self, Answer};
use crate::ui::notify::{self, Notifier};
use crate::ui::pages;
use crate::ui::tray::{self, MenuAction, Tray, TrayView};
use crate::uplink::{Backoff, Uplink, UplinkError};

/// Pause before starting capture again after it failed.
const CAPTURE_RETRY: Duration = Duration::from_secs(30);

/// Where the daemon's input comes from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// Live X11 capture (`None`: `$DISPLAY`).
    X11(Option<String>),
    /// Live capture from the kernel's input devices (Linux: Wayland, console).
    Evdev,
    /// The live backend that suits this system (`capture::live` chooses and says why).
    Auto,
    /// Recorded files of a dataset format.
    Replay(Format, PathBuf, Speed),
    /// A generated recording of plausible input (demonstrations), `minutes` long.
    Synthetic(f64, Speed),
    /// No input at all: only deliver what is already spooled.
    None,
}

impl SourceSpec {
    /// Parses `auto`, `x11[:DISPLAY]`, `evdev`, `replay:FORMAT:PATH` or `synthetic[:MINUTES]`.
    pub fn parse(s: &str, speed: Speed) -> Result<SourceSpec, String> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("auto"), None, None) => Ok(SourceSpec::Auto),
            (Some("evdev"), None, None) => Ok(SourceSpec::Evdev),
            (Some("x11"), None, None) => Ok(SourceSpec::X11(None)),
            (Some("none"), None, None) => Ok(SourceSpec::None),
            (Some("x11"), Some(d), None) => Ok(SourceSpec::X11(Some(format!(":{d}")))),
            (Some("replay"), Some(f), Some(p)) => {
                let format =
                    Format::parse(f).ok_or_else(|| format!("unknown replay format {f:?}"))?;
                Ok(SourceSpec::Replay(format, PathBuf::from(p), speed))
            }
            (Some("synthetic"), m, None) => {
                let minutes = m.map_or(Ok(3.0), |m| {
                    m.parse::<f64>().map_err(|_| format!("bad minutes {m:?}"))
                })?;
                Ok(SourceSpec::Synthetic(minutes, speed))
            }
            _ => Err(format!(
                "unknown source {s:?}: use auto, x11[:DISPLAY], evdev, replay:FORMAT:PATH, \
                 synthetic[:MINUTES] or none"
            )),
        }
    }

    fn backend_name(&self) -> &'static str {
        match self {
            SourceSpec::X11(_) => "x11-record",
            SourceSpec::Evdev => "evdev",
            SourceSpec::Auto => "auto",
            SourceSpec::Replay(..) => "replay",
            SourceSpec::Synthetic(..) => "synthetic",
            SourceSpec::None => "none",
        }
    }

    /// Whether the source is live input, which never ends by itself (not a recording).
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            SourceSpec::X11(_) | SourceSpec::Evdev | SourceSpec::Auto
        )
    }
}

/// What a partial window becomes at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialWindow {
    /// Emitted if it meets the minimum counts.
    Emit,
    /// Dropped.
    Discard,
}

/// Checked settings of `cadence-agent run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// Input source.
    pub source: SourceSpec,
    /// Window policy.
    pub policy: WindowPolicy,
    /// Spool bound in bytes.
    pub spool_max_bytes: u64,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// The notice text consent refers to.
    pub notice: String,
    /// Partial window policy at shutdown.
    pub on_shutdown: PartialWindow,
    /// Exit once the source has ended and the spool is empty (replay, tests, demos).
    pub exit_when_done: bool,
    /// Local action when the guard detects keystroke injection.
    pub on_injection: LocalAction,
    /// What the organization lets the user do from the tray (pause, quit).
    pub consent_policy: Policy,
    /// Offer the consent dialog and the tray icon when a graphical session is there.
    pub ui: bool,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// A state file problem (not enrolled, unreadable).
    #[error(transparent)]
    State(#[from] StateError),
    /// The spool could not be opened or written.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// The uplink could not be set up (bad CA or URL in the enrollment).
    #[error("uplink: {0}")]
    Uplink(#[from] UplinkError),
    /// Capture cannot start at all.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// Another daemon already runs on this data directory.
    #[error("another agent is already running with data directory {0}")]
    AlreadyRunning(PathBuf),
    /// Sealing failed (key problem).
    #[error("sealing a record failed: {0}")]
    Seal(String),
    /// The replay source could not be read.
    #[error("replay: {0}")]
    Replay(String),
    /// A runtime facility failed (socket, thread).
    #[error("{0}")]
    Runtime(String),
}

/// Sequence numbers, the key, the spool: everything needed to turn a payload into a durable
/// sealed record. One lock, so sequence numbers and spool order always agree.
struct Outbox {
    spool: Spool,
    next_seq: u64,
    key: DeviceSigningKey,
    enrollment: Enrollment,
    /// When each pending record was spooled, for the delivery latency figure.
    spooled_at: HashMap<u64, Instant>,
    /// The data directory, for the transparency file.
    dir: PathBuf,
}

impl Outbox {
    fn seal(&self, kind: Kind, seq: u64, payload: &[u8]) -> Result<Vec<u8>, DaemonError> {
        let header = Header::new(kind, self.enrollment.device_id, seq, state::now_ms());
        seal(
            &header,
            payload,
            &self.key,
            &self.enrollment.verifier_public_key,
        )
        .map_err(|e| DaemonError::Seal(e.to_string()))
    }

    /// Seals and appends one record durably; reports any eviction as a gap record.
    /// `since` is when the record came to be (a window's close), for the delivery latency.
    /// `mark` is called with the record's sequence number just before the record is appended
    /// (the consent journal's marker, see [`ConsentSealed`]).
    fn put_marked(
        &mut self,
        kind: Kind,
        payload: &[u8],
        since: Instant,
        mark: impl FnOnce(u64) -> Result<(), DaemonError>,
    ) -> Result<u64, DaemonError> {
        let seq = self.next_seq;
        let bytes = self.seal(kind, seq, payload)?;
        mark(seq)?;
        let appended = self.spool.append(seq, &bytes)?;
        self.next_seq = seq + 1;
        self.spooled_at.insert(seq, since);
        self.keep_recent(kind, seq, payload);
        if let Some(gap) = appended.evicted {
            tracing::warn!(
                first = gap.first_seq,
                last = gap.last_seq,
                count = gap.count,
                "spool full: oldest records dropped"
            );
        }
        self.report_gaps()?;
        Ok(seq)
    }

    /// Keeps a copy of a sealed record's payload, as sent, in the transparency file. A failure
    /// there is logged and does not stop the record.
    fn keep_recent(&self, kind: Kind, seq: u64, payload: &[u8]) {
        let rec = RecentRecord {
            seq,
            kind: kind.as_str().to_owned(),
            sealed_at_ms: state::now_ms(),
            payload: String::from_utf8_lossy(payload).into_owned(),
        };
        if let Err(e) = Recent::push(&self.dir, rec) {
            tracing::warn!("cannot update the transparency file: {e}");
        }
    }

    /// Seals a gap record for every eviction not yet reported.
    fn report_gaps(&mut self) -> Result<(), DaemonError> {
        // Bounded: each gap record is small, and at most a few evictions can chain.
        for _ in 0..8 {
            let gaps: Vec<Gap> = self.spool.unreported_gaps().to_vec();
            if gaps.is_empty() {
                return Ok(());
            }
            for g in &gaps {
                let rec = GapRecord {
                    first_seq: g.first_seq,
                    last_seq: g.last_seq,
                    count: g.count,
                    reason: "spool full".into(),
                };
                let payload =
                    serde_json::to_vec(&rec).map_err(|e| DaemonError::Seal(e.to_string()))?;
                let seq = self.next_seq;
                let bytes = self.seal(Kind::Gap, seq, &payload)?;
                let _ = self.spool.append(seq, &bytes)?;
                self.next_seq = seq + 1;
                self.keep_recent(Kind::Gap, seq, &payload);
            }
            self.spool.gaps_reported(&gaps)?;
        }
        Ok(())
    }
}

/// State shared by the daemon's threads and tasks.
struct Shared {
    cfg: RunConfig,
    outbox: Mutex<Outbox>,
    status: Mutex<AgentStatus>,
    /// Wakes the delivery task when a record was spooled.
    spooled: Notify,
    /// Wakes the consent controller (control socket `reload`).
    reload: Notify,
    /// Raised when the input source has ended by itself (a replay finished).
    source_done: AtomicBool,
    /// The tray icon, when there is one; shown every status change.
    tray: Mutex<Option<Tray>>,
    /// The last consent journal entry sealed into the spool.
    consent_sealed: Mutex<u64>,
    /// Desktop notifications, where there is no tray but a notification service; shown every
    /// status change (it notifies only when the state changes).
    notifier: Mutex<Option<Notifier>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock would be a bug; the data is still the best we have.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Seals and spools one record (durable when this returns), counts it and wakes delivery.
    fn spool(&self, kind: Kind, payload: &[u8], since: Instant) -> Result<u64, DaemonError> {
        self.spool_marked(kind, payload, since, |_| Ok(()))
    }

    /// As [`Shared::spool`], with [`Outbox::put_marked`]'s `mark`.
    fn spool_marked(
        &self,
        kind: Kind,
        payload: &[u8],
        since: Instant,
        mark: impl FnOnce(u64) -> Result<(), DaemonError>,
    ) -> Result<u64, DaemonError> {
        let (seq, queued) = {
            let mut ob = lock(&self.outbox);
            let seq = ob.put_marked(kind, payload, since, mark)?;
            (seq, ob.spool.stats().records_pending as u64)
        };
        self.set_status(|s| {
            s.spooled += 1;
            s.queued = queued;
        });
        self.spooled.notify_one();
        Ok(seq)
    }

    fn set_status(&self, f: impl FnOnce(&mut AgentStatus)) {
        let view = {
            let mut s = lock(&self.status);
            f(&mut s);
            self.view(&s)
        };
        if let Some(n) = lock(&self.notifier).as_ref() {
            n.show(view.clone());
        }
        if let Some(t) = lock(&self.tray).as_ref() {
            // The tray thread ignores a view equal to the one shown.
            t.show(view);
        }
    }

    fn view(&self, s: &AgentStatus) -> TrayView {
        TrayView {
            state: s.state.unwrap_or(MonitoringState::WaitingForConsent),
            queued: s.queued,
            offline: s.offline,
            policy: self.cfg.consent_policy,
        }
    }
}

/// A running capture: its stop flag and the producer thread that ends after it.
struct Pipeline {
    stop: StopFlag,
    /// Raised on withdrawal: the partial window is dropped, not emitted.
    discard: Arc<AtomicBool>,
    producer: thread::JoinHandle<()>,
}

/// Runs the daemon until `shutdown` resolves (or the source ends with `exit_when_done`).
pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let dir = cfg.data_dir.clone();
    state::ensure_dir(&dir)?;
    let (enrollment, key) = Enrollment::load(&dir)?;
    let uplink = Uplink::new(&enrollment.server, &enrollment.ca_pem)?;
    let control = control::bind(&dir).await?;

    let (spool, recovery) = Spool::open(&dir.join("spool"), cfg.spool_max_bytes)?;
    if recovery.torn_bytes_dropped > 0 || recovery.corrupt_bytes_dropped > 0 {
        tracing::warn!(
            torn = recovery.torn_bytes_dropped,
            corrupt = recovery.corrupt_bytes_dropped,
            "spool recovered from an interrupted write"
        );
    }
    tracing::info!(
        pending = spool.stats().records_pending,
        next_seq = recovery.next_seq,
        "spool open"
    );
    let mut outbox = Outbox {
        spool,
        next_seq: recovery.next_seq.max(1),
        key,
        enrollment: enrollment.clone(),
        spooled_at: HashMap::new(),
        dir: dir.clone(),
    };
    outbox.report_gaps()?;
    let consent_sealed = consent_sealed_at_start(&dir, outbox.next_seq)?;
    let status = AgentStatus {
        running: true,
        server: Some(enrollment.server.clone()),
        device_id: Some(enrollment.device_id.to_string()),
        backend: Some(cfg.source.backend_name().to_owned()),
        queued: outbox.spool.stats().records_pending as u64,
        ..AgentStatus::default()
    };
    let nothing_to_capture = matches!(cfg.source, SourceSpec::None);
    let shared = Arc::new(Shared {
        cfg,
        outbox: Mutex::new(outbox),
        status: Mutex::new(status),
        spooled: Notify::new(),
        reload: Notify::new(),
        source_done: AtomicBool::new(nothing_to_capture),
        tray: Mutex::new(None),
        notifier: Mutex::new(None),
        consent_sealed: Mutex::new(consent_sealed),
    });
    let (action_tx, mut actions) = tokio::sync::mpsc::unbounded_channel::<MenuAction>();
    let graphical = shared.cfg.ui && dialog::graphical_session();
    if graphical {
        start_tray(&shared, action_tx).await;
    } else {
        drop(action_tx);
    }
    let notice = state::notice_hash(&shared.cfg.notice);
    // The notice the dialog was last offered for in this run: "not now" is not asked again
    // until the notice changes or the user asks from the tray.
    let mut prompted: Option<String> = None;
    // The user asked from the tray to see the dialog again ("Review and allow…").
    let mut asked = false;
    // The dialog runs on a thread of its own (not the runtime's blocking pool, which shutdown
    // would wait on while a dialog stays open); its answer comes back here.
    let consent_dialog = dialog::system_dialog();
    let mut dialog_task: Option<tokio::sync::oneshot::Receiver<Answer>> = None;

    let control_task = tokio::spawn(control::serve(control, shared.clone()));
    // On every OS, also where the control socket does not exist (Windows): a decision the
    // `consent` command writes takes effect within a second, not at the next heartbeat.
    let watcher = {
        let s = shared.clone();
        tokio::spawn(watch_consent(dir.clone(), move || s.reload.notify_one()))
    };
    let delivery = tokio::spawn(deliver(shared.clone(), uplink.clone()));
    let status_task = tokio::spawn(write_status(shared.clone()));

    let mut pipeline: Option<Pipeline> = None;
    let mut heartbeat = tokio::time::interval(shared.cfg.heartbeat);
    // When capture failed, the next attempt to start it.
    let mut retry_at = tokio::time::Instant::now();
    let mut capture_failed = false;
    tokio::pin!(shutdown);
    loop {
        // A live source whose capture ended by itself (a permanent capture error) is started
        // again after a pause; until then the state says so.
        if pipeline.as_ref().is_some_and(|p| p.producer.is_finished())
            && !shared.source_done.load(Ordering::SeqCst)
            && let Some(p) = pipeline.take()
        {
            stop_pipeline(p, false).await;
            capture_failed = true;
            retry_at = tokio::time::Instant::now() + CAPTURE_RETRY;
            tracing::warn!("capture ended; trying again in {CAPTURE_RETRY:?}");
        }
        // Consent decides, every time something may have changed it. A pause that ran out is
        // recorded as a resumption first, so the verifier hears of it.
        // Decided under the journal's lock, so a withdrawal written meanwhile is never
        // replaced by the resumption.
        let (policy, now) = (shared.cfg.consent_policy, state::now_ms());
        let resumed = ConsentJournal::decide(&dir, |c| {
            Ok::<_, std::convert::Infallible>(consent::expire(c, &notice, policy, now))
        })?;
        if matches!(resumed, Ok(Some(_))) {
            tracing::info!("the pause is over: monitoring resumes");
        }
        let consent = ConsentFile::load(&dir)?;
        let standing = consent::evaluate(consent.as_ref(), &notice);
        let allowed = standing.allows_capture();
        // Capture stops before the decision is sealed, so no window follows a withdrawal or
        // a pause in the record sequence.
        if !allowed && let Some(p) = pipeline.take() {
            stop_pipeline(p, true).await;
            tracing::info!(
                "consent withdrawn, paused or missing: capture stopped, partial window discarded"
            );
        }
        seal_decisions(&shared)?;
        let new_state = standing.monitoring_state();
        let changed = lock(&shared.status).state != Some(new_state);
        let offer = (standing.needs_prompt() && prompted.as_ref() != Some(&notice))
            || std::mem::take(&mut asked);
        if offer && !allowed && dialog_task.is_none() {
            prompted = Some(notice.clone());
            dialog_task = offer_consent(&shared, graphical, standing, &consent_dialog);
        }
        if allowed
            && pipeline.is_none()
            && !shared.source_done.load(Ordering::SeqCst)
            && tokio::time::Instant::now() >= retry_at
        {
            match start_pipeline(shared.clone()) {
                Ok(p) => {
                    pipeline = Some(p);
                    capture_failed = false;
                    tracing::info!(
                        backend = shared.cfg.source.backend_name(),
                        "consent granted: capture started"
                    );
                }
                Err(e) => {
                    tracing::error!("capture cannot start: {e}; trying again in {CAPTURE_RETRY:?}");
                    shared.set_status(|s| s.last_error = Some(e.to_string()));
                    capture_failed = true;
                    retry_at = tokio::time::Instant::now() + CAPTURE_RETRY;
                }
            }
        }
        if !allowed && changed {
            tracing::info!(state = ?new_state, "nothing is captured");
        }
        let retry_pending = allowed && capture_failed && pipeline.is_none();
        let new_state = if retry_pending {
            MonitoringState::Error
        } else {
            new_state
        };
        let changed = changed || lock(&shared.status).state != Some(new_state);
        let paused_until = match standing {
            Standing::Paused { until_ms } => Some(until_ms),
            _ => None,
        };
        shared.set_status(|s| {
            s.state = Some(new_state);
            s.paused_until_ms = paused_until;
        });
        if changed {
            tokio::spawn(send_heartbeat(shared.clone(), uplink.clone()));
        }

        tokio::select! {
            _ = &mut shutdown => break,
            _ = shared.reload.notified() => {}
            _ = heartbeat.tick() => {
                // Its own task: a verifier that hangs must not delay a withdrawal or shutdown.
                tokio::spawn(send_heartbeat(shared.clone(), uplink.clone()));
            }
            _ = tokio::time::sleep_until(retry_at), if retry_pending => {}
            // The pause runs out: the loop records the resumption.
            _ = tokio::time::sleep(Duration::from_millis(
                paused_until.unwrap_or(0).saturating_sub(state::now_ms()) + 1,
            )), if paused_until.is_some() => {}
            answer = async {
                match dialog_task.as_mut() {
                    Some(t) => t
                        .await
                        .unwrap_or_else(|_| Answer::Unavailable("the dialog ended".into())),
                    None => std::future::pending().await,
                }
            }, if dialog_task.is_some() => {
                dialog_task = None;
                consent_answer(&shared, answer);
            }
            Some(action) = actions.recv() => {
                if menu_action(&shared, action, &mut asked) {
                    tracing::info!("quit from the tray");
                    break;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if shared.cfg.exit_when_done => {
                if shared.source_done.load(Ordering::SeqCst) && lock(&shared.outbox).spool.stats().records_pending == 0 {
                    tracing::info!("source ended and every record is delivered: exiting");
                    break;
                }
            }
        }
    }

    // Shutdown from the head of the pipeline. The dialog and the tray go first: they must not
    // ask or show anything for an agent that is leaving.
    consent_dialog.close();
    let tray = lock(&shared.tray).take();
    if let Some(t) = tray {
        let _ = tokio::task::spawn_blocking(move || drop(t)).await;
    }
    let notifier = lock(&shared.notifier).take();
    if let Some(n) = notifier {
        let _ = tokio::task::spawn_blocking(move || drop(n)).await;
    }
    if let Some(p) = pipeline.take() {
        stop_pipeline(p, shared.cfg.on_shutdown == PartialWindow::Discard).await;
    }
    lock(&shared.outbox).spool.sync()?;
    delivery.abort();
    let _ = tokio::time::timeout(Duration::from_secs(3), deliver_once(&shared, &uplink)).await;
    control_task.abort();
    watcher.abort();
    status_task.abort();
    shared.set_status(|s| s.running = false);
    let snapshot = lock(&shared.status).clone();
    snapshot.save(&dir)?;
    control::unbind(&dir);
    Ok(())
}

/// Shows the state on screen: the tray icon, or else desktop notifications on every change of
/// state. Where neither exists, says so in the log and in `status` (the agent works on).
async fn start_tray(shared: &Arc<Shared>, actions: tokio::sync::mpsc::UnboundedSender<MenuAction>) {
    let first = shared.view(&lock(&shared.status));
    let view = first.clone();
    let started = tokio::task::spawn_blocking(move || {
        tray::spawn(view, move |a| {
            let _ = actions.send(a);
        })
    })
    .await;
    let no_tray = match started {
        Ok(Ok(t)) => {
            tracing::info!("tray icon shown");
            *lock(&shared.tray) = Some(t);
            shared.set_status(|s| s.shown_by = Some("tray".into()));
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("no tray: {e}"),
    };
    let notifier = tokio::task::spawn_blocking(move || notify::spawn(first))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match notifier {
        Ok(n) => {
            tracing::warn!(
                "{no_tray}; the state is shown in desktop notifications instead, on every change"
            );
            *lock(&shared.notifier) = Some(n);
            shared.set_status(|s| s.shown_by = Some("notifications".into()));
        }
        Err(e) => {
            let why = format!("{no_tray}, and no desktop notifications: {e}");
            tracing::error!(
                "the monitoring state is shown NOWHERE on screen ({why}); only \
                 `cadence-agent status` tells it"
            );
            shared.set_status(|s| s.shown_by = Some(format!("nowhere: {why}")));
        }
    }
}

/// Offers the consent dialog, or says once in the log how to decide without one.
fn offer_consent(
    shared: &Arc<Shared>,
    graphical: bool,
    standing: Standing,
    consent_dialog: &Arc<dyn dialog::ConsentDialog>,
) -> Option<tokio::sync::oneshot::Receiver<Answer>> {
    let changed = matches!(
        standing,
        Standing::Undecided {
            notice_changed: true
        }
    );
    if changed {
        tracing::info!(
            "your organization's notice changed: nothing is captured until you decide again"
        );
    }
    if !graphical {
        tracing::info!(
            "waiting for your decision: nothing is captured. To allow monitoring of input timing \
             run `cadence-agent consent grant` (to refuse: `cadence-agent consent withdraw`)"
        );
        return None;
    }
    let text = dialog::dialog_text(&shared.cfg.notice);
    tracing::info!("asking for consent in a dialog");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let d = consent_dialog.clone();
    let spawned = thread::Builder::new()
        .name("cadence-consent-dialog".into())
        .spawn(move || {
            let _ = tx.send(d.ask(&text));
        });
    match spawned {
        Ok(_) => Some(rx),
        Err(e) => {
            tracing::warn!(
                "cannot show the consent dialog: {e}; run `cadence-agent consent grant`"
            );
            None
        }
    }
}

/// Applies the dialog's answer: only "Allow" grants.
fn consent_answer(shared: &Shared, answer: Answer) {
    match answer {
        Answer::Allow => {
            tracing::info!("consent granted in the dialog");
            apply_request(shared, Request::Grant);
        }
        Answer::NotNow => tracing::info!(
            "not now: nothing is captured. Decide later from the tray or with \
             `cadence-agent consent grant`"
        ),
        Answer::Unavailable(why) => tracing::warn!(
            "{why}. Nothing is captured; to allow monitoring of input timing run \
             `cadence-agent consent grant` (to refuse: `cadence-agent consent withdraw`)"
        ),
    }
}

/// Records the decision a request makes (through the consent state machine) and wakes the
/// consent loop, which seals it and starts or stops capture.
fn apply_request(shared: &Shared, request: Request) {
    let dir = &shared.cfg.data_dir;
    let notice = state::notice_hash(&shared.cfg.notice);
    let result = ConsentJournal::decide(dir, |file| {
        consent::decide(
            file,
            request,
            &notice,
            shared.cfg.consent_policy,
            state::now_ms(),
            &state::os_user(),
        )
    });
    match result {
        Ok(Ok(Some(_))) => shared.reload.notify_one(),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!(?request, "not done: {e}"),
        Err(e) => {
            tracing::error!("cannot record the decision: {e}");
            shared.set_status(|s| s.last_error = Some(e.to_string()));
        }
    }
}

/// Acts on a tray menu click; true for "Quit".
fn menu_action(shared: &Arc<Shared>, action: MenuAction, asked: &mut bool) -> bool {
    match action {
        MenuAction::Pause => apply_request(shared, Request::Pause),
        MenuAction::Resume => apply_request(shared, Request::Resume),
        MenuAction::Withdraw => apply_request(shared, Request::Withdraw),
        MenuAction::Allow => {
            // Offered on the loop's next turn, also after a withdrawal.
            *asked = true;
            shared.reload.notify_one();
        }
        MenuAction::ShowCollected | MenuAction::ShowRecent => {
            let dir = shared.cfg.data_dir.clone();
            tokio::task::spawn_blocking(move || {
                let page = if action == MenuAction::ShowCollected {
                    pages::write_page(
                        &dir,
                        "privacy.html",
                        &pages::privacy_html(pages::PRIVACY_MD),
                    )
                } else {
                    pages::recent_html(&dir)
                        .and_then(|h| pages::write_page(&dir, "recent.html", &h))
                };
                match page.map_err(|e| e.to_string()).and_then(|p| {
                    pages::open(&p).map_err(|e| format!("cannot open {}: {e}", p.display()))
                }) {
                    Ok(()) => tracing::info!(?action, "page opened"),
                    Err(e) => tracing::warn!("{e}"),
                }
            });
        }
        MenuAction::Quit if shared.cfg.consent_policy.allow_quit => return true,
        MenuAction::Quit => tracing::warn!("quitting is not allowed by your organization's policy"),
    }
    false
}

/// The last consent journal entry already sealed when the daemon starts, from the marker and
/// the spool's next sequence number ([`ConsentSealed::sealed_through`]). A data directory
/// from an agent without the journal is taken over: its `consent.json` becomes the first
/// entry, sealed already if `consent-sent.json` says so.
fn consent_sealed_at_start(dir: &Path, next_seq: u64) -> Result<u64, DaemonError> {
    if let Some(m) = ConsentSealed::load(dir)? {
        return Ok(ConsentSealed::sealed_through(Some(m), next_seq));
    }
    if !ConsentJournal::load(dir)?.is_empty() {
        return Ok(0);
    }
    let sent = ConsentSent::load(dir)?.last;
    match ConsentJournal::adopt(dir)? {
        Some(index) if sent.is_some() && sent == ConsentFile::load(dir)? => {
            // Sequence number 0 is below any the spool hands out: sealed.
            ConsentSealed {
                index,
                seq: 0,
                at_ms: sent.map(|c| c.at_ms),
            }
            .save(dir)?;
            Ok(index)
        }
        _ => Ok(0),
    }
}

/// Seals every consent journal entry not sealed yet, in order, each under a marker written
/// before its record is spooled (so a crash cannot seal one twice). A `consent.json` the
/// journal does not end with (written by hand) is taken into the journal first.
///
/// A journal that ends below the last entry sealed has started again (deleted, or replaced by
/// a shorter one): its entries are new decisions, so the marker goes back to 0 and all of
/// them are sealed. The decision in force may then reach the verifier a second time, which
/// is better than the new ones never reaching it. So does a journal whose entry at the marker
/// holds another decision (a replacement at least as long as the one it replaced): the marker
/// keeps the sealed entry's time to tell.
fn seal_decisions(shared: &Shared) -> Result<(), DaemonError> {
    let dir = &shared.cfg.data_dir;
    ConsentJournal::adopt(dir)?;
    let journal = ConsentJournal::load(dir)?;
    let mut sealed = *lock(&shared.consent_sealed);
    let last = journal.last().map_or(0, |e| e.index);
    // The entry the marker names, when the journal still holds that very decision.
    let same = |m: &ConsentSealed| {
        journal
            .iter()
            .find(|e| e.index == m.index)
            .is_some_and(|e| m.at_ms.is_none_or(|at| at == e.consent.at_ms))
    };
    let replaced = sealed > 0 && ConsentSealed::load(dir)?.is_some_and(|m| !same(&m));
    if last < sealed || replaced {
        tracing::warn!(
            last,
            sealed,
            "the consent journal ends below the last entry sealed or holds another decision \
             there (deleted or replaced): sealing its entries from the first"
        );
        ConsentSealed::default().save(dir)?;
        sealed = 0;
        *lock(&shared.consent_sealed) = 0;
    }
    for e in journal.into_iter().filter(|e| e.index > sealed) {
        let c = &e.consent;
        let rec = ConsentRecord {
            decision: c.decision,
            notice_sha256: c.notice_sha256.clone(),
            at_ms: c.at_ms,
            os_user: c.os_user.clone(),
            until_ms: c.until_ms,
        };
        let payload = serde_json::to_vec(&rec).map_err(|e| DaemonError::Seal(e.to_string()))?;
        let seq = shared.spool_marked(Kind::Consent, &payload, Instant::now(), |seq| {
            Ok(ConsentSealed {
                index: e.index,
                seq,
                at_ms: Some(c.at_ms),
            }
            .save(dir)?)
        })?;
        *lock(&shared.consent_sealed) = e.index;
        tracing::info!(seq, index = e.index, decision = ?c.decision, "consent decision recorded for the verifier");
    }
    Ok(())
}

#[cfg(test)]
mod seal_decisions_tests {
    use super::*;
    use cadence_wire::records::Decision;

    /// A daemon's shared state on `dir`, without capture, delivery or a screen.
    fn shared(dir: &Path) -> Shared {
        let (spool, recovery) = Spool::open(&dir.join("spool"), 1 << 20).unwrap();
        let enrollment = Enrollment::for_test();
        let next_seq = recovery.next_seq.max(1);
        Shared {
            cfg: RunConfig {
                data_dir: dir.to_owned(),
                source: SourceSpec::None,
                policy: WindowPolicy::default(),
                spool_max_bytes: 1 << 20,
                heartbeat: Duration::from_secs(60),
                notice: "n".into(),
                on_shutdown: PartialWindow::Discard,
                exit_when_done: false,
                on_injection: LocalAction::None,
                consent_policy: Policy::default(),
                ui: false,
            },
            outbox: Mutex::new(Outbox {
                spool,
                next_seq,
                key: DeviceSigningKey::generate().unwrap(),
                enrollment,
                spooled_at: HashMap::new(),
                dir: dir.to_owned(),
            }),
            status: Mutex::new(AgentStatus::default()),
            spooled: Notify::new(),
            reload: Notify::new(),
            source_done: AtomicBool::new(true),
            tray: Mutex::new(None),
            consent_sealed: Mutex::new(consent_sealed_at_start(dir, next_seq).unwrap()),
            notifier: Mutex::new(None),
        }
    }

    fn decide(dir: &Path, decision: Decision, at_ms: u64) {
        let c = ConsentFile {
            decision,
            notice_sha256: state::notice_hash("n"),
            at_ms,
            os_user: "u".into(),
            until_ms: None,
        };
        ConsentJournal::decide(dir, |_| Ok::<_, ()>(Some(c)))
            .unwrap()
            .unwrap();
    }

    /// The consent records sealed so far, from the transparency file: decision and time.
    fn sealed(dir: &Path) -> Vec<(Decision, u64)> {
        Recent::load(dir)
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == "consent")
            .map(|r| {
                let c: ConsentRecord = serde_json::from_str(&r.payload).unwrap();
                (c.decision, c.at_ms)
            })
            .collect()
    }

    /// An empty data directory of this test process.
    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cadence-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        state::ensure_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn decisions_in_a_journal_that_started_again_are_sealed() {
        let dir = fresh_dir("reseal");
        let shared = shared(&dir);
        decide(&dir, Decision::Granted, 1);
        decide(&dir, Decision::Withdrawn, 2);
        decide(&dir, Decision::Granted, 3);
        seal_decisions(&shared).unwrap();
        assert_eq!(sealed(&dir).len(), 3);
        // The journal goes (deleted by hand, a cleaner); its entries start again at 1.
        std::fs::remove_file(dir.join("consent-journal.jsonl")).unwrap();
        decide(&dir, Decision::Withdrawn, 4);
        seal_decisions(&shared).unwrap();
        let all = sealed(&dir);
        // The grant in force was taken into the new journal, so it is sealed again.
        assert_eq!(
            all,
            [
                (Decision::Granted, 1),
                (Decision::Withdrawn, 2),
                (Decision::Granted, 3),
                (Decision::Granted, 3),
                (Decision::Withdrawn, 4)
            ],
            "the withdrawal reaches the verifier"
        );
        assert_eq!(ConsentSealed::load(&dir).unwrap().map(|m| m.index), Some(2));
        // From then on, each entry once.
        decide(&dir, Decision::Granted, 5);
        seal_decisions(&shared).unwrap();
        seal_decisions(&shared).unwrap();
        let now = sealed(&dir);
        assert_eq!(now.len(), all.len() + 1);
        assert_eq!(now.last(), Some(&(Decision::Granted, 5)));
        assert_eq!(*lock(&shared.consent_sealed), 3);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn decisions_in_a_longer_replacement_journal_are_sealed() {
        let dir = fresh_dir("replace");
        let shared = shared(&dir);
        decide(&dir, Decision::Granted, 1);
        decide(&dir, Decision::Withdrawn, 2);
        seal_decisions(&shared).unwrap();
        assert_eq!(sealed(&dir).len(), 2);
        // Replaced by a journal already longer than the marker (restored from another
        // machine's backup, say): its entry 2 is another decision than the one sealed.
        std::fs::remove_file(dir.join("consent-journal.jsonl")).unwrap();
        std::fs::remove_file(dir.join("consent.json")).unwrap();
        decide(&dir, Decision::Granted, 10);
        decide(&dir, Decision::Withdrawn, 11);
        decide(&dir, Decision::Granted, 12);
        seal_decisions(&shared).unwrap();
        assert_eq!(
            sealed(&dir)[2..],
            [
                (Decision::Granted, 10),
                (Decision::Withdrawn, 11),
                (Decision::Granted, 12)
            ],
            "every decision of the new journal reaches the verifier"
        );
        // The same journal again: nothing more.
        seal_decisions(&shared).unwrap();
        assert_eq!(sealed(&dir).len(), 5);
        std::fs::remove_dir_all(&dir).ok();
    }
}

fn make_source(spec: &SourceSpec, clock: MonoClock) -> Result<Box<dyn InputSource>, DaemonError> {
    match spec {
        SourceSpec::X11(display) => Ok(capture::live::open(
            &live::Chosen::X11(display.clone()),
            clock,
        )?),
        SourceSpec::Evdev => Ok(live::choose_and_open(live::Requested::Evdev, None, clock)?),
        SourceSpec::Auto => Ok(live::choose_and_open(live::Requested::Auto, None, clock)?),
        SourceSpec::Replay(format, path, speed) => {
            let files = replay::expand(*format, std::slice::from_ref(path))
                .map_err(|e| DaemonError::Replay(e.to_string()))?;
            let mut recs: Vec<Recording> = Vec::new();
            for f in files {
                let (rec, diag) = replay::read_file(*format, &f)
                    .map_err(|e| DaemonError::Replay(e.to_string()))?;
                if !diag.bad_lines.is_empty() {
                    tracing::warn!(file = %f.display(), bad_lines = diag.bad_lines.len(), "replay: malformed lines skipped");
                }
                recs.push(rec);
            }
            Ok(Box::new(ReplaySource::new(recs, *speed, clock)))
        }
        SourceSpec::Synthetic(minutes, speed) => {
            let rec = replay::synthetic::generate(1, *minutes);
            Ok(Box::new(ReplaySource::new(vec![rec], *speed, clock)))
        }
        SourceSpec::None => Ok(Box::new(ReplaySource::new(Vec::new(), Speed::Max, clock))),
    }
}

fn start_pipeline(shared: Arc<Shared>) -> Result<Pipeline, DaemonError> {
    let clock = MonoClock::start();
    let source = make_source(&shared.cfg.source, clock)?;
    // `auto` resolves here: status shows the live backend actually running.
    if shared.cfg.source.is_live() {
        shared.set_status(|s| s.backend = Some(source.name().to_owned()));
    }
    let stop = StopFlag::new();
    let discard = Arc::new(AtomicBool::new(false));
    let (rx, capture_thread) = capture::spawn(source, stop.clone(), 65_536);
    let d = discard.clone();
    let producer = thread::Builder::new()
        .name("cadence-producer".into())
        .spawn(move || produce(shared, rx, clock, d, capture_thread))
        .map_err(|e| DaemonError::Runtime(format!("cannot start the producer thread: {e}")))?;
    Ok(Pipeline {
        stop,
        discard,
        producer,
    })
}

async fn stop_pipeline(p: Pipeline, discard: bool) {
    p.discard.store(discard, Ordering::SeqCst);
    p.stop.raise();
    let producer = p.producer;
    let _ = tokio::task::spawn_blocking(move || producer.join()).await;
}

/// The producer thread: windows events, seals and spools every emitted vector.
fn produce(
    shared: Arc<Shared>,
    rx: EventReceiver,
    clock: MonoClock,
    discard: Arc<AtomicBool>,
    capture: thread::JoinHandle<Result<(), CaptureError>>,
) {
    let mut w = Windower::new(shared.cfg.policy);
    let mut guard = Guard::new();
    let alert = |a: GuardAlert| {
        // At once: sealed and spooled like any record, and the delivery task is woken now.
        tracing::warn!(
            rule = a.rule,
            mean_interval_ms = a.mean_interval_ms,
            "keystroke injection detected"
        );
        shared.cfg.on_injection.run();
        let Ok(payload) = serde_json::to_vec(&a) else {
            return;
        };
        if let Err(e) = shared.spool(Kind::Alert, &payload, Instant::now()) {
            tracing::error!("the injection alert could not be spooled: {e}");
        }
    };
    let emit = |v: FeatureVector| {
        let closed_at = Instant::now();
        let payload = match serde_json::to_vec(&v) {
            Ok(p) => p,
            Err(e) => return tracing::error!("cannot encode a window: {e}"),
        };
        match shared.spool(Kind::Features, &payload, closed_at) {
            Ok(seq) => {
                tracing::debug!(seq, "window spooled");
                shared.set_status(|s| s.windows_produced += 1);
            }
            Err(e) => {
                tracing::error!("a window could not be spooled: {e}");
                shared.set_status(|s| s.last_error = Some(format!("spool: {e}")));
            }
        }
    };
    loop {
        let deadline = w.deadline_us().map(|t| clock.instant_at(t));
        match rx.recv(deadline) {
            Recv::Event(ev) => {
                if discard.load(Ordering::SeqCst) {
                    continue;
                }
                if let Some(a) = guard.push(&ev) {
                    alert(a);
                }
                if let Some(v) = w.push(&ev) {
                    emit(v);
                }
            }
            Recv::Timeout => {
                if discard.load(Ordering::SeqCst) {
                    continue;
                }
                if let Some(v) = w.tick(clock.now_us()) {
                    emit(v);
                }
            }
            Recv::Closed => break,
        }
    }
    shared.set_status(|s| s.dropped_events = rx.dropped());
    if discard.load(Ordering::SeqCst) {
        tracing::debug!("partial window discarded");
    } else if let Some(v) = w.close() {
        emit(v);
    }
    match capture.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!("capture ended: {e}");
            shared.set_status(|s| s.last_error = Some(e.to_string()));
        }
        Err(_) => tracing::error!("the capture thread panicked"),
    }
    if !shared.cfg.source.is_live() {
        shared.source_done.store(true, Ordering::SeqCst);
    }
    shared.reload.notify_one();
}

/// Delivers spooled records for as long as the daemon runs.
async fn deliver(shared: Arc<Shared>, uplink: Uplink) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(300));
    loop {
        match deliver_once(&shared, &uplink).await {
            Ok(0) => {
                // Nothing pending: sleep until something is spooled.
                shared.spooled.notified().await;
            }
            Ok(_) => backoff.reset(),
            Err(e) => {
                let retry_after = match &e {
                    UplinkError::Busy { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let wait = backoff.fail(retry_after);
                tracing::warn!("delivery failed: {e}; retrying in {wait:?}");
                let offline = matches!(e, UplinkError::Unreachable(_) | UplinkError::Busy { .. });
                shared.set_status(|s| {
                    s.last_error = Some(e.to_string());
                    s.offline = offline;
                });
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One batch: reads the oldest pending records, sends them, acknowledges what was committed.
/// Returns how many records the batch held.
async fn deliver_once(shared: &Shared, uplink: &Uplink) -> Result<usize, UplinkError> {
    let batch = {
        let ob = lock(&shared.outbox);
        match ob.spool.pending(256, 4 * 1024 * 1024) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot read the spool: {e}");
                return Ok(0);
            }
        }
    };
    if batch.is_empty() {
        return Ok(0);
    }
    let (seqs, bytes): (Vec<u64>, Vec<Vec<u8>>) = batch.into_iter().unzip();
    let resp = uplink.send(&bytes).await?;
    let mut done: Vec<u64> = resp.acked.clone();
    let mut kept: Option<String> = None;
    for r in &resp.rejected {
        if r.record_at_fault() {
            // The record itself can never be accepted (damaged, too large): keeping it would
            // block every later record.
            tracing::error!(seq = ?r.seq, reason = %r.reason, "the verifier refused a record for good; dropping it");
            done.extend(r.seq);
        } else {
            // Enrollment or keys are at fault (unknown device, other verifier key, reused
            // sequence number): the record stays until the verifier commits it.
            tracing::error!(seq = ?r.seq, reason = %r.reason, "the verifier refused a record; keeping it");
            kept.get_or_insert_with(|| r.reason.clone());
        }
    }
    let now = Instant::now();
    let mut ob = lock(&shared.outbox);
    if let Err(e) = ob.spool.ack(&done) {
        tracing::error!("cannot record acknowledgements: {e}");
    }
    let mut latencies: Vec<f64> = Vec::new();
    for s in &resp.acked {
        if let Some(t) = ob.spooled_at.remove(s) {
            latencies.push(now.duration_since(t).as_secs_f64() * 1000.0);
        }
    }
    let queued = ob.spool.stats().records_pending as u64;
    drop(ob);
    let sent = resp.acked.len() as u64;
    shared.set_status(|s| {
        s.sent += sent;
        s.queued = queued;
        s.last_contact_ms = Some(state::now_ms());
        s.offline = false;
        s.last_error = kept
            .clone()
            .map(|r| format!("the verifier refuses records: {r}"));
        latency::record(s, &latencies);
    });
    tracing::debug!(sent, queued, ?seqs, "batch delivered");
    if let Some(reason) = kept {
        // Retrying at once would loop on the same refusal: back off like any failure.
        return Err(UplinkError::Refused {
            status: 200,
            message: reason,
        });
    }
    Ok(seqs.len())
}

async fn send_heartbeat(shared: Arc<Shared>, uplink: Uplink) {
    let (bytes, hb) = {
        let ob = lock(&shared.outbox);
        let hb = Heartbeat {
            state: lock(&shared.status)
                .state
                .unwrap_or(MonitoringState::WaitingForConsent),
            queued: ob.spool.stats().records_pending as u64,
        };
        let Ok(payload) = serde_json::to_vec(&hb) else {
            return;
        };
        // Heartbeats are not spooled: sequence number 0, judged by their time.
        match ob.seal(Kind::Heartbeat, 0, &payload) {
            Ok(b) => (b, hb),
            Err(e) => return tracing::error!("cannot seal a heartbeat: {e}"),
        }
    };
    match uplink.send(&[bytes]).await {
        Ok(_) => shared.set_status(|s| s.last_contact_ms = Some(state::now_ms())),
        Err(e) => tracing::debug!(state = ?hb.state, "heartbeat not delivered: {e}"),
    }
}

/// How often [`watch_consent`] looks at the consent file.
const CONSENT_POLL: Duration = Duration::from_millis(250);

/// What tells one version of `consent.json` from another: the file is replaced whole (a
/// rename), so a new version has a new modification time, length or (Unix) inode.
fn consent_stamp(dir: &Path) -> Option<(Option<std::time::SystemTime>, u64, u64)> {
    let m = std::fs::metadata(dir.join("consent.json")).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some((m.modified().ok(), m.len(), inode))
}

/// Calls `changed` whenever `consent.json` in `dir` is written, removed or created: a cheap
/// `stat` every [`CONSENT_POLL`], the same on every OS. The file as it is when this is called
/// counts as seen.
fn watch_consent(dir: PathBuf, changed: impl Fn()) -> impl Future<Output = ()> {
    let mut last = consent_stamp(&dir);
    async move {
        let mut tick = tokio::time::interval(CONSENT_POLL);
        loop {
            tick.tick().await;
            let now = consent_stamp(&dir);
            if now != last {
                last = now;
                changed();
            }
        }
    }
}

async fn write_status(shared: Arc<Shared>) {
    let mut last = AgentStatus::default();
    loop {
        let now = lock(&shared.status).clone();
        if now != last {
            if let Err(e) = now.save(&shared.cfg.data_dir) {
                tracing::warn!("cannot write the status file: {e}");
            }
            last = now;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

mod latency {
    //! Delivery latency over the most recent records, for `status`.
    use std::sync::Mutex;

    use crate::state::AgentStatus;

    static RECENT: Mutex<Vec<f64>> = Mutex::new(Vec::new());
    const KEEP: usize = 10_000;

    pub(super) fn record(s: &mut AgentStatus, new: &[f64]) {
        let mut r = RECENT.lock().unwrap_or_else(|p| p.into_inner());
        r.extend_from_slice(new);
        if r.len() > KEEP {
            let cut = r.len() - KEEP;
            r.drain(..cut);
        }
        if r.is_empty() {
            return;
        }
        let mut v = r.clone();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        s.delivery_ms_p50 = Some((q(0.5) * 100.0).round() / 100.0);
        s.delivery_ms_p99 = Some((q(0.99) * 100.0).round() / 100.0);
    }
}

pub mod control {
    //! The control socket (`agent.sock` in the data directory): one line in, one line out.
    //! `reload` re-reads the consent file at once (the `consent` command sends it; without a
    //! socket, as on Windows, the daemon's watch on the file, `watch_consent`, does);
    //! `status` answers the live [`AgentStatus`](crate::state::AgentStatus) as JSON.
    //! Only the directory's owner can reach it (the directory is 0700).

    use std::path::Path;
    use std::sync::Arc;

    use super::{DaemonError, Shared, lock};

    #[cfg(unix)]
    pub(super) type Listener = tokio::net::UnixListener;
    #[cfg(not(unix))]
    pub(super) type Listener = ();

    /// Binds the socket; refuses when another daemon answers on it.
    #[cfg(unix)]
    pub(super) async fn bind(dir: &Path) -> Result<Listener, DaemonError> {
        let path = dir.join("agent.sock");
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            return Err(DaemonError::AlreadyRunning(dir.to_owned()));
        }
        let _ = std::fs::remove_file(&path);
        tokio::net::UnixListener::bind(&path).map_err(|e| {
            DaemonError::Runtime(format!(
                "cannot open the control socket {}: {e}",
                path.display()
            ))
        })
    }

    #[cfg(not(unix))]
    pub(super) async fn bind(_dir: &Path) -> Result<Listener, DaemonError> {
        Ok(())
    }

    pub(super) fn unbind(dir: &Path) {
        let _ = std::fs::remove_file(dir.join("agent.sock"));
    }

    #[cfg(unix)]
    pub(super) async fn serve(listener: Listener, shared: Arc<Shared>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(r).read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match line.trim() {
                    "reload" => {
                        shared.reload.notify_one();
                        "ok".to_owned()
                    }
                    "status" => serde_json::to_string(&*lock(&shared.status)).unwrap_or_default(),
                    other => format!("unknown command {other:?}"),
                };
                let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
            });
        }
    }

    #[cfg(not(unix))]
    pub(super) async fn serve(_listener: Listener, _shared: Arc<Shared>) {}

    /// Sends one command to a running daemon; `None` when none answers.
    #[cfg(unix)]
    pub async fn request(dir: &Path, command: &str) -> Option<String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let stream = tokio::net::UnixStream::connect(dir.join("agent.sock"))
            .await
            .ok()?;
        let (r, mut w) = stream.into_split();
        w.write_all(format!("{command}\n").as_bytes()).await.ok()?;
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await.ok()?;
        Some(line.trim().to_owned())
    }

    /// Sends one command to a running daemon; `None` when none answers.
    #[cfg(not(unix))]
    pub async fn request(_dir: &Path, _command: &str) -> Option<String> {
        None
    }
}

/// Whether `dir` looks like an agent data directory with a daemon answering.
pub async fn daemon_running(dir: &Path) -> bool {
    control::request(dir, "status").await.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadence_wire::records::Decision;

    #[tokio::test]
    async fn a_decision_written_to_the_consent_file_is_seen_without_the_control_socket() {
        let dir = std::env::temp_dir().join(format!("cadence-watch-{}", std::process::id()));
        state::ensure_dir(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("consent.json"));
        let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let watcher = tokio::spawn(watch_consent(dir.clone(), move || {
            let _ = tx.send(());
        }));
        let decision = |decision, at_ms| ConsentFile {
            decision,
            notice_sha256: state::notice_hash("n"),
            at_ms,
            os_user: "u".into(),
            until_ms: None,
        };
        // Written as the `consent` command writes it; nobody sends `reload`.
        for (d, at) in [(Decision::Granted, 1), (Decision::Withdrawn, 2)] {
            decision(d, at).save(&dir).unwrap();
            // A guard against hanging for ever, not a measure of speed.
            let got = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await;
            assert!(
                matches!(got, Ok(Some(()))),
                "the {d:?} written to consent.json was not noticed"
            );
        }
        watcher.abort();
        std::fs::remove_dir_all(&dir).ok();
    }
}
