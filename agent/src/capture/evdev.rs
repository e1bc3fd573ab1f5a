//! Linux evdev input: decoding `struct input_event` streams and choosing devices by their
//! capabilities. The device handling itself (opening `/dev/input/event*`, the ioctls, poll and
//! hot-plug) is the Linux-only [`device`] file; everything here is plain Rust that builds and is
//! tested on every OS, fed with recorded byte streams through [`pump`], the very function that
//! reads the devices.
//!
//! Hands on [`InputEvent`]s: key down/up with a coarse [`KeyClass`](super::KeyClass) and the
//! hold time, pointer motion as deltas (mice: the device's relative motion; touchpads: the
//! one-finger movement between two reports), buttons, scroll steps, each stamped with the
//! kernel's own event time mapped onto the agent's [`MonoClock`](super::MonoClock).
//!
//! Must never: translate a key code into anything but its class (no keymap, no xkbcommon, no
//! key-symbol table of any kind); read the scan codes the kernel reports as `EV_MSC/MSC_SCAN`;
//! let a key code or an absolute touchpad position out of this file; grab a device (other
//! programs, the compositor first, must keep receiving every event).
//!
//! # What the kernel sends
//!
//! Reading an event device returns whole `struct input_event` records, in the machine's byte
//! order. The record has two layouts:
//!
//! | layout   | where                                      | bytes | time fields                     |
//! |----------|--------------------------------------------|-------|---------------------------------|
//! | `Time64` | 64-bit kernels (and the x32 ABI)           | 24    | `sec: i64` at 0, `usec: i64` at 8 |
//! | `Time32` | 32-bit kernels                              | 16    | `sec: u32` at 0, `usec: u32` at 4 |
//!
//! followed by `type: u16`, `code: u16`, `value: i32`. What is used:
//!
//! | type        | code                              | value                  | becomes |
//! |-------------|-----------------------------------|------------------------|---------|
//! | `EV_SYN` 0  | `SYN_REPORT` 0                    | –                      | end of a packet: the packet's motion is emitted |
//! | `EV_SYN` 0  | `SYN_DROPPED` 3                   | –                      | the kernel's buffer overflowed: a [`EventKind::Gap`]; everything up to the next `SYN_REPORT` is ignored, held keys are forgotten |
//! | `EV_KEY` 1  | `KEY_*` (below 0x100, 0x160..0x2ff) | 1 press, 0 release, 2 auto-repeat (skipped) | key down/up |
//! | `EV_KEY` 1  | `BTN_LEFT`..`BTN_TASK` 0x110..0x117 | 1 press, 0 release     | button down/up |
//! | `EV_KEY` 1  | `BTN_TOOL_FINGER` 0x145           | 1 one finger on a touchpad, 0 not | touchpad tracking |
//! | `EV_REL` 2  | `REL_X` 0, `REL_Y` 1              | motion                 | summed per packet into one pointer move |
//! | `EV_REL` 2  | `REL_HWHEEL` 6, `REL_WHEEL` 8     | detents (+ = right/up) | one scroll step per detent |
//! | `EV_ABS` 3  | `ABS_X` 0, `ABS_Y` 1 (touchpads)  | absolute position      | kept only to compute the next delta |
//!
//! Everything else (other buttons, `EV_MSC`, `EV_LED`, high-resolution wheel duplicates,
//! multitouch slots) is skipped. A truncated trailing record is kept until the rest arrives;
//! nothing here can panic on malformed input.
//!
//! # Time
//!
//! The device module switches every device it opens to `CLOCK_MONOTONIC` event times (a per-
//! reader setting, `EVIOCSCLOCKID`), the clock Rust's `Instant`, and so the agent's
//! `MonoClock`, reads on Linux: the offset between the two is then known exactly when the
//! device is opened ([`KernelTimeMapper::known`]). Should a kernel refuse, event times are
//! wall-clock times, and the offset is estimated as for X11 server times
//! ([`KernelTimeMapper::estimating`]).
//!
//! Evdev carries no mark for injected input, and no event from it is flagged `injected`. A
//! virtual device (bus type `BUS_VIRTUAL`, made through uinput) is no evidence of injection:
//! key remappers create one and re-emit the person's own typing through it, and with one in
//! use every real key press arrives from a virtual device. An injector on Linux is left to
//! the guard's timing rules, which need no flag.

#[cfg(target_os = "linux")]
pub mod device;

use std::io::{self, Read};

use super::{Button, EventKind, InputEvent, PressTable, ScrollDirection, keyclass};

