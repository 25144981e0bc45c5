//! The file API: round trips, ranges, atomic writes, listing, stat, mkdir, remove, rename.

use std::os::unix::fs::{PermissionsExt, symlink};

use hangar_envd_client::{FileKind, WriteOptions};

use crate::support::Envd;

#[tokio::test]
async fn write_then_read_round_trips() {
    let envd = Envd::start().await;
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    envd.client
        .write_file("/data.bin", &data, WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(envd.root.join("data.bin")).unwrap(), data);
    let back = envd.client.read_file("/data.bin", 0, None).await.unwrap();
    assert_eq!(back.data, data);
    assert_eq!(back.size, 300_000);
    assert!(back.eof);
    assert_eq!(envd.client.read_to_end("data.bin").await.unwrap(), data);
}

#[tokio::test]
async fn read_ranges_report_size_and_eof() {
    let envd = Envd::start().await;
    std::fs::write(envd.root.join("f"), b"0123456789").unwrap();
    let mid = envd.client.read_file("/f", 2, Some(3)).await.unwrap();
    assert_eq!(
        (mid.data.as_slice(), mid.size, mid.eof),
        (&b"234"[..], 10, false)
    );
    let tail = envd.client.read_file("/f", 7, Some(100)).await.unwrap();
    assert_eq!((tail.data.as_slice(), tail.eof), (&b"789"[..], true));
    let exact = envd.client.read_file("/f", 5, Some(5)).await.unwrap();
    assert_eq!((exact.data.as_slice(), exact.eof), (&b"56789"[..], true));
    let past = envd.client.read_file("/f", 50, None).await.unwrap();
    assert!(past.data.is_empty() && past.eof);
}

#[tokio::test]
async fn reads_are_capped_at_max_read() {
    let envd = Envd::start().await;
    let f = std::fs::File::create(envd.root.join("big")).unwrap();
    f.set_len(17 << 20).unwrap();
    let first = envd
        .client
        .read_file("/big", 0, Some(u64::MAX))
        .await
        .unwrap();
    assert_eq!(first.data.len(), 16 << 20);
    assert!(!first.eof);
    assert_eq!(
        envd.client.read_to_end("/big").await.unwrap().len(),
        17 << 20
    );
}

#[tokio::test]
async fn reading_a_directory_or_missing_file_fails_with_a_code() {
    let envd = Envd::start().await;
    std::fs::create_dir(envd.root.join("d")).unwrap();
    let e = envd.client.read_file("/d", 0, None).await.unwrap_err();
    assert_eq!(e.code(), Some("is_a_directory"));
    let e = envd
        .client
        .read_file("/missing", 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    assert_eq!(e.remote().unwrap().errno, Some(2));
}

#[tokio::test]
async fn reading_a_fifo_does_not_block_envd() {
    let envd = Envd::start().await;
    nix::unistd::mkfifo(
        &envd.root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let e = envd.client.read_file("/fifo", 0, None).await.unwrap_err();
    assert_eq!(e.code(), Some("bad_request"));
    envd.client.health().await.unwrap();
}

#[tokio::test]
async fn write_is_atomic_and_keeps_the_mode() {
    let envd = Envd::start().await;
    let path = envd.root.join("script.sh");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o751)).unwrap();
    let before = std::fs::metadata(&path).unwrap();
    envd.client
        .write_file("/script.sh", b"new contents", WriteOptions::default())
        .await
        .unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
    assert_eq!(after.permissions().mode() & 0o7777, 0o751);
    // Replaced by rename: a new inode, and no temporary file left behind.
    use std::os::unix::fs::MetadataExt;
    assert_ne!(before.ino(), after.ino());
    let names: Vec<_> = std::fs::read_dir(&envd.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["script.sh"]);
}

