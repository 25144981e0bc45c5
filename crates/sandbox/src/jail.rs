//! The privileged entry point (`hangar-jail`): it reads a [`JailConfig`], builds the
//! sandbox and becomes its monitor. Nothing else in Hangar makes namespace, mount or
//! seccomp calls.
//!
//! ```text
//! hangar-jail (host root)         joins the cgroups, binds envd's socket
//!   ├─ clone ─ init (pid 1)       in new user, mount, pid, net, ipc, uts and cgroup
//!   │                             namespaces (one clone, as bubblewrap does): hostname,
//!   │                             loopback, then waits for the jail's go byte
//!   ├─ writes init's uid/gid maps; in init's mount namespace: id-mapped binds of the
//!   │  layers, overlayfs; then enters init's user namespace (no host privilege left)
//!   │                 init:       proc, dev, sys, masks, pivot_root, drops capabilities,
//!   │                             no_new_privs, seccomp, exec envd
//!   └─ waits for init, writes its exit status to the sandbox's `exit.json`, exits
//! ```
//!
//! The mounts live only in the sandbox's mount namespace, so they vanish with its last
//! process: nothing is mounted on the host, and a crash cannot leak a mount.
//!
//! The jail's stdin is a socket: the runtime sends the config on it and closes its sending
//! side; the jail then reports on the same socket, moved to fd 3: `P<init host pid>\n`
//! once init exists, `E<message>\n` on failure, and envd writes one byte once it listens.
//! The runtime may start a jail ahead of its sandbox, so the jail opens the sandbox's
//! `jail.log` itself, as its stdout and stderr (which envd inherits).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Gid, Uid, pivot_root, setresgid, setresuid};
use serde::{Deserialize, Serialize};

use crate::policy;

/// The fd on which the jail (and then envd) reports progress to the runtime.
pub const REPORT_FD: RawFd = 3;

/// The fd on which envd finds its listening socket.
const LISTEN_FD: RawFd = 4;

/// envd's socket, in the sandbox directory on the host. The jail binds it as host root
/// and hands envd the listening descriptor, so the socket's file is never inside the
/// sandbox: nothing in it can replace the socket or reach another sandbox's.
pub const SOCKET_NAME: &str = "envd.sock";

/// Where envd and its socket directory appear inside the sandbox.
pub const ENVD_DIR: &str = "/.hangar";

/// Everything the jail needs, serialized by the runtime onto the jail's stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JailConfig {
    /// Sandbox id; also its hostname.
    pub id: String,
    /// Read-only layers, top-most first.
    pub layers: Vec<LayerMount>,
    /// Per-sandbox directory holding the mount points and state (see [`crate::local`]).
    pub dir: PathBuf,
    /// The envd binary on the host.
    pub envd: PathBuf,
    /// cgroup directories to join (none when the runtime moved the jail into them).
    pub cgroups: Vec<PathBuf>,
    /// First host uid/gid of the sandbox's id range.
    pub uid_base: u32,
    /// Size of the range.
    pub uid_count: u32,
    /// Paths inside the sandbox to cover with an empty read-only tmpfs.
    pub hide: Vec<PathBuf>,
    /// Paths inside the sandbox to cover with a fresh writable tmpfs (mode 1777).
    pub scratch: Vec<PathBuf>,
    /// Host files bound read-only over files inside the sandbox (created if missing),
    /// e.g. the generated `/etc/resolv.conf` and the host's CA bundle for egress.
    #[serde(default)]
    pub files: Vec<FileBind>,
    /// envd's environment, which is the base environment of everything it runs.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// A host file bound read-only at a path inside the sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileBind {
    /// Host file.
    pub source: PathBuf,
    /// Path inside the sandbox.
    pub target: PathBuf,
}

/// One read-only layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerMount {
    /// Host directory.
    pub path: PathBuf,
    /// Shift its owners into the sandbox's id range with an id-mapped mount, so files owned
    /// by host root appear owned by the sandbox's root. Off for the host's own root, whose
    /// files must stay foreign (and root-only files unreadable) inside.
    pub idmap: bool,
}

