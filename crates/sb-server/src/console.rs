//! The web console: a single-page app embedded in the binary (`console/`, plain ES modules, no
//! build step) and the three routes that give a browser its session.
//!
//! A browser never holds a bearer token in script-readable storage. Logging in through
//! `/v1/console/login` sets the session token in an `HttpOnly`, `Secure`, `SameSite=Strict`,
//! `__Host-` cookie and answers with a CSRF token, which the page keeps in memory and sends in
//! `X-CSRF-Token`; `extract::credential` checks both, and the `Origin`, on every cookie request.
//! Every page is served with a Content-Security-Policy that allows only this server.

use crate::error::ApiError;
use crate::extract::{ApiJson, Caller, ClientOrigin, SESSION_COOKIE, csrf_token, session_cookie};
use crate::routes::user_info;
use crate::{AppState, now};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sb_core::ErrorCode;
use sb_proto::{ConsoleSession, ErrorBody, LoginRequest};
use std::sync::Arc;

type St = State<Arc<AppState>>;

/// What a console page may load and talk to: this server, nothing else. No inline script or
/// style, no plugins, no framing, forms post only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; \
media-src 'self' blob:; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// For every response that is not a console page (JSON, downloads): nothing may run.
pub const API_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// The console's files: (path under `/console/`, content type, bytes).
macro_rules! assets {
    ($(($path:literal, $type:literal)),* $(,)?) => {
        pub const ASSETS: &[(&str, &str, &[u8])] = &[
            $(($path, $type, include_bytes!(concat!("../console/", $path)))),*
        ];
    };
}

assets![
    ("index.html", "text/html; charset=utf-8"),
    ("app.css", "text/css; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("lib.js", "text/javascript; charset=utf-8"),
    ("chart.js", "text/javascript; charset=utf-8"),
    ("account.js", "text/javascript; charset=utf-8"),
    ("chat.js", "text/javascript; charset=utf-8"),
    ("devices.js", "text/javascript; charset=utf-8"),
    ("files.js", "text/javascript; charset=utf-8"),
    ("monitor.js", "text/javascript; charset=utf-8"),
    ("admin.js", "text/javascript; charset=utf-8"),
    ("icon.svg", "image/svg+xml"),
    ("vendor/uPlot.esm.js", "text/javascript; charset=utf-8"),
    ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
];

fn asset(path: &str, headers: &HeaderMap) -> Response {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return crate::error::not_found().into_response();
    };
    // Strong validator: the content's hash (the binary is the release).
    let etag = format!("\"{}\"", &blake3::hash(bytes).to_hex()[..32]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let common = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::ETAG,
            HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
    ];
    if fresh {
        (StatusCode::NOT_MODIFIED, common).into_response()
    } else {
        (common, *bytes).into_response()
    }
}

/// `GET /`: the console.
pub async fn index(headers: HeaderMap) -> Response {
    asset("index.html", &headers)
}

/// `GET /console/{*path}`: its scripts, styles and images.
pub async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    asset(&path, &headers)
}

/// Security headers on every response: the API's own policy unless a console page set one.
/// On the way in, an HTTP/2 request's `:authority` is given as `Host` (HTTP/2 has no `Host`
/// header), so the same-origin checks see the same thing over either protocol.
pub async fn security_headers(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !req.headers().contains_key(header::HOST) {
        let authority = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(a) = authority {
            req.headers_mut().insert(header::HOST, a);
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(API_CONTENT_SECURITY_POLICY),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

fn cookie(token: &str, max_age_secs: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}"
    ))
    .unwrap_or(HeaderValue::from_static(""))
}

#[utoipa::path(post, path = "/v1/console/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = ConsoleSession, description = "the session token is set in an HttpOnly cookie; send `csrf` in X-CSRF-Token"),
              (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    // Login CSRF: only our own pages may log a browser in.
    crate::extract::check_same_site(&headers)?;
    let (_, token, user) = st
        .auth
        .login(&req.username, req.password, &origin, now())
        .await?;
    let body = ConsoleSession {
        user: user_info(&user),
        csrf: csrf_token(token.expose()),
    };
    Ok((
        [(
            header::SET_COOKIE,
            cookie(token.expose(), st.config.auth.session_ttl_secs),
        )],
        Json(body),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/console/session", tag = "auth",
    responses((status = 200, body = ConsoleSession), (status = 401, body = ErrorBody)))]
pub async fn session(
    State(st): St,
    c: Caller,
    headers: HeaderMap,
) -> Result<Json<ConsoleSession>, ApiError> {
    let token = session_cookie(&headers).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "no console session; log in at /",
        )
    })?;
    let me = st.auth.me(&c.subject).await?;
    Ok(Json(ConsoleSession {
        user: user_info(&me),
        csrf: csrf_token(token),
    }))
}

#[utoipa::path(post, path = "/v1/console/logout", tag = "auth",
    responses((status = 204, description = "the session is revoked and its cookie cleared"), (status = 401, body = ErrorBody)))]
pub async fn logout(State(st): St, c: Caller) -> Result<Response, ApiError> {
    st.auth.logout(c.cx()).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, cookie("", 0))],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every file in `console/` is served (one added but not listed would 404 in the browser),
    /// and nothing listed is missing (include_bytes! already fails the build for that).
    #[test]
    fn every_console_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                // Licence and provenance notes ship in the source tree, not to browsers.
                if !rel.ends_with("LICENSE") && !rel.ends_with("README.md") {
                    on_disk.push(rel);
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|(p, _, _)| p.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn the_policy_allows_nothing_inline_and_no_other_host() {
        for p in [CONTENT_SECURITY_POLICY, API_CONTENT_SECURITY_POLICY] {
            assert!(
                !p.contains("unsafe") && !p.contains('*') && !p.contains("http"),
                "{p}"
            );
        }
    }
}
