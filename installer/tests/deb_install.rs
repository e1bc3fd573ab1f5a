//! The .deb end to end, on this machine: built with cargo-deb, installed with
//! `apt-get install -y ./cadence-agent_*.deb`, run from its installed path, upgraded, removed,
//! reinstalled (which enables the unit again), removed and purged, leaving only the documented
//! files.
//!
//! It changes the system (packages, /usr, /etc), so it runs only as root; elsewhere it says it
//! is skipped, and with CI=true it fails instead. It purges the package whatever happens.
//! `CADENCE_DEB=path` tests an already built package instead of building one (CI builds the
//! release binary once).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PKG: &str = "cadence-agent";

/// Left by prerm on removal so that postinst enables the unit again on a reinstall.
const REMOVED_MARKER: &str = "/var/lib/cadence-agent/removed";

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn skip(why: &str) -> bool {
    assert!(!ci(), "CI=true but the .deb install test cannot run: {why}");
    eprintln!("skipped: deb_install: {why}");
    true
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn sh(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn apt(args: &[&str]) -> Output {
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        // Other jobs on the machine may hold the dpkg lock for a while.
        .args(["-o", "DPkg::Lock::Timeout=300", "-y", "-q"])
        .args(args))
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PKG])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "installed")
}

fn known_to_dpkg() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", PKG])
        .output()
        .is_ok_and(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).trim().is_empty())
}

/// Purges the package when the test ends, passed or not.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PKG]).output();
    }
}

/// A throwaway account (for the purge's per-user deletion), removed with its home at the end.
struct TestUser {
    name: String,
    home: PathBuf,
}

impl TestUser {
    fn add(name: &str) -> TestUser {
        let home = std::env::temp_dir().join(format!("{name}-home"));
        let _ = Command::new("userdel").args(["-r", name]).output();
        sh(Command::new("useradd")
            .args(["-m", "-s", "/usr/sbin/nologin", "-d"])
            .arg(&home)
            .arg(name));
        TestUser {
            name: name.to_owned(),
            home,
        }
    }

    /// Runs `args` as this user (to make files the way the user would).
    fn run(&self, args: &[&str]) {
        sh(Command::new("runuser")
            .args(["-u", &self.name, "--"])
            .args(args));
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["-r", &self.name]).output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn build_deb(out: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("CADENCE_DEB") {
        return PathBuf::from(p);
    }
    let o = sh(Command::new(env!("CARGO_BIN_EXE_cadence-installer"))
        .args(["package", "deb", "--out"])
        .arg(out));
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

#[test]
fn deb_installs_runs_and_leaves_only_documented_files() {
    if !is_root() && skip("needs root (it installs a package)") {
        return;
    }
    for tool in ["apt-get", "dpkg", "dpkg-query"] {
        let present = Command::new(tool).arg("--version").output().is_ok();
        if !present && skip(&format!("{tool} not found (not a Debian system)")) {
            return;
        }
    }
    let has_cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if std::env::var_os("CADENCE_DEB").is_none()
        && !has_cargo_deb
        && skip("cargo-deb not found (cargo install cargo-deb --locked)")
    {
        return;
    }
    if installed() && skip("cadence-agent is already installed here; not touching it") {
        return;
    }

    let out = std::env::temp_dir().join(format!("cadence-deb-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let deb = build_deb(&out);
    assert!(deb.is_file(), "{} is not a file", deb.display());
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("cadence-agent_") && name.ends_with(".deb"),
        "{name}"
    );

    let _purge = Purge;
    // Per-user data the purge must remove: a spool left in root's default data directory.
    let spool_dir = Path::new("/root/.local/share/cadence/agent");
    let plant_spool = !spool_dir.exists();
    if !plant_spool {
        eprintln!(
            "note: /root/.local/share/cadence/agent exists; the purge check of user data is left out"
        );
    }

    // Install exactly as the README says: silent, from the file.
    let local = out.join(&name);
    if local != deb {
        std::fs::copy(&deb, &local).unwrap();
    }
    let o = sh(Command::new("apt-get")
        .current_dir(&out)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q"])
        .arg(format!("./{name}")));
    assert!(installed(), "{}", String::from_utf8_lossy(&o.stdout));

    // It runs from the installed path.
    let v = sh(Command::new("/usr/bin/cadence-agent").arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("cadence-agent {}", env!("CARGO_PKG_VERSION"))
    );
    // The installed example passes the installed agent's own check.
    let c = Command::new("/usr/bin/cadence-agent")
        .args([
            "config",
            "check",
            "/usr/share/cadence/examples/agent.toml",
            "--managed-only",
        ])
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));

    // The unit and the autostart entry point at it, and the unit is enabled for every user.
    let unit = std::fs::read_to_string("/usr/lib/systemd/user/cadence-agent.service").unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/cadence-agent run"),
        "{unit}"
    );
    let desktop = std::fs::read_to_string("/etc/xdg/autostart/cadence-agent.desktop").unwrap();
    assert!(
        desktop
            .lines()
            .any(|l| l == "Exec=/usr/bin/cadence-agent run"),
        "{desktop}"
    );
    assert!(
        desktop
            .lines()
            .any(|l| l == "TryExec=/usr/bin/cadence-agent"),
        "{desktop}"
    );
    let wants = Path::new("/etc/systemd/user/graphical-session.target.wants/cadence-agent.service");
    assert_eq!(
        std::fs::read_link(wants).unwrap(),
        Path::new("/usr/lib/systemd/user/cadence-agent.service"),
        "the unit is not enabled globally"
    );

