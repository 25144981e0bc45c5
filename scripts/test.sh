#!/usr/bin/env bash
# Runs every check and test: the web UI's type-check, unit tests and build (embedded in
# the binary), formatting, lints, the whole Rust test suite (the sandbox escape suite
# included, which needs root and a Linux kernel with user namespaces, overlayfs and
# cgroups; it fails, never skips, where those are missing), then the browser tests against
# the built `hangar` (they fail, never skip, without chromium). Screenshots land in
# web/e2e-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
(cd web && npm ci --no-audit --no-fund && npm run check && npm test && npx vite build)
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast
(cd web && npm run e2e)
