//! Converting between directory trees and OCI layer tarballs.
//!
//! A tree is either a sandbox's overlayfs upper directory (owners shifted into the sandbox's
//! host uid range, deletions recorded as overlay whiteouts: 0/0 character devices and
//! `trusted.overlay.opaque` directories) or an unpacked layer used as an overlay lower
//! directory (the same whiteout form, owners as inside the sandbox). A tarball follows the
//! OCI image-spec layer format (`layer.md`): deletions are `.wh.NAME` entries and opaque
//! directories carry `.wh..wh..opq`.
//!
//! [`write_layer`] seals a tree into a tarball, shifting owners back and translating
//! whiteouts ([`write_layer_adopting`] also turns the tree into the unpacked layer in the
//! same walk); [`unpack_layer`] does the reverse. Unpacking never follows a symlink out of
//! the destination and refuses `..`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR: &str = "SCHILY.xattr.";
/// The owner of files whose host owner lies outside the sandbox's uid range (e.g. a host
/// file copied up): the kernel's overflow id, which is how such files look inside anyway.
pub const OVERFLOW_ID: u32 = 65534;

/// How host owners in a tree map to owners in a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owners {
    /// Owners are kept as they are (a tree Hangar made itself as host root, or an
    /// unpacked layer).
    AsIs,
    /// A sandbox's upper directory: host id `base + N` becomes `N`; ids outside
    /// `base..base+count` become [`OVERFLOW_ID`].
    Shift {
        /// Host id of the sandbox's uid 0.
        base: u32,
        /// Size of the range.
        count: u32,
    },
}

impl Owners {
    fn map(self, id: u32) -> u32 {
        match self {
            Owners::AsIs => id,
            Owners::Shift { base, count } => {
                if id >= base && id - base < count {
                    id - base
                } else {
                    OVERFLOW_ID
                }
            }
        }
    }
}

/// What [`write_layer`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries written (files, directories, links, whiteouts).
    pub entries: u64,
    /// Bytes of file content.
    pub content_bytes: u64,
}

/// Writes the tree at `dir` as an OCI layer tarball to `out`. Entries are sorted by name,
/// so the same tree gives the same bytes. Top-level names in `exclude` are left out
/// (e.g. the sandbox's `.hangar` mount points).
pub fn write_layer<W: Write>(
    dir: &Path,
    owners: Owners,
    exclude: &[&str],
    out: W,
) -> io::Result<(W, LayerStats)> {
    TreeWriter::new(owners, false, out).write(dir, exclude)
}

