//! Coarse key classes and the per-code-space tables that assign them.
//!
//! A [`KeyClass`] is the only thing about a key that leaves capture. The tables map a code
//! space's *physical* key codes (Linux evdev, X11, JavaScript's `keyCode` in recorded data)
//! to a class without consulting any keyboard layout: a layout query would already be a step
//! towards characters. Every letter, digit and punctuation key is one class, `character`, so
//! which letter was typed cannot be told from the class.

use serde::Serialize;

/// The coarse class of a key: the only key information past capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyClass {
    /// Letters, digits, punctuation, keypad digits and operators.
    Character,
    /// The space bar.
    Space,
    /// Backspace and Delete.
    Correction,
    /// Enter / Return, including the keypad's.
    Enter,
    /// Shift, Control, Alt, AltGr, Super/Meta/Command, Caps Lock.
    Modifier,
    /// Arrows, Home, End, Page Up/Down, Insert.
    Navigation,
    /// Everything else: Tab, Escape, function keys, media keys, unknown codes.
    Other,
}

impl KeyClass {
    /// All classes, in a fixed order.
    pub const ALL: [KeyClass; 7] = [
        KeyClass::Character,
        KeyClass::Space,
        KeyClass::Correction,
        KeyClass::Enter,
        KeyClass::Modifier,
        KeyClass::Navigation,
        KeyClass::Other,
    ];
}

/// Class of a Linux evdev key code (`KEY_*` in `linux/input-event-codes.h`).
pub fn from_evdev(code: u16) -> KeyClass {
    use KeyClass::*;
    match code {
        // 1 ESC, 15 TAB, 59..=68 F1-F10, 87/88 F11/F12 fall through to Other.
        2..=13 => Character,     // 1 2 3 4 5 6 7 8 9 0 - =
        14 => Correction,        // BACKSPACE
        16..=27 => Character,    // Q W E R T Y U I O P [ ]
        28 => Enter,             // ENTER
        29 | 97 => Modifier,     // LEFTCTRL RIGHTCTRL
        30..=41 => Character,    // A S D F G H J K L ; ' `
        42 | 54 => Modifier,     // LEFTSHIFT RIGHTSHIFT
        43..=53 => Character,    // \ Z X C V B N M , . /
        55 => Character,         // KPASTERISK
        56 | 100 => Modifier,    // LEFTALT RIGHTALT (AltGr)
        57 => Space,             // SPACE
        58 => Modifier,          // CAPSLOCK
        71..=83 => Character,    // keypad digits, -, +, .
        86 => Character,         // 102ND (< > on ISO keyboards)
        96 => Enter,             // KPENTER
        98 => Character,         // KPSLASH
        102..=110 => Navigation, // HOME UP PAGEUP LEFT RIGHT END DOWN PAGEDOWN INSERT
        111 => Correction,       // DELETE
        117 | 121 => Character,  // KPEQUAL KPCOMMA
        125..=127 => Modifier,   // LEFTMETA RIGHTMETA COMPOSE
        _ => Other,
    }
}

/// Class of an X11 key code. X servers with the standard `evdev` driver and keymap (every
/// current Xorg, Xwayland and Xvfb) number keys as the evdev code plus 8.
pub fn from_x11(keycode: u8) -> KeyClass {
    match keycode.checked_sub(8) {
        Some(code) => from_evdev(u16::from(code)),
        None => KeyClass::Other,
    }
}

/// Class of a JavaScript `KeyboardEvent.keyCode`, as recorded in browser-collected datasets.
pub fn from_javascript(code: u32) -> KeyClass {
    use KeyClass::*;
    match code {
        8 | 46 => Correction, // Backspace, Delete
        13 => Enter,
        16..=18 | 20 | 91..=93 | 224 | 225 => Modifier, // Shift Ctrl Alt CapsLock Meta OS AltGr
        32 => Space,
        33..=40 | 45 => Navigation, // PgUp PgDn End Home arrows Insert
        48..=57 | 65..=90 => Character, // digits, letters
        96..=111 => Character,      // keypad digits and operators
        59 | 61 | 173 | 186..=192 | 219..=223 | 226 => Character, // punctuation (browser variants)
        _ => Other,                 // Tab, Esc, F-keys, 229 (IME) and others
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // (name, evdev code, JavaScript keyCode, class) for the keys every table must agree on.
    const SHARED: &[(&str, u16, u32, KeyClass)] = &[
        ("a", 30, 65, KeyClass::Character),
        ("z", 44, 90, KeyClass::Character),
        ("q", 16, 81, KeyClass::Character),
        ("m", 50, 77, KeyClass::Character),
        ("1", 2, 49, KeyClass::Character),
        ("0", 11, 48, KeyClass::Character),
        ("comma", 51, 188, KeyClass::Character),
        ("period", 52, 190, KeyClass::Character),
        ("space", 57, 32, KeyClass::Space),
        ("backspace", 14, 8, KeyClass::Correction),
        ("delete", 111, 46, KeyClass::Correction),
        ("enter", 28, 13, KeyClass::Enter),
        ("left shift", 42, 16, KeyClass::Modifier),
        ("right shift", 54, 16, KeyClass::Modifier),
        ("left ctrl", 29, 17, KeyClass::Modifier),
        ("left alt", 56, 18, KeyClass::Modifier),
        ("caps lock", 58, 20, KeyClass::Modifier),
        ("left meta", 125, 91, KeyClass::Modifier),
        ("left", 105, 37, KeyClass::Navigation),
        ("up", 103, 38, KeyClass::Navigation),
        ("home", 102, 36, KeyClass::Navigation),
        ("page down", 109, 34, KeyClass::Navigation),
        ("tab", 15, 9, KeyClass::Other),
        ("escape", 1, 27, KeyClass::Other),
        ("f5", 63, 116, KeyClass::Other),
    ];

    #[test]
    fn every_code_space_agrees_on_the_shared_keys() {
        for &(name, evdev, js, class) in SHARED {
            assert_eq!(from_evdev(evdev), class, "evdev {name}");
            assert_eq!(from_x11(evdev as u8 + 8), class, "x11 {name}");
            assert_eq!(from_javascript(js), class, "javascript {name}");
        }
    }

    #[test]
    fn all_letters_and_digits_are_one_class() {
        for js in (65..=90).chain(48..=57) {
            assert_eq!(from_javascript(js), KeyClass::Character);
        }
        for evdev in (16..=25).chain(30..=38).chain(44..=50).chain(2..=11) {
            assert_eq!(from_evdev(evdev), KeyClass::Character, "{evdev}");
        }
    }
}
