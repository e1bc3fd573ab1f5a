//! Windows low-level hook records into [`InputEvent`]s: the platform-neutral half of the
//! Windows backend, built and tested on every OS. The other half, `windows.rs`, only installs
//! the hooks and copies a few fields out of each callback into a [`HookRecord`].
//!
//! Owns the translation of `WH_KEYBOARD_LL` / `WH_MOUSE_LL` callback data: the message id
//! (`wParam`), and from `KBDLLHOOKSTRUCT` the virtual-key code and the flags, from
//! `MSLLHOOKSTRUCT` the cursor point (only to compute the next delta), the mouse data (wheel
//! delta, X button) and the flags. `LLKHF_INJECTED` / `LLMHF_INJECTED` (and their
//! lower-integrity variants) become [`InputEvent::injected`], which the guard counts.
//!
//! Must never: read `KBDLLHOOKSTRUCT.scanCode` (for `VK_PACKET`, input injected as text, it
//! *is* a character) or call anything that maps a key to text (`ToUnicode(Ex)`, `ToAscii`,
//! `MapVirtualKey(Ex)`): the virtual-key code goes through [`keyclass::from_windows_vk`] and
//! nothing else. Not calling them is also what keeps dead keys and IMEs working for the user.
//! No absolute cursor position leaves this file.
//!
//! # Time
//!
//! The hook procedure stamps each record with the capture clock as its first action. The
//! capture clock is Rust's `Instant`, which on Windows is `QueryPerformanceCounter`: sub-
//! microsecond, monotonic. The hook structs' own `time` field is not used: it is a
//! `GetTickCount` value with 10–16 ms resolution, too coarse for key timing. Low-level hooks are
//! called synchronously as the input is processed, before any application sees it, so the
//! stamp is the event's time plus only the hook dispatch.

use super::hook::Translate;
use super::{Button, EventKind, InputEvent, PressTable, ScrollDirection, keyclass};

/// Keyboard messages (`wParam` of a `WH_KEYBOARD_LL` callback).
pub const WM_KEYDOWN: u32 = 0x0100;
/// A key was released.
pub const WM_KEYUP: u32 = 0x0101;
/// A key pressed with Alt held (or F10).
pub const WM_SYSKEYDOWN: u32 = 0x0104;
/// Released, with Alt held.
pub const WM_SYSKEYUP: u32 = 0x0105;
/// Mouse messages (`wParam` of a `WH_MOUSE_LL` callback).
pub const WM_MOUSEMOVE: u32 = 0x0200;
/// Left button down.
pub const WM_LBUTTONDOWN: u32 = 0x0201;
/// Left button up.
pub const WM_LBUTTONUP: u32 = 0x0202;
/// Right button down.
pub const WM_RBUTTONDOWN: u32 = 0x0204;
/// Right button up.
pub const WM_RBUTTONUP: u32 = 0x0205;
/// Middle button down.
pub const WM_MBUTTONDOWN: u32 = 0x0207;
/// Middle button up.
pub const WM_MBUTTONUP: u32 = 0x0208;
/// Vertical wheel; the delta is the high word of `mouseData`.
pub const WM_MOUSEWHEEL: u32 = 0x020A;
/// X button (back/forward) down; which one is the high word of `mouseData`.
pub const WM_XBUTTONDOWN: u32 = 0x020B;
/// X button up.
pub const WM_XBUTTONUP: u32 = 0x020C;
/// Horizontal wheel.
pub const WM_MOUSEHWHEEL: u32 = 0x020E;
/// `KBDLLHOOKSTRUCT.flags`: the event was injected (`SendInput`, `keybd_event`).
pub const LLKHF_INJECTED: u32 = 0x10;
/// Injected from a process running at lower integrity.
pub const LLKHF_LOWER_IL_INJECTED: u32 = 0x02;
/// `MSLLHOOKSTRUCT.flags`: the event was injected.
pub const LLMHF_INJECTED: u32 = 0x01;
/// Injected from a process running at lower integrity.
pub const LLMHF_LOWER_IL_INJECTED: u32 = 0x02;
/// One wheel detent.
pub const WHEEL_DELTA: i32 = 120;

