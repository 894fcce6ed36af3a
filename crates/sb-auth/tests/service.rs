//! The auth service against a real SQLite store, with time passed in explicitly.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use sb_auth::{
    Action, Auth, AuthError, AuthEvent, Ctx, NewToken, Origin, RegisterInput, Resource, Scope,
    Subject, credential_topic,
};
use sb_bus::{Bus, BusConfig, OverflowPolicy};
use sb_core::config::{AuthConfig, RateLimitConfig, RegistrationMode, StoreConfig};
use sb_core::{ErrorCode, Role, Secret, UnixMillis};
use sb_store::{AuditFilter, SqliteStore, Store};
use std::sync::Arc;

struct Fixture {
    auth: Auth,
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
}

fn origin() -> Origin {
    Origin {
        ip: "127.0.0.1".parse().unwrap(),
        client: "test".into(),
    }
}

static ORIGIN: std::sync::LazyLock<Origin> = std::sync::LazyLock::new(origin);

fn cx(subject: &Subject, at: i64) -> Ctx<'_> {
    Ctx {
        subject,
        origin: &ORIGIN,
        now: UnixMillis(at),
    }
}

fn s(v: &str) -> Secret<String> {
    Secret::new(v.to_string())
}

const PW: &str = "correct horse battery";

fn fixture_with(limits: RateLimitConfig, registration: RegistrationMode) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sb.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db, &StoreConfig::default()).unwrap());
    let bus = Bus::new(BusConfig {
        queue_max: 16,
        overflow: OverflowPolicy::Disconnect,
    });
    let config = AuthConfig {
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        registration,
        ..AuthConfig::default()
    };
    Fixture {
        auth: Auth::new(store, bus, config, &limits).unwrap(),
        _dir: dir,
        db,
    }
}

fn fixture() -> Fixture {
    fixture_with(RateLimitConfig::default(), RegistrationMode::Open)
}

async fn admin_and_user(f: &Fixture) {
    let t = f.auth.issue_setup_token().await.unwrap().unwrap();
    let (_, setup) = f
        .auth
        .register(
            RegisterInput {
                username: "root".into(),
                password: s(PW),
                setup_token: Some(t),
                invite: None,
            },
            &origin(),
            UnixMillis(1),
        )
        .await
        .unwrap();
    assert!(setup);
    f.auth
        .register(
            RegisterInput {
                username: "bob".into(),
                password: s(PW),
                setup_token: None,
                invite: None,
            },
            &origin(),
            UnixMillis(2),
        )
        .await
        .unwrap();
}

async fn login(f: &Fixture, user: &str, at: i64) -> Result<Secret<String>, AuthError> {
    f.auth
        .login(user, s(PW), &origin(), UnixMillis(at))
        .await
        .map(|(_, t, _)| t)
}

#[tokio::test]
async fn unknown_user_and_wrong_password_fail_alike() {
    let f = fixture();
    admin_and_user(&f).await;
    let wrong = f
        .auth
        .login("bob", s("not the password"), &origin(), UnixMillis(10))
        .await
        .unwrap_err();
    let unknown = f
        .auth
        .login("nobody", s(PW), &origin(), UnixMillis(10))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), ErrorCode::InvalidCredentials);
    assert_eq!(unknown.code(), wrong.code());
    assert_eq!(unknown.to_string(), wrong.to_string());
}

#[tokio::test]
async fn repeated_failures_back_off_then_success_clears() {
    let limits = RateLimitConfig {
        failures_before_backoff: 3,
        backoff_base_ms: 10_000,
        ..RateLimitConfig::default()
    };
    let f = fixture_with(limits, RegistrationMode::Open);
    admin_and_user(&f).await;
    for _ in 0..3 {
        let e = f
            .auth
            .login("bob", s("bad password!!"), &origin(), UnixMillis(100))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidCredentials);
    }
    let e = login(&f, "bob", 101).await.unwrap_err();
    assert_eq!(
        e.code(),
        ErrorCode::RateLimited,
        "even the right password waits"
    );
    assert!(e.retry_after().unwrap().secs_ceil() >= 9);
    assert!(login(&f, "bob", 10_200).await.is_ok());
}