/// The init process's end, as written to `exit.json` by the jail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitExit {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if a signal killed it.
    pub signal: Option<i32>,
}

type JailResult<T> = Result<T, String>;

fn ctx<E: std::fmt::Display>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> String {
    move |e| format!("{}: {e}", what())
}

/// `hangar-jail`'s main: never returns.
pub fn main() -> ! {
    // Its own session, so that signals for the server's terminal or process group never
    // reach a sandbox. (The runtime spawns the jail with nothing run between fork and exec.)
    // SAFETY: setsid has no memory effects.
    unsafe { libc::setsid() };
    // SAFETY: dup2 of stdin, the report socket, onto fd 3, which is free: the runtime
    // passes nothing but fds 0-2.
    if unsafe { libc::dup2(0, REPORT_FD) } < 0 {
        eprintln!("hangar-jail: dup2: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // SAFETY: fd 3 is the report socket, just duplicated; nothing else owns it.
    let mut report = unsafe { File::from_raw_fd(REPORT_FD) };
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(null.as_fd());
    }
    let mut text = String::new();
    let result = (&report)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the jail config: {e}"))
        .and_then(|_| {
            serde_json::from_str::<JailConfig>(&text).map_err(|e| format!("bad jail config: {e}"))
        })
        .and_then(|cfg| run(&cfg, &mut report));
    match result {
        Ok(code) => std::process::exit(code),
        Err(msg) => {
            let _ = report.write_all(format!("E{}\n", msg.replace('\n', " ")).as_bytes());
            eprintln!("hangar-jail: {msg}");
            std::process::exit(1)
        }
    }
}

/// The sandbox's log: the jail's stdout and stderr from here on, and envd's.
pub const LOG_NAME: &str = "jail.log";

fn run(cfg: &JailConfig, report: &mut File) -> JailResult<i32> {
    // The jail may have been started before its sandbox existed (see `local`'s spares).
    let log = File::create(cfg.dir.join(LOG_NAME)).map_err(ctx(|| "creating jail.log".into()))?;
    for fd in [1, 2] {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        if unsafe { libc::dup2(log.as_raw_fd(), fd) } < 0 {
            return Err(format!(
                "dup2 of jail.log: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    drop(log);
    let pid = std::process::id().to_string();
    for dir in &cfg.cgroups {
        fs::write(dir.join("cgroup.procs"), &pid)
            .map_err(ctx(|| format!("joining cgroup {}", dir.display())))?;
    }
    // Opened while still host root: the jail loses access to the host when it enters the
    // sandbox's user namespace. Readers treat an empty or partial file as "not yet"; the
    // status is one small write.
    let mut exit_file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(cfg.dir.join("exit.json"))
        .map_err(ctx(|| "creating exit.json".into()))?;

    // envd, the sandbox's init, should be the last thing the OOM killer picks inside the
    // sandbox (its children reset their score to 0). Only host root may lower a score, and
    // some kernels refuse even that, so this is best effort. Init inherits it.
    let _ = fs::write("/proc/self/oom_score_adj", "-999");
    let socket = cfg.dir.join(SOCKET_NAME);
    let _ = fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .map_err(ctx(|| format!("binding {}", socket.display())))?;
    fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(ctx(|| format!("chmod {}", socket.display())))?;
    let host_mnt = File::open("/proc/self/ns/mnt").map_err(ctx(|| "opening ns/mnt".into()))?;
    // Init starts in its copy of the sandbox directory and works relative to it from then
    // on: inside the user namespace it may not traverse the host directories above (a data
    // directory of mode 0700, say).
    std::env::set_current_dir(&cfg.dir)
        .map_err(ctx(|| format!("chdir to {}", cfg.dir.display())))?;
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ctx(|| "pipe".into()))?;

    let child = clone_init()?;
    if child == 0 {
        drop(go_w);
        match init(cfg, listener.as_raw_fd(), go_r) {
            Err(InitError::Failed(err)) => {
                let _ = report.write_all(format!("E{}\n", err.replace('\n', " ")).as_bytes());
            }
            // The jail gave up and reports why itself.
            Err(InitError::NoGo) => {}
            Ok(never) => match never {},
        }
        // SAFETY: _exit skips atexit handlers and buffers the parent owns.
        unsafe { libc::_exit(1) }
    }
    drop(go_r);
    drop(listener);
    let child = nix::unistd::Pid::from_raw(child);
    if let Err(e) = prepare_init(cfg, child, &host_mnt) {
        // Init reads end of file instead of the go byte and exits.
        drop(go_w);
        let _ = waitpid(child, None);
        return Err(e);
    }
    drop(host_mnt);
    nix::unistd::write(&go_w, b"G").map_err(ctx(|| "starting init".into()))?;
    drop(go_w);
    report
        .write_all(format!("P{child}\n").as_bytes())
        .map_err(ctx(|| "reporting the init pid".into()))?;
    drop(std::mem::replace(report, dev_null()?));
    let status = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                break InitExit {
                    code: Some(code),
                    signal: None,
                };
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                break InitExit {
                    code: None,
                    signal: Some(sig as i32),
                };
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for init: {e}")),
        }
    };
    let json = serde_json::to_string(&status).map_err(|e| e.to_string())?;
    exit_file
        .write_all(json.as_bytes())
        .map_err(|e| format!("writing exit.json: {e}"))?;
    Ok(0)
}

/// The namespaces init is created in, all at once, as bubblewrap does.
const INIT_NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP;

/// Creates init in new namespaces with one `clone`, fork-like (a copy of this process on a
/// copy of its stack). Returns 0 in init and init's host pid in the jail.
fn clone_init() -> JailResult<libc::pid_t> {
    // SAFETY: clone without CLONE_VM and without a new stack returns twice like fork; the
    // jail is single-threaded, so the child may run arbitrary code.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (INIT_NAMESPACES | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(format!(
            "creating the sandbox's namespaces (clone with user, mount, pid, net, ipc, uts \
             and cgroup namespaces): {}; user namespaces must be enabled",
            std::io::Error::last_os_error()
        ));
    }
    Ok(r as libc::pid_t)
}

