//! Reader for Balabit Mouse Dynamics Challenge session files.
//!
//! Format: CSV with a header `record timestamp,client timestamp,button,state,x,y`, one pointer
//! event per line:
//!
//! | column | used | how |
//! |---|---|---|
//! | `record timestamp` | no | batched by the recording device, so useless for intervals |
//! | `client timestamp` | yes | seconds since the session start, from the RDP client |
//! | `button` | yes | `NoButton`, `Left`, `Right`, `Middle`, `Scroll` |
//! | `state` | yes | `Move`, `Drag`, `Pressed`, `Released`, `Up`, `Down` (scroll) |
//! | `x`, `y` | inside only | absolute screen position, turned into deltas here and dropped; 65535 means "no position" |
//!
//! A client timestamp that goes backwards is held at the previous time and counted. The
//! session's user comes from the directory name (`user7`), and the split from the directory
//! above it (`training_files` / `test_files`).

use std::path::Path;

use super::{BadLine, Diagnostics, Item, Recording, ReplayError};
use crate::capture::{Button, EventKind, InputEvent, PressTable, ScrollDirection};

const HEADER: &str = "record timestamp,client timestamp,button,state,x,y";
/// The dataset's marker for an event without a position.
const NO_POSITION: i64 = 65535;

/// Parses one session file.
pub fn parse(text: &str, path: &Path) -> Result<(Recording, Diagnostics), ReplayError> {
    let mut lines = text.lines();
    if lines.next().is_none_or(|h| h.trim() != HEADER) {
        return Err(ReplayError::Header {
            path: path.to_owned(),
            format: "balabit",
        });
    }
    let mut rec = Recording {
        session: file_name(path),
        subject: path.parent().map(file_name).unwrap_or_default(),
        ..Recording::default()
    };
    rec.split = path
        .parent()
        .and_then(Path::parent)
        .map(file_name)
        .and_then(|d| match d.as_str() {
            "training_files" => Some("training".to_owned()),
            "test_files" => Some("test".to_owned()),
            _ => None,
        });
    let mut diag = Diagnostics::default();
    let mut buttons = PressTable::new(4);
    let mut pos: Option<(i64, i64)> = None;
    let mut last_t: u64 = 0;
    let push = |items: &mut Vec<Item>, t_us: u64, kind: EventKind| {
        items.push(Item::Event(InputEvent {
            t_us,
            kind,
            injected: false,
        }));
    };
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != 6 {
            diag.bad_lines.push(BadLine {
                line: n,
                reason: format!("{} columns, expected 6", cols.len()),
            });
            continue;
        }
        let (Ok(secs), Ok(x), Ok(y)) = (
            cols[1].trim().parse::<f64>(),
            cols[4].trim().parse::<i64>(),
            cols[5].trim().parse::<i64>(),
        ) else {
            diag.bad_lines.push(BadLine {
                line: n,
                reason: "timestamp or position is not a number".into(),
            });
            continue;
        };
        if !secs.is_finite() || secs < 0.0 {
            diag.bad_lines.push(BadLine {
                line: n,
                reason: "timestamp out of range".into(),
            });
            continue;
        }
        let mut t = (secs * 1e6).round() as u64;
        if t < last_t {
            diag.clamped += 1;
            t = last_t;
        }
        last_t = t;
        let has_pos = x != NO_POSITION && y != NO_POSITION;
        if !has_pos {
            diag.sentinel += 1;
        }
        let (button, state) = (cols[2].trim(), cols[3].trim());
        // Motion first: a press or release reported at a new position implies a move there.
        if has_pos {
            if let Some((px, py)) = pos
                && (px, py) != (x, y)
            {
                let (dx, dy) = (clamp_i32(x - px), clamp_i32(y - py));
                push(&mut rec.items, t, EventKind::PointerMove { dx, dy });
            }
            pos = Some((x, y));
        }
        let which = match button {
            "Left" => Some(Button::Left),
            "Right" => Some(Button::Right),
            "Middle" => Some(Button::Middle),
            "NoButton" | "Scroll" => None,
            _ => Some(Button::Other),
        };
        match (button, state, which) {
            (_, "Move" | "Drag", _) => {}
            ("Scroll", "Up", _) => push(
                &mut rec.items,
                t,
                EventKind::Scroll {
                    direction: ScrollDirection::Up,
                },
            ),
            ("Scroll", "Down", _) => push(
                &mut rec.items,
                t,
                EventKind::Scroll {
                    direction: ScrollDirection::Down,
                },
            ),
            (_, "Pressed", Some(b)) => {
                if buttons.press(b.index(), t) {
                    push(&mut rec.items, t, EventKind::ButtonDown { button: b });
                }
            }
            (_, "Released", Some(b)) => {
                if let Some(held_us) = buttons.release(b.index(), t) {
                    push(
                        &mut rec.items,
                        t,
                        EventKind::ButtonUp { button: b, held_us },
                    );
                }
            }
            _ => diag.bad_lines.push(BadLine {
                line: n,
                reason: format!("unknown event {button}/{state}"),
            }),
        }
    }
    Ok((rec, diag))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned()
}

fn clamp_i32(v: i64) -> i32 {
    v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "record timestamp,client timestamp,button,state,x,y
0.0,0.0,NoButton,Move,100,200
0.0,0.016,NoButton,Move,103,196
0.0,0.032,NoButton,Move,65535,65535
0.1,0.030,Left,Pressed,103,196
0.1,0.140,Left,Released,103,196
0.2,0.2,Scroll,Down,103,196
0.2,abc,NoButton,Move,1,1
0.3,0.3,NoButton,Move,100
";

    #[test]
    fn deltas_not_positions_sentinels_and_backwards_time() {
        let path = Path::new("/d/balabit/test_files/user7/session_42");
        let (rec, diag) = parse(SAMPLE, path).unwrap();
        assert_eq!(
            (rec.subject.as_str(), rec.session.as_str()),
            ("user7", "session_42")
        );
        assert_eq!(rec.split.as_deref(), Some("test"));
        assert_eq!(diag.sentinel, 1);
        assert_eq!(diag.clamped, 1, "0.030 after 0.032 is held at 0.032");
        assert_eq!(
            diag.bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(),
            [8, 9]
        );
        let kinds: Vec<EventKind> = rec
            .items
            .iter()
            .filter_map(|i| {
                if let Item::Event(e) = i {
                    Some(e.kind)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            kinds,
            [
                EventKind::PointerMove { dx: 3, dy: -4 },
                EventKind::ButtonDown {
                    button: Button::Left
                },
                EventKind::ButtonUp {
                    button: Button::Left,
                    held_us: 108_000
                },
                EventKind::Scroll {
                    direction: ScrollDirection::Down
                },
            ]
        );
    }
}
