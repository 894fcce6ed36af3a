//! REST handlers under `/v1`, plus `/healthz`, `/readyz`, `/metrics`. Each handler decodes, calls
//! the auth service (which authorizes), and encodes; none decides access itself.

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Caller, ClientOrigin, bearer};
use crate::{AppState, now};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sb_auth::{Action, Credential, NewToken, RegisterInput, Resource, Scope};
use sb_core::{ErrorCode, Role, SessionId, TokenId};
use sb_proto::*;
use sb_store::{ApiTokenRecord, AuditFilter, AuditRecord, SessionRecord, UserRecord};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

type St = State<Arc<AppState>>;

pub fn user_info(u: &UserRecord) -> UserInfo {
    UserInfo {
        id: u.id.to_string(),
        username: u.username.clone(),
        display_name: u.display_name.clone(),
        status_text: u.status_text.clone(),
        role: u.role.as_str().to_string(),
        disabled: u.disabled,
        created_at_ms: u.created_at.0,
    }
}

fn session_info(s: &SessionRecord, current: &Credential) -> SessionInfo {
    SessionInfo {
        id: s.id.to_string(),
        created_at_ms: s.created_at.0,
        expires_at_ms: s.expires_at.0,
        last_used_at_ms: s.last_used_at.0,
        client: s.client.clone(),
        ip: s.ip.clone(),
        revoked: s.revoked_at.is_some(),
        current: *current == Credential::Session(s.id),
    }
}

fn token_info(t: &ApiTokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id.to_string(),
        name: t.name.clone(),
        scopes: t.scopes.clone(),
        created_at_ms: t.created_at.0,
        expires_at_ms: t.expires_at.map(|x| x.0),
        last_used_at_ms: t.last_used_at.map(|x| x.0),
        revoked: t.revoked_at.is_some(),
    }
}

fn audit_event(r: AuditRecord) -> AuditEvent {
    AuditEvent {
        seq: r.seq,
        at_ms: r.entry.at.0,
        actor: r.entry.actor,
        action: r.entry.action,
        target: r.entry.target,
        ip: r.entry.ip,
        detail: r.entry.detail,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

fn parse_id<T: FromStr>(s: &str, what: &str) -> Result<T, ApiError> {
    s.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("{what} is not a valid id"),
        )
    })
}

