//! Keystroke timing accumulator for one window.
//!
//! Sees only key classes and times. Keeps distributions (hold, down-down, up-down, press to
//! press two keys apart), not the order in which they happened: by the time a window closes,
//! the buffers have been reordered by the quantile code, and only their statistics are handed
//! on.

use cadence_wire::features::{KEYBOARD_LEN, KeyboardFeatures};

use super::stats::{Samples, round3};
use crate::capture::KeyClass;

/// A down-down flight longer than this is a pause (µs).
pub const PAUSE_US: u64 = 1_000_000;
/// Class-specific statistics need at least this many samples, else the all-keys value is used.
const MIN_CLASS_SAMPLES: usize = 3;
/// Recent presses remembered to pair a release with the press after it (for up-down flight).
const RECENT: usize = 16;

/// One recent press: when it went down, and when the next key went down after it.
#[derive(Debug, Clone, Copy)]
struct Press {
    down_us: u64,
    next_down_us: Option<u64>,
    up_us: Option<u64>,
}

/// Keystroke statistics of the window being filled.
#[derive(Debug, Default)]
pub struct KeyboardAcc {
    presses: u32,
    corrections: u32,
    rollovers: u32,
    /// Keys (other than modifiers) currently down, to count rollover.
    held_non_mod: u32,
    hold: Samples,
    hold_char: Samples,
    hold_space: Samples,
    hold_mod: Samples,
    dd: Samples,
    ud: Samples,
    dd_char_char: Samples,
    dd_char_space: Samples,
    dd_space_char: Samples,
    dd_mod_char: Samples,
    dd_to_corr: Samples,
    /// Press to press two keys apart, when neither flight between them is a pause.
    dd2: Samples,
    pauses: Samples,
    /// Time and class of the previous press in this window.
    last_down: Option<(u64, KeyClass)>,
    /// Time of the press before the previous one, when the flight between them was no pause.
    before_last: Option<u64>,
    /// Ring of recent presses, to attribute a late release (overlap) to the right press.
    recent: [Option<Press>; RECENT],
    recent_pos: usize,
}

impl KeyboardAcc {
    /// Key presses counted in this window.
    pub fn presses(&self) -> u32 {
        self.presses
    }

    /// Resets for a new window, keeping allocations.
    pub fn clear(&mut self) {
        let mut bufs = [
            &mut self.hold,
            &mut self.hold_char,
            &mut self.hold_space,
            &mut self.hold_mod,
            &mut self.dd,
            &mut self.ud,
            &mut self.dd_char_char,
            &mut self.dd_char_space,
            &mut self.dd_space_char,
            &mut self.dd_mod_char,
            &mut self.dd_to_corr,
            &mut self.dd2,
            &mut self.pauses,
        ];
        for b in bufs.iter_mut() {
            b.clear();
        }
        self.presses = 0;
        self.corrections = 0;
        self.rollovers = 0;
        self.held_non_mod = 0;
        self.last_down = None;
        self.before_last = None;
        self.recent = [None; RECENT];
        self.recent_pos = 0;
    }

    /// Forgets the previous press so that no flight spans a gap in the input.
    pub fn gap(&mut self) {
        self.last_down = None;
        self.before_last = None;
        self.held_non_mod = 0;
        self.recent = [None; RECENT];
    }

