//! The one OS call of this crate: where Windows keeps machine-wide program data.
//!
//! The managed file must come from a location only administrators can write. The
//! `ProgramData` environment variable is the user's own (any process can start the agent with
//! another value), so the folder is asked of the shell by its known-folder id instead.
//! Never reads anything the user controls.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::windows::ffi::OsStringExt;
use std::path::PathBuf;

use windows_sys::Win32::System::Com::CoTaskMemFree;
use windows_sys::Win32::UI::Shell::{FOLDERID_ProgramData, KF_FLAG_DEFAULT, SHGetKnownFolderPath};

/// `%ProgramData%` as the system defines it (normally `C:\ProgramData`), or `C:\ProgramData`
/// if the shell cannot say.
pub(crate) fn program_data() -> PathBuf {
    let mut raw: windows_sys::core::PWSTR = std::ptr::null_mut();
    // SAFETY: the GUID is a static, the token is null (the current user, which does not change
    // a machine-wide folder) and `raw` is a valid out-pointer; the flag is a non-negative
    // constant.
    let hr = unsafe {
        SHGetKnownFolderPath(
            &FOLDERID_ProgramData,
            KF_FLAG_DEFAULT as u32,
            std::ptr::null_mut(),
            &mut raw,
        )
    };
    let path = if hr >= 0 && !raw.is_null() {
        // SAFETY: on success `raw` is a NUL-terminated UTF-16 string owned by us until freed
        // below; we read up to (not past) its terminator.
        let wide = unsafe {
            let len = (0..).take_while(|&i| *raw.add(i) != 0).count();
            std::slice::from_raw_parts(raw, len)
        };
        Some(PathBuf::from(OsString::from_wide(wide)))
    } else {
        None
    };
    // SAFETY: the shell allocates `raw` with the COM allocator and the caller frees it, on
    // failure too; freeing null is a no-op.
    unsafe { CoTaskMemFree(raw.cast_const().cast()) };
    path.unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
}
