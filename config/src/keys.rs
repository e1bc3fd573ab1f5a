//! The schema of the agent's configuration: every key a managed or user file may set, its type,
//! and whether an organization may leave it to its users.
//!
//! This list is the single source of truth: the file parser rejects every key not in it, the
//! installer's template check rejects every key a package or profile sets that is not in it,
//! and `cadence-agent config show` lists exactly these keys.
//!
//! Keys that decide where data goes and what people agreed to (the verifier, its CA and key,
//! the enrollment token, the notice, the tray policy) are never settable by users, whatever
//! the managed file says.

/// The type of a key's value, as written in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// Any string.
    Str,
    /// An `https://` URL.
    Url,
    /// A path to a file; relative paths are taken from the directory of the file that sets it.
    File,
    /// 32 bytes as 64 hex digits.
    Hex32,
    /// `true` or `false`.
    Bool,
    /// An integer in `min..=max`.
    Int {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// A number of seconds, integer or not.
    Secs,
    /// A local action: `none`, `lock` or `command:CMD`.
    Action,
    /// A list of key paths.
    KeyList,
}

impl Kind {
    /// The type in words, for error messages and documentation.
    pub fn describe(self) -> String {
        match self {
            Kind::Str => "a string".into(),
            Kind::Url => "an https:// URL (string)".into(),
            Kind::File => "a file path (string)".into(),
            Kind::Hex32 => "64 hex digits (string)".into(),
            Kind::Bool => "true or false".into(),
            Kind::Int { min, max } => format!("an integer from {min} to {max}"),
            Kind::Secs => "a number of seconds".into(),
            Kind::Action => "\"none\", \"lock\" or \"command:CMD\"".into(),
            Kind::KeyList => "a list of key names (strings)".into(),
        }
    }
}

/// One configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// `section.name`, as written in TOML (`[section]` then `name = …`).
    pub path: &'static str,
    /// Its value's type.
    pub kind: Kind,
    /// Whether the managed file may list it in `policy.user_settable`.
    pub user_eligible: bool,
    /// One line of documentation.
    pub help: &'static str,
}

const fn key(path: &'static str, kind: Kind, user_eligible: bool, help: &'static str) -> Key {
    Key {
        path,
        kind,
        user_eligible,
        help,
    }
}

const U32: Kind = Kind::Int {
    min: 0,
    max: u32::MAX as i64,
};

/// Every key of the agent's configuration, in the order `config show` prints them.
pub const KEYS: &[Key] = &[
    key(
        "verifier.url",
        Kind::Url,
        false,
        "the verifier's URL; required when [verifier] is present",
    ),
    key(
        "verifier.ca_file",
        Kind::File,
        false,
        "PEM file of the CA the verifier's certificate chains to (or ca_pem)",
    ),
    key(
        "verifier.ca_pem",
        Kind::Str,
        false,
        "the same CA as PEM text, for profiles and installers that cannot place a file",
    ),
    key(
        "verifier.public_key",
        Kind::Hex32,
        false,
        "the verifier's HPKE public key; enrollment refuses any other",
    ),
    key(
        "verifier.enroll_token",
        Kind::Str,
        false,
        "enrollment token for silent enrollment at first start",
    ),
    key(
        "verifier.heartbeat_secs",
        Kind::Int {
            min: 1,
            max: 86_400,
        },
        true,
        "seconds between heartbeats (the verifier flags a silent device)",
    ),
    key(
        "notice.text",
        Kind::Str,
        false,
        "the organization's notice, shown when consent is asked",
    ),
    key(
        "policy.allow_pause",
        Kind::Bool,
        false,
        "users may pause monitoring for 30 minutes",
    ),
    key(
        "policy.allow_quit",
        Kind::Bool,
        false,
        "users may quit the agent",
    ),
    key(
        "policy.on_injection",
        Kind::Action,
        true,
        "local action on detected keystroke injection",
    ),
    key(
        "policy.user_settable",
        Kind::KeyList,
        false,
        "keys users may set in their own file or with flags",
    ),
    key(
        "window.window_secs",
        Kind::Secs,
        true,
        "close a window this many seconds after its first event",
    ),
    key(
        "window.window_keys",
        U32,
        true,
        "close a window at this many key presses",
    ),
    key(
        "window.window_mouse_events",
        U32,
        true,
        "close a window at this many pointer events",
    ),
    key(
        "window.min_keys",
        U32,
        true,
        "send keyboard features only for windows with at least this many key presses",
    ),
    key(
        "window.min_mouse",
        U32,
        true,
        "send mouse features only for windows with at least this many pointer events",
    ),
    key(
        "spool.max_mib",
        Kind::Int {
            min: 1,
            max: 65_536,
        },
        true,
        "bound of the local spool of unsent records, in MiB",
    ),
];

/// The key at `path`, if it is one.
pub fn find_key(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

/// The sections keys live in.
pub fn sections() -> impl Iterator<Item = &'static str> {
    let mut seen: Vec<&'static str> = Vec::new();
    for k in KEYS {
        let s = section_of(k.path);
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    seen.into_iter()
}

fn section_of(path: &'static str) -> &'static str {
    path.split_once('.').map_or(path, |(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_section_dot_name_and_unique() {
        for (i, k) in KEYS.iter().enumerate() {
            let (s, n) = k.path.split_once('.').unwrap();
            assert!(
                !s.is_empty() && !n.is_empty() && !n.contains('.'),
                "{}",
                k.path
            );
            assert!(KEYS[..i].iter().all(|o| o.path != k.path), "{}", k.path);
        }
        assert_eq!(
            sections().collect::<Vec<_>>(),
            ["verifier", "notice", "policy", "window", "spool"]
        );
        // What decides where data goes and what people agreed to is never left to users.
        for p in [
            "verifier.url",
            "verifier.public_key",
            "notice.text",
            "policy.user_settable",
        ] {
            assert!(!find_key(p).unwrap().user_eligible, "{p}");
        }
    }
}