/// Event types (`linux/input-event-codes.h`).
pub const EV_SYN: u16 = 0x00;
/// Keys and buttons.
pub const EV_KEY: u16 = 0x01;
/// Relative axes.
pub const EV_REL: u16 = 0x02;
/// Absolute axes.
pub const EV_ABS: u16 = 0x03;
/// Miscellaneous (scan codes): never read.
pub const EV_MSC: u16 = 0x04;
/// `EV_SYN` codes.
pub const SYN_REPORT: u16 = 0;
/// The kernel dropped events from this reader's buffer.
pub const SYN_DROPPED: u16 = 3;
/// Relative axes.
pub const REL_X: u16 = 0x00;
/// Vertical relative motion.
pub const REL_Y: u16 = 0x01;
/// Horizontal wheel.
pub const REL_HWHEEL: u16 = 0x06;
/// Vertical wheel.
pub const REL_WHEEL: u16 = 0x08;
/// Absolute axes.
pub const ABS_X: u16 = 0x00;
/// Absolute vertical position.
pub const ABS_Y: u16 = 0x01;
/// Buttons.
pub const BTN_LEFT: u16 = 0x110;
/// Secondary button.
pub const BTN_RIGHT: u16 = 0x111;
/// Middle button.
pub const BTN_MIDDLE: u16 = 0x112;
/// The last of the mouse buttons (side, extra, forward, back, task follow the first three).
pub const BTN_TASK: u16 = 0x117;
/// A pen on a tablet.
pub const BTN_TOOL_PEN: u16 = 0x140;
/// One finger on a touchpad.
pub const BTN_TOOL_FINGER: u16 = 0x145;
/// Something touches the surface.
pub const BTN_TOUCH: u16 = 0x14a;
/// The 26 letter keys (Q..P, A..L, Z..M rows), which recognise a keyboard.
const LETTERS: [std::ops::RangeInclusive<u16>; 3] = [16..=25, 30..=38, 44..=50];
/// Number of key codes (`KEY_CNT`).
pub const KEY_CNT: usize = 0x300;
/// `BUS_VIRTUAL` in `struct input_id`: a device made by software (uinput).
pub const BUS_VIRTUAL: u16 = 0x06;

/// Layout of `struct input_event` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 24 bytes: 64-bit seconds and microseconds.
    Time64,
    /// 16 bytes: 32-bit seconds and microseconds.
    Time32,
}

impl Layout {
    /// The layout the running kernel uses: its `long` is the width of the time fields.
    pub const NATIVE: Layout = if cfg!(any(target_pointer_width = "64", target_arch = "x86_64")) {
        Layout::Time64
    } else {
        Layout::Time32
    };

    /// Size of one record.
    pub const fn record_len(self) -> usize {
        match self {
            Layout::Time64 => 24,
            Layout::Time32 => 16,
        }
    }

    /// Splits one record into its fields.
    fn parse(self, rec: &[u8]) -> Option<RawEvent> {
        let (sec, usec, rest) = match self {
            Layout::Time64 => {
                let sec = i64::from_ne_bytes(rec.get(0..8)?.try_into().ok()?);
                let usec = i64::from_ne_bytes(rec.get(8..16)?.try_into().ok()?);
                (sec, usec, rec.get(16..24)?)
            }
            Layout::Time32 => {
                let sec = u32::from_ne_bytes(rec.get(0..4)?.try_into().ok()?);
                let usec = u32::from_ne_bytes(rec.get(4..8)?.try_into().ok()?);
                (i64::from(sec), i64::from(usec), rec.get(8..16)?)
            }
        };
        Some(RawEvent {
            time_us: sec.saturating_mul(1_000_000).saturating_add(usec),
            kind: u16::from_ne_bytes([rest[0], rest[1]]),
            code: u16::from_ne_bytes([rest[2], rest[3]]),
            value: i32::from_ne_bytes([rest[4], rest[5], rest[6], rest[7]]),
        })
    }
}

/// One `struct input_event`, its time folded into microseconds.
#[derive(Debug, Clone, Copy)]
struct RawEvent {
    time_us: i64,
    kind: u16,
    code: u16,
    value: i32,
}

/// Builds one raw `struct input_event` record in `layout`, native byte order, as the kernel
/// would return it. A test and benchmark helper, like the X11 module's `encode_test_event`.
pub fn encode_test_event(
    layout: Layout,
    time_us: u64,
    kind: u16,
    code: u16,
    value: i32,
) -> Vec<u8> {
    let sec = time_us / 1_000_000;
    let usec = time_us % 1_000_000;
    let mut rec = Vec::with_capacity(layout.record_len());
    match layout {
        Layout::Time64 => {
            rec.extend_from_slice(&sec.to_ne_bytes());
            rec.extend_from_slice(&usec.to_ne_bytes());
        }
        Layout::Time32 => {
            rec.extend_from_slice(&(sec as u32).to_ne_bytes());
            rec.extend_from_slice(&(usec as u32).to_ne_bytes());
        }
    }
    rec.extend_from_slice(&kind.to_ne_bytes());
    rec.extend_from_slice(&code.to_ne_bytes());
    rec.extend_from_slice(&value.to_ne_bytes());
    rec
}

