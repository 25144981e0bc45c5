//! The layer store: an OCI image layout under `<data dir>/images`, plus what Hangar needs
//! beside it.
//!
//! ```text
//! oci-layout, index.json   the OCI image layout (image-spec `image-layout.md`); index.json
//!                          lists every image, each with ref.name = its id
//! blobs/sha256/HEX         layers (tar or tar+gzip), configs, manifests
//! layers/HEX/              a layer blob unpacked once, used as an overlay lower directory
//! cache/HEX.json           build cache: step key → the layer digests it produced
//! repos.json               the current image of each repository
//! bases/                   base rootfs tarballs built with mmdebstrap
//! tmp/                     blobs and directories being written (renamed into place)
//! lock                     flock: builds hold it shared, gc exclusive
//! index.lock, repos.lock   flock: one writer of index.json / repos.json at a time
//! ```
//!
//! Everything is written to `tmp/` and renamed into place, so a crash or a full disk
//! never leaves a half-written blob, layer or index. Blobs are checked against their
//! digest whenever they are read (unpacked or exported); a corrupt one is refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndex, ImageManifest, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::layer::{self, LayerStats, Owners};

/// The annotation that names an image inside an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CREATED: &str = "org.opencontainers.image.created";
/// Annotations and labels Hangar adds.
pub const ANN_REPO: &str = "dev.hangar.repo";
/// The commit an image was built at.
pub const ANN_COMMIT: &str = "dev.hangar.commit";
/// The base (`host`, `debian:bullseye`, ...): `host` images run over the host's root.
pub const ANN_BASE: &str = "dev.hangar.base";
/// sha256 of the recipe the image was built from.
pub const ANN_RECIPE_DIGEST: &str = "dev.hangar.recipe-digest";
/// For a snapshot: the manifest digest of the image it continues.
pub const ANN_SNAPSHOT_OF: &str = "dev.hangar.snapshot-of";
const LABEL_RECIPE: &str = "dev.hangar.recipe";
const LABEL_START: &str = "dev.hangar.start";
const LABEL_SESSION_NETWORK: &str = "dev.hangar.session-network";

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A filesystem operation failed (disk full, permissions, ...).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: io::Error,
    },
    /// A blob's content does not match its digest (corrupt or truncated on disk).
    #[error(
        "blob {digest} is corrupt (its content hashes to {actual}); remove the image that uses it and build or import it again"
    )]
    Corrupt {
        /// The expected digest.
        digest: String,
        /// What the content hashes to.
        actual: String,
    },
    /// No image matches.
    #[error("no image {0}; `hangar image list` shows the images")]
    NotFound(String),
    /// Several images match an id prefix.
    #[error("image id {0} is ambiguous; give more of it")]
    Ambiguous(String),
    /// Malformed OCI metadata (an imported layout, or a damaged store).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the store's state.
    #[error("{0}")]
    Conflict(String),
}

impl StoreError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

fn oci_err(context: &str) -> impl FnOnce(oci_spec::OciSpecError) -> StoreError + '_ {
    move |e| StoreError::Invalid(format!("{context}: {e}"))
}

/// A layer in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Digest of the blob (`sha256:HEX`).
    pub digest: String,
    /// Digest of the uncompressed tarball (the config's `diff_id`).
    pub diff_id: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// True when the blob is gzip-compressed.
    pub gzip: bool,
}

impl Layer {
    fn descriptor(&self) -> Result<Descriptor, StoreError> {
        let media = if self.gzip {
            MediaType::ImageLayerGzip
        } else {
            MediaType::ImageLayer
        };
        Ok(Descriptor::new(
            media,
            self.size,
            parse_digest(&self.digest)?,
        ))
    }
}

/// What an image is for, beyond its layers; recorded in its manifest annotations and
/// config labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// The repository it was built from.
    pub repo: Option<String>,
    /// The commit.
    pub commit: Option<String>,
    /// The base, as in the recipe (`host` images run over the host's root).
    pub base: String,
    /// The recipe's text.
    pub recipe: Option<String>,
    /// sha256 of the recipe's text.
    pub recipe_digest: Option<String>,
    /// Working directory of sessions (the checkout).
    pub workdir: Option<String>,
    /// Environment (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Start commands of sessions.
    pub start: Vec<String>,
    /// Network of sessions: `none` or `egress`.
    pub session_network: Option<String>,
    /// For a snapshot: the manifest digest of the image it continues.
    #[serde(default)]
    pub snapshot_of: Option<String>,
}

/// An image in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// Short id: the first 12 hex digits of the manifest digest.
    pub id: String,
    /// The manifest digest.
    pub digest: String,
    /// Creation time (RFC 3339).
    pub created: Option<String>,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// Total size of the layer blobs.
    pub size: u64,
    /// Repository, commit, recipe, ...
    pub meta: ImageMeta,
}

impl ImageInfo {
    /// True when the image runs over the host's root filesystem.
    pub fn on_host(&self) -> bool {
        self.meta.base == "host"
    }
}

/// The current image of a repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    /// The current image's manifest digest.
    pub current: String,
    /// The image it replaced.
    #[serde(default)]
    pub previous: Option<String>,
    /// When it became current, ms since the epoch.
    pub updated_at_ms: u64,
}

