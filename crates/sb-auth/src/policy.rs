//! Who may do what: [`authorize`] is the one access decision in Switchboard.
//!
//! It is pure: the caller loads what the decision needs (the owner of a session, later a room
//! membership or a file grant) into the [`Resource`], so the policy can be read and tested as a
//! table. Services add resources as variants; each variant states its rule in one match arm.

use sb_core::{DeviceId, Role, RoomId, RoomRole, SessionId, SpaceId, TokenId, UserId};
use serde::{Deserialize, Serialize};

/// What an API token may be used for. Sessions carry every scope their role allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read own data, open real-time streams.
    Read,
    /// Change own data.
    Write,
    /// Admin operations (only effective for admins).
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The credential a request came with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Session(SessionId),
    ApiToken {
        id: TokenId,
        scopes: Vec<Scope>,
    },
    /// A device's secret (MQTT, or HTTP Basic for firmware downloads). The subject's user is
    /// the device's owner, but a device may do nothing but use its topics and download
    /// firmware: see [`authorize`].
    Device(DeviceId),
}

impl Credential {
    pub fn has_scope(&self, scope: Scope) -> bool {
        match self {
            Credential::Session(_) => true,
            Credential::ApiToken { scopes, .. } => scopes.contains(&scope),
            Credential::Device(_) => scope != Scope::Admin,
        }
    }

