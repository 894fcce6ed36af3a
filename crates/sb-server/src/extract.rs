//! Request extractors: JSON bodies with our error shape, the caller's origin and identity.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use sb_auth::{AuthError, Ctx, Origin, Subject};
use sb_core::ErrorCode;
use sb_core::UnixMillis;
use serde::de::DeserializeOwned;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// A JSON body; any failure becomes an [`ApiError`] with a stable code.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// Query parameters with our error shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// Where the request came from (peer address and User-Agent).
pub struct ClientOrigin(pub Origin);

pub(crate) fn origin_of(parts: &Parts) -> Origin {
    let ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(Ipv4Addr::UNSPECIFIED.into());
    let client = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Origin { ip, client }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientOrigin(origin_of(parts)))
    }
}

/// The bearer token from `Authorization`, if any.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Unauthenticated)?;
    let value = value.to_str().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidToken,
            "the Authorization header is not text",
        )
    })?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "use Authorization: Bearer <token>",
        ));
    }
    Ok(token.trim())
}

/// An authenticated request: who, from where, and when it arrived.
pub struct Caller {
    pub subject: Subject,
    pub origin: Origin,
    pub now: UnixMillis,
}

impl Caller {
    pub fn cx(&self) -> Ctx<'_> {
        Ctx {
            subject: &self.subject,
            origin: &self.origin,
            now: self.now,
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let origin = origin_of(parts);
        let token = bearer(parts)?;
        let now = crate::now();
        let subject = state.auth.authenticate(token, origin.ip, now).await?;
        Ok(Caller {
            subject,
            origin,
            now,
        })
    }
}
