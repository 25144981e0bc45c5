//! The privileged entry point (`hangar-jail`): it reads a [`JailConfig`], builds the
//! sandbox and becomes its monitor. Nothing else in Hangar makes namespace, mount or
//! seccomp calls.
//!
//! ```text
//! hangar-jail (host root)         joins the cgroups, new private mount namespace,
//!   │                             id-mapped binds of the layers, overlayfs, then enters the
//!   │                             sandbox's user namespace and unshares the others
//!   ├─ fork ─ init (pid 1)        proc, dev, sys, masks, pivot_root, drops capabilities,
//!   │                             no_new_privs, seccomp, exec envd
//!   └─ waits for init, writes its exit status to the sandbox's `exit.json`, exits
//! ```
//!
//! The mounts live only in the sandbox's own mount namespaces, so they vanish with its
//! last process: nothing is mounted on the host, and a crash cannot leak a mount.
//!
//! The jail's stdin is a socket: the runtime sends the config on it and closes its sending
//! side; the jail then reports on the same socket, moved to fd 3: `P<init host pid>\n`
//! once init exists, `E<message>\n` on failure, and envd writes one byte once it listens.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, fork, pivot_root, setresgid, setresuid};
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
    /// cgroup directories to join.
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

fn run(cfg: &JailConfig, report: &mut File) -> JailResult<i32> {
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

    unshare(CloneFlags::CLONE_NEWNS).map_err(ctx(|| "new mount namespace".into()))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx(|| "making / private".into()))?;

    // envd, the sandbox's init, should be the last thing the OOM killer picks inside the
    // sandbox (its children reset their score to 0). Only host root may lower a score, and
    // some kernels refuse even that, so this is best effort.
    let _ = fs::write("/proc/self/oom_score_adj", "-999");
    let socket = cfg.dir.join(SOCKET_NAME);
    let _ = fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .map_err(ctx(|| format!("binding {}", socket.display())))?;
    fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(ctx(|| format!("chmod {}", socket.display())))?;

    let userns = new_user_namespace(cfg.uid_base, cfg.uid_count)?;
    let rootfs = cfg.dir.join("rootfs");
    mount_layers(cfg, &userns, &rootfs)?;
    stage_host_files(cfg)?;
    // From here on init works relative to its working directory: inside the user namespace
    // it may not traverse the host directories above the sandbox's (a data directory of
    // mode 0700, say). unshare(CLONE_NEWNS) carries the working directory over into the
    // new namespace's copy of the mount.
    std::env::set_current_dir(&rootfs).map_err(ctx(|| "chdir to the rootfs".into()))?;

    setns(userns.as_fd(), CloneFlags::CLONE_NEWUSER)
        .map_err(ctx(|| "entering the sandbox user namespace".into()))?;
    drop(userns);
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(ctx(|| "setresgid(0)".into()))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(ctx(|| "setresuid(0)".into()))?;
    nix::unistd::setgroups(&[]).map_err(ctx(|| "setgroups".into()))?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(ctx(|| "new namespaces".into()))?;

    // SAFETY: the jail is single-threaded, so the child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(ctx(|| "fork".into()))? {
        ForkResult::Child => {
            let err = init(cfg, listener.as_raw_fd()).unwrap_err();
            let _ = report.write_all(format!("E{}\n", err.replace('\n', " ")).as_bytes());
            // SAFETY: _exit skips atexit handlers and buffers the parent owns.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            drop(listener);
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
    }
}

fn dev_null() -> JailResult<File> {
    File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))
}

fn c_path(p: &Path) -> JailResult<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| format!("{}: {e}", p.display()))
}

/// Creates a user namespace mapping 0..count to base..base+count and returns its fd.
/// A process cannot write its own id maps with a range wider than one id, so a short-lived
/// child is cloned straight into the new namespace (`CLONE_NEWUSER`) and waits there while
/// the jail writes its maps. It shares the jail's memory (`CLONE_VM`, on a stack of its
/// own) and only blocks on a pipe, so nothing is copied for it as a fork would.
fn new_user_namespace(base: u32, count: u32) -> JailResult<OwnedFd> {
    /// The child: closes its copy of the pipe's write end (it has its own descriptor
    /// table), then waits for the jail to close the other copy.
    extern "C" fn hold(fds: *mut libc::c_void) -> libc::c_int {
        let mut b = 0u8;
        // SAFETY: `fds` points at the jail's `[read, write]` pair, which lives until the
        // child has been waited for; `b` is a valid one-byte buffer.
        unsafe {
            let [r, w] = *(fds as *const [libc::c_int; 2]);
            libc::close(w);
            libc::read(r, (&mut b as *mut u8).cast(), 1);
        }
        0
    }
    let (hold_r, hold_w) = nix::unistd::pipe().map_err(ctx(|| "pipe".into()))?;
    let mut fds = [hold_r.as_raw_fd(), hold_w.as_raw_fd()];
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the stack is ours and outlives the child (waited for below); the child runs
    // only `hold`, which reads one byte from a descriptor that stays open meanwhile.
    let child = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        libc::clone(
            hold,
            top.cast(),
            libc::CLONE_NEWUSER | libc::CLONE_VM | libc::SIGCHLD,
            fds.as_mut_ptr().cast(),
        )
    };
    if child < 0 {
        return Err(format!(
            "user namespaces are not available (clone(CLONE_NEWUSER): {})",
            std::io::Error::last_os_error()
        ));
    }
    let result = (|| {
        let proc = PathBuf::from(format!("/proc/{child}"));
        let map = format!("0 {base} {count}\n");
        fs::write(proc.join("uid_map"), &map).map_err(ctx(|| "writing uid_map".into()))?;
        fs::write(proc.join("gid_map"), &map).map_err(ctx(|| "writing gid_map".into()))?;
        let f = File::open(proc.join("ns/user")).map_err(ctx(|| "opening ns/user".into()))?;
        Ok(OwnedFd::from(f))
    })();
    drop(hold_w);
    let _ = waitpid(nix::unistd::Pid::from_raw(child), None);
    drop(stack);
    drop(hold_r);
    result
}

