//! Guard: local detection of keystroke injection, from timing alone, without the verifier.
//!
//! Owns the detectors that cannot wait for a window to close and travel to the verifier: a
//! USB keystroke injector (a "Rubber Ducky") types a payload in a second or two. Hands on a
//! [`GuardAlert`] (aggregate timing evidence only) for the daemon to seal and send at once and
//! to act on locally.
//!
//! Must never fire on human typing. The evidence is over the last [`KEYS`] key presses:
//!
//! - **Speed.** The mean press-to-press interval. The fastest people in the Aalto corpus
//!   average about 50 ms over 25 keys; an injector types at 0–20 ms per key. Alert below
//!   [`MAX_MEAN_INTERVAL_MS`] (35 ms).
//! - **Machine holds with machine speed.** Injectors release a key within a few milliseconds;
//!   people hold keys for tens of milliseconds. Alert when the median hold is under
//!   [`MAX_MEDIAN_HOLD_MS`] *and* the mean interval is under [`MAX_MEAN_INTERVAL_WITH_SHORT_HOLDS_MS`].
//! - **The OS says so, and the timing agrees.** Where the OS flags synthesized input (Windows
//!   `LLKHF_INJECTED`), a majority of flagged presses among the last [`KEYS`] is an alert when
//!   the timing is also machine-like: too fast, machine holds, or a clock no hand keeps
//!   (intervals and holds both nearly even, or even intervals with holds under
//!   [`MAX_FLAGGED_MEDIAN_HOLD_MS`]; see [`MAX_FLAGGED_CV`]). The flag alone is not enough:
//!   remote-control and KVM tools deliver a real person's typing through the same injection
//!   path, and it carries the flag too; what tells a script apart is its clockwork timing,
//!   which network delays only roughen, never smooth. A script that fakes human timing is
//!   left to the verifier's scoring. Linux evdev flags nothing (see `capture::evdev`).
//!
//! Pauses (an interval over 1 s) restart the count: a burst must be [`KEYS`] presses long.
//! After an alert the guard re-arms only after another full [`KEYS`] presses, so one payload
//! gives one alert, not one per key.

use serde::Serialize;

use crate::capture::{EventKind, InputEvent};

/// Key presses the evidence is taken over.
pub const KEYS: usize = 25;
/// Mean press-to-press interval under which typing is too fast for a person (ms).
pub const MAX_MEAN_INTERVAL_MS: f64 = 35.0;
/// Median hold under which key releases look machine-made (ms).
pub const MAX_MEDIAN_HOLD_MS: f64 = 8.0;
/// Mean interval that, together with machine-short holds, is an alert (ms).
pub const MAX_MEAN_INTERVAL_WITH_SHORT_HOLDS_MS: f64 = 60.0;
/// For OS-flagged presses: a coefficient of variation (standard deviation over mean) of the
/// press-to-press intervals, and of the holds, under this is clockwork, not a hand. A script's
/// fixed delay gives about 0 to 0.05, even with the scheduler's jitter. People are less even:
/// with every event of the 1,147 Aalto participants flagged, the first alerts appear only
/// from about 0.16 (`tests/guard_data.rs`), so 0.10 leaves a margin.
pub const MAX_FLAGGED_CV: f64 = 0.10;
/// For OS-flagged presses with even intervals: a median hold under this is machine-made
/// (people hold keys for tens of milliseconds) (ms).
pub const MAX_FLAGGED_MEDIAN_HOLD_MS: f64 = 15.0;
/// An interval longer than this ends a burst (µs).
const BURST_GAP_US: u64 = 1_000_000;

/// Evidence of injected typing. Aggregates only: no key, no order, no character.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardAlert {
    /// Always `"alert"`, so alerts can be told from windows in a stream of JSON lines.
    pub kind: &'static str,
    /// The detector: `keystroke_injection`.
    pub detector: &'static str,
    /// Which rule fired: `too_fast`, `machine_holds`, `os_flagged`.
    pub rule: &'static str,
    /// Key presses the evidence covers.
    pub keys: usize,
    /// Mean press-to-press interval over them (ms).
    pub mean_interval_ms: f64,
    /// Median hold over their releases (ms), when known.
    pub median_hold_ms: Option<f64>,
    /// Presses among them that the OS flagged as injected.
    pub os_flagged: usize,
}

/// The injection detector's state: the last few presses' timing.
#[derive(Debug, Default)]
pub struct Guard {
    /// Press times of the current burst (at most `KEYS + 1`).
    downs: std::collections::VecDeque<(u64, bool)>,
    /// Recent hold times (µs).
    holds: std::collections::VecDeque<u64>,
    /// Presses to see before the guard may fire again.
    cooldown: usize,
    /// Alerts raised so far.
    alerts: u64,
}

impl Guard {
    /// A fresh guard.
    pub fn new() -> Guard {
        Guard::default()
    }

    /// Alerts raised so far.
    pub fn alerts(&self) -> u64 {
        self.alerts
    }

