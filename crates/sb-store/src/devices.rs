//! Devices storage: the registry of devices (name, group, tags, owner) with the SHA-256 of
//! each one's secret, and when each was last seen.

use crate::Result;
use async_trait::async_trait;
use sb_core::{CommandId, DeviceId, RolloutId, UnixMillis, UserId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub name: String,
    pub group: String,
    /// `key=value` pairs, sorted by key.
    pub tags: Vec<(String, String)>,
    /// SHA-256 of the device's secret.
    pub secret_hash: [u8; 32],
    pub owner: UserId,
    pub created_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
    pub last_seen_at: Option<UnixMillis>,
    /// The device's last health report (JSON) and when it came.
    pub health: Option<String>,
    pub health_at: Option<UnixMillis>,
}

/// A command (direct method) to a device and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    pub id: CommandId,
    pub device_id: DeviceId,
    pub method: String,
    /// JSON.
    pub payload: String,
    /// queued, sent, succeeded, failed, timed_out or expired.
    pub state: String,
    pub created_by: UserId,
    pub created_at: UnixMillis,
    /// Not sent by then (the device away): expired.
    pub expires_at: UnixMillis,
    /// Sent and not answered within this: timed out.
    pub timeout_ms: i64,
    pub sent_at: Option<UnixMillis>,
    pub finished_at: Option<UnixMillis>,
    /// The device's answer: a status and a JSON result.
    pub status: Option<i64>,
    pub result: Option<String>,
}

/// A device twin: the desired and reported documents (JSON objects), when each top-level field
/// last changed, and a version of each (the desired one is compare-and-set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwinRecord {
    pub device_id: DeviceId,
    pub desired: String,
    pub desired_meta: String,
    pub desired_version: i64,
    pub reported: String,
    pub reported_meta: String,
    pub reported_version: i64,
}

/// A firmware image: its bytes are one blob; the signature is the operator's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareRecord {
    pub version: String,
    pub size: u64,
    pub sha256: String,
    pub blob: [u8; 32],
    pub signature: String,
    pub public_key: String,
    pub created_by: UserId,
    pub created_at: UnixMillis,
}

/// A firmware rollout: a version sent to a group's devices batch by batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutRecord {
    pub id: RolloutId,
    pub version: String,
    pub group: String,
    /// running, halted, completed or cancelled.
    pub state: String,
    /// Devices per batch.
    pub batch_size: u32,
    /// Failures allowed; one more halts the rollout.
    pub max_failures: u32,
    /// A device in one state longer than this has failed.
    pub step_timeout_ms: i64,
    /// The batch being sent (0-based).
    pub current_batch: u32,
    /// Why it halted or was cancelled.
    pub reason: Option<String>,
    pub created_by: UserId,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// One device of a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutTarget {
    pub rollout_id: RolloutId,
    pub device_id: DeviceId,
    pub name: String,
    pub batch: u32,
    /// pending, notified, downloading, downloaded, verified, updating, updated or failed.
    pub state: String,
    /// Why it failed.
    pub reason: Option<String>,
    /// Since when it is in this state.
    pub since: UnixMillis,
}

#[async_trait]
pub trait DevicesStore: Send + Sync + 'static {
    /// Registers a device; `Conflict` if the name is taken.
    async fn create_device(&self, d: DeviceRecord) -> Result<()>;
    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>>;
    async fn device_by_name(&self, name: &str) -> Result<Option<DeviceRecord>>;
    /// All devices, by name.
    async fn devices(&self) -> Result<Vec<DeviceRecord>>;
    /// A new secret (the old one stops working); `NotFound` if there is no such device.
    async fn set_device_secret(&self, id: DeviceId, secret_hash: [u8; 32]) -> Result<()>;
    /// Revokes a device for good; `NotFound` if there is no such device.
    async fn revoke_device(&self, id: DeviceId, at: UnixMillis) -> Result<()>;
    async fn device_seen(&self, id: DeviceId, at: UnixMillis) -> Result<()>;
    async fn device_health(&self, id: DeviceId, report: String, at: UnixMillis) -> Result<()>;
    /// Creates or updates a command.
    async fn put_command(&self, c: CommandRecord) -> Result<()>;
    async fn command(&self, id: CommandId) -> Result<Option<CommandRecord>>;
    /// Commands still queued or sent, oldest first.
    async fn open_commands(&self) -> Result<Vec<CommandRecord>>;
    async fn twin(&self, device: DeviceId) -> Result<Option<TwinRecord>>;
    /// Writes a twin if its stored desired version is still `expect_desired` (0: no twin
    /// yet); `Conflict` otherwise.
    async fn put_twin(&self, t: TwinRecord, expect_desired: i64) -> Result<()>;
    /// Adds a firmware version; `Conflict` if that version exists.
    async fn create_firmware(&self, f: FirmwareRecord) -> Result<()>;
    async fn firmware(&self, version: &str) -> Result<Option<FirmwareRecord>>;
    /// Every firmware version, newest first.
    async fn firmwares(&self) -> Result<Vec<FirmwareRecord>>;
    /// Records a device's client certificate (by SHA-256), replacing the one before;
    /// `NotFound` if the device does not exist or is revoked.
    async fn set_device_cert(
        &self,
        id: DeviceId,
        sha256: String,
        issued_at: UnixMillis,
        expires_at: UnixMillis,
    ) -> Result<()>;
    /// The device whose current certificate has this SHA-256 (and when it expires).
    async fn device_by_cert(&self, sha256: &str) -> Result<Option<(DeviceId, UnixMillis)>>;
    /// Adds a rollout and its devices in one transaction.
    async fn create_rollout(&self, r: RolloutRecord, targets: Vec<RolloutTarget>) -> Result<()>;
    /// Writes a rollout's state (state, batch, reason, failure budget) and the given devices'
    /// states in one transaction;
    /// `NotFound` if there is no such rollout.
    async fn update_rollout(&self, r: RolloutRecord, targets: Vec<RolloutTarget>) -> Result<()>;
    /// A rollout and its devices (in batch order, then by name).
    async fn rollout(&self, id: RolloutId) -> Result<Option<(RolloutRecord, Vec<RolloutTarget>)>>;
    /// Every rollout, newest first.
    async fn rollouts(&self) -> Result<Vec<RolloutRecord>>;
    /// Rollouts that are running or halted, with their devices: what a restart picks up.
    async fn open_rollouts(&self) -> Result<Vec<(RolloutRecord, Vec<RolloutTarget>)>>;
}
