//! The Windows consent dialog's OS calls: `MessageBoxW`, and the hook that keeps its OK
//! button disabled for its first moments (Windows only).
//!
//! Owns the calls and nothing else: the style, the text, the delay and the reading of the
//! answer are `dialog.rs`'s, tested on every OS. Never decodes the answer itself.
//! `scripts/check-per-os-files.sh` type-checks this file on Linux against windows-sys.
//!
//! The OK button is disabled from the moment the box is first activated (when it appears,
//! or, if Windows keeps it in the background, when the user first brings it forward) until
//! [`WINDOWS_OK_DELAY_MS`] later: a CBT hook on this thread only (`WH_CBT`, our thread id,
//! no DLL) sees the box's activation before it is drawn, disables its OK button and starts a
//! timer on the box; the box's own modal loop dispatches the timer, which enables the button
//! again. The hook is removed as soon as `MessageBoxW` returns. If the hook cannot be set,
//! the box is shown without the delay, and the log says so.

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::cell::Cell;

use windows_sys::Win32::Foundation::{HWND, LPARAM, LRESULT, WPARAM};
use windows_sys::Win32::System::Threading::GetCurrentThreadId;
use windows_sys::Win32::UI::WindowsAndMessaging::{
    CallNextHookEx, GetDlgItem, HCBT_ACTIVATE, IDOK, KillTimer, MB_DEFBUTTON2, MB_ICONQUESTION,
    MB_OKCANCEL, MB_TOPMOST, MessageBoxW, SetTimer, SetWindowsHookExW, UnhookWindowsHookEx, WH_CBT,
};

use super::{
    Answer, ConsentDialog, TITLE, WINDOWS_OK_DELAY_MS, WINDOWS_STYLE, windows_result, windows_text,
};

// What is decoded and tested on every OS is what the OS uses.
const _: () = assert!(super::IDOK == IDOK);
const _: () = assert!(WINDOWS_STYLE == MB_OKCANCEL | MB_DEFBUTTON2 | MB_ICONQUESTION | MB_TOPMOST);

#[link(name = "user32")]
unsafe extern "system" {
    /// `EnableWindow` (winuser.h), declared here rather than taken from windows-sys: its
    /// `Win32_UI_Input_KeyboardAndMouse` feature would also declare the key-to-text functions
    /// the agent must not be able to call (`agent/tests/no_text_apis.rs` keeps it off).
    fn EnableWindow(hwnd: HWND, enable: windows_sys::core::BOOL) -> windows_sys::core::BOOL;
}

/// The timer's id on the box (any value: the box has no timers of its own).
const ENABLE_OK_TIMER: usize = 0xCADE;

thread_local! {
    /// Set while a box is shown and its OK button not yet disabled: only the first activation
    /// of a window with an OK button disables it (a later one, after the user clicked
    /// elsewhere, does not).
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// The message box (see `dialog.rs`'s module documentation).
pub struct MessageBox;

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// The CBT hook: on the box's first activation, disables OK and starts the timer.
unsafe extern "system" fn on_cbt(code: i32, wparam: WPARAM, lparam: LPARAM) -> LRESULT {
    if code >= 0 && code as u32 == HCBT_ACTIVATE && ARMED.get() {
        // For HCBT_ACTIVATE, wparam is the window being activated: the message box, the only
        // window this thread creates while the hook is set.
        let hwnd = wparam as HWND;
        // SAFETY: `hwnd` is a live window handle Windows has just given us; GetDlgItem and
        // EnableWindow accept any handle (a null result is checked), and SetTimer with a
        // TIMERPROC owns nothing of ours.
        unsafe {
            let ok = GetDlgItem(hwnd, IDOK);
            if !ok.is_null() {
                ARMED.set(false);
                EnableWindow(ok, 0);
                if SetTimer(hwnd, ENABLE_OK_TIMER, WINDOWS_OK_DELAY_MS, Some(enable_ok)) == 0 {
                    // Without the timer OK would stay disabled: the user could not allow.
                    EnableWindow(ok, 1);
                    tracing::warn!("cannot delay the consent box's OK button (no timer)");
                }
            }
        }
    }
    // SAFETY: passing the hook's own arguments on, as every hook procedure must; the hook
    // handle argument is ignored by Windows.
    unsafe { CallNextHookEx(std::ptr::null_mut(), code, wparam, lparam) }
}

/// The timer: enables OK again, once.
unsafe extern "system" fn enable_ok(hwnd: HWND, _msg: u32, id: usize, _time: u32) {
    // SAFETY: `hwnd` is the box the timer was set on, dispatched by its own modal loop while
    // it exists; the calls take any handle.
    unsafe {
        KillTimer(hwnd, id);
        let ok = GetDlgItem(hwnd, IDOK);
        if !ok.is_null() {
            EnableWindow(ok, 1);
        }
    }
}

impl ConsentDialog for MessageBox {
    fn ask(&self, text: &str) -> Answer {
        let text = wide(&windows_text(text));
        let title = wide(TITLE);
        ARMED.set(true);
        // SAFETY: a thread hook (no module handle, this thread's id) with a procedure that
        // lives for the whole program; removed below before this function returns.
        let hook = unsafe {
            SetWindowsHookExW(
                WH_CBT,
                Some(on_cbt),
                std::ptr::null_mut(),
                GetCurrentThreadId(),
            )
        };
        if hook.is_null() {
            tracing::warn!("cannot delay the consent box's OK button; showing it without");
        }
        // SAFETY: both strings are NUL-terminated UTF-16 buffers that live until the call
        // returns; a null owner window is allowed (the box has no owner).
        let code = unsafe {
            MessageBoxW(
                std::ptr::null_mut(),
                text.as_ptr(),
                title.as_ptr(),
                WINDOWS_STYLE,
            )
        };
        let missed = ARMED.replace(false);
        // A box that was shown (code 0: it was not) and answered without the delay.
        if missed && !hook.is_null() && code != 0 {
            tracing::warn!("the consent box's OK button was not found to delay it");
        }
        if !hook.is_null() {
            // SAFETY: the handle SetWindowsHookExW returned above, removed once.
            unsafe { UnhookWindowsHookEx(hook) };
        }
        windows_result(code)
    }
}
