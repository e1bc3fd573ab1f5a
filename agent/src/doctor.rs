//! `cadence-agent doctor`: which capture backend this system would use, why, and what
//! permission is missing, in sentences a person can act on.
//!
//! Owns the checks only: the session type (`DISPLAY`, `WAYLAND_DISPLAY`, `XDG_SESSION_TYPE`),
//! whether the X server has RECORD, which event nodes under `/dev/input` can be read and what
//! they are, membership of the `input` group (the process's and the user's); on Windows what
//! low-level hooks can and cannot see; on macOS the Input Monitoring and Accessibility
//! permissions and whether Secure Event Input is on. Hands on a [`Report`]; the CLI prints it.
//!
//! Never captures an event, never asks the OS for a permission (that would open a prompt),
//! and names devices only on the local terminal.

use serde_json::{Value, json};

use crate::capture::live::{self, Requested};

/// Flags of `cadence-agent doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The backend to check: auto (what `run` and `preview` would use), x11 or evdev.
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = ["auto", "x11", "evdev"])]
    pub capture: String,
    /// X display to check (default: $DISPLAY).
    #[arg(long, value_name = "DISPLAY")]
    pub display: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `doctor` found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Capture can start with the chosen backend.
    pub ready: bool,
    /// The report as text lines.
    pub lines: Vec<String>,
    /// The report as one JSON object.
    pub json: Value,
}

/// Runs every check for this system.
pub fn diagnose(a: &DoctorArgs) -> Report {
    let requested = Requested::parse(&a.capture).unwrap_or(Requested::Auto);
    let choice = live::choose(requested, a.display.as_deref());
    let mut lines = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    match &choice.backend {
        Ok(b) => lines.push(format!("capture backend: {}", b.name())),
        Err(e) => lines.push(format!("capture backend: none can start: {e}")),
    }
    for r in &choice.reasons {
        lines.push(format!("  - {r}"));
    }
    let details = platform(a, &mut lines, &mut missing);
    if missing.is_empty() {
        if choice.backend.is_ok() {
            lines.push("nothing is missing".into());
        }
    } else {
        lines.push("missing:".into());
        lines.extend(missing.iter().map(|m| format!("  - {m}")));
    }
    let json = json!({
        "backend": choice.backend.as_ref().ok().map(|b| b.name()),
        "error": choice.backend.as_ref().err(),
        "ready": choice.backend.is_ok(),
        "reasons": choice.reasons,
        "missing": missing,
        "details": details,
    });
    Report {
        ready: choice.backend.is_ok(),
        lines,
        json,
    }
}

/// The `input` group as the system defines it and this process holds it.
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, PartialEq, Eq)]
struct InputGroup {
    /// Its id, if `/etc/group` has it.
    gid: Option<u32>,
    /// This process holds it (as primary or supplementary group).
    process_member: bool,
    /// `/etc/group` lists the user in it.
    user_listed: bool,
}

/// Reads group membership from `/etc/group` text and `/proc/self/status` text.
#[cfg(target_os = "linux")]
fn input_group(etc_group: &str, proc_status: &str, user: &str) -> InputGroup {
    let entry = etc_group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[0] == "input");
    let gid = entry.as_ref().and_then(|f| f[2].parse::<u32>().ok());
    let user_listed = entry
        .as_ref()
        .is_some_and(|f| f[3].split(',').any(|m| m.trim() == user));
    let ids = |key: &str| -> Vec<u32> {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let held: Vec<u32> = ids("Groups:").into_iter().chain(ids("Gid:")).collect();
    InputGroup {
        gid,
        process_member: gid.is_some_and(|g| held.contains(&g)),
        user_listed,
    }
}

