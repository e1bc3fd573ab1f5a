//! Replay of recorded input through the same boundary as live capture.
//!
//! Owns the readers for the recorded formats (the Aalto keystroke corpus, the Balabit mouse
//! dynamics challenge). Each reader plays the part of an OS backend: it sees the recording's
//! key codes and absolute positions, turns them into [`InputEvent`]s exactly as a live backend
//! would (class only, deltas only), and drops everything else — the recordings' typed letters
//! and sentences are never read past the column split.
//!
//! Bad lines never stop a replay: each is reported with its file and line number, skipped, and
//! counted.

pub mod aalto;
pub mod balabit;
pub mod synthetic;

use std::fmt;
use std::path::{Path, PathBuf};

use super::{EventSink, InputEvent, InputSource, MonoClock, Push, StopFlag};
use crate::capture::CaptureError;

/// A recorded format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aalto "136M Keystrokes": TSV, epoch milliseconds, JavaScript key codes.
    Aalto,
    /// Balabit Mouse Dynamics Challenge: CSV sessions, client timestamps in seconds.
    Balabit,
}

impl Format {
    /// Parses a format name as written on the command line.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "aalto" => Some(Format::Aalto),
            "balabit" => Some(Format::Balabit),
            _ => None,
        }
    }

    /// Whether a file found in a directory is a data file of this format.
    pub fn is_data_file(self, path: &Path) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        match self {
            Format::Aalto => name.ends_with("_keystrokes.txt"),
            Format::Balabit => name.starts_with("session_"),
        }
    }
}

/// One item of a recording, in time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// An input event, as a live backend would produce it.
    Event(InputEvent),
    /// The recording starts a new segment (an Aalto sentence); its id is in [`Recording`].
    Segment(usize),
}

/// One recorded session, decoded.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Who produced it: the participant or user id.
    pub subject: String,
    /// Which session of that subject.
    pub session: String,
    /// `training` or `test` where the dataset splits its sessions that way.
    pub split: Option<String>,
    /// Segment ids, indexed by [`Item::Segment`].
    pub segments: Vec<String>,
    /// Events and segment boundaries in time order.
    pub items: Vec<Item>,
}

impl Recording {
    /// Number of input events.
    pub fn events(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i, Item::Event(_)))
            .count()
    }
}

/// A line that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number in the file.
    pub line: usize,
    /// Why it was skipped.
    pub reason: String,
}

/// What reading one file produced besides its events.
#[derive(Debug, Default)]
pub struct Diagnostics {
    /// Lines skipped as malformed.
    pub bad_lines: Vec<BadLine>,
    /// Timestamps that went backwards and were held at the previous time.
    pub clamped: usize,
    /// Pointer rows carrying the no-position sentinel, used without motion.
    pub sentinel: usize,
}

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not have the expected header: probably another format.
    #[error("{path}: not a {format} file (unexpected header)")]
    Header {
        /// The file.
        path: PathBuf,
        /// The format expected.
        format: &'static str,
    },
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Aalto => "aalto",
            Format::Balabit => "balabit",
        })
    }
}

/// Reads one file of `format`.
pub fn read_file(format: Format, path: &Path) -> Result<(Recording, Diagnostics), ReplayError> {
    let bytes = std::fs::read(path).map_err(|source| ReplayError::Io {
        path: path.to_owned(),
        source,
    })?;
    // Some recordings carry non-UTF-8 bytes in their text columns, which are never read: a
    // lossy decode keeps every column the readers use intact.
    let text = String::from_utf8_lossy(&bytes);
    let (rec, diag) = match format {
        Format::Aalto => aalto::parse(&text, path)?,
        Format::Balabit => balabit::parse(&text, path)?,
    };
    Ok((rec, diag))
}

/// Expands paths: a directory means every data file of `format` under it (recursively), in
/// name order; a file is taken as given.
pub fn expand(format: Format, paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReplayError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(format, p, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(format: Format, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReplayError> {
    let io = |source| ReplayError::Io {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            walk(format, &path, out)?;
        } else if format.is_data_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// How fast a recording is played into the pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the pipeline takes it.
    Max,
    /// At the recording's own pace multiplied by this factor (1 = real time).
    Times(f64),
}

impl Speed {
    /// Parses `max`, `real` or a positive factor such as `20`.
    pub fn parse(s: &str) -> Option<Speed> {
        match s {
            "max" => Some(Speed::Max),
            "real" => Some(Speed::Times(1.0)),
            n => n
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(Speed::Times),
        }
    }
}

/// A recording played as an [`InputSource`], for the daemon and for demos.
#[derive(Debug)]
pub struct ReplaySource {
    recordings: Vec<Recording>,
    speed: Speed,
    clock: MonoClock,
}

impl ReplaySource {
    /// Plays `recordings` one after another at `speed`; times are shifted onto `clock`.
    pub fn new(recordings: Vec<Recording>, speed: Speed, clock: MonoClock) -> Self {
        ReplaySource {
            recordings,
            speed,
            clock,
        }
    }
}

impl InputSource for ReplaySource {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn run(&mut self, sink: &mut EventSink, stop: &StopFlag) -> Result<(), CaptureError> {
        let mut last_t: Option<u64> = None;
        for rec in &self.recordings {
            // (recording time, clock time) at the recording's start. A later recording starts
            // an hour after the previous one ended, so no window spans two recordings.
            let mut offset: Option<(u64, u64, u64)> = None; // (recording, event, wall) at start
            let start_floor = last_t.map_or(0, |t| t + 3_600_000_000);
            sink.mark_gap();
            for item in &rec.items {
                if stop.is_raised() {
                    return Ok(());
                }
                let Item::Event(ev) = item else { continue };
                let now = self.clock.now_us();
                let (rec0, clk0, wall0) =
                    *offset.get_or_insert((ev.t_us, now.max(start_floor), now));
                // Event times keep the recording's own intervals at every speed; only the
                // pacing changes, so features are the same as `replay` computes.
                let t = clk0 + ev.t_us.saturating_sub(rec0);
                if let Speed::Times(f) = self.speed {
                    let due = wall0 + (ev.t_us.saturating_sub(rec0) as f64 / f) as u64;
                    if due > now && stop.wait_timeout(std::time::Duration::from_micros(due - now)) {
                        return Ok(());
                    }
                }
                last_t = Some(t);
                if sink.push_blocking(InputEvent { t_us: t, ..*ev }) == Push::Closed {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
