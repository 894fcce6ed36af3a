//! MQTT load: Switchboard's broker against Mosquitto on this machine, in one run.
//!
//! Both get the same clients (our codec over TCP, one connection each): fan-in (many
//! publishers, one wildcard subscriber), fan-out (one publisher, many subscribers), QoS 0 and
//! 1, small and large payloads. Each publisher keeps a window of QoS 1 messages in flight
//! (or floods at QoS 0); every message carries its send time, so subscribers measure the
//! end-to-end latency. Then idle connections are opened to weigh each one in the broker's
//! resident memory. Mosquitto runs as a private instance on its own port with a minimal
//! configuration (no persistence), Switchboard with its defaults (TLS on HTTPS only; MQTT on
//! plain TCP; clean sessions are not stored).

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use sb_mqtt::codec::{
    self, Connect, Packet, Properties, Publish, QoS, SubOptions, Subscribe, Version,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

#[derive(clap::Args)]
pub struct MqttArgs {
    /// Seconds per scenario and broker.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Idle connections opened to weigh one.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// QoS 1 messages each publisher keeps in flight.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// The mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: String,
    /// The paced run offers Switchboard this multiple of Mosquitto's flat-out delivery rate.
    #[arg(long, default_value_t = 1.2)]
    paced: f64,
    /// Only the scenarios whose name contains this (e.g. "QoS 0"); 0 idle skips the memory.
    #[arg(long)]
    only: Option<String>,
}

#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: String,
    user: Option<(String, String)>,
    /// Topics are under this prefix (a device's namespace on Switchboard).
    prefix: String,
    pid: u32,
}

struct Scenario {
    name: &'static str,
    publishers: usize,
    subscribers: usize,
    qos: QoS,
    payload: usize,
    /// Every publisher to its own topic, subscribers on a wildcard (fan-in), or all on one.
    fan_in: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "fan-in 16→1, QoS 1, 64 B",
        publishers: 16,
        subscribers: 1,
        qos: QoS::AtLeastOnce,
        payload: 64,
        fan_in: true,
    },
    Scenario {
        name: "fan-in 16→1, QoS 0, 64 B",
        publishers: 16,
        subscribers: 1,
        qos: QoS::AtMostOnce,
        payload: 64,
        fan_in: true,
    },
    Scenario {
        name: "fan-out 1→16, QoS 1, 64 B",
        publishers: 1,
        subscribers: 16,
        qos: QoS::AtLeastOnce,
        payload: 64,
        fan_in: false,
    },
    Scenario {
        name: "fan-out 1→16, QoS 0, 64 B",
        publishers: 1,
        subscribers: 16,
        qos: QoS::AtMostOnce,
        payload: 64,
        fan_in: false,
    },
    Scenario {
        name: "4→4, QoS 1, 16 KiB",
        publishers: 4,
        subscribers: 4,
        qos: QoS::AtLeastOnce,
        payload: 16 * 1024,
        fan_in: false,
    },
];

struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
}

async fn connect(t: &Target, id: &str) -> anyhow::Result<Conn> {
    let s = TcpStream::connect(&t.addr).await?;
    s.set_nodelay(true)?;
    let (mut rd, mut wr) = s.into_split();
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(Connect {
            version: Version::V311,
            clean_start: true,
            keep_alive: 120,
            client_id: id.to_string(),
            will: None,
            username: t.user.as_ref().map(|u| u.0.clone()),
            password: t.user.as_ref().map(|u| Bytes::from(u.1.clone())),
            properties: Properties::default(),
        })),
        Version::V311,
        &mut out,
    );
    wr.write_all(&out).await?;
    let mut buf = BytesMut::new();
    loop {
        if let Some(p) = codec::decode(&mut buf, Some(Version::V311), 1 << 20)? {
            match p {
                Packet::ConnAck(a) if a.code == 0 => return Ok(Conn { rd, wr, buf }),
                other => bail!("{}: connect refused: {other:?}", t.name),
            }
        }
        if rd.read_buf(&mut buf).await? == 0 {
            bail!("{}: closed during connect", t.name);
        }
    }
}

