//! `cadence-installer check` on the shipped templates, and on copies broken on purpose: each
//! break is reported naming the file and the key or rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use cadence_installer::{TEMPLATES, check, default_root};

struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A copy of the templates (installer/ and agent/Cargo.toml) to break.
fn copy_tree() -> Tmp {
    static N: AtomicU32 = AtomicU32::new(0);
    let root = std::env::temp_dir().join(format!(
        "cadence-installer-check-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let src = default_root();
    for dir in ["linux", "macos", "windows", "examples"] {
        copy_dir(
            &src.join("installer").join(dir),
            &root.join("installer").join(dir),
        );
    }
    std::fs::create_dir_all(root.join("agent")).unwrap();
    std::fs::copy(src.join("agent/Cargo.toml"), root.join("agent/Cargo.toml")).unwrap();
    Tmp(root)
}

fn edit(root: &Path, rel: &str, from: &str, to: &str) {
    let p = root.join(rel);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{rel} has no {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_shipped_templates_pass() {
    let r = check(&default_root());
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(r.checked.len(), TEMPLATES.len());
    let copy = copy_tree();
    let r = check(&copy.0);
    assert!(r.problems.is_empty(), "the copy differs: {:#?}", r.problems);
}

#[test]
fn each_break_is_named() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "installer/windows/cadence-agent.wxs",
            "Key=\"enroll_token\"",
            "Key=\"token\"",
            "IniFile sets verifier.token, which is not a configuration key",
        ),
        (
            "installer/windows/cadence-agent.wxs",
            "</Feature>",
            "",
            "cadence-agent.wxs: is not well-formed XML",
        ),
        (
            "installer/windows/cadence-agent.wxs",
            "Value=\"[ALLOW_QUIT]\"",
            "Value=\"[ALLOW_EXIT]\"",
            "uses undeclared property [ALLOW_EXIT]",
        ),
        (
            "installer/windows/cadence-agent.wxs",
            "<Property Id=\"ALLOW_PAUSE\" Value=\"true\"",
            "<Property Id=\"ALLOW_PAUSE\" Value=\"maybe\"",
            "the agent.toml it writes is invalid",
        ),
        (
            "installer/windows/cadence-agent.wxs",
            " run --background\"",
            " run\"",
            "the logon autostart must be `cadence-agent.exe run --background`",
        ),
        (
            "installer/windows/cadence-agent.wxs",
            "(A;OICI;0x1200a9;;;BU)",
            "(A;OICI;FA;;;BU)",
            "CONFIGFOLDER's DACL lets BU do more than read",
        ),
        (
            "installer/windows/cadence-agent.wxs",
            "D:PAI(",
            "D:AI(",
            "CONFIGFOLDER's DACL must be protected",
        ),
        (
            "installer/windows/cadence-agent.wxs",
            "<PermissionEx ",
            "<PermissionExx ",
            "CONFIGFOLDER has no PermissionEx",
        ),
        (
            "installer/macos/cadence.mobileconfig",
            "<key>min_mouse</key>",
            "<key>min_mice</key>",
            "cadence.mobileconfig: window.min_mice: unknown key",
        ),
        (
            "installer/macos/cadence.mobileconfig",
            "<key>allow_quit</key>\n                <false/>",
            "<key>allow_quit</key>\n                <string>no</string>",
            "policy.allow_quit: must be true or false",
        ),
        (
            "installer/macos/cadence.mobileconfig",
            "</array>\n</dict>\n</plist>",
            "</dict>\n</plist>",
            "cadence.mobileconfig: is not a valid property list",
        ),
        (
            "installer/macos/cadence.mobileconfig",
            "<key>ListenEvent</key>",
            "<key>Accessibility</key>\n                <array/>\n                <key>ListenEvent</key>",
            "PPPC must not grant Accessibility",
        ),
        (
            "installer/macos/org.cadence.agent.plist",
            "<integer>300</integer>",
            "<integer>10</integer>",
            "ThrottleInterval must be at least 300",
        ),
        (
            "installer/macos/cadence.mobileconfig",
            "<string>AllowStandardUserToSetSystemService</string>",
            "<string>Allow</string>",
            "PPPC ListenEvent",
        ),
        (
            "installer/macos/org.cadence.agent.plist",
            "<string>run</string>",
            "<string>preview</string>",
            "org.cadence.agent.plist: ProgramArguments must be",
        ),
        (
            "installer/macos/distribution.xml",
            "</choices-outline>",
            "</choice-outline>",
            "distribution.xml: is not well-formed XML",
        ),
        (
            "installer/examples/agent.toml",
            "min_mouse = 100",
            "min_mouse = 100\nmax_mouse = 5",
            "installer/examples/agent.toml: window.max_mouse: unknown key",
        ),
        (
            "installer/examples/user.toml",
            "min_keys = 60",
            "min_keys = 60\n[verifier]\nurl = \"https://elsewhere\"",
            "verifier.url: can be set only by the organization",
        ),
        (
            "installer/linux/cadence-agent.service",
            "ExecStart=/usr/bin/cadence-agent run",
            "ExecStart=/usr/local/bin/cadence-agent run",
            "cadence-agent.service: [Service] ExecStart must run /usr/bin/cadence-agent",
        ),
        (
            "installer/linux/cadence-agent.desktop",
            "TryExec=/usr/bin/cadence-agent",
            "",
            "cadence-agent.desktop: TryExec must be",
        ),
        (
            "agent/Cargo.toml",
            "\"etc/xdg/autostart/\"",
            "\"etc/xdg/\"",
            "the package does not install /etc/xdg/autostart/cadence-agent.desktop",
        ),
    ];
    for (rel, from, to, expected) in cases {
        let t = copy_tree();
        edit(&t.0, rel, from, to);
        let r = check(&t.0);
        assert!(
            r.problems.iter().any(|p| p.contains(expected)),
            "{rel}: expected {expected:?} in {:#?}",
            r.problems
        );
    }
}

#[test]
fn the_command_reports_and_packages_say_what_is_missing() {
    let bin = env!("CARGO_BIN_EXE_cadence-installer");
    let o = Command::new(bin).arg("check").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = copy_tree();
    edit(
        &t.0,
        "installer/windows/cadence-agent.wxs",
        "Key=\"url\"",
        "Key=\"uri\"",
    );
    let o = Command::new(bin)
        .arg("--root")
        .arg(&t.0)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("verifier.uri"));

    let out = t.0.join("out");
    if !cfg!(target_os = "macos") {
        let o = Command::new(bin)
            .args(["package", "pkg", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("pkgbuild and productbuild not found"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let has_wix = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("wix").is_file()));
    if !has_wix {
        let o = Command::new(bin)
            .args(["package", "msi", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&o.stderr).contains("wix not found"));
    }
    // A package is never built from templates that fail the check.
    let o = Command::new(bin)
        .arg("--root")
        .arg(&t.0)
        .args(["package", "deb", "--no-build", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}
