//! macOS capture (macOS only): a listen-only `CGEventTap` on its own thread's run loop, and
//! the permission checks `doctor` reports.
//!
//! Owns the tap thread, the tap and its run-loop source. The tap callback does three things
//! and returns the event untouched: stamps the capture clock, copies a few integer fields into
//! a [`TapRecord`], and offers it to a bounded queue without blocking. Translation happens on
//! the capture thread, in the platform-neutral `mac_translate.rs`. Between run-loop turns
//! (every 250 ms) the thread checks `IsSecureEventInputEnabled` and reports each change, so a
//! password field leaves a gap marked as such.
//!
//! Must never: ask an event for its characters, call `UCKeyTranslate`, TIS/TSM or any
//! keyboard-layout function, read the pointer's absolute location, or modify or swallow an
//! event (the tap is `kCGEventTapOptionListenOnly`).
//!
//! Needs the Input Monitoring permission (System Settings → Privacy & Security → Input
//! Monitoring); without it the tap cannot be created. Accessibility is not needed for a
//! listen-only tap, and `doctor` only reports it.
//!
//! The declarations below are the framework functions this file calls, with their C types:
//! `CGEventTapLocation`, `CGEventTapPlacement`, `CGEventTapOptions`, `CGEventType`,
//! `CGEventField` and `IOHIDRequestType`/`IOHIDAccessType` are 32-bit enums; `CGEventMask`,
//! `CGEventFlags` and `CGEventTimestamp` are `uint64_t`; `Boolean` is `unsigned char`;
//! `CFIndex` is `signed long`; `CFTimeInterval` is `double`.

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::mpsc;

use super::hook::{self, Forwarded, HookSender};
use super::mac_translate::{
    FIELD_KEYBOARD_AUTOREPEAT, FIELD_KEYBOARD_KEYCODE, FIELD_MOUSE_BUTTON_NUMBER,
    FIELD_MOUSE_DELTA_X, FIELD_MOUSE_DELTA_Y, FIELD_SCROLL_DELTA_AXIS_1, FIELD_SCROLL_DELTA_AXIS_2,
    FIELD_SOURCE_STATE_ID, TAP_DISABLED_BY_TIMEOUT, TAP_DISABLED_BY_USER_INPUT, TapData, TapEvent,
    TapRecord, TapTranslator, event_mask,
};
use super::{CaptureError, EventSink, InputSource, MonoClock, StopFlag};

type CFMachPortRef = *mut c_void;
type CFRunLoopSourceRef = *mut c_void;
type CFRunLoopRef = *mut c_void;
type CFStringRef = *const c_void;
type CGEventRef = *mut c_void;
type CGEventTapProxy = *mut c_void;
type CGEventTapCallBack = unsafe extern "C" fn(
    proxy: CGEventTapProxy,
    kind: u32,
    event: CGEventRef,
    user_info: *mut c_void,
) -> CGEventRef;

/// `kCGSessionEventTap`: events as they enter the login session.
const SESSION_EVENT_TAP: u32 = 1;
/// `kCGHeadInsertEventTap`.
const HEAD_INSERT: u32 = 0;
/// `kCGEventTapOptionListenOnly`: observe, never modify.
const LISTEN_ONLY: u32 = 1;
/// `kIOHIDRequestTypeListenEvent`: the Input Monitoring permission.
const REQUEST_LISTEN_EVENT: u32 = 1;
/// Seconds per run-loop turn: bounds how late a stop or a Secure Event Input change is seen.
const TURN_SECS: f64 = 0.25;
/// Records the queue holds.
const QUEUE: usize = 65_536;

#[link(name = "CoreGraphics", kind = "framework")]
unsafe extern "C" {
    fn CGEventTapCreate(
        tap: u32,
        place: u32,
        options: u32,
        events_of_interest: u64,
        callback: CGEventTapCallBack,
        user_info: *mut c_void,
    ) -> CFMachPortRef;
    fn CGEventTapEnable(tap: CFMachPortRef, enable: bool);
    fn CGEventGetType(event: CGEventRef) -> u32;
    fn CGEventGetIntegerValueField(event: CGEventRef, field: u32) -> i64;
    fn CGEventGetFlags(event: CGEventRef) -> u64;
    fn CGEventGetTimestamp(event: CGEventRef) -> u64;
}

