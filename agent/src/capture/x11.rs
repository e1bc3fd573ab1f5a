//! Linux X11 capture over the RECORD extension (XRecord), through x11rb's pure-Rust client.
//!
//! Owns the two X connections RECORD needs, the recording context, and the decoding of the
//! intercepted device events. Hands on [`InputEvent`]s: key down/up with a coarse
//! [`KeyClass`](super::KeyClass) and the hold time, pointer motion as deltas, buttons, scroll
//! steps, each stamped with the X server's own event time mapped onto the agent's
//! [`MonoClock`].
//!
//! Must never: call any key-to-text or keyboard-layout function (no keyboard-mapping request,
//! no key-symbol lookup, no XKB); let a key code or an absolute pointer position out of this
//! file; stamp an event with its arrival time; block or slow down the X server. Pure Rust means
//! a lost X server comes back as [`CaptureError::Lost`], never as a process exit (Xlib's
//! default I/O error handler calls `exit(1)`).
//!
//! # What the X server sends
//!
//! The recording context selects *device events* `KeyPress..=MotionNotify` (types 2 to 6) from
//! all clients, with no element headers (`element_header` 0). The server then answers the
//! `RecordEnableContext` request on the data connection with a stream of replies: one
//! `StartOfData` (category 4), any number of `FromServer` (category 0) replies, and a final
//! `EndOfData` (category 5) after `RecordDisableContext`. Each `FromServer` reply's `data` is a
//! plain concatenation of 32-byte core protocol events, in the byte order of the *recording*
//! client (the server swaps device events for a swapped recording client; x11rb always
//! connects in the machine's native order, so fields are read with native endianness). One
//! event record, field by field:
//!
//! | bytes  | field        | use here                                                        |
//! |--------|--------------|-----------------------------------------------------------------|
//! | 0      | type         | 2 KeyPress, 3 KeyRelease, 4 ButtonPress, 5 ButtonRelease, 6 MotionNotify; bit 7 set = sent by `SendEvent` (synthesized); other types skipped |
//! | 1      | detail       | key code (keys), button number (buttons), hint flag (motion)    |
//! | 2..4   | sequence     | ignored (meaningless for device events)                         |
//! | 4..8   | time         | server time in ms (u32, wraps every ~49.7 days): the event time |
//! | 8..20  | root, event, child windows | ignored (window identity never leaves capture) |
//! | 20..22 | root_x (i16) | MotionNotify only: absolute position, kept to compute deltas    |
//! | 22..24 | root_y (i16) | as root_x                                                       |
//! | 24..32 | event_x, event_y, state, same_screen, pad | ignored                    |
//!
//! Invariants the decoder relies on and checks: a record is exactly 32 bytes (a GenericEvent,
//! type 35, would be longer and is skipped by its length field should a server ever send
//! one); a truncated trailing record is ignored, never read past.
//!
//! Core device events carry no mark for input injected through XTEST (what `xdotool` and a
//! remote-control tool use), so `injected` is set only for the `SendEvent` bit; telling
//! injected typing apart is left to the timing-based detectors downstream.
//!
//! # Time
//!
//! The server buffers recorded data (up to 1 KiB per context) and may hand several events over
//! in one reply, so arrival time compresses intervals. Every event's own server time is mapped
//! onto the monotonic clock by [`ServerTimeMapper`]; see there for the estimate and its limits.
//!
//! # Stopping
//!
//! The data connection blocks in a read for as long as the context is enabled, so it cannot
//! poll the stop flag itself without a busy loop. A small watcher thread holds the control
//! connection, sleeps on the flag (waking every 2 s only to notice a data loop that ended by
//! itself) and, once the flag is raised, disables the context every 150 ms until the server
//! ends the enable stream with `EndOfData` and `run` returns.

use std::sync::mpsc;
use std::time::Duration;

use x11rb::connection::{Connection, RequestConnection};
use x11rb::errors::{ConnectionError, ReplyError, ReplyOrIdError};
use x11rb::protocol::record::{self, ConnectionExt as _};
use x11rb::reexports::x11rb_protocol::parse_display::parse_display;
use x11rb::rust_connection::RustConnection;

use super::{
    Button, CaptureError, EventKind, EventSink, InputEvent, InputSource, MonoClock, PressTable,
    Push, ScrollDirection, StopFlag, keyclass,
};

/// Core protocol event type codes (X11 protocol, section "Events").
const KEY_PRESS: u8 = 2;
const KEY_RELEASE: u8 = 3;
const BUTTON_PRESS: u8 = 4;
const BUTTON_RELEASE: u8 = 5;
const MOTION_NOTIFY: u8 = 6;
/// XGE GenericEvent: the only event longer than 32 bytes; skipped by its length field.
const GENERIC_EVENT: u8 = 35;
/// Bit 7 of the type byte marks an event sent with `SendEvent` rather than by a device.
const SEND_EVENT_BIT: u8 = 0x80;
/// Size of one core event record.
const EVENT_LEN: usize = 32;

