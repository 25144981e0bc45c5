//! cgroup limits, accounting and OOM detection, on v2 where the host enabled a controller
//! there and on v1 otherwise. Hybrid hosts (controllers on v1, an empty v2 tree) are
//! common, so each controller is placed independently, from `/proc/self/mountinfo`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::Limits;

/// Where each controller Hangar uses lives on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchies {
    /// The v2 mount point, when its root has at least one controller Hangar uses.
    pub v2: Option<PathBuf>,
    /// Controllers available on v2 (from its root's `cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// v1 mount points of `memory`, `pids`, `cpu`, `cpuacct`, when mounted on v1.
    pub v1_memory: Option<PathBuf>,
    /// v1 `pids`.
    pub v1_pids: Option<PathBuf>,
    /// v1 `cpu`.
    pub v1_cpu: Option<PathBuf>,
    /// v1 `cpuacct`.
    pub v1_cpuacct: Option<PathBuf>,
    /// v1 `freezer` (live snapshots pause a sandbox with it when its groups are on v1).
    pub v1_freezer: Option<PathBuf>,
}

/// Which hierarchy serves one controller.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    V2(PathBuf),
    V1(PathBuf),
}

impl Hierarchies {
    /// Reads this host's cgroup mounts.
    pub fn detect() -> io::Result<Hierarchies> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let mut h = Hierarchies::parse_mountinfo(&mountinfo);
        if let Some(v2) = &h.v2 {
            h.v2_controllers = fs::read_to_string(v2.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        }
        Ok(h)
    }

