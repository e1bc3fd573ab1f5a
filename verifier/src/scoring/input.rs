//! The scorer's view of a window: which modality it carries, its features in scoring space,
//! and the checks a vector must pass before anything scores it.
//!
//! Owns the modality split, the fixed feature transform and the reasons a vector is refused
//! ([`RejectReason`]). Never turns a missing or non-finite feature into a zero: such a vector is
//! refused, with its reason, and the caller counts it.
//!
//! # Labelled JSON lines
//!
//! `cadence-agent replay` writes one JSON object per window: the [`FeatureVector`] fields plus
//! string labels (`subject`, `session`, `segment`, `split`). [`parse_labelled`] takes such a
//! line apart: every string-valued field that is not a vector field is a label, the rest must
//! form a valid vector of the known schema.

use std::collections::BTreeMap;
use std::fmt;

use cadence_wire::features::{KEYBOARD_FEATURES, MOUSE_FEATURES};
use cadence_wire::{FeatureVector, SCHEMA};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A kind of input with a baseline of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// Keystroke timing (the vector's `keyboard` block).
    Keyboard,
    /// Pointer dynamics (the vector's `mouse` block).
    Mouse,
}

impl Modality {
    /// Both modalities, keyboard first.
    pub const ALL: [Modality; 2] = [Modality::Keyboard, Modality::Mouse];

    /// `"keyboard"` or `"mouse"`.
    pub fn name(self) -> &'static str {
        match self {
            Modality::Keyboard => "keyboard",
            Modality::Mouse => "mouse",
        }
    }

    /// Number of features of the modality's block.
    pub fn dim(self) -> usize {
        match self {
            Modality::Keyboard => KEYBOARD_FEATURES.len(),
            Modality::Mouse => MOUSE_FEATURES.len(),
        }
    }

    /// The block's feature names, in vector order.
    pub fn feature_names(self) -> Vec<&'static str> {
        match self {
            Modality::Keyboard => KEYBOARD_FEATURES.iter().map(|(n, _)| *n).collect(),
            Modality::Mouse => MOUSE_FEATURES.iter().map(|(n, _)| *n).collect(),
        }
    }

    /// The block's raw features, if the window has this modality.
    pub fn raw(self, v: &FeatureVector) -> Option<&[f64]> {
        match self {
            Modality::Keyboard => v.keyboard.as_ref().map(|k| &k.0[..]),
            Modality::Mouse => v.mouse.as_ref().map(|m| &m.0[..]),
        }
    }

    /// The window's event count for this modality (key presses or pointer events).
    pub fn events(self, v: &FeatureVector) -> u64 {
        match self {
            Modality::Keyboard => u64::from(v.keys),
            Modality::Mouse => u64::from(v.mouse_events),
        }
    }

    /// The window's features in scoring space, if it has this modality.
    pub fn features(self, v: &FeatureVector) -> Option<Vec<f64>> {
        let raw = self.raw(v)?;
        let mut out = vec![0.0; raw.len()];
        transform(raw, &mut out);
        Some(out)
    }

    /// The window as a [`Sample`] of this modality, if it has it.
    pub fn sample(self, v: &FeatureVector) -> Option<Sample> {
        Some(Sample {
            x: self.features(v)?,
            events: self.events(v),
        })
    }
}

/// One window of one modality as the scorer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Features in scoring space ([`transform`]).
    pub x: Vec<f64>,
    /// Key presses or pointer events behind them: how precise the window's statistics are.
    pub events: u64,
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The fixed transform into scoring space: `sign(x) · ln(1 + |x|)` for every feature.
///
/// Times, speeds and their spreads are skewed and roughly log-normal across windows and users;
/// the logarithm makes differences relative ("20% slower") and tames the tail a single long
/// pause or flick would otherwise drag the distance with. Below 1 (shares, rates, radians) the
/// transform is close to the identity, and it is defined for the negative up-down flights of
/// overlapping keys. It needs no constant and no data, so every baseline, with or without a
/// population, sees the same space.
#[inline]
pub fn transform(raw: &[f64], out: &mut [f64]) {
    for (o, x) in out.iter_mut().zip(raw) {
        *o = x.signum() * x.abs().ln_1p();
    }
}

