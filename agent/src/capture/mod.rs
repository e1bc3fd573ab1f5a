//! Capture: the boundary between the operating system's input and everything else.
//!
//! Owns the per-OS input backends and the replay of recorded data, all behind one
//! [`InputSource`] trait, and hands on [`InputEvent`]s: a monotonic timestamp, an event kind,
//! and for keys only a coarse [`KeyClass`]; for the pointer only motion *deltas*.
//!
//! Never lets a key code, a character or an absolute pointer position out: a key code lives
//! only inside a backend, long enough to pair a press with its release and pick a class. No
//! backend calls any key-to-text or keyboard-layout function. The OS-facing side only
//! timestamps and enqueues; when the queue is full it counts a drop and marks a gap, it never
//! blocks the OS.

pub mod evdev;
pub mod hook;
pub mod keyclass;
pub mod live;
pub mod mac_translate;
#[cfg(target_os = "macos")]
pub mod macos;
pub mod replay;
pub mod win_translate;
#[cfg(windows)]
pub mod windows;
#[cfg(target_os = "linux")]
pub mod x11;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use keyclass::KeyClass;

/// One input event as the rest of the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InputEvent {
    /// Event time in microseconds on the agent's monotonic capture clock (taken from the OS
    /// event's own timestamp where the OS provides one).
    pub t_us: u64,
    /// What happened.
    pub kind: EventKind,
    /// The OS marked the event as synthesized (injected) rather than coming from a device.
    pub injected: bool,
}

/// What an [`InputEvent`] records. Keys appear only as their [`KeyClass`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A key went down (auto-repeat is not a new press and is not reported).
    KeyDown {
        /// Coarse class of the key.
        class: KeyClass,
    },
    /// A key came up; `held_us` pairs it with its press without naming the key.
    KeyUp {
        /// Coarse class of the key.
        class: KeyClass,
        /// Time since the matching press, in microseconds.
        held_us: u64,
    },
    /// The pointer moved by a relative amount (device pixels).
    PointerMove {
        /// Horizontal motion since the previous pointer event.
        dx: i32,
        /// Vertical motion since the previous pointer event (down is positive).
        dy: i32,
    },
    /// A pointer button went down.
    ButtonDown {
        /// Which button.
        button: Button,
    },
    /// A pointer button came up.
    ButtonUp {
        /// Which button.
        button: Button,
        /// Time since the matching press, in microseconds.
        held_us: u64,
    },
    /// One scroll step.
    Scroll {
        /// Direction of the step.
        direction: ScrollDirection,
    },
    /// Input was lost here (queue full, capture restarted): no interval may span this point.
    Gap,
    /// The OS hides keyboard input from every listener from here on, or stops hiding it
    /// (macOS Secure Event Input while a password field has focus). A keyboard gap with a
    /// known, benign cause: no key interval spans it, and it is never evidence of anything.
    SecureInput {
        /// Whether keyboard input is hidden from this point.
        active: bool,
    },
}

/// Pointer buttons, coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Button {
    /// Primary button.
    Left,
    /// Secondary button.
    Right,
    /// Middle button or wheel press.
    Middle,
    /// Any other button.
    Other,
}

impl Button {
    /// Index for small per-button tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Scroll step direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrollDirection {
    /// Towards the top of the content.
    Up,
    /// Towards the bottom.
    Down,
    /// Horizontal, left.
    Left,
    /// Horizontal, right.
    Right,
}

/// Why capture stopped or could not start. Each variant is one clear sentence for a person.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// No display to capture from (DISPLAY unset): not a graphical X11 session.
    #[error("no X display to capture from: DISPLAY is not set (run inside an X11 session)")]
    NoDisplay,
    /// The X server could not be reached (not running, or no permission to connect).
    #[error("cannot connect to the X server at {display:?}: {reason}")]
    Connect {
        /// The DISPLAY value tried.
        display: String,
        /// What the connection attempt reported.
        reason: String,
    },
    /// The X server lacks the RECORD extension, which capture needs.
    #[error("the X server at {0:?} has no RECORD extension, so input timing cannot be captured")]
    NoRecordExtension(String),
    /// The connection to the X server broke while capturing (server exited or restarted).
    #[error("lost the connection to the X server: {0}")]
    Lost(String),
    /// The X server refused a request.
    #[error("the X server refused a capture request: {0}")]
    Protocol(String),
    /// This kind of capture is not available on this operating system or build.
    #[error("{0} capture is not available on this system")]
    Unsupported(&'static str),
    /// No live backend can start on this system (each one's reason is given; `doctor` says
    /// more).
    #[error("no capture backend can start here: {0} (see `cadence-agent doctor`)")]
    NoBackend(String),
    /// No input device can be read (evdev: none readable under /dev/input).
    #[error("no keyboard or pointer can be read: {0}")]
    NoDevices(String),
    /// The OS has not granted the permission capture needs (input group, Input Monitoring).
    #[error("capture is not permitted: {0}")]
    NotPermitted(String),
    /// An OS call that capture depends on failed (hook or event tap not installed).
    #[error("the operating system refused to start capture: {0}")]
    Os(String),
}