    /// A key went down.
    #[inline]
    pub fn key_down(&mut self, t: u64, class: KeyClass) {
        self.presses += 1;
        if class == KeyClass::Correction {
            self.corrections += 1;
        }
        if self.held_non_mod > 0 {
            self.rollovers += 1;
        }
        if class != KeyClass::Modifier {
            self.held_non_mod += 1;
        }
        let mut chained = None;
        if let Some((prev_t, prev_class)) = self.last_down {
            let dd = t.saturating_sub(prev_t);
            if dd > PAUSE_US {
                self.pauses.push(ms(dd));
            } else {
                let d = ms(dd);
                self.dd.push(d);
                if let Some(t2) = self.before_last {
                    self.dd2.push(ms(t.saturating_sub(t2)));
                }
                chained = Some(prev_t);
                use KeyClass::*;
                match (prev_class, class) {
                    (Character, Character) => self.dd_char_char.push(d),
                    (Character, Space) => self.dd_char_space.push(d),
                    (Space, Character) => self.dd_space_char.push(d),
                    (Modifier, Character) => self.dd_mod_char.push(d),
                    (_, Correction) => self.dd_to_corr.push(d),
                    _ => {}
                }
                // Up-down flight: from the previous key's release to this press. If the
                // previous key is still down (overlap), it is computed at its release.
                if let Some(prev) = self
                    .recent
                    .iter_mut()
                    .flatten()
                    .find(|p| p.down_us == prev_t)
                {
                    prev.next_down_us = Some(t);
                    if let Some(up) = prev.up_us {
                        self.ud.push(ms_signed(t as i64 - up as i64));
                    }
                }
            }
        }
        self.before_last = chained;
        self.last_down = Some((t, class));
        self.recent[self.recent_pos] = Some(Press {
            down_us: t,
            next_down_us: None,
            up_us: None,
        });
        self.recent_pos = (self.recent_pos + 1) % RECENT;
    }

    /// A key came up after `held_us`.
    #[inline]
    pub fn key_up(&mut self, t: u64, class: KeyClass, held_us: u64) {
        let down = t.saturating_sub(held_us);
        let Some(press) = self
            .recent
            .iter_mut()
            .flatten()
            .find(|p| p.down_us == down && p.up_us.is_none())
        else {
            // Its press belongs to an earlier window or preceded a gap: not this window's.
            return;
        };
        press.up_us = Some(t);
        let next = press.next_down_us;
        if class != KeyClass::Modifier {
            self.held_non_mod = self.held_non_mod.saturating_sub(1);
        }
        if let Some(next) = next
            && next.saturating_sub(down) <= PAUSE_US
        {
            // The next key went down before this one came up: negative up-down flight.
            self.ud.push(ms_signed(next as i64 - t as i64));
        }
        let h = ms(held_us);
        self.hold.push(h);
        match class {
            KeyClass::Character => self.hold_char.push(h),
            KeyClass::Space => self.hold_space.push(h),
            KeyClass::Modifier => self.hold_mod.push(h),
            _ => {}
        }
    }

