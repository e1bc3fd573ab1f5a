//! The agent's checked configuration ([`Managed`]): what the organization's MDM decides in the
//! managed file, with the user's own file and flags applied where the organization allows
//! (see [`crate::Layers`]).
//!
//! The managed file is TOML in the system location ([`default_managed_path`]); every key is in
//! [`crate::KEYS`]:
//!
//! ```toml
//! [verifier]
//! url = "https://verifier.example.com:8443"   # required when [verifier] is present
//! ca_file = "/etc/cadence/ca.pem"             # or ca_pem = "-----BEGIN CERTIFICATE-----…"
//! public_key = "…64 hex digits…"              # pins the verifier's HPKE key at enrollment
//! enroll_token = "…"                          # silent enrollment at first start
//! heartbeat_secs = 60
//!
//! [notice]
//! text = "Your organization uses Cadence to …"
//!
//! [policy]
//! allow_pause = true
//! allow_quit = false
//! on_injection = "lock"                        # none | lock | command:CMD
//! user_settable = ["window.min_keys"]          # everything else is locked
//!
//! [window]
//! window_secs = 60
//! min_keys = 40
//! min_mouse = 100
//!
//! [spool]
//! max_mib = 64
//! ```
//!
//! Unknown keys are errors (a typo must not silently disable a setting), and every problem is
//! reported at once with its field path. Never panics on input.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::layers::{Layers, Setting};
use crate::window::{RawWindowPolicy, WindowPolicy};
use crate::{ConfigError, Problem};

/// Longest notice text a consent dialog can show.
pub const MAX_NOTICE_CHARS: usize = 4000;

/// Checked agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// Verifier URL (https), without a trailing slash.
    pub verifier_url: Option<String>,
    /// The CA file the PEM came from, when it came from a file.
    pub ca_file: Option<PathBuf>,
    /// PEM text of the CA the verifier's certificate must chain to.
    pub ca_pem: Option<String>,
    /// The verifier's HPKE public key (64 lowercase hex digits): enrollment refuses another.
    pub verifier_public_key: Option<String>,
    /// Enrollment token for silent enrollment at first start.
    pub enroll_token: Option<String>,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u64,
    /// The organization's notice text.
    pub notice: Option<String>,
    /// What the organization lets users do besides withdrawing consent (always allowed).
    pub policy: Policy,
    /// What the agent does locally when the guard detects keystroke injection.
    pub on_injection: OnInjection,
    /// Keys the organization lets users set.
    pub user_settable: Vec<String>,
    /// Window policy (privacy floors applied).
    pub window: WindowPolicy,
    /// Spool bound in MiB.
    pub spool_mib: u64,
}

impl Default for Managed {
    fn default() -> Managed {
        Managed {
            verifier_url: None,
            ca_file: None,
            ca_pem: None,
            verifier_public_key: None,
            enroll_token: None,
            heartbeat_secs: 60,
            notice: None,
            policy: Policy::default(),
            on_injection: OnInjection::None,
            user_settable: Vec::new(),
            window: WindowPolicy::default(),
            spool_mib: 64,
        }
    }
}

/// What users may do from the tray, as the organization decides. Withdrawing consent is not a
/// policy: it is always possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// "Pause for 30 minutes" is offered (default: yes).
    pub allow_pause: bool,
    /// "Quit" is offered (default: no; monitoring then ends only by withdrawing consent).
    pub allow_quit: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            allow_pause: true,
            allow_quit: false,
        }
    }
}

/// The local action on detected keystroke injection; the verifier is told in every case.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnInjection {
    /// Only report.
    #[default]
    None,
    /// Lock the screen.
    Lock,
    /// Run this command.
    Command(String),
}

impl OnInjection {
    /// Parses `none`, `lock` or `command:CMD`.
    pub fn parse(s: &str) -> Option<OnInjection> {
        match s.trim() {
            "none" => Some(OnInjection::None),
            "lock" => Some(OnInjection::Lock),
            other => other
                .strip_prefix("command:")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| OnInjection::Command(c.to_owned())),
        }
    }
}