/// Maps kernel event times (microseconds) onto the agent's monotonic capture clock.
///
/// With a known offset (the device delivers `CLOCK_MONOTONIC` times, the clock behind the
/// agent's `MonoClock`), `t = event + offset` exactly. Otherwise the offset is the running
/// minimum of `arrival - event`, as for X11 server times: an event never arrives before it
/// happened, so the least-delayed one gives the best estimate. Either way emitted times never
/// go backwards (a clamp to the last one emitted), and never below zero.
#[derive(Debug, Clone)]
pub struct KernelTimeMapper {
    /// `None` until the first observation when estimating.
    offset_us: Option<i64>,
    /// Whether the offset is exact and observations must not move it.
    known: bool,
    /// The last time handed out, for the non-decreasing clamp.
    last_out_us: u64,
}

impl KernelTimeMapper {
    /// A mapper for event times on the same clock as the capture clock, `offset_us` apart.
    pub fn known(offset_us: i64) -> Self {
        KernelTimeMapper {
            offset_us: Some(offset_us),
            known: true,
            last_out_us: 0,
        }
    }

    /// A mapper that estimates the offset from arrival times.
    pub fn estimating() -> Self {
        KernelTimeMapper {
            offset_us: None,
            known: false,
            last_out_us: 0,
        }
    }

    /// Records that an event stamped `event_us` arrived at `arrival_us` (capture clock).
    pub fn observe(&mut self, event_us: i64, arrival_us: u64) {
        if self.known {
            return;
        }
        let arrival = i64::try_from(arrival_us).unwrap_or(i64::MAX);
        let candidate = arrival.saturating_sub(event_us);
        self.offset_us = Some(self.offset_us.map_or(candidate, |o| o.min(candidate)));
    }

    /// The capture-clock time of an event stamped `event_us`.
    pub fn map(&mut self, event_us: i64) -> u64 {
        let Some(offset) = self.offset_us else {
            return self.last_out_us;
        };
        let t = u64::try_from(event_us.saturating_add(offset)).unwrap_or(0);
        let t = t.max(self.last_out_us);
        self.last_out_us = t;
        t
    }
}

/// Decoding state of one open device: which keys and buttons it holds, the motion of the
/// packet being read, the touchpad finger's last position.
///
/// Key codes index a [`PressTable`] (to pair a release with its press and drop auto-repeat)
/// and pick a class; touchpad positions only feed the next delta. Neither leaves this type.
#[derive(Debug)]
pub struct DeviceDecoder {
    /// Record layout of the stream.
    layout: Layout,
    /// Held keys by evdev code.
    keys: PressTable,
    /// Held buttons, `BTN_LEFT..=BTN_TASK` as 0..8.
    buttons: PressTable,
    /// Relative motion of the current packet.
    rel: (i32, i32),
    /// Touchpad: one finger is down.
    finger: bool,
    /// Touchpad: position at the previous report, while the finger stays down.
    abs_last: Option<(i32, i32)>,
    /// Touchpad: position reported in the current packet (an axis that did not move is not
    /// reported, so it keeps its previous value).
    abs_now: (Option<i32>, Option<i32>),
    /// Time of the current packet (all events of a packet carry the same time).
    packet_us: u64,
    /// After `SYN_DROPPED`: skip everything up to and including the next `SYN_REPORT`.
    dropping: bool,
    /// Bytes of a record not yet complete (only a generic reader splits records).
    partial: Vec<u8>,
}

impl DeviceDecoder {
    /// A decoder for a stream in `layout`.
    pub fn new(layout: Layout) -> Self {
        DeviceDecoder {
            layout,
            keys: PressTable::new(KEY_CNT),
            buttons: PressTable::new(usize::from(BTN_TASK - BTN_LEFT) + 1),
            rel: (0, 0),
            finger: false,
            abs_last: None,
            abs_now: (None, None),
            packet_us: 0,
            dropping: false,
            partial: Vec::new(),
        }
    }

