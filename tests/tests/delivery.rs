//! Delivery end to end, with real processes on loopback: every window an agent produces is
//! stored by the verifier exactly once, whatever is killed, and nothing is captured without
//! consent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::time::Duration;

use cadence_e2e::{
    Agent, TempDir, Verifier, eventually, expected_vectors, free_port, write_recording,
};

const WINDOW: [&str; 4] = ["--window-secs", "8", "--min-keys", "20"];

fn run_args<'a>(source: &'a str, speed: &'a str) -> Vec<&'a str> {
    let mut v = vec![
        "--source",
        source,
        "--speed",
        speed,
        "--heartbeat-secs",
        "2",
        "--exit-when-done",
    ];
    v.extend_from_slice(&WINDOW);
    v
}

/// Stored vectors, in sequence order, without their sequence numbers; checks that sequence
/// numbers are unique.
fn stored(v: &Verifier, device: &str) -> Vec<String> {
    let w = v.windows(device);
    let seqs: BTreeSet<u64> = w.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.len(), w.len(), "a sequence number is stored twice");
    w.into_iter().map(|(_, j)| j).collect()
}

fn setup(tag: &str) -> (TempDir, Verifier, Agent, String, u16) {
    let tmp = TempDir::new(tag);
    let port = free_port();
    let v = Verifier::start(&tmp.path().join("verifier"), port);
    let token = v.first_token.clone().unwrap_or_else(|| v.token());
    let agent = Agent::new(&tmp.path().join("agent"));
    let device = agent.enroll(&v, &token);
    (tmp, v, agent, device, port)
}

#[test]
fn every_window_of_a_replay_is_stored_exactly_once() {
    let (tmp, v, mut agent, device, _) = setup("exact");
    let file = tmp.path().join("1_keystrokes.txt");
    write_recording(&file, 30, 1);
    let expected = expected_vectors(&file, &WINDOW);
    assert!(
        expected.len() >= 10,
        "the recording should yield many windows, got {}",
        expected.len()
    );
    agent.ok(&["consent", "grant"]);
    agent.spawn_run(&run_args(
        &format!("replay:aalto:{}", file.display()),
        "max",
    ));
    assert!(
        agent.wait(Duration::from_secs(60)),
        "the agent did not finish delivering"
    );
    assert_eq!(stored(&v, &device), expected);
    let st = agent.status();
    assert_eq!(
        st["windows_produced"].as_u64(),
        Some(expected.len() as u64),
        "{st}"
    );
    assert_eq!(st["queued"].as_u64(), Some(0), "{st}");
}

#[test]
fn a_verifier_down_for_the_whole_replay_gets_everything_afterwards() {
    let (tmp, mut v, mut agent, device, port) = setup("down");
    v.stop();
    let file = tmp.path().join("2_keystrokes.txt");
    write_recording(&file, 20, 2);
    let expected = expected_vectors(&file, &WINDOW);
    agent.ok(&["consent", "grant"]);
    agent.spawn_run(&run_args(
        &format!("replay:aalto:{}", file.display()),
        "max",
    ));
    // Everything is produced and spooled while the verifier is away.
    assert!(eventually(Duration::from_secs(30), || {
        agent.status()["windows_produced"].as_u64() == Some(expected.len() as u64)
    }));
    assert_eq!(agent.status()["sent"].as_u64(), Some(0));
    std::thread::sleep(Duration::from_secs(2));
    let v2 = Verifier::start(&v.dir, port);
    assert!(
        agent.wait(Duration::from_secs(120)),
        "the agent did not deliver after the verifier came back"
    );
    assert_eq!(stored(&v2, &device), expected);
}