/// What a hook procedure copies out of its callback: nothing else is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookData {
    /// A `WH_KEYBOARD_LL` callback.
    Key {
        /// The message (`WM_KEYDOWN`, `WM_KEYUP`, `WM_SYSKEYDOWN`, `WM_SYSKEYUP`).
        message: u32,
        /// `KBDLLHOOKSTRUCT.vkCode`.
        vk: u32,
        /// `KBDLLHOOKSTRUCT.flags`.
        flags: u32,
    },
    /// A `WH_MOUSE_LL` callback.
    Mouse {
        /// The message (`WM_MOUSEMOVE`, button and wheel messages).
        message: u32,
        /// `MSLLHOOKSTRUCT.pt`: screen coordinates, used only for the next delta.
        x: i32,
        /// See `x`.
        y: i32,
        /// `MSLLHOOKSTRUCT.mouseData`: wheel delta or X button in the high word.
        mouse_data: u32,
        /// `MSLLHOOKSTRUCT.flags`.
        flags: u32,
    },
}

/// One hook callback, stamped on the capture clock when the hook procedure ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookRecord {
    /// Capture-clock time (µs) taken first thing in the hook procedure.
    pub t_us: u64,
    /// The callback's data.
    pub data: HookData,
}

/// Turns hook records into events: pairs key and button presses with their releases, drops
/// auto-repeat, turns cursor points into deltas and wheel deltas into steps.
#[derive(Debug)]
pub struct HookTranslator {
    /// Held keys by virtual-key code (0..=255).
    keys: PressTable,
    /// Held buttons: left, right, middle, X1, X2.
    buttons: PressTable,
    /// The previous cursor point; private to the delta.
    last_pos: Option<(i32, i32)>,
    /// Wheel deltas below one detent (high-resolution wheels, touchpads), vertical and
    /// horizontal, carried until they make a step.
    wheel_rest: (i32, i32),
}

impl Default for HookTranslator {
    fn default() -> Self {
        Self::new()
    }
}

impl HookTranslator {
    /// A translator with nothing held.
    pub fn new() -> Self {
        HookTranslator {
            keys: PressTable::new(256),
            buttons: PressTable::new(5),
            last_pos: None,
            wheel_rest: (0, 0),
        }
    }

    fn key(&mut self, message: u32, vk: u32, t_us: u64) -> Option<EventKind> {
        let class = keyclass::from_windows_vk(vk);
        let code = usize::try_from(vk).ok()?;
        match message {
            WM_KEYDOWN | WM_SYSKEYDOWN => self
                .keys
                .press(code, t_us)
                .then_some(EventKind::KeyDown { class }),
            WM_KEYUP | WM_SYSKEYUP => {
                let held_us = self.keys.release(code, t_us)?;
                Some(EventKind::KeyUp { class, held_us })
            }
            _ => None,
        }
    }

    fn button(&mut self, slot: usize, button: Button, down: bool, t_us: u64) -> Option<EventKind> {
        if down {
            self.buttons
                .press(slot, t_us)
                .then_some(EventKind::ButtonDown { button })
        } else {
            let held_us = self.buttons.release(slot, t_us)?;
            Some(EventKind::ButtonUp { button, held_us })
        }
    }
}

/// The signed wheel delta or the X button number in the high word of `mouseData`.
fn high_word(mouse_data: u32) -> i32 {
    i32::from((mouse_data >> 16) as u16 as i16)
}