    /// Forgets held keys, buttons and the touchpad position (input was lost).
    pub fn reset(&mut self) {
        self.keys.clear();
        self.buttons.clear();
        self.rel = (0, 0);
        self.finger = false;
        self.abs_last = None;
        self.abs_now = (None, None);
    }

    /// Decodes bytes read from the device, which arrived at `arrival_us` on the capture
    /// clock, calling `out` for every event in order. A record split across calls is joined.
    pub fn decode(
        &mut self,
        data: &[u8],
        arrival_us: u64,
        time: &mut KernelTimeMapper,
        out: &mut impl FnMut(InputEvent),
    ) {
        let len = self.layout.record_len();
        let mut joined = std::mem::take(&mut self.partial);
        let bytes: &[u8] = if joined.is_empty() {
            data
        } else {
            joined.extend_from_slice(data);
            &joined
        };
        let whole = bytes.len() - bytes.len() % len;
        let (records, rest) = bytes.split_at(whole);
        // Two passes, as for X11: the whole batch refines an estimated offset first.
        for rec in records.chunks_exact(len) {
            if let Some(ev) = self.layout.parse(rec) {
                time.observe(ev.time_us, arrival_us);
            }
        }
        for rec in records.chunks_exact(len) {
            if let Some(ev) = self.layout.parse(rec) {
                let t_us = time.map(ev.time_us);
                self.event(ev, t_us, out);
            }
        }
        self.partial = rest.to_vec();
    }

    fn emit(&self, out: &mut impl FnMut(InputEvent), t_us: u64, kind: EventKind) {
        out(InputEvent {
            t_us,
            kind,
            injected: false,
        });
    }

    fn event(&mut self, ev: RawEvent, t_us: u64, out: &mut impl FnMut(InputEvent)) {
        self.packet_us = t_us;
        if self.dropping {
            if ev.kind == EV_SYN && ev.code == SYN_REPORT {
                self.dropping = false;
            }
            return;
        }
        match (ev.kind, ev.code) {
            (EV_SYN, SYN_DROPPED) => {
                self.dropping = true;
                self.reset();
                self.emit(out, t_us, EventKind::Gap);
            }
            (EV_SYN, SYN_REPORT) => self.end_packet(out),
            (EV_KEY, BTN_LEFT..=BTN_TASK) => self.button(ev.code, ev.value, t_us, out),
            (EV_KEY, BTN_TOOL_FINGER) => {
                self.finger = ev.value != 0;
                if !self.finger {
                    self.abs_last = None;
                    self.abs_now = (None, None);
                }
            }
            // The rest of the BTN_* range (joystick, tablet, touch tools) is not a key.
            (EV_KEY, 0x100..=0x15f) => {}
            (EV_KEY, code) => self.key(code, ev.value, t_us, out),
            (EV_REL, REL_X) => self.rel.0 = self.rel.0.saturating_add(ev.value),
            (EV_REL, REL_Y) => self.rel.1 = self.rel.1.saturating_add(ev.value),
            (EV_REL, REL_WHEEL) => {
                let d = if ev.value > 0 {
                    ScrollDirection::Up
                } else {
                    ScrollDirection::Down
                };
                self.scroll(d, ev.value, t_us, out);
            }
            (EV_REL, REL_HWHEEL) => {
                let d = if ev.value > 0 {
                    ScrollDirection::Right
                } else {
                    ScrollDirection::Left
                };
                self.scroll(d, ev.value, t_us, out);
            }
            (EV_ABS, ABS_X) => self.abs_now.0 = Some(ev.value),
            (EV_ABS, ABS_Y) => self.abs_now.1 = Some(ev.value),
            _ => {}
        }
    }

    fn key(&mut self, code: u16, value: i32, t_us: u64, out: &mut impl FnMut(InputEvent)) {
        let class = keyclass::from_evdev(code);
        let code = usize::from(code);
        // 2 is auto-repeat: not a new press.
        let kind = match value {
            1 => self
                .keys
                .press(code, t_us)
                .then_some(EventKind::KeyDown { class }),
            0 => self
                .keys
                .release(code, t_us)
                .map(|held_us| EventKind::KeyUp { class, held_us }),
            _ => None,
        };
        if let Some(kind) = kind {
            self.emit(out, t_us, kind);
        }
    }

    fn button(&mut self, code: u16, value: i32, t_us: u64, out: &mut impl FnMut(InputEvent)) {
        let button = match code {
            BTN_LEFT => Button::Left,
            BTN_RIGHT => Button::Right,
            BTN_MIDDLE => Button::Middle,
            _ => Button::Other,
        };
        let slot = usize::from(code - BTN_LEFT);
        let kind = match value {
            1 => self
                .buttons
                .press(slot, t_us)
                .then_some(EventKind::ButtonDown { button }),
            0 => self
                .buttons
                .release(slot, t_us)
                .map(|held_us| EventKind::ButtonUp { button, held_us }),
            _ => None,
        };
        if let Some(kind) = kind {
            self.emit(out, t_us, kind);
        }
    }