/// RECORD reply categories (the RECORD spec; x11rb has no enumeration for them).
const CATEGORY_FROM_SERVER: u8 = 0;
const CATEGORY_START_OF_DATA: u8 = 4;

/// X11's TCP port for display 0; display N listens on this plus N.
const X11_TCP_PORT_BASE: u16 = 6000;

/// How often the watcher thread looks at the stop flag: bounds how long `stop.raise()` takes
/// to end `run` (plus one round trip to the server), without a busy loop.
const STOP_POLL: Duration = Duration::from_millis(150);
/// How often the idle watcher checks whether the data loop ended by itself (lost server).
const STOP_IDLE_CHECK: Duration = Duration::from_secs(2);

/// Maps the X server's millisecond event times onto the agent's monotonic microsecond clock.
///
/// X event times are milliseconds of the server's own clock (a `u32` that wraps after
/// 2^32 ms, about 49.7 days). The mapping is `t = server_us + offset`, where `offset` is the
/// running minimum of `arrival_us - server_us` over every event seen: an event never arrives
/// before it happened, and buffering on the way (XRecord batches its data) only ever makes
/// arrival later, so the smallest difference is the best estimate of the true offset, and
/// mapped times are never later than arrival. Observe a whole batch before mapping any of it
/// ([`RecordDecoder::decode`] does), so that the batch's least-delayed event sets the offset
/// for all of them and their intervals come out as the server measured them.
///
/// Emitted times never go backwards: when a later estimate improves (lowers) the offset, or
/// events arrive out of order, a time that would precede the last one emitted is clamped to
/// it. Unwrapping follows the signed difference to the previous server time, so it tolerates
/// wrap-around and reordering of up to 2^31 ms either way.
///
/// Limit: the offset can only fall. If the server's clock ran slower than ours (a remote X
/// server on another machine), mapped times would slowly drift early in absolute terms;
/// intervals, which are all the features use, stay exact. A local server uses the same
/// monotonic clock as the agent.
#[derive(Debug, Clone, Default)]
pub struct ServerTimeMapper {
    /// The last observed raw server time and its unwrapped value in ms: the reference point
    /// for unwrapping the next one.
    reference: Option<(u32, i64)>,
    /// Running minimum of `arrival_us - server_us`; `None` until the first observation.
    offset_us: Option<i64>,
    /// The last time handed out, for the non-decreasing clamp.
    last_out_us: u64,
}

impl ServerTimeMapper {
    /// A mapper that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Unwraps a raw server time relative to the reference, without moving the reference.
    fn unwrap_ms(&self, server_ms: u32) -> i64 {
        match self.reference {
            None => i64::from(server_ms),
            // Reinterpreting the wrapping difference as i32 is what makes a wrap (a huge
            // backwards jump) read as a small step forward, and vice versa.
            Some((raw, unwrapped)) => {
                unwrapped.saturating_add(i64::from(server_ms.wrapping_sub(raw) as i32))
            }
        }
    }

    /// Records that an event with server time `server_ms` arrived at `arrival_us` on the
    /// monotonic clock, refining the offset estimate.
    pub fn observe(&mut self, server_ms: u32, arrival_us: u64) {
        let unwrapped = self.unwrap_ms(server_ms);
        self.reference = Some((server_ms, unwrapped));
        let arrival = i64::try_from(arrival_us).unwrap_or(i64::MAX);
        let candidate = arrival.saturating_sub(unwrapped.saturating_mul(1000));
        self.offset_us = Some(match self.offset_us {
            Some(o) => o.min(candidate),
            None => candidate,
        });
    }

    /// Maps a server time (already passed to [`observe`](Self::observe), or close to one
    /// that was) onto the monotonic clock, never earlier than the previous result. Before any
    /// observation there is no offset, and the previous result (initially 0) is returned.
    pub fn map(&mut self, server_ms: u32) -> u64 {
        let Some(offset) = self.offset_us else {
            return self.last_out_us;
        };
        let t = self
            .unwrap_ms(server_ms)
            .saturating_mul(1000)
            .saturating_add(offset);
        let t = u64::try_from(t).unwrap_or(0).max(self.last_out_us);
        self.last_out_us = t;
        t
    }
}

/// Decodes XRecord `FromServer` data (32-byte core device events) into [`InputEvent`]s.
///
/// Pure: no X connection, no clock, so it is unit-tested with records built by
/// [`encode_test_event`]. Key codes index a [`PressTable`] (to pair a release with its press
/// and drop auto-repeat presses) and pick a [`KeyClass`](super::KeyClass); pointer positions
/// only feed the next delta. Neither is kept anywhere else or handed on.
#[derive(Debug)]
pub struct RecordDecoder {
    /// Held keys by X key code (0..=255), for `held_us` and auto-repeat filtering.
    keys: PressTable,
    /// Held buttons by X button number (0..=255), for `held_us`.
    buttons: PressTable,
    /// Last absolute pointer position seen in a MotionNotify; private to the delta.
    last_pos: Option<(i16, i16)>,
    /// Server time to monotonic time.
    time: ServerTimeMapper,
}

