//! [`FilesStore`] on the SQLite backend (same file and writer as the rest).

use crate::files::*;
use crate::sqlite::parse_id;
use crate::{Result, SqliteStore, StoreError};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sb_core::{FileId, SpaceId, UnixMillis, UploadId, UserId};

fn chunks_at(row: &Row<'_>, i: usize) -> rusqlite::Result<Vec<ChunkRef>> {
    let bytes: Vec<u8> = row.get(i)?;
    decode_chunks(&bytes).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Blob,
            "a chunk list is not a whole number of entries".into(),
        )
    })
}

const SPACE_COLS: &str = "id, name, owner, personal, created_at";

fn space_at(row: &Row<'_>) -> rusqlite::Result<SpaceRecord> {
    Ok(SpaceRecord {
        id: parse_id(row.get(0)?)?,
        name: row.get(1)?,
        owner: parse_id(row.get(2)?)?,
        personal: row.get(3)?,
        created_at: UnixMillis(row.get(4)?),
    })
}

const FILE_COLS: &str = "id, space_id, path, head, size, blake3, modified_at, deleted_at";

fn file_at(row: &Row<'_>) -> rusqlite::Result<FileRecord> {
    Ok(FileRecord {
        id: parse_id(row.get(0)?)?,
        space_id: parse_id(row.get(1)?)?,
        path: row.get(2)?,
        head: row.get(3)?,
        size: row.get::<_, i64>(4)? as u64,
        blake3: row.get(5)?,
        modified_at: UnixMillis(row.get(6)?),
        deleted_at: row.get::<_, Option<i64>>(7)?.map(UnixMillis),
    })
}

const VERSION_COLS: &str = "file_id, version, size, blake3, chunks, created_at, created_by, device";

fn version_at(row: &Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        file_id: parse_id(row.get(0)?)?,
        version: row.get(1)?,
        size: row.get::<_, i64>(2)? as u64,
        blake3: row.get(3)?,
        chunks: chunks_at(row, 4)?,
        created_at: UnixMillis(row.get(5)?),
        created_by: parse_id(row.get(6)?)?,
        device: row.get(7)?,
    })
}

const UPLOAD_COLS: &str = "id, space_id, path, base_version, size, blake3, chunks, created_by, device, created_at, expires_at";

fn upload_at(row: &Row<'_>) -> rusqlite::Result<UploadRecord> {
    Ok(UploadRecord {
        id: parse_id(row.get(0)?)?,
        space_id: parse_id(row.get(1)?)?,
        path: row.get(2)?,
        base_version: row.get(3)?,
        size: row.get::<_, i64>(4)? as u64,
        blake3: row.get(5)?,
        chunks: chunks_at(row, 6)?,
        created_by: parse_id(row.get(7)?)?,
        device: row.get(8)?,
        created_at: UnixMillis(row.get(9)?),
        expires_at: UnixMillis(row.get(10)?),
    })
}

fn file_by_path(c: &Connection, space: &str, path: &str) -> Result<Option<FileRecord>> {
    Ok(c.query_row(
        &format!("SELECT {FILE_COLS} FROM files WHERE space_id = ?1 AND path = ?2"),
        params![space, path],
        file_at,
    )
    .optional()?)
}

/// Appends a change with the space's next sequence number.
fn record_change(
    c: &Connection,
    space: &str,
    path: &str,
    file: &str,
    version: i64,
    deleted: bool,
    at: UnixMillis,
) -> Result<i64> {
    let seq: i64 = c.query_row(
        "UPDATE spaces SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
        [space],
        |r| r.get(0),
    )?;
    c.execute(
        "INSERT INTO file_changes (space_id, seq, path, file_id, version, deleted, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![space, seq, path, file, version, deleted, at.0],
    )?;
    Ok(seq)
}

