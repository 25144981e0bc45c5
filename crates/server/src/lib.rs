//! The session server (in progress).
