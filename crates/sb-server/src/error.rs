//! The one place where errors become HTTP responses: [`status_of`] maps each stable
//! [`ErrorCode`] to its status, and [`ApiError`] renders the JSON error shape.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sb_auth::AuthError;
use sb_core::ErrorCode;
use sb_proto::{ErrorBody, ErrorDetail};

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::MalformedJson | ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidBody | ErrorCode::WeakPassword => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::Unauthenticated | ErrorCode::InvalidToken | ErrorCode::InvalidCredentials => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::AccountDisabled | ErrorCode::Forbidden | ErrorCode::RegistrationClosed => {
            StatusCode::FORBIDDEN
        }
        ErrorCode::InvalidInvite => StatusCode::FORBIDDEN,
        ErrorCode::UsernameTaken | ErrorCode::Conflict | ErrorCode::StaleEpoch => {
            StatusCode::CONFLICT
        }
        ErrorCode::Banned => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Overloaded | ErrorCode::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.code);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        let headers = resp.headers_mut();
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchboard\""),
            );
        }
        resp
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = e.code();
        let message = if code == ErrorCode::Internal {
            tracing::error!(error = %e, "request failed");
            "internal error; the server log has details".to_string()
        } else {
            e.to_string()
        };
        Self {
            code,
            message,
            retry_after_secs: e.retry_after().map(|r| r.secs_ceil()),
        }
    }
}

impl From<sb_devices::DevicesError> for ApiError {
    fn from(e: sb_devices::DevicesError) -> Self {
        match e {
            sb_devices::DevicesError::Auth(a) => a.into(),
            other => {
                let code = other.code();
                let message = if code == ErrorCode::Internal {
                    tracing::error!(error = %other, "devices request failed");
                    "internal error; the server log has details".to_string()
                } else {
                    other.to_string()
                };
                ApiError::new(code, message)
            }
        }
    }
}

impl From<sb_files::FilesError> for ApiError {
    fn from(e: sb_files::FilesError) -> Self {
        match e {
            sb_files::FilesError::Auth(a) => a.into(),
            other => {
                let code = other.code();
                let message = if code == ErrorCode::Internal {
                    tracing::error!(error = %other, "files request failed");
                    "internal error; the server log has details".to_string()
                } else {
                    other.to_string()
                };
                ApiError::new(code, message)
            }
        }
    }
}

impl From<sb_chat::ChatError> for ApiError {
    fn from(e: sb_chat::ChatError) -> Self {
        match e {
            sb_chat::ChatError::Auth(a) => a.into(),
            other => {
                let code = other.code();
                let message = if code == ErrorCode::Internal {
                    tracing::error!(error = %other, "chat request failed");
                    "internal error; the server log has details".to_string()
                } else {
                    other.to_string()
                };
                ApiError::new(code, message)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::new(ErrorCode::InvalidBody, e.body_text()),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::new(ErrorCode::MalformedJson, e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
            }
            other => ApiError::new(ErrorCode::MalformedJson, other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, r.body_text())
    }
}

pub fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route; see /v1/openapi.json")
}
