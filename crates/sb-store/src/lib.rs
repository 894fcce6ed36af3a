//! Storage for Switchboard: the [`Store`] trait, its records, and the SQLite backend.
//!
//! Every backend must pass [`conformance::run`]; the SQLite backend runs it in CI, and the
//! PostgreSQL backend will run the same suite. Writes return only after they are durable (per
//! [`sb_core::config::Durability`]), so a caller may acknowledge as soon as a call returns.
//!
//! The audit log's hash chain is defined here ([`audit::chain_hash`]) because it is a property of
//! the stored records: the append that assigns a sequence number also links it to its predecessor,
//! in one transaction.

pub mod audit;
pub mod chat;
pub mod conformance;
pub mod devices;
pub mod files;
pub mod mqtt;
mod sqlite;
mod sqlite_chat;
mod sqlite_devices;
mod sqlite_files;
mod sqlite_mqtt;

pub use chat::ChatStore;
pub use devices::DevicesStore;
pub use files::FilesStore;
pub use mqtt::MqttStore;
pub use sqlite::{Observer, SqliteStore};

use async_trait::async_trait;
use sb_core::{InviteId, Role, SessionId, TokenId, UnixMillis, UserId};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists: {0}")]
    Conflict(&'static str),
    #[error("not found")]
    NotFound,
    #[error("the invite or setup token is unknown, used or expired")]
    AdmissionRejected,
    #[error("storage backend: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub status_text: String,
    /// PHC-format Argon2id hash; never the password.
    pub password_hash: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: UnixMillis,
}

/// How a new account is admitted; checked and consumed in the same transaction as the insert.
#[derive(Clone, Debug)]
pub enum Admission {
    /// Open registration.
    Open,
    /// A single-use invite, found by the SHA-256 of its token.
    Invite { token_hash: [u8; 32] },
    /// The first-start setup token; the account becomes an admin.
    Setup { token_hash: [u8; 32] },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    pub user_id: UserId,
    pub token_hash: [u8; 32],
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub last_used_at: UnixMillis,
    pub client: String,
    pub ip: String,
    pub revoked_at: Option<UnixMillis>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTokenRecord {
    pub id: TokenId,
    pub user_id: UserId,
    pub name: String,
    pub token_hash: [u8; 32],
    pub scopes: Vec<String>,
    pub created_at: UnixMillis,
    pub expires_at: Option<UnixMillis>,
    pub last_used_at: Option<UnixMillis>,
    pub revoked_at: Option<UnixMillis>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteRecord {
    pub id: InviteId,
    pub token_hash: [u8; 32],
    pub created_by: UserId,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub used_by: Option<UserId>,
}

/// A user's saved dashboard: its name and its definition (JSON the server has validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DashboardRecord {
    pub user_id: UserId,
    pub name: String,
    pub body: String,
    pub updated_at: UnixMillis,
}

/// An audit event before it is appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: UnixMillis,
    /// Who acted: a user id, or a description such as `anonymous` or `username:alice`.
    pub actor: String,
    /// What happened, e.g. `login.failure`, `permission.denied`.
    pub action: String,
    /// What it was done to, if anything.
    pub target: String,
    pub ip: String,
    /// Free-form JSON text with extra context; never a secret.
    pub detail: String,
}

/// A stored audit record: the entry, its sequence number and its place in the hash chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action_prefix: Option<String>,
    pub since: Option<UnixMillis>,
    pub until: Option<UnixMillis>,
    pub after_seq: Option<i64>,
    pub limit: usize,
}

/// The storage interface. Implementations must be safe to share across tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- first start ---
    /// Records the setup token hash, replacing any earlier one, if no user exists yet.
    /// Returns whether it did (false once the first account exists).
    async fn set_setup_token(&self, token_hash: [u8; 32]) -> Result<bool>;
    async fn user_count(&self) -> Result<u64>;

    // --- users ---
    /// Creates a user after checking and consuming `admission` atomically.
    async fn create_user(
        &self,
        user: UserRecord,
        admission: Admission,
        now: UnixMillis,
    ) -> Result<()>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>>;
    /// Case-insensitive.
    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>>;
    async fn list_users(&self) -> Result<Vec<UserRecord>>;
    async fn update_profile(&self, id: UserId, display_name: &str, status_text: &str)
    -> Result<()>;
    async fn set_role(&self, id: UserId, role: Role) -> Result<()>;
    async fn set_disabled(&self, id: UserId, disabled: bool) -> Result<()>;
    /// Replaces the password hash and revokes every live session of the user except `keep`.
    /// Returns the revoked session ids.
    async fn change_password(
        &self,
        id: UserId,
        password_hash: &str,
        keep: Option<SessionId>,
        now: UnixMillis,
    ) -> Result<Vec<SessionId>>;

    // --- sessions ---
    async fn insert_session(&self, session: SessionRecord) -> Result<()>;
    /// The session and its user, if the hash is known (revoked or expired sessions included:
    /// the caller decides).
    async fn session_by_token_hash(
        &self,
        hash: [u8; 32],
    ) -> Result<Option<(SessionRecord, UserRecord)>>;
    async fn list_sessions(&self, user: UserId) -> Result<Vec<SessionRecord>>;
    async fn session_by_id(&self, id: SessionId) -> Result<Option<SessionRecord>>;
    /// Returns false if it was already revoked or does not exist.
    async fn revoke_session(&self, id: SessionId, now: UnixMillis) -> Result<bool>;
    /// Revokes every live session of the user; returns their ids.
    async fn revoke_user_sessions(&self, user: UserId, now: UnixMillis) -> Result<Vec<SessionId>>;
    async fn touch_session(&self, id: SessionId, now: UnixMillis) -> Result<()>;
    /// Deletes sessions that were revoked or expired before `cutoff`; returns how many.
    async fn prune_sessions(&self, cutoff: UnixMillis) -> Result<u64>;

    // --- API tokens ---
    async fn insert_token(&self, token: ApiTokenRecord) -> Result<()>;
    async fn token_by_hash(&self, hash: [u8; 32]) -> Result<Option<(ApiTokenRecord, UserRecord)>>;
    async fn list_tokens(&self, user: UserId) -> Result<Vec<ApiTokenRecord>>;
    async fn token_by_id(&self, id: TokenId) -> Result<Option<ApiTokenRecord>>;
    async fn revoke_token(&self, id: TokenId, now: UnixMillis) -> Result<bool>;
    async fn touch_token(&self, id: TokenId, now: UnixMillis) -> Result<()>;

    // --- invites ---
    async fn insert_invite(&self, invite: InviteRecord) -> Result<()>;
    async fn list_invites(&self) -> Result<Vec<InviteRecord>>;

    // --- dashboards (the web console's saved panels, per user) ---
    /// Creates or replaces `user`'s dashboard `name`; refused (false) when it would be a new
    /// one beyond `max` dashboards.
    async fn put_dashboard(&self, d: DashboardRecord, max: usize) -> Result<bool>;
    async fn dashboards(&self, user: UserId) -> Result<Vec<DashboardRecord>>;
    async fn delete_dashboard(&self, user: UserId, name: &str) -> Result<bool>;

    // --- audit ---
    /// Appends to the hash chain atomically and durably.
    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord>;
    async fn query_audit(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>>;

    /// Makes everything written so far durable and compact (WAL checkpoint); called at shutdown.
    async fn flush(&self) -> Result<()>;
}