#[link(name = "CoreFoundation", kind = "framework")]
unsafe extern "C" {
    static kCFRunLoopDefaultMode: CFStringRef;
    fn CFMachPortCreateRunLoopSource(
        allocator: *const c_void,
        port: CFMachPortRef,
        order: isize,
    ) -> CFRunLoopSourceRef;
    fn CFMachPortInvalidate(port: CFMachPortRef);
    fn CFRunLoopGetCurrent() -> CFRunLoopRef;
    fn CFRunLoopAddSource(rl: CFRunLoopRef, source: CFRunLoopSourceRef, mode: CFStringRef);
    fn CFRunLoopRemoveSource(rl: CFRunLoopRef, source: CFRunLoopSourceRef, mode: CFStringRef);
    fn CFRunLoopRunInMode(mode: CFStringRef, seconds: f64, return_after_source_handled: u8) -> i32;
    fn CFRelease(cf: *const c_void);
}

#[link(name = "Carbon", kind = "framework")]
unsafe extern "C" {
    /// Whether some process has Secure Event Input on (a password field has focus).
    fn IsSecureEventInputEnabled() -> u8;
}

#[link(name = "IOKit", kind = "framework")]
unsafe extern "C" {
    fn IOHIDCheckAccess(request: u32) -> u32;
}

#[link(name = "ApplicationServices", kind = "framework")]
unsafe extern "C" {
    fn AXIsProcessTrusted() -> u8;
}

/// `struct mach_timebase_info`.
#[repr(C)]
#[derive(Default)]
struct MachTimebaseInfo {
    numer: u32,
    denom: u32,
}

// libSystem, linked into every program.
unsafe extern "C" {
    fn mach_timebase_info(info: *mut MachTimebaseInfo) -> i32;
}

/// Mach absolute time units to nanoseconds: (numer, denom).
fn timebase() -> (u64, u64) {
    let mut info = MachTimebaseInfo::default();
    // SAFETY: `info` is a valid, writable mach_timebase_info for the call.
    let r = unsafe { mach_timebase_info(&mut info) };
    if r != 0 || info.numer == 0 || info.denom == 0 {
        return (1, 1);
    }
    (u64::from(info.numer), u64::from(info.denom))
}

/// What the callback needs; lives on the tap thread's stack for longer than the tap.
struct TapContext {
    tx: HookSender<TapRecord>,
    clock: MonoClock,
    timebase: (u64, u64),
    /// The tap, to re-enable it when macOS disables it.
    tap: AtomicPtr<c_void>,
}

