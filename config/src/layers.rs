//! Layering: defaults, then the organization's managed file, then the user's own file, then
//! command-line flags. Hands on one checked [`Managed`] and, for each key, where its value came
//! from ([`Origin`]).
//!
//! The rule users see: **the organization locks everything it does not list in
//! `policy.user_settable`.** A user file or a flag that sets any other key is a configuration
//! error naming the key, not a silent override. Keys that decide where data goes and what
//! people agreed to (see [`KEYS`](crate::KEYS), `user_eligible`) can never be listed. With no
//! managed file at all (an unmanaged, self-installed agent) the person running it is its
//! administrator: every user-eligible key is open to the user file and flags.
//!
//! Files are read into TOML tables and walked against the schema by hand rather than through
//! serde, so that every unknown key and every wrong type is reported, not only the first one.
//! Never panics on input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::keys::{KEYS, Key, Kind, find_key, sections};
use crate::managed::Managed;
use crate::{ConfigError, Problem};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Built-in default.
    Default,
    /// The organization's managed file (or profile), at this path.
    Managed(PathBuf),
    /// The user's own file, at this path.
    User(PathBuf),
    /// A command-line flag, e.g. `--window-secs`.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::Managed(p) => write!(f, "managed {}", p.display()),
            Origin::User(p) => write!(f, "user {}", p.display()),
            Origin::Flag(s) => write!(f, "flag {s}"),
        }
    }
}

impl Origin {
    /// ` (from …)` for values a user set, empty for the organization's and defaults: problems
    /// in the managed file need no such pointer, the command says which file it checked.
    fn suffix(&self) -> String {
        match self {
            Origin::User(_) | Origin::Flag(_) => format!(" (from {self})"),
            Origin::Default | Origin::Managed(_) => String::new(),
        }
    }
}

/// A key's value after the shape check, with its origin.
#[derive(Debug, Clone)]
pub(crate) struct Setting {
    pub(crate) value: toml::Value,
    pub(crate) origin: Origin,
}

/// The organization's layer as read.
#[derive(Debug)]
struct ManagedLayer {
    path: PathBuf,
    values: Vec<(&'static Key, toml::Value)>,
}

/// Collects layers, then [`Layers::resolve`]s them into one checked configuration.
#[derive(Debug, Default)]
pub struct Layers {
    managed: Option<ManagedLayer>,
    /// User-file entries and flags, in the order given (later wins).
    user: Vec<(&'static Key, toml::Value, Origin)>,
    user_file: Option<PathBuf>,
    problems: Vec<Problem>,
}

/// The resolved configuration and where each value came from.
#[derive(Debug, Clone)]
pub struct Effective {
    /// The checked values.
    pub config: Managed,
    /// Origin of every key in [`KEYS`] order.
    pub origins: Vec<(&'static str, Origin)>,
    /// The managed file, when there is one.
    pub managed_file: Option<PathBuf>,
    /// The user file consulted (it may not exist).
    pub user_file: Option<PathBuf>,
    /// The keys a user file or flag may set here.
    pub user_settable: Vec<&'static str>,
}

impl Effective {
    /// Where `key` came from.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.origins.iter().find(|(k, _)| *k == key).map(|(_, o)| o)
    }
}

impl Layers {
    /// No layers yet: every value at its default.
    pub fn new() -> Layers {
        Layers::default()
    }

    /// Reads the managed TOML file at `path`. A missing file means an unmanaged agent unless
    /// `must_exist` (the path was given explicitly).
    pub fn managed_file(&mut self, path: &Path, must_exist: bool) -> &mut Layers {
        match std::fs::read_to_string(path) {
            Ok(text) => self.managed_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => self,
            Err(e) => {
                self.problems.push(Problem {
                    field: path.display().to_string(),
                    rule: format!("the managed file cannot be read: {e}"),
                });
                self
            }
        }
    }

    /// Takes managed TOML text; `path` names it and anchors relative file paths.
    pub fn managed_toml(&mut self, text: &str, path: &Path) -> &mut Layers {
        match parse_toml(text, path, "") {
            Ok(table) => self.managed_table(table, path),
            Err(p) => {
                self.problems.push(p);
                self
            }
        }
    }

    /// Takes an already parsed managed table (a macOS profile's preferences, converted).
    pub fn managed_table(&mut self, table: toml::Table, path: &Path) -> &mut Layers {
        let values = walk(&table, "", &mut self.problems);
        self.managed = Some(ManagedLayer {
            path: path.to_owned(),
            values,
        });
        self
    }

