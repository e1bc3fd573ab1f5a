//! `cadence-installer`: builds the agent's install packages and checks every MDM template.
//!
//! Owns the templates under `installer/` (Linux: systemd user unit, XDG autostart entry,
//! maintainer scripts; macOS: LaunchAgent, configuration profile, pkgbuild/productbuild script
//! and distribution; Windows: WiX source and the Intune detection script; the example managed
//! files) and the `[package.metadata.deb]` table in `agent/Cargo.toml`.
//!
//! [`check`] validates them on any OS: the XML and property lists parse, every configuration
//! key a template sets is a key of the configuration schema (`cadence_config::KEYS`), and the
//! configuration each one produces passes the same checks the agent makes at start. Packaging
//! ([`package`]) runs the platform's own tools and says plainly which one is missing. Never
//! builds a package from templates that fail the check.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cadence_config::{ConfigError, KEYS, Layers, PREFERENCE_DOMAIN, find_key, plist_to_table};

/// Where the packages install the agent.
pub const LINUX_AGENT: &str = "/usr/bin/cadence-agent";
/// Where the macOS package installs the agent.
pub const MACOS_AGENT: &str = "/Library/Application Support/Cadence/bin/cadence-agent";

/// The templates, relative to the repository root, in the order they are checked.
pub const TEMPLATES: &[&str] = &[
    "installer/examples/agent.toml",
    "installer/examples/user.toml",
    "installer/linux/cadence-agent.service",
    "installer/linux/cadence-agent.desktop",
    "installer/linux/postinst",
    "installer/linux/prerm",
    "installer/linux/postrm",
    "agent/Cargo.toml",
    "installer/macos/org.cadence.agent.plist",
    "installer/macos/cadence.mobileconfig",
    "installer/macos/distribution.xml",
    "installer/macos/build-pkg.sh",
    "installer/macos/scripts/postinstall",
    "installer/macos/uninstall.sh",
    "installer/windows/cadence-agent.wxs",
    "installer/windows/intune-detection.ps1",
];

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// Templates checked, relative to the root.
    pub checked: Vec<String>,
    /// Every problem, each starting with its file.
    pub problems: Vec<String>,
}

/// The repository root this installer was built from.
pub fn default_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// Checks every template under `root`, collecting every problem.
pub fn check(root: &Path) -> Report {
    let mut r = Report::default();
    for rel in TEMPLATES {
        let path = root.join(rel);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                r.problems.push(format!("{rel}: cannot be read: {e}"));
                continue;
            }
        };
        let mut bad = |msg: String| r.problems.push(format!("{rel}: {msg}"));
        match *rel {
            "installer/examples/agent.toml" => {
                let mut l = Layers::new();
                l.managed_toml(&text, &path);
                config_problems(l, &mut bad);
            }
            "installer/examples/user.toml" => {
                // Checked as the user layer of an unmanaged agent: only user-eligible keys.
                let mut l = Layers::new();
                l.user_toml(&text, &path);
                config_problems(l, &mut bad);
            }
            "installer/linux/cadence-agent.service" => check_unit(&text, &mut bad),
            "installer/linux/cadence-agent.desktop" => check_desktop(&text, &mut bad),
            "installer/linux/postinst"
            | "installer/linux/prerm"
            | "installer/linux/postrm"
            | "installer/macos/build-pkg.sh"
            | "installer/macos/scripts/postinstall"
            | "installer/macos/uninstall.sh" => check_script(&path, &text, &mut bad),
            "agent/Cargo.toml" => check_deb_metadata(root, &text, &mut bad),
            "installer/macos/org.cadence.agent.plist" => check_launch_agent(&text, &mut bad),
            "installer/macos/cadence.mobileconfig" => check_profile(&text, &mut bad),
            "installer/macos/distribution.xml" => {
                if let Err(e) = xml_elements(&text) {
                    bad(e);
                } else if !text.contains("cadence-agent-component.pkg") {
                    bad("does not reference the component package build-pkg.sh makes".into());
                }
            }
            "installer/windows/cadence-agent.wxs" => check_wix(root, &text, &mut bad),
            "installer/windows/intune-detection.ps1" => {
                for needle in ["cadence-agent.exe", "Software\\Cadence\\Agent"] {
                    if !text.contains(needle) {
                        bad(format!(
                            "does not look for {needle}, which the MSI installs"
                        ));
                    }
                }
            }
            _ => {}
        }
        r.checked.push((*rel).to_owned());
    }
    r
}

