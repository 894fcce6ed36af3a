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
    try_write(c, series).await.unwrap()
}

async fn try_write(
    c: &Client,
    series: &[(Labels, Vec<(i64, f64)>)],
) -> Result<(u16, String), sb_client::ClientError> {
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
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
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
    // Without the server's own metrics, so the store holds only what the test writes.
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_MONITORING__SELF_SCRAPE_INTERVAL_MS", "0".into())],
        ..Default::default()
    });
    let admin = server.admin().await;
    // An hour ago, on a whole minute: recent enough for retention.
    let t0 = (now_ms() - 3_600_000) / 60_000 * 60_000;
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

    // The server reports on its store.
    let text = admin
        .raw(Method::GET, "/metrics", None)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("sb_samples_ingested_total 63"), "{text}");
    assert!(text.contains("sb_tsdb_series 4"), "{text}");

    // Grafana posts its queries as a form.
    let resp = admin
        .raw_with_headers(
            Method::POST,
            "/api/v1/query",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("query=sum%28http_requests_total%29&time={at}").into_bytes(),
        )
        .await
        .unwrap();
    let posted: Value = resp.json().await.unwrap();
    assert_eq!(posted["data"]["result"][0]["value"][1], "400");
    let info = admin
        .prometheus_api("/api/v1/status/buildinfo", &[])
        .await
        .unwrap();
    assert!(info["version"].as_str().unwrap().starts_with('2'));

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
    // Without the server's own metrics, so the store holds only what the test writes.
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_MONITORING__SELF_SCRAPE_INTERVAL_MS", "0".into())],
        ..Default::default()
    });
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
    let t = now_ms();
    assert_eq!(write(&admin, &[(a.clone(), vec![(t, 1.0)])]).await.0, 204);
    let (s, why) = write(
        &admin,
        &[(a.clone(), vec![(t - 1000, 0.0), (t + 1000, 2.0)])],
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        why.contains("out of order") && why.contains("1 stored"),
        "{why}"
    );
    // So are samples older than the retention period.
    let (s, why) = write(&admin, &[(l(&[("__name__", "b")]), vec![(1000, 1.0)])]).await;
    assert_eq!(s, 400);
    assert!(why.contains("older than the retention period"), "{why}");
}

