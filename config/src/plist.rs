//! The managed layer from a property list: macOS delivers a configuration profile's custom
//! settings as a plist in `/Library/Managed Preferences/` (binary or XML), with the same
//! sections and keys as the TOML file (`verifier` → dictionary with `url`, …).
//!
//! Top-level keys starting with `Payload` are the profile's own bookkeeping and are skipped;
//! every other key goes through the same checks as TOML. Never panics on input.

use std::path::{Path, PathBuf};

use crate::layers::Layers;
use crate::{ConfigError, Problem};

/// Where macOS places the managed preferences of the agent's domain for every user.
pub const MANAGED_PREFERENCES: &str = "/Library/Managed Preferences/org.cadence.agent.plist";

/// The domain (`PayloadType`) of the configuration profile's settings payload.
pub const PREFERENCE_DOMAIN: &str = "org.cadence.agent";

/// Converts a plist dictionary (a profile payload or a managed-preferences file) into the
/// configuration's TOML table, reporting values TOML cannot hold.
pub fn plist_to_table(dict: &plist::Dictionary) -> Result<toml::Table, ConfigError> {
    let mut problems = Vec::new();
    let mut out = toml::Table::new();
    for (k, v) in dict {
        if k.starts_with("Payload") {
            continue;
        }
        if let Some(v) = convert(k, v, &mut problems) {
            out.insert(k.clone(), v);
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn convert(path: &str, v: &plist::Value, problems: &mut Vec<Problem>) -> Option<toml::Value> {
    Some(match v {
        plist::Value::String(s) => toml::Value::String(s.clone()),
        plist::Value::Boolean(b) => toml::Value::Boolean(*b),
        plist::Value::Integer(i) => match i.as_signed() {
            Some(i) => toml::Value::Integer(i),
            None => {
                problems.push(Problem {
                    field: path.to_owned(),
                    rule: "integer out of range".into(),
                });
                return None;
            }
        },
        plist::Value::Real(f) => toml::Value::Float(*f),
        plist::Value::Array(a) => toml::Value::Array(
            a.iter()
                .enumerate()
                .filter_map(|(i, v)| convert(&format!("{path}[{i}]"), v, problems))
                .collect(),
        ),
        plist::Value::Dictionary(d) => {
            let mut t = toml::Table::new();
            for (k, v) in d {
                if let Some(v) = convert(&format!("{path}.{k}"), v, problems) {
                    t.insert(k.clone(), v);
                }
            }
            toml::Value::Table(t)
        }
        _ => {
            problems.push(Problem {
                field: path.to_owned(),
                rule: "must be a string, number, boolean, array or dictionary".into(),
            });
            return None;
        }
    })
}

impl Layers {
    /// Reads a managed-preferences plist as the managed layer. A missing file means an
    /// unmanaged agent unless `must_exist`.
    pub fn managed_plist(&mut self, path: &Path, must_exist: bool) -> &mut Layers {
        let value = match plist::Value::from_file(path) {
            Ok(v) => v,
            Err(e)
                if e.as_io()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
            {
                if must_exist {
                    self.push_problem(path, format!("the managed file cannot be read: {e}"));
                }
                return self;
            }
            Err(e) => {
                self.push_problem(path, format!("is not a property list: {e}"));
                return self;
            }
        };
        let Some(dict) = value.as_dictionary() else {
            self.push_problem(path, "must hold a dictionary at its top".into());
            return self;
        };
        match plist_to_table(dict) {
            Ok(t) => self.managed_table(t, path),
            Err(ConfigError::Invalid(p)) => {
                for p in p {
                    self.push_problem(&PathBuf::from(&p.field), p.rule);
                }
                self
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_payload_is_the_same_configuration_as_toml() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
  <key>PayloadType</key><string>org.cadence.agent</string>
  <key>verifier</key><dict>
    <key>url</key><string>https://v.example:8443</string>
    <key>ca_pem</key><string>-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUZm9v
-----END CERTIFICATE-----</string>
    <key>heartbeat_secs</key><integer>30</integer>
  </dict>
  <key>policy</key><dict><key>allow_quit</key><true/>
    <key>user_settable</key><array><string>window.min_keys</string></array></dict>
  <key>window</key><dict><key>window_secs</key><real>45.5</real><key>bogus</key><string>x</string></dict>
</dict></plist>"#;
        let v = plist::Value::from_reader_xml(xml.as_bytes()).unwrap();
        let t = plist_to_table(v.as_dictionary().unwrap()).unwrap();
        assert!(!t.contains_key("PayloadType"));
        let mut l = Layers::new();
        l.managed_table(t, Path::new(MANAGED_PREFERENCES));
        let ConfigError::Invalid(p) = l.resolve().unwrap_err();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "window.bogus");
    }
}
