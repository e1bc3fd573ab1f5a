//! The agent's command line: flags are parsed once into checked settings, then each command
//! runs against the library. All output to the terminal goes through [`Out`].
//!
//! Commands: `preview` (live capture, print each closed window) and `replay` (recorded data
//! through the same capture boundary and feature code).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use cadence_config::{RawWindowPolicy, WindowPolicy};
use cadence_wire::FeatureVector;
use cadence_wire::features::{KEYBOARD_FEATURES, MOUSE_FEATURES};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::capture::replay::{self, Format};
use crate::capture::{self, CaptureError, EventReceiver, InputSource, MonoClock, Recv, StopFlag};
use crate::features::{Windower, window_recording};

/// Cadence agent: verifies the person at the keyboard from typing and pointer *timing* only.
#[derive(Debug, Parser)]
#[command(name = "cadence-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture live input and print each closed window's features; nothing is stored or sent.
    Preview(PreviewArgs),
    /// Run recorded data through the capture boundary and feature code; one JSON line per window.
    Replay(ReplayArgs),
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
    init_logging();
    let result = match cli.command {
        Command::Preview(a) => preview(a),
        Command::Replay(a) => replay(a),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            Out::say(&format!("cadence-agent: {msg}"));
            ExitCode::from(2)
        }
    }
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
    let source = live_source(a.display.clone(), clock)?;
    let stop = StopFlag::new();
    let (rx, capture) = spawn_capture(source, stop.clone());
    let end = a
        .for_secs
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut out = Out::stdout();
    let mut w = Windower::new(policy);
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

/// The live capture backend for this system, checked so that a missing display or extension
/// is one clear sentence before anything starts.
fn live_source(display: Option<String>, clock: MonoClock) -> Result<Box<dyn InputSource>, String> {
    #[cfg(target_os = "linux")]
    {
        capture::x11::probe(display.as_deref()).map_err(|e| e.to_string())?;
        Ok(Box::new(capture::x11::X11Record::new(display, clock)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (display, clock);
        Err(CaptureError::Unsupported("live").to_string())
    }
}

/// Runs `source` on its own thread, retrying transient failures (a lost X server) with
/// backoff; a permanent failure ends capture and is returned from the thread.
fn spawn_capture(
    mut source: Box<dyn InputSource>,
    stop: StopFlag,
) -> (EventReceiver, thread::JoinHandle<Result<(), CaptureError>>) {
    let (mut sink, rx) = capture::queue(65_536);
    let handle = thread::spawn(move || {
        let mut backoff = Duration::from_secs(1);
        loop {
            match source.run(&mut sink, &stop) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    tracing::warn!(
                        backend = source.name(),
                        "capture stopped: {e}; retrying in {backoff:?}"
                    );
                    sink.mark_gap();
                    let until = Instant::now() + backoff;
                    while Instant::now() < until {
                        if stop.is_raised() {
                            return Ok(());
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    tracing::error!(backend = source.name(), "capture failed: {e}");
                    return Err(e);
                }
            }
        }
    });
    (rx, handle)
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
