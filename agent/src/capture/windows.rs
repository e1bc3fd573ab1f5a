//! Windows capture (Windows only): `WH_KEYBOARD_LL` and `WH_MOUSE_LL` hooks on a dedicated
//! thread with its own message loop.
//!
//! Owns the hook thread and the two hooks, nothing else. Each hook procedure does three things
//! and returns: stamps the capture clock (Rust's `Instant`, which is `QueryPerformanceCounter`
//! on Windows), copies the message id and a few fields into a [`HookRecord`] (never the scan
//! code), offers it to a bounded queue without blocking, and passes the event on with
//! `CallNextHookEx`. Translation into events happens on the capture thread, in the
//! platform-neutral `win_translate.rs`; Windows silently removes a low-level hook whose
//! procedure overruns `LowLevelHooksTimeout`, so nothing slow may run in the procedures.
//!
//! Must never: call `ToUnicode(Ex)`, `ToAscii`, `MapVirtualKey(Ex)`, `TranslateMessage` or any
//! keyboard-layout function (that would also break dead keys and IMEs); change, block or
//! swallow an event (the hooks only observe).
//!
//! Low-level hooks need no privilege. They do not see input meant for windows of elevated
//! processes while the agent runs unelevated, nor the secure desktop (sign-in, UAC prompts):
//! those stretches are simply missing, as on any other backend when input goes elsewhere.

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::cell::RefCell;
use std::sync::mpsc;

use windows_sys::Win32::Foundation::{LPARAM, LRESULT, WPARAM};
use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
use windows_sys::Win32::System::Threading::GetCurrentThreadId;
use windows_sys::Win32::UI::WindowsAndMessaging::{
    CallNextHookEx, GetMessageW, HC_ACTION, KBDLLHOOKSTRUCT, MSG, MSLLHOOKSTRUCT,
    PostThreadMessageW, SetWindowsHookExW, UnhookWindowsHookEx, WH_KEYBOARD_LL, WH_MOUSE_LL,
    WM_QUIT,
};

use super::hook::{self, Forwarded, HookSender};
use super::win_translate::{HookData, HookRecord, HookTranslator};
use super::{CaptureError, EventSink, InputSource, MonoClock, StopFlag};

/// Hook records the queue holds: about 8 s of a 8 kHz mouse.
const QUEUE: usize = 65_536;

/// What the hook procedures need, set on the hook thread before the hooks are installed.
/// Hook procedures have no user-data pointer; they run on the thread that installed them, so
/// a thread-local is exactly their scope.
struct HookSink {
    tx: HookSender<HookRecord>,
    clock: MonoClock,
}

thread_local! {
    static SINK: RefCell<Option<HookSink>> = const { RefCell::new(None) };
}

/// Stamps and queues one record; never blocks.
fn offer(data: HookData) {
    SINK.with(|s| {
        if let Ok(s) = s.try_borrow()
            && let Some(s) = s.as_ref()
        {
            let t_us = s.clock.now_us();
            s.tx.offer(HookRecord { t_us, data });
        }
    });
}

unsafe extern "system" fn keyboard_proc(code: i32, wparam: WPARAM, lparam: LPARAM) -> LRESULT {
    if code == HC_ACTION as i32 {
        // SAFETY: for HC_ACTION, lParam of a WH_KEYBOARD_LL callback points to a
        // KBDLLHOOKSTRUCT that is valid for the duration of the call.
        let k = unsafe { &*(lparam as *const KBDLLHOOKSTRUCT) };
        offer(HookData::Key {
            message: wparam as u32,
            vk: k.vkCode,
            flags: k.flags,
        });
    }
    // SAFETY: the chain's own arguments, passed on unchanged as the hook contract requires.
    unsafe { CallNextHookEx(std::ptr::null_mut(), code, wparam, lparam) }
}

unsafe extern "system" fn mouse_proc(code: i32, wparam: WPARAM, lparam: LPARAM) -> LRESULT {
    if code == HC_ACTION as i32 {
        // SAFETY: for HC_ACTION, lParam of a WH_MOUSE_LL callback points to an
        // MSLLHOOKSTRUCT that is valid for the duration of the call.
        let m = unsafe { &*(lparam as *const MSLLHOOKSTRUCT) };
        offer(HookData::Mouse {
            message: wparam as u32,
            x: m.pt.x,
            y: m.pt.y,
            mouse_data: m.mouseData,
            flags: m.flags,
        });
    }
    // SAFETY: as in keyboard_proc.
    unsafe { CallNextHookEx(std::ptr::null_mut(), code, wparam, lparam) }
}

