//! `/v1/ws`: the authenticated real-time connection. Services add frame types; for now it
//! answers `ping` and `whoami`, pings the client, and closes when the credential is revoked, the
//! account is disabled, the client falls silent, or the server shuts down.
//!
//! Outbound events reach a socket through bus subscriptions, whose bounded queues and overflow
//! policy are the socket's outbound limit.

use crate::error::ApiError;
use crate::extract::Caller;
use crate::routes::user_info;
use crate::routes_chat::message_info;
use crate::{AppState, now};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use sb_auth::{Action, AuthEvent, Ctx, Origin, Resource, Subject, credential_topic, user_topic};
use sb_chat::delivery::{Delivery, Step};
use sb_chat::{Chat, ChatEvent};
use sb_core::{ErrorCode, RoomId, UserId};
use sb_proto::{
    ClientFrame, RoomCursor, RoomSynced, ServerFrame, UserInfo, WS_PROTOCOL_VERSION, close_code,
};
use sb_store::chat::{Appended, MessageRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

/// Counts a user's open sockets; the count drops when the guard does.
struct SocketSlot {
    state: Arc<AppState>,
    user: UserId,
}

impl SocketSlot {
    fn take(state: &Arc<AppState>, user: UserId) -> Option<SocketSlot> {
        let mut map = state.ws_per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(user).or_insert(0);
        if *n >= state.config.limits.ws_connections_per_user_max {
            return None;
        }
        *n += 1;
        state.metrics.websockets_open.inc();
        Some(SocketSlot {
            state: state.clone(),
            user,
        })
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut map = self
            .state
            .ws_per_user
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.user);
            }
        }
        self.state.metrics.websockets_open.dec();
    }
}

#[utoipa::path(get, path = "/v1/ws", tag = "realtime",
    responses((status = 101, description = "switching to the WebSocket protocol; JSON frames as in ClientFrame / ServerFrame"),
              (status = "4XX", body = sb_proto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn ws_handler(
    State(st): State<Arc<AppState>>,
    c: Caller,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    st.auth
        .authorize(c.cx(), Action::Read, &Resource::Realtime)
        .await?;
    let upgrade = upgrade.map_err(|r| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("this route needs a WebSocket upgrade: {}", r.body_text()),
        )
    })?;
    let slot = SocketSlot::take(&st, c.subject.user_id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Overloaded,
            "too many open WebSockets for this account",
        )
    })?;
    let user = user_info(&st.auth.me(&c.subject).await?);
    let limits = &st.config.limits;
    let st2 = st.clone();
    Ok(upgrade
        .max_frame_size(limits.ws_frame_size_bytes_max)
        .max_message_size(limits.ws_message_size_bytes_max)
        .read_buffer_size(limits.ws_buffer_size_bytes)
        .write_buffer_size(limits.ws_buffer_size_bytes)
        .on_upgrade(move |socket| {
            let tracker = st2.ws_tasks.clone();
            tracker.track_future(run(st2, socket, c.subject, c.origin, user, slot))
        }))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

fn frame(f: &ServerFrame) -> Message {
    match serde_json::to_string(f) {
        Ok(s) => Message::Text(s.into()),
        Err(_) => close(1011, "encoding error"),
    }
}

/// Whether a read failed on `max_frame_size`/`max_message_size`. Relies on our tungstenite being
/// the version axum uses (the workspace pins them together).
fn is_too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tungstenite::Error::Capacity(_)) = err.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// One connection's chat state: the delivery cursors, and when it last announced typing in
/// each room.
struct ChatCursors(Delivery, HashMap<RoomId, std::time::Instant>);

/// The file space a connection watches, if any.
type FilesWatch = Option<(String, sb_bus::Subscription<sb_files::SpaceChanged>)>;

/// A connection's typing announcements per room are passed on at most this often.
const TYPING_INTERVAL: Duration = Duration::from_secs(2);

