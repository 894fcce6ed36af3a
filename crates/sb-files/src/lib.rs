//! The files service: spaces of versioned files whose content is content-defined chunks in
//! the blob store. Transport-free: `sb-server` maps HTTP onto these calls.
//!
//! An upload is three steps. The client sends the file's chunk list (ids and lengths); the
//! service answers with the chunks the blob store lacks. The client sends those (each checked
//! against its id). The commit checks that every chunk is there and that they hash, in order,
//! to the file's BLAKE3, then makes the file's next version in one transaction. An interrupted
//! upload is resumed by asking again: chunks already sent are no longer missing.

use sb_auth::{Action, Auth, AuthError, Ctx, Resource};
use sb_blob::{BlobId, BlobStore, LocalBlobStore};
use sb_bus::{Bus, Subscription};
use sb_core::config::FilesConfig;
use sb_core::{ErrorCode, FileId, SpaceId, UnixMillis, UploadId};
use sb_proto::{
    ChunkInfo, FileChange, FileInfo, FileVersionInfo, LinkCreate, LinkCreated, SpaceInfo,
    UploadStart, UploadStarted,
};
use sb_store::StoreError;
use sb_store::files::{
    ChunkRef, CommitError, FileRecord, FilesStore, LinkRecord, SpaceRecord, UploadRecord,
    VersionRecord,
};
use std::sync::Arc;

/// Announced on the files bus under [`space_topic`] after every change to a space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceChanged {
    pub space: SpaceId,
}

/// The bus topic of one space's change announcements.
pub fn space_topic(space: SpaceId) -> String {
    format!("files/space/{space}")
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("storage: {0}")]
    Internal(String),
}

impl FilesError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FilesError::Auth(a) => a.code(),
            FilesError::Invalid(_) => ErrorCode::InvalidArgument,
            FilesError::NotFound(_) => ErrorCode::NotFound,
            FilesError::Conflict(_) => ErrorCode::Conflict,
            FilesError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            FilesError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<sb_store::StoreError> for FilesError {
    fn from(e: sb_store::StoreError) -> Self {
        FilesError::Internal(e.to_string())
    }
}

impl From<sb_blob::BlobError> for FilesError {
    fn from(e: sb_blob::BlobError) -> Self {
        FilesError::Internal(e.to_string())
    }
}

pub type Result<T, E = FilesError> = std::result::Result<T, E>;

/// Checks and normalises a path: `/`-separated, absolute, no empty, `.` or `..` segments, no
/// control characters, at most `max` bytes. A trailing `/` is dropped.
pub fn normalize_path(path: &str, max: usize) -> Result<String> {
    let invalid = |why: &str| FilesError::Invalid(format!("path {path:?}: {why}"));
    if path.len() > max {
        return Err(invalid(&format!(
            "longer than {max} bytes (files.path_length_max)"
        )));
    }
    if !path.starts_with('/') {
        return Err(invalid("must start with /"));
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').skip(1) {
        if seg.is_empty() {
            continue;
        }
        if seg == "." || seg == ".." {
            return Err(invalid("no . or .. segments"));
        }
        if seg.chars().any(char::is_control) {
            return Err(invalid("no control characters"));
        }
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        return Err(invalid("names no file"));
    }
    Ok(out)
}

/// Checks an upload's chunk list against the limits: its normalised path and chunks.
pub fn check_manifest(req: &UploadStart, cfg: &FilesConfig) -> Result<(String, Vec<ChunkRef>)> {
    let path = normalize_path(&req.path, cfg.path_length_max)?;
    if req.size > cfg.file_size_bytes_max {
        return Err(FilesError::TooLarge(format!(
            "{} bytes is over files.file_size_bytes_max ({})",
            req.size, cfg.file_size_bytes_max
        )));
    }
    let mut chunks = Vec::with_capacity(req.chunks.len());
    let mut total = 0u64;
    for c in &req.chunks {
        if c.len == 0 || c.len as usize > cfg.chunk_size_bytes_max {
            return Err(FilesError::Invalid(format!(
                "chunk {} has length {}; chunks are 1 to {} bytes (files.chunk_size_bytes_max)",
                c.id, c.len, cfg.chunk_size_bytes_max
            )));
        }
        total = total.saturating_add(u64::from(c.len));
        chunks.push(ChunkRef {
            id: *parse_chunk_id(&c.id)?.as_bytes(),
            len: c.len,
        });
    }
    if total != req.size {
        return Err(FilesError::Invalid(format!(
            "the chunks add up to {total} bytes, not the size {}",
            req.size
        )));
    }
    let mut blake3 = [0u8; 32];
    hex::decode_to_slice(&req.blake3, &mut blake3)
        .map_err(|_| FilesError::Invalid("blake3 is not 64 hex digits".into()))?;
    Ok((path, chunks))
}