#[tokio::test]
async fn disabled_user_cannot_log_in_and_loses_sessions() {
    let f = fixture();
    admin_and_user(&f).await;
    let root = f
        .auth
        .authenticate(
            login(&f, "root", 5).await.unwrap().expose(),
            origin().ip,
            UnixMillis(5),
        )
        .await
        .unwrap();
    let bob_token = login(&f, "bob", 5).await.unwrap();
    f.auth
        .set_disabled(cx(&root, 6), "bob", true)
        .await
        .unwrap();
    assert_eq!(
        login(&f, "bob", 7).await.unwrap_err().code(),
        ErrorCode::AccountDisabled
    );
    assert_eq!(
        f.auth
            .authenticate(bob_token.expose(), origin().ip, UnixMillis(7))
            .await
            .unwrap_err()
            .code(),
        ErrorCode::InvalidToken
    );
    f.auth
        .set_disabled(cx(&root, 8), "bob", false)
        .await
        .unwrap();
    assert!(login(&f, "bob", 9).await.is_ok());
}

#[tokio::test]
async fn revocation_is_immediate_and_announced_on_the_bus() {
    let f = fixture();
    admin_and_user(&f).await;
    let t = login(&f, "bob", 5).await.unwrap();
    let bob = f
        .auth
        .authenticate(t.expose(), origin().ip, UnixMillis(5))
        .await
        .unwrap();
    let mut sub = f
        .auth
        .bus()
        .subscribe(&credential_topic(&bob.credential.id_string()))
        .unwrap();
    f.auth.logout(cx(&bob, 6)).await.unwrap();
    assert_eq!(
        sub.try_recv().unwrap().unwrap().payload,
        AuthEvent::CredentialRevoked
    );
    assert_eq!(
        f.auth
            .authenticate(t.expose(), origin().ip, UnixMillis(6))
            .await
            .unwrap_err()
            .code(),
        ErrorCode::InvalidToken
    );
}

