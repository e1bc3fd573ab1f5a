//! Coarse key classes and the per-code-space tables that assign them.
//!
//! A [`KeyClass`] is the only thing about a key that leaves capture. The tables map a code
//! space's key codes (Linux evdev, X11, Windows virtual-key codes, macOS `kVK_*` codes,
//! JavaScript's `keyCode` in recorded data) to a class without consulting any keyboard layout:
//! a layout query would already be a step towards characters. Every letter, digit and
//! punctuation key is one class, `character`, so which letter was typed cannot be told from the
//! class; and since all of them share that class, a layout that moves letters and digits around
//! (AZERTY's virtual-key codes follow the layout) changes nothing here.

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
        89 | 124 => Character,   // RO YEN (JIS keyboards)
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

/// Class of a Windows virtual-key code (`VK_*`, as `KBDLLHOOKSTRUCT.vkCode` carries it).
///
/// Only the code is read: never the scan code (for `VK_PACKET`, input injected as text, the
/// scan code field *is* a character), and no `MapVirtualKey`/`ToUnicode` call is needed or made.
/// The keypad with Num Lock off reports navigation codes, and is classed as navigation.
pub fn from_windows_vk(vk: u32) -> KeyClass {
    use KeyClass::*;
    match vk {
        0x08 | 0x2E => Correction,                     // VK_BACK VK_DELETE
        0x0D => Enter,                                 // VK_RETURN (main and keypad Enter)
        0x10..=0x12 | 0x14 => Modifier,                // VK_SHIFT VK_CONTROL VK_MENU VK_CAPITAL
        0x5B..=0x5D => Modifier,                       // VK_LWIN VK_RWIN VK_APPS
        0xA0..=0xA5 => Modifier, // VK_LSHIFT VK_RSHIFT VK_LCONTROL VK_RCONTROL VK_LMENU VK_RMENU
        0x20 => Space,           // VK_SPACE
        0x21..=0x28 | 0x2D => Navigation, // PRIOR NEXT END HOME LEFT UP RIGHT DOWN, INSERT
        0x30..=0x39 | 0x41..=0x5A => Character, // digits, letters
        0x60..=0x6F => Character, // VK_NUMPAD0..9 MULTIPLY ADD SEPARATOR SUBTRACT DECIMAL DIVIDE
        0xBA..=0xC0 | 0xDB..=0xDF | 0xE2 => Character, // VK_OEM_1..3, VK_OEM_4..8, VK_OEM_102
        0xC1 | 0xC2 => Character, // ABNT_C1 ABNT_C2 (Brazilian keyboards)
        _ => Other,              // Tab, Escape, F-keys, VK_PROCESSKEY (IME), VK_PACKET, media keys
    }
}

