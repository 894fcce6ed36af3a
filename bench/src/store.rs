//! The store's write path alone: `concurrency` tasks append chat messages for `seconds`, first
//! with `group_commit_max = 1` (one fsync per write), then with the configured default, in the
//! same run on the same disk.

use hdrhistogram::Histogram;
use sb_core::config::StoreConfig;
use sb_core::{Role, RoomId, UnixMillis, UserId};
use sb_store::chat::{MessageKind, NewMessage, RoomKind, RoomRecord};
use sb_store::{Admission, ChatStore, SqliteStore, Store, UserRecord};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct StoreArgs {
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

async fn measure(
    group_commit_max: usize,
    args: &StoreArgs,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let dir = tempfile::tempdir()?;
    let config = StoreConfig {
        group_commit_max,
        ..StoreConfig::default()
    };
    let store = Arc::new(SqliteStore::open(&dir.path().join("sb.db"), &config)?);
    let user = UserId::new_at(UnixMillis(1));
    store
        .create_user(
            UserRecord {
                id: user,
                username: "bench".into(),
                display_name: String::new(),
                status_text: String::new(),
                password_hash: "x".into(),
                role: Role::User,
                disabled: false,
                created_at: UnixMillis(1),
            },
            Admission::Open,
            UnixMillis(1),
        )
        .await?;
    let room = RoomId::new_at(UnixMillis(1));
    store
        .create_room(RoomRecord {
            id: room,
            kind: RoomKind::Group,
            name: "bench".into(),
            topic: String::new(),
            public: false,
            created_by: user,
            created_at: UnixMillis(1),
            last_seq: 0,
            encrypted: false,
            mls_epoch: 0,
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..args.concurrency {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut k = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                store
                    .append_message(NewMessage {
                        room_id: room,
                        message_id: format!("{t}-{k}"),
                        sender: user,
                        body: "a message of ordinary length for a chat room".into(),
                        reply_to: None,
                        at: UnixMillis(2),
                        kind: MessageKind::Message,
                        target: None,
                        attachments: Vec::new(),
                    })
                    .await?;
                hist.record((t0.elapsed().as_micros() as u64).max(1))?;
                k += 1;
            }
            anyhow::Ok(hist)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    Ok((hist.len() as f64 / started.elapsed().as_secs_f64(), hist))
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    eprintln!(
        "sb-bench store: {} concurrent appenders, {} s each, durability full",
        args.concurrency, args.seconds
    );
    println!("| commit | appends/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    for (label, max) in [
        ("one fsync per write (group_commit_max = 1)", 1),
        (
            "group commit (default, group_commit_max = 256)",
            StoreConfig::default().group_commit_max,
        ),
    ] {
        let (rate, h) = measure(max, &args).await?;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!("| {label} | {rate:.0} | {:.2} | {:.2} |", ms(0.5), ms(0.99));
    }
    Ok(())
}