unsafe extern "C" fn tap_callback(
    _proxy: CGEventTapProxy,
    kind: u32,
    event: CGEventRef,
    user_info: *mut c_void,
) -> CGEventRef {
    // SAFETY: `user_info` is the `&TapContext` given to CGEventTapCreate; the context outlives
    // the tap (the tap is invalidated before the context is dropped), and callbacks run only
    // on the tap thread, inside CFRunLoopRunInMode.
    let ctx = unsafe { &*(user_info as *const TapContext) };
    let arrival_us = ctx.clock.now_us();
    if kind == TAP_DISABLED_BY_TIMEOUT || kind == TAP_DISABLED_BY_USER_INPUT {
        let tap = ctx.tap.load(Ordering::Relaxed);
        if !tap.is_null() {
            // SAFETY: `tap` is the live tap this callback belongs to.
            unsafe { CGEventTapEnable(tap, true) };
        }
        ctx.tx.offer(TapRecord {
            arrival_us,
            data: TapData::TapDisabled,
        });
        return event;
    }
    if event.is_null() {
        return event;
    }
    let field = |f: u32| {
        // SAFETY: `event` is the non-null event passed to this callback, valid during it.
        unsafe { CGEventGetIntegerValueField(event, f) }
    };
    // SAFETY: as above.
    let raw_time = unsafe { CGEventGetTimestamp(event) };
    let (numer, denom) = ctx.timebase;
    let timestamp_ns = u64::try_from(u128::from(raw_time) * u128::from(numer) / u128::from(denom))
        .unwrap_or(u64::MAX);
    let record = TapEvent {
        // SAFETY: as above.
        kind: unsafe { CGEventGetType(event) },
        timestamp_ns,
        keycode: u16::try_from(field(FIELD_KEYBOARD_KEYCODE)).unwrap_or(u16::MAX),
        autorepeat: field(FIELD_KEYBOARD_AUTOREPEAT) != 0,
        // SAFETY: as above.
        flags: unsafe { CGEventGetFlags(event) },
        dx: field(FIELD_MOUSE_DELTA_X),
        dy: field(FIELD_MOUSE_DELTA_Y),
        button: field(FIELD_MOUSE_BUTTON_NUMBER),
        scroll_v: field(FIELD_SCROLL_DELTA_AXIS_1),
        scroll_h: field(FIELD_SCROLL_DELTA_AXIS_2),
        source_state: field(FIELD_SOURCE_STATE_ID),
    };
    ctx.tx.offer(TapRecord {
        arrival_us,
        data: TapData::Event(record),
    });
    event
}

/// Whether Secure Event Input is on now.
fn secure_input() -> bool {
    // SAFETY: plain query, no arguments.
    unsafe { IsSecureEventInputEnabled() != 0 }
}

/// The tap thread: creates the tap, reports whether it could, then turns the run loop until
/// `quit`, reporting Secure Event Input changes between turns.
fn tap_thread(
    tx: HookSender<TapRecord>,
    clock: MonoClock,
    quit: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<(), CaptureError>>,
) {
    let ctx = TapContext {
        tx,
        clock,
        timebase: timebase(),
        tap: AtomicPtr::new(std::ptr::null_mut()),
    };
    let user_info = &ctx as *const TapContext as *mut c_void;
    // SAFETY: tap_callback has the CGEventTapCallBack signature; `user_info` points at `ctx`,
    // which outlives the tap (invalidated and released below, before `ctx` is dropped).
    let tap = unsafe {
        CGEventTapCreate(
            SESSION_EVENT_TAP,
            HEAD_INSERT,
            LISTEN_ONLY,
            event_mask(),
            tap_callback,
            user_info,
        )
    };
    if tap.is_null() {
        let _ = ready.send(Err(CaptureError::NotPermitted(
            "macOS refused the event tap: allow this program under System Settings → Privacy & \
             Security → Input Monitoring, then start it again"
                .into(),
        )));
        return;
    }
    ctx.tap.store(tap, Ordering::Relaxed);
    // SAFETY: `tap` is a valid mach port; a null allocator means the default one.
    let source = unsafe { CFMachPortCreateRunLoopSource(std::ptr::null(), tap, 0) };
    if source.is_null() {
        // SAFETY: `tap` was created above and is released once.
        unsafe { CFMachPortInvalidate(tap) };
        // SAFETY: as above.
        unsafe { CFRelease(tap) };
        let _ = ready.send(Err(CaptureError::Os(
            "cannot create a run-loop source for the event tap".into(),
        )));
        return;
    }
    // SAFETY: reading an immutable framework constant.
    let mode = unsafe { kCFRunLoopDefaultMode };
    // SAFETY: plain call; the current thread's run loop.
    let run_loop = unsafe { CFRunLoopGetCurrent() };
    // SAFETY: valid run loop, source and mode.
    unsafe { CFRunLoopAddSource(run_loop, source, mode) };
    // SAFETY: `tap` is valid.
    unsafe { CGEventTapEnable(tap, true) };
    let _ = ready.send(Ok(()));
    let mut secure = false;
    while !quit.load(Ordering::SeqCst) {
        let now = secure_input();
        if now != secure {
            secure = now;
            let record = TapRecord {
                arrival_us: clock.now_us(),
                data: TapData::SecureInput(now),
            };
            if !ctx.tx.offer(record) {
                break;
            }
        }
        // SAFETY: `mode` is a valid run-loop mode; callbacks run inside this call.
        unsafe { CFRunLoopRunInMode(mode, TURN_SECS, 0) };
    }
    // SAFETY: `tap` is valid until invalidated below.
    unsafe { CGEventTapEnable(tap, false) };
    // SAFETY: the source was added to this run loop in this mode.
    unsafe { CFRunLoopRemoveSource(run_loop, source, mode) };
    // SAFETY: no callback can run after this; `tap` and `source` are released exactly once.
    unsafe { CFMachPortInvalidate(tap) };
    // SAFETY: as above.
    unsafe { CFRelease(source) };
    // SAFETY: as above.
    unsafe { CFRelease(tap) };
}

