//! The Windows consent dialog's one OS call, `MessageBoxW` (Windows only).
//!
//! Owns the call and nothing else: the style, the text and the reading of the answer are
//! `dialog.rs`'s, tested on every OS. Never decodes the answer itself.
//! `scripts/check-per-os-files.sh` type-checks this file on Linux against windows-sys.

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use windows_sys::Win32::UI::WindowsAndMessaging::{
    IDOK, MB_DEFBUTTON2, MB_ICONQUESTION, MB_OKCANCEL, MB_TOPMOST, MessageBoxW,
};

use super::{Answer, ConsentDialog, TITLE, WINDOWS_STYLE, windows_result, windows_text};

// What is decoded and tested on every OS is what the OS uses.
const _: () = assert!(super::IDOK == IDOK);
const _: () = assert!(WINDOWS_STYLE == MB_OKCANCEL | MB_DEFBUTTON2 | MB_ICONQUESTION | MB_TOPMOST);

/// The message box (see `dialog.rs`'s module documentation).
pub struct MessageBox;

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

impl ConsentDialog for MessageBox {
    fn ask(&self, text: &str) -> Answer {
        let text = wide(&windows_text(text));
        let title = wide(TITLE);
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
        windows_result(code)
    }
}
