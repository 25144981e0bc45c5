//! The envd client.
