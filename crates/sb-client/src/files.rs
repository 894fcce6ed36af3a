//! Files: uploading a local file as content-defined chunks (only those the server lacks), and
//! downloading one to a temp file that is renamed into place once its hash checks out.

use crate::{Client, ClientError, Result};
use reqwest::Method;
use sb_blob::chunker;
use sb_proto::{
    ChunkInfo, FileChange, FileInfo, FileMove, FileRestore, FileVersionInfo, LinkCreate,
    LinkCreated, SpaceCreate, SpaceInfo, SpaceShare, UploadStart, UploadStarted,
};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Chunks sent at once.
const PARALLEL_CHUNKS: usize = 4;

/// What one upload moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutStats {
    pub chunks: usize,
    /// Chunks the server lacked, and their bytes: all that crossed the network as content.
    pub chunks_sent: usize,
    pub bytes_sent: u64,
}

fn io_err(path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Local(format!("{}: {e}", path.display()))
}

pub(crate) fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `&space=ID` when a space other than the caller's own is meant.
pub(crate) fn space_param(space: Option<&str>) -> String {
    space
        .map(|s| format!("&space={}", enc(s)))
        .unwrap_or_default()
}

/// A local file's size, whole-content BLAKE3 (hex) and chunks, each with its offset.
pub type Manifest = (u64, String, Vec<(u64, ChunkInfo)>);

/// The chunk list and whole-content BLAKE3 of a local file.
pub fn manifest(path: &Path) -> std::io::Result<Manifest> {
    let file = std::fs::File::open(path)?;
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    for piece in chunker::chunks(std::io::BufReader::with_capacity(1 << 20, file)) {
        let piece = piece?;
        whole.update(&piece.data);
        size += piece.data.len() as u64;
        chunks.push((
            piece.offset,
            ChunkInfo {
                id: piece.id.to_string(),
                len: piece.data.len() as u32,
            },
        ));
    }
    Ok((size, whole.finalize().to_hex().to_string(), chunks))
}

impl Client {
    pub async fn files_start_upload(&self, req: &UploadStart) -> Result<UploadStarted> {
        self.call(Method::POST, "/v1/files/uploads", Some(req))
            .await
    }

    pub async fn files_put_chunk(&self, upload: &str, chunk: &str, bytes: Vec<u8>) -> Result<()> {
        let resp = self
            .raw_with_headers(
                Method::PUT,
                &format!("/v1/files/uploads/{upload}/chunks/{chunk}"),
                &[("content-type", "application/octet-stream")],
                bytes,
            )
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
        Self::decode::<()>(resp).await
    }

    pub async fn files_commit(&self, upload: &str) -> Result<FileInfo> {
        self.call(
            Method::POST,
            &format!("/v1/files/uploads/{upload}/commit"),
            Self::NO_BODY,
        )
        .await
    }

    pub async fn files_list(&self, space: Option<&str>, folder: &str) -> Result<Vec<FileInfo>> {
        self.call(
            Method::GET,
            &format!("/v1/files?folder={}{}", enc(folder), space_param(space)),
            Self::NO_BODY,
        )
        .await
    }

    /// Moves a file to the trash; with `version`, only if it is still at that version.
    pub async fn files_remove(
        &self,
        space: Option<&str>,
        path: &str,
        version: Option<i64>,
    ) -> Result<FileInfo> {
        let version = version.map(|v| format!("&version={v}")).unwrap_or_default();
        self.call(
            Method::DELETE,
            &format!(
                "/v1/files?path={}{}{version}",
                enc(path),
                space_param(space)
            ),
            Self::NO_BODY,
        )
        .await
    }

    /// Brings a file back from the trash, or makes an old version the newest.
    pub async fn files_restore(
        &self,
        space: Option<&str>,
        path: &str,
        version: Option<i64>,
    ) -> Result<FileInfo> {
        let req = FileRestore {
            space: space.map(str::to_string),
            path: path.to_string(),
            version,
        };
        self.call(Method::POST, "/v1/files/restore", Some(&req))
            .await
    }