impl fmt::Display for OnInjection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnInjection::None => f.write_str("none"),
            OnInjection::Lock => f.write_str("lock"),
            OnInjection::Command(c) => write!(f, "command:{c}"),
        }
    }
}

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows::program_data;
/// Not called off Windows (the `cfg!` above is false); it keeps that branch compiling here.
#[cfg(not(windows))]
fn program_data() -> PathBuf {
    PathBuf::from(r"C:\ProgramData")
}

/// The system location of the managed file on this OS: a fixed path, or on Windows the
/// system's ProgramData known folder, never one the user can redirect.
pub fn default_managed_path() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/Library/Application Support/Cadence/agent.toml")
    } else if cfg!(windows) {
        // Never the `ProgramData` environment variable: the user sets that, and so could point
        // the agent at a "managed" file of their own.
        program_data().join("Cadence").join("agent.toml")
    } else {
        PathBuf::from("/etc/cadence/agent.toml")
    }
}

/// The user's own file: `agent.toml` in the per-user configuration directory
/// (`~/.config/cadence/` on Linux, `~/Library/Application Support/cadence/` on macOS,
/// `%APPDATA%\cadence\config\` on Windows).
pub fn default_user_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "cadence").map(|p| p.config_dir().join("agent.toml"))
}

impl Managed {
    /// Reads the managed file at `path` alone (no user layer); a missing file is the
    /// defaults.
    pub fn load(path: &Path) -> Result<Managed, ConfigError> {
        let mut l = Layers::new();
        l.managed_file(path, false);
        l.resolve().map(|e| e.config)
    }