/// Why a vector was refused instead of scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// The vector names a schema version this verifier does not know (or none).
    UnknownSchema,
    /// A present block lacks one of its named features.
    MissingFeature,
    /// A feature is null, NaN, infinite or out of the range of a double.
    NonFinite,
    /// The vector holds neither a keyboard nor a mouse block.
    Empty,
    /// Not a JSON object of the vector's shape (syntax error, unknown field, wrong type).
    Malformed,
    /// An evaluation line lacks the `subject` label, so it cannot be attributed to a user.
    Unlabelled,
}

impl RejectReason {
    /// A short name for counts and reports.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::UnknownSchema => "unknown_schema",
            RejectReason::MissingFeature => "missing_feature",
            RejectReason::NonFinite => "non_finite",
            RejectReason::Empty => "empty",
            RejectReason::Malformed => "malformed",
            RejectReason::Unlabelled => "unlabelled",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refused vector: the reason, and a detail naming the field where there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The category, for counting.
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// Checks a vector built or stored elsewhere before it is scored.
pub fn check(v: &FeatureVector) -> Result<(), Rejection> {
    use cadence_wire::features::SchemaError;
    v.validate().map_err(|e| {
        let reason = match &e {
            SchemaError::UnknownSchema(_) => RejectReason::UnknownSchema,
            SchemaError::NonFinite(_) => RejectReason::NonFinite,
            SchemaError::Missing(_) => RejectReason::MissingFeature,
            SchemaError::Empty => RejectReason::Empty,
            _ => RejectReason::Malformed,
        };
        Rejection::new(reason, e.to_string())
    })
}

/// One window with its evaluation labels.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledVector {
    /// String labels of the line (`subject`, `session`, `segment`, `split`, ...).
    pub labels: BTreeMap<String, String>,
    /// The validated vector.
    pub vector: FeatureVector,
}

