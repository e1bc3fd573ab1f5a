//! Features: windows of input events in, feature vectors out.
//!
//! Owns windowing and the computation of each window's [`FeatureVector`]. Pure: no I/O, no
//! clock of its own — event times drive it, and a caller with a clock asks [`Windower::tick`]
//! to close a window whose time is up while input is idle.
//!
//! Never emits a window below the policy's minimum event counts, never emits per-event data or
//! the order of events, and treats a modality below its minimum as absent (`null`), not zero.
//! Sub-minimum input is discarded when its window closes.

pub mod keyboard;
pub mod mouse;
pub mod stats;

use cadence_config::WindowPolicy;
use cadence_wire::{FeatureVector, SCHEMA};

use crate::capture::replay::{Item, Recording};
use crate::capture::{EventKind, InputEvent};
use keyboard::KeyboardAcc;
use mouse::MouseAcc;

/// Splits a stream of events into windows and computes each window's features.
#[derive(Debug)]
pub struct Windower {
    policy: WindowPolicy,
    keyboard: KeyboardAcc,
    mouse: MouseAcc,
    /// Time of the window's first event; `None` while the window is empty.
    start_us: Option<u64>,
    /// Time of the window's last event.
    last_us: u64,
    /// Windows closed but not emitted because they were under the minima.
    discarded: u64,
}

