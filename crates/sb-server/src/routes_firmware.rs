//! Firmware images over HTTP: upload (admins; the operator's Ed25519 signature is checked
//! before anything is stored), list, and download with HTTP Range (users with a token, or a
//! device with HTTP Basic `id:secret`).

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiQuery, Caller};
use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sb_auth::{Action, AuthError, Ctx, Origin, Resource, Subject};
use sb_blob::{BlobId, BlobStore};
use sb_core::{ErrorCode, UnixMillis};
use sb_proto::{ErrorBody, FirmwareInfo, RolloutCreate, RolloutInfo};
use sb_store::StoreError;
use sb_store::devices::FirmwareRecord;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::IntoParams;

type St = State<Arc<AppState>>;

fn info(f: &FirmwareRecord) -> FirmwareInfo {
    FirmwareInfo {
        version: f.version.clone(),
        size: f.size,
        sha256: f.sha256.clone(),
        signature: f.signature.clone(),
        public_key: f.public_key.clone(),
        created_at_ms: f.created_at.0,
    }
}

/// A user with a bearer token, or a device with HTTP Basic `id:secret`.
pub struct UserOrDevice {
    subject: Subject,
    origin: Origin,
    now: UnixMillis,
}

impl FromRequestParts<Arc<AppState>> for UserOrDevice {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let basic = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .map(str::to_string);
        if let Some(b64) = basic {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(AuthError::InvalidCredentials)?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or(AuthError::InvalidCredentials)?;
            let (ip, now) = (crate::extract::origin_of(parts).ip, crate::now());
            state.auth.credential_attempt(ip, now)?;
            let Some((_, subject)) = state.devices.authenticate(id, secret.as_bytes()).await else {
                state.auth.credential_failed(ip, now);
                return Err(AuthError::InvalidCredentials.into());
            };
            return Ok(UserOrDevice {
                subject,
                origin: crate::extract::origin_of(parts),
                now: crate::now(),
            });
        }
        let c = Caller::from_request_parts(parts, state).await?;
        Ok(UserOrDevice {
            subject: c.subject,
            origin: c.origin,
            now: c.now,
        })
    }
}

#[derive(Deserialize, IntoParams)]
pub struct UploadQuery {
    /// The version, e.g. 1.4.2 (letters, digits, '.', '-', '_', '+').
    pub version: String,
}

#[utoipa::path(post, path = "/v1/firmware", tag = "devices", params(UploadQuery,
        ("x-firmware-signature" = String, Header, description = "Ed25519 over the image's SHA-256, hex"),
        ("x-firmware-public-key" = String, Header, description = "the operator key, hex")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = FirmwareInfo), (status = 400, body = ErrorBody, description = "the signature does not verify"), (status = 409, body = ErrorBody, description = "that version exists"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload(
    State(st): St,
    c: Caller,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<FirmwareInfo>), ApiError> {
    st.auth
        .authorize(c.cx(), Action::Create, &Resource::Firmware)
        .await?;
    let cfg = &st.config.mqtt;
    let v = &q.version;
    if v.is_empty()
        || v.len() > 64
        || !v
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_' | '+'))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "a version is 1 to 64 letters, digits, '.', '-', '_' or '+'",
        ));
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("the {name} header is missing (sb firmware upload sets it)"),
                )
            })
    };
    let (signature, public_key) = (
        header("x-firmware-signature")?,
        header("x-firmware-public-key")?,
    );
    if !cfg.firmware_keys.is_empty()
        && !cfg
            .firmware_keys
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&public_key))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "that key is not one of mqtt.firmware_keys",
        ));
    }
    let max = cfg.firmware_size_bytes_max;
    let image = crate::extract::read_body(body, max, || {
        format!("firmware images are at most {max} bytes (mqtt.firmware_size_bytes_max)")
    })
    .await?;
    sb_devices::firmware::verify(&image, &signature, &public_key)
        .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e))?;
    let sha256 = sb_devices::firmware::sha256_hex(&image);
    let size = image.len() as u64;
    let blob = st
        .blobs
        .put(image.to_vec())
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let rec = FirmwareRecord {
        version: v.clone(),
        size,
        sha256,
        blob: *blob.as_bytes(),
        signature,
        public_key,
        created_by: c.subject.user_id,
        created_at: c.now,
    };
    match st.devices_store.create_firmware(rec.clone()).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("firmware {v} exists; versions are never replaced"),
            ));
        }
        Err(e) => return Err(ApiError::new(ErrorCode::Internal, e.to_string())),
    }
    st.auth
        .record(
            c.cx(),
            "firmware.upload",
            v.clone(),
            serde_json::json!({"size": size}),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(info(&rec))))
}

