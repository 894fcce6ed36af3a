//! Chat REST routes under `/v1/rooms`. Real-time delivery is on `/v1/ws` (see `ws.rs`).

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Caller};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sb_chat::Page;
use sb_core::{ErrorCode, RoomId, RoomRole};
use sb_proto::*;
use sb_store::chat::{MemberRecord, MessageKind, MessageRecord, RoomRecord};
use std::sync::Arc;

type St = State<Arc<AppState>>;

pub fn room_info(r: &RoomRecord, role: Option<RoomRole>) -> RoomInfo {
    RoomInfo {
        read_seq: None,
        unread: None,
        encrypted: r.encrypted,
        mls_epoch: r.mls_epoch,
        id: r.id.to_string(),
        kind: r.kind.as_str().to_string(),
        name: r.name.clone(),
        topic: r.topic.clone(),
        public: r.public,
        role: role.map(|r| r.as_str().to_string()),
        last_seq: r.last_seq,
        created_at_ms: r.created_at.0,
    }
}

pub fn message_info(m: &MessageRecord) -> MessageInfo {
    MessageInfo {
        room: m.room_id.to_string(),
        seq: m.seq,
        message_id: m.message_id.clone(),
        sender: m.sender.to_string(),
        body: m.body.clone(),
        reply_to: m.reply_to,
        created_at_ms: m.created_at.0,
        kind: m.kind.as_str().to_string(),
        target: m.target,
        deleted: m.deleted,
        edited_at_ms: m.edited_at.map(|t| t.0),
        attachments: m.attachments.iter().map(|a| a.to_string()).collect(),
    }
}

pub fn attachment_ids(ids: &[String]) -> Result<Vec<sb_core::AttachmentId>, ApiError> {
    ids.iter()
        .map(|s| {
            s.parse()
                .map_err(|_| ApiError::new(ErrorCode::InvalidArgument, "not a valid attachment id"))
        })
        .collect()
}

fn attachment_info(a: &sb_store::chat::AttachmentRecord) -> AttachmentInfo {
    AttachmentInfo {
        id: a.id.to_string(),
        name: a.name.clone(),
        content_type: a.content_type.clone(),
        size: a.size,
        blake3: a.blob.clone(),
        uploader: a.uploader.to_string(),
        created_at_ms: a.created_at.0,
    }
}

/// The kind named on the wire (`message` when absent).
pub fn message_kind(kind: Option<&str>) -> Result<MessageKind, ApiError> {
    match kind {
        None => Ok(MessageKind::Message),
        Some(k) => MessageKind::parse(k).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                "kind is message, edit, delete, reaction or unreaction",
            )
        }),
    }
}

fn member_info(m: &MemberRecord, presence: sb_chat::PresenceStatus) -> MemberInfo {
    MemberInfo {
        user_id: m.user_id.to_string(),
        username: m.username.clone(),
        role: m.role.as_str().to_string(),
        joined_at_ms: m.joined_at.0,
        presence: presence.as_str().to_string(),
        last_seen_at_ms: match presence {
            sb_chat::PresenceStatus::Offline => m.last_seen_at.map(|t| t.0),
            _ => None,
        },
    }
}

pub fn room_id(s: &str) -> Result<RoomId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidArgument, "room is not a valid room id"))
}

