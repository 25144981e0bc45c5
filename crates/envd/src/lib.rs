//! envd, the in-sandbox daemon.
