//! A generated recording of plausible human input, for demonstrations and tests on machines
//! without a display — never evaluation data, and never anyone's real input.
//!
//! Typing comes in bursts of words: key holds around 95 ms, flights around 170 ms with
//! log-normal spread, a space after each word, an occasional correction, pauses between
//! sentences. Pointer use comes as strokes sampled at 125 Hz along gently curved paths,
//! ending in a click. Deterministic for a given seed.

use super::{Item, Recording};
use crate::capture::{Button, EventKind, InputEvent, KeyClass};

/// A small deterministic generator (xorshift64*), so the crate needs no RNG dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
    /// Roughly normal (sum of uniforms), mean 0, sd 1.
    fn normal(&mut self) -> f64 {
        (0..6).map(|_| self.next()).sum::<f64>() - 3.0
    }
}

/// Generates `minutes` of alternating typing and pointer use.
pub fn generate(seed: u64, minutes: f64) -> Recording {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let end = (minutes * 60e6) as u64;
    let mut t: u64 = 1_000_000;
    let mut evs: Vec<InputEvent> = Vec::new();
    let ev = |t_us: u64, kind: EventKind| InputEvent {
        t_us,
        kind,
        injected: false,
    };
    while t < end {
        // A sentence: 6-14 words of 2-9 characters.
        for _ in 0..(6 + (rng.next() * 9.0) as usize) {
            let letters = 2 + (rng.next() * 8.0) as usize;
            for i in 0..=letters {
                let class = if i == letters {
                    KeyClass::Space
                } else if rng.next() < 0.03 {
                    KeyClass::Correction
                } else {
                    KeyClass::Character
                };
                let hold = (95.0 + 18.0 * rng.normal()).max(35.0) as u64 * 1000;
                evs.push(ev(t, EventKind::KeyDown { class }));
                evs.push(ev(
                    t + hold,
                    EventKind::KeyUp {
                        class,
                        held_us: hold,
                    },
                ));
                let flight = (170.0 * (0.35 * rng.normal()).exp()).max(40.0) as u64 * 1000;
                t += flight;
            }
        }
        t += rng.range(1_500_000.0, 4_000_000.0) as u64;
        // A few pointer strokes, each ending in a click.
        for _ in 0..(2 + (rng.next() * 4.0) as usize) {
            let (mut angle, speed) = (
                rng.range(0.0, std::f64::consts::TAU),
                rng.range(300.0, 1200.0),
            );
            let steps = 20 + (rng.next() * 60.0) as usize;
            for _ in 0..steps {
                angle += 0.05 * rng.normal();
                let d = speed * 0.008;
                evs.push(ev(
                    t,
                    EventKind::PointerMove {
                        dx: (d * angle.cos()).round() as i32,
                        dy: (d * angle.sin()).round() as i32,
                    },
                ));
                t += 8_000;
            }
            t += rng.range(80_000.0, 300_000.0) as u64;
            let hold = rng.range(70_000.0, 140_000.0) as u64;
            evs.push(ev(
                t,
                EventKind::ButtonDown {
                    button: Button::Left,
                },
            ));
            evs.push(ev(
                t + hold,
                EventKind::ButtonUp {
                    button: Button::Left,
                    held_us: hold,
                },
            ));
            t += hold + rng.range(300_000.0, 900_000.0) as u64;
        }
    }
    evs.sort_by_key(|e| e.t_us);
    Recording {
        subject: "synthetic".into(),
        session: format!("seed-{seed}"),
        split: None,
        segments: Vec::new(),
        items: evs.into_iter().map(Item::Event).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_long_enough() {
        let a = generate(1, 1.0);
        assert_eq!(a.items, generate(1, 1.0).items);
        assert_ne!(a.items, generate(2, 1.0).items);
        assert!(a.events() > 300, "{}", a.events());
    }
}