    /// Parses mountinfo text; the v2 controller list is left empty.
    pub fn parse_mountinfo(text: &str) -> Hierarchies {
        let mut h = Hierarchies {
            v2: None,
            v2_controllers: Vec::new(),
            v1_memory: None,
            v1_pids: None,
            v1_cpu: None,
            v1_cpuacct: None,
            v1_freezer: None,
        };
        for line in text.lines() {
            // mountinfo: id parent maj:min root mountpoint opts [optional...] - fstype source superopts
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let rfields: Vec<&str> = right.split(' ').collect();
            let (Some(mount_point), Some(fstype)) = (fields.get(4), rfields.first()) else {
                continue;
            };
            let mount_point = PathBuf::from(unescape_octal(mount_point));
            match *fstype {
                "cgroup2" if h.v2.is_none() => h.v2 = Some(mount_point),
                "cgroup" => {
                    let opts = rfields.get(2).copied().unwrap_or("");
                    for opt in opts.split(',') {
                        let slot = match opt {
                            "memory" => &mut h.v1_memory,
                            "pids" => &mut h.v1_pids,
                            "cpu" => &mut h.v1_cpu,
                            "cpuacct" => &mut h.v1_cpuacct,
                            "freezer" => &mut h.v1_freezer,
                            _ => continue,
                        };
                        if slot.is_none() {
                            *slot = Some(mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        h
    }

    fn place(&self, controller: &str) -> Option<Place> {
        if controller == "freezer" {
            // v2's `cgroup.freeze` needs no controller: v2 when the sandbox's other groups
            // are there, else the v1 freezer where it is mounted, else v2 anyway.
            let on_v2 = ["memory", "pids", "cpu"]
                .iter()
                .any(|c| matches!(self.place(c), Some(Place::V2(_))));
            return match (&self.v2, &self.v1_freezer) {
                (Some(v2), _) if on_v2 => Some(Place::V2(v2.clone())),
                (_, Some(v1)) => Some(Place::V1(v1.clone())),
                (Some(v2), None) => Some(Place::V2(v2.clone())),
                (None, None) => None,
            };
        }
        if let Some(v2) = &self.v2 {
            let name = if controller == "cpuacct" {
                "cpu"
            } else {
                controller
            };
            if self.v2_controllers.iter().any(|c| c == name) {
                return Some(Place::V2(v2.clone()));
            }
        }
        let v1 = match controller {
            "memory" => &self.v1_memory,
            "pids" => &self.v1_pids,
            "cpu" => &self.v1_cpu,
            "cpuacct" => &self.v1_cpuacct,
            _ => &None,
        };
        v1.clone().map(Place::V1)
    }

    /// A short description for logs and `hangar sandbox` diagnostics.
    pub fn describe(&self) -> String {
        ["memory", "pids", "cpu"]
            .iter()
            .map(|c| match self.place(c) {
                Some(Place::V2(_)) => format!("{c}=v2"),
                Some(Place::V1(_)) => format!("{c}=v1"),
                None => format!("{c}=missing"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn unescape_octal(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Usage counters of one sandbox's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// CPU time used, microseconds.
    pub cpu_usec: u64,
    /// Times the kernel's OOM killer killed a process of this sandbox.
    pub oom_kills: u64,
}

/// The cgroups of one sandbox: one directory per hierarchy that serves a controller.
#[derive(Clone, Debug)]
pub struct SandboxCgroup {
    memory: Option<Place>,
    pids: Option<Place>,
    cpu: Option<Place>,
    cpuacct: Option<Place>,
    freezer: Option<Place>,
}

/// The group directory under a hierarchy root for sandbox `name`.
fn dir_of(place: &Place, name: &str) -> PathBuf {
    let (Place::V1(root) | Place::V2(root)) = place;
    root.join("hangar").join(name)
}

/// Names of the groups under Hangar's parent group (in any hierarchy Hangar uses) that
/// start with `prefix`.
pub fn names_starting_with(h: &Hierarchies, prefix: &str) -> Vec<String> {
    // The groups of the sandbox named "" are the parent groups themselves.
    let mut names: Vec<String> = SandboxCgroup::new(h, "")
        .dirs()
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names.dedup();
    names
}

impl SandboxCgroup {
    /// The cgroups of sandbox `name` (nothing is created yet).
    pub fn new(h: &Hierarchies, name: &str) -> SandboxCgroup {
        let at = |c: &str| h.place(c).map(|p| (p.clone(), dir_of(&p, name)));
        let wrap = |x: Option<(Place, PathBuf)>| {
            x.map(|(p, d)| match p {
                Place::V1(_) => Place::V1(d),
                Place::V2(_) => Place::V2(d),
            })
        };
        SandboxCgroup {
            memory: wrap(at("memory")),
            pids: wrap(at("pids")),
            cpu: wrap(at("cpu")),
            cpuacct: wrap(at("cpuacct")),
            freezer: wrap(at("freezer")),
        }
    }

    /// Every distinct directory, v2 first.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for p in [
            &self.memory,
            &self.pids,
            &self.cpu,
            &self.cpuacct,
            &self.freezer,
        ]
        .into_iter()
        .flatten()
        {
            let (Place::V1(d) | Place::V2(d)) = p;
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }

    /// Creates the groups and sets the limits. Fails when a limit is asked for but its
    /// controller is missing: a sandbox never runs with fewer limits than it was given.
    pub fn create(&self, limits: &Limits) -> io::Result<()> {
        for (what, p) in [
            ("memory", &self.memory),
            ("pids", &self.pids),
            ("cpu", &self.cpu),
        ] {
            if p.is_none() {
                return Err(io::Error::other(format!(
                    "the {what} cgroup controller is not available on this host (neither v1 nor v2)"
                )));
            }
        }
        for p in [&self.memory, &self.pids, &self.cpu, &self.cpuacct]
            .into_iter()
            .flatten()
        {
            if let Place::V2(dir) = p {
                enable_v2_controllers(dir)?;
            }
        }
        for d in self.dirs() {
            if let Some(parent) = d.parent() {
                fs::create_dir_all(parent).map_err(|e| with_path(e, parent))?;
            }
            match fs::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(with_path(e, &d)),
            }
        }
        self.set_limits(limits, None)
    }

    /// Writes the limits that differ from `current` (all of them when `None`: new groups).
    pub fn set_limits(&self, limits: &Limits, current: Option<&Limits>) -> io::Result<()> {
        let changed = |f: &dyn Fn(&Limits) -> u64| current.is_none_or(|c| f(c) != f(limits));
        if changed(&|l| l.memory_bytes) {
            match &self.memory {
                Some(Place::V1(d)) => {
                    write(d, "memory.limit_in_bytes", &limits.memory_bytes.to_string())?;
                    // Swap would let a memory bomb outlive its limit; best effort, as swap
                    // accounting may be off.
                    let _ = write(
                        d,
                        "memory.memsw.limit_in_bytes",
                        &limits.memory_bytes.to_string(),
                    );
                }
                Some(Place::V2(d)) => {
                    write(d, "memory.max", &limits.memory_bytes.to_string())?;
                    let _ = write(d, "memory.swap.max", "0");
                }
                None => {}
            }
        }
        if changed(&|l| l.pids) {
            match &self.pids {
                Some(Place::V1(d) | Place::V2(d)) => {
                    write(d, "pids.max", &limits.pids.to_string())?
                }
                None => {}
            }
        }
        let period: u64 = 100_000;
        let quota = |l: &Limits| ((l.cpus * period as f64) as u64).max(1000);
        if changed(&quota) {
            match &self.cpu {
                Some(Place::V1(d)) => {
                    write(d, "cpu.cfs_period_us", &period.to_string())?;
                    write(d, "cpu.cfs_quota_us", &quota(limits).to_string())?;
                }
                Some(Place::V2(d)) => write(d, "cpu.max", &format!("{} {period}", quota(limits)))?,
                None => {}
            }
        }
        Ok(())
    }

    /// Whether every group is on v1, where a group can be renamed (v2 refuses).
    pub fn renamable(&self) -> bool {
        self.places().all(|p| matches!(p, Place::V1(_)))
    }

    /// Renames these groups to `to`'s names: the same hierarchies, v1 only (see
    /// [`SandboxCgroup::renamable`]).
    pub fn rename_to(&self, to: &SandboxCgroup) -> io::Result<()> {
        for (from, to) in self.dirs().iter().zip(to.dirs()) {
            fs::rename(from, &to).map_err(|e| with_path(e, from))?;
        }
        Ok(())
    }

    fn places(&self) -> impl Iterator<Item = &Place> {
        [
            &self.memory,
            &self.pids,
            &self.cpu,
            &self.cpuacct,
            &self.freezer,
        ]
        .into_iter()
        .flatten()
    }

    /// Moves process `pid` into every group.
    pub fn attach(&self, pid: u32) -> io::Result<()> {
        for d in self.dirs() {
            write(&d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Reads the usage counters; a counter that cannot be read is 0.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        match &self.memory {
            Some(Place::V1(d)) => {
                u.memory_bytes = read_u64(d, "memory.usage_in_bytes");
                u.oom_kills = read_key(d, "memory.oom_control", "oom_kill");
            }
            Some(Place::V2(d)) => {
                u.memory_bytes = read_u64(d, "memory.current");
                u.oom_kills = read_key(d, "memory.events", "oom_kill");
            }
            None => {}
        }
        if let Some(Place::V1(d) | Place::V2(d)) = &self.pids {
            u.pids = read_u64(d, "pids.current");
        }
        match &self.cpuacct {
            Some(Place::V1(d)) => u.cpu_usec = read_u64(d, "cpuacct.usage") / 1000,
            Some(Place::V2(d)) => u.cpu_usec = read_key(d, "cpu.stat", "usage_usec"),
            None => {}
        }
        u
    }

    /// Host pids in the sandbox's groups (from the pids controller's group).
    pub fn pids(&self) -> Vec<u32> {
        let Some(Place::V1(d) | Place::V2(d)) = &self.pids else {
            return Vec::new();
        };
        fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Pauses every process of the sandbox (the v1 freezer, or v2's `cgroup.freeze`) and
    /// waits until the kernel reports them all frozen, at most `timeout`. A sandbox whose
    /// freeze does not complete is thawed again and the error says so.
    pub fn freeze(&self, timeout: std::time::Duration) -> io::Result<()> {
        let Some(place) = &self.freezer else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this host has no cgroup freezer (neither v1 `freezer` nor cgroup v2)",
            ));
        };
        let (file, value) = match place {
            Place::V1(d) => (d.join("freezer.state"), "FROZEN"),
            Place::V2(d) => (d.join("cgroup.freeze"), "1"),
        };
        fs::write(&file, value).map_err(|e| with_path(e, &file))?;
        let deadline = std::time::Instant::now() + timeout;
        let mut polls: u32 = 0;
        while !self.frozen()? {
            polls += 1;
            // The v1 freezer gives up on tasks it could not stop at once (forking just
            // then) and stays FREEZING until asked again (cgroup-v1/freezer-subsystem).
            if matches!(place, Place::V1(_)) && polls.is_multiple_of(10) {
                fs::write(&file, value).map_err(|e| with_path(e, &file))?;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.thaw();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the sandbox's processes did not freeze within {timeout:?}"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        Ok(())
    }

    fn frozen(&self) -> io::Result<bool> {
        match &self.freezer {
            Some(Place::V1(d)) => {
                let p = d.join("freezer.state");
                let state = fs::read_to_string(&p).map_err(|e| with_path(e, &p))?;
                Ok(state.trim() == "FROZEN")
            }
            Some(Place::V2(d)) => Ok(read_key(d, "cgroup.events", "frozen") == 1),
            None => Ok(false),
        }
    }

    /// Lets the sandbox's processes run again.
    pub fn thaw(&self) -> io::Result<()> {
        let (file, value) = match &self.freezer {
            Some(Place::V1(d)) => (d.join("freezer.state"), "THAWED"),
            Some(Place::V2(d)) => (d.join("cgroup.freeze"), "0"),
            None => return Ok(()),
        };
        fs::write(&file, value).map_err(|e| with_path(e, &file))
    }

    /// Removes the groups. They must be empty; a group that does not exist is fine.
    pub fn remove(&self) -> io::Result<()> {
        for d in self.dirs() {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(with_path(e, &d)),
            }
        }
        Ok(())
    }
}

/// On v2 a controller works in a group only when every ancestor delegates it.
fn enable_v2_controllers(group: &Path) -> io::Result<()> {
    let Some(parent) = group.parent() else {
        return Ok(());
    };
    let Some(root) = parent.parent() else {
        return Ok(());
    };
    if !parent.exists() {
        fs::create_dir(parent).or_else(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(with_path(e, parent))
            }
        })?;
    }
    for d in [root, parent] {
        let have = fs::read_to_string(d.join("cgroup.subtree_control")).unwrap_or_default();
        for c in ["memory", "pids", "cpu"] {
            if !have.split_whitespace().any(|x| x == c) {
                // Absent controllers are reported later by `create`; ignore here.
                let _ = write(d, "cgroup.subtree_control", &format!("+{c}"));
            }
        }
    }
    Ok(())
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|e| with_path(e, &path))
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn read_u64(dir: &Path, file: &str) -> u64 {
    fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn read_key(dir: &Path, file: &str, key: &str) -> u64 {
    fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
39 35 0:34 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
40 35 0:35 / /sys/fs/cgroup/pids rw,nosuid shared:15 - cgroup cgroup rw,pids
41 35 0:36 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:16 - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn hybrid_host_places_controllers_on_v1() {
        let h = Hierarchies::parse_mountinfo(HYBRID);
        assert_eq!(h.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(h.describe(), "memory=v1 pids=v1 cpu=v1");
        let cg = SandboxCgroup::new(&h, "sb1");
        assert_eq!(
            cg.dirs(),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/hangar/sb1"),
                PathBuf::from("/sys/fs/cgroup/pids/hangar/sb1"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/hangar/sb1"),
                // No v1 freezer here: v2's cgroup.freeze, which needs no controller.
                PathBuf::from("/sys/fs/cgroup/unified/hangar/sb1"),
            ]
        );
    }

    #[test]
    fn the_freezer_follows_the_other_controllers() {
        let with_freezer = format!(
            "{HYBRID}42 35 0:37 / /sys/fs/cgroup/freezer rw,nosuid shared:17 - cgroup cgroup rw,freezer\n"
        );
        let h = Hierarchies::parse_mountinfo(&with_freezer);
        let dirs = SandboxCgroup::new(&h, "sb1").dirs();
        assert!(
            dirs.contains(&PathBuf::from("/sys/fs/cgroup/freezer/hangar/sb1"))
                && !dirs.contains(&PathBuf::from("/sys/fs/cgroup/unified/hangar/sb1")),
            "v1 freezer on a hybrid host: {dirs:?}"
        );
        let mut h = h;
        h.v2_controllers = vec!["cpu".into(), "memory".into(), "pids".into()];
        assert_eq!(
            SandboxCgroup::new(&h, "sb1").dirs(),
            vec![PathBuf::from("/sys/fs/cgroup/unified/hangar/sb1")],
            "cgroup.freeze in the v2 group when the sandbox lives on v2"
        );
    }

    #[test]
    fn v2_with_controllers_wins() {
        let mut h = Hierarchies::parse_mountinfo(
            "30 1 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw\n",
        );
        h.v2_controllers = vec!["cpu".into(), "memory".into(), "pids".into()];
        assert_eq!(h.describe(), "memory=v2 pids=v2 cpu=v2");
        assert_eq!(
            SandboxCgroup::new(&h, "x").dirs(),
            vec![PathBuf::from("/sys/fs/cgroup/hangar/x")]
        );
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_octal(r"/a\040b"), "/a b");
        assert_eq!(unescape_octal(r"/a\04"), r"/a\04");
    }

    #[test]
    fn keyed_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(read_key(d.path(), "memory.events", "oom_kill"), 2);
        assert_eq!(read_key(d.path(), "memory.events", "oom"), 1);
        assert_eq!(read_key(d.path(), "missing", "oom"), 0);
    }
}
