//! Dynamic trust (Bours, 2012): a level in [0, 100] per user that every scored window moves a
//! little, up for a window that matches the baseline and down for one that does not, so one
//! odd window is not an alert but a run of them is.
//!
//! Owns the update rule and its parameters. Never alerts on a single window unless one
//! window's largest penalty alone crosses the lockout (the defaults need at least three
//! windows that each score well below the neutral point, from full trust).
//!
//! The change after a window with normalized score `s` is Bours' sigmoid
//!
//! ```text
//! Δ(s) = min(−D + D·(1 + 1/C) / (1/C + exp(−(s − A)/B)), C)
//! ```
//!
//! which is 0 at the neutral score `A`, tends to the largest reward `+C` for scores well
//! above it and to the largest penalty `−D` well below, with `B` setting how sharp the
//! transition is. The level is clamped to [0, 100]; it starts at 100; when it falls below
//! `lockout` an alert is raised and the level restarts at 100, so a continuing impostor raises
//! a new alert after another run of bad windows.

use serde::{Deserialize, Serialize};

use super::ScoringError;

/// The parameters of the trust update, in units of the calibrated score (0 typical of other
/// people, 1 typical of the user).
///
/// Defaults: neutral 0.55 (a little past halfway), width 0.1 (a tenth of the way between the
/// two anchors), reward up to 10 and penalty up to 25 points, lockout below 50: from full
/// trust, three windows that look like someone else raise an alert, two never do (two
/// largest penalties leave exactly 50), and a genuine window wins back at most 10 points. On
/// Aalto (the evaluation in [`super::eval`]) this gave 0.05 false alerts per 100 genuine
/// windows and an impostor detected after 231 keystrokes on average counting undetected runs
/// in full (penalty 20 and neutral 0.5: 0.03 and 264; penalty 30: 0.04 and 202, but two
/// windows could then alert and Balabit's mouse went over 1 false alert per 100 windows).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// `A`: the score at which trust neither rises nor falls.
    pub neutral: f64,
    /// `B`: the width of the sigmoid (score units).
    pub width: f64,
    /// `C`: the largest reward of one window (trust points).
    pub max_reward: f64,
    /// `D`: the largest penalty of one window (trust points).
    pub max_penalty: f64,
    /// An alert is raised when the level falls below this.
    pub lockout: f64,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            neutral: 0.55,
            width: 0.1,
            max_reward: 10.0,
            max_penalty: 25.0,
            lockout: 50.0,
        }
    }
}

impl TrustConfig {
    /// Checks the parameters; each problem is named.
    pub fn check(&self) -> Result<(), ScoringError> {
        let mut problems = Vec::new();
        let finite = [
            ("neutral", self.neutral),
            ("width", self.width),
            ("max_reward", self.max_reward),
            ("max_penalty", self.max_penalty),
            ("lockout", self.lockout),
        ];
        for (name, v) in finite {
            if !v.is_finite() {
                problems.push(format!("trust.{name}: must be a finite number"));
            }
        }
        if self.width <= 0.0 {
            problems.push("trust.width: must be above 0".to_owned());
        }
        if self.max_reward <= 0.0 {
            problems.push("trust.max_reward: must be above 0".to_owned());
        }
        if self.max_penalty < 1.0 {
            problems.push("trust.max_penalty: must be at least 1".to_owned());
        }
        if !(0.0..100.0).contains(&self.lockout) {
            problems.push("trust.lockout: must be in [0, 100)".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ScoringError::Config { problems })
        }
    }

    /// Bours' Δ(s) for a normalized score.
    pub fn delta(&self, score: f64) -> f64 {
        let (a, b, c, d) = (self.neutral, self.width, self.max_reward, self.max_penalty);
        let e = (-(score - a) / b).exp();
        let raw = -d + d * (1.0 + 1.0 / c) / (1.0 / c + e);
        // exp overflows to +inf far below the neutral score: the limit there is −D.
        if raw.is_finite() { raw.min(c) } else { -d }
    }
}

/// One user's trust level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Trust {
    /// The current level, in [0, 100].
    pub level: f64,
}

impl Default for Trust {
    fn default() -> Self {
        Trust { level: 100.0 }
    }
}

/// What one window did to the trust level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrustStep {
    /// The change applied.
    pub delta: f64,
    /// The level after the change (before any reset).
    pub level: f64,
    /// Whether the level fell below the lockout: an alert (the level restarts at 100).
    pub alert: bool,
}

impl Trust {
    /// Moves the level by one window's normalized score.
    pub fn update(&mut self, score: f64, cfg: &TrustConfig) -> TrustStep {
        let delta = if score.is_finite() {
            cfg.delta(score)
        } else {
            -cfg.max_penalty
        };
        let level = (self.level + delta).clamp(0.0, 100.0);
        let alert = level < cfg.lockout;
        self.level = if alert { 100.0 } else { level };
        TrustStep {
            delta,
            level,
            alert,
        }
    }

    /// Back to full trust (an administrator's reset, a new session).
    pub fn reset(&mut self) {
        self.level = 100.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_is_zero_at_neutral_and_bounded() {
        let c = TrustConfig::default();
        assert!(c.delta(c.neutral).abs() < 1e-12);
        assert!((c.delta(1e6) - c.max_reward).abs() < 1e-9);
        assert!((c.delta(-1e6) + c.max_penalty).abs() < 1e-9);
        let mut prev = f64::NEG_INFINITY;
        for i in -100..100 {
            let d = c.delta(f64::from(i) * 0.1);
            assert!(d >= prev);
            prev = d;
        }
        c.check().unwrap();
    }

    #[test]
    fn one_odd_window_is_not_an_alert_but_a_run_is() {
        let c = TrustConfig::default();
        let mut t = Trust::default();
        for _ in 0..20 {
            assert!(!t.update(5.0, &c).alert);
        }
        assert!(!t.update(-50.0, &c).alert, "one very bad window");
        for _ in 0..3 {
            assert!(!t.update(5.0, &c).alert);
        }
        let mut alerts = 0;
        let mut windows = 0;
        while alerts == 0 {
            windows += 1;
            alerts += usize::from(t.update(-50.0, &c).alert);
        }
        // The documented property of the defaults: two windows never alert, three can.
        assert_eq!(windows, 3, "alert after {windows} bad windows");
        assert_eq!(t.level, 100.0, "trust restarts after an alert");
    }

    #[test]
    fn bad_parameters_are_each_named() {
        let c = TrustConfig {
            width: 0.0,
            lockout: 100.0,
            ..TrustConfig::default()
        };
        let e = c.check().unwrap_err().to_string();
        assert!(
            e.contains("trust.width") && e.contains("trust.lockout"),
            "{e}"
        );
    }
}