    /// Reads the user's own file; a missing one sets nothing.
    pub fn user_file(&mut self, path: &Path) -> &mut Layers {
        self.user_file = Some(path.to_owned());
        match std::fs::read_to_string(path) {
            Ok(text) => self.user_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self,
            Err(e) => {
                self.problems.push(Problem {
                    field: path.display().to_string(),
                    rule: format!("the user file cannot be read: {e}"),
                });
                self
            }
        }
    }

    /// Takes the user's own file as text.
    pub fn user_toml(&mut self, text: &str, path: &Path) -> &mut Layers {
        self.user_file = Some(path.to_owned());
        let origin = Origin::User(path.to_owned());
        match parse_toml(text, path, &origin.suffix()) {
            Ok(table) => {
                let suffix = origin.suffix();
                let mut problems = Vec::new();
                for (key, value) in walk(&table, &suffix, &mut problems) {
                    self.user.push((key, value, origin.clone()));
                }
                self.problems.extend(problems);
            }
            Err(p) => self.problems.push(p),
        }
        self
    }

    /// A command-line flag `flag` setting `key` (a path in [`KEYS`]).
    pub fn flag(&mut self, key: &str, value: toml::Value, flag: &str) -> &mut Layers {
        let origin = Origin::Flag(flag.to_owned());
        match find_key(key) {
            Some(k) => match shape(k, &value) {
                Ok(()) => self.user.push((k, value, origin)),
                Err(rule) => self.problems.push(Problem {
                    field: k.path.to_owned(),
                    rule: format!("{rule}{}", origin.suffix()),
                }),
            },
            None => self.problems.push(Problem {
                field: key.to_owned(),
                rule: format!("unknown key{}", origin.suffix()),
            }),
        }
        self
    }

    /// Records a problem found outside the schema walk (a file that cannot be read).
    #[cfg_attr(not(feature = "plist"), allow(dead_code))]
    pub(crate) fn push_problem(&mut self, path: &Path, rule: String) {
        self.problems.push(Problem {
            field: path.display().to_string(),
            rule,
        });
    }

    /// Merges the layers and checks the result, reporting every problem of every layer.
    pub fn resolve(self) -> Result<Effective, ConfigError> {
        let mut problems = self.problems;
        let mut merged: BTreeMap<&'static str, Setting> = BTreeMap::new();
        let managed_path = self.managed.as_ref().map(|m| m.path.clone());
        let base = managed_path
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .to_owned();

        // Which keys the user layers may set.
        let open: BTreeSet<&'static str> = match &self.managed {
            None => KEYS
                .iter()
                .filter(|k| k.user_eligible)
                .map(|k| k.path)
                .collect(),
            Some(m) => {
                let listed = m
                    .values
                    .iter()
                    .find(|(k, _)| k.path == "policy.user_settable")
                    .and_then(|(_, v)| v.as_array());
                let mut open = BTreeSet::new();
                for name in listed.into_iter().flatten().filter_map(toml::Value::as_str) {
                    match find_key(name) {
                        Some(k) if k.user_eligible => {
                            open.insert(k.path);
                        }
                        Some(k) => problems.push(Problem {
                            field: "policy.user_settable".into(),
                            rule: format!(
                                "{} belongs to the organization and cannot be left to users",
                                k.path
                            ),
                        }),
                        None => problems.push(Problem {
                            field: "policy.user_settable".into(),
                            rule: format!("{name:?} is not a configuration key"),
                        }),
                    }
                }
                open
            }
        };
        if let Some(m) = &self.managed {
            for (k, v) in &m.values {
                merged.insert(
                    k.path,
                    Setting {
                        value: v.clone(),
                        origin: Origin::Managed(m.path.clone()),
                    },
                );
            }
        }
        for (k, value, origin) in self.user {
            if open.contains(k.path) {
                merged.insert(k.path, Setting { value, origin });
                continue;
            }
            let why = match (&managed_path, k.user_eligible) {
                (_, false) => "can be set only by the organization's managed configuration".into(),
                (Some(p), true) => format!(
                    "is locked by the managed configuration {}, which lets users set: {}",
                    p.display(),
                    if open.is_empty() {
                        "nothing".to_owned()
                    } else {
                        open.iter().copied().collect::<Vec<_>>().join(", ")
                    }
                ),
                // Not reached: without a managed file every eligible key is open.
                (None, true) => "is not open to users here".into(),
            };
            problems.push(Problem {
                field: k.path.to_owned(),
                rule: format!("{why}{}", origin.suffix()),
            });
        }

