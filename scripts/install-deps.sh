#!/usr/bin/env bash
# Installs the system packages Hangar needs on Debian (bookworm or later), as root.
# Safe to run again: it installs only what is missing.
set -euo pipefail
packages=(git tar zstd xz-utils iproute2 nftables mmdebstrap bubblewrap runc umoci openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