#[utoipa::path(get, path = "/v1/firmware", tag = "devices",
    responses((status = 200, body = Vec<FirmwareInfo>, description = "newest first"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(st): St, c: Caller) -> Result<Json<Vec<FirmwareInfo>>, ApiError> {
    st.auth
        .authorize(c.cx(), Action::Read, &Resource::Firmware)
        .await?;
    let all = st
        .devices_store
        .firmwares()
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Json(all.iter().map(info).collect()))
}

#[utoipa::path(get, path = "/v1/firmware/{version}/image", tag = "devices",
    params(("version" = String, Path)),
    responses((status = 200, description = "the image"), (status = 206, description = "the requested range (resume)"), (status = 416, description = "the range is outside the image"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn image(
    State(st): St,
    who: UserOrDevice,
    Path(version): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cx = Ctx {
        subject: &who.subject,
        origin: &who.origin,
        now: who.now,
    };
    st.auth
        .authorize(cx, Action::Read, &Resource::Firmware)
        .await?;
    let f = st
        .devices_store
        .firmware(&version)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no firmware {version}")))?;
    let bytes = st
        .blobs
        .get(BlobId::from_bytes(f.blob))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Internal,
                "the firmware image is missing from storage",
            )
        })?;
    let len = bytes.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| crate::routes_files::parse_range(v, len));
    let (status, body, content_range) = match range {
        Some(Some(Some((a, b)))) => (
            StatusCode::PARTIAL_CONTENT,
            bytes[a as usize..=b as usize].to_vec(),
            Some(format!("bytes {a}-{b}/{len}")),
        ),
        Some(Some(None)) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response());
        }
        _ => (StatusCode::OK, bytes, None),
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    let mut set = |name: &str, value: String| {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::try_from(name),
            header::HeaderValue::from_str(&value),
        ) {
            h.insert(n, v);
        }
    };
    set("content-type", "application/octet-stream".into());
    set("accept-ranges", "bytes".into());
    set("etag", format!("\"{}\"", f.sha256));
    set("x-firmware-signature", f.signature.clone());
    set("x-firmware-public-key", f.public_key.clone());
    if let Some(cr) = content_range {
        set("content-range", cr);
    }
    Ok(resp)
}

fn rollout_id(s: &str) -> Result<sb_core::RolloutId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::new(ErrorCode::NotFound, format!("no rollout {s}")))
}

#[utoipa::path(post, path = "/v1/rollouts", tag = "devices", request_body = RolloutCreate,
    responses((status = 201, body = RolloutInfo, description = "started: its first batch is told"), (status = 404, body = ErrorBody, description = "no such firmware"), (status = 409, body = ErrorBody, description = "a rollout is running over that group"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_rollout(
    State(st): St,
    c: Caller,
    crate::extract::ApiJson(req): crate::extract::ApiJson<RolloutCreate>,
) -> Result<(StatusCode, Json<RolloutInfo>), ApiError> {
    let r = st.rollouts.create(c.cx(), &req).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

#[utoipa::path(get, path = "/v1/rollouts", tag = "devices",
    responses((status = 200, body = Vec<RolloutInfo>, description = "newest first, without device lists"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rollouts(State(st): St, c: Caller) -> Result<Json<Vec<RolloutInfo>>, ApiError> {
    Ok(Json(st.rollouts.list(c.cx()).await?))
}

#[utoipa::path(get, path = "/v1/rollouts/{id}", tag = "devices",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutInfo), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rollout(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutInfo>, ApiError> {
    Ok(Json(st.rollouts.get(c.cx(), rollout_id(&id)?).await?))
}

#[utoipa::path(post, path = "/v1/rollouts/{id}/cancel", tag = "devices",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutInfo, description = "cancelled: devices not yet told never are"), (status = 409, body = ErrorBody, description = "it has finished"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_rollout(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutInfo>, ApiError> {
    Ok(Json(st.rollouts.cancel(c.cx(), rollout_id(&id)?).await?))
}

#[derive(Deserialize, IntoParams)]
pub struct ResumeQuery {
    /// The new failure budget: a count (`3`) or a share of the group (`10%`) [default: as many
    /// more failures as the rollout first allowed].
    pub max_failures: Option<String>,
}

#[utoipa::path(post, path = "/v1/rollouts/{id}/resume", tag = "devices",
    params(("id" = String, Path), ResumeQuery),
    responses((status = 200, body = RolloutInfo, description = "running again: the next devices are told"), (status = 409, body = ErrorBody, description = "it is not halted"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume_rollout(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ResumeQuery>,
) -> Result<Json<RolloutInfo>, ApiError> {
    Ok(Json(
        st.rollouts
            .resume(c.cx(), rollout_id(&id)?, q.max_failures.as_deref())
            .await?,
    ))
}