    /// Renames a file, or a folder and everything under it.
    pub async fn files_move(
        &self,
        space: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<FileInfo>> {
        let req = FileMove {
            space: space.map(str::to_string),
            from: from.to_string(),
            to: to.to_string(),
        };
        self.call(Method::POST, "/v1/files/move", Some(&req)).await
    }

    pub async fn files_versions(
        &self,
        space: Option<&str>,
        path: &str,
    ) -> Result<Vec<FileVersionInfo>> {
        self.call(
            Method::GET,
            &format!(
                "/v1/files/versions?path={}{}",
                enc(path),
                space_param(space)
            ),
            Self::NO_BODY,
        )
        .await
    }

    /// A space's changes after `after` (the last `seq` seen), oldest first, one page.
    pub async fn files_changes(&self, space: Option<&str>, after: i64) -> Result<Vec<FileChange>> {
        self.call(
            Method::GET,
            &format!("/v1/files/changes?after={after}{}", space_param(space)),
            Self::NO_BODY,
        )
        .await
    }

    /// A download link to a file, usable without a credential until it expires.
    pub async fn files_link(
        &self,
        space: Option<&str>,
        path: &str,
        version: Option<i64>,
        expires_in_secs: u64,
    ) -> Result<LinkCreated> {
        let req = LinkCreate {
            space: space.map(str::to_string),
            path: path.to_string(),
            version,
            expires_in_secs,
        };
        self.call(Method::POST, "/v1/files/links", Some(&req)).await
    }

    /// The server's URL for a path it returned (a link's `url_path`).
    pub fn url_for(&self, path: &str) -> String {
        self.base
            .join(path)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| path.to_string())
    }

    pub async fn files_spaces(&self) -> Result<Vec<SpaceInfo>> {
        self.call(Method::GET, "/v1/files/spaces", Self::NO_BODY)
            .await
    }

    pub async fn files_create_space(&self, name: &str) -> Result<SpaceInfo> {
        let req = SpaceCreate {
            name: name.to_string(),
        };
        self.call(Method::POST, "/v1/files/spaces", Some(&req))
            .await
    }

    /// Shares a space with a user: `read`, `write`, or `none` to stop.
    pub async fn files_share(&self, space: &str, username: &str, access: &str) -> Result<()> {
        let req = SpaceShare {
            username: username.to_string(),
            access: access.to_string(),
        };
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self
            .raw_with_headers(
                Method::PUT,
                &format!("/v1/files/spaces/{}/members", enc(space)),
                &[("content-type", "application/json")],
                body,
            )
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
        Self::decode::<()>(resp).await
    }

