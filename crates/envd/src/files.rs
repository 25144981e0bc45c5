//! The file API: every path is resolved inside the sandbox root.
//!
//! Paths go through `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against a descriptor
//! of the root, so `..`, absolute paths and symlinks (absolute or relative) resolve as if
//! the root were `/`, and no path reaches outside it. Operations on a final component
//! (mkdir, remove, rename, stat, the atomic write's rename) open the *parent* that way and
//! then use the `*at` system call on a single component, which the kernel does not
//! resolve further. These functions block; the server runs them off the event loop.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hangar_protocol::envd::{FileInfo, FileKind, MAX_READ, Request, Response};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};

use crate::error::OpError;

/// The directory that stands for `/` in every path a client sends.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens `path` as the root; it must be a directory.
    pub fn open(path: &Path) -> std::io::Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let path = std::fs::canonicalize(path)?;
        Ok(Root { fd, path })
    }

    /// The root's canonical path in envd's own mount namespace.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `path` inside the root; the final component is followed if it is a symlink,
    /// and that too stays inside.
    pub(crate) fn open_in(&self, path: &str, flags: OFlag, mode: u32) -> Result<OwnedFd, OpError> {
        check_path(path)?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let rel = if path.is_empty() { "." } else { path };
        openat2(self.fd.as_fd(), rel, how).map_err(|e| OpError::sys(format!("open {path}"), e))
    }

    /// Opens the parent directory of `path` (as an `O_PATH` descriptor) and returns it with
    /// the final component.
    fn parent(&self, path: &str) -> Result<(OwnedFd, String), OpError> {
        let (parent, last) = split_last(path)?;
        let fd = self.open_in(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        Ok((fd, last))
    }

    /// Runs one file request and produces its terminal frame.
    pub(crate) fn handle(&self, req: Request) -> Response {
        let result = match req {
            Request::ReadFile {
                path,
                offset,
                length,
            } => self.read_file(&path, offset, length),
            Request::WriteFile {
                path,
                data,
                mode,
                create_parents,
            } => self
                .write_file(&path, &data.0, mode, create_parents)
                .map(|()| Response::Ok),
            Request::ListDir { path } => self
                .list_dir(&path)
                .map(|entries| Response::Entries { entries }),
            Request::Stat { path } => self.stat(&path).map(Response::Stat),
            Request::Mkdir { path, parents } => self.mkdir(&path, parents).map(|()| Response::Ok),
            Request::Remove { path, recursive } => {
                self.remove(&path, recursive).map(|()| Response::Ok)
            }
            Request::Rename { from, to } => self.rename(&from, &to).map(|()| Response::Ok),
            _ => Err(OpError::bad_request("not a file operation")),
        };
        result.unwrap_or_else(|e| Response::Error(e.into_body()))
    }

    fn read_file(&self, path: &str, offset: u64, length: Option<u64>) -> Result<Response, OpError> {
        // O_NONBLOCK: opening a FIFO must not block envd.
        let fd = self.open_in(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)?;
        let st = fstat(&fd).map_err(|e| OpError::sys(format!("stat {path}"), e))?;
        match kind_of(&st) {
            FileKind::File => {}
            FileKind::Dir => return Err(OpError::sys(format!("read {path}"), Errno::EISDIR)),
            _ => {
                return Err(OpError::bad_request(format!(
                    "read {path}: not a regular file"
                )));
            }
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let want = length.unwrap_or(MAX_READ).min(MAX_READ);
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        // Do not allocate the whole cap for a small file (files in /proc report size 0).
        let hint = if size > offset {
            usize::try_from(size - offset).unwrap_or(want)
        } else {
            4096
        };
        let mut data = Vec::with_capacity(want.min(hint));
        let mut chunk = [0u8; 64 * 1024];
        let mut pos = offset;
        let mut eof = false;
        while data.len() < want {
            let n = (want - data.len()).min(chunk.len());
            let off = i64::try_from(pos).map_err(|_| OpError::bad_request("offset too large"))?;
            match nix::sys::uio::pread(&fd, &mut chunk[..n], off) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(got) => {
                    data.extend_from_slice(&chunk[..got]);
                    pos += got as u64;
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(OpError::sys(format!("read {path}"), e)),
            }
        }
        if !eof && size > 0 && pos >= size {
            eof = true;
        }
        Ok(Response::FileData {
            data: data.into(),
            size: size.max(pos),
            eof,
        })
    }

    fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
        create_parents: bool,
    ) -> Result<(), OpError> {
        let (parent_path, last) = split_last(path)?;
        if create_parents {
            self.mkdir_all(&parent_path)?;
        }
        // A readable descriptor (not O_PATH) so the directory itself can be fsynced.
        let dir = self.open_in(&parent_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
        let existing = match fstatat(&dir, last.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(OpError::sys(format!("stat {path}"), e)),
        };
        if existing
            .as_ref()
            .is_some_and(|st| kind_of(st) == FileKind::Dir)
        {
            return Err(OpError::sys(format!("write {path}"), Errno::EISDIR));
        }
        let perm = match (mode, &existing) {
            (Some(m), _) => m & 0o7777,
            (None, Some(st)) if kind_of(st) == FileKind::File => st.st_mode & 0o7777,
            (None, _) => 0o644,
        };
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = format!(
            ".{}.envd-{}-{}.tmp",
            last.chars().take(64).collect::<String>(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let file = openat(
            &dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| OpError::sys(format!("create a temporary file beside {path}"), e))?;
        let result = (|| {
            write_all(&file, data).map_err(|e| OpError::sys(format!("write {path}"), e))?;
            fchmod(&file, Mode::from_bits_truncate(perm))
                .map_err(|e| OpError::sys(format!("chmod {path}"), e))?;
            if let Some(st) = existing.as_ref().filter(|st| kind_of(st) == FileKind::File) {
                // Keep the owner of the file being replaced; failing that is not fatal.
                let _ = nix::unistd::fchown(
                    &file,
                    Some(nix::unistd::Uid::from_raw(st.st_uid)),
                    Some(nix::unistd::Gid::from_raw(st.st_gid)),
                );
            }
            fsync(&file).map_err(|e| OpError::sys(format!("fsync {path}"), e))?;
            renameat(&dir, tmp.as_str(), &dir, last.as_str())
                .map_err(|e| OpError::sys(format!("rename into {path}"), e))
        })();
        if result.is_err() {
            let _ = unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return result;
        }
        let _ = fsync(&dir);
        Ok(())
    }

    fn list_dir(&self, path: &str) -> Result<Vec<FileInfo>, OpError> {
        let fd = self.open_in(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
        let names = read_names(&fd).map_err(|e| OpError::sys(format!("list {path}"), e))?;
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            match fstatat(&fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => entries.push(info(&fd, &name, &st, name.to_string_lossy().into_owned())),
                // Removed between readdir and stat.
                Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(OpError::sys(
                        format!("stat {path}/{}", name.to_string_lossy()),
                        e,
                    ));
                }
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn stat(&self, path: &str) -> Result<FileInfo, OpError> {
        match split_last(path) {
            Ok((parent, last)) => {
                let dir = self.open_in(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
                let st = fstatat(&dir, last.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| OpError::sys(format!("stat {path}"), e))?;
                Ok(info(&dir, OsStr::new(&last), &st, path.to_string()))
            }
            // `/`, `.`, `a/..`: a directory, so there is no final symlink to not follow.
            Err(_) => {
                let fd = self.open_in(path, OFlag::O_PATH, 0)?;
                let st = fstat(&fd).map_err(|e| OpError::sys(format!("stat {path}"), e))?;
                Ok(info(&fd, OsStr::new(""), &st, path.to_string()))
            }
        }
    }

    fn mkdir(&self, path: &str, parents: bool) -> Result<(), OpError> {
        if parents {
            return self.mkdir_all(path);
        }
        let (dir, last) = self.parent(path)?;
        mkdirat(&dir, last.as_str(), Mode::from_bits_truncate(0o755))
            .map_err(|e| OpError::sys(format!("mkdir {path}"), e))
    }

    /// `mkdir -p`: each prefix is resolved inside the root before its last component is
    /// created, so a symlink met on the way is followed only within the root.
    fn mkdir_all(&self, path: &str) -> Result<(), OpError> {
        check_path(path)?;
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for i in 0..comps.len() {
            if comps[i] == "." || comps[i] == ".." {
                continue;
            }
            let parent = format!("/{}", comps[..i].join("/"));
            let dir = self.open_in(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
            match mkdirat(&dir, comps[i], Mode::from_bits_truncate(0o755)) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    // Exists: fine if it is (or links to) a directory inside the root.
                    let so_far = format!("/{}", comps[..=i].join("/"));
                    self.open_in(&so_far, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
                }
                Err(e) => return Err(OpError::sys(format!("mkdir {path}"), e)),
            }
        }
        Ok(())
    }

    fn remove(&self, path: &str, recursive: bool) -> Result<(), OpError> {
        let (dir, last) = self.parent(path)?;
        let st = fstatat(&dir, last.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| OpError::sys(format!("remove {path}"), e))?;
        if kind_of(&st) != FileKind::Dir {
            return unlinkat(&dir, last.as_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| OpError::sys(format!("remove {path}"), e));
        }
        if recursive {
            remove_tree(dir.as_fd(), OsStr::new(&last))
                .map_err(|e| OpError::sys(format!("remove {path}"), e))
        } else {
            unlinkat(&dir, last.as_str(), UnlinkatFlags::RemoveDir)
                .map_err(|e| OpError::sys(format!("remove {path}"), e))
        }
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), OpError> {
        let (from_dir, from_last) = self.parent(from)?;
        let (to_dir, to_last) = self.parent(to)?;
        renameat(&from_dir, from_last.as_str(), &to_dir, to_last.as_str())
            .map_err(|e| OpError::sys(format!("rename {from} to {to}"), e))
    }
}

/// Refuses paths the kernel would misread (empty, or with a NUL byte).
fn check_path(path: &str) -> Result<(), OpError> {
    if path.contains('\0') {
        return Err(OpError::bad_request("path contains a NUL byte"));
    }
    Ok(())
}

/// Splits a path into its parent and a final component that names an entry
/// (not empty, `.` or `..`). Trailing slashes are ignored.
pub(crate) fn split_last(path: &str) -> Result<(String, String), OpError> {
    check_path(path)?;
    let trimmed = path.trim_end_matches('/');
    let (parent, last) = match trimmed.rfind('/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => ("", trimmed),
    };
    if last.is_empty() || last == "." || last == ".." {
        return Err(OpError::bad_request(format!(
            "path {path:?} does not end in a file name (it is empty, `/`, `.` or `..`)"
        )));
    }
    let parent = if parent.is_empty() && trimmed.starts_with('/') {
        "/"
    } else {
        parent
    };
    Ok((parent.to_string(), last.to_string()))
}

fn kind_of(st: &FileStat) -> FileKind {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Dir,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

fn info(dir: &OwnedFd, name: &OsStr, st: &FileStat, shown: String) -> FileInfo {
    let kind = kind_of(st);
    let link_target = if kind == FileKind::Symlink {
        readlinkat(dir, name)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    FileInfo {
        name: shown,
        kind,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode & 0o7777,
        mtime_ms: st.st_mtime * 1000 + st.st_mtime_nsec / 1_000_000,
        link_target,
    }
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The entry names of a directory, without `.` and `..`.
fn read_names(fd: &OwnedFd) -> Result<Vec<std::ffi::OsString>, Errno> {
    // Dir takes ownership and closes its descriptor, so give it a duplicate.
    let dup = fd
        .try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let mut dir = nix::dir::Dir::from_fd(dup)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsStr::from_bytes(name).to_owned());
    }
    Ok(names)
}

/// Removes the directory `name` in `parent` and everything in it. Every step names a single
/// component relative to an open directory and opens with `O_NOFOLLOW`, so a symlink in the
/// tree is removed, never followed.
fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let dir = openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for child in read_names(&dir)? {
        let st = match fstatat(&dir, child.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let res = if kind_of(&st) == FileKind::Dir {
            remove_tree(dir.as_fd(), &child)
        } else {
            unlinkat(&dir, child.as_os_str(), UnlinkatFlags::NoRemoveDir)
        };
        match res {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    drop(dir);
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_last_names_the_final_component() {
        assert_eq!(split_last("/a/b").unwrap(), ("/a".into(), "b".into()));
        assert_eq!(split_last("/a").unwrap(), ("/".into(), "a".into()));
        assert_eq!(split_last("a").unwrap(), ("".into(), "a".into()));
        assert_eq!(split_last("a/b/").unwrap(), ("a".into(), "b".into()));
        assert_eq!(
            split_last("../../etc/passwd").unwrap(),
            ("../../etc".into(), "passwd".into())
        );
    }

    #[test]
    fn split_last_refuses_paths_without_a_name() {
        for p in ["", "/", ".", "..", "a/..", "a/.", "//"] {
            assert_eq!(split_last(p).unwrap_err().code, "bad_request", "{p:?}");
        }
    }
}
