//! The queue between an OS input callback and the capture thread, for the backends whose OS
//! calls into the agent (Windows low-level hooks, the macOS event tap).
//!
//! Owns a bounded queue of raw, already-timestamped callback records and the loop that turns
//! them into [`InputEvent`]s on the capture thread. The OS side ([`HookSender::offer`]) never
//! blocks and never allocates: Windows silently removes a low-level hook whose procedure
//! overruns `LowLevelHooksTimeout`, and macOS disables an event tap that keeps it waiting. A
//! full queue drops the record and marks a gap, exactly as [`EventSink`] does.
//!
//! Platform-neutral, so the queue and the per-OS translations behind [`Translate`] are built
//! and tested on every OS; only the few lines that register the callback are per-OS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use super::{EventSink, InputEvent, Push, StopFlag};

/// How long the capture thread waits for a record before it looks at the stop flag again:
/// bounds how long `stop.raise()` takes to end capture.
const STOP_POLL: Duration = Duration::from_millis(200);

/// One queued record, and whether records were dropped just before it.
#[derive(Debug)]
struct Slot<T> {
    gap_before: bool,
    record: T,
}

/// The OS callback's end of the queue.
#[derive(Debug)]
pub struct HookSender<T> {
    /// Bounded queue to the capture thread.
    tx: SyncSender<Slot<T>>,
    /// A record was dropped because the queue was full and the next queued record has not
    /// carried the news yet. Shared by clones of the sender.
    lost: Arc<AtomicBool>,
}

impl<T> Clone for HookSender<T> {
    fn clone(&self) -> Self {
        HookSender {
            tx: self.tx.clone(),
            lost: self.lost.clone(),
        }
    }
}

impl<T> HookSender<T> {
    /// Offers a record without blocking; a full queue drops it and marks a gap. Returns
    /// `false` when the capture thread has gone.
    pub fn offer(&self, record: T) -> bool {
        let gap_before = self.lost.swap(false, Ordering::Relaxed);
        match self.tx.try_send(Slot { gap_before, record }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.lost.store(true, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The capture thread's end of the queue.
#[derive(Debug)]
pub struct HookReceiver<T> {
    /// Bounded queue from the OS callback.
    rx: Receiver<Slot<T>>,
}

/// A bounded queue of `capacity` callback records.
pub fn hook_queue<T>(capacity: usize) -> (HookSender<T>, HookReceiver<T>) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    (
        HookSender {
            tx,
            lost: Arc::new(AtomicBool::new(false)),
        },
        HookReceiver { rx },
    )
}

/// Turns one OS's raw callback records into [`InputEvent`]s; holds what pairs presses with
/// releases. Implemented per OS in platform-neutral files.
pub trait Translate<T> {
    /// Translates one record, calling `out` for each event it stands for (zero or more).
    fn translate(&mut self, record: T, out: &mut dyn FnMut(InputEvent));
    /// Forgets held keys and pointer state after records were lost.
    fn reset(&mut self);
}

/// Why [`forward`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// The stop flag was raised.
    Stopped,
    /// The pipeline has gone away.
    Closed,
    /// Every sender has gone: the OS side ended (its thread exited).
    SourceEnded,
}

/// The capture thread's loop: takes records off the queue, translates them and hands the
/// events to `sink`, until `stop` is raised, the pipeline closes or the OS side ends.
pub fn forward<T>(
    rx: &HookReceiver<T>,
    translator: &mut impl Translate<T>,
    sink: &mut EventSink,
    stop: &StopFlag,
) -> Forwarded {
    loop {
        if stop.is_raised() {
            return Forwarded::Stopped;
        }
        match rx.rx.recv_timeout(STOP_POLL) {
            Ok(Slot { gap_before, record }) => {
                if gap_before {
                    translator.reset();
                    sink.mark_gap();
                }
                let mut closed = false;
                translator.translate(record, &mut |ev| {
                    if sink.push(ev) == Push::Closed {
                        closed = true;
                    }
                });
                if closed {
                    return Forwarded::Closed;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Forwarded::SourceEnded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{EventKind, Recv, queue};

    /// Each record is a pointer move by its value.
    struct Moves(u32);
    impl Translate<i32> for Moves {
        fn translate(&mut self, dx: i32, out: &mut dyn FnMut(InputEvent)) {
            out(InputEvent {
                t_us: u64::from(dx.unsigned_abs()),
                kind: EventKind::PointerMove { dx, dy: 0 },
                injected: false,
            });
        }
        fn reset(&mut self) {
            self.0 += 1;
        }
    }

    fn drain(events: crate::capture::EventReceiver) -> Vec<EventKind> {
        let mut kinds = Vec::new();
        while let Recv::Event(e) = events.recv(None) {
            kinds.push(e.kind);
        }
        kinds
    }

    fn moved(dx: i32) -> EventKind {
        EventKind::PointerMove { dx, dy: 0 }
    }

    #[test]
    fn a_full_queue_drops_without_blocking_and_marks_the_gap_where_it_happened() {
        let (tx, rx) = hook_queue::<i32>(2);
        assert!(tx.offer(1));
        assert!(tx.offer(2));
        assert!(tx.offer(3), "dropped, not blocked");
        assert!(tx.offer(4), "dropped too");
        // The capture thread takes one record; the next offer fits and carries the gap.
        let first = rx.rx.try_recv().map(|s| s.record).ok();
        assert_eq!(first, Some(1));
        assert!(tx.offer(5));
        drop(tx);
        let (mut sink, events) = queue(16);
        let mut t = Moves(0);
        assert_eq!(
            forward(&rx, &mut t, &mut sink, &StopFlag::new()),
            Forwarded::SourceEnded
        );
        assert_eq!(t.0, 1, "the translator was reset once");
        drop(sink);
        assert_eq!(drain(events), vec![moved(2), EventKind::Gap, moved(5)]);
    }

    #[test]
    fn without_drops_there_is_no_gap() {
        let (tx, rx) = hook_queue::<i32>(4);
        for dx in 1..=3 {
            assert!(tx.offer(dx));
        }
        drop(tx);
        let (mut sink, events) = queue(16);
        let mut t = Moves(0);
        forward(&rx, &mut t, &mut sink, &StopFlag::new());
        drop(sink);
        assert_eq!(t.0, 0);
        assert_eq!(drain(events), vec![moved(1), moved(2), moved(3)]);
    }

    #[test]
    fn stop_and_a_closed_pipeline_end_the_loop() {
        let (tx, rx) = hook_queue::<i32>(8);
        let (mut sink, events) = queue(8);
        let stop = StopFlag::new();
        stop.raise();
        assert_eq!(
            forward(&rx, &mut Moves(0), &mut sink, &stop),
            Forwarded::Stopped
        );
        drop(events);
        tx.offer(5);
        assert_eq!(
            forward(&rx, &mut Moves(0), &mut sink, &StopFlag::new()),
            Forwarded::Closed
        );
        drop(rx);
        assert!(!tx.offer(6), "the capture side has gone");
    }
}