/// What the jail does for init between its `clone` and its go byte: writes the user
/// namespace's id maps (0..count inside = base..base+count on the host; a process cannot
/// write a map wider than one id for itself), then, inside init's mount namespace as host
/// root, binds the layers (id-mapped through init's user namespace where asked), mounts
/// the overlay and stages the host files. Back in the host's mount namespace, the jail
/// enters init's user namespace: from then on it has no privilege on the host.
///
/// Init's mount namespace was copied from the host's into a new user namespace, so the
/// kernel turned every shared mount in it into a slave: nothing mounted here reaches the
/// host. The mounts made here are not locked (they were not inherited), so init can
/// `pivot_root` onto the overlay directly.
fn prepare_init(cfg: &JailConfig, init: nix::unistd::Pid, host_mnt: &File) -> JailResult<()> {
    let proc = PathBuf::from(format!("/proc/{init}"));
    let map = format!("0 {} {}\n", cfg.uid_base, cfg.uid_count);
    fs::write(proc.join("uid_map"), &map).map_err(ctx(|| "writing uid_map".into()))?;
    fs::write(proc.join("gid_map"), &map).map_err(ctx(|| "writing gid_map".into()))?;
    let userns =
        OwnedFd::from(File::open(proc.join("ns/user")).map_err(ctx(|| "opening ns/user".into()))?);
    let mntns = File::open(proc.join("ns/mnt")).map_err(ctx(|| "opening ns/mnt".into()))?;
    // Host paths are resolved here, in the host's mount namespace, into detached copies:
    // in init's, every host mount is locked to its parent, and a copy of one with locked
    // mounts below it (the host's `/`) is refused.
    let layers = cfg
        .layers
        .iter()
        .map(|l| {
            let tree = detached_tree(&l.path)?;
            let attr = MOUNT_ATTR_RDONLY | if l.idmap { MOUNT_ATTR_IDMAP } else { 0 };
            set_tree_attr(&tree, attr, l.idmap.then_some(&userns))
                .map_err(|e| format!("{e} ({}, id-mapped: {})", l.path.display(), l.idmap))?;
            Ok(tree)
        })
        .collect::<JailResult<Vec<_>>>()?;
    if layers.is_empty() {
        return Err("a sandbox needs at least one layer".into());
    }
    let staged = host_files(cfg)
        .map(|(source, target)| Ok((detached_tree(source)?, target)))
        .collect::<JailResult<Vec<_>>>()?;

    setns(mntns.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(ctx(|| "entering the sandbox's mount namespace".into()))?;
    let rootfs = cfg.dir.join("rootfs");
    let mounted = mount_layers(cfg, layers, &rootfs)
        .and_then(|()| make_dev(&rootfs.join("dev"), cfg.uid_base))
        .and_then(|()| {
            for (tree, target) in staged {
                File::create(&target).map_err(ctx(|| format!("creating {}", target.display())))?;
                attach_tree(&tree, &target)?;
            }
            Ok(())
        });
    setns(host_mnt.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(ctx(|| "returning to the host's mount namespace".into()))?;
    mounted?;
    setns(userns.as_fd(), CloneFlags::CLONE_NEWUSER)
        .map_err(ctx(|| "entering the sandbox's user namespace".into()))
}

fn dev_null() -> JailResult<File> {
    File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))
}

