//! Windows: the Win32 message pump of a UI thread, and its wake-up (Windows only).
//!
//! Owns the three calls a UI thread needs: make its message queue, dispatch its next message
//! (the tray icon's hidden window and menu are answered from inside `DispatchMessageW`), and
//! post it an empty `WM_APP` message so that a message sent on its Rust channel is seen.
//!
//! Must never call `TranslateMessage`: it turns key presses into character messages. The
//! thread has no window that takes keyboard focus, and menus read their keys themselves.

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use windows_sys::Win32::System::Threading::GetCurrentThreadId;
use windows_sys::Win32::UI::WindowsAndMessaging::{
    DispatchMessageW, GetMessageW, MSG, PM_NOREMOVE, PeekMessageW, PostThreadMessageW, WM_APP,
};

/// The calling thread's id, after making sure it has a message queue (a thread gets one at
/// its first message call), so that a wake-up posted from now on is kept.
pub fn this_thread_with_queue() -> u32 {
    let mut msg = MSG::default();
    // SAFETY: `msg` is a valid MSG to write into; a null window means this thread's messages;
    // PM_NOREMOVE leaves any message where it is.
    unsafe { PeekMessageW(&mut msg, std::ptr::null_mut(), WM_APP, WM_APP, PM_NOREMOVE) };
    // SAFETY: no arguments, no preconditions.
    unsafe { GetCurrentThreadId() }
}

/// Posts an empty message to `thread_id`, ending its wait in [`dispatch_one`]. A failure (the
/// thread is gone, or its queue is full of wake-ups already) needs nothing done.
pub fn wake(thread_id: u32) {
    // SAFETY: plain values; a thread id that no longer exists makes the call fail, nothing else.
    let _ = unsafe { PostThreadMessageW(thread_id, WM_APP, 0, 0) };
}

/// Waits for the calling thread's next message and dispatches it to its window, if it has
/// one. False when the thread was told to quit (`WM_QUIT`) or the call failed.
pub fn dispatch_one() -> bool {
    let mut msg = MSG::default();
    // SAFETY: `msg` is a valid MSG to write into; a null window means this thread's messages.
    let got = unsafe { GetMessageW(&mut msg, std::ptr::null_mut(), 0, 0) };
    if got <= 0 {
        return false;
    }
    // A thread message (the wake-up) has no window: nothing to dispatch it to.
    if !msg.hwnd.is_null() {
        // SAFETY: `msg` was just filled by GetMessageW on this thread.
        unsafe { DispatchMessageW(&msg) };
    }
    true
}
