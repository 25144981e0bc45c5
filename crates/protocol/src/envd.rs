//! The envd protocol: one operation per connection, newline-delimited JSON frames.
//!
//! A client connects to envd's socket, writes one [`Request`] line, and reads [`Response`]
//! lines until a terminal frame ([`Response::is_terminal`]). During an `exec` the client
//! may also write [`ExecInput`] lines (stdin, signals, PTY resize). Byte payloads travel
//! as base64 strings ([`Bytes`]). Every frame is one line of at most [`MAX_FRAME`] bytes;
//! envd answers a longer or malformed line with an [`Response::Error`] and closes.
//!
//! Paths are interpreted inside the sandbox root: `..`, absolute paths and symlinks are
//! resolved as if that root were `/`, so no path reaches outside it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of this protocol, reported by `health`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest accepted frame (one JSON line), in bytes, including base64 payloads.
pub const MAX_FRAME: usize = 24 * 1024 * 1024;

/// Largest byte range returned by one `read_file`; ask again with a larger offset for more.
pub const MAX_READ: u64 = 16 * 1024 * 1024;

/// Bytes carried as a base64 string on the wire.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// The first (and, except for `exec`, only) frame a client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Request {
    /// Liveness and identity. Answered with [`Response::Health`].
    Health,
    /// Run a process. Answered with `Started`, then `Stdout`/`Stderr` as output comes,
    /// then `Exit` (or `Error` if it could not start).
    Exec(ExecRequest),
    /// Read a byte range of a file. Answered with [`Response::FileData`].
    ReadFile {
        /// Path inside the sandbox.
        path: String,
        /// First byte to read.
        #[serde(default)]
        offset: u64,
        /// Bytes to read at most; capped at [`MAX_READ`]. `None` reads to the cap.
        #[serde(default)]
        length: Option<u64>,
    },
    /// Write a whole file atomically (temporary file, fsync, rename). Answered with `Ok`.
    WriteFile {
        /// Path inside the sandbox.
        path: String,
        /// New contents.
        data: Bytes,
        /// Permission bits for a new file; an existing file keeps its mode when `None`.
        #[serde(default)]
        mode: Option<u32>,
        /// Create missing parent directories.
        #[serde(default)]
        create_parents: bool,
    },
    /// List a directory. Answered with [`Response::Entries`].
    ListDir {
        /// Path inside the sandbox.
        path: String,
    },
    /// Describe one path without following a final symlink. Answered with [`Response::Stat`].
    Stat {
        /// Path inside the sandbox.
        path: String,
    },
    /// Create a directory. Answered with `Ok`.
    Mkdir {
        /// Path inside the sandbox.
        path: String,
        /// Create missing parents and accept an existing directory.
        #[serde(default)]
        parents: bool,
    },
    /// Remove a file, symlink or directory. Answered with `Ok`.
    Remove {
        /// Path inside the sandbox.
        path: String,
        /// Remove a non-empty directory with everything in it.
        #[serde(default)]
        recursive: bool,
    },
    /// Rename within the sandbox. Answered with `Ok`.
    Rename {
        /// Existing path.
        from: String,
        /// New path; an existing file there is replaced.
        to: String,
    },
    /// Watch a path for changes. Answered with `Ok` once watching, then a
    /// [`Response::Changed`] per change until the client disconnects.
    Watch {
        /// Path inside the sandbox.
        path: String,
        /// Watch subdirectories too.
        #[serde(default)]
        recursive: bool,
    },
}

/// What to run and how.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments. Exactly one of `argv` and `shell` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// A command line for `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Working directory inside the sandbox; `/` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables added to (or replacing those of) envd's base environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Keep stdin open for [`ExecInput::Stdin`] frames; otherwise stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Kill the whole process group after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run on a pseudo-terminal of this size; output then arrives as `Stdout` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
}

/// A terminal size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Frames a client may send after an `exec` request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ExecInput {
    /// Bytes for the process's stdin (or the terminal).
    Stdin {
        /// The bytes.
        data: Bytes,
    },
    /// Close stdin (end of input).
    CloseStdin,
    /// Send a signal (e.g. 2 for SIGINT, 9 for SIGKILL) to the whole process group.
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// Resize the terminal of a PTY exec.
    Resize(PtySize),
}

