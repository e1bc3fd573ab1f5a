//! Promise 1 on every backend: no code in the agent calls a key-to-text, keyboard-layout or
//! input-method function, reads an event's characters or the pointer's absolute location, or
//! grabs an input device. The per-OS capture files cannot all be compiled here, so their
//! source is checked: every identifier outside comments is compared with the forbidden list.
//! (Comments may name them: the modules say what they must never do.)

use std::path::{Path, PathBuf};

/// Functions and ioctls that would turn keys into text, look up a layout, read characters or
/// positions, or take a device away from the user.
const FORBIDDEN: &[&str] = &[
    // Windows
    "ToUnicode",
    "ToUnicodeEx",
    "ToAscii",
    "ToAsciiEx",
    "MapVirtualKey",
    "MapVirtualKeyW",
    "MapVirtualKeyExW",
    "TranslateMessage",
    "GetKeyboardLayout",
    "GetKeyNameTextW",
    "ImmGetCompositionStringW",
    "scanCode",
    // macOS
    "UCKeyTranslate",
    "TISCopyCurrentKeyboardInputSource",
    "TISCopyCurrentKeyboardLayoutInputSource",
    "TISGetInputSourceProperty",
    "LMGetKbdType",
    "CGEventKeyboardGetUnicodeString",
    "CGEventGetLocation",
    "CGEventGetUnflippedLocation",
    // X11 and Linux
    "XLookupString",
    "Xutf8LookupString",
    "XmbLookupString",
    "XKeycodeToKeysym",
    "XkbKeycodeToKeysym",
    "get_keyboard_mapping",
    "xkb_state_key_get_utf8",
    "xkb_state_key_get_one_sym",
    "EVIOCGRAB",
    "EVIOCGKEYCODE",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot list {}", dir.display())
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every Rust file of the agent's sources.
fn agent_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files
}

/// The identifiers of a source file, with line comments and string contents removed.
fn identifiers(src: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for line in src.lines() {
        let code = line.split("//").next().unwrap_or("");
        // Drop string literals (error messages may name what the user should do).
        let mut in_str = false;
        let mut cur = String::new();
        for c in code.chars() {
            if c == '"' {
                in_str = !in_str;
                continue;
            }
            if in_str {
                continue;
            }
            if c.is_alphanumeric() || c == '_' {
                cur.push(c);
            } else if !cur.is_empty() {
                ids.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            ids.push(cur);
        }
    }
    ids
}

#[test]
fn no_agent_source_calls_a_key_to_text_or_layout_function() {
    let files = agent_sources();
    let per_os = ["windows.rs", "macos.rs", "device.rs", "x11.rs"];
    for name in per_os {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "{name} not found: the check would be vacuous"
        );
    }
    let mut hits = Vec::new();
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        for id in identifiers(&src) {
            if FORBIDDEN.contains(&id.as_str()) {
                hits.push(format!("{}: {id}", f.display()));
            }
        }
    }
    assert!(hits.is_empty(), "forbidden calls: {hits:#?}");
}

#[test]
fn the_check_finds_a_forbidden_call_outside_comments() {
    let src =
        "// ToUnicode is never called\nlet n = unsafe { ToUnicode(vk, sc, st, buf, 4, 0) };\n";
    let ids = identifiers(src);
    assert_eq!(ids.iter().filter(|i| *i == "ToUnicode").count(), 1);
    assert!(
        identifiers("let m = \"see MapVirtualKey\";")
            .iter()
            .all(|i| i != "MapVirtualKey")
    );
}

#[test]
fn the_windows_bindings_leave_out_the_keyboard_text_functions() {
    // ToUnicode, ToAscii, MapVirtualKey and GetKeyboardLayout live in windows-sys's
    // Win32_UI_Input_KeyboardAndMouse feature: without it they cannot even be named.
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .unwrap();
    let line = manifest
        .lines()
        .find(|l| l.starts_with("windows-sys"))
        .expect("windows-sys in the workspace dependencies");
    assert!(!line.contains("KeyboardAndMouse"), "{line}");
    assert!(!line.contains("Input_Ime"), "{line}");
}

/// Objective-C messages that read what an event says (its text, key, position). They are
/// named in C string literals (`c"…"`, passed to `sel_registerName`), which the identifier
/// scan above skips.
const FORBIDDEN_SELECTORS: &[&str] = &[
    "characters",
    "charactersIgnoringModifiers",
    "charactersByApplyingModifiers:",
    "keyCode",
    "specialKey",
    "locationInWindow",
    "mouseLocation",
    "interpretKeyEvents:",
];

/// The contents of a source file's C string literals outside line comments.
fn c_strings(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in src.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("c\"") {
            let after = &rest[i + 2..];
            let Some(end) = after.find('"') else { break };
            out.push(after[..end].to_owned());
            rest = &after[end + 1..];
        }
    }
    out
}

#[test]
fn no_objective_c_message_reads_what_an_event_says() {
    let files = agent_sources();
    let mut seen = Vec::new();
    let mut hits = Vec::new();
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        for s in c_strings(&src) {
            if FORBIDDEN_SELECTORS.contains(&s.as_str()) {
                hits.push(format!("{}: {s}", f.display()));
            }
            seen.push(s);
        }
    }
    // The AppKit pump names its messages this way: the scan sees them.
    assert!(
        seen.iter().any(|s| s == "sendEvent:"),
        "no selector literal found: the check would be vacuous ({seen:?})"
    );
    assert!(hits.is_empty(), "forbidden messages: {hits:#?}");
    assert_eq!(
        c_strings("let s = sel(c\"characters\"); // c\"keyCode\""),
        ["characters"]
    );
}
