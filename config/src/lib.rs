//! Cadence's typed configuration.
//!
//! Owns the checked configuration values and their defaults. Raw input (flags now, managed and
//! user files later) is turned into these types once, and every problem is reported at once,
//! each with the path of the field it concerns. Never panics on bad input.

mod managed;
mod window;

pub use managed::{MAX_NOTICE_CHARS, Managed, Policy, default_managed_path};
pub use window::{RawWindowPolicy, WindowPolicy};

/// One problem with a configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Problem {
    /// Path of the offending field, for example `window.min_keys`.
    pub field: String,
    /// The rule it breaks, in words.
    pub rule: String,
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// One or more values break a rule; each [`Problem`] names its field.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}
