//! `cadence-agent config check|show` and the agent's refusal to start on an invalid
//! configuration, through the real binary: every shipped example passes, and each kind of
//! mistake an administrator or user can make is reported naming its field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cadence-agent"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../installer/examples")
}

/// A fresh directory under the system temp dir, removed when dropped.
struct Tmp(PathBuf);

impl Tmp {
    fn new() -> Tmp {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "cadence-config-check-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `config check MANAGED [--user USER]`, never reading the real per-user file.
fn check(managed: &Path, user: Option<&Path>) -> Output {
    let mut c = agent();
    c.args(["config", "check"]).arg(managed);
    match user {
        Some(u) => c.arg("--user").arg(u),
        None => c.arg("--managed-only"),
    };
    c.output().unwrap()
}

/// A valid managed file with its CA beside it.
fn valid_managed(t: &Tmp, extra: &str) -> PathBuf {
    std::fs::copy(examples().join("ca.pem"), t.0.join("ca.pem")).unwrap();
    t.file(
        "agent.toml",
        &format!(
            "[verifier]\nurl = \"https://verifier.example:8443\"\nca_file = \"ca.pem\"\nenroll_token = \"t\"\n{extra}"
        ),
    )
}

#[test]
fn every_shipped_example_passes() {
    let o = check(&examples().join("agent.toml"), None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("configuration ok"));
    // The user example, against an organization that leaves its key to users.
    let t = Tmp::new();
    let m = valid_managed(&t, "[policy]\nuser_settable = [\"window.min_keys\"]\n");
    let o = check(&m, Some(&examples().join("user.toml")));
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Each mistake the issue names, alone: the check fails with 78 and names the field and rule.
#[test]
fn each_mistake_is_named() {
    let t = Tmp::new();
    std::fs::copy(examples().join("ca.pem"), t.0.join("ca.pem")).unwrap();
    let base = "ca_file = \"ca.pem\"\nenroll_token = \"t\"\n";
    let cases: [(&str, String, &str); 7] = [
        (
            "missing required field",
            format!("[verifier]\n{base}"),
            "verifier.url: is required",
        ),
        (
            "wrong type",
            format!("[verifier]\nurl = \"https://v\"\n{base}[policy]\nallow_pause = \"yes\"\n"),
            "policy.allow_pause: must be true or false, got the string \"yes\"",
        ),
        (
            "unknown key",
            format!("[verifier]\nurl = \"https://v\"\n{base}enroll_tokn = \"x\"\n"),
            "verifier.enroll_tokn: unknown key",
        ),
        (
            "malformed URL",
            format!("[verifier]\nurl = \"https://exa mple.com:8443\"\n{base}"),
            "verifier.url: is not a valid URL",
        ),
        (
            "plain http",
            format!("[verifier]\nurl = \"http://v\"\n{base}"),
            "verifier.url: must be an https:// URL",
        ),
        (
            "unreadable CA",
            "[verifier]\nurl = \"https://v\"\nca_file = \"missing.pem\"\n".into(),
            "missing.pem cannot be read",
        ),
        (
            "CA that is not a certificate",
            "[verifier]\nurl = \"https://v\"\nca_file = \"agent.toml\"\n".into(),
            "agent.toml: holds no PEM certificate",
        ),
    ];
    for (what, text, expected) in cases {
        let m = t.file("agent.toml", &text);
        let o = check(&m, None);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(78), "{what}: {err}");
        assert!(
            err.contains(expected),
            "{what}: expected {expected:?} in:\n{err}"
        );
    }
}

#[test]
fn a_user_file_cannot_override_a_locked_key() {
    let t = Tmp::new();
    let m = valid_managed(&t, "[policy]\nuser_settable = [\"window.window_secs\"]\n");
    let u = t.file(
        "user.toml",
        "[window]\nwindow_secs = 30\nmin_keys = 80\n[notice]\ntext = \"mine\"\n",
    );
    let o = check(&m, Some(&u));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(
        err.contains("window.min_keys: is locked by the managed configuration"),
        "{err}"
    );
    assert!(
        err.contains("notice.text: can be set only by the organization"),
        "{err}"
    );
    // The key the organization left open is no problem.
    assert!(!err.contains("  - window.window_secs"), "{err}");
}

/// Every problem at once, and the agent refuses to start with the very same lines.
#[test]
fn the_agent_refuses_to_start_with_the_same_message() {
    let t = Tmp::new();
    let m = t.file(
        "agent.toml",
        "colour = 1\n[verifier]\nurl = \"ftp://v\"\nca_file = \"nope.pem\"\nheartbeat_secs = \"often\"\n[window]\nmin_keys = 2\n",
    );
    let o = check(&m, None);
    let problems: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.starts_with("  - "))
        .map(str::to_owned)
        .collect();
    let fields: Vec<&str> = problems
        .iter()
        .map(|l| l[4..].split(':').next().unwrap())
        .collect();
    for f in [
        "colour",
        "verifier.url",
        "verifier.ca_file",
        "verifier.heartbeat_secs",
        "window.min_keys",
    ] {
        assert!(fields.contains(&f), "{f} not in {fields:?}");
    }
    let data = t.0.join("data");
    let run = agent()
        .arg("--managed")
        .arg(&m)
        .arg("--user-config")
        .arg(t.0.join("none.toml"))
        .arg("--data-dir")
        .arg(&data)
        .args(["run", "--source", "synthetic:1"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(78), "{}", stderr(&run));
    let run_err = stderr(&run);
    assert!(run_err.starts_with("cadence-agent: refusing to start: invalid configuration"));
    for p in &problems {
        assert!(
            run_err.contains(p.as_str()),
            "{p:?} missing from:\n{run_err}"
        );
    }
    assert!(
        !data.exists(),
        "nothing may be created before the check passes"
    );
    // An explicitly named managed file that does not exist is an error too.
    let o = check(&t.0.join("absent.toml"), None);
    assert_eq!(o.status.code(), Some(78));
}

#[test]
fn flags_may_set_only_what_users_may_set() {
    let t = Tmp::new();
    let m = valid_managed(&t, "[policy]\nuser_settable = [\"window.window_secs\"]\n");
    let o = agent()
        .arg("--managed")
        .arg(&m)
        .arg("--user-config")
        .arg(t.0.join("none.toml"))
        .arg("--data-dir")
        .arg(t.0.join("data"))
        .args(["run", "--source", "synthetic:1", "--window-secs", "30"])
        .args(["--min-keys", "50", "--heartbeat-secs", "5"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(
        err.contains("window.min_keys: is locked") && err.contains("(from flag --min-keys)"),
        "{err}"
    );
    assert!(err.contains("(from flag --heartbeat-secs)"), "{err}");
    assert!(!err.contains("--window-secs"), "{err}");
}

#[test]
fn show_says_where_each_value_came_from() {
    let t = Tmp::new();
    let m = valid_managed(
        &t,
        "[policy]\nuser_settable = [\"window.window_secs\", \"window.min_keys\"]\n[spool]\nmax_mib = 32\n",
    );
    let u = t.file("user.toml", "[window]\nmin_keys = 70\nwindow_secs = 45\n");
    let o = agent()
        .arg("--managed")
        .arg(&m)
        .arg("--user-config")
        .arg(&u)
        .args(["config", "show", "--json", "--window-secs", "20"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let key = |k: &str| {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == k)
            .cloned()
            .unwrap()
    };
    let m = m.display().to_string();
    let u = u.display().to_string();
    assert_eq!(key("spool.max_mib")["value"], "32");
    assert_eq!(key("spool.max_mib")["from"], m.as_str());
    assert_eq!(key("window.min_keys")["value"], "70");
    assert_eq!(key("window.min_keys")["origin"], "user");
    assert_eq!(key("window.min_keys")["from"], u.as_str());
    assert_eq!(key("window.window_secs")["value"], "20");
    assert_eq!(key("window.window_secs")["from"], "--window-secs");
    assert_eq!(key("window.min_mouse")["origin"], "default");
    assert_eq!(key("verifier.enroll_token")["value"], "<redacted>");
    assert_eq!(v["managed_file"], m.as_str());

    // The table form names the same origins.
    let o = agent()
        .arg("--managed")
        .arg(&m)
        .arg("--user-config")
        .arg(&u)
        .args(["config", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let line = |k: &str| text.lines().find(|l| l.starts_with(k)).unwrap().to_owned();
    assert!(
        line("window.min_keys").ends_with(&format!("[user {u}]")),
        "{text}"
    );
    assert!(
        line("spool.max_mib").ends_with(&format!("[managed {m}]")),
        "{text}"
    );
    assert!(line("window.min_mouse").ends_with("[default]"), "{text}");
    assert!(
        !text.contains("\"t\""),
        "the token must never print: {text}"
    );
}

#[test]
fn version_prints() {
    let o = agent().arg("--version").output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("cadence-agent {}", env!("CARGO_PKG_VERSION"))
    );
}
