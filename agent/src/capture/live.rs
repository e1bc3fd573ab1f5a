//! Which live capture backend runs on this system, and why.
//!
//! Owns the choice between the per-OS backends (`--capture auto|x11|evdev`): on Linux, X11
//! RECORD in an X11 session, evdev in a Wayland session (where X11 capture sees only the few
//! programs that still run under Xwayland) and on the console; on Windows the low-level
//! hooks; on macOS the event tap. Hands on an opened [`InputSource`] and, for `doctor` and the
//! logs, the reasons for the choice in plain sentences.
//!
//! Never starts capture itself: opening a source only checks that it can start.

use super::{CaptureError, InputSource, MonoClock};

/// The backend asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// Whatever suits this session.
    Auto,
    /// X11 RECORD (Linux).
    X11,
    /// The kernel's event devices (Linux).
    Evdev,
}

impl Requested {
    /// Parses `auto`, `x11` or `evdev`.
    pub fn parse(s: &str) -> Option<Requested> {
        match s {
            "auto" => Some(Requested::Auto),
            "x11" => Some(Requested::X11),
            "evdev" => Some(Requested::Evdev),
            _ => None,
        }
    }
}

/// A backend that can run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chosen {
    /// X11 RECORD on this display (`None`: `$DISPLAY`).
    X11(Option<String>),
    /// evdev on `/dev/input`.
    Evdev,
    /// Windows low-level hooks.
    WindowsHooks,
    /// The macOS event tap.
    MacEventTap,
}

impl Chosen {
    /// The backend's name, as the source reports it.
    pub fn name(&self) -> &'static str {
        match self {
            Chosen::X11(_) => "x11-record",
            Chosen::Evdev => "evdev",
            Chosen::WindowsHooks => "windows-hooks",
            Chosen::MacEventTap => "macos-event-tap",
        }
    }
}

/// A choice and its reasons.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The backend, or why none can run.
    pub backend: Result<Chosen, String>,
    /// Why, one sentence each, in the order they were considered.
    pub reasons: Vec<String>,
}

/// What the Linux choice looks at; gathered by [`linux_facts`], passed in so the rule itself
/// is a pure function.
#[derive(Debug, Clone)]
pub struct SessionFacts {
    /// `WAYLAND_DISPLAY` is set, or `XDG_SESSION_TYPE` is `wayland`.
    pub wayland: bool,
    /// The X display to use, if any (`--display` or `$DISPLAY`).
    pub display: Option<String>,
    /// Whether that display is reachable and has RECORD, or why not.
    pub x11: Result<(), String>,
    /// Readable keyboards and pointers under `/dev/input`, or why there are none.
    pub evdev: Result<usize, String>,
    /// Whether evdev can tell that this user's login session is the one in front (logind):
    /// without it, evdev would read every user's input, so it is used only when asked for.
    pub evdev_session_known: bool,
}