/// What [`Store::gc`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs_removed: usize,
    /// Unpacked layer directories removed.
    pub layers_removed: usize,
    /// Build-cache entries dropped.
    pub cache_entries_removed: usize,
    /// Bytes of blobs freed.
    pub bytes_freed: u64,
}

/// A held store lock (released on drop).
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

/// The layer store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// sha256 of bytes as `sha256:HEX`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_digest(d: &str) -> Result<Digest, StoreError> {
    Digest::from_str(d).map_err(|e| StoreError::Invalid(format!("digest {d:?}: {e}")))
}

/// The hex part of a `sha256:` digest, refusing anything else (it becomes a file name).
fn digest_hex(d: &str) -> Result<&str, StoreError> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(StoreError::Invalid(format!("{d:?} is not a sha256 digest"))),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC time without a date library.
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest and returns the digest of everything.
    fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(
            &mut self.inner,
            &mut HashSink(&mut self.hasher, &mut self.count),
        )?;
        Ok((
            format!("sha256:{}", hex(&self.hasher.finalize())),
            self.count,
        ))
    }
}

struct HashSink<'a>(&'a mut Sha256, &'a mut u64);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        *self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How much a blob writer or reader hands its helper thread at a time.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between a blob's producer and its helper thread.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A blob being written: a temporary file that becomes `blobs/sha256/HEX` on
/// [`BlobWriter::finish`], or disappears when dropped unfinished. Hashing and writing run
/// on a thread of their own, so whoever produces the bytes (walking and reading a tree,
/// framing a tarball) overlaps with them.
pub struct BlobWriter {
    chunk: Vec<u8>,
    to_worker: Option<mpsc::SyncSender<Vec<u8>>>,
    /// Written chunks come back to be filled again.
    spare: mpsc::Receiver<Vec<u8>>,
    worker: Option<std::thread::JoinHandle<io::Result<(fs::File, String, u64)>>>,
    tmp: PathBuf,
    blobs: PathBuf,
    /// Moved into place: nothing to clean up.
    finished: bool,
}

