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
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use xattr::FileExt;

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

/// An entry's metadata, read relative to its directory (`fstatat`).
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    nlink: u64,
    dev: u64,
    ino: u64,
    rdev: u64,
}

impl Meta {
    fn at(dir: &fs::File, name: &OsStr, path: &Path) -> io::Result<Meta> {
        let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| with_path(path)(e.into()))?;
        Ok(Meta {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
            size: st.st_size.max(0) as u64,
            nlink: st.st_nlink,
            dev: st.st_dev,
            ino: st.st_ino,
            rdev: st.st_rdev,
        })
    }

    fn is(&self, kind: libc::mode_t) -> bool {
        self.mode & libc::S_IFMT == kind
    }
}

/// Opens `name` in `dir` without following a symlink (one lookup, not a path walk).
fn open_at(dir: &fs::File, name: &OsStr, flags: OFlag, path: &Path) -> io::Result<fs::File> {
    nix::fcntl::openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map(fs::File::from)
    .map_err(|e| with_path(path)(e.into()))
}

/// What an adopting walk changes the owner of: an open file, or a name in a directory
/// (symlinks, whiteouts, fifos, devices).
enum Target<'a> {
    Open(&'a fs::File),
    Name(&'a fs::File, &'a OsStr),
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
        let root = fs::File::open(dir).map_err(with_path(dir))?;
        self.dir_entries(dir, &root, Path::new(""), exclude)?;
        let out = self.builder.into_inner()?;
        Ok((out, self.stats))
    }

    fn dir_entries(
        &mut self,
        dir: &Path,
        dir_file: &fs::File,
        rel: &Path,
        exclude: &[&str],
    ) -> io::Result<()> {
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
            self.entry(dir_file, &dir.join(&name), &rel.join(&name), &name)?;
        }
        Ok(())
    }

    fn header(&self, meta: &Meta, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(meta.mode & 0o7777);
        h.set_uid(self.owners.map(meta.uid) as u64);
        h.set_gid(self.owners.map(meta.gid) as u64);
        h.set_mtime(meta.mtime.max(0) as u64);
        h.set_size(0);
        h
    }

    /// Carries the entry's xattrs as PAX records; in an adopting walk also drops overlay
    /// bookkeeping other than the opaque marker. Returns whether the entry is an opaque
    /// directory.
    fn xattrs(&mut self, file: &fs::File, path: &Path) -> io::Result<bool> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let names = match file.list_xattr() {
            Ok(n) => n,
            // Filesystems without xattrs have none to carry.
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(false),
            Err(e) => return Err(with_path(path)(e)),
        };
        let mut names: Vec<OsString> = names.collect();
        names.sort();
        let mut opaque = false;
        for name in names {
            let Some(n) = name.to_str() else { continue };
            // Overlay's own bookkeeping never leaves the host.
            if n.starts_with("trusted.overlay.") {
                if n == OPAQUE_XATTR {
                    opaque = file.get_xattr(&name).map_err(with_path(path))?.as_deref()
                        == Some(b"y".as_slice());
                } else if self.adopt {
                    file.remove_xattr(&name).map_err(with_path(path))?;
                }
                continue;
            }
            if let Some(value) = file.get_xattr(&name).map_err(with_path(path))? {
                pax.push((format!("{PAX_XATTR}{n}"), value));
            }
        }
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        Ok(opaque)
    }

    /// In an adopting walk, gives the entry its layer owners (see [`write_layer_adopting`]).
    fn adopt_owner(&self, target: Target<'_>, meta: &Meta, path: &Path) -> io::Result<()> {
        let (uid, gid) = (self.owners.map(meta.uid), self.owners.map(meta.gid));
        if !self.adopt || (uid, gid) == (meta.uid, meta.gid) {
            return Ok(());
        }
        // A chown clears setuid/setgid bits and file capabilities: they are put back.
        let keep_mode = !meta.is(libc::S_IFLNK) && meta.mode & 0o6000 != 0;
        match target {
            Target::Open(f) => {
                let caps = if meta.is(libc::S_IFREG) {
                    f.get_xattr("security.capability").ok().flatten()
                } else {
                    None
                };
                std::os::unix::fs::fchown(f, Some(uid), Some(gid)).map_err(with_path(path))?;
                if keep_mode {
                    f.set_permissions(fs::Permissions::from_mode(meta.mode & 0o7777))
                        .map_err(with_path(path))?;
                }
                if let Some(caps) = caps {
                    f.set_xattr("security.capability", &caps)
                        .map_err(with_path(path))?;
                }
            }
            Target::Name(dir, name) => {
                nix::unistd::fchownat(
                    dir,
                    name,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| with_path(path)(e.into()))?;
                if keep_mode {
                    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode & 0o7777))
                        .map_err(with_path(path))?;
                }
            }
        }
        Ok(())
    }

    fn entry(&mut self, dir: &fs::File, path: &Path, rel: &Path, name: &OsStr) -> io::Result<()> {
        let meta = Meta::at(dir, name, path)?;
        self.stats.entries += 1;
        if meta.is(libc::S_IFCHR) && meta.rdev == 0 {
            // An overlay whiteout: the lower file is deleted.
            let mut wh_name = OsString::from(WHITEOUT_PREFIX);
            wh_name.push(name);
            let wh = rel.with_file_name(wh_name);
            let mut h = self.header(&meta, tar::EntryType::Regular);
            h.set_mode(0o644);
            self.builder.append_data(&mut h, &wh, io::empty())?;
            return self.adopt_owner(Target::Name(dir, name), &meta, path);
        }
        if meta.is(libc::S_IFDIR) {
            let d = open_at(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, path)?;
            let opaque = self.xattrs(&d, path)?;
            let mut h = self.header(&meta, tar::EntryType::Directory);
            self.builder.append_data(&mut h, rel, io::empty())?;
            if opaque {
                let mut h = self.header(&meta, tar::EntryType::Regular);
                h.set_mode(0o644);
                self.builder
                    .append_data(&mut h, rel.join(OPAQUE_MARKER), io::empty())?;
            }
            self.adopt_owner(Target::Open(&d), &meta, path)?;
            return self.dir_entries(path, &d, rel, &[]);
        }
        if meta.is(libc::S_IFLNK) {
            let target =
                nix::fcntl::readlinkat(dir, name).map_err(|e| with_path(path)(e.into()))?;
            let mut h = self.header(&meta, tar::EntryType::Symlink);
            self.builder.append_link(&mut h, rel, &target)?;
            return self.adopt_owner(Target::Name(dir, name), &meta, path);
        }
        if meta.is(libc::S_IFREG) {
            if meta.nlink > 1 {
                let key = (meta.dev, meta.ino);
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
            let f = open_at(dir, name, OFlag::O_RDONLY, path)?;
            self.xattrs(&f, path)?;
            let mut h = self.header(&meta, tar::EntryType::Regular);
            h.set_size(meta.size);
            // A file that changes size while being read would corrupt the archive.
            let mut limited = (&f).take(meta.size);
            self.builder.append_data(&mut h, rel, &mut limited)?;
            self.stats.content_bytes += meta.size;
            return self.adopt_owner(Target::Open(&f), &meta, path);
        }
        let kind = if meta.is(libc::S_IFCHR) {
            tar::EntryType::Char
        } else if meta.is(libc::S_IFBLK) {
            tar::EntryType::Block
        } else if meta.is(libc::S_IFIFO) {
            tar::EntryType::Fifo
        } else {
            // Sockets are not files one can keep.
            self.stats.entries -= 1;
            if self.adopt {
                nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| with_path(path)(e.into()))?;
            }
            return Ok(());
        };
        let mut h = self.header(&meta, kind);
        h.set_device_major(libc::major(meta.rdev))?;
        h.set_device_minor(libc::minor(meta.rdev))?;
        self.builder.append_data(&mut h, rel, io::empty())?;
        self.adopt_owner(Target::Name(dir, name), &meta, path)
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
    // The directory of the previous entry, open: consecutive entries of one directory
    // (the usual order) create their files relative to it, without walking the path.
    let mut last_parent: Option<(PathBuf, PathBuf, fs::File)> = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let Some(rel) = clean_path(&raw)? else {
            continue;
        };
        let name = rel.file_name().map(OsStr::to_owned).unwrap_or_default();
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        // Entries of one directory change only what is inside it, so the directory
        // checked for the previous entry is still the one to use.
        let parent_dir = match last_parent.take() {
            Some(last) if last.0 == parent_rel => last,
            _ => {
                let parent = safe_parent(dest, parent_rel)?;
                let dir = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                    .open(&parent)
                    .map_err(with_path(&parent))?;
                (parent_rel.to_path_buf(), parent, dir)
            }
        };
        let parent = parent_dir.1.clone();
        let dir = &last_parent.insert(parent_dir).2;
        let name_bytes = name.as_bytes();
        let header = entry.header().clone();
        let kind = header.entry_type();
        stats.entries += 1;
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            xattr::set(&parent, OPAQUE_XATTR, b"y").map_err(with_path(&parent))?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(invalid(format!(
                    "layer entry {} is not a whiteout of a name in its directory",
                    raw.display()
                )));
            }
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
        let regular = kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse();
        if !regular {
            remove_existing(&target)?;
        }
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
        } else if regular {
            // Created, owned, moded and timed through its descriptor: no path walks.
            let create = || {
                nix::fcntl::openat(
                    dir,
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map(fs::File::from)
                .map_err(io::Error::from)
            };
            let mut f = match create() {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    remove_existing(&target)?;
                    create()
                }
                other => other,
            }
            .map_err(with_path(&target))?;
            stats.content_bytes += io::copy(&mut entry, &mut f).map_err(with_path(&target))?;
            // Owner first: chown clears setuid bits, the mode then puts them back.
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(with_path(&target))?;
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(with_path(&target))?;
            for (k, v) in &xattrs {
                if !k.starts_with("trusted.overlay.") {
                    f.set_xattr(k, v).map_err(with_path(&target))?;
                }
            }
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
            f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
                .map_err(with_path(&target))?;
            continue;
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