    /// The window's keyboard block, or `None` without enough samples to describe anything.
    pub fn finish(&mut self) -> Option<KeyboardFeatures> {
        let [h10, h25, h50, h75, h90] = self.hold.quantiles([0.1, 0.25, 0.5, 0.75, 0.9])?;
        let hold_mad = self.hold.mad()?;
        let [d10, d25, d50, d75, d90] = self.dd.quantiles([0.1, 0.25, 0.5, 0.75, 0.9])?;
        let dd_mad = self.dd.mad()?;
        let [u10, u25, u50, u75, u90] = self.ud.quantiles([0.1, 0.25, 0.5, 0.75, 0.9])?;
        let ud_mad = self.ud.mad()?;
        let n = f64::from(self.presses.max(1));
        let [hc10, hc25, hc50, hc75, hc90] = self
            .hold_char
            .quantiles_if(MIN_CLASS_SAMPLES, [0.1, 0.25, 0.5, 0.75, 0.9])
            .unwrap_or([h10, h25, h50, h75, h90]);
        let [hs25, hs50, hs75] = self
            .hold_space
            .quantiles_if(MIN_CLASS_SAMPLES, [0.25, 0.5, 0.75])
            .unwrap_or([h25, h50, h75]);
        let [cc10, cc25, cc50, cc75, cc90] = self
            .dd_char_char
            .quantiles_if(MIN_CLASS_SAMPLES, [0.1, 0.25, 0.5, 0.75, 0.9])
            .unwrap_or([d10, d25, d50, d75, d90]);
        let [sc25, sc50, sc75] = self
            .dd_space_char
            .quantiles_if(MIN_CLASS_SAMPLES, [0.25, 0.5, 0.75])
            .unwrap_or([d25, d50, d75]);
        let [cs25, cs50, cs75] = self
            .dd_char_space
            .quantiles_if(MIN_CLASS_SAMPLES, [0.25, 0.5, 0.75])
            .unwrap_or([d25, d50, d75]);
        // Too few spans of two flights without a pause: twice the single flight stands in.
        let dd2 = match self.dd2.len() >= MIN_CLASS_SAMPLES {
            true => {
                let [a, b, c, d, e] = self.dd2.quantiles([0.1, 0.25, 0.5, 0.75, 0.9])?;
                [a, b, c, d, e, self.dd2.mad()?]
            }
            false => [d10, d25, d50, d75, d90, dd_mad].map(|x| 2.0 * x),
        };
        let active_ms = self.dd.sum();
        let v: [f64; KEYBOARD_LEN] = [
            h10,
            h25,
            h50,
            h75,
            h90,
            hold_mad,
            hc50,
            hc75 - hc25,
            hs50,
            self.hold_mod.median_if(MIN_CLASS_SAMPLES).unwrap_or(h50),
            d10,
            d25,
            d50,
            d75,
            d90,
            dd_mad,
            u10,
            u25,
            u50,
            u75,
            u90,
            ud_mad,
            cc50,
            cs50,
            sc50,
            self.dd_mod_char.median_if(MIN_CLASS_SAMPLES).unwrap_or(d50),
            self.dd_to_corr.median_if(MIN_CLASS_SAMPLES).unwrap_or(d50),
            f64::from(self.rollovers) / n,
            f64::from(self.corrections) / n,
            self.pauses.len() as f64 / n,
            self.pauses.quantile(0.5).unwrap_or(0.0),
            n / (self.pauses.len() as f64 + 1.0),
            if active_ms > 0.0 {
                self.dd.len() as f64 * 1000.0 / active_ms
            } else {
                0.0
            },
            hc10,
            hc90,
            hs25,
            hs75,
            cc10,
            cc25,
            cc75,
            cc90,
            sc25,
            sc75,
            cs25,
            cs75,
            dd2[0],
            dd2[1],
            dd2[2],
            dd2[3],
            dd2[4],
            dd2[5],
        ];
        Some(KeyboardFeatures(v.map(round3)))
    }
}

#[inline]
fn ms(us: u64) -> f32 {
    us as f32 / 1000.0
}

