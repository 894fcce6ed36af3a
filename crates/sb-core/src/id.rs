//! Newtype ids. Ids are UUIDv7 (time-ordered, random tail), rendered as their hyphenated text.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new id whose leading bits are the given time, so ids sort by creation.
            pub fn new_at(now: crate::UnixMillis) -> Self {
                let ms = u64::try_from(now.0).unwrap_or(0);
                let ts = uuid::Timestamp::from_unix(
                    uuid::NoContext,
                    ms / 1000,
                    u32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
                );
                $name(Uuid::new_v7(ts))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

id_type!(
    /// A user account.
    UserId
);
id_type!(
    /// A login session (one per `sb login`, browser or device sign-in).
    SessionId
);
id_type!(
    /// A long-lived API token for scripts and integrations.
    TokenId
);
id_type!(
    /// A single-use registration invite.
    InviteId
);
id_type!(
    /// A chat room (group or direct message).
    RoomId
);
id_type!(
    /// A file attached to a chat room.
    AttachmentId
);
id_type!(
    /// A silence: alerts it matches are not notified while it lasts.
    SilenceId
);
id_type!(
    /// A file space: a user's own, or one shared by several.
    SpaceId
);
id_type!(
    /// A file (its identity survives renames and new versions).
    FileId
);
id_type!(
    /// An upload in progress: a manifest waiting for its missing chunks and a commit.
    UploadId
);
id_type!(
    /// A registered device (its MQTT user name).
    DeviceId
);
id_type!(
    /// A command (direct method) sent to a device.
    CommandId
);
id_type!(
    /// A firmware rollout to a group of devices.
    RolloutId
);
