//! Egress networking for sandboxes that ask for it (builds installing packages, mostly):
//! a veth pair per sandbox, addresses from [`SUBNET`], NAT to the host's uplink through an
//! nftables table of Hangar's own. A sandbox with egress reaches the outside world but not
//! the host's own services nor other sandboxes. Sandboxes without egress have only
//! loopback, and none of this runs.
//!
//! Done with `ip` and `nft` (iproute2, nftables): a few milliseconds per egress sandbox,
//! which only builds pay, against a netlink client of our own.

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::SandboxError;

/// Addresses for sandbox networks: one /30 per sandbox.
pub const SUBNET: &str = "10.213.0.0/16";
const SUBNET_BASE: u32 = u32::from_be_bytes([10, 213, 0, 0]);
/// /30 networks in [`SUBNET`].
pub const SLOTS: u32 = 1 << 14;

/// The nftables table: NAT for sandbox traffic, and sandboxes kept off the host's own
/// services and off each other.
const RULESET: &str = r#"
table ip hangar
delete table ip hangar
table ip hangar {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.213.0.0/16 ip daddr != 10.213.0.0/16 masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "hgsb*" ip daddr 10.213.0.0/16 drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "hgsb*" ct state established,related accept
        iifname "hgsb*" drop
    }
}
"#;

/// Where slot claims live: host-wide, because every Hangar data directory on this host
/// shares the address range, and on tmpfs, because veth pairs do not survive a reboot
/// either. One file per claimed slot, naming the sandbox directory that holds it.
const SLOT_DIR: &str = "/run/hangar/net";

/// Claims the lowest free slot for the sandbox whose directory is `owner`. A slot whose
/// owner `is_alive` denies (a sandbox gone without releasing it) is taken over.
pub fn claim_slot(owner: &Path, is_alive: impl Fn(&Path) -> bool) -> Result<u32, SandboxError> {
    let dir = Path::new(SLOT_DIR);
    fs::create_dir_all(dir).map_err(SandboxError::io(format!("creating {SLOT_DIR}")))?;
    let lock =
        fs::File::create(dir.join(".lock")).map_err(SandboxError::io("opening the slot lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| SandboxError::io("locking the slot lock")(e.into()))?;
    for slot in 0..SLOTS {
        let file = dir.join(slot.to_string());
        let free = match fs::read_to_string(&file) {
            Ok(holder) => !is_alive(Path::new(holder.trim())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(SandboxError::io(format!("reading {}", file.display()))(e)),
        };
        if free {
            fs::write(&file, owner.as_os_str().as_encoded_bytes())
                .map_err(SandboxError::io(format!("writing {}", file.display())))?;
            return Ok(slot);
        }
    }
    Err(SandboxError::Unsupported(format!(
        "all {SLOTS} egress network slots are in use"
    )))
}

/// Releases `slot` if `owner` still holds it.
pub fn release_slot(slot: u32, owner: &Path) {
    let file = Path::new(SLOT_DIR).join(slot.to_string());
    if fs::read_to_string(&file).is_ok_and(|h| Path::new(h.trim()) == owner) {
        let _ = fs::remove_file(&file);
    }
}

/// The host's and the sandbox's address of slot `slot`.
pub fn addresses(slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    let net = SUBNET_BASE + (slot % SLOTS) * 4;
    (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2))
}

/// The host-side interface name for sandbox `id` (at most 15 bytes).
pub fn host_interface(id: &str) -> String {
    let tail: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    let start = tail.len().saturating_sub(11);
    format!("hgsb{}", &tail[start..])
}

fn run(cmd: &mut Command, input: Option<&str>, what: &str) -> Result<(), SandboxError> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        SandboxError::Unsupported(format!(
            "{what}: cannot run {:?}: {e} (install iproute2 and nftables)",
            cmd.get_program()
        ))
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin
            .write_all(text.as_bytes())
            .map_err(SandboxError::io(what.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(SandboxError::io(what.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Unsupported(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Enables forwarding and installs Hangar's nftables table (replacing an older copy).
pub fn install_host_rules() -> Result<(), SandboxError> {
    fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(SandboxError::io("enabling IPv4 forwarding"))?;
    run(
        Command::new("nft").args(["-f", "-"]),
        Some(RULESET),
        "installing the nftables rules",
    )
}

/// Connects the network namespace of `init_pid` to the host through a veth pair.
pub fn attach(id: &str, init_pid: u32, slot: u32) -> Result<(), SandboxError> {
    let (host, sandbox) = addresses(slot);
    let ifname = host_interface(id);
    run(
        Command::new("ip").args(["-batch", "-"]),
        Some(&format!(
            "link add {ifname} type veth peer name eth0 netns {init_pid}\n\
             addr add {host}/30 dev {ifname}\n\
             link set {ifname} up\n"
        )),
        "creating the sandbox's veth pair",
    )?;
    let netns = fs::File::open(format!("/proc/{init_pid}/ns/net"))
        .map_err(SandboxError::io("opening the sandbox's network namespace"))?;
    let fd = netns.as_raw_fd();
    let mut inside = Command::new("ip");
    inside.args(["-batch", "-"]);
    // SAFETY: setns is async-signal-safe; `fd` stays open in the parent until the child
    // has exec'd (it is consumed by `run` below before `netns` drops).
    unsafe {
        use std::os::unix::process::CommandExt;
        inside.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run(
        &mut inside,
        Some(&format!(
            "addr add {sandbox}/30 dev eth0\n\
             link set eth0 up\n\
             route add default via {host}\n"
        )),
        "configuring the sandbox's interface",
    )?;
    drop(netns);
    Ok(())
}

/// `/etc/resolv.conf` for a sandbox: the host's, without loopback resolvers (unreachable
/// from the sandbox's namespace).
pub fn resolv_conf(host: &Path) -> String {
    let text = fs::read_to_string(host).unwrap_or_default();
    let mut out = String::new();
    for line in text.lines() {
        let loopback = line
            .strip_prefix("nameserver")
            .map(|a| a.trim().starts_with("127.") || a.trim() == "::1")
            .unwrap_or(false);
        if !loopback {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_disjoint_30s() {
        assert_eq!(
            addresses(0),
            (Ipv4Addr::new(10, 213, 0, 1), Ipv4Addr::new(10, 213, 0, 2))
        );
        assert_eq!(
            addresses(1),
            (Ipv4Addr::new(10, 213, 0, 5), Ipv4Addr::new(10, 213, 0, 6))
        );
        assert_eq!(addresses(SLOTS - 1).1, Ipv4Addr::new(10, 213, 255, 254));
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        assert_eq!(host_interface("sb-0123456789ab"), "hgsb123456789ab");
        assert!(host_interface("sb-0123456789ab").len() <= 15);
    }

    #[test]
    fn loopback_resolvers_are_dropped() {
        let dir = std::env::temp_dir().join(format!("resolv-{}", std::process::id()));
        fs::write(
            &dir,
            "nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.org\n",
        )
        .unwrap();
        assert_eq!(
            resolv_conf(&dir),
            "nameserver 10.0.0.2\nsearch example.org\n"
        );
        let _ = fs::remove_file(&dir);
    }
}
