//! `sb-bench`: load against a real `sb serve` on this machine.
//!
//! Starts the server binary on a free port with a temporary data directory (rate limits raised so
//! they don't cap the measurement), registers an admin, then for each scenario runs
//! `--concurrency` clients (each with its own connection) for `--seconds` and reports throughput
//! and latency percentiles as a Markdown table for BENCHMARKS.md.

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use reqwest::Method;
use sb_client::{Client, Trust};
use sb_core::Secret;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod chat;
mod files;
mod metrics;
mod mqtt;
mod rollups;
mod store;
mod sync;

/// Counts heap bytes for `sb-bench rollups`.
#[global_allocator]
static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

#[derive(Parser)]
#[command(about = "Benchmarks against a real Switchboard server on this machine")]
struct Cli {
    /// The `sb` binary to run (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/sb", global = true)]
    sb: String,
    #[command(subcommand)]
    scenario: Scenarios,
}

#[derive(clap::Subcommand)]
enum Scenarios {
    /// Logins and token-authenticated requests.
    Auth(Args),
    /// Chat fan-out: N connected clients in rooms, messages delivered end to end.
    Chat(chat::ChatArgs),
    /// The store's durable write path, with and without group commit.
    Store(store::StoreArgs),
    /// Monitoring side by side with Prometheus: ingest, memory, disk, queries.
    Metrics(metrics::MetricsArgs),
    /// What rollup tiers cost per series, in memory and on disk (in process).
    Rollups(rollups::RollupArgs),
    /// Files: upload and download MB/s against cp and dd, and the dedup of an edited file.
    Files(files::FilesArgs),
    /// MQTT: Switchboard's broker against Mosquitto (throughput, latency, memory).
    Mqtt(mqtt::MqttArgs),
    /// Sync: propagating one changed file in a 10k-file tree, against rsync.
    Sync(sync::SyncArgs),
}

#[derive(clap::Args)]
struct Args {
    /// Concurrent clients per scenario.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

const PASSWORD: &str = "load-test passphrase, long enough";

pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    pub(crate) fingerprint: String,
    pub(crate) setup_token: String,
    _dir: tempfile::TempDir,
}

