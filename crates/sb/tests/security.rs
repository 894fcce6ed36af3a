//! Security behaviour of the running server, through the SDK and the real binary.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use sb_core::Secret;
use sb_proto::{AdminUserUpdate, PasswordChange, TokenCreate};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn raw_login(
    server: &TestServer,
    username: &str,
    password: &str,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({"username": username, "password": password});
    let resp = server
        .client()
        .raw(Method::POST, "/v1/auth/login", Some(&body))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_response() {
    let server = TestServer::start();
    server.admin().await;
    let wrong = raw_login(&server, "admin", "not the right password").await;
    let unknown = raw_login(&server, "nobody-here", "not the right password").await;
    assert_eq!(wrong.0, 401);
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.1["error"]["code"], "invalid_credentials");
}

#[tokio::test]
async fn rapid_failed_logins_are_rate_limited() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_RATE_LIMITS__FAILURES_BEFORE_BACKOFF", "3".into())],
        ..Default::default()
    });
    server.admin().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(raw_login(&server, "admin", "wrong password guess").await.0);
    }
    assert_eq!(&statuses[..3], &[401, 401, 401]);
    assert_eq!(statuses[3], 429, "{statuses:?}");
    let resp = server
        .client()
        .raw(
            Method::POST,
            "/v1/auth/login",
            Some(&serde_json::json!({"username": "admin", "password": PASSWORD})),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        429,
        "even the right password waits during back-off"
    );
    assert!(resp.headers().get("retry-after").is_some());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test]
async fn per_ip_login_limit_applies_across_accounts() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_RATE_LIMITS__LOGIN_PER_IP_PER_MINUTE", "4".into())],
        ..Default::default()
    });
    let mut last = 0;
    for i in 0..5 {
        last = raw_login(&server, &format!("user{i}"), "whatever password")
            .await
            .0;
    }
    assert_eq!(last, 429);
}

async fn next_close(ws: &mut sb_client::WsStream) -> Option<(CloseCode, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg {
            Ok(Message::Close(Some(f))) => return Some((f.code, f.reason.to_string())),
            Ok(Message::Close(None)) => return Some((CloseCode::Status, String::new())),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

async fn expect_hello(ws: &mut sb_client::WsStream) -> serde_json::Value {
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        panic!("expected hello")
    };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["type"], "hello");
    v
}

#[tokio::test]
async fn revoking_a_session_closes_its_open_websocket() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let other = server.login("admin").await;
    let mut ws = other.ws_connect().await.unwrap();
    expect_hello(&mut ws).await;
    ws.send(Message::text(r#"{"type":"ping","id":"p1"}"#))
        .await
        .unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        panic!()
    };
    assert_eq!(t.as_str(), r#"{"type":"pong","id":"p1"}"#);

    let sessions = admin.sessions().await.unwrap();
    let target = sessions.iter().find(|s| !s.current && !s.revoked).unwrap();
    admin.revoke_session(&target.id).await.unwrap();
    let (code, reason) = next_close(&mut ws).await.expect("close frame");
    assert_eq!(u16::from(code), sb_proto::close_code::CREDENTIAL_REVOKED);
    assert!(reason.contains("revoked"));
    assert_eq!(other.me().await.unwrap_err().status(), Some(401));
}

#[tokio::test]
async fn api_tokens_work_for_rest_and_websocket_until_revoked() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let created = admin
        .create_token(&TokenCreate {
            name: "grafana".into(),
            scopes: vec!["read".into()],
            expires_in_secs: Some(3600),
        })
        .await
        .unwrap();
    assert!(created.token.expose().starts_with("sbt_"));
    let bot = server.client_with(&created.token);
    assert_eq!(bot.me().await.unwrap().username, "admin");
    let err = bot
        .update_profile(&sb_proto::ProfileUpdate {
            display_name: Some("x".into()),
            status_text: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("forbidden"), "read scope cannot write");
    let mut ws = bot.ws_connect().await.unwrap();
    let hello = expect_hello(&mut ws).await;
    assert_eq!(hello["user"]["username"], "admin");

    admin.revoke_token(&created.id).await.unwrap();
    let (code, _) = next_close(&mut ws).await.expect("close frame");
    assert_eq!(u16::from(code), sb_proto::close_code::CREDENTIAL_REVOKED);
    assert_eq!(bot.me().await.unwrap_err().code(), Some("invalid_token"));
    assert_eq!(bot.ws_connect().await.unwrap_err().status(), Some(401));
    let listed = admin.tokens().await.unwrap();
    assert!(listed.iter().any(|t| t.id == created.id && t.revoked));
}

#[tokio::test]
async fn disabled_user_cannot_log_in_and_is_cut_off() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let bob = server.user(&admin, "bob").await;
    let mut ws = bob.ws_connect().await.unwrap();
    expect_hello(&mut ws).await;
    admin
        .admin_update_user(
            "bob",
            &AdminUserUpdate {
                role: None,
                disabled: Some(true),
            },
        )
        .await
        .unwrap();
    let (code, reason) = next_close(&mut ws).await.expect("close frame");
    assert_eq!(u16::from(code), sb_proto::close_code::CREDENTIAL_REVOKED);
    assert!(reason.contains("disabled"));
    let (status, body) = raw_login(&server, "bob", PASSWORD).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("account_disabled"))
    );
    assert_eq!(bob.me().await.unwrap_err().status(), Some(401));
    admin
        .admin_update_user(
            "bob",
            &AdminUserUpdate {
                role: None,
                disabled: Some(false),
            },
        )
        .await
        .unwrap();
    server.login("bob").await.me().await.unwrap();
}