#[tokio::test]
async fn write_with_mode_and_parents() {
    let envd = Envd::start().await;
    let opts = WriteOptions {
        mode: Some(0o600),
        create_parents: true,
    };
    envd.client
        .write_file("/a/b/c/secret", b"s", opts)
        .await
        .unwrap();
    let meta = std::fs::metadata(envd.root.join("a/b/c/secret")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let e = envd
        .client
        .write_file("/x/y", b"s", WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    let new = envd.client.stat("/a/b/c/secret").await.unwrap();
    assert_eq!(new.mode, 0o600);
    envd.client
        .write_file("/plain", b"p", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(envd.client.stat("/plain").await.unwrap().mode, 0o644);
}

#[tokio::test]
async fn writing_over_a_directory_fails() {
    let envd = Envd::start().await;
    std::fs::create_dir(envd.root.join("d")).unwrap();
    let e = envd
        .client
        .write_file("/d", b"x", WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("is_a_directory"));
    let e = envd
        .client
        .write_file("/", b"x", WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_request"));
}

#[tokio::test]
async fn list_dir_is_sorted_and_describes_entries() {
    let envd = Envd::start().await;
    std::fs::write(envd.root.join("b.txt"), b"hello").unwrap();
    std::fs::create_dir(envd.root.join("a_dir")).unwrap();
    symlink("b.txt", envd.root.join("c_link")).unwrap();
    let entries = envd.client.list_dir("/").await.unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a_dir", "b.txt", "c_link"]);
    assert_eq!(entries[0].kind, FileKind::Dir);
    assert_eq!((entries[1].kind, entries[1].size), (FileKind::File, 5));
    assert_eq!(entries[2].kind, FileKind::Symlink);
    assert_eq!(entries[2].link_target.as_deref(), Some("b.txt"));
    assert!(entries[1].mtime_ms > 1_600_000_000_000);
    let e = envd.client.list_dir("/b.txt").await.unwrap_err();
    assert_eq!(e.code(), Some("not_a_directory"));
}

#[tokio::test]
async fn stat_does_not_follow_a_final_symlink() {
    let envd = Envd::start().await;
    std::fs::write(envd.root.join("target"), b"12345678").unwrap();
    symlink("/target", envd.root.join("link")).unwrap();
    let link = envd.client.stat("/link").await.unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(link.link_target.as_deref(), Some("/target"));
    assert_eq!(link.name, "/link");
    let file = envd.client.stat("/target").await.unwrap();
    assert_eq!((file.kind, file.size), (FileKind::File, 8));
    assert_eq!(envd.client.stat("/").await.unwrap().kind, FileKind::Dir);
    assert_eq!(
        envd.client.stat("/nope").await.unwrap_err().code(),
        Some("not_found")
    );
}

#[tokio::test]
async fn mkdir_with_and_without_parents() {
    let envd = Envd::start().await;
    envd.client.mkdir("/one", false).await.unwrap();
    assert!(envd.root.join("one").is_dir());
    assert_eq!(
        envd.client.mkdir("/one", false).await.unwrap_err().code(),
        Some("exists")
    );
    assert_eq!(
        envd.client.mkdir("/x/y", false).await.unwrap_err().code(),
        Some("not_found")
    );
    envd.client.mkdir("/x/y/z", true).await.unwrap();
    assert!(envd.root.join("x/y/z").is_dir());
    envd.client.mkdir("/x/y/z", true).await.unwrap();
    std::fs::write(envd.root.join("file"), b"").unwrap();
    assert_eq!(
        envd.client
            .mkdir("/file/sub", true)
            .await
            .unwrap_err()
            .code(),
        Some("not_a_directory")
    );
}

#[tokio::test]
async fn remove_files_and_trees() {
    let envd = Envd::start().await;
    std::fs::create_dir_all(envd.root.join("tree/a/b")).unwrap();
    std::fs::write(envd.root.join("tree/a/b/f"), b"x").unwrap();
    std::fs::write(envd.root.join("single"), b"x").unwrap();
    envd.client.remove("/single", false).await.unwrap();
    assert!(!envd.root.join("single").exists());
    assert_eq!(
        envd.client.remove("/tree", false).await.unwrap_err().code(),
        Some("not_empty")
    );
    envd.client.remove("/tree", true).await.unwrap();
    assert!(!envd.root.join("tree").exists());
    assert_eq!(
        envd.client.remove("/tree", true).await.unwrap_err().code(),
        Some("not_found")
    );
    assert_eq!(
        envd.client.remove("/", true).await.unwrap_err().code(),
        Some("bad_request")
    );
    assert!(envd.root.exists());
}

#[tokio::test]
async fn recursive_remove_never_follows_symlinks_out_of_the_tree() {
    let envd = Envd::start().await;
    let outside = envd.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"precious").unwrap();
    std::fs::create_dir(envd.root.join("tree")).unwrap();
    symlink(&outside, envd.root.join("tree/escape")).unwrap();
    symlink("/", envd.root.join("tree/root")).unwrap();
    envd.client.remove("/tree", true).await.unwrap();
    assert!(!envd.root.join("tree").exists());
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"precious");
    // Removing a symlink to a directory removes the link only.
    symlink(&outside, envd.root.join("link")).unwrap();
    envd.client.remove("/link", true).await.unwrap();
    assert!(outside.join("keep").exists());
}

#[tokio::test]
async fn rename_moves_and_replaces() {
    let envd = Envd::start().await;
    std::fs::write(envd.root.join("a"), b"A").unwrap();
    std::fs::write(envd.root.join("b"), b"B").unwrap();
    std::fs::create_dir(envd.root.join("dir")).unwrap();
    envd.client.rename("/a", "/dir/a2").await.unwrap();
    assert_eq!(std::fs::read(envd.root.join("dir/a2")).unwrap(), b"A");
    envd.client.rename("/dir/a2", "/b").await.unwrap();
    assert_eq!(std::fs::read(envd.root.join("b")).unwrap(), b"A");
    assert_eq!(
        envd.client.rename("/nope", "/x").await.unwrap_err().code(),
        Some("not_found")
    );
}
