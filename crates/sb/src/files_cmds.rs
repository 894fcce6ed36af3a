//! `sb files …`: uploads and downloads with progress, listings and versions.

use crate::cli::FilesCmd;
use crate::client_cmds::{logged_in, output};
use anyhow::Context;

/// A progress line on stderr: `verb label: pct% (x of y MiB)`.
fn progress(verb: &'static str, label: String) -> impl Fn(u64, u64) + Send + Sync + 'static {
    move |done, total| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        eprint!(
            "\r  {verb} {label}: {pct:>3}% ({:.1} of {:.1} MiB)",
            done as f64 / 1_048_576.0,
            total as f64 / 1_048_576.0
        );
    }
}

fn when(ms: i64) -> String {
    crate::client_cmds::fmt_time(ms)
}

fn device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub async fn files(cmd: FilesCmd, json: bool) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    match cmd {
        FilesCmd::Put { local, remote } => {
            if !local.is_file() {
                anyhow::bail!("{} is not a file", local.display());
            }
            eprintln!("  chunking {}…", local.display());
            let bar = progress("uploading", remote.clone());
            let r = client
                .put_file(&local, &remote, None, &device_name(), &bar)
                .await;
            eprintln!();
            let (info, stats) = r.with_context(|| {
                format!(
                    "uploading {}; run the same command again to resume",
                    local.display()
                )
            })?;
            output(json, &info, || {
                println!(
                    "{} version {}: {} bytes in {} chunks, {} sent ({} bytes); the rest the server had",
                    info.path,
                    info.version,
                    info.size,
                    stats.chunks,
                    stats.chunks_sent,
                    stats.bytes_sent
                );
            })
        }
        FilesCmd::Get {
            remote,
            local,
            version,
        } => {
            let local = match local {
                Some(l) => l,
                None => remote
                    .rsplit('/')
                    .next()
                    .filter(|n| !n.is_empty())
                    .map(std::path::PathBuf::from)
                    .context("name the local file: sb files get REMOTE LOCAL")?,
            };
            let bar = progress("downloading", remote.clone());
            let r = client.get_file(&remote, version, &local, &bar).await;
            eprintln!();
            let info = r.with_context(|| {
                format!("downloading {remote}; run the same command again to resume")
            })?;
            output(json, &info, || {
                println!(
                    "{} version {} → {} ({} bytes, blake3 verified)",
                    remote,
                    info.version,
                    local.display(),
                    info.size
                );
            })
        }
        FilesCmd::Ls { folder } => {
            let list = client.files_list(folder.as_deref().unwrap_or("/")).await?;
            output(json, &list, || {
                if list.is_empty() {
                    println!("(no files)");
                }
                for f in &list {
                    println!(
                        "{:>12}  v{:<4} {}  {}",
                        f.size,
                        f.version,
                        when(f.modified_at_ms),
                        f.path
                    );
                }
            })
        }
        FilesCmd::Mv { from, to } => {
            let moved = client.files_move(&from, &to).await?;
            output(json, &moved, || {
                for f in &moved {
                    println!("moved to {}", f.path);
                }
            })
        }
        FilesCmd::Rm { path } => {
            let f = client.files_remove(&path).await?;
            output(json, &f, || {
                println!(
                    "{} moved to the trash; `sb files restore {}` brings it back",
                    f.path, f.path
                );
            })
        }
        FilesCmd::Restore { path, version } => {
            let f = client.files_restore(&path, version).await?;
            output(json, &f, || match version {
                Some(v) => println!("{} version {v} restored as version {}", f.path, f.version),
                None => println!("{} restored from the trash (version {})", f.path, f.version),
            })
        }
        FilesCmd::Versions { path } => {
            let list = client.files_versions(&path).await?;
            output(json, &list, || {
                for v in &list {
                    println!(
                        "v{:<4} {:>12} bytes  {}  by {}{}",
                        v.version,
                        v.size,
                        when(v.created_at_ms),
                        v.created_by,
                        if v.device.is_empty() {
                            String::new()
                        } else {
                            format!(" on {}", v.device)
                        }
                    );
                }
            })
        }
    }
}