/// Class of a macOS virtual key code (`kVK_*` in HIToolbox `Events.h`, as
/// `kCGKeyboardEventKeycode` carries it). These codes name key *positions* (`kVK_ANSI_A` is
/// the key where A sits on an ANSI keyboard), so no layout is involved.
pub fn from_mac_keycode(code: u16) -> KeyClass {
    use KeyClass::*;
    match code {
        0x00..=0x23 => Character, // A S D F H G Z X C V § B Q W E R Y T 1-6 = 9 7 - 8 0 ] O U [ I P
        0x24 | 0x4C => Enter,     // Return, keypad Enter
        0x25..=0x2F | 0x32 => Character, // L J ' K ; \ , / N M . `
        0x31 => Space,
        0x33 | 0x75 => Correction, // Delete (backspace), ForwardDelete
        0x36..=0x3F => Modifier, // RightCommand Command Shift CapsLock Option Control RightShift RightOption RightControl Function
        0x41 | 0x43 | 0x45 | 0x4B | 0x4E | 0x51 => Character, // keypad . * + / - =
        0x52..=0x59 | 0x5B | 0x5C => Character, // keypad digits
        0x5D..=0x5F => Character, // JIS Yen, Underscore, keypad comma
        0x72..=0x74 | 0x77 | 0x79 => Navigation, // Help (Insert) Home PageUp End PageDown
        0x7B..=0x7E => Navigation, // arrows
        _ => Other,              // Tab, Escape, F-keys, keypad Clear, volume, JIS Eisu/Kana
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One physical key in every code space the agent reads.
    struct Key {
        name: &'static str,
        evdev: u16,
        javascript: u32,
        windows_vk: u32,
        mac: u16,
        class: KeyClass,
    }

    const fn k(
        name: &'static str,
        evdev: u16,
        javascript: u32,
        windows_vk: u32,
        mac: u16,
        class: KeyClass,
    ) -> Key {
        Key {
            name,
            evdev,
            javascript,
            windows_vk,
            mac,
            class,
        }
    }

    use KeyClass::{Character, Correction, Enter, Modifier, Navigation, Other, Space};

    /// The keys every table must agree on: letters, digits, punctuation, space, backspace,
    /// delete, enter, modifiers, navigation, and a few of "other". Codes from
    /// `linux/input-event-codes.h`, the DOM `keyCode` table, `WinUser.h` and HIToolbox `Events.h`.
    const SHARED: &[Key] = &[
        k("a", 30, 65, 0x41, 0x00, Character),
        k("z", 44, 90, 0x5A, 0x06, Character),
        k("q", 16, 81, 0x51, 0x0C, Character),
        k("m", 50, 77, 0x4D, 0x2E, Character),
        k("1", 2, 49, 0x31, 0x12, Character),
        k("5", 6, 53, 0x35, 0x17, Character),
        k("0", 11, 48, 0x30, 0x1D, Character),
        k("comma", 51, 188, 0xBC, 0x2B, Character),
        k("period", 52, 190, 0xBE, 0x2F, Character),
        k("slash", 53, 191, 0xBF, 0x2C, Character),
        k("keypad 5", 76, 101, 0x65, 0x57, Character),
        k("space", 57, 32, 0x20, 0x31, Space),
        k("backspace", 14, 8, 0x08, 0x33, Correction),
        k("delete", 111, 46, 0x2E, 0x75, Correction),
        k("enter", 28, 13, 0x0D, 0x24, Enter),
        k("keypad enter", 96, 13, 0x0D, 0x4C, Enter),
        k("left shift", 42, 16, 0xA0, 0x38, Modifier),
        k("right shift", 54, 16, 0xA1, 0x3C, Modifier),
        k("left ctrl", 29, 17, 0xA2, 0x3B, Modifier),
        k("right ctrl", 97, 17, 0xA3, 0x3E, Modifier),
        k("left alt", 56, 18, 0xA4, 0x3A, Modifier),
        k("right alt", 100, 18, 0xA5, 0x3D, Modifier),
        k("caps lock", 58, 20, 0x14, 0x39, Modifier),
        k("left meta", 125, 91, 0x5B, 0x37, Modifier),
        k("right meta", 126, 92, 0x5C, 0x36, Modifier),
        k("left", 105, 37, 0x25, 0x7B, Navigation),
        k("right", 106, 39, 0x27, 0x7C, Navigation),
        k("up", 103, 38, 0x26, 0x7E, Navigation),
        k("down", 108, 40, 0x28, 0x7D, Navigation),
        k("home", 102, 36, 0x24, 0x73, Navigation),
        k("end", 107, 35, 0x23, 0x77, Navigation),
        k("page up", 104, 33, 0x21, 0x74, Navigation),
        k("page down", 109, 34, 0x22, 0x79, Navigation),
        k("insert", 110, 45, 0x2D, 0x72, Navigation),
        k("tab", 15, 9, 0x09, 0x30, Other),
        k("escape", 1, 27, 0x1B, 0x35, Other),
        k("f1", 59, 112, 0x70, 0x7A, Other),
        k("f5", 63, 116, 0x74, 0x60, Other),
        k("f12", 88, 123, 0x7B, 0x6F, Other),
    ];

    #[test]
    fn shared_keys_evdev() {
        for key in SHARED {
            assert_eq!(from_evdev(key.evdev), key.class, "evdev {}", key.name);
        }
    }

    #[test]
    fn shared_keys_x11() {
        for key in SHARED {
            let code = u8::try_from(key.evdev + 8).unwrap_or(0);
            assert_eq!(from_x11(code), key.class, "x11 {}", key.name);
        }
    }

    #[test]
    fn shared_keys_windows() {
        for key in SHARED {
            assert_eq!(
                from_windows_vk(key.windows_vk),
                key.class,
                "windows {}",
                key.name
            );
        }
    }

    #[test]
    fn shared_keys_macos() {
        for key in SHARED {
            assert_eq!(from_mac_keycode(key.mac), key.class, "macos {}", key.name);
        }
    }

    #[test]
    fn shared_keys_javascript() {
        for key in SHARED {
            assert_eq!(
                from_javascript(key.javascript),
                key.class,
                "javascript {}",
                key.name
            );
        }
    }

    #[test]
    fn shared_table_covers_every_class() {
        for class in KeyClass::ALL {
            assert!(SHARED.iter().any(|k| k.class == class), "{class:?}");
        }
    }

    #[test]
    fn all_letters_and_digits_are_one_class() {
        for js in (65..=90).chain(48..=57) {
            assert_eq!(from_javascript(js), Character);
        }
        for evdev in (16..=25).chain(30..=38).chain(44..=50).chain(2..=11) {
            assert_eq!(from_evdev(evdev), Character, "{evdev}");
        }
        for vk in (0x41..=0x5A).chain(0x30..=0x39) {
            assert_eq!(from_windows_vk(vk), Character, "{vk:#x}");
        }
        // kVK_ANSI_A..Z and kVK_ANSI_0..9: positions, not in alphabetical order.
        let mac_letters = [
            0x00, 0x0B, 0x08, 0x02, 0x0E, 0x03, 0x05, 0x04, 0x22, 0x26, 0x28, 0x25, 0x2E, 0x2D,
            0x1F, 0x23, 0x0C, 0x0F, 0x01, 0x11, 0x20, 0x09, 0x0D, 0x07, 0x10, 0x06,
        ];
        let mac_digits = [0x1D, 0x12, 0x13, 0x14, 0x15, 0x17, 0x16, 0x1A, 0x1C, 0x19];
        for code in mac_letters.into_iter().chain(mac_digits) {
            assert_eq!(from_mac_keycode(code), Character, "{code:#x}");
        }
    }
}
