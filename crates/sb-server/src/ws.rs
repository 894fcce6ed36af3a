//! `/v1/ws`: the authenticated real-time connection. Services add frame types; for now it
//! answers `ping` and `whoami`, pings the client, and closes when the credential is revoked, the
//! account is disabled, the client falls silent, or the server shuts down.
//!
//! Outbound events reach a socket through bus subscriptions, whose bounded queues and overflow
//! policy are the socket's outbound limit.

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::routes::user_info;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use sb_auth::{Action, AuthEvent, Resource, Subject, credential_topic, user_topic};
use sb_core::{ErrorCode, UserId};
use sb_proto::{ClientFrame, ServerFrame, UserInfo, WS_PROTOCOL_VERSION, close_code};
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
        .on_upgrade(move |socket| {
            let tracker = st2.ws_tasks.clone();
            tracker.track_future(run(st2, socket, c.subject, user, slot))
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

async fn run(
    st: Arc<AppState>,
    socket: WebSocket,
    subject: Subject,
    user: UserInfo,
    _slot: SocketSlot,
) {
    let (mut tx, mut rx) = socket.split();
    let subscribe = |topic: String| st.auth.bus().subscribe(&topic);
    let (Ok(mut revoked), Ok(mut disabled)) = (
        subscribe(credential_topic(&subject.credential.id_string())),
        subscribe(user_topic(subject.user_id)),
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
    let interval = Duration::from_millis(st.config.limits.ws_ping_interval_ms.max(10));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut unanswered = 0u32;
    let out: Option<Message> = loop {
        tokio::select! {
            _ = st.shutdown.cancelled() => break Some(close(1001, "server shutting down")),
            ev = revoked.recv() => match ev {
                Ok(m) if m.payload == AuthEvent::CredentialRevoked =>
                    break Some(close(close_code::CREDENTIAL_REVOKED, "credential revoked")),
                Ok(_) => {}
                Err(_) => break Some(close(close_code::SLOW_CONSUMER, "too far behind")),
            },
            ev = disabled.recv() => match ev {
                Ok(_) => break Some(close(close_code::CREDENTIAL_REVOKED, "account disabled")),
                Err(_) => break Some(close(close_code::SLOW_CONSUMER, "too far behind")),
            },
            _ = ping.tick() => {
                if unanswered >= 2 {
                    break Some(close(1001, "no pong received"));
                }
                unanswered += 1;
                if tx.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
            msg = rx.next() => match msg {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Err(e)) if is_too_big(&e) =>
                    break Some(close(1009, "frame or message too large")),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "websocket read failed");
                    break None;
                }
                Some(Ok(Message::Pong(_))) => unanswered = 0,
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(Message::Binary(_))) => {
                    let f = ServerFrame::Error { id: None, code: ErrorCode::InvalidArgument.as_str().into(),
                        message: "binary frames are not supported; send JSON text".into() };
                    if tx.send(frame(&f)).await.is_err() { break None; }
                }
                Some(Ok(Message::Text(text))) => {
                    unanswered = 0;
                    let reply = match sb_proto::decode_client_frame(&text) {
                        Ok(ClientFrame::Ping { id }) => ServerFrame::Pong { id },
                        Ok(ClientFrame::Whoami { id }) => ServerFrame::Whoami { id, user: user.clone() },
                        Err(e) => ServerFrame::Error { id: e.id, code: ErrorCode::InvalidBody.as_str().into(),
                            message: e.message },
                    };
                    if tx.send(frame(&reply)).await.is_err() { break None; }
                }
            },
        }
    };
    if let Some(m) = out {
        let _ = tx.send(m).await;
        let _ = tx.close().await;
    }
}
