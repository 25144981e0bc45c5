//! Compiles the seccomp policy (`src/policy.rs`) to BPF once, at build time, into
//! `$OUT_DIR/seccomp_filters.rs`, which `hangar-jail` includes: a sandbox start applies the
//! filters without compiling them.

use std::fmt::Write;

#[allow(dead_code)]
#[path = "src/policy.rs"]
mod policy;

fn main() {
    println!("cargo:rerun-if-changed=src/policy.rs");
    // The policy names system calls by this build host's numbers (libc's constants).
    let target = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if target != std::env::consts::ARCH {
        panic!(
            "hangar-sandbox compiles its seccomp filters for the build host ({}), not for {target}: build on the target architecture",
            std::env::consts::ARCH
        );
    }
    let filters = policy::seccomp_filters().unwrap_or_else(|e| panic!("{e}"));
    let mut code = String::from("&[\n");
    for filter in &filters {
        code.push_str("    &[\n");
        for i in filter {
            let _ = writeln!(
                code,
                "        seccompiler::sock_filter {{ code: {}, jt: {}, jf: {}, k: {} }},",
                i.code, i.jt, i.jf, i.k
            );
        }
        code.push_str("    ],\n");
    }
    code.push(']');
    let out = std::path::PathBuf::from(
        std::env::var("OUT_DIR").unwrap_or_else(|e| panic!("OUT_DIR: {e}")),
    );
    std::fs::write(out.join("seccomp_filters.rs"), code)
        .unwrap_or_else(|e| panic!("writing seccomp_filters.rs: {e}"));
}