impl Default for RecordDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordDecoder {
    /// A decoder with no keys held and no pointer position known.
    pub fn new() -> Self {
        RecordDecoder {
            keys: PressTable::new(256),
            buttons: PressTable::new(256),
            last_pos: None,
            time: ServerTimeMapper::new(),
        }
    }

    /// Forgets held keys and buttons and the pointer position, after input was lost: a
    /// release after a gap can no longer be paired reliably, nor a motion turned into a delta.
    pub fn reset(&mut self) {
        self.keys.clear();
        self.buttons.clear();
        self.last_pos = None;
    }

    /// Decodes one reply's `data`, which arrived at `arrival_us` on the monotonic clock,
    /// calling `out` for every event in order. Unknown event types and a truncated trailing
    /// record are skipped; nothing here can panic on malformed input.
    pub fn decode(&mut self, data: &[u8], arrival_us: u64, out: &mut impl FnMut(InputEvent)) {
        // Two passes: the whole batch refines the offset first, so that the events the server
        // held back are not stamped with the batch's arrival time (see ServerTimeMapper).
        for rec in records(data) {
            if is_device_event(rec[0]) {
                self.time.observe(event_time(rec), arrival_us);
            }
        }
        for rec in records(data) {
            if is_device_event(rec[0]) {
                let t_us = self.time.map(event_time(rec));
                if let Some(kind) = self.kind(rec, t_us) {
                    let injected = rec[0] & SEND_EVENT_BIT != 0;
                    out(InputEvent {
                        t_us,
                        kind,
                        injected,
                    });
                }
            }
        }
    }

    /// The event one record stands for, or `None` when it is not reported (auto-repeat, an
    /// unpaired release, a scroll button's release, the first motion, a zero motion).
    fn kind(&mut self, rec: &[u8; EVENT_LEN], t_us: u64) -> Option<EventKind> {
        let detail = rec[1];
        match rec[0] & !SEND_EVENT_BIT {
            KEY_PRESS => self
                .keys
                .press(usize::from(detail), t_us)
                .then(|| EventKind::KeyDown {
                    class: keyclass::from_x11(detail),
                }),
            KEY_RELEASE => {
                let held_us = self.keys.release(usize::from(detail), t_us)?;
                Some(EventKind::KeyUp {
                    class: keyclass::from_x11(detail),
                    held_us,
                })
            }
            BUTTON_PRESS => match button_of(detail) {
                Pointer::Scroll(direction) => Some(EventKind::Scroll { direction }),
                Pointer::Button(button) => self
                    .buttons
                    .press(usize::from(detail), t_us)
                    .then_some(EventKind::ButtonDown { button }),
            },
            BUTTON_RELEASE => match button_of(detail) {
                // A wheel "button" is pressed and released in the same instant: the press is
                // the scroll step, the release carries nothing.
                Pointer::Scroll(_) => None,
                Pointer::Button(button) => {
                    let held_us = self.buttons.release(usize::from(detail), t_us)?;
                    Some(EventKind::ButtonUp { button, held_us })
                }
            },
            MOTION_NOTIFY => {
                let pos = (i16_at(rec, 20), i16_at(rec, 22));
                let prev = self.last_pos.replace(pos)?;
                let dx = i32::from(pos.0) - i32::from(prev.0);
                let dy = i32::from(pos.1) - i32::from(prev.1);
                // A motion that ends where the last one did moves nothing; skip it.
                (dx != 0 || dy != 0).then_some(EventKind::PointerMove { dx, dy })
            }
            _ => None,
        }
    }
}

/// What an X button number means.
enum Pointer {
    /// A real button.
    Button(Button),
    /// A wheel step, which X reports as a press and release of buttons 4 to 7.
    Scroll(ScrollDirection),
}

fn button_of(detail: u8) -> Pointer {
    match detail {
        1 => Pointer::Button(Button::Left),
        2 => Pointer::Button(Button::Middle),
        3 => Pointer::Button(Button::Right),
        4 => Pointer::Scroll(ScrollDirection::Up),
        5 => Pointer::Scroll(ScrollDirection::Down),
        6 => Pointer::Scroll(ScrollDirection::Left),
        7 => Pointer::Scroll(ScrollDirection::Right),
        _ => Pointer::Button(Button::Other),
    }
}

fn is_device_event(type_byte: u8) -> bool {
    (KEY_PRESS..=MOTION_NOTIFY).contains(&(type_byte & !SEND_EVENT_BIT))
}

fn event_time(rec: &[u8; EVENT_LEN]) -> u32 {
    u32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]])
}

fn i16_at(rec: &[u8; EVENT_LEN], at: usize) -> i16 {
    i16::from_ne_bytes([rec[at], rec[at + 1]])
}

