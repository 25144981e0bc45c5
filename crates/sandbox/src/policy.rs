//! The security policy of a sandbox, as data: what is masked, what is read-only, which
//! capabilities survive, which system calls are refused. Reviewed here, applied by
//! [`crate::jail`], tested by the escape suite (`tests/escape.rs`).

use std::collections::BTreeMap;

use caps::Capability;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Paths hidden inside every sandbox, as container runtimes do (Docker's `maskedPaths`):
/// files are covered by `/dev/null`, directories by an empty read-only tmpfs.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths made read-only inside every sandbox (Docker's `readonlyPaths`).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Host device nodes bind-mounted into the sandbox's `/dev` (a sandbox cannot create
/// device nodes itself).
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Capabilities a sandbox's root keeps, within its own user namespace only: Docker's
/// default set without `NET_RAW` and `MKNOD`. Enough for package managers (chown, setuid
/// to a build user) and nothing that reaches the kernel's global state: no
/// `SYS_ADMIN` (mount), `SYS_MODULE`, `SYS_TIME`, `SYS_BOOT`, `SYS_PTRACE`, `NET_ADMIN`.
pub const KEPT_CAPABILITIES: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_SETFCAP,
];

/// System calls refused with `EPERM`: those Docker's default profile leaves out of its
/// allow list (kernel modules, clocks, mounts, namespaces, keyrings, BPF, perf, reboot,
/// swap, handle-based opens, io_uring, NUMA policy). Where Docker permits a call only with
/// a capability the sandbox never has, it is refused outright here.
pub const REFUSED_SYSCALLS: &[(&str, i64)] = &[
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("bpf", libc::SYS_bpf),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("delete_module", libc::SYS_delete_module),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("finit_module", libc::SYS_finit_module),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("init_module", libc::SYS_init_module),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("ioperm", libc::SYS_ioperm),
    ("iopl", libc::SYS_iopl),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("mbind", libc::SYS_mbind),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("move_pages", libc::SYS_move_pages),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("pivot_root", libc::SYS_pivot_root),
    ("quotactl", libc::SYS_quotactl),
    ("reboot", libc::SYS_reboot),
    ("request_key", libc::SYS_request_key),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("setns", libc::SYS_setns),
    ("settimeofday", libc::SYS_settimeofday),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("_sysctl", libc::SYS__sysctl),
    ("syslog", libc::SYS_syslog),
    ("umount2", libc::SYS_umount2),
    ("unshare", libc::SYS_unshare),
    ("uselib", libc::SYS_uselib),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("ustat", libc::SYS_ustat),
    ("vhangup", libc::SYS_vhangup),
];

/// `clone` flags that would create namespaces; `clone` with any of them is refused.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// A seccomp policy that could not be compiled (a bug in this table, never input).
#[derive(Debug, thiserror::Error)]
#[error("seccomp policy: {0}")]
pub struct PolicyError(String);

/// The compiled seccomp filters, applied in order. Two filters, because refused calls get
/// `EPERM` while `clone3` gets `ENOSYS`: its flags live in memory a filter cannot read,
/// and `ENOSYS` makes libc fall back to `clone`, whose flags the first filter checks.
pub fn seccomp_filters() -> Result<Vec<BpfProgram>, PolicyError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| PolicyError(format!("{e:?}")))?;
    let err = |e: seccompiler::BackendError| PolicyError(e.to_string());

    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = REFUSED_SYSCALLS
        .iter()
        .map(|&(_, nr)| (nr, Vec::new()))
        .collect();
    let mut clone_rules = Vec::new();
    for &flag in NAMESPACE_FLAGS {
        let flag = flag as u64;
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(err)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(err)?);
    }
    refused.insert(libc::SYS_clone, clone_rules);
    let eperm = SeccompFilter::new(
        refused,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;

    let enosys = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;

    [eperm, enosys]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(|e| PolicyError(e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let f = seccomp_filters().unwrap();
        assert_eq!(f.len(), 2);
        assert!(f[0].len() > REFUSED_SYSCALLS.len());
    }

    #[test]
    fn no_dangerous_capability_is_kept() {
        for c in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_TIME,
            Capability::CAP_SYS_BOOT,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_MKNOD,
            Capability::CAP_SYS_RAWIO,
        ] {
            assert!(!KEPT_CAPABILITIES.contains(&c), "{c} must be dropped");
        }
    }
}