/// Like [`write_layer`], and in the same walk turns the tree into an unpacked layer in
/// place, as [`unpack_layer`] of the tarball would have made it: owners mapped by `owners`
/// (setuid/setgid bits and file capabilities, which a chown clears, put back), overlay
/// bookkeeping xattrs other than the opaque marker dropped, sockets and the top-level names
/// in `exclude` removed. Moving a stopped sandbox's upper directory into the store this way
/// costs one walk instead of a copy of every byte. On failure the tree is left half
/// converted: use it only on a tree that is going away.
pub fn write_layer_adopting<W: Write>(
    dir: &Path,
    owners: Owners,
    exclude: &[&str],
    out: W,
) -> io::Result<(W, LayerStats)> {
    let written = TreeWriter::new(owners, true, out).write(dir, exclude)?;
    for name in exclude {
        remove_existing(&dir.join(name))?;
    }
    // The root of a layer belongs to the sandbox's root, like an unpacked one.
    std::os::unix::fs::lchown(dir, Some(0), Some(0)).map_err(with_path(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(with_path(dir))?;
    Ok(written)
}

struct TreeWriter<W: Write> {
    builder: tar::Builder<W>,
    owners: Owners,
    /// Whether the tree is converted in place as it is written ([`write_layer_adopting`]).
    adopt: bool,
    /// (dev, inode) of files with several links → the first path written and its header
    /// (taken before an adopting walk changed the owners).
    links: HashMap<(u64, u64), (PathBuf, tar::Header)>,
    stats: LayerStats,
}

impl<W: Write> TreeWriter<W> {
    fn new(owners: Owners, adopt: bool, out: W) -> Self {
        let mut builder = tar::Builder::new(out);
        builder.follow_symlinks(false);
        TreeWriter {
            builder,
            owners,
            adopt,
            links: HashMap::new(),
            stats: LayerStats::default(),
        }
    }

    fn write(mut self, dir: &Path, exclude: &[&str]) -> io::Result<(W, LayerStats)> {
        self.dir_entries(dir, Path::new(""), exclude)?;
        let out = self.builder.into_inner()?;
        Ok((out, self.stats))
    }

    fn dir_entries(&mut self, dir: &Path, rel: &Path, exclude: &[&str]) -> io::Result<()> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(with_path(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(with_path(dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            if rel.as_os_str().is_empty() && exclude.iter().any(|x| OsStr::new(x) == name) {
                continue;
            }
            self.entry(&dir.join(&name), &rel.join(&name), &name)?;
        }
        Ok(())
    }

    fn header(&self, meta: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(self.owners.map(meta.uid()) as u64);
        h.set_gid(self.owners.map(meta.gid()) as u64);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        h
    }

    /// Carries the entry's xattrs as PAX records; in an adopting walk also drops overlay
    /// bookkeeping other than the opaque marker.
    fn xattrs(&mut self, path: &Path) -> io::Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let names = match xattr::list(path) {
            Ok(n) => n,
            // Filesystems without xattrs (or symlinks on some) have none to carry.
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
            Err(e) => return Err(with_path(path)(e)),
        };
        let mut names: Vec<OsString> = names.collect();
        names.sort();
        for name in names {
            let Some(n) = name.to_str() else { continue };
            // Overlay's own bookkeeping never leaves the host.
            if n.starts_with("trusted.overlay.") {
                if self.adopt && n != OPAQUE_XATTR {
                    xattr::remove(path, &name).map_err(with_path(path))?;
                }
                continue;
            }
            if let Some(value) = xattr::get(path, &name).map_err(with_path(path))? {
                pax.push((format!("{PAX_XATTR}{n}"), value));
            }
        }
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        Ok(())
    }

    /// In an adopting walk, gives the entry its layer owners (see [`write_layer_adopting`]).
    fn adopt_owner(&self, path: &Path, meta: &fs::Metadata) -> io::Result<()> {
        let (uid, gid) = (self.owners.map(meta.uid()), self.owners.map(meta.gid()));
        if !self.adopt || (uid, gid) == (meta.uid(), meta.gid()) {
            return Ok(());
        }
        let ft = meta.file_type();
        let caps = if ft.is_file() {
            xattr::get(path, "security.capability").ok().flatten()
        } else {
            None
        };
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(with_path(path))?;
        if !ft.is_symlink() && meta.mode() & 0o6000 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(with_path(path))?;
        }
        if let Some(caps) = caps {
            xattr::set(path, "security.capability", &caps).map_err(with_path(path))?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &Path, name: &OsStr) -> io::Result<()> {
        let meta = fs::symlink_metadata(path).map_err(with_path(path))?;
        let ft = meta.file_type();
        self.stats.entries += 1;
        if ft.is_char_device() && meta.rdev() == 0 {
            // An overlay whiteout: the lower file is deleted.
            let mut wh_name = OsString::from(WHITEOUT_PREFIX);
            wh_name.push(name);
            let wh = rel.with_file_name(wh_name);
            let mut h = self.header(&meta, tar::EntryType::Regular);
            h.set_mode(0o644);
            self.builder.append_data(&mut h, &wh, io::empty())?;
            return self.adopt_owner(path, &meta);
        }
        if ft.is_dir() {
            self.xattrs(path)?;
            let mut h = self.header(&meta, tar::EntryType::Directory);
            self.builder.append_data(&mut h, rel, io::empty())?;
            let opaque = matches!(xattr::get(path, OPAQUE_XATTR), Ok(Some(v)) if v == b"y");
            if opaque {
                let mut h = self.header(&meta, tar::EntryType::Regular);
                h.set_mode(0o644);
                self.builder
                    .append_data(&mut h, rel.join(OPAQUE_MARKER), io::empty())?;
            }
            self.adopt_owner(path, &meta)?;
            return self.dir_entries(path, rel, &[]);
        }
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(with_path(path))?;
            let mut h = self.header(&meta, tar::EntryType::Symlink);
            self.builder.append_link(&mut h, rel, &target)?;
            return self.adopt_owner(path, &meta);
        }
        if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some((first, header)) = self.links.get(&key) {
                    // The first link's header: an adopting walk has changed the owners
                    // the inode shows now.
                    let (first, mut h) = (first.clone(), header.clone());
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    return self.builder.append_link(&mut h, rel, &first);
                }
                let h = self.header(&meta, tar::EntryType::Regular);
                self.links.insert(key, (rel.to_path_buf(), h));
            }
            self.xattrs(path)?;
            let mut h = self.header(&meta, tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = fs::File::open(path).map_err(with_path(path))?;
            // A file that changes size while being read would corrupt the archive.
            let mut limited = f.take(meta.len());
            self.builder.append_data(&mut h, rel, &mut limited)?;
            self.stats.content_bytes += meta.len();
            return self.adopt_owner(path, &meta);
        }
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_fifo() {
            tar::EntryType::Fifo
        } else {
            // Sockets are not files one can keep.
            self.stats.entries -= 1;
            if self.adopt {
                fs::remove_file(path).map_err(with_path(path))?;
            }
            return Ok(());
        };
        let mut h = self.header(&meta, kind);
        let rdev = meta.rdev();
        h.set_device_major(libc::major(rdev))?;
        h.set_device_minor(libc::minor(rdev))?;
        self.builder.append_data(&mut h, rel, io::empty())?;
        self.adopt_owner(path, &meta)
    }
}

fn with_path(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Unpacks an OCI layer tarball into `dest` (an existing directory, normally empty),
/// turning `.wh.` entries into overlay whiteouts. Owners, modes, times, xattrs, hard
/// links, symlinks and device nodes are kept. Entries that would land outside `dest`
/// (`..`, or through a symlink) are refused.
pub fn unpack_layer<R: Read>(tarball: R, dest: &Path) -> io::Result<LayerStats> {
    let mut archive = tar::Archive::new(tarball);
    let mut stats = LayerStats::default();
    // Directory times are set last: creating their children changes them.
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let Some(rel) = clean_path(&raw)? else {
            continue;
        };
        let name = rel.file_name().map(OsStr::to_owned).unwrap_or_default();
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = safe_parent(dest, parent_rel)?;
        let name_bytes = name.as_bytes();
        let header = entry.header().clone();
        let kind = header.entry_type();
        stats.entries += 1;
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            xattr::set(&parent, OPAQUE_XATTR, b"y").map_err(with_path(&parent))?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let target = parent.join(OsStr::from_bytes(hidden));
            remove_existing(&target)?;
            mknod(&target, libc::S_IFCHR, 0)?;
            set_mtime(&target, header.mtime().unwrap_or(0) as i64)?;
            continue;
        }
        let target = parent.join(&name);
        let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions()? {
            Some(exts) => exts
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let k = e.key().ok()?;
                    let n = k.strip_prefix(PAX_XATTR)?;
                    Some((n.to_string(), e.value_bytes().to_vec()))
                })
                .collect(),
            None => Vec::new(),
        };
        let uid = header.uid()? as u32;
        let gid = header.gid()? as u32;
        let mode = header.mode()? & 0o7777;
        let mtime = header.mtime().unwrap_or(0) as i64;
        if kind.is_dir() {
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    remove_existing(&target)?;
                    fs::create_dir(&target).map_err(with_path(&target))?;
                }
                Err(_) => fs::create_dir(&target).map_err(with_path(&target))?,
            }
            set_owner_mode(&target, uid, gid, Some(mode))?;
            set_xattrs(&target, &xattrs)?;
            dir_times.push((target, mtime));
            continue;
        }
        remove_existing(&target)?;
        if kind.is_hard_link() {
            let link = entry
                .link_name()?
                .ok_or_else(|| invalid(format!("hard link {} has no target", raw.display())))?;
            let link_rel = clean_path(&link)?.ok_or_else(|| {
                invalid(format!("hard link {} has an empty target", raw.display()))
            })?;
            let src = safe_parent(dest, link_rel.parent().unwrap_or(Path::new("")))?
                .join(link_rel.file_name().unwrap_or_default());
            fs::hard_link(&src, &target).map_err(with_path(&target))?;
            continue;
        } else if kind.is_symlink() {
            let link = entry
                .link_name()?
                .ok_or_else(|| invalid(format!("symlink {} has no target", raw.display())))?;
            std::os::unix::fs::symlink(&link, &target).map_err(with_path(&target))?;
            set_owner_mode(&target, uid, gid, None)?;
            set_xattrs(&target, &xattrs)?;
            set_mtime(&target, mtime)?;
            continue;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let major = header.device_major()?.unwrap_or(0);
            let minor = header.device_minor()?.unwrap_or(0);
            let ty = if kind.is_character_special() {
                libc::S_IFCHR
            } else if kind.is_block_special() {
                libc::S_IFBLK
            } else {
                libc::S_IFIFO
            };
            if ty == libc::S_IFCHR && major == 0 && minor == 0 {
                // A 0/0 device in a tarball would act as a whiteout here; OCI layers
                // express deletions with .wh. names only.
                return Err(invalid(format!(
                    "{}: a 0/0 character device is not allowed in a layer",
                    raw.display()
                )));
            }
            mknod(&target, ty | mode, libc::makedev(major, minor))?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse() {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .map_err(with_path(&target))?;
            stats.content_bytes += io::copy(&mut entry, &mut f).map_err(with_path(&target))?;
        } else {
            // PAX/GNU metadata entries are consumed by the reader; anything else
            // (e.g. a sparse-only or unknown type) is skipped.
            stats.entries -= 1;
            continue;
        }
        set_owner_mode(&target, uid, gid, Some(mode))?;
        set_xattrs(&target, &xattrs)?;
        set_mtime(&target, mtime)?;
    }
    for (dir, mtime) in dir_times.into_iter().rev() {
        set_mtime(&dir, mtime)?;
    }
    Ok(stats)
}

