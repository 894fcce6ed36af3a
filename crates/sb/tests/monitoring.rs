//! Monitoring end to end against the real server: remote_write and line protocol in, the
//! Prometheus query API out, durability across SIGKILL, a damaged log tail, and a real
//! Prometheus remote-writing into Switchboard with both answering the same queries alike.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use reqwest::Method;
use sb_client::Client;
use sb_monitor::remote_write;
use sb_tsdb::Labels;
use serde_json::{Value, json};
use std::time::Duration;

async fn write(c: &Client, series: &[(Labels, Vec<(i64, f64)>)]) -> (u16, String) {
    let resp = c
        .raw_with_headers(
            Method::POST,
            "/api/v1/write",
            &[
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "snappy"),
                ("x-prometheus-remote-write-version", "0.1.0"),
            ],
            remote_write::encode(series),
        )
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs)
}

/// `[(labels as JSON, value)]` of an instant vector answer.
fn vector(data: &Value) -> Vec<(Value, f64)> {
    data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"].clone(),
                r["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn remote_write_and_line_protocol_feed_the_prometheus_query_api() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let t0 = 1_700_000_000_000i64;
    let points: Vec<(i64, f64)> = (0..60)
        .map(|i| (t0 + i * 15_000, (i * 10) as f64))
        .collect();
    let (s, body) = write(
        &admin,
        &[
            (
                l(&[("__name__", "http_requests_total"), ("job", "api")]),
                points,
            ),
            (l(&[("__name__", "up"), ("job", "api")]), vec![(t0, 1.0)]),
        ],
    )
    .await;
    assert_eq!(s, 204, "{body}");

    // Influx line protocol with Influx's own `Token` scheme, at second precision.
    let token = admin
        .create_token(&sb_proto::TokenCreate {
            name: "telegraf".into(),
            scopes: vec![],
            expires_in_secs: None,
        })
        .await
        .unwrap();
    let auth = format!("Token {}", token.token.expose());
    let lines = format!(
        "cpu,host=web1 usage_idle=97.5,usage_user=2i {}\n",
        t0 / 1000 + 60
    );
    let resp = server
        .client()
        .raw_with_headers(
            Method::POST,
            "/api/v2/write?org=x&bucket=y&precision=s",
            &[("authorization", &auth)],
            lines.into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    let at = ((t0 + 600_000) as f64 / 1000.0).to_string();
    let data = admin
        .prometheus_api(
            "/api/v1/query",
            &[("query", "rate(http_requests_total[5m])"), ("time", &at)],
        )
        .await
        .unwrap();
    assert_eq!(data["resultType"], "vector");
    let v = vector(&data);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].0, json!({"job": "api"}));
    assert!((v[0].1 - 10.0 / 15.0).abs() < 1e-9, "{}", v[0].1);
    let data = admin
        .prometheus_api(
            "/api/v1/query",
            &[
                ("query", r#"cpu_usage_idle{host="web1"}"#),
                ("time", &((t0 + 120_000) / 1000).to_string()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(vector(&data)[0].1, 97.5);

    let start = (t0 / 1000).to_string();
    let end = ((t0 + 300_000) / 1000).to_string();
    let data = admin
        .prometheus_api(
            "/api/v1/query_range",
            &[
                ("query", "http_requests_total"),
                ("start", &start),
                ("end", &end),
                ("step", "1m"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(data["resultType"], "matrix");
    let values = data["result"][0]["values"].as_array().unwrap();
    assert_eq!(values.len(), 6);
    assert_eq!(values[5][1], "200");

    let series = admin
        .prometheus_api("/api/v1/series", &[("match[]", "{job=\"api\"}")])
        .await
        .unwrap();
    assert_eq!(series.as_array().unwrap().len(), 2);
    let names = admin.prometheus_api("/api/v1/labels", &[]).await.unwrap();
    assert_eq!(names, json!(["__name__", "host", "job"]));
    let jobs = admin
        .prometheus_api("/api/v1/label/__name__/values", &[])
        .await
        .unwrap();
    assert_eq!(
        jobs,
        json!([
            "cpu_usage_idle",
            "cpu_usage_user",
            "http_requests_total",
            "up"
        ])
    );

    // Errors come back in Prometheus' shape with a reason.
    let e = admin
        .prometheus_api("/api/v1/query", &[("query", "sum(")])
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), Some("bad_data")));
    let e = admin
        .prometheus_api("/api/v1/query", &[("query", "up"), ("time", "noon")])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("timestamp"), "{e}");
    let e = server
        .client()
        .prometheus_api("/api/v1/query", &[("query", "up")])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
}

#[tokio::test]
async fn bad_payloads_get_a_400_with_the_reason_and_store_nothing() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let post = |path: &'static str, body: Vec<u8>| {
        let admin = &admin;
        async move {
            let resp = admin
                .raw_with_headers(Method::POST, path, &[], body)
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (s, why) = post("/api/v1/write", b"definitely not snappy".to_vec()).await;
    assert_eq!(s, 400);
    assert!(
        why.contains("snappy") || why.contains("WriteRequest"),
        "{why}"
    );
    let junk = snap::raw::Encoder::new().compress_vec(&[0xff; 64]).unwrap();
    let (s, why) = post("/api/v1/write", junk).await;
    assert_eq!(s, 400);
    assert!(why.contains("WriteRequest"), "{why}");
    let (s, why) = post("/api/v2/write", b"cpu usage=1\ncpu usage=oops".to_vec()).await;
    assert_eq!(s, 400);
    assert!(why.contains("line 2"), "{why}");
    let (s, why) = post(
        "/api/v2/write?precision=fortnights",
        b"cpu usage=1".to_vec(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(why.contains("precision"), "{why}");
    let names = admin.prometheus_api("/api/v1/labels", &[]).await.unwrap();
    assert_eq!(names, json!([]), "nothing was stored");

    // Out-of-order samples are refused by name; the in-order rest is stored.
    let a = l(&[("__name__", "a")]);
    assert_eq!(
        write(&admin, &[(a.clone(), vec![(2000, 1.0)])]).await.0,
        204
    );
    let (s, why) = write(&admin, &[(a.clone(), vec![(1000, 0.0), (3000, 2.0)])]).await;
    assert_eq!(s, 400);
    assert!(
        why.contains("out of order") && why.contains("1 stored"),
        "{why}"
    );
}

#[test]
fn acknowledged_samples_survive_sigkill_and_a_torn_log_tail_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let server = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir.clone()),
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = rt.block_on(async {
        let admin = server.admin().await;
        let pid = server.pid();
        let writer = tokio::spawn(async move {
            let mut acked = 0i64;
            for i in 0..1_000_000i64 {
                let batch = [(l(&[("__name__", "seq")]), vec![(i * 1000, i as f64)])];
                match write(&admin, &batch).await {
                    (204, _) => acked = i + 1,
                    _ => break,
                }
            }
            acked
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        writer.await.unwrap()
    });
    drop(server);
    assert!(acked > 10, "the writer got going before the kill ({acked})");

    // Tear the log's tail, as a crash in the middle of a write would.
    let wal_dir = data_dir.join("tsdb").join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    std::io::Write::write_all(&mut f, &[2, 200, 0, 0, 0, 1, 2, 3, 4, 5, 6]).unwrap();
    drop(f);

    let log = tmp.path().join("restart.log");
    let restarted = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir),
        log_file: Some(log.clone()),
        ..Default::default()
    });
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("damaged tail") && logged.contains("bytes_dropped"),
        "the loss is reported: {logged}"
    );
    rt.block_on(async {
        let admin = restarted.login("admin").await;
        let at = (acked as f64).to_string();
        let data = admin
            .prometheus_api(
                "/api/v1/query",
                &[("query", "count_over_time(seq[1000000s])"), ("time", &at)],
            )
            .await
            .unwrap();
        let stored = vector(&data)[0].1 as i64;
        assert!(stored >= acked, "{stored} stored of {acked} acknowledged");
        let data = admin
            .prometheus_api("/api/v1/query", &[("query", "seq"), ("time", &at)])
            .await
            .unwrap();
        assert!(vector(&data)[0].1 as i64 >= acked - 1);
    });
}
