//! The local backend: sandboxes on this machine, one directory each under
//! `<data dir>/sandboxes/<id>/`:
//!
//! ```text
//! sandbox.json   what was asked for and the pids (the record); destroying.json once
//!                destroy has begun
//! upper/ work/   overlayfs upper and work directories (the sandbox's writes)
//! lower/N/       mount points of the read-only layers (mounted only inside the sandbox)
//! rootfs/        mount point of the overlay (likewise)
//! envd.sock      envd's socket (bound by the jail; envd gets the listening descriptor)
//! envd, file-N   host files staged for binding into the sandbox
//! exit.json      how init ended, written by the jail
//! jail.log       the jail's and envd's stderr
//! ```
//!
//! The record on disk is the truth: a sandbox outlives the process that created it (the
//! CLI, or a server that crashed), and [`LocalRuntime::recover`] re-adopts live ones and
//! reaps the rest.
//!
//! Destroy is split in two so that tearing down is off the caller's path: `destroy` renames
//! the record to `destroying.json` (from then on the sandbox is neither found nor listed;
//! a rename needs no free space, so this works on a full disk) and SIGKILLs init, whose
//! death takes every process of its pid namespace with it; a background thread (the
//! teardown thread) then waits for the jail, removes the cgroups and the directory. A
//! crash in between leaves `destroying.json`, and `recover` finishes the job.
//! `destroy_wait` is the same and waits for the teardown too.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hangar_config::{Config, SandboxConfig, parse_size};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::cgroup::{Hierarchies, SandboxCgroup, Usage};
use crate::jail::{FileBind, InitExit, JailConfig, LayerMount};
use crate::{
    EnvdClient, Limits, Network, Rootfs, Runtime, Sandbox, SandboxError, SandboxSpec, Status,
    network,
};

/// How long a sandbox may take to start before it is given up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a live snapshot waits for a sandbox's processes to freeze.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// Paths that are always a fresh tmpfs when the host root is the rootfs.
const HOST_SCRATCH: &[&str] = &["/tmp", "/var/tmp", "/run"];

/// The embedded Linux backend.
#[derive(Debug)]
pub struct LocalRuntime {
    host_rules: std::sync::Mutex<bool>,
    place: Place,
    data_dir: PathBuf,
    jail: PathBuf,
    envd: PathBuf,
    config: SandboxConfig,
    teardown: Teardown,
}

/// Where sandboxes live on this host: their directories and the cgroup hierarchies.
/// Shared with the teardown thread.
#[derive(Clone, Debug)]
struct Place {
    dir: PathBuf,
    hierarchies: Hierarchies,
    spares: Option<std::sync::Arc<Spares>>,
}

/// Sandbox places made ahead of time, where all of a sandbox's groups are on v1 (v2
/// cannot rename a group): a set of cgroups with the default limits and, in it, a jail
/// already started and waiting for its config. A create renames a spare's groups into
/// place (writing only the limits that differ) and sends its jail the config, instead of
/// making five groups, writing their limits, starting the jail and moving it into the
/// groups on its path; with none ready it does all that as before. The teardown thread
/// makes the next spare after each teardown. Spares are named
/// `spare-<pid>-<start time>-<runtime>-<n>`, so that `recover` tells a dead process's
/// leftovers from a live runtime's; a runtime removes its own when dropped.
#[derive(Debug)]
struct Spares {
    prefix: String,
    limits: Limits,
    jail: PathBuf,
    /// The tokio runtime that reaps the spare jails (tokio reaps the children it started);
    /// without one, spares are groups only.
    tokio: Option<tokio::runtime::Handle>,
    made: std::sync::atomic::AtomicU64,
    ready: std::sync::Mutex<Vec<Spare>>,
}

/// One spare: its groups and the jail waiting in them.
#[derive(Debug)]
struct Spare {
    cgroup: SandboxCgroup,
    jail: Option<StartedJail>,
}

/// A jail started and waiting for its config on `socket` (its stdin).
#[derive(Debug)]
struct StartedJail {
    pid: Option<ProcessId>,
    socket: std::os::unix::net::UnixStream,
}

/// The names of spare cgroups start with this.
const SPARE_PREFIX: &str = "spare-";
/// How many spares a runtime keeps ready.
const SPARES: usize = 2;