impl Translate<HookRecord> for HookTranslator {
    fn translate(&mut self, record: HookRecord, out: &mut dyn FnMut(InputEvent)) {
        let t_us = record.t_us;
        let (kind, injected) = match record.data {
            HookData::Key { message, vk, flags } => (
                self.key(message, vk, t_us),
                flags & (LLKHF_INJECTED | LLKHF_LOWER_IL_INJECTED) != 0,
            ),
            HookData::Mouse {
                message,
                x,
                y,
                mouse_data,
                flags,
            } => {
                let injected = flags & (LLMHF_INJECTED | LLMHF_LOWER_IL_INJECTED) != 0;
                let kind = match message {
                    WM_MOUSEMOVE => {
                        let prev = self.last_pos.replace((x, y));
                        prev.and_then(|(px, py)| {
                            let (dx, dy) = (x.saturating_sub(px), y.saturating_sub(py));
                            (dx != 0 || dy != 0).then_some(EventKind::PointerMove { dx, dy })
                        })
                    }
                    WM_LBUTTONDOWN => self.button(0, Button::Left, true, t_us),
                    WM_LBUTTONUP => self.button(0, Button::Left, false, t_us),
                    WM_RBUTTONDOWN => self.button(1, Button::Right, true, t_us),
                    WM_RBUTTONUP => self.button(1, Button::Right, false, t_us),
                    WM_MBUTTONDOWN => self.button(2, Button::Middle, true, t_us),
                    WM_MBUTTONUP => self.button(2, Button::Middle, false, t_us),
                    WM_XBUTTONDOWN | WM_XBUTTONUP => {
                        // XBUTTON1 = 1, XBUTTON2 = 2.
                        let slot = if high_word(mouse_data) == 2 { 4 } else { 3 };
                        self.button(slot, Button::Other, message == WM_XBUTTONDOWN, t_us)
                    }
                    WM_MOUSEWHEEL | WM_MOUSEHWHEEL => {
                        let vertical = message == WM_MOUSEWHEEL;
                        let rest = if vertical {
                            &mut self.wheel_rest.0
                        } else {
                            &mut self.wheel_rest.1
                        };
                        *rest = rest.saturating_add(high_word(mouse_data));
                        let steps = *rest / WHEEL_DELTA;
                        *rest -= steps * WHEEL_DELTA;
                        // Positive: forward (away from the user) or to the right.
                        let direction = match (vertical, steps > 0) {
                            (true, true) => ScrollDirection::Up,
                            (true, false) => ScrollDirection::Down,
                            (false, true) => ScrollDirection::Right,
                            (false, false) => ScrollDirection::Left,
                        };
                        for _ in 0..steps.unsigned_abs().min(64) {
                            out(InputEvent {
                                t_us,
                                kind: EventKind::Scroll { direction },
                                injected,
                            });
                        }
                        None
                    }
                    _ => None,
                };
                (kind, injected)
            }
        };
        if let Some(kind) = kind {
            out(InputEvent {
                t_us,
                kind,
                injected,
            });
        }
    }

