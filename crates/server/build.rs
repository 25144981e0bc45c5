//! Rebuilds the server when the web UI's build changes: `web.rs` embeds `web/dist`, and a
//! new build always rewrites `index.html` (its asset names carry content hashes). Without a
//! build, the `web` directory is watched instead, so that the first build of the UI is
//! picked up (a missing file would make Cargo rerun this script, and rebuild the server,
//! every time).

fn main() {
    let index = std::path::Path::new("../../web/dist/index.html");
    if index.exists() {
        println!("cargo:rerun-if-changed=../../web/dist/index.html");
    } else {
        println!("cargo:rerun-if-changed=../../web");
    }
}