fn config_problems(l: Layers, bad: &mut impl FnMut(String)) {
    if let Err(ConfigError::Invalid(p)) = l.resolve() {
        for p in p {
            bad(format!("{}: {}", p.field, p.rule));
        }
    }
}

/// `key=value` lines of an INI-like file (systemd unit, desktop entry) in `section`.
fn ini_values<'a>(text: &'a str, section: &str, key: &str) -> Vec<&'a str> {
    let mut current = "";
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = s;
        } else if let Some((k, v)) = line.split_once('=')
            && current == section
            && k.trim() == key
        {
            out.push(v.trim());
        }
    }
    out
}

fn check_unit(text: &str, bad: &mut impl FnMut(String)) {
    let exec = ini_values(text, "Service", "ExecStart");
    if exec.len() != 1 || exec[0].split_whitespace().next() != Some(LINUX_AGENT) {
        bad(format!(
            "[Service] ExecStart must run {LINUX_AGENT}, got {exec:?}"
        ));
    }
    if ini_values(text, "Install", "WantedBy") != ["graphical-session.target"] {
        bad("[Install] WantedBy must be graphical-session.target (the agent needs the user's display)".into());
    }
    if ini_values(text, "Service", "RestartPreventExitStatus") != ["78"] {
        bad("[Service] RestartPreventExitStatus must be 78 (invalid configuration)".into());
    }
}

fn check_desktop(text: &str, bad: &mut impl FnMut(String)) {
    let s = "Desktop Entry";
    let exec = ini_values(text, s, "Exec");
    if exec.len() != 1 || exec[0].split_whitespace().next() != Some(LINUX_AGENT) {
        bad(format!("Exec must run {LINUX_AGENT}, got {exec:?}"));
    }
    if ini_values(text, s, "TryExec") != [LINUX_AGENT] {
        bad(format!(
            "TryExec must be {LINUX_AGENT} (the entry outlives the binary until purge)"
        ));
    }
    for (k, v) in [
        ("Type", "Application"),
        ("X-GNOME-HiddenUnderSystemd", "true"),
        ("X-systemd-skip", "true"),
    ] {
        if ini_values(text, s, k) != [v] {
            bad(format!("{k} must be {v}"));
        }
    }
}