/// Splits recorded data into whole 32-byte event records, skipping GenericEvents by their
/// length and stopping at a truncated tail.
fn records(data: &[u8]) -> impl Iterator<Item = &[u8; EVENT_LEN]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        loop {
            let (head, tail) = rest.split_first_chunk::<EVENT_LEN>()?;
            if head[0] & !SEND_EVENT_BIT == GENERIC_EVENT {
                // Extra length in 4-byte units at 4..8; skip the whole event, or stop if it
                // claims more than there is.
                let extra = u32::from_ne_bytes([head[4], head[5], head[6], head[7]]);
                let extra = usize::try_from(extra).ok()?.checked_mul(4)?;
                rest = tail.get(extra..)?;
                continue;
            }
            rest = tail;
            return Some(head);
        }
    })
}

/// Builds one raw 32-byte XRecord device event record, laid out as the module docs describe
/// (native byte order; windows, state and sequence zero; `event_x/y` equal to `root_x/y`).
///
/// A test and benchmark helper: it lets tests and the decoding benchmark feed
/// [`RecordDecoder::decode`] exactly what the X server would send, without an X server.
pub fn encode_test_event(kind: u8, detail: u8, time_ms: u32, root_x: i16, root_y: i16) -> [u8; 32] {
    let mut rec = [0u8; EVENT_LEN];
    rec[0] = kind;
    rec[1] = detail;
    rec[4..8].copy_from_slice(&time_ms.to_ne_bytes());
    rec[20..22].copy_from_slice(&root_x.to_ne_bytes());
    rec[22..24].copy_from_slice(&root_y.to_ne_bytes());
    rec[24..26].copy_from_slice(&root_x.to_ne_bytes());
    rec[26..28].copy_from_slice(&root_y.to_ne_bytes());
    rec[30] = 1; // same_screen
    rec
}

/// Live capture from an X11 server through the RECORD extension.
#[derive(Debug)]
pub struct X11Record {
    /// DISPLAY to connect to; `None` reads `$DISPLAY` at each `run`.
    display: Option<String>,
    /// The agent's capture clock, onto which server times are mapped.
    clock: MonoClock,
    /// Whether `run` has been called before: a second run follows a stop or a lost server,
    /// so input in between was missed and the stream needs a gap marker.
    ran_before: bool,
}

impl X11Record {
    /// A source for `display` (`None` means `$DISPLAY`), stamping events on `clock`.
    pub fn new(display: Option<String>, clock: MonoClock) -> Self {
        X11Record {
            display,
            clock,
            ran_before: false,
        }
    }
}

impl InputSource for X11Record {
    fn name(&self) -> &'static str {
        "x11-record"
    }

    fn run(&mut self, sink: &mut EventSink, stop: &StopFlag) -> Result<(), CaptureError> {
        if self.ran_before {
            // Input between the previous run and this one was not seen; a fresh decoder (below)
            // forgets the keys held back then.
            sink.mark_gap();
        }
        self.ran_before = true;
        let name = resolve_display(self.display.as_deref())?;
        let ctrl = connect(&name)?;
        check_record(&ctrl, &name)?;
        // RECORD blocks the enabling client's connection for as long as the context is
        // enabled, so controlling it needs a second connection.
        let data = connect(&name)?;
        let rc = create_context(&ctrl)?;
        tracing::debug!(display = %name, "x11-record: recording context created");

        std::thread::scope(|scope| {
            // Dropping `done_tx` (when the data loop ends, however it ends) wakes the watcher
            // at once, so it never outlives `run` by a poll interval.
            let (done_tx, done_rx) = mpsc::channel::<()>();
            scope.spawn(move || watch_stop(&ctrl, rc, stop, done_rx));
            let result = record_loop(&data, rc, &self.clock, sink, stop);
            drop(done_tx);
            result
        })
    }
}

/// The data path: blocks on the enable stream and hands decoded events to the sink.
fn record_loop(
    data: &RustConnection,
    rc: record::Context,
    clock: &MonoClock,
    sink: &mut EventSink,
    stop: &StopFlag,
) -> Result<(), CaptureError> {
    let mut decoder = RecordDecoder::new();
    let replies = data.record_enable_context(rc).map_err(lost)?;
    for reply in replies {
        let reply = reply.map_err(reply_error)?;
        // Taken right after the reply is read, as the upper bound the time mapper needs.
        let arrival_us = clock.now_us();
        match reply.category {
            CATEGORY_FROM_SERVER if reply.element_header == 0 => {
                let mut closed = false;
                decoder.decode(&reply.data, arrival_us, &mut |ev| {
                    if sink.push(ev) == Push::Closed {
                        closed = true;
                    }
                });
                if closed {
                    tracing::debug!("x11-record: pipeline closed, stopping");
                    return Ok(());
                }
            }
            CATEGORY_FROM_SERVER => {
                // We asked for no element headers; records with headers would be misread.
                tracing::warn!(
                    header = reply.element_header,
                    "x11-record: skipping data with unexpected element headers"
                );
            }
            CATEGORY_START_OF_DATA => tracing::debug!("x11-record: recording"),
            _ => {}
        }
        if stop.is_raised() {
            return Ok(());
        }
    }
    // The stream ends with EndOfData only after RecordDisableContext: ours on stop, or
    // someone else's (the context was freed), which means capture has stopped unasked.
    if stop.is_raised() {
        Ok(())
    } else {
        Err(CaptureError::Lost(
            "the X server ended the recording".into(),
        ))
    }
}

