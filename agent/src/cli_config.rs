//! `cadence-agent config check|show`, and the one place the agent's settings are resolved from
//! their layers: defaults, the organization's managed file, the user's own file, then the
//! settings flags of `run` (see [`cadence_config::Layers`] for the locking rule).
//!
//! A child module of [`crate::cli`], so it shares the command line's output path ([`Out`]).
//! Never prints a secret: the enrollment token shows as `<redacted>`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cadence_config::{ConfigError, Effective, KEYS, Layers, Origin, default_user_path};
use clap::{Args, Subcommand};

use super::Out;

/// Exit status when the configuration is invalid (sysexits' EX_CONFIG). The systemd unit does
/// not restart the agent on it: a broken file needs an administrator, not a retry loop.
pub(super) const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Args)]
pub(super) struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a managed file (default: the system one) and the user's file, reporting every
    /// problem at once with its field and the rule it breaks.
    Check {
        /// The managed file to check (default: --managed, else the system location).
        file: Option<PathBuf>,
        /// Check this user file against it (default: --user-config, else the per-user
        /// location, e.g. ~/.config/cadence/agent.toml).
        #[arg(long, value_name = "FILE")]
        user: Option<PathBuf>,
        /// Check the managed file alone, without any user file.
        #[arg(long, conflicts_with = "user")]
        managed_only: bool,
    },
    /// Print the effective configuration and where each value came from.
    Show {
        /// One JSON object: {"managed_file", "user_file", "user_settable", "keys": [...]}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: SettingArgs,
    },
}

/// The settings `run` takes as flags. Each sets a configuration key, and only where the
/// organization lets users set it (an unmanaged agent: every user-eligible key).
#[derive(Debug, Args, Default)]
pub(super) struct SettingArgs {
    /// Close a window this many seconds after its first event (window.window_secs) [default: 60].
    #[arg(long, value_name = "N")]
    window_secs: Option<f64>,
    /// Send keyboard features only for windows with at least N key presses (window.min_keys)
    /// [default: 40].
    #[arg(long, value_name = "N")]
    min_keys: Option<u32>,
    /// Send mouse features only for windows with at least N pointer events (window.min_mouse)
    /// [default: 100].
    #[arg(long, value_name = "N")]
    min_mouse: Option<u32>,
    /// Spool bound in MiB (spool.max_mib): when full, the oldest records go first and the gap
    /// is reported [default: 64].
    #[arg(long, value_name = "MIB")]
    spool_mib: Option<u64>,
    /// Seconds between heartbeats to the verifier (verifier.heartbeat_secs) [default: 60].
    #[arg(long, value_name = "SECS")]
    heartbeat_secs: Option<u64>,
    /// What to do on this device when keystroke injection is detected: none, lock, or
    /// command:CMD (policy.on_injection). The verifier is told in every case [default: none].
    #[arg(long, value_name = "ACTION")]
    on_injection: Option<String>,
}

impl SettingArgs {
    /// Adds each given flag as the top layer.
    fn apply(&self, l: &mut Layers) {
        use cadence_config::Value;
        let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        if let Some(v) = self.window_secs {
            l.flag("window.window_secs", Value::Float(v), "--window-secs");
        }
        if let Some(v) = self.min_keys {
            l.flag("window.min_keys", int(v.into()), "--min-keys");
        }
        if let Some(v) = self.min_mouse {
            l.flag("window.min_mouse", int(v.into()), "--min-mouse");
        }
        if let Some(v) = self.spool_mib {
            l.flag("spool.max_mib", int(v), "--spool-mib");
        }
        if let Some(v) = self.heartbeat_secs {
            l.flag("verifier.heartbeat_secs", int(v), "--heartbeat-secs");
        }
        if let Some(v) = &self.on_injection {
            l.flag(
                "policy.on_injection",
                Value::String(v.clone()),
                "--on-injection",
            );
        }
    }
}

/// The managed layer: `--managed FILE` (which must then exist), else the system location.
/// On macOS a configuration profile's managed preferences win over the TOML file.
fn add_managed(l: &mut Layers, managed: Option<&Path>) {
    match managed {
        Some(p) => {
            #[cfg(target_os = "macos")]
            if p.extension().is_some_and(|e| e == "plist") {
                l.managed_plist(p, true);
                return;
            }
            l.managed_file(p, true);
        }
        None => {
            #[cfg(target_os = "macos")]
            if Path::new(cadence_config::MANAGED_PREFERENCES).exists() {
                l.managed_plist(Path::new(cadence_config::MANAGED_PREFERENCES), true);
                return;
            }
            l.managed_file(&cadence_config::default_managed_path(), false);
        }
    }
}

