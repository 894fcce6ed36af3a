//! End to end through the real `sb` binary, as a user would drive it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use sb_client::{Client, Trust};
use sb_core::Secret;

#[test]
fn register_login_whoami_revoke_logout_and_refuse_changed_certificate() {
    let mut server = TestServer::start();
    let setup = server
        .setup_token
        .clone()
        .expect("first start prints a setup token");
    assert!(server.data_dir.join("setup-token").exists());
    let laptop = tempfile::tempdir().unwrap();
    let phone = tempfile::tempdir().unwrap();
    let pw = format!("{PASSWORD}\n");

    // Register with the setup token on the laptop; this pins the certificate and logs in.
    let out = sb(
        laptop.path(),
        &[
            "register",
            &server.url,
            "--username",
            "admin",
            "--setup-token",
            &setup,
            "--password-stdin",
            "--yes",
        ],
        &pw,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&server.fingerprint),
        "shows the fingerprint it pins"
    );
    assert!(
        !server.data_dir.join("setup-token").exists(),
        "the used setup token file is deleted"
    );

    // Without --yes and without a terminal, first contact is refused and nothing is pinned.
    let out = sb(
        phone.path(),
        &[
            "login",
            &server.url,
            "--username",
            "admin",
            "--password-stdin",
        ],
        &pw,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));

    // Log in from a second device, pinning on first contact.
    let out = sb(
        phone.path(),
        &[
            "login",
            &server.url,
            "--username",
            "admin",
            "--password-stdin",
            "--yes",
        ],
        &pw,
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let me = json(&sb(phone.path(), &["whoami", "--json"], ""));
    assert_eq!(me["username"], "admin");
    assert_eq!(me["role"], "admin");

    let sessions = json(&sb(phone.path(), &["sessions", "--json"], ""));
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let laptop_session = sessions
        .iter()
        .find(|s| s["current"] == false)
        .expect("the laptop's session");
    let laptop_id = laptop_session["id"].as_str().unwrap();

    // Revoke the laptop's session from the phone: its token now gets 401.
    let laptop_login =
        std::fs::read_to_string(laptop.path().join("switchboard/login.toml")).unwrap();
    let laptop_token: toml::Value = toml::from_str(&laptop_login).unwrap();
    let laptop_token = laptop_token["token"].as_str().unwrap().to_string();
    let out = sb(phone.path(), &["sessions", "revoke", laptop_id], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        server
            .client_with(&Secret::new(laptop_token))
            .raw(reqwest::Method::GET, "/v1/me", None)
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 401);
    let out = sb(laptop.path(), &["whoami"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid_token"), "{}", stderr(&out));

    // Log out on the phone: the session ends on the server and locally.
    let out = sb(phone.path(), &["logout"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb(phone.path(), &["whoami"], "");
    assert!(stderr(&out).contains("not logged in"), "{}", stderr(&out));

    // A different server (new certificate) on the same address is refused by the pinning client.
    let addr = server.addr.clone();
    assert!(server.stop(), "server exits cleanly on SIGTERM");
    let impostor = TestServer::start_on_released_port(&addr);
    assert_ne!(impostor.fingerprint, server.fingerprint);
    let out = sb(
        phone.path(),
        &[
            "login",
            &impostor.url,
            "--username",
            "admin",
            "--password-stdin",
            "--yes",
        ],
        &pw,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("has changed"), "{err}");
    assert!(
        err.contains(&server.fingerprint) && err.contains(&impostor.fingerprint),
        "{err}"
    );
    assert!(err.contains("sb trust forget"), "says how to re-pin: {err}");
}

#[test]
fn restart_keeps_accounts_sessions_and_tokens() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let mut first = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir.clone()),
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (session, api_token) = rt.block_on(async {
        let admin = first.admin().await;
        let login = first
            .client()
            .login("admin", Secret::new(PASSWORD.into()))
            .await
            .unwrap();
        let token = admin
            .create_token(&sb_proto::TokenCreate {
                name: "ci".into(),
                scopes: vec!["read".into()],
                expires_in_secs: None,
            })
            .await
            .unwrap();
        (login.token, token.token)
    });
    assert!(first.stop());
    let second = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir),
        ..Default::default()
    });
    assert_eq!(
        second.fingerprint, first.fingerprint,
        "same certificate after restart"
    );
    assert!(
        second.setup_token.is_none(),
        "no new setup token once an admin exists"
    );
    rt.block_on(async {
        let trust = Trust::Fingerprint(second.fingerprint.clone());
        let by_session = Client::new(&second.url, &trust)
            .unwrap()
            .with_token(session);
        assert_eq!(by_session.me().await.unwrap().username, "admin");
        let by_token = Client::new(&second.url, &trust)
            .unwrap()
            .with_token(api_token);
        assert_eq!(by_token.me().await.unwrap().username, "admin");
        assert_eq!(by_session.tokens().await.unwrap().len(), 1);
        second.login("admin").await;
    });
}