pub struct Files {
    store: Arc<dyn FilesStore>,
    blobs: LocalBlobStore,
    auth: Arc<Auth>,
    bus: Bus<SpaceChanged>,
    cfg: FilesConfig,
}

fn file_info(f: &FileRecord) -> FileInfo {
    FileInfo {
        path: f.path.clone(),
        version: f.head,
        size: f.size,
        blake3: f.blake3.clone(),
        modified_at_ms: f.modified_at.0,
        deleted: f.deleted_at.is_some(),
    }
}

fn parse_chunk_id(s: &str) -> Result<BlobId> {
    s.parse::<BlobId>()
        .map_err(|_| FilesError::Invalid(format!("chunk id {s:?} is not 64 hex digits")))
}

impl Files {
    pub fn new(
        store: Arc<dyn FilesStore>,
        blobs: LocalBlobStore,
        auth: Arc<Auth>,
        bus: Bus<SpaceChanged>,
        cfg: FilesConfig,
    ) -> Self {
        Self {
            store,
            blobs,
            auth,
            bus,
            cfg,
        }
    }

    fn changed(&self, space: SpaceId) {
        self.bus
            .publish(&space_topic(space), SpaceChanged { space });
    }

    /// Subscribes to a space's change announcements, after checking the caller may read it.
    pub async fn watch(
        &self,
        cx: Ctx<'_>,
        space: Option<&str>,
    ) -> Result<(SpaceId, Subscription<SpaceChanged>)> {
        let space = self.space(cx, space, Action::Read).await?;
        let sub = self
            .bus
            .subscribe(&space_topic(space))
            .map_err(|e| FilesError::Internal(e.to_string()))?;
        Ok((space, sub))
    }

    pub fn config(&self) -> &FilesConfig {
        &self.cfg
    }

    /// The space a request names (its id; `None`: the caller's own), after checking what the
    /// caller may do in it. A space the caller has no share of is refused like one that does
    /// not exist, so ids cannot be probed.
    async fn space(&self, cx: Ctx<'_>, space: Option<&str>, action: Action) -> Result<SpaceId> {
        let record = match space.filter(|s| !s.is_empty()) {
            None => {
                self.store
                    .personal_space(cx.subject.user_id, SpaceId::new_at(cx.now), cx.now)
                    .await?
            }
            Some(s) => {
                let not_found = || FilesError::NotFound(format!("no space {s} shared with you"));
                let id: SpaceId = s.parse().map_err(|_| not_found())?;
                self.store.space(id).await?.ok_or_else(not_found)?
            }
        };
        let owner = record.owner == cx.subject.user_id;
        let writable_share = if owner {
            None
        } else {
            self.store
                .space_member(record.id, cx.subject.user_id)
                .await?
        };
        if !owner && writable_share.is_none() {
            return Err(FilesError::NotFound(format!(
                "no space {} shared with you",
                record.id
            )));
        }
        self.auth
            .authorize(
                cx,
                action,
                &Resource::FileSpace {
                    id: record.id,
                    owner,
                    writable_share,
                },
            )
            .await?;
        Ok(record.id)
    }

