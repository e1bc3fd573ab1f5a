//! The evdev backend and the X11 backend see the same input the same way: one timing script
//! (key presses and releases, pointer motion, buttons, wheel steps) is encoded twice, as the
//! kernel's `struct input_event` bytes (both layouts) and as the X server's XRecord device
//! events, decoded by each backend's own decoder (evdev through `pump`, the path that reads
//! devices), and windowed by the same feature code: the events and the windows must be equal.
#![cfg(target_os = "linux")]

use cadence_agent::capture::evdev::{
    self, BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, DeviceDecoder, EV_KEY, EV_REL, EV_SYN, KernelTimeMapper,
    Layout, Pumped, REL_HWHEEL, REL_WHEEL, REL_X, REL_Y, SYN_REPORT,
};
use cadence_agent::capture::x11::{RecordDecoder, encode_test_event};
use cadence_agent::capture::{InputEvent, KeyClass, keyclass};
use cadence_agent::features::Windower;
use cadence_config::WindowPolicy;

/// One step of the timing script, at a whole millisecond (X11's resolution).
#[derive(Debug, Clone, Copy)]
enum Step {
    Key {
        evdev_code: u16,
        down: bool,
    },
    Move {
        dx: i16,
        dy: i16,
    },
    Button {
        n: u8,
        down: bool,
    },
    /// X11 buttons 4 (up), 5 (down), 6 (left), 7 (right).
    Wheel {
        x11_button: u8,
    },
}

/// A plausible session: typing with overlaps, corrections and modifiers, pointer strokes
/// with clicks and wheel steps, from a seeded generator.
fn script(seed: u64) -> Vec<(u32, Step)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let codes_of = |class: KeyClass| -> Vec<u16> {
        (1..=120u16)
            .filter(|&c| keyclass::from_evdev(c) == class)
            .collect()
    };
    let pools = [
        codes_of(KeyClass::Character),
        codes_of(KeyClass::Space),
        codes_of(KeyClass::Correction),
        codes_of(KeyClass::Enter),
        codes_of(KeyClass::Navigation),
    ];
    let mut steps = Vec::new();
    let mut t = 5_000u32;
    for _burst in 0..rng.usize(6..12) {
        // Typing: each key pressed, and released after its hold; the next press may come
        // before the release (rollover). Releases are queued by time.
        let mut pending: Vec<(u32, u16)> = Vec::new();
        for _ in 0..rng.usize(20..60) {
            let pool = &pools[if rng.u8(0..10) < 7 {
                0
            } else {
                rng.usize(1..5)
            }];
            let code = pool[rng.usize(0..pool.len())];
            if pending.iter().any(|&(_, c)| c == code) {
                continue;
            }
            let shift = rng.u8(0..10) == 0;
            if shift {
                steps.push((
                    t,
                    Step::Key {
                        evdev_code: 42,
                        down: true,
                    },
                ));
                t += rng.u32(20..60);
            }
            steps.push((
                t,
                Step::Key {
                    evdev_code: code,
                    down: true,
                },
            ));
            pending.push((t + rng.u32(40..140), code));
            t += rng.u32(30..250);
            pending.sort_unstable();
            while let Some(&(rt, c)) = pending.first() {
                if rt > t {
                    break;
                }
                steps.push((
                    rt,
                    Step::Key {
                        evdev_code: c,
                        down: false,
                    },
                ));
                pending.remove(0);
            }
            if shift {
                steps.push((
                    t,
                    Step::Key {
                        evdev_code: 42,
                        down: false,
                    },
                ));
                t += rng.u32(5..30);
            }
        }
        for (rt, c) in pending {
            let rt = rt.max(t);
            steps.push((
                rt,
                Step::Key {
                    evdev_code: c,
                    down: false,
                },
            ));
            t = rt + 1;
        }
        t += rng.u32(300..2000);
        // Pointing: a stroke, a click, sometimes a right or middle click, some wheel steps.
        for _ in 0..rng.usize(30..120) {
            let (dx, dy) = (rng.i16(-12..13), rng.i16(-12..13));
            steps.push((t, Step::Move { dx, dy }));
            t += rng.u32(4..20);
        }
        let n = [1u8, 1, 1, 3, 2][rng.usize(0..5)];
        steps.push((t, Step::Button { n, down: true }));
        t += rng.u32(60..140);
        steps.push((t, Step::Button { n, down: false }));
        t += rng.u32(100..400);
        for _ in 0..rng.usize(0..6) {
            steps.push((
                t,
                Step::Wheel {
                    x11_button: rng.u8(4..8),
                },
            ));
            t += rng.u32(20..80);
        }
        t += rng.u32(500..3000);
    }
    steps.sort_by_key(|&(t, _)| t);
    steps
}

/// The script as XRecord device events (32-byte records, one batch).
fn as_x11(steps: &[(u32, Step)]) -> Vec<u8> {
    let (mut x, mut y) = (700i16, 400i16);
    // The first motion only sets the origin of X11's position-to-delta conversion.
    let mut out = encode_test_event(6, 0, steps[0].0, x, y).to_vec();
    for &(ms, step) in steps {
        let rec = match step {
            Step::Key { evdev_code, down } => {
                let code = u8::try_from(evdev_code + 8).unwrap_or(0);
                encode_test_event(if down { 2 } else { 3 }, code, ms, x, y)
            }
            Step::Move { dx, dy } => {
                x += dx;
                y += dy;
                encode_test_event(6, 0, ms, x, y)
            }
            Step::Button { n, down } => encode_test_event(if down { 4 } else { 5 }, n, ms, x, y),
            Step::Wheel { x11_button } => {
                out.extend_from_slice(&encode_test_event(4, x11_button, ms, x, y));
                encode_test_event(5, x11_button, ms, x, y)
            }
        };
        out.extend_from_slice(&rec);
    }
    out
}