#[test]
fn killing_the_verifier_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let (tmp, mut v, mut agent, device, port) = setup("kill-verifier");
    let file = tmp.path().join("3_keystrokes.txt");
    write_recording(&file, 40, 3);
    let expected = expected_vectors(&file, &WINDOW);
    agent.ok(&["consent", "grant"]);
    // 40 sentences take about 9 minutes; at 40x real time about 14 s.
    agent.spawn_run(&run_args(&format!("replay:aalto:{}", file.display()), "40"));
    assert!(eventually(Duration::from_secs(30), || v
        .windows(&device)
        .len()
        >= 3));
    let before = v.windows(&device).len();
    assert!(
        before < expected.len(),
        "the stream finished before the kill; the test proves nothing"
    );
    v.kill9();
    std::thread::sleep(Duration::from_secs(2));
    let v2 = Verifier::start(&v.dir, port);
    assert!(
        agent.wait(Duration::from_secs(120)),
        "the agent did not finish"
    );
    assert_eq!(stored(&v2, &device), expected);
}

#[test]
fn killing_the_agent_mid_stream_loses_no_spooled_window_and_stores_none_twice() {
    let (tmp, v, mut agent, device, _) = setup("kill-agent");
    let file = tmp.path().join("4_keystrokes.txt");
    write_recording(&file, 40, 4);
    let expected = expected_vectors(&file, &WINDOW);
    agent.ok(&["consent", "grant"]);
    agent.spawn_run(&run_args(&format!("replay:aalto:{}", file.display()), "40"));
    assert!(eventually(Duration::from_secs(30), || v
        .windows(&device)
        .len()
        >= 3));
    agent.kill9();
    let produced = agent.status()["spooled"].as_u64().unwrap_or(0);
    // Restarted with no input, the agent delivers what its spool still holds, then exits.
    agent.spawn_run(&run_args("none", "max"));
    assert!(
        agent.wait(Duration::from_secs(60)),
        "the restarted agent did not drain its spool"
    );
    let got = stored(&v, &device);
    assert!(
        got.len() >= 3 && got.len() < expected.len(),
        "{} of {}",
        got.len(),
        expected.len()
    );
    // Exactly the first windows, in order, each once: nothing lost in between, nothing twice.
    assert_eq!(got[..], expected[..got.len()]);
    // Every record the status file last counted as spooled (windows plus the consent record)
    // reached the verifier.
    assert!(
        got.len() as u64 + 1 >= produced,
        "spooled {produced}, stored {}",
        got.len()
    );
}

#[test]
fn nothing_is_captured_without_consent_and_withdrawal_stops_capture() {
    let (_tmp, v, mut agent, device, _) = setup("consent");
    let mut args = vec![
        "--source",
        "synthetic:30",
        "--speed",
        "20",
        "--heartbeat-secs",
        "1",
    ];
    args.extend_from_slice(&["--window-secs", "5", "--min-keys", "20"]);
    agent.spawn_run(&args);
    std::thread::sleep(Duration::from_secs(3));
    let st = agent.status();
    assert_eq!(st["state"], "waiting_for_consent", "{st}");
    assert_eq!(st["windows_produced"].as_u64(), Some(0), "{st}");
    assert_eq!(st["spooled"].as_u64(), Some(0), "{st}");
    assert!(v.windows(&device).is_empty());
    let spool_files = std::fs::read_dir(agent.dir.join("spool"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(spool_files, 0, "something was spooled without consent");

    agent.ok(&["consent", "grant"]);
    assert!(
        eventually(Duration::from_secs(20), || v.windows(&device).len() >= 2),
        "no windows after consent"
    );
    assert_eq!(agent.status()["state"], "monitoring");

    agent.ok(&["consent", "withdraw"]);
    std::thread::sleep(Duration::from_secs(1));
    let at_withdraw = agent.status()["windows_produced"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let st = agent.status();
    assert_eq!(
        st["windows_produced"].as_u64(),
        Some(at_withdraw),
        "capture went on after withdrawal: {st}"
    );
    assert_eq!(st["state"], "withdrawn");
    assert!(
        eventually(Duration::from_secs(10), || {
            v.devices()
                .iter()
                .any(|d| d["device_id"] == device.as_str() && d["state"] == "withdrawn")
        }),
        "the verifier does not show the withdrawal: {:?}",
        v.devices()
    );
    agent.stop();
}
