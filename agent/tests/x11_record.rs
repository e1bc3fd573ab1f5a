#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]
//! Live X11 capture against a real X server: each test starts its own `Xvfb`, drives it with
//! `xdotool` (XTEST) and checks what `X11Record` hands on: key classes with the typing rhythm
//! the server measured, pointer motion as deltas, a prompt stop, and a lost server reported as
//! an error rather than a process exit.
//!
//! Needs `Xvfb` and `xdotool` on PATH (Debian: `apt-get install xvfb xdotool xauth`); without
//! them each test prints why it was skipped and passes.

#![cfg(target_os = "linux")]

mod support;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cadence_agent::capture::x11::{X11Record, probe};
use cadence_agent::capture::{
    CaptureError, EventKind, EventReceiver, InputEvent, InputSource, KeyClass, MonoClock, Recv,
    StopFlag, queue,
};
use support::{Xvfb, tools_present};

/// A capture running on its own thread, as the agent runs it.
struct Capture {
    stop: StopFlag,
    rx: EventReceiver,
    result: mpsc::Receiver<Result<(), CaptureError>>,
}

impl Capture {
    fn start(display: &str) -> Capture {
        let (mut sink, rx) = queue(65_536);
        let stop = StopFlag::new();
        let (done_tx, result) = mpsc::channel();
        let mut source = X11Record::new(Some(display.to_owned()), MonoClock::start());
        assert_eq!(source.name(), "x11-record");
        let flag = stop.clone();
        thread::spawn(move || {
            let r = source.run(&mut sink, &flag);
            let _ = done_tx.send(r);
        });
        Capture { stop, rx, result }
    }

    /// Events arriving within `wait`, stopping early once `enough` says so.
    fn collect(&self, wait: Duration, enough: impl Fn(&[InputEvent]) -> bool) -> Vec<InputEvent> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while !enough(&got) {
            match self.rx.recv(Some(deadline)) {
                Recv::Event(ev) => got.push(ev),
                Recv::Timeout | Recv::Closed => break,
            }
        }
        got
    }

    /// Moves the pointer until a motion comes through, so the recording is known to be live,
    /// then drains what is left. Returns where the pointer now is.
    fn wait_until_recording(&self, x: &Xvfb) -> (i32, i32) {
        for i in 0..50 {
            let pos = if i % 2 == 0 { (200, 200) } else { (210, 210) };
            x.xdotool(&["mousemove", &pos.0.to_string(), &pos.1.to_string()]);
            let got = self.collect(Duration::from_millis(200), |evs| {
                evs.iter()
                    .any(|e| matches!(e.kind, EventKind::PointerMove { .. }))
            });
            if !got.is_empty() {
                let _ = self.collect(Duration::from_millis(300), |_| false);
                return pos;
            }
            if let Ok(ended) = self.result.try_recv() {
                panic!("capture ended before recording: {ended:?}");
            }
        }
        panic!("no pointer motion was recorded within 10 s");
    }

    /// The result of `run`, if it ends within `wait`.
    fn finished_within(&self, wait: Duration) -> Option<Result<(), CaptureError>> {
        self.result.recv_timeout(wait).ok()
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn captures_typing_rhythm_and_pointer_deltas_and_stops_promptly() {
    if !tools_present("captures_typing_rhythm_and_pointer_deltas_and_stops_promptly") {
        return;
    }
    let x = Xvfb::start(&[]);
    probe(Some(&x.display)).expect("Xvfb has RECORD");
    let cap = Capture::start(&x.display);
    let mut pos = cap.wait_until_recording(&x);

    // Typing: xdotool presses a key every delay/2 ms (≈ 30 ms here) and holds it ≈ 15 ms.
    let word = "keyboardtiming";
    x.xdotool(&["type", "--delay", "60", word]);
    let n = word.len();
    let events = cap.collect(Duration::from_secs(5), |evs| {
        evs.iter()
            .filter(|e| matches!(e.kind, EventKind::KeyUp { .. }))
            .count()
            >= n
    });
    assert!(
        events.windows(2).all(|w| w[0].t_us <= w[1].t_us),
        "time never goes back"
    );
    let downs: Vec<&InputEvent> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::KeyDown { .. }))
        .collect();
    assert_eq!(downs.len(), n, "one key down per letter: {events:?}");
    assert!(
        downs.iter().all(|e| e.kind
            == EventKind::KeyDown {
                class: KeyClass::Character
            }),
        "letters are the character class: {downs:?}"
    );
    let mut intervals: Vec<u64> = downs.windows(2).map(|w| w[1].t_us - w[0].t_us).collect();
    let interval = median(&mut intervals);
    assert!(
        (20_000..=45_000).contains(&interval),
        "median key-down interval {interval} µs, expected ≈ 30 ms: {intervals:?}"
    );
    let mut holds: Vec<u64> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::KeyUp { held_us, .. } => Some(held_us),
            _ => None,
        })
        .collect();
    assert_eq!(holds.len(), n, "every release pairs with its press");
    let hold = median(&mut holds);
    assert!(
        (5_000..=40_000).contains(&hold),
        "median hold {hold} µs, expected ≈ 15 ms"
    );

    // Pointer: absolute moves on the server come out as the differences between them.
    let mut expected = Vec::new();
    for to in [(230, 240), (260, 200), (200, 200), (201, 199)] {
        x.xdotool(&["mousemove", &to.0.to_string(), &to.1.to_string()]);
        expected.push(EventKind::PointerMove {
            dx: to.0 - pos.0,
            dy: to.1 - pos.1,
        });
        pos = to;
    }
    let moves: Vec<EventKind> = cap
        .collect(Duration::from_secs(5), |evs| evs.len() >= expected.len())
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        moves, expected,
        "pointer motion arrives as deltas, never positions"
    );

    // Stopping: raising the flag ends run() promptly even though no input arrives.
    let t0 = Instant::now();
    cap.stop.raise();
    let result = cap.finished_within(Duration::from_secs(2));
    let took = t0.elapsed();
    assert!(
        matches!(result, Some(Ok(()))),
        "run ended with {result:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    eprintln!(
        "x11_record: key-down intervals {intervals:?} µs (median {interval}), \
         median hold {hold} µs, stop took {took:?}"
    );
}

#[test]
fn a_lost_x_server_is_an_error_not_an_exit() {
    if !tools_present("a_lost_x_server_is_an_error_not_an_exit") {
        return;
    }
    let mut x = Xvfb::start(&[]);
    let cap = Capture::start(&x.display);
    cap.wait_until_recording(&x);
    x.kill();
    match cap.finished_within(Duration::from_secs(5)) {
        Some(Err(e @ CaptureError::Lost(_))) => {
            assert!(e.is_transient(), "a lost server may come back");
            eprintln!("x11_record: after killing Xvfb: {e}");
        }
        other => panic!("expected Err(Lost), got {other:?}"),
    }
}

#[test]
fn a_server_without_record_is_reported_before_capture() {
    if !tools_present("a_server_without_record_is_reported_before_capture") {
        return;
    }
    let x = Xvfb::start(&["-extension", "RECORD"]);
    match probe(Some(&x.display)) {
        Err(CaptureError::NoRecordExtension(d)) => assert_eq!(d, x.display),
        other => panic!("expected NoRecordExtension, got {other:?}"),
    }
    // run() says the same thing instead of hanging.
    let cap = Capture::start(&x.display);
    match cap.finished_within(Duration::from_secs(5)) {
        Some(Err(CaptureError::NoRecordExtension(_))) => {}
        other => panic!("expected NoRecordExtension from run, got {other:?}"),
    }
}