/// Host files init binds into the sandbox (envd, `files`), staged as bind mounts in the
/// sandbox directory (`envd`, `file-N`) while the jail is still host root, so init finds
/// them at `../envd` and `../file-N` from the rootfs without looking at host paths.
fn stage_host_files(cfg: &JailConfig) -> JailResult<()> {
    let staged = std::iter::once((&cfg.envd, cfg.dir.join("envd"))).chain(
        cfg.files
            .iter()
            .enumerate()
            .map(|(i, f)| (&f.source, cfg.dir.join(format!("file-{i}")))),
    );
    for (source, target) in staged {
        File::create(&target).map_err(ctx(|| format!("creating {}", target.display())))?;
        mnt(
            Some(&source.display().to_string()),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    Ok(())
}

/// Mounts each layer (id-mapped where asked) under `dir/lower/N` and the overlay at `rootfs`.
fn mount_layers(cfg: &JailConfig, userns: &OwnedFd, rootfs: &Path) -> JailResult<()> {
    let mut lowers = Vec::new();
    for (i, layer) in cfg.layers.iter().enumerate() {
        let target = cfg.dir.join("lower").join(i.to_string());
        mkdir_p(&target)?;
        bind_layer(&layer.path, &target, layer.idmap.then_some(userns))?;
        lowers.push(target.display().to_string());
    }
    if lowers.is_empty() {
        return Err("a sandbox needs at least one layer".into());
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

/// Binds `src` (that filesystem only, not its submounts) read-only at `target`, id-mapped
/// through `userns` when given.
fn bind_layer(src: &Path, target: &Path, userns: Option<&OwnedFd>) -> JailResult<()> {
    let src_c = c_path(src)?;
    let target_c = c_path(target)?;
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
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY
            | if userns.is_some() {
                MOUNT_ATTR_IDMAP
            } else {
                0
            },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map(|u| u.as_raw_fd() as u64).unwrap_or(0),
    };
    let empty = c"";
    // SAFETY: `attr` is a valid mount_attr of the size passed; the fd is open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(format!(
            "mount_setattr({}, idmap={}): {}",
            src.display(),
            userns.is_some(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: valid fd and NUL-terminated strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
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

/// Runs as the sandbox's pid 1 until it execs envd; returns only on failure.
fn init(cfg: &JailConfig, listener: RawFd) -> JailResult<std::convert::Infallible> {
    nix::unistd::sethostname(&cfg.id).map_err(ctx(|| "sethostname".into()))?;
    loopback_up()?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    // Mounts inherited from the jail's namespace are locked, and pivot_root refuses a
    // locked new root, so the root is bound onto itself first and entered again through
    // its parent (the sandbox directory, mode 0711) to land on the new mount.
    mnt(
        Some("."),
        Path::new("."),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    std::env::set_current_dir("../rootfs").map_err(ctx(|| "entering the rootfs".into()))?;
    let rootfs = Path::new(".");
    let at = |p: &str| rootfs.join(p.trim_start_matches('/'));

    mkdir_p(&at("/proc"))?;
    mnt(Some("proc"), &at("/proc"), Some("proc"), nosuid, None)?;

    mkdir_p(&at("/dev"))?;
    mnt(
        Some("tmpfs"),
        &at("/dev"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for dev in policy::DEVICES {
        let target = at("/dev").join(dev);
        File::create(&target).map_err(ctx(|| format!("creating {}", target.display())))?;
        mnt(
            Some(&format!("/dev/{dev}")),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    mkdir_p(&at("/dev/pts"))?;
    mnt(
        Some("devpts"),
        &at("/dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mkdir_p(&at("/dev/shm"))?;
    mnt(
        Some("shm"),
        &at("/dev/shm"),
        Some("tmpfs"),
        nosuid,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, at("/dev").join(link))
            .map_err(ctx(|| format!("symlink /dev/{link}")))?;
    }

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
        return Err(format!(
            "dup2 of the listener: {}",
            std::io::Error::last_os_error()
        ));
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
    Err(format!("exec envd: {err}"))
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
