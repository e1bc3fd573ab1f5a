//! The consent state machine: what the user's last decision means now, and which decisions
//! may follow it.
//!
//! Pure: the decision on file, the notice in force, the organization's policy and the time are
//! passed in; nothing here reads a file, a clock or the screen. The daemon, the tray and the
//! `consent` command all go through [`evaluate`] and [`decide`], so they can never disagree
//! about whether capture may run.
//!
//! Rules, each with a test below:
//! - Only an explicit grant of the notice in force allows capture. A decision about an earlier
//!   notice (grant, pause or withdrawal) counts as no decision: the user is asked again.
//! - A pause lasts [`PAUSE`], is offered only where policy allows it, and only while
//!   monitoring. It ends by itself ([`expire`]) or when the user resumes; the grant stands.
//!   The file is not trusted for either: a pause never lasts longer than [`PAUSE`] from when
//!   it was made, whatever end it names (a hand-edited file), and a pause the policy in force
//!   does not allow (made under another policy, or written by hand) ends at once.
//! - Withdrawing is always possible, also while paused, and nothing ends it but a new grant.
//!
//! Never turns "not now", a closed dialog or a missing dialog backend into consent: those
//! are not decisions and change nothing here.

use std::time::Duration;

use cadence_config::Policy;
use cadence_wire::records::{Decision, MonitoringState};

use crate::state::ConsentFile;

/// How long "Pause" stops monitoring.
pub const PAUSE: Duration = Duration::from_secs(30 * 60);

/// What the decision on file means under the notice in force, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No decision about this notice: nothing is captured, the user should be asked.
    Undecided {
        /// The user had decided about an earlier notice text (it changed since).
        notice_changed: bool,
    },
    /// Granted (or resumed after a pause): capture runs.
    Monitoring,
    /// Paused until this time (ms since the Unix epoch): nothing is captured.
    Paused {
        /// When monitoring resumes by itself.
        until_ms: u64,
    },
    /// Withdrawn: nothing is captured until the user grants again.
    Withdrawn,
}

impl Standing {
    /// Whether capture may run.
    pub fn allows_capture(self) -> bool {
        self == Standing::Monitoring
    }

    /// The monitoring state this standing shows as (before capture errors are considered).
    pub fn monitoring_state(self) -> MonitoringState {
        match self {
            Standing::Undecided { .. } => MonitoringState::WaitingForConsent,
            Standing::Monitoring => MonitoringState::Monitoring,
            Standing::Paused { .. } => MonitoringState::Paused,
            Standing::Withdrawn => MonitoringState::Withdrawn,
        }
    }

    /// Whether the consent dialog should be offered: only when no decision about this notice
    /// exists. A withdrawal is a decision and is respected: the dialog does not come back
    /// unless the notice changes or the user asks for it.
    pub fn needs_prompt(self) -> bool {
        matches!(self, Standing::Undecided { .. })
    }
}

/// What the decision on file means for `notice_sha256`. A pause whose time has
/// passed still reads as paused here: [`expire`] turns it into a recorded resumption, so the
/// verifier hears about it.
pub fn evaluate(file: Option<&ConsentFile>, notice_sha256: &str) -> Standing {
    let Some(f) = file else {
        return Standing::Undecided {
            notice_changed: false,
        };
    };
    if f.notice_sha256 != notice_sha256 {
        return Standing::Undecided {
            notice_changed: true,
        };
    }
    match f.decision {
        Decision::Granted | Decision::Resumed => Standing::Monitoring,
        Decision::Withdrawn => Standing::Withdrawn,
        // A pause file without an end (hand-edited, damaged) ends now rather than never, and
        // none lasts longer than a pause can.
        Decision::Paused => Standing::Paused {
            until_ms: f
                .until_ms
                .unwrap_or(0)
                .min(f.at_ms.saturating_add(PAUSE.as_millis() as u64)),
        },
    }
}