/// The path as components below the root: leading `/` and `.` dropped, `..` refused.
/// `None` for the root itself.
fn clean_path(p: &Path) -> io::Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(format!(
                    "layer entry {} leaves the layer (..)",
                    p.display()
                )));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// `dest/rel`, creating missing directories, and refusing to pass through a symlink or
/// anything that is not a directory.
fn safe_parent(dest: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(invalid(format!(
                    "layer entry below {} passes through a symlink",
                    rel.display()
                )));
            }
            Ok(_) => {
                return Err(invalid(format!(
                    "layer entry below {} is inside something that is not a directory",
                    rel.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(with_path(&cur))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))?;
            }
            Err(e) => return Err(with_path(&cur)(e)),
        }
    }
    Ok(cur)
}

fn remove_existing(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(with_path(p)),
        Ok(_) => fs::remove_file(p).map_err(with_path(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(with_path(p)(e)),
    }
}

fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| invalid(format!("{}: NUL in path", p.display())))?;
    // SAFETY: a valid NUL-terminated path; mknod has no other memory effects.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    if r != 0 {
        return Err(with_path(p)(io::Error::last_os_error()));
    }
    Ok(())
}

fn set_owner_mode(p: &Path, uid: u32, gid: u32, mode: Option<u32>) -> io::Result<()> {
    // Owner first: chown clears setuid bits, the mode then puts them back.
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(with_path(p))?;
    if let Some(mode) = mode {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(with_path(p))?;
    }
    Ok(())
}

fn set_xattrs(p: &Path, xattrs: &[(String, Vec<u8>)]) -> io::Result<()> {
    for (k, v) in xattrs {
        if k.starts_with("trusted.overlay.") {
            continue;
        }
        xattr::set(p, k, v).map_err(with_path(p))?;
    }
    Ok(())
}

fn set_mtime(p: &Path, mtime: i64) -> io::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(mtime, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| with_path(p)(io::Error::from(e)))
}