impl Server {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sb serve` with rate limits raised (they would cap any load test) plus `env`.
pub(crate) fn start(sb: &str, env: &[(&str, String)]) -> anyhow::Result<Server> {
    start_with_args(sb, env, &[])
}

/// [`start`] with more `sb serve` arguments.
pub(crate) fn start_with_args(
    sb: &str,
    env: &[(&str, String)],
    args: &[&str],
) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut cmd = Command::new(sb);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(args)
        .env("SB_LOG", "warn");
    for limit in [
        "LOGIN_PER_IP_PER_MINUTE",
        "LOGIN_PER_ACCOUNT_PER_MINUTE",
        "REGISTER_PER_IP_PER_MINUTE",
        "REQUESTS_PER_CREDENTIAL_PER_SECOND",
    ] {
        cmd.env(format!("SB_RATE_LIMITS__{limit}"), "100000000");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {sb}; build it first with `cargo build --release`"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut url, mut fingerprint) = (None, None);
    while fingerprint.is_none() {
        let Some(line) = lines.next() else {
            bail!("server exited during start")
        };
        let line = line?;
        if let Some(u) = line.strip_prefix("Switchboard listening on ") {
            url = Some(u.trim().to_string());
        }
        if let Some(f) = line.strip_prefix("TLS certificate SHA-256 fingerprint: ") {
            fingerprint = Some(f.trim().to_string());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Server {
        child,
        url: url.context("no url")?,
        fingerprint: fingerprint.context("no fingerprint")?,
        setup_token: std::fs::read_to_string(data.join("setup-token"))?
            .trim()
            .to_string(),
        _dir: dir,
    })
}

#[derive(Clone, Copy)]
enum Scenario {
    Login,
    Me,
    Health,
}

struct Outcome {
    name: &'static str,
    ok: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

async fn run(
    server: &Server,
    scenario: Scenario,
    token: Option<Secret<String>>,
    args: &Args,
) -> anyhow::Result<Outcome> {
    let name = match scenario {
        Scenario::Login => "POST /v1/auth/login (Argon2id verify)",
        Scenario::Me => "GET /v1/me (API token)",
        Scenario::Health => "GET /healthz (no auth, baseline)",
    };
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let mut client = Client::new(&server.url, &Trust::Fingerprint(server.fingerprint.clone()))?;
        if let Some(t) = &token {
            client = client.with_token(t.clone());
        }
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let good = match scenario {
                    Scenario::Login => client
                        .login("bench", Secret::new(PASSWORD.into()))
                        .await
                        .is_ok(),
                    Scenario::Me => client.me().await.is_ok(),
                    Scenario::Health => client
                        .raw(Method::GET, "/healthz", None)
                        .await
                        .is_ok_and(|r| r.status().is_success()),
                };
                let us = t0.elapsed().as_micros() as u64;
                if good {
                    ok += 1;
                    hist.record(us.max(1))?;
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((ok, errors, hist))
        }));
    }
    // Progress on stderr while the clients run.
    let progress = tokio::spawn({
        let secs = args.seconds;
        async move {
            for s in 1..=secs {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprint!("\r  {name}: {s}/{secs} s");
                let _ = std::io::stderr().flush();
            }
            eprintln!();
        }
    });
    let mut total = Outcome {
        name,
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for t in tasks {
        let (ok, errors, hist) = t.await??;
        total.ok += ok;
        total.errors += errors;
        total.hist.add(hist)?;
    }
    total.elapsed = started.elapsed();
    let _ = progress.await;
    Ok(total)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenarios::Auth(args) => auth(&cli.sb, args).await,
        Scenarios::Chat(args) => chat::run(&cli.sb, args).await,
        Scenarios::Store(args) => store::run(args).await,
        Scenarios::Metrics(args) => metrics::run(&cli.sb, args).await,
        Scenarios::Rollups(args) => rollups::run(&args),
        Scenarios::Files(args) => files::run(&cli.sb, args).await,
        Scenarios::Sync(args) => sync::run(&cli.sb, args).await,
        Scenarios::Mqtt(args) => mqtt::run(&cli.sb, args).await,
    }
}

/// Registers the admin account `bench` with the setup token; a client logged in as it.
pub(crate) async fn bench_admin(server: &Server) -> anyhow::Result<Client> {
    let c = Client::new(&server.url, &Trust::Fingerprint(server.fingerprint.clone()))?;
    c.register(&sb_proto::RegisterRequest {
        username: "bench".into(),
        password: Secret::new(PASSWORD.into()),
        setup_token: Some(Secret::new(server.setup_token.clone())),
        invite: None,
    })
    .await?;
    let token = c.login("bench", Secret::new(PASSWORD.into())).await?.token;
    Ok(c.with_token(token))
}

async fn auth(sb: &str, args: Args) -> anyhow::Result<()> {
    let server = start(sb, &[])?;
    let api = bench_admin(&server)
        .await?
        .create_token(&sb_proto::TokenCreate {
            name: "bench".into(),
            scopes: vec!["read".into()],
            expires_in_secs: None,
        })
        .await?
        .token;
    eprintln!(
        "sb-bench: {} clients x {} s per scenario against {}",
        args.concurrency, args.seconds, server.url
    );
    let mut results = Vec::new();
    results.push(run(&server, Scenario::Health, None, &args).await?);
    results.push(run(&server, Scenario::Me, Some(api), &args).await?);
    results.push(run(&server, Scenario::Login, None, &args).await?);
    println!("| scenario | requests/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &results {
        let ms = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            r.name,
            r.ok as f64 / r.elapsed.as_secs_f64(),
            ms(0.50),
            ms(0.99),
            r.hist.max() as f64 / 1000.0,
            r.errors
        );
    }
    Ok(())
}
