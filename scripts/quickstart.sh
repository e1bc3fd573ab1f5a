#!/usr/bin/env bash
# Builds the Cadence agent and shows what it computes from live input on this machine.
# On an X11 desktop it captures your own input; without a display it starts a virtual X server
# and types into it with xdotool, so the whole capture path runs for real.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p cadence-agent
bin=target/release/cadence-agent

if [ -n "${DISPLAY:-}" ]; then
  echo "Capturing on $DISPLAY for 60 s: type and move the mouse. Each closed window is printed."
  exec "$bin" preview --window-secs 15 --min-keys 20 --min-mouse 50 --for 60 --format table
fi

if ! command -v Xvfb >/dev/null || ! command -v xdotool >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "No display: installing Xvfb and xdotool to run a virtual one."
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq xvfb xdotool xauth >/dev/null
fi
disp=:$((100 + RANDOM % 400))
Xvfb "$disp" -nolisten tcp >/dev/null 2>&1 &
xvfb=$!
trap 'kill $xvfb 2>/dev/null' EXIT
for _ in $(seq 50); do [ -S "/tmp/.X11-unix/X${disp#:}" ] && break; sleep 0.1; done
export DISPLAY=$disp
echo "No display: started a virtual X server on $DISPLAY; xdotool types and moves the mouse there."
"$bin" preview --window-secs 10 --min-keys 20 --min-mouse 20 --for 25 --format table &
agent=$!
sleep 1
for i in $(seq 6); do
  xdotool type --delay 110 "cadence measures rhythm, never the words "
  xdotool mousemove_relative -- 40 25 mousemove_relative -- 30 -10 mousemove_relative -- -20 35 click 1
done
wait $agent
echo
echo "That is everything the agent computes: distributions and rates per window, no keys, no text."