    /// Looks at one event; returns an alert when the evidence is complete.
    pub fn push(&mut self, ev: &InputEvent) -> Option<GuardAlert> {
        match ev.kind {
            EventKind::KeyDown { .. } => {
                if let Some(&(last, _)) = self.downs.back()
                    && ev.t_us.saturating_sub(last) > BURST_GAP_US
                {
                    self.downs.clear();
                    self.holds.clear();
                }
                self.downs.push_back((ev.t_us, ev.injected));
                if self.downs.len() > KEYS + 1 {
                    self.downs.pop_front();
                }
                self.cooldown = self.cooldown.saturating_sub(1);
                self.check()
            }
            EventKind::KeyUp { held_us, .. } => {
                self.holds.push_back(held_us);
                if self.holds.len() > KEYS {
                    self.holds.pop_front();
                }
                None
            }
            EventKind::Gap | EventKind::SecureInput { .. } => {
                self.downs.clear();
                self.holds.clear();
                None
            }
            _ => None,
        }
    }

    fn check(&mut self) -> Option<GuardAlert> {
        if self.cooldown > 0 || self.downs.len() < KEYS {
            return None;
        }
        let first = self.downs.front()?.0;
        let last = self.downs.back()?.0;
        let intervals = (self.downs.len() - 1) as f64;
        let mean_ms = last.saturating_sub(first) as f64 / 1000.0 / intervals;
        let flagged = self.downs.iter().skip(1).filter(|(_, inj)| *inj).count();
        let median_hold_ms = (self.holds.len() >= KEYS / 2).then(|| {
            let mut h: Vec<u64> = self.holds.iter().copied().collect();
            h.sort_unstable();
            h[h.len() / 2] as f64 / 1000.0
        });
        let too_fast = mean_ms < MAX_MEAN_INTERVAL_MS;
        let machine_holds = median_hold_ms.is_some_and(|h| h < MAX_MEDIAN_HOLD_MS)
            && mean_ms < MAX_MEAN_INTERVAL_WITH_SHORT_HOLDS_MS;
        let rule = if flagged * 2 > KEYS
            && (too_fast || machine_holds || self.clockwork(median_hold_ms))
        {
            "os_flagged"
        } else if too_fast {
            "too_fast"
        } else if machine_holds {
            "machine_holds"
        } else {
            return None;
        };
        self.cooldown = KEYS;
        self.alerts += 1;
        Some(GuardAlert {
            kind: "alert",
            detector: "keystroke_injection",
            rule,
            keys: KEYS,
            mean_interval_ms: (mean_ms * 100.0).round() / 100.0,
            median_hold_ms: median_hold_ms.map(|h| (h * 100.0).round() / 100.0),
            os_flagged: flagged,
        })
    }

    /// Whether the burst keeps a clock no hand keeps: press-to-press intervals *and* holds
    /// nearly even (coefficient of variation under [`MAX_FLAGGED_CV`]), or even
    /// intervals with machine-short holds (median under [`MAX_FLAGGED_MEDIAN_HOLD_MS`]).
    fn clockwork(&self, median_hold_ms: Option<f64>) -> bool {
        let intervals = self
            .downs
            .iter()
            .zip(self.downs.iter().skip(1))
            .map(|(a, b)| b.0.saturating_sub(a.0) as f64);
        if cv(intervals) >= MAX_FLAGGED_CV {
            return false;
        }
        median_hold_ms.is_some_and(|h| h < MAX_FLAGGED_MEDIAN_HOLD_MS)
            || cv(self.holds.iter().map(|&h| h as f64)) < MAX_FLAGGED_CV
    }
}

/// The coefficient of variation (standard deviation over mean) of `values`: 0 when they are
/// all equal; infinite when there are none or their mean is 0 (nothing to compare).
fn cv(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.is_empty() || mean <= 0.0 {
        return f64::INFINITY;
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    var.sqrt() / mean
}

/// What the agent does on this device when the guard fires (besides telling the verifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAction {
    /// Nothing locally.
    None,
    /// Lock the screen.
    Lock,
    /// Run a command (through the shell).
    Command(String),
}

impl LocalAction {
    /// Parses `none`, `lock` or `command:CMD`.
    pub fn parse(s: &str) -> Option<LocalAction> {
        match s {
            "none" => Some(LocalAction::None),
            "lock" => Some(LocalAction::Lock),
            _ => s
                .strip_prefix("command:")
                .filter(|c| !c.trim().is_empty())
                .map(|c| LocalAction::Command(c.to_owned())),
        }
    }