fn c_path(p: &Path) -> JailResult<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| format!("{}: {e}", p.display()))
}

/// The sandbox's `/dev`: a tmpfs owned by the sandbox's root, holding the device nodes of
/// [`policy::DEVICES`] (made like the host's, by host root: a tmpfs mounted inside the
/// user namespace could not hold working device nodes, and binding each host node costs
/// a mount apiece), the usual symlinks, and mount points for init's devpts and shm.
/// The sandbox cannot add device nodes: `mknod` of a device needs `CAP_MKNOD` on the host.
fn make_dev(dev: &Path, uid_base: u32) -> JailResult<()> {
    match fs::DirBuilder::new().mode(0o755).create(dev) {
        // Made here by host root: handed to the sandbox's root as init would have made it.
        Ok(()) => std::os::unix::fs::chown(dev, Some(uid_base), Some(uid_base))
            .map_err(ctx(|| format!("chown {}", dev.display())))?,
        // The jail is host root here: a `/dev` in the image that is a symlink would lead
        // its mounts and device nodes elsewhere, so only a directory is taken.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if !fs::symlink_metadata(dev).is_ok_and(|m| m.is_dir()) {
                return Err("the rootfs's /dev is not a directory".into());
            }
        }
        Err(e) => return Err(format!("mkdir {}: {e}", dev.display())),
    }
    mnt(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some(&format!(
            "mode=755,size=65536k,uid={uid_base},gid={uid_base}"
        )),
    )?;
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let made = make_nodes(dev);
    nix::sys::stat::umask(umask);
    made?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(ctx(|| format!("symlink /dev/{link}")))?;
    }
    for dir in ["pts", "shm"] {
        mkdir_p(&dev.join(dir))?;
    }
    Ok(())
}

/// The device nodes of [`policy::DEVICES`] in `dev`, with the host's numbers and modes.
fn make_nodes(dev: &Path) -> JailResult<()> {
    for name in policy::DEVICES {
        let host = Path::new("/dev").join(name);
        let meta = fs::metadata(&host).map_err(ctx(|| format!("stat {}", host.display())))?;
        if !std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) {
            return Err(format!("{} is not a character device", host.display()));
        }
        let mode = nix::sys::stat::Mode::from_bits_truncate(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        );
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        let node = dev.join(name);
        // The host's mode as it is (the jail's umask is 0 here).
        nix::sys::stat::mknod(&node, nix::sys::stat::SFlag::S_IFCHR, mode, rdev)
            .map_err(ctx(|| format!("mknod {}", node.display())))?;
    }
    Ok(())
}