    // An administrator disables the unit for everyone; an upgrade (here: the same package
    // configured again) must leave it disabled.
    let _ = Command::new("systemctl")
        .args(["--global", "disable", "cadence-agent.service"])
        .output();
    let _ = std::fs::remove_file(wants);
    sh(Command::new("dpkg").arg("-i").arg(&local));
    assert!(installed());
    assert!(
        std::fs::symlink_metadata(wants).is_err(),
        "an upgrade re-enabled the unit the administrator disabled"
    );

    // Everything dpkg installed, to look for after removal.
    let listed = sh(Command::new("dpkg").args(["-L", PKG]));
    let files: Vec<PathBuf> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    assert!(
        files.contains(&PathBuf::from("/usr/bin/cadence-agent")),
        "{files:?}"
    );

    if plant_spool {
        std::fs::create_dir_all(spool_dir.join("spool")).unwrap();
        std::fs::write(spool_dir.join("spool/000001.seg"), b"unsent").unwrap();
    }

    // Remove: only the documented files stay (the autostart entry, a conffile, inert without
    // the binary; users' data directories with their unsent spool).
    apt(&["remove", PKG]);
    assert!(!installed());
    let left: Vec<&PathBuf> = files.iter().filter(|p| p.exists()).collect();
    assert_eq!(
        left,
        [&PathBuf::from("/etc/xdg/autostart/cadence-agent.desktop")],
        "removal left undocumented files"
    );
    assert!(!wants.exists(), "the unit is still enabled after removal");
    if plant_spool {
        assert!(
            spool_dir.join("spool/000001.seg").exists(),
            "remove must keep unsent data"
        );
    }

    let reinstall = || {
        sh(Command::new("apt-get")
            .current_dir(&out)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q"])
            .arg(format!("./{name}")));
        assert!(installed());
    };
    // Removed while the administrator had the unit disabled: a reinstall keeps it disabled.
    assert!(
        !Path::new(REMOVED_MARKER).exists(),
        "removing a disabled unit left {REMOVED_MARKER}"
    );
    reinstall();
    assert!(
        std::fs::symlink_metadata(wants).is_err(),
        "a reinstall enabled the unit the administrator had disabled before removal"
    );

    // Enabled, removed, reinstalled (dpkg passes the old version, as for an upgrade): the
    // unit is enabled for every user again, and the marker prerm left for postinst is gone.
    // Removed again, so that the purge starts from the state `apt-get remove` leaves, marker
    // included.
    // As an administrator would; by hand where there is no systemctl (as postinst does).
    let enabled = Command::new("systemctl")
        .args(["--global", "enable", "cadence-agent.service"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !enabled {
        std::fs::create_dir_all(wants.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/usr/lib/systemd/user/cadence-agent.service", wants).unwrap();
    }
    assert!(
        wants.exists(),
        "the unit could not be enabled: no {wants:?}"
    );
    apt(&["remove", PKG]);
    assert!(
        Path::new(REMOVED_MARKER).exists(),
        "removing an enabled unit left no {REMOVED_MARKER}"
    );
    reinstall();
    assert_eq!(
        std::fs::read_link(wants).ok().as_deref(),
        Some(Path::new("/usr/lib/systemd/user/cadence-agent.service")),
        "a reinstall after removal did not enable the unit again"
    );
    assert!(
        !Path::new(REMOVED_MARKER).exists(),
        "postinst left {REMOVED_MARKER}"
    );
    apt(&["remove", PKG]);
    assert!(!installed());
    assert!(!wants.exists(), "the unit is still enabled after removal");
    // So that the purge check below of the marker is not vacuous.
    assert!(
        Path::new(REMOVED_MARKER).exists(),
        "removal left no {REMOVED_MARKER}"
    );

    // Per-user data is deleted as its user, so a link a user planted never turns root's
    // deletion onto files that are not theirs; and one user's failure does not stop the rest.
    // `mallory` (first in the password database) points ~/.local/share at a root-owned
    // directory holding a cadence/agent of its own; `alice` has real data.
    let pid = std::process::id();
    let mallory = TestUser::add(&format!("cdpm{pid}"));
    let alice = TestUser::add(&format!("cdpa{pid}"));
    let victim = std::env::temp_dir().join(format!("cadence-purge-victim-{pid}"));
    std::fs::create_dir_all(victim.join("cadence/agent")).unwrap();
    std::fs::write(victim.join("cadence/agent/keep"), b"root's").unwrap();
    let m_local = mallory.home.join(".local");
    mallory.run(&["mkdir", "-p", &m_local.display().to_string()]);
    mallory.run(&[
        "ln",
        "-s",
        &victim.display().to_string(),
        &m_local.join("share").display().to_string(),
    ]);
    let alice_data = alice.home.join(".local/share/cadence/agent");
    alice.run(&[
        "mkdir",
        "-p",
        &alice_data.join("spool").display().to_string(),
    ]);

    // Purge: nothing stays.
    apt(&["purge", PKG]);
    assert!(
        victim.join("cadence/agent/keep").exists(),
        "purge followed a user's link and deleted files that are not theirs"
    );
    assert!(
        !alice_data.exists(),
        "purge stopped before the next user's data (or did not delete it)"
    );
    let _ = std::fs::remove_dir_all(&victim);
    drop((mallory, alice));
    assert!(!known_to_dpkg(), "dpkg still knows the package after purge");
    let left: Vec<&PathBuf> = files.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "purge left {left:?}");
    assert!(
        std::fs::symlink_metadata(Path::new(REMOVED_MARKER).parent().unwrap()).is_err(),
        "purge left {REMOVED_MARKER} or its directory"
    );
    if plant_spool {
        assert!(!spool_dir.exists(), "purge must remove users' agent data");
    }
    let _ = std::fs::remove_dir_all(&out);
}
