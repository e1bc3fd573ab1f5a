//! Cadence's typed configuration.
//!
//! Owns the configuration schema ([`KEYS`]), the checked values and their defaults
//! ([`Managed`], [`WindowPolicy`]) and the layering of defaults, the organization's managed
//! file, the user's own file and command-line flags ([`Layers`]). Raw input is turned into
//! checked types once, and every problem is reported at once, each with the path of the field
//! it concerns and the rule it breaks. Never panics on bad input; never lets a user layer set
//! a key the organization locked.

mod keys;
mod layers;
mod managed;
#[cfg(feature = "plist")]
mod plist;
mod window;

pub use keys::{KEYS, Key, Kind, find_key};
pub use layers::{Effective, Layers, Origin};
pub use managed::{
    MAX_NOTICE_CHARS, Managed, OnInjection, Policy, default_managed_path, default_user_path,
};
#[cfg(feature = "plist")]
pub use plist::{MANAGED_PREFERENCES, PREFERENCE_DOMAIN, plist_to_table};
/// A value for [`Layers::flag`] (TOML's value type, so flags and files are checked alike).
pub use toml::Value;
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
