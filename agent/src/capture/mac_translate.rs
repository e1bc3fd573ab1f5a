//! macOS event-tap records into [`InputEvent`]s: the platform-neutral half of the macOS
//! backend, built and tested on every OS. The other half, `macos.rs`, only runs a listen-only
//! `CGEventTap` and copies a few integer fields out of each event into a [`TapRecord`].
//!
//! Owns the translation of `CGEventType` plus the fields read: the virtual key code
//! (`kCGKeyboardEventKeycode`, a `kVK_*` key *position*), the auto-repeat mark, the modifier
//! flags (only to tell a modifier's press from its release), the mouse deltas, the button
//! number, the scroll deltas, the event source's state id (to mark injected events) and the
//! event's timestamp. Also owns the Secure Event Input marks: while a password field has
//! focus, macOS hides keyboard events from every tap; the backend reports when that starts
//! and ends, and it becomes [`EventKind::SecureInput`], a keyboard gap with a known, benign
//! cause that is never evidence of anything.
//!
//! Must never: ask for an event's characters (`CGEventKeyboardGetUnicodeString`), call
//! `UCKeyTranslate`, TIS/TSM (input source, keyboard layout) or any other key-to-text function;
//! read the pointer's absolute location (`CGEventGetLocation`); let a key code out of this file.
//!
//! # Time
//!
//! `CGEventGetTimestamp` counts from system start-up in Mach absolute time units; `macos.rs`
//! converts them to nanoseconds with `mach_timebase_info` (1/1 on Intel, 125/3 on Apple
//! silicon) before they come here. The offset to the capture clock is estimated from arrival
//! times as for X11 server times (the least-delayed event sets it), so a wrong unit would
//! show up as drift against arrival, never as a crash.

use super::evdev::KernelTimeMapper;
use super::hook::Translate;
use super::{Button, EventKind, InputEvent, PressTable, ScrollDirection, keyclass};

/// `CGEventType` values (CoreGraphics `CGEventTypes.h`).
pub const LEFT_MOUSE_DOWN: u32 = 1;
/// Left button up.
pub const LEFT_MOUSE_UP: u32 = 2;
/// Right button down.
pub const RIGHT_MOUSE_DOWN: u32 = 3;
/// Right button up.
pub const RIGHT_MOUSE_UP: u32 = 4;
/// Pointer moved with no button held.
pub const MOUSE_MOVED: u32 = 5;
/// Pointer moved with the left button held.
pub const LEFT_MOUSE_DRAGGED: u32 = 6;
/// Pointer moved with the right button held.
pub const RIGHT_MOUSE_DRAGGED: u32 = 7;
/// A key went down.
pub const KEY_DOWN: u32 = 10;
/// A key came up.
pub const KEY_UP: u32 = 11;
/// A modifier key went down or up (the flags say which).
pub const FLAGS_CHANGED: u32 = 12;
/// Scroll wheel or trackpad scroll.
pub const SCROLL_WHEEL: u32 = 22;
/// Another button (middle, 4, 5...) down.
pub const OTHER_MOUSE_DOWN: u32 = 25;
/// Another button up.
pub const OTHER_MOUSE_UP: u32 = 26;
/// Pointer moved with another button held.
pub const OTHER_MOUSE_DRAGGED: u32 = 27;
/// The tap was disabled because the callback took too long (`kCGEventTapDisabledByTimeout`).
pub const TAP_DISABLED_BY_TIMEOUT: u32 = 0xFFFF_FFFE;
/// The tap was disabled by user input (`kCGEventTapDisabledByUserInput`).
pub const TAP_DISABLED_BY_USER_INPUT: u32 = 0xFFFF_FFFF;

