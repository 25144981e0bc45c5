#!/usr/bin/env bash
# Runs every check and test: formatting, lints, and the whole test suite (the sandbox
# escape suite included, which needs root and a Linux kernel with user namespaces,
# overlayfs and cgroups; it fails, never skips, where those are missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast
