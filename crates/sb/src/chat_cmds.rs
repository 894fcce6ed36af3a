//! `sb chat …`: rooms are named `#name` (or by id) and direct messages `@user`.

use crate::cli::ChatCmd;
use crate::client_cmds::{fmt_time, logged_in, output};
use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use sb_client::Client;
use sb_client::e2ee::{E2ee, Payload, SealedAttachment};
use sb_client::state::Login;
use sb_proto::{HistoryQuery, MessageInfo, MessageSend, RoomCreate, RoomInfo, ServerFrame};
use std::collections::HashMap;
use tokio_tungstenite::tungstenite::Message;

/// Finds a room the user can address: `@user` (the DM), `#name` or a room id.
async fn resolve(client: &Client, room: &str) -> anyhow::Result<RoomInfo> {
    if let Some(user) = room.strip_prefix('@') {
        return Ok(client.direct_room(user).await?);
    }
    let name = room.strip_prefix('#').unwrap_or(room);
    let mine = client.rooms().await?;
    if let Some(r) = mine
        .iter()
        .find(|r| r.id == room || (r.kind == "group" && r.name.eq_ignore_ascii_case(name)))
    {
        return Ok(r.clone());
    }
    let public = client.public_rooms().await?;
    public
        .into_iter()
        .find(|r| r.id == room || r.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            anyhow!("no room {room} among yours or the public ones; see `sb chat rooms`")
        })
}

fn room_label(r: &RoomInfo) -> String {
    if r.kind == "direct" {
        "(direct)".into()
    } else {
        format!("#{}", r.name)
    }
}

/// Maps user ids to usernames for the rooms' members, for printing.
async fn names(client: &Client, room: &str) -> HashMap<String, String> {
    client
        .members(room)
        .await
        .map(|m| m.into_iter().map(|m| (m.user_id, m.username)).collect())
        .unwrap_or_default()
}

fn print_message(label: &str, m: &MessageInfo, names: &HashMap<String, String>) {
    let who = names
        .get(&m.sender)
        .map(String::as_str)
        .unwrap_or(&m.sender);
    println!(
        "{label} [{}] {} {who}: {}",
        m.seq,
        fmt_time(m.created_at_ms),
        m.body
    );
}

/// This device's MLS keys for the logged-in account (created on first use).
fn keys(login: &Login) -> anyhow::Result<E2ee> {
    let st = crate::client_cmds::state()?;
    let server = sb_client::server_key(&login.server)?;
    let path = sb_client::state::e2ee_path(st.dir(), &server, &login.username);
    Ok(E2ee::open(&path, &login.username)?)
}

/// Publishes key packages for this device, up to the target count.
pub(crate) async fn publish_keys(login: &Login, client: &Client) -> anyhow::Result<()> {
    keys(login)?.top_up_key_packages(client).await?;
    Ok(())
}

/// The keys, after joining the encrypted rooms whose Welcomes wait for this device and
/// replacing the key packages those used.
async fn ready_keys(login: &Login, client: &Client) -> anyhow::Result<E2ee> {
    let keys = keys(login)?;
    let joined = keys.accept_welcomes(client).await?;
    for (room, why) in &joined.failed {
        eprintln!(
            "warning: could not join encrypted room {room}: {why}; ask a member to invite you again"
        );
    }
    if !joined.rooms.is_empty() {
        keys.top_up_key_packages(client).await?;
    }
    Ok(keys)
}

/// The message as a member reads it: in an encrypted room, decrypted (its files listed after
/// the text), or a note saying why it cannot be.
pub(crate) async fn readable(keys: Option<&E2ee>, client: &Client, m: MessageInfo) -> MessageInfo {
    let Some(keys) = keys else { return m };
    if m.kind != "message" || m.deleted {
        return m;
    }
    let body = match keys.decrypt(client, &m).await {
        Ok(d) => {
            let mut body = d.payload.body;
            for a in &d.payload.attachments {
                body.push_str(&format!("  [file {} ({} bytes) {}]", a.name, a.size, a.id));
            }
            body
        }
        Err(e) => format!("[cannot decrypt: {e}]"),
    };
    MessageInfo { body, ..m }
}