impl CaptureError {
    /// Whether trying again later may succeed (server restarted) rather than being pointless.
    pub fn is_transient(&self) -> bool {
        matches!(self, CaptureError::Connect { .. } | CaptureError::Lost(_))
    }
}

/// A source of live or recorded input, one per OS backend.
///
/// `run` blocks its own thread until `stop` is raised or capture fails, handing every event
/// to `sink`. Backends for evdev, Windows and macOS implement the same trait; nothing past
/// capture knows which one is running.
pub trait InputSource: Send {
    /// Short backend name for status and logs (`"x11-record"`, `"replay"`).
    fn name(&self) -> &'static str;
    /// Captures until `stop` is raised (returns `Ok`) or capture fails.
    fn run(&mut self, sink: &mut EventSink, stop: &StopFlag) -> Result<(), CaptureError>;
}

/// A flag raised once to stop a source; cheap to check from an OS callback, and a thread can
/// sleep on it without polling.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<StopInner>);

/// The flag itself plus what lets a thread wait for it.
#[derive(Debug, Default)]
struct StopInner {
    raised: AtomicBool,
    /// Guards nothing but the condition variable's wait.
    lock: Mutex<()>,
    wake: Condvar,
}

impl StopFlag {
    /// A lowered flag.
    pub fn new() -> Self {
        Self::default()
    }
    /// Raises the flag and wakes every thread waiting on it.
    pub fn raise(&self) {
        self.0.raised.store(true, Ordering::SeqCst);
        let _guard = self.0.lock.lock();
        self.0.wake.notify_all();
    }
    /// Whether the flag is raised.
    pub fn is_raised(&self) -> bool {
        self.0.raised.load(Ordering::SeqCst)
    }
    /// Sleeps until the flag is raised or `timeout` passes; returns whether it is raised.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Ok(mut guard) = self.0.lock.lock() else {
            return self.is_raised();
        };
        while !self.is_raised() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.0.wake.wait_timeout(guard, left) {
                Ok((g, _)) => guard = g,
                Err(_) => break,
            }
        }
        self.is_raised()
    }
}

/// The OS-facing end of the event queue. Never blocks: a full queue counts a drop and the next
/// event that fits is preceded by a [`EventKind::Gap`].
#[derive(Debug)]
pub struct EventSink {
    /// Bounded queue to the pipeline thread.
    tx: SyncSender<InputEvent>,
    /// Events dropped because the queue was full; shared with the receiver for status.
    dropped: Arc<AtomicU64>,
    /// A drop happened and the gap marker has not been queued yet.
    gap_pending: bool,
    /// Time of the last event offered, for the gap marker's timestamp.
    last_t_us: u64,
}

/// Result of offering an event to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// Queue full: dropped and counted.
    Dropped,
    /// The pipeline has gone away; the source should stop.
    Closed,
}

impl EventSink {
    /// Offers an event without blocking.
    pub fn push(&mut self, ev: InputEvent) -> Push {
        self.last_t_us = ev.t_us;
        if self.gap_pending {
            let gap = InputEvent {
                t_us: ev.t_us,
                kind: EventKind::Gap,
                injected: false,
            };
            match self.tx.try_send(gap) {
                Ok(()) => self.gap_pending = false,
                Err(TrySendError::Full(_)) => return self.drop_one(),
                Err(TrySendError::Disconnected(_)) => return Push::Closed,
            }
        }
        match self.tx.try_send(ev) {
            Ok(()) => Push::Queued,
            Err(TrySendError::Full(_)) => self.drop_one(),
            Err(TrySendError::Disconnected(_)) => Push::Closed,
        }
    }

    /// Marks that input was lost here (capture restarted, device gone).
    pub fn mark_gap(&mut self) {
        self.gap_pending = true;
    }

    /// Queues an event, waiting for room: only for recorded input, which has no OS to stall.
    pub fn push_blocking(&mut self, ev: InputEvent) -> Push {
        self.last_t_us = ev.t_us;
        if self.gap_pending {
            let gap = InputEvent {
                t_us: ev.t_us,
                kind: EventKind::Gap,
                injected: false,
            };
            if self.tx.send(gap).is_err() {
                return Push::Closed;
            }
            self.gap_pending = false;
        }
        match self.tx.send(ev) {
            Ok(()) => Push::Queued,
            Err(_) => Push::Closed,
        }
    }

    fn drop_one(&mut self) -> Push {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.gap_pending = true;
        Push::Dropped
    }
}

/// The pipeline end of the event queue.
#[derive(Debug)]
pub struct EventReceiver {
    /// Bounded queue from the capture thread.
    rx: Receiver<InputEvent>,
    /// Drop counter shared with the sink.
    dropped: Arc<AtomicU64>,
}

/// What waiting on the queue produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// An event.
    Event(InputEvent),
    /// The wait ended with no event.
    Timeout,
    /// The source has stopped and the queue is empty.
    Closed,
}