    /// A new space to share, owned by the caller.
    pub async fn create_space(&self, cx: Ctx<'_>, name: &str) -> Result<SpaceInfo> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(FilesError::Invalid(
                "a space name is 1 to 64 printable characters".into(),
            ));
        }
        let space = SpaceRecord {
            id: SpaceId::new_at(cx.now),
            name: name.to_string(),
            owner: cx.subject.user_id,
            personal: false,
            created_at: cx.now,
        };
        self.store.create_space(space.clone()).await?;
        Ok(SpaceInfo {
            id: space.id.to_string(),
            name: space.name,
            owner: cx.subject.username.clone(),
            personal: false,
            access: "owner".into(),
        })
    }

    /// Shares a space the caller owns with a user: `read`, `write`, or `none` to stop.
    pub async fn share(
        &self,
        cx: Ctx<'_>,
        space: &str,
        username: &str,
        access: &str,
    ) -> Result<()> {
        let id = self.space(cx, Some(space), Action::Update).await?;
        let record = self
            .store
            .space(id)
            .await?
            .ok_or_else(|| FilesError::NotFound(format!("no space {space}")))?;
        if record.owner != cx.subject.user_id {
            return Err(FilesError::Auth(AuthError::Forbidden));
        }
        if record.personal {
            return Err(FilesError::Invalid(
                "your own space is not shared; create one to share with `sb files space-create NAME`"
                    .into(),
            ));
        }
        let writable = match access {
            "read" => Some(false),
            "write" => Some(true),
            "none" => None,
            other => {
                return Err(FilesError::Invalid(format!(
                    "access {other:?}: use read, write or none"
                )));
            }
        };
        let user = self
            .auth
            .store()
            .user_by_username(username)
            .await?
            .ok_or_else(|| FilesError::NotFound(format!("no user {username}")))?;
        if user.id == record.owner {
            return Err(FilesError::Invalid(
                "the owner already has every access".into(),
            ));
        }
        self.store.set_space_member(id, user.id, writable).await?;
        Ok(())
    }

    /// The spaces the caller owns or has a share of.
    pub async fn spaces(&self, cx: Ctx<'_>) -> Result<Vec<SpaceInfo>> {
        self.store
            .personal_space(cx.subject.user_id, SpaceId::new_at(cx.now), cx.now)
            .await?;
        let mut out = Vec::new();
        for (s, share) in self.store.spaces_for(cx.subject.user_id).await? {
            let owner = self
                .auth
                .store()
                .user_by_id(s.owner)
                .await?
                .map(|u| u.username)
                .unwrap_or_default();
            out.push(SpaceInfo {
                id: s.id.to_string(),
                name: s.name,
                owner,
                personal: s.personal,
                access: match share {
                    None => "owner",
                    Some(true) => "write",
                    Some(false) => "read",
                }
                .into(),
            });
        }
        Ok(out)
    }

    /// Step one of an upload: records the chunk list and answers which chunks to send.
    pub async fn start_upload(&self, cx: Ctx<'_>, req: UploadStart) -> Result<UploadStarted> {
        let space = self.space(cx, req.space.as_deref(), Action::Create).await?;
        let (path, chunks) = check_manifest(&req, &self.cfg)?;
        let id = UploadId::new_at(cx.now);
        let mut missing: Vec<String> = Vec::new();
        for c in &chunks {
            let bid = BlobId::from_bytes(c.id);
            let s = bid.to_string();
            if !self.blobs.contains(bid) {
                if !missing.contains(&s) {
                    missing.push(s);
                }
            } else {
                // About to be referenced: keep garbage collection off it.
                self.blobs.touch(bid);
            }
        }
        self.store
            .create_upload(UploadRecord {
                id,
                space_id: space,
                path,
                base_version: req.base_version,
                size: req.size,
                blake3: req.blake3.to_ascii_lowercase(),
                chunks,
                created_by: cx.subject.user_id,
                device: req.device.chars().take(64).collect(),
                created_at: cx.now,
                expires_at: UnixMillis(cx.now.0 + self.cfg.upload_ttl_secs as i64 * 1000),
            })
            .await?;
        Ok(UploadStarted {
            upload_id: id.to_string(),
            missing,
        })
    }

    async fn own_upload(&self, cx: Ctx<'_>, upload: &str) -> Result<UploadRecord> {
        let id: UploadId = upload
            .parse()
            .map_err(|_| FilesError::NotFound(format!("no upload {upload}")))?;
        let u = self
            .store
            .upload(id)
            .await?
            .filter(|u| u.created_by == cx.subject.user_id && u.expires_at.0 >= cx.now.0)
            .ok_or_else(|| {
                FilesError::NotFound(format!(
                    "no upload {upload} (committed, expired or never started); start again"
                ))
            })?;
        // Still allowed to write there (a share may have been withdrawn meanwhile).
        self.space(cx, Some(&u.space_id.to_string()), Action::Create)
            .await?;
        Ok(u)
    }

    /// Step two: one chunk's bytes, checked against its id and length.
    pub async fn put_chunk(
        &self,
        cx: Ctx<'_>,
        upload: &str,
        chunk: &str,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let u = self.own_upload(cx, upload).await?;
        let id = parse_chunk_id(chunk)?;
        let Some(expected) = u.chunks.iter().find(|c| c.id == *id.as_bytes()) else {
            return Err(FilesError::Invalid(format!(
                "chunk {chunk} is not in this upload's chunk list"
            )));
        };
        if bytes.len() != expected.len as usize {
            return Err(FilesError::Invalid(format!(
                "chunk {chunk} is {} bytes; the chunk list says {}",
                bytes.len(),
                expected.len
            )));
        }
        if BlobId::of(&bytes) != id {
            return Err(FilesError::Invalid(format!(
                "the bytes sent do not hash to {chunk}; nothing was stored"
            )));
        }
        self.blobs.put(bytes).await?;
        Ok(())
    }

    /// Step three: every chunk present and the content's hash right, the file's next version.
    pub async fn commit(&self, cx: Ctx<'_>, upload: &str) -> Result<FileInfo> {
        let u = self.own_upload(cx, upload).await?;
        let missing: Vec<String> = u
            .chunks
            .iter()
            .map(|c| BlobId::from_bytes(c.id))
            .filter(|id| !self.blobs.contains(*id))
            .map(|id| id.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(FilesError::Conflict(format!(
                "{} chunk(s) not sent yet, first {}; send them, then commit",
                missing.len(),
                missing[0]
            )));
        }
        let mut hasher = blake3::Hasher::new();
        for c in &u.chunks {
            let bytes = self
                .blobs
                .get_shared(BlobId::from_bytes(c.id))
                .await?
                .ok_or_else(|| FilesError::Internal("a chunk vanished during commit".into()))?;
            hasher.update(&bytes);
        }
        if hasher.finalize().to_hex().as_str() != u.blake3 {
            return Err(FilesError::Invalid(
                "the chunks do not hash to the file's blake3; nothing was committed".into(),
            ));
        }
        match self
            .store
            .commit_upload(u.id, FileId::new_at(cx.now), cx.now)
            .await
        {
            Ok((file, _)) => {
                self.changed(u.space_id);
                Ok(file_info(&file))
            }
            Err(CommitError::NoUpload) => Err(FilesError::NotFound(format!(
                "no upload {upload} (already committed?)"
            ))),
            Err(CommitError::Conflict { base, current }) => Err(FilesError::Conflict(format!(
                "{} changed: it is at version {current}, this upload was based on {base}",
                u.path
            ))),
            Err(CommitError::Store(e)) => Err(e.into()),
        }
    }

    /// A whole file at once, for clients that cannot chunk and hash (a browser): `content` is
    /// already on local disk (spooled by the caller); it is cut and hashed here exactly as a
    /// client would, then goes through the same three steps, so dedup, limits and the
    /// compare-and-set on `base_version` hold alike.
    pub async fn put_file(
        &self,
        cx: Ctx<'_>,
        space: Option<&str>,
        path: &str,
        base_version: Option<i64>,
        content: std::fs::File,
    ) -> Result<FileInfo> {
        let content = Arc::new(content);
        let reader = content.clone();
        let (size, blake3, chunks) = tokio::task::spawn_blocking(move || {
            use std::io::Seek;
            (&*reader).seek(std::io::SeekFrom::Start(0))?;
            let mut whole = blake3::Hasher::new();
            let mut chunks = Vec::new();
            let mut size = 0u64;
            for piece in sb_blob::chunker::chunks(&*reader) {
                let piece = piece?;
                whole.update(&piece.data);
                size += piece.data.len() as u64;
                chunks.push((piece.offset, piece.id, piece.data.len() as u32));
            }
            Ok::<_, std::io::Error>((size, whole.finalize().to_hex().to_string(), chunks))
        })
        .await
        .map_err(|e| FilesError::Internal(e.to_string()))?
        .map_err(|e| FilesError::Internal(format!("reading the upload: {e}")))?;
        let started = self
            .start_upload(
                cx,
                UploadStart {
                    space: space.map(String::from),
                    path: path.to_string(),
                    size,
                    blake3,
                    chunks: chunks
                        .iter()
                        .map(|(_, id, len)| ChunkInfo {
                            id: id.to_string(),
                            len: *len,
                        })
                        .collect(),
                    base_version,
                    device: "web".into(),
                },
            )
            .await?;
        for (offset, id, len) in chunks {
            let name = id.to_string();
            if !started.missing.contains(&name) {
                continue;
            }
            let file = content.clone();
            let bytes = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; len as usize];
                file.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .await
            .map_err(|e| FilesError::Internal(e.to_string()))?
            .map_err(|e| FilesError::Internal(format!("reading the upload: {e}")))?;
            self.put_chunk(cx, &started.upload_id, &name, bytes).await?;
        }
        self.commit(cx, &started.upload_id).await
    }

    /// The file at `path` and one of its versions (the newest when `version` is `None`).
    pub async fn open(
        &self,
        cx: Ctx<'_>,
        space: Option<&str>,
        path: &str,
        version: Option<i64>,
    ) -> Result<(FileInfo, VersionRecord)> {
        let space = self.space(cx, space, Action::Read).await?;
        let path = normalize_path(path, self.cfg.path_length_max)?;
        let file = self
            .store
            .file_by_path(space, &path)
            .await?
            .filter(|f| f.deleted_at.is_none() || version.is_some())
            .ok_or_else(|| FilesError::NotFound(format!("no file {path}")))?;
        let v = self
            .store
            .version(file.id, version.unwrap_or(file.head))
            .await?
            .ok_or_else(|| {
                FilesError::NotFound(format!("{path} has no version {}", version.unwrap_or(0)))
            })?;
        Ok((file_info(&file), v))
    }

    /// Moves a file to the trash (restorable with [`Files::restore`]); with `version`, only
    /// if the file is still at that version (a sync client deleting what it last saw must not
    /// delete an edit it has not seen).
    pub async fn remove(
        &self,
        cx: Ctx<'_>,
        space: Option<&str>,
        path: &str,
        version: Option<i64>,
    ) -> Result<FileInfo> {
        let space = self.space(cx, space, Action::Delete).await?;
        let path = normalize_path(path, self.cfg.path_length_max)?;
        let f = match self.store.trash_file(space, &path, cx.now, version).await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(FilesError::NotFound(format!("no file {path}"))),
            Err(StoreError::Conflict(_)) => {
                return Err(FilesError::Conflict(format!(
                    "{path} changed after version {}; nothing was deleted",
                    version.unwrap_or(0)
                )));
            }
            Err(e) => return Err(e.into()),
        };
        self.changed(space);
        Ok(file_info(&f))
    }

    /// Brings a trashed file back, or with `version` makes that old version the newest (a new
    /// version with its content: history is never rewritten).
    pub async fn restore(
        &self,
        cx: Ctx<'_>,
        space: Option<&str>,
        path: &str,
        version: Option<i64>,
    ) -> Result<FileInfo> {
        let space = self.space(cx, space, Action::Update).await?;
        let path = normalize_path(path, self.cfg.path_length_max)?;
        let Some(version) = version else {
            let f = self
                .store
                .untrash_file(space, &path, cx.now)
                .await?
                .ok_or_else(|| FilesError::NotFound(format!("no file {path} in the trash")))?;
            self.changed(space);
            return Ok(file_info(&f));
        };
        let file = self
            .store
            .file_by_path(space, &path)
            .await?
            .ok_or_else(|| FilesError::NotFound(format!("no file {path}")))?;
        let old = self
            .store
            .version(file.id, version)
            .await?
            .ok_or_else(|| FilesError::NotFound(format!("{path} has no version {version}")))?;
        let id = UploadId::new_at(cx.now);
        self.store
            .create_upload(UploadRecord {
                id,
                space_id: space,
                path: path.clone(),
                base_version: Some(if file.deleted_at.is_some() {
                    0
                } else {
                    file.head
                }),
                size: old.size,
                blake3: old.blake3,
                chunks: old.chunks,
                created_by: cx.subject.user_id,
                device: old.device,
                created_at: cx.now,
                expires_at: UnixMillis(cx.now.0 + 60_000),
            })
            .await?;
        match self
            .store
            .commit_upload(id, FileId::new_at(cx.now), cx.now)
            .await
        {
            Ok((f, _)) => {
                self.changed(space);
                Ok(file_info(&f))
            }
            Err(CommitError::Conflict { .. }) => Err(FilesError::Conflict(format!(
                "{path} changed while restoring; try again"
            ))),
            Err(CommitError::NoUpload) => {
                Err(FilesError::Internal("restore lost its upload".into()))
            }
            Err(CommitError::Store(e)) => Err(e.into()),
        }
    }

    /// Renames a file, or a folder with everything under it.
    pub async fn rename(
        &self,
        cx: Ctx<'_>,
        space: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<FileInfo>> {
        let space = self.space(cx, space, Action::Update).await?;
        let from = normalize_path(from, self.cfg.path_length_max)?;
        let to = normalize_path(to, self.cfg.path_length_max)?;
        if to == from || to.starts_with(&format!("{from}/")) {
            return Err(FilesError::Invalid(format!(
                "cannot move {from} into itself ({to})"
            )));
        }
        let moved = match self.store.move_files(space, &from, &to, cx.now).await {
            Ok(m) => m,
            Err(StoreError::Conflict(_)) => {
                return Err(FilesError::Conflict(format!(
                    "something is already at {to} (or under it); move or remove it first"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if moved.is_empty() {
            return Err(FilesError::NotFound(format!("no file or folder {from}")));
        }
        self.changed(space);
        Ok(moved.iter().map(file_info).collect())
    }

    /// The space's changes after sequence number `after`, oldest first, a page at a time: what
    /// a syncing client asks for with the last `seq` it saw.
    pub async fn changes(
        &self,
        cx: Ctx<'_>,
        space: Option<&str>,
        after: i64,
    ) -> Result<Vec<FileChange>> {
        let space = self.space(cx, space, Action::Read).await?;
        Ok(self
            .store
            .changes(space, after, self.cfg.changes_page_max)
            .await?
            .into_iter()
            .map(|c| FileChange {
                seq: c.seq,
                path: c.path,
                version: c.version,
                deleted: c.deleted,
                at_ms: c.at.0,
                size: c.size,
                blake3: c.blake3,
            })
            .collect())
    }

    /// An expiring download link to a file the caller may read.
    pub async fn create_link(&self, cx: Ctx<'_>, req: LinkCreate) -> Result<LinkCreated> {
        if req.expires_in_secs == 0 || req.expires_in_secs > self.cfg.link_ttl_max_secs {
            return Err(FilesError::Invalid(format!(
                "a link lasts 1 to {} seconds (files.link_ttl_max_secs)",
                self.cfg.link_ttl_max_secs
            )));
        }
        // The file must be there to link to (and readable by the caller).
        let (info, _) = self
            .open(cx, req.space.as_deref(), &req.path, req.version)
            .await?;
        let space = self.space(cx, req.space.as_deref(), Action::Read).await?;
        let token = sb_auth::token::generate(sb_auth::token::LINK_PREFIX);
        let expires_at = UnixMillis(cx.now.0 + req.expires_in_secs as i64 * 1000);
        self.store
            .create_link(LinkRecord {
                token_hash: sb_auth::token::hash(token.expose()),
                space_id: space,
                path: info.path,
                version: req.version,
                created_by: cx.subject.user_id,
                created_at: cx.now,
                expires_at,
            })
            .await?;
        Ok(LinkCreated {
            url_path: format!("/v1/files/links/{}", token.expose()),
            expires_at_ms: expires_at.0,
        })
    }

    /// What a download link gives, if it is known, unexpired, and its file still there.
    pub async fn open_link(&self, token: &str, now: UnixMillis) -> Result<VersionRecord> {
        let gone = || FilesError::NotFound("this link is unknown or has expired".into());
        if token.len() > sb_auth::token::TOKEN_LENGTH_MAX {
            return Err(gone());
        }
        let link = self
            .store
            .link(sb_auth::token::hash(token))
            .await?
            .filter(|l| l.expires_at.0 > now.0)
            .ok_or_else(gone)?;
        let file = self
            .store
            .file_by_path(link.space_id, &link.path)
            .await?
            .filter(|f| f.deleted_at.is_none())
            .ok_or_else(gone)?;
        self.store
            .version(file.id, link.version.unwrap_or(file.head))
            .await?
            .ok_or_else(gone)
    }

    /// Deletes versions and trashed files past their retention (`files.version_keep_*`,
    /// `files.trash_retention_secs`); returns (versions, files) deleted.
    pub async fn apply_retention(&self, now: UnixMillis) -> Result<(u64, u64)> {
        let days = i64::from(self.cfg.version_keep_days) * 86_400_000;
        let versions = self
            .store
            .prune_versions(
                i64::from(self.cfg.version_keep_last.max(1)),
                UnixMillis(now.0 - days),
            )
            .await?;
        let files = self
            .store
            .purge_trash(UnixMillis(
                now.0 - self.cfg.trash_retention_secs as i64 * 1000,
            ))
            .await?;
        Ok((versions, files))
    }

    /// Every chunk a file version or an upload in progress refers to.
    pub async fn referenced_chunks(&self) -> Result<Vec<BlobId>> {
        Ok(self
            .store
            .referenced_chunks()
            .await?
            .into_iter()
            .map(BlobId::from_bytes)
            .collect())
    }

    /// Forgets uploads never committed within `files.upload_ttl_secs` (their chunks stay for
    /// garbage collection); returns how many.
    pub async fn prune_uploads(&self, now: UnixMillis) -> Result<u64> {
        Ok(self.store.prune_uploads(now).await?)
    }

    /// The blob store, for streaming a version's chunks.
    pub fn blobs(&self) -> &LocalBlobStore {
        &self.blobs
    }

    /// Files under a folder (`/` for all), by path.
    pub async fn list(
        &self,
        cx: Ctx<'_>,
        space: Option<&str>,
        folder: &str,
    ) -> Result<Vec<FileInfo>> {
        let space = self.space(cx, space, Action::Read).await?;
        let prefix = if folder.trim_end_matches('/').is_empty() {
            "/".to_string()
        } else {
            format!("{}/", normalize_path(folder, self.cfg.path_length_max)?)
        };
        let files = self
            .store
            .list_files(space, &prefix, false, self.cfg.list_page_max)
            .await?;
        Ok(files.iter().map(file_info).collect())
    }

    /// A file's versions, newest first.
    pub async fn versions(
        &self,
        cx: Ctx<'_>,
        space: Option<&str>,
        path: &str,
    ) -> Result<Vec<FileVersionInfo>> {
        let space = self.space(cx, space, Action::Read).await?;
        let path = normalize_path(path, self.cfg.path_length_max)?;
        let file = self
            .store
            .file_by_path(space, &path)
            .await?
            .ok_or_else(|| FilesError::NotFound(format!("no file {path}")))?;
        let mut out = Vec::new();
        for v in self.store.versions(file.id).await? {
            let by = self
                .auth
                .store()
                .user_by_id(v.created_by)
                .await?
                .map(|u| u.username)
                .unwrap_or_default();
            out.push(FileVersionInfo {
                version: v.version,
                size: v.size,
                blake3: v.blake3,
                created_at_ms: v.created_at.0,
                created_by: by,
                device: v.device,
                chunks: v.chunks.len() as u64,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_are_normalised_and_bad_ones_refused() {
        assert_eq!(normalize_path("/docs//a.txt/", 100).unwrap(), "/docs/a.txt");
        for bad in ["docs/a", "/", "/a/../b", "/./a", "/a\u{0}b"] {
            assert!(normalize_path(bad, 100).is_err(), "{bad:?}");
        }
        assert!(normalize_path("/abcdef", 4).is_err());
    }
}
