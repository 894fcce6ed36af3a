//! Monitoring side by side with Prometheus on this machine: the same remote_write load into both,
//! then ingest rate, resident memory per active series, bytes per sample on disk, and the latency
//! of dashboard-style queries.

use anyhow::{Context, bail};
use futures_util::future::BoxFuture;
use hdrhistogram::Histogram;
use sb_tsdb::Labels;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct MetricsArgs {
    /// Active series.
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Simulated time the samples cover, in minutes.
    #[arg(long, default_value_t = 120)]
    minutes: u64,
    /// Seconds between a series' samples (a scrape interval).
    #[arg(long, default_value_t = 15)]
    interval_secs: u64,
    /// Parallel writers (each owns a share of the series, so each series stays in order).
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Samples per remote_write request.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Runs of each query.
    #[arg(long, default_value_t = 20)]
    query_runs: usize,
    /// The Prometheus server binary.
    #[arg(long, default_value = "prometheus")]
    prometheus: String,
    /// Switchboard's durability: `full` (fsync before acknowledging, the default) or `relaxed`.
    #[arg(long, default_value = "full")]
    durability: String,
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS not found")
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// A deterministic pseudo-random stream (so both servers get identical data).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

pub fn labels(i: usize) -> Labels {
    let name = if i.is_multiple_of(2) {
        "bench_requests_total"
    } else {
        "bench_latency_seconds"
    };
    let (job, instance, id) = (
        format!("job{}", i % 10),
        format!("host{}", (i / 10) % 1000),
        i.to_string(),
    );
    Labels::from_pairs(&[
        ("__name__", name),
        ("job", &job),
        ("instance", &instance),
        ("series", &id),
    ])
}

/// Series `i`'s value at step `k`: counters grow by small integers, gauges wander.
pub fn value(i: usize, k: u64, counter_base: &mut [f64]) -> f64 {
    let r = mix((i as u64) << 32 | k);
    if i.is_multiple_of(2) {
        counter_base[i] += (r % 20) as f64;
        counter_base[i]
    } else {
        0.05 + (r % 1000) as f64 / 10_000.0
    }
}

/// One remote_write body in, done or not.
type WriteFn = Box<dyn Fn(Vec<u8>) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;
/// A Prometheus API path and its parameters in, the answer's `data` out.
type QueryFn = Box<
    dyn Fn(String, Params) -> BoxFuture<'static, anyhow::Result<serde_json::Value>> + Send + Sync,
>;
type Params = Vec<(String, String)>;

struct Target {
    name: &'static str,
    pid: u32,
    data: PathBuf,
    write: WriteFn,
    query: QueryFn,
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    data: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_prometheus(bin: &str) -> anyhow::Result<Prometheus> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1h\n")?;
    let data = dir.path().join("data");
    let port = free_port()?;
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {bin}; install it with `apt-get install prometheus`"))?;
    let p = Prometheus {
        child,
        port,
        _dir: dir,
        data,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/-/ready"))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("prometheus did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn stop(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        // A zombie (exited, not yet reaped) has no VmRSS line; count it as stopped.
        if rss_kib(pid).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Report {
    samples: u64,
    ingest: Duration,
    rss_before_kib: u64,
    rss_after_kib: u64,
    disk: u64,
    queries: Vec<(String, Histogram<u64>)>,
}

const QUERIES: [(&str, &str); 6] = [
    ("total request rate", "sum(rate(bench_requests_total[5m]))"),
    (
        "rate by job",
        "sum by (job) (rate(bench_requests_total[5m]))",
    ),
    ("top 5 series", "topk(5, rate(bench_requests_total[5m]))"),
    ("max latency", "max(bench_latency_seconds)"),
    (
        "30m average, one job",
        "avg_over_time(bench_latency_seconds{job=\"job1\"}[30m])",
    ),
    (
        "1h range by job, 60s step",
        "sum by (job) (rate(bench_requests_total[5m]))",
    ),
];

async fn load(
    t: &Target,
    args: &MetricsArgs,
    start_ms: i64,
    steps: u64,
) -> anyhow::Result<(u64, Duration)> {
    let series = args.series;
    let (writers, batch) = (args.writers.max(1), args.batch.max(1));
    let interval_ms = args.interval_secs as i64 * 1000;
    // Every writer's requests, encoded up front so encoding is not measured. Writer `w` owns
    // series w, w + writers, …, and sends them step by step, so each series arrives in order.
    let mut total = 0u64;
    let mut plans: Vec<Vec<Vec<u8>>> = vec![Vec::new(); writers];
    let mut counters = vec![0.0; series];
    let all_labels: Vec<Labels> = (0..series).map(labels).collect();
    for (w, plan) in plans.iter_mut().enumerate() {
        let mine: Vec<usize> = (w..series).step_by(writers).collect();
        for k in 0..steps {
            let t = start_ms + k as i64 * interval_ms;
            for part in mine.chunks(batch) {
                let b: sb_tsdb::Batch = part
                    .iter()
                    .map(|&i| (all_labels[i].clone(), vec![(t, value(i, k, &mut counters))]))
                    .collect();
                total += b.len() as u64;
                plan.push(sb_monitor::remote_write::encode(&b));
            }
        }
    }
    let requests: usize = plans.iter().map(Vec::len).sum();
    eprintln!("{}: {requests} requests encoded; sending…", t.name);
    let started = Instant::now();
    let tasks = plans.into_iter().map(|plan| async move {
        for body in plan {
            (t.write)(body).await?;
        }
        anyhow::Ok(())
    });
    futures_util::future::try_join_all(tasks).await?;
    Ok((total, started.elapsed()))
}

async fn measure(
    t: Target,
    args: &MetricsArgs,
    start_ms: i64,
    steps: u64,
) -> anyhow::Result<Report> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before_kib = rss_kib(t.pid)?;
    eprintln!(
        "{}: writing {} series × {steps} samples…",
        t.name, args.series
    );
    let (samples, ingest) = load(&t, args, start_ms, steps).await?;
    eprintln!(
        "{}: {samples} samples in {:.1} s",
        t.name,
        ingest.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = rss_kib(t.pid)?;
    let end = start_ms + (steps as i64 - 1) * args.interval_secs as i64 * 1000;
    let at = format!("{:.3}", end as f64 / 1000.0);
    let from = format!("{:.3}", (end - 3_600_000) as f64 / 1000.0);
    let mut queries = Vec::new();
    for (name, q) in QUERIES {
        let mut hist = Histogram::<u64>::new(3)?;
        let range = name.starts_with("1h range");
        for _ in 0..args.query_runs {
            let params: Vec<(String, String)> = if range {
                vec![
                    ("query".into(), q.into()),
                    ("start".into(), from.clone()),
                    ("end".into(), at.clone()),
                    ("step".into(), "60".into()),
                ]
            } else {
                vec![("query".into(), q.into()), ("time".into(), at.clone())]
            };
            let path = if range {
                "/api/v1/query_range"
            } else {
                "/api/v1/query"
            };
            let began = Instant::now();
            let v = (t.query)(path.into(), params).await?;
            hist.record(began.elapsed().as_micros() as u64)?;
            if v["result"].as_array().is_none_or(|r| r.is_empty()) {
                bail!("{}: {q} returned nothing: {v}", t.name);
            }
        }
        queries.push((name.to_string(), hist));
    }
    stop(t.pid);
    let disk = dir_bytes(&t.data);
    Ok(Report {
        samples,
        ingest,
        rss_before_kib,
        rss_after_kib,
        disk,
        queries,
    })
}

pub async fn run(sb: &str, args: MetricsArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let steps = args.minutes * 60 / args.interval_secs.max(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let interval_ms = args.interval_secs as i64 * 1000;
    let start_ms = (now - steps as i64 * interval_ms) / interval_ms * interval_ms;

    // Switchboard.
    let server = crate::start(
        sb,
        &[
            ("SB_STORE__DURABILITY", args.durability.clone()),
            ("SB_MONITORING__SAMPLES_PER_SECOND_MAX", "1000000000".into()),
            ("SB_MONITORING__SELF_SCRAPE_INTERVAL_MS", "0".into()),
        ],
    )?;
    let client = std::sync::Arc::new(crate::bench_admin(&server).await?);
    let (wc, qc) = (client.clone(), client.clone());
    let ours = Target {
        name: "Switchboard",
        pid: server.child.id(),
        data: server._dir.path().join("data").join("tsdb"),
        write: Box::new(move |body| {
            let c = wc.clone();
            Box::pin(async move {
                let r = c
                    .raw_with_headers(
                        reqwest::Method::POST,
                        "/api/v1/write",
                        &[
                            ("content-type", "application/x-protobuf"),
                            ("content-encoding", "snappy"),
                        ],
                        body,
                    )
                    .await?;
                if !r.status().is_success() {
                    bail!(
                        "switchboard: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                }
                Ok(())
            })
        }),
        query: Box::new(move |path, params| {
            let c = qc.clone();
            Box::pin(async move {
                let p: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                Ok(c.prometheus_api(&path, &p).await?)
            })
        }),
    };
    let sb_report = measure(ours, &args, start_ms, steps).await?;
    drop(server);

    // Prometheus, same data.
    let prom = start_prometheus(&args.prometheus).await?;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", prom.port);
    let (wh, qh, wb, qb) = (http.clone(), http.clone(), base.clone(), base.clone());
    let theirs = Target {
        name: "Prometheus",
        pid: prom.child.id(),
        data: prom.data.clone(),
        write: Box::new(move |body| {
            let (h, b) = (wh.clone(), wb.clone());
            Box::pin(async move {
                let r = h
                    .post(format!("{b}/api/v1/write"))
                    .header("content-type", "application/x-protobuf")
                    .header("content-encoding", "snappy")
                    .header("x-prometheus-remote-write-version", "0.1.0")
                    .body(body)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!(
                        "prometheus: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                }
                Ok(())
            })
        }),
        query: Box::new(move |path, params| {
            let (h, b) = (qh.clone(), qb.clone());
            Box::pin(async move {
                let url = reqwest::Url::parse_with_params(&format!("{b}{path}"), &params)?;
                let v: serde_json::Value = h.get(url).send().await?.json().await?;
                if v["status"] != "success" {
                    bail!("prometheus: {v}");
                }
                Ok(v["data"].clone())
            })
        }),
    };
    let prom_report = measure(theirs, &args, start_ms, steps).await?;
    drop(prom);

    println!(
        "{} series × {steps} samples ({} min at {} s), {} writers, {} samples per request, Switchboard durability `{}`",
        args.series, args.minutes, args.interval_secs, args.writers, args.batch, args.durability
    );
    println!();
    println!("| measure | Switchboard | Prometheus | Switchboard's lead (>1: ahead) |");
    println!("|---|---:|---:|---:|");
    let (a, b) = (&sb_report, &prom_report);
    let rate = |r: &Report| r.samples as f64 / r.ingest.as_secs_f64();
    println!(
        "| ingested samples/s (higher is better) | {:.0} | {:.0} | {:.2} |",
        rate(a),
        rate(b),
        rate(a) / rate(b)
    );
    let bps = |r: &Report| r.disk as f64 / r.samples as f64;
    println!(
        "| bytes per sample on disk | {:.2} | {:.2} | {:.2} |",
        bps(a),
        bps(b),
        bps(b) / bps(a)
    );
    let per = |r: &Report| {
        (r.rss_after_kib.saturating_sub(r.rss_before_kib)) as f64 * 1024.0 / args.series as f64
    };
    println!(
        "| resident memory growth per active series | {:.0} B | {:.0} B | {:.2} |",
        per(a),
        per(b),
        per(b) / per(a)
    );
    println!(
        "| resident memory after ingest | {:.1} MiB | {:.1} MiB | {:.2} |",
        a.rss_after_kib as f64 / 1024.0,
        b.rss_after_kib as f64 / 1024.0,
        b.rss_after_kib as f64 / a.rss_after_kib as f64
    );
    for ((name, ha), (_, hb)) in a.queries.iter().zip(&b.queries) {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| query: {name}, p50 (p99) ms | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2} |",
            ms(ha, 0.5),
            ms(ha, 0.99),
            ms(hb, 0.5),
            ms(hb, 0.99),
            ms(hb, 0.5) / ms(ha, 0.5)
        );
    }
    Ok(())
}
