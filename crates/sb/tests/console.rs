//! The web console against the real server: its security (CSP, cookie flags, CSRF, Origin),
//! the routes it relies on, and — with Chromium, Node.js and playwright-core present — the
//! browser end-to-end run in `tests/console/e2e.mjs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// `POST /v1/console/login` as a page at `origin` sends it.
async fn login_from(server: &TestServer, origin: &str, username: &str) -> (u16, String) {
    let body = format!(r#"{{"username":"{username}","password":"{PASSWORD}"}}"#);
    raw_http(
        &server.addr,
        &format!(
            "POST /v1/console/login HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            server.addr,
            body.len()
        ),
    )
    .await
}

/// Logs in through the console route; the session cookie's value and the CSRF token.
async fn console_login(server: &TestServer, username: &str) -> (String, String, String) {
    let (status, text) = login_from(server, &format!("https://{}", server.addr), username).await;
    assert_eq!(status, 200, "{text}");
    let set_cookie = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a Set-Cookie header")
        .to_string();
    let value = set_cookie
        .split_once("__Host-sb_session=")
        .and_then(|(_, rest)| rest.split(';').next())
        .expect("the session cookie")
        .to_string();
    let json: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    (
        value,
        json["csrf"].as_str().unwrap().to_string(),
        set_cookie,
    )
}

/// A JSON POST carrying the console cookie, with the given extra header lines.
async fn post_with_cookie(
    server: &TestServer,
    path: &str,
    cookie: &str,
    extra: &str,
    body: &str,
) -> (u16, String) {
    raw_http(
        &server.addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nCookie: __Host-sb_session={cookie}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len(),
            host = server.addr,
        ),
    )
    .await
}

