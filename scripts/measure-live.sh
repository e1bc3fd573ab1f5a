#!/usr/bin/env bash
# Measures the live agent (`cadence-agent preview`) under a virtual X server: CPU, memory and
# wakeups per second while idle, then CPU and memory while typing and moving the mouse.
# Needs Xvfb and xdotool. Prints figures; asserts nothing.
#   bash scripts/measure-live.sh [SECONDS_PER_PHASE]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
cargo build --release -q -p cadence-agent
bin=target/release/cadence-agent
disp=:$((200 + RANDOM % 300))
Xvfb "$disp" -nolisten tcp >/dev/null 2>&1 &
xvfb=$!
agent=""
cleanup() { [ -n "$agent" ] && kill "$agent" 2>/dev/null; kill "$xvfb" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT
for _ in $(seq 50); do [ -S "/tmp/.X11-unix/X${disp#:}" ] && break; sleep 0.1; done
export DISPLAY=$disp
out=$(mktemp)
"$bin" preview --window-secs 5 --min-keys 20 --min-mouse 20 >"$out" 2>/dev/null &
agent=$!
sleep 2
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
switches() { cat /proc/$agent/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$agent/status"; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$agent/status"; }

c0=$(cpu); s0=$(switches); t0=$(date +%s.%N)
sleep "$secs"
c1=$(cpu); s1=$(switches); t1=$(date +%s.%N)
awk -v c="$((c1 - c0))" -v s="$((s1 - s0))" -v t0="$t0" -v t1="$t1" -v hz="$hz" -v r="$(rss)" 'BEGIN {
  d = t1 - t0
  printf "idle   %ds: CPU %.2f%%, wakeups %.2f/s (context switches, all threads), RSS %.1f MiB\n", d, 100 * c / hz / d, s / d, r / 1024 }'

# Typing: xdotool presses a key every 25 ms (40 keys/s, faster than any person) and moves the mouse.
(
  end=$(( $(date +%s) + secs ))
  while [ "$(date +%s)" -lt "$end" ]; do
    xdotool type --delay 50 "the quick brown fox jumps over the lazy dog " 2>/dev/null
    xdotool mousemove_relative -- 7 3 mousemove_relative -- -5 2 2>/dev/null
  done
) &
typer=$!
c0=$(cpu); t0=$(date +%s.%N)
wait "$typer"
c1=$(cpu); t1=$(date +%s.%N)
awk -v c="$((c1 - c0))" -v t0="$t0" -v t1="$t1" -v hz="$hz" -v r="$(rss)" -v h="$(hwm)" 'BEGIN {
  d = t1 - t0
  printf "typing %ds: CPU %.2f%%, RSS %.1f MiB (peak %.1f MiB)\n", d, 100 * c / hz / d, r / 1024, h / 1024 }'
sleep 6
echo "windows emitted: $(wc -l <"$out")"
rm -f "$out"
