//! Request extractors: JSON bodies with our error shape, the caller's origin and identity.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
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

/// A whole upload body of at most `max` bytes. Past the limit, `too_large` is the message
/// (it names the setting); a body that breaks off or stalls (see `lib::stall_limited`) says so.
pub async fn read_body(
    body: axum::body::Body,
    max: usize,
    too_large: impl FnOnce() -> String,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return ApiError::new(ErrorCode::PayloadTooLarge, too_large());
            }
            source = err.source();
        }
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("the upload was cut off: {e}; send it again"),
        )
    })
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
    bearer_in(&parts.headers)
}

fn bearer_in(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
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

/// The web console's session cookie. `__Host-` makes browsers insist on `Secure`, `Path=/` and
/// no `Domain`; `HttpOnly` keeps it out of reach of any script, ours included.
pub const SESSION_COOKIE: &str = "__Host-sb_session";

/// The header a console request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The CSRF token that goes with a console session: derived from the session token (which no
/// script can read), so it needs no storage and a page from another site cannot compute it.
pub fn csrf_token(session_token: &str) -> String {
    hex::encode(blake3::derive_key(
        "switchboard console CSRF token v1",
        session_token.as_bytes(),
    ))
}

/// Compares two secrets in time that depends only on their lengths.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session token in the console's cookie, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

fn csrf_refused(why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!("{why}; reload the console and try again"),
    )
}

/// Checks a cookie-authenticated request came from the console itself. Browsers send cookies
/// along with requests other sites start, so: the `Origin` (when sent) must be this server,
/// `Sec-Fetch-Site` (when sent) must say same-origin, and anything but a read must carry the
/// session's CSRF token, which only our own pages can learn.
pub fn check_console_request(
    method: &Method,
    headers: &HeaderMap,
    session_token: &str,
) -> Result<(), ApiError> {
    check_same_site(headers)?;
    if !matches!(*method, Method::GET | Method::HEAD) {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same_secret(sent, &csrf_token(session_token)) {
            return Err(csrf_refused("the CSRF token is missing or wrong"));
        }
    }
    Ok(())
}

/// Refuses a request a browser sent on behalf of another site (by `Sec-Fetch-Site` or
/// `Origin`, whichever it sent).
pub fn check_same_site(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Err(csrf_refused("a request from another site was refused"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let same = match (origin.to_str().ok(), host) {
            (Some(o), Some(h)) => o.strip_prefix("https://") == Some(h),
            _ => false,
        };
        if !same {
            return Err(csrf_refused("a request from another origin was refused"));
        }
    }
    Ok(())
}

/// The credential a request presents: `Authorization: Bearer`, or else the console's session
/// cookie, which must pass [`check_console_request`].
pub fn credential<'a>(method: &Method, headers: &'a HeaderMap) -> Result<&'a str, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return bearer_in(headers);
    }
    let Some(token) = session_cookie(headers) else {
        return Err(AuthError::Unauthenticated.into());
    };
    check_console_request(method, headers, token)?;
    Ok(token)
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
        let token = credential(&parts.method, &parts.headers)?;
        let now = crate::now();
        let subject = state.auth.authenticate(token, origin.ip, now).await?;
        Ok(Caller {
            subject,
            origin,
            now,
        })
    }
}