#[tokio::test]
async fn the_console_session_cookie_is_httponly_and_writes_need_the_csrf_token_and_our_origin() {
    let server = TestServer::start();
    let _admin = server.admin().await;
    let (cookie, csrf, set_cookie) = console_login(&server, "admin").await;
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(flag), "{flag} in {set_cookie}");
    }
    assert!(!set_cookie.contains("Domain"), "{set_cookie}");
    assert_ne!(cookie, csrf, "the CSRF token is not the session token");

    let room = r#"{"name":"csrf-test"}"#;
    let origin = format!("Origin: https://{}\r\n", server.addr);
    // No token, a wrong token, another site's Origin, a cross-site fetch: refused, nothing made.
    let refused = [
        origin.clone(),
        format!("{origin}X-CSRF-Token: {}\r\n", "0".repeat(64)),
        format!("Origin: https://evil.example\r\nX-CSRF-Token: {csrf}\r\n"),
        format!("{origin}Sec-Fetch-Site: cross-site\r\nX-CSRF-Token: {csrf}\r\n"),
    ];
    for extra in &refused {
        let (status, text) = post_with_cookie(&server, "/v1/rooms", &cookie, extra, room).await;
        assert_eq!(status, 403, "{extra}: {text}");
        assert!(text.contains("reload the console"), "{text}");
    }
    let rooms = server.login("admin").await.rooms().await.unwrap();
    assert!(rooms.is_empty(), "a refused request changed nothing");

    let ok = format!("{origin}Sec-Fetch-Site: same-origin\r\nX-CSRF-Token: {csrf}\r\n");
    let (status, text) = post_with_cookie(&server, "/v1/rooms", &cookie, &ok, room).await;
    assert_eq!(status, 201, "{text}");

    // Reads need no token but still our origin; the session route hands the token back.
    let get = |extra: String| {
        let addr = server.addr.clone();
        let cookie = cookie.clone();
        async move {
            raw_http(
                &addr,
                &format!("GET /v1/console/session HTTP/1.1\r\nHost: {addr}\r\nCookie: __Host-sb_session={cookie}\r\n{extra}\r\n"),
            )
            .await
        }
    };
    let (status, text) = get(String::new()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(&csrf), "{text}");
    let (status, _) = get("Origin: https://evil.example\r\n".into()).await;
    assert_eq!(status, 403);

    // Monitoring's query API takes the cookie too, but only with the token.
    let q = "GET /api/v1/query?query=vector(1) HTTP/1.1";
    let (status, _) = raw_http(
        &server.addr,
        &format!(
            "{q}\r\nHost: {}\r\nCookie: __Host-sb_session={cookie}\r\n\r\n",
            server.addr
        ),
    )
    .await;
    assert_eq!(status, 403);
    let (status, text) = raw_http(
        &server.addr,
        &format!(
            "{q}\r\nHost: {}\r\nCookie: __Host-sb_session={cookie}\r\nX-CSRF-Token: {csrf}\r\n\r\n",
            server.addr
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");

    // A WebSocket opened by another site's page is refused; by ours, accepted.
    let upgrade = |origin: String| {
        let addr = server.addr.clone();
        let cookie = cookie.clone();
        async move {
            raw_http(
                &addr,
                &format!("GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nCookie: __Host-sb_session={cookie}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
            )
            .await
        }
    };
    let (status, _) = upgrade("https://evil.example".into()).await;
    assert_eq!(status, 403);
    let (status, text) = upgrade(format!("https://{}", server.addr)).await;
    assert_eq!(status, 101, "{text}");

    // Logging out revokes the session and clears the cookie.
    let (status, text) = post_with_cookie(&server, "/v1/console/logout", &cookie, &ok, "").await;
    assert_eq!(status, 204, "{text}");
    assert!(text.contains("Max-Age=0"), "{text}");
    let (status, _) = get(String::new()).await;
    assert_eq!(status, 401, "the cookie no longer works");

    // Logging in from another site's page is refused too.
    let (status, _) = login_from(&server, "https://evil.example", "admin").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn pages_carry_a_strict_content_security_policy_and_api_responses_a_locked_one() {
    let server = TestServer::start();
    let host = &server.addr;
    let (status, page) = raw_http(host, &format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
    assert_eq!(status, 200);
    let csp = page
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-security-policy:")
        })
        .expect("a CSP header")
        .to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "style-src 'self';",
        "connect-src 'self';",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-"), "{csp}");
    assert!(
        page.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff")
    );
    assert!(page.contains("<script type=\"module\" src=\"/console/app.js\">"));
    // Nothing inline for the policy to have to allow.
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );

    let (status, js) = raw_http(
        host,
        &format!("GET /console/vendor/uPlot.esm.js HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        js.to_ascii_lowercase()
            .contains("content-type: text/javascript")
    );
    let etag = js
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("etag:"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .expect("an ETag");
    let (status, _) = raw_http(
        host,
        &format!("GET /console/vendor/uPlot.esm.js HTTP/1.1\r\nHost: {host}\r\nIf-None-Match: {etag}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 304);
    let (status, _) = raw_http(
        host,
        &format!("GET /console/../Cargo.toml HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 404);

    let (_, api) = raw_http(
        host,
        &format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert!(
        api.contains("default-src 'none'; frame-ancestors 'none'; sandbox"),
        "{api}"
    );
}

#[tokio::test]
async fn a_whole_file_put_is_chunked_by_the_server_deduplicated_and_versioned() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let token = server
        .client()
        .login("admin", sb_core::Secret::new(PASSWORD.into()))
        .await
        .unwrap()
        .token;
    let http = reqwest_client();
    let url = |q: &str| format!("{}/v1/files/content?{q}", server.url);
    // Noise, so content-defined chunking finds cut points (about 1 MiB apart).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..6_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let put = |q: String, body: Vec<u8>| {
        http.put(url(&q))
            .bearer_auth(token.expose())
            .body(body)
            .send()
    };
    let r = put("path=/docs/big.bin".into(), data.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: serde_json::Value = r.json().await.unwrap();
    assert_eq!(info["version"], 1);
    assert_eq!(info["size"], data.len());
    assert_eq!(info["blake3"], blake3::hash(&data).to_hex().as_str());
    let get = |what: &str| {
        http.get(format!("{}/v1/files/{what}?path=/docs/big.bin", server.url))
            .bearer_auth(token.expose())
            .send()
    };
    let content = get("content").await.unwrap().bytes().await.unwrap();
    assert_eq!(content.as_ref(), &data[..]);
    // The same content again: a second version over the same chunks.
    let chunks_before: serde_json::Value = get("chunks").await.unwrap().json().await.unwrap();
    let r = put("path=/docs/big.bin".into(), data.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let chunks_after: serde_json::Value = get("chunks").await.unwrap().json().await.unwrap();
    assert_eq!(chunks_before["chunks"], chunks_after["chunks"]);
    assert!(
        chunks_after["chunks"].as_array().unwrap().len() > 1,
        "cut into content-defined chunks: {chunks_after}"
    );
    // A stale base version is refused and changes nothing.
    let r = put("path=/docs/big.bin&base_version=1".into(), b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let versions = admin.files_versions(None, "/docs/big.bin").await.unwrap();
    assert_eq!(versions.len(), 2);
    let content = get("content").await.unwrap().bytes().await.unwrap();
    assert_eq!(content.as_ref(), &data[..]);
}

#[tokio::test]
async fn a_whole_file_put_beyond_the_size_limit_is_refused_and_stores_nothing() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_FILES__FILE_SIZE_BYTES_MAX", "1000".into())],
        ..Default::default()
    });
    let admin = server.admin().await;
    let token = server
        .client()
        .login("admin", sb_core::Secret::new(PASSWORD.into()))
        .await
        .unwrap()
        .token;
    let r = reqwest_client()
        .put(format!("{}/v1/files/content?path=/big", server.url))
        .bearer_auth(token.expose())
        .body(vec![1u8; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("files.file_size_bytes_max")
    );
    assert!(admin.files_list(None, "/").await.unwrap().is_empty());
}

#[tokio::test]
async fn dashboards_are_saved_per_user_checked_and_bounded() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_MONITORING__DASHBOARDS_PER_USER_MAX", "2".into())],
        ..Default::default()
    });
    let admin = server.admin().await;
    let _bob = server.user(&admin, "bob").await;
    let http = reqwest_client();
    let token = |user: &'static str| {
        let c = server.client();
        async move {
            c.login(user, sb_core::Secret::new(PASSWORD.into()))
                .await
                .unwrap()
                .token
        }
    };
    let (alice_t, bob_t) = (token("admin").await, token("bob").await);
    let put = |t: &sb_core::Secret<String>, name: &str, body: serde_json::Value| {
        http.put(format!("{}/v1/dashboards/{name}", server.url))
            .bearer_auth(t.expose())
            .json(&body)
            .send()
    };
    let board = |q: &str| {
        serde_json::json!({"name": "x", "range_secs": 3600, "refresh_secs": 30,
            "panels": [{"title": "Requests", "query": q}]})
    };
    let r = put(&alice_t, "ops", board("rate(up[5m])")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = put(&alice_t, "bad", board("rate(up[5m]")).await.unwrap();
    assert_eq!(r.status(), 400, "a panel that does not parse is refused");
    put(&alice_t, "net", board("up")).await.unwrap();
    let r = put(&alice_t, "third", board("up")).await.unwrap();
    assert_eq!(r.status(), 409, "beyond monitoring.dashboards_per_user_max");
    let list = |t: &sb_core::Secret<String>| {
        http.get(format!("{}/v1/dashboards", server.url))
            .bearer_auth(t.expose())
            .send()
    };
    let mine: serde_json::Value = list(&alice_t).await.unwrap().json().await.unwrap();
    let names: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["net", "ops"]);
    assert_eq!(mine[1]["panels"][0]["query"], "rate(up[5m])");
    let bobs: serde_json::Value = list(&bob_t).await.unwrap().json().await.unwrap();
    assert_eq!(bobs, serde_json::json!([]), "each user sees only their own");
    let r = http
        .delete(format!("{}/v1/dashboards/ops", server.url))
        .bearer_auth(bob_t.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nor deletes another's");
}

fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(accept_any_tls())
        .build()
        .unwrap()
}

/// The browser run: skipped (loudly) without Chromium, Node.js or the npm packages, unless
/// `SB_REQUIRE_EXTERNAL=1`.
fn browser_tools() -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let chromium = external("chromium")?;
    let node = external("node")?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    if !dir.join("node_modules/playwright-core").is_dir() {
        assert!(
            std::env::var("SB_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "playwright-core is required (SB_REQUIRE_EXTERNAL=1): run npm ci in {}",
            dir.display()
        );
        eprintln!(
            "!!! SKIPPING the browser tests: playwright-core is not installed (cd {} && npm ci)",
            dir.display()
        );
        return None;
    }
    Some((chromium, node, dir))
}

// Multi-threaded: the simulator and the browser are separate processes the test waits on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let Some((chromium, node, dir)) = browser_tools() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // An alert that fires at once, for the silence flow.
    let rules = tmp.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n- name: console\n  interval: 1s\n  rules:\n  - alert: ConsoleCheck\n    expr: vector(1) > 0\n    labels:\n      severity: page\n    annotations:\n      summary: always firing, for the console test\n",
    )
    .unwrap();
    let config = tmp.path().join("sb.toml");
    std::fs::write(
        &config,
        format!(
            "[monitoring]\nrule_files = [{:?}]\n",
            rules.display().to_string()
        ),
    )
    .unwrap();
    let server = TestServer::start_with(ServerOptions {
        config: Some(config),
        mqtt: true,
        ..Default::default()
    });
    let home = tmp.path().join("home");
    register_admin_cli(&server, &home);
    let admin = server.login("admin").await;
    let _bob = server.user(&admin, "bob").await;
    // An end-to-end encrypted room, whose keys no browser holds.
    admin
        .create_room(&sb_proto::RoomCreate {
            name: "secret-plans".into(),
            topic: String::new(),
            public: false,
            encrypted: true,
        })
        .await
        .unwrap();
    // One simulated device sending telemetry every second.
    let mut simulator = std::process::Command::new(BIN)
        .args([
            "device",
            "simulate",
            "--count",
            "1",
            "--prefix",
            "sensor",
            "--interval",
            "1s",
        ])
        .arg("--mqtt")
        .arg(server.mqtt.as_deref().unwrap())
        .env("XDG_CONFIG_HOME", &home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let device = loop {
        let list = admin.devices().await.unwrap();
        if let Some(d) = list.iter().find(|d| d.online) {
            break d.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the simulator did not connect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new(node)
        .arg(dir.join("e2e.mjs"))
        .env("SB_URL", &server.url)
        .env("SB_PASSWORD", PASSWORD)
        .env("SB_DEVICE_ID", &device.id)
        .env("SB_DEVICE_NAME", &device.name)
        .env("SB_CHROMIUM", chromium)
        .env("SB_SCREENSHOTS", &shots)
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    let _ = simulator.kill();
    let _ = simulator.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the browser run failed:\n{stdout}\n{stderr}"
    );
    // Every main page, at desktop and phone width.
    for page in [
        "login",
        "chat",
        "devices",
        "device",
        "files",
        "query",
        "dashboards",
        "alerts",
        "admin",
        "account",
    ] {
        for width in ["desktop", "phone"] {
            let png = shots.join(format!("{page}-{width}.png"));
            let bytes = std::fs::read(&png).unwrap_or_else(|_| panic!("{} saved", png.display()));
            assert!(
                bytes.starts_with(b"\x89PNG") && bytes.len() > 5000,
                "{}",
                png.display()
            );
        }
    }
    eprintln!("screenshots in {}", shots.display());
}

#[tokio::test]
async fn a_whole_file_put_may_outlast_the_request_timeout_while_data_flows_but_not_stall() {
    use futures_util::StreamExt;
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_LIMITS__REQUEST_TIMEOUT_MS", "1000".into())],
        ..Default::default()
    });
    let admin = server.admin().await;
    let token = server
        .client()
        .login("admin", sb_core::Secret::new(PASSWORD.into()))
        .await
        .unwrap()
        .token;
    let http = reqwest_client();
    // Twelve pieces 200 ms apart: 2.4 s in all, past the 1 s request timeout, never idle long.
    let slow = futures_util::stream::iter(0..12u8).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, std::io::Error>(vec![i; 1000])
    });
    let r = http
        .put(format!("{}/v1/files/content?path=/slow.bin", server.url))
        .bearer_auth(token.expose())
        .body(reqwest::Body::wrap_stream(slow))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // One piece, then silence for 3 s: the server gives up and stores nothing.
    let stalled = futures_util::stream::iter(0..2u8).then(|i| async move {
        if i == 1 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok::<_, std::io::Error>(vec![i; 1000])
    });
    let r = http
        .put(format!("{}/v1/files/content?path=/stalled.bin", server.url))
        .bearer_auth(token.expose())
        .body(reqwest::Body::wrap_stream(stalled))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 400);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("limits.request_timeout_ms")
        );
    }
    let files: Vec<String> = admin
        .files_list(None, "/")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(files, ["/slow.bin"]);

    // An attachment that stalls is cut off too, and said to be (not "too large").
    let room = admin
        .create_room(&sb_proto::RoomCreate {
            name: "r".into(),
            topic: String::new(),
            public: false,
            encrypted: false,
        })
        .await
        .unwrap();
    let stalled = futures_util::stream::iter(0..2u8).then(|i| async move {
        if i == 1 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok::<_, std::io::Error>(vec![i; 1000])
    });
    let r = http
        .post(format!(
            "{}/v1/rooms/{}/attachments?name=a.bin",
            server.url, room.id
        ))
        .bearer_auth(token.expose())
        .body(reqwest::Body::wrap_stream(stalled))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("cut off"));
    }
}
