//! Files: upload and download throughput of a large file against copying it on the same disk
//! (`cp`, and `dd` with fsync), and what an edit costs to send (dedup).

use anyhow::Context;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

#[derive(clap::Args)]
pub struct FilesArgs {
    /// Size of the test file in MiB (random, incompressible).
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Edits (one inserted byte each, spread over the file) for the dedup figure.
    #[arg(long, default_value_t = 10)]
    edits: usize,
}

fn noise_file(path: &Path, len: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for b in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1_048_576.0 / secs
}

/// Drops the page cache for a file, so reads measure the disk, not memory (best effort).
fn evict(path: &Path) {
    let _ = std::process::Command::new("dd")
        .args([
            &format!("if={}", path.display()),
            "iflag=nocache",
            "count=0",
        ])
        .stderr(std::process::Stdio::null())
        .status();
}

fn progress(label: &'static str) -> impl Fn(u64, u64) + Send + Sync {
    let shown = std::sync::atomic::AtomicU64::new(u64::MAX);
    move |done, total| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if shown.swap(pct, std::sync::atomic::Ordering::Relaxed) != pct {
            eprint!("\r  {label}: {pct:>3}%");
        }
    }
}

pub async fn run(sb: &str, args: FilesArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let size = args.size_mib << 20;
    let work = tempfile::tempdir()?;
    let file = work.path().join("big.bin");
    eprintln!("writing a {} MiB test file…", args.size_mib);
    noise_file(&file, size)?;

    // Baselines on the same disk.
    evict(&file);
    let t = Instant::now();
    let status = std::process::Command::new("cp")
        .arg(&file)
        .arg(work.path().join("copy.bin"))
        .status()?;
    anyhow::ensure!(status.success(), "cp failed");
    let cp_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let status = std::process::Command::new("dd")
        .arg(format!("if={}", file.display()))
        .arg(format!("of={}", work.path().join("dd.bin").display()))
        .args(["bs=4M", "conv=fsync"])
        .stderr(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "dd failed");
    let dd_secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(work.path().join("copy.bin"))?;
    std::fs::remove_file(work.path().join("dd.bin"))?;

    let server = crate::start(sb, &[])?;
    let c = crate::bench_admin(&server).await?;

    evict(&file);
    let t = Instant::now();
    let (_, stats) = c
        .put_file(None, &file, "/big.bin", None, "bench", &progress("upload"))
        .await
        .context("upload")?;
    let up_secs = t.elapsed().as_secs_f64();
    eprintln!();
    let back = work.path().join("back.bin");
    let t = Instant::now();
    c.get_file(None, "/big.bin", None, &back, &progress("download"))
        .await
        .context("download")?;
    let down_secs = t.elapsed().as_secs_f64();
    eprintln!();
    std::fs::remove_file(&back)?;

    // Dedup: the same file with `edits` single bytes inserted, evenly spread.
    let edited = work.path().join("edited.bin");
    {
        let data = std::fs::read(&file)?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&edited)?);
        let step = data.len() / (args.edits + 1);
        for (i, part) in data.chunks(step.max(1)).enumerate() {
            out.write_all(part)?;
            if i < args.edits {
                out.write_all(&[0x5a])?;
            }
        }
        out.flush()?;
    }
    let (_, edit) = c
        .put_file(None, &edited, "/big.bin", None, "bench", &|_, _| {})
        .await
        .context("upload of the edited file")?;

    println!(
        "{} MiB file, {} chunks, one server on this machine (TLS, durability full)\n",
        args.size_mib, stats.chunks
    );
    println!("| measure | MB/s (MiB/s) |");
    println!("|---|---:|");
    println!("| `cp` (same disk) | {:.0} |", mbps(size, cp_secs));
    println!("| `dd bs=4M conv=fsync` | {:.0} |", mbps(size, dd_secs));
    println!(
        "| `sb files put` (chunk, hash, TLS, fsync per chunk, commit re-hash) | {:.0} |",
        mbps(size, up_secs)
    );
    println!(
        "| `sb files get` (TLS, verify BLAKE3, rename) | {:.0} |",
        mbps(size, down_secs)
    );
    println!(
        "\nDedup: {} one-byte inserts sent {} of {} chunks, {:.1} MiB of {} MiB ({:.2} % of the file).",
        args.edits,
        edit.chunks_sent,
        edit.chunks,
        edit.bytes_sent as f64 / 1_048_576.0,
        args.size_mib,
        edit.bytes_sent as f64 * 100.0 / size as f64
    );
    Ok(())
}