/// The organization's own source on this machine, if there is one: the system managed file,
/// or on macOS a configuration profile's managed preferences (which win over the file).
pub(super) fn system_managed() -> Option<PathBuf> {
    #[cfg(target_os = "macos")]
    if Path::new(cadence_config::MANAGED_PREFERENCES).exists() {
        return Some(PathBuf::from(cadence_config::MANAGED_PREFERENCES));
    }
    let p = cadence_config::default_managed_path();
    p.exists().then_some(p)
}

/// Whether this command line may use `managed` as its managed file. `--managed` replaces the
/// organization's layer, so where the machine has one (`system`), naming any other file would
/// let a user lift every lock: it is refused for every command but `config check`
/// (`checks_files`), which only reads the file it is given and starts nothing. Without a
/// system file the agent is unmanaged, and `--managed` is how tests and trials give it one.
pub(super) fn allow_managed_flag(
    managed: Option<&Path>,
    system: Option<&Path>,
    checks_files: bool,
) -> Result<(), String> {
    let (Some(given), Some(system)) = (managed, system) else {
        return Ok(());
    };
    let same = match (given.canonicalize(), system.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => given == system,
    };
    if same || checks_files {
        return Ok(());
    }
    Err(format!(
        "--managed {} refused: this machine is managed by {}, and only \
         `cadence-agent config check` may read another managed file \
         (the organization's settings cannot be replaced from the command line)",
        given.display(),
        system.display()
    ))
}

impl ConfigArgs {
    /// `config check`: reads the files it is given and starts nothing.
    pub(super) fn checks_files(&self) -> bool {
        matches!(self.command, ConfigCommand::Check { .. })
    }
}

/// Resolves the configuration every command runs with. The error is the message the agent
/// refuses to start with, the same `config check` prints.
pub(super) fn resolve(
    managed: Option<&Path>,
    user: Option<&Path>,
    flags: &SettingArgs,
) -> Result<Effective, String> {
    let mut l = Layers::new();
    add_managed(&mut l, managed);
    let user = user.map(Path::to_owned).or_else(default_user_path);
    if let Some(u) = &user {
        l.user_file(u);
    }
    flags.apply(&mut l);
    l.resolve()
        .map_err(|e| describe(&e, managed, user.as_deref()))
}

/// The message for an invalid configuration: the files read, then one problem per line, each
/// with its field and the rule it breaks.
fn describe(e: &ConfigError, managed: Option<&Path>, user: Option<&Path>) -> String {
    let managed = managed
        .map(Path::to_owned)
        .unwrap_or_else(cadence_config::default_managed_path);
    let mut files = Vec::new();
    if managed.exists() {
        files.push(format!("managed {}", managed.display()));
    }
    if let Some(u) = user.filter(|u| u.exists()) {
        files.push(format!("user {}", u.display()));
    }
    let problems = match e {
        ConfigError::Invalid(p) => p.clone(),
        _ => Vec::new(),
    };
    let mut s = if files.is_empty() {
        "invalid configuration:".to_owned()
    } else {
        format!("invalid configuration ({}):", files.join(", "))
    };
    for p in problems {
        s.push_str(&format!("\n  - {p}"));
    }
    s
}

/// Logs the effective configuration once at start (no secrets, no values of input).
pub(super) fn log_effective(e: &Effective) {
    let managed = e
        .managed_file
        .as_ref()
        .map_or("none".to_owned(), |p| p.display().to_string());
    tracing::info!(managed = %managed, "configuration");
    for (key, origin) in &e.origins {
        if *origin != Origin::Default {
            tracing::info!("  {key} = {} ({origin})", e.config.display_value(key));
        }
    }
}

/// Refuses a verifier key other than the one the organization pinned.
pub(super) fn check_pin(
    pin: Option<&str>,
    got: &cadence_wire::VerifierPublicKey,
) -> Result<(), String> {
    match pin {
        Some(p) if p != got.to_string() => Err(format!(
            "the verifier's public key is {got}, but the managed configuration pins {p} \
             (verifier.public_key): refusing to use this verifier"
        )),
        _ => Ok(()),
    }
}

/// Runs `config check` or `config show`.
pub(super) fn main(managed: Option<&Path>, user: Option<&Path>, a: &ConfigArgs) -> ExitCode {
    let result = match &a.command {
        ConfigCommand::Check {
            file,
            user: check_user,
            managed_only,
        } => check(
            file.as_deref().or(managed),
            if *managed_only {
                None
            } else {
                Some(check_user.as_deref().or(user))
            },
        ),
        ConfigCommand::Show { json, settings } => show(managed, user, settings, *json),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            Out::say(&format!("cadence-agent: {msg}"));
            ExitCode::from(2)
        }
    }
}

