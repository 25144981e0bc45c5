//! Failures of one operation, and their stable codes on the wire.

use hangar_protocol::envd::ErrorBody;
use nix::errno::Errno;

/// A failed operation: becomes one [`ErrorBody`] frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) errno: Option<i32>,
}

impl OpError {
    /// A malformed or contradictory request.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        OpError {
            code: "bad_request",
            message: message.into(),
            errno: None,
        }
    }

    /// A frame longer than the protocol allows.
    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        OpError {
            code: "too_large",
            message: message.into(),
            errno: None,
        }
    }

    /// A system call failed; `what` says what envd was doing, e.g. `open /etc/hosts`.
    pub(crate) fn sys(what: impl std::fmt::Display, errno: Errno) -> Self {
        OpError {
            code: errno_code(errno),
            message: format!("{what}: {}", errno_message(errno)),
            errno: Some(errno as i32),
        }
    }

    /// From a std I/O error (std's `Command` reports exec failures this way).
    pub(crate) fn io(what: impl std::fmt::Display, err: &std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(n) => OpError::sys(what, Errno::from_raw(n)),
            None => OpError {
                code: "io",
                message: format!("{what}: {err}"),
                errno: None,
            },
        }
    }

    pub(crate) fn into_body(self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_string(),
            message: self.message,
            errno: self.errno,
        }
    }
}

/// The stable code for an errno (see [`ErrorBody::code`]).
pub(crate) fn errno_code(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOENT => "not_found",
        Errno::EACCES | Errno::EPERM | Errno::EROFS => "permission_denied",
        Errno::EEXIST => "exists",
        Errno::ENOTDIR => "not_a_directory",
        Errno::EISDIR => "is_a_directory",
        Errno::ENOTEMPTY => "not_empty",
        Errno::EFBIG | Errno::E2BIG | Errno::ENAMETOOLONG => "too_large",
        // With RESOLVE_IN_ROOT nothing escapes by `..` or absolute symlinks; what is left
        // is a /proc magic link (refused by RESOLVE_NO_MAGICLINKS) or a symlink loop.
        Errno::ELOOP | Errno::EXDEV => "escapes_root",
        Errno::EINVAL => "bad_request",
        _ => "io",
    }
}

fn errno_message(errno: Errno) -> String {
    match errno {
        Errno::ELOOP => {
            "too many levels of symbolic links, or a /proc magic link that could leave the \
             sandbox root"
                .to_string()
        }
        e => {
            // Errno::desc is "No such file or directory"; people read lower-case better
            // inside a sentence.
            let d = e.desc();
            let mut c = d.chars();
            match c.next() {
                Some(f) => f.to_lowercase().chain(c).collect(),
                None => d.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_stable_codes() {
        assert_eq!(errno_code(Errno::ENOENT), "not_found");
        assert_eq!(errno_code(Errno::EACCES), "permission_denied");
        assert_eq!(errno_code(Errno::EEXIST), "exists");
        assert_eq!(errno_code(Errno::ENOTDIR), "not_a_directory");
        assert_eq!(errno_code(Errno::EISDIR), "is_a_directory");
        assert_eq!(errno_code(Errno::ENOTEMPTY), "not_empty");
        assert_eq!(errno_code(Errno::ELOOP), "escapes_root");
        assert_eq!(errno_code(Errno::EIO), "io");
    }

    #[test]
    fn sys_error_names_what_failed_and_carries_errno() {
        let e = OpError::sys("open /x", Errno::ENOENT);
        assert_eq!(e.code, "not_found");
        assert_eq!(e.message, "open /x: no such file or directory");
        assert_eq!(e.errno, Some(2));
    }
}
