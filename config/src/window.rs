//! Window policy: when a window of input closes and when it is worth emitting.
//!
//! The minimum event counts are a privacy floor as much as a quality one: a window with only a
//! handful of key presses would describe those few presses too closely. So the minima cannot
//! be set below [`WindowPolicy::FLOOR_KEYS`] and [`WindowPolicy::FLOOR_MOUSE`].

use serde::Deserialize;

use crate::{ConfigError, Problem};

/// Window settings as written by a person (flags or a file), not yet checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindowPolicy {
    /// Close a window this many seconds after its first event.
    pub window_secs: Option<f64>,
    /// Close a window at this many key presses.
    pub window_keys: Option<u32>,
    /// Close a window at this many pointer events.
    pub window_mouse_events: Option<u32>,
    /// Emit the keyboard block only with at least this many key presses.
    pub min_keys: Option<u32>,
    /// Emit the mouse block only with at least this many pointer events.
    pub min_mouse: Option<u32>,
    /// Close a window at each segment boundary of a recording (evaluation protocols).
    pub segment_windows: Option<bool>,
}

/// Checked window settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPolicy {
    /// Window length limit in microseconds of event time; `None` closes only by count.
    pub window_us: Option<u64>,
    /// Key presses that close a window.
    pub window_keys: Option<u32>,
    /// Pointer events that close a window.
    pub window_mouse_events: Option<u32>,
    /// Minimum key presses for a keyboard block.
    pub min_keys: u32,
    /// Minimum pointer events for a mouse block.
    pub min_mouse: u32,
    /// Close at each recording segment boundary.
    pub segment_windows: bool,
}

impl Default for WindowPolicy {
    fn default() -> Self {
        WindowPolicy {
            window_us: Some(60_000_000),
            window_keys: None,
            window_mouse_events: None,
            min_keys: 40,
            min_mouse: 100,
            segment_windows: false,
        }
    }
}

impl WindowPolicy {
    /// Lowest allowed minimum of key presses in an emitted keyboard block.
    pub const FLOOR_KEYS: u32 = 10;
    /// Lowest allowed minimum of pointer events in an emitted mouse block.
    pub const FLOOR_MOUSE: u32 = 20;
    /// Longest window, one hour: longer windows would hold partial input for too long.
    pub const MAX_WINDOW_SECS: f64 = 3600.0;

    /// Checks raw settings, filling defaults, and reports every problem with its field path
    /// (`prefix` is prepended, e.g. `"window."`).
    pub fn from_raw(raw: &RawWindowPolicy, prefix: &str) -> Result<Self, ConfigError> {
        let d = WindowPolicy::default();
        let mut problems = Vec::new();
        let mut bad = |field: &str, rule: String| {
            problems.push(Problem {
                field: format!("{prefix}{field}"),
                rule,
            })
        };
        let window_us = match raw.window_secs {
            None => d.window_us,
            Some(s) if s.is_finite() && s > 0.0 && s <= Self::MAX_WINDOW_SECS => {
                Some((s * 1e6).round() as u64)
            }
            Some(s) => {
                bad(
                    "window_secs",
                    format!(
                        "must be above 0 and at most {}, got {s}",
                        Self::MAX_WINDOW_SECS
                    ),
                );
                None
            }
        };
        let min_keys = raw.min_keys.unwrap_or(d.min_keys);
        if min_keys < Self::FLOOR_KEYS {
            bad(
                "min_keys",
                format!("must be at least {}, got {min_keys}", Self::FLOOR_KEYS),
            );
        }
        let min_mouse = raw.min_mouse.unwrap_or(d.min_mouse);
        if min_mouse < Self::FLOOR_MOUSE {
            bad(
                "min_mouse",
                format!("must be at least {}, got {min_mouse}", Self::FLOOR_MOUSE),
            );
        }
        if let Some(k) = raw.window_keys
            && k < min_keys
        {
            bad(
                "window_keys",
                format!("must be at least min_keys ({min_keys}), got {k}"),
            );
        }
        if let Some(m) = raw.window_mouse_events
            && m < min_mouse
        {
            bad(
                "window_mouse_events",
                format!("must be at least min_mouse ({min_mouse}), got {m}"),
            );
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(WindowPolicy {
            window_us,
            window_keys: raw.window_keys,
            window_mouse_events: raw.window_mouse_events,
            min_keys,
            min_mouse,
            segment_windows: raw.segment_windows.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let p = WindowPolicy::from_raw(&RawWindowPolicy::default(), "").unwrap();
        assert_eq!(p, WindowPolicy::default());
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let raw = RawWindowPolicy {
            window_secs: Some(-1.0),
            min_keys: Some(2),
            min_mouse: Some(1),
            window_keys: Some(1),
            ..Default::default()
        };
        let ConfigError::Invalid(p) = WindowPolicy::from_raw(&raw, "window.").unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "window.window_secs",
                "window.min_keys",
                "window.min_mouse",
                "window.window_keys"
            ]
        );
    }
}