fn check_script(path: &Path, text: &str, bad: &mut impl FnMut(String)) {
    if !text.starts_with("#!/bin/sh\n") {
        bad("must start with #!/bin/sh".into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 == 0) {
            bad("must be executable".into());
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn check_deb_metadata(root: &Path, text: &str, bad: &mut impl FnMut(String)) {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return bad(format!("is not valid TOML: {e}")),
    };
    let Some(deb) = table
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("deb"))
    else {
        return bad("has no [package.metadata.deb]".into());
    };
    let assets = deb.get("assets").and_then(|a| a.as_array());
    let mut dests = BTreeSet::new();
    for a in assets.into_iter().flatten() {
        let parts: Vec<&str> = a
            .as_array()
            .map(|v| v.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        let [src, dest, _mode] = parts[..] else {
            bad(format!("asset {a:?} must be [source, destination, mode]"));
            continue;
        };
        if !src.starts_with("target/") && !root.join("agent").join(src).is_file() {
            bad(format!("asset source {src} does not exist"));
        }
        let name = Path::new(src)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        dests.insert(format!("/{}{name}", dest.trim_start_matches('/')));
    }
    for needed in [
        LINUX_AGENT,
        "/usr/lib/systemd/user/cadence-agent.service",
        "/etc/xdg/autostart/cadence-agent.desktop",
        "/usr/share/cadence/examples/agent.toml",
    ] {
        if !dests.contains(needed) {
            bad(format!("the package does not install {needed}"));
        }
    }
    match deb.get("maintainer-scripts").and_then(|m| m.as_str()) {
        Some(dir) if root.join("agent").join(dir).join("postinst").is_file() => {}
        other => bad(format!(
            "maintainer-scripts must point at installer/linux/, got {other:?}"
        )),
    }
}

fn read_plist(text: &str) -> Result<plist::Dictionary, String> {
    let v = plist::Value::from_reader_xml(text.as_bytes())
        .map_err(|e| format!("is not a valid property list: {e}"))?;
    v.into_dictionary()
        .ok_or_else(|| "must hold a dictionary at its top".to_owned())
}

fn check_launch_agent(text: &str, bad: &mut impl FnMut(String)) {
    let d = match read_plist(text) {
        Ok(d) => d,
        Err(e) => return bad(e),
    };
    if d.get("Label").and_then(|v| v.as_string()) != Some(PREFERENCE_DOMAIN) {
        bad(format!("Label must be {PREFERENCE_DOMAIN}"));
    }
    let args: Vec<&str> = d
        .get("ProgramArguments")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_string()).collect())
        .unwrap_or_default();
    if args != [MACOS_AGENT, "run"] {
        bad(format!(
            "ProgramArguments must be [{MACOS_AGENT:?}, \"run\"], got {args:?}"
        ));
    }
    if d.get("LimitLoadToSessionType").and_then(|v| v.as_string()) != Some("Aqua") {
        bad("LimitLoadToSessionType must be Aqua (a user's graphical session)".into());
    }
    // KeepAlive restarts every non-zero exit, the invalid-configuration one (78) included:
    // without a long throttle that is a retry loop every 10 s.
    let throttle = d
        .get("ThrottleInterval")
        .and_then(|v| v.as_signed_integer())
        .unwrap_or(10);
    if d.get("KeepAlive").is_some() && throttle < MIN_LAUNCHD_THROTTLE_SECS {
        bad(format!(
            "ThrottleInterval must be at least {MIN_LAUNCHD_THROTTLE_SECS} with KeepAlive \
             (an invalid configuration exits 78 and would be restarted every {throttle} s)"
        ));
    }
}

/// The least ThrottleInterval for the LaunchAgent (s): how often launchd may restart an agent
/// that refuses an invalid configuration.
const MIN_LAUNCHD_THROTTLE_SECS: i64 = 300;

