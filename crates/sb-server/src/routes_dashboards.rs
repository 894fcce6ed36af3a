//! `/v1/dashboards`: the web console's saved dashboards, each user's own. The server checks
//! their shape and limits and keeps them; the console runs their queries.

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, Caller};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sb_auth::{Action, Resource};
use sb_core::ErrorCode;
use sb_proto::{Dashboard, ErrorBody};
use sb_store::DashboardRecord;
use std::sync::Arc;

type St = State<Arc<AppState>>;

const NAME_MAX: usize = 100;

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, msg)
}

fn check(d: &Dashboard, panels_max: usize) -> Result<(), ApiError> {
    let name_ok = |s: &str| {
        !s.trim().is_empty() && s.chars().count() <= NAME_MAX && !s.chars().any(char::is_control)
    };
    if !name_ok(&d.name) {
        return Err(invalid(format!(
            "a dashboard name is 1 to {NAME_MAX} characters, without control characters"
        )));
    }
    if d.panels.len() > panels_max {
        return Err(invalid(format!(
            "at most {panels_max} panels (monitoring.dashboard_panels_max)"
        )));
    }
    if d.range_secs == 0 {
        return Err(invalid("range_secs must be positive"));
    }
    for p in &d.panels {
        if p.query.trim().is_empty() {
            return Err(invalid(format!("panel {:?} has no query", p.title)));
        }
        sb_monitor::promql::parse(&p.query)
            .map_err(|e| invalid(format!("panel {:?}: {e}", p.title)))?;
    }
    Ok(())
}

async fn own(st: &AppState, c: &Caller, action: Action) -> Result<(), ApiError> {
    let owner = c.subject.user_id;
    st.auth
        .authorize(c.cx(), action, &Resource::Account { owner })
        .await?;
    Ok(())
}

#[utoipa::path(get, path = "/v1/dashboards", tag = "monitoring",
    responses((status = 200, body = Vec<Dashboard>), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(st): St, c: Caller) -> Result<Json<Vec<Dashboard>>, ApiError> {
    own(&st, &c, Action::Read).await?;
    let rows = st
        .auth
        .store()
        .dashboards(c.subject.user_id)
        .await
        .map_err(sb_auth::AuthError::from)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        // Written by `put` after checking, so it parses; one that does not is skipped.
        if let Ok(mut d) = serde_json::from_str::<Dashboard>(&r.body) {
            d.name = r.name;
            d.updated_at_ms = r.updated_at.0;
            out.push(d);
        }
    }
    Ok(Json(out))
}

#[utoipa::path(put, path = "/v1/dashboards/{name}", tag = "monitoring", request_body = Dashboard,
    params(("name" = String, Path)),
    responses((status = 200, body = Dashboard), (status = 409, body = ErrorBody, description = "too many dashboards"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put(
    State(st): St,
    c: Caller,
    Path(name): Path<String>,
    ApiJson(mut d): ApiJson<Dashboard>,
) -> Result<Json<Dashboard>, ApiError> {
    own(&st, &c, Action::Update).await?;
    d.name = name;
    d.updated_at_ms = c.now.0;
    let cfg = &st.config.monitoring;
    check(&d, cfg.dashboard_panels_max)?;
    let body =
        serde_json::to_string(&d).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let stored = st
        .auth
        .store()
        .put_dashboard(
            DashboardRecord {
                user_id: c.subject.user_id,
                name: d.name.clone(),
                body,
                updated_at: c.now,
            },
            cfg.dashboards_per_user_max,
        )
        .await
        .map_err(sb_auth::AuthError::from)?;
    if !stored {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "you have {} dashboards already (monitoring.dashboards_per_user_max); delete one first",
                cfg.dashboards_per_user_max
            ),
        ));
    }
    Ok(Json(d))
}

#[utoipa::path(delete, path = "/v1/dashboards/{name}", tag = "monitoring",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(st): St,
    c: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    own(&st, &c, Action::Update).await?;
    let gone = st
        .auth
        .store()
        .delete_dashboard(c.subject.user_id, &name)
        .await
        .map_err(sb_auth::AuthError::from)?;
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no dashboard {name:?}"),
        ))
    }
}