#[tokio::test]
async fn api_tokens_carry_scopes_and_stop_when_revoked() {
    let f = fixture();
    admin_and_user(&f).await;
    let bob = f
        .auth
        .authenticate(
            login(&f, "bob", 5).await.unwrap().expose(),
            origin().ip,
            UnixMillis(5),
        )
        .await
        .unwrap();
    let denied = f
        .auth
        .create_token(
            cx(&bob, 6),
            NewToken {
                name: "x".into(),
                scopes: vec![Scope::Admin],
                ttl: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(denied.code(), ErrorCode::InvalidArgument);
    let (rec, secret) = f
        .auth
        .create_token(
            cx(&bob, 6),
            NewToken {
                name: "ci".into(),
                scopes: vec![Scope::Read],
                ttl: None,
            },
        )
        .await
        .unwrap();
    assert!(secret.expose().starts_with("sbt_"));
    let via_token = f
        .auth
        .authenticate(secret.expose(), origin().ip, UnixMillis(7))
        .await
        .unwrap();
    assert_eq!(via_token.user_id, bob.user_id);
    let write = f
        .auth
        .update_profile(cx(&via_token, 7), Some("B".into()), None)
        .await
        .unwrap_err();
    assert_eq!(
        write.code(),
        ErrorCode::Forbidden,
        "read-only token cannot write"
    );
    f.auth.revoke_token(cx(&bob, 8), rec.id).await.unwrap();
    assert!(
        f.auth
            .authenticate(secret.expose(), origin().ip, UnixMillis(9))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn denials_are_audited_and_tampering_is_found() {
    let f = fixture();
    admin_and_user(&f).await;
    let root = f
        .auth
        .authenticate(
            login(&f, "root", 5).await.unwrap().expose(),
            origin().ip,
            UnixMillis(5),
        )
        .await
        .unwrap();
    let bob = f
        .auth
        .authenticate(
            login(&f, "bob", 5).await.unwrap().expose(),
            origin().ip,
            UnixMillis(5),
        )
        .await
        .unwrap();
    assert_eq!(bob.role, Role::User);
    let e = f
        .auth
        .authorize(cx(&bob, 6), Action::Read, &Resource::Audit)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);
    let denied = f
        .auth
        .query_audit(
            cx(&root, 7),
            AuditFilter {
                action_prefix: Some("permission.denied".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].entry.actor, bob.user_id.to_string());
    assert_eq!(denied[0].entry.target, "audit");

    let ok = f.auth.verify_audit(cx(&root, 8)).await.unwrap();
    assert!(ok.first_break.is_none());
    assert!(ok.checked >= 5);
    let raw = rusqlite::Connection::open(&f.db).unwrap();
    raw.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET ip = '10.9.9.9' WHERE seq = 3;",
    )
    .unwrap();
    let bad = f.auth.verify_audit(cx(&root, 9)).await.unwrap();
    assert_eq!(bad.first_break.map(|b| b.seq()), Some(3));
}

#[tokio::test]
async fn invite_mode_needs_an_invite_and_it_is_single_use() {
    let f = fixture_with(RateLimitConfig::default(), RegistrationMode::Invite);
    let t = f.auth.issue_setup_token().await.unwrap().unwrap();
    f.auth
        .register(
            RegisterInput {
                username: "root".into(),
                password: s(PW),
                setup_token: Some(t),
                invite: None,
            },
            &origin(),
            UnixMillis(1),
        )
        .await
        .unwrap();
    assert!(f.auth.issue_setup_token().await.unwrap().is_none());
    let reg = |name: &str, invite: Option<Secret<String>>| RegisterInput {
        username: name.into(),
        password: s(PW),
        setup_token: None,
        invite,
    };
    let e = f
        .auth
        .register(reg("carol", None), &origin(), UnixMillis(2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::RegistrationClosed);
    let root = f
        .auth
        .authenticate(
            login(&f, "root", 3).await.unwrap().expose(),
            origin().ip,
            UnixMillis(3),
        )
        .await
        .unwrap();
    let (_, invite) = f.auth.create_invite(cx(&root, 3), None).await.unwrap();
    f.auth
        .register(reg("carol", Some(invite.clone())), &origin(), UnixMillis(4))
        .await
        .unwrap();
    let e = f
        .auth
        .register(reg("dave", Some(invite)), &origin(), UnixMillis(5))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidInvite);
}

#[tokio::test]
async fn sessions_expire_after_the_configured_ttl() {
    let f = fixture();
    admin_and_user(&f).await;
    let ttl_ms = AuthConfig::default().session_ttl_secs as i64 * 1000;
    let t = login(&f, "bob", 1_000).await.unwrap();
    let ok = f
        .auth
        .authenticate(t.expose(), origin().ip, UnixMillis(1_000 + ttl_ms - 1))
        .await;
    assert!(ok.is_ok());
    let expired = f
        .auth
        .authenticate(t.expose(), origin().ip, UnixMillis(1_000 + ttl_ms))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), ErrorCode::InvalidToken);
}

#[tokio::test]
async fn ended_sessions_are_pruned_after_the_retention() {
    let f = fixture();
    admin_and_user(&f).await;
    let t = login(&f, "bob", 1_000).await.unwrap();
    let bob = f
        .auth
        .authenticate(t.expose(), origin().ip, UnixMillis(1_000))
        .await
        .unwrap();
    let _live = login(&f, "bob", 2_000).await.unwrap();
    f.auth.logout(cx(&bob, 3_000)).await.unwrap();
    let retention_ms = AuthConfig::default().ended_session_retention_secs as i64 * 1000;
    assert_eq!(
        f.auth
            .prune_ended_sessions(UnixMillis(3_000 + retention_ms - 1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        f.auth
            .prune_ended_sessions(UnixMillis(3_001 + retention_ms))
            .await
            .unwrap(),
        1
    );
    let live = login(&f, "bob", 4_000).await.unwrap();
    let bob = f
        .auth
        .authenticate(live.expose(), origin().ip, UnixMillis(4_000))
        .await
        .unwrap();
    assert_eq!(
        f.auth.list_sessions(cx(&bob, 4_000)).await.unwrap().len(),
        2
    );
}