fn check_profile(text: &str, bad: &mut impl FnMut(String)) {
    let d = match read_plist(text) {
        Ok(d) => d,
        Err(e) => return bad(e),
    };
    let payloads: Vec<&plist::Dictionary> = d
        .get("PayloadContent")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_dictionary()).collect())
        .unwrap_or_default();
    let of_type = |t: &str| {
        payloads
            .iter()
            .copied()
            .find(|p| p.get("PayloadType").and_then(|v| v.as_string()) == Some(t))
    };
    match of_type(PREFERENCE_DOMAIN) {
        None => bad(format!("has no {PREFERENCE_DOMAIN} settings payload")),
        Some(settings) => match plist_to_table(settings) {
            Ok(table) => {
                let mut l = Layers::new();
                l.managed_table(table, Path::new(cadence_config::MANAGED_PREFERENCES));
                config_problems(l, bad);
            }
            Err(ConfigError::Invalid(p)) => {
                for p in p {
                    bad(format!("{}: {}", p.field, p.rule));
                }
            }
            Err(e) => bad(e.to_string()),
        },
    }
    let Some(pppc) = of_type("com.apple.TCC.configuration-profile-policy") else {
        return bad("has no PPPC (com.apple.TCC.configuration-profile-policy) payload".into());
    };
    let services = pppc.get("Services").and_then(|v| v.as_dictionary());
    // A listen-only event tap needs Input Monitoring only. Accessibility would let the binary
    // read on-screen content and post events: never granted.
    for service in ["Accessibility", "PostEvent"] {
        if services.is_some_and(|s| s.contains_key(service)) {
            bad(format!(
                "PPPC must not grant {service}: a listen-only event tap needs Input Monitoring \
                 (ListenEvent) only"
            ));
        }
    }
    // Apple refuses "Allow" for Input Monitoring in a profile: the most it may say is that a
    // standard user can approve it.
    let (service, must) = ("ListenEvent", "AllowStandardUserToSetSystemService");
    let entries: Vec<&plist::Dictionary> = services
        .and_then(|s| s.get(service))
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_dictionary()).collect())
        .unwrap_or_default();
    let ok = entries.iter().any(|e| {
        e.get("Identifier").and_then(|v| v.as_string()) == Some(MACOS_AGENT)
            && e.get("Authorization").and_then(|v| v.as_string()) == Some(must)
            && e.get("CodeRequirement").is_some()
    });
    if !ok {
        bad(format!(
            "PPPC {service} must name {MACOS_AGENT} with a CodeRequirement and Authorization {must}"
        ));
    }
}

/// One XML element: its name and attributes, unescaped.
#[derive(Debug)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
}

impl Element {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Every element of a well-formed XML document, or why it is not well-formed.
fn xml_elements(text: &str) -> Result<Vec<Element>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut roots = 0usize;
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| format!("is not well-formed XML (near byte {pos}): {e}"))?;
        let start = match &ev {
            Event::Start(e) | Event::Empty(e) => Some(e),
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                None
            }
            Event::Eof => break,
            _ => None,
        };
        if let Some(e) = start {
            if depth == 0 {
                roots += 1;
            }
            if matches!(ev, Event::Start(_)) {
                depth += 1;
            }
            let mut attrs = Vec::new();
            for a in e.attributes() {
                let a = a.map_err(|e| format!("is not well-formed XML: {e}"))?;
                let v = a
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|e| format!("is not well-formed XML: {e}"))?;
                attrs.push((a.key.as_ref().to_owned(), v.into_owned()));
            }
            out.push(Element {
                name: e.name().as_ref().to_owned(),
                attrs,
            });
        }
    }
    if depth != 0 {
        return Err("is not well-formed XML: unclosed elements at the end".into());
    }
    if roots != 1 {
        return Err(format!(
            "is not well-formed XML: {roots} root elements, not one"
        ));
    }
    Ok(out)
}

/// Example property values the WiX check installs with, as an administrator would pass them.
fn example_property(root: &Path, name: &str) -> Option<String> {
    Some(match name {
        "VERIFIER_URL" => "https://verifier.example.com:8443".into(),
        "VERIFIER_CA_FILE" => root.join("installer/examples/ca.pem").display().to_string(),
        "VERIFIER_PUBLIC_KEY" => "ab".repeat(32),
        "ENROLL_TOKEN" => "example-token".into(),
        "NOTICE_TEXT" => "Example Corp verifies who is at its computers.".into(),
        _ => return None,
    })
}