        let (config, semantic) = Managed::from_settings(&merged, &base);
        for mut p in semantic {
            if let Some(s) = merged.get(p.field.as_str()) {
                p.rule.push_str(&s.origin.suffix());
            }
            problems.push(p);
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let origins = KEYS
            .iter()
            .map(|k| {
                let o = merged
                    .get(k.path)
                    .map_or(Origin::Default, |s| s.origin.clone());
                (k.path, o)
            })
            .collect();
        Ok(Effective {
            config,
            origins,
            managed_file: managed_path,
            user_file: self.user_file,
            user_settable: open.into_iter().collect(),
        })
    }
}

/// Parses TOML text into a table, or one problem naming the file, line and column.
fn parse_toml(text: &str, path: &Path, suffix: &str) -> Result<toml::Table, Problem> {
    text.parse::<toml::Table>().map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {col}")
            })
            .unwrap_or_default();
        Problem {
            field: path.display().to_string(),
            rule: format!("is not valid TOML{at}: {}{suffix}", e.message().trim()),
        }
    })
}

/// Checks a table's keys and value types against the schema, collecting every problem; hands
/// on the well-shaped values.
fn walk(
    table: &toml::Table,
    suffix: &str,
    problems: &mut Vec<Problem>,
) -> Vec<(&'static Key, toml::Value)> {
    let mut out = Vec::new();
    for (section, value) in table {
        let Some(inner) = value.as_table() else {
            let rule = if sections().any(|s| s == section) {
                format!("must be a table ([{section}]), got {}", value.type_str())
            } else {
                format!("unknown key (known sections: {})", known_sections())
            };
            problems.push(Problem {
                field: section.clone(),
                rule: format!("{rule}{suffix}"),
            });
            continue;
        };
        if !sections().any(|s| s == section) {
            problems.push(Problem {
                field: section.clone(),
                rule: format!("unknown section (known: {}){suffix}", known_sections()),
            });
            continue;
        }
        for (name, v) in inner {
            let path = format!("{section}.{name}");
            let Some(key) = find_key(&path) else {
                let known: Vec<&str> = KEYS
                    .iter()
                    .filter_map(|k| k.path.strip_prefix(&format!("{section}.")))
                    .collect();
                problems.push(Problem {
                    field: path,
                    rule: format!(
                        "unknown key (known in [{section}]: {}){suffix}",
                        known.join(", ")
                    ),
                });
                continue;
            };
            match shape(key, v) {
                Ok(()) => out.push((key, v.clone())),
                Err(rule) => problems.push(Problem {
                    field: path,
                    rule: format!("{rule}{suffix}"),
                }),
            }
        }
    }
    out
}

fn known_sections() -> String {
    sections().collect::<Vec<_>>().join(", ")
}

/// Whether `v` has the type `key` needs; the rule it breaks if not.
fn shape(key: &Key, v: &toml::Value) -> Result<(), String> {
    let ok = match key.kind {
        Kind::Str | Kind::Url | Kind::File | Kind::Hex32 | Kind::Action => v.is_str(),
        Kind::Bool => v.is_bool(),
        Kind::Int { min, max } => match v.as_integer() {
            Some(i) if (min..=max).contains(&i) => true,
            Some(i) => return Err(format!("must be from {min} to {max}, got {i}")),
            None => false,
        },
        Kind::Secs => v.is_integer() || v.is_float(),
        Kind::KeyList => v
            .as_array()
            .is_some_and(|a| a.iter().all(toml::Value::is_str)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be {}, got {}",
            key.kind.describe(),
            describe_value(v)
        ))
    }
}

