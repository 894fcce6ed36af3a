//! The device registry over HTTP: register (the secret is in the answer, once), list, show,
//! rotate the secret, revoke.

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, Caller};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sb_proto::*;
use sb_store::devices::DeviceRecord;
use std::sync::Arc;

type St = State<Arc<AppState>>;

async fn info(st: &AppState, d: &DeviceRecord) -> DeviceInfo {
    let owner = st
        .auth
        .store()
        .user_by_id(d.owner)
        .await
        .ok()
        .flatten()
        .map(|u| u.username)
        .unwrap_or_default();
    DeviceInfo {
        id: d.id.to_string(),
        name: d.name.clone(),
        group: d.group.clone(),
        tags: d.tags.iter().cloned().collect(),
        owner,
        created_at_ms: d.created_at.0,
        revoked: d.revoked_at.is_some(),
        online: st.commands.is_online(d.id),
        health: st.devices.health_state(d, crate::now()).to_string(),
        health_report: d
            .health
            .as_deref()
            .and_then(|h| serde_json::from_str(h).ok()),
        health_at_ms: d.health_at.map(|t| t.0),
        last_seen_at_ms: d.last_seen_at.map(|t| t.0),
        firmware: st
            .devices_store
            .twin(d.id)
            .await
            .ok()
            .flatten()
            .as_ref()
            .and_then(crate::twins::reported_firmware),
    }
}

fn secret(d: &DeviceRecord, s: sb_core::Secret<String>) -> DeviceSecret {
    DeviceSecret {
        id: d.id.to_string(),
        name: d.name.clone(),
        secret: s.expose().to_string(),
    }
}