/// `CGEventField` values read by the backend.
pub const FIELD_MOUSE_BUTTON_NUMBER: u32 = 3;
/// `kCGMouseEventDeltaX`.
pub const FIELD_MOUSE_DELTA_X: u32 = 4;
/// `kCGMouseEventDeltaY`.
pub const FIELD_MOUSE_DELTA_Y: u32 = 5;
/// `kCGKeyboardEventAutorepeat`.
pub const FIELD_KEYBOARD_AUTOREPEAT: u32 = 8;
/// `kCGKeyboardEventKeycode`.
pub const FIELD_KEYBOARD_KEYCODE: u32 = 9;
/// `kCGScrollWheelEventDeltaAxis1` (vertical, lines; positive: up).
pub const FIELD_SCROLL_DELTA_AXIS_1: u32 = 11;
/// `kCGScrollWheelEventDeltaAxis2` (horizontal, lines; positive: left).
pub const FIELD_SCROLL_DELTA_AXIS_2: u32 = 12;
/// `kCGEventSourceStateID`.
pub const FIELD_SOURCE_STATE_ID: u32 = 45;
/// `kCGEventSourceStateHIDSystemState`: the event came from a hardware device. Events posted
/// by software carry another state (private or combined session).
pub const SOURCE_STATE_HID_SYSTEM: i64 = 1;

/// Caps Lock: its `FLAGS_CHANGED` comes once per toggle, with no release.
const KVK_CAPS_LOCK: u16 = 0x39;

/// The event types the tap listens to, as a `CGEventMask`.
pub const fn event_mask() -> u64 {
    let types = [
        LEFT_MOUSE_DOWN,
        LEFT_MOUSE_UP,
        RIGHT_MOUSE_DOWN,
        RIGHT_MOUSE_UP,
        MOUSE_MOVED,
        LEFT_MOUSE_DRAGGED,
        RIGHT_MOUSE_DRAGGED,
        KEY_DOWN,
        KEY_UP,
        FLAGS_CHANGED,
        SCROLL_WHEEL,
        OTHER_MOUSE_DOWN,
        OTHER_MOUSE_UP,
        OTHER_MOUSE_DRAGGED,
    ];
    let mut mask = 0u64;
    let mut i = 0;
    while i < types.len() {
        mask |= 1 << types[i];
        i += 1;
    }
    mask
}

/// The device-dependent flag bit (IOKit `NX_DEVICE*KEYMASK`) that is set while the modifier
/// key `keycode` is down; these tell the left key from the right one.
fn modifier_bit(keycode: u16) -> Option<u64> {
    Some(match keycode {
        0x3B => 0x0000_0001, // Control: NX_DEVICELCTLKEYMASK
        0x38 => 0x0000_0002, // Shift: NX_DEVICELSHIFTKEYMASK
        0x3C => 0x0000_0004, // RightShift
        0x37 => 0x0000_0008, // Command: NX_DEVICELCMDKEYMASK
        0x36 => 0x0000_0010, // RightCommand
        0x3A => 0x0000_0020, // Option: NX_DEVICELALTKEYMASK
        0x3D => 0x0000_0040, // RightOption
        0x3E => 0x0000_2000, // RightControl
        0x3F => 0x0080_0000, // Function: kCGEventFlagMaskSecondaryFn
        _ => return None,
    })
}

/// What the tap callback copies out of one event: nothing else is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TapEvent {
    /// `CGEventGetType`.
    pub kind: u32,
    /// `CGEventGetTimestamp`, converted to nanoseconds since start-up.
    pub timestamp_ns: u64,
    /// `kCGKeyboardEventKeycode` (key events only).
    pub keycode: u16,
    /// `kCGKeyboardEventAutorepeat` is non-zero.
    pub autorepeat: bool,
    /// `CGEventGetFlags` (modifier state).
    pub flags: u64,
    /// `kCGMouseEventDeltaX` / `DeltaY`: relative motion.
    pub dx: i64,
    /// See `dx`.
    pub dy: i64,
    /// `kCGMouseEventButtonNumber` (0 left, 1 right, 2 middle...).
    pub button: i64,
    /// `kCGScrollWheelEventDeltaAxis1`: vertical lines, positive up.
    pub scroll_v: i64,
    /// `kCGScrollWheelEventDeltaAxis2`: horizontal lines, positive left.
    pub scroll_h: i64,
    /// `kCGEventSourceStateID`.
    pub source_state: i64,
}

/// What the backend hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapData {
    /// One event from the tap.
    Event(TapEvent),
    /// Secure Event Input was switched on (`true`) or off; the backend checks
    /// `IsSecureEventInputEnabled` on its run loop.
    SecureInput(bool),
    /// macOS disabled the tap (a slow callback, or user input); it was re-enabled, but events
    /// in between are lost.
    TapDisabled,
}

