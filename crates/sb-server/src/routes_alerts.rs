//! The native alerting API: alerts, rule reload, silences.

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, Caller};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sb_core::ErrorCode;
use sb_monitor::MonitorError;
use sb_monitor::alerts::{AlertState, Silence};
use sb_proto::*;
use std::sync::Arc;

type St = State<Arc<AppState>>;

impl From<MonitorError> for ApiError {
    fn from(e: MonitorError) -> Self {
        match e {
            MonitorError::Auth(a) => a.into(),
            MonitorError::BadData(m) => ApiError::new(ErrorCode::InvalidArgument, m),
            MonitorError::Query(q) => ApiError::new(ErrorCode::InvalidArgument, q.to_string()),
            MonitorError::RateLimited {
                retry_after_secs, ..
            } => ApiError {
                retry_after_secs: Some(retry_after_secs),
                ..ApiError::new(ErrorCode::RateLimited, e.to_string())
            },
            MonitorError::Timeout => ApiError::new(ErrorCode::Timeout, e.to_string()),
            other => {
                tracing::error!(error = %other, "monitoring request failed");
                ApiError::new(
                    ErrorCode::Internal,
                    "internal error; the server log has details",
                )
            }
        }
    }
}

pub fn silence_info(s: &Silence, now: i64) -> SilenceInfo {
    let state = if s.active(now) {
        "active"
    } else if s.starts_at_ms > now {
        "pending"
    } else {
        "expired"
    };
    SilenceInfo {
        id: s.id.clone(),
        matchers: s.matchers.clone(),
        starts_at_ms: s.starts_at_ms,
        ends_at_ms: s.ends_at_ms,
        created_by: s.created_by.clone(),
        comment: s.comment.clone(),
        state: state.into(),
    }
}

pub fn state_name(s: AlertState) -> &'static str {
    match s {
        AlertState::Pending => "pending",
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    }
}

#[utoipa::path(get, path = "/v1/alerts", tag = "alerts",
    responses((status = 200, body = Vec<AlertInfo>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn alerts(State(st): St, c: Caller) -> Result<Json<Vec<AlertInfo>>, ApiError> {
    let list = st.monitor.alerts(c.cx()).await?;
    Ok(Json(
        list.into_iter()
            .map(|(a, silenced)| AlertInfo {
                state: state_name(a.state).into(),
                labels: a
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                annotations: a.annotations.clone(),
                value: a.value,
                active_at_ms: a.active_at_ms,
                fired_at_ms: a.fired_at_ms,
                resolved_at_ms: a.resolved_at_ms,
                silenced,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/alerts/reload", tag = "alerts",
    responses((status = 200, body = RulesReloaded), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn reload(State(st): St, c: Caller) -> Result<Json<RulesReloaded>, ApiError> {
    let (groups, rules) = st.monitor.reload_rules(Some(c.cx())).await?;
    tracing::info!(groups, rules, user = %c.subject.username, "rules reloaded");
    Ok(Json(RulesReloaded { groups, rules }))
}

#[utoipa::path(get, path = "/v1/alerts/silences", tag = "alerts",
    responses((status = 200, body = Vec<SilenceInfo>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn silences(State(st): St, c: Caller) -> Result<Json<Vec<SilenceInfo>>, ApiError> {
    let list = st.monitor.silences(c.cx()).await?;
    Ok(Json(
        list.iter().map(|s| silence_info(s, c.now.0)).collect(),
    ))
}

#[utoipa::path(post, path = "/v1/alerts/silences", tag = "alerts", request_body = SilenceCreate,
    responses((status = 201, body = SilenceInfo), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_silence(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<SilenceCreate>,
) -> Result<(StatusCode, Json<SilenceInfo>), ApiError> {
    let starts = req.starts_at_ms.unwrap_or(c.now.0);
    let ends = match (req.ends_at_ms, req.duration_secs) {
        (Some(e), None) => e,
        (None, Some(d)) => starts.saturating_add((d as i64).saturating_mul(1000)),
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "give either ends_at_ms or duration_secs",
            ));
        }
    };
    let s = st
        .monitor
        .add_silence(c.cx(), req.matchers, req.starts_at_ms, ends, req.comment)
        .await?;
    Ok((StatusCode::CREATED, Json(silence_info(&s, c.now.0))))
}

#[utoipa::path(delete, path = "/v1/alerts/silences/{id}", tag = "alerts",
    params(("id" = String, Path, description = "silence id")),
    responses((status = 204), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn expire_silence(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.monitor.expire_silence(c.cx(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