    /// Carries the action out, without waiting for it to finish.
    pub fn run(&self) {
        let spawn = |program: &str, args: &[&str]| match std::process::Command::new(program)
            .args(args)
            .spawn()
        {
            Ok(_) => tracing::warn!(program, "guard: local action started"),
            Err(e) => tracing::error!(program, "guard: local action failed: {e}"),
        };
        match self {
            LocalAction::None => {}
            LocalAction::Lock => {
                if cfg!(target_os = "linux") {
                    spawn("loginctl", &["lock-session"]);
                } else if cfg!(target_os = "macos") {
                    spawn("pmset", &["displaysleepnow"]);
                } else if cfg!(windows) {
                    spawn("rundll32.exe", &["user32.dll,LockWorkStation"]);
                }
            }
            LocalAction::Command(c) => {
                if cfg!(windows) {
                    spawn("cmd", &["/C", c]);
                } else {
                    spawn("sh", &["-c", c]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::KeyClass;

    fn typed(
        intervals_us: impl Iterator<Item = u64>,
        hold_us: u64,
        injected: bool,
    ) -> Vec<InputEvent> {
        let mut t = 1_000_000;
        let mut out = Vec::new();
        for dt in intervals_us {
            t += dt;
            let class = KeyClass::Character;
            out.push(InputEvent {
                t_us: t,
                kind: EventKind::KeyDown { class },
                injected,
            });
            out.push(InputEvent {
                t_us: t + hold_us,
                kind: EventKind::KeyUp {
                    class,
                    held_us: hold_us,
                },
                injected,
            });
        }
        out.sort_by_key(|e| e.t_us);
        out
    }

    fn first_alert(evs: &[InputEvent]) -> Option<(usize, GuardAlert)> {
        let mut g = Guard::new();
        let mut presses = 0;
        for e in evs {
            if matches!(e.kind, EventKind::KeyDown { .. }) {
                presses += 1;
            }
            if let Some(a) = g.push(e) {
                return Some((presses, a));
            }
        }
        None
    }

    #[test]
    fn catches_injectors_at_0_10_20_ms_with_and_without_jitter_within_25_keys() {
        let mut rng = fastrand::Rng::with_seed(5);
        for per_key_ms in [0u64, 10, 20] {
            for jitter_ms in [0u64, 5, 10] {
                for hold_us in [0u64, 2_000, 15_000] {
                    let evs = typed(
                        (0..200).map(|_| per_key_ms * 1000 + rng.u64(0..=jitter_ms * 1000)),
                        hold_us,
                        false,
                    );
                    let (at, a) = first_alert(&evs)
                        .unwrap_or_else(|| panic!("missed {per_key_ms} ms ± {jitter_ms}"));
                    assert!(at <= KEYS + 1, "caught only after {at} keys");
                    assert_eq!(a.kind, "alert");
                }
            }
        }
    }

    #[test]
    fn quiet_on_fast_human_typing_and_on_bursts_with_pauses() {
        let mut rng = fastrand::Rng::with_seed(9);
        // A very fast typist: 50 ms mean with human spread, 60-100 ms holds.
        let evs = typed((0..2000).map(|_| rng.u64(25_000..75_000)), 70_000, false);
        assert_eq!(first_alert(&evs), None);
        // Short fast bursts separated by pauses never make 25 keys.
        let evs = typed(
            (0..400).map(|i| if i % 10 == 0 { 1_500_000 } else { 20_000 }),
            60_000,
            false,
        );
        assert_eq!(first_alert(&evs), None);
    }

    #[test]
    fn os_flagged_input_alerts_and_one_payload_gives_one_alert() {
        // A script at a human pace with human holds: only the flag and its even clock tell.
        let evs = typed((0..100).map(|_| 120_000), 80_000, true);
        let (_, a) = first_alert(&evs).unwrap();
        assert_eq!(a.rule, "os_flagged");
        // The same even clock without the flag is not enough.
        let evs = typed((0..100).map(|_| 120_000), 80_000, false);
        assert_eq!(first_alert(&evs), None);
        let mut g = Guard::new();
        let evs = typed((0..30).map(|_| 5_000), 3_000, false);
        let n = evs.iter().filter_map(|e| g.push(e)).count();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_person_typing_through_a_remote_control_tool_is_not_an_alert() {
        // Every press carries the OS flag (the tool injects what the person types remotely),
        // but the timing is a hand's: uneven intervals, and holds from long to very short
        // (a client that sends press and release together).
        let mut rng = fastrand::Rng::with_seed(11);
        for hold_us in [90_000, 40_000, 1_000] {
            let evs = typed((0..2000).map(|_| rng.u64(60_000..260_000)), hold_us, true);
            assert_eq!(first_alert(&evs), None, "hold {hold_us} µs");
        }
        // A fast typist through the same tool.
        let evs = typed((0..2000).map(|_| rng.u64(25_000..75_000)), 70_000, true);
        assert_eq!(first_alert(&evs), None);
    }

    #[test]
    fn actions_parse() {
        assert_eq!(LocalAction::parse("lock"), Some(LocalAction::Lock));
        assert_eq!(
            LocalAction::parse("command:logger x"),
            Some(LocalAction::Command("logger x".into()))
        );
        assert_eq!(LocalAction::parse("command:"), None);
        assert_eq!(LocalAction::parse("reboot"), None);
    }
}