#[tokio::test]
async fn non_admin_gets_403_on_admin_routes_and_the_denial_is_audited() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let bob = server.user(&admin, "bob").await;
    let bob_id = bob.me().await.unwrap().id;
    for (method, path) in [
        (Method::GET, "/v1/admin/users"),
        (Method::GET, "/v1/admin/audit"),
        (Method::GET, "/v1/admin/audit/verify"),
    ] {
        let resp = bob.raw(method, path, None).await.unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let err = bob.admin_invite(&Default::default()).await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    let denied = admin
        .admin_audit(&sb_proto::AuditQuery {
            action: Some("permission.denied".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(denied.len(), 4);
    assert!(denied.iter().all(|e| e.actor == bob_id));
    assert!(denied.iter().any(|e| e.target == "audit"));
    assert!(denied.iter().any(|e| e.target == "invites"));
}

#[tokio::test]
async fn password_change_signs_out_other_sessions_only() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let other = server.login("admin").await;
    let r = admin
        .change_password(&PasswordChange {
            current_password: Secret::new(PASSWORD.into()),
            new_password: Secret::new("a new and longer passphrase".into()),
        })
        .await
        .unwrap();
    assert_eq!(r.sessions_revoked, 1, "only the other session");
    assert!(
        admin.me().await.is_ok(),
        "the session that changed it stays"
    );
    assert_eq!(other.me().await.unwrap_err().status(), Some(401));
    let weak = admin
        .change_password(&PasswordChange {
            current_password: Secret::new("a new and longer passphrase".into()),
            new_password: Secret::new("password123".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(weak.code(), Some("weak_password"));
}

#[test]
fn audit_verify_names_an_edited_record() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&server, home.path());
    for _ in 0..3 {
        assert!(sb(home.path(), &["whoami"], "").status.success());
        let out = sb(
            home.path(),
            &[
                "login",
                &server.url,
                "--username",
                "admin",
                "--password-stdin",
            ],
            &format!("{PASSWORD}\n"),
        );
        assert!(out.status.success());
    }
    let ok = sb(home.path(), &["admin", "audit", "--verify"], "");
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("intact"));

    // Someone with access to the database file edits a record (bypassing the append-only trigger).
    let db = rusqlite::Connection::open(server.data_dir.join("sb.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET ip = '203.0.113.9' WHERE seq = 3;",
    )
    .unwrap();
    let bad = sb(home.path(), &["admin", "audit", "--verify", "--json"], "");
    assert!(
        !bad.status.success(),
        "verification failure is a failing exit status"
    );
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_broken_seq"], 3);
    assert_eq!(v["problem"], "content");
    let text = sb(home.path(), &["admin", "audit", "--verify"], "");
    assert!(
        stdout(&text).contains("BROKEN at record 3"),
        "{}",
        stdout(&text)
    );
}

#[tokio::test]
async fn registration_modes_are_enforced() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let req = |invite: Option<Secret<String>>| sb_proto::RegisterRequest {
        username: "eve".into(),
        password: Secret::new(PASSWORD.into()),
        setup_token: None,
        invite,
    };
    let e = server.client().register(&req(None)).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some("registration_closed"),
        "default is invite-only"
    );
    let e = server
        .client()
        .register(&sb_proto::RegisterRequest {
            setup_token: Some(Secret::new(server.setup_token.clone().unwrap())),
            ..req(None)
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some("invalid_invite"),
        "the setup token works once"
    );
    let invite = admin.admin_invite(&Default::default()).await.unwrap();
    server
        .client()
        .register(&req(Some(invite.token.clone())))
        .await
        .unwrap();
    let e = server
        .client()
        .register(&sb_proto::RegisterRequest {
            username: "mallory".into(),
            ..req(Some(invite.token))
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_invite"), "invites are single-use");
}

#[tokio::test]
async fn guessing_tokens_from_one_address_is_rate_limited() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![(
            "SB_RATE_LIMITS__TOKEN_FAILURES_PER_IP_PER_MINUTE",
            "3".into(),
        )],
        ..Default::default()
    });
    let admin = server.admin().await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let guess = server.client_with(&Secret::new(format!("sbs_guess{i}")));
        statuses.push(
            guess
                .raw(Method::GET, "/v1/me", None)
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![401, 401, 401, 429, 429]);
    // The limit is on failures: a valid token from the same address is refused too while it
    // lasts (the address is what is being throttled), and the server says when to retry.
    let resp = admin.raw(Method::GET, "/v1/me", None).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
}