impl ChatCursors {
    /// Frames for one chat event; messages go out once each, in room order.
    async fn on_event(&mut self, chat: &Chat, cx: Ctx<'_>, event: ChatEvent) -> Vec<ServerFrame> {
        let delivery = &mut self.0;
        if !delivery.is_synced() {
            return Vec::new();
        }
        let message_frames = |v: &[MessageRecord]| {
            v.iter()
                .map(|m| ServerFrame::ChatMessage {
                    message: message_info(m),
                })
                .collect::<Vec<_>>()
        };
        match event {
            ChatEvent::Message(m) => match delivery.on_message(&m) {
                Step::Send(m) => message_frames(std::slice::from_ref(&*m)),
                Step::Skip => Vec::new(),
                Step::Fill { room, after, until } => match chat.range(cx, room, after, until).await
                {
                    Ok(v) => {
                        if let Some(last) = v.last() {
                            delivery.sent(room, last.seq);
                        }
                        message_frames(&v)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "filling a chat gap failed");
                        Vec::new()
                    }
                },
            },
            ChatEvent::Joined { room, last_seq } => delivery
                .joined(room, last_seq)
                .map(|cur| ServerFrame::ChatMembership {
                    room: room.to_string(),
                    joined: true,
                    last_seq: cur,
                })
                .into_iter()
                .collect(),
            ChatEvent::Left { room } => delivery
                .left(room)
                .map(|last| ServerFrame::ChatMembership {
                    room: room.to_string(),
                    joined: false,
                    last_seq: last,
                })
                .into_iter()
                .collect(),
            ChatEvent::Read {
                room,
                user,
                username,
                seq,
            } if delivery.follows(room) => vec![ServerFrame::ChatRead {
                room: room.to_string(),
                user_id: user.to_string(),
                username: username.to_string(),
                seq,
            }],
            ChatEvent::Typing {
                room,
                user,
                username,
            } if delivery.follows(room) => vec![ServerFrame::ChatTyping {
                room: room.to_string(),
                user_id: user.to_string(),
                username: username.to_string(),
            }],
            ChatEvent::Handshake { room, epoch } if delivery.follows(room) => {
                vec![ServerFrame::MlsHandshake {
                    room: room.to_string(),
                    epoch,
                }]
            }
            ChatEvent::Read { .. } | ChatEvent::Typing { .. } | ChatEvent::Handshake { .. } => {
                Vec::new()
            }
            ChatEvent::Presence {
                user,
                username,
                status,
                last_seen,
            } => vec![ServerFrame::Presence {
                user_id: user.to_string(),
                username: username.to_string(),
                status: status.as_str().to_string(),
                last_seen_at_ms: last_seen.map(|t| t.0),
            }],
        }
    }

    /// Replays what the device missed and starts live delivery.
    async fn sync(
        &mut self,
        chat: &Chat,
        cx: Ctx<'_>,
        id: String,
        cursors: Vec<RoomCursor>,
    ) -> Vec<ServerFrame> {
        let mut parsed = Vec::with_capacity(cursors.len());
        for c in cursors {
            match c.room.parse::<RoomId>() {
                Ok(room) => parsed.push((room, c.seq)),
                Err(_) => {
                    return vec![frame_error(
                        Some(id),
                        ErrorCode::InvalidArgument,
                        "bad room id in cursors",
                    )];
                }
            }
        }
        let rooms = match chat.catch_up(cx, &parsed).await {
            Ok(r) => r,
            Err(e) => return vec![frame_error(Some(id), e.code(), &e.to_string())],
        };
        let mut out = Vec::new();
        let mut synced = Vec::new();
        for r in rooms {
            let before = self.0.synced(r.room, r.last_seq);
            out.extend(r.messages.iter().filter(|m| m.seq > before).map(|m| {
                ServerFrame::ChatMessage {
                    message: message_info(m),
                }
            }));
            synced.push(RoomSynced {
                room: r.room.to_string(),
                last_seq: r.last_seq.max(before),
                truncated: r.truncated,
            });
        }
        out.push(ServerFrame::ChatSynced { id, rooms: synced });
        out
    }
}

/// The watched space once it changes (announcements queued meanwhile are folded into one);
/// `Err` when the subscription ended. Never resolves without a watch.
async fn next_change(watch: &mut FilesWatch) -> Result<String, String> {
    let Some((space, sub)) = watch else {
        return std::future::pending().await;
    };
    if sub.recv().await.is_err() {
        return Err(space.clone());
    }
    while let Ok(Some(_)) = sub.try_recv() {}
    Ok(space.clone())
}

fn frame_error(id: Option<String>, code: ErrorCode, message: &str) -> ServerFrame {
    ServerFrame::Error {
        id,
        code: code.as_str().into(),
        message: message.into(),
    }
}