#[test]
fn config_default_prints_the_annotated_defaults() {
    let home = tempfile::tempdir().unwrap();
    let out = sb(home.path(), &["config", "default"], "");
    assert!(out.status.success());
    let text = stdout(&out);
    let parsed: sb_core::config::Config = toml::from_str(&text).expect("valid config");
    assert_eq!(parsed, sb_core::config::Config::default());
    assert!(text.contains("body_size_bytes_max"));
    assert!(text.contains("# "), "annotated");
}

#[test]
fn serve_reads_config_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sb.toml");
    std::fs::write(&cfg, "[auth]\nregistration = \"open\"\n").unwrap();
    let data_dir = dir.path().join("data");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("SB_SERVER__DATA_DIR", &data_dir)
        .env("SB_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(
        line.starts_with("Switchboard listening on https://127.0.0.1:"),
        "{line}"
    );
    assert!(
        data_dir.join("sb.db").exists(),
        "data dir taken from SB_SERVER__DATA_DIR"
    );
    let _ = child.kill();
    let _ = child.wait();

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nbody_max = 1\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("body_max"));
}

#[test]
fn no_secret_reaches_the_logs_even_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut server = TestServer::start_with(ServerOptions {
        env: vec![
            ("SB_LOG", "debug".into()),
            ("SB_SERVER__LOG_FORMAT", "json".into()),
        ],
        log_file: Some(log.clone()),
        ..Default::default()
    });
    let setup = server.setup_token.clone().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let secrets = rt.block_on(async {
        let admin = server.admin().await;
        let session = server
            .client()
            .login("admin", Secret::new(PASSWORD.into()))
            .await
            .unwrap()
            .token;
        let api = admin
            .create_token(&sb_proto::TokenCreate {
                name: "t".into(),
                scopes: vec![],
                expires_in_secs: None,
            })
            .await
            .unwrap()
            .token;
        let invite = admin.admin_invite(&Default::default()).await.unwrap().token;
        let _ = server
            .client()
            .login("admin", Secret::new("a wrong password guess".into()))
            .await;
        admin
            .change_password(&sb_proto::PasswordChange {
                current_password: Secret::new(PASSWORD.into()),
                new_password: Secret::new("a brand new passphrase 42".into()),
            })
            .await
            .unwrap();
        vec![
            setup,
            PASSWORD.to_string(),
            "a wrong password guess".into(),
            "a brand new passphrase 42".into(),
            session.expose().clone(),
            api.expose().clone(),
            invite.expose().clone(),
        ]
    });
    assert!(server.stop());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("shutdown requested"), "the log was captured");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("--log-format json line is not JSON ({e}): {line}"));
    }
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret reached the log");
    }
}

