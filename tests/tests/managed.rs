//! Silent enrollment from the managed configuration against a real verifier on loopback, with
//! the verifier's public key pinned: the right key enrolls, any other is refused before
//! anything is stored, and a pin changed after enrollment stops the agent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::Path;
use std::time::Duration;

use cadence_e2e::{Agent, TempDir, Verifier, eventually, free_port};

fn public_key(v: &Verifier) -> String {
    v.stdout
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.strip_prefix("verifier public key: ").map(str::to_owned))
        .expect("the verifier printed no public key")
}

fn managed(dir: &Path, v: &Verifier, token: &str, pin: &str) -> std::path::PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            "[verifier]\nurl = \"{}\"\nca_file = \"{}\"\nenroll_token = \"{token}\"\npublic_key = \"{pin}\"\n",
            v.url,
            v.ca.display()
        ),
    )
    .unwrap();
    p
}

/// `run` with the managed file, for the cases where it must stop before running.
fn run(agent: &Agent, managed: &Path, user: &Path) -> std::process::Output {
    let m = managed.to_string_lossy();
    let u = user.to_string_lossy();
    agent.cli(&[
        "--managed",
        &m,
        "--user-config",
        &u,
        "run",
        "--source",
        "none",
        "--exit-when-done",
    ])
}

#[test]
fn pinned_key_enrolls_and_any_other_is_refused() {
    let tmp = TempDir::new("managed-pin");
    let mut v = Verifier::start(&tmp.path().join("verifier"), free_port());
    let key = public_key(&v);
    let none = tmp.path().join("no-user.toml");

    // A wrong pin: refused, and no enrollment is stored.
    let wrong = "00".repeat(32);
    assert_ne!(wrong, key);
    let a = Agent::new(&tmp.path().join("agent-wrong"));
    let m = managed(tmp.path(), &v, &v.token(), &wrong);
    let o = run(&a, &m, &none);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("the verifier's public key is {key}"))
            && err.contains("verifier.public_key"),
        "{err}"
    );
    assert!(!a.dir.join("enrollment.json").exists());

    // The right pin (upper case is the same key): enrolled silently.
    let mut b = Agent::new(&tmp.path().join("agent-right"));
    let m = managed(tmp.path(), &v, &v.token(), &key.to_uppercase());
    let (ms, us) = (m.to_string_lossy(), none.to_string_lossy());
    let check = b.cli(&["--managed", &ms, "config", "check", "--managed-only"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Without consent it then waits, capturing nothing; enrollment is what is checked here.
    b.spawn_run(&["--managed", &ms, "--user-config", &us, "--source", "none"]);
    let enrolled = eventually(Duration::from_secs(60), || {
        b.dir.join("enrollment.json").exists()
    });
    b.stop();
    assert!(enrolled, "not enrolled from the managed configuration");

    // The organization changes the pin after enrollment: the agent stops and says why.
    let m = managed(tmp.path(), &v, &v.token(), &"ab".repeat(32));
    let o = run(&b, &m, &none);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("enroll again"), "{err}");
    v.stop();
}

/// The systemd unit and the XDG autostart entry may both start an agent for one user: the
/// second finds the first on its control socket and leaves with success (no restart loop).
#[test]
fn a_second_agent_for_the_same_user_exits_cleanly() {
    let tmp = TempDir::new("managed-second");
    let mut v = Verifier::start(&tmp.path().join("verifier"), free_port());
    let mut a = Agent::new(&tmp.path().join("agent"));
    a.enroll(&v, &v.token());
    let none = tmp.path().join("no-user.toml");
    let us = none.to_string_lossy();
    let absent = tmp.path().join("no-managed.toml");
    std::fs::write(&absent, "").unwrap();
    let ms = absent.to_string_lossy();
    a.spawn_run(&["--managed", &ms, "--user-config", &us, "--source", "none"]);
    assert!(eventually(Duration::from_secs(30), || a
        .dir
        .join("agent.sock")
        .exists()));
    let second = a.cli(&[
        "--managed",
        &ms,
        "--user-config",
        &us,
        "run",
        "--source",
        "none",
    ]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(
        err.contains("another agent already runs for this user"),
        "{err}"
    );
    // The first one still answers.
    assert_eq!(a.status()["running"], true);
    a.stop();
    v.stop();
}