fn check_wix(root: &Path, text: &str, bad: &mut impl FnMut(String)) {
    let elements = match xml_elements(text) {
        Ok(e) => e,
        Err(e) => return bad(e),
    };
    let mut properties: Vec<(String, Option<String>)> = elements
        .iter()
        .filter(|e| e.name == "Property")
        .filter_map(|e| {
            e.attr("Id")
                .map(|id| (id.to_owned(), e.attr("Value").map(str::to_owned)))
        })
        .collect();
    properties.push((
        "INSTALLFOLDER".into(),
        Some("C:\\Program Files\\Cadence\\".into()),
    ));
    // The file the MSI writes, line by line as Windows' INI writer does, with example values.
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut set_keys = BTreeSet::new();
    for e in elements.iter().filter(|e| e.name == "IniFile") {
        let (Some(section), Some(key), Some(value)) =
            (e.attr("Section"), e.attr("Key"), e.attr("Value"))
        else {
            bad("an IniFile lacks Section, Key or Value".into());
            continue;
        };
        if e.attr("Name") != Some("agent.toml") || e.attr("Directory") != Some("CONFIGFOLDER") {
            bad(format!(
                "IniFile {section}.{key} must write CONFIGFOLDER\\agent.toml"
            ));
        }
        let path = format!("{section}.{key}");
        if find_key(&path).is_none() {
            bad(format!(
                "IniFile sets {path}, which is not a configuration key (known: {})",
                KEYS.iter().map(|k| k.path).collect::<Vec<_>>().join(", ")
            ));
            continue;
        }
        set_keys.insert(path);
        let mut expanded = String::new();
        let mut rest = value;
        let mut skip = false;
        while let Some(open) = rest.find('[') {
            expanded.push_str(&rest[..open]);
            let Some(close) = rest[open..].find(']') else {
                break;
            };
            let prop = &rest[open + 1..open + close];
            match properties.iter().find(|(id, _)| id == prop) {
                None => bad(format!(
                    "IniFile {section}.{key} uses undeclared property [{prop}]"
                )),
                Some((_, default)) => match example_property(root, prop).or(default.clone()) {
                    Some(v) => expanded.push_str(&v),
                    None => skip = true,
                },
            }
            rest = &rest[open + close + 1..];
        }
        expanded.push_str(rest);
        if skip {
            continue;
        }
        match sections.iter_mut().find(|(s, _)| s == section) {
            Some((_, lines)) => lines.push(format!("{key}={expanded}")),
            None => sections.push((section.to_owned(), vec![format!("{key}={expanded}")])),
        }
    }
    for k in ["verifier.url", "verifier.enroll_token", "verifier.ca_file"] {
        if !set_keys.contains(k) {
            bad(format!("no property sets {k}"));
        }
    }
    let toml_text: String = sections
        .iter()
        .map(|(s, lines)| format!("[{s}]\n{}\n", lines.join("\n")))
        .collect();
    let mut l = Layers::new();
    l.managed_toml(
        &toml_text,
        Path::new("C:\\ProgramData\\Cadence\\agent.toml"),
    );
    let mut inner = Vec::new();
    config_problems(l, &mut |m| inner.push(m));
    for m in inner {
        bad(format!("the agent.toml it writes is invalid: {m}"));
    }
    let run_key = elements.iter().any(|e| {
        e.name == "RegistryValue"
            && e.attr("Root") == Some("HKLM")
            && e.attr("Key") == Some("Software\\Microsoft\\Windows\\CurrentVersion\\Run")
            && e.attr("Value")
                .is_some_and(|v| v.contains("cadence-agent.exe"))
    });
    if !run_key {
        bad("no per-user logon autostart (HKLM ...\\CurrentVersion\\Run value)".into());
    }
    let background = elements.iter().any(|e| {
        e.name == "RegistryValue"
            && e.attr("Key") == Some("Software\\Microsoft\\Windows\\CurrentVersion\\Run")
            && e.attr("Value")
                .is_some_and(|v| v.ends_with(" run --background"))
    });
    if run_key && !background {
        bad(
            "the logon autostart must be `cadence-agent.exe run --background` (else every user \
             gets a console window)"
                .into(),
        );
    }
    check_config_acl(&elements, bad);
}

