//! Bad input gets a 4xx with the JSON error shape and a stable code, changes nothing, and the
//! server keeps serving everyone else.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use sb_core::Secret;
use tokio_tungstenite::tungstenite::Message;

/// name, method, path, content type, body, expected status, expected code
type Case = (
    &'static str,
    Method,
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
);

async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("error responses are JSON");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_string();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error.message present"
    );
    (status, code)
}

#[tokio::test]
async fn each_kind_of_bad_request_gets_its_stable_code() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_LIMITS__BODY_SIZE_BYTES_MAX", "4096".into())],
        ..Default::default()
    });
    let admin = server.admin().await;
    let anon = server.client();
    let json = "application/json";
    let cases: Vec<Case> = vec![
        (
            "malformed json",
            Method::POST,
            "/v1/auth/login",
            json,
            b"{\"username\":".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "wrong types",
            Method::POST,
            "/v1/auth/login",
            json,
            br#"{"username":5,"password":true}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            "unknown field",
            Method::POST,
            "/v1/auth/login",
            json,
            br#"{"username":"a","password":"b","x":1}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            "invalid utf-8",
            Method::POST,
            "/v1/auth/login",
            json,
            b"{\"username\":\"\xff\xfe\",\"password\":\"x\"}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "oversize body",
            Method::POST,
            "/v1/auth/login",
            json,
            vec![b' '; 64 * 1024],
            413,
            "payload_too_large",
        ),
        (
            "not json",
            Method::POST,
            "/v1/auth/login",
            "text/plain",
            b"hello".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "unknown route",
            Method::GET,
            "/v1/no-such-thing",
            json,
            Vec::new(),
            404,
            "not_found",
        ),
        (
            "wrong method",
            Method::PUT,
            "/v1/auth/login",
            json,
            Vec::new(),
            405,
            "method_not_allowed",
        ),
        (
            "missing token",
            Method::GET,
            "/v1/me",
            json,
            Vec::new(),
            401,
            "unauthenticated",
        ),
    ];
    for (name, method, path, ctype, body, status, code) in cases {
        let resp = anon.raw_body(method, path, ctype, body).await.unwrap();
        assert_eq!(error_of(resp).await, (status, code.to_string()), "{name}");
        assert_eq!(
            admin.me().await.unwrap().username,
            "admin",
            "still serving after {name}"
        );
    }

    let garbage = server.client_with(&Secret::new("sbs_not-a-real-token".into()));
    let resp = garbage.raw(Method::GET, "/v1/me", None).await.unwrap();
    assert_eq!(error_of(resp).await, (401, "invalid_token".into()));
    let huge = server.client_with(&Secret::new(format!("sbt_{}", "x".repeat(5000))));
    let resp = huge.raw(Method::GET, "/v1/me", None).await.unwrap();
    assert_eq!(error_of(resp).await, (401, "invalid_token".into()));
    let bad_id = admin
        .raw(Method::DELETE, "/v1/sessions/not-a-uuid", None)
        .await
        .unwrap();
    assert_eq!(error_of(bad_id).await, (400, "invalid_argument".into()));
    let bad_query = admin
        .raw(Method::GET, "/v1/admin/audit?limit=lots", None)
        .await
        .unwrap();
    assert_eq!(error_of(bad_query).await, (400, "invalid_argument".into()));

    // Nothing was changed by any of it: still one user, and the audit chain is intact.
    assert_eq!(admin.admin_users().await.unwrap().len(), 1);
    assert!(admin.admin_audit_verify().await.unwrap().ok);
}

#[tokio::test]
async fn oversize_websocket_frame_closes_only_that_socket() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_LIMITS__WS_FRAME_SIZE_BYTES_MAX", "1024".into())],
        ..Default::default()
    });
    let admin = server.admin().await;
    let mut bystander = admin.ws_connect().await.unwrap();
    let mut offender = admin.ws_connect().await.unwrap();
    for ws in [&mut bystander, &mut offender] {
        assert!(
            matches!(ws.next().await, Some(Ok(Message::Text(_)))),
            "hello"
        );
    }
    let big = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(4096));
    offender.send(Message::text(big)).await.unwrap();
    let mut close_code = None;
    while let Some(Ok(msg)) = offender.next().await {
        if let Message::Close(f) = msg {
            close_code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(close_code, Some(1009), "message too big");

    bystander
        .send(Message::text(r#"{"type":"whoami","id":"w"}"#))
        .await
        .unwrap();
    let Some(Ok(Message::Text(t))) = bystander.next().await else {
        panic!("bystander still served")
    };
    assert!(t.contains(r#""type":"whoami""#));
    // A malformed frame gets an error frame, not a disconnect.
    bystander.send(Message::text("{not json")).await.unwrap();
    let Some(Ok(Message::Text(t))) = bystander.next().await else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("invalid_body"))
    );
    assert_eq!(admin.me().await.unwrap().username, "admin");
}

#[tokio::test]
async fn websocket_route_without_upgrade_or_token_is_refused_with_json() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let resp = server
        .client()
        .raw(Method::GET, "/v1/ws", None)
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (401, "unauthenticated".into()));
    let resp = admin.raw(Method::GET, "/v1/ws", None).await.unwrap();
    assert_eq!(error_of(resp).await.0 / 100, 4);
}