/// Live capture through a listen-only event tap.
#[derive(Debug)]
pub struct MacEventTap {
    /// The agent's capture clock.
    clock: MonoClock,
    /// A second run follows a stop or a failure: input in between was missed.
    ran_before: bool,
}

impl MacEventTap {
    /// A source stamping events on `clock`.
    pub fn new(clock: MonoClock) -> Self {
        MacEventTap {
            clock,
            ran_before: false,
        }
    }
}

impl InputSource for MacEventTap {
    fn name(&self) -> &'static str {
        "macos-event-tap"
    }

    fn run(&mut self, sink: &mut EventSink, stop: &StopFlag) -> Result<(), CaptureError> {
        if self.ran_before {
            sink.mark_gap();
        }
        self.ran_before = true;
        let (tx, rx) = hook::hook_queue(QUEUE);
        let (ready_tx, ready_rx) = mpsc::channel();
        let quit = Arc::new(AtomicBool::new(false));
        let clock = self.clock;
        let q = quit.clone();
        let thread = std::thread::Builder::new()
            .name("cadence-event-tap".into())
            .spawn(move || tap_thread(tx, clock, q, ready_tx))
            .map_err(|e| CaptureError::Os(format!("cannot start the event tap thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(CaptureError::Os(
                    "the event tap thread ended at once".into(),
                ));
            }
        }
        let ended = hook::forward(&rx, &mut TapTranslator::new(), sink, stop);
        quit.store(true, Ordering::SeqCst);
        drop(rx);
        let _ = thread.join();
        match ended {
            Forwarded::Stopped | Forwarded::Closed => Ok(()),
            Forwarded::SourceEnded => Err(CaptureError::Lost("the event tap thread ended".into())),
        }
    }
}

/// The state of a macOS privacy permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Granted.
    Granted,
    /// Refused by the user or by policy.
    Denied,
    /// Not decided yet: macOS asks the user when the program first creates a tap.
    Unknown,
}

/// What `doctor` reports about capture permissions on macOS.
#[derive(Debug, Clone, Copy)]
pub struct Permissions {
    /// Input Monitoring (`IOHIDCheckAccess(kIOHIDRequestTypeListenEvent)`): needed.
    pub input_monitoring: Access,
    /// Accessibility (`AXIsProcessTrusted`): not needed for a listen-only tap.
    pub accessibility: bool,
    /// Secure Event Input is on right now (keyboard timing is hidden until it goes off).
    pub secure_input: bool,
}

/// Checks the permissions without asking the user for anything.
pub fn permissions() -> Permissions {
    // SAFETY: plain query with a valid request type.
    let im = unsafe { IOHIDCheckAccess(REQUEST_LISTEN_EVENT) };
    // SAFETY: plain query.
    let ax = unsafe { AXIsProcessTrusted() } != 0;
    Permissions {
        input_monitoring: match im {
            0 => Access::Granted,
            1 => Access::Denied,
            _ => Access::Unknown,
        },
        accessibility: ax,
        secure_input: secure_input(),
    }
}