#[utoipa::path(post, path = "/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses((status = 201, body = UserInfo), (status = "4XX", body = ErrorBody)))]
pub async fn register(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<UserInfo>), ApiError> {
    let input = RegisterInput {
        username: req.username,
        password: req.password,
        setup_token: req.setup_token,
        invite: req.invite,
    };
    let (user, via_setup) = st.auth.register(input, &origin, now()).await?;
    if via_setup {
        match std::fs::remove_file(&st.setup_token_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "could not delete the used setup-token file"),
        }
        tracing::info!(user = %user.id, "admin account created with the setup token");
    }
    Ok((StatusCode::CREATED, Json(user_info(&user))))
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let (session, token, user) = st
        .auth
        .login(&req.username, req.password, &origin, now())
        .await?;
    let current = Credential::Session(session.id);
    Ok(Json(LoginResponse {
        token,
        session: session_info(&session, &current),
        user: user_info(&user),
    }))
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn logout(State(st): St, c: Caller) -> Result<StatusCode, ApiError> {
    st.auth.logout(c.cx()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/me", tag = "account",
    responses((status = 200, body = UserInfo), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn me(State(st): St, c: Caller) -> Result<Json<UserInfo>, ApiError> {
    let resource = sb_auth::Resource::Account {
        owner: c.subject.user_id,
    };
    st.auth
        .authorize(c.cx(), sb_auth::Action::Read, &resource)
        .await?;
    Ok(Json(user_info(&st.auth.me(&c.subject).await?)))
}

#[utoipa::path(patch, path = "/v1/me", tag = "account", request_body = ProfileUpdate,
    responses((status = 200, body = UserInfo), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn update_profile(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<ProfileUpdate>,
) -> Result<Json<UserInfo>, ApiError> {
    let u = st
        .auth
        .update_profile(c.cx(), req.display_name, req.status_text)
        .await?;
    Ok(Json(user_info(&u)))
}

#[utoipa::path(post, path = "/v1/me/password", tag = "account", request_body = PasswordChange,
    responses((status = 200, body = PasswordChanged), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn change_password(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<PasswordChange>,
) -> Result<Json<PasswordChanged>, ApiError> {
    let revoked = st
        .auth
        .change_password(c.cx(), req.current_password, req.new_password)
        .await?;
    Ok(Json(PasswordChanged {
        sessions_revoked: revoked.len(),
    }))
}

#[utoipa::path(get, path = "/v1/sessions", tag = "account",
    responses((status = 200, body = Vec<SessionInfo>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_sessions(State(st): St, c: Caller) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    let list = st.auth.list_sessions(c.cx()).await?;
    Ok(Json(
        list.iter()
            .map(|s| session_info(s, &c.subject.credential))
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "account",
    params(("id" = String, Path, description = "session id")),
    responses((status = 204), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn revoke_session(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: SessionId = parse_id(&id, "session id")?;
    st.auth.revoke_session(c.cx(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_tokens(State(st): St, c: Caller) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let list = st.auth.list_tokens(c.cx()).await?;
    Ok(Json(list.iter().map(token_info).collect()))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = TokenCreate,
    responses((status = 201, body = TokenCreated), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_token(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<TokenCreate>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let scopes = if req.scopes.is_empty() {
        vec![Scope::Read, Scope::Write]
    } else {
        req.scopes
            .iter()
            .map(|s| {
                Scope::parse(s).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidArgument,
                        format!("unknown scope '{s}'; use read, write or admin"),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    let new = NewToken {
        name: req.name,
        scopes,
        ttl: req.expires_in_secs.map(Duration::from_secs),
    };
    let (rec, token) = st.auth.create_token(c.cx(), new).await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: rec.id.to_string(),
            token,
            info: token_info(&rec),
        }),
    ))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "token id")),
    responses((status = 204), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn revoke_token(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: TokenId = parse_id(&id, "token id")?;
    st.auth.revoke_token(c.cx(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/admin/users", tag = "admin",
    responses((status = 200, body = Vec<UserInfo>), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn admin_list_users(State(st): St, c: Caller) -> Result<Json<Vec<UserInfo>>, ApiError> {
    let users = st.auth.list_users(c.cx()).await?;
    Ok(Json(users.iter().map(user_info).collect()))
}

#[utoipa::path(patch, path = "/v1/admin/users/{user}", tag = "admin", request_body = AdminUserUpdate,
    params(("user" = String, Path, description = "user id or username")),
    responses((status = 200, body = UserInfo), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn admin_update_user(
    State(st): St,
    c: Caller,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<AdminUserUpdate>,
) -> Result<Json<UserInfo>, ApiError> {
    if req.role.is_none() && req.disabled.is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "set role and/or disabled",
        ));
    }
    let mut result = None;
    if let Some(role) = &req.role {
        let role = Role::parse(role).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidArgument, "role must be admin or user")
        })?;
        result = Some(st.auth.set_role(c.cx(), &user, role).await?);
    }
    if let Some(disabled) = req.disabled {
        result = Some(st.auth.set_disabled(c.cx(), &user, disabled).await?);
    }
    let updated = result.ok_or_else(|| ApiError::new(ErrorCode::Internal, "no update"))?;
    let fresh = st
        .auth
        .store()
        .user_by_id(updated.id)
        .await
        .map_err(sb_auth::AuthError::from)?
        .unwrap_or(updated);
    Ok(Json(user_info(&fresh)))
}

#[utoipa::path(post, path = "/v1/admin/invites", tag = "admin", request_body = InviteCreate,
    responses((status = 201, body = InviteCreated), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn admin_create_invite(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<InviteCreate>,
) -> Result<(StatusCode, Json<InviteCreated>), ApiError> {
    let ttl = req.expires_in_secs.map(Duration::from_secs);
    let (invite, token) = st.auth.create_invite(c.cx(), ttl).await?;
    Ok((
        StatusCode::CREATED,
        Json(InviteCreated {
            id: invite.id.to_string(),
            token,
            expires_at_ms: invite.expires_at.0,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEvent>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn admin_audit(
    State(st): St,
    c: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let filter = AuditFilter {
        actor: q.actor,
        action_prefix: q.action,
        since: q.since_ms.map(sb_core::UnixMillis),
        until: q.until_ms.map(sb_core::UnixMillis),
        after_seq: q.after_seq,
        limit: q.limit.unwrap_or(100),
    };
    let records = st.auth.query_audit(c.cx(), filter).await?;
    Ok(Json(records.into_iter().map(audit_event).collect()))
}

#[utoipa::path(get, path = "/v1/admin/audit/verify", tag = "admin",
    responses((status = 200, body = AuditVerifyResult), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn admin_audit_verify(
    State(st): St,
    c: Caller,
) -> Result<Json<AuditVerifyResult>, ApiError> {
    let v = st.auth.verify_audit(c.cx()).await?;
    Ok(Json(AuditVerifyResult {
        ok: v.first_break.is_none(),
        checked: v.checked,
        first_broken_seq: v.first_break.as_ref().map(|b| b.seq()),
        problem: v.first_break.map(|b| match b {
            sb_store::audit::ChainBreak::Content { .. } => "content".to_string(),
            sb_store::audit::ChainBreak::Link { .. } => "link".to_string(),
        }),
    }))
}

#[utoipa::path(post, path = "/v1/admin/blobs/scrub", tag = "admin",
    responses((status = 200, body = ScrubReport), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn admin_scrub(State(st): St, c: Caller) -> Result<Json<ScrubReport>, ApiError> {
    st.auth
        .authorize(c.cx(), Action::Update, &Resource::Storage)
        .await?;
    let blobs = st.blobs.clone();
    let r = tokio::task::spawn_blocking(move || blobs.scrub(&mut |_, _| {}))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| {
            tracing::error!(error = %e, "scrub failed");
            ApiError::new(ErrorCode::Internal, format!("scrub failed: {e}"))
        })?;
    let report = ScrubReport {
        blobs: r.blobs,
        copies_checked: r.copies_checked,
        bytes_checked: r.bytes_checked,
        corrupt_copies: r.corrupt_copies,
        repaired_copies: r.repaired_copies,
        lost: r.lost.iter().map(ToString::to_string).collect(),
    };
    if report.corrupt_copies > 0 || !report.lost.is_empty() {
        tracing::warn!(
            corrupt = report.corrupt_copies,
            repaired = report.repaired_copies,
            lost = report.lost.len(),
            "scrub found damaged blobs"
        );
    }
    st.auth
        .record(
            c.cx(),
            "blobs.scrub",
            "storage".into(),
            serde_json::json!({"blobs": report.blobs, "corrupt": report.corrupt_copies, "repaired": report.repaired_copies, "lost": report.lost.len()}),
        )
        .await?;
    Ok(Json(report))
}

#[utoipa::path(post, path = "/v1/admin/blobs/gc", tag = "admin",
    responses((status = 200, body = GcReport), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn admin_gc(State(st): St, c: Caller) -> Result<Json<GcReport>, ApiError> {
    st.auth
        .authorize(c.cx(), Action::Update, &Resource::Storage)
        .await?;
    let r = crate::collect_garbage(&st).await.map_err(|e| {
        tracing::error!(error = %e, "garbage collection failed");
        ApiError::new(
            ErrorCode::Internal,
            format!("garbage collection failed: {e}"),
        )
    })?;
    st.auth
        .record(
            c.cx(),
            "blobs.gc",
            "storage".into(),
            serde_json::json!({"versions": r.versions_deleted, "files": r.files_purged, "blobs": r.blobs_deleted}),
        )
        .await?;
    Ok(Json(r))
}

#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, body = Health, description = "the process is up")))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(st): St) -> Result<Json<Health>, ApiError> {
    if !st.ready.load(Ordering::Acquire) || st.shutdown.is_cancelled() {
        return Err(ApiError::new(ErrorCode::Overloaded, "not ready"));
    }
    st.auth
        .store()
        .user_count()
        .await
        .map_err(sb_auth::AuthError::from)?;
    Ok(Json(Health {
        status: "ready".into(),
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, content_type = "text/plain", description = "Prometheus text exposition"),
              (status = 401, body = ErrorBody)))]
pub async fn metrics(
    State(st): St,
    req: axum::http::Request<axum::body::Body>,
) -> Result<Response, ApiError> {
    if let Some(expected) = &st.config.metrics.bearer_token {
        let (parts, _) = req.into_parts();
        let given = bearer(&parts)?;
        if !crate::extract::same_secret(given, expected.expose()) {
            return Err(ApiError::new(
                ErrorCode::InvalidToken,
                "wrong metrics token",
            ));
        }
    }
    st.metrics.observe_tsdb(st.monitor.db().stats());
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "system",
    responses((status = 200, description = "this document")))]
pub async fn openapi(State(st): St) -> Response {
    match st.openapi.get() {
        Some(doc) => Json(doc).into_response(),
        None => ApiError::new(ErrorCode::Internal, "document not built").into_response(),
    }
}
