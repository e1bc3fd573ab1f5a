//! The consent dialog: the organization's notice, what is and is not collected, and two
//! buttons, "Allow" and "Not now".
//!
//! Owns the choice of dialog backend and the reading of its answer. Hands on an [`Answer`].
//! Never reports [`Answer::Allow`] for anything but an explicit choice of the "Allow" button:
//! Enter, Escape, closing or destroying the window, a crash of the dialog program and a
//! missing dialog backend all mean "not now" or "unavailable".
//!
//! # Why Linux runs zenity itself
//!
//! rfd's Linux message dialog (feature `xdg-portal`) runs `zenity --question --ok-label A
//! --cancel-label B` and reads only the exit status. That gives three ways to a false "Allow":
//! zenity focuses the OK button, so Enter answers OK; a window destroyed from outside (there is
//! no window manager to ask it to close) makes zenity exit 0, the same status as OK; and without
//! zenity rfd answers Cancel silently, so a missing backend cannot be reported. Here zenity runs
//! with `--switch` (no OK/Cancel buttons at all) and two extra buttons, "Not now" first so it
//! holds the focus; zenity prints the label of the extra button clicked, and only the exact
//! text `Allow` on its standard output counts. A missing program is [`Answer::Unavailable`].
//!
//! On Windows and macOS rfd's native message boxes are used, with "Not now" as the first
//! (default) button and "Allow" second: Enter answers the default button on both, and Escape
//! or closing answers `Cancel`, which is not "Allow" either.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The dialog window's title (tests find the window by it).
pub const TITLE: &str = "Cadence: monitoring of input timing";

/// The button that grants consent; the only answer that does.
pub const ALLOW: &str = "Allow";

/// The button that leaves the decision for later.
pub const NOT_NOW: &str = "Not now";

/// What the dialog answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The user chose "Allow".
    Allow,
    /// "Not now", Enter, Escape, or the window was closed.
    NotNow,
    /// No dialog could be shown (the reason, in words): never consent.
    Unavailable(String),
}

/// A way to ask the user. One per OS; tests can substitute their own.
pub trait ConsentDialog: Send + Sync {
    /// Shows the dialog with `text` and blocks until it is answered or closed.
    fn ask(&self, text: &str) -> Answer;

    /// Takes an open dialog off the screen (the agent is stopping); its [`ask`] answers
    /// [`Answer::NotNow`]. Where the OS gives no way to do that, nothing happens.
    ///
    /// [`ask`]: ConsentDialog::ask
    fn close(&self) {}
}

