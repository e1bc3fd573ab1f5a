#!/bin/sh
# Removes the Cadence agent from a Mac (run as root, e.g. as an MDM script). Leaves each user's
# data directory (~/Library/Application Support/cadence/agent: device key, consent record,
# unsent spool) unless --purge is given, and the managed configuration, which MDM owns.
set -u
for uid in $(ps -axo uid=,comm= | awk '/cadence-agent$/ {print $1}' | sort -u); do
    launchctl bootout "gui/$uid/org.cadence.agent" 2>/dev/null || true
done
rm -f /Library/LaunchAgents/org.cadence.agent.plist
rm -rf "/Library/Application Support/Cadence/bin" "/Library/Application Support/Cadence/examples"
pkgutil --forget org.cadence.agent >/dev/null 2>&1 || true
if [ "${1:-}" = "--purge" ]; then
    for home in /Users/*; do
        rm -rf "$home/Library/Application Support/cadence/agent"
    done
fi
exit 0
