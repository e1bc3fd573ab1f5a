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
//! The usual way, `zenity --question --ok-label A --cancel-label B` judged by its exit status,
//! gives three ways to a false "Allow": zenity focuses the OK button, so Enter answers OK; a
//! window destroyed from outside (there is no window manager to ask it to close) makes zenity
//! exit 0, the same status as OK; and a missing zenity looks like Cancel, so a missing backend
//! cannot be reported. Here zenity runs
//! with `--switch` (no OK/Cancel buttons at all) and two extra buttons, "Not now" first so it
//! holds the focus; zenity prints the label of the extra button clicked, and only the exact
//! text `Allow` on its standard output counts. A missing program is [`Answer::Unavailable`].
//!
//! # Windows: an OK/Cancel message box
//!
//! `MessageBoxW` with OK and Cancel (`MB_OKCANCEL`), Cancel the default (`MB_DEFBUTTON2`), and
//! the text saying that OK means "Allow" and Cancel "Not now". Not Yes and No: Windows gives
//! those the keyboard mnemonics Y and N, so someone typing when the box appeared could answer
//! Yes with one key. OK and Cancel have no mnemonic; Enter and Space press the focused button,
//! at first the default, Cancel; Escape and the close box answer Cancel. Only `IDOK` is
//! consent ([`windows_result`]); the style, and why the box stays on top without taking the
//! keyboard focus, is [`WINDOWS_STYLE`]. The call itself is in `dialog/windows.rs`.
//!
//! # macOS: osascript in a child process
//!
//! A dialog needs the main thread and the application's event loop, which the agent's runtime
//! holds; `/usr/bin/osascript` shows it as a process of its own instead. Its script is fixed;
//! the title and the text reach it as arguments (`on run argv`), never spliced into the
//! script, so no notice text can change what it runs. "Not now" is both the default and the
//! cancel button (Enter and Escape answer it, and cancelling exits with an error); only the
//! exact output `button returned:Allow` with exit status 0 counts ([`osascript_result`]).

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
    #[cfg(windows)]
    {
        Arc::new(windows::MessageBox)
    }
    #[cfg(target_os = "macos")]
    {
        Arc::new(Osascript::default())
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
        c
    }
}

impl ConsentDialog for Zenity {
    fn ask(&self, text: &str) -> Answer {
        match run(
            &self.open,
            self.command(text),
            &self.program,
            "on Debian and Ubuntu: apt install zenity",
        ) {
            Ok((code, out, err)) => interpret(code, &out, &err),
            Err(a) => a,
        }
    }

    fn close(&self) {
        kill(&self.open);
    }
}

/// How a dialog program ended: its exit code (`None`: killed by a signal), standard output and
/// standard error.
type Ended = (Option<i32>, Vec<u8>, Vec<u8>);

/// Runs a dialog program to its end and returns its exit code, standard output and error.
/// `open` holds the child meanwhile, so that [`kill`] can end it from another thread (that
/// answers [`Answer::NotNow`]). A program that cannot start is [`Answer::Unavailable`], with
/// `install` as the hint when it is missing.
fn run(
    open: &Mutex<Option<Child>>,
    mut command: Command,
    program: &str,
    install: &str,
) -> Result<Ended, Answer> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Answer::Unavailable(format!(
                "no dialog program: `{program}` is not installed ({install})"
            )));
        }
        Err(e) => {
            return Err(Answer::Unavailable(format!("`{program}` cannot run: {e}")));
        }
    };
    // Drained on their own threads, so a chatty program cannot fill a pipe and stall.
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
    *lock(open) = Some(child);
    // Polled, not waited on, so that `kill` can take the child meanwhile.
    let status = loop {
        let mut held = lock(open);
        let Some(c) = held.as_mut() else {
            return Err(Answer::NotNow);
        };
        match c.try_wait() {
            Ok(Some(status)) => {
                held.take();
                break status;
            }
            Ok(None) => {}
            Err(e) => {
                held.take();
                return Err(Answer::Unavailable(format!(
                    "the dialog cannot be watched: {e}"
                )));
            }
        }
        drop(held);
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    Ok((status.code(), out, err))
}

/// Ends the dialog program [`run`] is waiting for, if any.
fn kill(open: &Mutex<Option<Child>>) {
    if let Some(mut c) = lock(open).take() {
        let _ = c.kill();
        let _ = c.wait();
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
        (code, _) => failed("zenity", code, stderr),
    }
}

/// A dialog program that failed: its exit and the first line it wrote to standard error.
fn failed(program: &str, code: Option<i32>, stderr: &[u8]) -> Answer {
    let err = String::from_utf8_lossy(stderr);
    let first = err
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message");
    Answer::Unavailable(format!(
        "the dialog could not be shown ({program} exit {}: {first})",
        code.map_or_else(|| "by signal".to_owned(), |c| c.to_string())
    ))
}

