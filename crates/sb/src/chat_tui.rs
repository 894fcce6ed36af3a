//! `sb chat open ROOM`: an interactive view of one room — recent history, live messages,
//! who is online and who is typing, and a line to write in. Enter sends, Esc or Ctrl-C quits.

use anyhow::Context;
use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use futures_util::{SinkExt, StreamExt};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use sb_client::Client;
use sb_client::e2ee::{E2ee, Payload};
use sb_proto::{HistoryQuery, MessageInfo, RoomInfo, ServerFrame};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Lines kept in the view.
const SCROLLBACK_MAX: usize = 1_000;
/// How long a typing notice stays up without a new one.
const TYPING_SHOWN: Duration = Duration::from_secs(4);
/// How often this view tells the room that the user is typing.
const TYPING_SENT: Duration = Duration::from_secs(2);

struct Entry {
    seq: i64,
    who: String,
    body: String,
    reactions: Vec<String>,
    edited: bool,
    deleted: bool,
}

struct View {
    title: String,
    names: HashMap<String, String>,
    presence: HashMap<String, String>,
    entries: VecDeque<Entry>,
    typing: HashMap<String, Instant>,
    input: String,
    status: String,
}

impl View {
    fn name(&self, user_id: &str) -> String {
        self.names
            .get(user_id)
            .cloned()
            .unwrap_or_else(|| user_id.chars().take(8).collect())
    }

    fn target(&mut self, m: &MessageInfo) -> Option<&mut Entry> {
        let t = m.target?;
        self.entries.iter_mut().find(|e| e.seq == t)
    }

    fn apply(&mut self, m: &MessageInfo) {
        match m.kind.as_str() {
            "edit" => {
                if let Some(e) = self.target(m) {
                    e.body = m.body.clone();
                    e.edited = true;
                }
            }
            "delete" => {
                if let Some(e) = self.target(m) {
                    e.body.clear();
                    e.deleted = true;
                }
            }
            "reaction" => {
                if let Some(e) = self.target(m) {
                    e.reactions.push(m.body.clone());
                }
            }
            "unreaction" => {
                if let Some(e) = self.target(m)
                    && let Some(i) = e.reactions.iter().position(|r| *r == m.body)
                {
                    e.reactions.remove(i);
                }
            }
            _ => {
                let who = self.name(&m.sender);
                self.typing.remove(&who);
                let mut body = m.body.clone();
                if !m.attachments.is_empty() {
                    body.push_str(&format!("  [{} attachment(s)]", m.attachments.len()));
                }
                if self.entries.len() >= SCROLLBACK_MAX {
                    self.entries.pop_front();
                }
                self.entries.push_back(Entry {
                    seq: m.seq,
                    who,
                    body,
                    reactions: Vec::new(),
                    edited: m.edited_at_ms.is_some(),
                    deleted: m.deleted,
                });
            }
        }
    }

    fn draw(&self, f: &mut ratatui::Frame) {
        let [header, body, typing, input] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
            Constraint::Length(3),
        ])
        .areas(f.area());
        let online: Vec<String> = self
            .presence
            .iter()
            .filter(|(_, s)| s.as_str() != "offline")
            .map(|(u, s)| {
                if s == "away" {
                    format!("{u} (away)")
                } else {
                    u.clone()
                }
            })
            .collect();
        let head = format!(
            "{}  ·  online: {}",
            self.title,
            if online.is_empty() {
                "-".into()
            } else {
                online.join(", ")
            }
        );
        f.render_widget(
            Paragraph::new(head).style(Style::default().add_modifier(Modifier::BOLD)),
            header,
        );
        let lines: Vec<Line> = self
            .entries
            .iter()
            .map(|e| {
                let mut spans = vec![
                    Span::styled(
                        format!("{}: ", e.who),
                        Style::default().add_modifier(Modifier::BOLD),
                    ),
                    if e.deleted {
                        Span::styled("(deleted)", Style::default().add_modifier(Modifier::ITALIC))
                    } else {
                        Span::raw(e.body.clone())
                    },
                ];
                if e.edited && !e.deleted {
                    spans.push(Span::styled(
                        " (edited)",
                        Style::default().add_modifier(Modifier::DIM),
                    ));
                }
                if !e.reactions.is_empty() {
                    spans.push(Span::raw(format!("  {}", e.reactions.join(" "))));
                }
                Line::from(spans)
            })
            .collect();
        let height = body.height.saturating_sub(2) as usize;
        let skip = lines.len().saturating_sub(height);
        f.render_widget(
            Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>())
                .block(Block::default().borders(Borders::TOP | Borders::BOTTOM))
                .wrap(Wrap { trim: false }),
            body,
        );
        let now = Instant::now();
        let mut typists: Vec<&String> = self
            .typing
            .iter()
            .filter(|(_, t)| now.duration_since(**t) < TYPING_SHOWN)
            .map(|(u, _)| u)
            .collect();
        typists.sort();
        let notice = match typists.as_slice() {
            [] => self.status.clone(),
            [one] => format!("{one} is typing…"),
            many => format!(
                "{} are typing…",
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        f.render_widget(
            Paragraph::new(notice).style(Style::default().add_modifier(Modifier::DIM)),
            typing,
        );
        f.render_widget(
            Paragraph::new(self.input.as_str()).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" Enter: send · Esc: quit "),
            ),
            input,
        );
    }
}

