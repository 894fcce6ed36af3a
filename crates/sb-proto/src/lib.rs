//! The wire format of Switchboard's native API, version 1: REST bodies under `/v1` and the JSON
//! frames of `/v1/ws`. Shared by the server and the client so both sides agree by construction.
//!
//! Times are Unix milliseconds (`*_ms`). Secrets sent by the client are wrapped in [`Secret`] so
//! they never show in `Debug` output on either side.

use sb_core::Secret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error response: `{"error":{"code":"…","message":"…"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, `snake_case`; match on this.
    pub code: String,
    /// Human-readable; may change between releases.
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    #[schema(value_type = String, format = Password)]
    pub password: Secret<String>,
    /// The one-time token printed at first start; makes this account the admin.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub setup_token: Option<Secret<String>>,
    /// An invite from `sb admin invite`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub invite: Option<Secret<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    #[schema(value_type = String, format = Password)]
    pub password: Secret<String>,
}

/// A saved dashboard: panels of PromQL queries over one time range, refreshed on a timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dashboard {
    pub name: String,
    /// How far back the panels look, in seconds.
    pub range_secs: u64,
    /// How often the console re-runs the queries (0: never).
    #[serde(default)]
    pub refresh_secs: u64,
    pub panels: Vec<DashboardPanel>,
    #[serde(default)]
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DashboardPanel {
    pub title: String,
    pub query: String,
}

/// The web console's session: who is logged in, and the CSRF token its requests carry in
/// `X-CSRF-Token` (the session token itself stays in an `HttpOnly` cookie).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleSession {
    pub user: UserInfo,
    pub csrf: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// The session's bearer token. Shown once; the server keeps only its hash.
    #[schema(value_type = String)]
    pub token: Secret<String>,
    pub session: SessionInfo,
    pub user: UserInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub status_text: String,
    /// `admin` or `user`.
    pub role: String,
    pub disabled: bool,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    pub id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub last_used_at_ms: i64,
    pub client: String,
    pub ip: String,
    pub revoked: bool,
    /// True for the session making this request.
    pub current: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    pub display_name: Option<String>,
    pub status_text: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(value_type = String, format = Password)]
    pub current_password: Secret<String>,
    #[schema(value_type = String, format = Password)]
    pub new_password: Secret<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PasswordChanged {
    /// Other sessions of this account that were signed out.
    pub sessions_revoked: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub name: String,
    /// Any of `read`, `write`, `admin`. Default: `read`, `write`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Lifetime in seconds; absent means until revoked (unless the server caps it).
    pub expires_in_secs: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub id: String,
    /// Shown once; the server keeps only its hash.
    #[schema(value_type = String)]
    pub token: Secret<String>,
    pub info: TokenInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
    pub revoked: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteCreate {
    pub expires_in_secs: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct InviteCreated {
    pub id: String,
    #[schema(value_type = String)]
    pub token: Secret<String>,
    pub expires_at_ms: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUserUpdate {
    /// `admin` or `user`.
    pub role: Option<String>,
    pub disabled: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub ip: String,
    /// JSON text with extra context.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events by this actor (a user id, or `username:NAME` for failed logins).
    pub actor: Option<String>,
    /// Only actions starting with this, e.g. `login.` or `permission.denied`.
    pub action: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only events with a sequence number above this (for paging).
    pub after_seq: Option<i64>,
    /// At most this many (default 100, max 1000).
    pub limit: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerifyResult {
    pub ok: bool,
    pub checked: u64,
    /// Sequence number of the first record that fails verification.
    pub first_broken_seq: Option<i64>,
    /// What is wrong with it: `content` (edited) or `link` (inserted or removed before it).
    pub problem: Option<String>,
}

/// One content chunk of a file: its BLAKE3 hash (hex) and length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChunkInfo {
    pub id: String,
    pub len: u32,
}

/// `POST /v1/files/uploads`: a file's chunk list, before any content is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UploadStart {
    /// A space id from `GET /v1/files/spaces` (default: the caller's own).
    #[serde(default)]
    pub space: Option<String>,
    /// Where it goes in the space, e.g. `/docs/report.pdf`.
    pub path: String,
    pub size: u64,
    /// BLAKE3 of the whole content (hex); checked at commit.
    pub blake3: String,
    pub chunks: Vec<ChunkInfo>,
    /// Commit only if the file is still at this version (0: only if it does not exist yet).
    #[serde(default)]
    pub base_version: Option<i64>,
    /// The sending device's name (used in conflict file names).
    #[serde(default)]
    pub device: String,
}

/// The chunks the server lacks: send only these, then commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UploadStarted {
    pub upload_id: String,
    pub missing: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    pub path: String,
    pub version: i64,
    pub size: u64,
    pub blake3: String,
    pub modified_at_ms: i64,
    /// In the trash.
    pub deleted: bool,
}

/// Registering a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceRegister {
    pub name: String,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceInfo {
    /// Its MQTT user name.
    pub id: String,
    pub name: String,
    pub group: String,
    pub tags: std::collections::BTreeMap<String, String>,
    pub owner: String,
    pub created_at_ms: i64,
    pub revoked: bool,
    /// Connected over MQTT right now.
    pub online: bool,
    pub last_seen_at_ms: Option<i64>,
    /// `healthy`, `unhealthy` (last report older than `mqtt.health_interval_secs`) or `unknown`.
    pub health: String,
    #[schema(value_type = Option<Object>)]
    pub health_report: Option<serde_json::Value>,
    pub health_at_ms: Option<i64>,
    /// The firmware version the device reports in its twin (`reported.firmware`, a version or
    /// an object with one), if any.
    #[serde(default)]
    pub firmware: Option<String>,
}

/// A command (direct method) for a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommandCreate {
    pub method: String,
    /// Any JSON; sent to the device as the message payload.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Once sent, the device has this long to answer (default 30).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// A device that is away has until then to come back and take it (default: the timeout).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// Answer only once the command has finished (succeeded, failed, timed out or expired),
    /// or after 25 s at most (then ask `GET …/commands/{id}?wait_secs=`).
    #[serde(default)]
    pub wait: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommandInfo {
    pub id: String,
    pub device_id: String,
    pub method: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// queued, sent, succeeded, failed, timed_out or expired.
    pub state: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// The device's status code (below 400: succeeded).
    pub status: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

/// A firmware image, signed by the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FirmwareInfo {
    pub version: String,
    pub size: u64,
    pub sha256: String,
    /// Ed25519 over the image's SHA-256, hex.
    pub signature: String,
    /// The operator key it verifies with, hex.
    pub public_key: String,
    pub created_at_ms: i64,
}

/// A device twin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TwinInfo {
    pub device_id: String,
    #[schema(value_type = Object)]
    pub desired: serde_json::Value,
    #[schema(value_type = Object)]
    pub reported: serde_json::Value,
    /// Name it in a change to make the change conditional on it (compare-and-set).
    pub desired_version: i64,
    pub reported_version: i64,
    /// When each top-level field last changed.
    pub desired_updated_ms: std::collections::BTreeMap<String, i64>,
    pub reported_updated_ms: std::collections::BTreeMap<String, i64>,
    /// Desired fields the device has not reported (yet).
    #[schema(value_type = Object)]
    pub delta: serde_json::Value,
}

/// A firmware rollout to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutCreate {
    /// An uploaded firmware version.
    pub version: String,
    /// The device group it goes to (its devices that are not revoked, by name).
    pub group: String,
    /// Devices per batch: a count (`5`) or a share of the group (`10%`, rounded up).
    pub batch: String,
    /// Failures allowed before the rollout halts itself: a count (`2`) or a share of the
    /// group (`5%`, rounded down); one more than this halts it.
    pub max_failures: String,
    /// A device in one state longer than this has failed [default:
    /// `mqtt.rollout_step_timeout_secs`].
    #[serde(default)]
    pub step_timeout_secs: Option<u64>,
}

/// One device of a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutDevice {
    pub device_id: String,
    pub name: String,
    /// 1-based.
    pub batch: u32,
    /// pending (its batch has not come), notified (told, no report yet), downloading,
    /// downloaded, verified, updating, updated or failed.
    pub state: String,
    /// Why it failed: the device's reason, or the step timeout.
    pub reason: Option<String>,
    pub since_ms: i64,
}

/// A firmware rollout and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutInfo {
    pub id: String,
    pub version: String,
    pub group: String,
    /// running, halted (past its failure threshold), completed or cancelled.
    pub state: String,
    pub reason: Option<String>,
    pub batch_size: u32,
    pub max_failures: u32,
    pub step_timeout_secs: u64,
    /// The batch being sent, 1-based.
    pub current_batch: u32,
    pub batches: u32,
    pub devices_total: u32,
    pub pending: u32,
    /// Told, and not yet updated or failed.
    pub in_progress: u32,
    pub updated: u32,
    pub failed: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub devices: Vec<RolloutDevice>,
}

/// A change to a twin's desired state: a merge patch (`null` removes a field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TwinPatch {
    #[schema(value_type = Object)]
    pub desired: serde_json::Map<String, serde_json::Value>,
    /// Apply only if the desired version is still this one (409 otherwise).
    #[serde(default)]
    pub version: Option<i64>,
}

/// A client certificate for a device (mTLS on the MQTT TLS listeners), with its private key:
/// shown only this once. It replaces the device's earlier certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceCertificate {
    pub device_id: String,
    pub name: String,
    pub certificate_pem: String,
    pub private_key_pem: String,
    /// The device CA's certificate (what the server trusts client certificates by).
    pub ca_pem: String,
    /// SHA-256 of the certificate.
    pub fingerprint: String,
    pub expires_at_ms: i64,
}

/// A device's id and secret (its MQTT password), shown only this once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceSecret {
    pub id: String,
    pub name: String,
    pub secret: String,
}

/// One version's content as its chunks, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileChunks {
    pub version: i64,
    pub size: u64,
    pub blake3: String,
    pub chunks: Vec<ChunkInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileVersionInfo {
    pub version: i64,
    pub size: u64,
    pub blake3: String,
    pub created_at_ms: i64,
    /// Username of whoever wrote it.
    pub created_by: String,
    pub device: String,
    pub chunks: u64,
}

/// `POST /v1/files/move`: a file or a folder (everything under it) to a new path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileMove {
    #[serde(default)]
    pub space: Option<String>,
    pub from: String,
    pub to: String,
}

/// `POST /v1/files/restore`: a trashed file back, or (with `version`) an old version as the
/// newest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileRestore {
    #[serde(default)]
    pub space: Option<String>,
    pub path: String,
    #[serde(default)]
    pub version: Option<i64>,
}

/// `POST /v1/files/links`: a download link anyone holding it may use until it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LinkCreate {
    #[serde(default)]
    pub space: Option<String>,
    pub path: String,
    /// A fixed version (default: whatever is newest when the link is used).
    #[serde(default)]
    pub version: Option<i64>,
    pub expires_in_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LinkCreated {
    /// `GET` this path (no credential needed) until `expires_at_ms`.
    pub url_path: String,
    pub expires_at_ms: i64,
}

/// One entry of a space's change feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileChange {
    /// Ask for changes after the last `seq` seen to get only what is new.
    pub seq: i64,
    pub path: String,
    pub version: i64,
    /// Removed from this path (trashed, or moved away).
    pub deleted: bool,
    pub at_ms: i64,
    /// The size and BLAKE3 of `version` (0 and empty once that version is deleted).
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub blake3: String,
}

/// A file space the caller owns or has a share of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpaceInfo {
    pub id: String,
    pub name: String,
    /// The owner's username.
    pub owner: String,
    /// The owner's own space (every user has one).
    pub personal: bool,
    /// The caller's access: `owner`, `write` or `read`.
    pub access: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpaceCreate {
    pub name: String,
}

/// `PUT /v1/files/spaces/{id}/members`: share with a user (`read` or `write`), or stop
/// (`none`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpaceShare {
    pub username: String,
    pub access: String,
}

/// What `POST /v1/admin/blobs/gc` (also run hourly) removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcReport {
    /// File versions past `files.version_keep_*`.
    pub versions_deleted: u64,
    /// Trashed files past `files.trash_retention_secs`.
    pub files_purged: u64,
    pub blobs_kept: u64,
    /// Blobs nothing refers to, older than `blobs.gc_grace_secs`.
    pub blobs_deleted: u64,
}

/// What `POST /v1/admin/blobs/scrub` found: every copy of every blob re-hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScrubReport {
    pub blobs: u64,
    pub copies_checked: u64,
    pub bytes_checked: u64,
    /// Copies whose content no longer matched their hash.
    pub corrupt_copies: u64,
    /// Copies rewritten from a good replica (corrupt, or missing where one belongs).
    pub repaired_copies: u64,
    /// Blobs with no good copy left (their ids).
    pub lost: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomInfo {
    pub id: String,
    /// `group` or `direct`.
    pub kind: String,
    pub name: String,
    pub topic: String,
    pub public: bool,
    /// The caller's role, when a member: `owner`, `moderator` or `member`.
    pub role: Option<String>,
    /// Sequence number of the newest message.
    pub last_seq: i64,
    /// The caller's read marker (members only).
    pub read_seq: Option<i64>,
    /// Messages after the caller's read marker (members only).
    pub unread: Option<i64>,
    /// End-to-end encrypted (MLS): bodies are ciphertext.
    pub encrypted: bool,
    /// The epoch the room's next MLS handshake must be for.
    pub mls_epoch: i64,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadMark {
    /// The last sequence number read; the marker never moves back.
    pub seq: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadMarkerInfo {
    pub user_id: String,
    pub username: String,
    pub seq: i64,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomCreate {
    pub name: String,
    #[serde(default)]
    pub topic: String,
    /// Public rooms can be joined by anyone; private ones by invitation.
    #[serde(default)]
    pub public: bool,
    /// End-to-end encrypted with MLS: the server stores only ciphertext (never public).
    #[serde(default)]
    pub encrypted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPackagesPublish {
    /// The publishing device (1-64 of a-z, 0-9, '-', '_', '.').
    pub device: String,
    /// Base64 MLS KeyPackages, each handed out once.
    pub key_packages: Vec<String>,
    /// Base64 KeyPackage handed out when the regular ones run out (kept).
    #[serde(default)]
    pub last_resort: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyPackagesStored {
    /// Unclaimed regular key packages this device now has.
    pub available: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPackageClaim {
    pub username: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimedKeyPackage {
    pub device: String,
    /// Base64 MLS KeyPackage.
    pub key_package: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WelcomeOut {
    pub username: String,
    pub device: String,
    /// Base64 MLS Welcome.
    pub welcome: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandshakeSend {
    /// The epoch this handshake is for: the room's current epoch.
    pub epoch: i64,
    /// Base64 MLS handshake message (a commit, say).
    pub message: String,
    #[serde(default)]
    pub welcomes: Vec<WelcomeOut>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HandshakeInfo {
    pub epoch: i64,
    pub sender: String,
    /// Base64.
    pub message: String,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HandshakeQuery {
    /// Handshakes from this epoch on.
    pub from_epoch: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WelcomeTake {
    pub device: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WelcomeInfo {
    pub room: String,
    pub epoch: i64,
    /// Base64 MLS Welcome.
    pub welcome: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectRoomRequest {
    pub username: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberAdd {
    pub username: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRoleUpdate {
    /// `moderator` or `member`.
    pub role: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberInfo {
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub joined_at_ms: i64,
    /// `online`, `away` or `offline`.
    pub presence: String,
    /// When the user was last connected, if ever (absent while online).
    pub last_seen_at_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageSend {
    /// Chosen by the client (a UUID, say); sending the same id again is answered with the
    /// stored message instead of a second copy.
    pub message_id: String,
    pub body: String,
    #[serde(default)]
    pub reply_to: Option<i64>,
    /// `message` (default), `edit` (new text for `target`, own messages), `delete` (empty
    /// body; own messages, or any as moderator), `reaction` / `unreaction` (one emoji).
    #[serde(default)]
    pub kind: Option<String>,
    /// The message an edit, delete or reaction is about.
    #[serde(default)]
    pub target: Option<i64>,
    /// Ids of attachments this sender uploaded to the room.
    #[serde(default)]
    pub attachments: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttachmentInfo {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    /// BLAKE3 of the content.
    pub blake3: String,
    pub uploader: String,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name as shown to members.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageInfo {
    pub room: String,
    pub seq: i64,
    pub message_id: String,
    pub sender: String,
    pub body: String,
    pub reply_to: Option<i64>,
    pub created_at_ms: i64,
    /// `message`, `edit`, `delete`, `reaction` or `unreaction`.
    pub kind: String,
    /// For everything but `message`: the message it is about.
    pub target: Option<i64>,
    /// The message was deleted: its body is gone, this entry is its tombstone.
    pub deleted: bool,
    pub edited_at_ms: Option<i64>,
    /// Attachment ids; download with `GET /v1/rooms/{room}/attachments/{id}`.
    pub attachments: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageSent {
    pub message: MessageInfo,
    /// True when this `message_id` had been sent before: nothing new was stored.
    pub duplicate: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Messages after this sequence number, oldest first.
    pub after: Option<i64>,
    /// Messages before this sequence number (the newest of them), oldest first.
    pub before: Option<i64>,
    /// At most this many (server maximum `chat.history_page_max`).
    pub limit: Option<usize>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to find (all of them, in any order).
    pub q: String,
    /// Only this room.
    pub room: Option<String>,
    pub limit: Option<usize>,
}

/// Where a device stands in one room when it resumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomCursor {
    pub room: String,
    /// The last sequence number this device has processed.
    pub seq: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomSynced {
    pub room: String,
    /// The device is now current up to here.
    pub last_seq: i64,
    /// It missed more than the server replays: page history to fill the gap.
    pub truncated: bool,
}

/// Frames a client sends on `/v1/ws`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Application-level ping; answered with `pong` carrying the same id.
    Ping { id: String },
    /// Who is this connection authenticated as?
    Whoami { id: String },
    /// Start chat delivery: replay what was missed after each cursor, then stream live.
    /// Rooms without a cursor start from their newest message.
    ChatSync {
        id: String,
        #[serde(default)]
        cursors: Vec<RoomCursor>,
    },
    /// Move the read marker of a room; the room's members receive `chat_read`.
    ChatRead { id: String, room: String, seq: i64 },
    /// Set this user `away` or back `online`; answered with `presence` to the user's contacts.
    SetPresence { id: String, status: String },
    /// The user is typing in a room (send every few seconds while typing); not answered.
    ChatTyping { room: String },
    /// Be told when a file space changes (`files_changed`), to fetch its change feed; `space`
    /// is the caller's own when absent. Answered with `files_watching`. One space per
    /// connection: a second `files_watch` replaces the first.
    FilesWatch {
        id: String,
        #[serde(default)]
        space: Option<String>,
    },
    /// Send a message; answered with `chat_ack`.
    ChatSend {
        id: String,
        room: String,
        message_id: String,
        body: String,
        #[serde(default)]
        reply_to: Option<i64>,
        /// As in `MessageSend`: `message` (default), `edit`, `delete`, `reaction`, `unreaction`.
        #[serde(default)]
        kind: Option<String>,
        #[serde(default)]
        target: Option<i64>,
        #[serde(default)]
        attachments: Vec<String>,
    },
}

/// Frames the server sends on `/v1/ws`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame after connecting.
    Hello {
        user: UserInfo,
        protocol: u32,
    },
    Pong {
        id: String,
    },
    Whoami {
        id: String,
        user: UserInfo,
    },
    /// A message was stored under `seq` (or had been, when `duplicate`).
    ChatAck {
        id: String,
        room: String,
        message_id: String,
        seq: i64,
        duplicate: bool,
    },
    /// `files_watch` took effect: changes to `space` after this are announced.
    FilesWatching {
        id: String,
        space: String,
    },
    /// The watched space changed; ask `/v1/files/changes` for what is new. Several changes
    /// in a row may be announced once.
    FilesChanged {
        space: String,
    },
    /// A message in one of the user's rooms, in room order, once per connection.
    ChatMessage {
        message: MessageInfo,
    },
    /// The replay after `chat_sync` is complete; live messages follow.
    ChatSynced {
        id: String,
        rooms: Vec<RoomSynced>,
    },
    /// A member's read marker moved (including this user's, from another device).
    ChatRead {
        room: String,
        user_id: String,
        username: String,
        seq: i64,
    },
    /// Someone who shares a room with this user went `online`, `away` or `offline`.
    Presence {
        user_id: String,
        username: String,
        status: String,
        last_seen_at_ms: Option<i64>,
    },
    /// An MLS handshake was accepted for `epoch`; fetch it from the room's handshake log.
    MlsHandshake {
        room: String,
        epoch: i64,
    },
    /// Another member is typing.
    ChatTyping {
        room: String,
        user_id: String,
        username: String,
    },
    /// The user joined a room (delivery for it starts after `last_seq`) or left one.
    ChatMembership {
        room: String,
        joined: bool,
        last_seq: i64,
    },
    /// A request frame failed; `id` is the request's id when it could be read.
    Error {
        id: Option<String>,
        code: String,
        message: String,
    },
}

/// A certificate's SHA-256 fingerprint as people compare them: uppercase hex pairs joined by `:`.
pub fn cert_fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    let hex = hex::encode_upper(digest);
    hex.as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// Why a client frame could not be decoded; `id` is the request id when it could be read, so the
/// error reply can still be matched to its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub id: Option<String>,
    pub message: String,
}

/// Decodes one text frame from a client. The transport bounds its size
/// (`limits.ws_message_size_bytes_max`); this never panics on any input.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    serde_json::from_str::<ClientFrame>(text).map_err(|e| FrameError {
        id: serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(String::from)),
        message: format!("bad frame: {e}"),
    })
}

/// The `/v1/ws` protocol version carried in `hello`.
pub const WS_PROTOCOL_VERSION: u32 = 1;

/// WebSocket close codes the server uses beyond RFC 6455's.
pub mod close_code {
    /// The session or token was revoked, expired, or the account disabled.
    pub const CREDENTIAL_REVOKED: u16 = 4001;
    /// The client did not keep up with its outbound queue.
    pub const SLOW_CONSUMER: u16 = 4008;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_json() {
        let f: ClientFrame = serde_json::from_str(r#"{"type":"ping","id":"1"}"#).unwrap();
        assert_eq!(f, ClientFrame::Ping { id: "1".into() });
        let out = serde_json::to_string(&ServerFrame::Pong { id: "1".into() }).unwrap();
        assert_eq!(out, r#"{"type":"pong","id":"1"}"#);
    }

    #[test]
    fn undecodable_frames_keep_their_id_when_readable() {
        let e = decode_client_frame(r#"{"type":"nope","id":"7"}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("7"));
        assert!(decode_client_frame("{").unwrap_err().id.is_none());
        assert_eq!(
            decode_client_frame(r#"{"type":"whoami","id":"w"}"#),
            Ok(ClientFrame::Whoami { id: "w".into() })
        );
    }

    #[test]
    fn request_debug_never_shows_passwords() {
        let r = LoginRequest {
            username: "a".into(),
            password: Secret::new("pw-visible?".into()),
        };
        assert!(!format!("{r:?}").contains("pw-visible?"));
    }
}

/// An alert as the alerting rules see it now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertInfo {
    /// `pending`, `firing` or `resolved`.
    pub state: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The expression's value when last evaluated.
    pub value: f64,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    /// Held back from notification by a silence right now.
    pub silenced: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RulesReloaded {
    pub groups: usize,
    pub rules: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceCreate {
    /// `name=value`, `name!=value`, `name=~regex`, `name!~regex`; all must match.
    pub matchers: Vec<String>,
    /// Default: now.
    #[serde(default)]
    pub starts_at_ms: Option<i64>,
    /// When it ends; or give `duration_secs`.
    #[serde(default)]
    pub ends_at_ms: Option<i64>,
    #[serde(default)]
    pub duration_secs: Option<u64>,
    #[serde(default)]
    pub comment: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SilenceInfo {
    pub id: String,
    pub matchers: Vec<String>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub created_by: String,
    pub comment: String,
    /// `active`, `pending` (starts later) or `expired`.
    pub state: String,
}
