//! Layers and the store without sandboxes: sealing an overlay upper directory into an OCI
//! layer and unpacking it back keeps content and metadata exactly (whiteouts, opaque
//! directories, symlinks, hard links, modes, owners, xattrs, fifos, devices, unicode and
//! long names, large files); corrupt blobs are refused; gc keeps what is in use; images
//! exported here are read by umoci, and images umoci made are imported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use hangar_images::layer::{Owners, unpack_layer, write_layer};
use hangar_images::{ImageMeta, Store, StoreError};

const BASE: u32 = 1_000_000_000;
const SHIFT: Owners = Owners::Shift {
    base: BASE,
    count: 65536,
};

fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn set_mtime(p: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// An unusual upper directory, as a sandbox would leave it: owners in the sandbox's host
/// range, deletions as overlay whiteouts.
fn unusual_upper(dir: &Path) {
    let long = "d".repeat(120);
    fs::create_dir_all(dir.join("etc/app")).unwrap();
    fs::create_dir_all(dir.join("opaque/sub")).unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
    fs::create_dir_all(dir.join(&long).join("x".repeat(90))).unwrap();
    fs::write(dir.join("etc/app/config"), "key = 1\n").unwrap();
    fs::write(dir.join("opaque/sub/kept"), "new\n").unwrap();
    xattr::set(dir.join("opaque"), "trusted.overlay.opaque", b"y").unwrap();
    // Overlay bookkeeping that must not travel.
    xattr::set(dir.join("etc"), "trusted.overlay.impure", b"y").unwrap();
    mknod(&dir.join("etc/deleted"), libc::S_IFCHR, 0);
    fs::write(dir.join("ünïcødé 名前 ✓"), "unicode\n").unwrap();
    fs::write(dir.join(&long).join("x".repeat(90)).join("f"), "deep\n").unwrap();
    let mut big = fs::File::create(dir.join("big")).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for _ in 0..8 {
        big.write_all(&chunk).unwrap();
    }
    drop(big);
    // Sparse: a hole then data.
    let sparse = fs::File::create(dir.join("sparse")).unwrap();
    sparse.set_len(4 << 20).unwrap();
    drop(sparse);
    fs::write(dir.join("setuid"), "#!/bin/sh\n").unwrap();
    fs::write(dir.join("hard1"), "linked\n").unwrap();
    fs::hard_link(dir.join("hard1"), dir.join("etc/hard2")).unwrap();
    std::os::unix::fs::symlink("app/config", dir.join("etc/rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("nowhere", dir.join("dangling")).unwrap();
    mknod(&dir.join("fifo"), libc::S_IFIFO | 0o640, 0);
    mknod(
        &dir.join("null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    xattr::set(dir.join("etc/app/config"), "user.origin", b"recipe").unwrap();
    // Owners: sandbox root, a user, and a host file copied up from outside the range.
    for p in walk(dir) {
        chown(&p, BASE, BASE);
    }
    chown(&dir.join("etc/app/config"), BASE + 1000, BASE + 1000);
    chown(&dir.join("etc/rel-link"), BASE + 33, BASE + 34);
    chown(&dir.join("hard1"), 0, 0);
    fs::set_permissions(dir.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(dir.join("empty"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(
        dir.join("etc/app/config"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    for (i, p) in walk(dir).iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[derive(Debug, PartialEq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every path below `dir` with its content and metadata; ids mapped by `map`.
fn snapshot(dir: &Path, map: impl Fn(u32) -> u32) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    for p in walk(dir) {
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else {
            "other"
        };
        let mut xattrs = BTreeMap::new();
        if !ft.is_symlink() {
            for n in xattr::list(&p).unwrap() {
                let n = n.to_string_lossy().into_owned();
                if n == "trusted.overlay.impure" {
                    continue;
                }
                xattrs.insert(n.clone(), xattr::get(&p, &n).unwrap().unwrap_or_default());
            }
        }
        out.insert(
            p.strip_prefix(dir).unwrap().to_path_buf(),
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                uid: map(m.uid()),
                gid: map(m.gid()),
                // Directory times are compared too: unpacking must restore them last.
                mtime: m.mtime(),
                size: if ft.is_file() { m.len() } else { 0 },
                content: ft.is_file().then(|| fs::read(&p).unwrap()),
                link: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                rdev: m.rdev(),
                xattrs,
            },
        );
    }
    out
}

fn shift(id: u32) -> u32 {
    if (BASE..BASE + 65536).contains(&id) {
        id - BASE
    } else {
        65534
    }
}

#[test]
fn sealing_and_unpacking_an_upper_dir_keeps_everything() {
    hangar_testkit::require_root();
    let scratch = hangar_testkit::scratch_dir();
    let upper = scratch.path().join("upper");
    fs::create_dir(&upper).unwrap();
    unusual_upper(&upper);

    let (tarball, stats) = write_layer(&upper, SHIFT, &[], Vec::new()).unwrap();
    assert!(stats.content_bytes >= 12 << 20, "{stats:?}");

    // The tarball speaks OCI: whiteouts as .wh. names, opaque dirs as .wh..wh..opq, owners
    // shifted back.
    let mut names = BTreeMap::new();
    let mut a = tar::Archive::new(tarball.as_slice());
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        names.insert(
            e.path().unwrap().display().to_string(),
            (e.header().uid().unwrap(), e.header().entry_type()),
        );
    }
    assert!(names.contains_key("etc/.wh.deleted"), "{names:?}");
    assert!(!names.contains_key("etc/deleted"), "{names:?}");
    assert!(names.contains_key("opaque/.wh..wh..opq"), "{names:?}");
    assert_eq!(names["etc/app/config"].0, 1000);
    assert_eq!(
        names["hard1"].0, 65534,
        "a host-owned file maps to the overflow id"
    );
    // Names are sorted, so etc/hard2 carries the content and hard1 links to it.
    assert_eq!(names["hard1"].1, tar::EntryType::Link);

    // Unpacked, it is the same tree in the sandbox's own ids, whiteouts and opaque
    // directories in overlay form again.
    let lower = scratch.path().join("lower");
    fs::create_dir(&lower).unwrap();
    unpack_layer(tarball.as_slice(), &lower).unwrap();
    let want = snapshot(&upper, shift);
    let got = snapshot(&lower, |id| id);
    for (path, w) in &want {
        assert_eq!(got.get(path), Some(w), "{}", path.display());
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{:?}",
        got.keys().collect::<Vec<_>>()
    );
    let h1 = fs::metadata(lower.join("hard1")).unwrap();
    let h2 = fs::metadata(lower.join("etc/hard2")).unwrap();
    assert_eq!(h1.ino(), h2.ino(), "hard links stay linked");
    assert_eq!(
        xattr::get(lower.join("opaque"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );

    // Sealing the unpacked layer as it is gives the same bytes: a stable format.
    let again_dir = scratch.path().join("again");
    fs::create_dir(&again_dir).unwrap();
    let (again, _) = write_layer(&lower, Owners::AsIs, &[], Vec::new()).unwrap();
    unpack_layer(again.as_slice(), &again_dir).unwrap();
    assert_eq!(snapshot(&again_dir, |id| id), got);
}

fn tar_with(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        // Bypass the builder's own path checks: these are hostile archives.
        let name = h.as_old_mut();
        name.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            name.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn unpacking_refuses_to_leave_the_layer() {
    hangar_testkit::require_root();
    let scratch = hangar_testkit::scratch_dir();
    let dest = scratch.path().join("dest");
    let outside = scratch.path().join("outside");
    fs::create_dir(&dest).unwrap();
    fs::create_dir(&outside).unwrap();
    let dotdot = tar_with(&[("../outside/pwned", tar::EntryType::Regular, None)]);
    let e = unpack_layer(dotdot.as_slice(), &dest).unwrap_err();
    assert!(e.to_string().contains("leaves the layer"), "{e}");
    let through_link = tar_with(&[
        (
            "esc",
            tar::EntryType::Symlink,
            Some(outside.to_str().unwrap()),
        ),
        ("esc/pwned", tar::EntryType::Regular, None),
    ]);
    let e = unpack_layer(through_link.as_slice(), &dest).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    let hardlink_out = tar_with(&[("h", tar::EntryType::Link, Some("../outside/x"))]);
    assert!(unpack_layer(hardlink_out.as_slice(), &dest).is_err());
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
    // Whiteouts of `.` and `..` would delete the directory or its parent.
    fs::write(outside.join("kept"), "x").unwrap();
    let inner = dest.join("inner");
    fs::create_dir(&inner).unwrap();
    for name in ["inner/.wh..", "inner/.wh...", ".wh...", ".wh."] {
        let e = unpack_layer(
            tar_with(&[(name, tar::EntryType::Regular, None)]).as_slice(),
            &dest,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a whiteout"), "{name}: {e}");
    }
    assert!(
        inner.is_dir() && outside.join("kept").is_file(),
        "nothing deleted"
    );
}

fn tree_with(dir: &Path, files: &[(&str, &str)]) {
    for (p, content) in files {
        let p = dir.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
}

#[test]
fn a_corrupt_layer_is_refused_and_leaves_nothing_behind() {
    hangar_testkit::require_root();
    let scratch = hangar_testkit::scratch_dir();
    let store = Store::open_at(&scratch.path().join("images")).unwrap();
    let tree = scratch.path().join("tree");
    tree_with(&tree, &[("a/b", "hello\n"), ("c", "world\n")]);
    let (layer, _) = store.seal_dir(&tree, Owners::AsIs, &[]).unwrap();
    let hex = layer.digest.strip_prefix("sha256:").unwrap();
    let unpacked = store.root().join("layers").join(hex);
    assert!(
        unpacked.join("a/b").is_file(),
        "sealing unpacks the layer once"
    );
    // Damage the blob (one byte flipped) and drop the unpacked copy.
    fs::remove_dir_all(&unpacked).unwrap();
    let blob = store.root().join("blobs/sha256").join(hex);
    let mut bytes = fs::read(&blob).unwrap();
    let i = bytes.iter().position(|&b| b == b'h').unwrap();
    bytes[i] = b'j';
    fs::write(&blob, &bytes).unwrap();
    let e = store.layer_dir(&layer.digest).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(!unpacked.exists());
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    // A truncated blob too.
    bytes.truncate(bytes.len() / 2);
    fs::write(&blob, &bytes).unwrap();
    assert!(store.layer_dir(&layer.digest).is_err());
    assert!(!unpacked.exists());
}

#[test]
fn gc_removes_only_what_no_image_or_sandbox_uses() {
    hangar_testkit::require_root();
    let scratch = hangar_testkit::scratch_dir();
    let store = Store::open_at(&scratch.path().join("images")).unwrap();
    let mk = |name: &str| {
        let d = scratch.path().join(name);
        tree_with(&d, &[(name, name)]);
        store.seal_dir(&d, Owners::AsIs, &[]).unwrap().0
    };
    let in_image = mk("in-image");
    let in_sandbox = mk("in-sandbox");
    let garbage = mk("garbage");
    store
        .cache_put(&garbage.digest, std::slice::from_ref(&garbage))
        .unwrap();
    let image = store
        .add_image(
            std::slice::from_ref(&in_image),
            &ImageMeta {
                base: "host".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let sandbox_layer = store.layer_dir(&in_sandbox.digest).unwrap();
    let report = store.gc(std::slice::from_ref(&sandbox_layer)).unwrap();
    assert_eq!(report.blobs_removed, 1, "{report:?}");
    assert_eq!(report.layers_removed, 1, "{report:?}");
    assert_eq!(report.cache_entries_removed, 1, "{report:?}");
    assert!(store.has_blob(&in_image.digest));
    assert!(store.has_blob(&in_sandbox.digest));
    assert!(sandbox_layer.is_dir());
    assert!(!store.has_blob(&garbage.digest));
    assert!(store.cache_get(&garbage.digest).is_none());
    assert_eq!(store.image(&image.id).unwrap().layers, vec![in_image]);
    // Once the sandbox is gone, its layer goes too; the image's stays.
    let report = store.gc(&[]).unwrap();
    assert_eq!(report.blobs_removed, 1, "{report:?}");
    assert!(!sandbox_layer.exists());
    assert!(store.has_blob(&store.image(&image.id).unwrap().layers[0].digest));
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install umoci: scripts/install-deps.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn umoci_reads_an_exported_image_and_hangar_imports_one_umoci_made() {
    hangar_testkit::require_root();
    let scratch = hangar_testkit::scratch_dir();
    let s = scratch.path();
    let store = Store::open_at(&s.join("images")).unwrap();
    // Two layers: the second deletes a file of the first and replaces a directory.
    let one = s.join("one");
    tree_with(
        &one,
        &[
            ("etc/os-release", "ID=test\n"),
            ("old/file", "x"),
            ("gone", "bye"),
        ],
    );
    let two = s.join("two");
    tree_with(&two, &[("old/new", "y"), ("app/main.py", "print('hi')\n")]);
    mknod(&two.join("gone"), libc::S_IFCHR, 0);
    xattr::set(two.join("old"), "trusted.overlay.opaque", b"y").unwrap();
    let l1 = store.seal_dir(&one, Owners::AsIs, &[]).unwrap().0;
    let l2 = store.seal_dir(&two, Owners::AsIs, &[]).unwrap().0;
    let image = store
        .add_image(
            &[l1, l2],
            &ImageMeta {
                base: "debian:bullseye".into(),
                env: vec!["A=1".into()],
                workdir: Some("/app".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let file = s.join("image.tar");
    store.export(&image.id, &file, Some("v1")).unwrap();

    let layout = s.join("layout");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&file)
        .arg("-C")
        .arg(&layout));
    let bundle = s.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/os-release")).unwrap(),
        "ID=test\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("app/main.py")).unwrap(),
        "print('hi')\n"
    );
    assert!(!rootfs.join("gone").exists(), "the whiteout deleted it");
    assert!(
        !rootfs.join("old/file").exists(),
        "the opaque directory hid it"
    );
    assert!(rootfs.join("old/new").is_file());
    let config = fs::read_to_string(bundle.join("config.json")).unwrap();
    assert!(config.contains("A=1"), "{config}");

    // umoci makes an image of its own: a new layer on top of ours, then repack.
    fs::write(rootfs.join("app/added-by-umoci"), "umoci\n").unwrap();
    fs::remove_file(rootfs.join("etc/os-release")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:v2", layout.display()))
        .arg(&bundle));
    let umoci_tar = s.join("umoci.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&umoci_tar)
        .arg("-C")
        .arg(&layout)
        .arg("."));
    let imported = store.import(&umoci_tar, Some("v2")).unwrap();
    assert_eq!(imported.len(), 1);
    let imported = &imported[0];
    assert_eq!(imported.layers.len(), 3, "{imported:?}");
    assert!(imported.layers[2].gzip, "umoci writes gzip layers");
    let top = store.layer_dir(&imported.layers[2].digest).unwrap();
    assert_eq!(
        fs::read_to_string(top.join("app/added-by-umoci")).unwrap(),
        "umoci\n"
    );
    let wh = fs::symlink_metadata(top.join("etc/os-release")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "an overlay whiteout"
    );
    assert_eq!(store.images().unwrap().len(), 2);
}

#[test]
fn moving_an_upper_dir_into_the_store_equals_unpacking_its_blob() {
    hangar_testkit::require_root();
    let scratch = hangar_testkit::scratch_dir();
    let store = Store::open_at(&scratch.path().join("images")).unwrap();
    let upper = scratch.path().join("upper");
    fs::create_dir(&upper).unwrap();
    unusual_upper(&upper);
    fs::create_dir_all(upper.join(".hangar/run")).unwrap();
    let cap = b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    xattr::set(upper.join("setuid"), "security.capability", cap).unwrap();
    // The same tree sealed without being moved: the blob must be the same bytes.
    let twin = scratch.path().join("twin");
    fs::create_dir(&twin).unwrap();
    unusual_upper(&twin);
    xattr::set(twin.join("setuid"), "security.capability", cap).unwrap();
    let (twin_tar, _) = write_layer(&twin, SHIFT, &[".hangar"], Vec::new()).unwrap();
    let (layer, _) = store.seal_upper(&upper, SHIFT, &[".hangar"]).unwrap();
    assert_eq!(
        layer.digest,
        hangar_images::store::sha256_digest(&twin_tar),
        "sealing while moving writes the same layer as sealing alone"
    );
    assert!(!upper.exists(), "the upper dir was moved, not copied");
    let moved = store.layer_dir(&layer.digest).unwrap();
    let unpacked = scratch.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let blob = store
        .root()
        .join("blobs/sha256")
        .join(layer.digest.strip_prefix("sha256:").unwrap());
    unpack_layer(fs::File::open(blob).unwrap(), &unpacked).unwrap();
    let want = snapshot(&unpacked, |id| id);
    assert!(!want.keys().any(|k| k.starts_with(".hangar")));
    assert_eq!(want[Path::new("setuid")].mode, 0o4755);
    assert_eq!(
        want[Path::new("setuid")]
            .xattrs
            .get("security.capability")
            .map(Vec::as_slice),
        Some(&cap[..])
    );
    assert_eq!(snapshot(&moved, |id| id), want);
}
