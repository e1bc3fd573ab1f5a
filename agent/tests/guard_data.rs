//! The injection guard on real human typing: no alert on any Aalto participant, and injected
//! bursts spliced into real typing are caught within about 25 keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::PathBuf;

use cadence_agent::capture::replay::{self, Format, Item};
use cadence_agent::capture::{EventKind, InputEvent, KeyClass};
use cadence_agent::guard::{Guard, KEYS};

fn aalto() -> Option<PathBuf> {
    let found = std::env::var_os("CADENCE_DATA")
        .map(|d| PathBuf::from(d).join("aalto-dev"))
        .filter(|p| p.is_dir());
    assert!(
        found.is_some() || std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but CADENCE_DATA has no aalto-dev/"
    );
    found
}

fn events(rec: &replay::Recording) -> Vec<InputEvent> {
    rec.items
        .iter()
        .filter_map(|i| {
            if let Item::Event(e) = i {
                Some(*e)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn never_fires_on_any_aalto_participant() {
    let Some(dir) = aalto() else {
        println!("skipped: CADENCE_DATA is not set (scripts/test.sh unpacks the data)");
        return;
    };
    let files = replay::expand(Format::Aalto, &[dir]).unwrap();
    assert!(files.len() > 1000);
    let (mut keys, mut fired, mut fired_flagged) = (0usize, Vec::new(), Vec::new());
    for f in &files {
        let Ok((rec, _)) = replay::read_file(Format::Aalto, f) else {
            continue;
        };
        let (mut g, mut flagged) = (Guard::new(), Guard::new());
        for e in events(&rec) {
            keys += usize::from(matches!(e.kind, EventKind::KeyDown { .. }));
            if let Some(a) = g.push(&e) {
                fired.push((f.display().to_string(), a));
            }
            // The same person typing through a remote-control tool: every event carries the
            // OS's injected flag, and the guard must still stay quiet.
            let remote = InputEvent {
                injected: true,
                ..e
            };
            if let Some(a) = flagged.push(&remote) {
                fired_flagged.push((f.display().to_string(), a));
            }
        }
    }
    println!(
        "{} participants, {keys} key presses, {} alerts, {} with every event OS-flagged",
        files.len(),
        fired.len(),
        fired_flagged.len()
    );
    assert!(fired.is_empty(), "false alarms on human typing: {fired:?}");
    assert!(
        fired_flagged.is_empty(),
        "false alarms on OS-flagged human typing: {fired_flagged:?}"
    );
}

#[test]
fn catches_injected_bursts_spliced_into_real_typing() {
    let Some(dir) = aalto() else {
        println!("skipped: CADENCE_DATA is not set (scripts/test.sh unpacks the data)");
        return;
    };
    let files = replay::expand(Format::Aalto, &[dir]).unwrap();
    let mut rng = fastrand::Rng::with_seed(21);
    let mut bursts = 0;
    for f in files.iter().step_by(23) {
        let (rec, _) = replay::read_file(Format::Aalto, f).unwrap();
        let human = events(&rec);
        let Some(end) = human.last().map(|e| e.t_us) else {
            continue;
        };
        for (per_key_ms, jitter_ms) in [(0u64, 0u64), (10, 0), (20, 0), (0, 8), (10, 8), (20, 10)] {
            // Half a second after the person stops, an injector types 60 keys.
            let mut evs = human.clone();
            let mut t = end + 500_000;
            for _ in 0..60 {
                let hold = rng.u64(0..=4_000);
                let class = KeyClass::Character;
                evs.push(InputEvent {
                    t_us: t,
                    kind: EventKind::KeyDown { class },
                    injected: false,
                });
                evs.push(InputEvent {
                    t_us: t + hold,
                    kind: EventKind::KeyUp {
                        class,
                        held_us: hold,
                    },
                    injected: false,
                });
                t += per_key_ms * 1000 + rng.u64(0..=jitter_ms * 1000);
            }
            evs.sort_by_key(|e| e.t_us);
            let mut g = Guard::new();
            let mut injected_keys = 0;
            let mut caught_after = None;
            for e in &evs {
                if e.t_us >= end + 500_000 && matches!(e.kind, EventKind::KeyDown { .. }) {
                    injected_keys += 1;
                }
                if g.push(e).is_some() {
                    assert!(
                        e.t_us >= end + 500_000,
                        "fired on the human part of {}",
                        f.display()
                    );
                    caught_after = Some(injected_keys);
                    break;
                }
            }
            let n = caught_after.unwrap_or_else(|| {
                panic!("missed {per_key_ms} ms ± {jitter_ms} in {}", f.display())
            });
            assert!(n <= KEYS + 1, "caught only after {n} injected keys");
            bursts += 1;
        }
    }
    assert!(bursts > 100, "{bursts}");
}
