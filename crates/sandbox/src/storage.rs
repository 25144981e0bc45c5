//! Fast storage for what creates many small files: image layers (`images/`), sandboxes'
//! upper directories (`sandboxes/`) and git mirrors (`git/`). In `loop` mode they live on
//! an ext4 image inside the data directory (`volume.ext4`, sparse), loop-mounted at
//! `volume/`, each reached through a symlink of the same name in the data directory, so
//! every other part of Hangar keeps using `<data dir>/images` and friends. Creating a file
//! there costs a fraction of what it costs on a slow root disk; the image is made once and
//! mounted again at each start. `auto` picks `loop` unless the data directory is already
//! on tmpfs. A directory that already holds data stays where it is.

use std::path::{Path, PathBuf};
use std::process::Command;

use hangar_config::Config;

use crate::SandboxError;

/// The directories kept on the fast volume.
pub const FAST_DIRS: &[&str] = &["images", "sandboxes", "git"];

/// What [`prepare`] set up.
#[derive(Debug, PartialEq, Eq)]
pub enum Storage {
    /// Everything on the data directory's own filesystem.
    Direct,
    /// The volume mounted at this path.
    Volume(PathBuf),
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> SandboxError {
    SandboxError::io(context)
}

fn run(cmd: &mut Command, what: &str) -> Result<(), SandboxError> {
    let out = cmd
        .output()
        .map_err(|e| SandboxError::Unsupported(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Unsupported(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// True when `path` is a mount point (listed in this process's mount table).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines().any(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|m| Path::new(&m.replace("\\040", " ")) == canonical)
            })
        })
        .unwrap_or(false)
}

fn on_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false)
}

/// Sets up the data directory's storage as `config.storage` says; idempotent, and run at
/// every start before sandboxes or images are opened.
pub fn prepare(config: &Config) -> Result<Storage, SandboxError> {
    let data = &config.data_dir;
    std::fs::create_dir_all(data).map_err(io(format!("creating {}", data.display())))?;
    let want_loop = match config.storage.mode.as_str() {
        "loop" => true,
        "direct" => false,
        _ => !on_tmpfs(data),
    };
    if !want_loop {
        return Ok(Storage::Direct);
    }
    let volume = data.join("volume");
    let image = data.join("volume.ext4");
    if !is_mount_point(&volume) {
        if !image.exists() {
            let size = hangar_config::parse_size(&config.storage.size)
                .map_err(|e| SandboxError::InvalidSpec(format!("storage.size: {e}")))?;
            let partial = data.join("volume.ext4.partial");
            let file = std::fs::File::create(&partial)
                .map_err(io(format!("creating {}", partial.display())))?;
            file.set_len(size)
                .map_err(io(format!("sizing {}", partial.display())))?;
            drop(file);
            run(
                Command::new("mkfs.ext4")
                    .args([
                        "-q",
                        "-F",
                        "-m",
                        "0",
                        "-E",
                        "lazy_itable_init=1,lazy_journal_init=1",
                    ])
                    .arg(&partial),
                "making the storage volume (mkfs.ext4, from e2fsprogs)",
            )?;
            // Only a finished filesystem gets the real name.
            std::fs::rename(&partial, &image).map_err(io(format!("naming {}", image.display())))?;
        }
        std::fs::create_dir_all(&volume).map_err(io(format!("creating {}", volume.display())))?;
        run(
            Command::new("mount")
                .args(["-o", "loop,noatime"])
                .arg(&image)
                .arg(&volume),
            "mounting the storage volume (needs root and loop devices; set [storage] mode = \"direct\" to go without)",
        )?;
    }
    for name in FAST_DIRS {
        let inside = volume.join(name);
        std::fs::create_dir_all(&inside).map_err(io(format!("creating {}", inside.display())))?;
        let link = data.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(m) if m.is_dir() => {
                let empty = std::fs::read_dir(&link)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if empty {
                    std::fs::remove_dir(&link)
                        .map_err(io(format!("replacing {}", link.display())))?;
                    std::os::unix::fs::symlink(Path::new("volume").join(name), &link)
                        .map_err(io(format!("linking {}", link.display())))?;
                } else {
                    tracing::warn!(
                        "{} already holds data: it stays on the data directory's filesystem",
                        link.display()
                    );
                }
            }
            Ok(_) => {
                return Err(SandboxError::InvalidSpec(format!(
                    "{} exists and is not a directory",
                    link.display()
                )));
            }
            Err(_) => std::os::unix::fs::symlink(Path::new("volume").join(name), &link)
                .map_err(io(format!("linking {}", link.display())))?,
        }
    }
    Ok(Storage::Volume(volume))
}
