#!/usr/bin/env bash
# Runs Cadence's whole test suite on this machine, setting up what the tests need first:
# the X11 test tools, the unpacked evaluation data, and the PostgreSQL URL when a server runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages for the real-capture tests (Xvfb, xdotool) and for unpacking the data (zstd).
need=()
command -v Xvfb >/dev/null || need+=(xvfb)
command -v xdotool >/dev/null || need+=(xdotool)
command -v xauth >/dev/null || need+=(xauth)
command -v zstd >/dev/null || need+=(zstd)
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

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