#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = DeviceRegister,
    responses((status = 201, body = DeviceSecret, description = "the device's id (MQTT user name) and secret (MQTT password), shown only now"), (status = 409, body = ErrorBody, description = "the name is taken"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn register(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<DeviceRegister>,
) -> Result<(StatusCode, Json<DeviceSecret>), ApiError> {
    let (d, s) = st
        .devices
        .register(
            c.cx(),
            &req.name,
            &req.group,
            req.tags.into_iter().collect(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(secret(&d, s))))
}

#[utoipa::path(get, path = "/v1/devices", tag = "devices",
    responses((status = 200, body = Vec<DeviceInfo>, description = "your devices (every device, for admins)"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(st): St, c: Caller) -> Result<Json<Vec<DeviceInfo>>, ApiError> {
    let mut out = Vec::new();
    for d in st.devices.list(c.cx()).await? {
        out.push(info(&st, &d).await);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/devices/{device}", tag = "devices",
    params(("device" = String, Path, description = "id or name")),
    responses((status = 200, body = DeviceInfo), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(st): St,
    c: Caller,
    Path(device): Path<String>,
) -> Result<Json<DeviceInfo>, ApiError> {
    let d = st.devices.get(c.cx(), &device).await?;
    Ok(Json(info(&st, &d).await))
}

#[utoipa::path(post, path = "/v1/devices/{device}/rotate", tag = "devices",
    params(("device" = String, Path, description = "id or name")),
    responses((status = 200, body = DeviceSecret, description = "the new secret; the old one no longer works"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate(
    State(st): St,
    c: Caller,
    Path(device): Path<String>,
) -> Result<Json<DeviceSecret>, ApiError> {
    let (d, s) = st.devices.rotate(c.cx(), &device).await?;
    Ok(Json(secret(&d, s)))
}

#[utoipa::path(delete, path = "/v1/devices/{device}", tag = "devices",
    params(("device" = String, Path, description = "id or name")),
    responses((status = 200, body = DeviceInfo, description = "revoked: disconnected now, and refused from now on"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(st): St,
    c: Caller,
    Path(device): Path<String>,
) -> Result<Json<DeviceInfo>, ApiError> {
    let d = st.devices.revoke(c.cx(), &device).await?;
    Ok(Json(info(&st, &d).await))
}

#[utoipa::path(post, path = "/v1/devices/{device}/commands", tag = "devices",
    params(("device" = String, Path, description = "id or name")), request_body = CommandCreate,
    responses((status = 201, body = CommandInfo, description = "queued or sent; with `wait`, finished"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn call(
    State(st): St,
    c: Caller,
    Path(device): Path<String>,
    crate::extract::ApiJson(req): crate::extract::ApiJson<CommandCreate>,
) -> Result<(StatusCode, Json<CommandInfo>), ApiError> {
    let mut rec = st.commands.create(c.cx(), &device, &req).await?;
    if req.wait {
        // Until it finishes (its expiry while queued plus its timeout once sent, at most), but
        // no longer than 25 s in one request: then GET the command with `wait_secs`.
        let wait = std::time::Duration::from_millis(
            ((rec.expires_at.0 - rec.created_at.0 + rec.timeout_ms).max(0) as u64 + 1000)
                .min(25_000),
        );
        rec = st
            .commands
            .get(c.cx(), &device, &rec.id.to_string(), Some(wait))
            .await?;
    }
    Ok((StatusCode::CREATED, Json(crate::commands::info(&rec))))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct CommandQuery {
    /// Answer once the command has finished, or after this many seconds (at most 60).
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

#[utoipa::path(get, path = "/v1/devices/{device}/commands/{command}", tag = "devices",
    params(("device" = String, Path), ("command" = String, Path), CommandQuery),
    responses((status = 200, body = CommandInfo), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn command(
    State(st): St,
    c: Caller,
    Path((device, command)): Path<(String, String)>,
    crate::extract::ApiQuery(q): crate::extract::ApiQuery<CommandQuery>,
) -> Result<Json<CommandInfo>, ApiError> {
    let wait = q
        .wait_secs
        .map(|s| std::time::Duration::from_secs(s.min(60)));
    let rec = st.commands.get(c.cx(), &device, &command, wait).await?;
    Ok(Json(crate::commands::info(&rec)))
}

#[utoipa::path(get, path = "/v1/devices/{device}/twin", tag = "devices",
    params(("device" = String, Path, description = "id or name")),
    responses((status = 200, body = TwinInfo), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn twin(
    State(st): St,
    c: Caller,
    Path(device): Path<String>,
) -> Result<Json<TwinInfo>, ApiError> {
    let t = st.twins.get(c.cx(), &device).await?;
    Ok(Json(crate::twins::info(&t)))
}

#[utoipa::path(patch, path = "/v1/devices/{device}/twin", tag = "devices",
    params(("device" = String, Path, description = "id or name")), request_body = TwinPatch,
    responses((status = 200, body = TwinInfo), (status = 409, body = ErrorBody, description = "the desired version moved on"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_desired(
    State(st): St,
    c: Caller,
    Path(device): Path<String>,
    crate::extract::ApiJson(req): crate::extract::ApiJson<TwinPatch>,
) -> Result<Json<TwinInfo>, ApiError> {
    let t = st
        .twins
        .set_desired(c.cx(), &device, &req.desired, req.version)
        .await?;
    Ok(Json(crate::twins::info(&t)))
}

#[utoipa::path(post, path = "/v1/devices/{device}/certificate", tag = "devices",
    params(("device" = String, Path, description = "id or name")),
    responses((status = 201, body = DeviceCertificate, description = "a client certificate and its key, shown only now; the device's earlier certificate stops working"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn certificate(
    State(st): St,
    c: Caller,
    Path(device): Path<String>,
) -> Result<(StatusCode, Json<DeviceCertificate>), ApiError> {
    let days = st.config.mqtt.device_cert_validity_days.max(1);
    let mut issued = None;
    let d = st
        .devices
        .set_cert(c.cx(), &device, |d| {
            let i = st
                .device_ca
                .issue(&d.id.to_string(), c.now, days)
                .map_err(|e| format!("issuing a certificate: {e:#}"))?;
            let out = (i.fingerprint.clone(), i.expires_at);
            issued = Some(i);
            Ok(out)
        })
        .await?;
    let i = issued
        .ok_or_else(|| ApiError::new(sb_core::ErrorCode::Internal, "no certificate was issued"))?;
    Ok((
        StatusCode::CREATED,
        Json(DeviceCertificate {
            device_id: d.id.to_string(),
            name: d.name.clone(),
            certificate_pem: i.cert_pem,
            private_key_pem: i.key_pem,
            ca_pem: st.device_ca.cert_pem.clone(),
            fingerprint: i.fingerprint,
            expires_at_ms: i.expires_at.0,
        }),
    ))
}
