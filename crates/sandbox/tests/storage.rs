//! The fast storage volume: an ext4 image loop-mounted in the data directory holding
//! layers, sandboxes and git mirrors behind symlinks; made once, mounted again at each
//! start, and sandboxes run on it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use hangar_sandbox::storage::{FAST_DIRS, Storage, is_mount_point, prepare};
use hangar_sandbox::{Limits, LocalRuntime, Network, Rootfs, Runtime, SandboxSpec};

/// Unmounts the volume when the test ends, however it ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn config(data: &Path, mode: &str) -> hangar_config::Config {
    let mut c = hangar_config::Config {
        data_dir: data.to_path_buf(),
        ..Default::default()
    };
    c.storage.mode = mode.into();
    c.storage.size = "256MiB".into();
    c.sandbox.tools_dir = Some(hangar_testkit::bin_dir());
    c
}

#[tokio::test]
async fn the_volume_is_made_once_mounted_again_and_holds_the_sandboxes() {
    hangar_testkit::require_root();
    let dir = hangar_testkit::scratch_dir();
    let data = dir.path().join("data");
    // Data a previous Hangar left in one of the directories stays where it is.
    std::fs::create_dir_all(data.join("git/acme")).unwrap();
    let c = config(&data, "loop");

    let volume = match prepare(&c).unwrap() {
        Storage::Volume(v) => v,
        other => panic!("expected a volume, got {other:?}"),
    };
    let _unmount = Unmount(volume.clone());
    assert!(is_mount_point(&volume));
    assert!(data.join("volume.ext4").is_file());
    assert!(!data.join("volume.ext4.partial").exists());
    for name in FAST_DIRS {
        let link = data.join(name);
        let is_link = std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink();
        assert_eq!(is_link, *name != "git", "{name}");
    }
    let fs_type = nix::sys::statfs::statfs(&data.join("sandboxes").join(".")).unwrap();
    assert_eq!(
        fs_type.filesystem_type(),
        nix::sys::statfs::EXT4_SUPER_MAGIC
    );

    // A sandbox runs with its upper directory on the volume.
    let rt = LocalRuntime::open(&c).unwrap();
    let sb = rt
        .create(SandboxSpec {
            rootfs: Rootfs::HostRoot,
            limits: Limits {
                memory_bytes: 256 << 20,
                pids: 64,
                cpus: 1.0,
            },
            network: Network::None,
        })
        .await
        .unwrap();
    assert!(volume.join("sandboxes").join(&sb.id).is_dir());
    rt.destroy_wait(&sb.id).await.unwrap();

    // Idempotent while mounted; after an unmount (a reboot), the same image comes back
    // with what it held.
    std::fs::write(volume.join("images/marker"), "kept").unwrap();
    assert_eq!(prepare(&c).unwrap(), Storage::Volume(volume.clone()));
    assert!(
        std::process::Command::new("umount")
            .arg(&volume)
            .status()
            .unwrap()
            .success()
    );
    assert!(!is_mount_point(&volume));
    assert_eq!(prepare(&c).unwrap(), Storage::Volume(volume.clone()));
    assert_eq!(
        std::fs::read_to_string(data.join("images/marker")).unwrap(),
        "kept"
    );
}

#[test]
fn auto_keeps_a_tmpfs_data_directory_direct_and_bad_settings_are_clear_errors() {
    hangar_testkit::require_root();
    let dir = hangar_testkit::scratch_dir();
    let data = dir.path().join("data");
    // Scratch directories are on tmpfs, already fast.
    assert_eq!(prepare(&config(&data, "auto")).unwrap(), Storage::Direct);
    assert!(!data.join("volume.ext4").exists());
    assert_eq!(prepare(&config(&data, "direct")).unwrap(), Storage::Direct);

    let mut bad = config(&data, "loop");
    bad.storage.size = "lots".into();
    let err = prepare(&bad).unwrap_err().to_string();
    assert!(err.contains("storage.size"), "{err}");
    std::fs::write(data.join("images"), "not a directory").unwrap();
    let mut c = config(&data, "loop");
    c.storage.size = "64MiB".into();
    let err = prepare(&c).unwrap_err().to_string();
    let _unmount = Unmount(data.join("volume"));
    assert!(err.contains("is not a directory"), "{err}");
}
