#!/usr/bin/env bash
# Installs the system packages Hangar needs on Debian (bookworm or later), as root.
# Safe to run again: it installs only what is missing.
set -euo pipefail
# chromium: the web UI's browser tests drive Debian's build (it cannot be downloaded).
# openssl: the GitHub tests make the App's keys with it.
packages=(git tar zstd xz-utils iproute2 nftables mmdebstrap bubblewrap runc umoci chromium openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The web UI is built with Node.js 20.19 or later and npm.
node_ok() {
  command -v npm >/dev/null && node -e '
    const [a, b] = process.versions.node.split(".").map(Number);
    process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null
}
if ! node_ok; then
  missing+=(nodejs npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! node_ok; then
  echo "the web UI needs Node.js 20.19 or later with npm; this system's is $(node --version 2>/dev/null || echo missing): install a newer nodejs package (e.g. from Debian trixie or NodeSource), then run this again" >&2
  exit 1
fi