#[test]
fn cli_tokens_profiles_passwords_admin_and_the_audit_trail() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start();
    let setup_file = server.data_dir.join("setup-token");
    let mode = std::fs::metadata(&setup_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "setup-token is private");
    let admin_home = tempfile::tempdir().unwrap();
    let bob_home = tempfile::tempdir().unwrap();
    let pw = format!("{PASSWORD}\n");
    let setup = server.setup_token.clone().unwrap();
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
        o
    };

    // Trust through a CA file instead of pinning: no prompt, nothing pinned.
    let ca = server.data_dir.join("tls/cert.pem");
    let ca = ca.to_str().unwrap();
    ok(sb(
        admin_home.path(),
        &[
            "register",
            &server.url,
            "--username",
            "admin",
            "--setup-token",
            &setup,
            "--password-stdin",
            "--ca",
            ca,
        ],
        &pw,
    ));
    let pins = json(&sb(admin_home.path(), &["trust", "list", "--json"], ""));
    assert_eq!(
        pins,
        serde_json::json!({}),
        "a CA-trusted server is not pinned"
    );

    let invite = json(&sb(
        admin_home.path(),
        &["admin", "invite", "--expires", "1h", "--json"],
        "",
    ));
    let invite_token = invite["token"].as_str().unwrap().to_string();
    assert!(invite_token.starts_with("sbi_"));
    ok(sb(
        bob_home.path(),
        &[
            "register",
            &server.url,
            "--username",
            "bob",
            "--invite",
            &invite_token,
            "--password-stdin",
            "--yes",
        ],
        &pw,
    ));

    let created = json(&sb(
        bob_home.path(),
        &[
            "token",
            "create",
            "ci",
            "--scope",
            "read",
            "--expires",
            "30d",
            "--json",
        ],
        "",
    ));
    let keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, vec!["id", "token"]);
    let token_id = created["id"].as_str().unwrap().to_string();
    let listed = json(&sb(bob_home.path(), &["token", "list", "--json"], ""));
    assert_eq!(listed[0]["scopes"], serde_json::json!(["read"]));
    assert!(listed[0]["expires_at_ms"].is_i64());
    ok(sb(bob_home.path(), &["token", "revoke", &token_id], ""));
    let listed = json(&sb(bob_home.path(), &["token", "list", "--json"], ""));
    assert_eq!(listed[0]["revoked"], true);

    let profile = json(&sb(
        bob_home.path(),
        &[
            "profile",
            "--display-name",
            "Bob B",
            "--status",
            "on call",
            "--json",
        ],
        "",
    ));
    assert_eq!(
        (
            profile["display_name"].as_str(),
            profile["status_text"].as_str()
        ),
        (Some("Bob B"), Some("on call"))
    );

    ok(sb(
        bob_home.path(),
        &["passwd", "--password-stdin"],
        &format!("{PASSWORD}\nan entirely new passphrase\n"),
    ));
    let relog = sb(
        bob_home.path(),
        &[
            "login",
            &server.url,
            "--username",
            "bob",
            "--password-stdin",
        ],
        &pw,
    );
    assert!(!relog.status.success(), "the old password no longer works");
    ok(sb(
        bob_home.path(),
        &[
            "login",
            &server.url,
            "--username",
            "bob",
            "--password-stdin",
        ],
        "an entirely new passphrase\n",
    ));

    let denied = sb(bob_home.path(), &["admin", "users"], "");
    assert!(!denied.status.success());
    assert!(stderr(&denied).contains("forbidden"));

    let users = json(&sb(admin_home.path(), &["admin", "users", "--json"], ""));
    assert_eq!(users.as_array().unwrap().len(), 2);
    ok(sb(
        admin_home.path(),
        &["admin", "users", "set-role", "bob", "admin"],
        "",
    ));
    ok(sb(
        admin_home.path(),
        &["admin", "users", "disable", "bob"],
        "",
    ));
    let out = sb(bob_home.path(), &["whoami"], "");
    assert!(!out.status.success(), "disabling ends bob's sessions");
    ok(sb(
        admin_home.path(),
        &["admin", "users", "enable", "bob"],
        "",
    ));
    let self_disable = sb(
        admin_home.path(),
        &["admin", "users", "disable", "admin"],
        "",
    );
    assert!(
        !self_disable.status.success(),
        "an admin cannot lock themselves out"
    );
    ok(sb(
        bob_home.path(),
        &[
            "login",
            &server.url,
            "--username",
            "bob",
            "--password-stdin",
        ],
        "an entirely new passphrase\n",
    ));
    ok(sb(bob_home.path(), &["logout"], ""));

    let events = json(&sb(
        admin_home.path(),
        &["admin", "audit", "--limit", "1000", "--json"],
        "",
    ));
    let actions: std::collections::BTreeSet<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "user.register",
        "login.success",
        "login.failure",
        "logout",
        "password.change",
        "token.create",
        "token.revoke",
        "invite.create",
        "user.role_change",
        "user.disable",
        "user.enable",
        "permission.denied",
    ] {
        assert!(
            actions.contains(expected),
            "audit lacks {expected}: {actions:?}"
        );
    }
    let filtered = json(&sb(
        admin_home.path(),
        &[
            "admin", "audit", "--action", "login.", "--since", "1h", "--json",
        ],
        "",
    ));
    assert!(
        filtered
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"].as_str().unwrap().starts_with("login."))
    );
    ok(sb(admin_home.path(), &["admin", "audit", "--verify"], ""));
}
