//! Leaving the console window behind when the agent is started at logon (Windows).
//!
//! The agent is a console program, so that its commands print to the terminal they are run
//! from. Started by the logon `Run` key, Windows gives it a console window of its own, which
//! would stay open on every user's desktop: `run --background` detaches from it at once
//! (`FreeConsole`), and Windows closes a console no process is attached to. The window may
//! still flash for an instant before that. Elsewhere there is no such window and this does
//! nothing. Never touches anything but this process's console.

/// Detaches this process from its console window, where there is one to leave (Windows).
/// Afterwards nothing reaches a terminal: the log, which would have gone to that window, is
/// not shown anywhere; the tray and `cadence-agent status` show the agent's state.
pub fn from_console() {
    #[cfg(windows)]
    windows::free_console();
}

#[cfg(windows)]
#[allow(unsafe_code)]
mod windows {
    /// `FreeConsole`: after it, writes to the old standard handles fail quietly.
    pub(super) fn free_console() {
        // SAFETY: FreeConsole takes no arguments and only detaches this process from its
        // console; it is harmless when there is none (it then fails, and that is ignored).
        let _ = unsafe { windows_sys::Win32::System::Console::FreeConsole() };
    }
}
