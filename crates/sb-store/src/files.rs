//! Files storage: spaces, files by path, their versions (each a list of content chunks kept
//! in the blob store), uploads in progress, and a change feed per space.
//!
//! A file's content is a list of chunks (BLAKE3 id and length). A commit turns an upload into
//! the file's next version in one transaction, optionally only if the file is still at the
//! version the client started from (compare-and-set), and appends a change with the next
//! sequence number of the space, so a client that remembers a sequence number can ask for
//! everything after it.

use crate::Result;
use async_trait::async_trait;
use sb_core::{FileId, SpaceId, UnixMillis, UploadId, UserId};

/// A chunk of a file's content: its BLAKE3 hash and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub id: [u8; 32],
    pub len: u32,
}

/// Chunk lists are stored as `n × (32-byte id, u32 length LE)`.
pub fn encode_chunks(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * 36);
    for c in chunks {
        out.extend_from_slice(&c.id);
        out.extend_from_slice(&c.len.to_le_bytes());
    }
    out
}

pub fn decode_chunks(bytes: &[u8]) -> Option<Vec<ChunkRef>> {
    if !bytes.len().is_multiple_of(36) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(36)
            .map(|b| {
                let mut id = [0u8; 32];
                id.copy_from_slice(&b[..32]);
                ChunkRef {
                    id,
                    len: u32::from_le_bytes([b[32], b[33], b[34], b[35]]),
                }
            })
            .collect(),
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceRecord {
    pub id: SpaceId,
    pub name: String,
    pub owner: UserId,
    /// The owner's own space (one per user), as opposed to one made to share.
    pub personal: bool,
    pub created_at: UnixMillis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub id: FileId,
    pub space_id: SpaceId,
    /// Normalised: starts with `/`, no empty, `.` or `..` segments, no trailing `/`.
    pub path: String,
    /// The current version (1, 2, …).
    pub head: i64,
    pub size: u64,
    /// BLAKE3 of the whole content, hex.
    pub blake3: String,
    pub modified_at: UnixMillis,
    /// In the trash since then.
    pub deleted_at: Option<UnixMillis>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    pub file_id: FileId,
    pub version: i64,
    pub size: u64,
    pub blake3: String,
    pub chunks: Vec<ChunkRef>,
    pub created_at: UnixMillis,
    pub created_by: UserId,
    /// The client device that wrote it (for conflict file names), may be empty.
    pub device: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: UploadId,
    pub space_id: SpaceId,
    pub path: String,
    /// Commit only if the file is still at this version (0: only if it does not exist);
    /// `None`: whatever it is at.
    pub base_version: Option<i64>,
    pub size: u64,
    pub blake3: String,
    pub chunks: Vec<ChunkRef>,
    pub created_by: UserId,
    pub device: String,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// An expiring download link, found by the SHA-256 of its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRecord {
    pub token_hash: [u8; 32],
    pub space_id: SpaceId,
    pub path: String,
    /// A fixed version, or `None` for whatever is newest when it is used.
    pub version: Option<i64>,
    pub created_by: UserId,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// One entry of a space's change feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRecord {
    pub seq: i64,
    pub space_id: SpaceId,
    pub path: String,
    pub file_id: FileId,
    /// The version written, or the one deleted.
    pub version: i64,
    pub deleted: bool,
    pub at: UnixMillis,
    /// That version's size and content hash (0 and empty once the version is gone).
    pub size: u64,
    pub blake3: String,
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("no such upload (finished, expired or never started)")]
    NoUpload,
    #[error("the file changed: it is at version {current}, the upload was based on {base}")]
    Conflict { base: i64, current: i64 },
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

#[async_trait]
pub trait FilesStore: Send + Sync + 'static {
    /// The user's own space, created (with `new_id`) the first time.
    async fn personal_space(
        &self,
        owner: UserId,
        new_id: SpaceId,
        at: UnixMillis,
    ) -> Result<SpaceRecord>;
    async fn space(&self, id: SpaceId) -> Result<Option<SpaceRecord>>;
    /// A space made to share (not personal).
    async fn create_space(&self, space: SpaceRecord) -> Result<()>;
    /// Shares a space with a user, read-only or read-write (replacing an earlier share);
    /// `writable: None` unshares.
    async fn set_space_member(
        &self,
        space: SpaceId,
        user: UserId,
        writable: Option<bool>,
    ) -> Result<()>;
    /// The user's share of a space: `Some(writable)`, or `None` if not shared with them.
    async fn space_member(&self, space: SpaceId, user: UserId) -> Result<Option<bool>>;
    /// Spaces the user owns or has a share of, with the share (`None` for their own).
    async fn spaces_for(&self, user: UserId) -> Result<Vec<(SpaceRecord, Option<bool>)>>;

    async fn create_upload(&self, upload: UploadRecord) -> Result<()>;
    async fn upload(&self, id: UploadId) -> Result<Option<UploadRecord>>;
    /// Removes uploads that expired before `now`; returns how many.
    async fn prune_uploads(&self, now: UnixMillis) -> Result<u64>;
    /// Makes the upload the file's next version (creating the file, or bringing it back from
    /// the trash) and records the change, in one transaction; the upload is consumed.
    async fn commit_upload(
        &self,
        id: UploadId,
        new_file: FileId,
        at: UnixMillis,
    ) -> std::result::Result<(FileRecord, VersionRecord), CommitError>;

    async fn file_by_path(&self, space: SpaceId, path: &str) -> Result<Option<FileRecord>>;
    /// Files whose path starts with `prefix` (a folder: `/docs/`), by path; trashed ones only
    /// when asked.
    async fn list_files(
        &self,
        space: SpaceId,
        prefix: &str,
        include_deleted: bool,
        limit: usize,
    ) -> Result<Vec<FileRecord>>;
    /// A file's versions, newest first.
    async fn versions(&self, file: FileId) -> Result<Vec<VersionRecord>>;
    async fn version(&self, file: FileId, version: i64) -> Result<Option<VersionRecord>>;
    /// Moves a file to the trash (its versions are kept); `None` if there is no live file.
    /// With `expect_head`, only if the file is still at that version (`Conflict` otherwise).
    async fn trash_file(
        &self,
        space: SpaceId,
        path: &str,
        at: UnixMillis,
        expect_head: Option<i64>,
    ) -> Result<Option<FileRecord>>;
    /// Brings a file back from the trash; `None` if none is trashed there.
    async fn untrash_file(
        &self,
        space: SpaceId,
        path: &str,
        at: UnixMillis,
    ) -> Result<Option<FileRecord>>;
    /// Renames a live file, or every live file under a folder (`from` and `to` without a
    /// trailing `/`). Refused with `Conflict` if anything (live or trashed) is at a target
    /// path; returns the moved files (empty: nothing was at `from`).
    async fn move_files(
        &self,
        space: SpaceId,
        from: &str,
        to: &str,
        at: UnixMillis,
    ) -> Result<Vec<FileRecord>>;
    /// Deletes old versions: a version goes once it is more than `keep_last` behind its file's
    /// newest and older than `older_than` (the newest is always kept); returns how many.
    async fn prune_versions(&self, keep_last: i64, older_than: UnixMillis) -> Result<u64>;
    /// Deletes files trashed before `before`, with their versions; returns how many.
    async fn purge_trash(&self, before: UnixMillis) -> Result<u64>;
    /// Every chunk a version or an upload in progress refers to.
    async fn referenced_chunks(&self) -> Result<Vec<[u8; 32]>>;
    async fn create_link(&self, link: LinkRecord) -> Result<()>;
    async fn link(&self, token_hash: [u8; 32]) -> Result<Option<LinkRecord>>;
    /// Changes of a space after sequence number `after`, oldest first.
    async fn changes(&self, space: SpaceId, after: i64, limit: usize) -> Result<Vec<ChangeRecord>>;
}
