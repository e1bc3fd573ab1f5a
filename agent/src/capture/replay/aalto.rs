//! Reader for the Aalto "136M Keystrokes" files.
//!
//! Format: tab-separated, one header line, then one keystroke per line:
//!
//! | column | used | how |
//! |---|---|---|
//! | `PARTICIPANT_ID` | yes | the recording's subject |
//! | `TEST_SECTION_ID` | yes | segment id (one sentence) |
//! | `SENTENCE`, `USER_INPUT` | **no** | never read: they are text |
//! | `KEYSTROKE_ID` | no | |
//! | `PRESS_TIME`, `RELEASE_TIME` | yes | epoch milliseconds (browser clock) |
//! | `LETTER` | **no** | never read: it is the typed character |
//! | `KEYCODE` | yes | JavaScript key code, mapped to a [`KeyClass`](crate::capture::KeyClass) here and dropped |
//!
//! A line with the wrong number of columns, a time or key code that does not parse, or a
//! release before its press is reported and skipped.

use std::path::Path;

use super::{BadLine, Diagnostics, Item, Recording, ReplayError};
use crate::capture::{EventKind, InputEvent, keyclass};

const HEADER: &str = "PARTICIPANT_ID\tTEST_SECTION_ID\t";

/// One keystroke, after the key code has been reduced to its class.
struct Stroke {
    press_us: u64,
    release_us: u64,
    class: keyclass::KeyClass,
    segment: usize,
}

/// Parses one participant's file.
pub fn parse(text: &str, path: &Path) -> Result<(Recording, Diagnostics), ReplayError> {
    let mut lines = text.lines();
    if lines.next().is_none_or(|h| !h.starts_with(HEADER)) {
        return Err(ReplayError::Header {
            path: path.to_owned(),
            format: "aalto",
        });
    }
    let mut diag = Diagnostics::default();
    let mut rec = Recording::default();
    let mut strokes = Vec::new();
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 9 {
            diag.bad_lines.push(BadLine {
                line: n,
                reason: format!("{} columns, expected 9", cols.len()),
            });
            continue;
        }
        // Columns 2, 3 and 7 hold text and are deliberately not looked at.
        let (press, release, code) = (
            cols[5].parse::<u64>(),
            cols[6].parse::<u64>(),
            cols[8].parse::<u32>(),
        );
        let (Ok(press), Ok(release), Ok(code)) = (press, release, code) else {
            diag.bad_lines.push(BadLine {
                line: n,
                reason: "time or key code is not a number".into(),
            });
            continue;
        };
        if release < press {
            diag.bad_lines.push(BadLine {
                line: n,
                reason: "release before press".into(),
            });
            continue;
        }
        if rec.subject.is_empty() {
            rec.subject = cols[0].to_owned();
        }
        let segment = match rec.segments.iter().position(|s| s == cols[1]) {
            Some(s) => s,
            None => {
                rec.segments.push(cols[1].to_owned());
                rec.segments.len() - 1
            }
        };
        strokes.push(Stroke {
            press_us: press * 1000,
            release_us: release * 1000,
            class: keyclass::from_javascript(code),
            segment,
        });
    }
    rec.session = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches("_keystrokes.txt").to_owned())
        .unwrap_or_default();
    strokes.sort_by_key(|s| s.press_us);

    // Events in time order. At equal times a release goes before a press (no overlap is
    // invented), except a key's own release, which never precedes its press.
    let mut events: Vec<(u64, u8, usize, Item)> = Vec::with_capacity(strokes.len() * 2 + 16);
    let mut segment = None;
    for (idx, s) in strokes.iter().enumerate() {
        if segment != Some(s.segment) {
            segment = Some(s.segment);
            events.push((s.press_us, 0, idx, Item::Segment(s.segment)));
        }
        let down = InputEvent {
            t_us: s.press_us,
            kind: EventKind::KeyDown { class: s.class },
            injected: false,
        };
        let held_us = s.release_us - s.press_us;
        let up = InputEvent {
            t_us: s.release_us,
            kind: EventKind::KeyUp {
                class: s.class,
                held_us,
            },
            injected: false,
        };
        events.push((s.press_us, 2, idx, Item::Event(down)));
        events.push((
            s.release_us,
            if held_us == 0 { 3 } else { 1 },
            idx,
            Item::Event(up),
        ));
    }
    events.sort_by_key(|&(t, order, idx, _)| (t, order, idx));
    rec.items = events.into_iter().map(|(_, _, _, item)| item).collect();
    Ok((rec, diag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::KeyClass;

    const SAMPLE: &str = "PARTICIPANT_ID\tTEST_SECTION_ID\tSENTENCE\tUSER_INPUT\tKEYSTROKE_ID\tPRESS_TIME\tRELEASE_TIME\tLETTER\tKEYCODE
7\t100\tHi there\tHi there\t1\t1000\t1090\tSHIFT\t16
7\t100\tHi there\tHi there\t2\t1050\t1120\tH\t72
7\t100\tHi there\tHi there\t3\t1200\t1280\ti\t73
7\t100\tbroken line
7\t100\tHi there\tHi there\t4\t1400\t1300\t \t32
7\t101\tOk\tOk\t5\t5000\t5080\tO\tx
7\t101\tOk\tOk\t6\t5100\t5180\tO\t79
";

    #[test]
    fn parses_classes_pairs_and_segments_and_reports_bad_lines() {
        let (rec, diag) = parse(SAMPLE, Path::new("7_keystrokes.txt")).unwrap();
        assert_eq!(rec.subject, "7");
        assert_eq!(rec.session, "7");
        assert_eq!(rec.segments, ["100", "101"]);
        let lines: Vec<usize> = diag.bad_lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, [5, 6, 7]);
        let kinds: Vec<Item> = rec.items.clone();
        assert_eq!(kinds[0], Item::Segment(0));
        assert_eq!(
            kinds[1],
            Item::Event(InputEvent {
                t_us: 1_000_000,
                kind: EventKind::KeyDown {
                    class: KeyClass::Modifier
                },
                injected: false
            })
        );
        assert!(kinds.contains(&Item::Segment(1)));
        assert_eq!(rec.events(), 8);
    }

    #[test]
    fn rejects_a_file_of_another_format() {
        assert!(parse("record timestamp,client timestamp\n", Path::new("x")).is_err());
    }
}
