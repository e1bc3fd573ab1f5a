//! Throughput of the capture boundary and the feature code, on one core, with figures printed.
//!
//! `cargo bench -p cadence-agent --bench pipeline`
//!
//! 1. Raw X11 events already in memory (32-byte XRecord records) → decoder → windows.
//! 2. Boundary events already in memory (a synthetic 8 kHz mouse, then keystrokes) → windows.
//! 3. Recorded dataset files parsed from disk (reported separately), when `CADENCE_DATA`
//!    points at the unpacked evaluation data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cadence_agent::capture::replay::{self, Format, Item};
use cadence_agent::capture::{EventKind, InputEvent, KeyClass};
use cadence_agent::features::Windower;
use cadence_config::WindowPolicy;

const RUN: Duration = Duration::from_secs(2);

/// Runs `f` (which processes `per_call` events) repeatedly for about [`RUN`]; events per second.
fn rate(per_call: usize, mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut windows = f(); // warm-up
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < RUN {
        windows = black_box(f());
        calls += 1;
    }
    (
        calls as f64 * per_call as f64 / start.elapsed().as_secs_f64(),
        windows,
    )
}

fn policy() -> WindowPolicy {
    WindowPolicy {
        window_us: Some(60_000_000),
        ..WindowPolicy::default()
    }
}

/// 60 s of an 8 kHz gaming mouse in a loose circle, plus 300 keystrokes.
fn synthetic() -> Vec<InputEvent> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut evs = Vec::new();
    for i in 0..480_000u64 {
        let a = i as f64 / 2000.0;
        evs.push(InputEvent {
            t_us: i * 125,
            kind: EventKind::PointerMove {
                dx: (a.cos() * 3.0).round() as i32 + rng.i32(-1..=1),
                dy: (a.sin() * 3.0).round() as i32 + rng.i32(-1..=1),
            },
            injected: false,
        });
    }
    for i in 0..300u64 {
        let t = i * 190_000 + 7;
        evs.push(InputEvent {
            t_us: t,
            kind: EventKind::KeyDown {
                class: KeyClass::Character,
            },
            injected: false,
        });
        evs.push(InputEvent {
            t_us: t + 85_000,
            kind: EventKind::KeyUp {
                class: KeyClass::Character,
                held_us: 85_000,
            },
            injected: false,
        });
    }
    evs.sort_by_key(|e| e.t_us);
    evs
}

fn main() {
    println!(
        "pipeline benchmark (one core, {} s per figure)",
        RUN.as_secs()
    );

    #[cfg(target_os = "linux")]
    {
        use cadence_agent::capture::x11::{RecordDecoder, encode_test_event};
        // Raw records as XRecord hands them over: motion at 8 kHz (server time in ms, so 8
        // events share each millisecond) and key presses with releases.
        let mut raw = Vec::with_capacity(480_000 * 32);
        let mut n = 0usize;
        let mut rng = fastrand::Rng::with_seed(3);
        let (mut x, mut y) = (500i16, 400i16);
        for i in 0..480_000u32 {
            let t = 1_000 + i / 8;
            // Every record moves the pointer (no zero-motion records for the decoder to skip).
            x = (x + [1, 2, 3, -1, -2][rng.usize(0..5)]).clamp(10, 1900);
            y = (y + [1, 2, -1, -3][rng.usize(0..4)]).clamp(10, 1000);
            raw.extend_from_slice(&encode_test_event(6, 0, t, x, y));
            n += 1;
            if i % 1600 == 0 {
                raw.extend_from_slice(&encode_test_event(2, 38, t, x, y));
                raw.extend_from_slice(&encode_test_event(3, 38, t + 80, x, y));
                n += 2;
            }
        }
        let (r, windows) = rate(n, || {
            let mut dec = RecordDecoder::new();
            let mut w = Windower::new(policy());
            let mut out = 0;
            // XRecord delivers data in chunks; 4 KiB is a typical reply size.
            for chunk in raw.chunks(32 * 128) {
                dec.decode(chunk, 0, &mut |ev| {
                    if w.push(&ev).is_some() {
                        out += 1;
                    }
                });
            }
            out + usize::from(w.close().is_some())
        });
        println!(
            "x11 raw records -> decoder -> features: {:.2} M events/s ({n} events, {windows} windows per pass; X11 times are whole ms, so 8 kHz motion merges per ms)",
            r / 1e6
        );
    }

    let evs = synthetic();
    let (r, windows) = rate(evs.len(), || {
        let mut w = Windower::new(policy());
        let mut out = 0;
        for ev in &evs {
            if w.push(ev).is_some() {
                out += 1;
            }
        }
        out + usize::from(w.close().is_some())
    });
    println!(
        "boundary events (8 kHz mouse + keys) -> features: {:.2} M events/s ({} events, {windows} windows per pass)",
        r / 1e6,
        evs.len()
    );

    let Some(data) = std::env::var_os("CADENCE_DATA").map(PathBuf::from) else {
        println!("dataset figures skipped: CADENCE_DATA is not set");
        return;
    };
    for (format, sub) in [(Format::Aalto, "aalto-dev"), (Format::Balabit, "balabit")] {
        let Ok(files) = replay::expand(format, &[data.join(sub)]) else {
            println!("{sub}: not found under CADENCE_DATA");
            continue;
        };
        let start = Instant::now();
        let (mut bytes, mut recs) = (0u64, Vec::new());
        for f in &files {
            bytes += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            if let Ok((rec, _)) = replay::read_file(format, f) {
                recs.push(rec);
            }
        }
        let parse = start.elapsed().as_secs_f64();
        let events: usize = recs.iter().map(|r| r.events()).sum();
        println!(
            "{sub}: parse {} files, {:.1} MB: {:.2} s, {:.2} M events/s, {:.0} MB/s",
            files.len(),
            bytes as f64 / 1e6,
            parse,
            events as f64 / parse / 1e6,
            bytes as f64 / parse / 1e6
        );
        let (r, windows) = rate(events, || {
            let mut out = 0;
            for rec in &recs {
                let mut w = Windower::new(policy());
                for item in &rec.items {
                    if let Item::Event(ev) = item
                        && w.push(ev).is_some()
                    {
                        out += 1;
                    }
                }
                out += usize::from(w.close().is_some());
            }
            out
        });
        println!(
            "{sub}: replayed events in memory -> features: {:.2} M events/s ({events} events, {windows} windows per pass)",
            r / 1e6
        );
    }
}