/// The hook thread: installs both hooks, reports its thread id (or why it could not), then
/// runs a message loop until `WM_QUIT`, and removes the hooks.
fn hook_thread(
    tx: HookSender<HookRecord>,
    clock: MonoClock,
    ready: mpsc::Sender<Result<u32, String>>,
) {
    SINK.with(|s| *s.borrow_mut() = Some(HookSink { tx, clock }));
    // SAFETY: a null name asks for the executable's own module handle; nothing is freed.
    let module = unsafe { GetModuleHandleW(std::ptr::null()) };
    // SAFETY: keyboard_proc has the HOOKPROC signature and lives for the whole program.
    let keyboard = unsafe { SetWindowsHookExW(WH_KEYBOARD_LL, Some(keyboard_proc), module, 0) };
    if keyboard.is_null() {
        let e = std::io::Error::last_os_error();
        let _ = ready.send(Err(format!("cannot install the keyboard hook: {e}")));
        return;
    }
    // SAFETY: as above, for mouse_proc.
    let mouse = unsafe { SetWindowsHookExW(WH_MOUSE_LL, Some(mouse_proc), module, 0) };
    if mouse.is_null() {
        let e = std::io::Error::last_os_error();
        // SAFETY: `keyboard` is a hook this thread installed and has not removed.
        unsafe { UnhookWindowsHookEx(keyboard) };
        let _ = ready.send(Err(format!("cannot install the mouse hook: {e}")));
        return;
    }
    // SAFETY: plain call.
    let _ = ready.send(Ok(unsafe { GetCurrentThreadId() }));
    let mut msg = MSG::default();
    // The hook procedures are called from inside GetMessageW. No window exists, so nothing is
    // dispatched (and TranslateMessage, which makes characters, is never called). 0 means
    // WM_QUIT, -1 an error: both end the loop.
    // SAFETY: `msg` is a valid MSG to write into; a null window means this thread's messages.
    while unsafe { GetMessageW(&mut msg, std::ptr::null_mut(), 0, 0) } > 0 {}
    // SAFETY: both hooks were installed by this thread and not removed yet.
    unsafe { UnhookWindowsHookEx(mouse) };
    // SAFETY: as above.
    unsafe { UnhookWindowsHookEx(keyboard) };
    SINK.with(|s| s.borrow_mut().take());
}

/// Live capture through the low-level keyboard and mouse hooks.
#[derive(Debug)]
pub struct WindowsHooks {
    /// The agent's capture clock.
    clock: MonoClock,
    /// A second run follows a stop or a failure: input in between was missed.
    ran_before: bool,
}

impl WindowsHooks {
    /// A source stamping events on `clock`.
    pub fn new(clock: MonoClock) -> Self {
        WindowsHooks {
            clock,
            ran_before: false,
        }
    }
}

impl InputSource for WindowsHooks {
    fn name(&self) -> &'static str {
        "windows-hooks"
    }

    fn run(&mut self, sink: &mut EventSink, stop: &StopFlag) -> Result<(), CaptureError> {
        if self.ran_before {
            sink.mark_gap();
        }
        self.ran_before = true;
        let (tx, rx) = hook::hook_queue(QUEUE);
        let (ready_tx, ready_rx) = mpsc::channel();
        let clock = self.clock;
        let thread = std::thread::Builder::new()
            .name("cadence-hooks".into())
            .spawn(move || hook_thread(tx, clock, ready_tx))
            .map_err(|e| CaptureError::Os(format!("cannot start the hook thread: {e}")))?;
        let thread_id = match ready_rx.recv() {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(CaptureError::Os(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(CaptureError::Os("the hook thread ended at once".into()));
            }
        };
        let ended = hook::forward(&rx, &mut HookTranslator::new(), sink, stop);
        // SAFETY: posting to a thread id this process owns; a thread that has already ended
        // makes the call fail harmlessly.
        unsafe { PostThreadMessageW(thread_id, WM_QUIT, 0, 0) };
        let _ = thread.join();
        match ended {
            Forwarded::Stopped | Forwarded::Closed => Ok(()),
            Forwarded::SourceEnded => Err(CaptureError::Lost(
                "the hook thread's message loop ended".into(),
            )),
        }
    }
}
