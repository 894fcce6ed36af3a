//! `/metrics`, `/v1/openapi.json`, health endpoints and graceful shutdown.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use futures_util::StreamExt;
use reqwest::Method;
use std::collections::{BTreeSet, HashMap};
use tokio_tungstenite::tungstenite::Message;

/// A strict check of the OpenMetrics/Prometheus text format: every sample belongs to a family
/// declared with `# TYPE`, names and labels are well-formed, values are numbers, histogram
/// buckets are cumulative, and the exposition ends with `# EOF`.
fn validate_exposition(text: &str) -> Result<HashMap<String, String>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut last_bucket: HashMap<String, f64> = HashMap::new();
    let mut saw_eof = false;
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for (no, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line:?}", no + 1);
        if saw_eof {
            return Err(err("content after # EOF"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts.next().ok_or_else(|| err("comment without name"))?;
            if !name_ok(name) {
                return Err(err("bad metric name"));
            }
            match kind {
                "TYPE" => {
                    let t = parts.next().ok_or_else(|| err("TYPE without type"))?;
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                        "gaugehistogram",
                    ]
                    .contains(&t)
                    {
                        return Err(err("unknown type"));
                    }
                    types.insert(name.to_string(), t.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => return Err(err("unknown comment kind")),
            }
            continue;
        }
        let (series, value) = match line.find('}') {
            Some(close) => (&line[..=close], line[close + 1..].trim()),
            None => line.split_once(' ').ok_or_else(|| err("no value"))?,
        };
        let (name, labels) = match series.find('{') {
            Some(open) => (&series[..open], &series[open + 1..series.len() - 1]),
            None => (series, ""),
        };
        if !name_ok(name) {
            return Err(err("bad sample name"));
        }
        let mut le = None;
        let mut other_labels = Vec::new();
        if !labels.is_empty() {
            let mut rest = labels;
            while !rest.is_empty() {
                let (lname, after) = rest.split_once("=\"").ok_or_else(|| err("bad label"))?;
                if !name_ok(lname) {
                    return Err(err("bad label name"));
                }
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after.char_indices() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or_else(|| err("unterminated label value"))?;
                if lname == "le" {
                    le = Some(after[..end].to_string());
                } else {
                    other_labels.push(format!("{lname}={}", &after[..end]));
                }
                rest = after[end + 1..].trim_start_matches(',');
            }
        }
        let value = value.split(' ').next().unwrap_or("");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| err("value is not a number"))?,
        };
        let family = ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(err("sample without a # TYPE for its family"));
        }
        if name.ends_with("_bucket") {
            le.ok_or_else(|| err("bucket without le"))?;
            let key = format!("{name}{{{}}}", other_labels.join(","));
            let prev = last_bucket.insert(key, v).unwrap_or(0.0);
            if v < prev {
                return Err(err("histogram buckets are not cumulative"));
            }
        }
    }
    if !saw_eof {
        return Err("no # EOF".into());
    }
    Ok(types)
}

