//! `sb files …`: uploads and downloads with progress, listings and versions.

use crate::cli::{FilesArgs, FilesCmd};
use crate::client_cmds::{logged_in, output};
use anyhow::Context;
use sb_client::sync::{SyncEvent, SyncReport, Wake};

/// A progress line on stderr: `verb label: pct% (x of y MiB)`.
fn progress(verb: &'static str, label: String) -> impl Fn(u64, u64) + Send + Sync + 'static {
    // Redrawn when the percentage moves, not on every network read.
    let shown = std::sync::atomic::AtomicU64::new(u64::MAX);
    move |done, total| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if shown.swap(pct, std::sync::atomic::Ordering::Relaxed) == pct {
            return;
        }
        eprint!(
            "\r  {verb} {label}: {pct:>3}% ({:.1} of {:.1} MiB)",
            done as f64 / 1_048_576.0,
            total as f64 / 1_048_576.0
        );
    }
}

/// Per-file transfer progress on stderr, only for transfers worth watching (over 8 MiB).
fn transfer_progress() -> impl Fn(&str, u64, u64) + Send + Sync {
    let shown = std::sync::Mutex::new((String::new(), u64::MAX));
    move |path, done, total| {
        if total < 8 << 20 {
            return;
        }
        let pct = done * 100 / total;
        let mut last = shown.lock().unwrap_or_else(|e| e.into_inner());
        if last.0 == path && last.1 == pct {
            return;
        }
        *last = (path.to_string(), pct);
        eprint!(
            "\r  {path}: {pct:>3}% ({:.1} of {:.1} MiB)",
            done as f64 / 1_048_576.0,
            total as f64 / 1_048_576.0
        );
        if done == total {
            eprintln!();
        }
    }
}

fn describe(e: &SyncEvent) -> String {
    match e {
        SyncEvent::Uploaded { path, bytes_sent } => format!("  ↑ {path} ({bytes_sent} bytes sent)"),
        SyncEvent::Downloaded {
            path,
            bytes_fetched,
        } => {
            format!("  ↓ {path} ({bytes_fetched} bytes fetched)")
        }
        SyncEvent::DeletedLocal { path } => {
            format!("  ✗ {path} (deleted here: it was deleted on the server)")
        }
        SyncEvent::DeletedRemote { path } => {
            format!("  ✗ {path} (deleted on the server: it was deleted here)")
        }
        SyncEvent::Conflict { path, copy } => format!(
            "  ! {path} was edited on both sides: the server's version keeps the name, this one is {copy}"
        ),
        SyncEvent::Deferred { path, reason } => format!("  … {path}: {reason}; retrying"),
        SyncEvent::Skipped { path, reason } => format!("  ? {path} skipped: {reason}"),
    }
}

fn report_changed(r: &SyncReport) -> bool {
    r.uploaded
        + r.downloaded
        + r.deleted_local
        + r.deleted_remote
        + r.conflicts.len()
        + r.skipped.len()
        > 0
}

fn summary(r: &SyncReport) -> String {
    let mut s = format!(
        "in sync: {} files; {} up ({} bytes), {} down ({} bytes), {} deleted here, {} deleted on the server",
        r.files,
        r.uploaded,
        r.bytes_sent,
        r.downloaded,
        r.bytes_fetched,
        r.deleted_local,
        r.deleted_remote
    );
    if !r.conflicts.is_empty() {
        s.push_str(&format!("; conflict copies: {}", r.conflicts.join(", ")));
    }
    if !r.skipped.is_empty() {
        s.push_str(&format!("; {} skipped (see above)", r.skipped.len()));
    }
    s
}

fn when(ms: i64) -> String {
    crate::client_cmds::fmt_time(ms)
}

fn device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A space's id from its name or id, among those the caller can see.
async fn space_id(client: &sb_client::Client, space: &str) -> anyhow::Result<String> {
    let spaces = client.files_spaces().await?;
    let found: Vec<_> = spaces
        .iter()
        .filter(|s| s.id == space || s.name == space)
        .collect();
    match found[..] {
        [one] => Ok(one.id.clone()),
        [] => {
            anyhow::bail!("no space {space:?} of yours or shared with you; see `sb files spaces`")
        }
        _ => anyhow::bail!(
            "several spaces are called {space:?}; name one by its id (`sb files spaces`)"
        ),
    }
}

