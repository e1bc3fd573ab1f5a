//! The managed agent configuration: the file an organization's MDM places in the system
//! location, read by every user's agent.
//!
//! This first version carries what silent enrollment and consent need: the verifier's URL,
//! its CA certificate file, an enrollment token, and the notice text users are asked to agree
//! to. Unknown keys are errors (a typo must not silently disable a setting), and every problem
//! is reported at once with its field path.
//!
//! ```toml
//! [verifier]
//! url = "https://verifier.example.com:8443"
//! ca_file = "/etc/cadence/ca.pem"
//! enroll_token = "…"
//!
//! [notice]
//! text = "Your organization uses Cadence to …"
//!
//! [policy]
//! allow_pause = true
//! allow_quit = false
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ConfigError, Problem};

/// Longest notice text a consent dialog can show.
pub const MAX_NOTICE_CHARS: usize = 4000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    verifier: Option<RawVerifier>,
    notice: Option<RawNotice>,
    policy: Option<RawPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    allow_pause: Option<bool>,
    allow_quit: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerifier {
    url: Option<String>,
    ca_file: Option<PathBuf>,
    enroll_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotice {
    text: Option<String>,
}

/// Checked managed settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Managed {
    /// Verifier URL (https).
    pub verifier_url: Option<String>,
    /// PEM text of the CA the verifier's certificate must chain to (read from `ca_file`).
    pub ca_pem: Option<String>,
    /// Enrollment token for silent enrollment at first start.
    pub enroll_token: Option<String>,
    /// The organization's notice text.
    pub notice: Option<String>,
    /// What the organization lets users do besides withdrawing consent (always allowed).
    pub policy: Policy,
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

/// The system location of the managed file on this OS.
pub fn default_managed_path() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/Library/Application Support/Cadence/agent.toml")
    } else if cfg!(windows) {
        let base = std::env::var_os("ProgramData").unwrap_or_else(|| "C:\\ProgramData".into());
        PathBuf::from(base).join("Cadence").join("agent.toml")
    } else {
        PathBuf::from("/etc/cadence/agent.toml")
    }
}

impl Managed {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Managed, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Managed::parse(&text, path.parent().unwrap_or(Path::new("."))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Managed::default()),
            Err(e) => Err(ConfigError::Invalid(vec![Problem {
                field: path.display().to_string(),
                rule: format!("cannot be read: {e}"),
            }])),
        }
    }

    /// Parses managed TOML; relative `ca_file` paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Managed, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            ConfigError::Invalid(vec![Problem {
                field: "(file)".into(),
                rule: e.to_string(),
            }])
        })?;
        let mut problems = Vec::new();
        let mut out = Managed::default();
        let v = raw.verifier.unwrap_or_default();
        if let Some(url) = v.url {
            if url.starts_with("https://") && url.len() > "https://".len() {
                out.verifier_url = Some(url.trim_end_matches('/').to_owned());
            } else {
                problems.push(Problem {
                    field: "verifier.url".into(),
                    rule: format!("must be an https:// URL, got {url:?}"),
                });
            }
        }
        if let Some(ca) = v.ca_file {
            let path = if ca.is_absolute() { ca } else { base.join(ca) };
            match std::fs::read_to_string(&path) {
                Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => out.ca_pem = Some(pem),
                Ok(_) => problems.push(Problem {
                    field: "verifier.ca_file".into(),
                    rule: format!("{} holds no PEM certificate", path.display()),
                }),
                Err(e) => problems.push(Problem {
                    field: "verifier.ca_file".into(),
                    rule: format!("{} cannot be read: {e}", path.display()),
                }),
            }
        }
        if let Some(t) = v.enroll_token {
            if t.trim().is_empty() {
                problems.push(Problem {
                    field: "verifier.enroll_token".into(),
                    rule: "must not be empty".into(),
                });
            } else {
                out.enroll_token = Some(t.trim().to_owned());
            }
        }
        if let Some(n) = raw.notice.and_then(|n| n.text) {
            let chars = n.trim().chars().count();
            if chars == 0 {
                problems.push(Problem {
                    field: "notice.text".into(),
                    rule: "must not be empty".into(),
                });
            } else if chars > MAX_NOTICE_CHARS {
                problems.push(Problem {
                    field: "notice.text".into(),
                    rule: format!(
                        "has {chars} characters, at most {MAX_NOTICE_CHARS} fit a dialog"
                    ),
                });
            } else {
                out.notice = Some(n.trim().to_owned());
            }
        }
        let p = raw.policy.unwrap_or_default();
        let defaults = Policy::default();
        out.policy = Policy {
            allow_pause: p.allow_pause.unwrap_or(defaults.allow_pause),
            allow_quit: p.allow_quit.unwrap_or(defaults.allow_quit),
        };
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_with_its_path() {
        let text = "[verifier]\nurl = \"http://x\"\nca_file = \"/nonexistent/ca.pem\"\nenroll_token = \" \"\n[notice]\ntext = \"\"\n";
        let ConfigError::Invalid(p) = Managed::parse(text, Path::new("/")).unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "verifier.url",
                "verifier.ca_file",
                "verifier.enroll_token",
                "notice.text"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_missing_file() {
        assert!(Managed::parse("[verifier]\nurll = \"https://x\"\n", Path::new("/")).is_err());
        assert_eq!(
            Managed::load(Path::new("/nonexistent/agent.toml")).unwrap(),
            Managed::default()
        );
        let ok = Managed::parse("[verifier]\nurl = \"https://v:8443/\"\n", Path::new("/")).unwrap();
        assert_eq!(ok.verifier_url.as_deref(), Some("https://v:8443"));
        assert_eq!(ok.policy, Policy::default());
        let p = Managed::parse(
            "[policy]\nallow_pause = false\nallow_quit = true\n",
            Path::new("/"),
        );
        let p = p.unwrap().policy;
        assert!(!p.allow_pause && p.allow_quit);
        assert!(Managed::parse("[policy]\nallow_pause = \"no\"\n", Path::new("/")).is_err());
    }
}