async fn read_packet(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> anyhow::Result<Option<Packet>> {
    loop {
        if let Some(p) = codec::decode(buf, Some(Version::V311), 1 << 24)? {
            return Ok(Some(p));
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn next(c: &mut Conn) -> anyhow::Result<Option<Packet>> {
    read_packet(&mut c.rd, &mut c.buf).await
}

fn ns_since(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

struct Outcome {
    delivered: u64,
    secs: f64,
    hist: Histogram<u64>,
}

/// Runs one scenario: publishers flood (within their QoS 1 window), or, with `rate`, offer
/// that many messages per second in all, evenly paced.
async fn run_scenario(
    t: &Target,
    s: &Scenario,
    secs: u64,
    window: usize,
    tag: &str,
    rate: Option<f64>,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let topic_of = |i: usize| {
        if s.fan_in {
            format!("{}/{tag}/in/{i}", t.prefix)
        } else if s.publishers == 1 {
            format!("{}/{tag}/out", t.prefix)
        } else {
            format!("{}/{tag}/pair/{i}", t.prefix)
        }
    };
    // Subscribers first, each with its SUBACK before anyone publishes.
    let mut subs = Vec::new();
    for i in 0..s.subscribers {
        let mut c = connect(t, &format!("{tag}-sub-{i}")).await?;
        let filter = if s.fan_in {
            format!("{}/{tag}/in/+", t.prefix)
        } else if s.publishers == 1 {
            topic_of(0)
        } else {
            topic_of(i)
        };
        let mut out = BytesMut::new();
        codec::encode(
            &Packet::Subscribe(Subscribe {
                pkid: 1,
                filters: vec![(filter, SubOptions::qos(s.qos))],
                properties: Properties::default(),
            }),
            Version::V311,
            &mut out,
        );
        c.wr.write_all(&out).await?;
        match next(&mut c).await? {
            Some(Packet::SubAck(a)) if a.codes.iter().all(|c| *c < 0x80) => {}
            other => bail!("{}: subscribe refused: {other:?}", t.name),
        }
        let (delivered, stop) = (delivered.clone(), stop.clone());
        subs.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let mut acks = BytesMut::new();
            loop {
                // Drain what is buffered, acknowledging in one write.
                let p = match codec::decode(&mut c.buf, Some(Version::V311), 1 << 24)? {
                    Some(p) => p,
                    None => {
                        if !acks.is_empty() {
                            c.wr.write_all(&acks).await?;
                            acks.clear();
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match tokio::time::timeout(
                            Duration::from_millis(200),
                            c.rd.read_buf(&mut c.buf),
                        )
                        .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            _ => continue,
                        }
                    }
                };
                if let Packet::Publish(p) = p {
                    if p.payload.len() >= 8 {
                        let sent =
                            u64::from_le_bytes(p.payload[..8].try_into().unwrap_or_default());
                        let lat = ns_since(start).saturating_sub(sent);
                        hist.record(lat.max(1))?;
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                    if p.qos == QoS::AtLeastOnce {
                        codec::encode(
                            &Packet::PubAck(codec::Ack::new(p.pkid, 0)),
                            Version::V311,
                            &mut acks,
                        );
                    }
                }
            }
            anyhow::Ok(hist)
        }));
    }
    let measure_from = Instant::now();
    let mut pubs = Vec::new();
    for i in 0..s.publishers {
        let c = connect(t, &format!("{tag}-pub-{i}")).await?;
        let topic = topic_of(i);
        let (stop, qos, size, window) = (stop.clone(), s.qos, s.payload.max(8), window);
        let per_publisher = rate.map(|r| r / s.publishers as f64);
        pubs.push(tokio::spawn(async move {
            let credits = Arc::new(tokio::sync::Semaphore::new(window));
            let Conn {
                mut rd,
                mut wr,
                mut buf,
            } = c;
            // QoS 1: a reader returns a credit per PUBACK.
            let reader = {
                let credits = credits.clone();
                tokio::spawn(async move {
                    while let Ok(Some(p)) = read_packet(&mut rd, &mut buf).await {
                        if let Packet::PubAck(_) = p {
                            credits.add_permits(1);
                        }
                    }
                })
            };
            let mut pkid: u16 = 0;
            let mut out = BytesMut::new();
            let body = vec![0x5au8; size];
            let (paced_from, mut sent) = (Instant::now(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                // Paced: only what the rate allows by now.
                let mut burst = 16;
                if let Some(r) = per_publisher {
                    let due = (paced_from.elapsed().as_secs_f64() * r) as u64;
                    if due <= sent {
                        tokio::time::sleep(Duration::from_micros(500)).await;
                        continue;
                    }
                    burst = (due - sent).min(16);
                }
                // A burst: up to 16 messages per write.
                for _ in 0..burst {
                    if qos == QoS::AtLeastOnce {
                        match credits.try_acquire() {
                            Ok(p) => p.forget(),
                            Err(_) => break,
                        }
                        pkid = pkid.wrapping_add(1).max(1);
                    }
                    sent += 1;
                    let mut payload = body.clone();
                    payload[..8].copy_from_slice(&ns_since(start).to_le_bytes());
                    codec::encode(
                        &Packet::Publish(Publish {
                            dup: false,
                            qos,
                            retain: false,
                            topic: topic.clone(),
                            pkid: if qos == QoS::AtLeastOnce { pkid } else { 0 },
                            payload: Bytes::from(payload),
                            properties: Properties::default(),
                        }),
                        Version::V311,
                        &mut out,
                    );
                }
                if out.is_empty() {
                    // Window full: wait for an acknowledgement.
                    if let Ok(Ok(p)) =
                        tokio::time::timeout(Duration::from_millis(200), credits.acquire()).await
                    {
                        p.forget();
                        credits.add_permits(1);
                    }
                    continue;
                }
                if wr.write_all(&out).await.is_err() {
                    break;
                }
                out.clear();
                if qos == QoS::AtMostOnce {
                    tokio::task::yield_now().await;
                }
            }
            reader.abort();
            let _ = wr.shutdown().await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let counted = delivered.load(Ordering::Relaxed);
    let secs = measure_from.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for p in pubs {
        let _ = p.await;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for s in subs {
        if let Ok(Ok(h)) = s.await {
            hist.add(h)?;
        }
    }
    Ok(Outcome {
        delivered: counted,
        secs,
        hist,
    })
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

/// Bytes of resident memory per idle connection: `n` more connected clients, measured after
/// they settle, against before (after a warm-up).
async fn idle_cost(t: &Target, n: usize) -> anyhow::Result<f64> {
    // A first hundred warm up what every broker sets up once (caches, arenas), so the figure
    // is what one more connection costs.
    let mut warm = Vec::new();
    for i in 0..100 {
        warm.push(connect(t, &format!("warm-{i}")).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(t.pid)?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(connect(t, &format!("idle-{i}")).await?);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = rss(t.pid)?;
    drop(conns);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

struct Mosquitto {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mosquitto(bin: &str) -> anyhow::Result<(Mosquitto, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000\nmax_inflight_messages 64\nlog_type error\n"
        ),
    )?;
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin} (apt-get install mosquitto)"))?;
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return Ok((Mosquitto { child, _dir: dir }, addr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("mosquitto did not start on {addr}")
}

pub async fn run(sb: &str, args: MqttArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (mosq, mosq_addr) = start_mosquitto(&args.mosquitto)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = crate::start_with_args(sb, &[], &["--mqtt", &format!("127.0.0.1:{port}")])?;
    let admin = crate::bench_admin(&server).await?;
    let dev = admin
        .device_register(&sb_proto::DeviceRegister {
            name: "bench".into(),
            group: String::new(),
            tags: Default::default(),
        })
        .await?;
    let targets = [
        Target {
            name: "switchboard",
            addr: format!("127.0.0.1:{port}"),
            user: Some((dev.id.clone(), dev.secret.clone())),
            prefix: format!("devices/{}", dev.id),
            pid: server.pid(),
        },
        Target {
            name: "mosquitto",
            addr: mosq_addr,
            user: None,
            prefix: "bench".into(),
            pid: mosq.child.id(),
        },
    ];
    // Idle connections first, on fresh processes, so earlier load does not hide the growth.
    let mut idle = Vec::new();
    for t in targets.iter().filter(|_| args.idle > 0) {
        eprintln!("  {} idle connections on {}…", args.idle, t.name);
        idle.push((t.name, idle_cost(t, args.idle).await?));
    }
    println!(
        "MQTT 3.1.1 over TCP on 127.0.0.1, {} s per run, QoS 1 window {} per publisher\n",
        args.seconds, args.window
    );
    println!(
        "| broker | resident bytes per idle connection ({} connections) |",
        args.idle
    );
    println!("|---|---:|");
    for (name, per) in &idle {
        println!("| {name} | {per:.0} |");
    }
    println!();
    println!("| scenario | broker | msg/s delivered | p50 ms | p99 ms |");
    println!("|---|---|---:|---:|---:|");
    let mut ratios = Vec::new();
    let mut targets_met = Vec::new();
    for (k, s) in SCENARIOS.iter().enumerate() {
        if args.only.as_deref().is_some_and(|o| !s.name.contains(o)) {
            continue;
        }
        let mut rates = Vec::new();
        for t in &targets {
            eprintln!("  {} on {}…", s.name, t.name);
            let o = run_scenario(t, s, args.seconds, args.window, &format!("s{k}"), None).await?;
            let rate = o.delivered as f64 / o.secs;
            let (p50, p99) = (
                o.hist.value_at_quantile(0.5) as f64 / 1e6,
                o.hist.value_at_quantile(0.99) as f64 / 1e6,
            );
            println!(
                "| {} | {} | {rate:.0} | {p50:.2} | {p99:.2} |",
                s.name, t.name
            );
            rates.push((rate, p99));
        }
        // The target: more throughput than Mosquitto at equal or better p99. Switchboard is
        // offered `--paced` times what Mosquitto delivered flat out, and its p99 there is set
        // against Mosquitto's.
        let offered = rates[1].0 * args.paced;
        eprintln!("  {} on switchboard paced at {offered:.0} msg/s…", s.name);
        let paced = run_scenario(
            &targets[0],
            s,
            args.seconds,
            args.window,
            &format!("p{k}"),
            // Publishes per second: on one topic with many subscribers, each is delivered to all.
            Some(if !s.fan_in && s.publishers == 1 {
                offered / s.subscribers as f64
            } else {
                offered
            }),
        )
        .await?;
        let paced_rate = paced.delivered as f64 / paced.secs;
        let paced_p99 = paced.hist.value_at_quantile(0.99) as f64 / 1e6;
        ratios.push((s.name, rates[0].0 / rates[1].0, rates[0].1 / rates[1].1));
        targets_met.push((s.name, rates[1], paced_rate, paced_p99));
    }
    println!("\n| scenario | throughput sb/mosquitto | p99 sb/mosquitto |");
    println!("|---|---:|---:|");
    for (name, r, l) in &ratios {
        println!("| {name} | {r:.2} | {l:.2} |");
    }
    println!(
        "\nThe target, more throughput at equal or better p99: Switchboard offered {:.2}× \
         Mosquitto's flat-out rate.\n",
        args.paced
    );
    println!(
        "| scenario | mosquitto msg/s | mosquitto p99 ms | switchboard msg/s | switchboard p99 ms | met |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for (name, (m_rate, m_p99), rate, p99) in &targets_met {
        let met = *rate > *m_rate && *p99 <= *m_p99;
        println!(
            "| {name} | {m_rate:.0} | {m_p99:.2} | {rate:.0} | {p99:.2} | {} |",
            if met { "yes" } else { "no" }
        );
    }
    drop(mosq);
    Ok(())
}
