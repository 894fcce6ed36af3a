//! Chat fan-out: `clients` WebSocket clients (one user each) in rooms of `room_size`; one member
//! per room sends `messages` messages; every member receives each. Reports deliveries per
//! second, end-to-end latency (send to receive) and the server's resident memory per
//! connection.

use crate::start;
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use sb_client::{Client, Trust, WsStream};
use sb_core::Secret;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct ChatArgs {
    /// Connected clients (one user each).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Messages sent into each room.
    #[arg(long, default_value_t = 20)]
    messages: usize,
}

const PASSWORD: &str = "load-test passphrase, long enough";

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS not found")
}

fn progress(what: &str, done: usize, total: usize) {
    if done == total || done.is_multiple_of(250) {
        eprint!("\r  {what}: {done}/{total}");
        if done == total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

async fn sync(ws: &mut WsStream) -> anyhow::Result<()> {
    ws.send(Message::text(
        r#"{"type":"chat_sync","id":"s","cursors":[]}"#,
    ))
    .await?;
    while let Some(m) = ws.next().await {
        if let Message::Text(t) = m?
            && t.contains(r#""type":"chat_synced""#)
        {
            return Ok(());
        }
    }
    bail!("connection closed before chat_synced")
}

pub async fn run(sb: &str, args: ChatArgs) -> anyhow::Result<()> {
    if args.room_size < 2 || args.clients < args.room_size {
        bail!("need --room-size >= 2 and --clients >= --room-size");
    }
    let n = args.clients - args.clients % args.room_size;
    let rooms_n = n / args.room_size;
    // Password hashing is not what this measures: cheap Argon2 keeps setup short.
    let server = start(
        sb,
        &[
            ("SB_AUTH__REGISTRATION", "open".into()),
            ("SB_AUTH__ARGON2_MEMORY_KIB", "1024".into()),
            ("SB_AUTH__ARGON2_ITERATIONS", "1".into()),
            ("SB_LIMITS__CONNECTIONS_MAX", (n * 2 + 100).to_string()),
        ],
    )?;
    let pid = server.child.id();
    let trust = Trust::Fingerprint(server.fingerprint.clone());
    eprintln!(
        "sb-bench chat: {n} clients, {rooms_n} rooms of {}, {} messages per room",
        args.room_size, args.messages
    );

    // Users, each logged in.
    let done = AtomicU64::new(0);
    let tokens: Vec<Secret<String>> = stream::iter(0..n)
        .map(|i| {
            let (server, trust, done) = (&server, &trust, &done);
            async move {
                let c = Client::new(&server.url, trust)?;
                let username = format!("u{i}");
                c.register(&sb_proto::RegisterRequest {
                    username: username.clone(),
                    password: Secret::new(PASSWORD.into()),
                    setup_token: (i == 0).then(|| Secret::new(server.setup_token.clone())),
                    invite: None,
                })
                .await?;
                let t = c
                    .login(&username, Secret::new(PASSWORD.into()))
                    .await?
                    .token;
                progress(
                    "users",
                    done.fetch_add(1, Ordering::Relaxed) as usize + 1,
                    n,
                );
                anyhow::Ok(t)
            }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let client_of = |i: usize| -> anyhow::Result<Client> {
        Ok(Client::new(&server.url, &trust)?.with_token(tokens[i].clone()))
    };

    // Rooms: the first member of each creates it and adds the rest.
    let room_size = args.room_size;
    let done = AtomicU64::new(0);
    let room_ids: Vec<String> = stream::iter(0..rooms_n)
        .map(|r| {
            let (done, client_of) = (&done, &client_of);
            async move {
                let owner = client_of(r * room_size)?;
                let room = owner
                    .create_room(&sb_proto::RoomCreate {
                        name: format!("room{r}"),
                        topic: String::new(),
                        public: false,
                        encrypted: false,
                    })
                    .await?;
                for m in 1..room_size {
                    owner
                        .add_member(&room.id, &format!("u{}", r * room_size + m))
                        .await?;
                }
                progress(
                    "rooms",
                    done.fetch_add(1, Ordering::Relaxed) as usize + 1,
                    rooms_n,
                );
                anyhow::Ok(room.id)
            }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;

    // Connect everyone and measure the server's memory before and after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid)?;
    let done = AtomicU64::new(0);
    let sockets: Vec<WsStream> = stream::iter(0..n)
        .map(|i| {
            let (done, client_of) = (&done, &client_of);
            async move {
                let mut ws = client_of(i)?.ws_connect().await?;
                sync(&mut ws).await?;
                progress(
                    "connections",
                    done.fetch_add(1, Ordering::Relaxed) as usize + 1,
                    n,
                );
                anyhow::Ok(ws)
            }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(pid)?;

    // Receivers: every member expects every message of its room.
    let start_clock = Instant::now();
    let expected = args.messages;
    let delivered = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::new();
    for mut ws in sockets {
        let delivered = delivered.clone();
        receivers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut got = 0;
            while got < expected {
                let Some(m) = ws.next().await else {
                    bail!("a client was disconnected")
                };
                let Message::Text(t) = m? else { continue };
                let Some(at) = t.find("\"body\":\"t=") else {
                    continue;
                };
                let digits: String = t[at + 10..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let sent_us: u64 = digits.parse()?;
                let now_us = start_clock.elapsed().as_micros() as u64;
                hist.record(now_us.saturating_sub(sent_us).max(1))?;
                got += 1;
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(hist)
        }));
    }

    // Senders: the owner of each room sends `messages`, one after another.
    let send_started = Instant::now();
    let mut senders = Vec::new();
    for (r, room) in room_ids.into_iter().enumerate() {
        let c = client_of(r * room_size)?;
        senders.push(tokio::spawn(async move {
            for k in 0..expected {
                let ts = start_clock.elapsed().as_micros();
                c.send_message(
                    &room,
                    &sb_proto::MessageSend {
                        message_id: format!("{r}-{k}"),
                        body: format!("t={ts}"),
                        reply_to: None,
                        kind: None,
                        target: None,
                        attachments: Vec::new(),
                    },
                )
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    let ticker = {
        let delivered = delivered.clone();
        let total = (n * expected) as u64;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d = delivered.load(Ordering::Relaxed);
                eprint!("\r  delivered: {d}/{total}");
                let _ = std::io::stderr().flush();
                if d >= total {
                    eprintln!();
                    break;
                }
            }
        })
    };
    for s in senders {
        s.await??;
    }
    let sent_in = send_started.elapsed();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for r in receivers {
        hist.add(tokio::time::timeout(Duration::from_secs(300), r).await???)?;
    }
    let elapsed = send_started.elapsed();
    let _ = ticker.await;
    let total = hist.len();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "| clients | room size | messages sent | deliveries | sends/s | deliveries/s | p50 ms | p99 ms | server RSS per connection |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {} | {} | {total} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} KiB |",
        args.room_size,
        rooms_n * expected,
        (rooms_n * expected) as f64 / sent_in.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64,
    );
    drop(server);
    Ok(())
}
