//! `watch`: report changes under a path with inotify.
//!
//! Watches are added through `/proc/self/fd/N` of a descriptor opened inside the root, so
//! the watched inode is the one the path names inside the root, whatever symlinks lie on
//! the way. Changed paths are reported relative to the root, starting with `/`.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use hangar_protocol::envd::{ChangeKind, FileKind, Request, Response};
use nix::fcntl::OFlag;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::OpError;
use crate::files::Root;
use crate::frame::{FrameReader, FrameWriter};

/// Most directories one recursive watch covers; inotify watches are a per-user kernel
/// resource shared by the whole sandbox.
const MAX_WATCHES: usize = 8192;

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
}

/// What an inotify event means for clients, or `None` for events they do not see.
pub(crate) fn change_kind(mask: AddWatchFlags) -> Option<ChangeKind> {
    if mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
        Some(ChangeKind::Created)
    } else if mask.intersects(
        AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF,
    ) {
        Some(ChangeKind::Removed)
    } else if mask.intersects(AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_ATTRIB) {
        Some(ChangeKind::Modified)
    } else {
        None
    }
}

/// `path` with `.` and `..` resolved lexically, absolute, no trailing slash.
pub(crate) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

struct Watcher<'a> {
    root: &'a Root,
    inotify: AsyncFd<Fd>,
    dirs: HashMap<WatchDescriptor, String>,
    /// The watch on the path the client asked for.
    top: Option<WatchDescriptor>,
}

impl Watcher<'_> {
    /// Watches `rel` (a path inside the root); returns the path as the kernel resolved it.
    fn add(&mut self, rel: &str) -> Result<(String, bool), OpError> {
        let fd: OwnedFd = self.root.open_in(rel, OFlag::O_PATH, 0)?;
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        // Report paths as the kernel resolved them (symlinks inside the root followed).
        let resolved = std::fs::read_link(&proc_path)
            .ok()
            .and_then(|p| p.strip_prefix(self.root.path()).ok().map(Path::to_path_buf))
            .map(|p| normalize(&p.to_string_lossy()))
            .unwrap_or_else(|| normalize(rel));
        let is_dir = nix::sys::stat::fstat(&fd)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .unwrap_or(false);
        let wd = self
            .inotify
            .get_ref()
            .0
            .add_watch(proc_path.as_str(), mask())
            .map_err(|e| OpError::sys(format!("watch {rel}"), e))?;
        self.dirs.insert(wd, resolved.clone());
        self.top.get_or_insert(wd);
        Ok((resolved, is_dir))
    }

    /// Watches every directory below `dir` (already watched), depth first, and returns the
    /// entries found, so that files created before a new directory's watch exist are
    /// reported too.
    fn add_tree(&mut self, dir: &str, found: &mut Vec<String>) {
        let Response::Entries { entries } = self.root.handle(Request::ListDir {
            path: dir.to_string(),
        }) else {
            return;
        };
        for e in entries {
            let p = join(dir, &e.name);
            found.push(p.clone());
            if e.kind == FileKind::Dir && self.dirs.len() < MAX_WATCHES && self.add(&p).is_ok() {
                self.add_tree(&p, found);
            }
        }
    }

    /// Turns kernel events into frames; adds watches for new directories when recursive.
    fn changes(&mut self, events: Vec<InotifyEvent>, recursive: bool) -> Vec<(String, ChangeKind)> {
        let mut out: Vec<(String, ChangeKind)> = Vec::new();
        let push = |out: &mut Vec<(String, ChangeKind)>, p: String, k: ChangeKind| {
            // A large write is many IN_MODIFY events; one is enough.
            if out.last().is_none_or(|(lp, lk)| *lp != p || *lk != k) {
                out.push((p, k));
            }
        };
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Events were lost: say that something changed at the top.
                if let Some(top) = self.top.and_then(|t| self.dirs.get(&t)).cloned() {
                    push(&mut out, top, ChangeKind::Modified);
                }
                continue;
            }
            if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                self.dirs.remove(&ev.wd);
                continue;
            }
            let Some(base) = self.dirs.get(&ev.wd).cloned() else {
                continue;
            };
            let path = match &ev.name {
                Some(n) => join(&base, &n.to_string_lossy()),
                None => base,
            };
            let Some(kind) = change_kind(ev.mask) else {
                continue;
            };
            // An event about a subdirectory itself repeats what its parent's watch reported.
            if ev.name.is_none() && Some(ev.wd) != self.top {
                continue;
            }
            push(&mut out, path.clone(), kind);
            if recursive
                && kind == ChangeKind::Created
                && ev.mask.contains(AddWatchFlags::IN_ISDIR)
                && self.dirs.len() < MAX_WATCHES
                && self.add(&path).is_ok()
            {
                let mut found = Vec::new();
                self.add_tree(&path, &mut found);
                for p in found {
                    push(&mut out, p, ChangeKind::Created);
                }
            }
        }
        out
    }
}

/// Runs one `watch` connection until the client goes away.
pub(crate) async fn run<R, W>(
    root: &Root,
    path: &str,
    recursive: bool,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| OpError::sys("start inotify", e))
        .and_then(|i| {
            // SAFETY: the Inotify owns its descriptor and returns the same number until it
            // is dropped together with the AsyncFd.
            unsafe { AsyncFd::register(Fd(i)) }
                .map_err(|e| OpError::io("register inotify", &e.into()))
        }) {
        Ok(i) => i,
        Err(e) => {
            let _ = writer.send(&Response::Error(e.into_body())).await;
            return;
        }
    };
    let mut w = Watcher {
        root,
        inotify,
        dirs: HashMap::new(),
        top: None,
    };
    match w.add(path) {
        Ok((top, is_dir)) => {
            if recursive && is_dir {
                w.add_tree(&top, &mut Vec::new());
            }
        }
        Err(e) => {
            let _ = writer.send(&Response::Error(e.into_body())).await;
            return;
        }
    }
    if writer.send(&Response::Ok).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            ready = w.inotify.readable() => {
                let Ok(mut guard) = ready else { return };
                let events = match guard.try_io(|i| i.get_ref().0.read_events().map_err(std::io::Error::from)) {
                    Ok(Ok(evs)) => evs,
                    Ok(Err(_)) => return,
                    Err(_would_block) => continue,
                };
                drop(guard);
                for (path, kind) in w.changes(events, recursive) {
                    if writer.send(&Response::Changed { path, kind }).await.is_err() {
                        return;
                    }
                }
            }
            // Watching ends when the client closes the connection; anything it sends is
            // ignored.
            frame = reader.next() => {
                if !matches!(frame, Ok(Some(_))) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_dots_lexically() {
        assert_eq!(normalize("a/./b/../c/"), "/a/c");
        assert_eq!(normalize("/../.."), "/");
        assert_eq!(normalize(""), "/");
    }

    #[test]
    fn events_map_to_change_kinds() {
        assert_eq!(
            change_kind(AddWatchFlags::IN_MOVED_TO),
            Some(ChangeKind::Created)
        );
        assert_eq!(
            change_kind(AddWatchFlags::IN_DELETE),
            Some(ChangeKind::Removed)
        );
        assert_eq!(
            change_kind(AddWatchFlags::IN_MODIFY),
            Some(ChangeKind::Modified)
        );
        assert_eq!(change_kind(AddWatchFlags::IN_IGNORED), None);
    }
}
