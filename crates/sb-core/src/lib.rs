//! Switchboard's vocabulary: ids, time, error codes, [`Secret`] and the configuration structs.
//!
//! This crate does no I/O and reads no clock, environment or file: the composition root
//! (`sb-server`, the `sb` binary) reads those and hands values down. Everything here is plain data
//! that every other crate can share.

pub mod config;
pub mod error;
pub mod id;
pub mod secret;
pub mod time;

pub use error::ErrorCode;
pub use id::{
    AttachmentId, CommandId, DeviceId, FileId, InviteId, RolloutId, RoomId, SessionId, SilenceId,
    SpaceId, TokenId, UploadId, UserId,
};
pub use secret::Secret;
pub use time::UnixMillis;

/// A user's role. Admins manage users, invites and the audit log; users manage themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// A member's role in a chat room, lowest first (so `>=` compares authority).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RoomRole {
    Member,
    Moderator,
    Owner,
}

impl RoomRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomRole::Member => "member",
            RoomRole::Moderator => "moderator",
            RoomRole::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<RoomRole> {
        match s {
            "member" => Some(RoomRole::Member),
            "moderator" => Some(RoomRole::Moderator),
            "owner" => Some(RoomRole::Owner),
            _ => None,
        }
    }
}
