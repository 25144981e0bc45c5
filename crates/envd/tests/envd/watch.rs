//! Watching paths: create, modify and remove are reported with root-relative paths.

use std::time::Duration;

use hangar_envd_client::{Change, ChangeKind, Watch, WriteOptions};

use crate::support::Envd;

async fn next(w: &mut Watch) -> Change {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("no change reported")
        .unwrap()
}

/// Waits for a specific change, skipping others.
async fn expect(w: &mut Watch, path: &str, kind: ChangeKind) {
    let mut seen = Vec::new();
    loop {
        let c = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} {path}; saw {seen:?}"))
            .unwrap();
        if c.path == path && c.kind == kind {
            return;
        }
        seen.push(c);
    }
}

#[tokio::test]
async fn watch_reports_create_modify_remove() {
    let envd = Envd::start().await;
    std::fs::create_dir(envd.root.join("src")).unwrap();
    let mut w = envd.client.watch("/src", false).await.unwrap();
    std::fs::write(envd.root.join("src/main.rs"), b"fn main() {}").unwrap();
    assert_eq!(
        next(&mut w).await,
        Change {
            path: "/src/main.rs".into(),
            kind: ChangeKind::Created
        }
    );
    expect(&mut w, "/src/main.rs", ChangeKind::Modified).await;
    std::fs::remove_file(envd.root.join("src/main.rs")).unwrap();
    expect(&mut w, "/src/main.rs", ChangeKind::Removed).await;
}

#[tokio::test]
async fn atomic_writes_show_as_created() {
    let envd = Envd::start().await;
    let mut w = envd.client.watch("/", false).await.unwrap();
    envd.client
        .write_file("/config.toml", b"a = 1", WriteOptions::default())
        .await
        .unwrap();
    expect(&mut w, "/config.toml", ChangeKind::Created).await;
}

#[tokio::test]
async fn recursive_watch_covers_existing_and_new_subdirectories() {
    let envd = Envd::start().await;
    std::fs::create_dir_all(envd.root.join("p/old")).unwrap();
    let mut w = envd.client.watch("/p", true).await.unwrap();
    std::fs::write(envd.root.join("p/old/f"), b"1").unwrap();
    expect(&mut w, "/p/old/f", ChangeKind::Created).await;
    std::fs::create_dir(envd.root.join("p/new")).unwrap();
    expect(&mut w, "/p/new", ChangeKind::Created).await;
    // Give envd a moment to add the watch, then write inside the new directory.
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(envd.root.join("p/new/g"), b"2").unwrap();
    expect(&mut w, "/p/new/g", ChangeKind::Created).await;
}

#[tokio::test]
async fn non_recursive_watch_ignores_subdirectories() {
    let envd = Envd::start().await;
    std::fs::create_dir_all(envd.root.join("q/sub")).unwrap();
    let mut w = envd.client.watch("/q", false).await.unwrap();
    std::fs::write(envd.root.join("q/sub/inner"), b"1").unwrap();
    std::fs::write(envd.root.join("q/top"), b"1").unwrap();
    let first = next(&mut w).await;
    assert_eq!(
        first,
        Change {
            path: "/q/top".into(),
            kind: ChangeKind::Created
        }
    );
}

#[tokio::test]
async fn watching_a_missing_path_fails() {
    let envd = Envd::start().await;
    let e = envd.client.watch("/nope", false).await.unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
}
