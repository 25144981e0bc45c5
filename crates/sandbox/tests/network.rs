//! Egress networking: a sandbox with egress reaches the outside world through NAT (here a
//! network namespace this test creates, standing in for the internet) and nothing else;
//! a sandbox without egress has only loopback (see `escape.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::Command;

use common::Fixture;
use hangar_sandbox::{Network, Rootfs, Runtime, SandboxSpec};

/// A network namespace with one address, reached from the host through a veth pair, and a
/// TCP server in it that answers each connection with the peer address it saw.
struct Outside {
    name: String,
    host_if: String,
    addr: &'static str,
}

impl Outside {
    fn new() -> Outside {
        let name = format!("hgtest-out-{}", std::process::id());
        let host_if = format!("hgto{}", std::process::id() % 100_000);
        let ip = |args: &str| {
            let ok = Command::new("ip")
                .args(args.split(' '))
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args}");
        };
        ip(&format!("netns add {name}"));
        ip(&format!(
            "link add {host_if} type veth peer name eth0 netns {name}"
        ));
        ip(&format!("addr add 198.51.100.1/30 dev {host_if}"));
        ip(&format!("link set {host_if} up"));
        ip(&format!("-n {name} addr add 198.51.100.2/30 dev eth0"));
        ip(&format!("-n {name} link set eth0 up"));
        ip(&format!("-n {name} link set lo up"));
        let ns = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns changes only this thread's network namespace.
            let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "entering the outside namespace");
            let listener = TcpListener::bind("198.51.100.2:8080").unwrap();
            tx.send(()).unwrap();
            for mut conn in listener.incoming().flatten() {
                let peer = conn
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = conn.write_all(format!("from {peer}\n").as_bytes());
            }
        });
        rx.recv().unwrap();
        Outside {
            name,
            host_if,
            addr: "198.51.100.2:8080",
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

async fn egress_sandbox(f: &Fixture) -> hangar_sandbox::Sandbox {
    f.rt.create(SandboxSpec {
        rootfs: Rootfs::HostRoot,
        limits: f.limits(),
        network: Network::Egress,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn egress_reaches_the_outside_through_nat_and_nothing_else() {
    let f = Fixture::new();
    let outside = Outside::new();
    let a = egress_sandbox(&f).await;
    let b = egress_sandbox(&f).await;

    let answer = f.probe(&a.id, &["tcp-read", outside.addr]).await;
    assert_eq!(
        answer, "ok from 198.51.100.1",
        "the outside sees the host's address (NAT)"
    );

    // The host's own services are not reachable, not even on the sandbox's gateway.
    let host = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let (gateway, _) = hangar_sandbox::network::addresses(0);
    for target in [format!("{gateway}:{port}"), format!("198.51.100.1:{port}")] {
        let answer = f.probe(&a.id, &["connect-tcp", &target]).await;
        assert_ne!(answer, "ok", "{target} must be unreachable from a sandbox");
    }
    // Nor is another sandbox.
    let out = f
        .sh(
            &b.id,
            "ip -4 -o addr show eth0 2>/dev/null || cat /proc/net/fib_trie | grep -m1 10.213",
        )
        .await;
    let b_text = String::from_utf8_lossy(&out.stdout).to_string();
    let b_ip = b_text
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|w| w.starts_with("10.213.") && !w.ends_with(".0"))
        .expect("b's address")
        .to_string();
    let answer = f
        .probe(&a.id, &["connect-tcp", &format!("{b_ip}:22")])
        .await;
    assert_ne!(answer, "ok", "another sandbox ({b_ip}) is unreachable");

    // The host's CA bundle and a usable resolver are in place.
    let out = f
        .sh(&a.id, "test -s /.hangar/ca-certificates.crt && grep -c nameserver /etc/resolv.conf; echo $SSL_CERT_FILE $PIP_CERT")
        .await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    assert_ne!(lines.next(), Some("0"), "a resolver: {text}");
    assert_eq!(
        lines.next(),
        Some("/.hangar/ca-certificates.crt /.hangar/ca-certificates.crt"),
        "tools are pointed at the host's CA bundle"
    );

    f.rt.destroy(&a.id).await.unwrap();
    f.rt.destroy(&b.id).await.unwrap();
}

#[tokio::test]
async fn egress_slots_are_not_shared_and_are_reused() {
    let f = Fixture::new();
    let a = egress_sandbox(&f).await;
    let b = egress_sandbox(&f).await;
    let addr = |id: &str| {
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                f.config
                    .data_dir
                    .join("sandboxes")
                    .join(id)
                    .join("sandbox.json"),
            )
            .unwrap(),
        )
        .unwrap();
        r["net_slot"].as_u64().unwrap()
    };
    let (sa, sb) = (addr(&a.id), addr(&b.id));
    assert_ne!(sa, sb);
    let claim = format!("/run/hangar/net/{sa}");
    assert!(std::fs::read_to_string(&claim).unwrap().contains(&a.id));
    f.rt.destroy_wait(&a.id).await.unwrap();
    let holder = std::fs::read_to_string(&claim).unwrap_or_default();
    assert!(
        !holder.contains(&a.id),
        "a destroyed sandbox gives its slot back"
    );
    f.rt.destroy(&b.id).await.unwrap();
}
