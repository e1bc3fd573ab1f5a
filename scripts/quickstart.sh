#!/usr/bin/env bash
# Cadence's main job on this machine: builds and starts a verifier and an enrolled, consented
# agent on the embedded default (SQLite, a generated development CA, loopback HTTPS), so that
# feature vectors visibly arrive at the verifier.
#
# With an X11 display (DISPLAY set) the agent captures your own typing and pointer timing for
# QUICKSTART_SECS seconds (default 90). Without one it replays a recording of plausible input
# that the agent generates itself (never the research datasets), at 6x speed.
#   bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${QUICKSTART_SECS:-90}
cargo build --release -q -p cadence-agent -p cadence-verifier
agent=$PWD/target/release/cadence-agent
verifier=$PWD/target/release/cadence-verifier
base=$PWD/target/quickstart
rm -rf "$base" && mkdir -p "$base"
port=8443
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
  port=$((20000 + RANDOM % 20000))
  echo "port 8443 is taken; using $port"
fi

"$verifier" serve --data-dir "$base/verifier" --listen "127.0.0.1:$port" >"$base/verifier.out" 2>"$base/verifier.log" &
vpid=$!
apid=""
cleanup() {
  [ -z "$apid" ] || kill "$apid" 2>/dev/null || true
  kill "$vpid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q '^listening on' "$base/verifier.out" 2>/dev/null && break; sleep 0.1; done
cat "$base/verifier.out"
url=$(sed -n 's/^listening on //p' "$base/verifier.out")
ca=$(sed -n 's/^CA certificate: //p' "$base/verifier.out")
token=$(sed -n 's/^enrollment token: //p' "$base/verifier.out")
[ -n "$token" ] || token=$("$verifier" token create --data-dir "$base/verifier" | tail -1 | sed 's/^enrollment token: //')

"$agent" --data-dir "$base/agent" enroll --server "$url" --token "$token" --ca "$ca"
"$agent" --data-dir "$base/agent" consent grant
device=$("$verifier" devices --json --data-dir "$base/verifier" | sed -n 's/.*"device_id":"\([0-9a-f]*\)".*/\1/p' | head -1)

if [ -n "${DISPLAY:-}" ]; then
  echo "Capturing live on $DISPLAY for $secs s: type and move the mouse (30 s windows)."
  "$agent" --data-dir "$base/agent" run --source x11 --window-secs 30 --min-keys 20 --min-mouse 50 2>"$base/agent.log" &
  apid=$!
  end=$((SECONDS + secs))
else
  echo "No display: replaying a generated recording of plausible input (3 minutes at 6x speed)."
  "$agent" --data-dir "$base/agent" run --source synthetic:3 --speed 6 --window-secs 15 --min-keys 20 \
    --exit-when-done 2>"$base/agent.log" &
  apid=$!
  end=$((SECONDS + 120))
fi

seen=0
while [ $SECONDS -lt $end ] && kill -0 "$apid" 2>/dev/null; do
  sleep 2
  n=$("$verifier" windows --device "$device" --json --data-dir "$base/verifier" | wc -l)
  if [ "$n" -gt "$seen" ]; then
    echo "verifier has stored $n windows from device $device"
    seen=$n
  fi
done
# The replay agent may have finished on its own already.
kill "$apid" 2>/dev/null || true
wait "$apid" 2>/dev/null || true
apid=""
n=$("$verifier" windows --device "$device" --json --data-dir "$base/verifier" | wc -l)
echo
echo "Done: $n windows arrived, signed and encrypted, and were stored once each."
echo "Look at them:"
echo "  $verifier devices --data-dir $base/verifier"
echo "  $verifier windows --device $device --data-dir $base/verifier --json | head -2"
echo "  $agent --data-dir $base/agent status"
[ "$n" -gt 0 ]