#[inline]
fn ms_signed(us: i64) -> f32 {
    us as f32 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(f: &KeyboardFeatures, name: &str) -> f64 {
        f.get(name).unwrap()
    }

    #[test]
    fn steady_typing_gives_its_own_timings() {
        let mut k = KeyboardAcc::default();
        // 30 characters, one every 200 ms, each held 80 ms: no overlap.
        for i in 0..30u64 {
            let t = i * 200_000;
            k.key_down(t, KeyClass::Character);
            k.key_up(t + 80_000, KeyClass::Character, 80_000);
        }
        let f = k.finish().unwrap();
        assert_eq!(feature(&f, "hold_p50"), 80.0);
        assert_eq!(feature(&f, "dd_p50"), 200.0);
        assert_eq!(feature(&f, "ud_p50"), 120.0);
        assert_eq!(feature(&f, "rollover_rate"), 0.0);
        assert_eq!(feature(&f, "pause_rate"), 0.0);
        assert_eq!(feature(&f, "keys_per_sec"), 5.0);
    }

    #[test]
    fn overlapping_keys_give_negative_up_down_and_rollover() {
        let mut k = KeyboardAcc::default();
        // Each key is pressed 100 ms after the previous and held 150 ms: 50 ms overlap.
        for i in 0..20u64 {
            let t = i * 100_000;
            k.key_down(t, KeyClass::Character);
            if i > 0 {
                k.key_up(t + 50_000 - 100_000, KeyClass::Character, 150_000);
            }
        }
        let f = k.finish().unwrap();
        assert_eq!(feature(&f, "ud_p50"), -50.0);
        assert_eq!(feature(&f, "hold_p50"), 150.0);
        assert!(feature(&f, "rollover_rate") > 0.9);
    }

    #[test]
    fn pauses_are_not_flights() {
        let mut k = KeyboardAcc::default();
        let mut t = 0;
        for burst in 0..4 {
            for _ in 0..10 {
                k.key_down(t, KeyClass::Character);
                k.key_up(t + 50_000, KeyClass::Character, 50_000);
                t += 150_000;
            }
            if burst < 3 {
                t += 3_000_000;
            }
        }
        let f = k.finish().unwrap();
        assert_eq!(
            feature(&f, "dd_p90"),
            150.0,
            "pauses stay out of the flight distribution"
        );
        assert_eq!(feature(&f, "pause_rate"), 3.0 / 40.0);
        assert_eq!(feature(&f, "pause_p50"), 3150.0);
        assert_eq!(feature(&f, "burst_keys_mean"), 10.0);
    }

    #[test]
    fn two_keys_apart_never_spans_a_pause() {
        let mut k = KeyboardAcc::default();
        let mut t = 0;
        // Four bursts of six keys, flights alternating 100 and 300 ms: two keys apart is
        // always 400 ms. Spans across the 2 s pauses would be far longer.
        for _ in 0..4 {
            for i in 0..6u64 {
                k.key_down(t, KeyClass::Character);
                k.key_up(t + 50_000, KeyClass::Character, 50_000);
                t += if i % 2 == 0 { 100_000 } else { 300_000 };
            }
            t += 2_000_000;
        }
        let f = k.finish().unwrap();
        assert_eq!(k.dd2.len(), 16);
        for q in ["dd2_p10", "dd2_p50", "dd2_p90"] {
            assert_eq!(feature(&f, q), 400.0, "{q}");
        }
        assert_eq!(feature(&f, "dd2_mad"), 0.0);
        assert_eq!(feature(&f, "dd_p10"), 100.0);
        assert_eq!(feature(&f, "dd_p90"), 300.0);
    }

    #[test]
    fn class_percentiles_are_their_own_or_the_all_keys_value() {
        let mut k = KeyboardAcc::default();
        // Words of four characters (held 80 ms, 150 ms apart) and a space (held 120 ms).
        let mut t = 0;
        for i in 0..40u64 {
            let (class, held) = match i % 5 == 4 {
                true => (KeyClass::Space, 120_000),
                false => (KeyClass::Character, 80_000),
            };
            k.key_down(t, class);
            k.key_up(t + held, class, held);
            t += 150_000;
        }
        let f = k.finish().unwrap();
        assert_eq!(feature(&f, "hold_char_p10"), 80.0);
        assert_eq!(feature(&f, "hold_char_p90"), 80.0);
        assert_eq!(feature(&f, "hold_space_p25"), 120.0);
        assert_eq!(feature(&f, "hold_space_p75"), 120.0);
        assert_eq!(feature(&f, "dd_space_char_p75"), 150.0);
        assert_eq!(feature(&f, "dd2_p50"), 300.0);

        // Two spaces only: too few, so the space percentiles are the all-keys ones.
        let mut k = KeyboardAcc::default();
        for i in 0..30u64 {
            let (class, held) = match i % 15 == 14 {
                true => (KeyClass::Space, 200_000),
                false => (KeyClass::Character, 60_000 + (i % 4) * 10_000),
            };
            k.key_down(i * 250_000, class);
            k.key_up(i * 250_000 + held, class, held);
        }
        let f = k.finish().unwrap();
        assert_eq!(feature(&f, "hold_space_p25"), feature(&f, "hold_p25"));
        assert_eq!(feature(&f, "hold_space_p75"), feature(&f, "hold_p75"));
        assert_eq!(feature(&f, "dd_char_space_p25"), feature(&f, "dd_p25"));
    }

    #[test]
    fn gap_breaks_flights() {
        let mut k = KeyboardAcc::default();
        k.key_down(0, KeyClass::Character);
        k.key_up(10_000, KeyClass::Character, 10_000);
        k.gap();
        k.key_down(20_000, KeyClass::Character);
        k.key_up(30_000, KeyClass::Character, 10_000);
        k.key_down(40_000, KeyClass::Character);
        assert_eq!(k.dd.len(), 1);
        assert!(k.dd2.is_empty(), "no span of two flights crosses a gap");
    }
}