fn describe_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(i) => format!("the integer {i}"),
        toml::Value::Float(f) => format!("the number {f}"),
        toml::Value::Boolean(b) => format!("{b}"),
        other => format!("a {}", other.type_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(e: ConfigError) -> Vec<String> {
        let ConfigError::Invalid(p) = e;
        p.into_iter().map(|p| p.field).collect()
    }

    const MANAGED: &str = "[verifier]\nurl = \"https://v.example:8443/\"\nca_pem = \"\"\"\n-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZm9v\n-----END CERTIFICATE-----\n\"\"\"\n[policy]\nuser_settable = [\"window.window_secs\"]\n";

    #[test]
    fn every_unknown_key_and_wrong_type_at_once() {
        let text = "top = 3\n[verifier]\nurll = \"x\"\nheartbeat_secs = \"60\"\n[window]\nmin_keys = -1\n[colour]\nx = 1\n[policy]\nallow_pause = \"no\"\n";
        let mut l = Layers::new();
        l.managed_toml(text, Path::new("/etc/cadence/agent.toml"));
        let got = fields(l.resolve().unwrap_err());
        for f in [
            "verifier.urll",
            "verifier.heartbeat_secs",
            "window.min_keys",
            "colour",
            "top",
            "policy.allow_pause",
        ] {
            assert!(got.iter().any(|g| g == f), "{f} missing from {got:?}");
        }
    }

    #[test]
    fn user_file_may_set_only_what_the_organization_lists() {
        let mut l = Layers::new();
        l.managed_toml(MANAGED, Path::new("/etc/cadence/agent.toml"));
        l.user_toml(
            "[window]\nwindow_secs = 30\nmin_keys = 80\n[verifier]\nurl = \"https://evil\"\n",
            Path::new("/home/u/.config/cadence/agent.toml"),
        );
        let ConfigError::Invalid(p) = l.resolve().unwrap_err();
        let f: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(f, ["verifier.url", "window.min_keys"]);
        assert!(
            p[1].rule.contains("locked by the managed configuration"),
            "{}",
            p[1].rule
        );
        assert!(p[1].rule.contains("window.window_secs"), "{}", p[1].rule);
        assert!(
            p[0].rule.contains("only by the organization"),
            "{}",
            p[0].rule
        );

        let mut l = Layers::new();
        l.managed_toml(MANAGED, Path::new("/etc/cadence/agent.toml"));
        l.user_toml("[window]\nwindow_secs = 30\n", Path::new("/u.toml"));
        l.flag(
            "window.window_secs",
            toml::Value::Float(12.5),
            "--window-secs",
        );
        let eff = l.resolve().unwrap();
        assert_eq!(eff.config.window.window_us, Some(12_500_000));
        assert_eq!(
            eff.origin("window.window_secs"),
            Some(&Origin::Flag("--window-secs".into()))
        );
        assert_eq!(
            eff.origin("verifier.url"),
            Some(&Origin::Managed("/etc/cadence/agent.toml".into()))
        );
        assert_eq!(eff.origin("spool.max_mib"), Some(&Origin::Default));
        assert_eq!(eff.user_settable, ["window.window_secs"]);
    }

    #[test]
    fn flags_on_locked_keys_and_floors_name_their_origin() {
        let mut l = Layers::new();
        l.managed_toml(MANAGED, Path::new("/etc/cadence/agent.toml"));
        l.flag("spool.max_mib", toml::Value::Integer(8), "--spool-mib");
        l.flag(
            "window.window_secs",
            toml::Value::Integer(-3),
            "--window-secs",
        );
        let ConfigError::Invalid(p) = l.resolve().unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|p| p.rule.ends_with("(from flag --spool-mib)")
            || p.rule.ends_with("(from flag --window-secs)")));
    }

    #[test]
    fn unmanaged_agents_open_every_eligible_key_and_nothing_else() {
        let mut l = Layers::new();
        l.managed_file(Path::new("/nonexistent/agent.toml"), false);
        l.user_toml(
            "[window]\nmin_keys = 60\n[spool]\nmax_mib = 16\n",
            Path::new("/u.toml"),
        );
        let eff = l.resolve().unwrap();
        assert_eq!(eff.config.window.min_keys, 60);
        assert_eq!(eff.config.spool_mib, 16);
        assert!(eff.managed_file.is_none());

        let mut l = Layers::new();
        l.user_toml("[notice]\ntext = \"hi\"\n", Path::new("/u.toml"));
        assert_eq!(fields(l.resolve().unwrap_err()), ["notice.text"]);

        let mut l = Layers::new();
        l.managed_file(Path::new("/nonexistent/agent.toml"), true);
        assert_eq!(
            fields(l.resolve().unwrap_err()),
            ["/nonexistent/agent.toml"]
        );
    }

    #[test]
    fn user_settable_names_only_eligible_keys() {
        let mut l = Layers::new();
        l.managed_toml(
            "[policy]\nuser_settable = [\"verifier.url\", \"nope.x\", \"spool.max_mib\"]\n",
            Path::new("/m.toml"),
        );
        let ConfigError::Invalid(p) = l.resolve().unwrap_err();
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|p| p.field == "policy.user_settable"));
    }

    #[test]
    fn syntax_errors_say_where() {
        let mut l = Layers::new();
        l.managed_toml("[verifier]\nurl = \n", Path::new("/m.toml"));
        let ConfigError::Invalid(p) = l.resolve().unwrap_err();
        assert_eq!(p[0].field, "/m.toml");
        assert!(p[0].rule.contains("line 2"), "{}", p[0].rule);
    }
}
