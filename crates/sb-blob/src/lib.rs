//! Content-addressed blob storage: a blob's id is the BLAKE3 hash of its bytes.
//!
//! [`LocalBlobStore`] keeps each blob in a file under `root/ab/cd/<hash>`, written to a temp
//! file, fsynced and renamed into place, so a blob is either complete or absent. Every read
//! re-hashes the bytes and refuses a blob whose content no longer matches its id.
//!
//! Chat attachments use it today. The Files application will put content-defined chunks here
//! (the same ids, the same store), and replicas, garbage collection and an S3 backend come with
//! it; this crate deliberately does only the storage and the integrity check.

use async_trait::async_trait;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

impl BlobId {
    pub fn of(bytes: &[u8]) -> BlobId {
        BlobId(*blake3::hash(bytes).as_bytes())
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
    #[error("blob {0} is corrupt: its content no longer matches its hash")]
    Corrupt(BlobId),
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

pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Where a blob lives: two levels of fan-out keep directories small.
    pub fn path_of(&self, id: BlobId) -> PathBuf {
        let hex = id.to_string();
        self.root.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, bytes: Vec<u8>) -> Result<BlobId> {
        let id = BlobId::of(&bytes);
        let path = self.path_of(id);
        let tmp_dir = self.root.join("tmp");
        tokio::task::spawn_blocking(move || -> Result<BlobId> {
            if path.exists() {
                return Ok(id);
            }
            use std::io::Write;
            let dir = path.parent().ok_or(BlobError::BadId)?;
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile_in(&tmp_dir)?;
            tmp.1.write_all(&bytes)?;
            tmp.1.sync_all()?;
            std::fs::rename(&tmp.0, &path)?;
            fsync_dir(dir)?;
            Ok(id)
        })
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
    }

    async fn get(&self, id: BlobId) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(id);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let check = bytes.clone();
        let ok = tokio::task::spawn_blocking(move || BlobId::of(&check) == id)
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))?;
        if ok {
            Ok(Some(bytes))
        } else {
            Err(BlobError::Corrupt(id))
        }
    }
}

/// A new, uniquely named file in `dir` (created exclusively, so concurrent puts never share).
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
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
    use super::*;

    #[tokio::test]
    async fn round_trip_dedup_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        let id = store.put(b"hello blobs".to_vec()).await.unwrap();
        assert_eq!(id, BlobId::of(b"hello blobs"));
        assert_eq!(
            store.put(b"hello blobs".to_vec()).await.unwrap(),
            id,
            "same bytes, same id"
        );
        assert_eq!(store.get(id).await.unwrap().unwrap(), b"hello blobs");
        assert!(store.get(BlobId::of(b"other")).await.unwrap().is_none());
        std::fs::write(store.path_of(id), b"hellO blobs").unwrap();
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
}
