#!/usr/bin/env bash
# Installs what Hangar needs, builds it, and runs `hangar up` (the server with the local
# sandbox backend and embedded SQLite). Arguments are passed to `hangar up`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "Rust is needed to build Hangar: install it with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: Hangar's local sandboxes need namespaces, mounts and cgroups" >&2
  exit 1
fi
bash scripts/install-deps.sh
# The web UI, embedded in the binary by the build that follows.
(cd web && npm ci --no-audit --no-fund && npm run build)
cargo build --release --workspace --bins --locked
exec target/x86_64-unknown-linux-gnu/release/hangar up "$@"