/// Finds the key of an encrypted room's attachment in the messages that carry it.
async fn sealed_attachment(
    keys: &E2ee,
    client: &Client,
    room: &str,
    id: &str,
) -> anyhow::Result<SealedAttachment> {
    let mut after = 0;
    loop {
        let page = client
            .history(
                room,
                &HistoryQuery {
                    after: Some(after),
                    before: None,
                    limit: None,
                },
            )
            .await?;
        let Some(last) = page.last() else {
            bail!("no message in this room carries attachment {id}");
        };
        after = last.seq;
        for m in page
            .iter()
            .filter(|m| m.attachments.iter().any(|a| a == id))
        {
            if let Some(a) = keys
                .decrypt(client, m)
                .await?
                .payload
                .attachments
                .into_iter()
                .find(|a| a.id == id)
            {
                return Ok(a);
            }
        }
    }
}

pub async fn chat(cmd: ChatCmd, json: bool) -> anyhow::Result<()> {
    let (login, client) = logged_in()?;
    match cmd {
        ChatCmd::Rooms { public } => {
            let rooms = if public {
                client.public_rooms().await?
            } else {
                client.rooms().await?
            };
            output(json, &rooms, || {
                println!(
                    "{:<24} {:<8} {:<10} {:>8}  ID",
                    "ROOM", "KIND", "ROLE", "LAST"
                );
                for r in &rooms {
                    println!(
                        "{:<24} {:<8} {:<10} {:>8}  {}",
                        room_label(r),
                        if r.encrypted { "e2ee" } else { &r.kind },
                        r.role.as_deref().unwrap_or("-"),
                        r.last_seq,
                        r.id
                    );
                }
            })
        }
        ChatCmd::Create {
            name,
            public,
            private: _,
            topic,
            encrypted,
        } => {
            let keys = if encrypted {
                Some(ready_keys(&login, &client).await?)
            } else {
                None
            };
            let r = client
                .create_room(&RoomCreate {
                    name,
                    topic,
                    public,
                    encrypted,
                })
                .await?;
            if let Some(keys) = &keys {
                keys.create_group(&r.id)?;
            }
            output(json, &r, || {
                println!(
                    "Created {} ({}), id {}",
                    room_label(&r),
                    if r.encrypted {
                        "private, end-to-end encrypted"
                    } else if r.public {
                        "public"
                    } else {
                        "private"
                    },
                    r.id
                )
            })
        }
        ChatCmd::Join { room } => {
            let r = resolve(&client, &room).await?;
            client.join_room(&r.id).await?;
            eprintln!("Joined {}.", room_label(&r));
            Ok(())
        }
        ChatCmd::Leave { room } => {
            let r = resolve(&client, &room).await?;
            client.leave_room(&r.id).await?;
            eprintln!("Left {}.", room_label(&r));
            Ok(())
        }
        ChatCmd::Invite { room, user } => {
            let r = resolve(&client, &room).await?;
            let user = user.trim_start_matches('@');
            match client.add_member(&r.id, user).await {
                // Already a member: in an encrypted room, adding their devices may be what
                // is left to do.
                Err(e) if r.encrypted && e.code() == Some("conflict") => {}
                other => other?,
            }
            if r.encrypted {
                let devices = ready_keys(&login, &client)
                    .await?
                    .add_member(&client, &r.id, user)
                    .await?;
                eprintln!(
                    "Added {user} to {} with {devices} device(s); they read messages sent from now on.",
                    room_label(&r)
                );
            } else {
                eprintln!("Added {user} to {}.", room_label(&r));
            }
            Ok(())
        }
        ChatCmd::Kick { room, user } => {
            let r = resolve(&client, &room).await?;
            client.kick(&r.id, user.trim_start_matches('@')).await?;
            eprintln!("Removed {user} from {}.", room_label(&r));
            remove_keys(&login, &client, &r).await
        }
        ChatCmd::Ban { room, user } => {
            let r = resolve(&client, &room).await?;
            client.ban(&r.id, user.trim_start_matches('@')).await?;
            eprintln!("Banned {user} from {}.", room_label(&r));
            remove_keys(&login, &client, &r).await
        }
        ChatCmd::Dm { user } => {
            let r = client.direct_room(user.trim_start_matches('@')).await?;
            output(json, &r, || println!("Direct room with {user}: {}", r.id))
        }
        ChatCmd::Send { room, text, files } => {
            let r = resolve(&client, &room).await?;
            if r.encrypted {
                return send_encrypted(&login, &client, &r, text, &files, json).await;
            }
            let mut attachments = Vec::new();
            for path in &files {
                attachments.push(upload(&client, &r.id, path).await?);
            }
            let req = MessageSend {
                message_id: uuid::Uuid::new_v4().to_string(),
                body: text,
                reply_to: None,
                kind: None,
                target: None,
                attachments,
            };
            // One retry with the same id on a transport failure: the server stores it once.
            let sent = match client.send_message(&r.id, &req).await {
                Err(sb_client::ClientError::Transport { .. }) => {
                    client.send_message(&r.id, &req).await?
                }
                other => other?,
            };
            output(json, &sent, || {
                eprintln!("Sent to {} as #{}.", room_label(&r), sent.message.seq)
            })
        }
        ChatCmd::History {
            room,
            limit,
            before,
            after,
        } => {
            let r = resolve(&client, &room).await?;
            let q = HistoryQuery {
                after,
                before,
                limit: Some(limit),
            };
            let keys = if r.encrypted {
                Some(ready_keys(&login, &client).await?)
            } else {
                None
            };
            let mut messages = Vec::new();
            for m in client.history(&r.id, &q).await? {
                messages.push(readable(keys.as_ref(), &client, m).await);
            }
            let names = names(&client, &r.id).await;
            output(json, &messages, || {
                for m in &messages {
                    print_message(&room_label(&r), m, &names);
                }
            })
        }
        ChatCmd::Get {
            room,
            attachment,
            output,
        } => {
            let r = resolve(&client, &room).await?;
            let bytes = if r.encrypted {
                let keys = ready_keys(&login, &client).await?;
                let sealed = sealed_attachment(&keys, &client, &r.id, &attachment).await?;
                E2ee::download_sealed(&client, &r.id, &sealed).await?
            } else {
                client.download(&r.id, &attachment).await?.1
            };
            match output {
                Some(path) => {
                    std::fs::write(&path, &bytes)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("Saved {} bytes to {}.", bytes.len(), path.display());
                }
                None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)?,
            }
            Ok(())
        }
        ChatCmd::Search { query, room, limit } => {
            let room = match room {
                Some(r) => Some(resolve(&client, &r).await?),
                None => None,
            };
            let hits = client
                .search(&sb_proto::SearchQuery {
                    q: query,
                    room: room.as_ref().map(|r| r.id.clone()),
                    limit: Some(limit),
                })
                .await?;
            let labels: HashMap<String, String> = client
                .rooms()
                .await?
                .iter()
                .map(|r| (r.id.clone(), room_label(r)))
                .collect();
            let mut names = HashMap::new();
            for id in hits
                .iter()
                .map(|m| &m.room)
                .collect::<std::collections::BTreeSet<_>>()
            {
                names.extend(self::names(&client, id).await);
            }
            output(json, &hits, || {
                for m in &hits {
                    let label = labels.get(&m.room).map(String::as_str).unwrap_or(&m.room);
                    print_message(label, m, &names);
                }
            })
        }
        ChatCmd::Tail { rooms } => tail(&login, &client, &rooms, json).await,
        ChatCmd::Open { room } => {
            let r = resolve(&client, &room).await?;
            let keys = if r.encrypted {
                Some(ready_keys(&login, &client).await?)
            } else {
                None
            };
            let names = names(&client, &r.id).await;
            let view = crate::chat_tui::Target {
                room: &r,
                title: &room_label(&r),
                keys: keys.as_ref(),
            };
            crate::chat_tui::open(&client, view, names, &login.username).await
        }
    }
}