#[tokio::test]
async fn metrics_are_valid_exposition_with_the_server_figures() {
    let server = TestServer::start();
    let admin = server.admin().await;
    admin.me().await.unwrap();
    let _ = server
        .client()
        .raw(Method::GET, "/v1/nope", None)
        .await
        .unwrap();
    let mut ws = admin.ws_connect().await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    let resp = server
        .client()
        .raw(Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = resp.text().await.unwrap();
    let types = validate_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (family, t) in [
        ("sb_http_requests", "counter"),
        ("sb_http_request_duration_seconds", "histogram"),
        ("sb_connections_open", "gauge"),
        ("sb_websockets_open", "gauge"),
        ("sb_store_operation_duration_seconds", "histogram"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(t), "{family}");
    }
    assert!(
        text.contains(r#"sb_http_requests_total{method="GET",route="/v1/me",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="unmatched",status="404""#),
        "unknown paths share one label"
    );
    assert!(text.contains("sb_websockets_open 1"));
    assert!(text.contains(r#"sb_store_operation_duration_seconds_count{op="insert_session"}"#));

    if let Some(promtool) = external("promtool") {
        let out = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(text.as_bytes());
        // promtool exits 1 when it cannot parse, 3 when it only has lint findings.
        let report = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "promtool could not parse: {report}"
        );
        // promtool reads the classic text format, where HELP names the `_total` sample; in
        // OpenMetrics HELP names the counter family. That mismatch is the only finding allowed.
        for problem in report.lines().filter(|l| !l.trim().is_empty()) {
            let family = problem
                .strip_suffix(" no help text")
                .and_then(|n| n.strip_suffix("_total"))
                .unwrap_or_else(|| panic!("promtool lint: {problem}"));
            assert!(text.contains(&format!("# HELP {family} ")), "{problem}");
        }
    }
}

#[test]
fn validator_rejects_broken_expositions() {
    assert!(validate_exposition("# TYPE a counter\na_total 1\n# EOF").is_ok());
    assert!(validate_exposition("a_total 1\n# EOF").is_err(), "no TYPE");
    assert!(validate_exposition("# TYPE a counter\na_total x\n# EOF").is_err());
    assert!(
        validate_exposition("# TYPE a counter\na_total 1\n").is_err(),
        "no EOF"
    );
    assert!(
        validate_exposition(
            "# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"2\"} 3\n# EOF"
        )
        .is_err()
    );
    assert!(validate_exposition("# TYPE a gauge\na{x=\"unterminated} 1\n# EOF").is_err());
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
        child.wait_with_output().expect("wait")
    }
}

#[tokio::test]
async fn metrics_can_require_a_bearer_token() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_METRICS__BEARER_TOKEN", "scrape-secret-123".into())],
        ..Default::default()
    });
    let anon = server
        .client()
        .raw(Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    let scraper = server.client_with(&sb_core::Secret::new("scrape-secret-123".into()));
    assert_eq!(
        scraper
            .raw(Method::GET, "/metrics", None)
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn openapi_documents_every_route_and_every_documented_route_exists() {
    let server = TestServer::start();
    let doc: serde_json::Value = server
        .client()
        .raw(Method::GET, "/v1/openapi.json", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/v1/auth/register"),
        ("POST", "/v1/auth/login"),
        ("POST", "/v1/auth/logout"),
        ("GET", "/v1/me"),
        ("PATCH", "/v1/me"),
        ("POST", "/v1/me/password"),
        ("GET", "/v1/sessions"),
        ("DELETE", "/v1/sessions/{id}"),
        ("GET", "/v1/tokens"),
        ("POST", "/v1/tokens"),
        ("DELETE", "/v1/tokens/{id}"),
        ("GET", "/v1/admin/users"),
        ("PATCH", "/v1/admin/users/{user}"),
        ("POST", "/v1/admin/invites"),
        ("GET", "/v1/admin/audit"),
        ("GET", "/v1/admin/audit/verify"),
        ("GET", "/v1/rooms"),
        ("POST", "/v1/rooms"),
        ("GET", "/v1/rooms/public"),
        ("POST", "/v1/rooms/direct"),
        ("GET", "/v1/rooms/{room}"),
        ("POST", "/v1/rooms/{room}/join"),
        ("POST", "/v1/rooms/{room}/leave"),
        ("GET", "/v1/rooms/{room}/members"),
        ("POST", "/v1/rooms/{room}/members"),
        ("DELETE", "/v1/rooms/{room}/members/{username}"),
        ("PATCH", "/v1/rooms/{room}/members/{username}"),
        ("POST", "/v1/rooms/{room}/bans"),
        ("GET", "/v1/rooms/{room}/messages"),
        ("POST", "/v1/rooms/{room}/messages"),
        ("GET", "/v1/search/messages"),
        ("POST", "/v1/rooms/{room}/read"),
        ("POST", "/v1/rooms/{room}/attachments"),
        ("POST", "/v1/mls/key-packages"),
        ("POST", "/v1/rooms/{room}/mls/claim"),
        ("POST", "/v1/rooms/{room}/mls/handshakes"),
        ("GET", "/v1/rooms/{room}/mls/handshakes"),
        ("POST", "/v1/mls/welcomes"),
        ("GET", "/v1/rooms/{room}/attachments/{id}"),
        ("GET", "/v1/rooms/{room}/read"),
        ("GET", "/v1/ws"),
        ("GET", "/v1/alerts"),
        ("POST", "/v1/alerts/reload"),
        ("GET", "/v1/alerts/silences"),
        ("POST", "/v1/alerts/silences"),
        ("DELETE", "/v1/alerts/silences/{id}"),
        ("POST", "/v1/admin/blobs/scrub"),
        ("POST", "/v1/admin/blobs/gc"),
        ("POST", "/v1/files/uploads"),
        ("PUT", "/v1/files/uploads/{upload}/chunks/{chunk}"),
        ("POST", "/v1/files/uploads/{upload}/commit"),
        ("GET", "/v1/files"),
        ("DELETE", "/v1/files"),
        ("GET", "/v1/files/versions"),
        ("GET", "/v1/files/content"),
        ("GET", "/v1/files/chunks"),
        ("POST", "/v1/devices"),
        ("GET", "/v1/devices"),
        ("GET", "/v1/devices/{device}"),
        ("DELETE", "/v1/devices/{device}"),
        ("POST", "/v1/devices/{device}/rotate"),
        ("POST", "/v1/devices/{device}/commands"),
        ("GET", "/v1/devices/{device}/commands/{command}"),
        ("POST", "/v1/devices/{device}/certificate"),
        ("GET", "/v1/devices/{device}/twin"),
        ("PATCH", "/v1/devices/{device}/twin"),
        ("POST", "/v1/firmware"),
        ("GET", "/v1/firmware"),
        ("GET", "/v1/firmware/{version}/image"),
        ("POST", "/v1/rollouts"),
        ("GET", "/v1/rollouts"),
        ("GET", "/v1/rollouts/{id}"),
        ("POST", "/v1/rollouts/{id}/cancel"),
        ("POST", "/v1/rollouts/{id}/resume"),
        ("PUT", "/v1/files/content"),
        ("GET", "/v1/dashboards"),
        ("PUT", "/v1/dashboards/{name}"),
        ("DELETE", "/v1/dashboards/{name}"),
        ("POST", "/v1/console/login"),
        ("GET", "/v1/console/session"),
        ("POST", "/v1/console/logout"),
        ("POST", "/v1/files/restore"),
        ("POST", "/v1/files/move"),
        ("GET", "/v1/files/spaces"),
        ("POST", "/v1/files/spaces"),
        ("PUT", "/v1/files/spaces/{space}/members"),
        ("POST", "/v1/files/links"),
        ("GET", "/v1/files/links/{token}"),
        ("GET", "/v1/files/changes"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/v1/openapi.json"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(documented, expected);
    // Every documented route is served (it may refuse an anonymous caller, but it exists).
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "01a21701-c832-7012-98da-efc981ce988d")
            .replace("{user}", "someone")
            .replace("{room}", "01a21701-c832-7012-98da-efc981ce988d")
            .replace("{username}", "someone")
            .replace("{upload}", "01a21701-c832-7012-98da-efc981ce988d")
            .replace("{chunk}", &"0".repeat(64))
            .replace("{space}", "01a21701-c832-7012-98da-efc981ce988d")
            .replace("{token}", "sbl_unknown");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let resp = server.client().raw(m, &concrete, None).await.unwrap();
        let status = resp.status().as_u16();
        if path == "/v1/files/links/{token}" {
            // Needs no credential: an unknown link is the route's own 404.
            let body = resp.text().await.unwrap();
            assert!(body.contains("unknown or has expired"), "{path}: {body}");
            continue;
        }
        assert!(![404, 405].contains(&status), "{method} {path} -> {status}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start();
    let c = server.client();
    assert_eq!(
        c.raw(Method::GET, "/healthz", None).await.unwrap().status(),
        200
    );
    let r: serde_json::Value = c
        .raw(Method::GET, "/readyz", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "ready");
}

#[tokio::test]
async fn sigterm_closes_websockets_with_going_away_and_exits_cleanly() {
    let mut server = TestServer::start();
    let admin = server.admin().await;
    let mut ws = admin.ws_connect().await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    });
    let exited_ok = tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    assert_eq!(reader.await.unwrap(), Some(1001));
    assert!(exited_ok, "exit status 0 after a graceful shutdown");
}

#[tokio::test]
async fn serves_http2_and_http1() {
    let server = TestServer::start();
    let resp = server
        .client()
        .raw(Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
    // The WebSocket client offers only http/1.1 and upgrades over it.
    let admin = server.admin().await;
    let mut ws = admin.ws_connect().await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_at_the_door() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_LIMITS__CONNECTIONS_MAX", "1".into())],
        ..Default::default()
    });
    let addr = server.addr.clone();
    let handshake = move || {
        let addr = addr.clone();
        async move { raw_tls(&addr, b"http/1.1").await }
    };
    let first = handshake().await;
    let second = tokio::spawn(handshake());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "second connection waits while the first holds the only slot"
    );
    drop(first);
    tokio::time::timeout(std::time::Duration::from_secs(10), second)
        .await
        .expect("served once the slot frees")
        .expect("handshake completes");
}

#[tokio::test]
async fn oversize_headers_are_refused_and_others_still_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_LIMITS__HEADER_SIZE_BYTES_MAX", "8192".into())],
        ..Default::default()
    });
    let mut tls = raw_tls(&server.addr, b"http/1.1").await;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    // The server may stop reading once the limit is hit, so the write can fail part-way.
    let _ = tls.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let head = String::from_utf8_lossy(&response);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    let mut ok = raw_tls(&server.addr, b"http/1.1").await;
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    ok.read_to_end(&mut response).await.unwrap();
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));
}
