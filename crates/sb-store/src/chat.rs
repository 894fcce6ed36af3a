//! Chat storage: rooms, members, bans and messages.
//!
//! Each room has a `last_seq`; appending a message assigns `last_seq + 1` in the same
//! transaction that stores it, so sequence numbers are dense, per room, and durable before the
//! append returns. A message is identified by `(room, sender, message_id)` where `message_id`
//! is chosen by the client: appending the same one again returns the stored message instead of
//! a second copy, which makes retries safe.

use crate::Result;
use async_trait::async_trait;
use sb_core::{AttachmentId, RoomId, RoomRole, UnixMillis, UserId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomKind {
    Group,
    Direct,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Group => "group",
            RoomKind::Direct => "direct",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRecord {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
    pub topic: String,
    pub public: bool,
    pub created_by: UserId,
    pub created_at: UnixMillis,
    /// Sequence number of the newest message; 0 for an empty room.
    pub last_seq: i64,
    /// End-to-end encrypted (MLS): message bodies are ciphertext the server cannot read.
    pub encrypted: bool,
    /// The MLS epoch the next handshake message must be for.
    pub mls_epoch: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeRecord {
    pub room_id: RoomId,
    pub epoch: i64,
    pub sender: UserId,
    pub message: Vec<u8>,
    pub created_at: UnixMillis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WelcomeRecord {
    pub room_id: RoomId,
    pub epoch: i64,
    pub welcome: Vec<u8>,
}

/// A Welcome to queue for one device of an invited user.
#[derive(Clone, Debug)]
pub struct NewWelcome {
    pub user: UserId,
    pub device: String,
    pub welcome: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// Stored as the handshake of `epoch`; the room moved to `epoch + 1`.
    Accepted,
    /// Another handshake took this epoch first; the room is at `current`.
    Stale { current: i64 },
}

/// A room as one member sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MyRoom {
    pub room: RoomRecord,
    pub role: RoomRole,
    /// The member's read marker: the last sequence number they have read.
    pub read_seq: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadMarker {
    pub user_id: UserId,
    pub username: String,
    pub seq: i64,
    pub updated_at: UnixMillis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub user_id: UserId,
    pub username: String,
    pub role: RoomRole,
    pub joined_at: UnixMillis,
    /// When the user's last connection closed, if ever.
    pub last_seen_at: Option<UnixMillis>,
}

/// What an access decision about a room needs to know about one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomAccess {
    pub room: RoomRecord,
    pub role: Option<RoomRole>,
    pub banned: bool,
}

/// What a sequence entry is. Everything but `Message` points at a message (`target`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MessageKind {
    #[default]
    Message,
    /// The target's new text (the target row is updated too).
    Edit,
    /// The target's content was removed; it stays as a tombstone.
    Delete,
    /// The sender reacted to the target with the emoji in `body`.
    Reaction,
    /// The sender took back the reaction in `body`.
    Unreaction,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Message => "message",
            MessageKind::Edit => "edit",
            MessageKind::Delete => "delete",
            MessageKind::Reaction => "reaction",
            MessageKind::Unreaction => "unreaction",
        }
    }

    pub fn parse(s: &str) -> Option<MessageKind> {
        [
            MessageKind::Message,
            MessageKind::Edit,
            MessageKind::Delete,
            MessageKind::Reaction,
            MessageKind::Unreaction,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    pub room_id: RoomId,
    pub seq: i64,
    pub message_id: String,
    pub sender: UserId,
    pub body: String,
    pub reply_to: Option<i64>,
    pub created_at: UnixMillis,
    pub kind: MessageKind,
    pub target: Option<i64>,
    /// A deleted message: its body (and its edits' bodies) are empty.
    pub deleted: bool,
    pub edited_at: Option<UnixMillis>,
    pub attachments: Vec<AttachmentId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentRecord {
    pub id: AttachmentId,
    pub room_id: RoomId,
    pub uploader: UserId,
    /// The BLAKE3 id of the bytes in the blob store.
    pub blob: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub created_at: UnixMillis,
}

#[derive(Clone, Debug)]
pub struct NewMessage {
    pub room_id: RoomId,
    pub message_id: String,
    pub sender: UserId,
    pub body: String,
    pub reply_to: Option<i64>,
    pub at: UnixMillis,
    pub kind: MessageKind,
    pub target: Option<i64>,
    pub attachments: Vec<AttachmentId>,
}

/// The result of an append: a new message, or the one already stored under that id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    New(MessageRecord),
    Duplicate(MessageRecord),
}

impl Appended {
    pub fn record(&self) -> &MessageRecord {
        match self {
            Appended::New(m) | Appended::Duplicate(m) => m,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    Added,
    AlreadyMember,
    Banned,
    RoomFull,
}

#[async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// Creates a group room with `room.created_by` as its owner.
    async fn create_room(&self, room: RoomRecord) -> Result<()>;
    /// The direct-message room of two users, created (with both as members) if it does not
    /// exist. Returns it and whether it was created.
    async fn direct_room(
        &self,
        a: UserId,
        b: UserId,
        new_id: RoomId,
        at: UnixMillis,
    ) -> Result<(RoomRecord, bool)>;
    /// The room and what `user` is in it, or `None` if the room does not exist.
    async fn room_access(&self, room: RoomId, user: UserId) -> Result<Option<RoomAccess>>;
    /// Rooms `user` belongs to, with the role held and the read marker in each.
    async fn rooms_of(&self, user: UserId) -> Result<Vec<MyRoom>>;
    /// Moves `user`'s read marker in `room` forward to `seq` (never back); returns the marker.
    async fn mark_read(&self, room: RoomId, user: UserId, seq: i64, at: UnixMillis) -> Result<i64>;
    /// Every member's read marker in `room` (members who never read are absent).
    async fn read_markers(&self, room: RoomId) -> Result<Vec<ReadMarker>>;
    async fn public_rooms(&self) -> Result<Vec<RoomRecord>>;
    /// Adds a member unless banned, already present, or the room holds `members_max`.
    async fn add_member(
        &self,
        room: RoomId,
        user: UserId,
        role: RoomRole,
        members_max: usize,
        at: UnixMillis,
    ) -> Result<MemberChange>;
    /// Returns whether the user was a member.
    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool>;
    /// Returns whether the user was a member (and now holds `role`).
    async fn set_member_role(&self, room: RoomId, user: UserId, role: RoomRole) -> Result<bool>;
    /// Removes the user and bars them from rejoining.
    async fn ban(&self, room: RoomId, user: UserId, by: UserId, at: UnixMillis) -> Result<()>;
    async fn members(&self, room: RoomId) -> Result<Vec<MemberRecord>>;
    /// Everyone who shares at least one room with `user` (not `user`).
    async fn co_members(&self, user: UserId) -> Result<Vec<UserId>>;
    async fn set_last_seen(&self, user: UserId, at: UnixMillis) -> Result<()>;
    /// Appends durably, assigning the next sequence number, unless the id was used before. An
    /// edit also rewrites its target; a delete blanks its target and the target's edits and
    /// marks it deleted. Fails with `NotFound` if the target is not a live message.
    async fn append_message(&self, msg: NewMessage) -> Result<Appended>;
    async fn message(&self, room: RoomId, seq: i64) -> Result<Option<MessageRecord>>;
    async fn insert_attachment(&self, a: AttachmentRecord) -> Result<()>;
    /// Stores a device's key packages (and replaces its last-resort one, if given), keeping at
    /// most `max_per_device` regular ones. Returns how many regular ones it now has.
    async fn add_key_packages(
        &self,
        user: UserId,
        device: &str,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_per_device: usize,
    ) -> Result<usize>;
    /// One key package for each of `user`'s devices, atomically: a regular package is handed
    /// out once and removed; a device with none left gives its last-resort package (kept).
    async fn claim_key_packages(&self, user: UserId) -> Result<Vec<(String, Vec<u8>)>>;
    /// Appends the handshake for `epoch` if the room is at that epoch, with the Welcomes it
    /// carries, in one transaction; otherwise reports the room's epoch.
    async fn append_handshake(
        &self,
        room: RoomId,
        epoch: i64,
        sender: UserId,
        message: Vec<u8>,
        welcomes: Vec<NewWelcome>,
        at: UnixMillis,
    ) -> Result<HandshakeOutcome>;
    async fn handshakes_after(
        &self,
        room: RoomId,
        epoch: i64,
        limit: usize,
    ) -> Result<Vec<HandshakeRecord>>;
    /// The device's queued Welcomes, removed as they are handed over.
    async fn take_welcomes(&self, user: UserId, device: &str) -> Result<Vec<WelcomeRecord>>;
    async fn attachment(&self, room: RoomId, id: AttachmentId) -> Result<Option<AttachmentRecord>>;
    /// The blob (BLAKE3, hex) of every attachment, for blob garbage collection.
    async fn attachment_blobs(&self) -> Result<Vec<String>>;
    /// Messages with `seq > after`, oldest first, at most `limit`.
    async fn messages_after(
        &self,
        room: RoomId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>>;
    /// Messages matching the words of `query` (all of them, any order), in rooms `user`
    /// belongs to (or only `room`), best matches first, with the user's role in that room.
    async fn search(
        &self,
        user: UserId,
        query: &str,
        room: Option<RoomId>,
        limit: usize,
    ) -> Result<Vec<(MessageRecord, RoomRole)>>;
    /// Messages with `seq < before`, the newest `limit` of them, oldest first.
    async fn messages_before(
        &self,
        room: RoomId,
        before: i64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>>;
}
