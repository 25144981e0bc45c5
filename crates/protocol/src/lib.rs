//! Types that cross a process boundary, and nothing else: no I/O, no business logic.
//!
//! [`envd`] is the wire protocol between the control plane and the in-sandbox daemon.
//! Every other crate that speaks to envd uses these types through `hangar-envd-client`.
//! [`session`] holds session events and the messages of the session WebSocket.

pub mod envd;
pub mod session;
