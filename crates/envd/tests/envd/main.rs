//! envd's integration tests: the real binary on a real socket, with a temporary directory
//! as its root. One test binary, one module per area.

mod support;

mod bad_input;
mod exec;
mod files;
mod lifecycle;
mod pty;
mod traversal;
mod watch;