impl SqliteStore {
    /// Moves a live file to the trash (`trash`), or a trashed one back, recording the change;
    /// `None` if there is no such file in that state.
    async fn set_trashed(
        &self,
        space: SpaceId,
        path: &str,
        at: UnixMillis,
        trash: bool,
        expect_head: Option<i64>,
    ) -> Result<Option<FileRecord>> {
        let path = path.to_string();
        self.write("set_trashed", move |c| {
            let tx = c.savepoint()?;
            let sid = space.to_string();
            let Some(f) =
                file_by_path(&tx, &sid, &path)?.filter(|f| f.deleted_at.is_none() == trash)
            else {
                return Ok(None);
            };
            if expect_head.is_some_and(|want| want != f.head) {
                return Err(StoreError::Conflict(
                    "the file is not at the expected version",
                ));
            }
            if trash {
                tx.execute(
                    "UPDATE files SET deleted_at = ?2 WHERE id = ?1",
                    params![f.id.to_string(), at.0],
                )?;
            } else {
                tx.execute(
                    "UPDATE files SET deleted_at = NULL, modified_at = ?2 WHERE id = ?1",
                    params![f.id.to_string(), at.0],
                )?;
            }
            record_change(&tx, &sid, &path, &f.id.to_string(), f.head, trash, at)?;
            let f = file_by_path(&tx, &sid, &path)?;
            tx.commit()?;
            Ok(f)
        })
        .await
    }
}

#[async_trait]
impl FilesStore for SqliteStore {
    async fn personal_space(
        &self,
        owner: UserId,
        new_id: SpaceId,
        at: UnixMillis,
    ) -> Result<SpaceRecord> {
        self.write("personal_space", move |c| {
            let tx = c.savepoint()?;
            let found = tx
                .query_row(
                    &format!("SELECT {SPACE_COLS} FROM spaces WHERE owner = ?1 AND personal = 1"),
                    [owner.to_string()],
                    space_at,
                )
                .optional()?;
            let space = match found {
                Some(s) => s,
                None => {
                    let s = SpaceRecord {
                        id: new_id,
                        name: "home".into(),
                        owner,
                        personal: true,
                        created_at: at,
                    };
                    tx.execute(
                        "INSERT INTO spaces (id, name, owner, personal, created_at) VALUES (?1, ?2, ?3, 1, ?4)",
                        params![s.id.to_string(), s.name, s.owner.to_string(), at.0],
                    )?;
                    s
                }
            };
            tx.commit()?;
            Ok(space)
        })
        .await
    }

    async fn space(&self, id: SpaceId) -> Result<Option<SpaceRecord>> {
        self.read("space", move |c| {
            Ok(c.query_row(
                &format!("SELECT {SPACE_COLS} FROM spaces WHERE id = ?1"),
                [id.to_string()],
                space_at,
            )
            .optional()?)
        })
        .await
    }

