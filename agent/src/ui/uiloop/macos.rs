//! macOS: the AppKit event queue on the main thread (macOS only).
//!
//! Owns the few Objective-C messages a UI job on the main thread needs: make the process an
//! AppKit application without a Dock icon or menu bar (an "accessory"), and take the next
//! events from `NSApp`'s queue and send them on to AppKit (the status-bar item and its menu
//! answer from inside `sendEvent:`). The tray icon itself is tray-icon's.
//!
//! Must never read an event's content (its characters, key code or location): events are only
//! handed back to AppKit. The agent has no window that could take keyboard focus.
//!
//! The declarations are the Objective-C runtime's, each message sent through `objc_msgSend`
//! cast to the exact C type of the method: `NSInteger` is `long`, `NSEventMask` is `unsigned
//! long long`, `NSTimeInterval` is `double`, `BOOL` is one byte; objects and selectors are
//! pointers.

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

type Id = *mut c_void;
type Sel = *mut c_void;

// libSystem, linked into every program.
unsafe extern "C" {
    fn pthread_main_np() -> std::ffi::c_int;
}

#[link(name = "objc")]
unsafe extern "C" {
    fn objc_getClass(name: *const c_char) -> Id;
    fn sel_registerName(name: *const c_char) -> Sel;
    fn objc_msgSend();
    fn objc_autoreleasePoolPush() -> *mut c_void;
    fn objc_autoreleasePoolPop(pool: *mut c_void);
}

// NSApplication and NSDate live in AppKit and Foundation; linking them registers the classes.
#[link(name = "AppKit", kind = "framework")]
unsafe extern "C" {}

#[link(name = "Foundation", kind = "framework")]
unsafe extern "C" {
    static NSDefaultRunLoopMode: Id;
}

/// `NSApplicationActivationPolicyAccessory`: no Dock icon, no menu bar.
const POLICY_ACCESSORY: isize = 1;
/// `NSEventMaskAny`.
const ANY_EVENT: u64 = u64::MAX;

static STARTED: AtomicBool = AtomicBool::new(false);

fn class(name: &CStr) -> Id {
    // SAFETY: a NUL-terminated name; an unknown class gives null, which callers check.
    unsafe { objc_getClass(name.as_ptr()) }
}

fn sel(name: &CStr) -> Sel {
    // SAFETY: a NUL-terminated name; selectors are registered for the process's life.
    unsafe { sel_registerName(name.as_ptr()) }
}

/// `[NSApplication sharedApplication]`, or null without AppKit.
fn app() -> Id {
    let cls = class(c"NSApplication");
    if cls.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `+sharedApplication` takes no argument and returns an object.
    let send: unsafe extern "C" fn(Id, Sel) -> Id = unsafe {
        std::mem::transmute::<unsafe extern "C" fn(), unsafe extern "C" fn(Id, Sel) -> Id>(
            objc_msgSend,
        )
    };
    // SAFETY: a class object and a class method of it.
    unsafe { send(cls, sel(c"sharedApplication")) }
}

/// Whether the calling thread is the process's main thread.
pub fn is_main_thread() -> bool {
    // SAFETY: no arguments, no preconditions.
    unsafe { pthread_main_np() == 1 }
}

/// Runs `f` inside an autorelease pool, so that the objects AppKit autoreleases meanwhile are
/// freed when it returns.
pub fn autoreleased<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: pushes a pool, popped below on the same thread after `f`.
    let pool = unsafe { objc_autoreleasePoolPush() };
    let out = f();
    // SAFETY: the pool pushed above, the innermost one again once `f` has returned.
    unsafe { objc_autoreleasePoolPop(pool) };
    out
}

/// Makes this process an accessory AppKit application and finishes its launch, once. Must be
/// called on the main thread, before any status-bar item is made.
pub fn init_app() {
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let app = app();
    if app.is_null() {
        tracing::warn!("AppKit is not available: the tray icon cannot be shown");
        return;
    }
    // SAFETY: `-setActivationPolicy:` takes an NSInteger and returns a BOOL, ignored here (a
    // one-byte return left unread).
    let set_policy: unsafe extern "C" fn(Id, Sel, isize) = unsafe {
        std::mem::transmute::<unsafe extern "C" fn(), unsafe extern "C" fn(Id, Sel, isize)>(
            objc_msgSend,
        )
    };
    // SAFETY: `-finishLaunching` takes nothing and returns nothing.
    let finish: unsafe extern "C" fn(Id, Sel) = unsafe {
        std::mem::transmute::<unsafe extern "C" fn(), unsafe extern "C" fn(Id, Sel)>(objc_msgSend)
    };
    // SAFETY: NSApp and its methods, with the argument types above, on the main thread.
    unsafe {
        set_policy(app, sel(c"setActivationPolicy:"), POLICY_ACCESSORY);
        finish(app, sel(c"finishLaunching"));
    }
}

/// Waits up to `secs` for AppKit events and sends each on to AppKit, returning after the
/// first one and those queued behind it (so the caller's channel is looked at soon after a
/// click). Main thread only.
pub fn dispatch_for(secs: f64) {
    let app = app();
    if app.is_null() {
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
        return;
    }
    type DateFn = unsafe extern "C" fn(Id, Sel, f64) -> Id;
    type NextFn = unsafe extern "C" fn(Id, Sel, u64, Id, Id, bool) -> Id;
    type SendFn = unsafe extern "C" fn(Id, Sel, Id);
    // SAFETY: `+dateWithTimeIntervalSinceNow:` takes an NSTimeInterval and returns an object.
    let date: DateFn =
        unsafe { std::mem::transmute::<unsafe extern "C" fn(), DateFn>(objc_msgSend) };
    // SAFETY: `-nextEventMatchingMask:untilDate:inMode:dequeue:` takes an NSEventMask, two
    // objects and a BOOL, and returns an object or nil.
    let next: NextFn =
        unsafe { std::mem::transmute::<unsafe extern "C" fn(), NextFn>(objc_msgSend) };
    // SAFETY: `-sendEvent:` takes an object and returns nothing.
    let send_event: SendFn =
        unsafe { std::mem::transmute::<unsafe extern "C" fn(), SendFn>(objc_msgSend) };
    let date_class = class(c"NSDate");
    // SAFETY: pushes an autorelease pool for the objects made below; popped at the end.
    let pool = unsafe { objc_autoreleasePoolPush() };
    // SAFETY: the methods above with their argument types, on the main thread; the dates and
    // events are autoreleased into `pool`.
    unsafe {
        let mode = NSDefaultRunLoopMode;
        let mut until = date(date_class, sel(c"dateWithTimeIntervalSinceNow:"), secs);
        loop {
            let event = next(
                app,
                sel(c"nextEventMatchingMask:untilDate:inMode:dequeue:"),
                ANY_EVENT,
                until,
                mode,
                true,
            );
            if event.is_null() {
                break;
            }
            send_event(app, sel(c"sendEvent:"), event);
            // Only what is already queued from now on.
            until = date(date_class, sel(c"dateWithTimeIntervalSinceNow:"), 0.0);
        }
        objc_autoreleasePoolPop(pool);
    }
}