    fn scroll(
        &mut self,
        direction: ScrollDirection,
        detents: i32,
        t_us: u64,
        out: &mut impl FnMut(InputEvent),
    ) {
        // One step per detent, as X11 reports one button press per detent; bounded so that a
        // garbage value cannot flood the queue.
        for _ in 0..detents.unsigned_abs().min(64) {
            self.emit(out, t_us, EventKind::Scroll { direction });
        }
    }

    /// `SYN_REPORT`: the packet is complete; its motion becomes one pointer move.
    fn end_packet(&mut self, out: &mut impl FnMut(InputEvent)) {
        let t_us = self.packet_us;
        let (dx, dy) = std::mem::take(&mut self.rel);
        if dx != 0 || dy != 0 {
            self.emit(out, t_us, EventKind::PointerMove { dx, dy });
        }
        if self.finger {
            let prev = self.abs_last;
            let now = match (self.abs_now, prev) {
                ((Some(x), Some(y)), _) => Some((x, y)),
                ((Some(x), None), Some((_, py))) => Some((x, py)),
                ((None, Some(y)), Some((px, _))) => Some((px, y)),
                (_, p) => p,
            };
            self.abs_now = (None, None);
            if let (Some((px, py)), Some((x, y))) = (prev, now) {
                let (dx, dy) = (x.saturating_sub(px), y.saturating_sub(py));
                if dx != 0 || dy != 0 {
                    self.emit(out, t_us, EventKind::PointerMove { dx, dy });
                }
            }
            self.abs_last = now;
        }
    }
}

/// What [`pump`] found when it stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Nothing more to read for now (a non-blocking device would block).
    Drained,
    /// The stream ended (end of a recorded stream; a device never ends this way).
    Ended,
}

/// Records read per `read` call: a device returns whole records, at most what fits.
const READ_RECORDS: usize = 64;

/// Reads everything `reader` has now, decoding it. The one path from bytes to events: the
/// device loop calls it on each readable device, tests on recorded streams.
///
/// `arrival_us` is called after each read, for the capture-clock time the bytes arrived.
/// Returns an error for a failed read (a device that went away reports `ENODEV`).
pub fn pump(
    reader: &mut impl Read,
    decoder: &mut DeviceDecoder,
    time: &mut KernelTimeMapper,
    arrival_us: &mut impl FnMut() -> u64,
    out: &mut impl FnMut(InputEvent),
) -> io::Result<Pumped> {
    let mut buf = [0u8; READ_RECORDS * 24];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(Pumped::Ended),
            Ok(n) => {
                let arrival = arrival_us();
                decoder.decode(&buf[..n], arrival, time, out);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Pumped::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What a device can report, as the kernel's capability bitmaps give it (`EVIOCGBIT`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Event types (bit per `EV_*`).
    pub types: Vec<u8>,
    /// Key and button codes (bit per code, `KEY_CNT` bits).
    pub keys: Vec<u8>,
    /// Relative axes.
    pub rel: Vec<u8>,
    /// Absolute axes.
    pub abs: Vec<u8>,
}

/// What capture reads a device as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Role {
    /// Has letter keys.
    pub keyboard: bool,
    /// A relative pointer with a left button (a mouse, a trackball, a trackpoint).
    pub pointer: bool,
    /// An absolute pointer operated by a finger (a touchpad).
    pub touchpad: bool,
}

impl Role {
    /// Whether capture reads the device at all.
    pub fn is_used(self) -> bool {
        self.keyboard || self.pointer || self.touchpad
    }
}

fn bit(map: &[u8], n: u16) -> bool {
    map.get(usize::from(n / 8))
        .is_some_and(|b| b & (1 << (n % 8)) != 0)
}