/// The managed configuration's folder must be the machine's: a `PermissionEx` on the
/// CONFIGFOLDER component whose DACL is protected (nothing inherited from ProgramData, where
/// every user may create files), gives SYSTEM and Administrators full control, and lets
/// Users, Authenticated Users, Everyone and interactive users at most read.
fn check_config_acl(elements: &[Element], bad: &mut impl FnMut(String)) {
    // Elements come in document order: a PermissionEx belongs to the Component before it.
    let mut component_dir = None;
    let mut sddl = None;
    for e in elements {
        match e.name.as_str() {
            "Component" => component_dir = e.attr("Directory"),
            "PermissionEx" if component_dir == Some("CONFIGFOLDER") => sddl = e.attr("Sddl"),
            _ => {}
        }
    }
    let Some(sddl) = sddl else {
        return bad(
            "CONFIGFOLDER has no PermissionEx: users could create or edit the managed file".into(),
        );
    };
    let Some(dacl) = sddl.split_once("D:").map(|(_, d)| d) else {
        return bad(format!("CONFIGFOLDER's PermissionEx has no DACL: {sddl}"));
    };
    if !dacl
        .split('(')
        .next()
        .is_some_and(|flags| flags.contains('P'))
    {
        bad(format!(
            "CONFIGFOLDER's DACL must be protected (D:P...), not inherit ProgramData's: {sddl}"
        ));
    }
    // An ACE is (type;flags;rights;object;inherited object;sid).
    let aces: Vec<Vec<&str>> = dacl
        .split('(')
        .skip(1)
        .filter_map(|a| a.split_once(')'))
        .map(|(a, _)| a.split(';').collect())
        .collect();
    let read_only = ["0x1200a9", "FR", "FX", "FRFX", "GR", "GX", "GRGX"];
    for ace in &aces {
        let [kind, _, rights, _, _, sid] = ace[..] else {
            bad(format!("CONFIGFOLDER's DACL has a malformed entry: {sddl}"));
            continue;
        };
        if kind == "A" && ["BU", "AU", "WD", "IU"].contains(&sid) && !read_only.contains(&rights) {
            bad(format!(
                "CONFIGFOLDER's DACL lets {sid} do more than read ({rights}): {sddl}"
            ));
        }
    }
    for sid in ["SY", "BA"] {
        if !aces
            .iter()
            .any(|a| a.first() == Some(&"A") && a.get(5) == Some(&sid) && a[2] == "FA")
        {
            bad(format!(
                "CONFIGFOLDER's DACL must give {sid} full control (FA): {sddl}"
            ));
        }
    }
}

/// A package format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Debian package (cargo-deb).
    Deb,
    /// macOS flat package (pkgbuild + productbuild).
    Pkg,
    /// Windows Installer (WiX).
    Msi,
}

/// Why a package was not built.
#[derive(Debug)]
pub enum PackageError {
    /// A tool the format needs is not installed here.
    MissingTool {
        /// The tool(s).
        tool: &'static str,
        /// Where it comes from.
        hint: &'static str,
    },
    /// The templates do not pass [`check`].
    Templates(Vec<String>),
    /// The tool ran and failed.
    Failed(String),
}