    /// Parses managed TOML alone; relative `ca_file` paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Managed, ConfigError> {
        let mut l = Layers::new();
        l.managed_toml(text, &base.join("agent.toml"));
        l.resolve().map(|e| e.config)
    }

    /// Checks merged, well-typed settings; relative file paths are taken from `base`. Returns
    /// the values (defaults where a check failed) and every problem.
    pub(crate) fn from_settings(
        s: &BTreeMap<&'static str, Setting>,
        base: &Path,
    ) -> (Managed, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut bad = |field: &str, rule: String| {
            problems.push(Problem {
                field: field.to_owned(),
                rule,
            })
        };
        let str_of = |k: &str| s.get(k).and_then(|v| v.value.as_str());
        let int_of = |k: &str| s.get(k).and_then(|v| v.value.as_integer());
        let bool_of = |k: &str| s.get(k).and_then(|v| v.value.as_bool());
        let mut out = Managed::default();

        let in_verifier = [
            "verifier.url",
            "verifier.ca_file",
            "verifier.ca_pem",
            "verifier.public_key",
            "verifier.enroll_token",
        ];
        if in_verifier.iter().any(|k| s.contains_key(k)) {
            if !s.contains_key("verifier.url") {
                bad(
                    "verifier.url",
                    "is required when [verifier] is present".into(),
                );
            }
            if !s.contains_key("verifier.ca_file") && !s.contains_key("verifier.ca_pem") {
                bad(
                    "verifier.ca_file",
                    "is required (or verifier.ca_pem) when [verifier] is present".into(),
                );
            }
        }
        if let Some(u) = str_of("verifier.url") {
            match check_url(u) {
                Ok(u) => out.verifier_url = Some(u),
                Err(rule) => bad("verifier.url", rule),
            }
        }
        match (str_of("verifier.ca_file"), str_of("verifier.ca_pem")) {
            (Some(_), Some(_)) => bad(
                "verifier.ca_pem",
                "set either verifier.ca_file or verifier.ca_pem, not both".into(),
            ),
            (Some(f), None) => {
                let path = base.join(f);
                match std::fs::read(&path) {
                    Ok(bytes) => match check_pem(&bytes) {
                        Ok(()) => {
                            out.ca_pem = Some(String::from_utf8_lossy(&bytes).into_owned());
                            out.ca_file = Some(path);
                        }
                        Err(e) => bad("verifier.ca_file", format!("{}: {e}", path.display())),
                    },
                    Err(e) => bad(
                        "verifier.ca_file",
                        format!("{} cannot be read: {e}", path.display()),
                    ),
                }
            }
            (None, Some(pem)) => match check_pem(pem.as_bytes()) {
                Ok(()) => out.ca_pem = Some(pem.to_owned()),
                Err(e) => bad("verifier.ca_pem", e),
            },
            (None, None) => {}
        }
        if let Some(k) = str_of("verifier.public_key") {
            let k = k.trim().to_ascii_lowercase();
            if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.verifier_public_key = Some(k);
            } else {
                bad(
                    "verifier.public_key",
                    format!(
                        "must be 64 hex digits (`cadence-verifier` prints it at start), got {} characters",
                        k.chars().count()
                    ),
                );
            }
        }
        if let Some(t) = str_of("verifier.enroll_token") {
            if t.trim().is_empty() {
                bad("verifier.enroll_token", "must not be empty".into());
            } else {
                out.enroll_token = Some(t.trim().to_owned());
            }
        }
        if let Some(h) = int_of("verifier.heartbeat_secs") {
            out.heartbeat_secs = h.unsigned_abs();
        }
        if let Some(n) = str_of("notice.text") {
            let chars = n.trim().chars().count();
            if chars == 0 {
                bad("notice.text", "must not be empty".into());
            } else if chars > MAX_NOTICE_CHARS {
                bad(
                    "notice.text",
                    format!("has {chars} characters, at most {MAX_NOTICE_CHARS} fit a dialog"),
                );
            } else {
                out.notice = Some(n.trim().to_owned());
            }
        }
        let d = Policy::default();
        out.policy = Policy {
            allow_pause: bool_of("policy.allow_pause").unwrap_or(d.allow_pause),
            allow_quit: bool_of("policy.allow_quit").unwrap_or(d.allow_quit),
        };
        if let Some(a) = str_of("policy.on_injection") {
            match OnInjection::parse(a) {
                Some(a) => out.on_injection = a,
                None => bad(
                    "policy.on_injection",
                    format!("must be \"none\", \"lock\" or \"command:CMD\", got {a:?}"),
                ),
            }
        }
        if let Some(list) = s
            .get("policy.user_settable")
            .and_then(|v| v.value.as_array())
        {
            out.user_settable = list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
        }
        let u32_of = |k: &str| int_of(k).and_then(|i| u32::try_from(i).ok());
        let raw = RawWindowPolicy {
            window_secs: s.get("window.window_secs").and_then(|v| match &v.value {
                toml::Value::Integer(i) => Some(*i as f64),
                toml::Value::Float(f) => Some(*f),
                _ => None,
            }),
            window_keys: u32_of("window.window_keys"),
            window_mouse_events: u32_of("window.window_mouse_events"),
            min_keys: u32_of("window.min_keys"),
            min_mouse: u32_of("window.min_mouse"),
            segment_windows: None,
        };
        match WindowPolicy::from_raw(&raw, "window.") {
            Ok(w) => out.window = w,
            Err(ConfigError::Invalid(p)) => problems.extend(p),
        }
        if let Some(m) = int_of("spool.max_mib") {
            out.spool_mib = m.unsigned_abs();
        }
        (out, problems)
    }

    /// `key`'s value as `config show` prints it; secrets are never printed.
    pub fn display_value(&self, key: &str) -> String {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "(not set)".into());
        match key {
            "verifier.url" => opt(&self.verifier_url),
            "verifier.ca_file" => self
                .ca_file
                .as_ref()
                .map_or("(not set)".into(), |p| p.display().to_string()),
            "verifier.ca_pem" => match (&self.ca_pem, &self.ca_file) {
                (Some(_), Some(_)) => "(from ca_file)".into(),
                (Some(p), None) => format!(
                    "({} PEM certificate(s))",
                    p.matches("-----BEGIN CERTIFICATE-----").count()
                ),
                (None, _) => "(not set)".into(),
            },
            "verifier.public_key" => opt(&self.verifier_public_key),
            "verifier.enroll_token" => self
                .enroll_token
                .as_ref()
                .map_or("(not set)".into(), |_| "<redacted>".into()),
            "verifier.heartbeat_secs" => self.heartbeat_secs.to_string(),
            "notice.text" => self.notice.as_ref().map_or_else(
                || "(built-in notice)".into(),
                |n| {
                    let first: String = n.chars().take(60).collect();
                    let more = if n.chars().count() > 60 { "…" } else { "" };
                    format!("{:?}", format!("{first}{more}"))
                },
            ),
            "policy.allow_pause" => self.policy.allow_pause.to_string(),
            "policy.allow_quit" => self.policy.allow_quit.to_string(),
            "policy.on_injection" => self.on_injection.to_string(),
            "policy.user_settable" => format!("{:?}", self.user_settable),
            "window.window_secs" => self
                .window
                .window_us
                .map_or("(count only)".into(), |us| format!("{}", us as f64 / 1e6)),
            "window.window_keys" => self
                .window
                .window_keys
                .map_or("(not set)".into(), |n| n.to_string()),
            "window.window_mouse_events" => self
                .window
                .window_mouse_events
                .map_or("(not set)".into(), |n| n.to_string()),
            "window.min_keys" => self.window.min_keys.to_string(),
            "window.min_mouse" => self.window.min_mouse.to_string(),
            "spool.max_mib" => self.spool_mib.to_string(),
            _ => "(unknown key)".into(),
        }
    }
}