/// One record, stamped with its arrival on the capture clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapRecord {
    /// Capture-clock time (µs) at which the callback ran.
    pub arrival_us: u64,
    /// What happened.
    pub data: TapData,
}

/// Turns tap records into events.
#[derive(Debug)]
pub struct TapTranslator {
    /// Held keys by `kVK_*` code (0..=127).
    keys: PressTable,
    /// Held buttons by button number (0..=31).
    buttons: PressTable,
    /// Event timestamps onto the capture clock.
    time: KernelTimeMapper,
    /// Secure Event Input is on.
    secure: bool,
    /// The last time handed out, so marks stamped at arrival never precede an event.
    last_us: u64,
}

impl Default for TapTranslator {
    fn default() -> Self {
        Self::new()
    }
}

impl TapTranslator {
    /// A translator with nothing held.
    pub fn new() -> Self {
        TapTranslator {
            keys: PressTable::new(128),
            buttons: PressTable::new(32),
            time: KernelTimeMapper::estimating(),
            secure: false,
            last_us: 0,
        }
    }

    fn key(&mut self, ev: &TapEvent, t_us: u64) -> Option<EventKind> {
        let code = usize::from(ev.keycode);
        let class = keyclass::from_mac_keycode(ev.keycode);
        match ev.kind {
            KEY_DOWN if ev.autorepeat => None,
            KEY_DOWN => self
                .keys
                .press(code, t_us)
                .then_some(EventKind::KeyDown { class }),
            KEY_UP => {
                let held_us = self.keys.release(code, t_us)?;
                Some(EventKind::KeyUp { class, held_us })
            }
            // Caps Lock reports each toggle as one change and never a release: a press only.
            FLAGS_CHANGED if ev.keycode == KVK_CAPS_LOCK => Some(EventKind::KeyDown { class }),
            FLAGS_CHANGED => {
                let bit = modifier_bit(ev.keycode)?;
                if ev.flags & bit != 0 {
                    self.keys
                        .press(code, t_us)
                        .then_some(EventKind::KeyDown { class })
                } else {
                    let held_us = self.keys.release(code, t_us)?;
                    Some(EventKind::KeyUp { class, held_us })
                }
            }
            _ => None,
        }
    }

    fn button(&mut self, number: i64, down: bool, t_us: u64) -> Option<EventKind> {
        let button = match number {
            0 => Button::Left,
            1 => Button::Right,
            2 => Button::Middle,
            _ => Button::Other,
        };
        let slot = usize::try_from(number.clamp(0, 31)).ok()?;
        if down {
            self.buttons
                .press(slot, t_us)
                .then_some(EventKind::ButtonDown { button })
        } else {
            let held_us = self.buttons.release(slot, t_us)?;
            Some(EventKind::ButtonUp { button, held_us })
        }
    }

    fn event(&mut self, ev: &TapEvent, arrival_us: u64, out: &mut dyn FnMut(InputEvent)) {
        let ns = i64::try_from(ev.timestamp_ns).unwrap_or(i64::MAX);
        self.time.observe(ns / 1000, arrival_us);
        let t_us = self.time.map(ns / 1000);
        self.last_us = self.last_us.max(t_us);
        let injected = ev.source_state != SOURCE_STATE_HID_SYSTEM;
        let mut emit = |kind| {
            out(InputEvent {
                t_us,
                kind,
                injected,
            })
        };
        let kind = match ev.kind {
            KEY_DOWN | KEY_UP | FLAGS_CHANGED => self.key(ev, t_us),
            MOUSE_MOVED | LEFT_MOUSE_DRAGGED | RIGHT_MOUSE_DRAGGED | OTHER_MOUSE_DRAGGED => {
                let clamp =
                    |v: i64| i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX });
                let (dx, dy) = (clamp(ev.dx), clamp(ev.dy));
                (dx != 0 || dy != 0).then_some(EventKind::PointerMove { dx, dy })
            }
            LEFT_MOUSE_DOWN => self.button(0, true, t_us),
            LEFT_MOUSE_UP => self.button(0, false, t_us),
            RIGHT_MOUSE_DOWN => self.button(1, true, t_us),
            RIGHT_MOUSE_UP => self.button(1, false, t_us),
            OTHER_MOUSE_DOWN => self.button(ev.button, true, t_us),
            OTHER_MOUSE_UP => self.button(ev.button, false, t_us),
            SCROLL_WHEEL => {
                let steps = [
                    (ev.scroll_v, ScrollDirection::Up, ScrollDirection::Down),
                    (ev.scroll_h, ScrollDirection::Left, ScrollDirection::Right),
                ];
                for (delta, positive, negative) in steps {
                    let direction = if delta > 0 { positive } else { negative };
                    for _ in 0..delta.unsigned_abs().min(64) {
                        emit(EventKind::Scroll { direction });
                    }
                }
                None
            }
            _ => None,
        };
        if let Some(kind) = kind {
            emit(kind);
        }
    }
}