/// Frames envd sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    /// Answer to `health`.
    Health {
        /// [`PROTOCOL_VERSION`].
        protocol: u32,
        /// envd's version.
        version: String,
        /// envd's pid inside the sandbox (1 when it is the sandbox's init).
        pid: u32,
        /// Milliseconds since envd started.
        uptime_ms: u64,
    },
    /// The process started.
    Started {
        /// Its pid inside the sandbox; also its process group id.
        pid: u32,
    },
    /// Output on stdout (or the terminal).
    Stdout {
        /// The bytes, as they came.
        data: Bytes,
    },
    /// Output on stderr.
    Stderr {
        /// The bytes, as they came.
        data: Bytes,
    },
    /// The process ended. Terminal.
    Exit(ExitStatus),
    /// A byte range of a file. Terminal.
    FileData {
        /// The bytes read.
        data: Bytes,
        /// The file's size when read.
        size: u64,
        /// True when the range reached the end of the file.
        eof: bool,
    },
    /// Directory entries, sorted by name. Terminal.
    Entries {
        /// The entries.
        entries: Vec<FileInfo>,
    },
    /// One path's metadata. Terminal.
    Stat(FileInfo),
    /// The operation succeeded (for `watch`: watching has begun; not terminal).
    Ok,
    /// A watched path changed.
    Changed {
        /// Path inside the sandbox.
        path: String,
        /// What happened.
        kind: ChangeKind,
    },
    /// The operation failed. Terminal.
    Error(ErrorBody),
}

impl Response {
    /// True for the frame that ends an operation (after it envd closes the connection).
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            Response::Started { .. }
                | Response::Stdout { .. }
                | Response::Stderr { .. }
                | Response::Changed { .. }
                | Response::Ok
        )
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    pub signal: Option<i32>,
    /// True when envd killed it because `timeout_ms` passed.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// What kind of file a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else (device, socket, fifo).
    Other,
}

/// Metadata of one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// The final path component (for `stat`, the path as given).
    pub name: String,
    /// Its kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    /// For a symlink, its target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// What changed about a watched path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Created.
    Created,
    /// Contents or metadata changed.
    Modified,
    /// Removed (or moved away).
    Removed,
}

/// A failure, with a stable code a program can match on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable snake_case code: `bad_request`, `not_found`, `permission_denied`, `exists`,
    /// `not_a_directory`, `is_a_directory`, `not_empty`, `too_large`, `escapes_root`, `io`.
    pub code: String,
    /// For people: what failed and why.
    pub message: String,
    /// The errno behind it, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_form_is_stable() {
        let r: Request =
            serde_json::from_str(r#"{"op":"read_file","path":"/etc/hostname"}"#).unwrap();
        assert_eq!(
            r,
            Request::ReadFile {
                path: "/etc/hostname".into(),
                offset: 0,
                length: None
            }
        );
        let exec = Request::Exec(ExecRequest {
            argv: vec!["true".into()],
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_string(&exec).unwrap(),
            r#"{"op":"exec","argv":["true"],"stdin":false}"#
        );
        let back: Request =
            serde_json::from_str(r#"{"op":"exec","argv":["true"],"pty":{"rows":2,"cols":3}}"#)
                .unwrap();
        assert!(matches!(back, Request::Exec(e) if e.pty == Some(PtySize { rows: 2, cols: 3 })));
    }

    #[test]
    fn bytes_round_trip_as_base64() {
        let r = Response::Stdout {
            data: Bytes(b"hi\n".to_vec()),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"type":"stdout","data":"aGkK"}"#);
        assert_eq!(serde_json::from_str::<Response>(&s).unwrap(), r);
    }

    #[test]
    fn unknown_ops_and_fields_are_rejected() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"stat","path":"/","x":1}"#).is_err());
        assert!(serde_json::from_str::<Response>(r#"{"type":"stdout","data":"!!"}"#).is_err());
    }

    #[test]
    fn shell_code_follows_shell_convention() {
        let s = ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: true,
        };
        assert_eq!(s.shell_code(), 137);
        assert_eq!(
            ExitStatus {
                code: Some(3),
                signal: None,
                timed_out: false
            }
            .shell_code(),
            3
        );
    }
}