impl Windower {
    /// A windower applying `policy`.
    pub fn new(policy: WindowPolicy) -> Self {
        Windower {
            policy,
            keyboard: KeyboardAcc::default(),
            mouse: MouseAcc::default(),
            start_us: None,
            last_us: 0,
            discarded: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &WindowPolicy {
        &self.policy
    }

    /// Windows closed without being emitted because they held too few events.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Whether a window is open (has at least one event).
    pub fn is_open(&self) -> bool {
        self.start_us.is_some()
    }

    /// Event time at which the open window's time limit runs out, if a window is open.
    pub fn deadline_us(&self) -> Option<u64> {
        Some(self.start_us? + self.policy.window_us?)
    }

    /// Adds one event; returns the vector of a window that the event closed.
    #[inline]
    pub fn push(&mut self, ev: &InputEvent) -> Option<FeatureVector> {
        let mut closed = None;
        if let Some(deadline) = self.deadline_us()
            && ev.t_us >= deadline
        {
            closed = self.close();
        }
        let t = ev.t_us;
        if self.start_us.is_none()
            && !matches!(ev.kind, EventKind::Gap | EventKind::SecureInput { .. })
        {
            self.start_us = Some(t);
        }
        self.last_us = self.last_us.max(t);
        match ev.kind {
            EventKind::KeyDown { class } => self.keyboard.key_down(t, class),
            EventKind::KeyUp { class, held_us } => self.keyboard.key_up(t, class, held_us),
            EventKind::PointerMove { dx, dy } => self.mouse.moved(t, dx, dy),
            EventKind::ButtonDown { button } => self.mouse.button_down(t, button),
            EventKind::ButtonUp { button, held_us } => self.mouse.button_up(t, button, held_us),
            EventKind::Scroll { direction } => self.mouse.scrolled(t, direction),
            EventKind::Gap => {
                self.keyboard.gap();
                self.mouse.gap();
            }
            // Only the keyboard is hidden; the pointer goes on as before.
            EventKind::SecureInput { .. } => self.keyboard.gap(),
        }
        if closed.is_none() {
            let full_keys = self
                .policy
                .window_keys
                .is_some_and(|n| self.keyboard.presses() >= n);
            let full_mouse = self
                .policy
                .window_mouse_events
                .is_some_and(|n| self.mouse.events() >= n);
            // A key window closes at its last release, not its last press, so that the last
            // key's hold belongs to it: the close happens on the event after the limit.
            if full_mouse || (full_keys && !matches!(ev.kind, EventKind::KeyDown { .. })) {
                closed = self.close();
            }
        }
        closed
    }

    /// Closes the open window if its time limit has passed at event time `now_us`.
    pub fn tick(&mut self, now_us: u64) -> Option<FeatureVector> {
        match self.deadline_us() {
            Some(d) if now_us >= d => self.close(),
            _ => None,
        }
    }

    /// A recording's segment boundary: closes the window when the policy says so.
    pub fn segment_boundary(&mut self) -> Option<FeatureVector> {
        if self.policy.segment_windows {
            self.close()
        } else {
            None
        }
    }

    /// Closes the open window now (end of input, shutdown), emitting it if it meets the minima.
    pub fn close(&mut self) -> Option<FeatureVector> {
        let start = self.start_us.take()?;
        let keys = self.keyboard.presses();
        let mouse_events = self.mouse.events();
        let keyboard = if keys >= self.policy.min_keys {
            self.keyboard.finish()
        } else {
            None
        };
        let mouse = if mouse_events >= self.policy.min_mouse {
            self.mouse.finish()
        } else {
            None
        };
        self.keyboard.clear();
        self.mouse.clear();
        if keyboard.is_none() && mouse.is_none() {
            self.discarded += 1;
            return None;
        }
        Some(FeatureVector {
            schema: SCHEMA.to_owned(),
            duration_ms: self.last_us.saturating_sub(start) / 1000,
            keys,
            mouse_events,
            keyboard,
            mouse,
        })
    }
}

/// Runs a whole recording through a fresh [`Windower`], calling `emit` with each emitted
/// vector and the segment (index into `rec.segments`) in which its window started.
pub fn window_recording<E>(
    rec: &Recording,
    policy: WindowPolicy,
    mut emit: impl FnMut(Option<usize>, FeatureVector) -> Result<(), E>,
) -> Result<(), E> {
    let mut w = Windower::new(policy);
    let mut segment: Option<usize> = None;
    let mut window_segment: Option<usize> = None;
    for item in &rec.items {
        match *item {
            Item::Segment(s) => {
                if let Some(v) = w.segment_boundary() {
                    emit(window_segment, v)?;
                }
                segment = Some(s);
            }
            Item::Event(ev) => {
                let opened = !w.is_open();
                let closed = w.push(&ev);
                let closed_segment = window_segment;
                if opened || closed.is_some() {
                    window_segment = segment;
                }
                if let Some(v) = closed {
                    emit(closed_segment, v)?;
                }
            }
        }
    }
    if let Some(v) = w.close() {
        emit(window_segment, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::KeyClass;

    fn policy(min_keys: u32, window_keys: Option<u32>) -> WindowPolicy {
        WindowPolicy {
            window_us: Some(10_000_000),
            window_keys,
            window_mouse_events: None,
            min_keys,
            min_mouse: 20,
            segment_windows: true,
        }
    }

    fn type_keys(w: &mut Windower, n: u64, start: u64, out: &mut Vec<FeatureVector>) {
        for i in 0..n {
            let t = start + i * 150_000;
            let down = InputEvent {
                t_us: t,
                kind: EventKind::KeyDown {
                    class: KeyClass::Character,
                },
                injected: false,
            };
            let up = InputEvent {
                t_us: t + 70_000,
                kind: EventKind::KeyUp {
                    class: KeyClass::Character,
                    held_us: 70_000,
                },
                injected: false,
            };
            out.extend(w.push(&down));
            out.extend(w.push(&up));
        }
    }

    #[test]
    fn window_below_minimum_is_never_emitted() {
        let mut w = Windower::new(policy(40, None));
        let mut out = Vec::new();
        type_keys(&mut w, 39, 0, &mut out);
        out.extend(w.close());
        assert!(
            out.is_empty(),
            "39 keys under a minimum of 40 must not be emitted"
        );
        assert_eq!(w.discarded(), 1);

        type_keys(&mut w, 40, 100_000_000, &mut out);
        out.extend(w.close());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].keys, 40);
        assert!(
            out[0].mouse.is_none(),
            "no mouse input is explicit, not zeros"
        );
    }

    #[test]
    fn time_limit_closes_by_event_time_and_by_tick() {
        let mut w = Windower::new(policy(10, None));
        let mut out = Vec::new();
        // 100 keys at 150 ms = 15 s: the 10 s limit closes the first window at key 67.
        type_keys(&mut w, 100, 0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].keys, 67);
        assert_eq!(w.deadline_us(), Some(67 * 150_000 + 10_000_000));
        assert!(w.tick(67 * 150_000 + 9_999_999).is_none());
        let v = w.tick(67 * 150_000 + 10_000_000).unwrap();
        assert_eq!(v.keys, 33);
        assert_eq!(
            w.deadline_us(),
            None,
            "an empty window has no deadline: no idle wakeups"
        );
    }

    #[test]
    fn key_count_and_segments_close_windows() {
        let mut w = Windower::new(policy(10, Some(20)));
        let mut out = Vec::new();
        type_keys(&mut w, 50, 0, &mut out);
        assert_eq!(out.iter().map(|v| v.keys).collect::<Vec<_>>(), [20, 20]);
        out.extend(w.segment_boundary());
        assert_eq!(out.last().unwrap().keys, 10);
    }
}