#[cfg(target_os = "linux")]
fn platform(a: &DoctorArgs, lines: &mut Vec<String>, missing: &mut Vec<String>) -> Value {
    use crate::capture::evdev::device::{INPUT_DIR, survey};

    let env = |k: &str| std::env::var(k).unwrap_or_default();
    lines.push(format!(
        "session: XDG_SESSION_TYPE={:?} WAYLAND_DISPLAY={:?} DISPLAY={:?}",
        env("XDG_SESSION_TYPE"),
        env("WAYLAND_DISPLAY"),
        env("DISPLAY")
    ));
    let facts = live::linux_facts(a.display.as_deref());
    let x11 = match (&facts.display, &facts.x11) {
        (Some(d), Ok(())) => format!("RECORD available on {d}"),
        (Some(d), Err(e)) => format!("cannot be used on {d}: {e}"),
        (None, _) => "no display (DISPLAY is not set)".into(),
    };
    lines.push(format!("x11: {x11}"));

    lines.push(format!("evdev ({INPUT_DIR}):"));
    let mut nodes_json = Vec::new();
    let (mut readable, mut denied, mut used) = (0, 0, 0);
    match survey(std::path::Path::new(INPUT_DIR)) {
        Ok(nodes) if nodes.is_empty() => lines.push("  no event nodes".into()),
        Ok(nodes) => {
            for n in &nodes {
                let what = match (n.role, &n.error) {
                    (Some(r), _) => {
                        readable += 1;
                        let mut kinds = Vec::new();
                        if r.keyboard {
                            kinds.push("keyboard");
                        }
                        if r.pointer {
                            kinds.push("pointer");
                        }
                        if r.touchpad {
                            kinds.push("touchpad");
                        }
                        if kinds.is_empty() {
                            "not a keyboard or pointer (left alone)".to_owned()
                        } else {
                            used += 1;
                            let virt = if n.is_virtual {
                                " (virtual, e.g. a key remapper's: read like any other)"
                            } else {
                                ""
                            };
                            format!("{}{virt}", kinds.join(" + "))
                        }
                    }
                    (None, e) => {
                        denied += 1;
                        format!("not readable: {}", e.as_deref().unwrap_or("?"))
                    }
                };
                lines.push(format!("  {}  {what}  {:?}", n.path.display(), n.name));
                nodes_json.push(json!({
                    "path": n.path.display().to_string(),
                    "name": n.name,
                    "role": what,
                }));
            }
            lines.push(format!(
                "  {readable} readable ({used} keyboards or pointers), {denied} not readable"
            ));
        }
        Err(e) => lines.push(format!("  cannot list {INPUT_DIR}: {e}")),
    }

    let user = crate::state::os_user();
    let group = input_group(
        &std::fs::read_to_string("/etc/group").unwrap_or_default(),
        &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
        &user,
    );
    let member = match (&group.gid, group.process_member, group.user_listed) {
        (None, ..) => "this system has no `input` group".to_owned(),
        (Some(g), true, _) => format!("this process holds the `input` group (gid {g})"),
        (Some(g), false, true) => format!(
            "{user} is listed in the `input` group (gid {g}), but this session started \
             before that: log out and in again"
        ),
        (Some(g), false, false) => format!("{user} is not in the `input` group (gid {g})"),
    };
    lines.push(format!("input group: {member}"));
    let gate = crate::capture::evdev::device::SessionGate::from_env();
    let session = gate.describe();
    lines.push(format!(
        "session in front (evdev reads only then): {session}"
    ));
    if !gate.is_known() && used > 0 {
        missing.push(
            "evdev is not chosen automatically here: without logind it cannot tell whether \
             this user's session is the one in front, and would read other users' input \
             (run with --capture evdev only if no one else uses this seat)"
                .into(),
        );
    }
    if used == 0 && denied > 0 {
        if group.gid.is_some() && !group.process_member && !group.user_listed {
            missing.push(format!(
                "to capture with evdev (Wayland, console), add {user} to the `input` group: \
                 sudo usermod -aG input {user}, then log out and in again"
            ));
        } else if group.user_listed && !group.process_member {
            missing.push("log out and in again so this session gets the `input` group".into());
        } else {
            missing.push(format!(
                "{INPUT_DIR} nodes are not readable by the `input` group here: check the udev \
                 rules"
            ));
        }
    }
    if facts.wayland && facts.evdev.as_ref().map_or(true, |n| *n == 0) {
        missing.push(
            "under Wayland only evdev sees every program; X11 capture sees Xwayland programs \
             only"
                .into(),
        );
    }
    json!({
        "session": {
            "xdg_session_type": env("XDG_SESSION_TYPE"),
            "wayland_display": env("WAYLAND_DISPLAY"),
            "display": env("DISPLAY"),
            "wayland": facts.wayland,
        },
        "x11": x11,
        "evdev": {"readable": readable, "used": used, "not_readable": denied, "nodes": nodes_json},
        "session_gate": session,
        "input_group": {
            "gid": group.gid,
            "process_member": group.process_member,
            "user_listed": group.user_listed,
        },
    })
}

