//! macOS Secure Event Input (a password field has focus) hides keys from the agent. The
//! marks the event-tap translation emits make that stretch a keyboard gap, exactly like any
//! other gap in the input, so the hidden stretch is never measured as a long pause of the
//! user's typing; without the marks, it would be.

use cadence_agent::capture::hook::Translate;
use cadence_agent::capture::mac_translate::{
    KEY_DOWN, KEY_UP, SOURCE_STATE_HID_SYSTEM, TapData, TapEvent, TapRecord, TapTranslator,
};
use cadence_agent::capture::{EventKind, InputEvent};
use cadence_agent::features::Windower;
use cadence_config::WindowPolicy;

/// Key presses 150 ms apart, held 70 ms, from `t_ms`; key codes cycle through letters.
fn typing(out: &mut Vec<TapData>, t_ms: u64, n: u64) {
    for i in 0..n {
        let t = t_ms + i * 150;
        let keycode = [0x00u16, 0x01, 0x02, 0x03, 0x04][i as usize % 5];
        for (dt, kind) in [(0, KEY_DOWN), (70, KEY_UP)] {
            out.push(TapData::Event(TapEvent {
                kind,
                keycode,
                timestamp_ns: (t + dt) * 1_000_000,
                source_state: SOURCE_STATE_HID_SYSTEM,
                ..TapEvent::default()
            }));
        }
    }
}

fn events(records: &[TapData]) -> Vec<InputEvent> {
    let mut t = TapTranslator::new();
    let mut out = Vec::new();
    let mut last_ms = 0;
    for &data in records {
        if let TapData::Event(e) = data {
            last_ms = e.timestamp_ns / 1_000_000;
        }
        let record = TapRecord {
            arrival_us: (last_ms + 1) * 1000,
            data,
        };
        t.translate(record, &mut |e| out.push(e));
    }
    out
}

fn window(events: &[InputEvent]) -> String {
    let policy = WindowPolicy {
        window_us: Some(600_000_000),
        min_keys: 20,
        min_mouse: 20,
        ..WindowPolicy::default()
    };
    let mut w = Windower::new(policy);
    let mut out: Vec<String> = events
        .iter()
        .filter_map(|e| w.push(e))
        .map(|v| serde_json::to_string(&v.keyboard).unwrap_or_default())
        .collect();
    out.extend(
        w.close()
            .map(|v| serde_json::to_string(&v.keyboard).unwrap_or_default()),
    );
    assert_eq!(out.len(), 1, "one window: {out:?}");
    out.remove(0)
}

#[test]
fn secure_input_is_a_keyboard_gap_never_a_pause() {
    // 40 keys, a password field for 8 s (its keys never reach the agent), 40 more keys.
    let mut marked = Vec::new();
    typing(&mut marked, 1_000, 40);
    marked.push(TapData::SecureInput(true));
    marked.push(TapData::SecureInput(false));
    typing(&mut marked, 15_000, 40);
    let with_marks = events(&marked);
    assert_eq!(
        with_marks
            .iter()
            .filter(|e| matches!(e.kind, EventKind::SecureInput { .. }))
            .count(),
        2
    );

    // The same input with a plain gap where the marks are.
    let as_gap: Vec<InputEvent> = with_marks
        .iter()
        .map(|e| match e.kind {
            EventKind::SecureInput { .. } => InputEvent {
                kind: EventKind::Gap,
                ..*e
            },
            _ => *e,
        })
        .collect();
    // The same input with nothing marked: the hidden stretch looks like the user paused.
    let unmarked: Vec<InputEvent> = with_marks
        .iter()
        .copied()
        .filter(|e| !matches!(e.kind, EventKind::SecureInput { .. }))
        .collect();

    assert_eq!(window(&with_marks), window(&as_gap));
    assert_ne!(window(&with_marks), window(&unmarked));
}
