#!/usr/bin/env bash
# Window close -> verifier commit latency on loopback: a verifier and an agent on this machine,
# the agent replaying its generated recording fast enough to close several windows a second.
# Each window is sealed, fsynced into the spool, sent, committed by the verifier and
# acknowledged; the agent reports the p50 and p99 of that whole path (`status --json`).
#   bash scripts/bench-delivery.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-40}
cargo build --release -q -p cadence-agent -p cadence-verifier
agent=$PWD/target/release/cadence-agent
verifier=$PWD/target/release/cadence-verifier
base=$(mktemp -d)
"$verifier" serve --data-dir "$base/v" --listen 127.0.0.1:0 >"$base/v.out" 2>/dev/null &
vpid=$!
apid=""
trap '[ -n "$apid" ] && kill $apid 2>/dev/null; kill $vpid 2>/dev/null; wait 2>/dev/null; rm -rf "$base"' EXIT
for _ in $(seq 100); do grep -q '^listening on' "$base/v.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$base/v.out")
ca=$(sed -n 's/^CA certificate: //p' "$base/v.out")
token=$(sed -n 's/^enrollment token: //p' "$base/v.out")
"$agent" --data-dir "$base/a" enroll --server "$url" --token "$token" --ca "$ca" >/dev/null
"$agent" --data-dir "$base/a" consent grant >/dev/null
# 30 minutes of generated input at 60x: a 2-second window closes every ~33 ms of wall time.
"$agent" --data-dir "$base/a" run --source synthetic:30 --speed 60 --window-secs 2 --min-keys 10 --min-mouse 20 2>/dev/null &
apid=$!
sleep "$secs"
"$agent" --data-dir "$base/a" status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("windows produced %s, sent %s, queued %s" % (s["windows_produced"], s["sent"], s["queued"]))
print("window close -> verifier commit (acknowledged): p50 %s ms, p99 %s ms" % (s["delivery_ms_p50"], s["delivery_ms_p99"]))'