/// Something the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// "Allow" in the dialog, or `consent grant`.
    Grant,
    /// "Withdraw consent" in the tray, or `consent withdraw`.
    Withdraw,
    /// "Pause for 30 minutes".
    Pause,
    /// End a pause early.
    Resume,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The organization's policy does not offer pausing (`[policy] allow_pause = false`).
    #[error("your organization's policy does not allow pausing monitoring")]
    PauseNotAllowed,
    /// Pausing needs monitoring to be running (granted, not paused or withdrawn).
    #[error("monitoring is not running, so there is nothing to pause")]
    NotMonitoring,
    /// Resuming needs a pause.
    #[error("monitoring is not paused")]
    NotPaused,
}

/// The decision a request makes, to be stored and sealed for the verifier; `Ok(None)` when
/// the request changes nothing (granting what is already granted).
pub fn decide(
    file: Option<&ConsentFile>,
    request: Request,
    notice_sha256: &str,
    policy: Policy,
    now_ms: u64,
    os_user: &str,
) -> Result<Option<ConsentFile>, Refused> {
    let standing = evaluate(file, notice_sha256);
    let record = |decision: Decision, until_ms: Option<u64>| ConsentFile {
        decision,
        notice_sha256: notice_sha256.to_owned(),
        at_ms: now_ms,
        os_user: os_user.to_owned(),
        until_ms,
    };
    match request {
        Request::Grant => Ok(match standing {
            Standing::Monitoring => None,
            _ => Some(record(Decision::Granted, None)),
        }),
        Request::Withdraw => Ok(match standing {
            Standing::Withdrawn => None,
            _ => Some(record(Decision::Withdrawn, None)),
        }),
        Request::Pause => {
            if !policy.allow_pause {
                return Err(Refused::PauseNotAllowed);
            }
            if standing != Standing::Monitoring {
                return Err(Refused::NotMonitoring);
            }
            let until = now_ms.saturating_add(PAUSE.as_millis() as u64);
            Ok(Some(record(Decision::Paused, Some(until))))
        }
        Request::Resume => match standing {
            Standing::Paused { .. } => Ok(Some(record(Decision::Resumed, None))),
            _ => Err(Refused::NotPaused),
        },
    }
}

