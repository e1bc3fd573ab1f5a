#!/usr/bin/env bash
# Runs Cadence's whole test suite on this machine, setting up what the tests need first:
# the X11 test tools, the unpacked evaluation data, and the PostgreSQL URL when a server runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages for the real-capture tests (Xvfb, xdotool), the dashboard test (chromium)
# and for unpacking the data (zstd).
need=()
command -v Xvfb >/dev/null || need+=(xvfb)
command -v xdotool >/dev/null || need+=(xdotool)
command -v xauth >/dev/null || need+=(xauth)
command -v zstd >/dev/null || need+=(zstd)
command -v chromium >/dev/null || need+=(chromium)
command -v psql >/dev/null || need+=(postgresql-client)
# The consent dialog's backend and the tray test's private session bus.
command -v zenity >/dev/null || need+=(zenity)
command -v dbus-daemon >/dev/null || need+=(dbus)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null && { [ -z "$sudo" ] || command -v sudo >/dev/null; }; then
    echo "installing ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing ${need[*]}: the tests that need them will say they are skipped"
  fi
fi

# Evaluation data (never committed): unpack ../shared/data once into target/cadence-data.
src=${CADENCE_DATA_SRC:-../shared/data}
if [ -z "${CADENCE_DATA:-}" ] && [ -d "$src" ] && command -v zstd >/dev/null; then
  dest=target/cadence-data
  mkdir -p "$dest"
  for f in "$src"/*.tar.zst; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .tar.zst)
    [ -d "$dest/$name" ] || tar --zstd -xf "$f" -C "$dest"
  done
  export CADENCE_DATA="$PWD/$dest"
fi
if [ -n "${CADENCE_DATA:-}" ]; then
  echo "evaluation data: $CADENCE_DATA"
else
  echo "evaluation data: not found ($src); the tests that need it will say they are skipped"
fi

# PostgreSQL for the store, API and replica tests: the server on 127.0.0.1:5432 when one
# answers there (each test makes a fresh database on it and drops it afterwards).
if [ -z "${CADENCE_TEST_POSTGRES_URL:-}" ] && (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  export CADENCE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
fi
if [ -n "${CADENCE_TEST_POSTGRES_URL:-}" ]; then
  echo "PostgreSQL tests: on the server CADENCE_TEST_POSTGRES_URL names"
else
  echo "PostgreSQL tests: no server on 127.0.0.1:5432; they will say they are skipped"
fi

# cargo-deb for the package test (installer/tests/deb_install.rs), which installs and purges the
# .deb and so runs only as root.
if [ "$(id -u)" = 0 ] && ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb"
  cargo install cargo-deb --locked
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
