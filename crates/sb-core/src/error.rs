//! Stable error codes. The wire carries the `snake_case` string of each; clients and scripts match
//! on it, so a code, once shipped, never changes meaning. HTTP status mapping lives at the edge
//! (`sb-server`), in one function.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body is not valid JSON (syntax or encoding).
    MalformedJson,
    /// The JSON is well-formed but a field is missing or has the wrong type.
    InvalidBody,
    /// A field has an acceptable type but an unacceptable value.
    InvalidArgument,
    /// The body is larger than `limits.body_size_bytes_max`.
    PayloadTooLarge,
    /// No credential was presented.
    Unauthenticated,
    /// A credential was presented but is unknown, expired or revoked.
    InvalidToken,
    /// Username or password is wrong (deliberately not saying which).
    InvalidCredentials,
    /// The account is disabled by an administrator.
    AccountDisabled,
    /// The subject is known but not allowed to do this.
    Forbidden,
    /// The password is too short or too common.
    WeakPassword,
    /// Registration is closed, or needs a valid invite or setup token.
    RegistrationClosed,
    /// The invite or setup token is unknown, used or expired.
    InvalidInvite,
    /// The username is taken.
    UsernameTaken,
    NotFound,
    MethodNotAllowed,
    /// The user is banned from this room.
    Banned,
    /// The request conflicts with the current state (e.g. already a member).
    Conflict,
    /// An MLS handshake for an epoch the room has already moved past.
    StaleEpoch,
    /// Too many requests; see `Retry-After`.
    RateLimited,
    /// Too many concurrent operations of this kind; try again shortly.
    Overloaded,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// The request took longer than `limits.request_timeout_ms`.
    Timeout,
    /// A server-side failure; details are in the server log, never in the response.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::AccountDisabled => "account_disabled",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::WeakPassword => "weak_password",
            ErrorCode::RegistrationClosed => "registration_closed",
            ErrorCode::InvalidInvite => "invalid_invite",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Banned => "banned",
            ErrorCode::Conflict => "conflict",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde_name() {
        for code in [
            ErrorCode::MalformedJson,
            ErrorCode::PayloadTooLarge,
            ErrorCode::InvalidCredentials,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
        ] {
            let json = serde_json_like(code);
            assert_eq!(json, code.as_str());
        }
    }

    fn serde_json_like(code: ErrorCode) -> String {
        // toml can serialize a bare enum inside a table; use it to read the serde name.
        #[derive(Serialize)]
        struct W {
            c: ErrorCode,
        }
        let s = toml::to_string(&W { c: code }).unwrap_or_default();
        s.trim()
            .trim_start_matches("c = ")
            .trim_matches('"')
            .to_string()
    }
}
