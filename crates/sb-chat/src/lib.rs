//! Chat: rooms, membership, and messages with exact real-time delivery and resume.
//!
//! Offline delivery and resume are one mechanism: every message is appended to its room's
//! sequence (durably, by `sb-store`) before anyone sees it; live delivery is a bus event per
//! member (`chat/user/<id>`); a device that (re)connects asks for everything after its last
//! sequence per room ([`Chat::catch_up`]) and the connection then fills any gap from the store,
//! so each device sees each message once, in room order.
//!
//! Every operation takes an [`sb_auth::Ctx`] and is authorized through [`sb_auth::Auth`].
//! This crate knows nothing of HTTP or WebSockets.

pub mod delivery;

use sb_auth::{Action, Auth, AuthError, Ctx, Resource};
use sb_blob::BlobStore;
use sb_bus::Bus;
use sb_core::AttachmentId;
use sb_core::UnixMillis;
use sb_core::config::ChatConfig;
use sb_core::{ErrorCode, RoomId, RoomRole, UserId};
use sb_store::chat::{
    Appended, AttachmentRecord, HandshakeOutcome, HandshakeRecord, MemberChange, MemberRecord,
    MessageKind, MessageRecord, MyRoom, NewMessage, NewWelcome, ReadMarker, RoomAccess, RoomKind,
    RoomRecord, WelcomeRecord,
};
use sb_store::{ChatStore, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Largest MLS key package, handshake message or Welcome, in bytes.
pub const MLS_MESSAGE_SIZE_BYTES_MAX: usize = 64 * 1024;
/// Key packages one request may publish.
pub const MLS_KEY_PACKAGES_PER_REQUEST_MAX: usize = 100;
/// Unclaimed key packages kept per device (the newest).
pub const MLS_KEY_PACKAGES_PER_DEVICE_MAX: usize = 100;

fn check_device(device: &str) -> Result<()> {
    let ok = !device.is_empty()
        && device.len() <= 64
        && device
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ChatError::Invalid(
            "device names are 1-64 of a-z, 0-9, '-', '_', '.'".into(),
        ))
    }
}

/// Longest search query, in bytes.
pub const SEARCH_QUERY_LENGTH_MAX: usize = 256;

/// Longest client-chosen message id.
pub const MESSAGE_ID_LENGTH_MAX: usize = 64;

/// What a connection receives about chat, on `chat/user/<id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatEvent {
    /// A new message in one of the user's rooms.
    Message(Arc<MessageRecord>),
    /// The user joined or was added to a room whose newest message is `last_seq`.
    Joined { room: RoomId, last_seq: i64 },
    /// The user left, was kicked or was banned.
    Left { room: RoomId },
    /// A member's read marker moved (their other devices and the room's members see it).
    Read {
        room: RoomId,
        user: UserId,
        username: Arc<str>,
        seq: i64,
    },
    /// Someone who shares a room with the user went online, away or offline.
    Presence {
        user: UserId,
        username: Arc<str>,
        status: PresenceStatus,
        last_seen: Option<UnixMillis>,
    },
    /// A handshake message was accepted for `epoch`; members fetch it from the room's log.
    Handshake { room: RoomId, epoch: i64 },
    /// A member is typing; never stored.
    Typing {
        room: RoomId,
        user: UserId,
        username: Arc<str>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceStatus {
    Online,
    Away,
    Offline,
}

impl PresenceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Online => "online",
            PresenceStatus::Away => "away",
            PresenceStatus::Offline => "offline",
        }
    }
}