/// Host files init binds into the sandbox (envd, `files`), and where they are staged in
/// the sandbox directory (`envd`, `file-N`) by the jail, still host root, so init finds
/// them at `../envd` and `../file-N` from the rootfs without looking at host paths.
fn host_files(cfg: &JailConfig) -> impl Iterator<Item = (&Path, PathBuf)> {
    std::iter::once((cfg.envd.as_path(), cfg.dir.join("envd"))).chain(
        cfg.files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.source.as_path(), cfg.dir.join(format!("file-{i}")))),
    )
}

/// Attaches each layer's detached tree under `dir/lower/N` and mounts the overlay at
/// `rootfs`.
fn mount_layers(cfg: &JailConfig, layers: Vec<OwnedFd>, rootfs: &Path) -> JailResult<()> {
    let mut lowers = Vec::new();
    for (i, tree) in layers.into_iter().enumerate() {
        let target = cfg.dir.join("lower").join(i.to_string());
        mkdir_p(&target)?;
        attach_tree(&tree, &target)?;
        lowers.push(target.display().to_string());
    }
    let upper = cfg.dir.join("upper");
    let work = cfg.dir.join("work");
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(ctx(|| format!("mounting overlayfs ({data})")))
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// A detached copy of the mount at `src` (that filesystem only, not its submounts).
fn detached_tree(src: &Path) -> JailResult<OwnedFd> {
    let src_c = c_path(src)?;
    // SAFETY: valid NUL-terminated path; the returned fd is checked and owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src_c.as_ptr(),
            (OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(format!(
            "open_tree({}): {}",
            src.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sets mount attributes (`MOUNT_ATTR_*`) on a detached tree, id-mapped through `userns`
/// when given.
fn set_tree_attr(tree: &OwnedFd, attr_set: u64, userns: Option<&OwnedFd>) -> JailResult<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map(|u| u.as_raw_fd() as u64).unwrap_or(0),
    };
    // SAFETY: `attr` is a valid mount_attr of the size passed; the fd is open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(format!(
            "mount_setattr: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Attaches a detached tree at `target`, in this process's mount namespace.
fn attach_tree(tree: &OwnedFd, target: &Path) -> JailResult<()> {
    let target_c = c_path(target)?;
    // SAFETY: valid fd and NUL-terminated strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(format!(
            "move_mount({}): {}",
            target.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn mkdir_p(p: &Path) -> JailResult<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(ctx(|| format!("mkdir {}", p.display())))
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> JailResult<()> {
    mount(src, target, fstype, flags, data).map_err(ctx(|| {
        format!(
            "mount {} on {}",
            fstype.or(src).unwrap_or("?"),
            target.display()
        )
    }))
}

/// Why init did not exec envd.
enum InitError {
    /// The jail closed the go pipe without its byte: it failed and reports why.
    NoGo,
    /// Init failed; the message goes to the report socket.
    Failed(String),
}

impl From<String> for InitError {
    fn from(e: String) -> Self {
        InitError::Failed(e)
    }
}

/// Runs as the sandbox's pid 1 until it execs envd; returns only on failure. It starts
/// in the sandbox directory, in its new namespaces, with the jail's credentials (host root,
/// unmapped, with every capability in the new user namespace only).
fn init(
    cfg: &JailConfig,
    listener: RawFd,
    go: OwnedFd,
) -> Result<std::convert::Infallible, InitError> {
    // These need no id maps, so they overlap with the jail's work for init.
    nix::unistd::sethostname(&cfg.id).map_err(ctx(|| "sethostname".into()))?;
    loopback_up()?;
    let mut byte = [0u8];
    let got = loop {
        match nix::unistd::read(&go, &mut byte) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r,
        }
    };
    if got != Ok(1) {
        return Err(InitError::NoGo);
    }
    drop(go);
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(ctx(|| "setresgid(0)".into()))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(ctx(|| "setresuid(0)".into()))?;
    nix::unistd::setgroups(&[]).map_err(ctx(|| "setgroups".into()))?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    // The overlay was mounted by the jail in this namespace (so it is not locked, and
    // pivot_root takes it as the new root as it is).
    std::env::set_current_dir("rootfs").map_err(ctx(|| "entering the rootfs".into()))?;
    let rootfs = Path::new(".");
    let at = |p: &str| rootfs.join(p.trim_start_matches('/'));

    mkdir_p(&at("/proc"))?;
    mnt(Some("proc"), &at("/proc"), Some("proc"), nosuid, None)?;

    // /dev is the jail's tmpfs (see `make_dev`); the pseudo-terminals and shared memory
    // are this sandbox's own.
    mnt(
        Some("devpts"),
        &at("/dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mnt(
        Some("shm"),
        &at("/dev/shm"),
        Some("tmpfs"),
        nosuid,
        Some("mode=1777,size=65536k"),
    )?;

    mkdir_p(&at("/sys"))?;
    if mount(
        Some("sysfs"),
        &at("/sys"),
        Some("sysfs"),
        nosuid | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .is_err()
    {
        // sysfs needs a network namespace of our own and no overmounted host sysfs; an
        // empty /sys is the safe fallback.
        mnt(
            Some("tmpfs"),
            &at("/sys"),
            Some("tmpfs"),
            nosuid | MsFlags::MS_RDONLY,
            Some("size=0"),
        )?;
    }

    for p in policy::MASKED_PATHS {
        mask(&at(p), &at("/dev/null"))?;
    }
    for p in policy::READONLY_PATHS {
        let target = at(p);
        if target.exists() {
            bind_read_only(
                &target.display().to_string(),
                &target,
                MsFlags::MS_REC,
                nosuid,
            )?;
        }
    }
    for p in &cfg.hide {
        let target = rootfs.join(p.strip_prefix("/").unwrap_or(p));
        if target.is_dir() {
            mnt(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                nosuid | MsFlags::MS_RDONLY,
                Some("size=0,mode=755"),
            )?;
        } else if target.exists() {
            mask(&target, &at("/dev/null"))?;
        }
    }
    for p in &cfg.scratch {
        let target = rootfs.join(p.strip_prefix("/").unwrap_or(p));
        if target.is_dir() {
            mnt(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=1777"),
            )?;
        }
    }

    // envd, behind a read-only tmpfs.
    let hangar = at(ENVD_DIR);
    mkdir_p(&hangar)?;
    mnt(
        Some("tmpfs"),
        &hangar,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755,size=16k"),
    )?;
    let envd = hangar.join("envd");
    File::create(&envd).map_err(ctx(|| "creating the envd mount point".into()))?;
    bind_read_only(
        "../envd",
        &envd,
        MsFlags::empty(),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    // Host files last, so targets inside /.hangar (the CA bundle) land on its tmpfs.
    for (i, bind) in cfg.files.iter().enumerate() {
        let target = rootfs.join(bind.target.strip_prefix("/").unwrap_or(&bind.target));
        if let Some(parent) = target.parent() {
            mkdir_p(parent)?;
        }
        if fs::symlink_metadata(&target).is_err() {
            File::create(&target).map_err(ctx(|| format!("creating {}", target.display())))?;
        }
        bind_read_only(&format!("../file-{i}"), &target, MsFlags::empty(), nosuid)?;
    }

    mnt(
        None,
        &hangar,
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755,size=16k"),
    )?;

    pivot_root(".", ".").map_err(ctx(|| "pivot_root".into()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx(|| "detaching the old root".into()))?;
    std::env::set_current_dir("/").map_err(ctx(|| "chdir /".into()))?;

    drop_privileges()?;
    // dup2 leaves the new descriptor without close-on-exec, so envd inherits it.
    // SAFETY: both are plain descriptor numbers; LISTEN_FD is free (fds beyond the report
    // pipe are closed right after) and `listener` is open.
    if listener != LISTEN_FD && unsafe { libc::dup2(listener, LISTEN_FD) } < 0 {
        return Err(format!("dup2 of the listener: {}", std::io::Error::last_os_error()).into());
    }
    const _: () = assert!(REPORT_FD < LISTEN_FD);
    close_other_fds()?;
    let stdin = File::open("/dev/null").map_err(ctx(|| "/dev/null".into()))?;
    nix::unistd::dup2_stdin(stdin.as_fd()).map_err(ctx(|| "dup2".into()))?;

    let prog = c_path(&envd_in_sandbox())?;
    let mut args = vec![
        CString::from(c"envd"),
        CString::from(c"--listen-fd"),
        CString::new(LISTEN_FD.to_string()).map_err(|e| e.to_string())?,
        CString::from(c"--ready-fd"),
        CString::new(REPORT_FD.to_string()).map_err(|e| e.to_string())?,
    ];
    for (k, v) in &cfg.env {
        args.push(CString::from(c"--env"));
        args.push(CString::new(format!("{k}={v}")).map_err(|e| format!("environment {k}: {e}"))?);
    }
    let env = [
        CString::from(c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        CString::from(c"HOME=/root"),
    ];
    for f in SECCOMP_FILTERS {
        seccompiler::apply_filter(f).map_err(ctx(|| "applying the seccomp filter".into()))?;
    }
    let err = nix::unistd::execve(&prog, &args, &env).unwrap_err();
    Err(format!("exec envd: {err}").into())
}

/// [`policy::seccomp_filters`], compiled to BPF when this crate was built (`build.rs`), as
/// Firecracker does: a start applies them without compiling anything.
static SECCOMP_FILTERS: &[&[seccompiler::sock_filter]] =
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

/// envd's path inside the sandbox.
pub fn envd_in_sandbox() -> PathBuf {
    Path::new(ENVD_DIR).join("envd")
}

/// Binds `source` at `target`, then makes that mount read-only with `flags` (a bind mount
/// takes its read-only flag only on remount).
fn bind_read_only(source: &str, target: &Path, rec: MsFlags, flags: MsFlags) -> JailResult<()> {
    mnt(Some(source), target, None, MsFlags::MS_BIND | rec, None)?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags;
    mnt(None, target, None, ro, None)
}

fn mask(target: &Path, dev_null: &Path) -> JailResult<()> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => mnt(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0"),
        ),
        Ok(_) => mnt(
            Some(&dev_null.display().to_string()),
            target,
            None,
            MsFlags::MS_BIND,
            None,
        ),
        Err(_) => Ok(()),
    }
}

fn drop_privileges() -> JailResult<()> {
    use caps::{CapSet, CapsHashSet};
    let keep: CapsHashSet = policy::KEPT_CAPABILITIES.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(ctx(|| format!("dropping {cap} from the bounding set")))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(ctx(|| "clearing ambient capabilities".into()))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .map_err(ctx(|| "clearing inheritable capabilities".into()))?;
    caps::set(None, CapSet::Effective, &keep)
        .map_err(ctx(|| "setting effective capabilities".into()))?;
    caps::set(None, CapSet::Permitted, &keep)
        .map_err(ctx(|| "setting permitted capabilities".into()))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Closes every descriptor above `LISTEN_FD` (0-2, the report pipe and the listener stay).
fn close_other_fds() -> JailResult<()> {
    // SAFETY: close_range takes plain integers; the descriptors closed are ones this
    // process no longer needs and nothing else in it uses.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            LISTEN_FD as libc::c_uint + 1,
            libc::c_uint::MAX,
            0,
        )
    };
    if r < 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Brings the loopback interface of the new network namespace up.
fn loopback_up() -> JailResult<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq whose name is NUL-terminated.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let sock = OwnedFd::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(format!(
                "SIOCGIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(format!(
                "SIOCSIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compiled_at_build_time_are_the_policy() {
        let now = policy::seccomp_filters().unwrap();
        assert_eq!(SECCOMP_FILTERS.len(), now.len());
        for (built, now) in SECCOMP_FILTERS.iter().zip(&now) {
            assert_eq!(*built, now.as_slice());
        }
    }
}