async fn send_encrypted(
    login: &Login,
    client: &Client,
    r: &RoomInfo,
    text: String,
    files: &[std::path::PathBuf],
    json: bool,
) -> anyhow::Result<()> {
    let keys = ready_keys(login, client).await?;
    let mut attachments = Vec::new();
    for path in files {
        let (name, bytes) = read_file(path)?;
        let sealed = keys
            .upload_sealed(
                client,
                &r.id,
                &name,
                content_type_of(path),
                &bytes,
                progress(name.clone()),
            )
            .await;
        eprintln!();
        let sealed = sealed?;
        eprintln!("  {name} encrypted and attached as {}", sealed.id);
        attachments.push(sealed);
    }
    let payload = Payload {
        body: text,
        attachments,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let sent = match keys.send(client, &r.id, &id, &payload).await {
        Err(sb_client::ClientError::Transport { .. }) => {
            keys.send(client, &r.id, &id, &payload).await?
        }
        other => other?,
    };
    output(json, &sent, || {
        eprintln!(
            "Sent to {} as #{}, end-to-end encrypted.",
            room_label(r),
            sent.message.seq
        )
    })
}

/// In an encrypted room, removes from its group the devices of users who are no longer members.
async fn remove_keys(login: &Login, client: &Client, r: &RoomInfo) -> anyhow::Result<()> {
    if r.encrypted {
        let removed = ready_keys(login, client)
            .await?
            .remove_departed(client, &r.id)
            .await?;
        eprintln!("Their {removed} device(s) can no longer read what is sent from now on.");
    }
    Ok(())
}

async fn tail(login: &Login, client: &Client, rooms: &[String], json: bool) -> anyhow::Result<()> {
    let mut only = Vec::new();
    for r in rooms {
        only.push(resolve(client, r).await?);
    }
    let mine = client.rooms().await?;
    let mut labels: HashMap<String, String> =
        mine.iter().map(|r| (r.id.clone(), room_label(r))).collect();
    let mut encrypted: std::collections::HashSet<String> = mine
        .iter()
        .filter(|r| r.encrypted)
        .map(|r| r.id.clone())
        .collect();
    let keys = if encrypted.is_empty() {
        None
    } else {
        Some(ready_keys(login, client).await?)
    };
    let mut names: HashMap<String, String> = HashMap::new();
    for id in labels.keys() {
        names.extend(self::names(client, id).await);
    }
    let mut ws = client.ws_connect().await?;
    let sync = serde_json::json!({"type": "chat_sync", "id": "tail", "cursors": []});
    ws.send(Message::text(sync.to_string())).await?;
    while let Some(msg) = ws.next().await {
        let text = match msg.context("connection lost; run `sb chat tail` again")? {
            Message::Text(t) => t,
            Message::Close(f) => bail!(
                "the server closed the connection{}",
                f.map(|f| format!(": {}", f.reason)).unwrap_or_default()
            ),
            _ => continue,
        };
        let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
            continue;
        };
        match frame {
            ServerFrame::ChatMessage { message } => {
                if !only.is_empty() && !only.iter().any(|r| r.id == message.room) {
                    continue;
                }
                let message = if encrypted.contains(&message.room) {
                    readable(keys.as_ref(), client, message).await
                } else {
                    message
                };
                if json {
                    println!("{}", serde_json::to_string(&message)?);
                } else {
                    if !names.contains_key(&message.sender) {
                        names.extend(self::names(client, &message.room).await);
                    }
                    let label = labels
                        .get(&message.room)
                        .cloned()
                        .unwrap_or_else(|| message.room.clone());
                    print_message(&label, &message, &names);
                }
            }
            // Printed once delivery is live, so scripts can wait for it.
            ServerFrame::ChatSynced { .. } => eprintln!("Waiting for messages (Ctrl-C to stop)…"),
            ServerFrame::ChatMembership {
                room, joined: true, ..
            } => {
                if let Ok(r) = resolve(client, &room).await {
                    if r.encrypted {
                        encrypted.insert(room.clone());
                    }
                    labels.insert(room, room_label(&r));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn content_type_of(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("txt" | "log" | "md") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

fn read_file(path: &std::path::Path) -> anyhow::Result<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_string();
    Ok((name, bytes))
}

/// A progress line on stderr for an upload of `label`.
fn progress(label: String) -> impl Fn(u64, u64) + Send + Sync + 'static {
    move |sent, total| {
        let pct = (sent * 100).checked_div(total).unwrap_or(100);
        eprint!(
            "\r  uploading {label}: {pct:>3}% ({:.1} of {:.1} MiB)",
            sent as f64 / 1_048_576.0,
            total as f64 / 1_048_576.0
        );
    }
}

/// Uploads one file with a progress line on stderr; returns the attachment id.
async fn upload(client: &Client, room: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let (name, bytes) = read_file(path)?;
    let info = client
        .upload(
            room,
            &name,
            content_type_of(path),
            bytes,
            progress(name.clone()),
        )
        .await;
    eprintln!();
    let info = info?;
    eprintln!("  {} attached as {}", info.name, info.id);
    Ok(info.id)
}