/// Who is connected right now. Only users with at least one open connection have an entry, so
/// its size is bounded by `limits.connections_max`.
#[derive(Default)]
struct Presence {
    users: Mutex<HashMap<UserId, Online>>,
}

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Online>> {
        // A panic while holding the lock leaves the map usable: it only counts connections.
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Online {
    connections: u32,
    away: bool,
}

pub fn user_topic(user: UserId) -> String {
    format!("chat/user/{user}")
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("no such room")]
    RoomNotFound,
    #[error("no such user")]
    UserNotFound,
    #[error("message {0} is not a message in this room, or it was deleted")]
    TargetNotFound(i64),
    #[error("you are banned from this room")]
    Banned,
    #[error("{0}")]
    Invalid(String),
    #[error("message body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Conflict(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("attachment storage: {0}")]
    Blob(#[from] sb_blob::BlobError),
    #[error("no such attachment in this room")]
    AttachmentNotFound,
    #[error("the room is at epoch {current}; fetch the handshakes you missed and try again")]
    StaleEpoch { current: i64 },
}

impl ChatError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::Auth(e) => e.code(),
            ChatError::RoomNotFound | ChatError::UserNotFound | ChatError::TargetNotFound(_) => {
                ErrorCode::NotFound
            }
            ChatError::Banned => ErrorCode::Banned,
            ChatError::Invalid(_) => ErrorCode::InvalidArgument,
            ChatError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            ChatError::Conflict(_) => ErrorCode::Conflict,
            ChatError::Store(_) | ChatError::Blob(_) => ErrorCode::Internal,
            ChatError::AttachmentNotFound => ErrorCode::NotFound,
            ChatError::StaleEpoch { .. } => ErrorCode::StaleEpoch,
        }
    }
}

pub type Result<T, E = ChatError> = std::result::Result<T, E>;

/// One entry to append to a room: a message, or an edit, delete or reaction of one.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// Chosen by the client; sending the same id again stores nothing new.
    pub message_id: &'a str,
    pub body: &'a str,
    pub reply_to: Option<i64>,
    pub kind: MessageKind,
    /// The message an edit, delete or reaction is about.
    pub target: Option<i64>,
    /// Attachments uploaded to this room by the sender (messages only).
    pub attachments: &'a [AttachmentId],
}

/// Longest reaction (an emoji, possibly with modifiers), in bytes.
pub const REACTION_LENGTH_MAX: usize = 32;

/// A history page request: after a sequence (forwards) or before one (backwards).
#[derive(Clone, Copy, Debug)]
pub enum Page {
    After(i64),
    Before(i64),
    Latest,
}

/// What a resuming device missed in one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomCatchUp {
    pub room: RoomId,
    pub messages: Vec<MessageRecord>,
    /// More was missed than `catchup_messages_max`: nothing was replayed, page history instead.
    pub truncated: bool,
    /// The room's newest sequence number when the catch-up was read.
    pub last_seq: i64,
}

pub struct Chat {
    store: Arc<dyn ChatStore>,
    blobs: Arc<dyn BlobStore>,
    auth: Arc<Auth>,
    bus: Bus<ChatEvent>,
    config: ChatConfig,
    presence: Presence,
}

fn check_text(what: &str, value: &str, max: usize) -> Result<()> {
    if value.chars().count() > max || value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ChatError::Invalid(format!(
            "{what} must be at most {max} characters without control characters"
        )));
    }
    Ok(())
}

impl Chat {
    pub fn new(
        store: Arc<dyn ChatStore>,
        blobs: Arc<dyn BlobStore>,
        auth: Arc<Auth>,
        bus: Bus<ChatEvent>,
        config: ChatConfig,
    ) -> Self {
        Self {
            store,
            blobs,
            auth,
            bus,
            config,
            presence: Presence::default(),
        }
    }

    /// The presence of `user` as others see it.
    pub fn presence_of(&self, user: UserId) -> PresenceStatus {
        let users = self.presence.lock();
        match users.get(&user) {
            Some(o) if o.away => PresenceStatus::Away,
            Some(_) => PresenceStatus::Online,
            None => PresenceStatus::Offline,
        }
    }

    async fn announce(
        &self,
        user: UserId,
        username: &str,
        status: PresenceStatus,
        last_seen: Option<UnixMillis>,
    ) -> Result<()> {
        let event = ChatEvent::Presence {
            user,
            username: Arc::from(username),
            status,
            last_seen,
        };
        for other in self.store.co_members(user).await? {
            self.bus.publish(&user_topic(other), event.clone());
        }
        Ok(())
    }