/// `MessageBoxW`'s answer for OK (the value of `IDOK`): the only answer that is consent.
pub const IDOK: i32 = 1;

/// The Windows message box's style, as `MB_*` bits (`dialog/windows.rs` checks them against
/// the OS's own names; they are here so that the tests on every OS see them):
///
/// - `MB_OKCANCEL` (0x1): OK and Cancel, which have no keyboard mnemonic (Yes and No do: Y, N);
/// - `MB_DEFBUTTON2` (0x100): Cancel is the default and holds the focus, so Enter and Space
///   answer "Not now";
/// - `MB_ICONQUESTION` (0x20);
/// - `MB_TOPMOST` (0x4_0000): above other windows, so it is seen even though it does not come
///   forward by itself.
///
/// Not `MB_SETFOREGROUND`: it asks Windows to move the keyboard focus to the box, away from
/// whatever the user is typing in when it appears. Without it Windows' own rules decide (a
/// program in the background usually gets a flashing taskbar button instead of the focus).
/// Where the box gets the focus anyway, no keystroke but a deliberate Tab to OK and then Enter
/// or Space can grant, and not before [`WINDOWS_OK_DELAY_MS`].
pub const WINDOWS_STYLE: u32 = 0x1 | 0x100 | 0x20 | 0x4_0000;

/// The OK button of the Windows box is disabled for this long from the box's first
/// activation (a thread-local CBT hook disables it then, a timer enables it): when it appears
/// with the focus, or, when Windows keeps it in the background, when the user first brings
/// it forward. Keys typed meanwhile, Tab and Enter among them, cannot reach it, as Tab skips a
/// disabled button. Long enough for a burst of typing to notice the box, short
/// enough not to be in the way of someone who means to allow.
pub const WINDOWS_OK_DELAY_MS: u32 = 1_500;

/// The text of the Windows message box: its buttons read OK and Cancel, not "Allow" and "Not
/// now", so it says which is which.
pub fn windows_text(text: &str) -> String {
    format!(
        "{text}\n\nThe buttons below read OK and Cancel: choose OK for \"{ALLOW}\", Cancel for \
         \"{NOT_NOW}\". Escape and closing this window also mean \"{NOT_NOW}\"."
    )
}

/// Reads `MessageBoxW`'s answer: only `IDOK` is consent. 0 means the box could not be shown;
/// anything else (`IDCANCEL` from Cancel, Escape or the close box; any value an OK/Cancel box
/// should never give, `IDYES` included) is "not now".
pub fn windows_result(code: i32) -> Answer {
    match code {
        IDOK => Answer::Allow,
        0 => Answer::Unavailable("the message box could not be shown".into()),
        _ => Answer::NotNow,
    }
}

/// The fixed AppleScript: the title and the text are its arguments, never part of it.
const OSASCRIPT: [&str; 3] = [
    "on run argv",
    "display dialog (item 2 of argv) with title (item 1 of argv) buttons {\"Not now\", \"Allow\"} \
     default button \"Not now\" cancel button \"Not now\" with icon caution",
    "end run",
];

/// The macOS dialog: `osascript` in a child process (see the module documentation).
#[derive(Debug, Clone)]
pub struct Osascript {
    /// The program to run: `/usr/bin/osascript` unless a test says otherwise.
    pub program: String,
    /// The osascript process while a dialog is open, so that [`ConsentDialog::close`] can end
    /// it.
    pub open: Arc<Mutex<Option<Child>>>,
}

impl Default for Osascript {
    fn default() -> Osascript {
        Osascript {
            program: "/usr/bin/osascript".into(),
            open: Arc::default(),
        }
    }
}

impl Osascript {
    /// The command line: the script as `-e` lines, then the title (which starts with a letter,
    /// so no text can be read as an option) and the text.
    fn command(&self, text: &str) -> Command {
        let mut c = Command::new(&self.program);
        for line in OSASCRIPT {
            c.arg("-e").arg(line);
        }
        c.arg(TITLE).arg(text);
        c
    }
}

impl ConsentDialog for Osascript {
    fn ask(&self, text: &str) -> Answer {
        match run(
            &self.open,
            self.command(text),
            &self.program,
            "it comes with macOS",
        ) {
            Ok((code, out, err)) => osascript_result(code, &out, &err),
            Err(a) => a,
        }
    }

    fn close(&self) {
        kill(&self.open);
    }
}

/// Reads osascript's answer: `button returned:Allow` with exit status 0 is consent. "Not now"
/// (the cancel button, also Enter and Escape) exits 1 with "User canceled. (-128)"; any other
/// failure means no dialog could be shown.
pub fn osascript_result(code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> Answer {
    let said = String::from_utf8_lossy(stdout);
    let said = said.trim_end_matches(['\n', '\r']);
    match code {
        Some(0) if said == format!("button returned:{ALLOW}") => Answer::Allow,
        Some(0) => Answer::NotNow,
        Some(1) if String::from_utf8_lossy(stderr).contains("(-128)") => Answer::NotNow,
        code => failed("osascript", code, stderr),
    }
}

/// The call itself (`dialog/windows.rs`); everything around it is tested on every OS.
#[cfg(windows)]
mod windows;

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
    fn on_windows_only_ok_is_consent() {
        assert_eq!(IDOK, 1);
        assert_eq!(windows_result(1), Answer::Allow);
        // 0: MessageBoxW failed.
        assert!(matches!(windows_result(0), Answer::Unavailable(_)));
        // Every other answer, IDCANCEL (2: Cancel, Enter on the default, Escape, the close box)
        // and IDYES (6) included, is not consent.
        for code in (-8..=64).chain([i32::MIN, i32::MAX]) {
            if code != 0 && code != 1 {
                assert_eq!(
                    windows_result(code),
                    Answer::NotNow,
                    "MessageBoxW answered {code}"
                );
            }
        }
    }

    #[test]
    fn the_windows_box_is_ok_cancel_with_cancel_the_default_and_does_not_take_the_focus() {
        // The MB_TYPEMASK bits: MB_OKCANCEL, not MB_YESNO (4), whose Y answers Yes.
        assert_eq!(WINDOWS_STYLE & 0xF, 0x1);
        // The MB_DEFMASK bits: MB_DEFBUTTON2, Cancel.
        assert_eq!(WINDOWS_STYLE & 0xF00, 0x100);
        // MB_SETFOREGROUND.
        assert_eq!(WINDOWS_STYLE & 0x1_0000, 0);
        let t = windows_text("ACME notice.");
        assert!(t.starts_with("ACME notice."));
        assert!(
            t.contains("OK for \"Allow\", Cancel for \"Not now\""),
            "{t}"
        );
    }

    #[test]
    fn on_macos_only_the_allow_button_is_consent() {
        assert_eq!(
            osascript_result(Some(0), b"button returned:Allow\n", b""),
            Answer::Allow
        );
        assert_eq!(
            osascript_result(Some(0), b"button returned:Not now\n", b""),
            Answer::NotNow
        );
        // "Not now" is the cancel button: Enter, Escape and the button itself.
        assert_eq!(
            osascript_result(Some(1), b"", b"execution error: User canceled. (-128)\n"),
            Answer::NotNow
        );
        // The right words with a failure status, or other words, are not consent.
        assert!(matches!(
            osascript_result(Some(1), b"button returned:Allow\n", b"oops"),
            Answer::Unavailable(_)
        ));
        assert_eq!(
            osascript_result(Some(0), b"button returned:Allowed\n", b""),
            Answer::NotNow
        );
        assert_eq!(
            osascript_result(Some(0), b"button returned:Allow, gave up:false\n", b""),
            Answer::NotNow
        );
        assert!(matches!(
            osascript_result(Some(1), b"", b"execution error: No user interaction allowed. (-1713)\n"),
            Answer::Unavailable(m) if m.contains("-1713")
        ));
        assert!(matches!(
            osascript_result(None, b"", b""),
            Answer::Unavailable(_)
        ));
    }

    /// A stand-in for osascript that records its arguments and answers Allow.
    #[cfg(unix)]
    #[test]
    fn osascript_gets_the_text_as_an_argument_never_in_its_script() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cadence-osascript-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("argv");
        let fake = dir.join("osascript");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n--\\n' \"$a\"; done > '{}'\necho 'button returned:Allow'\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let o = Osascript {
            program: fake.display().to_string(),
            ..Osascript::default()
        };
        let evil = "-e \"quoted\" } & do shell script \"touch /tmp/x\" & {";
        assert_eq!(o.ask(evil), Answer::Allow);
        let argv = std::fs::read_to_string(&log).unwrap();
        let args: Vec<&str> = argv.split("\n--\n").filter(|a| !a.is_empty()).collect();
        let mut want = Vec::new();
        for line in OSASCRIPT {
            want.push("-e");
            want.push(line);
        }
        want.push(TITLE);
        want.push(evil);
        assert_eq!(args, want);
        assert!(OSASCRIPT[1].contains("default button \"Not now\" cancel button \"Not now\""));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_text_holds_the_notice_and_both_lists() {
        let t = dialog_text("ACME notice.");
        assert!(t.starts_with("ACME notice."));
        assert!(t.contains("What Cadence collects") && t.contains("never collects"));
        assert!(t.contains(ALLOW) && t.contains(NOT_NOW));
    }
}