/// The control path: waits for `stop` (or for the data loop to end) on the control
/// connection, disables the context so the server ends the blocked enable stream with
/// EndOfData, and frees the context.
fn watch_stop(
    ctrl: &RustConnection,
    rc: record::Context,
    stop: &StopFlag,
    done: mpsc::Receiver<()>,
) {
    // Nothing is ever sent on `done`: it disconnects when the data loop is over. Until the
    // flag is raised the watcher sleeps on it, waking only every STOP_IDLE_CHECK to see whether
    // the data loop ended on its own (a lost server): no polling wakeups while idle.
    loop {
        if matches!(done.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
            break;
        }
        if stop.wait_timeout(STOP_IDLE_CHECK) {
            // Disabling is repeated every STOP_POLL until the data loop ends: a disable that
            // reaches the server before the data connection's enable is a no-op there.
            // Errors are ignored: a broken control connection means the data one is broken
            // too, and the data loop reports that.
            while let Err(mpsc::RecvTimeoutError::Timeout) = {
                let _ = ctrl
                    .record_disable_context(rc)
                    .map(|_| ())
                    .and_then(|()| ctrl.flush());
                done.recv_timeout(STOP_POLL)
            } {}
            break;
        }
    }
    // The server would free the context when the control connection closes anyway; doing it
    // explicitly keeps a long-lived server's resources tidy.
    let _ = ctrl.record_disable_context(rc).map(|_| ());
    let _ = ctrl
        .record_free_context(rc)
        .map(|_| ())
        .and_then(|()| ctrl.flush());
}

/// Checks that `display` (or `$DISPLAY`) can be reached and has the RECORD extension, so the
/// agent can say in one clear sentence why capture cannot start before starting it.
pub fn probe(display: Option<&str>) -> Result<(), CaptureError> {
    let name = resolve_display(display)?;
    let conn = connect(&name)?;
    check_record(&conn, &name)
}

/// The display to use: the given one, else `$DISPLAY`; empty counts as unset.
fn resolve_display(display: Option<&str>) -> Result<String, CaptureError> {
    let name = match display {
        Some(d) => d.to_owned(),
        None => std::env::var("DISPLAY").unwrap_or_default(),
    };
    if name.is_empty() {
        Err(CaptureError::NoDisplay)
    } else {
        Ok(name)
    }
}

fn connect(name: &str) -> Result<RustConnection, CaptureError> {
    let refuse = |reason: String| CaptureError::Connect {
        display: name.to_owned(),
        reason,
    };
    // x11rb 0.14 computes the TCP port as `6000 + display` in u16 arithmetic, which panics in
    // debug builds (and wraps in release) for display numbers above 59535: refuse those here,
    // since DISPLAY comes from configuration or the environment and must not panic the agent.
    let parsed = parse_display(Some(name)).map_err(|e| refuse(e.to_string()))?;
    if parsed.display > u16::MAX - X11_TCP_PORT_BASE {
        return Err(refuse(format!(
            "display number {} is out of range",
            parsed.display
        )));
    }
    x11rb::connect(Some(name))
        .map(|(conn, _screen)| conn)
        .map_err(|e| refuse(e.to_string()))
}

fn check_record(conn: &RustConnection, name: &str) -> Result<(), CaptureError> {
    match conn
        .extension_information(record::X11_EXTENSION_NAME)
        .map_err(lost)?
    {
        Some(_) => Ok(()),
        None => Err(CaptureError::NoRecordExtension(name.to_owned())),
    }
}

/// Creates a context that records device events KeyPress..=MotionNotify from all clients.
fn create_context(ctrl: &RustConnection) -> Result<record::Context, CaptureError> {
    // Servers require the version handshake before other RECORD requests in practice (and
    // the x11rb example does it); the versions themselves do not matter here.
    ctrl.record_query_version(1, 13)
        .map_err(lost)?
        .reply()
        .map_err(reply_error)?;
    let rc = ctrl.generate_id().map_err(|e| match e {
        ReplyOrIdError::ConnectionError(e) => lost(e),
        other => CaptureError::Protocol(other.to_string()),
    })?;
    let none = record::Range8 { first: 0, last: 0 };
    let none_ext = record::ExtRange {
        major: none,
        minor: record::Range16 { first: 0, last: 0 },
    };
    let range = record::Range {
        core_requests: none,
        core_replies: none,
        ext_requests: none_ext,
        ext_replies: none_ext,
        delivered_events: none,
        device_events: record::Range8 {
            first: KEY_PRESS,
            last: MOTION_NOTIFY,
        },
        errors: none,
        client_started: false,
        client_died: false,
    };
    ctrl.record_create_context(rc, 0, &[record::CS::ALL_CLIENTS.into()], &[range])
        .map_err(lost)?
        .check()
        .map_err(reply_error)?;
    Ok(rc)
}