impl BlobWriter {
    fn start(tmp: PathBuf, blobs: PathBuf, mut file: fs::File) -> Result<BlobWriter, StoreError> {
        let (to_worker, chunks) = mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
        let (give_back, spare) = mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT + 1);
        let worker = std::thread::Builder::new()
            .name("blob-writer".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                for mut chunk in chunks {
                    hasher.update(&chunk);
                    file.write_all(&chunk)?;
                    size += chunk.len() as u64;
                    chunk.clear();
                    let _ = give_back.try_send(chunk);
                }
                Ok((file, format!("sha256:{}", hex(&hasher.finalize())), size))
            })
            .map_err(StoreError::io("starting a blob writer"))?;
        Ok(BlobWriter {
            chunk: Vec::with_capacity(CHUNK),
            to_worker: Some(to_worker),
            spare,
            worker: Some(worker),
            tmp,
            blobs,
            finished: false,
        })
    }

    /// Hands the filled chunk to the worker.
    fn send(&mut self) -> io::Result<()> {
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.chunk, next);
        let sent = match &self.to_worker {
            Some(tx) => tx.send(full).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The worker stopped on an error (a full disk): that error is the one to report.
        self.to_worker = None;
        Err(match self.worker.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the blob writer panicked"),
            _ => io::Error::other("the blob writer stopped"),
        })
    }

    /// Waits for the worker; returns the file, digest and size.
    fn join(&mut self) -> Result<(fs::File, String, u64), StoreError> {
        self.to_worker = None;
        let worker = self
            .worker
            .take()
            .ok_or_else(|| StoreError::Invalid("the blob writer stopped".into()))?;
        worker
            .join()
            .map_err(|_| StoreError::Invalid("the blob writer panicked".into()))?
            .map_err(StoreError::io("writing a blob"))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.worker.is_none() {
            return Err(io::Error::other("the blob writer stopped"));
        }
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter {
    /// Syncs the blob and moves it into place; returns its digest and size.
    pub fn finish(self) -> Result<(String, u64), StoreError> {
        self.finish_expecting(None)
    }

    /// Like [`BlobWriter::finish`], but refuses (and drops) the blob unless its digest is
    /// `expected`.
    pub fn finish_expecting(mut self, expected: Option<&str>) -> Result<(String, u64), StoreError> {
        if !self.chunk.is_empty() {
            // A failure here shows as the worker's error below.
            let _ = self.send();
        }
        let (f, digest, size) = self.join()?;
        f.sync_all().map_err(StoreError::io("syncing a blob"))?;
        drop(f);
        if let Some(expected) = expected
            && expected != digest
        {
            let _ = fs::remove_file(&self.tmp);
            return Err(StoreError::Corrupt {
                digest: expected.to_string(),
                actual: digest,
            });
        }
        let target = self.blobs.join(digest_hex(&digest)?);
        fs::rename(&self.tmp, &target).map_err(StoreError::io(format!(
            "moving a blob to {}",
            target.display()
        )))?;
        self.finished = true;
        Ok((digest, size))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.join();
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A blob read back with its digest computed on a thread of its own, so hashing overlaps
/// with whatever consumes the bytes (unpacking). [`HashedBlob::finish`] reads to the end
/// and returns the digest of everything.
struct HashedBlob {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    give_back: mpsc::SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    worker: Option<std::thread::JoinHandle<(String, u64)>>,
}

impl HashedBlob {
    fn open(mut file: fs::File) -> io::Result<HashedBlob> {
        let (tx, chunks) = mpsc::sync_channel::<io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
        let (give_back, spare) = mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT + 1);
        let worker = std::thread::Builder::new()
            .name("blob-reader".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                let mut count = 0u64;
                loop {
                    let mut buf = spare.try_recv().unwrap_or_default();
                    buf.resize(CHUNK, 0);
                    match read_full(&mut file, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            hasher.update(&buf);
                            count += n as u64;
                            if tx.send(Ok(buf)).is_err() {
                                // Dropped unfinished: nobody wants the digest.
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                    }
                }
                (format!("sha256:{}", hex(&hasher.finalize())), count)
            })?;
        Ok(HashedBlob {
            chunks,
            give_back,
            current: Vec::new(),
            pos: 0,
            worker: Some(worker),
        })
    }

    /// Reads the rest and returns the digest and size of everything.
    fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        self.worker
            .take()
            .ok_or_else(|| io::Error::other("blob already read"))?
            .join()
            .map_err(|_| io::Error::other("the blob reader panicked"))
    }
}

impl Read for HashedBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.current.len() {
            match self.chunks.recv() {
                Ok(Ok(next)) => {
                    let used = std::mem::replace(&mut self.current, next);
                    let _ = self.give_back.try_send(used);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for HashedBlob {
    fn drop(&mut self) {
        // Unblock the worker (its sends fail once the receiver is gone) and wait for it.
        let (_, dead) = mpsc::sync_channel(0);
        self.chunks = dead;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The `index.json` of the store, kept as raw JSON so unknown fields survive.
fn read_index(path: &Path) -> Result<ImageIndex, StoreError> {
    let f = fs::File::open(path).map_err(StoreError::io(format!("reading {}", path.display())))?;
    serde_json::from_reader(BufReader::new(f))
        .map_err(|e| StoreError::Invalid(format!("{} is not an OCI index: {e}", path.display())))
}

impl Store {
    /// Opens (creating when missing) the store under `data_dir/images`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_at(&data_dir.join("images"))
    }

    /// Opens (creating when missing) a store at exactly `root`.
    pub fn open_at(root: &Path) -> Result<Store, StoreError> {
        let s = Store {
            root: root.to_path_buf(),
        };
        for d in ["blobs/sha256", "layers", "cache", "bases", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(StoreError::io(format!("creating {}", p.display())))?;
        }
        // Unpacked layers hold files of every sandbox uid; only root may enter.
        let _ = fs::set_permissions(
            root.join("layers"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        );
        if !root.join("oci-layout").is_file() {
            s.write_atomic(
                &root.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )?;
        }
        if !root.join("index.json").is_file() {
            let index = ImageIndex::default();
            let json = serde_json::to_vec(&index)
                .map_err(|e| StoreError::Invalid(format!("encoding index.json: {e}")))?;
            s.write_atomic(&root.join("index.json"), &json)?;
        }
        Ok(s)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where base tarballs (mmdebstrap) are cached.
    pub fn bases_dir(&self) -> PathBuf {
        self.root.join("bases")
    }

    /// A fresh scratch directory under `tmp/` (removed by the caller or by gc).
    pub fn scratch(&self, what: &str) -> Result<PathBuf, StoreError> {
        let p = self.root.join("tmp").join(format!(
            "{what}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        fs::create_dir(&p).map_err(StoreError::io(format!("creating {}", p.display())))?;
        Ok(p)
    }

    fn lock(&self, arg: nix::fcntl::FlockArg) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(format!("opening {}", path.display())))?;
        nix::fcntl::Flock::lock(f, arg)
            .map(StoreLock)
            .map_err(|(_, e)| StoreError::io("locking the image store")(e.into()))
    }

    /// Held by builds and imports: gc waits until they are done.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock(nix::fcntl::FlockArg::LockShared)
    }

    /// Held by gc: nothing else writes meanwhile.
    pub fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock(nix::fcntl::FlockArg::LockExclusive)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("write-{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(StoreError::io(format!("writing {}", path.display())))
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// Starts writing a blob.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("blob-{}", uuid::Uuid::new_v4().simple()));
        let f = fs::File::create(&tmp)
            .map_err(StoreError::io(format!("creating {}", tmp.display())))?;
        BlobWriter::start(tmp, self.root.join("blobs/sha256"), f)
    }

    fn put_blob(&self, bytes: &[u8]) -> Result<(String, u64), StoreError> {
        let mut w = self.blob_writer()?;
        w.write_all(bytes)
            .map_err(StoreError::io("writing a blob"))?;
        w.finish()
    }

    /// Reads a whole (small) blob, checking its digest.
    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(digest)?;
        let bytes = fs::read(&p).map_err(StoreError::io(format!("reading blob {digest}")))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(StoreError::Corrupt {
                digest: digest.into(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// True when the blob is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Writes the tree at `dir` as an uncompressed layer blob, leaving the tree as it is;
    /// the layer is unpacked when first used ([`Store::layer_dir`]).
    pub fn seal_blob(
        &self,
        dir: &Path,
        owners: Owners,
        exclude: &[&str],
    ) -> Result<(Layer, LayerStats), StoreError> {
        let w = self.blob_writer()?;
        let (w, stats) = layer::write_layer(dir, owners, exclude, w)
            .map_err(StoreError::io(format!("sealing {}", dir.display())))?;
        Ok((Self::uncompressed_layer(w.finish()?), stats))
    }

    fn uncompressed_layer((digest, size): (String, u64)) -> Layer {
        Layer {
            diff_id: digest.clone(),
            digest,
            size,
            gzip: false,
        }
    }

    /// Seals the tree at `dir` into a new (uncompressed) layer and unpacks it for use as
    /// a lower directory. `owners` says how host owners map to layer owners; top-level
    /// names in `exclude` are left out.
    pub fn seal_dir(
        &self,
        dir: &Path,
        owners: Owners,
        exclude: &[&str],
    ) -> Result<(Layer, LayerStats), StoreError> {
        let (l, stats) = self.seal_blob(dir, owners, exclude)?;
        self.layer_dir(&l.digest)?;
        Ok((l, stats))
    }

    /// Seals a stopped sandbox's upper directory into a layer and *moves* the directory
    /// into the store as the layer's unpacked form, converted in the same walk that writes
    /// the blob (see [`layer::write_layer_adopting`]), so the bytes are written once, into
    /// the blob. `upper` is gone afterwards, also when sealing fails. Falls back to
    /// unpacking the blob when the upper directory is on another filesystem.
    pub fn seal_upper(
        &self,
        upper: &Path,
        owners: Owners,
        exclude: &[&str],
    ) -> Result<(Layer, LayerStats), StoreError> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("adopt-{}", uuid::Uuid::new_v4().simple()));
        match fs::rename(upper, &tmp) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let (l, stats) = self.seal_blob(upper, owners, exclude)?;
                self.layer_dir(&l.digest)?;
                return Ok((l, stats));
            }
            Err(e) => return Err(StoreError::io(format!("moving {}", upper.display()))(e)),
        }
        let sealed = (|| {
            let w = self.blob_writer()?;
            let (w, stats) = layer::write_layer_adopting(&tmp, owners, exclude, w)
                .map_err(StoreError::io(format!("sealing {}", upper.display())))?;
            let l = Self::uncompressed_layer(w.finish()?);
            let target = self.root.join("layers").join(digest_hex(&l.digest)?);
            if let Err(e) = fs::rename(&tmp, &target)
                && !target.is_dir()
            {
                return Err(StoreError::io("moving a layer into place")(e));
            }
            Ok((l, stats))
        })();
        // Left over when the layer was already there, or when sealing failed.
        let _ = fs::remove_dir_all(&tmp);
        sealed
    }

    /// Stores a tarball read from `reader` (plain tar, or gzip when `gzip`) as a layer.
    pub fn put_layer(&self, mut reader: impl Read, gzip: bool) -> Result<Layer, StoreError> {
        let mut w = self.blob_writer()?;
        io::copy(&mut reader, &mut w).map_err(StoreError::io("storing a layer"))?;
        let (digest, size) = w.finish()?;
        let diff_id = if gzip {
            self.diff_id_of(&digest)?
        } else {
            digest.clone()
        };
        Ok(Layer {
            digest,
            diff_id,
            size,
            gzip,
        })
    }

    fn diff_id_of(&self, digest: &str) -> Result<String, StoreError> {
        let f = fs::File::open(self.blob_path(digest)?)
            .map_err(StoreError::io(format!("reading blob {digest}")))?;
        let r = HashingReader::new(flate2::read::GzDecoder::new(BufReader::new(f)));
        let (d, _) = r
            .finish()
            .map_err(StoreError::io(format!("decompressing layer {digest}")))?;
        Ok(d)
    }

    /// The unpacked directory of a layer, unpacking it first if needed (once). The blob
    /// is checked against its digest while it is unpacked; a corrupt blob is refused and
    /// nothing is left behind.
    pub fn layer_dir(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex = digest_hex(digest)?;
        let dir = self.root.join("layers").join(hex);
        if dir.is_dir() {
            return Ok(dir);
        }
        let blob = self.blob_path(digest)?;
        let f = fs::File::open(&blob).map_err(StoreError::io(format!(
            "layer {digest} is missing from the store"
        )))?;
        let tmp = self.scratch("unpack")?;
        let result = (|| {
            let mut r =
                HashedBlob::open(f).map_err(StoreError::io(format!("reading layer {digest}")))?;
            let mut magic = [0u8; 4];
            let n = read_full(&mut r, &mut magic)
                .map_err(StoreError::io(format!("reading layer {digest}")))?;
            let head = io::Cursor::new(magic[..n].to_vec());
            let unpacked = if magic[..2] == [0x1f, 0x8b] {
                layer::unpack_layer(flate2::read::GzDecoder::new(head.chain(&mut r)), &tmp)
            } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
                return Err(StoreError::Invalid(format!(
                    "layer {digest} is zstd-compressed, which Hangar does not read yet"
                )));
            } else {
                layer::unpack_layer(head.chain(&mut r), &tmp)
            };
            // Hash to the end before judging: a corrupt blob may still unpack.
            let (actual, _) = r
                .finish()
                .map_err(StoreError::io(format!("reading layer {digest}")))?;
            if actual != digest {
                return Err(StoreError::Corrupt {
                    digest: digest.into(),
                    actual,
                });
            }
            unpacked.map_err(StoreError::io(format!("unpacking layer {digest}")))?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            // Another process unpacked it meanwhile.
            Err(_) if dir.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(StoreError::io(format!("moving layer to {}", dir.display()))(e))
            }
        }
    }

    /// The layers a build-cache key produced, when they are all still present.
    pub fn cache_get(&self, key: &str) -> Option<Vec<Layer>> {
        let p = self
            .root
            .join("cache")
            .join(format!("{}.json", digest_hex(key).ok()?));
        let layers: Vec<Layer> = serde_json::from_slice(&fs::read(p).ok()?).ok()?;
        layers
            .iter()
            .all(|l| self.has_blob(&l.digest))
            .then_some(layers)
    }

    /// Records what a build-cache key produced.
    pub fn cache_put(&self, key: &str, layers: &[Layer]) -> Result<(), StoreError> {
        let p = self
            .root
            .join("cache")
            .join(format!("{}.json", digest_hex(key)?));
        let json = serde_json::to_vec(layers)
            .map_err(|e| StoreError::Invalid(format!("encoding a cache entry: {e}")))?;
        self.write_atomic(&p, &json)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Records an image made of `layers` (bottom first); returns it. Adding the same
    /// image twice is harmless.
    pub fn add_image(&self, layers: &[Layer], meta: &ImageMeta) -> Result<ImageInfo, StoreError> {
        let mut labels = HashMap::new();
        if let Some(r) = &meta.recipe {
            labels.insert(LABEL_RECIPE.to_string(), r.clone());
        }
        if !meta.start.is_empty() {
            labels.insert(
                LABEL_START.to_string(),
                serde_json::to_string(&meta.start).unwrap_or_default(),
            );
        }
        if let Some(n) = &meta.session_network {
            labels.insert(LABEL_SESSION_NETWORK.to_string(), n.clone());
        }
        let mut cb = ConfigBuilder::default().labels(labels);
        if !meta.env.is_empty() {
            cb = cb.env(meta.env.clone());
        }
        if let Some(w) = &meta.workdir {
            cb = cb.working_dir(w.clone());
        }
        let created = rfc3339_now();
        let config = ImageConfigurationBuilder::default()
            .created(created.clone())
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .config(cb.build().map_err(oci_err("image config"))?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
                    .build()
                    .map_err(oci_err("image rootfs"))?,
            )
            .build()
            .map_err(oci_err("image configuration"))?;
        let config_json = serde_json::to_vec(&config)
            .map_err(|e| StoreError::Invalid(format!("encoding the image config: {e}")))?;
        let (config_digest, config_size) = self.put_blob(&config_json)?;
        let mut ann = HashMap::new();
        ann.insert(CREATED.to_string(), created);
        ann.insert(ANN_BASE.to_string(), meta.base.clone());
        if let Some(r) = &meta.repo {
            ann.insert(ANN_REPO.to_string(), r.clone());
        }
        if let Some(c) = &meta.commit {
            ann.insert(ANN_COMMIT.to_string(), c.clone());
        }
        if let Some(d) = &meta.recipe_digest {
            ann.insert(ANN_RECIPE_DIGEST.to_string(), d.clone());
        }
        if let Some(d) = &meta.snapshot_of {
            ann.insert(ANN_SNAPSHOT_OF.to_string(), d.clone());
        }
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(
                MediaType::ImageConfig,
                config_size,
                parse_digest(&config_digest)?,
            ))
            .layers(
                layers
                    .iter()
                    .map(Layer::descriptor)
                    .collect::<Result<Vec<_>, _>>()?,
            )
            .annotations(ann)
            .build()
            .map_err(oci_err("image manifest"))?;
        self.add_manifest(&manifest)
    }

    fn add_manifest(&self, manifest: &ImageManifest) -> Result<ImageInfo, StoreError> {
        let json = serde_json::to_vec(manifest)
            .map_err(|e| StoreError::Invalid(format!("encoding the manifest: {e}")))?;
        let (digest, size) = self.put_blob(&json)?;
        let id = digest_hex(&digest)?[..12].to_string();
        let mut desc = Descriptor::new(MediaType::ImageManifest, size, parse_digest(&digest)?);
        let mut ann = HashMap::new();
        ann.insert(REF_NAME.to_string(), id);
        if let Some(repo) = manifest
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANN_REPO))
        {
            ann.insert(ANN_REPO.to_string(), repo.clone());
        }
        desc.set_annotations(Some(ann));
        self.update_index(|manifests| {
            if manifests.iter().any(|m| m.digest().to_string() == digest) {
                return false;
            }
            manifests.push(desc);
            true
        })?;
        self.image_by_digest(&digest)
    }

    /// Changes the list of images in `index.json` (`change` says whether it changed
    /// anything), one writer at a time: sessions add and remove snapshots concurrently.
    fn update_index(
        &self,
        change: impl FnOnce(&mut Vec<Descriptor>) -> bool,
    ) -> Result<(), StoreError> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("index.lock"))
            .map_err(StoreError::io("opening index.lock"))?;
        let _w = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| StoreError::io("locking index.json")(e.into()))?;
        let mut index = read_index(&self.index_path())?;
        let mut manifests = index.manifests().clone();
        if change(&mut manifests) {
            index.set_manifests(manifests);
            self.write_index(&index)?;
        }
        Ok(())
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(index)
            .map_err(|e| StoreError::Invalid(format!("encoding index.json: {e}")))?;
        self.write_atomic(&self.index_path(), &json)
    }

    fn image_by_digest(&self, digest: &str) -> Result<ImageInfo, StoreError> {
        let manifest: ImageManifest = serde_json::from_slice(&self.read_blob(digest)?)
            .map_err(|e| StoreError::Invalid(format!("manifest {digest}: {e}")))?;
        let config_digest = manifest.config().digest().to_string();
        let config: ImageConfiguration =
            serde_json::from_slice(&self.read_blob(&config_digest)?)
                .map_err(|e| StoreError::Invalid(format!("image config {config_digest}: {e}")))?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(StoreError::Invalid(format!(
                "image {digest}: {} layers but {} diff_ids",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let layers: Vec<Layer> = manifest
            .layers()
            .iter()
            .zip(diff_ids)
            .map(|(d, diff_id)| Layer {
                digest: d.digest().to_string(),
                diff_id: diff_id.clone(),
                size: d.size(),
                gzip: matches!(
                    d.media_type(),
                    MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip
                ) || d.media_type().to_string()
                    == "application/vnd.docker.image.rootfs.diff.tar.gzip",
            })
            .collect();
        let ann = manifest.annotations().clone().unwrap_or_default();
        let labels = config
            .config()
            .as_ref()
            .and_then(|c| c.labels().clone())
            .unwrap_or_default();
        let cfg = config.config().clone().unwrap_or_default();
        let meta = ImageMeta {
            repo: ann.get(ANN_REPO).cloned(),
            commit: ann.get(ANN_COMMIT).cloned(),
            base: ann.get(ANN_BASE).cloned().unwrap_or_else(|| "oci".into()),
            recipe: labels.get(LABEL_RECIPE).cloned(),
            recipe_digest: ann.get(ANN_RECIPE_DIGEST).cloned(),
            workdir: cfg.working_dir().clone(),
            env: cfg.env().clone().unwrap_or_default(),
            start: labels
                .get(LABEL_START)
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default(),
            session_network: labels.get(LABEL_SESSION_NETWORK).cloned(),
            snapshot_of: ann.get(ANN_SNAPSHOT_OF).cloned(),
        };
        Ok(ImageInfo {
            id: digest_hex(digest)?[..12].to_string(),
            digest: digest.to_string(),
            created: ann
                .get(CREATED)
                .cloned()
                .or_else(|| config.created().clone()),
            size: layers.iter().map(|l| l.size).sum(),
            layers,
            meta,
        })
    }

    /// Every image, oldest first.
    pub fn images(&self) -> Result<Vec<ImageInfo>, StoreError> {
        let index = read_index(&self.index_path())?;
        index
            .manifests()
            .iter()
            .map(|m| self.image_by_digest(m.digest().as_ref()))
            .collect()
    }

    /// The image with this id, id prefix or manifest digest.
    pub fn image(&self, id: &str) -> Result<ImageInfo, StoreError> {
        let id = id.strip_prefix("sha256:").unwrap_or(id);
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::NotFound(id.to_string()));
        }
        let index = read_index(&self.index_path())?;
        let matches: Vec<String> = index
            .manifests()
            .iter()
            .map(|m| m.digest().to_string())
            .filter(|d| d.strip_prefix("sha256:").is_some_and(|h| h.starts_with(id)))
            .collect();
        match matches.as_slice() {
            [] => Err(StoreError::NotFound(id.to_string())),
            [one] => self.image_by_digest(one),
            _ => Err(StoreError::Ambiguous(id.to_string())),
        }
    }

    /// Removes an image from the index (its blobs go at the next gc). The current image
    /// of a repository cannot be removed.
    pub fn remove_image(&self, id: &str) -> Result<ImageInfo, StoreError> {
        let image = self.image(id)?;
        for (repo, state) in self.repos()? {
            if state.current == image.digest {
                return Err(StoreError::Conflict(format!(
                    "image {} is the current image of {repo}; build a newer one first",
                    image.id
                )));
            }
        }
        self.update_index(|manifests| {
            let before = manifests.len();
            manifests.retain(|m| m.digest().to_string() != image.digest);
            manifests.len() != before
        })?;
        Ok(image)
    }

    /// Every repository's current image.
    pub fn repos(&self) -> Result<BTreeMap<String, RepoState>, StoreError> {
        let p = self.root.join("repos.json");
        match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Invalid(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(StoreError::io(format!("reading {}", p.display()))(e)),
        }
    }

    /// The current image of a repository.
    pub fn current(&self, repo: &str) -> Result<Option<ImageInfo>, StoreError> {
        match self.repos()?.get(repo) {
            Some(s) => self.image_by_digest(&s.current).map(Some),
            None => Ok(None),
        }
    }

    /// Makes an image the current one of its repository, atomically (one rename).
    pub fn set_current(&self, repo: &str, image: &ImageInfo) -> Result<(), StoreError> {
        let _guard = self.lock(nix::fcntl::FlockArg::LockShared)?;
        let path = self.root.join("repos.json");
        // Serialize writers of repos.json among themselves.
        let wlock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("repos.lock"))
            .map_err(StoreError::io("opening repos.lock"))?;
        let _w = nix::fcntl::Flock::lock(wlock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| StoreError::io("locking repos.json")(e.into()))?;
        let mut repos = self.repos()?;
        let previous = repos.get(repo).map(|s| s.current.clone());
        repos.insert(
            repo.to_string(),
            RepoState {
                previous: previous.filter(|p| *p != image.digest),
                current: image.digest.clone(),
                updated_at_ms: now_ms(),
            },
        );
        let json = serde_json::to_vec_pretty(&repos)
            .map_err(|e| StoreError::Invalid(format!("encoding repos.json: {e}")))?;
        self.write_atomic(&path, &json)
    }

    /// Removes blobs, unpacked layers and cache entries that no image references. Layer
    /// directories in `in_use` (e.g. those of existing sandboxes) and their blobs are kept
    /// whatever references them. Waits for running builds.
    pub fn gc(&self, in_use: &[PathBuf]) -> Result<GcReport, StoreError> {
        let _lock = self.lock_exclusive()?;
        let mut keep: HashSet<String> = HashSet::new();
        let index = read_index(&self.index_path())?;
        for m in index.manifests() {
            let d = m.digest().to_string();
            keep.insert(d.clone());
            let image = self.image_by_digest(&d)?;
            let manifest: ImageManifest = serde_json::from_slice(&self.read_blob(&d)?)
                .map_err(|e| StoreError::Invalid(format!("manifest {d}: {e}")))?;
            keep.insert(manifest.config().digest().to_string());
            for l in image.layers {
                keep.insert(l.digest);
            }
        }
        let layers_dir = self.root.join("layers");
        for p in in_use {
            if p.parent() == Some(layers_dir.as_path())
                && let Some(name) = p.file_name().and_then(|n| n.to_str())
            {
                keep.insert(format!("sha256:{name}"));
            }
        }
        let mut report = GcReport::default();
        let blobs = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs)
            .map_err(StoreError::io("listing blobs"))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&format!("sha256:{name}")) {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path())
                    .map_err(StoreError::io(format!("removing blob {name}")))?;
                report.blobs_removed += 1;
                report.bytes_freed += size;
            }
        }
        for e in fs::read_dir(&layers_dir)
            .map_err(StoreError::io("listing layers"))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&format!("sha256:{name}")) {
                fs::remove_dir_all(e.path())
                    .map_err(StoreError::io(format!("removing layer {name}")))?;
                report.layers_removed += 1;
            }
        }
        let cache = self.root.join("cache");
        for e in fs::read_dir(&cache)
            .map_err(StoreError::io("listing the build cache"))?
            .flatten()
        {
            let layers: Option<Vec<Layer>> = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let live = layers.is_some_and(|ls| ls.iter().all(|l| self.has_blob(&l.digest)));
            if !live {
                let _ = fs::remove_file(e.path());
                report.cache_entries_removed += 1;
            }
        }
        // Nothing else writes while the lock is held: whatever is in tmp/ was abandoned.
        for e in fs::read_dir(self.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                let _ = fs::remove_dir_all(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
        Ok(report)
    }

    /// Writes an image as an OCI image layout in a tarball (readable by umoci, skopeo's
    /// `oci-archive:` and Docker-compatible tools); its ref.name is `tag`, or its id.
    /// Blobs are checked against their digests on the way out.
    pub fn export(
        &self,
        id: &str,
        file: &Path,
        tag: Option<&str>,
    ) -> Result<ImageInfo, StoreError> {
        let image = self.image(id)?;
        let manifest: ImageManifest = serde_json::from_slice(&self.read_blob(&image.digest)?)
            .map_err(|e| StoreError::Invalid(format!("manifest {}: {e}", image.digest)))?;
        let manifest_size = self.read_blob(&image.digest)?.len() as u64;
        let mut desc = Descriptor::new(
            MediaType::ImageManifest,
            manifest_size,
            parse_digest(&image.digest)?,
        );
        let mut ann = HashMap::new();
        ann.insert(REF_NAME.to_string(), tag.unwrap_or(&image.id).to_string());
        desc.set_annotations(Some(ann));
        let mut index = ImageIndex::default();
        index.set_manifests(vec![desc]);
        let index_json = serde_json::to_vec(&index)
            .map_err(|e| StoreError::Invalid(format!("encoding index.json: {e}")))?;
        let tmp = file.with_extension("partial");
        let result = (|| -> Result<(), StoreError> {
            let out = fs::File::create(&tmp)
                .map_err(StoreError::io(format!("creating {}", tmp.display())))?;
            let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, out));
            let io_err =
                |what: &str| StoreError::io(format!("writing {} into {}", what, file.display()));
            let add = |b: &mut tar::Builder<_>, name: &str, data: &[u8]| {
                let mut h = tar::Header::new_ustar();
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                h.set_mtime(0);
                b.append_data(&mut h, name, data).map_err(io_err(name))
            };
            add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            add(&mut b, "index.json", &index_json)?;
            let mut blobs = vec![image.digest.clone(), manifest.config().digest().to_string()];
            blobs.extend(image.layers.iter().map(|l| l.digest.clone()));
            for d in blobs {
                let p = self.blob_path(&d)?;
                let f = fs::File::open(&p).map_err(StoreError::io(format!("reading blob {d}")))?;
                let size = f
                    .metadata()
                    .map_err(StoreError::io(format!("stat blob {d}")))?
                    .len();
                let mut h = tar::Header::new_ustar();
                h.set_mode(0o644);
                h.set_size(size);
                h.set_mtime(0);
                let mut r = HashingReader::new(BufReader::new(f).take(size));
                b.append_data(&mut h, format!("blobs/sha256/{}", digest_hex(&d)?), &mut r)
                    .map_err(io_err(&d))?;
                let (actual, _) = r.finish().map_err(io_err(&d))?;
                if actual != d {
                    return Err(StoreError::Corrupt { digest: d, actual });
                }
            }
            let w = b.into_inner().map_err(io_err("the end"))?;
            let f = w
                .into_inner()
                .map_err(|e| io_err("the end")(e.into_error()))?;
            f.sync_all().map_err(io_err("the end"))?;
            fs::rename(&tmp, file)
                .map_err(StoreError::io(format!("renaming to {}", file.display())))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| image)
    }

    /// Imports every image of an OCI image layout (a directory or a tarball of one).
    /// With `reference`, only the image whose ref.name matches. Blobs are checked against
    /// their digests.
    pub fn import(
        &self,
        path: &Path,
        reference: Option<&str>,
    ) -> Result<Vec<ImageInfo>, StoreError> {
        let _lock = self.lock_shared()?;
        let (layout, scratch) = if path.is_dir() {
            (path.to_path_buf(), None)
        } else {
            let dir = self.scratch("import")?;
            let f = fs::File::open(path)
                .map_err(StoreError::io(format!("opening {}", path.display())))?;
            let mut a = tar::Archive::new(BufReader::new(f));
            if let Err(e) = a.unpack(&dir) {
                let _ = fs::remove_dir_all(&dir);
                return Err(StoreError::Invalid(format!(
                    "{} is not a readable OCI layout tarball: {e}",
                    path.display()
                )));
            }
            (dir.clone(), Some(dir))
        };
        let result = self.import_layout(&layout, reference);
        if let Some(d) = scratch {
            let _ = fs::remove_dir_all(d);
        }
        result
    }

    fn import_layout(
        &self,
        layout: &Path,
        reference: Option<&str>,
    ) -> Result<Vec<ImageInfo>, StoreError> {
        if !layout.join("oci-layout").is_file() {
            return Err(StoreError::Invalid(format!(
                "{} is not an OCI image layout (no oci-layout file)",
                layout.display()
            )));
        }
        let index = read_index(&layout.join("index.json"))?;
        let mut out = Vec::new();
        let mut manifests: Vec<Descriptor> = Vec::new();
        for m in index.manifests() {
            let name = m
                .annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME).cloned());
            if reference.is_some() && name.as_deref() != reference {
                continue;
            }
            if *m.media_type() == MediaType::ImageIndex {
                let nested: ImageIndex =
                    serde_json::from_slice(&read_layout_blob(layout, m.digest().as_ref())?)
                        .map_err(|e| StoreError::Invalid(format!("nested index: {e}")))?;
                manifests.extend(
                    nested
                        .manifests()
                        .iter()
                        .filter(|d| {
                            d.platform().as_ref().is_none_or(|p| {
                                *p.os() == Os::Linux && *p.architecture() == Arch::Amd64
                            })
                        })
                        .cloned(),
                );
            } else {
                manifests.push(m.clone());
            }
        }
        if manifests.is_empty() {
            return Err(StoreError::NotFound(match reference {
                Some(r) => format!("{r} in {}", layout.display()),
                None => format!("in {} (its index is empty)", layout.display()),
            }));
        }
        for m in manifests {
            let bytes = read_layout_blob(layout, m.digest().as_ref())?;
            let manifest: ImageManifest = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Invalid(format!("manifest {}: {e}", m.digest())))?;
            let mut blobs = vec![manifest.config().digest().to_string()];
            blobs.extend(manifest.layers().iter().map(|l| l.digest().to_string()));
            for d in blobs {
                if self.has_blob(&d) {
                    continue;
                }
                let src = layout.join("blobs/sha256").join(digest_hex(&d)?);
                let f = fs::File::open(&src)
                    .map_err(StoreError::io(format!("reading blob {d} of the layout")))?;
                let mut w = self.blob_writer()?;
                io::copy(&mut BufReader::new(f), &mut w)
                    .map_err(StoreError::io(format!("importing blob {d}")))?;
                w.finish_expecting(Some(&d))?;
            }
            out.push(self.add_manifest(&manifest)?);
        }
        Ok(out)
    }
}

fn read_layout_blob(layout: &Path, digest: &str) -> Result<Vec<u8>, StoreError> {
    let p = layout.join("blobs/sha256").join(digest_hex(digest)?);
    let bytes = fs::read(&p).map_err(StoreError::io(format!("reading {}", p.display())))?;
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(StoreError::Corrupt {
            digest: digest.into(),
            actual,
        });
    }
    Ok(bytes)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc3339_looks_right() {
        let s = rfc3339_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }

    #[test]
    fn digest_hex_refuses_paths() {
        assert!(digest_hex("sha256:../../etc").is_err());
        assert!(digest_hex(&sha256_digest(b"x")).is_ok());
    }
}
