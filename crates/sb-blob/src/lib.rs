//! Content-addressed blob storage: a blob's id is the BLAKE3 hash of its bytes.
//!
//! [`LocalBlobStore`] keeps each blob as a file under `dir/ab/cd/<hash>` (or `<hash>.zst` when
//! zstd made it smaller), written to a temp file, fsynced and renamed into place, so a copy is
//! either complete or absent. With several directories (disks) each blob goes to `replicas` of
//! them, chosen by rendezvous hashing on its id, so every reader knows where to look. Every read
//! decompresses and re-hashes: a corrupt or missing copy is passed over for another, and then
//! rewritten from the good one. [`LocalBlobStore::scrub`] does the same for every copy at once.
//! Hot blobs are kept decoded in a cache of `cache_bytes`.
//!
//! Chat attachments and file chunks share it. What is referenced is not this crate's business:
//! [`LocalBlobStore::list`] and [`LocalBlobStore::remove`] are what garbage collection needs.
//! [`chunker`] cuts files into content-defined chunks.

pub mod chunker;

use async_trait::async_trait;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

impl BlobId {
    pub fn of(bytes: &[u8]) -> BlobId {
        BlobId(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> BlobId {
        BlobId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

impl FromStr for BlobId {
    type Err = BlobError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BlobError::BadId)?;
        Ok(BlobId(out))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("not a blob id (64 hex digits)")]
    BadId,
    #[error("blob {0} is corrupt in every copy: its content no longer matches its hash")]
    Corrupt(BlobId),
    #[error("blob storage is misconfigured: {0}")]
    Config(String),
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = BlobError> = std::result::Result<T, E>;

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` durably and returns their id (storing the same bytes twice is free).
    async fn put(&self, bytes: Vec<u8>) -> Result<BlobId>;
    /// The blob's bytes, verified against its id; `None` if it is not stored.
    async fn get(&self, id: BlobId) -> Result<Option<Vec<u8>>>;
}

/// How a [`LocalBlobStore`] lays blobs out.
#[derive(Clone, Debug)]
pub struct BlobConfig {
    /// Directories (one per disk) blobs are spread over.
    pub dirs: Vec<PathBuf>,
    /// Copies of each blob, on distinct directories (at most `dirs.len()`).
    pub replicas: usize,
    /// zstd level for blobs that compress (0: store everything as is).
    pub zstd_level: i32,
    /// Decoded blobs kept in memory, in bytes (0: no cache).
    pub cache_bytes: usize,
}

impl BlobConfig {
    /// One directory, one copy, no compression, no cache.
    pub fn single(dir: &Path) -> Self {
        Self {
            dirs: vec![dir.to_path_buf()],
            replicas: 1,
            zstd_level: 0,
            cache_bytes: 0,
        }
    }
}

/// What a scrub found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub blobs: u64,
    pub copies_checked: u64,
    pub bytes_checked: u64,
    /// Copies that were corrupt (content not matching the id).
    pub corrupt_copies: u64,
    /// Copies rewritten from a good one (corrupt, or missing where a replica belongs).
    pub repaired_copies: u64,
    /// Blobs with no good copy left.
    pub lost: Vec<BlobId>,
}

/// Counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobStats {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub corrupt_copies_found: u64,
    pub copies_repaired: u64,
}

/// Recently used decoded blobs, bounded by their total size.
struct Cache {
    cap: usize,
    used: usize,
    tick: u64,
    entries: HashMap<BlobId, (Arc<Vec<u8>>, u64)>,
}

impl Cache {
    fn get(&mut self, id: &BlobId) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.get_mut(id)?;
        e.1 = tick;
        Some(e.0.clone())
    }

    fn put(&mut self, id: BlobId, bytes: Arc<Vec<u8>>) {
        if bytes.len() > self.cap / 4 || self.entries.contains_key(&id) {
            return;
        }
        self.tick += 1;
        self.used += bytes.len();
        self.entries.insert(id, (bytes, self.tick));
        if self.used > self.cap {
            // Evict the least recently used half of what is over: one sort per eviction round.
            let mut by_age: Vec<(u64, BlobId, usize)> = self
                .entries
                .iter()
                .map(|(id, (b, t))| (*t, *id, b.len()))
                .collect();
            by_age.sort_unstable();
            let target = self.cap - self.cap / 4;
            for (_, id, len) in by_age {
                if self.used <= target {
                    break;
                }
                self.entries.remove(&id);
                self.used -= len;
            }
        }
    }

    fn remove(&mut self, id: &BlobId) {
        if let Some((b, _)) = self.entries.remove(id) {
            self.used -= b.len();
        }
    }
}

/// A handle to the store (cheap to clone; clones share the directories and the cache).
#[derive(Clone)]
pub struct LocalBlobStore(Arc<Inner>);

struct Inner {
    dirs: Vec<PathBuf>,
    replicas: usize,
    zstd_level: i32,
    cache: Mutex<Cache>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    corrupt_found: AtomicU64,
    repaired: AtomicU64,
}

/// One copy as found on disk.
enum Copy {
    Good(Vec<u8>),
    Corrupt,
    Missing,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalBlobStore {
    pub fn open(cfg: BlobConfig) -> Result<Self> {
        Inner::open(cfg).map(|i| Self(Arc::new(i)))
    }

    pub fn stats(&self) -> BlobStats {
        self.0.stats()
    }

    /// Where the copy in directory `dir` lives (`compressed`: the `.zst` form).
    pub fn path_in(&self, dir: usize, id: BlobId, compressed: bool) -> PathBuf {
        self.0.path_in(dir, id, compressed)
    }

    /// Every blob id stored in any directory, with the newest modification time of its
    /// copies (for garbage collection after a grace period).
    pub fn list(&self) -> Result<Vec<(BlobId, std::time::SystemTime)>> {
        self.0.list()
    }

    /// Deletes every copy of a blob.
    pub fn remove(&self, id: BlobId) -> Result<()> {
        self.0.remove(id)
    }

    /// Marks a blob as just used (its copies' modification time), so garbage collection's
    /// grace period protects a blob a new upload is about to refer to.
    pub fn touch(&self, id: BlobId) {
        let me = &self.0;
        for d in 0..me.dirs.len() {
            for compressed in [true, false] {
                if let Ok(f) = std::fs::File::options()
                    .write(true)
                    .open(me.path_in(d, id, compressed))
                {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
            }
        }
    }

    /// Whether a copy of the blob is stored where it belongs (not read or verified: a
    /// damaged copy is found on read or by scrub).
    pub fn contains(&self, id: BlobId) -> bool {
        let me = &self.0;
        me.placement(id)
            .into_iter()
            .take(me.replicas)
            .any(|d| me.path_in(d, id, true).exists() || me.path_in(d, id, false).exists())
    }

    /// Re-hashes every copy of every blob; rewrites corrupt or missing copies from a good one.
    /// `progress` is called after each blob with (done, total).
    pub fn scrub(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<ScrubReport> {
        self.0.scrub(progress)
    }

    /// [`BlobStore::get`] sharing the cached bytes instead of copying them.
    pub async fn get_shared(&self, id: BlobId) -> Result<Option<Arc<Vec<u8>>>> {
        let me = self.0.clone();
        tokio::task::spawn_blocking(move || me.get_sync(id))
            .await
            .map_err(blocking_err)?
    }
}

impl Inner {
    fn open(cfg: BlobConfig) -> Result<Self> {
        if cfg.dirs.is_empty() {
            return Err(BlobError::Config("no blob directory".into()));
        }
        if cfg.replicas == 0 || cfg.replicas > cfg.dirs.len() {
            return Err(BlobError::Config(format!(
                "replicas = {} needs that many blob directories (there are {})",
                cfg.replicas,
                cfg.dirs.len()
            )));
        }
        for d in &cfg.dirs {
            std::fs::create_dir_all(d.join("tmp"))?;
        }
        Ok(Self {
            dirs: cfg.dirs,
            replicas: cfg.replicas,
            zstd_level: cfg.zstd_level,
            cache: Mutex::new(Cache {
                cap: cfg.cache_bytes,
                used: 0,
                tick: 0,
                entries: HashMap::new(),
            }),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            corrupt_found: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
        })
    }

    fn stats(&self) -> BlobStats {
        BlobStats {
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            cache_misses: self.cache_misses.load(Ordering::Relaxed),
            corrupt_copies_found: self.corrupt_found.load(Ordering::Relaxed),
            copies_repaired: self.repaired.load(Ordering::Relaxed),
        }
    }

    /// The directories a blob belongs in, best first (rendezvous hashing: adding a directory
    /// moves only the blobs that now rank it first).
    fn placement(&self, id: BlobId) -> Vec<usize> {
        let mut ranked: Vec<(blake3::Hash, usize)> = (0..self.dirs.len())
            .map(|i| {
                let mut h = blake3::Hasher::new();
                h.update(&id.0);
                h.update(&(i as u64).to_le_bytes());
                (h.finalize(), i)
            })
            .collect();
        ranked.sort_by(|a, b| b.0.as_bytes().cmp(a.0.as_bytes()));
        ranked.into_iter().map(|(_, i)| i).collect()
    }

    /// Where a copy lives in directory `dir`: two levels of fan-out keep directories small.
    fn path_in(&self, dir: usize, id: BlobId, compressed: bool) -> PathBuf {
        let hex = id.to_string();
        let name = if compressed {
            format!("{hex}.zst")
        } else {
            hex.clone()
        };
        self.dirs[dir].join(&hex[0..2]).join(&hex[2..4]).join(name)
    }

    /// The copy in directory `dir`, decoded and checked.
    fn read_copy(&self, dir: usize, id: BlobId) -> Result<Copy> {
        for compressed in [true, false] {
            let raw = match std::fs::read(self.path_in(dir, id, compressed)) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let bytes = if compressed {
                match zstd::stream::decode_all(raw.as_slice()) {
                    Ok(b) => b,
                    Err(_) => return Ok(Copy::Corrupt),
                }
            } else {
                raw
            };
            return Ok(if BlobId::of(&bytes) == id {
                Copy::Good(bytes)
            } else {
                Copy::Corrupt
            });
        }
        Ok(Copy::Missing)
    }

    /// Writes a copy of `bytes` into directory `dir` (replacing a bad one).
    fn write_copy(&self, dir: usize, id: BlobId, bytes: &[u8]) -> Result<()> {
        let packed = (self.zstd_level != 0)
            .then(|| zstd::bulk::compress(bytes, self.zstd_level).ok())
            .flatten()
            .filter(|z| z.len() + z.len() / 8 < bytes.len());
        let path = self.path_in(dir, id, packed.is_some());
        let other = self.path_in(dir, id, packed.is_none());
        let parent = path.parent().ok_or(BlobError::BadId)?;
        std::fs::create_dir_all(parent)?;
        let (tmp_path, mut tmp) = tempfile_in(&self.dirs[dir].join("tmp"))?;
        use std::io::Write;
        tmp.write_all(packed.as_deref().unwrap_or(bytes))?;
        tmp.sync_all()?;
        std::fs::rename(&tmp_path, &path)?;
        // A stale copy in the other form would shadow or confuse reads: it goes.
        match std::fs::remove_file(&other) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        fsync_dir(parent)?;
        Ok(())
    }

    fn put_sync(&self, bytes: &[u8]) -> Result<BlobId> {
        let id = BlobId::of(bytes);
        for dir in self.placement(id).into_iter().take(self.replicas) {
            let present =
                self.path_in(dir, id, true).exists() || self.path_in(dir, id, false).exists();
            if !present {
                self.write_copy(dir, id, bytes)?;
            }
        }
        Ok(id)
    }

    /// Reads a blob from the first good copy, looking in its own directories first and then
    /// the others (a blob written before a directory was added); repairs the bad or missing
    /// copies where it belongs.
    fn get_sync(&self, id: BlobId) -> Result<Option<Arc<Vec<u8>>>> {
        if let Some(b) = lock(&self.cache).get(&id) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(b));
        }
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        let order = self.placement(id);
        let home: Vec<usize> = order.iter().copied().take(self.replicas).collect();
        let mut needs_repair = Vec::new();
        let mut corrupt = false;
        let mut good = None;
        for &dir in &order {
            match self.read_copy(dir, id)? {
                Copy::Good(b) => {
                    good = Some(b);
                    break;
                }
                Copy::Corrupt => {
                    corrupt = true;
                    self.corrupt_found.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(blob = %id, dir = %self.dirs[dir].display(), "a blob copy is corrupt");
                    if home.contains(&dir) {
                        needs_repair.push(dir);
                    }
                }
                Copy::Missing => {
                    if home.contains(&dir) {
                        needs_repair.push(dir);
                    }
                }
            }
        }
        let Some(bytes) = good else {
            return if corrupt {
                Err(BlobError::Corrupt(id))
            } else {
                Ok(None)
            };
        };
        for dir in needs_repair {
            self.write_copy(dir, id, &bytes)?;
            self.repaired.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(blob = %id, dir = %self.dirs[dir].display(), "blob copy repaired from a good replica");
        }
        let bytes = Arc::new(bytes);
        lock(&self.cache).put(id, bytes.clone());
        Ok(Some(bytes))
    }

    fn list(&self) -> Result<Vec<(BlobId, std::time::SystemTime)>> {
        let mut out: HashMap<BlobId, std::time::SystemTime> = HashMap::new();
        for dir in &self.dirs {
            for a in read_dir_sorted(dir)? {
                if a.file_name()
                    .and_then(|n| n.to_str())
                    .is_none_or(|n| n.len() != 2)
                {
                    continue;
                }
                for b in read_dir_sorted(&a)? {
                    for f in read_dir_sorted(&b)? {
                        let Some(name) = f.file_name().and_then(|n| n.to_str()) else {
                            continue;
                        };
                        let Ok(id) = name.trim_end_matches(".zst").parse::<BlobId>() else {
                            continue;
                        };
                        let mtime = std::fs::metadata(&f)?.modified()?;
                        let e = out.entry(id).or_insert(mtime);
                        *e = (*e).max(mtime);
                    }
                }
            }
        }
        let mut v: Vec<_> = out.into_iter().collect();
        v.sort();
        Ok(v)
    }

    fn remove(&self, id: BlobId) -> Result<()> {
        lock(&self.cache).remove(&id);
        for dir in 0..self.dirs.len() {
            for compressed in [true, false] {
                match std::fs::remove_file(self.path_in(dir, id, compressed)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn scrub(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<ScrubReport> {
        let ids = self.list()?;
        let total = ids.len() as u64;
        let mut r = ScrubReport::default();
        for (n, (id, _)) in ids.into_iter().enumerate() {
            r.blobs += 1;
            let home: Vec<usize> = self.placement(id).into_iter().take(self.replicas).collect();
            let mut good: Option<Vec<u8>> = None;
            let mut bad = Vec::new();
            for dir in 0..self.dirs.len() {
                match self.read_copy(dir, id)? {
                    Copy::Good(b) => {
                        r.copies_checked += 1;
                        r.bytes_checked += b.len() as u64;
                        good.get_or_insert(b);
                    }
                    Copy::Corrupt => {
                        r.copies_checked += 1;
                        r.corrupt_copies += 1;
                        self.corrupt_found.fetch_add(1, Ordering::Relaxed);
                        bad.push(dir);
                    }
                    Copy::Missing if home.contains(&dir) => bad.push(dir),
                    Copy::Missing => {}
                }
            }
            match good {
                Some(bytes) => {
                    for dir in bad {
                        self.write_copy(dir, id, &bytes)?;
                        r.repaired_copies += 1;
                        self.repaired.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    lock(&self.cache).remove(&id);
                    r.lost.push(id);
                }
            }
            progress(n as u64 + 1, total);
        }
        Ok(r)
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for e in entries {
        out.push(e?.path());
    }
    out.sort();
    Ok(out)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn blocking_err(e: tokio::task::JoinError) -> BlobError {
    BlobError::Io(std::io::Error::other(e))
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, bytes: Vec<u8>) -> Result<BlobId> {
        let me = self.0.clone();
        tokio::task::spawn_blocking(move || me.put_sync(&bytes))
            .await
            .map_err(blocking_err)?
    }

    async fn get(&self, id: BlobId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_shared(id)
            .await?
            .map(|b| Arc::try_unwrap(b).unwrap_or_else(|shared| (*shared).clone())))
    }
}

/// A new, uniquely named file in `dir` (created exclusively, so concurrent puts never share).
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}.part", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store(dirs: &[&Path], replicas: usize, zstd_level: i32) -> LocalBlobStore {
        LocalBlobStore::open(BlobConfig {
            dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            replicas,
            zstd_level,
            cache_bytes: 1 << 20,
        })
        .unwrap()
    }

    /// The directories holding a copy of `id`, by their index.
    fn holders(s: &LocalBlobStore, id: BlobId) -> Vec<usize> {
        (0..s.0.dirs.len())
            .filter(|&d| s.path_in(d, id, true).exists() || s.path_in(d, id, false).exists())
            .collect()
    }

    fn copy_path(s: &LocalBlobStore, dir: usize, id: BlobId) -> PathBuf {
        [true, false]
            .into_iter()
            .map(|c| s.path_in(dir, id, c))
            .find(|p| p.exists())
            .unwrap()
    }

    #[tokio::test]
    async fn round_trip_dedup_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(BlobConfig::single(dir.path())).unwrap();
        let id = store.put(b"hello blobs".to_vec()).await.unwrap();
        assert_eq!(id, BlobId::of(b"hello blobs"));
        assert_eq!(
            store.put(b"hello blobs".to_vec()).await.unwrap(),
            id,
            "same bytes, same id"
        );
        assert_eq!(store.get(id).await.unwrap().unwrap(), b"hello blobs");
        assert!(store.get(BlobId::of(b"other")).await.unwrap().is_none());
        std::fs::write(store.path_in(0, id, false), b"hellO blobs").unwrap();
        assert!(matches!(store.get(id).await, Err(BlobError::Corrupt(_))));
        assert_eq!(id.to_string().parse::<BlobId>().unwrap(), id);
        assert!("xyz".parse::<BlobId>().is_err());
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none(),
            "no temp files left"
        );
    }

    #[tokio::test]
    async fn compressible_blobs_are_stored_smaller_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&[dir.path()], 1, 3);
        let text = "the same line again and again\n"
            .repeat(10_000)
            .into_bytes();
        let id = s.put(text.clone()).await.unwrap();
        let on_disk = std::fs::metadata(s.path_in(0, id, true)).unwrap().len();
        assert!(on_disk < text.len() as u64 / 10, "{on_disk}");
        // Random bytes do not compress: kept as they are.
        let noise: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let nid = s.put(noise.clone()).await.unwrap();
        assert!(s.path_in(0, nid, false).exists() || s.path_in(0, nid, true).exists());
        let fresh = store(&[dir.path()], 1, 0);
        assert_eq!(fresh.get(id).await.unwrap().unwrap(), text);
        assert_eq!(fresh.get(nid).await.unwrap().unwrap(), noise);
    }

    #[tokio::test]
    async fn replicas_land_on_distinct_disks_and_a_bad_copy_is_served_from_the_other_then_repaired()
    {
        let d: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let paths: Vec<&Path> = d.iter().map(|t| t.path()).collect();
        let s = store(&paths, 2, 0);
        let mut ids = Vec::new();
        for i in 0..20u32 {
            let id = s.put(format!("chunk {i}").into_bytes()).await.unwrap();
            assert_eq!(holders(&s, id).len(), 2, "two copies on two disks");
            ids.push(id);
        }
        // Spread over all three disks.
        let mut used = [0; 3];
        for id in &ids {
            for h in holders(&s, *id) {
                used[h] += 1;
            }
        }
        assert!(used.iter().all(|&n| n > 0), "{used:?}");

        // Corrupt the copy a read tries first: the read is served from the other.
        let id = ids[0];
        let order = s.0.placement(id);
        let (a, b) = (order[0], order[1]);
        assert_eq!(holders(&s, id), {
            let mut h = vec![a, b];
            h.sort();
            h
        });
        std::fs::write(copy_path(&s, a, id), b"garbage").unwrap();
        let fresh = store(&paths, 2, 0); // no cache
        assert_eq!(fresh.get(id).await.unwrap().unwrap(), b"chunk 0");
        assert_eq!(fresh.stats().corrupt_copies_found, 1);
        assert_eq!(fresh.stats().copies_repaired, 1);
        assert_eq!(
            std::fs::read(copy_path(&fresh, a, id)).unwrap(),
            b"chunk 0",
            "repaired"
        );
        // Both copies gone bad: a clear error, not wrong bytes.
        std::fs::write(copy_path(&s, a, id), b"garbage").unwrap();
        std::fs::write(copy_path(&s, b, id), b"garbage").unwrap();
        let fresh = store(&paths, 2, 0);
        assert!(matches!(fresh.get(id).await, Err(BlobError::Corrupt(_))));
    }

    #[tokio::test]
    async fn scrub_finds_every_bad_or_missing_copy_and_repairs_what_it_can() {
        let d: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let paths: Vec<&Path> = d.iter().map(|t| t.path()).collect();
        let s = store(&paths, 2, 3);
        let ids: Vec<BlobId> = futures_join(&s, 10).await;
        std::fs::write(copy_path(&s, 0, ids[1]), b"bitrot").unwrap();
        std::fs::remove_file(copy_path(&s, 1, ids[2])).unwrap();
        std::fs::write(copy_path(&s, 0, ids[3]), b"x").unwrap();
        std::fs::write(copy_path(&s, 1, ids[3]), b"y").unwrap();
        let mut calls = 0;
        let r = s
            .scrub(&mut |done, total| {
                calls += 1;
                assert!(done <= total);
            })
            .unwrap();
        assert_eq!(calls, 10);
        assert_eq!(r.blobs, 10);
        assert_eq!(r.corrupt_copies, 3);
        assert_eq!(r.repaired_copies, 2, "one corrupt, one missing");
        assert_eq!(r.lost, vec![ids[3]]);
        let again = s.scrub(&mut |_, _| {}).unwrap();
        assert_eq!(
            (again.corrupt_copies, again.repaired_copies),
            (2, 0),
            "only the lost blob stays bad"
        );
        // Garbage collection's primitives.
        assert_eq!(s.list().unwrap().len(), 10);
        s.remove(ids[0]).unwrap();
        assert!(holders(&s, ids[0]).is_empty());
        assert!(s.get(ids[0]).await.unwrap().is_none());
    }

    async fn futures_join(s: &LocalBlobStore, n: u32) -> Vec<BlobId> {
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(
                s.put(format!("blob number {i} ").repeat(100).into_bytes())
                    .await
                    .unwrap(),
            );
        }
        ids
    }

    #[test]
    fn replicas_beyond_the_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BlobConfig {
            replicas: 2,
            ..BlobConfig::single(dir.path())
        };
        assert!(matches!(
            LocalBlobStore::open(cfg),
            Err(BlobError::Config(_))
        ));
    }

    #[test]
    fn the_cache_keeps_the_recently_used_within_its_size() {
        let mut c = Cache {
            cap: 1000,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
        };
        let ids: Vec<BlobId> = (0..10u8).map(|i| BlobId::of(&[i])).collect();
        for id in &ids[..4] {
            c.put(*id, Arc::new(vec![0; 200]));
        }
        assert!(c.get(&ids[0]).is_some());
        c.put(ids[4], Arc::new(vec![0; 200]));
        c.put(ids[5], Arc::new(vec![0; 200]));
        assert!(c.used <= 1000);
        assert!(c.get(&ids[0]).is_some(), "recently used stays");
        assert!(c.get(&ids[1]).is_none(), "least recently used went");
        c.put(ids[6], Arc::new(vec![0; 600]));
        assert!(
            c.get(&ids[6]).is_none(),
            "over a quarter of the cache: not cached"
        );
    }
}