#[test]
fn acknowledged_samples_survive_sigkill_and_a_torn_log_tail_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    // Checkpoints run every second, so the kill can land during or between them.
    let server = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir.clone()),
        env: vec![("SB_MONITORING__CHECKPOINT_INTERVAL_MS", "1000".into())],
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Recent timestamps, one millisecond apart, so retention keeps them all.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let acked = rt.block_on(async {
        let admin = server.admin().await;
        let pid = server.pid();
        let writer = tokio::spawn(async move {
            let mut acked = 0i64;
            for i in 0..1_000_000i64 {
                let batch = [(l(&[("__name__", "seq")]), vec![(base + i, i as f64)])];
                match try_write(&admin, &batch).await {
                    Ok((204, _)) => acked = i + 1,
                    _ => break,
                }
            }
            acked
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        writer.await.unwrap()
    });
    drop(server);
    assert!(acked > 10, "the writer got going before the kill ({acked})");
    assert!(
        data_dir.join("tsdb").join("checkpoint").exists(),
        "a checkpoint was written while the writer ran"
    );

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
        let at = ((base + acked) as f64 / 1000.0).to_string();
        let data = admin
            .prometheus_api(
                "/api/v1/query",
                &[("query", "count_over_time(seq[1h])"), ("time", &at)],
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

/// Kills the child process when dropped.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A result as a comparable set: metric JSON (as text) → value (NaN kept as NaN).
fn result_set(data: &Value) -> std::collections::BTreeMap<String, Vec<(f64, f64)>> {
    let num = |v: &Value| -> f64 {
        match v.as_str().unwrap() {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            s => s.parse().unwrap(),
        }
    };
    let pair = |p: &Value| (p[0].as_f64().unwrap(), num(&p[1]));
    let mut out = std::collections::BTreeMap::new();
    match data["resultType"].as_str().unwrap() {
        "scalar" => {
            out.insert("scalar".into(), vec![pair(&data["result"])]);
        }
        "vector" => {
            for r in data["result"].as_array().unwrap() {
                out.insert(r["metric"].to_string(), vec![pair(&r["value"])]);
            }
        }
        _ => {
            for r in data["result"].as_array().unwrap() {
                let points = r["values"].as_array().unwrap().iter().map(pair).collect();
                out.insert(r["metric"].to_string(), points);
            }
        }
    }
    out
}

fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

#[tokio::test]
async fn prometheus_remote_writes_here_and_both_answer_queries_alike() {
    let Some(prometheus) = external("prometheus") else {
        return;
    };
    let server = TestServer::start();
    let admin = server.admin().await;
    let token = admin
        .create_token(&sb_proto::TokenCreate {
            name: "prometheus".into(),
            scopes: vec![],
            expires_in_secs: None,
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        r#"
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: prom
    static_configs:
      - targets: ["127.0.0.1:{port}"]
remote_write:
  - url: https://{addr}/api/v1/write
    authorization:
      credentials: {token}
    tls_config:
      insecure_skip_verify: true
    queue_config:
      min_shards: 1
      max_shards: 1
      batch_send_deadline: 500ms
"#,
        addr = server.addr,
        token = token.token.expose()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let child = std::process::Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let _reaper = Reaper(child);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let prom = reqwest::Client::new();
    let prom_url = format!("http://127.0.0.1:{port}");

    // Let it scrape itself for a while; every sample reaches us through remote_write.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let newest = admin
        .prometheus_api(
            "/api/v1/query",
            &[("query", r#"timestamp(up{job="prom"})"#)],
        )
        .await
        .unwrap();
    let newest = vector(&newest)
        .first()
        .map(|v| v.1)
        .expect("samples arrived through remote_write");
    // A time every sample up to which has surely been forwarded.
    let t = (newest - 3.0).floor().to_string();

    let queries = [
        "up",
        "prometheus_http_requests_total",
        "prometheus_http_requests_total > 0",
        "rate(prometheus_http_requests_total[10s])",
        "sum by (handler) (rate(prometheus_http_requests_total[10s]))",
        "increase(prometheus_tsdb_head_samples_appended_total[10s])",
        "irate(process_cpu_seconds_total[10s])",
        "deriv(process_resident_memory_bytes[10s])",
        "delta(go_goroutines[10s])",
        "idelta(go_goroutines[10s])",
        "changes(go_goroutines[10s])",
        "resets(process_cpu_seconds_total[10s])",
        "avg_over_time(go_goroutines[10s])",
        "min_over_time(go_goroutines[10s])",
        "max_over_time(go_goroutines[10s])",
        "sum_over_time(go_goroutines[10s])",
        "count_over_time(go_goroutines[10s])",
        "last_over_time(go_goroutines[10s])",
        "quantile_over_time(0.9, go_goroutines[10s])",
        "stddev_over_time(go_goroutines[10s])",
        "stdvar_over_time(go_goroutines[10s])",
        "sum(prometheus_http_requests_total)",
        "avg without (code) (prometheus_http_requests_total)",
        "min by (job) (prometheus_http_requests_total)",
        "max(prometheus_http_requests_total)",
        "count(prometheus_http_requests_total)",
        "stddev(prometheus_http_requests_total)",
        "stdvar(prometheus_http_requests_total)",
        "quantile(0.5, prometheus_http_requests_total)",
        "topk(3, prometheus_http_requests_total)",
        "bottomk(2, prometheus_http_requests_total)",
        "count_values(\"v\", up)",
        "histogram_quantile(0.9, sum by (le) (prometheus_http_request_duration_seconds_bucket))",
        "histogram_quantile(0.5, rate(prometheus_tsdb_compaction_chunk_range_seconds_bucket[10s]))",
        "process_resident_memory_bytes / on(job, instance) process_virtual_memory_bytes",
        "prometheus_http_requests_total / ignoring(code, handler) group_left up",
        "up * on(job) group_right prometheus_http_requests_total",
        "go_goroutines > bool 10",
        "up == 1",
        "up and on(job) go_goroutines",
        "up unless on(job) go_goroutines",
        "up or vector(5)",
        "absent(nonexistent_metric{job=\"x\"})",
        "absent(up)",
        "clamp(go_goroutines, 1, 10)",
        "clamp_min(go_goroutines, 100)",
        "clamp_max(go_goroutines, 1)",
        "abs(-go_goroutines)",
        "ceil(process_cpu_seconds_total)",
        "floor(process_cpu_seconds_total)",
        "round(process_cpu_seconds_total, 0.1)",
        "timestamp(up)",
        "hour(timestamp(up))",
        "minute()",
        "day_of_week()",
        "year()",
        "time()",
        "2 * 3 + 1",
        "label_replace(up, \"host\", \"$1\", \"instance\", \"(.*):.*\")",
        "label_join(up, \"both\", \"/\", \"job\", \"instance\")",
        "go_goroutines offset 5s",
        "max_over_time(rate(process_cpu_seconds_total[5s])[10s:2s])",
        "{__name__=~\"go_gc_duration_seconds.*\", quantile!=\"0\"}",
    ];
    let mut failures = Vec::new();
    let mut nonempty = 0;
    for q in queries {
        let ours = admin
            .prometheus_api("/api/v1/query", &[("query", q), ("time", &t)])
            .await;
        let url = reqwest::Url::parse_with_params(
            &format!("{prom_url}/api/v1/query"),
            &[("query", q), ("time", &t)],
        )
        .unwrap();
        let theirs: Value = prom.get(url).send().await.unwrap().json().await.unwrap();
        let ours = match ours {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{q}: ours failed: {e}"));
                continue;
            }
        };
        assert_eq!(theirs["status"], "success", "{q}: {theirs}");
        let (a, b) = (result_set(&ours), result_set(&theirs["data"]));
        nonempty += usize::from(!b.is_empty());
        let same = a.len() == b.len()
            && a.iter().all(|(k, va)| {
                b.get(k).is_some_and(|vb| {
                    va.len() == vb.len()
                        && va
                            .iter()
                            .zip(vb)
                            .all(|(x, y)| x.0 == y.0 && same_value(x.1, y.1))
                })
            });
        if !same {
            failures.push(format!("{q}\n  ours   {a:?}\n  theirs {b:?}"));
        }
    }
    assert!(
        nonempty >= queries.len() - 3,
        "only {nonempty} of {} queries had data in Prometheus",
        queries.len()
    );
    // A range query too.
    let start = (newest - 13.0).floor().to_string();
    let range = [
        ("query", "rate(prometheus_http_requests_total[5s])"),
        ("start", start.as_str()),
        ("end", t.as_str()),
        ("step", "1s"),
    ];
    let ours = admin
        .prometheus_api("/api/v1/query_range", &range)
        .await
        .unwrap();
    let url =
        reqwest::Url::parse_with_params(&format!("{prom_url}/api/v1/query_range"), &range).unwrap();
    let theirs: Value = prom.get(url).send().await.unwrap().json().await.unwrap();
    let (a, b) = (result_set(&ours), result_set(&theirs["data"]));
    if a.len() != b.len()
        || !a.iter().all(|(k, va)| {
            b.get(k).is_some_and(|vb| {
                va.len() == vb.len()
                    && va
                        .iter()
                        .zip(vb)
                        .all(|(x, y)| x.0 == y.0 && same_value(x.1, y.1))
            })
        })
    {
        failures.push(format!("range query\n  ours   {a:?}\n  theirs {b:?}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        queries.len() + 1,
        failures.join("\n")
    );
}

/// A webhook receiver: every POST body it gets, as JSON, in order.
fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice::<Value>(&body)
            {
                sink.lock().unwrap().push(v);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

const RULES: &str = r#"
groups:
  - name: heat
    interval: 200ms
    rules:
      - alert: Hot
        expr: temp > 30
        for: 1s
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.room }} is at {{ $value }} degrees"
      - record: room:temp:max
        expr: max by (room) (temp)
"#;

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn alerts_go_pending_then_firing_notify_once_per_repeat_respect_silences_and_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    if let Some(promtool) = external("promtool") {
        let out = std::process::Command::new(promtool)
            .args(["check", "rules"])
            .arg(&rules)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool accepts the rule file: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let (hook, received) = webhook_receiver();
    let config = dir.path().join("sb.toml");
    std::fs::write(
        &config,
        format!(
            "[monitoring]\nrule_files = [{:?}]\nalert_webhooks = [{hook:?}]\nalert_repeat_interval_ms = 2000\n",
            rules.display().to_string()
        ),
    )
    .unwrap();
    let server = TestServer::start_with(ServerOptions {
        config: Some(config),
        ..Default::default()
    });
    let admin = server.admin().await;
    // Keep the room hot: a sample every 100 ms.
    let feeder = {
        let c = server.login("admin").await;
        tokio::spawn(async move {
            loop {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                write(
                    &c,
                    &[(
                        l(&[("__name__", "temp"), ("room", "lab")]),
                        vec![(now, 35.0)],
                    )],
                )
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let states = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = states.clone();
    let admin2 = server.login("admin").await;
    wait_for("the alert to fire", async || {
        let a = admin2.alerts().await.unwrap();
        let s = a.first()?.state.clone();
        let mut st = seen.lock().unwrap();
        if st.last() != Some(&s) {
            st.push(s.clone());
        }
        (s == "firing").then_some(())
    })
    .await;
    assert_eq!(
        *states.lock().unwrap(),
        vec!["pending", "firing"],
        "pending first, then firing after `for`"
    );
    // A firing notification and then a repeat, same group, distinct dedup keys.
    let notes = wait_for("a repeat notification", async || {
        let n = received.lock().unwrap().clone();
        (n.len() >= 2).then_some(n)
    })
    .await;
    assert_eq!(notes[0]["status"], "firing");
    assert_eq!(notes[0]["alerts"][0]["labels"]["alertname"], "Hot");
    assert_eq!(
        notes[0]["alerts"][0]["annotations"]["summary"],
        "lab is at 35 degrees"
    );
    assert_eq!(notes[0]["groupKey"], notes[1]["groupKey"]);
    assert_ne!(notes[0]["dedupKey"], notes[1]["dedupKey"]);
    // The recording rule stores its series.
    let rec = admin
        .prometheus_api("/api/v1/query", &[("query", "room:temp:max")])
        .await
        .unwrap();
    assert_eq!(vector(&rec)[0].1, 35.0);
    let rules_api = admin.prometheus_api("/api/v1/rules", &[]).await.unwrap();
    assert_eq!(
        rules_api["groups"][0]["rules"][0]["alerts"][0]["state"],
        "firing"
    );

    // Silenced: no notification for several repeat intervals.
    let silence = admin
        .create_silence(&sb_proto::SilenceCreate {
            matchers: vec!["alertname=Hot".into()],
            starts_at_ms: None,
            ends_at_ms: None,
            duration_secs: Some(3600),
            comment: "maintenance".into(),
        })
        .await
        .unwrap();
    assert_eq!(silence.state, "active");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = received.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        received.lock().unwrap().len(),
        before,
        "nothing while silenced"
    );
    assert!(admin.alerts().await.unwrap()[0].silenced);
    admin.expire_silence(&silence.id).await.unwrap();
    assert_eq!(admin.silences().await.unwrap()[0].state, "expired");

    // Cooling down resolves it, and the resolution is notified.
    feeder.abort();
    write(
        &admin,
        &[(
            l(&[("__name__", "temp"), ("room", "lab")]),
            vec![(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64,
                20.0,
            )],
        )],
    )
    .await;
    let resolved = wait_for("the resolved notification", async || {
        received
            .lock()
            .unwrap()
            .iter()
            .find(|n| n["status"] == "resolved")
            .cloned()
    })
    .await;
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
    let keys: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|n| n["dedupKey"].as_str().unwrap().to_string())
        .collect();
    let unique: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "each notification once: {keys:?}");

    // A changed rule file takes effect on `sb alerts reload` (admins) and on SIGHUP.
    std::fs::write(&rules, RULES.replace("temp > 30", "temp > 10")).unwrap();
    let r = admin.reload_rules().await.unwrap();
    // The file's group and its two rules, plus the built-in `devices` group (DeviceOffline).
    assert_eq!((r.groups, r.rules), (2, 3));
    let rules_api = admin.prometheus_api("/api/v1/rules", &[]).await.unwrap();
    assert_eq!(rules_api["groups"][0]["rules"][0]["query"], "temp > 10");
    std::fs::write(&rules, RULES.replace("temp > 30", "temp > 99")).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    wait_for("the SIGHUP reload", async || {
        let r = admin.prometheus_api("/api/v1/rules", &[]).await.unwrap();
        (r["groups"][0]["rules"][0]["query"] == "temp > 99").then_some(())
    })
    .await;
    std::fs::write(
        &rules,
        "groups: [{name: x, rules: [{alert: A, expr: 'sum('}]}]",
    )
    .unwrap();
    let e = admin.reload_rules().await.unwrap_err();
    assert!(e.to_string().contains("could not parse"), "{e}");
    let rules_api = admin.prometheus_api("/api/v1/rules", &[]).await.unwrap();
    assert_eq!(
        rules_api["groups"][0]["rules"][0]["query"], "temp > 99",
        "a bad file leaves the rules in force"
    );
}

#[test]
fn query_and_alerts_from_the_cli() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&server, home.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    rt.block_on(async {
        let admin = server.login("admin").await;
        let points: Vec<(i64, f64)> = (0..30)
            .map(|i| (now - 290_000 + i * 10_000, (i % 10) as f64))
            .collect();
        let (s, _) = write(
            &admin,
            &[(l(&[("__name__", "load"), ("host", "a")]), points)],
        )
        .await;
        assert_eq!(s, 204);
    });
    let out = sb(home.path(), &["query", "load"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("SERIES") && text.contains("load{host=\"a\"}") && text.contains(" 9"),
        "{text}"
    );
    let out = sb(
        home.path(),
        &["query", "load", "--range", "5m", "--step", "10s"],
        "",
    );
    let text = stdout(&out);
    assert!(
        text.contains('▁') && text.contains('█'),
        "a sparkline: {text}"
    );
    assert!(text.contains("min 0") && text.contains("max 9"), "{text}");
    let out = sb(home.path(), &["query", "sum("], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad_data"), "{}", stderr(&out));

    assert!(stdout(&sb(home.path(), &["alerts", "list"], "")).contains("No alerts"));
    let s = json(&sb(
        home.path(),
        &[
            "alerts",
            "silence",
            "alertname=DiskFull",
            "host=~a.*",
            "--for",
            "2h",
            "--comment",
            "disk swap",
            "--json",
        ],
        "",
    ));
    assert_eq!(s["state"], "active");
    let id = s["id"].as_str().unwrap().to_string();
    let list = json(&sb(home.path(), &["alerts", "silences", "--json"], ""));
    assert_eq!(list[0]["comment"], "disk swap");
    let out = sb(
        home.path(),
        &["alerts", "silence", "host=~.*", "--for", "1h"],
        "",
    );
    assert!(
        stderr(&out).contains("silence everything"),
        "{}",
        stderr(&out)
    );
    assert!(
        sb(home.path(), &["alerts", "expire", &id], "")
            .status
            .success()
    );
    let list = json(&sb(home.path(), &["alerts", "silences", "--json"], ""));
    assert_eq!(list[0]["state"], "expired");
    let out = sb(home.path(), &["alerts", "reload", "--json"], "");
    // No rule files: only the built-in `devices` group (DeviceOffline).
    assert_eq!(json(&out)["groups"], 1);
}

/// A scrape target whose body the test sets; `None` answers 500.
fn scrape_target() -> (String, std::sync::Arc<std::sync::Mutex<Option<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let body = std::sync::Arc::new(std::sync::Mutex::new(Some(String::new())));
    let source = body.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let reply = match source.lock().unwrap().clone() {
                Some(b) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                    b.len()
                ),
                None => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
            };
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (addr, body)
}

#[tokio::test]
async fn scraped_targets_and_the_server_itself_are_stored_with_staleness() {
    let (target, body) = scrape_target();
    *body.lock().unwrap() = Some(
        "# TYPE jobs_done counter\njobs_done_total{queue=\"a\"} 5\njobs_done_total{queue=\"b\"} 7\n".into(),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sb.toml");
    std::fs::write(
        &config,
        format!(
            "[monitoring]\nself_scrape_interval_ms = 200\n\n[[monitoring.scrape]]\njob = \"worker\"\ntargets = [{target:?}]\ninterval_ms = 200\n"
        ),
    )
    .unwrap();
    let server = TestServer::start_with(ServerOptions {
        config: Some(config),
        ..Default::default()
    });
    let admin = server.admin().await;
    let query = async |q: &str| {
        vector(
            &admin
                .prometheus_api("/api/v1/query", &[("query", q)])
                .await
                .unwrap(),
        )
    };
    wait_for("the first scrape", async || {
        (query(r#"up{job="worker"}"#).await.first()?.1 == 1.0).then_some(())
    })
    .await;
    let got = query("jobs_done_total").await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].0,
        json!({"__name__": "jobs_done_total", "instance": target, "job": "worker", "queue": "a"})
    );
    assert_eq!(got[1].1, 7.0);

    // A series that disappears from the target is gone at once (a staleness marker), not
    // after the five-minute lookback.
    *body.lock().unwrap() = Some("jobs_done_total{queue=\"a\"} 6\n".into());
    wait_for("queue b to go stale", async || {
        (query("jobs_done_total").await.len() == 1).then_some(())
    })
    .await;
    // A target that fails is `up` 0 and its series go stale.
    *body.lock().unwrap() = None;
    wait_for("up to drop to 0", async || {
        (query(r#"up{job="worker"}"#).await.first()?.1 == 0.0).then_some(())
    })
    .await;
    wait_for("every series to go stale", async || {
        query("jobs_done_total").await.is_empty().then_some(())
    })
    .await;

    // The server's own metrics, as job "switchboard".
    wait_for("the server's own metrics", async || {
        let v = query(r#"sb_http_requests_total{job="switchboard"}"#).await;
        (!v.is_empty()).then_some(())
    })
    .await;
}

#[test]
fn the_agent_sends_this_hosts_figures() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&server, home.path());
    let out = sb(home.path(), &["agent", "--once", "--instance", "box1"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("as instance box1"),
        "progress is shown: {}",
        stderr(&out)
    );
    let rows = json(&sb(
        home.path(),
        &[
            "query",
            r#"node_memory_MemTotal_bytes{instance="box1", job="agent"}"#,
            "--json",
        ],
        "",
    ));
    let v: f64 = rows["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(v > 0.0);
    let cpus = json(&sb(
        home.path(),
        &[
            "query",
            r#"count(node_cpu_seconds_total{mode="idle"})"#,
            "--json",
        ],
        "",
    ));
    assert!(
        cpus["result"][0]["value"][1]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 1.0
    );
    // With an API token for another server URL, and a clear error without one.
    let token = json(&sb(
        home.path(),
        &["token", "create", "agent", "--json"],
        "",
    ));
    let other = tempfile::tempdir().unwrap();
    let out = sb(
        other.path(),
        &[
            "agent",
            "--once",
            "--server",
            &server.url,
            "--yes",
            "--token",
            token["token"].as_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb(
        other.path(),
        &["agent", "--once", "--server", &server.url, "--yes"],
        "",
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--token"), "{}", stderr(&out));
}

#[tokio::test]
async fn alert_notifications_are_posted_once_in_a_chat_room() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut server = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir.clone()),
        ..Default::default()
    });
    // A bot account, a room it belongs to, and its API token.
    let admin = server.admin().await;
    let bot = server.user(&admin, "alertbot").await;
    let room = admin
        .create_room(&sb_proto::RoomCreate {
            name: "ops".into(),
            topic: String::new(),
            public: false,
            encrypted: false,
        })
        .await
        .unwrap();
    admin.add_member(&room.id, "alertbot").await.unwrap();
    let token = bot
        .create_token(&sb_proto::TokenCreate {
            name: "alerts".into(),
            scopes: vec![],
            expires_in_secs: None,
        })
        .await
        .unwrap();
    assert!(server.stop());

    let rules = tmp.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let config = tmp.path().join("sb.toml");
    std::fs::write(
        &config,
        format!(
            "[monitoring]\nrule_files = [{:?}]\nalert_chat_room = {:?}\nalert_chat_token = {:?}\n",
            rules.display().to_string(),
            room.id,
            token.token.expose()
        ),
    )
    .unwrap();
    let server = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir),
        config: Some(config),
        ..Default::default()
    });
    let admin = server.login("admin").await;
    let feeder = {
        let c = server.login("admin").await;
        tokio::spawn(async move {
            loop {
                write(
                    &c,
                    &[(
                        l(&[("__name__", "temp"), ("room", "lab")]),
                        vec![(now_ms(), 35.0)],
                    )],
                )
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let message = wait_for("the alert in the chat room", async || {
        let h = admin
            .history(
                &room.id,
                &sb_proto::HistoryQuery {
                    after: Some(0),
                    before: None,
                    limit: None,
                },
            )
            .await
            .unwrap();
        h.into_iter().find(|m| m.body.contains("[FIRING] Hot"))
    })
    .await;
    feeder.abort();
    assert!(
        message.body.contains("lab is at 35 degrees"),
        "{}",
        message.body
    );
    let members = admin.members(&room.id).await.unwrap();
    let bot_id = members
        .iter()
        .find(|m| m.username == "alertbot")
        .unwrap()
        .user_id
        .clone();
    assert_eq!(message.sender, bot_id, "posted as the token's owner");
}

#[tokio::test]
async fn rollups_outlive_raw_samples_and_answer_at_their_resolution() {
    // Raw samples kept 10 s; a 5 s rollup tier kept forever; checkpoints (which roll up and
    // apply retention) every 300 ms; a quiet series' bucket counts as complete after 1 s.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sb.toml");
    std::fs::write(
        &config,
        "[monitoring]\nself_scrape_interval_ms = 0\nretention_ms = 10000\ncheckpoint_interval_ms = 300\nhead_chunk_max_age_ms = 1000\nrollups = [{ resolution_ms = 5000, retention_ms = 0 }]\n",
    )
    .unwrap();
    let server = TestServer::start_with(ServerOptions {
        config: Some(config),
        ..Default::default()
    });
    let admin = server.admin().await;
    // Ten samples, 0..9, half a second apart: exactly one 5 s bucket.
    let base = (now_ms() - 4_000) / 5_000 * 5_000;
    let points: Vec<(i64, f64)> = (0..10).map(|i| (base + i * 500, i as f64)).collect();
    let (s, body) = write(
        &admin,
        &[(l(&[("__name__", "temp"), ("room", "lab")]), points)],
    )
    .await;
    assert_eq!(s, 204, "{body}");

    let at = |t: i64| format!("{:.3}", t as f64 / 1000.0);
    let instant = |q: &'static str, res: &'static str| {
        let admin = admin.clone();
        async move {
            let t = at(now_ms());
            let data = admin
                .prometheus_api(
                    "/api/v1/query",
                    &[("query", q), ("time", &t), ("resolution", res)],
                )
                .await
                .unwrap();
            vector(&data)
        }
    };
    // Raw retention drops the samples…
    wait_for("raw samples to pass retention", async || {
        instant("count_over_time(temp[1m])", "raw")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    // …while the bucket's summary stays, queryable per aggregate and as the bucket average.
    let one = |v: Vec<(Value, f64)>| {
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].1
    };
    assert_eq!(
        one(instant(r#"sum_over_time(temp{__rollup__="count"}[1m])"#, "5s").await),
        10.0
    );
    assert_eq!(
        one(instant(r#"max_over_time(temp{__rollup__="max"}[1m])"#, "5s").await),
        9.0
    );
    assert_eq!(
        one(instant(r#"min_over_time(temp{__rollup__="min"}[1m])"#, "5s").await),
        0.0
    );
    let avg = instant("temp", "5s").await;
    assert_eq!(avg.len(), 1);
    assert_eq!(avg[0].0, json!({"__name__": "temp", "room": "lab"}));
    assert_eq!(avg[0].1, 4.5);
    // `auto` reads the tier for a time raw retention no longer covers.
    let data = admin
        .prometheus_api(
            "/api/v1/query_range",
            &[
                ("query", "temp"),
                ("start", &at(base)),
                ("end", &at(base + 4_000)),
                ("step", "1"),
                ("max_source_resolution", "auto"),
            ],
        )
        .await
        .unwrap();
    let values = data["result"][0]["values"].as_array().unwrap();
    assert_eq!(values.len(), 5);
    assert!(values.iter().all(|v| v[1] == "4.5"), "{values:?}");
    // A resolution with no tier is a clear 400.
    let err = admin
        .prometheus_api("/api/v1/query", &[("query", "temp"), ("resolution", "7m")])
        .await
        .unwrap_err();
    let sb_client::ClientError::Api {
        status, message, ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(status, 400);
    assert!(message.contains("not a rollup tier"), "{message}");
}

#[tokio::test]
async fn each_tenant_has_its_own_series_and_rate_limits() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![
            ("SB_MONITORING__SELF_SCRAPE_INTERVAL_MS", "0".into()),
            ("SB_MONITORING__TENANT_SERIES_MAX", "2".into()),
            ("SB_MONITORING__TENANT_SAMPLES_PER_SECOND_MAX", "100".into()),
        ],
        ..Default::default()
    });
    let admin = server.admin().await;
    let bob = server.user(&admin, "bob").await;
    let t = now_ms() - 60_000;
    let series = |name: &str, n: i64| {
        (
            l(&[("__name__", name)]),
            (0..n).map(|i| (t + i, 1.0)).collect::<Vec<_>>(),
        )
    };

    // Three new series from one tenant: two fit, the third is refused by name.
    let (s, body) = write(&admin, &[series("a", 1), series("b", 1), series("c", 1)]).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body.contains(
            "tenant admin has 2 active series (monitoring.tenant_series_max); c{} was not created"
        ),
        "{body}"
    );
    let stored = admin
        .prometheus_api("/api/v1/series", &[("match[]", "{__name__=~\"a|b|c\"}")])
        .await
        .unwrap();
    assert_eq!(stored.as_array().unwrap().len(), 2, "{stored}");
    // Bob has his own two.
    let (s, body) = write(&bob, &[series("c", 1), series("d", 1)]).await;
    assert_eq!(s, 204, "{body}");

    // Over its samples per second, a tenant gets 429 with Retry-After; the other goes on.
    let (s, body) = write(&admin, &[series("a", 90)]).await;
    assert_eq!(s, 204, "{body}");
    let resp = admin
        .raw_with_headers(
            Method::POST,
            "/api/v1/write",
            &[
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "snappy"),
            ],
            remote_write::encode(&[series("b", 50)]),
        )
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("monitoring.tenant_samples_per_second_max (100 samples/s) for tenant admin"),
        "{text}"
    );
    let (s, body) = write(&bob, &[(l(&[("__name__", "d")]), vec![(t + 1_000, 2.0)])]).await;
    assert_eq!(s, 204, "{body}");
}
