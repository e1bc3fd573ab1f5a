//! A Windows key event flagged `LLKHF_INJECTED` reaches the injection guard: hook records as
//! the hook procedures make them go through the hook queue, the Windows translation and the
//! capture queue into `Guard`, the path the Windows backend uses. Runs on every OS: only the
//! few lines that install the hooks are Windows-only.

use cadence_agent::capture::hook::{self, Forwarded};
use cadence_agent::capture::win_translate::{
    HookData, HookRecord, HookTranslator, LLKHF_INJECTED, WM_KEYDOWN, WM_KEYUP,
};
use cadence_agent::capture::{Recv, StopFlag, queue};
use cadence_agent::guard::{Guard, GuardAlert};

/// Human-paced typing (180 ms between presses, 90 ms holds): only the OS flag can tell it
/// apart, so an alert proves the flag made it through.
fn typing(flags: u32) -> Vec<HookRecord> {
    let letters = [
        0x48u32, 0x45, 0x4C, 0x4C, 0x4F, 0x20, 0x57, 0x4F, 0x52, 0x4C, 0x44,
    ];
    let mut out = Vec::new();
    for i in 0..40u64 {
        let vk = letters[i as usize % letters.len()];
        let t = 1_000_000 + i * 180_000;
        for (dt, message) in [(0, WM_KEYDOWN), (90_000, WM_KEYUP)] {
            out.push(HookRecord {
                t_us: t + dt,
                data: HookData::Key {
                    message,
                    vk,
                    flags: if message == WM_KEYUP {
                        flags | 0x80
                    } else {
                        flags
                    },
                },
            });
        }
    }
    out
}

fn alerts(records: Vec<HookRecord>) -> Vec<GuardAlert> {
    let (tx, rx) = hook::hook_queue(1024);
    for r in records {
        assert!(tx.offer(r));
    }
    drop(tx);
    let (mut sink, events) = queue(1024);
    let ended = hook::forward(&rx, &mut HookTranslator::new(), &mut sink, &StopFlag::new());
    assert_eq!(ended, Forwarded::SourceEnded);
    drop(sink);
    let mut guard = Guard::new();
    let mut alerts = Vec::new();
    let mut presses = 0;
    while let Recv::Event(ev) = events.recv(None) {
        if matches!(ev.kind, cadence_agent::capture::EventKind::KeyDown { .. }) {
            presses += 1;
        }
        alerts.extend(guard.push(&ev));
    }
    assert_eq!(presses, 40, "every press made it through");
    alerts
}

#[test]
fn an_injected_windows_key_event_reaches_the_guard() {
    let got = alerts(typing(LLKHF_INJECTED));
    assert!(!got.is_empty(), "no alert for OS-flagged typing");
    assert_eq!(got[0].rule, "os_flagged");
    assert!(got[0].os_flagged > got[0].keys / 2, "{:?}", got[0]);
}

#[test]
fn the_same_typing_without_the_flag_is_not_an_alert() {
    assert!(alerts(typing(0)).is_empty());
}
