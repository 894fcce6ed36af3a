//! Sync: the time to propagate one changed file in a tree of many small files from one synced
//! folder to another through the server (a sync on each side), against `rsync -a` copying the
//! same tree between two folders on this machine.

use anyhow::Context;
use sb_client::sync::Syncer;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct SyncArgs {
    /// Files in the tree (100 per folder).
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Size of each file in KiB (random, incompressible).
    #[arg(long, default_value_t = 8)]
    file_kib: usize,
    /// Changed files to propagate, one at a time; the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn rel(i: usize) -> String {
    format!("d{:03}/f{i:05}.bin", i / 100)
}

fn rsync(from: &Path, to: &Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let status = std::process::Command::new("rsync")
        .args(["-a", "--delete", "--exclude=/.sb-sync"])
        .arg(format!("{}/", from.display()))
        .arg(to)
        .status()
        .context("running rsync (apt-get install rsync)")?;
    anyhow::ensure!(status.success(), "rsync failed");
    Ok(t.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(sb: &str, args: SyncArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir()?;
    let (a, b, r) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("rsync-copy"),
    );
    eprintln!("writing {} files of {} KiB…", args.files, args.file_kib);
    for i in 0..args.files {
        let p = a.join(rel(i));
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(&p, noise(args.file_kib << 10, i as u64))?;
    }

    let server = crate::start(sb, &[])?;
    let c = crate::bench_admin(&server).await?;
    let sa = Syncer::open(c.clone(), &a, "/tree", None, "a")?;
    let sb_ = Syncer::open(c.clone(), &b, "/tree", None, "b")?;
    let count = std::sync::atomic::AtomicUsize::new(0);
    let event = |_: &sb_client::sync::SyncEvent| {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n.is_multiple_of(500) {
            eprint!("\r  {n} files");
        }
    };
    let quiet = |_: &str, _, _| {};
    let t = Instant::now();
    let up = sa.run(&event, &quiet).await.context("first sync of a")?;
    let first_up = t.elapsed();
    eprintln!();
    let t = Instant::now();
    let down = sb_.run(&event, &quiet).await.context("first sync of b")?;
    let first_down = t.elapsed();
    eprintln!();
    anyhow::ensure!(
        up.uploaded == args.files && down.downloaded == args.files,
        "first syncs moved {} up and {} down",
        up.uploaded,
        down.downloaded
    );
    let first_rsync = rsync(&a, &r)?;

    // Nothing changed: what a sync costs just to find that out.
    let t = Instant::now();
    sa.run(&event, &quiet).await?;
    sb_.run(&event, &quiet).await?;
    let idle = t.elapsed();
    let idle_rsync = rsync(&a, &r)?;

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let changed = rel(round * 37 % args.files);
        std::fs::write(
            a.join(&changed),
            noise(args.file_kib << 10, 1_000_000 + round as u64),
        )?;
        let t = Instant::now();
        let ra = sa.run(&event, &quiet).await?;
        let rb = sb_.run(&event, &quiet).await?;
        ours.push(t.elapsed());
        anyhow::ensure!(
            ra.uploaded == 1 && rb.downloaded == 1,
            "round {round}: {} up, {} down",
            ra.uploaded,
            rb.downloaded
        );
        anyhow::ensure!(std::fs::read(a.join(&changed))? == std::fs::read(b.join(&changed))?);
        theirs.push(rsync(&a, &r)?);
    }

    println!(
        "{} files of {} KiB in {} folders; one server on this machine (TLS, durability full)\n",
        args.files,
        args.file_kib,
        args.files.div_ceil(100)
    );
    println!("| measure | sb files sync (a → server → b) | rsync -a (a → copy, same disk) |");
    println!("|---|---:|---:|");
    println!(
        "| first sync of the whole tree | {:.1} s up + {:.1} s down | {:.1} s |",
        first_up.as_secs_f64(),
        first_down.as_secs_f64(),
        first_rsync.as_secs_f64()
    );
    println!(
        "| nothing changed (both sides scanned) | {:.0} ms | {:.0} ms |",
        ms(idle),
        ms(idle_rsync)
    );
    println!(
        "| one file changed, median of {} | {:.0} ms | {:.0} ms |",
        args.rounds,
        ms(median(ours)),
        ms(median(theirs))
    );
    Ok(())
}