    /// Uploads `local` to `remote`, sending only the chunks the server lacks, `PARALLEL_CHUNKS`
    /// at a time. `progress(bytes_sent, bytes_to_send)` follows the content sent. Run it again
    /// after an interruption: what already arrived is not sent twice. `base_version`: commit
    /// only if the remote file is still at this version (0: only if it does not exist).
    pub async fn put_file(
        &self,
        space: Option<&str>,
        local: &Path,
        remote: &str,
        base_version: Option<i64>,
        device: &str,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(FileInfo, PutStats)> {
        let path = local.to_path_buf();
        let (size, blake3, chunks) = tokio::task::spawn_blocking(move || manifest(&path))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .map_err(|e| io_err(local, e))?;
        let started = self
            .files_start_upload(&UploadStart {
                space: space.map(str::to_string),
                path: remote.to_string(),
                size,
                blake3,
                chunks: chunks.iter().map(|(_, c)| c.clone()).collect(),
                base_version,
                device: device.to_string(),
            })
            .await?;
        let missing: std::collections::HashSet<&str> =
            started.missing.iter().map(String::as_str).collect();
        // Each missing chunk once, with where it is in the file.
        let mut todo: Vec<(u64, ChunkInfo)> = Vec::new();
        for (off, c) in &chunks {
            if missing.contains(c.id.as_str()) && !todo.iter().any(|(_, t)| t.id == c.id) {
                todo.push((*off, c.clone()));
            }
        }
        let total: u64 = todo.iter().map(|(_, c)| u64::from(c.len)).sum();
        let sent = std::sync::atomic::AtomicU64::new(0);
        progress(0, total);
        use futures_util::StreamExt;
        let results: Vec<Result<()>> = futures_util::stream::iter(todo.iter())
            .map(|(off, c)| {
                let (sent, upload) = (&sent, &started.upload_id);
                async move {
                    let (path, off, len) = (local.to_path_buf(), *off, c.len as usize);
                    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                        let mut f = std::fs::File::open(&path)?;
                        f.seek(SeekFrom::Start(off))?;
                        let mut buf = vec![0u8; len];
                        f.read_exact(&mut buf)?;
                        Ok(buf)
                    })
                    .await
                    .map_err(|e| ClientError::Protocol(e.to_string()))?
                    .map_err(|e| io_err(local, e))?;
                    self.files_put_chunk(upload, &c.id, bytes).await?;
                    let now = sent
                        .fetch_add(u64::from(c.len), std::sync::atomic::Ordering::Relaxed)
                        + u64::from(c.len);
                    progress(now, total);
                    Ok(())
                }
            })
            .buffer_unordered(PARALLEL_CHUNKS)
            .collect()
            .await;
        for r in results {
            r?;
        }
        let info = self.files_commit(&started.upload_id).await?;
        Ok((
            info,
            PutStats {
                chunks: chunks.len(),
                chunks_sent: todo.len(),
                bytes_sent: total,
            },
        ))
    }

    /// Downloads `remote` (its newest version, or `version`) to `local`. The bytes go to
    /// `local.sb-part` first; if that exists from an interrupted run, only the rest is asked
    /// for (HTTP Range). Once the whole content's BLAKE3 matches, the file is renamed into
    /// place. `progress(bytes_done, bytes_total)`.
    pub async fn get_file(
        &self,
        space: Option<&str>,
        remote: &str,
        version: Option<i64>,
        local: &Path,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<FileInfo> {
        let part = part_path(local);
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let mut q = format!(
            "/v1/files/content?path={}{}",
            enc(remote),
            space_param(space)
        );
        if let Some(v) = version {
            q.push_str(&format!("&version={v}"));
        }
        let range = format!("bytes={have}-");
        let headers: Vec<(&str, &str)> = if have > 0 {
            vec![("range", range.as_str())]
        } else {
            Vec::new()
        };
        let mut resp = self
            .raw_with_headers(Method::GET, &q, &headers, Vec::new())
            .await?;
        let status = resp.status().as_u16();
        if status == 416 {
            // The partial file is not a prefix of this content (it changed): start over.
            std::fs::remove_file(&part).map_err(|e| io_err(&part, e))?;
            return Box::pin(self.get_file(space, remote, version, local, progress)).await;
        }
        if !resp.status().is_success() {
            return Self::decode(resp).await;
        }
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim_matches('"').to_string())
            .ok_or_else(|| ClientError::Protocol("no ETag on file content".into()))?;
        let file_version: i64 = resp
            .headers()
            .get("x-file-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let resumed = status == 206;
        let total = resp.content_length().unwrap_or(0) + if resumed { have } else { 0 };
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&part)
            .map_err(|e| io_err(&part, e))?;
        let mut done = if resumed { have } else { 0 };
        progress(done, total);
        while let Some(bytes) = resp.chunk().await.map_err(|e| self.transport_error(e))? {
            out.write_all(&bytes).map_err(|e| io_err(&part, e))?;
            done += bytes.len() as u64;
            progress(done, total);
        }
        out.sync_all().map_err(|e| io_err(&part, e))?;
        drop(out);
        let check = part.clone();
        let hash = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::open(&check)?)?;
            Ok(h.finalize().to_hex().to_string())
        })
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .map_err(|e| io_err(&part, e))?;
        if hash != etag {
            std::fs::remove_file(&part).map_err(|e| io_err(&part, e))?;
            return Err(ClientError::Protocol(
                "the downloaded content does not match its hash (the file may have changed mid-way); run the command again".to_string(),
            ));
        }
        std::fs::rename(&part, local).map_err(|e| io_err(local, e))?;
        Ok(FileInfo {
            path: remote.to_string(),
            version: file_version,
            size: done,
            blake3: hash,
            modified_at_ms: 0,
            deleted: false,
        })
    }
}

/// Where a download in progress is kept: beside the destination, so the rename is atomic.
pub fn part_path(local: &Path) -> PathBuf {
    let mut name = local.file_name().unwrap_or_default().to_os_string();
    name.push(".sb-part");
    local.with_file_name(name)
}