/// The resumption a pause calls for: one that has run out (at most [`PAUSE`] after it was
/// made), or one the organization's `policy` does not allow (at once).
pub fn expire(
    file: Option<&ConsentFile>,
    notice_sha256: &str,
    policy: Policy,
    now_ms: u64,
) -> Option<ConsentFile> {
    match evaluate(file, notice_sha256) {
        Standing::Paused { until_ms } if now_ms >= until_ms || !policy.allow_pause => {
            Some(ConsentFile {
                decision: Decision::Resumed,
                notice_sha256: notice_sha256.to_owned(),
                at_ms: now_ms,
                os_user: file.map(|f| f.os_user.clone()).unwrap_or_default(),
                until_ms: None,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::notice_hash;

    const T0: u64 = 1_800_000_000_000;
    const MIN: u64 = 60_000;

    fn allow_pause() -> Policy {
        Policy {
            allow_pause: true,
            allow_quit: false,
        }
    }

    /// Applies a request and returns the new file (the old one when nothing changed).
    fn step(
        file: Option<ConsentFile>,
        r: Request,
        notice: &str,
        now: u64,
    ) -> Result<Option<ConsentFile>, Refused> {
        let d = decide(file.as_ref(), r, notice, allow_pause(), now, "alice")?;
        Ok(d.or(file))
    }

    #[test]
    fn nothing_is_captured_before_an_explicit_grant() {
        let n = notice_hash("notice A");
        let s = evaluate(None, &n);
        assert_eq!(
            s,
            Standing::Undecided {
                notice_changed: false
            }
        );
        assert!(!s.allows_capture() && s.needs_prompt());
        assert_eq!(s.monitoring_state(), MonitoringState::WaitingForConsent);
        let f = step(None, Request::Grant, &n, T0).unwrap();
        let s = evaluate(f.as_ref(), &n);
        assert!(s.allows_capture() && !s.needs_prompt());
        assert_eq!(f.unwrap().decision, Decision::Granted);
    }

    #[test]
    fn a_notice_change_forces_a_new_prompt() {
        let a = notice_hash("notice A");
        let b = notice_hash("notice B");
        let granted = step(None, Request::Grant, &a, T0).unwrap();
        let s = evaluate(granted.as_ref(), &b);
        assert_eq!(
            s,
            Standing::Undecided {
                notice_changed: true
            }
        );
        assert!(s.needs_prompt() && !s.allows_capture());
        // A withdrawal under the old notice is no answer about the new one either.
        let withdrawn = step(granted.clone(), Request::Withdraw, &a, T0 + 1).unwrap();
        assert!(evaluate(withdrawn.as_ref(), &b).needs_prompt());
        // Nor is a pause: it does not carry capture over to a new notice.
        let paused = step(granted, Request::Pause, &a, T0 + 2).unwrap();
        assert!(!evaluate(paused.as_ref(), &b).allows_capture());
        assert_eq!(
            expire(paused.as_ref(), &b, allow_pause(), T0 + 60 * MIN),
            None
        );
        // Granting the new notice records its hash.
        let regranted = step(paused, Request::Grant, &b, T0 + 3).unwrap();
        assert_eq!(regranted.as_ref().unwrap().notice_sha256, b);
        assert!(evaluate(regranted.as_ref(), &b).allows_capture());
    }

    #[test]
    fn a_pause_lasts_thirty_minutes_then_resumes_by_itself() {
        let n = notice_hash("n");
        let granted = step(None, Request::Grant, &n, T0).unwrap();
        let paused = step(granted, Request::Pause, &n, T0 + MIN).unwrap();
        let until = T0 + MIN + 30 * MIN;
        assert_eq!(
            evaluate(paused.as_ref(), &n),
            Standing::Paused { until_ms: until }
        );
        assert_eq!(paused.as_ref().unwrap().until_ms, Some(until));
        assert!(!evaluate(paused.as_ref(), &n).allows_capture());
        assert_eq!(
            expire(paused.as_ref(), &n, allow_pause(), until - 1),
            None,
            "not yet"
        );
        let resumed = expire(paused.as_ref(), &n, allow_pause(), until).unwrap();
        assert_eq!(resumed.decision, Decision::Resumed);
        assert_eq!(resumed.at_ms, until);
        assert_eq!(resumed.os_user, "alice");
        assert!(evaluate(Some(&resumed), &n).allows_capture());
        // Resuming early is a decision of its own.
        let early = step(paused, Request::Resume, &n, T0 + 2 * MIN).unwrap();
        assert_eq!(early.as_ref().unwrap().decision, Decision::Resumed);
        assert!(evaluate(early.as_ref(), &n).allows_capture());
    }

    #[test]
    fn withdrawing_while_paused_wins_over_the_pause_ending() {
        let n = notice_hash("n");
        let granted = step(None, Request::Grant, &n, T0).unwrap();
        let paused = step(granted, Request::Pause, &n, T0 + MIN).unwrap();
        let withdrawn = step(paused, Request::Withdraw, &n, T0 + 2 * MIN).unwrap();
        assert_eq!(evaluate(withdrawn.as_ref(), &n), Standing::Withdrawn);
        assert_eq!(
            expire(withdrawn.as_ref(), &n, allow_pause(), T0 + 120 * MIN),
            None,
            "a withdrawal never resumes by itself"
        );
        assert!(!evaluate(withdrawn.as_ref(), &n).needs_prompt());
        assert_eq!(
            step(withdrawn.clone(), Request::Resume, &n, T0 + 3 * MIN),
            Err(Refused::NotPaused)
        );
        assert_eq!(
            step(withdrawn, Request::Pause, &n, T0 + 3 * MIN),
            Err(Refused::NotMonitoring)
        );
    }

    #[test]
    fn policy_can_forbid_pausing_but_never_withdrawing() {
        let n = notice_hash("n");
        let no_pause = Policy {
            allow_pause: false,
            allow_quit: false,
        };
        let granted = decide(None, Request::Grant, &n, no_pause, T0, "bob").unwrap();
        assert_eq!(
            decide(
                granted.as_ref(),
                Request::Pause,
                &n,
                no_pause,
                T0 + 1,
                "bob"
            ),
            Err(Refused::PauseNotAllowed)
        );
        let w = decide(
            granted.as_ref(),
            Request::Withdraw,
            &n,
            no_pause,
            T0 + 2,
            "bob",
        )
        .unwrap()
        .unwrap();
        assert_eq!(w.decision, Decision::Withdrawn);
    }

    #[test]
    fn repeating_a_decision_records_nothing_new() {
        let n = notice_hash("n");
        let granted = step(None, Request::Grant, &n, T0).unwrap();
        let p = allow_pause();
        assert_eq!(
            decide(granted.as_ref(), Request::Grant, &n, p, T0 + 1, "a"),
            Ok(None)
        );
        let w = step(granted, Request::Withdraw, &n, T0 + 2).unwrap();
        assert_eq!(
            decide(w.as_ref(), Request::Withdraw, &n, p, T0 + 3, "a"),
            Ok(None)
        );
        // A grant after a withdrawal is new.
        assert!(
            decide(w.as_ref(), Request::Grant, &n, p, T0 + 4, "a")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_pause_never_lasts_longer_than_a_pause_can() {
        let n = notice_hash("n");
        // Hand-edited to end in a year.
        let forged = ConsentFile {
            decision: Decision::Paused,
            notice_sha256: n.clone(),
            at_ms: T0,
            os_user: "a".into(),
            until_ms: Some(T0 + 365 * 24 * 60 * MIN),
        };
        let cap = T0 + 30 * MIN;
        assert_eq!(
            evaluate(Some(&forged), &n),
            Standing::Paused { until_ms: cap }
        );
        assert_eq!(expire(Some(&forged), &n, allow_pause(), cap - 1), None);
        let resumed = expire(Some(&forged), &n, allow_pause(), cap).unwrap();
        assert_eq!(resumed.decision, Decision::Resumed);
        assert!(evaluate(Some(&resumed), &n).allows_capture());
        // A shorter pause keeps its own end.
        let short = ConsentFile {
            until_ms: Some(T0 + MIN),
            ..forged
        };
        assert_eq!(
            evaluate(Some(&short), &n),
            Standing::Paused { until_ms: T0 + MIN }
        );
    }

    #[test]
    fn a_pause_the_policy_in_force_forbids_ends_at_once() {
        let n = notice_hash("n");
        let granted = step(None, Request::Grant, &n, T0).unwrap();
        // Paused while the organization allowed it...
        let paused = step(granted, Request::Pause, &n, T0 + MIN).unwrap();
        assert_eq!(
            expire(paused.as_ref(), &n, allow_pause(), T0 + 2 * MIN),
            None
        );
        // ...which it no longer does: the pause ends now, recorded as a resumption.
        let no_pause = Policy {
            allow_pause: false,
            allow_quit: false,
        };
        let ended = expire(paused.as_ref(), &n, no_pause, T0 + 2 * MIN).unwrap();
        assert_eq!(ended.decision, Decision::Resumed);
        assert_eq!(ended.at_ms, T0 + 2 * MIN);
        assert!(evaluate(Some(&ended), &n).allows_capture());
        // Nothing else is touched by the policy: a withdrawal stays one.
        let withdrawn = step(paused, Request::Withdraw, &n, T0 + 3 * MIN).unwrap();
        assert_eq!(expire(withdrawn.as_ref(), &n, no_pause, T0 + 4 * MIN), None);
    }

    #[test]
    fn a_pause_without_an_end_ends_at_once() {
        let n = notice_hash("n");
        let damaged = ConsentFile {
            decision: Decision::Paused,
            notice_sha256: n.clone(),
            at_ms: T0,
            os_user: "a".into(),
            until_ms: None,
        };
        assert!(expire(Some(&damaged), &n, allow_pause(), T0).is_some());
    }
}