impl Spares {
    fn new(limits: Limits, jail: PathBuf) -> Spares {
        static RUNTIMES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let me = std::process::id();
        let start = start_time(me).unwrap_or(0);
        let runtime = RUNTIMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Spares {
            prefix: format!("{SPARE_PREFIX}{me}-{start}-{runtime}-"),
            limits,
            jail,
            tokio: tokio::runtime::Handle::try_current().ok(),
            made: std::sync::atomic::AtomicU64::new(0),
            ready: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<Spare>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes one more spare unless enough are ready.
    fn make(&self, h: &Hierarchies) -> std::io::Result<()> {
        if self.ready().len() >= SPARES {
            return Ok(());
        }
        let n = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cgroup = SandboxCgroup::new(h, &format!("{}{n}", self.prefix));
        let mut spare = Spare { cgroup, jail: None };
        let made = spare.cgroup.create(&self.limits).and_then(|()| {
            let Some(tokio) = &self.tokio else {
                return Ok(());
            };
            let _entered = tokio.enter();
            let jail = start_jail(&self.jail)?;
            spare.jail = Some(jail);
            let pid = spare.jail.as_ref().and_then(|j| j.pid);
            match pid {
                Some(p) => spare.cgroup.attach(p.pid),
                None => Err(std::io::Error::other("the spare jail exited at once")),
            }
        });
        match made {
            Ok(()) => {
                self.ready().push(spare);
                Ok(())
            }
            Err(e) => {
                spare.discard();
                Err(e)
            }
        }
    }

    fn take(&self) -> Option<Spare> {
        self.ready().pop()
    }

    fn remove_all(&self) {
        for spare in self.ready().drain(..) {
            spare.discard();
        }
    }
}

impl Spare {
    /// Ends the jail (end of file instead of a config) and removes the groups.
    fn discard(self) {
        if let Some(jail) = self.jail {
            drop(jail.socket);
            if let Some(p) = jail.pid
                && !wait_gone_blocking(p, Duration::from_secs(1))
            {
                p.signal(libc::SIGKILL);
                wait_gone_blocking(p, Duration::from_secs(1));
            }
        }
        if let Err(e) = self.cgroup.remove() {
            tracing::warn!("removing a spare cgroup: {e}");
        }
    }
}

/// Starts `hangar-jail` waiting for its config on the returned socket, which is its stdin
/// and then its report socket. With nothing to run between fork and exec, std starts it
/// with posix_spawn (vfork), which does not copy this process's page tables as a fork
/// would: the larger the server, the more that saves. Its stdout and stderr lead nowhere
/// until it opens its sandbox's `jail.log`. Tokio reaps it once it exits (a tokio
/// runtime must be current).
fn start_jail(jail: &Path) -> std::io::Result<StartedJail> {
    let (socket, jail_end) = std::os::unix::net::UnixStream::pair()?;
    let mut cmd = tokio::process::Command::new(jail);
    cmd.stdin(Stdio::from(OwnedFd::from(jail_end)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(false);
    let child = cmd.spawn()?;
    // Closes this process's copy of the jail's end, so the jail's exit is seen.
    drop(cmd);
    Ok(StartedJail {
        pid: child.id().and_then(ProcessId::of),
        socket,
    })
}

/// The teardown thread: it finishes destroys in the order they were asked for.
#[derive(Debug)]
struct Teardown {
    queue: std::sync::Mutex<Option<std::sync::mpsc::Sender<TeardownJob>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One sandbox to tear down (or none: a marker whose `done` says every earlier one is
/// finished), and who waits for it.
#[derive(Debug)]
struct TeardownJob {
    record: Option<Box<Record>>,
    done: Option<tokio::sync::oneshot::Sender<Result<(), SandboxError>>>,
    /// Then make a spare, unless enough are ready (see [`Spares`]).
    make_spare: bool,
}

/// What [`LocalRuntime::recover`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// Running sandboxes taken over as they are.
    pub adopted: Vec<String>,
    /// Half-created sandboxes removed.
    pub reaped: Vec<String>,
    /// Sandboxes whose init had died, now marked dead with the reason.
    pub dead: Vec<String>,
}

/// A running sandbox paused by [`LocalRuntime::freeze`]; dropping it lets the sandbox run
/// again.
#[derive(Debug)]
pub struct Frozen {
    cgroup: SandboxCgroup,
    upper: PathBuf,
}

impl Frozen {
    /// The sandbox's upper directory, holding still while this guard lives (see
    /// [`LocalRuntime::upper_dir`] for its form). Read it; never change it: overlayfs
    /// owns it while the sandbox runs.
    pub fn upper_dir(&self) -> &Path {
        &self.upper
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = self.cgroup.thaw() {
            tracing::error!("thawing a sandbox after a live snapshot: {e}");
        }
    }
}

/// The on-disk record of one sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    spec: SandboxSpec,
    created_at_ms: u64,
    state: RecordState,
    init: Option<ProcessId>,
    jail: Option<ProcessId>,
    #[serde(default)]
    dead: Option<(String, bool)>,
    /// The egress network slot, when the sandbox has egress.
    #[serde(default)]
    net_slot: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RecordState {
    Creating,
    Running,
    Stopped,
    Dead,
}

/// The record's file.
const RECORD: &str = "sandbox.json";
/// The record's file once destroy has begun.
const DESTROYING: &str = "destroying.json";

/// A pid plus its start time, so a recycled pid is never mistaken for the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProcessId {
    pid: u32,
    start_time: u64,
}

impl ProcessId {
    fn of(pid: u32) -> Option<ProcessId> {
        start_time(pid).map(|start_time| ProcessId { pid, start_time })
    }

    fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    fn signal(&self, sig: libc::c_int) {
        if self.alive() {
            // SAFETY: kill has no memory effects; the pid was just checked to be ours.
            unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        }
    }
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let state = rest.split(' ').next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    rest.split(' ').nth(19)?.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Place {
    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Makes `spare` sandbox `id`'s: its groups renamed, with `limits`. Gives back the
    /// groups and the jail waiting in them; on failure, the spare is gone.
    fn take_spare(
        &self,
        id: &str,
        spare: Spare,
        limits: &Limits,
    ) -> std::io::Result<(SandboxCgroup, Option<StartedJail>)> {
        let cg = self.cgroup(id);
        let defaults = self.spares.as_ref().map(|s| s.limits);
        match spare
            .cgroup
            .rename_to(&cg)
            .and_then(|()| cg.set_limits(limits, defaults.as_ref()))
        {
            Ok(()) => Ok((cg, spare.jail)),
            Err(e) => {
                // Some groups may carry the new name already.
                let renamed = Spare {
                    cgroup: cg,
                    jail: None,
                };
                spare.discard();
                renamed.discard();
                Err(e)
            }
        }
    }

    fn make_spare(&self) {
        if let Some(spares) = &self.spares
            && let Err(e) = spares.make(&self.hierarchies)
        {
            tracing::warn!("making a spare sandbox place: {e}");
        }
    }

    /// Removes spare cgroups left by processes that are gone.
    fn remove_stale_spares(&self) {
        for name in crate::cgroup::names_starting_with(&self.hierarchies, SPARE_PREFIX) {
            let mut owner = name[SPARE_PREFIX.len()..].split('-');
            let pid = owner.next().and_then(|p| p.parse().ok());
            let start_time = owner.next().and_then(|t| t.parse().ok());
            let alive = match (pid, start_time) {
                (Some(pid), Some(start_time)) => ProcessId { pid, start_time }.alive(),
                _ => false,
            };
            if !alive {
                // A jail left waiting in it exits once its runtime is gone; `release`
                // kills it should it still be there.
                self.release(&name, None, None);
            }
        }
    }

    fn cgroup(&self, id: &str) -> SandboxCgroup {
        SandboxCgroup::new(&self.hierarchies, id)
    }

    /// The record of sandbox `id` from `file` ([`RECORD`], or [`DESTROYING`]).
    fn load_record(&self, id: &str, file: &str) -> Result<Record, SandboxError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(SandboxError::NotFound(id.to_string()));
        }
        let path = self.sandbox_dir(id).join(file);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SandboxError::NotFound(id.to_string()));
            }
            Err(e) => return Err(SandboxError::io(format!("reading {}", path.display()))(e)),
        };
        serde_json::from_str(&text).map_err(|e| SandboxError::Io {
            context: format!("reading {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Writes the record atomically (temporary file, then rename).
    fn write_record(&self, r: &Record) -> Result<(), SandboxError> {
        let dir = self.sandbox_dir(&r.id);
        let tmp = dir.join("sandbox.json.tmp");
        let json = serde_json::to_vec_pretty(r).map_err(|e| SandboxError::Io {
            context: "encoding the sandbox record".into(),
            source: std::io::Error::other(e),
        })?;
        fs::write(&tmp, json).map_err(SandboxError::io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, dir.join(RECORD))
            .map_err(SandboxError::io(format!("renaming {}", tmp.display())))
    }

    /// Kills whatever is left of sandbox `id` and removes its cgroups and network slot;
    /// files stay.
    fn release(&self, id: &str, init: Option<ProcessId>, net_slot: Option<u32>) {
        let cg = self.cgroup(id);
        if let Some(init) = init {
            init.signal(libc::SIGKILL);
        }
        // Processes left in the groups (a jail whose init was already gone, or one whose
        // create never got as far as a record).
        for pid in cg.pids() {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cg.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        if let Err(e) = cg.remove() {
            tracing::warn!(sandbox = %id, "removing cgroups: {e}");
        }
        if let Some(slot) = net_slot {
            network::release_slot(slot, &self.sandbox_dir(id));
        }
    }

    fn remove_dir(&self, id: &str) {
        let dir = self.sandbox_dir(id);
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(sandbox = %id, "removing {}: {e}", dir.display());
        }
    }

    /// The second half of a destroy, blocking: waits for the jail to see init die (so its
    /// mount namespace is gone), then releases the cgroups and removes the directory.
    fn tear_down(&self, r: &Record) -> Result<(), SandboxError> {
        // Already killed by `destroy`, except after a crash right after the record was
        // marked.
        if let Some(init) = r.init {
            init.signal(libc::SIGKILL);
        }
        if let Some(p) = r.jail.or(r.init) {
            wait_gone_blocking(p, Duration::from_secs(5));
        }
        self.release(&r.id, r.init, r.net_slot);
        self.remove_dir(&r.id);
        let dir = self.sandbox_dir(&r.id);
        if dir.exists() {
            return Err(SandboxError::Io {
                context: format!("removing {}", dir.display()),
                source: std::io::Error::other("directory still present"),
            });
        }
        Ok(())
    }
}

impl Teardown {
    fn start(place: Place) -> Result<Teardown, SandboxError> {
        let (tx, rx) = std::sync::mpsc::channel::<TeardownJob>();
        let thread = std::thread::Builder::new()
            .name("sandbox-teardown".into())
            .spawn(move || {
                for job in rx {
                    let result = job.record.as_deref().map_or(Ok(()), |r| place.tear_down(r));
                    match job.done {
                        Some(done) => {
                            let _ = done.send(result);
                        }
                        None => {
                            if let Err(e) = result {
                                tracing::warn!("destroying a sandbox: {e}");
                            }
                        }
                    }
                    if job.make_spare {
                        place.make_spare();
                    }
                }
            })
            .map_err(SandboxError::io("starting the sandbox teardown thread"))?;
        Ok(Teardown {
            queue: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Queues a job; gives it back when the thread is gone.
    fn send(&self, job: TeardownJob) -> Result<(), TeardownJob> {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        match queue.as_ref() {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for LocalRuntime {
    /// Finishes the teardowns already asked for, so a process that drops its runtime
    /// leaves nothing behind.
    fn drop(&mut self) {
        let t = &self.teardown;
        drop(t.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(thread) = t.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
        if let Some(spares) = &self.place.spares {
            spares.remove_all();
        }
    }
}

impl LocalRuntime {
    /// A runtime keeping its sandboxes under `config.data_dir`/sandboxes. Checks that this
    /// host can run sandboxes at all (root, cgroup controllers, helper binaries).
    pub fn open(config: &Config) -> Result<LocalRuntime, SandboxError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(SandboxError::Unsupported(
                "the local sandbox runtime needs root (it creates namespaces, mounts and cgroups); run as root".into(),
            ));
        }
        let tools = match &config.sandbox.tools_dir {
            Some(d) => d.clone(),
            None => tools_dir()?,
        };
        let find = |name: &str| {
            let p = tools.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(SandboxError::Unsupported(format!(
                    "{} not found; build it with `cargo build --release` (it ships next to `hangar`)",
                    p.display()
                )))
            }
        };
        let dir = config.data_dir.join("sandboxes");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&dir)
            .map_err(SandboxError::io(format!("creating {}", dir.display())))?;
        let hierarchies =
            Hierarchies::detect().map_err(SandboxError::io("reading /proc/self/mountinfo"))?;
        let jail = find("hangar-jail")?;
        let envd = find("envd")?;
        let limits = default_limits(&config.sandbox);
        // Made only once a sandbox is created: a short-lived process (a CLI command that
        // lists or removes sandboxes) makes none.
        let spares = SandboxCgroup::new(&hierarchies, "probe")
            .renamable()
            .then(|| std::sync::Arc::new(Spares::new(limits, jail.clone())));
        let place = Place {
            dir,
            hierarchies,
            spares,
        };
        Ok(LocalRuntime {
            host_rules: std::sync::Mutex::new(false),
            teardown: Teardown::start(place.clone())?,
            place,
            data_dir: config.data_dir.clone(),
            jail,
            envd,
            config: config.sandbox.clone(),
        })
    }

    /// The default limits of this deployment.
    pub fn default_limits(&self) -> Limits {
        default_limits(&self.config)
    }

    /// Turns a `--rootfs` argument into a [`Rootfs`]: `host` is the host's root, a directory
    /// is used as it is, and a tarball (plain, gzip, xz or zstd) is unpacked once into
    /// `<data dir>/rootfs/` and reused while the file is unchanged.
    pub fn prepare_rootfs(&self, arg: &str) -> Result<Rootfs, SandboxError> {
        if arg == "host" {
            return Ok(Rootfs::HostRoot);
        }
        let path = fs::canonicalize(arg)
            .map_err(|e| SandboxError::InvalidSpec(format!("rootfs {arg}: {e}")))?;
        let meta =
            fs::metadata(&path).map_err(SandboxError::io(format!("stat {}", path.display())))?;
        if meta.is_dir() {
            return Ok(Rootfs::Layers { layers: vec![path] });
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (path.as_os_str(), meta.len(), meta.modified().ok()).hash(&mut h);
        let cache = self
            .data_dir
            .join("rootfs")
            .join(format!("{:016x}", h.finish()));
        if !cache.is_dir() {
            let tmp = cache.with_extension("partial");
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(&tmp)
                .map_err(SandboxError::io(format!("creating {}", tmp.display())))?;
            let out = std::process::Command::new("tar")
                .arg("-xpf")
                .arg(&path)
                .args(["--numeric-owner", "--xattrs", "-C"])
                .arg(&tmp)
                .output()
                .map_err(SandboxError::io("running tar"))?;
            if !out.status.success() {
                let _ = fs::remove_dir_all(&tmp);
                return Err(SandboxError::InvalidSpec(format!(
                    "rootfs {} is neither a directory nor a readable tarball: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            fs::rename(&tmp, &cache)
                .map_err(SandboxError::io(format!("renaming {}", tmp.display())))?;
        }
        Ok(Rootfs::Layers {
            layers: vec![cache],
        })
    }

    /// The upper directory of a sandbox that is not running (stopped or dead): its
    /// writes, with owners in the host uid range starting at `sandbox.uid_base` and
    /// deletions as overlay whiteouts. Used to seal a snapshot or a build step.
    pub fn upper_dir(&self, id: &str) -> Result<PathBuf, SandboxError> {
        let r = self.settle(self.read_record(id)?)?;
        if matches!(r.state, RecordState::Running | RecordState::Creating) {
            return Err(SandboxError::InvalidSpec(format!(
                "sandbox {id} is still running; stop it before reading its upper directory"
            )));
        }
        Ok(self.sandbox_dir(id).join("upper"))
    }

    /// The upper directory of a running sandbox, frozen: every process in it is paused
    /// (cgroup freezer) until the returned guard is dropped, so its writes hold still
    /// while they are read (a live snapshot). Fails when the processes do not freeze
    /// within a few seconds, or the host has no freezer.
    pub async fn freeze(&self, id: &str) -> Result<Frozen, SandboxError> {
        let r = self.settle(self.read_record(id)?)?;
        if r.state != RecordState::Running {
            return Err(SandboxError::NotRunning {
                id: id.to_string(),
                state: format!("{:?}", r.state).to_lowercase(),
            });
        }
        let cgroup = self.cgroup(id);
        let cg = cgroup.clone();
        tokio::task::spawn_blocking(move || cg.freeze(FREEZE_TIMEOUT))
            .await
            .map_err(|e| SandboxError::Io {
                context: format!("freezing sandbox {id}"),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(SandboxError::io(format!("freezing sandbox {id}")))?;
        Ok(Frozen {
            cgroup,
            upper: self.sandbox_dir(id).join("upper"),
        })
    }

    /// Which cgroup hierarchy serves each controller, e.g. `memory=v1 pids=v1 cpu=v1`.
    pub fn cgroup_layout(&self) -> String {
        self.place.hierarchies.describe()
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.place.sandbox_dir(id)
    }

    fn cgroup(&self, id: &str) -> SandboxCgroup {
        self.place.cgroup(id)
    }

    /// The record of a sandbox that exists (one being destroyed is not found).
    fn read_record(&self, id: &str) -> Result<Record, SandboxError> {
        self.place.load_record(id, RECORD)
    }

    fn write_record(&self, r: &Record) -> Result<(), SandboxError> {
        self.place.write_record(r)
    }

    /// The record's state, settling a running sandbox whose init died into `Dead`.
    fn settle(&self, mut r: Record) -> Result<Record, SandboxError> {
        if r.state == RecordState::Running && !r.init.is_some_and(|p| p.alive()) {
            let exit_file = self.sandbox_dir(&r.id).join("exit.json");
            // The jail writes init's status just after reaping it; give it a moment.
            let read_exit = || {
                fs::read_to_string(&exit_file)
                    .ok()
                    .and_then(|t| serde_json::from_str::<InitExit>(&t).ok())
            };
            let deadline = Instant::now() + Duration::from_secs(1);
            let mut exit = read_exit();
            while exit.is_none() && r.jail.is_some_and(|j| j.alive()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
                exit = read_exit();
            }
            let cg = self.cgroup(&r.id);
            let oom = cg.usage().oom_kills > 0;
            let reason = death_reason(exit, oom);
            tracing::warn!(sandbox = %r.id, %reason, "sandbox init died");
            r.state = RecordState::Dead;
            r.dead = Some((reason, oom));
            self.write_record(&r)?;
            self.release(&r);
        }
        Ok(r)
    }

    fn release(&self, r: &Record) {
        self.place.release(&r.id, r.init, r.net_slot)
    }

    fn to_sandbox(&self, r: Record) -> Sandbox {
        let status = match r.state {
            RecordState::Creating => Status::Creating,
            RecordState::Running => Status::Running,
            RecordState::Stopped => Status::Stopped,
            RecordState::Dead => {
                let (reason, oom_killed) = r.dead.clone().unwrap_or_default();
                Status::Dead { reason, oom_killed }
            }
        };
        Sandbox {
            socket: self.sandbox_dir(&r.id).join(crate::jail::SOCKET_NAME),
            init_pid: (r.state == RecordState::Running)
                .then(|| r.init.map(|p| p.pid))
                .flatten(),
            id: r.id,
            status,
            spec: r.spec,
            created_at_ms: r.created_at_ms,
        }
    }

    /// Finds sandboxes left by an earlier process: running ones are adopted as they are,
    /// half-created and half-destroyed ones removed, ones whose init died marked dead
    /// (cgroups released).
    pub fn recover(&self) -> Result<Recovery, SandboxError> {
        self.place.remove_stale_spares();
        let mut out = Recovery::default();
        for id in self.ids()? {
            let r = match self.read_record(&id) {
                Ok(r) => r,
                Err(SandboxError::NotFound(_)) => {
                    // A destroy cut short, or a directory without a record: a create that
                    // died before it was running (its jail, if any, is in its cgroups).
                    match self.place.load_record(&id, DESTROYING) {
                        Ok(r) => {
                            if let Err(e) = self.place.tear_down(&r) {
                                tracing::warn!(sandbox = %id, "{e}");
                            }
                        }
                        Err(_) => {
                            self.place.release(&id, None, None);
                            self.remove_dir(&id);
                        }
                    }
                    out.reaped.push(id);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match r.state {
                RecordState::Creating => {
                    if let Err(e) = self.place.tear_down(&r) {
                        tracing::warn!(sandbox = %id, "{e}");
                    }
                    out.reaped.push(id);
                }
                RecordState::Running => {
                    if self.settle(r)?.state == RecordState::Dead {
                        out.dead.push(id);
                    } else {
                        // A process that died during a live snapshot left it frozen.
                        let _ = self.cgroup(&id).thaw();
                        out.adopted.push(id);
                    }
                }
                RecordState::Stopped | RecordState::Dead => {}
            }
        }
        Ok(out)
    }

    /// The first half of a destroy: renames the record to [`DESTROYING`], so that from now
    /// on the sandbox is neither found nor listed, then SIGKILLs init (the pid namespace's
    /// other processes die with it). Renamed first, so a crash in between leaves a record
    /// that `recover` finishes.
    fn kill_for_destroy(&self, id: &str) -> Result<Record, SandboxError> {
        let r = self.read_record(id)?;
        let dir = self.sandbox_dir(id);
        fs::rename(dir.join(RECORD), dir.join(DESTROYING)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // Another destroy got there first.
                SandboxError::NotFound(id.to_string())
            } else {
                SandboxError::io(format!("marking {} destroyed", dir.display()))(e)
            }
        })?;
        // A frozen sandbox (a live snapshot in progress) would not die until thawed.
        let _ = self.cgroup(id).thaw();
        if let Some(init) = r.init {
            init.signal(libc::SIGKILL);
        }
        Ok(r)
    }

    /// Hands a teardown (or, with no record, a marker) to the teardown thread; does it
    /// here if that thread is gone.
    fn queue_teardown(
        &self,
        record: Option<Record>,
        done: Option<tokio::sync::oneshot::Sender<Result<(), SandboxError>>>,
    ) {
        let record = record.map(Box::new);
        // A destroyed sandbox's place is made ready for the next one while the machine
        // is not busy starting it: the spare cgroups are made after a teardown, not
        // after a create.
        let make_spare = record.is_some() && self.place.spares.is_some();
        if let Err(job) = self.teardown.send(TeardownJob {
            record,
            done,
            make_spare,
        }) {
            let result = job
                .record
                .as_ref()
                .map_or(Ok(()), |r| self.place.tear_down(r));
            if let Some(done) = job.done {
                let _ = done.send(result);
            }
        }
    }

    async fn wait_for_teardown(&self, record: Option<Record>) -> Result<(), SandboxError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue_teardown(record, Some(tx));
        rx.await.unwrap_or_else(|_| {
            Err(SandboxError::Io {
                context: "destroying a sandbox".into(),
                source: std::io::Error::other("the teardown thread ended"),
            })
        })
    }

    /// Like [`Runtime::destroy`], and returns only once everything the sandbox had is
    /// freed: cgroups, network slot, directory (its disk space). For callers that reuse
    /// that space at once (an image build on a full disk) or exit right after (the CLI).
    pub async fn destroy_wait(&self, id: &str) -> Result<(), SandboxError> {
        let r = self.kill_for_destroy(id)?;
        self.wait_for_teardown(Some(r)).await
    }

    /// Waits until every destroy asked for so far has been torn down.
    pub async fn teardowns_done(&self) {
        let _ = self.wait_for_teardown(None).await;
    }

    fn ids(&self) -> Result<Vec<String>, SandboxError> {
        let dir = &self.place.dir;
        let mut ids = Vec::new();
        let entries =
            fs::read_dir(dir).map_err(SandboxError::io(format!("listing {}", dir.display())))?;
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str()
                && e.path().is_dir()
            {
                ids.push(name.to_string());
            }
        }
        Ok(ids)
    }

    fn remove_dir(&self, id: &str) {
        self.place.remove_dir(id)
    }

    /// Claims an egress slot (host-wide, see [`network::claim_slot`]) and records it.
    fn claim_net_slot(&self, record: &Record) -> Result<u32, SandboxError> {
        let slot = network::claim_slot(&self.sandbox_dir(&record.id), |holder| {
            // A sandbox being destroyed holds its slot until its teardown released it.
            if holder.join(DESTROYING).exists() {
                return true;
            }
            let record = fs::read_to_string(holder.join(RECORD))
                .ok()
                .and_then(|t| serde_json::from_str::<Record>(&t).ok());
            record.is_some_and(|r| match r.state {
                RecordState::Creating => true,
                RecordState::Running => r.init.is_some_and(|p| p.alive()),
                RecordState::Stopped | RecordState::Dead => false,
            })
        })?;
        let mut r = record.clone();
        r.net_slot = Some(slot);
        self.write_record(&r)?;
        Ok(slot)
    }

    fn attach_network(&self, id: &str, init_pid: u32, slot: u32) -> Result<(), SandboxError> {
        {
            let mut installed = self.host_rules.lock().unwrap_or_else(|p| p.into_inner());
            if !*installed {
                network::install_host_rules()?;
                *installed = true;
            }
        }
        network::attach(id, init_pid, slot)
    }

    fn jail_config(&self, id: &str, spec: &SandboxSpec, cg: &SandboxCgroup) -> JailConfig {
        let (layers, hide, scratch) = match &spec.rootfs {
            Rootfs::HostRoot | Rootfs::LayersOverHost { .. } => {
                let mut hide = self.config.hidden_host_paths.clone();
                hide.push(self.data_dir.clone());
                let mut layers: Vec<LayerMount> = match &spec.rootfs {
                    Rootfs::LayersOverHost { layers } => layers
                        .iter()
                        .map(|p| LayerMount {
                            path: p.clone(),
                            idmap: true,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                layers.push(LayerMount {
                    path: "/".into(),
                    idmap: false,
                });
                (
                    layers,
                    hide,
                    HOST_SCRATCH.iter().map(PathBuf::from).collect(),
                )
            }
            Rootfs::Layers { layers } => (
                layers
                    .iter()
                    .map(|p| LayerMount {
                        path: p.clone(),
                        idmap: true,
                    })
                    .collect(),
                Vec::new(),
                Vec::new(),
            ),
        };
        let (files, env) = if spec.network == Network::Egress {
            // Not bound over /etc/ssl/certs/ca-certificates.crt: installing the
            // ca-certificates package (python3-pip depends on it) renames a new bundle
            // over that path, which fails with EBUSY on a mount point.
            let ca = "/.hangar/ca-certificates.crt";
            let mut files = vec![FileBind {
                source: self.sandbox_dir(id).join("resolv.conf"),
                target: "/etc/resolv.conf".into(),
            }];
            if self.config.ca_bundle.is_file() {
                files.push(FileBind {
                    source: self.config.ca_bundle.clone(),
                    target: ca.into(),
                });
            }
            // Tools that bring their own trust store are pointed at the bundle too.
            let env = [
                "SSL_CERT_FILE",
                "REQUESTS_CA_BUNDLE",
                "PIP_CERT",
                "NODE_EXTRA_CA_CERTS",
                "CURL_CA_BUNDLE",
                "GIT_SSL_CAINFO",
                "CARGO_HTTP_CAINFO",
            ]
            .iter()
            .map(|k| (k.to_string(), ca.to_string()))
            .collect();
            (files, env)
        } else {
            (Vec::new(), Vec::new())
        };
        JailConfig {
            files,
            env,
            id: id.to_string(),
            layers,
            dir: self.sandbox_dir(id),
            envd: self.envd.clone(),
            cgroups: cg.dirs(),
            uid_base: self.config.uid_base,
            uid_count: self.config.uid_count,
            hide,
            scratch,
        }
    }

    fn validate(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        if let Rootfs::Layers { layers } | Rootfs::LayersOverHost { layers } = &spec.rootfs {
            if layers.is_empty() && matches!(spec.rootfs, Rootfs::Layers { .. }) {
                return Err(SandboxError::InvalidSpec(
                    "a rootfs needs at least one layer".into(),
                ));
            }
            for l in layers {
                if !l.is_absolute() {
                    return Err(SandboxError::InvalidSpec(format!(
                        "rootfs layer {} must be an absolute path",
                        l.display()
                    )));
                }
                if !l.is_dir() {
                    return Err(SandboxError::InvalidSpec(format!(
                        "rootfs {} does not exist or is not a directory",
                        l.display()
                    )));
                }
            }
        }
        let l = &spec.limits;
        if l.memory_bytes < (8 << 20) {
            return Err(SandboxError::InvalidSpec(
                "memory limit must be at least 8MiB".into(),
            ));
        }
        if l.pids < 4 {
            return Err(SandboxError::InvalidSpec(
                "pids limit must be at least 4".into(),
            ));
        }
        if !(l.cpus >= 0.01 && l.cpus.is_finite()) {
            return Err(SandboxError::InvalidSpec(
                "cpus must be at least 0.01".into(),
            ));
        }
        Ok(())
    }

    /// Starts the jail, prepares the directories, cgroups and record while it starts, then
    /// sends it its config.
    async fn start(&self, id: &str, spec: &SandboxSpec) -> Result<Record, SandboxError> {
        let dir = self.sandbox_dir(id);
        let base = self.config.uid_base;
        make_dir(&dir, 0o711)?;

        // A spare's jail is already waiting in its groups. Otherwise the jail is started
        // first: its exec and start-up overlap with the rest of the preparation below,
        // and it then waits for its config. Should anything below fail, dropping `report`
        // ends that wait and the jail exits without having done anything.
        let spare = self.place.spares.as_ref().and_then(|s| s.take());
        let (mut cg, waiting) = match spare {
            Some(spare) => match self.place.take_spare(id, spare, &spec.limits) {
                Ok((cg, jail)) => (Some(cg), jail),
                Err(e) => {
                    tracing::warn!(sandbox = %id, "taking a spare: {e}");
                    (None, None)
                }
            },
            None => (None, None),
        };
        let in_cgroups = waiting.is_some();
        let StartedJail {
            pid: jail,
            socket: mut report,
        } = match waiting {
            Some(j) => j,
            None => start_jail(&self.jail).map_err(SandboxError::io(format!(
                "starting {}",
                self.jail.display()
            )))?,
        };

        for (sub, mode) in [
            ("upper", 0o755),
            ("work", 0o700),
            ("lower", 0o700),
            ("rootfs", 0o755),
        ] {
            make_dir(&dir.join(sub), mode)?;
        }
        let upper = dir.join("upper");
        std::os::unix::fs::chown(&upper, Some(base), Some(base))
            .map_err(SandboxError::io(format!("chown {}", upper.display())))?;
        let mut record = Record {
            id: id.to_string(),
            spec: spec.clone(),
            created_at_ms: now_ms(),
            state: RecordState::Creating,
            init: None,
            jail,
            dead: None,
            net_slot: None,
        };
        // Otherwise the record is written once, when init exists: until then a crash
        // leaves a directory without a record, which `recover` reaps (through the
        // cgroups for any process). An egress slot's holder is found by its record.
        if spec.network == Network::Egress {
            record.net_slot = Some(self.claim_net_slot(&record)?);
            fs::write(
                dir.join("resolv.conf"),
                network::resolv_conf(Path::new("/etc/resolv.conf")),
            )
            .map_err(SandboxError::io("writing resolv.conf"))?;
        }
        let cg = match cg.take() {
            Some(cg) => cg,
            None => {
                let cg = self.cgroup(id);
                cg.create(&spec.limits)
                    .map_err(|e| SandboxError::Unsupported(format!("cgroups: {e}")))?;
                cg
            }
        };

        let mut config = self.jail_config(id, spec, &cg);
        if in_cgroups {
            config.cgroups.clear();
        }
        let config = serde_json::to_vec(&config).map_err(|e| SandboxError::Io {
            context: "encoding the jail config".into(),
            source: std::io::Error::other(e),
        })?;
        {
            use std::io::Write;
            // Small enough for the socket's buffer: this does not block.
            report
                .write_all(&config)
                .and_then(|()| report.shutdown(std::net::Shutdown::Write))
                .map_err(SandboxError::io("sending the jail config"))?;
        }

        let started = async {
            let mut reports = Reports::new(report)?;
            let pid = reports.init_pid().await?;
            // Recorded while envd starts, off the path: from here on the record names
            // init, so a failure below (or a crash) is cleaned up through it.
            record.init = ProcessId::of(pid);
            if record.init.is_none() {
                return Err("init exited right after starting".to_string());
            }
            record.state = RecordState::Running;
            self.write_record(&record).map_err(|e| e.to_string())?;
            if let Some(slot) = record.net_slot {
                self.attach_network(id, pid, slot)
                    .map_err(|e| e.to_string())?;
            }
            reports.envd_ready().await
        };
        let failure = match tokio::time::timeout(START_TIMEOUT, started).await {
            Ok(Ok(())) => return Ok(record),
            Ok(Err(err)) => err,
            Err(_) => format!(
                "envd did not become ready within {}s",
                START_TIMEOUT.as_secs()
            ),
        };
        Err(SandboxError::StartFailed {
            id: id.to_string(),
            message: with_log_tail(failure, &dir),
        })
    }
}

fn default_limits(config: &SandboxConfig) -> Limits {
    Limits {
        memory_bytes: parse_size(&config.memory).unwrap_or(2 << 30),
        pids: config.pids,
        cpus: config.cpus,
    }
}

/// Creates a directory with exactly `mode` (whatever the umask).
fn make_dir(p: &Path, mode: u32) -> Result<(), SandboxError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(p)
        .map_err(SandboxError::io(format!("creating {}", p.display())))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(SandboxError::io(format!("chmod {}", p.display())))
}

/// The jail's reports on its socket: `P<pid>\n` once init exists, then either envd's
/// ready byte or `E<msg>\n`.
struct Reports {
    socket: tokio::net::UnixStream,
    buf: Vec<u8>,
}

impl Reports {
    fn new(socket: std::os::unix::net::UnixStream) -> Result<Reports, String> {
        let socket = socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(socket))
            .map_err(|e| format!("report socket: {e}"))?;
        Ok(Reports {
            socket,
            buf: Vec::with_capacity(64),
        })
    }

    /// Reads more into the buffer; false at end of file.
    async fn fill(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 256];
        let n = self
            .socket
            .read(&mut chunk)
            .await
            .map_err(|e| format!("report socket: {e}"))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Init's host pid, or the jail's error.
    async fn init_pid(&mut self) -> Result<u32, String> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[..nl]).into_owned();
                self.buf.drain(..=nl);
                if let Some(msg) = line.strip_prefix('E') {
                    return Err(msg.to_string());
                }
                return line
                    .strip_prefix('P')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("unexpected report from the jail: {line:?}"));
            }
            if !self.fill().await? {
                return Err("the sandbox exited before envd was ready".into());
            }
        }
    }

    /// Waits for envd's ready byte, or init's error.
    async fn envd_ready(&mut self) -> Result<(), String> {
        loop {
            match self.buf.first() {
                Some(b'E') => {
                    if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                        return Err(String::from_utf8_lossy(&self.buf[1..nl]).into_owned());
                    }
                }
                Some(_) => return Ok(()),
                None => {}
            }
            if !self.fill().await? {
                return Err(match self.buf.first() {
                    Some(b'E') => String::from_utf8_lossy(&self.buf[1..]).trim().to_string(),
                    _ => "the sandbox exited before envd was ready".into(),
                });
            }
        }
    }
}

fn with_log_tail(message: String, dir: &Path) -> String {
    let mut log = String::new();
    if let Ok(mut f) = fs::File::open(dir.join(crate::jail::LOG_NAME)) {
        let _ = f.read_to_string(&mut log);
    }
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    if tail.is_empty() {
        message
    } else {
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{message} (log: {})", tail.join(" | "))
    }
}

fn death_reason(exit: Option<InitExit>, oom: bool) -> String {
    match exit {
        _ if oom => "out of memory (OOM-killed)".into(),
        Some(InitExit { code: Some(c), .. }) => format!("init exited with code {c}"),
        Some(InitExit {
            signal: Some(s), ..
        }) => format!("init was killed by signal {s}"),
        _ => "init died while no Hangar process was watching (exit status unknown)".into(),
    }
}

/// The directory holding `hangar-jail` and `envd`: the running executable's, or its parent
/// for test binaries under `target/<profile>/deps`.
fn tools_dir() -> Result<PathBuf, SandboxError> {
    let exe =
        std::env::current_exe().map_err(SandboxError::io("locating the running executable"))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join("envd").is_file() || dir.file_name().is_none_or(|n| n != "deps") {
        return Ok(dir);
    }
    Ok(dir.parent().map(Path::to_path_buf).unwrap_or(dir))
}

/// A pidfd of `p`, or `None` when it is gone (or pidfds are unavailable).
fn pidfd(p: ProcessId) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: pidfd_open returned a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Checked after opening: the pid may have been recycled before.
    p.alive().then_some(fd)
}

/// Waits for a process to exit without being its parent.
async fn wait_gone(p: ProcessId, timeout: Duration) -> bool {
    let Some(fd) = pidfd(p) else {
        return !p.alive();
    };
    // SAFETY: the AsyncFd owns the pidfd, which stays open for its whole life.
    let Ok(afd) = (unsafe { tokio::io::unix::AsyncFd::register(fd) }) else {
        return !p.alive();
    };
    tokio::time::timeout(timeout, afd.readable()).await.is_ok()
}

/// [`wait_gone`] for a plain thread.
fn wait_gone_blocking(p: ProcessId, timeout: Duration) -> bool {
    let Some(fd) = pidfd(p) else {
        return !p.alive();
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd whose fd stays open for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n > 0 || !p.alive()
}

#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        self.validate(&spec)?;
        let id = format!("sb-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        match self.start(&id, &spec).await {
            Ok(r) => Ok(self.to_sandbox(r)),
            Err(e) => {
                match self.read_record(&id) {
                    Ok(r) => self.release(&r),
                    // No record yet: whatever the jail started is in the cgroups.
                    Err(_) => self.place.release(&id, None, None),
                }
                self.remove_dir(&id);
                Err(e)
            }
        }
    }

    async fn envd(&self, id: &str) -> Result<EnvdClient, SandboxError> {
        let r = self.settle(self.read_record(id)?)?;
        if r.state != RecordState::Running {
            let state = match self.to_sandbox(r).status {
                Status::Dead { reason, .. } => format!("dead: {reason}"),
                s => format!("{s:?}").to_lowercase(),
            };
            return Err(SandboxError::NotRunning {
                id: id.to_string(),
                state,
            });
        }
        Ok(EnvdClient::new(
            self.sandbox_dir(id).join(crate::jail::SOCKET_NAME),
        ))
    }

    async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        let mut r = self.settle(self.read_record(id)?)?;
        if r.state != RecordState::Running {
            return Ok(());
        }
        // Frozen processes would not act on the signals.
        let _ = self.cgroup(id).thaw();
        if let Some(init) = r.init {
            init.signal(libc::SIGTERM);
            let waited = match r.jail {
                Some(j) => wait_gone(j, STOP_GRACE).await,
                None => wait_gone(init, STOP_GRACE).await,
            };
            if !waited {
                init.signal(libc::SIGKILL);
            }
        }
        self.release(&r);
        r.state = RecordState::Stopped;
        self.write_record(&r)
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let r = self.kill_for_destroy(id)?;
        self.queue_teardown(Some(r), None);
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Sandbox, SandboxError> {
        Ok(self.to_sandbox(self.settle(self.read_record(id)?)?))
    }

    async fn list(&self) -> Result<Vec<Sandbox>, SandboxError> {
        let mut out = Vec::new();
        for id in self.ids()? {
            match self.read_record(&id) {
                Ok(r) => out.push(self.to_sandbox(self.settle(r)?)),
                Err(SandboxError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn stats(&self, id: &str) -> Result<Usage, SandboxError> {
        let r = self.read_record(id)?;
        Ok(self.cgroup(&r.id).usage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn death_reasons_read_well() {
        assert_eq!(
            death_reason(
                Some(InitExit {
                    code: None,
                    signal: Some(9)
                }),
                true
            ),
            "out of memory (OOM-killed)"
        );
        assert_eq!(
            death_reason(
                Some(InitExit {
                    code: Some(3),
                    signal: None
                }),
                false
            ),
            "init exited with code 3"
        );
        assert!(death_reason(None, false).contains("unknown"));
    }

    #[test]
    fn start_time_identifies_this_process() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.alive());
        assert!(
            !ProcessId {
                start_time: me.start_time + 1,
                ..me
            }
            .alive()
        );
    }
}
