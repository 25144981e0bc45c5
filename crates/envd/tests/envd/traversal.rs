//! No path reaches outside the root: `..`, absolute paths and symlinks resolve inside it.

use std::os::unix::fs::symlink;

use hangar_envd_client::WriteOptions;

use crate::support::Envd;

/// A root with its own `/etc/passwd`, and a secret beside the root on the host.
async fn setup() -> Envd {
    let envd = Envd::start().await;
    std::fs::create_dir(envd.root.join("etc")).unwrap();
    std::fs::write(envd.root.join("etc/passwd"), b"inside\n").unwrap();
    std::fs::write(envd.dir.path().join("secret"), b"host secret").unwrap();
    envd
}

#[tokio::test]
async fn dot_dot_cannot_climb_out_of_the_root() {
    let envd = setup().await;
    // ../../etc/passwd resolves to the root's own /etc/passwd.
    let r = envd
        .client
        .read_file("../../etc/passwd", 0, None)
        .await
        .unwrap();
    assert_eq!(r.data, b"inside\n");
    let e = envd
        .client
        .read_file("../secret", 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    let e = envd
        .client
        .read_file("/../../../secret", 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    let listed = envd.client.list_dir("/../..").await.unwrap();
    let names: Vec<_> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["etc"]);
}

#[tokio::test]
async fn absolute_paths_resolve_inside_the_root() {
    let envd = setup().await;
    let r = envd.client.read_file("/etc/passwd", 0, None).await.unwrap();
    assert_eq!(r.data, b"inside\n");
    let secret = envd.dir.path().join("secret");
    let e = envd
        .client
        .read_file(secret.to_str().unwrap(), 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
}

#[tokio::test]
async fn symlinks_to_slash_or_dot_dot_stay_inside() {
    let envd = setup().await;
    symlink("/", envd.root.join("to_slash")).unwrap();
    symlink("../..", envd.root.join("up")).unwrap();
    symlink("/etc/passwd", envd.root.join("passwd_link")).unwrap();
    symlink(envd.dir.path().join("secret"), envd.root.join("abs_secret")).unwrap();
    for path in [
        "/to_slash/etc/passwd",
        "/up/etc/passwd",
        "/up/up/../etc/passwd",
        "/passwd_link",
    ] {
        let r = envd.client.read_file(path, 0, None).await.unwrap();
        assert_eq!(r.data, b"inside\n", "{path}");
    }
    for path in ["/up/secret", "/to_slash/../secret", "/abs_secret"] {
        let e = envd.client.read_file(path, 0, None).await.unwrap_err();
        assert_eq!(e.code(), Some("not_found"), "{path}");
    }
}

#[tokio::test]
async fn writes_through_escaping_symlinks_land_inside() {
    let envd = setup().await;
    symlink("../..", envd.root.join("up")).unwrap();
    envd.client
        .write_file("/up/pwned", b"x", WriteOptions::default())
        .await
        .unwrap();
    assert!(envd.root.join("pwned").exists());
    assert!(!envd.dir.path().join("pwned").exists());
    envd.client.mkdir("/up/newdir", false).await.unwrap();
    assert!(envd.root.join("newdir").is_dir());
    envd.client.rename("/pwned", "../../moved").await.unwrap();
    assert!(envd.root.join("moved").exists());
    assert!(!envd.dir.path().join("moved").exists());
    // Replacing a symlink that points outside replaces the link, not its target.
    symlink(envd.dir.path().join("secret"), envd.root.join("abs_secret")).unwrap();
    envd.client
        .write_file("/abs_secret", b"overwritten", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(envd.dir.path().join("secret")).unwrap(),
        b"host secret"
    );
}

#[tokio::test]
async fn a_symlink_to_proc_resolves_inside_the_root() {
    let envd = setup().await;
    // An absolute target resolves inside the root, so this never reaches the host's /proc.
    symlink("/proc", envd.root.join("hostproc")).unwrap();
    let e = envd
        .client
        .read_file("/hostproc/self/root/etc/passwd", 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
}

#[tokio::test]
async fn proc_magic_links_are_refused() {
    // With the real /proc inside the root, its magic links (which point anywhere) are
    // refused rather than followed.
    let envd = Envd::start_on_host_root().await;
    for path in [
        "/proc/self/root/etc/passwd",
        "/proc/self/cwd/x",
        "/proc/self/exe",
    ] {
        let e = envd.client.read_file(path, 0, None).await.unwrap_err();
        assert_eq!(e.code(), Some("escapes_root"), "{path}: {e}");
    }
    // Ordinary files there are fine.
    assert!(
        !envd
            .client
            .read_file("/proc/self/status", 0, None)
            .await
            .unwrap()
            .data
            .is_empty()
    );
}
