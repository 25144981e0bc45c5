//! envd's integration tests: the real binary on a real socket, with a temporary directory
//! as its root. One test binary, one module per area.

// Test support code panics on failure by design; clippy only exempts `#[test]` functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod bad_input;
mod exec;
mod files;
mod lifecycle;
mod pty;
mod traversal;
mod watch;
