//! The consent dialog on a real X server (Xvfb, no window manager), driven by xdotool as a
//! person would: only a click on "Allow" is consent; "Not now", Enter, Escape, closing the
//! window and killing its connection are not.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod support;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use cadence_agent::ui::dialog::{self, Answer, ConsentDialog, Zenity};
use support::{Xvfb, on_path};

/// True when Xvfb, xdotool and zenity are there; otherwise says the test is skipped (a
/// failure under CI=true, where scripts/test.sh installs them).
fn tools(test: &str) -> bool {
    let missing: Vec<&str> = ["Xvfb", "xdotool", "zenity"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {missing:?} not on PATH"
    );
    eprintln!(
        "skipped: {test}: {} not on PATH (apt-get install xvfb xdotool zenity)",
        missing.join(", ")
    );
    false
}

/// The dialog's window id, once it is mapped.
fn find_window(x: &Xvfb) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("xdotool")
            .env("DISPLAY", &x.display)
            .args(["search", "--onlyvisible", "--name", dialog::TITLE])
            .output()
            .expect("run xdotool");
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(id) = text.split_whitespace().last() {
            return id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the consent dialog never appeared"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Where the window is: (x, y, width, height).
fn geometry(x: &Xvfb, win: &str) -> (i64, i64, i64, i64) {
    let out = Command::new("xdotool")
        .env("DISPLAY", &x.display)
        .args(["getwindowgeometry", "--shell", win])
        .output()
        .expect("run xdotool");
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {text:?}"))
    };
    (get("X"), get("Y"), get("WIDTH"), get("HEIGHT"))
}

/// Shows the dialog, lets `act` answer it, and returns the answer. A dialog still open a
/// while after `act` is dismissed with Escape, so a missed click fails the test instead of
/// hanging it.
fn answer_with(act: impl FnOnce(&Xvfb, &str)) -> Answer {
    let x = Xvfb::start(&[]);
    let z = Zenity {
        display: Some(x.display.clone()),
        ..Zenity::default()
    };
    let text = dialog::dialog_text("Test organization notice.");
    let shown = thread::spawn(move || z.ask(&text));
    let win = find_window(&x);
    x.xdotool(&["windowfocus", "--sync", &win]);
    act(&x, &win);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !shown.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if !shown.is_finished() {
        eprintln!("the dialog is still open after the action: dismissing it with Escape");
        let _ = Command::new("xdotool")
            .env("DISPLAY", &x.display)
            .args(["key", "--window", &win, "Escape"])
            .status();
    }
    shown.join().unwrap()
}

/// Clicks `from_right` pixels left of the window's right edge, on the button row.
fn click(x: &Xvfb, win: &str, from_right: i64) {
    let (wx, wy, w, h) = geometry(x, win);
    let (px, py) = (wx + w - from_right, wy + h - 22);
    x.xdotool(&[
        "mousemove",
        "--sync",
        &px.to_string(),
        &py.to_string(),
        "click",
        "1",
    ]);
}

#[test]
fn a_click_on_allow_grants() {
    if !tools("a_click_on_allow_grants") {
        return;
    }
    // "Allow" is the right-most button.
    let a = answer_with(|x, w| click(x, w, 40));
    assert_eq!(a, Answer::Allow);
}

#[test]
fn a_click_on_not_now_does_not_grant() {
    if !tools("a_click_on_not_now_does_not_grant") {
        return;
    }
    let a = answer_with(|x, w| click(x, w, 130));
    assert_eq!(a, Answer::NotNow);
}

#[test]
fn enter_does_not_grant() {
    if !tools("enter_does_not_grant") {
        return;
    }
    let a = answer_with(|x, _| x.xdotool(&["key", "Return"]));
    assert_eq!(
        a,
        Answer::NotNow,
        "Enter must answer the focused \"Not now\""
    );
}

#[test]
fn escape_does_not_grant() {
    if !tools("escape_does_not_grant") {
        return;
    }
    let a = answer_with(|x, _| x.xdotool(&["key", "Escape"]));
    assert_eq!(a, Answer::NotNow);
}

#[test]
fn closing_the_window_does_not_grant() {
    if !tools("closing_the_window_does_not_grant") {
        return;
    }
    // Destroying the window makes zenity exit 0, the status of an OK button: the reason the
    // dialog reads the button's label, never the exit status.
    let a = answer_with(|x, w| x.xdotool(&["windowclose", w]));
    assert_eq!(a, Answer::NotNow);
    // Killing the dialog's X connection.
    let a = answer_with(|x, w| x.xdotool(&["windowkill", w]));
    assert_ne!(a, Answer::Allow);
}

#[test]
fn a_missing_dialog_program_is_reported_and_never_consent() {
    let z = Zenity {
        program: "/nonexistent/cadence/zenity".into(),
        display: Some(":0".into()),
        ..Zenity::default()
    };
    match z.ask("notice") {
        Answer::Unavailable(why) => assert!(why.contains("not installed"), "{why}"),
        other => panic!("a missing zenity answered {other:?}"),
    }
}

#[test]
fn an_empty_or_too_long_notice_is_a_configuration_error_not_an_empty_dialog() {
    let dir = std::env::temp_dir().join(format!("cadence-notice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let long = "x".repeat(cadence_config::MAX_NOTICE_CHARS + 1);
    for (name, text, says) in [
        ("empty", "   ".to_owned(), "must not be empty"),
        ("long", long, "fit a dialog"),
    ] {
        let managed = dir.join(format!("{name}.toml"));
        std::fs::write(&managed, format!("[notice]\ntext = \"{text}\"\n")).unwrap();
        for args in [&["run", "--source", "none"][..], &["consent", "grant"][..]] {
            let out = Command::new(env!("CARGO_BIN_EXE_cadence-agent"))
                .arg("--data-dir")
                .arg(dir.join("data"))
                .arg("--managed")
                .arg(&managed)
                .args(args)
                .env_remove("DISPLAY")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name} {args:?} started");
            assert!(
                err.contains("notice.text") && err.contains(says),
                "{name} {args:?}: {err}"
            );
        }
        assert!(
            !dir.join("data").join("consent.json").exists(),
            "a bad notice must not record a decision"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_agent_closing_the_dialog_is_not_consent_and_leaves_no_window() {
    if !tools("the_agent_closing_the_dialog_is_not_consent_and_leaves_no_window") {
        return;
    }
    let x = Xvfb::start(&[]);
    let z = Zenity {
        display: Some(x.display.clone()),
        ..Zenity::default()
    };
    let shown = {
        let z = z.clone();
        thread::spawn(move || z.ask("notice"))
    };
    find_window(&x);
    z.close();
    assert_eq!(shown.join().unwrap(), Answer::NotNow);
    let out = Command::new("xdotool")
        .env("DISPLAY", &x.display)
        .args(["search", "--onlyvisible", "--name", dialog::TITLE])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "the dialog is still on screen"
    );
}
