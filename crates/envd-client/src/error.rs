//! What can go wrong talking to envd.

use std::path::PathBuf;
use std::time::Duration;

use hangar_protocol::envd::{ErrorBody, Response};

/// A failed envd operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// envd's socket could not be reached (not started yet, or gone).
    #[error("cannot connect to envd at {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke mid-operation.
    #[error("envd connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// envd sent something the protocol does not allow here.
    #[error("envd protocol violation: {0}")]
    Protocol(String),
    /// envd refused or failed the operation.
    #[error("envd: {} ({})", .0.message, .0.code)]
    Remote(ErrorBody),
    /// `wait_ready` gave up.
    #[error("envd at {} not ready after {waited:?}: {last}", path.display())]
    NotReady {
        /// The socket path.
        path: PathBuf,
        /// How long it waited.
        waited: Duration,
        /// The last attempt's failure.
        #[source]
        last: Box<Error>,
    },
}

impl Error {
    /// envd's stable error code (`not_found`, `bad_request`, ...) for a remote error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Remote(body) => Some(&body.code),
            _ => None,
        }
    }

    /// envd's error body for a remote error.
    pub fn remote(&self) -> Option<&ErrorBody> {
        match self {
            Error::Remote(body) => Some(body),
            _ => None,
        }
    }

    /// True when envd answered that the path or program does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some("not_found")
    }

    pub(crate) fn unexpected(op: &str, frame: &Response) -> Error {
        Error::Protocol(format!("unexpected reply to {op}: {frame:?}"))
    }
}