async fn handle_frame(
    st: &AppState,
    cursors: &mut ChatCursors,
    watch: &mut FilesWatch,
    cx: Ctx<'_>,
    user: &UserInfo,
    text: &str,
) -> Vec<ServerFrame> {
    match sb_proto::decode_client_frame(text) {
        Ok(ClientFrame::Ping { id }) => vec![ServerFrame::Pong { id }],
        Ok(ClientFrame::Whoami { id }) => vec![ServerFrame::Whoami {
            id,
            user: user.clone(),
        }],
        Ok(ClientFrame::ChatSync { id, cursors: c }) => cursors.sync(&st.chat, cx, id, c).await,
        Ok(ClientFrame::FilesWatch { id, space }) => {
            match st.files.watch(cx, space.as_deref()).await {
                Ok((space, sub)) => {
                    let space = space.to_string();
                    *watch = Some((space.clone(), sub));
                    vec![ServerFrame::FilesWatching { id, space }]
                }
                Err(e) => {
                    let e = ApiError::from(e);
                    vec![frame_error(Some(id), e.code, &e.message)]
                }
            }
        }
        Ok(ClientFrame::ChatRead { id, room, seq }) => {
            let Ok(room) = room.parse::<RoomId>() else {
                return vec![frame_error(
                    Some(id),
                    ErrorCode::InvalidArgument,
                    "room is not a valid room id",
                )];
            };
            match st.chat.mark_read(cx, room, seq).await {
                // Every device, this one included, hears the new marker as `chat_read`.
                Ok(_) => Vec::new(),
                Err(e) => {
                    let e = ApiError::from(e);
                    vec![frame_error(Some(id), e.code, &e.message)]
                }
            }
        }
        Ok(ClientFrame::SetPresence { id, status }) => {
            let away = match status.as_str() {
                "away" => true,
                "online" => false,
                _ => {
                    return vec![frame_error(
                        Some(id),
                        ErrorCode::InvalidArgument,
                        "status is online or away",
                    )];
                }
            };
            match st.chat.set_away(cx, away).await {
                Ok(_) => Vec::new(),
                Err(e) => {
                    let e = ApiError::from(e);
                    vec![frame_error(Some(id), e.code, &e.message)]
                }
            }
        }
        Ok(ClientFrame::ChatTyping { room }) => {
            let Ok(room) = room.parse::<RoomId>() else {
                return vec![frame_error(
                    None,
                    ErrorCode::InvalidArgument,
                    "room is not a valid room id",
                )];
            };
            let now_i = std::time::Instant::now();
            if cursors
                .1
                .get(&room)
                .is_some_and(|t| now_i.duration_since(*t) < TYPING_INTERVAL)
            {
                return Vec::new();
            }
            if cursors.1.len() >= 1024 {
                cursors
                    .1
                    .retain(|_, t| now_i.duration_since(*t) < TYPING_INTERVAL);
            }
            cursors.1.insert(room, now_i);
            match st.chat.typing(cx, room).await {
                Ok(()) => Vec::new(),
                Err(e) => {
                    let e = ApiError::from(e);
                    vec![frame_error(None, e.code, &e.message)]
                }
            }
        }
        Ok(ClientFrame::ChatSend {
            id,
            room,
            message_id,
            body,
            reply_to,
            kind,
            target,
            attachments,
        }) => {
            let Ok(room) = room.parse::<RoomId>() else {
                return vec![frame_error(
                    Some(id),
                    ErrorCode::InvalidArgument,
                    "room is not a valid room id",
                )];
            };
            let kind = match crate::routes_chat::message_kind(kind.as_deref()) {
                Ok(k) => k,
                Err(e) => return vec![frame_error(Some(id), e.code, &e.message)],
            };
            let attachments = match crate::routes_chat::attachment_ids(&attachments) {
                Ok(a) => a,
                Err(e) => return vec![frame_error(Some(id), e.code, &e.message)],
            };
            let out = sb_chat::Outgoing {
                message_id: &message_id,
                body: &body,
                reply_to,
                kind,
                target,
                attachments: &attachments,
            };
            match st.chat.send(cx, room, out).await {
                Ok(a) => vec![ServerFrame::ChatAck {
                    id,
                    room: room.to_string(),
                    message_id,
                    seq: a.record().seq,
                    duplicate: matches!(a, Appended::Duplicate(_)),
                }],
                Err(e) => {
                    let e = ApiError::from(e);
                    vec![frame_error(Some(id), e.code, &e.message)]
                }
            }
        }
        Err(e) => vec![frame_error(e.id, ErrorCode::InvalidBody, &e.message)],
    }
}

