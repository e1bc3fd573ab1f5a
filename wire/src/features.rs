//! The feature vector, schema `cadence.features.v3`.
//!
//! A [`FeatureVector`] summarises one closed window of input: distributions and rates only.
//! It is fixed-length per modality, every feature is named, and a modality the window did not
//! have enough of is `null` — never a block of zeros that a scorer could mistake for data.
//!
//! # JSON form (one object per window)
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema` | string | always `"cadence.features.v3"`; anything else is rejected |
//! | `duration_ms` | integer | time from the window's first to its last event |
//! | `keys` | integer | key presses in the window (auto-repeat excluded) |
//! | `mouse_events` | integer | pointer events in the window (moves, buttons, scrolls) |
//! | `keyboard` | object or null | the [`KEYBOARD_FEATURES`], by name, each a finite number |
//! | `mouse` | object or null | the [`MOUSE_FEATURES`], by name, each a finite number |
//!
//! Invariants, checked on deserialization: the schema string matches; a present block holds
//! exactly its named features (none missing, none unknown), each finite; at least one block is
//! present. Times are milliseconds, distances are pixels of the device's own pointer motion.
//!
//! What no field can carry, by construction: which key was pressed, any character, the order of
//! individual timings, an absolute pointer position, a window title or an application name.
//!
//! # Versions
//!
//! Each version appends features to the blocks of the one before. `cadence.features.v2` is
//! `v1` with 18 keyboard features (finer quantiles of the class timings and the press-to-press
//! time two keys apart). `v3` is `v2` with 8 keyboard features (up-up flight, press to press
//! three keys apart, a modifier's release lag, the hold before a space) and 5 mouse features
//! (a stroke's peak speed and when it comes, deceleration, the 90th percentiles of direction
//! change and curvature); and its percentiles, in both blocks, are Harrell–Davis estimates up
//! to 1024 samples (the agent's `features::stats`) where earlier agents took nearest rank, so
//! no block of an earlier version means what this one's does, even under the same names.
//! [`check_previous`] recognises a well-formed vector of a [`PREVIOUS`] schema, so that a
//! verifier upgraded before its agents can store their windows instead of refusing them; it
//! does not score them.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The schema identifier every feature vector carries.
pub const SCHEMA: &str = "cadence.features.v3";

/// An earlier schema a verifier still reads: its name and the lengths of its blocks, each the
/// first that many features of this schema's block (its percentiles by nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous {
    /// The schema's name.
    pub schema: &'static str,
    /// Its keyboard features.
    pub keyboard_len: usize,
    /// Its mouse features.
    pub mouse_len: usize,
}

/// The schemas before [`SCHEMA`] that a verifier still reads, newest first.
pub const PREVIOUS: [Previous; 2] = [
    Previous {
        schema: "cadence.features.v2",
        keyboard_len: 51,
        mouse_len: 33,
    },
    Previous {
        schema: "cadence.features.v1",
        keyboard_len: 33,
        mouse_len: 33,
    },
];

/// Why a feature vector was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum SchemaError {
    /// The vector names another schema version (an agent newer or older than this code).
    #[error("unknown schema {0:?}, expected {SCHEMA:?}")]
    UnknownSchema(String),
    /// A feature is NaN or infinite: a bug in the producer or a tampered record.
    #[error("feature {0} is not a finite number")]
    NonFinite(&'static str),
    /// A feature the schema requires is absent.
    #[error("feature {0} is missing")]
    Missing(&'static str),
    /// The vector holds neither a keyboard nor a mouse block.
    #[error("vector has neither a keyboard nor a mouse block")]
    Empty,
}

macro_rules! feature_block {
    (
        $(#[$meta:meta])*
        $name:ident, $names:ident, $len:ident, $what:literal,
        [ $( $feat:literal => $doc:literal ),+ $(,)? ]
    ) => {
        /// Number of features in the block.
        pub const $len: usize = [$($feat),+].len();

        /// Feature names of the block, in vector order, each with its one-line meaning.
        pub const $names: [(&str, &str); $len] = [$(($feat, $doc)),+];

        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq)]
        pub struct $name(pub [f64; $len]);

        impl $name {
            /// Looks a feature up by name.
            pub fn get(&self, name: &str) -> Option<f64> {
                $names.iter().position(|(n, _)| *n == name).map(|i| self.0[i])
            }

            /// Checks that every feature is finite.
            pub fn validate(&self) -> Result<(), SchemaError> {
                for (i, v) in self.0.iter().enumerate() {
                    if !v.is_finite() {
                        return Err(SchemaError::NonFinite($names[i].0));
                    }
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut m = f.debug_map();
                for (i, (n, _)) in $names.iter().enumerate() {
                    m.entry(n, &self.0[i]);
                }
                m.finish()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some($len))?;
                for (i, (n, _)) in $names.iter().enumerate() {
                    m.serialize_entry(n, &self.0[i])?;
                }
                m.end()
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a {} feature block", $what)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        let mut values = [f64::NAN; $len];
                        let mut seen = [false; $len];
                        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                            let Some(i) = $names.iter().position(|(n, _)| *n == key) else {
                                return Err(de::Error::custom(format!(
                                    "unknown {} feature {:?}", $what, key
                                )));
                            };
                            values[i] = map.next_value()?;
                            seen[i] = true;
                        }
                        if let Some(i) = seen.iter().position(|s| !s) {
                            return Err(de::Error::custom(SchemaError::Missing($names[i].0)));
                        }
                        let block = $name(values);
                        block.validate().map_err(de::Error::custom)?;
                        Ok(block)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

feature_block!(
    /// Keystroke timing features of one window. Times in milliseconds.
    ///
    /// Flights longer than the pause threshold (1 s) are pauses, not flights: they are left out
    /// of the flight distributions and described by the pause features instead. A class-specific
    /// feature whose class did not occur often enough in the window (fewer than 3 samples) takes
    /// the value of the matching all-keys feature, so the block stays fixed-length and finite.
    KeyboardFeatures, KEYBOARD_FEATURES, KEYBOARD_LEN, "keyboard",
    [
        "hold_p10" => "hold (press to release) time, 10th percentile",
        "hold_p25" => "hold time, 25th percentile",
        "hold_p50" => "hold time, median",
        "hold_p75" => "hold time, 75th percentile",
        "hold_p90" => "hold time, 90th percentile",
        "hold_mad" => "hold time, median absolute deviation",
        "hold_char_p50" => "hold time of character keys, median",
        "hold_char_iqr" => "hold time of character keys, interquartile range",
        "hold_space_p50" => "hold time of the space bar, median",
        "hold_mod_p50" => "hold time of modifier keys, median",
        "dd_p10" => "down-down flight (press to next press), 10th percentile",
        "dd_p25" => "down-down flight, 25th percentile",
        "dd_p50" => "down-down flight, median",
        "dd_p75" => "down-down flight, 75th percentile",
        "dd_p90" => "down-down flight, 90th percentile",
        "dd_mad" => "down-down flight, median absolute deviation",
        "ud_p10" => "up-down flight (release to next press; negative on overlap), 10th percentile",
        "ud_p25" => "up-down flight, 25th percentile",
        "ud_p50" => "up-down flight, median",
        "ud_p75" => "up-down flight, 75th percentile",
        "ud_p90" => "up-down flight, 90th percentile",
        "ud_mad" => "up-down flight, median absolute deviation",
        "dd_char_char_p50" => "down-down flight between two character keys, median",
        "dd_char_space_p50" => "down-down flight from a character key to space, median",
        "dd_space_char_p50" => "down-down flight from space to a character key, median",
        "dd_mod_char_p50" => "down-down flight from a modifier to a character key, median",
        "dd_to_correction_p50" => "down-down flight into a correction key, median",
        "rollover_rate" => "share of presses made while another key is still held",
        "correction_rate" => "share of presses that are corrections (backspace, delete)",
        "pause_rate" => "pauses (flights over 1 s) per key press",
        "pause_p50" => "pause length, median (0 when the window has no pause)",
        "burst_keys_mean" => "key presses per burst between pauses, mean",
        "keys_per_sec" => "key presses per second of active typing (pauses excluded)",
        "hold_char_p10" => "hold time of character keys, 10th percentile",
        "hold_char_p90" => "hold time of character keys, 90th percentile",
        "hold_space_p25" => "hold time of the space bar, 25th percentile",
        "hold_space_p75" => "hold time of the space bar, 75th percentile",
        "dd_char_char_p10" => "down-down flight between two character keys, 10th percentile",
        "dd_char_char_p25" => "down-down flight between two character keys, 25th percentile",
        "dd_char_char_p75" => "down-down flight between two character keys, 75th percentile",
        "dd_char_char_p90" => "down-down flight between two character keys, 90th percentile",
        "dd_space_char_p25" => "down-down flight from space to a character key, 25th percentile",
        "dd_space_char_p75" => "down-down flight from space to a character key, 75th percentile",
        "dd_char_space_p25" => "down-down flight from a character key to space, 25th percentile",
        "dd_char_space_p75" => "down-down flight from a character key to space, 75th percentile",
        "dd2_p10" => "press to press two keys apart (no pause between), 10th percentile",
        "dd2_p25" => "press to press two keys apart, 25th percentile",
        "dd2_p50" => "press to press two keys apart, median",
        "dd2_p75" => "press to press two keys apart, 75th percentile",
        "dd2_p90" => "press to press two keys apart, 90th percentile",
        "dd2_mad" => "press to press two keys apart, median absolute deviation",
        "uu_p25" => "up-up flight (release to the next key's release), 25th percentile",
        "uu_p50" => "up-up flight, median",
        "uu_p75" => "up-up flight, 75th percentile",
        "dd3_p10" => "press to press three keys apart (no pause between), 10th percentile",
        "dd3_p50" => "press to press three keys apart, median",
        "dd3_p90" => "press to press three keys apart, 90th percentile",
        "mod_release_lag_p50" => "release of a modifier after the release of the character key pressed while it was held, median (0 when the window has none)",
        "hold_char_before_space_p50" => "hold time of a character key followed by the space bar, median",
    ]
);

feature_block!(
    /// Pointer dynamics features of one window. Distances in pixels of pointer motion, times in
    /// milliseconds, speeds in px/s. Derived only from motion *deltas*: no absolute position.
    ///
    /// A stroke is a run of motion without a gap over 250 ms and without a button change. A
    /// feature with no samples in the window (no clicks, no scrolling) is 0, and the matching
    /// rate feature (also 0) says so; a stroke's shape without strokes is that of a straight
    /// one (straightness 1, peak halfway).
    MouseFeatures, MOUSE_FEATURES, MOUSE_LEN, "mouse",
    [
        "speed_p10" => "pointer speed, 10th percentile",
        "speed_p50" => "pointer speed, median",
        "speed_p90" => "pointer speed, 90th percentile",
        "speed_mean" => "pointer speed, mean over motion time",
        "accel_p50" => "absolute acceleration, median",
        "accel_p90" => "absolute acceleration, 90th percentile",
        "jerk_p50" => "absolute jerk, median",
        "jerk_p90" => "absolute jerk, 90th percentile",
        "angle_change_p50" => "absolute change of direction between motion samples (rad), median",
        "curvature_p50" => "change of direction per pixel travelled (rad/px), median",
        "straightness_p50" => "stroke straightness (chord / path length), median",
        "straightness_p25" => "stroke straightness, 25th percentile",
        "stroke_len_p50" => "stroke path length, median",
        "stroke_ms_p50" => "stroke duration, median",
        "dir_e" => "share of distance moved towards east (octant)",
        "dir_ne" => "share of distance moved towards north-east",
        "dir_n" => "share of distance moved towards north",
        "dir_nw" => "share of distance moved towards north-west",
        "dir_w" => "share of distance moved towards west",
        "dir_sw" => "share of distance moved towards south-west",
        "dir_s" => "share of distance moved towards south",
        "dir_se" => "share of distance moved towards south-east",
        "click_hold_p50" => "button hold (press to release), median",
        "move_to_click_p50" => "time from the end of motion to a button press, median",
        "click_rate" => "button presses per stroke",
        "drag_share" => "share of distance moved with a button held",
        "scroll_rate" => "scroll steps per motion event",
        "scroll_interval_p50" => "time between scroll steps within a scroll run, median",
        "sample_ms_p10" => "time between motion samples within a stroke, 10th percentile",
        "sample_ms_p50" => "time between motion samples within a stroke, median",
        "sample_ms_p90" => "time between motion samples within a stroke, 90th percentile",
        "step_px_p50" => "distance moved per motion sample, median",
        "step_px_p90" => "distance moved per motion sample, 90th percentile",
        "stroke_peak_speed_p50" => "peak pointer speed of a stroke, median",
        "stroke_peak_at_p50" => "when a stroke reaches its peak speed, as a share of its duration, median (0.5 without strokes)",
        "decel_p50" => "deceleration (size of a negative acceleration), median",
        "angle_change_p90" => "absolute change of direction between motion samples (rad), 90th percentile",
        "curvature_p90" => "change of direction per pixel travelled (rad/px), 90th percentile",
    ]
);

/// One window's features, ready to be signed and sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureVector {
    /// Always [`SCHEMA`].
    #[serde(deserialize_with = "schema_current")]
    pub schema: String,
    /// Time from the window's first to its last event, in milliseconds.
    pub duration_ms: u64,
    /// Key presses in the window.
    pub keys: u32,
    /// Pointer events in the window.
    pub mouse_events: u32,
    /// Keystroke features, or `None` when the window had fewer key presses than the minimum.
    pub keyboard: Option<KeyboardFeatures>,
    /// Pointer features, or `None` when the window had fewer pointer events than the minimum.
    pub mouse: Option<MouseFeatures>,
}

fn schema_current<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s == SCHEMA {
        Ok(s)
    } else {
        Err(de::Error::custom(SchemaError::UnknownSchema(s)))
    }
}

impl FeatureVector {
    /// Checks the invariants a deserialized vector already satisfies; for vectors built in code.
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.schema != SCHEMA {
            return Err(SchemaError::UnknownSchema(self.schema.clone()));
        }
        if self.keyboard.is_none() && self.mouse.is_none() {
            return Err(SchemaError::Empty);
        }
        if let Some(k) = &self.keyboard {
            k.validate()?;
        }
        if let Some(m) = &self.mouse {
            m.validate()?;
        }
        Ok(())
    }

    /// Parses and validates one JSON vector.
    pub fn from_json(s: &str) -> Result<Self, String> {
        let v: FeatureVector = serde_json::from_str(s).map_err(|e| e.to_string())?;
        v.validate().map_err(|e| e.to_string())?;
        Ok(v)
    }
}

/// A vector of a [`PREVIOUS`] schema, as an older agent sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviousVector {
    schema: String,
    #[expect(
        dead_code,
        reason = "read to check the type; the vector is stored as it came"
    )]
    duration_ms: u64,
    #[expect(
        dead_code,
        reason = "read to check the type; the vector is stored as it came"
    )]
    keys: u32,
    #[expect(
        dead_code,
        reason = "read to check the type; the vector is stored as it came"
    )]
    mouse_events: u32,
    keyboard: Option<serde_json::Map<String, serde_json::Value>>,
    mouse: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Checks that `s` is a well-formed vector of a [`PREVIOUS`] schema, and names the schema:
/// the same invariants as [`FeatureVector::from_json`], against that schema's feature list.
pub fn check_previous(s: &str) -> Result<&'static str, String> {
    previous(s)
}

/// The [`PREVIOUS`] schema a payload names, however wrong the rest of it is.
pub fn names_previous(s: &str) -> Option<&'static str> {
    #[derive(Deserialize)]
    struct Named {
        schema: String,
    }
    let named: Named = serde_json::from_str(s).ok()?;
    PREVIOUS
        .iter()
        .find(|p| p.schema == named.schema)
        .map(|p| p.schema)
}

fn previous(s: &str) -> Result<&'static str, String> {
    let v: PreviousVector = serde_json::from_str(s).map_err(|e| e.to_string())?;
    let Some(p) = PREVIOUS.iter().find(|p| p.schema == v.schema) else {
        return Err(SchemaError::UnknownSchema(v.schema).to_string());
    };
    if v.keyboard.is_none() && v.mouse.is_none() {
        return Err(SchemaError::Empty.to_string());
    }
    if let Some(k) = &v.keyboard {
        check_block(k, &KEYBOARD_FEATURES[..p.keyboard_len], "keyboard")?;
    }
    if let Some(m) = &v.mouse {
        check_block(m, &MOUSE_FEATURES[..p.mouse_len], "mouse")?;
    }
    Ok(p.schema)
}

/// Checks that `block` holds exactly the features `names`, each a finite number.
fn check_block(
    block: &serde_json::Map<String, serde_json::Value>,
    names: &[(&'static str, &str)],
    what: &str,
) -> Result<(), String> {
    if let Some(key) = block
        .keys()
        .find(|key| !names.iter().any(|(n, _)| n == key))
    {
        return Err(format!("unknown {what} feature {key:?}"));
    }
    for (n, _) in names {
        match block.get(*n) {
            None => return Err(SchemaError::Missing(n).to_string()),
            Some(x) if !x.as_f64().is_some_and(f64::is_finite) => {
                return Err(SchemaError::NonFinite(n).to_string());
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FeatureVector {
        let mut k = [0.0; KEYBOARD_LEN];
        for (i, v) in k.iter_mut().enumerate() {
            *v = i as f64 * 1.5;
        }
        FeatureVector {
            schema: SCHEMA.to_owned(),
            duration_ms: 12_000,
            keys: 80,
            mouse_events: 3,
            keyboard: Some(KeyboardFeatures(k)),
            mouse: None,
        }
    }

    #[test]
    fn json_round_trip_keeps_every_feature_by_name() {
        let v = sample();
        let s = serde_json::to_string(&v).unwrap();
        assert!(s.contains("\"hold_p50\":3.0"), "{s}");
        assert!(s.contains("\"mouse\":null"), "{s}");
        let back = FeatureVector::from_json(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn names_are_unique() {
        let mut all: Vec<&str> = KEYBOARD_FEATURES.iter().map(|(n, _)| *n).collect();
        all.extend(MOUSE_FEATURES.iter().map(|(n, _)| *n));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn rejects_other_schema_missing_unknown_and_non_finite() {
        let good = serde_json::to_value(sample()).unwrap();

        let mut v = good.clone();
        v["schema"] = "cadence.features.v4".into();
        let e = FeatureVector::from_json(&v.to_string()).unwrap_err();
        assert!(e.contains("unknown schema"), "{e}");

        let mut v = good.clone();
        v["keyboard"].as_object_mut().unwrap().remove("dd_p50");
        let e = FeatureVector::from_json(&v.to_string()).unwrap_err();
        assert!(e.contains("dd_p50 is missing"), "{e}");

        let mut v = good.clone();
        v["keyboard"]["key_a_hold"] = 1.0.into();
        let e = FeatureVector::from_json(&v.to_string()).unwrap_err();
        assert!(e.contains("unknown keyboard feature"), "{e}");

        let mut v = good.clone();
        v["keyboard"]["dd_p50"] = serde_json::Value::Null;
        assert!(FeatureVector::from_json(&v.to_string()).is_err());

        let mut v = good.clone();
        v["keyboard"] = serde_json::Value::Null;
        let e = FeatureVector::from_json(&v.to_string()).unwrap_err();
        assert!(e.contains("neither"), "{e}");

        let mut v = good;
        v["sentence"] = "hello".into();
        assert!(FeatureVector::from_json(&v.to_string()).is_err());

        let mut nan = sample();
        nan.keyboard.as_mut().unwrap().0[3] = f64::NAN;
        assert_eq!(nan.validate(), Err(SchemaError::NonFinite("hold_p75")));
    }

    #[test]
    fn previous_schema_is_recognised_not_parsed() {
        assert_eq!(KEYBOARD_FEATURES[PREVIOUS[0].keyboard_len - 1].0, "dd2_mad");
        assert_eq!(
            KEYBOARD_FEATURES[PREVIOUS[1].keyboard_len - 1].0,
            "keys_per_sec"
        );
        assert_eq!(MOUSE_FEATURES[PREVIOUS[0].mouse_len - 1].0, "step_px_p90");
        for p in PREVIOUS {
            let (schema, len) = (p.schema, p.keyboard_len);
            let v = previous_keyboard(p);
            let previous = v.to_string();
            assert_eq!(check_previous(&previous), Ok(schema), "{previous}");
            assert_eq!(names_previous(&previous), Some(schema));
            assert!(FeatureVector::from_json(&previous).is_err());

            // A feature of a later schema is unknown to this one.
            let mut w = v.clone();
            w["keyboard"][KEYBOARD_FEATURES[len].0] = 1.0.into();
            let e = check_previous(&w.to_string()).unwrap_err();
            assert!(e.contains("unknown keyboard feature"), "{schema}: {e}");
            let mut w = v.clone();
            w["keyboard"].as_object_mut().unwrap().remove("hold_p50");
            let e = check_previous(&w.to_string()).unwrap_err();
            assert!(e.contains("hold_p50 is missing"), "{e}");
            assert_eq!(names_previous(&w.to_string()), Some(schema));
            let mut w = v.clone();
            w["keyboard"]["hold_p50"] = "fast".into();
            let e = check_previous(&w.to_string()).unwrap_err();
            assert!(e.contains("hold_p50 is not a finite"), "{e}");
            let mut w = v.clone();
            w["keyboard"] = serde_json::Value::Null;
            assert!(
                check_previous(&w.to_string())
                    .unwrap_err()
                    .contains("neither")
            );
            let mut w = v.clone();
            w["sentence"] = "hello".into();
            assert!(check_previous(&w.to_string()).is_err());
        }
        // A current vector is not a previous one, nor is an unknown schema.
        let current = serde_json::to_string(&sample()).unwrap();
        assert!(check_previous(&current).is_err());
        assert_eq!(names_previous(&current), None);
        let mut w = previous_keyboard(PREVIOUS[1]);
        w["schema"] = "cadence.features.v0".into();
        assert!(check_previous(&w.to_string()).is_err());
        // A mouse block is checked against its own, shorter, list of names.
        let p = PREVIOUS[0];
        let mut w = previous_keyboard(p);
        let mouse: serde_json::Map<String, serde_json::Value> = MOUSE_FEATURES[..p.mouse_len]
            .iter()
            .map(|(n, _)| ((*n).to_owned(), 2.0.into()))
            .collect();
        w["mouse"] = serde_json::Value::Object(mouse);
        assert_eq!(check_previous(&w.to_string()), Ok(p.schema));
        let mut later = w.clone();
        later["mouse"][MOUSE_FEATURES[p.mouse_len].0] = 1.0.into();
        let e = check_previous(&later.to_string()).unwrap_err();
        assert!(e.contains("unknown mouse feature"), "{e}");
        w["mouse"].as_object_mut().unwrap().remove("speed_p50");
        let e = check_previous(&w.to_string()).unwrap_err();
        assert!(e.contains("speed_p50 is missing"), "{e}");
    }

    /// The sample as an agent of `p`'s schema sends it (keyboard only).
    fn previous_keyboard(p: Previous) -> serde_json::Value {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["schema"] = p.schema.into();
        let k = v["keyboard"].as_object_mut().unwrap();
        for (n, _) in &KEYBOARD_FEATURES[p.keyboard_len..] {
            k.remove(*n);
        }
        v
    }
}
