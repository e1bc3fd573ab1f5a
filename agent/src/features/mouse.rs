//! Pointer dynamics accumulator for one window.
//!
//! Works on motion deltas only; it has no notion of where on the screen the pointer is. Motion
//! samples with the same timestamp (devices and remote-desktop clients often report several)
//! are merged before speed is computed, so no division by zero ever happens.

use std::f64::consts::PI;

use cadence_wire::features::{MOUSE_LEN, MouseFeatures};

use super::stats::{Samples, round3};
use crate::capture::{Button, ScrollDirection};

/// Motion separated by more than this starts a new stroke (µs).
pub const STROKE_GAP_US: u64 = 250_000;
/// A button press later than this after the last motion is not a move-to-click (µs).
const MOVE_TO_CLICK_MAX_US: u64 = 2_000_000;
/// Scroll steps further apart than this belong to different scroll runs (µs).
const SCROLL_RUN_GAP_US: u64 = 1_000_000;

/// Pointer statistics of the window being filled.
#[derive(Debug, Default)]
pub struct MouseAcc {
    events: u32,
    speed: Samples,
    accel: Samples,
    /// Deceleration (the size of a negative acceleration).
    decel: Samples,
    jerk: Samples,
    /// Per stroke: its peak speed, and when it came as a share of the stroke's duration.
    stroke_peak: Samples,
    stroke_peak_at: Samples,
    angle_change: Samples,
    curvature: Samples,
    straightness: Samples,
    stroke_len: Samples,
    stroke_ms: Samples,
    click_hold: Samples,
    move_to_click: Samples,
    scroll_interval: Samples,
    /// Time between motion samples within a stroke (ms): the device's and link's cadence.
    sample_ms: Samples,
    /// Distance per motion sample (px).
    step_px: Samples,
    /// Distance moved per direction octant (E, NE, N, NW, W, SW, S, SE).
    dir: [f64; 8],
    distance: f64,
    drag_distance: f64,
    motion_us: f64,
    presses: u32,
    scrolls: u32,
    strokes: u32,
    /// Buttons currently down, with their press times.
    down: [Option<u64>; 4],
    /// Motion reported at the same timestamp as the last sample, not yet turned into a sample.
    pend_dx: i64,
    pend_dy: i64,
    /// Time of the last motion sample (or the stroke's first event).
    last_t: Option<u64>,
    /// Whether a stroke is being traced (none after a button change or a gap, until the
    /// next motion starts one).
    in_stroke: bool,
    last_speed: Option<f64>,
    last_accel: Option<f64>,
    last_angle: Option<f64>,
    stroke: Stroke,
    last_scroll: Option<u64>,
}

/// The stroke being traced.
#[derive(Debug, Default, Clone, Copy)]
struct Stroke {
    start_us: u64,
    end_us: u64,
    path: f64,
    chord_x: f64,
    chord_y: f64,
    samples: u32,
    peak_speed: f64,
    peak_us: u64,
}

impl MouseAcc {
    /// Pointer events counted in this window.
    pub fn events(&self) -> u32 {
        self.events
    }

    /// Resets for a new window, keeping allocations.
    pub fn clear(&mut self) {
        let mut bufs = [
            &mut self.speed,
            &mut self.accel,
            &mut self.decel,
            &mut self.jerk,
            &mut self.stroke_peak,
            &mut self.stroke_peak_at,
            &mut self.angle_change,
            &mut self.curvature,
            &mut self.straightness,
            &mut self.stroke_len,
            &mut self.stroke_ms,
            &mut self.click_hold,
            &mut self.move_to_click,
            &mut self.scroll_interval,
            &mut self.sample_ms,
            &mut self.step_px,
        ];
        for b in bufs.iter_mut() {
            b.clear();
        }
        let keep = std::mem::take(self);
        *self = MouseAcc {
            speed: keep.speed,
            accel: keep.accel,
            decel: keep.decel,
            jerk: keep.jerk,
            stroke_peak: keep.stroke_peak,
            stroke_peak_at: keep.stroke_peak_at,
            angle_change: keep.angle_change,
            curvature: keep.curvature,
            straightness: keep.straightness,
            stroke_len: keep.stroke_len,
            stroke_ms: keep.stroke_ms,
            click_hold: keep.click_hold,
            move_to_click: keep.move_to_click,
            scroll_interval: keep.scroll_interval,
            sample_ms: keep.sample_ms,
            step_px: keep.step_px,
            ..MouseAcc::default()
        };
    }