    /// A stable text id, used in audit records and bus topics.
    pub fn id_string(&self) -> String {
        match self {
            Credential::Session(id) => id.to_string(),
            Credential::ApiToken { id, .. } => id.to_string(),
            Credential::Device(id) => id.to_string(),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub user_id: UserId,
    pub username: String,
    pub role: Role,
    pub credential: Credential,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read,
    Create,
    Update,
    Delete,
}

impl Action {
    fn scope(self) -> Scope {
        match self {
            Action::Read => Scope::Read,
            Action::Create | Action::Update | Action::Delete => Scope::Write,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// The thing acted on, with the facts the decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// A user's own account: profile, password.
    Account { owner: UserId },
    /// A login session.
    Session { owner: UserId },
    /// An API token.
    ApiToken { owner: UserId },
    /// The real-time stream at `/v1/ws`.
    Realtime,
    /// The user directory (list, role, disable/enable).
    Users,
    /// Registration invites.
    Invites,
    /// The audit log.
    Audit,
    /// A chat room, with the subject's standing in it. Read: history and members; Create:
    /// post a message; Update: invite, kick, ban; Delete: owner matters (roles, removing it).
    Room { id: RoomId, role: Option<RoomRole> },
    /// A message in a room. Create: react to it; Update: edit it (its author); Delete: remove
    /// its content (its author, or a moderator).
    RoomMessage {
        room: RoomId,
        role: Option<RoomRole>,
        own: bool,
    },
    /// Metrics and alerting. Read: query; Create: write samples; Update/Delete: rules and
    /// silences (admins).
    Metrics,
    /// The blob store's upkeep (scrub): admins only.
    Storage,
    /// A file space, with the subject's standing in it: its owner may do anything; a share
    /// grants reading, or reading and writing.
    FileSpace {
        id: SpaceId,
        owner: bool,
        writable_share: Option<bool>,
    },
    /// An MQTT topic (Read: subscribe; Create: publish), with how it relates to the subject:
    /// under its own namespace (`devices/<id>/…` for a device, `users/<name>/…` for a user),
    /// granted to the device's group, or under a device the user registered.
    MqttTopic {
        own_namespace: bool,
        group_grant: bool,
        owned_device: bool,
    },
    /// The device registry. Read: list; Create: register; Update/Delete: rotate and revoke
    /// (the owner, or an admin).
    Devices { owner: Option<UserId> },
    /// Firmware images. Read: list and download; Create/Update/Delete: admins.
    Firmware,
    /// Firmware rollouts (they span every owner's devices in a group): admins only.
    Rollouts,
    /// Joining a room on one's own.
    RoomJoin {
        id: RoomId,
        public: bool,
        banned: bool,
    },
}

impl Resource {
    pub fn describe(&self) -> String {
        match self {
            Resource::Account { owner } => format!("account:{owner}"),
            Resource::Session { owner } => format!("session-of:{owner}"),
            Resource::ApiToken { owner } => format!("token-of:{owner}"),
            Resource::Realtime => "realtime".into(),
            Resource::Users => "users".into(),
            Resource::Invites => "invites".into(),
            Resource::Audit => "audit".into(),
            Resource::Room { id, .. } | Resource::RoomJoin { id, .. } => format!("room:{id}"),
            Resource::RoomMessage { room, .. } => format!("room:{room}"),
            Resource::Metrics => "metrics".into(),
            Resource::Storage => "storage".into(),
            Resource::FileSpace { id, .. } => format!("space:{id}"),
            Resource::MqttTopic { .. } => "mqtt-topic".into(),
            Resource::Devices { .. } => "devices".into(),
            Resource::Firmware => "firmware".into(),
            Resource::Rollouts => "rollouts".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The credential's scopes do not cover the action.
    Scope,
    /// The role or ownership does not allow it.
    NotPermitted,
}

/// The access decision. `Ok` to proceed; `Err` says why not.
pub fn authorize(subject: &Subject, action: Action, resource: &Resource) -> Result<(), Denial> {
    let admin = subject.role == Role::Admin;
    let owns = |owner: &UserId| *owner == subject.user_id;
    // A device may use its own topics and its group's, and nothing else.
    if let Credential::Device(_) = subject.credential {
        return match resource {
            Resource::MqttTopic {
                own_namespace,
                group_grant,
                ..
            } if matches!(action, Action::Read | Action::Create)
                && (*own_namespace || *group_grant) =>
            {
                Ok(())
            }
            // Devices download firmware.
            Resource::Firmware if action == Action::Read => Ok(()),
            _ => Err(Denial::NotPermitted),
        };
    }
    let needs_admin = matches!(
        resource,
        Resource::Users
            | Resource::Invites
            | Resource::Audit
            | Resource::Storage
            | Resource::Rollouts
    );
    if !subject.credential.has_scope(action.scope())
        || (needs_admin && !subject.credential.has_scope(Scope::Admin))
    {
        return Err(Denial::Scope);
    }
    let allowed = match resource {
        // Only the owner changes an account; admins act on others through `Users`.
        Resource::Account { owner } => owns(owner),
        // Admins may see and revoke anyone's credentials (incident response).
        Resource::Session { owner } | Resource::ApiToken { owner } => {
            owns(owner) || (admin && matches!(action, Action::Read | Action::Delete))
        }
        Resource::Realtime => action == Action::Read,
        Resource::Users
        | Resource::Invites
        | Resource::Audit
        | Resource::Storage
        | Resource::Rollouts => admin,
        // Spaces are private to their owner and those they are shared with: admins included.
        Resource::FileSpace {
            owner,
            writable_share,
            ..
        } => match action {
            Action::Read => *owner || writable_share.is_some(),
            Action::Create | Action::Update | Action::Delete => {
                *owner || *writable_share == Some(true)
            }
        },
        // Rooms are private to their members: the server admin role grants nothing here.
        Resource::Room { role, .. } => match action {
            Action::Read | Action::Create => role.is_some(),
            Action::Update => role.is_some_and(|r| r >= RoomRole::Moderator),
            Action::Delete => *role == Some(RoomRole::Owner),
        },
        Resource::RoomMessage { role, own, .. } => match action {
            Action::Read | Action::Create => role.is_some(),
            Action::Update => role.is_some() && *own,
            Action::Delete => {
                *own && role.is_some() || role.is_some_and(|r| r >= RoomRole::Moderator)
            }
        },
        Resource::RoomJoin { public, banned, .. } => {
            action == Action::Create && *public && !*banned
        }
        Resource::Metrics => match action {
            Action::Read | Action::Create => true,
            Action::Update | Action::Delete => admin,
        },
        // Users: their own namespace and their devices' topics; admins: every topic.
        Resource::MqttTopic {
            own_namespace,
            owned_device,
            ..
        } => {
            matches!(action, Action::Read | Action::Create)
                && (admin || *own_namespace || *owned_device)
        }
        Resource::Firmware => action == Action::Read || admin,
        Resource::Devices { owner } => match action {
            Action::Read | Action::Create => true,
            Action::Update | Action::Delete => admin || owner.as_ref().is_some_and(owns),
        },
    };
    if allowed {
        Ok(())
    } else {
        Err(Denial::NotPermitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sb_core::UnixMillis;

    fn subject(role: Role, credential: Credential) -> Subject {
        Subject {
            user_id: UserId::new_at(UnixMillis(1)),
            username: "s".into(),
            role,
            credential,
        }
    }

    fn session() -> Credential {
        Credential::Session(SessionId::new_at(UnixMillis(1)))
    }

    fn token(scopes: &[Scope]) -> Credential {
        Credential::ApiToken {
            id: TokenId::new_at(UnixMillis(1)),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn devices_use_their_own_and_their_groups_topics_only() {
        let device = subject(
            Role::User,
            Credential::Device(DeviceId::new_at(UnixMillis(1))),
        );
        let topic = |own, group, owned| Resource::MqttTopic {
            own_namespace: own,
            group_grant: group,
            owned_device: owned,
        };
        for action in [Action::Read, Action::Create] {
            assert_eq!(
                authorize(&device, action, &topic(true, false, false)),
                Ok(())
            );
            assert_eq!(
                authorize(&device, action, &topic(false, true, false)),
                Ok(())
            );
            assert!(authorize(&device, action, &topic(false, false, true)).is_err());
        }
        // Even as an admin's device, nothing else: no realtime, metrics, files or users.
        let admins_device = subject(
            Role::Admin,
            Credential::Device(DeviceId::new_at(UnixMillis(1))),
        );
        for r in [
            Resource::Realtime,
            Resource::Metrics,
            Resource::Users,
            Resource::Devices { owner: None },
            topic(false, false, false),
        ] {
            assert!(
                authorize(&admins_device, Action::Read, &r).is_err(),
                "{r:?}"
            );
        }
        // Users: their namespace and devices; admins every topic.
        let user = subject(Role::User, session());
        assert_eq!(
            authorize(&user, Action::Create, &topic(false, false, true)),
            Ok(())
        );
        assert!(authorize(&user, Action::Read, &topic(false, false, false)).is_err());
        let admin = subject(Role::Admin, session());
        assert_eq!(
            authorize(&admin, Action::Read, &topic(false, false, false)),
            Ok(())
        );
    }

    #[test]
    fn firmware_is_read_by_all_and_rollouts_are_for_admins_only() {
        let user = subject(Role::User, session());
        let admin = subject(Role::Admin, session());
        let device = subject(
            Role::Admin,
            Credential::Device(DeviceId::new_at(UnixMillis(1))),
        );
        assert_eq!(authorize(&user, Action::Read, &Resource::Firmware), Ok(()));
        assert_eq!(
            authorize(&device, Action::Read, &Resource::Firmware),
            Ok(())
        );
        assert!(authorize(&user, Action::Create, &Resource::Firmware).is_err());
        for action in [Action::Read, Action::Create, Action::Update] {
            assert!(authorize(&user, action, &Resource::Rollouts).is_err());
            assert!(authorize(&device, action, &Resource::Rollouts).is_err());
            assert_eq!(authorize(&admin, action, &Resource::Rollouts), Ok(()));
        }
    }

    #[test]
    fn users_act_on_their_own_account_only() {
        let s = subject(Role::User, session());
        let other = UserId::new_at(UnixMillis(2));
        let own = Resource::Account { owner: s.user_id };
        assert_eq!(authorize(&s, Action::Update, &own), Ok(()));
        assert_eq!(
            authorize(&s, Action::Update, &Resource::Account { owner: other }),
            Err(Denial::NotPermitted)
        );
        assert_eq!(
            authorize(&s, Action::Delete, &Resource::Session { owner: other }),
            Err(Denial::NotPermitted)
        );
    }

    #[test]
    fn file_spaces_open_to_their_owner_and_shares_only() {
        let admin = subject(Role::Admin, session());
        let id = SpaceId::new_at(UnixMillis(1));
        let space = |owner, writable_share| Resource::FileSpace {
            id,
            owner,
            writable_share,
        };
        for a in [Action::Read, Action::Create, Action::Update, Action::Delete] {
            assert_eq!(authorize(&admin, a, &space(true, None)), Ok(()));
            assert_eq!(
                authorize(&admin, a, &space(false, None)),
                Err(Denial::NotPermitted),
                "the admin role opens nobody's files"
            );
            assert_eq!(authorize(&admin, a, &space(false, Some(true))), Ok(()));
        }
        assert_eq!(
            authorize(&admin, Action::Read, &space(false, Some(false))),
            Ok(())
        );
        assert_eq!(
            authorize(&admin, Action::Create, &space(false, Some(false))),
            Err(Denial::NotPermitted),
            "a read-only share cannot write"
        );
        let read_token = subject(Role::User, token(&[Scope::Read]));
        assert_eq!(
            authorize(&read_token, Action::Create, &space(true, None)),
            Err(Denial::Scope)
        );
    }

    #[test]
    fn admin_areas_need_the_admin_role() {
        let user = subject(Role::User, session());
        let admin = subject(Role::Admin, session());
        for r in [
            Resource::Users,
            Resource::Invites,
            Resource::Audit,
            Resource::Storage,
        ] {
            assert_eq!(
                authorize(&user, Action::Read, &r),
                Err(Denial::NotPermitted)
            );
            assert_eq!(authorize(&admin, Action::Read, &r), Ok(()));
        }
        let other = UserId::new_at(UnixMillis(3));
        assert_eq!(
            authorize(&admin, Action::Delete, &Resource::Session { owner: other }),
            Ok(())
        );
        assert_eq!(
            authorize(&admin, Action::Update, &Resource::Account { owner: other }),
            Err(Denial::NotPermitted)
        );
    }

    #[test]
    fn rooms_follow_membership_and_room_role_not_server_role() {
        let id = RoomId::new_at(UnixMillis(1));
        let admin = subject(Role::Admin, session());
        let room = |role| Resource::Room { id, role };
        assert_eq!(
            authorize(&admin, Action::Read, &room(None)),
            Err(Denial::NotPermitted),
            "server admins do not read rooms they are not in"
        );
        let user = subject(Role::User, session());
        assert_eq!(
            authorize(&user, Action::Create, &room(Some(RoomRole::Member))),
            Ok(())
        );
        assert_eq!(
            authorize(&user, Action::Update, &room(Some(RoomRole::Member))),
            Err(Denial::NotPermitted)
        );
        assert_eq!(
            authorize(&user, Action::Update, &room(Some(RoomRole::Moderator))),
            Ok(())
        );
        assert_eq!(
            authorize(&user, Action::Delete, &room(Some(RoomRole::Moderator))),
            Err(Denial::NotPermitted)
        );
        let join = |public, banned| Resource::RoomJoin { id, public, banned };
        assert_eq!(authorize(&user, Action::Create, &join(true, false)), Ok(()));
        assert_eq!(
            authorize(&user, Action::Create, &join(false, false)),
            Err(Denial::NotPermitted)
        );
        assert_eq!(
            authorize(&user, Action::Create, &join(true, true)),
            Err(Denial::NotPermitted)
        );
    }

    #[test]
    fn authors_edit_and_moderators_delete_messages() {
        let room = RoomId::new_at(UnixMillis(1));
        let user = subject(Role::User, session());
        let msg = |role, own| Resource::RoomMessage { room, role, own };
        let member = Some(RoomRole::Member);
        assert_eq!(authorize(&user, Action::Update, &msg(member, true)), Ok(()));
        assert_eq!(
            authorize(&user, Action::Update, &msg(member, false)),
            Err(Denial::NotPermitted)
        );
        assert_eq!(
            authorize(&user, Action::Update, &msg(Some(RoomRole::Owner), false)),
            Err(Denial::NotPermitted),
            "nobody edits another's words"
        );
        assert_eq!(authorize(&user, Action::Delete, &msg(member, true)), Ok(()));
        assert_eq!(
            authorize(&user, Action::Delete, &msg(member, false)),
            Err(Denial::NotPermitted)
        );
        assert_eq!(
            authorize(
                &user,
                Action::Delete,
                &msg(Some(RoomRole::Moderator), false)
            ),
            Ok(())
        );
        assert_eq!(
            authorize(&user, Action::Delete, &msg(None, true)),
            Err(Denial::NotPermitted),
            "former members"
        );
        assert_eq!(
            authorize(&user, Action::Create, &msg(member, false)),
            Ok(())
        );
    }

    #[test]
    fn token_scopes_narrow_what_the_role_allows() {
        let read_only = subject(Role::Admin, token(&[Scope::Read]));
        let own = Resource::Account {
            owner: read_only.user_id,
        };
        assert_eq!(authorize(&read_only, Action::Read, &own), Ok(()));
        assert_eq!(
            authorize(&read_only, Action::Update, &own),
            Err(Denial::Scope)
        );
        assert_eq!(
            authorize(&read_only, Action::Read, &Resource::Audit),
            Err(Denial::Scope)
        );
        let admin_token = subject(Role::Admin, token(&[Scope::Read, Scope::Admin]));
        assert_eq!(
            authorize(&admin_token, Action::Read, &Resource::Audit),
            Ok(())
        );
        let user_with_admin_scope = subject(Role::User, token(&Scope::ALL));
        assert_eq!(
            authorize(&user_with_admin_scope, Action::Read, &Resource::Audit),
            Err(Denial::NotPermitted)
        );
    }
}