pub async fn files(args: FilesArgs, json: bool) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    let space = match &args.space {
        Some(s) => Some(space_id(&client, s).await?),
        None => None,
    };
    let space = space.as_deref();
    match args.cmd {
        FilesCmd::Put { local, remote } => {
            if !local.is_file() {
                anyhow::bail!("{} is not a file", local.display());
            }
            eprintln!("  chunking {}…", local.display());
            let bar = progress("uploading", remote.clone());
            let r = client
                .put_file(space, &local, &remote, None, &device_name(), &bar)
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
            let r = client.get_file(space, &remote, version, &local, &bar).await;
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
            let list = client
                .files_list(space, folder.as_deref().unwrap_or("/"))
                .await?;
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
            let moved = client.files_move(space, &from, &to).await?;
            output(json, &moved, || {
                for f in &moved {
                    println!("moved to {}", f.path);
                }
            })
        }
        FilesCmd::Rm { path } => {
            let f = client.files_remove(space, &path, None).await?;
            output(json, &f, || {
                println!(
                    "{} moved to the trash; `sb files restore {}` brings it back",
                    f.path, f.path
                );
            })
        }
        FilesCmd::Restore { path, version } => {
            let f = client.files_restore(space, &path, version).await?;
            output(json, &f, || match version {
                Some(v) => println!("{} version {v} restored as version {}", f.path, f.version),
                None => println!("{} restored from the trash (version {})", f.path, f.version),
            })
        }
        FilesCmd::Link {
            path,
            expires,
            version,
        } => {
            let secs = crate::client_cmds::parse_duration(&expires)
                .context("--expires, e.g. 1h or 7d")?
                .as_secs();
            let link = client.files_link(space, &path, version, secs).await?;
            let url = client.url_for(&link.url_path);
            #[derive(serde::Serialize)]
            struct Out<'a> {
                url: &'a str,
                expires_at_ms: i64,
            }
            output(
                json,
                &Out {
                    url: &url,
                    expires_at_ms: link.expires_at_ms,
                },
                || {
                    println!("{url}");
                    eprintln!(
                        "  works without an account until {}",
                        when(link.expires_at_ms)
                    );
                },
            )
        }
        FilesCmd::Sync {
            local,
            remote,
            watch,
            poll,
            device,
        } => {
            let device = device.unwrap_or_else(device_name);
            let syncer = sb_client::sync::Syncer::open(
                client,
                &local,
                &remote,
                space.map(str::to_string),
                &device,
            )?;
            let event = |e: &SyncEvent| eprintln!("{}", describe(e));
            let bytes = transfer_progress();
            if watch {
                let poll = crate::client_cmds::parse_duration(&poll).context("--poll, e.g. 30s")?;
                eprintln!(
                    "  watching {} ⇄ {remote}; Ctrl-C stops",
                    syncer.root().display()
                );
                let on_run = |wake: Wake, r: Result<&SyncReport, &sb_client::ClientError>| match r {
                    Ok(report) if json => {
                        println!("{}", serde_json::to_string(report).unwrap_or_default())
                    }
                    Ok(report) if wake == Wake::Start || report_changed(report) => {
                        println!("{}", summary(report))
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("  sync failed: {e}; retrying on the next change"),
                };
                syncer.watch(poll, &event, &bytes, &on_run).await?;
                return Ok(());
            }
            let report = syncer.run(&event, &bytes).await.context(
                "syncing stopped; run the same command again to carry on where it left off",
            )?;
            output(json, &report, || println!("{}", summary(&report)))
        }
        FilesCmd::Spaces => {
            let list = client.files_spaces().await?;
            output(json, &list, || {
                for s in &list {
                    println!(
                        "{}  {:<20} owner {:<16} {}{}",
                        s.id,
                        s.name,
                        s.owner,
                        s.access,
                        if s.personal { " (personal)" } else { "" }
                    );
                }
            })
        }
        FilesCmd::SpaceCreate { name } => {
            let s = client.files_create_space(&name).await?;
            output(json, &s, || {
                println!(
                    "space {} created ({}); share it with `sb files share {} USER --access write`",
                    s.name, s.id, s.name
                );
            })
        }
        FilesCmd::Share {
            space: target,
            user,
            access,
        } => {
            let id = space_id(&client, &target).await?;
            client.files_share(&id, &user, &access).await?;
            if !json {
                match access.as_str() {
                    "none" => println!("{target} is no longer shared with {user}"),
                    a => println!("{target} shared with {user} ({a})"),
                }
            }
            Ok(())
        }
        FilesCmd::Versions { path } => {
            let list = client.files_versions(space, &path).await?;
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
