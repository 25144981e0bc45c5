//! Rebuilds the server when the web UI's build changes: `web.rs` embeds `web/dist`, and a
//! new build always rewrites `index.html` (its asset names carry content hashes).

fn main() {
    println!("cargo:rerun-if-changed=../../web/dist/index.html");
}