impl fmt::Display for PackageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackageError::MissingTool { tool, hint } => {
                write!(
                    f,
                    "cannot build this package here: {tool} not found ({hint})"
                )
            }
            PackageError::Templates(p) => {
                write!(f, "the templates do not pass the check:")?;
                for p in p {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
            PackageError::Failed(m) => f.write_str(m),
        }
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn run(cmd: &mut Command) -> Result<String, PackageError> {
    let out = cmd
        .output()
        .map_err(|e| PackageError::Failed(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(PackageError::Failed(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Options of [`package`].
#[derive(Debug, Clone, Default)]
pub struct PackageOptions {
    /// Package an agent already built in the release profile instead of building it.
    pub no_build: bool,
    /// The agent binary to package (pkg, msi); default: this workspace's release build.
    pub agent: Option<PathBuf>,
    /// A managed file to include (pkg).
    pub managed: Option<PathBuf>,
}

/// Builds a package of the agent into `out`; returns its path.
pub fn package(
    root: &Path,
    format: Format,
    out: &Path,
    opts: &PackageOptions,
) -> Result<PathBuf, PackageError> {
    let report = check(root);
    if !report.problems.is_empty() {
        return Err(PackageError::Templates(report.problems));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| PackageError::Failed(format!("{}: {e}", out.display())))?;
    let version = env!("CARGO_PKG_VERSION");
    match format {
        Format::Deb => {
            let has = Command::new("cargo")
                .args(["deb", "--version"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !has {
                return Err(PackageError::MissingTool {
                    tool: "cargo-deb",
                    hint: "cargo install cargo-deb --locked",
                });
            }
            let mut cmd = Command::new("cargo");
            cmd.current_dir(root)
                .args(["deb", "-p", "cadence-agent", "--strip", "--output"])
                .arg(out);
            if opts.no_build {
                cmd.arg("--no-build");
            }
            let printed = run(&mut cmd)?;
            printed
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.ends_with(".deb"))
                .map(PathBuf::from)
                .ok_or_else(|| {
                    PackageError::Failed(format!("cargo deb printed no package path: {printed}"))
                })
        }
        Format::Pkg => {
            if !(cfg!(target_os = "macos") && on_path("pkgbuild") && on_path("productbuild")) {
                return Err(PackageError::MissingTool {
                    tool: "pkgbuild and productbuild",
                    hint: "Xcode's command line tools, on macOS only",
                });
            }
            let agent = agent_binary(root, opts, "cadence-agent")?;
            let mut cmd = Command::new(root.join("installer/macos/build-pkg.sh"));
            cmd.arg(&agent).arg(version).arg(out);
            if let Some(m) = &opts.managed {
                cmd.arg(m);
            }
            let printed = run(&mut cmd)?;
            Ok(PathBuf::from(printed.trim()))
        }
        Format::Msi => {
            if !on_path("wix") && !on_path("wix.exe") {
                return Err(PackageError::MissingTool {
                    tool: "wix",
                    hint: "the WiX Toolset v4 or later: dotnet tool install --global wix",
                });
            }
            let agent = agent_binary(root, opts, "cadence-agent.exe")?;
            let msi = out.join(format!("cadence-agent-{version}.msi"));
            run(Command::new("wix")
                .arg("build")
                .arg(root.join("installer/windows/cadence-agent.wxs"))
                .args(["-arch", "x64", "-d"])
                .arg(format!("Version={version}"))
                .arg("-d")
                .arg(format!("AgentExe={}", agent.display()))
                .arg("-o")
                .arg(&msi))?;
            Ok(msi)
        }
    }
}

/// The agent binary to package: given, or built here in release.
fn agent_binary(root: &Path, opts: &PackageOptions, name: &str) -> Result<PathBuf, PackageError> {
    if let Some(a) = &opts.agent {
        return Ok(a.clone());
    }
    if !opts.no_build {
        run(Command::new("cargo").current_dir(root).args([
            "build",
            "--release",
            "--locked",
            "-p",
            "cadence-agent",
        ]))?;
    }
    Ok(root.join("target/release").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_well_formedness() {
        assert!(xml_elements("<a><b x='1'/></a>").is_ok());
        for bad in [
            "<a><b></a>",
            "<a>",
            "<a/><b/>",
            "<a x='1' x='2'/>",
            "<a><b></b>",
        ] {
            assert!(xml_elements(bad).is_err(), "{bad}");
        }
        let e = xml_elements("<a><IniFile Value=\"&quot;[X]&quot;\"/></a>").unwrap();
        assert_eq!(e[1].attr("Value"), Some("\"[X]\""));
    }

    #[test]
    fn ini_values_are_read_per_section() {
        let t = "[A]\nx = 1\n# x=9\n[B]\nx=2\n";
        assert_eq!(ini_values(t, "A", "x"), ["1"]);
        assert_eq!(ini_values(t, "B", "x"), ["2"]);
    }
}