/// The Linux rule: Wayland prefers evdev, X11 prefers RECORD, the console has only evdev; an
/// explicit request is honoured if it can run.
pub fn choose_linux(requested: Requested, f: &SessionFacts) -> Choice {
    let mut reasons = Vec::new();
    let session = if f.wayland {
        "a Wayland session (WAYLAND_DISPLAY or XDG_SESSION_TYPE=wayland)"
    } else if f.display.is_some() {
        "an X11 session (DISPLAY is set, no Wayland)"
    } else {
        "no graphical session (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    };
    reasons.push(format!("this is {session}"));
    let x11 = || match (&f.display, &f.x11) {
        (Some(d), Ok(())) => Ok(Chosen::X11(Some(d.clone()))),
        (Some(d), Err(e)) => Err(format!("X11 capture on {d} cannot start: {e}")),
        (None, _) => Err("X11 capture needs a display, and DISPLAY is not set".to_owned()),
    };
    let evdev_explicit = || match &f.evdev {
        Ok(n) if *n > 0 => Ok(Chosen::Evdev),
        Ok(_) => Err("evdev: no keyboard or pointer is readable under /dev/input".to_owned()),
        Err(e) => Err(format!("evdev: {e}")),
    };
    // Consent is per user: where the session in front cannot be told, reading the devices
    // would capture whoever sits there, so automatic choice never does it.
    let evdev = || {
        if f.evdev_session_known {
            evdev_explicit()
        } else {
            Err(
                "evdev: cannot tell whether this user's session is the one in front (no \
                 logind), so it would also read other users' input; use --capture evdev to \
                 read the devices anyway"
                    .to_owned(),
            )
        }
    };
    let backend = match requested {
        Requested::X11 => {
            reasons.push("X11 was asked for (--capture x11)".into());
            x11()
        }
        Requested::Evdev => {
            reasons.push("evdev was asked for (--capture evdev)".into());
            if !f.evdev_session_known {
                reasons.push(
                    "no logind: whether this user's session is in front cannot be told, and \
                     the input of any user at this seat is read"
                        .into(),
                );
            }
            evdev_explicit()
        }
        Requested::Auto if f.wayland => match evdev() {
            Ok(c) => {
                reasons.push(
                    "under Wayland, X11 capture would see only programs running in Xwayland: \
                     evdev reads the devices themselves"
                        .into(),
                );
                Ok(c)
            }
            Err(e) => {
                reasons.push(format!("evdev cannot be used: {e}"));
                match x11() {
                    Ok(c) => {
                        reasons.push(
                            "falling back to X11 capture, which under Wayland sees only \
                             programs running in Xwayland"
                                .into(),
                        );
                        Ok(c)
                    }
                    Err(x) => Err(format!("{e}; {x}")),
                }
            }
        },
        Requested::Auto => match x11() {
            Ok(c) => {
                reasons.push("X11 RECORD is available and sees every program".into());
                Ok(c)
            }
            Err(x) => {
                reasons.push(x.clone());
                match evdev() {
                    Ok(c) => {
                        reasons.push("the kernel's input devices are readable".into());
                        Ok(c)
                    }
                    Err(e) => Err(format!("{x}; {e}")),
                }
            }
        },
    };
    Choice { backend, reasons }
}

/// Looks at this Linux session: environment, the X display, `/dev/input`.
#[cfg(target_os = "linux")]
pub fn linux_facts(display: Option<&str>) -> SessionFacts {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let wayland = env("WAYLAND_DISPLAY").is_some()
        || env("XDG_SESSION_TYPE").is_some_and(|t| t.eq_ignore_ascii_case("wayland"));
    let display = display
        .map(str::to_owned)
        .filter(|d| !d.is_empty())
        .or_else(|| env("DISPLAY"));
    let x11 = match &display {
        Some(d) => super::x11::probe(Some(d)).map_err(|e| e.to_string()),
        None => Err("DISPLAY is not set".into()),
    };
    let dir = std::path::Path::new(super::evdev::device::INPUT_DIR);
    let evdev = match super::evdev::device::survey(dir) {
        Ok(nodes) => {
            let usable = nodes
                .iter()
                .filter(|n| n.role.is_some_and(|r| r.is_used()))
                .count();
            let denied = nodes.iter().filter(|n| n.role.is_none()).count();
            if usable == 0 && denied > 0 {
                Err(format!(
                    "{denied} input devices under {} cannot be read (not in the `input` group?)",
                    dir.display()
                ))
            } else {
                Ok(usable)
            }
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
    };
    SessionFacts {
        wayland,
        display,
        x11,
        evdev,
        evdev_session_known: super::evdev::device::SessionGate::from_env().is_known(),
    }
}

/// Chooses the backend for this system.
pub fn choose(requested: Requested, display: Option<&str>) -> Choice {
    #[cfg(target_os = "linux")]
    {
        choose_linux(requested, &linux_facts(display))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = display;
        let (native, why) = if cfg!(windows) {
            (
                Chosen::WindowsHooks,
                "Windows: low-level keyboard and mouse hooks",
            )
        } else {
            (Chosen::MacEventTap, "macOS: a listen-only event tap")
        };
        match requested {
            Requested::Auto => Choice {
                backend: if cfg!(any(windows, target_os = "macos")) {
                    Ok(native)
                } else {
                    Err("no live capture backend exists for this system".into())
                },
                reasons: vec![why.into()],
            },
            Requested::X11 | Requested::Evdev => Choice {
                backend: Err("X11 and evdev capture exist on Linux only".into()),
                reasons: vec![why.into()],
            },
        }
    }
}

/// Opens the live source for `chosen`, stamping events on `clock`.
pub fn open(chosen: &Chosen, clock: MonoClock) -> Result<Box<dyn InputSource>, CaptureError> {
    match chosen {
        #[cfg(target_os = "linux")]
        Chosen::X11(display) => {
            super::x11::probe(display.as_deref())?;
            Ok(Box::new(super::x11::X11Record::new(display.clone(), clock)))
        }
        #[cfg(target_os = "linux")]
        Chosen::Evdev => Ok(Box::new(super::evdev::device::Evdev::new(clock))),
        #[cfg(windows)]
        Chosen::WindowsHooks => Ok(Box::new(super::windows::WindowsHooks::new(clock))),
        #[cfg(target_os = "macos")]
        Chosen::MacEventTap => Ok(Box::new(super::macos::MacEventTap::new(clock))),
        other => {
            let _ = clock;
            Err(CaptureError::Unsupported(other.name()))
        }
    }
}

/// Chooses and opens: the one call `run` and `preview` make.
pub fn choose_and_open(
    requested: Requested,
    display: Option<&str>,
    clock: MonoClock,
) -> Result<Box<dyn InputSource>, CaptureError> {
    let choice = choose(requested, display);
    match choice.backend {
        Ok(chosen) => {
            tracing::info!(
                backend = chosen.name(),
                why = %choice.reasons.join("; "),
                "capture backend chosen"
            );
            open(&chosen, clock)
        }
        Err(e) => Err(CaptureError::NoBackend(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(wayland: bool, x11: bool, evdev: usize) -> SessionFacts {
        SessionFacts {
            wayland,
            display: Some(":0".into()),
            x11: if x11 { Ok(()) } else { Err("no RECORD".into()) },
            evdev: Ok(evdev),
            evdev_session_known: true,
        }
    }

    #[test]
    fn auto_prefers_x11_under_x11_and_evdev_under_wayland() {
        let x = Chosen::X11(Some(":0".into()));
        assert_eq!(
            choose_linux(Requested::Auto, &facts(false, true, 2)).backend,
            Ok(x.clone())
        );
        assert_eq!(
            choose_linux(Requested::Auto, &facts(true, true, 2)).backend,
            Ok(Chosen::Evdev)
        );
        // Wayland without readable devices falls back to Xwayland's X11, and says so.
        let c = choose_linux(Requested::Auto, &facts(true, true, 0));
        assert_eq!(c.backend, Ok(x));
        assert!(c.reasons.iter().any(|r| r.contains("Xwayland")), "{c:?}");
        // X11 without RECORD: evdev.
        assert_eq!(
            choose_linux(Requested::Auto, &facts(false, false, 1)).backend,
            Ok(Chosen::Evdev)
        );
    }

    #[test]
    fn the_console_uses_evdev_and_nothing_usable_is_an_error_with_every_reason() {
        let console = SessionFacts {
            wayland: false,
            display: None,
            x11: Err("DISPLAY is not set".into()),
            evdev: Ok(3),
            evdev_session_known: true,
        };
        assert_eq!(
            choose_linux(Requested::Auto, &console).backend,
            Ok(Chosen::Evdev)
        );
        let nothing = SessionFacts {
            evdev: Err("5 input devices cannot be read (not in the `input` group?)".into()),
            ..console
        };
        let c = choose_linux(Requested::Auto, &nothing);
        let e = c.backend.err().unwrap_or_default();
        assert!(e.contains("DISPLAY") && e.contains("input"), "{e}");
    }

    #[test]
    fn an_explicit_request_is_honoured_or_refused_never_swapped() {
        let f = facts(true, true, 0);
        assert!(choose_linux(Requested::Evdev, &f).backend.is_err());
        assert_eq!(
            choose_linux(Requested::X11, &f).backend,
            Ok(Chosen::X11(Some(":0".into())))
        );
        let f = facts(false, false, 2);
        assert!(choose_linux(Requested::X11, &f).backend.is_err());
        assert_eq!(
            choose_linux(Requested::Evdev, &f).backend,
            Ok(Chosen::Evdev)
        );
        assert_eq!(Requested::parse("evdev"), Some(Requested::Evdev));
        assert_eq!(Requested::parse("wayland"), None);
    }

    #[test]
    fn without_logind_auto_never_picks_evdev_but_an_explicit_request_may() {
        // Whose session is in front cannot be told: evdev would read every user's input.
        let unknown = |wayland, x11| SessionFacts {
            evdev_session_known: false,
            ..facts(wayland, x11, 3)
        };
        // The console: nothing else, so no backend, and the reason says what to do.
        let console = SessionFacts {
            display: None,
            x11: Err("DISPLAY is not set".into()),
            ..unknown(false, false)
        };
        let e = choose_linux(Requested::Auto, &console)
            .backend
            .err()
            .unwrap_or_default();
        assert!(e.contains("logind") && e.contains("--capture evdev"), "{e}");
        // Wayland: X11 (Xwayland) rather than evdev; X11 without RECORD: nothing.
        assert_eq!(
            choose_linux(Requested::Auto, &unknown(true, true)).backend,
            Ok(Chosen::X11(Some(":0".into())))
        );
        assert!(
            choose_linux(Requested::Auto, &unknown(false, false))
                .backend
                .is_err()
        );
        // Asked for by name: used, and the reasons say what that means.
        let c = choose_linux(Requested::Evdev, &console);
        assert_eq!(c.backend, Ok(Chosen::Evdev));
        assert!(c.reasons.iter().any(|r| r.contains("any user")), "{c:?}");
    }
}