/// Restores the terminal however the view ends.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The room the view shows; `keys` for an encrypted room.
pub struct Target<'a> {
    pub room: &'a RoomInfo,
    pub title: &'a str,
    pub keys: Option<&'a E2ee>,
}

pub async fn open(
    client: &Client,
    target: Target<'_>,
    names: HashMap<String, String>,
    me: &str,
) -> anyhow::Result<()> {
    let Target {
        room,
        title,
        keys: e2ee,
    } = target;
    let recent = client
        .history(
            &room.id,
            &HistoryQuery {
                after: None,
                before: None,
                limit: Some(200),
            },
        )
        .await?;
    let members = client.members(&room.id).await?;
    let mut view = View {
        title: title.to_string(),
        names,
        presence: members
            .iter()
            .map(|m| (m.username.clone(), m.presence.clone()))
            .collect(),
        entries: VecDeque::new(),
        typing: HashMap::new(),
        input: String::new(),
        status: String::new(),
    };
    for m in &recent {
        view.apply(&crate::chat_cmds::readable(e2ee, client, m.clone()).await);
    }
    // This view's own connection makes its user online.
    view.presence.insert(me.to_string(), "online".into());
    let cursor = recent.last().map(|m| m.seq).unwrap_or(room.last_seq);
    let mut ws = client.ws_connect().await?;
    let sync = serde_json::json!({"type": "chat_sync", "id": "open", "cursors": [{"room": room.id, "seq": cursor}]});
    ws.send(Message::text(sync.to_string())).await?;

    let mut terminal = ratatui::try_init().context("this command needs a terminal")?;
    let _guard = TerminalGuard;
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_typing_sent: Option<Instant> = None;
    let mut sent = 0u64;
    loop {
        terminal.draw(|f| view.draw(f))?;
        tokio::select! {
            key = keys.next() => {
                let Some(Ok(Event::Key(k))) = key else { continue };
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match k.code {
                    KeyCode::Esc => break,
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => break,
                    KeyCode::Enter if !view.input.trim().is_empty() && e2ee.is_some() => {
                        // Encrypted: sent over REST; the server echoes it on the socket.
                        let payload = Payload { body: std::mem::take(&mut view.input), attachments: Vec::new() };
                        let id = uuid::Uuid::new_v4().to_string();
                        if let Some(keys) = e2ee
                            && let Err(e) = keys.send(client, &room.id, &id, &payload).await
                        {
                            view.status = format!("error: {e}");
                        }
                        last_typing_sent = None;
                    }
                    KeyCode::Enter if !view.input.trim().is_empty() => {
                        sent += 1;
                        let frame = serde_json::json!({
                            "type": "chat_send", "id": format!("tui-{sent}"), "room": room.id,
                            "message_id": uuid::Uuid::new_v4().to_string(), "body": view.input,
                        });
                        ws.send(Message::text(frame.to_string())).await?;
                        view.input.clear();
                        last_typing_sent = None;
                    }
                    KeyCode::Backspace => { view.input.pop(); }
                    KeyCode::Char(c) => {
                        view.input.push(c);
                        if last_typing_sent.is_none_or(|t| t.elapsed() >= TYPING_SENT) {
                            let frame = serde_json::json!({"type": "chat_typing", "room": room.id});
                            ws.send(Message::text(frame.to_string())).await?;
                            last_typing_sent = Some(Instant::now());
                        }
                    }
                    _ => {}
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(f))) => {
                        drop(_guard);
                        anyhow::bail!("the server closed the connection{}", f.map(|f| format!(": {}", f.reason)).unwrap_or_default());
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e).context("connection lost; run `sb chat open` again"),
                    None => anyhow::bail!("connection lost; run `sb chat open` again"),
                };
                match serde_json::from_str::<ServerFrame>(&text) {
                    Ok(ServerFrame::ChatMessage { message }) if message.room == room.id => {
                        view.apply(&crate::chat_cmds::readable(e2ee, client, message).await);
                    }
                    Ok(ServerFrame::ChatTyping { room: r, username, .. }) if r == room.id => {
                        view.typing.insert(username, Instant::now());
                    }
                    Ok(ServerFrame::Presence { username, status, .. }) => {
                        view.presence.insert(username, status);
                    }
                    Ok(ServerFrame::Error { message, .. }) => view.status = format!("error: {message}"),
                    _ => {}
                }
            }
            _ = tick.tick() => {}
        }
    }
    Ok(())
}