/// Whether a graphical session is there to show a dialog and a tray icon in.
pub fn graphical_session() -> bool {
    if cfg!(any(windows, target_os = "macos")) {
        return true;
    }
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// The dialog's whole text: the organization's notice, then the plain summary.
pub fn dialog_text(notice: &str) -> String {
    format!(
        "{notice}\n\n\
         What Cadence collects on this computer: the timing of key presses (how long a key is \
         held, the time between presses) and of pointer movement, summarized into statistics \
         over windows of about a minute. Only these summaries leave the computer, signed and \
         encrypted, for your organization's verifier.\n\n\
         What it never collects: which keys you press, what you type, passwords, screen \
         contents, window titles, applications, websites, or where the pointer is.\n\n\
         \"{ALLOW}\" starts monitoring. \"{NOT_NOW}\" (or closing this window) starts nothing. \
         You can pause or withdraw at any time from the tray icon or with \
         `cadence-agent consent withdraw`, and see every summary sent with `cadence-agent show`."
    )
}

/// The dialog of this OS.
pub fn system_dialog() -> Arc<dyn ConsentDialog> {
    #[cfg(any(windows, target_os = "macos"))]
    {
        Arc::new(native::Native)
    }
    #[cfg(not(any(windows, target_os = "macos")))]
    {
        Arc::new(Zenity::default())
    }
}

/// zenity, run directly (see the module documentation for why).
#[derive(Debug, Clone)]
pub struct Zenity {
    /// The program to run: `zenity` from `PATH` unless a test says otherwise.
    pub program: String,
    /// The X display to show it on (`None`: the session's `DISPLAY`/`WAYLAND_DISPLAY`).
    pub display: Option<String>,
    /// The zenity process while a dialog is open, so that [`ConsentDialog::close`] can end it.
    pub open: Arc<Mutex<Option<Child>>>,
}

impl Default for Zenity {
    fn default() -> Zenity {
        Zenity {
            program: "zenity".into(),
            display: None,
            open: Arc::default(),
        }
    }
}

impl Zenity {
    /// The command line, with the question's text.
    fn command(&self, text: &str) -> Command {
        let mut c = Command::new(&self.program);
        c.args([
            "--question",
            // No OK/Cancel buttons: a destroyed window exits 0 like OK would.
            "--switch",
            "--no-markup",
            "--width=560",
            "--icon-name=dialog-question",
            "--title",
            TITLE,
            "--text",
            text,
            // The first extra button holds the focus: Enter answers "Not now".
            "--extra-button",
            NOT_NOW,
            "--extra-button",
            ALLOW,
        ]);
        if let Some(d) = &self.display {
            c.env("DISPLAY", d).env_remove("WAYLAND_DISPLAY");
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

impl ConsentDialog for Zenity {
    fn ask(&self, text: &str) -> Answer {
        let mut child = match self.command(text).spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Answer::Unavailable(format!(
                    "no dialog program: `{}` is not installed (on Debian and Ubuntu: apt install zenity)",
                    self.program
                ));
            }
            Err(e) => {
                return Answer::Unavailable(format!("`{}` cannot run: {e}", self.program));
            }
        };
        // Drained on their own threads, so a chatty GTK cannot fill a pipe and stall zenity.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        *lock(&self.open) = Some(child);
        // Polled, not waited on, so that `close` can take the child and kill it meanwhile.
        let status = loop {
            let mut open = lock(&self.open);
            let Some(c) = open.as_mut() else {
                return Answer::NotNow;
            };
            match c.try_wait() {
                Ok(Some(status)) => {
                    open.take();
                    break status;
                }
                Ok(None) => {}
                Err(e) => {
                    open.take();
                    return Answer::Unavailable(format!("the dialog cannot be watched: {e}"));
                }
            }
            drop(open);
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        interpret(status.code(), &out, &err)
    }

    fn close(&self) {
        if let Some(mut c) = lock(&self.open).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads zenity's answer: the label of the extra button clicked on standard output (exit
/// status 1), nothing on Escape (1) or when the window was destroyed (0), an error otherwise.
fn interpret(code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> Answer {
    let said = String::from_utf8_lossy(stdout);
    match (code, said.trim_end_matches(['\n', '\r'])) {
        (_, ALLOW) => Answer::Allow,
        (Some(0 | 1), _) => Answer::NotNow,
        (code, _) => {
            let err = String::from_utf8_lossy(stderr);
            let first = err
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no message");
            Answer::Unavailable(format!(
                "the dialog could not be shown (zenity exit {}: {first})",
                code.map_or_else(|| "by signal".to_owned(), |c| c.to_string())
            ))
        }
    }
}

#[cfg(any(windows, target_os = "macos"))]
mod native {
    //! rfd's native message box; "Not now" is the first (default) button.
    use super::{ALLOW, Answer, ConsentDialog, NOT_NOW, TITLE};

    pub(super) struct Native;

    impl ConsentDialog for Native {
        fn ask(&self, text: &str) -> Answer {
            let r = rfd::MessageDialog::new()
                .set_title(TITLE)
                .set_description(text)
                .set_level(rfd::MessageLevel::Info)
                .set_buttons(rfd::MessageButtons::OkCancelCustom(
                    NOT_NOW.to_owned(),
                    ALLOW.to_owned(),
                ))
                .show();
            match r {
                rfd::MessageDialogResult::Custom(label) if label == ALLOW => Answer::Allow,
                _ => Answer::NotNow,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allow_label_is_consent() {
        assert_eq!(interpret(Some(1), b"Allow\n", b""), Answer::Allow);
        assert_eq!(interpret(Some(1), b"Not now\n", b""), Answer::NotNow);
        // Escape.
        assert_eq!(interpret(Some(1), b"", b""), Answer::NotNow);
        // The window destroyed from outside: zenity exits 0 with nothing said.
        assert_eq!(interpret(Some(0), b"", b""), Answer::NotNow);
        assert_eq!(interpret(Some(1), b"Allowed\n", b""), Answer::NotNow);
        assert_eq!(interpret(Some(1), b"allow\n", b""), Answer::NotNow);
        assert!(matches!(
            interpret(Some(255), b"", b"\n(zenity:1): Gtk-WARNING: cannot open display: :99\n"),
            Answer::Unavailable(m) if m.contains("cannot open display")
        ));
        assert!(matches!(interpret(None, b"", b""), Answer::Unavailable(_)));
    }

    #[test]
    fn a_missing_program_is_unavailable_never_consent() {
        let z = Zenity {
            program: "/nonexistent/cadence-test/zenity".into(),
            ..Zenity::default()
        };
        match z.ask("notice") {
            Answer::Unavailable(m) => assert!(m.contains("not installed"), "{m}"),
            other => panic!("a missing dialog program answered {other:?}"),
        }
    }

    #[test]
    fn the_text_holds_the_notice_and_both_lists() {
        let t = dialog_text("ACME notice.");
        assert!(t.starts_with("ACME notice."));
        assert!(t.contains("What Cadence collects") && t.contains("never collects"));
        assert!(t.contains(ALLOW) && t.contains(NOT_NOW));
    }
}