    async fn create_space(&self, space: SpaceRecord) -> Result<()> {
        self.write("create_space", move |c| {
            c.execute(
                "INSERT INTO spaces (id, name, owner, personal, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    space.id.to_string(),
                    space.name,
                    space.owner.to_string(),
                    space.personal,
                    space.created_at.0
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_space_member(
        &self,
        space: SpaceId,
        user: UserId,
        writable: Option<bool>,
    ) -> Result<()> {
        self.write("set_space_member", move |c| {
            match writable {
                Some(w) => c.execute(
                    "INSERT INTO space_members (space_id, user_id, writable) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (space_id, user_id) DO UPDATE SET writable = excluded.writable",
                    params![space.to_string(), user.to_string(), w],
                )?,
                None => c.execute(
                    "DELETE FROM space_members WHERE space_id = ?1 AND user_id = ?2",
                    params![space.to_string(), user.to_string()],
                )?,
            };
            Ok(())
        })
        .await
    }

    async fn space_member(&self, space: SpaceId, user: UserId) -> Result<Option<bool>> {
        self.read("space_member", move |c| {
            Ok(c.query_row(
                "SELECT writable FROM space_members WHERE space_id = ?1 AND user_id = ?2",
                params![space.to_string(), user.to_string()],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn spaces_for(&self, user: UserId) -> Result<Vec<(SpaceRecord, Option<bool>)>> {
        self.read("spaces_for", move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT s.id, s.name, s.owner, s.personal, s.created_at, m.writable FROM spaces s \
                 LEFT JOIN space_members m ON m.space_id = s.id AND m.user_id = ?1 \
                 WHERE s.owner = ?1 OR m.user_id IS NOT NULL ORDER BY s.personal DESC, s.name",
            )?;
            let rows = stmt.query_map([user.to_string()], |r| {
                let space = space_at(r)?;
                let share: Option<bool> = r.get(5)?;
                Ok((space, share))
            })?;
            Ok(rows
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .map(|(s, share)| {
                    let share = if s.owner == user { None } else { share };
                    (s, share)
                })
                .collect())
        })
        .await
    }

    async fn create_upload(&self, u: UploadRecord) -> Result<()> {
        self.write("create_upload", move |c| {
            c.execute(
                &format!("INSERT INTO file_uploads ({UPLOAD_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![
                    u.id.to_string(),
                    u.space_id.to_string(),
                    u.path,
                    u.base_version,
                    u.size as i64,
                    u.blake3,
                    encode_chunks(&u.chunks),
                    u.created_by.to_string(),
                    u.device,
                    u.created_at.0,
                    u.expires_at.0
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn upload(&self, id: UploadId) -> Result<Option<UploadRecord>> {
        self.read("upload", move |c| {
            Ok(c.query_row(
                &format!("SELECT {UPLOAD_COLS} FROM file_uploads WHERE id = ?1"),
                [id.to_string()],
                upload_at,
            )
            .optional()?)
        })
        .await
    }

    async fn prune_uploads(&self, now: UnixMillis) -> Result<u64> {
        self.write("prune_uploads", move |c| {
            Ok(c.execute("DELETE FROM file_uploads WHERE expires_at < ?1", [now.0])? as u64)
        })
        .await
    }

    async fn commit_upload(
        &self,
        id: UploadId,
        new_file: FileId,
        at: UnixMillis,
    ) -> std::result::Result<(FileRecord, VersionRecord), CommitError> {
        self.write("commit_upload", move |c| {
                let tx = c.savepoint()?;
                let Some(u) = tx
                    .query_row(
                        &format!("SELECT {UPLOAD_COLS} FROM file_uploads WHERE id = ?1"),
                        [id.to_string()],
                        upload_at,
                    )
                    .optional()?
                else {
                    return Ok(Err(CommitError::NoUpload));
                };
                let space = u.space_id.to_string();
                let existing = file_by_path(&tx, &space, &u.path)?;
                // A trashed file counts as absent for compare-and-set.
                let current = existing
                    .as_ref()
                    .filter(|f| f.deleted_at.is_none())
                    .map_or(0, |f| f.head);
                if let Some(base) = u.base_version
                    && base != current
                {
                    return Ok(Err(CommitError::Conflict { base, current }));
                }
                let (file_id, version) = match &existing {
                    Some(f) => (f.id, f.head + 1),
                    None => (new_file, 1),
                };
                let fid = file_id.to_string();
                match existing {
                    Some(_) => {
                        tx.execute(
                            "UPDATE files SET head = ?2, size = ?3, blake3 = ?4, modified_at = ?5, deleted_at = NULL WHERE id = ?1",
                            params![fid, version, u.size as i64, u.blake3, at.0],
                        )?;
                    }
                    None => {
                        tx.execute(
                            &format!("INSERT INTO files ({FILE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)"),
                            params![fid, space, u.path, version, u.size as i64, u.blake3, at.0],
                        )?;
                    }
                }
                let v = VersionRecord {
                    file_id,
                    version,
                    size: u.size,
                    blake3: u.blake3.clone(),
                    chunks: u.chunks.clone(),
                    created_at: at,
                    created_by: u.created_by,
                    device: u.device.clone(),
                };
                tx.execute(
                    &format!("INSERT INTO file_versions ({VERSION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                    params![
                        fid,
                        version,
                        v.size as i64,
                        v.blake3,
                        encode_chunks(&v.chunks),
                        at.0,
                        v.created_by.to_string(),
                        v.device
                    ],
                )?;
                record_change(&tx, &space, &u.path, &fid, version, false, at)?;
                tx.execute("DELETE FROM file_uploads WHERE id = ?1", [id.to_string()])?;
                let file = file_by_path(&tx, &space, &u.path)?.ok_or(StoreError::NotFound)?;
                tx.commit()?;
                Ok(Ok((file, v)))
            })
            .await?
    }

    async fn file_by_path(&self, space: SpaceId, path: &str) -> Result<Option<FileRecord>> {
        let path = path.to_string();
        self.read("file_by_path", move |c| {
            file_by_path(c, &space.to_string(), &path)
        })
        .await
    }

    async fn list_files(
        &self,
        space: SpaceId,
        prefix: &str,
        include_deleted: bool,
        limit: usize,
    ) -> Result<Vec<FileRecord>> {
        let prefix = prefix.to_string();
        self.read("list_files", move |c| {
            // Paths sort bytewise; everything with the prefix lies in [prefix, prefix + U+10FFFF).
            let hi = format!("{prefix}\u{10FFFF}");
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {FILE_COLS} FROM files WHERE space_id = ?1 AND path >= ?2 AND path < ?3 \
                 AND (?4 OR deleted_at IS NULL) ORDER BY path LIMIT ?5"
            ))?;
            let rows = stmt.query_map(
                params![space.to_string(), prefix, hi, include_deleted, limit as i64],
                file_at,
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn versions(&self, file: FileId) -> Result<Vec<VersionRecord>> {
        self.read("versions", move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {VERSION_COLS} FROM file_versions WHERE file_id = ?1 ORDER BY version DESC"
            ))?;
            let rows = stmt.query_map([file.to_string()], version_at)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn version(&self, file: FileId, version: i64) -> Result<Option<VersionRecord>> {
        self.read("version", move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {VERSION_COLS} FROM file_versions WHERE file_id = ?1 AND version = ?2"
                ),
                params![file.to_string(), version],
                version_at,
            )
            .optional()?)
        })
        .await
    }

    async fn trash_file(
        &self,
        space: SpaceId,
        path: &str,
        at: UnixMillis,
        expect_head: Option<i64>,
    ) -> Result<Option<FileRecord>> {
        self.set_trashed(space, path, at, true, expect_head).await
    }

    async fn untrash_file(
        &self,
        space: SpaceId,
        path: &str,
        at: UnixMillis,
    ) -> Result<Option<FileRecord>> {
        self.set_trashed(space, path, at, false, None).await
    }

    async fn move_files(
        &self,
        space: SpaceId,
        from: &str,
        to: &str,
        at: UnixMillis,
    ) -> Result<Vec<FileRecord>> {
        let (from, to) = (from.to_string(), to.to_string());
        self.write("move_files", move |c| {
            let tx = c.savepoint()?;
            let sid = space.to_string();
            // The file itself, or everything under the folder.
            let mut moving: Vec<FileRecord> = Vec::new();
            if let Some(f) = file_by_path(&tx, &sid, &from)?.filter(|f| f.deleted_at.is_none()) {
                moving.push(f);
            } else {
                let prefix = format!("{from}/");
                let hi = format!("{prefix}\u{10FFFF}");
                let mut stmt = tx.prepare(&format!(
                    "SELECT {FILE_COLS} FROM files WHERE space_id = ?1 AND path >= ?2 AND path < ?3 AND deleted_at IS NULL"
                ))?;
                moving = stmt
                    .query_map(params![sid, prefix, hi], file_at)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
            }
            let target = |p: &str| format!("{to}{}", &p[from.len()..]);
            for f in &moving {
                if file_by_path(&tx, &sid, &target(&f.path))?.is_some() {
                    return Err(StoreError::Conflict("a file is already at the new path"));
                }
            }
            let mut out = Vec::new();
            for f in &moving {
                let new_path = target(&f.path);
                let fid = f.id.to_string();
                tx.execute(
                    "UPDATE files SET path = ?2, modified_at = ?3 WHERE id = ?1",
                    params![fid, new_path, at.0],
                )?;
                record_change(&tx, &sid, &f.path, &fid, f.head, true, at)?;
                record_change(&tx, &sid, &new_path, &fid, f.head, false, at)?;
                out.extend(file_by_path(&tx, &sid, &new_path)?);
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn prune_versions(&self, keep_last: i64, older_than: UnixMillis) -> Result<u64> {
        self.write("prune_versions", move |c| {
            Ok(c.execute(
                "DELETE FROM file_versions WHERE created_at < ?2 AND version <= \
                 (SELECT f.head FROM files f WHERE f.id = file_versions.file_id) - ?1",
                params![keep_last.max(1), older_than.0],
            )? as u64)
        })
        .await
    }

    async fn purge_trash(&self, before: UnixMillis) -> Result<u64> {
        self.write("purge_trash", move |c| {
            Ok(c.execute(
                "DELETE FROM files WHERE deleted_at IS NOT NULL AND deleted_at < ?1",
                [before.0],
            )? as u64)
        })
        .await
    }

    async fn referenced_chunks(&self) -> Result<Vec<[u8; 32]>> {
        self.read("referenced_chunks", |c| {
            let mut out = std::collections::HashSet::new();
            for sql in [
                "SELECT chunks FROM file_versions",
                "SELECT chunks FROM file_uploads",
            ] {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    for ch in chunks_at(r, 0)? {
                        out.insert(ch.id);
                    }
                }
            }
            Ok(out.into_iter().collect())
        })
        .await
    }

    async fn create_link(&self, l: LinkRecord) -> Result<()> {
        self.write("create_link", move |c| {
            c.execute(
                "INSERT INTO file_links (token_hash, space_id, path, version, created_by, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    l.token_hash.to_vec(),
                    l.space_id.to_string(),
                    l.path,
                    l.version,
                    l.created_by.to_string(),
                    l.created_at.0,
                    l.expires_at.0
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn link(&self, token_hash: [u8; 32]) -> Result<Option<LinkRecord>> {
        self.read("link", move |c| {
            Ok(c.query_row(
                "SELECT space_id, path, version, created_by, created_at, expires_at FROM file_links WHERE token_hash = ?1",
                [token_hash.to_vec()],
                |r| {
                    Ok(LinkRecord {
                        token_hash,
                        space_id: parse_id(r.get(0)?)?,
                        path: r.get(1)?,
                        version: r.get(2)?,
                        created_by: parse_id(r.get(3)?)?,
                        created_at: UnixMillis(r.get(4)?),
                        expires_at: UnixMillis(r.get(5)?),
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn changes(&self, space: SpaceId, after: i64, limit: usize) -> Result<Vec<ChangeRecord>> {
        self.read("changes", move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT c.seq, c.space_id, c.path, c.file_id, c.version, c.deleted, c.at, \
                 v.size, v.blake3 FROM file_changes c LEFT JOIN file_versions v \
                 ON v.file_id = c.file_id AND v.version = c.version \
                 WHERE c.space_id = ?1 AND c.seq > ?2 ORDER BY c.seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![space.to_string(), after, limit as i64], |r| {
                Ok(ChangeRecord {
                    seq: r.get(0)?,
                    space_id: parse_id(r.get(1)?)?,
                    path: r.get(2)?,
                    file_id: parse_id(r.get(3)?)?,
                    version: r.get(4)?,
                    deleted: r.get(5)?,
                    at: UnixMillis(r.get(6)?),
                    size: r.get::<_, Option<i64>>(7)?.unwrap_or(0) as u64,
                    blake3: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