    /// Ends the current stroke so nothing is derived across a gap in the input.
    pub fn gap(&mut self) {
        self.end_stroke();
        self.down = [None; 4];
        self.last_scroll = None;
    }

    /// The pointer moved by (dx, dy) at time t.
    #[inline]
    pub fn moved(&mut self, t: u64, dx: i32, dy: i32) {
        self.events += 1;
        let Some(last) = self.last_t else {
            self.start_stroke(t);
            self.pend_dx += i64::from(dx);
            self.pend_dy += i64::from(dy);
            return;
        };
        if !self.in_stroke || t.saturating_sub(last) > STROKE_GAP_US {
            self.end_stroke();
            self.start_stroke(t);
            self.pend_dx += i64::from(dx);
            self.pend_dy += i64::from(dy);
            return;
        }
        self.pend_dx += i64::from(dx);
        self.pend_dy += i64::from(dy);
        if t == last {
            return;
        }
        let dt = (t - last) as f64 / 1e6;
        let (sx, sy) = (self.pend_dx as f64, self.pend_dy as f64);
        self.pend_dx = 0;
        self.pend_dy = 0;
        self.last_t = Some(t);
        let dist = sx.hypot(sy);
        let v = dist / dt;
        self.speed.push(v as f32);
        if v > self.stroke.peak_speed {
            self.stroke.peak_speed = v;
            self.stroke.peak_us = t;
        }
        self.sample_ms.push((dt * 1000.0) as f32);
        if dist > 0.0 {
            self.step_px.push(dist as f32);
        }
        self.motion_us += dt * 1e6;
        if let Some(pv) = self.last_speed {
            let a = (v - pv) / dt;
            self.accel.push(a.abs() as f32);
            if a < 0.0 {
                self.decel.push(-a as f32);
            }
            if let Some(pa) = self.last_accel {
                self.jerk.push(((a - pa) / dt).abs() as f32);
            }
            self.last_accel = Some(a);
        }
        self.last_speed = Some(v);
        if dist > 0.0 {
            let angle = sy.atan2(sx);
            if let Some(pa) = self.last_angle {
                let mut d = (angle - pa).abs();
                if d > PI {
                    d = 2.0 * PI - d;
                }
                self.angle_change.push(d as f32);
                self.curvature.push((d / dist) as f32);
            }
            self.last_angle = Some(angle);
            // Screen y grows downwards; octant 0 is east, counting counter-clockwise.
            let octant = ((-sy).atan2(sx) / (PI / 4.0)).round().rem_euclid(8.0) as usize;
            self.dir[octant.min(7)] += dist;
            self.distance += dist;
            if self.down.iter().any(Option::is_some) {
                self.drag_distance += dist;
            }
            self.stroke.path += dist;
            self.stroke.chord_x += sx;
            self.stroke.chord_y += sy;
        }
        self.stroke.samples += 1;
        self.stroke.end_us = t;
    }

    /// A button went down.
    pub fn button_down(&mut self, t: u64, button: Button) {
        self.events += 1;
        self.presses += 1;
        if let Some(last) = self.last_t {
            let since = t.saturating_sub(last);
            if since <= MOVE_TO_CLICK_MAX_US {
                self.move_to_click.push(since as f32 / 1000.0);
            }
        }
        self.end_stroke();
        self.down[button.index()] = Some(t);
    }

    /// A button came up after `held_us`.
    pub fn button_up(&mut self, t: u64, button: Button, held_us: u64) {
        self.events += 1;
        if self.down[button.index()].take().is_some() {
            self.click_hold.push(held_us as f32 / 1000.0);
        }
        self.end_stroke();
        let _ = t;
    }

    /// One scroll step.
    pub fn scrolled(&mut self, t: u64, _direction: ScrollDirection) {
        self.events += 1;
        self.scrolls += 1;
        if let Some(prev) = self.last_scroll {
            let d = t.saturating_sub(prev);
            if d <= SCROLL_RUN_GAP_US {
                self.scroll_interval.push(d as f32 / 1000.0);
            }
        }
        self.last_scroll = Some(t);
    }

    fn start_stroke(&mut self, t: u64) {
        self.last_t = Some(t);
        self.in_stroke = true;
        self.stroke = Stroke {
            start_us: t,
            end_us: t,
            ..Stroke::default()
        };
    }