/// A well-formed `https://` URL with a host and nothing that does not belong in a base URL;
/// returned without a trailing slash.
fn check_url(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s.trim()).map_err(|e| format!("is not a valid URL ({e}): {s:?}"))?;
    if u.scheme() != "https" {
        return Err(format!("must be an https:// URL, got {s:?}"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("must name a host, got {s:?}"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!("must not have a query or fragment, got {s:?}"));
    }
    Ok(u.as_str().trim_end_matches('/').to_owned())
}

/// At least one well-formed PEM certificate.
fn check_pem(bytes: &[u8]) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(bytes) {
        c.map_err(|e| format!("is not valid PEM: {e}"))?;
        n += 1;
    }
    if n == 0 {
        Err("holds no PEM certificate".into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_with_its_path() {
        let text = "[verifier]\nurl = \"http://x\"\nca_file = \"/nonexistent/ca.pem\"\nenroll_token = \" \"\npublic_key = \"abc\"\n[notice]\ntext = \"\"\n[policy]\non_injection = \"reboot\"\n";
        let ConfigError::Invalid(p) = Managed::parse(text, Path::new("/")).unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "verifier.url",
                "verifier.ca_file",
                "verifier.public_key",
                "verifier.enroll_token",
                "notice.text",
                "policy.on_injection"
            ]
        );
    }

    #[test]
    fn urls_are_parsed_not_pattern_matched() {
        assert_eq!(check_url("https://v:8443/").unwrap(), "https://v:8443");
        assert_eq!(check_url("https://v/base/").unwrap(), "https://v/base");
        for bad in [
            "https://",
            "https://exa mple.com",
            "http://v",
            "https://u:p@v",
            "https://v/?x=1",
            "verifier:8443",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_verifier_fields_and_defaults() {
        let ConfigError::Invalid(p) =
            Managed::parse("[verifier]\nenroll_token = \"t\"\n", Path::new("/")).unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["verifier.url", "verifier.ca_file"]);
        assert_eq!(
            Managed::load(Path::new("/nonexistent/agent.toml")).unwrap(),
            Managed::default()
        );
        let p = Managed::parse(
            "[policy]\nallow_pause = false\nallow_quit = true\non_injection = \"command: xlock \"\n",
            Path::new("/"),
        )
        .unwrap();
        assert!(!p.policy.allow_pause && p.policy.allow_quit);
        assert_eq!(p.on_injection, OnInjection::Command("xlock".into()));
        assert!(Managed::parse("[policy]\nallow_pause = \"no\"\n", Path::new("/")).is_err());
    }

    #[test]
    fn ca_file_is_read_relative_to_the_managed_file() {
        let dir = std::env::temp_dir().join(format!("cadence-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.pem"), "not a certificate").unwrap();
        std::fs::write(
            dir.join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZm9v\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let ok = Managed::parse(
            "[verifier]\nurl = \"https://v\"\nca_file = \"ca.pem\"\n",
            &dir,
        )
        .unwrap();
        assert_eq!(ok.ca_file, Some(dir.join("ca.pem")));
        let ConfigError::Invalid(p) = Managed::parse(
            "[verifier]\nurl = \"https://v\"\nca_file = \"bad.pem\"\n",
            &dir,
        )
        .unwrap_err();
        assert!(p[0].rule.contains("no PEM certificate"), "{p:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
