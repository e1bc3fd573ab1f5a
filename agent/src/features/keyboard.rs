//! Keystroke timing accumulator for one window.
//!
//! Sees only key classes and times. Keeps distributions (hold, down-down, up-down, up-up,
//! press to press two and three keys apart), not the order in which they happened: by the time a window closes,
//! the buffers have been reordered by the quantile code, and only their statistics are handed
//! on.

use cadence_wire::features::{KEYBOARD_LEN, KeyboardFeatures};

use super::stats::{Samples, round3};
use crate::capture::KeyClass;

/// A down-down flight longer than this is a pause (µs).
pub const PAUSE_US: u64 = 1_000_000;
/// Class-specific statistics need at least this many samples, else the all-keys value is used.
const MIN_CLASS_SAMPLES: usize = 3;
/// Recent presses remembered to pair a release with its neighbouring presses and releases
/// (up-down and up-up flight, a modifier's release lag, the hold before a space).
const RECENT: usize = 16;

/// One recent press: its class, when it went down and came up, and when the next key went
/// down after it (and that key's class), when that was no pause later. Neighbours are linked
/// by their place in the ring, not by time: two keys can go down in the same millisecond.
#[derive(Debug, Clone, Copy)]
struct Press {
    class: KeyClass,
    down_us: u64,
    next_down_us: Option<u64>,
    next_class: Option<KeyClass>,
    up_us: Option<u64>,
    /// Ring places of the next press and of the previous one (no pause between).
    next_slot: Option<usize>,
    prev_slot: Option<usize>,
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
    /// Press to press three keys apart, when no flight between them is a pause.
    dd3: Samples,
    /// Release to the next key's release (consecutive presses, no pause between).
    uu: Samples,
    /// A modifier's release after the release of the character key pressed while it was held.
    mod_lag: Samples,
    /// Hold of a character key whose next press is the space bar.
    hold_char_before_space: Samples,
    pauses: Samples,
    /// Time and class of the previous press in this window.
    last_down: Option<(u64, KeyClass, usize)>,
    /// Time of the press before the previous one, when the flight between them was no pause.
    before_last: Option<u64>,
    /// Time of the press before that, when no flight since it was a pause.
    third_last: Option<u64>,
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
            &mut self.dd3,
            &mut self.uu,
            &mut self.mod_lag,
            &mut self.hold_char_before_space,
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
        self.third_last = None;
        self.recent = [None; RECENT];
        self.recent_pos = 0;
    }

    /// Forgets the previous press so that no flight spans a gap in the input.
    pub fn gap(&mut self) {
        self.last_down = None;
        self.before_last = None;
        self.third_last = None;
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
        let mut chained_before = None;
        let slot = self.recent_pos;
        let mut prev_slot = None;
        if let Some((prev_t, prev_class, last_slot)) = self.last_down {
            let dd = t.saturating_sub(prev_t);
            if dd > PAUSE_US {
                self.pauses.push(ms(dd));
            } else {
                let d = ms(dd);
                self.dd.push(d);
                if let Some(t2) = self.before_last {
                    self.dd2.push(ms(t.saturating_sub(t2)));
                }
                if let Some(t3) = self.third_last {
                    self.dd3.push(ms(t.saturating_sub(t3)));
                }
                chained = Some(prev_t);
                chained_before = self.before_last;
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
                // The previous press is the ring's last entry: nothing overwrote it since.
                if let Some(prev) = &mut self.recent[last_slot] {
                    prev_slot = Some(last_slot);
                    prev.next_slot = Some(slot);
                    prev.next_down_us = Some(t);
                    prev.next_class = Some(class);
                    if let Some(up) = prev.up_us {
                        self.ud.push(ms_signed(t as i64 - up as i64));
                        if prev.class == Character && class == Space {
                            self.hold_char_before_space.push(ms(up - prev.down_us));
                        }
                    }
                }
            }
        }
        self.third_last = chained_before;
        self.before_last = chained;
        self.last_down = Some((t, class, slot));
        self.recent[slot] = Some(Press {
            class,
            down_us: t,
            next_down_us: None,
            next_class: None,
            up_us: None,
            next_slot: None,
            prev_slot,
        });
        self.recent_pos = (slot + 1) % RECENT;
    }

    /// A key came up after `held_us`.
    #[inline]
    pub fn key_up(&mut self, t: u64, class: KeyClass, held_us: u64) {
        let down = t.saturating_sub(held_us);
        let Some(slot) = self.recent.iter().position(|p| {
            p.is_some_and(|p| p.down_us == down && p.class == class && p.up_us.is_none())
        }) else {
            // Its press belongs to an earlier window or preceded a gap: not this window's.
            return;
        };
        let Some(press) = &mut self.recent[slot] else {
            return;
        };
        press.up_us = Some(t);
        let press = *press;
        let (next, next_class) = (press.next_down_us, press.next_class);
        self.pair_releases(slot, press);
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
        if class == KeyClass::Character && next_class == Some(KeyClass::Space) {
            // Still held when the space went down (else that press took it).
            self.hold_char_before_space.push(h);
        }
        match class {
            KeyClass::Character => self.hold_char.push(h),
            KeyClass::Space => self.hold_space.push(h),
            KeyClass::Modifier => self.hold_mod.push(h),
            _ => {}
        }
    }

    /// Pairs the release of `press` (just come up, at ring place `slot`) with the releases
    /// of its neighbours, at whichever of each pair came up last: up-up flight to the next
    /// press's release and from the previous one's, and a modifier's release after that of the
    /// character key pressed while it was held.
    fn pair_releases(&mut self, slot: usize, press: Press) {
        use KeyClass::*;
        let Some(up) = press.up_us else {
            return;
        };
        // A neighbour links back to this place unless the ring has moved past it.
        let linked = |place: Option<usize>, back: fn(&Press) -> Option<usize>| {
            place
                .filter(|p| *p != slot)
                .and_then(|p| self.recent[p])
                .filter(|p| back(p) == Some(slot))
        };
        // The next press, already released (it came up first: a nested overlap).
        if let Some(after) = linked(press.next_slot, |p| p.prev_slot)
            && let Some(after_up) = after.up_us
        {
            self.uu.push(ms_signed(after_up as i64 - up as i64));
            if press.class == Modifier && after.class == Character && after.down_us < up {
                self.mod_lag.push(ms_signed(up as i64 - after_up as i64));
            }
        }
        // The previous press, already released.
        if let Some(before) = linked(press.prev_slot, |p| p.next_slot)
            && let Some(before_up) = before.up_us
        {
            self.uu.push(ms_signed(up as i64 - before_up as i64));
            if before.class == Modifier && press.class == Character && press.down_us < before_up {
                self.mod_lag.push(ms_signed(before_up as i64 - up as i64));
            }
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
        let dd3 = self
            .dd3
            .quantiles_if(MIN_CLASS_SAMPLES, [0.1, 0.5, 0.9])
            .unwrap_or([d10, d50, d90].map(|x| 3.0 * x));
        let uu = self
            .uu
            .quantiles_if(MIN_CLASS_SAMPLES, [0.25, 0.5, 0.75])
            .unwrap_or([d25, d50, d75]);
        let hold_before_space = self
            .hold_char_before_space
            .median_if(MIN_CLASS_SAMPLES)
            .unwrap_or(hc50);
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
            uu[0],
            uu[1],
            uu[2],
            dd3[0],
            dd3[1],
            dd3[2],
            // A capital or a shortcut is rare in a window: one is enough, none gives 0.
            self.mod_lag.quantile(0.5).unwrap_or(0.0),
            hold_before_space,
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
        // Twelve flights of 100 ms and eight of 300 ms: the smoothed extremes lie close to
        // their own flight, far from the other.
        assert!((feature(&f, "dd_p10") - 100.0).abs() < 1.0, "{f:?}");
        assert!((feature(&f, "dd_p90") - 300.0).abs() < 1.0, "{f:?}");
    }

    #[test]
    fn up_up_three_apart_and_the_hold_before_a_space() {
        let mut k = KeyboardAcc::default();
        // Words of four characters 150 ms apart, held 80 ms but the last (95 ms), then a
        // space held 120 ms; a 2 s pause after the twentieth key.
        let mut t = 0;
        for i in 0..40u64 {
            let (class, held) = match i % 5 {
                4 => (KeyClass::Space, 120_000),
                3 => (KeyClass::Character, 95_000),
                _ => (KeyClass::Character, 80_000),
            };
            k.key_down(t, class);
            k.key_up(t + held, class, held);
            t += if i == 19 { 2_000_000 } else { 150_000 };
        }
        let f = k.finish().unwrap();
        assert_eq!(feature(&f, "hold_char_before_space_p50"), 95.0);
        // Nothing spans the pause: 19 release pairs and 17 three-key spans per burst.
        assert_eq!((k.uu.len(), k.dd3.len()), (38, 34));
        for q in ["dd3_p10", "dd3_p50", "dd3_p90"] {
            assert_eq!(feature(&f, q), 450.0, "{q}");
        }
        // Up-up is the flight plus the next hold minus this one: 110 (space to character)
        // to 175 (last character to space), never the pause.
        assert_eq!(k.uu.quantile(0.0), Some(110.0));
        assert_eq!(k.uu.quantile(1.0), Some(175.0));
        assert_eq!(feature(&f, "mod_release_lag_p50"), 0.0);
    }

    #[test]
    fn a_character_still_held_when_the_space_goes_down_counts_once() {
        use KeyClass::{Character, Space};
        let mut k = KeyboardAcc::default();
        // Character, space pressed 100 ms later while it is still held (held 130 ms), then
        // released 10 ms before the space: five times over.
        for i in 0..5u64 {
            let t = i * 1_000_000;
            k.key_down(t, Character);
            k.key_down(t + 100_000, Space);
            k.key_up(t + 130_000, Character, 130_000);
            k.key_up(t + 140_000, Space, 40_000);
        }
        assert_eq!(k.hold_char_before_space.len(), 5);
        let f = k.finish().unwrap();
        assert_eq!(feature(&f, "hold_char_before_space_p50"), 130.0);
    }

    #[test]
    fn two_presses_in_the_same_millisecond_are_two_neighbours() {
        use KeyClass::{Character, Modifier};
        let mut k = KeyboardAcc::default();
        // A modifier and a character down at once, the character up first: one up-up flight
        // (−30 ms: nested) and one release lag (+30 ms), never a press paired with itself.
        k.key_down(0, Modifier);
        k.key_down(0, Character);
        k.key_up(50_000, Character, 50_000);
        k.key_up(80_000, Modifier, 80_000);
        assert_eq!(k.uu.len(), 1);
        assert_eq!(k.uu.quantile(0.5), Some(-30.0));
        assert_eq!(k.mod_lag.len(), 1);
        assert_eq!(k.mod_lag.quantile(0.5), Some(30.0));
    }

    #[test]
    fn a_modifier_released_after_or_before_its_character() {
        use KeyClass::{Character, Modifier};
        // (modifier up, character up, lag): the lag is the modifier's release after the
        // character's, whichever came first; a modifier up before the press counts nothing.
        for (mod_up, char_up, lag) in [
            (200_000, 180_000, 20.0),
            (150_000, 200_000, -50.0),
            (60_000, 180_000, 0.0),
        ] {
            let mut k = KeyboardAcc::default();
            k.key_down(0, Modifier);
            k.key_down(100_000, Character);
            let mut ups = [
                (mod_up, Modifier, mod_up),
                (char_up, Character, char_up - 100_000),
            ];
            ups.sort_by_key(|u| u.0);
            for (t, class, held) in ups {
                k.key_up(t, class, held);
            }
            for i in 0..6u64 {
                let t = 400_000 + i * 150_000;
                k.key_down(t, Character);
                k.key_up(t + 80_000, Character, 80_000);
            }
            let f = k.finish().unwrap();
            assert_eq!(
                feature(&f, "mod_release_lag_p50"),
                lag,
                "{mod_up} {char_up}"
            );
        }
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