fn lost(e: ConnectionError) -> CaptureError {
    CaptureError::Lost(e.to_string())
}

fn reply_error(e: ReplyError) -> CaptureError {
    match e {
        ReplyError::ConnectionError(e) => lost(e),
        ReplyError::X11Error(e) => CaptureError::Protocol(format!("{:?}", e.error_kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::KeyClass;

    // X key codes under the evdev keymap (evdev code + 8).
    const KEY_A: u8 = 38;
    const KEY_SPACE: u8 = 65;
    const KEY_BACKSPACE: u8 = 22;
    const KEY_RETURN: u8 = 36;
    const KEY_SHIFT_L: u8 = 50;
    const KEY_LEFT: u8 = 113;
    const KEY_ESCAPE: u8 = 9;

    fn batch(records: &[[u8; 32]]) -> Vec<u8> {
        records.concat()
    }

    fn decode(d: &mut RecordDecoder, records: &[[u8; 32]], arrival_us: u64) -> Vec<InputEvent> {
        let mut out = Vec::new();
        d.decode(&batch(records), arrival_us, &mut |ev| out.push(ev));
        out
    }

    fn kinds(events: &[InputEvent]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    fn key(kind: u8, code: u8, ms: u32) -> [u8; 32] {
        encode_test_event(kind, code, ms, 0, 0)
    }

    #[test]
    fn keys_come_out_as_classes_only() {
        let mut d = RecordDecoder::new();
        let codes = [
            (KEY_A, KeyClass::Character),
            (KEY_SPACE, KeyClass::Space),
            (KEY_BACKSPACE, KeyClass::Correction),
            (KEY_RETURN, KeyClass::Enter),
            (KEY_SHIFT_L, KeyClass::Modifier),
            (KEY_LEFT, KeyClass::Navigation),
            (KEY_ESCAPE, KeyClass::Other),
        ];
        for (i, (code, class)) in codes.into_iter().enumerate() {
            let ms = 1000 + 100 * i as u32;
            let recs = [key(KEY_PRESS, code, ms), key(KEY_RELEASE, code, ms + 40)];
            // Each pair arrives 2 ms after its release, as a live server would send it.
            let out = decode(&mut d, &recs, u64::from(ms + 42) * 1000);
            assert_eq!(
                kinds(&out),
                vec![
                    EventKind::KeyDown { class },
                    EventKind::KeyUp {
                        class,
                        held_us: 40_000
                    }
                ],
                "code {code}"
            );
            assert!(out.iter().all(|e| !e.injected));
        }
    }

    #[test]
    fn auto_repeat_is_dropped_and_release_pairs_with_the_first_press() {
        let mut d = RecordDecoder::new();
        // The server reports auto-repeat as further presses without releases.
        let recs = [
            key(KEY_PRESS, KEY_A, 1000),
            key(KEY_PRESS, KEY_A, 1500),
            key(KEY_PRESS, KEY_A, 1533),
            key(KEY_RELEASE, KEY_A, 1600),
        ];
        let out = decode(&mut d, &recs, 2_000_000);
        let c = KeyClass::Character;
        assert_eq!(
            kinds(&out),
            vec![
                EventKind::KeyDown { class: c },
                EventKind::KeyUp {
                    class: c,
                    held_us: 600_000
                }
            ]
        );
        assert_eq!(out[1].t_us - out[0].t_us, 600_000);
    }

    #[test]
    fn overlapping_keys_pair_by_code_and_unpaired_releases_are_dropped() {
        let mut d = RecordDecoder::new();
        let recs = [
            key(KEY_RELEASE, KEY_SPACE, 900), // pressed before capture started
            key(KEY_PRESS, KEY_SHIFT_L, 1000),
            key(KEY_PRESS, KEY_A, 1050),
            key(KEY_RELEASE, KEY_SHIFT_L, 1080),
            key(KEY_RELEASE, KEY_A, 1120),
        ];
        let out = decode(&mut d, &recs, 5_000_000);
        assert_eq!(
            kinds(&out),
            vec![
                EventKind::KeyDown {
                    class: KeyClass::Modifier
                },
                EventKind::KeyDown {
                    class: KeyClass::Character
                },
                EventKind::KeyUp {
                    class: KeyClass::Modifier,
                    held_us: 80_000
                },
                EventKind::KeyUp {
                    class: KeyClass::Character,
                    held_us: 70_000
                },
            ]
        );
    }

    #[test]
    fn pointer_motion_comes_out_as_deltas_never_positions() {
        let mut d = RecordDecoder::new();
        let recs = [
            encode_test_event(MOTION_NOTIFY, 0, 10, 500, 300),
            encode_test_event(MOTION_NOTIFY, 0, 18, 503, 296),
            encode_test_event(MOTION_NOTIFY, 0, 26, 503, 296),
            encode_test_event(MOTION_NOTIFY, 0, 34, -20, 1000),
        ];
        let out = decode(&mut d, &recs, 1_000_000);
        assert_eq!(
            kinds(&out),
            vec![
                EventKind::PointerMove { dx: 3, dy: -4 },
                EventKind::PointerMove { dx: -523, dy: 704 },
            ],
            "the first motion only sets the origin; a zero motion is skipped"
        );
        // A position in a later batch is still relative to the last one seen.
        let out = decode(
            &mut d,
            &[encode_test_event(MOTION_NOTIFY, 0, 42, -10, 990)],
            1_100_000,
        );
        assert_eq!(
            kinds(&out),
            vec![EventKind::PointerMove { dx: 10, dy: -10 }]
        );
        d.reset();
        let out = decode(
            &mut d,
            &[encode_test_event(MOTION_NOTIFY, 0, 50, 0, 0)],
            1_200_000,
        );
        assert!(
            out.is_empty(),
            "after a reset the next motion has no origin"
        );
    }

    #[test]
    fn buttons_and_scroll_steps() {
        let mut d = RecordDecoder::new();
        let b = |kind, n, ms| encode_test_event(kind, n, ms, 0, 0);
        let recs = [
            b(BUTTON_PRESS, 1, 100),
            b(BUTTON_RELEASE, 1, 180),
            b(BUTTON_PRESS, 3, 200),
            b(BUTTON_PRESS, 2, 210),
            b(BUTTON_RELEASE, 2, 220),
            b(BUTTON_RELEASE, 3, 260),
            b(BUTTON_PRESS, 4, 300),
            b(BUTTON_RELEASE, 4, 300),
            b(BUTTON_PRESS, 5, 310),
            b(BUTTON_RELEASE, 5, 310),
            b(BUTTON_PRESS, 6, 320),
            b(BUTTON_RELEASE, 6, 320),
            b(BUTTON_PRESS, 7, 330),
            b(BUTTON_RELEASE, 7, 330),
            b(BUTTON_PRESS, 9, 400),
            b(BUTTON_RELEASE, 9, 450),
            b(BUTTON_RELEASE, 8, 460), // never pressed
        ];
        let out = decode(&mut d, &recs, 1_000_000);
        use EventKind::*;
        use ScrollDirection as S;
        assert_eq!(
            kinds(&out),
            vec![
                ButtonDown {
                    button: Button::Left
                },
                ButtonUp {
                    button: Button::Left,
                    held_us: 80_000
                },
                ButtonDown {
                    button: Button::Right
                },
                ButtonDown {
                    button: Button::Middle
                },
                ButtonUp {
                    button: Button::Middle,
                    held_us: 10_000
                },
                ButtonUp {
                    button: Button::Right,
                    held_us: 60_000
                },
                Scroll { direction: S::Up },
                Scroll { direction: S::Down },
                Scroll { direction: S::Left },
                Scroll {
                    direction: S::Right
                },
                ButtonDown {
                    button: Button::Other
                },
                ButtonUp {
                    button: Button::Other,
                    held_us: 50_000
                },
            ]
        );
    }

    #[test]
    fn unknown_types_are_skipped_and_synthesized_events_flagged() {
        let mut d = RecordDecoder::new();
        let mut generic = encode_test_event(GENERIC_EVENT, 0, 0, 0, 0);
        generic[4..8].copy_from_slice(&2u32.to_ne_bytes()); // 8 extra bytes
        let mut data = Vec::new();
        data.extend_from_slice(&encode_test_event(12, 0, 5, 0, 0)); // Expose: not a device event
        data.extend_from_slice(&encode_test_event(0, 0, 5, 0, 0)); // an error
        data.extend_from_slice(&generic);
        data.extend_from_slice(&[0xAB; 8]);
        data.extend_from_slice(&key(KEY_PRESS | SEND_EVENT_BIT, KEY_A, 10));
        data.extend_from_slice(&key(KEY_RELEASE, KEY_A, 20));
        let mut out = Vec::new();
        d.decode(&data, 100_000, &mut |ev| out.push(ev));
        assert_eq!(out.len(), 2);
        assert!(out[0].injected, "SendEvent bit marks a synthesized event");
        assert!(!out[1].injected);
        assert_eq!(
            out[1].kind,
            EventKind::KeyUp {
                class: KeyClass::Character,
                held_us: 10_000
            }
        );
    }

    #[test]
    fn short_truncated_and_garbage_data_never_panic() {
        let mut d = RecordDecoder::new();
        let mut out = Vec::new();
        let full = batch(&[key(KEY_PRESS, KEY_A, 10), key(KEY_RELEASE, KEY_A, 20)]);
        for len in 0..full.len() {
            d.reset();
            out.clear();
            d.decode(&full[..len], 0, &mut |ev| out.push(ev));
            assert_eq!(
                out.len(),
                len / 32,
                "only whole records are decoded (len {len})"
            );
        }
        // A GenericEvent claiming more than there is ends the batch quietly.
        let mut generic = encode_test_event(GENERIC_EVENT, 0, 0, 0, 0);
        generic[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        d.decode(&generic, 0, &mut |ev| out.push(ev));
        // Pseudo-random bytes of every length.
        let mut rng = fastrand::Rng::with_seed(7);
        for len in 0..600 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            d.decode(&bytes, rng.u64(..), &mut |_| {});
        }
    }

    #[test]
    fn batched_events_keep_their_server_intervals() {
        // XRecord buffers: 20 presses typed 25 ms apart reach us in one reply, all at once.
        let mut d = RecordDecoder::new();
        let mut recs = Vec::new();
        for i in 0..20u32 {
            recs.push(key(KEY_PRESS, 10 + i as u8, 50_000 + 25 * i));
        }
        let arrival = 9_000_000;
        let out = decode(&mut d, &recs, arrival);
        assert_eq!(out.len(), 20);
        for w in out.windows(2) {
            assert_eq!(w[1].t_us - w[0].t_us, 25_000, "not compressed by the batch");
        }
        assert_eq!(
            out[19].t_us, arrival,
            "the last of the batch can be no later than arrival"
        );
        assert!(out.iter().all(|e| e.t_us <= arrival));
        // The next batch arrives late (the server held it for 300 ms): the earlier, better
        // offset still holds, so its time is the server's, not the arrival's.
        let out = decode(
            &mut d,
            &[key(KEY_PRESS, 60, 50_000 + 25 * 20)],
            arrival + 325_000,
        );
        assert_eq!(out[0].t_us, arrival + 25_000);
    }

    #[test]
    fn mapper_uses_the_least_delayed_arrival() {
        let mut m = ServerTimeMapper::new();
        // First event delayed 40 ms, second delayed 2 ms: the second sets the offset.
        m.observe(1000, 10_040_000);
        m.observe(1100, 10_102_000);
        assert_eq!(m.map(1000), 10_002_000);
        assert_eq!(m.map(1100), 10_102_000);
    }

    #[test]
    fn mapper_handles_wrap_around() {
        let mut m = ServerTimeMapper::new();
        let before = u32::MAX - 9; // 10 ms before the wrap
        m.observe(before, 1_000_000);
        let a = m.map(before);
        m.observe(5, 1_015_000); // 15 ms later, after the wrap
        let b = m.map(5);
        assert_eq!(a, 1_000_000);
        assert_eq!(b - a, 15_000);
        // Both in one batch, too.
        let mut m = ServerTimeMapper::new();
        m.observe(before, 2_000_000);
        m.observe(5, 2_000_000);
        let (a, b) = (m.map(before), m.map(5));
        assert_eq!((a, b), (1_985_000, 2_000_000));
    }

    #[test]
    fn mapper_clamps_out_of_order_and_never_goes_back() {
        let mut m = ServerTimeMapper::new();
        m.observe(1000, 1_000_000);
        assert_eq!(m.map(1000), 1_000_000);
        // An event stamped earlier than the last one handed out is clamped to it.
        m.observe(990, 1_001_000);
        assert_eq!(m.map(990), 1_000_000);
        // A later batch that lowers the offset does not move time backwards either.
        m.observe(1010, 1_000_500); // arrived 9.5 ms "earlier" than the first estimate implies
        assert_eq!(m.map(1010), 1_000_500);
        m.observe(1012, 1_010_000);
        assert_eq!(m.map(1012), 1_002_500);
        // Before any observation there is nothing to map against.
        assert_eq!(ServerTimeMapper::new().map(5), 0);
    }

    #[test]
    fn mapper_never_underflows_or_overflows() {
        let mut m = ServerTimeMapper::new();
        m.observe(1000, 0); // the offset puts server time 0 before our clock's zero
        assert_eq!(m.map(500), 0);
        let mut m = ServerTimeMapper::new();
        m.observe(0, u64::MAX);
        let _ = m.map(u32::MAX);
    }

    #[test]
    fn resolve_display_prefers_the_argument() {
        assert_eq!(resolve_display(Some(":7")).ok().as_deref(), Some(":7"));
        assert!(matches!(
            resolve_display(Some("")),
            Err(CaptureError::NoDisplay)
        ));
    }

    #[test]
    fn probe_reports_an_unreachable_or_malformed_display() {
        // No server listens on :59000; display numbers x11rb cannot turn into a TCP port, and
        // garbage, are refused with an error rather than a panic.
        for name in [":59000", ":63999", ":65535", "not a display"] {
            match probe(Some(name)) {
                Err(CaptureError::Connect { display, .. }) => assert_eq!(display, name),
                other => panic!("{name}: expected Connect, got {other:?}"),
            }
        }
    }
}