impl Capabilities {
    /// Keyboards have the letter keys (a power button, a lid switch or a remote's volume keys
    /// do not); pointers move relatively and have a left button; touchpads report an absolute
    /// finger position (a touchscreen has no finger tool; a tablet has a pen).
    pub fn role(&self) -> Role {
        let has_keys = bit(&self.types, EV_KEY);
        let keyboard = has_keys
            && LETTERS
                .into_iter()
                .flatten()
                .filter(|&k| bit(&self.keys, k))
                .count()
                >= 20;
        let pointer = has_keys
            && bit(&self.types, EV_REL)
            && bit(&self.rel, REL_X)
            && bit(&self.rel, REL_Y)
            && bit(&self.keys, BTN_LEFT);
        let touchpad = has_keys
            && bit(&self.types, EV_ABS)
            && bit(&self.abs, ABS_X)
            && bit(&self.abs, ABS_Y)
            && bit(&self.keys, BTN_TOOL_FINGER)
            && !bit(&self.keys, BTN_TOOL_PEN);
        Role {
            keyboard,
            pointer,
            touchpad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::KeyClass;

    const L: Layout = Layout::NATIVE;

    fn rec(layout: Layout, t_us: u64, kind: u16, code: u16, value: i32) -> Vec<u8> {
        encode_test_event(layout, t_us, kind, code, value)
    }

    /// A key press or release followed by its SYN_REPORT, as a keyboard sends it.
    fn key(layout: Layout, t_us: u64, code: u16, value: i32) -> Vec<u8> {
        [
            rec(layout, t_us, EV_MSC, 4, 0x70004), // MSC_SCAN: must be ignored
            rec(layout, t_us, EV_KEY, code, value),
            rec(layout, t_us, EV_SYN, SYN_REPORT, 0),
        ]
        .concat()
    }

    fn run(layout: Layout, bytes: &[u8]) -> Vec<InputEvent> {
        let mut d = DeviceDecoder::new(layout);
        let mut time = KernelTimeMapper::known(0);
        let mut out = Vec::new();
        let r = pump(&mut &bytes[..], &mut d, &mut time, &mut || 0, &mut |e| {
            out.push(e)
        });
        assert_eq!(r.ok(), Some(Pumped::Ended));
        out
    }

    fn kinds(evs: &[InputEvent]) -> Vec<EventKind> {
        evs.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn both_layouts_decode_the_same_keys() {
        for layout in [Layout::Time64, Layout::Time32] {
            let bytes = [
                key(layout, 1_000_000, 30, 1),
                key(layout, 1_250_000, 30, 2), // auto-repeat
                key(layout, 1_300_000, 30, 2),
                key(layout, 1_350_000, 42, 1),
                key(layout, 1_400_123, 30, 0),
                key(layout, 1_500_000, 42, 0),
                key(layout, 1_600_000, 57, 0), // released, never pressed
            ]
            .concat();
            assert_eq!(bytes.len() % layout.record_len(), 0);
            let out = run(layout, &bytes);
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
                        held_us: 400_123
                    },
                    KeyUp {
                        class: KeyClass::Modifier,
                        held_us: 150_000
                    },
                ],
                "{layout:?}"
            );
            let times: Vec<u64> = out.iter().map(|e| e.t_us).collect();
            assert_eq!(times, vec![1_000_000, 1_350_000, 1_400_123, 1_500_000]);
            assert!(out.iter().all(|e| !e.injected));
        }
    }

    #[test]
    fn records_split_across_reads_are_joined() {
        /// Hands out at most `step` bytes per read, as no device does but any `Read` may.
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.1.min(buf.len()).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let bytes = [key(L, 10, 30, 1), key(L, 90, 30, 0)].concat();
        let whole = run(L, &bytes);
        for step in [1, 5, 7, 23, 25] {
            let mut d = DeviceDecoder::new(L);
            let mut time = KernelTimeMapper::known(0);
            let mut out = Vec::new();
            let r = pump(
                &mut Trickle(&bytes, step),
                &mut d,
                &mut time,
                &mut || 0,
                &mut |e| out.push(e),
            );
            assert_eq!(r.ok(), Some(Pumped::Ended));
            assert_eq!(out, whole, "step {step}");
        }
    }