impl Translate<TapRecord> for TapTranslator {
    fn translate(&mut self, record: TapRecord, out: &mut dyn FnMut(InputEvent)) {
        match record.data {
            TapData::Event(ev) => self.event(&ev, record.arrival_us, out),
            TapData::SecureInput(active) => {
                if active == self.secure {
                    return;
                }
                self.secure = active;
                // Releases of keys held now will not be seen.
                self.keys.clear();
                let t_us = record.arrival_us.max(self.last_us);
                self.last_us = t_us;
                out(InputEvent {
                    t_us,
                    kind: EventKind::SecureInput { active },
                    injected: false,
                });
            }
            TapData::TapDisabled => {
                self.reset();
                let t_us = record.arrival_us.max(self.last_us);
                self.last_us = t_us;
                out(InputEvent {
                    t_us,
                    kind: EventKind::Gap,
                    injected: false,
                });
            }
        }
    }

    fn reset(&mut self) {
        self.keys.clear();
        self.buttons.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::KeyClass;

    fn ev(t_ms: u64, kind: u32) -> TapEvent {
        TapEvent {
            kind,
            timestamp_ns: t_ms * 1_000_000,
            source_state: SOURCE_STATE_HID_SYSTEM,
            ..TapEvent::default()
        }
    }

    fn key(t_ms: u64, kind: u32, keycode: u16) -> TapEvent {
        TapEvent {
            keycode,
            ..ev(t_ms, kind)
        }
    }

    fn flags(t_ms: u64, keycode: u16, flags: u64) -> TapEvent {
        TapEvent {
            keycode,
            flags,
            ..ev(t_ms, FLAGS_CHANGED)
        }
    }

    /// Each event arrives 1 ms after it happened (time zero of the capture clock is the
    /// event clock's zero).
    fn run(records: &[TapData]) -> Vec<InputEvent> {
        let mut t = TapTranslator::new();
        let mut out = Vec::new();
        let mut last_ms = 0;
        for &data in records {
            if let TapData::Event(e) = data {
                last_ms = e.timestamp_ns / 1_000_000;
            }
            let arrival_us = (last_ms + 1) * 1000;
            t.translate(TapRecord { arrival_us, data }, &mut |e| out.push(e));
        }
        out
    }

    fn kinds(evs: &[InputEvent]) -> Vec<EventKind> {
        evs.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn keys_and_modifiers_pair_and_keep_their_event_times() {
        use EventKind::*;
        let e = TapData::Event;
        let out = run(&[
            e(flags(1000, 0x38, 0x0002_0002)), // left shift down
            e(key(1050, KEY_DOWN, 0x00)),      // a
            e(TapEvent {
                autorepeat: true,
                ..key(1100, KEY_DOWN, 0x00)
            }),
            e(flags(1120, 0x3C, 0x0002_0006)), // right shift down too
            e(flags(1130, 0x38, 0x0002_0004)), // left shift up, right still down
            e(key(1140, KEY_UP, 0x00)),
            e(flags(1200, 0x3C, 0)), // right shift up
            e(flags(1300, KVK_CAPS_LOCK, 0x0001_0000)),
            e(flags(1400, KVK_CAPS_LOCK, 0)),
            e(key(1500, KEY_UP, 0x31)), // space never pressed
        ]);
        let (m, c) = (KeyClass::Modifier, KeyClass::Character);
        assert_eq!(
            kinds(&out),
            vec![
                KeyDown { class: m },
                KeyDown { class: c },
                KeyDown { class: m },
                KeyUp {
                    class: m,
                    held_us: 130_000
                },
                KeyUp {
                    class: c,
                    held_us: 90_000
                },
                KeyUp {
                    class: m,
                    held_us: 80_000
                },
                KeyDown { class: m },
                KeyDown { class: m },
            ]
        );
        let t: Vec<u64> = out.iter().map(|e| e.t_us).collect();
        // Offset from the first event: arrival 1 ms after it, so times are event time + 1 ms.
        assert_eq!(t[0], 1_001_000);
        assert_eq!(t[1] - t[0], 50_000);
        assert!(out.iter().all(|e| !e.injected));
    }

    #[test]
    fn pointer_deltas_buttons_and_scroll() {
        use EventKind::*;
        use ScrollDirection as S;
        let e = TapData::Event;
        let out = run(&[
            e(TapEvent {
                dx: 3,
                dy: -4,
                ..ev(10, MOUSE_MOVED)
            }),
            e(ev(12, MOUSE_MOVED)), // no motion
            e(ev(20, LEFT_MOUSE_DOWN)),
            e(TapEvent {
                dx: 1,
                ..ev(25, LEFT_MOUSE_DRAGGED)
            }),
            e(ev(60, LEFT_MOUSE_UP)),
            e(TapEvent {
                button: 2,
                ..ev(70, OTHER_MOUSE_DOWN)
            }),
            e(TapEvent {
                button: 2,
                ..ev(75, OTHER_MOUSE_UP)
            }),
            e(TapEvent {
                scroll_v: -2,
                scroll_h: 1,
                ..ev(80, SCROLL_WHEEL)
            }),
        ]);
        assert_eq!(
            kinds(&out),
            vec![
                PointerMove { dx: 3, dy: -4 },
                ButtonDown {
                    button: Button::Left
                },
                PointerMove { dx: 1, dy: 0 },
                ButtonUp {
                    button: Button::Left,
                    held_us: 40_000
                },
                ButtonDown {
                    button: Button::Middle
                },
                ButtonUp {
                    button: Button::Middle,
                    held_us: 5_000
                },
                Scroll { direction: S::Down },
                Scroll { direction: S::Down },
                Scroll { direction: S::Left },
            ]
        );
    }

    #[test]
    fn secure_input_is_marked_once_per_change_and_forgets_held_keys() {
        use EventKind::*;
        let e = TapData::Event;
        let out = run(&[
            e(key(100, KEY_DOWN, 0x00)),
            TapData::SecureInput(true),
            TapData::SecureInput(true), // still on: no second mark
            // Key events do not reach the tap now; the release of `a` is lost.
            TapData::SecureInput(false),
            e(key(900, KEY_UP, 0x00)),
            e(key(950, KEY_DOWN, 0x01)),
        ]);
        let c = KeyClass::Character;
        assert_eq!(
            kinds(&out),
            vec![
                KeyDown { class: c },
                SecureInput { active: true },
                SecureInput { active: false },
                KeyDown { class: c },
            ]
        );
        assert!(out.windows(2).all(|w| w[0].t_us <= w[1].t_us));
    }

    #[test]
    fn a_disabled_tap_is_a_gap_and_software_events_are_injected() {
        let out = run(&[
            TapData::Event(key(10, KEY_DOWN, 0x00)),
            TapData::TapDisabled,
            TapData::Event(key(20, KEY_UP, 0x00)),
            TapData::Event(TapEvent {
                source_state: -1, // kCGEventSourceStatePrivate: posted by a program
                ..key(30, KEY_DOWN, 0x01)
            }),
        ]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].kind, EventKind::Gap);
        assert!(!out[0].injected && out[2].injected);
    }

    #[test]
    fn the_mask_covers_every_translated_type() {
        let m = event_mask();
        for t in [
            KEY_DOWN,
            KEY_UP,
            FLAGS_CHANGED,
            MOUSE_MOVED,
            SCROLL_WHEEL,
            OTHER_MOUSE_UP,
        ] {
            assert!(m & (1 << t) != 0, "{t}");
        }
        assert_eq!(m & (1 << 0), 0, "null events are not asked for");
    }
}