async fn run(
    st: Arc<AppState>,
    socket: WebSocket,
    subject: Subject,
    origin: Origin,
    user: UserInfo,
    _slot: SocketSlot,
) {
    let (mut tx, mut rx) = socket.split();
    let subscribe = |topic: String| st.auth.bus().subscribe(&topic);
    let (Ok(mut revoked), Ok(mut disabled), Ok(mut chat_events)) = (
        subscribe(credential_topic(&subject.credential.id_string())),
        subscribe(user_topic(subject.user_id)),
        st.chat
            .bus()
            .subscribe(&sb_chat::user_topic(subject.user_id)),
    ) else {
        let _ = tx.send(close(1011, "internal error")).await;
        return;
    };
    let hello = ServerFrame::Hello {
        user: user.clone(),
        protocol: WS_PROTOCOL_VERSION,
    };
    if tx.send(frame(&hello)).await.is_err() {
        return;
    }
    let mut cursors = ChatCursors(Delivery::default(), HashMap::new());
    let presence_cx = |at| Ctx {
        subject: &subject,
        origin: &origin,
        now: at,
    };
    if let Err(e) = st.chat.connected(presence_cx(now())).await {
        tracing::warn!(error = %e, "presence update failed");
    }
    let interval = Duration::from_millis(st.config.limits.ws_ping_interval_ms.max(10));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut unanswered = 0u32;
    let mut watch: FilesWatch = None;
    let out: Option<Message> = 'conn: loop {
        let frames = tokio::select! {
            _ = st.shutdown.cancelled() => break Some(close(1001, "server shutting down")),
            ev = revoked.recv() => match ev {
                Ok(m) if m.payload == AuthEvent::CredentialRevoked =>
                    break Some(close(close_code::CREDENTIAL_REVOKED, "credential revoked")),
                Ok(_) => Vec::new(),
                Err(_) => break Some(close(close_code::SLOW_CONSUMER, "too far behind")),
            },
            ev = disabled.recv() => match ev {
                Ok(_) => break Some(close(close_code::CREDENTIAL_REVOKED, "account disabled")),
                Err(_) => break Some(close(close_code::SLOW_CONSUMER, "too far behind")),
            },
            ev = chat_events.recv() => match ev {
                Ok(m) => {
                    let cx = Ctx { subject: &subject, origin: &origin, now: now() };
                    cursors.on_event(&st.chat, cx, m.payload).await
                }
                Err(_) => break Some(close(close_code::SLOW_CONSUMER, "too far behind; resume from your cursors")),
            },
            changed = next_change(&mut watch) => match changed {
                Ok(space) => vec![ServerFrame::FilesChanged { space }],
                Err(space) => {
                    watch = None;
                    vec![ServerFrame::FilesChanged { space }, frame_error(None, ErrorCode::Overloaded,
                        "file change announcements fell behind; send files_watch again")]
                }
            },
            _ = ping.tick() => {
                if unanswered >= 2 {
                    break Some(close(1001, "no pong received"));
                }
                unanswered += 1;
                if tx.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
                Vec::new()
            }
            msg = rx.next() => match msg {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Err(e)) if is_too_big(&e) =>
                    break Some(close(1009, "frame or message too large")),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "websocket read failed");
                    break None;
                }
                Some(Ok(Message::Pong(_))) => { unanswered = 0; Vec::new() }
                Some(Ok(Message::Ping(_))) => Vec::new(),
                Some(Ok(Message::Binary(_))) => vec![frame_error(None, ErrorCode::InvalidArgument,
                    "binary frames are not supported; send JSON text")],
                Some(Ok(Message::Text(text))) => {
                    unanswered = 0;
                    let cx = Ctx { subject: &subject, origin: &origin, now: now() };
                    handle_frame(&st, &mut cursors, &mut watch, cx, &user, &text).await
                }
            },
        };
        for f in &frames {
            if tx.send(frame(f)).await.is_err() {
                break 'conn None;
            }
        }
    };
    if let Some(m) = out {
        let _ = tx.send(m).await;
        let _ = tx.close().await;
    }
    if let Err(e) = st.chat.disconnected(presence_cx(now())).await {
        tracing::warn!(error = %e, "presence update failed");
    }
}