/// The script as the kernel's `input_event` records, each step its own packet.
fn as_evdev(steps: &[(u32, Step)], layout: Layout) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rec = |us: u64, kind: u16, code: u16, value: i32| {
        out.extend_from_slice(&evdev::encode_test_event(layout, us, kind, code, value));
    };
    for &(ms, step) in steps {
        let us = u64::from(ms) * 1000;
        match step {
            Step::Key { evdev_code, down } => {
                rec(us, 4, 4, 0x7001e); // MSC_SCAN, as keyboards send it: never read
                rec(us, EV_KEY, evdev_code, i32::from(down));
            }
            Step::Move { dx, dy } => {
                if dx != 0 {
                    rec(us, EV_REL, REL_X, i32::from(dx));
                }
                if dy != 0 {
                    rec(us, EV_REL, REL_Y, i32::from(dy));
                }
            }
            Step::Button { n, down } => {
                let code = match n {
                    1 => BTN_LEFT,
                    2 => BTN_MIDDLE,
                    _ => BTN_RIGHT,
                };
                rec(us, EV_KEY, code, i32::from(down));
            }
            Step::Wheel { x11_button } => match x11_button {
                4 => rec(us, EV_REL, REL_WHEEL, 1),
                5 => rec(us, EV_REL, REL_WHEEL, -1),
                6 => rec(us, EV_REL, REL_HWHEEL, -1),
                _ => rec(us, EV_REL, REL_HWHEEL, 1),
            },
        }
        rec(us, EV_SYN, SYN_REPORT, 0);
    }
    out
}

fn decode_x11(bytes: &[u8], last_ms: u32) -> Vec<InputEvent> {
    // One batch arriving with its last event: the time mapping is then exact.
    let mut out = Vec::new();
    RecordDecoder::new().decode(bytes, u64::from(last_ms) * 1000, &mut |e| out.push(e));
    out
}

fn decode_evdev(bytes: &[u8], layout: Layout) -> Vec<InputEvent> {
    let mut out = Vec::new();
    let mut decoder = DeviceDecoder::new(layout);
    // CLOCK_MONOTONIC event times with the capture clock's origin at kernel time zero.
    let mut time = KernelTimeMapper::known(0);
    let r = evdev::pump(
        &mut &bytes[..],
        &mut decoder,
        &mut time,
        &mut || 0,
        &mut |e| out.push(e),
    );
    assert_eq!(r.ok(), Some(Pumped::Ended));
    out
}

fn windows(events: &[InputEvent]) -> Vec<String> {
    let policy = WindowPolicy {
        window_us: Some(20_000_000),
        min_keys: 20,
        min_mouse: 40,
        ..WindowPolicy::default()
    };
    let mut w = Windower::new(policy);
    let mut out = Vec::new();
    for ev in events {
        if let Some(v) = w.push(ev) {
            out.push(serde_json::to_string(&v).unwrap_or_default());
        }
    }
    out.extend(
        w.close()
            .map(|v| serde_json::to_string(&v).unwrap_or_default()),
    );
    out
}

#[test]
fn evdev_streams_give_the_same_events_and_windows_as_x11() {
    for seed in 1..=20 {
        let steps = script(seed);
        let last_ms = steps.last().map_or(0, |s| s.0);
        let x11 = decode_x11(&as_x11(&steps), last_ms);
        let x11_windows = windows(&x11);
        assert!(
            x11_windows.len() >= 2
                && x11_windows
                    .iter()
                    .any(|w| w.contains("\"keyboard\":{") || w.contains("\"keyboard\":["))
                && x11_windows
                    .iter()
                    .any(|w| w.contains("\"mouse\":{") || w.contains("\"mouse\":[")),
            "seed {seed}: the script must fill keyboard and mouse windows: {x11_windows:?}"
        );
        for layout in [Layout::Time64, Layout::Time32] {
            let ev = decode_evdev(&as_evdev(&steps, layout), layout);
            assert_eq!(ev.len(), x11.len(), "seed {seed} {layout:?}: event count");
            for (i, (a, b)) in ev.iter().zip(&x11).enumerate() {
                assert_eq!(a, b, "seed {seed} {layout:?}: event {i}");
            }
            assert_eq!(windows(&ev), x11_windows, "seed {seed} {layout:?}: windows");
        }
    }
}

#[test]
fn the_comparison_notices_a_single_shifted_time() {
    // Sensitivity: the equality above is not vacuous. Moving one key release by 1 ms in the
    // evdev stream changes a hold time, and with it the windows.
    let steps = script(3);
    let last_ms = steps.last().map_or(0, |s| s.0);
    let x11_windows = windows(&decode_x11(&as_x11(&steps), last_ms));
    let mut shifted = steps.clone();
    let i = shifted
        .iter()
        .position(|(_, s)| matches!(s, Step::Key { down: false, .. }))
        .unwrap_or(0);
    shifted[i].0 += 1;
    let ev = decode_evdev(&as_evdev(&shifted, Layout::NATIVE), Layout::NATIVE);
    assert_ne!(windows(&ev), x11_windows);
}