    fn end_stroke(&mut self) {
        let s = self.stroke;
        if s.samples >= 2 && s.path > 0.0 {
            self.strokes += 1;
            self.straightness
                .push((s.chord_x.hypot(s.chord_y) / s.path).min(1.0) as f32);
            self.stroke_len.push(s.path as f32);
            self.stroke_ms
                .push(s.end_us.saturating_sub(s.start_us) as f32 / 1000.0);
            self.stroke_peak.push(s.peak_speed as f32);
            if s.end_us > s.start_us {
                self.stroke_peak_at.push(
                    (s.peak_us.saturating_sub(s.start_us) as f64 / (s.end_us - s.start_us) as f64)
                        as f32,
                );
            }
        }
        self.stroke = Stroke::default();
        self.in_stroke = false;
        self.last_speed = None;
        self.last_accel = None;
        self.last_angle = None;
        self.pend_dx = 0;
        self.pend_dy = 0;
        // `last_t` stays: move-to-click needs the time of the last motion.
    }

    /// The window's mouse block, or `None` without enough motion to describe anything.
    pub fn finish(&mut self) -> Option<MouseFeatures> {
        self.end_stroke();
        let [s10, s50, s90] = self.speed.quantiles([0.1, 0.5, 0.9])?;
        let [dt10, dt50, dt90] = self
            .sample_ms
            .quantiles([0.1, 0.5, 0.9])
            .unwrap_or([0.0; 3]);
        let [px50, px90] = self.step_px.quantiles([0.5, 0.9]).unwrap_or([0.0; 2]);
        let speed_mean = if self.motion_us > 0.0 {
            self.distance / (self.motion_us / 1e6)
        } else {
            0.0
        };
        let [a50, a90] = self.accel.quantiles([0.5, 0.9]).unwrap_or([0.0; 2]);
        let [j50, j90] = self.jerk.quantiles([0.5, 0.9]).unwrap_or([0.0; 2]);
        let [st25, st50] = self.straightness.quantiles([0.25, 0.5]).unwrap_or([1.0; 2]);
        let dist = self.distance.max(f64::MIN_POSITIVE);
        let d = self
            .dir
            .map(|x| if self.distance > 0.0 { x / dist } else { 0.0 });
        let motion_events = f64::from(
            self.events
                .saturating_sub(self.presses * 2 + self.scrolls)
                .max(1),
        );
        let v: [f64; MOUSE_LEN] = [
            s10,
            s50,
            s90,
            speed_mean,
            a50,
            a90,
            j50,
            j90,
            self.angle_change.quantile(0.5).unwrap_or(0.0),
            self.curvature.quantile(0.5).unwrap_or(0.0),
            st50,
            st25,
            self.stroke_len.quantile(0.5).unwrap_or(0.0),
            self.stroke_ms.quantile(0.5).unwrap_or(0.0),
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            d[5],
            d[6],
            d[7],
            self.click_hold.quantile(0.5).unwrap_or(0.0),
            self.move_to_click.quantile(0.5).unwrap_or(0.0),
            f64::from(self.presses) / f64::from(self.strokes.max(1)),
            if self.distance > 0.0 {
                self.drag_distance / dist
            } else {
                0.0
            },
            f64::from(self.scrolls) / motion_events,
            self.scroll_interval.quantile(0.5).unwrap_or(0.0),
            dt10,
            dt50,
            dt90,
            px50,
            px90,
            self.stroke_peak.quantile(0.5).unwrap_or(0.0),
            self.stroke_peak_at.quantile(0.5).unwrap_or(0.5),
            self.decel.quantile(0.5).unwrap_or(0.0),
            self.angle_change.quantile(0.9).unwrap_or(0.0),
            self.curvature.quantile(0.9).unwrap_or(0.0),
        ];
        Some(MouseFeatures(v.map(round3)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(m: &MouseFeatures, n: &str) -> f64 {
        m.get(n).unwrap()
    }

    #[test]
    fn straight_constant_motion() {
        let mut m = MouseAcc::default();
        // 100 samples, 10 px right every 10 ms: 1000 px/s, straight, all east.
        for i in 0..100u64 {
            m.moved(i * 10_000, 10, 0);
        }
        let out = m.finish().unwrap();
        assert_eq!(f(&out, "speed_p50"), 1000.0);
        assert_eq!(f(&out, "accel_p50"), 0.0);
        assert_eq!(f(&out, "straightness_p50"), 1.0);
        assert_eq!(f(&out, "dir_e"), 1.0);
        assert_eq!(f(&out, "dir_w"), 0.0);
        assert_eq!(f(&out, "sample_ms_p10"), 10.0);
        assert_eq!(f(&out, "sample_ms_p90"), 10.0);
        assert_eq!(f(&out, "step_px_p50"), 10.0);
    }

    #[test]
    fn motion_soon_after_a_click_starts_its_own_stroke() {
        let mut m = MouseAcc::default();
        // From 10 s on: a 50 ms stroke, a click 20 ms later, motion again 50 ms after the
        // release (within the 250 ms that would join two runs of motion), five times.
        let mut t = 10_000_000;
        for _ in 0..5 {
            m.moved(t, 0, 0);
            for i in 1..=5u64 {
                m.moved(t + i * 10_000, 3, 0);
            }
            m.button_down(t + 70_000, Button::Left);
            m.button_up(t + 150_000, Button::Left, 80_000);
            t += 200_000;
        }
        let out = m.finish().unwrap();
        assert_eq!(m.stroke_ms.len(), 5);
        assert_eq!(f(&out, "stroke_ms_p50"), 50.0);
        assert!(f(&out, "stroke_peak_at_p50") <= 1.0, "{out:?}");
        assert_eq!(f(&out, "stroke_len_p50"), 15.0);
    }

    #[test]
    fn a_stroke_peaks_early_then_slows_down() {
        let mut m = MouseAcc::default();
        // Ten strokes eastwards, 300 ms apart: a sample every 10 ms of 1, 4, 2, 1, 1, 1 px
        // (100, 400, 200, 100, 100, 100 px/s), so each peaks 20 ms into its 60 ms.
        for s in 0..10u64 {
            let t0 = s * 360_000;
            m.moved(t0, 0, 0);
            for (i, dx) in [1, 4, 2, 1, 1, 1].into_iter().enumerate() {
                m.moved(t0 + (i as u64 + 1) * 10_000, dx, 0);
            }
        }
        let out = m.finish().unwrap();
        assert_eq!(f(&out, "stroke_peak_speed_p50"), 400.0);
        assert_eq!(f(&out, "stroke_peak_at_p50"), 0.333);
        // Slowing from 400 to 200 and from 200 to 100 px/s in 10 ms: 20 000 and 10 000 px/s².
        assert_eq!((m.decel.len(), m.stroke_peak.len()), (20, 10));
        let decel = f(&out, "decel_p50");
        assert!(decel > 10_000.0 && decel < 20_000.0, "{decel}");
        assert_eq!(f(&out, "angle_change_p90"), 0.0);
        assert_eq!(f(&out, "curvature_p90"), 0.0);
    }

    #[test]
    fn screen_up_is_north_and_same_time_samples_merge() {
        let mut m = MouseAcc::default();
        for i in 0..50u64 {
            m.moved(i * 8_000, 0, -3);
            m.moved(i * 8_000, 0, -3); // duplicate timestamp: merged, no division by zero
        }
        let out = m.finish().unwrap();
        assert_eq!(f(&out, "dir_n"), 1.0);
        assert!(f(&out, "speed_p50").is_finite());
        // Same-time reports merge: one sample every 8 ms of 6 px.
        assert_eq!(f(&out, "sample_ms_p50"), 8.0);
        assert!((f(&out, "step_px_p90") - 6.0).abs() < 0.05, "{out:?}");
    }

    #[test]
    fn clicks_and_scrolls() {
        let mut m = MouseAcc::default();
        let mut t = 0;
        for _ in 0..5 {
            for _ in 0..10 {
                m.moved(t, 4, 4);
                t += 10_000;
            }
            t += 90_000;
            m.button_down(t, Button::Left);
            t += 120_000;
            m.button_up(t, Button::Left, 120_000);
            t += 400_000;
        }
        for _ in 0..6 {
            m.scrolled(t, ScrollDirection::Down);
            t += 50_000;
        }
        let out = m.finish().unwrap();
        assert_eq!(f(&out, "click_hold_p50"), 120.0);
        assert_eq!(f(&out, "move_to_click_p50"), 100.0);
        assert_eq!(f(&out, "scroll_interval_p50"), 50.0);
        assert_eq!(f(&out, "click_rate"), 1.0);
        assert_eq!(f(&out, "dir_se"), 1.0);
    }
}