#[utoipa::path(get, path = "/v1/rooms", tag = "chat",
    responses((status = 200, body = Vec<RoomInfo>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn my_rooms(State(st): St, c: Caller) -> Result<Json<Vec<RoomInfo>>, ApiError> {
    let rooms = st.chat.rooms(c.cx()).await?;
    Ok(Json(
        rooms
            .iter()
            .map(|m| RoomInfo {
                read_seq: Some(m.read_seq),
                unread: Some((m.room.last_seq - m.read_seq).max(0)),
                ..room_info(&m.room, Some(m.role))
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/rooms", tag = "chat", request_body = RoomCreate,
    responses((status = 201, body = RoomInfo), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_room(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<RoomCreate>,
) -> Result<(StatusCode, Json<RoomInfo>), ApiError> {
    let room = st
        .chat
        .create_room(c.cx(), &req.name, &req.topic, req.public, req.encrypted)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(room_info(&room, Some(RoomRole::Owner))),
    ))
}

#[utoipa::path(get, path = "/v1/rooms/public", tag = "chat",
    responses((status = 200, body = Vec<RoomInfo>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn public_rooms(State(st): St, _c: Caller) -> Result<Json<Vec<RoomInfo>>, ApiError> {
    let rooms = st.chat.public_rooms().await?;
    Ok(Json(rooms.iter().map(|r| room_info(r, None)).collect()))
}

#[utoipa::path(post, path = "/v1/rooms/direct", tag = "chat", request_body = DirectRoomRequest,
    responses((status = 200, body = RoomInfo), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn direct_room(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<DirectRoomRequest>,
) -> Result<Json<RoomInfo>, ApiError> {
    let room = st.chat.direct(c.cx(), &req.username).await?;
    Ok(Json(room_info(&room, Some(RoomRole::Member))))
}

#[utoipa::path(get, path = "/v1/rooms/{room}", tag = "chat",
    params(("room" = String, Path, description = "room id")),
    responses((status = 200, body = RoomInfo), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn room(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Json<RoomInfo>, ApiError> {
    let r = st.chat.room(c.cx(), room_id(&room)?).await?;
    Ok(Json(room_info(&r, None)))
}

#[utoipa::path(post, path = "/v1/rooms/{room}/join", tag = "chat",
    params(("room" = String, Path, description = "room id")),
    responses((status = 204), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn join(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.chat.join(c.cx(), room_id(&room)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/rooms/{room}/leave", tag = "chat",
    params(("room" = String, Path, description = "room id")),
    responses((status = 204), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn leave(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.chat.leave(c.cx(), room_id(&room)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/rooms/{room}/members", tag = "chat",
    params(("room" = String, Path, description = "room id")),
    responses((status = 200, body = Vec<MemberInfo>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn members(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Json<Vec<MemberInfo>>, ApiError> {
    let list = st.chat.members(c.cx(), room_id(&room)?).await?;
    Ok(Json(
        list.iter()
            .map(|m| member_info(m, st.chat.presence_of(m.user_id)))
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/rooms/{room}/members", tag = "chat", request_body = MemberAdd,
    params(("room" = String, Path, description = "room id")),
    responses((status = 204), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn add_member(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<MemberAdd>,
) -> Result<StatusCode, ApiError> {
    st.chat
        .invite(c.cx(), room_id(&room)?, &req.username)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/rooms/{room}/members/{username}", tag = "chat",
    params(("room" = String, Path, description = "room id"), ("username" = String, Path)),
    responses((status = 204), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn kick(
    State(st): St,
    c: Caller,
    Path((room, username)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.chat.kick(c.cx(), room_id(&room)?, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/rooms/{room}/bans", tag = "chat", request_body = MemberAdd,
    params(("room" = String, Path, description = "room id")),
    responses((status = 204), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn ban(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<MemberAdd>,
) -> Result<StatusCode, ApiError> {
    st.chat.ban(c.cx(), room_id(&room)?, &req.username).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/rooms/{room}/messages", tag = "chat", params(("room" = String, Path, description = "room id"), HistoryQuery),
    responses((status = 200, body = Vec<MessageInfo>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn history(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<MessageInfo>>, ApiError> {
    let page = match (q.after, q.before) {
        (Some(a), None) => Page::After(a),
        (None, Some(b)) => Page::Before(b),
        (None, None) => Page::Latest,
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "use after or before, not both",
            ));
        }
    };
    let list = st
        .chat
        .history(c.cx(), room_id(&room)?, page, q.limit.unwrap_or(50))
        .await?;
    Ok(Json(list.iter().map(message_info).collect()))
}

#[utoipa::path(post, path = "/v1/rooms/{room}/messages", tag = "chat", request_body = MessageSend,
    params(("room" = String, Path, description = "room id")),
    responses((status = 200, body = MessageSent), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn send(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<MessageSend>,
) -> Result<Json<MessageSent>, ApiError> {
    let out = sb_chat::Outgoing {
        message_id: &req.message_id,
        body: &req.body,
        reply_to: req.reply_to,
        kind: message_kind(req.kind.as_deref())?,
        target: req.target,
        attachments: &attachment_ids(&req.attachments)?,
    };
    let appended = st.chat.send(c.cx(), room_id(&room)?, out).await?;
    Ok(Json(MessageSent {
        message: message_info(appended.record()),
        duplicate: matches!(appended, sb_store::chat::Appended::Duplicate(_)),
    }))
}

#[utoipa::path(get, path = "/v1/search/messages", tag = "chat", params(SearchQuery),
    responses((status = 200, body = Vec<MessageInfo>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn search(
    State(st): St,
    c: Caller,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<Vec<MessageInfo>>, ApiError> {
    let room = q.room.as_deref().map(room_id).transpose()?;
    let hits = st
        .chat
        .search(c.cx(), &q.q, room, q.limit.unwrap_or(50))
        .await?;
    Ok(Json(hits.iter().map(message_info).collect()))
}

#[utoipa::path(post, path = "/v1/rooms/{room}/read", tag = "chat", request_body = ReadMark,
    params(("room" = String, Path, description = "room id")),
    responses((status = 200, body = ReadMark), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn mark_read(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<ReadMark>,
) -> Result<Json<ReadMark>, ApiError> {
    let seq = st.chat.mark_read(c.cx(), room_id(&room)?, req.seq).await?;
    Ok(Json(ReadMark { seq }))
}

#[utoipa::path(get, path = "/v1/rooms/{room}/read", tag = "chat",
    params(("room" = String, Path, description = "room id")),
    responses((status = 200, body = Vec<ReadMarkerInfo>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn read_markers(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Json<Vec<ReadMarkerInfo>>, ApiError> {
    let list = st.chat.read_markers(c.cx(), room_id(&room)?).await?;
    Ok(Json(
        list.into_iter()
            .map(|m| ReadMarkerInfo {
                user_id: m.user_id.to_string(),
                username: m.username,
                seq: m.seq,
                updated_at_ms: m.updated_at.0,
            })
            .collect(),
    ))
}

#[utoipa::path(patch, path = "/v1/rooms/{room}/members/{username}", tag = "chat", request_body = MemberRoleUpdate,
    params(("room" = String, Path, description = "room id"), ("username" = String, Path)),
    responses((status = 204), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn set_member_role(
    State(st): St,
    c: Caller,
    Path((room, username)): Path<(String, String)>,
    ApiJson(req): ApiJson<MemberRoleUpdate>,
) -> Result<StatusCode, ApiError> {
    let role = RoomRole::parse(&req.role)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidArgument, "role is moderator or member"))?;
    st.chat
        .set_role(c.cx(), room_id(&room)?, &username, role)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/rooms/{room}/attachments", tag = "chat",
    params(("room" = String, Path, description = "room id"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the file's bytes; Content-Type is kept"),
    responses((status = 201, body = AttachmentInfo), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn upload(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<AttachmentInfo>), ApiError> {
    let room = room_id(&room)?;
    let _slot = st
        .transfers
        .acquire()
        .await
        .map_err(|_| ApiError::new(ErrorCode::Overloaded, "shutting down"))?;
    let max = st.config.chat.attachment_size_bytes_max;
    // The general body limit is for JSON; attachments have their own, read here.
    let bytes = crate::extract::read_body(body, max, || {
        format!("attachments are at most {max} bytes (chat.attachment_size_bytes_max)")
    })
    .await?;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    let a = st
        .chat
        .upload(c.cx(), room, &q.name, content_type, bytes.to_vec())
        .await?;
    Ok((StatusCode::CREATED, Json(attachment_info(&a))))
}

#[utoipa::path(get, path = "/v1/rooms/{room}/attachments/{id}", tag = "chat",
    params(("room" = String, Path, description = "room id"), ("id" = String, Path, description = "attachment id")),
    responses((status = 200, description = "the file's bytes, verified against their BLAKE3 hash"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn download(
    State(st): St,
    c: Caller,
    Path((room, id)): Path<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let id = id
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidArgument, "not a valid attachment id"))?;
    let _slot = st
        .transfers
        .acquire()
        .await
        .map_err(|_| ApiError::new(ErrorCode::Overloaded, "shutting down"))?;
    let (a, bytes) = st.chat.download(c.cx(), room_id(&room)?, id).await?;
    // The name is the uploader's text: quote it safely, and never let a browser render it.
    let safe: String = a
        .name
        .chars()
        .map(|ch| {
            if ch.is_ascii_graphic() && ch != '"' && ch != '\\' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, a.content_type.clone()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe}\""),
            ),
            (
                axum::http::header::X_CONTENT_TYPE_OPTIONS,
                "nosniff".to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| ApiError::new(ErrorCode::InvalidArgument, format!("{what} is not base64")))
}

fn to_b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[utoipa::path(post, path = "/v1/mls/key-packages", tag = "mls", request_body = KeyPackagesPublish,
    responses((status = 200, body = KeyPackagesStored), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn publish_key_packages(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<KeyPackagesPublish>,
) -> Result<Json<KeyPackagesStored>, ApiError> {
    let packages = req
        .key_packages
        .iter()
        .map(|p| b64(p, "a key package"))
        .collect::<Result<Vec<_>, _>>()?;
    let last_resort = req
        .last_resort
        .as_deref()
        .map(|p| b64(p, "last_resort"))
        .transpose()?;
    let available = st
        .chat
        .publish_key_packages(c.cx(), &req.device, packages, last_resort)
        .await?;
    Ok(Json(KeyPackagesStored { available }))
}

#[utoipa::path(post, path = "/v1/rooms/{room}/mls/claim", tag = "mls", request_body = KeyPackageClaim,
    params(("room" = String, Path, description = "room id")),
    responses((status = 200, body = Vec<ClaimedKeyPackage>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn claim_key_packages(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<KeyPackageClaim>,
) -> Result<Json<Vec<ClaimedKeyPackage>>, ApiError> {
    let claimed = st
        .chat
        .claim_key_packages(c.cx(), room_id(&room)?, &req.username)
        .await?;
    Ok(Json(
        claimed
            .into_iter()
            .map(|(device, p)| ClaimedKeyPackage {
                device,
                key_package: to_b64(&p),
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/rooms/{room}/mls/handshakes", tag = "mls", request_body = HandshakeSend,
    params(("room" = String, Path, description = "room id")),
    responses((status = 204), (status = 409, body = ErrorBody, description = "stale_epoch"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn send_handshake(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<HandshakeSend>,
) -> Result<StatusCode, ApiError> {
    let message = b64(&req.message, "message")?;
    let welcomes = req
        .welcomes
        .into_iter()
        .map(|w| Ok((w.username, w.device, b64(&w.welcome, "a welcome")?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    st.chat
        .handshake(c.cx(), room_id(&room)?, req.epoch, message, welcomes)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/rooms/{room}/mls/handshakes", tag = "mls",
    params(("room" = String, Path, description = "room id"), HandshakeQuery),
    responses((status = 200, body = Vec<HandshakeInfo>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn handshakes(
    State(st): St,
    c: Caller,
    Path(room): Path<String>,
    ApiQuery(q): ApiQuery<HandshakeQuery>,
) -> Result<Json<Vec<HandshakeInfo>>, ApiError> {
    let list = st
        .chat
        .handshakes(c.cx(), room_id(&room)?, q.from_epoch.unwrap_or(0))
        .await?;
    Ok(Json(
        list.iter()
            .map(|h| HandshakeInfo {
                epoch: h.epoch,
                sender: h.sender.to_string(),
                message: to_b64(&h.message),
                created_at_ms: h.created_at.0,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/mls/welcomes", tag = "mls", request_body = WelcomeTake,
    responses((status = 200, body = Vec<WelcomeInfo>), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn take_welcomes(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<WelcomeTake>,
) -> Result<Json<Vec<WelcomeInfo>>, ApiError> {
    let list = st.chat.take_welcomes(c.cx(), &req.device).await?;
    Ok(Json(
        list.iter()
            .map(|w| WelcomeInfo {
                room: w.room_id.to_string(),
                epoch: w.epoch,
                welcome: to_b64(&w.welcome),
            })
            .collect(),
    ))
}