    #[test]
    fn motion_is_summed_per_packet_and_buttons_and_wheels_decode() {
        let b = [
            rec(L, 100, EV_REL, REL_X, 3),
            rec(L, 100, EV_REL, REL_Y, -4),
            rec(L, 100, EV_SYN, SYN_REPORT, 0),
            rec(L, 108, EV_REL, REL_X, 2),
            rec(L, 108, EV_REL, REL_X, 1), // two reports of one axis in a packet
            rec(L, 108, EV_SYN, SYN_REPORT, 0),
            rec(L, 200, EV_KEY, BTN_LEFT, 1),
            rec(L, 200, EV_SYN, SYN_REPORT, 0),
            rec(L, 280, EV_KEY, BTN_LEFT, 0),
            rec(L, 280, EV_SYN, SYN_REPORT, 0),
            rec(L, 300, EV_KEY, BTN_RIGHT, 1),
            rec(L, 310, EV_KEY, BTN_RIGHT, 0),
            rec(L, 320, EV_KEY, 0x113, 1), // BTN_SIDE
            rec(L, 330, EV_KEY, 0x113, 0),
            rec(L, 400, EV_REL, REL_WHEEL, -2),
            rec(L, 400, EV_REL, 0x0b, -240), // REL_WHEEL_HI_RES: a duplicate, skipped
            rec(L, 400, EV_SYN, SYN_REPORT, 0),
            rec(L, 410, EV_REL, REL_HWHEEL, 1),
            rec(L, 410, EV_SYN, SYN_REPORT, 0),
        ]
        .concat();
        use EventKind::*;
        use ScrollDirection as S;
        assert_eq!(
            kinds(&run(L, &b)),
            vec![
                PointerMove { dx: 3, dy: -4 },
                PointerMove { dx: 3, dy: 0 },
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
                    held_us: 10
                },
                ButtonDown {
                    button: Button::Other
                },
                ButtonUp {
                    button: Button::Other,
                    held_us: 10
                },
                Scroll { direction: S::Down },
                Scroll { direction: S::Down },
                Scroll {
                    direction: S::Right
                },
            ]
        );
    }

    #[test]
    fn touchpad_finger_motion_becomes_deltas_never_positions() {
        let b = [
            rec(L, 100, EV_KEY, BTN_TOOL_FINGER, 1),
            rec(L, 100, EV_KEY, BTN_TOUCH, 1),
            rec(L, 100, EV_ABS, ABS_X, 2000),
            rec(L, 100, EV_ABS, ABS_Y, 3000),
            rec(L, 100, EV_SYN, SYN_REPORT, 0),
            rec(L, 110, EV_ABS, ABS_X, 2010),
            rec(L, 110, EV_SYN, SYN_REPORT, 0),
            rec(L, 120, EV_ABS, ABS_Y, 2990),
            rec(L, 120, EV_SYN, SYN_REPORT, 0),
            rec(L, 130, EV_KEY, BTN_TOOL_FINGER, 0),
            rec(L, 130, EV_KEY, BTN_TOUCH, 0),
            rec(L, 130, EV_SYN, SYN_REPORT, 0),
            // A new touch elsewhere is a new origin, not a jump.
            rec(L, 200, EV_KEY, BTN_TOOL_FINGER, 1),
            rec(L, 200, EV_ABS, ABS_X, 100),
            rec(L, 200, EV_ABS, ABS_Y, 100),
            rec(L, 200, EV_SYN, SYN_REPORT, 0),
            rec(L, 210, EV_ABS, ABS_X, 105),
            rec(L, 210, EV_ABS, ABS_Y, 95),
            rec(L, 210, EV_SYN, SYN_REPORT, 0),
        ]
        .concat();
        use EventKind::PointerMove;
        assert_eq!(
            kinds(&run(L, &b)),
            vec![
                PointerMove { dx: 10, dy: 0 },
                PointerMove { dx: 0, dy: -10 },
                PointerMove { dx: 5, dy: -5 },
            ]
        );
    }

    #[test]
    fn syn_dropped_is_a_gap_and_skips_to_the_next_report() {
        let b = [
            key(L, 100, 30, 1),
            rec(L, 150, EV_SYN, SYN_DROPPED, 0),
            rec(L, 160, EV_KEY, 31, 1), // part of the damaged packet: ignored
            rec(L, 160, EV_SYN, SYN_REPORT, 0),
            key(L, 170, 30, 0), // its press was before the gap: unpaired
            key(L, 200, 32, 1),
            key(L, 260, 32, 0),
        ]
        .concat();
        let c = KeyClass::Character;
        use EventKind::*;
        assert_eq!(
            kinds(&run(L, &b)),
            vec![
                KeyDown { class: c },
                Gap,
                KeyDown { class: c },
                KeyUp {
                    class: c,
                    held_us: 60
                },
            ]
        );
    }

    #[test]
    fn no_evdev_event_is_marked_injected() {
        // Whatever device it comes from (a key remapper's virtual one included), evdev input
        // is never flagged: the flag would make the guard treat the person's typing as a
        // script's.
        let mut d = DeviceDecoder::new(L);
        let mut time = KernelTimeMapper::known(0);
        let mut out = Vec::new();
        for (i, code) in [30u16, 31, 32].into_iter().enumerate() {
            let t = 1_000 + i as u64 * 100_000;
            d.decode(&key(L, t, code, 1), 0, &mut time, &mut |e| out.push(e));
            d.decode(&key(L, t + 50_000, code, 0), 0, &mut time, &mut |e| {
                out.push(e)
            });
        }
        assert_eq!(out.len(), 6);
        assert!(out.iter().all(|e| !e.injected), "{out:?}");
    }

    #[test]
    fn estimated_offset_uses_the_least_delayed_batch_and_never_goes_back() {
        let mut m = KernelTimeMapper::estimating();
        assert_eq!(m.map(5), 0, "nothing observed yet");
        // Wall-clock event times (seconds since 1970) onto a clock that started recently.
        let base = 1_790_000_000_000_000i64;
        m.observe(base, 10_040);
        assert_eq!(m.map(base), 10_040);
        m.observe(base + 100_000, 110_002);
        assert_eq!(m.map(base + 100_000), 110_002);
        // The offset fell by 38 µs; an earlier event mapped now is clamped, not moved back.
        assert_eq!(m.map(base + 50), 110_002);
        // A known offset ignores arrivals.
        let mut k = KernelTimeMapper::known(-1_000);
        k.observe(0, 0);
        assert_eq!(k.map(5_000), 4_000);
        assert_eq!(k.map(10), 4_000);
        let mut k = KernelTimeMapper::known(i64::MIN);
        assert_eq!(k.map(i64::MIN), 0);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(11);
        for layout in [Layout::Time64, Layout::Time32] {
            let mut d = DeviceDecoder::new(layout);
            let mut time = KernelTimeMapper::estimating();
            for len in 0..500 {
                let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                d.decode(&bytes, rng.u64(..), &mut time, &mut |_| {});
            }
            // Extreme values in well-formed records.
            for (kind, code, value) in [
                (EV_REL, REL_WHEEL, i32::MIN),
                (EV_REL, REL_X, i32::MAX),
                (EV_REL, REL_X, i32::MAX),
                (EV_KEY, u16::MAX, 1),
                (EV_ABS, ABS_X, i32::MIN),
                (EV_SYN, SYN_REPORT, 0),
            ] {
                let r = encode_test_event(layout, u64::MAX, kind, code, value);
                d.decode(&r, 0, &mut time, &mut |_| {});
            }
        }
    }

    fn caps(types: &[u16], keys: &[u16], rel: &[u16], abs: &[u16]) -> Capabilities {
        fn map(bits: &[u16], n: usize) -> Vec<u8> {
            let mut m = vec![0u8; n.div_ceil(8)];
            for &b in bits {
                m[usize::from(b / 8)] |= 1 << (b % 8);
            }
            m
        }
        Capabilities {
            types: map(types, 32),
            keys: map(keys, KEY_CNT),
            rel: map(rel, 16),
            abs: map(abs, 64),
        }
    }

    #[test]
    fn devices_are_chosen_by_their_capabilities() {
        let letters: Vec<u16> = (1..=88).collect();
        let keyboard = caps(&[EV_SYN, EV_KEY, EV_MSC], &letters, &[], &[]);
        assert_eq!(
            keyboard.role(),
            Role {
                keyboard: true,
                ..Role::default()
            }
        );
        let mouse = caps(
            &[EV_SYN, EV_KEY, EV_REL],
            &[BTN_LEFT, BTN_RIGHT, BTN_MIDDLE],
            &[REL_X, REL_Y, REL_WHEEL],
            &[],
        );
        assert!(mouse.role().pointer && !mouse.role().keyboard);
        let touchpad = caps(
            &[EV_SYN, EV_KEY, EV_ABS],
            &[BTN_LEFT, BTN_TOOL_FINGER, BTN_TOUCH],
            &[],
            &[ABS_X, ABS_Y],
        );
        assert!(touchpad.role().touchpad && !touchpad.role().pointer);
        let power_button = caps(&[EV_SYN, EV_KEY], &[116], &[], &[]);
        assert!(!power_button.role().is_used());
        let tablet = caps(
            &[EV_SYN, EV_KEY, EV_ABS],
            &[BTN_TOOL_PEN, BTN_TOOL_FINGER, BTN_TOUCH],
            &[],
            &[ABS_X, ABS_Y],
        );
        assert!(!tablet.role().is_used());
        let touchscreen = caps(
            &[EV_SYN, EV_KEY, EV_ABS],
            &[BTN_TOUCH],
            &[],
            &[ABS_X, ABS_Y],
        );
        assert!(!touchscreen.role().is_used());
        let combo = caps(
            &[EV_SYN, EV_KEY, EV_REL],
            &[&letters[..], &[BTN_LEFT]].concat(),
            &[REL_X, REL_Y],
            &[],
        );
        assert!(combo.role().keyboard && combo.role().pointer);
        assert!(!Capabilities::default().role().is_used());
    }
}
