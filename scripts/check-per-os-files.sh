#!/usr/bin/env bash
# Type-checks and lints the Windows and macOS files (capture, consent dialog, tray UI loop) on
# Linux, where neither target's standard library is available: each file is compiled into a
# scratch crate next to the agent library (as the agent's own module would be), against the real
# windows-sys declarations for Windows, and with the framework link attributes removed for
# macOS (only Apple targets accept them; the declarations themselves are checked as written). This catches wrong types and
# names early; the real builds and unit tests run on hosted runners
# (.github/workflows/agent-platforms.yml). Needs crates.io for windows-sys.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${CADENCE_PER_OS_CHECK_DIR:-$root/target/per-os-check}
mkdir -p "$work/windows/src" "$work/macos/src"
winsys=$(grep -E '^windows-sys *=' Cargo.toml | sed 's/^windows-sys *= *//')
tracing=$(grep -E '^tracing *=' Cargo.toml | sed 's/^tracing *= *//')

cat >"$work/windows/Cargo.toml" <<TOML
[package]
name = "per-os-check-windows"
version = "0.0.0"
edition = "2024"
publish = false
[workspace]
[dependencies]
cadence-agent = { path = "$root/agent" }
windows-sys = $winsys
tracing = $tracing
[lints.rust]
unsafe_code = "deny"
TOML
cat >"$work/windows/src/lib.rs" <<RS
//! The Windows capture file, type-checked on Linux.
pub mod capture {
    pub use cadence_agent::capture::*;
    #[path = "$root/agent/src/capture/windows.rs"]
    pub mod windows;
}
/// The consent dialog's message box.
pub mod dialog {
    pub use cadence_agent::ui::dialog::*;
    #[path = "$root/agent/src/ui/dialog/windows.rs"]
    pub mod windows;
}
/// The UI thread with its Windows parts switched on (by sed: they read \`all()\`), and its
/// message pump.
#[allow(clippy::non_minimal_cfg)]
pub mod uiloop;
RS
mkdir -p "$work/windows/src/uiloop"
sed -E 's/\bwindows\b([,)])/all()\1/g' agent/src/ui/uiloop.rs >"$work/windows/src/uiloop.rs"
cp agent/src/ui/uiloop/windows.rs "$work/windows/src/uiloop/windows.rs"

cat >"$work/macos/Cargo.toml" <<TOML
[package]
name = "per-os-check-macos"
version = "0.0.0"
edition = "2024"
publish = false
[workspace]
[dependencies]
cadence-agent = { path = "$root/agent" }
tracing = $tracing
[lints.rust]
unsafe_code = "deny"
TOML
sed 's/#\[link(name = "[A-Za-z]*", kind = "framework")\]//' agent/src/capture/macos.rs \
  >"$work/macos/src/macos.rs"
mkdir -p "$work/macos/src/uiloop"
sed 's/target_os = "macos"/all()/g' agent/src/ui/uiloop.rs >"$work/macos/src/uiloop.rs"
sed 's/#\[link(name = "[A-Za-z]*", kind = "framework")\]//' agent/src/ui/uiloop/macos.rs \
  >"$work/macos/src/uiloop/macos.rs"
cat >"$work/macos/src/lib.rs" <<RS
//! The macOS capture file (framework link attributes removed), type-checked on Linux.
pub mod capture {
    pub use cadence_agent::capture::*;
    #[path = "$work/macos/src/macos.rs"]
    pub mod macos;
}
/// The UI thread with its macOS parts switched on (by sed: they read \`all()\`), and the
/// AppKit event pump.
#[allow(clippy::non_minimal_cfg)]
pub mod uiloop;
RS

for os in windows macos; do
  echo "per-OS check: $os"
  (cd "$work/$os" && CARGO_TARGET_DIR="$work/target" cargo clippy -q -- -D warnings)
done
echo "per-OS check: both files type-check and lint clean"