fn check(managed: Option<&Path>, user: Option<Option<&Path>>) -> Result<ExitCode, String> {
    let mut l = Layers::new();
    add_managed(&mut l, managed);
    let user_path = user.and_then(|u| u.map(Path::to_owned).or_else(default_user_path));
    if let Some(u) = &user_path {
        l.user_file(u);
    }
    let mut out = Out::stdout();
    match l.resolve() {
        Ok(e) => {
            let managed = e.managed_file.as_ref().map_or_else(
                || "no managed file (unmanaged agent)".to_owned(),
                |p| format!("managed {}", p.display()),
            );
            let user = match &user_path {
                Some(p) if p.exists() => format!(", user {}", p.display()),
                _ => String::new(),
            };
            out.live_line(&format!("configuration ok: {managed}{user}"))
                .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            Out::say(&describe(&e, managed, user_path.as_deref()));
            Ok(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn show(
    managed: Option<&Path>,
    user: Option<&Path>,
    flags: &SettingArgs,
    json: bool,
) -> Result<ExitCode, String> {
    let e = match resolve(managed, user, flags) {
        Ok(e) => e,
        Err(msg) => {
            Out::say(&msg);
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let mut out = Out::stdout();
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    if json {
        let keys: Vec<serde_json::Value> = e
            .origins
            .iter()
            .map(|(k, o)| {
                let (kind, from) = match o {
                    Origin::Default => ("default", None),
                    Origin::Managed(p) => ("managed", Some(p.display().to_string())),
                    Origin::User(p) => ("user", Some(p.display().to_string())),
                    Origin::Flag(f) => ("flag", Some(f.clone())),
                };
                serde_json::json!({
                    "key": k,
                    "value": e.config.display_value(k),
                    "origin": kind,
                    "from": from,
                })
            })
            .collect();
        let v = serde_json::json!({
            "managed_file": path(&e.managed_file),
            "user_file": path(&e.user_file),
            "user_settable": e.user_settable,
            "keys": keys,
        });
        out.live_line(&v.to_string()).map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = KEYS.iter().map(|k| k.path.len()).max().unwrap_or(0);
    let lines = [
        format!(
            "managed file:  {}",
            path(&e.managed_file).unwrap_or_else(|| "none (unmanaged agent)".into())
        ),
        format!(
            "user file:     {}{}",
            path(&e.user_file).unwrap_or_else(|| "none".into()),
            match &e.user_file {
                Some(p) if !p.exists() => " (absent)",
                _ => "",
            }
        ),
        format!(
            "users may set: {}",
            if e.user_settable.is_empty() {
                "nothing".to_owned()
            } else {
                e.user_settable.join(", ")
            }
        ),
        String::new(),
    ];
    for l in lines {
        out.line(&l).map_err(|e| e.to_string())?;
    }
    for (k, o) in &e.origins {
        out.line(&format!(
            "{k:<width$}  {}  [{o}]",
            e.config.display_value(k)
        ))
        .map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::allow_managed_flag;
    use std::path::Path;

    #[test]
    fn managed_flag_cannot_replace_the_system_file() {
        let dir = std::env::temp_dir().join(format!("cadence-managed-flag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let system = dir.join("system.toml");
        let mine = dir.join("mine.toml");
        std::fs::write(&system, "").unwrap();
        std::fs::write(&mine, "").unwrap();

        // A machine without a system file: --managed is how an unmanaged agent gets one.
        assert!(allow_managed_flag(Some(&mine), None, false).is_ok());
        // No --managed: the system file is used.
        assert!(allow_managed_flag(None, Some(&system), false).is_ok());
        // Another file on a managed machine: refused, saying which file manages it.
        let err = allow_managed_flag(Some(&mine), Some(&system), false).unwrap_err();
        assert!(
            err.contains("mine.toml") && err.contains("system.toml"),
            "{err}"
        );
        assert!(err.contains("config check"), "{err}");
        // ...also when it is absent (it would read as "no managed settings").
        assert!(allow_managed_flag(Some(&dir.join("nothing.toml")), Some(&system), false).is_err());
        // ...but `config check` may read it.
        assert!(allow_managed_flag(Some(&mine), Some(&system), true).is_ok());
        // The system file itself, however spelled, is fine.
        let spelled = dir.join(".").join("system.toml");
        assert!(allow_managed_flag(Some(&spelled), Some(&system), false).is_ok());
        assert!(allow_managed_flag(Some(Path::new(&system)), Some(&system), false).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
