//! Files over HTTP: the three-step upload (chunk list, missing chunks, commit), listings,
//! versions, and content with HTTP Range.

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Caller};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sb_core::ErrorCode;
use sb_proto::*;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::IntoParams;

type St = State<Arc<AppState>>;

#[utoipa::path(post, path = "/v1/files/uploads", tag = "files", request_body = UploadStart,
    responses((status = 201, body = UploadStarted, description = "send the missing chunks, then commit"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn start_upload(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<UploadStart>,
) -> Result<(StatusCode, Json<UploadStarted>), ApiError> {
    let started = st.files.start_upload(c.cx(), req).await?;
    Ok((StatusCode::CREATED, Json(started)))
}

#[utoipa::path(put, path = "/v1/files/uploads/{upload}/chunks/{chunk}", tag = "files",
    params(("upload" = String, Path), ("chunk" = String, Path, description = "the chunk's BLAKE3, hex")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "stored (or already there)"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_chunk(
    State(st): St,
    c: Caller,
    Path((upload, chunk)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<StatusCode, ApiError> {
    let max = st.files.config().chunk_size_bytes_max;
    // The general body limit is for JSON; chunks have their own, read here.
    let bytes = crate::extract::read_body(body, max, || {
        format!("chunks are at most {max} bytes (files.chunk_size_bytes_max)")
    })
    .await?;
    st.files
        .put_chunk(c.cx(), &upload, &chunk, bytes.to_vec())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/files/uploads/{upload}/commit", tag = "files",
    params(("upload" = String, Path)),
    responses((status = 200, body = FileInfo, description = "the file's new version"), (status = 409, body = ErrorBody, description = "chunks missing, or the file changed since the upload's base version"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn commit(
    State(st): St,
    c: Caller,
    Path(upload): Path<String>,
) -> Result<Json<FileInfo>, ApiError> {
    Ok(Json(st.files.commit(c.cx(), &upload).await?))
}

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// A space id (default: the caller's own).
    #[serde(default)]
    pub space: Option<String>,
    /// A folder, e.g. `/docs` (default: everything).
    #[serde(default)]
    pub folder: Option<String>,
}

#[utoipa::path(get, path = "/v1/files", tag = "files", params(ListQuery),
    responses((status = 200, body = Vec<FileInfo>), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(st): St,
    c: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<FileInfo>>, ApiError> {
    let folder = q.folder.unwrap_or_else(|| "/".into());
    Ok(Json(
        st.files.list(c.cx(), q.space.as_deref(), &folder).await?,
    ))
}

#[utoipa::path(get, path = "/v1/files/spaces", tag = "files",
    responses((status = 200, body = Vec<SpaceInfo>, description = "the caller's own space first, then those made to share")), security(("bearer" = [])))]
pub async fn spaces(State(st): St, c: Caller) -> Result<Json<Vec<SpaceInfo>>, ApiError> {
    Ok(Json(st.files.spaces(c.cx()).await?))
}

#[utoipa::path(post, path = "/v1/files/spaces", tag = "files", request_body = SpaceCreate,
    responses((status = 201, body = SpaceInfo), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_space(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<SpaceCreate>,
) -> Result<(StatusCode, Json<SpaceInfo>), ApiError> {
    let space = st.files.create_space(c.cx(), &req.name).await?;
    Ok((StatusCode::CREATED, Json(space)))
}

#[utoipa::path(put, path = "/v1/files/spaces/{space}/members", tag = "files",
    params(("space" = String, Path)), request_body = SpaceShare,
    responses((status = 204), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn share_space(
    State(st): St,
    c: Caller,
    Path(space): Path<String>,
    ApiJson(req): ApiJson<SpaceShare>,
) -> Result<StatusCode, ApiError> {
    st.files
        .share(c.cx(), &space, &req.username, &req.access)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
pub struct RemoveQuery {
    #[serde(default)]
    pub space: Option<String>,
    pub path: String,
    /// Only if the file is still at this version (409 otherwise).
    #[serde(default)]
    pub version: Option<i64>,
}

#[utoipa::path(delete, path = "/v1/files", tag = "files", params(RemoveQuery),
    responses((status = 200, body = FileInfo, description = "moved to the trash"), (status = 409, body = ErrorBody, description = "the file is no longer at `version`"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove(
    State(st): St,
    c: Caller,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<Json<FileInfo>, ApiError> {
    Ok(Json(
        st.files
            .remove(c.cx(), q.space.as_deref(), &q.path, q.version)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/files/restore", tag = "files", request_body = FileRestore,
    responses((status = 200, body = FileInfo), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn restore(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<FileRestore>,
) -> Result<Json<FileInfo>, ApiError> {
    Ok(Json(
        st.files
            .restore(c.cx(), req.space.as_deref(), &req.path, req.version)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/files/move", tag = "files", request_body = FileMove,
    responses((status = 200, body = Vec<FileInfo>, description = "the moved files at their new paths"), (status = 409, body = ErrorBody), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn move_files(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<FileMove>,
) -> Result<Json<Vec<FileInfo>>, ApiError> {
    Ok(Json(
        st.files
            .rename(c.cx(), req.space.as_deref(), &req.from, &req.to)
            .await?,
    ))
}

#[derive(Deserialize, IntoParams)]
pub struct PathQuery {
    /// A space id (default: the caller's own).
    #[serde(default)]
    pub space: Option<String>,
    pub path: String,
    /// A version number (default: the newest).
    #[serde(default)]
    pub version: Option<i64>,
}

#[utoipa::path(get, path = "/v1/files/versions", tag = "files", params(PathQuery),
    responses((status = 200, body = Vec<FileVersionInfo>), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn versions(
    State(st): St,
    c: Caller,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Json<Vec<FileVersionInfo>>, ApiError> {
    Ok(Json(
        st.files
            .versions(c.cx(), q.space.as_deref(), &q.path)
            .await?,
    ))
}

/// `bytes=A-B`, `bytes=A-` or `bytes=-N` against a length: the inclusive range, or `None` when
/// it cannot be satisfied. Multiple ranges are not supported (answered with the whole file).
pub(crate) fn parse_range(value: &str, len: u64) -> Option<Option<(u64, u64)>> {
    let spec = value.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let range = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 || len == 0 {
                return Some(None);
            }
            (len.saturating_sub(n), len - 1)
        }
        (a, "") => (a.parse().ok()?, len.saturating_sub(1)),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(len.saturating_sub(1)),
        ),
    };
    Some((range.0 <= range.1 && range.0 < len).then_some(range))
}

#[utoipa::path(get, path = "/v1/files/content", tag = "files", params(PathQuery),
    responses((status = 200, description = "the file's bytes"), (status = 206, description = "the requested range"), (status = 416, description = "the range is outside the file"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn content(
    State(st): St,
    c: Caller,
    ApiQuery(q): ApiQuery<PathQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, version) = st
        .files
        .open(c.cx(), q.space.as_deref(), &q.path, q.version)
        .await?;
    Ok(serve(&st, &headers, &version))
}

#[derive(Deserialize, IntoParams)]
pub struct PutQuery {
    /// A space id (default: the caller's own).
    #[serde(default)]
    pub space: Option<String>,
    pub path: String,
    /// Commit only if the file is still at this version (0: only if it does not exist yet).
    #[serde(default)]
    pub base_version: Option<i64>,
}

#[utoipa::path(put, path = "/v1/files/content", tag = "files", params(PutQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the whole file; the server chunks and hashes it (for clients that cannot, such as the web console)"),
    responses((status = 200, body = FileInfo, description = "the file's new version"), (status = 409, body = ErrorBody, description = "the file changed since base_version"), (status = 413, body = ErrorBody), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_content(
    State(st): St,
    c: Caller,
    ApiQuery(q): ApiQuery<PutQuery>,
    body: axum::body::Body,
) -> Result<Json<FileInfo>, ApiError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let max = st.files.config().file_size_bytes_max;
    let internal =
        |e: std::io::Error| ApiError::new(ErrorCode::Internal, format!("spooling the upload: {e}"));
    // Spooled to an unnamed file in the data directory (gone when dropped), never held whole
    // in memory.
    let dir = st.config.server.data_dir.join("tmp");
    std::fs::create_dir_all(&dir).map_err(internal)?;
    let spool = tempfile::tempfile_in(&dir).map_err(internal)?;
    let mut out = tokio::fs::File::from_std(spool.try_clone().map_err(internal)?);
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!("the upload was cut off: {e}; send it again"),
            )
        })?;
        written += piece.len() as u64;
        if written > max {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("files are at most {max} bytes (files.file_size_bytes_max)"),
            ));
        }
        out.write_all(&piece).await.map_err(internal)?;
    }
    out.flush().await.map_err(internal)?;
    let info = st
        .files
        .put_file(c.cx(), q.space.as_deref(), &q.path, q.base_version, spool)
        .await?;
    Ok(Json(info))
}

#[utoipa::path(get, path = "/v1/files/chunks", tag = "files", params(PathQuery),
    responses((status = 200, body = FileChunks, description = "the version's content chunks, in order: a client holding some of them fetches only the rest, by Range"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn chunks(
    State(st): St,
    c: Caller,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Json<FileChunks>, ApiError> {
    let (_, v) = st
        .files
        .open(c.cx(), q.space.as_deref(), &q.path, q.version)
        .await?;
    Ok(Json(FileChunks {
        version: v.version,
        size: v.size,
        blake3: v.blake3,
        chunks: v
            .chunks
            .iter()
            .map(|ch| ChunkInfo {
                id: sb_blob::BlobId::from_bytes(ch.id).to_string(),
                len: ch.len,
            })
            .collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
pub struct ChangesQuery {
    #[serde(default)]
    pub space: Option<String>,
    /// The last `seq` seen (default 0: from the beginning).
    #[serde(default)]
    pub after: i64,
}

#[utoipa::path(get, path = "/v1/files/changes", tag = "files", params(ChangesQuery),
    responses((status = 200, body = Vec<FileChange>, description = "oldest first, at most files.changes_page_max"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn changes(
    State(st): St,
    c: Caller,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> Result<Json<Vec<FileChange>>, ApiError> {
    Ok(Json(
        st.files
            .changes(c.cx(), q.space.as_deref(), q.after)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/files/links", tag = "files", request_body = LinkCreate,
    responses((status = 201, body = LinkCreated), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_link(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<LinkCreate>,
) -> Result<(StatusCode, Json<LinkCreated>), ApiError> {
    let link = st.files.create_link(c.cx(), req).await?;
    Ok((StatusCode::CREATED, Json(link)))
}

#[utoipa::path(get, path = "/v1/files/links/{token}", tag = "files",
    params(("token" = String, Path, description = "the link's token; no other credential")),
    responses((status = 200, description = "the file's bytes"), (status = 206, description = "the requested range"), (status = 404, body = ErrorBody, description = "unknown or expired")))]
pub async fn link_download(
    State(st): St,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let version = st.files.open_link(&token, crate::now()).await?;
    Ok(serve(&st, &headers, &version))
}

/// A version's content, whole or the single range asked for, streamed chunk by chunk.
fn serve(st: &AppState, headers: &HeaderMap, version: &sb_store::files::VersionRecord) -> Response {
    let len = version.size;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, len));
    let (start, end, status) = match range {
        Some(Some((a, b))) => (a, b + 1, StatusCode::PARTIAL_CONTENT),
        Some(None) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
        None => (0, len, StatusCode::OK),
    };
    // The chunks overlapping [start, end), with the part of each to send.
    let mut parts = Vec::new();
    let mut at = 0u64;
    for ch in &version.chunks {
        let (lo, hi) = (at, at + u64::from(ch.len));
        if hi > start && lo < end {
            let from = start.saturating_sub(lo) as usize;
            let to = (end.min(hi) - lo) as usize;
            parts.push((sb_blob::BlobId::from_bytes(ch.id), from, to));
        }
        at = hi;
    }
    let blobs = st.files.blobs().clone();
    let stream =
        futures_util::stream::unfold((parts.into_iter(), blobs), |(mut it, blobs)| async move {
            let (id, from, to) = it.next()?;
            let item = match blobs.get_shared(id).await {
                Ok(Some(b)) if b.len() >= to => {
                    Ok(axum::body::Bytes::copy_from_slice(&b[from..to]))
                }
                Ok(_) => Err(std::io::Error::other(format!("chunk {id} is missing"))),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            if let Err(e) = &item {
                tracing::error!(error = %e, "a file download stopped");
            }
            Some((item, (it, blobs)))
        });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: String| {
        if let Ok(v) = v.parse() {
            h.insert(k, v);
        }
    };
    set(h, header::CONTENT_TYPE, "application/octet-stream".into());
    set(h, header::CONTENT_LENGTH, (end - start).to_string());
    set(h, header::ACCEPT_RANGES, "bytes".into());
    set(h, header::ETAG, format!("\"{}\"", version.blake3));
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff".into());
    set(
        h,
        header::HeaderName::from_static("x-file-version"),
        version.version.to_string(),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            h,
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_parse_like_http_says() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Some((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Some((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(None), "past the end");
        assert_eq!(
            parse_range("bytes=0-1,5-6", 100),
            None,
            "several: the whole file"
        );
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
