//! The main job with live capture: a verifier and an agent capturing a real (virtual) X server
//! while xdotool types there. Windows arrive at the verifier, and none holds the typed word.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "../../agent/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use cadence_e2e::{Agent, TempDir, Verifier, eventually, free_port};
use support::{Xvfb, tools_present};

#[test]
fn live_x11_capture_reaches_the_verifier() {
    if !tools_present("live_x11_capture_reaches_the_verifier") {
        return;
    }
    let x = Xvfb::start(&[]);
    let tmp = TempDir::new("live");
    let v = Verifier::start(&tmp.path().join("verifier"), free_port());
    let token = v.first_token.clone().unwrap_or_else(|| v.token());
    let mut agent = Agent::new(&tmp.path().join("agent"));
    let device = agent.enroll(&v, &token);
    agent.ok(&["consent", "grant"]);
    let args = [
        "--source",
        &format!("x11{}", x.display),
        "--window-secs",
        "4",
        "--min-keys",
        "20",
        "--min-mouse",
        "20",
    ];
    agent.spawn_run(&args);
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..3 {
        x.xdotool(&["type", "--delay", "140", "quixotic zephyrs vex "]);
        x.xdotool(&[
            "mousemove_relative",
            "--",
            "12",
            "7",
            "mousemove_relative",
            "--",
            "-4",
            "9",
        ]);
    }
    assert!(
        eventually(Duration::from_secs(20), || !v.windows(&device).is_empty()),
        "no window reached the verifier; agent status {}",
        agent.status()
    );
    let st = agent.status();
    assert_eq!(st["backend"], "x11-record", "{st}");
    for (_, w) in v.windows(&device) {
        assert!(!w.contains("quixotic") && !w.contains("zephyr"), "{w}");
    }
    agent.stop();
}