impl EventReceiver {
    /// Waits for the next event, until `deadline` if one is given.
    pub fn recv(&self, deadline: Option<Instant>) -> Recv {
        match deadline {
            None => match self.rx.recv() {
                Ok(ev) => Recv::Event(ev),
                Err(_) => Recv::Closed,
            },
            Some(d) => {
                let wait = d.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(wait) {
                    Ok(ev) => Recv::Event(ev),
                    Err(RecvTimeoutError::Timeout) => Recv::Timeout,
                    Err(RecvTimeoutError::Disconnected) => Recv::Closed,
                }
            }
        }
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A bounded event queue. 65,536 events hold about 8 s of an 8 kHz mouse.
pub fn queue(capacity: usize) -> (EventSink, EventReceiver) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        EventSink {
            tx,
            dropped: dropped.clone(),
            gap_pending: false,
            last_t_us: 0,
        },
        EventReceiver { rx, dropped },
    )
}

/// The agent's monotonic capture clock, in microseconds since the agent started.
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    /// The instant that is time zero.
    origin: Instant,
}

impl MonoClock {
    /// A clock whose zero is now.
    pub fn start() -> Self {
        MonoClock {
            origin: Instant::now(),
        }
    }
    /// Microseconds since the clock started.
    pub fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
    /// The instant at which this clock reads `t_us`.
    pub fn instant_at(&self, t_us: u64) -> Instant {
        self.origin + Duration::from_micros(t_us)
    }
}

/// Pairs presses with releases for keys identified by a small code, inside a backend.
///
/// The code (an OS key code) is used only as an index here and never leaves this type: what
/// comes out is a press time to compute `held_us`, and whether a press is an auto-repeat.
#[derive(Debug)]
pub struct PressTable {
    /// Press time per code while the key is down.
    down_at: Vec<Option<u64>>,
}

impl PressTable {
    /// A table for codes `0..size`.
    pub fn new(size: usize) -> Self {
        PressTable {
            down_at: vec![None; size],
        }
    }

    /// Records a press; returns `false` for an auto-repeat (the key is already down) or a code
    /// out of range.
    pub fn press(&mut self, code: usize, t_us: u64) -> bool {
        match self.down_at.get_mut(code) {
            Some(slot @ None) => {
                *slot = Some(t_us);
                true
            }
            _ => false,
        }
    }

    /// Records a release; returns how long the key was held, or `None` for a release whose
    /// press was not seen (capture started with the key down).
    pub fn release(&mut self, code: usize, t_us: u64) -> Option<u64> {
        self.down_at
            .get_mut(code)?
            .take()
            .map(|d| t_us.saturating_sub(d))
    }

    /// Forgets every held key (after a gap, their releases can no longer be paired reliably).
    pub fn clear(&mut self) {
        self.down_at.iter_mut().for_each(|s| *s = None);
    }
}

/// Runs `source` on its own thread, retrying transient failures (a lost X server) with
/// backoff; a permanent failure ends capture and is returned from the thread.
pub fn spawn(
    mut source: Box<dyn InputSource>,
    stop: StopFlag,
    capacity: usize,
) -> (
    EventReceiver,
    std::thread::JoinHandle<Result<(), CaptureError>>,
) {
    let (mut sink, rx) = queue(capacity);
    let handle = std::thread::spawn(move || {
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
                    if stop.wait_timeout(backoff) {
                        return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u64) -> InputEvent {
        InputEvent {
            t_us: t,
            kind: EventKind::PointerMove { dx: 1, dy: 0 },
            injected: false,
        }
    }

    #[test]
    fn full_queue_counts_drops_and_marks_a_gap_without_blocking() {
        let (mut sink, rx) = queue(2);
        assert_eq!(sink.push(ev(1)), Push::Queued);
        assert_eq!(sink.push(ev(2)), Push::Queued);
        assert_eq!(sink.push(ev(3)), Push::Dropped);
        assert_eq!(sink.push(ev(4)), Push::Dropped);
        assert_eq!(rx.dropped(), 2);
        assert_eq!(rx.recv(None), Recv::Event(ev(1)));
        assert_eq!(rx.recv(None), Recv::Event(ev(2)));
        assert_eq!(sink.push(ev(5)), Push::Queued);
        let Recv::Event(g) = rx.recv(None) else {
            panic!("expected the gap marker")
        };
        assert_eq!(g.kind, EventKind::Gap);
        assert_eq!(rx.recv(None), Recv::Event(ev(5)));
        drop(sink);
        assert_eq!(rx.recv(None), Recv::Closed);
    }

    #[test]
    fn press_table_pairs_and_filters_auto_repeat() {
        let mut t = PressTable::new(256);
        assert!(t.press(38, 1_000));
        assert!(!t.press(38, 1_500), "auto-repeat is not a press");
        assert_eq!(t.release(38, 1_090), Some(90));
        assert_eq!(t.release(38, 1_200), None, "no second release");
        assert!(!t.press(999, 0), "out-of-range codes are ignored");
    }
}