    /// A connection of the caller opened. The first one makes the user online.
    pub async fn connected(&self, cx: Ctx<'_>) -> Result<()> {
        let first = {
            let mut users = self.presence.lock();
            let e = users.entry(cx.subject.user_id).or_insert(Online {
                connections: 0,
                away: false,
            });
            e.connections += 1;
            e.connections == 1
        };
        if first {
            self.announce(
                cx.subject.user_id,
                &cx.subject.username,
                PresenceStatus::Online,
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// A connection of the caller closed. The last one makes the user offline, last seen now.
    pub async fn disconnected(&self, cx: Ctx<'_>) -> Result<()> {
        let last = {
            let mut users = self.presence.lock();
            match users.get_mut(&cx.subject.user_id) {
                Some(e) if e.connections > 1 => {
                    e.connections -= 1;
                    false
                }
                Some(_) => {
                    users.remove(&cx.subject.user_id);
                    true
                }
                None => false,
            }
        };
        if last {
            self.store.set_last_seen(cx.subject.user_id, cx.now).await?;
            self.announce(
                cx.subject.user_id,
                &cx.subject.username,
                PresenceStatus::Offline,
                Some(cx.now),
            )
            .await?;
        }
        Ok(())
    }

    /// Sets the caller away (or back online). Only meaningful while connected.
    pub async fn set_away(&self, cx: Ctx<'_>, away: bool) -> Result<PresenceStatus> {
        let changed = {
            let mut users = self.presence.lock();
            match users.get_mut(&cx.subject.user_id) {
                Some(e) if e.away != away => {
                    e.away = away;
                    true
                }
                Some(_) => false,
                None => {
                    return Err(ChatError::Invalid(
                        "presence is set from a connected device (open /v1/ws first)".into(),
                    ));
                }
            }
        };
        let status = self.presence_of(cx.subject.user_id);
        if changed {
            self.announce(cx.subject.user_id, &cx.subject.username, status, None)
                .await?;
        }
        Ok(status)
    }

    pub fn bus(&self) -> &Bus<ChatEvent> {
        &self.bus
    }

    async fn access(&self, room: RoomId, user: UserId) -> Result<RoomAccess> {
        self.store
            .room_access(room, user)
            .await?
            .ok_or(ChatError::RoomNotFound)
    }

    /// Loads the caller's standing in `room` and authorizes `action` on it.
    async fn authorized(&self, cx: Ctx<'_>, room: RoomId, action: Action) -> Result<RoomAccess> {
        let access = self.access(room, cx.subject.user_id).await?;
        let resource = Resource::Room {
            id: room,
            role: access.role,
        };
        self.auth.authorize(cx, action, &resource).await?;
        Ok(access)
    }

    async fn user_id(&self, username: &str) -> Result<UserId> {
        let user = self
            .auth
            .store()
            .user_by_username(username)
            .await?
            .ok_or(ChatError::UserNotFound)?;
        Ok(user.id)
    }

    pub async fn create_room(
        &self,
        cx: Ctx<'_>,
        name: &str,
        topic: &str,
        public: bool,
        encrypted: bool,
    ) -> Result<RoomRecord> {
        if public && encrypted {
            return Err(ChatError::Invalid(
                "encrypted rooms are joined by invitation (an MLS Welcome), not publicly".into(),
            ));
        }
        let name = name.trim().trim_start_matches('#');
        let valid = !name.is_empty()
            && name.chars().count() <= self.config.room_name_length_max
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(ChatError::Invalid(format!(
                "room names are 1-{} letters, digits, '-', '_' or '.'",
                self.config.room_name_length_max
            )));
        }
        check_text("topic", topic, self.config.room_topic_length_max)?;
        let room = RoomRecord {
            id: RoomId::new_at(cx.now),
            kind: RoomKind::Group,
            name: name.to_string(),
            topic: topic.to_string(),
            public,
            created_by: cx.subject.user_id,
            created_at: cx.now,
            last_seq: 0,
            encrypted,
            mls_epoch: 0,
        };
        match self.store.create_room(room.clone()).await {
            Err(StoreError::Conflict(_)) => {
                return Err(ChatError::Conflict(format!("a room named #{name} exists")));
            }
            other => other?,
        }
        self.notify_joined(cx.subject.user_id, room.id, 0);
        Ok(room)
    }

    /// The direct-message room with `username`, created on first use.
    pub async fn direct(&self, cx: Ctx<'_>, username: &str) -> Result<RoomRecord> {
        let other = self.user_id(username).await?;
        let me = cx.subject.user_id;
        let (room, created) = self
            .store
            .direct_room(me, other, RoomId::new_at(cx.now), cx.now)
            .await?;
        if created {
            self.notify_joined(me, room.id, 0);
            self.notify_joined(other, room.id, 0);
        }
        Ok(room)
    }

    pub async fn rooms(&self, cx: Ctx<'_>) -> Result<Vec<MyRoom>> {
        Ok(self.store.rooms_of(cx.subject.user_id).await?)
    }

    pub async fn public_rooms(&self) -> Result<Vec<RoomRecord>> {
        Ok(self.store.public_rooms().await?)
    }

    pub async fn room(&self, cx: Ctx<'_>, room: RoomId) -> Result<RoomRecord> {
        Ok(self.authorized(cx, room, Action::Read).await?.room)
    }

    fn notify_joined(&self, user: UserId, room: RoomId, last_seq: i64) {
        self.bus
            .publish(&user_topic(user), ChatEvent::Joined { room, last_seq });
    }

    async fn add(&self, room: &RoomRecord, user: UserId, cx: Ctx<'_>) -> Result<()> {
        match self
            .store
            .add_member(
                room.id,
                user,
                RoomRole::Member,
                self.config.room_members_max,
                cx.now,
            )
            .await?
        {
            MemberChange::Added => {
                self.notify_joined(user, room.id, room.last_seq);
                Ok(())
            }
            MemberChange::AlreadyMember => Ok(()),
            MemberChange::Banned => Err(ChatError::Banned),
            MemberChange::RoomFull => Err(ChatError::Conflict(format!(
                "the room is full ({} members)",
                self.config.room_members_max
            ))),
        }
    }

    pub async fn join(&self, cx: Ctx<'_>, room: RoomId) -> Result<()> {
        let access = self.access(room, cx.subject.user_id).await?;
        if access.role.is_some() {
            return Ok(());
        }
        if access.banned {
            // Audited like any denial, but reported with its own code.
            let resource = Resource::RoomJoin {
                id: room,
                public: access.room.public,
                banned: true,
            };
            let _ = self.auth.authorize(cx, Action::Create, &resource).await;
            return Err(ChatError::Banned);
        }
        let resource = Resource::RoomJoin {
            id: room,
            public: access.room.public && access.room.kind == RoomKind::Group,
            banned: false,
        };
        self.auth.authorize(cx, Action::Create, &resource).await?;
        self.add(&access.room, cx.subject.user_id, cx).await
    }

    pub async fn leave(&self, cx: Ctx<'_>, room: RoomId) -> Result<()> {
        let access = self.access(room, cx.subject.user_id).await?;
        if access.room.kind == RoomKind::Direct {
            return Err(ChatError::Invalid("direct rooms cannot be left".into()));
        }
        if self.store.remove_member(room, cx.subject.user_id).await? {
            self.bus
                .publish(&user_topic(cx.subject.user_id), ChatEvent::Left { room });
        }
        Ok(())
    }

    /// Adds a user to a room (moderators and owners).
    pub async fn invite(&self, cx: Ctx<'_>, room: RoomId, username: &str) -> Result<()> {
        let access = self.authorized(cx, room, Action::Update).await?;
        if access.room.kind == RoomKind::Direct {
            return Err(ChatError::Invalid(
                "direct rooms have exactly two members".into(),
            ));
        }
        let user = self.user_id(username).await?;
        self.add(&access.room, user, cx).await
    }

    async fn target(&self, cx: Ctx<'_>, room: RoomId, username: &str) -> Result<UserId> {
        let access = self.authorized(cx, room, Action::Update).await?;
        let user = self.user_id(username).await?;
        let target = self.access(room, user).await?;
        if target.role >= access.role {
            return Err(ChatError::Auth(AuthError::Forbidden));
        }
        Ok(user)
    }

    /// Gives a member another role (owners only; the owner role is not handed out this way).
    pub async fn set_role(
        &self,
        cx: Ctx<'_>,
        room: RoomId,
        username: &str,
        role: RoomRole,
    ) -> Result<()> {
        self.authorized(cx, room, Action::Delete).await?;
        if role == RoomRole::Owner {
            return Err(ChatError::Invalid("a room has one owner".into()));
        }
        let user = self.user_id(username).await?;
        if user == cx.subject.user_id {
            return Err(ChatError::Invalid("owners keep their own role".into()));
        }
        if !self.store.set_member_role(room, user, role).await? {
            return Err(ChatError::Invalid(format!("{username} is not a member")));
        }
        Ok(())
    }

    /// Removes a member of lower rank (moderators and owners).
    pub async fn kick(&self, cx: Ctx<'_>, room: RoomId, username: &str) -> Result<()> {
        let user = self.target(cx, room, username).await?;
        if self.store.remove_member(room, user).await? {
            self.bus
                .publish(&user_topic(user), ChatEvent::Left { room });
        }
        Ok(())
    }

    /// Removes a member of lower rank and bars them from rejoining.
    pub async fn ban(&self, cx: Ctx<'_>, room: RoomId, username: &str) -> Result<()> {
        let user = self.target(cx, room, username).await?;
        self.store
            .ban(room, user, cx.subject.user_id, cx.now)
            .await?;
        self.bus
            .publish(&user_topic(user), ChatEvent::Left { room });
        Ok(())
    }

    pub async fn members(&self, cx: Ctx<'_>, room: RoomId) -> Result<Vec<MemberRecord>> {
        self.authorized(cx, room, Action::Read).await?;
        Ok(self.store.members(room).await?)
    }

    /// Appends an entry (durably) and delivers it to every member's connections. Sending the
    /// same `message_id` again returns the stored entry and delivers nothing new.
    pub async fn send(&self, cx: Ctx<'_>, room: RoomId, out: Outgoing<'_>) -> Result<Appended> {
        let Outgoing {
            message_id,
            body,
            reply_to,
            kind,
            target,
            attachments,
        } = out;
        if !attachments.is_empty() && kind != MessageKind::Message {
            return Err(ChatError::Invalid("only messages carry attachments".into()));
        }
        if attachments.len() > self.config.attachments_per_message_max {
            return Err(ChatError::Invalid(format!(
                "at most {} attachments per message",
                self.config.attachments_per_message_max
            )));
        }
        if message_id.is_empty()
            || message_id.len() > MESSAGE_ID_LENGTH_MAX
            || message_id.chars().any(char::is_control)
        {
            return Err(ChatError::Invalid(format!(
                "message_id must be 1-{MESSAGE_ID_LENGTH_MAX} bytes of printable text"
            )));
        }
        if body.len() > self.config.message_size_bytes_max {
            return Err(ChatError::TooLarge(self.config.message_size_bytes_max));
        }
        let body_ok = match kind {
            MessageKind::Message | MessageKind::Edit => !body.trim().is_empty(),
            MessageKind::Delete => body.is_empty(),
            MessageKind::Reaction | MessageKind::Unreaction => {
                !body.is_empty()
                    && body.len() <= REACTION_LENGTH_MAX
                    && !body.chars().any(|c| c.is_whitespace() || c.is_control())
            }
        };
        if !body_ok {
            return Err(ChatError::Invalid(format!(
                "a {} needs {}",
                kind.as_str(),
                match kind {
                    MessageKind::Message | MessageKind::Edit => "a non-empty body",
                    MessageKind::Delete => "an empty body",
                    _ => "one emoji as its body",
                }
            )));
        }
        if (kind == MessageKind::Message) != target.is_none() {
            return Err(ChatError::Invalid(
                "target is required for edit, delete and reactions, and only for them".into(),
            ));
        }
        let access = self.authorized(cx, room, Action::Create).await?;
        if access.room.encrypted && !matches!(kind, MessageKind::Message | MessageKind::Delete) {
            return Err(ChatError::Invalid(
                "in encrypted rooms, edits and reactions travel inside the ciphertext".into(),
            ));
        }
        if let Some(r) = reply_to.filter(|r| *r < 1 || *r > access.room.last_seq) {
            return Err(ChatError::Invalid(format!(
                "reply_to {r} is not a message here"
            )));
        }
        for id in attachments {
            let a = self
                .store
                .attachment(room, *id)
                .await?
                .ok_or(ChatError::AttachmentNotFound)?;
            if a.uploader != cx.subject.user_id {
                return Err(ChatError::Invalid(
                    "attach only files you uploaded to this room".into(),
                ));
            }
        }
        if let Some(t) = target {
            let msg = self
                .store
                .message(room, t)
                .await?
                .filter(|m| m.kind == MessageKind::Message && !m.deleted)
                .ok_or(ChatError::TargetNotFound(t))?;
            let action = match kind {
                MessageKind::Edit => Action::Update,
                MessageKind::Delete => Action::Delete,
                _ => Action::Create,
            };
            let resource = Resource::RoomMessage {
                room,
                role: access.role,
                own: msg.sender == cx.subject.user_id,
            };
            self.auth.authorize(cx, action, &resource).await?;
        }
        let appended = match self
            .store
            .append_message(NewMessage {
                room_id: room,
                message_id: message_id.to_string(),
                sender: cx.subject.user_id,
                body: body.to_string(),
                reply_to,
                at: cx.now,
                kind,
                target,
                attachments: attachments.to_vec(),
            })
            .await
        {
            Err(StoreError::NotFound) => {
                return Err(match target {
                    Some(t) => ChatError::TargetNotFound(t),
                    None => ChatError::RoomNotFound,
                });
            }
            other => other?,
        };
        if let Appended::New(m) = &appended {
            self.publish_to_members(room, None, ChatEvent::Message(Arc::new(m.clone())))
                .await?;
        }
        Ok(appended)
    }

    /// Stores key packages for one of the caller's devices (and its last-resort package).
    pub async fn publish_key_packages(
        &self,
        cx: Ctx<'_>,
        device: &str,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<usize> {
        let owner = cx.subject.user_id;
        self.auth
            .authorize(cx, Action::Update, &Resource::Account { owner })
            .await?;
        check_device(device)?;
        if packages.len() > MLS_KEY_PACKAGES_PER_REQUEST_MAX
            || packages
                .iter()
                .chain(last_resort.iter())
                .any(|p| p.is_empty() || p.len() > MLS_MESSAGE_SIZE_BYTES_MAX)
        {
            return Err(ChatError::Invalid(format!(
                "send at most {MLS_KEY_PACKAGES_PER_REQUEST_MAX} key packages of 1-{MLS_MESSAGE_SIZE_BYTES_MAX} bytes"
            )));
        }
        Ok(self
            .store
            .add_key_packages(
                owner,
                device,
                packages,
                last_resort,
                MLS_KEY_PACKAGES_PER_DEVICE_MAX,
            )
            .await?)
    }

    /// One key package per device of `username`, to add them to an encrypted room. Needs the
    /// right to invite into that room, so strangers cannot drain anyone's packages.
    pub async fn claim_key_packages(
        &self,
        cx: Ctx<'_>,
        room: RoomId,
        username: &str,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let access = self.authorized(cx, room, Action::Update).await?;
        if !access.room.encrypted {
            return Err(ChatError::Invalid("this room is not encrypted".into()));
        }
        let user = self.user_id(username).await?;
        Ok(self.store.claim_key_packages(user).await?)
    }

    /// Appends an MLS handshake message (a commit, say) for `epoch`, with the Welcomes it
    /// produced for invited devices. Of two handshakes for one epoch, exactly one is accepted.
    pub async fn handshake(
        &self,
        cx: Ctx<'_>,
        room: RoomId,
        epoch: i64,
        message: Vec<u8>,
        welcomes: Vec<(String, String, Vec<u8>)>,
    ) -> Result<()> {
        let access = self.authorized(cx, room, Action::Create).await?;
        if !access.room.encrypted {
            return Err(ChatError::Invalid("this room is not encrypted".into()));
        }
        if message.is_empty() || message.len() > MLS_MESSAGE_SIZE_BYTES_MAX {
            return Err(ChatError::TooLarge(MLS_MESSAGE_SIZE_BYTES_MAX));
        }
        let mut queued = Vec::with_capacity(welcomes.len());
        for (username, device, welcome) in welcomes {
            check_device(&device)?;
            if welcome.is_empty() || welcome.len() > MLS_MESSAGE_SIZE_BYTES_MAX {
                return Err(ChatError::TooLarge(MLS_MESSAGE_SIZE_BYTES_MAX));
            }
            let user = self.user_id(&username).await?;
            if self.access(room, user).await?.role.is_none() {
                return Err(ChatError::Invalid(format!(
                    "{username} is not a member; invite them to the room first"
                )));
            }
            queued.push(NewWelcome {
                user,
                device,
                welcome,
            });
        }
        match self
            .store
            .append_handshake(room, epoch, cx.subject.user_id, message, queued, cx.now)
            .await?
        {
            HandshakeOutcome::Accepted => {
                self.publish_to_members(room, None, ChatEvent::Handshake { room, epoch })
                    .await
            }
            HandshakeOutcome::Stale { current } => Err(ChatError::StaleEpoch { current }),
        }
    }

    /// The room's handshake messages from `from_epoch` on, in order.
    pub async fn handshakes(
        &self,
        cx: Ctx<'_>,
        room: RoomId,
        from_epoch: i64,
    ) -> Result<Vec<HandshakeRecord>> {
        self.authorized(cx, room, Action::Read).await?;
        Ok(self
            .store
            .handshakes_after(room, from_epoch, self.config.history_page_max)
            .await?)
    }

    /// Welcomes queued for one of the caller's devices; each is handed over once.
    pub async fn take_welcomes(&self, cx: Ctx<'_>, device: &str) -> Result<Vec<WelcomeRecord>> {
        let owner = cx.subject.user_id;
        self.auth
            .authorize(cx, Action::Read, &Resource::Account { owner })
            .await?;
        check_device(device)?;
        Ok(self.store.take_welcomes(owner, device).await?)
    }

    /// Stores a file for `room` (members only); attach it to a message by its id.
    pub async fn upload(
        &self,
        cx: Ctx<'_>,
        room: RoomId,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<AttachmentRecord> {
        if bytes.len() > self.config.attachment_size_bytes_max {
            return Err(ChatError::TooLarge(self.config.attachment_size_bytes_max));
        }
        let name_ok = !name.trim().is_empty()
            && name.chars().count() <= 255
            && !name
                .chars()
                .any(|c| c.is_control() || c == '/' || c == '\\');
        if !name_ok {
            return Err(ChatError::Invalid(
                "attachment names are 1-255 characters without '/', '\\' or control characters"
                    .into(),
            ));
        }
        let type_ok = !content_type.is_empty()
            && content_type.len() <= 127
            && content_type
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ');
        if !type_ok {
            return Err(ChatError::Invalid("bad content type".into()));
        }
        self.authorized(cx, room, Action::Create).await?;
        let size = bytes.len() as u64;
        let blob = self.blobs.put(bytes).await?;
        let record = AttachmentRecord {
            id: AttachmentId::new_at(cx.now),
            room_id: room,
            uploader: cx.subject.user_id,
            blob: blob.to_string(),
            name: name.to_string(),
            content_type: content_type.to_string(),
            size,
            created_at: cx.now,
        };
        self.store.insert_attachment(record.clone()).await?;
        Ok(record)
    }

    /// An attachment's description and bytes (members only), verified against its hash.
    pub async fn download(
        &self,
        cx: Ctx<'_>,
        room: RoomId,
        id: AttachmentId,
    ) -> Result<(AttachmentRecord, Vec<u8>)> {
        self.authorized(cx, room, Action::Read).await?;
        let a = self
            .store
            .attachment(room, id)
            .await?
            .ok_or(ChatError::AttachmentNotFound)?;
        let blob = a.blob.parse().map_err(ChatError::Blob)?;
        let bytes = self
            .blobs
            .get(blob)
            .await?
            .ok_or(ChatError::AttachmentNotFound)?;
        Ok((a, bytes))
    }

    pub async fn history(
        &self,
        cx: Ctx<'_>,
        room: RoomId,
        page: Page,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        self.authorized(cx, room, Action::Read).await?;
        let limit = limit.clamp(1, self.config.history_page_max);
        Ok(match page {
            Page::After(seq) => self.store.messages_after(room, seq, limit).await?,
            Page::Before(seq) => self.store.messages_before(room, seq, limit).await?,
            Page::Latest => self.store.messages_before(room, i64::MAX, limit).await?,
        })
    }

    /// Moves the caller's read marker forward to `seq` (clamped to the newest message) and tells
    /// the room. Returns the marker.
    pub async fn mark_read(&self, cx: Ctx<'_>, room: RoomId, seq: i64) -> Result<i64> {
        let access = self.authorized(cx, room, Action::Read).await?;
        let seq = seq.clamp(0, access.room.last_seq);
        let marker = self
            .store
            .mark_read(room, cx.subject.user_id, seq, cx.now)
            .await?;
        self.publish_to_members(
            room,
            None,
            ChatEvent::Read {
                room,
                user: cx.subject.user_id,
                username: Arc::from(cx.subject.username.as_str()),
                seq: marker,
            },
        )
        .await?;
        Ok(marker)
    }

    pub async fn read_markers(&self, cx: Ctx<'_>, room: RoomId) -> Result<Vec<ReadMarker>> {
        self.authorized(cx, room, Action::Read).await?;
        Ok(self.store.read_markers(room).await?)
    }

    /// Tells the room's other members that the caller is typing. Nothing is stored.
    pub async fn typing(&self, cx: Ctx<'_>, room: RoomId) -> Result<()> {
        self.authorized(cx, room, Action::Create).await?;
        self.publish_to_members(
            room,
            Some(cx.subject.user_id),
            ChatEvent::Typing {
                room,
                user: cx.subject.user_id,
                username: Arc::from(cx.subject.username.as_str()),
            },
        )
        .await
    }

    async fn publish_to_members(
        &self,
        room: RoomId,
        except: Option<UserId>,
        event: ChatEvent,
    ) -> Result<()> {
        for member in self.store.members(room).await? {
            if Some(member.user_id) != except {
                self.bus.publish(&user_topic(member.user_id), event.clone());
            }
        }
        Ok(())
    }

    /// Full-text search over the rooms the caller can read (or one of them).
    pub async fn search(
        &self,
        cx: Ctx<'_>,
        query: &str,
        room: Option<RoomId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        if query.trim().is_empty() || query.len() > SEARCH_QUERY_LENGTH_MAX {
            return Err(ChatError::Invalid(format!(
                "a search needs 1-{SEARCH_QUERY_LENGTH_MAX} bytes of text"
            )));
        }
        if let Some(room) = room {
            self.authorized(cx, room, Action::Read).await?;
        }
        let limit = limit.clamp(1, self.config.history_page_max);
        let hits = self
            .store
            .search(cx.subject.user_id, query, room, limit)
            .await?;
        // The query already keeps to the caller's rooms; the policy has the last word.
        Ok(hits
            .into_iter()
            .filter(|(m, role)| {
                let resource = Resource::Room {
                    id: m.room_id,
                    role: Some(*role),
                };
                sb_auth::authorize(cx.subject, Action::Read, &resource).is_ok()
            })
            .map(|(m, _)| m)
            .collect())
    }

    /// Messages in `room` after `after`, up to `until` inclusive (for filling a gap a live
    /// connection noticed). Authorized like history.
    pub async fn range(
        &self,
        cx: Ctx<'_>,
        room: RoomId,
        after: i64,
        until: i64,
    ) -> Result<Vec<MessageRecord>> {
        self.authorized(cx, room, Action::Read).await?;
        let n = usize::try_from(until.saturating_sub(after)).unwrap_or(0);
        Ok(self.store.messages_after(room, after, n).await?)
    }

    /// For each room the caller belongs to: what came after the given cursor. Rooms without a
    /// cursor start at their newest message (nothing replayed).
    pub async fn catch_up(
        &self,
        cx: Ctx<'_>,
        cursors: &[(RoomId, i64)],
    ) -> Result<Vec<RoomCatchUp>> {
        let mut out = Vec::new();
        for MyRoom { room, .. } in self.store.rooms_of(cx.subject.user_id).await? {
            let last_seq = room.last_seq;
            let cursor = cursors
                .iter()
                .find(|(id, _)| *id == room.id)
                .map(|(_, seq)| (*seq).clamp(0, last_seq))
                .unwrap_or(last_seq);
            let missed = usize::try_from(last_seq - cursor).unwrap_or(0);
            let truncated = missed > self.config.catchup_messages_max;
            let messages = if truncated || missed == 0 {
                Vec::new()
            } else {
                self.store.messages_after(room.id, cursor, missed).await?
            };
            out.push(RoomCatchUp {
                room: room.id,
                last_seq: messages.last().map(|m| m.seq).unwrap_or(last_seq),
                messages,
                truncated,
            });
        }
        Ok(out)
    }
}
