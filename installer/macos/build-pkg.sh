#!/bin/sh
# Builds the Cadence agent's flat installer package on macOS (pkgbuild + productbuild, from
# Xcode's command line tools). `cadence-installer package pkg` runs this.
#
#   build-pkg.sh AGENT_BINARY VERSION OUT_DIR [MANAGED_TOML]
#
# Layout installed (all owned by root):
#   /Library/Application Support/Cadence/bin/cadence-agent     the agent (sign it first)
#   /Library/Application Support/Cadence/examples/agent.toml   the example managed file
#   /Library/Application Support/Cadence/agent.toml            MANAGED_TOML, when given
#   /Library/LaunchAgents/org.cadence.agent.plist              starts it in every user session
# Set SIGN_IDENTITY="Developer ID Installer: …" to sign the product archive.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=$1
version=$2
out=$3
managed=${4:-}
for tool in pkgbuild productbuild; do
    command -v "$tool" >/dev/null || { echo "$tool not found (Xcode command line tools)" >&2; exit 3; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
app="$root/Library/Application Support/Cadence"
mkdir -p "$app/bin" "$app/examples" "$root/Library/LaunchAgents"
install -m 755 "$bin" "$app/bin/cadence-agent"
install -m 644 "$here/../examples/agent.toml" "$app/examples/agent.toml"
install -m 644 "$here/../examples/ca.pem" "$app/examples/ca.pem"
[ -n "$managed" ] && install -m 644 "$managed" "$app/agent.toml"
install -m 644 "$here/org.cadence.agent.plist" "$root/Library/LaunchAgents/org.cadence.agent.plist"
pkgbuild --root "$root" --scripts "$here/scripts" --identifier org.cadence.agent \
    --version "$version" --install-location / "$work/cadence-agent-component.pkg"
mkdir -p "$out"
if [ -n "${SIGN_IDENTITY:-}" ]; then
    productbuild --distribution "$here/distribution.xml" --package-path "$work" \
        --sign "$SIGN_IDENTITY" "$out/cadence-agent-$version.pkg"
else
    productbuild --distribution "$here/distribution.xml" --package-path "$work" \
        "$out/cadence-agent-$version.pkg"
fi
echo "$out/cadence-agent-$version.pkg"