#[cfg(windows)]
fn platform(_: &DoctorArgs, lines: &mut Vec<String>, _missing: &mut Vec<String>) -> Value {
    let notes = [
        "low-level keyboard and mouse hooks (WH_KEYBOARD_LL, WH_MOUSE_LL) need no permission",
        "not seen: input to windows of programs running as administrator while the agent \
         runs without elevation, and the secure desktop (sign-in, Ctrl+Alt+Del, UAC prompts)",
        "events injected by software (SendInput) are flagged and counted by the injection guard",
    ];
    lines.extend(notes.iter().map(|n| format!("windows: {n}")));
    json!({ "windows": notes })
}

#[cfg(target_os = "macos")]
fn platform(_: &DoctorArgs, lines: &mut Vec<String>, missing: &mut Vec<String>) -> Value {
    use crate::capture::macos::{Access, permissions};
    let p = permissions();
    let im = match p.input_monitoring {
        Access::Granted => "granted",
        Access::Denied => "denied",
        Access::Unknown => "not decided yet (macOS asks when capture first starts)",
    };
    lines.push(format!("input monitoring: {im}"));
    lines.push(format!(
        "accessibility: {} (not needed: the event tap only listens)",
        if p.accessibility {
            "granted"
        } else {
            "not granted"
        }
    ));
    lines.push(format!(
        "secure event input: {}",
        if p.secure_input {
            "on now (a password field has focus): keyboard timing is paused and the pause is \
             marked as such, never scored"
        } else {
            "off"
        }
    ));
    if p.input_monitoring != Access::Granted {
        missing.push(
            "allow cadence-agent under System Settings → Privacy & Security → Input \
             Monitoring, then start it again"
                .into(),
        );
    }
    json!({
        "input_monitoring": im,
        "accessibility": p.accessibility,
        "secure_input": p.secure_input,
    })
}

#[cfg(not(any(target_os = "linux", windows, target_os = "macos")))]
fn platform(_: &DoctorArgs, _lines: &mut Vec<String>, _missing: &mut Vec<String>) -> Value {
    Value::Null
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    const ETC_GROUP: &str = "root:x:0:\nwheel:x:10:ann\ninput:x:104:ann,bob\nann:x:1000:\n";

    #[test]
    fn group_membership_reads_the_process_and_the_user_apart() {
        let status = "Name:\tcadence\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t10 104 1000 \n";
        assert_eq!(
            input_group(ETC_GROUP, status, "ann"),
            InputGroup {
                gid: Some(104),
                process_member: true,
                user_listed: true
            }
        );
        // Added with usermod, not logged in again yet.
        let before = "Gid:\t1000\t1000\t1000\t1000\nGroups:\t10 1000\n";
        let g = input_group(ETC_GROUP, before, "ann");
        assert!(g.user_listed && !g.process_member);
        // Not listed, not held; "annie" is not "ann".
        let g = input_group(ETC_GROUP, before, "annie");
        assert!(!g.user_listed && !g.process_member);
        // No input group at all.
        assert_eq!(input_group("root:x:0:\n", before, "ann").gid, None);
        // Primary group input.
        let primary = "Gid:\t104\t104\t104\t104\nGroups:\t\n";
        assert!(input_group(ETC_GROUP, primary, "carol").process_member);
    }

    #[test]
    fn the_report_names_a_backend_or_says_why_none() {
        let r = diagnose(&DoctorArgs {
            capture: "evdev".into(),
            display: None,
            json: true,
        });
        assert!(r.lines[0].starts_with("capture backend: "), "{:?}", r.lines);
        assert_eq!(r.json["ready"], json!(r.ready));
        // This machine has no /dev/input: evdev cannot start, and the report says so.
        if !std::path::Path::new("/dev/input").exists() {
            assert!(!r.ready);
            assert!(r.lines[0].contains("none can start"), "{:?}", r.lines);
        }
    }
}