impl LabelledVector {
    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

const VECTOR_FIELDS: [&str; 6] = [
    "schema",
    "duration_ms",
    "keys",
    "mouse_events",
    "keyboard",
    "mouse",
];

/// Parses one line of `cadence-agent replay` output into its labels and a validated vector.
pub fn parse_labelled(line: &str) -> Result<LabelledVector, Rejection> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        // serde_json refuses literals beyond the range of a double (`1e999`): that is the only
        // way JSON can spell a non-finite number.
        let reason = if e.to_string().contains("number out of range") {
            RejectReason::NonFinite
        } else {
            RejectReason::Malformed
        };
        Rejection::new(reason, e.to_string())
    })?;
    let Value::Object(mut obj) = value else {
        return Err(Rejection::new(RejectReason::Malformed, "not a JSON object"));
    };
    let mut labels = BTreeMap::new();
    let keys: Vec<String> = obj.keys().cloned().collect();
    for k in keys {
        if VECTOR_FIELDS.contains(&k.as_str()) {
            continue;
        }
        match obj.remove(&k) {
            Some(Value::String(s)) => {
                labels.insert(k, s);
            }
            _ => {
                return Err(Rejection::new(
                    RejectReason::Malformed,
                    format!("unknown field {k:?} (labels must be strings)"),
                ));
            }
        }
    }
    match obj.get("schema") {
        Some(Value::String(s)) if s == SCHEMA => {}
        Some(Value::String(s)) => {
            return Err(Rejection::new(
                RejectReason::UnknownSchema,
                format!("schema {s:?}, expected {SCHEMA:?}"),
            ));
        }
        _ => {
            return Err(Rejection::new(
                RejectReason::UnknownSchema,
                "no schema string",
            ));
        }
    }
    for m in Modality::ALL {
        match obj.get(m.name()) {
            None | Some(Value::Null) => {}
            Some(Value::Object(block)) => {
                let names = m.feature_names();
                for name in &names {
                    match block.get(*name) {
                        None => {
                            return Err(Rejection::new(
                                RejectReason::MissingFeature,
                                format!("{m} feature {name} is missing"),
                            ));
                        }
                        Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {}
                        Some(Value::Null | Value::Number(_)) => {
                            return Err(Rejection::new(
                                RejectReason::NonFinite,
                                format!("{m} feature {name} is not a finite number"),
                            ));
                        }
                        Some(_) => {
                            return Err(Rejection::new(
                                RejectReason::Malformed,
                                format!("{m} feature {name} is not a number"),
                            ));
                        }
                    }
                }
                if let Some(k) = block.keys().find(|k| !names.contains(&k.as_str())) {
                    return Err(Rejection::new(
                        RejectReason::Malformed,
                        format!("unknown {m} feature {k:?}"),
                    ));
                }
            }
            Some(_) => {
                return Err(Rejection::new(
                    RejectReason::Malformed,
                    format!("{m} is neither an object nor null"),
                ));
            }
        }
    }
    let vector: FeatureVector = serde_json::from_value(Value::Object(obj))
        .map_err(|e| Rejection::new(RejectReason::Malformed, e.to_string()))?;
    check(&vector)?;
    Ok(LabelledVector { labels, vector })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadence_wire::features::{KEYBOARD_LEN, KeyboardFeatures};

    fn line() -> Value {
        let v = FeatureVector {
            schema: SCHEMA.to_owned(),
            duration_ms: 1000,
            keys: 50,
            mouse_events: 0,
            keyboard: Some(KeyboardFeatures([100.0; KEYBOARD_LEN])),
            mouse: None,
        };
        let mut j = serde_json::to_value(v).unwrap();
        j["subject"] = "u1".into();
        j["segment"] = "7".into();
        j
    }

    fn reason(v: &Value) -> RejectReason {
        parse_labelled(&v.to_string()).unwrap_err().reason
    }

    #[test]
    fn labels_are_split_from_a_valid_vector() {
        let got = parse_labelled(&line().to_string()).unwrap();
        assert_eq!(got.label("subject"), Some("u1"));
        assert_eq!(got.label("segment"), Some("7"));
        assert_eq!(got.vector.keyboard.unwrap().0[0], 100.0);
    }

    #[test]
    fn each_bad_vector_gets_its_reason() {
        let mut v = line();
        v["schema"] = "cadence.features.v9".into();
        assert_eq!(reason(&v), RejectReason::UnknownSchema);

        let mut v = line();
        v["keyboard"].as_object_mut().unwrap().remove("hold_p50");
        assert_eq!(reason(&v), RejectReason::MissingFeature);

        let mut v = line();
        v["keyboard"]["hold_p50"] = Value::Null;
        assert_eq!(reason(&v), RejectReason::NonFinite);

        let s = line()
            .to_string()
            .replace("\"hold_p50\":100.0", "\"hold_p50\":1e999");
        assert_eq!(
            parse_labelled(&s).unwrap_err().reason,
            RejectReason::NonFinite
        );

        let mut v = line();
        v["keyboard"] = Value::Null;
        assert_eq!(reason(&v), RejectReason::Empty);

        let mut v = line();
        v["keyboard"]["key_a"] = 1.0.into();
        assert_eq!(reason(&v), RejectReason::Malformed);

        assert_eq!(
            parse_labelled("{not json").unwrap_err().reason,
            RejectReason::Malformed
        );
    }

    #[test]
    fn transform_is_odd_monotone_and_near_identity_at_zero() {
        let raw = [-100.0, -0.01, 0.0, 0.01, 100.0];
        let mut out = [0.0; 5];
        transform(&raw, &mut out);
        assert!(out.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(out[0], -out[4]);
        assert!((out[3] - 0.01).abs() < 1e-4);
    }
}