    fn reset(&mut self) {
        self.keys.clear();
        self.buttons.clear();
        self.last_pos = None;
        self.wheel_rest = (0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::KeyClass;

    fn key(t_us: u64, message: u32, vk: u32, flags: u32) -> HookRecord {
        HookRecord {
            t_us,
            data: HookData::Key { message, vk, flags },
        }
    }

    fn mouse(t_us: u64, message: u32, x: i32, y: i32, mouse_data: u32) -> HookRecord {
        HookRecord {
            t_us,
            data: HookData::Mouse {
                message,
                x,
                y,
                mouse_data,
                flags: 0,
            },
        }
    }

    fn run(records: &[HookRecord]) -> Vec<InputEvent> {
        let mut t = HookTranslator::new();
        let mut out = Vec::new();
        for &r in records {
            t.translate(r, &mut |e| out.push(e));
        }
        out
    }

    fn kinds(evs: &[InputEvent]) -> Vec<EventKind> {
        evs.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn keys_pair_by_code_auto_repeat_is_dropped_and_alt_keys_count() {
        let out = run(&[
            key(1_000, WM_KEYDOWN, 0x41, 0),
            key(1_300, WM_KEYDOWN, 0x41, 0),       // auto-repeat
            key(1_400, WM_SYSKEYDOWN, 0xA4, 0x20), // Alt, LLKHF_ALTDOWN
            key(1_450, WM_KEYUP, 0x41, 0x80),
            key(1_500, WM_SYSKEYUP, 0xA4, 0x80),
            key(1_600, WM_KEYUP, 0x20, 0x80), // never pressed
            key(1_700, 0x0102, 0x41, 0),      // WM_CHAR never comes here; ignored if it did
        ]);
        use EventKind::*;
        assert_eq!(
            kinds(&out),
            vec![
                KeyDown {
                    class: KeyClass::Character
                },
                KeyDown {
                    class: KeyClass::Modifier
                },
                KeyUp {
                    class: KeyClass::Character,
                    held_us: 450
                },
                KeyUp {
                    class: KeyClass::Modifier,
                    held_us: 100
                },
            ]
        );
        assert!(out.iter().all(|e| !e.injected));
    }

    #[test]
    fn injected_flags_mark_events() {
        let out = run(&[
            key(10, WM_KEYDOWN, 0x41, LLKHF_INJECTED),
            key(20, WM_KEYUP, 0x41, LLKHF_INJECTED | 0x80),
            key(
                30,
                WM_KEYDOWN,
                0x42,
                LLKHF_LOWER_IL_INJECTED | LLKHF_INJECTED,
            ),
            key(40, WM_KEYDOWN, 0x43, 0x01), // LLKHF_EXTENDED only
        ]);
        let flags: Vec<bool> = out.iter().map(|e| e.injected).collect();
        assert_eq!(flags, vec![true, true, true, false]);
        let mut m = HookTranslator::new();
        let mut got = Vec::new();
        m.translate(
            HookRecord {
                t_us: 5,
                data: HookData::Mouse {
                    message: WM_LBUTTONDOWN,
                    x: 0,
                    y: 0,
                    mouse_data: 0,
                    flags: LLMHF_INJECTED,
                },
            },
            &mut |e| got.push(e),
        );
        assert!(got.len() == 1 && got[0].injected);
    }

    #[test]
    fn the_scan_code_is_never_part_of_a_record() {
        // VK_PACKET carries a character in the scan code; the record has no field for it,
        // and the virtual-key code alone says only "other".
        let out = run(&[
            key(10, WM_KEYDOWN, 0xE7, LLKHF_INJECTED),
            key(20, WM_KEYUP, 0xE7, LLKHF_INJECTED),
        ]);
        assert_eq!(
            kinds(&out),
            vec![
                EventKind::KeyDown {
                    class: KeyClass::Other
                },
                EventKind::KeyUp {
                    class: KeyClass::Other,
                    held_us: 10
                },
            ]
        );
    }

    #[test]
    fn pointer_buttons_and_wheels() {
        let wheel = |d: i16| u32::from(d as u16) << 16;
        let out = run(&[
            mouse(100, WM_MOUSEMOVE, 500, 300, 0),
            mouse(108, WM_MOUSEMOVE, 503, 296, 0),
            mouse(116, WM_MOUSEMOVE, 503, 296, 0),
            mouse(120, WM_LBUTTONDOWN, 503, 296, 0),
            mouse(200, WM_LBUTTONUP, 503, 296, 0),
            mouse(210, WM_RBUTTONDOWN, 503, 296, 0),
            mouse(230, WM_RBUTTONUP, 503, 296, 0),
            mouse(240, WM_XBUTTONDOWN, 503, 296, 1 << 16),
            mouse(250, WM_XBUTTONDOWN, 503, 296, 2 << 16),
            mouse(260, WM_XBUTTONUP, 503, 296, 2 << 16),
            mouse(270, WM_XBUTTONUP, 503, 296, 1 << 16),
            mouse(300, WM_MOUSEWHEEL, 503, 296, wheel(240)),
            mouse(310, WM_MOUSEWHEEL, 503, 296, wheel(-120)),
            mouse(320, WM_MOUSEWHEEL, 503, 296, wheel(-60)), // half a detent: carried
            mouse(330, WM_MOUSEWHEEL, 503, 296, wheel(-60)),
            mouse(340, WM_MOUSEHWHEEL, 503, 296, wheel(120)),
        ]);
        use EventKind::*;
        use ScrollDirection as S;
        assert_eq!(
            kinds(&out),
            vec![
                PointerMove { dx: 3, dy: -4 },
                ButtonDown {
                    button: Button::Left
                },
                ButtonUp {
                    button: Button::Left,
                    held_us: 80
                },
                ButtonDown {
                    button: Button::Right
                },
                ButtonUp {
                    button: Button::Right,
                    held_us: 20
                },
                ButtonDown {
                    button: Button::Other
                },
                ButtonDown {
                    button: Button::Other
                },
                ButtonUp {
                    button: Button::Other,
                    held_us: 10
                },
                ButtonUp {
                    button: Button::Other,
                    held_us: 30
                },
                Scroll { direction: S::Up },
                Scroll { direction: S::Up },
                Scroll { direction: S::Down },
                Scroll { direction: S::Down },
                Scroll {
                    direction: S::Right
                },
            ]
        );
    }

    #[test]
    fn reset_forgets_held_keys_and_the_cursor() {
        let mut t = HookTranslator::new();
        let mut out = Vec::new();
        t.translate(key(10, WM_KEYDOWN, 0x41, 0), &mut |e| out.push(e));
        t.translate(mouse(10, WM_MOUSEMOVE, 5, 5, 0), &mut |e| out.push(e));
        t.reset();
        t.translate(key(20, WM_KEYUP, 0x41, 0), &mut |e| out.push(e));
        t.translate(mouse(30, WM_MOUSEMOVE, 50, 50, 0), &mut |e| out.push(e));
        assert_eq!(out.len(), 1, "only the first press: {out:?}");
    }
}
