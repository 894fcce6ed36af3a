//! The device registry and the topic rules devices live by.
//!
//! A device is registered by a user (its owner) with a name, a group and tags, and gets an id
//! and a secret once (`sbd_…`, 256 random bits; only its SHA-256 is kept). On MQTT it connects
//! with user name = its id and password = its secret. Its topics are its own namespace
//! `devices/<id>/…` plus the filters its group is granted in `mqtt.group_topics`; every
//! publish and subscribe is decided by `authorize` with [`topic_resource`]'s facts.
//! Revoking a device announces it on the auth bus under its credential topic, which closes
//! its connection at once.

pub mod firmware;
pub mod telemetry;

use sb_auth::{Action, Auth, AuthError, AuthEvent, Credential, Ctx, Resource, Subject};
use sb_core::config::MqttConfig;
use sb_core::{DeviceId, ErrorCode, Role, Secret, UnixMillis};
use sb_store::StoreError;
use sb_store::devices::{DeviceRecord, DevicesStore};
use serde_json::json;
use std::sync::Arc;

/// Device secrets start with this.
pub const SECRET_PREFIX: &str = "sbd_";

#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("storage: {0}")]
    Internal(String),
}

impl DevicesError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DevicesError::Auth(a) => a.code(),
            DevicesError::Invalid(_) => ErrorCode::InvalidArgument,
            DevicesError::NotFound(_) => ErrorCode::NotFound,
            DevicesError::Conflict(_) => ErrorCode::Conflict,
            DevicesError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<StoreError> for DevicesError {
    fn from(e: StoreError) -> Self {
        DevicesError::Internal(e.to_string())
    }
}

pub type Result<T, E = DevicesError> = std::result::Result<T, E>;

/// The namespace of a device's own topics.
pub fn device_prefix(id: DeviceId) -> String {
    format!("devices/{id}/")
}

/// The facts `authorize` needs about `topic` (a name, or a filter without its share prefix)
/// for `subject`. A filter counts as inside a namespace only if everything it can match is.
pub fn topic_resource(
    subject: &Subject,
    device: Option<&DeviceRecord>,
    owned_devices: &[DeviceId],
    topic: &str,
    cfg: &MqttConfig,
) -> Resource {
    let within = |prefix: &str| {
        topic
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty())
    };
    let (own_namespace, group_grant) = match (&subject.credential, device) {
        (Credential::Device(id), Some(d)) => (
            within(&device_prefix(*id)),
            cfg.group_topics
                .get(&d.group)
                .is_some_and(|filters| filters.iter().any(|f| filter_covers(f, topic))),
        ),
        _ => (within(&format!("users/{}/", subject.username)), false),
    };
    let owned_device = owned_devices.iter().any(|id| within(&device_prefix(*id)));
    Resource::MqttTopic {
        own_namespace,
        group_grant,
        owned_device,
    }
}

/// Whether granted filter `grant` allows `topic` (a name or a filter): every topic `topic`
/// can match must be matched by `grant`.
pub fn filter_covers(grant: &str, topic: &str) -> bool {
    let mut g = grant.split('/');
    let mut t = topic.split('/');
    loop {
        match (g.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

pub struct Devices {
    store: Arc<dyn DevicesStore>,
    auth: Arc<Auth>,
    cfg: MqttConfig,
}

fn check_name(kind: &str, s: &str, allow_empty: bool) -> Result<()> {
    if (s.is_empty() && !allow_empty)
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(DevicesError::Invalid(format!(
            "{kind} {s:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

impl Devices {
    pub fn new(store: Arc<dyn DevicesStore>, auth: Arc<Auth>, cfg: MqttConfig) -> Self {
        Self { store, auth, cfg }
    }

    pub fn config(&self) -> &MqttConfig {
        &self.cfg
    }

    /// Registers a device owned by the caller; its record and its secret (shown once).
    pub async fn register(
        &self,
        cx: Ctx<'_>,
        name: &str,
        group: &str,
        mut tags: Vec<(String, String)>,
    ) -> Result<(DeviceRecord, Secret<String>)> {
        self.auth
            .authorize(cx, Action::Create, &Resource::Devices { owner: None })
            .await?;
        check_name("device name", name, false)?;
        check_name("group", group, true)?;
        for (k, v) in &tags {
            check_name("tag name", k, false)?;
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(DevicesError::Invalid(format!(
                    "tag {k}: value too long or not printable"
                )));
            }
        }
        tags.sort();
        tags.dedup_by(|a, b| a.0 == b.0);
        let secret = sb_auth::token::generate(SECRET_PREFIX);
        let d = DeviceRecord {
            id: DeviceId::new_at(cx.now),
            name: name.to_string(),
            group: group.to_string(),
            tags,
            secret_hash: sb_auth::token::hash(secret.expose()),
            owner: cx.subject.user_id,
            created_at: cx.now,
            revoked_at: None,
            last_seen_at: None,
            health: None,
            health_at: None,
        };
        match self.store.create_device(d.clone()).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(DevicesError::Conflict(format!(
                    "a device called {name} exists; pick another name"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.auth
            .record(
                cx,
                "device.register",
                d.id.to_string(),
                json!({"name": name, "group": group}),
            )
            .await?;
        Ok((d, secret))
    }

    /// The caller's devices (every device, for an admin).
    pub async fn list(&self, cx: Ctx<'_>) -> Result<Vec<DeviceRecord>> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Devices { owner: None })
            .await?;
        let all = self.store.devices().await?;
        Ok(if cx.subject.role == Role::Admin {
            all
        } else {
            all.into_iter()
                .filter(|d| d.owner == cx.subject.user_id)
                .collect()
        })
    }

    /// A device by id or name, if the caller may see it.
    pub async fn get(&self, cx: Ctx<'_>, key: &str) -> Result<DeviceRecord> {
        let found = match key.parse::<DeviceId>() {
            Ok(id) => self.store.device(id).await?,
            Err(_) => self.store.device_by_name(key).await?,
        };
        match found {
            Some(d) if d.owner == cx.subject.user_id || cx.subject.role == Role::Admin => Ok(d),
            _ => Err(DevicesError::NotFound(format!("no device {key} of yours"))),
        }
    }

    /// A device by id or name that the caller may change (its owner, or an admin).
    pub async fn get_for_update(&self, cx: Ctx<'_>, key: &str) -> Result<DeviceRecord> {
        let d = self.get(cx, key).await?;
        self.auth
            .authorize(
                cx,
                Action::Update,
                &Resource::Devices {
                    owner: Some(d.owner),
                },
            )
            .await?;
        Ok(d)
    }

    /// A new secret for a device; the old one stops working (and its connection closes).
    pub async fn rotate(&self, cx: Ctx<'_>, key: &str) -> Result<(DeviceRecord, Secret<String>)> {
        let d = self.get_for_update(cx, key).await?;
        if d.revoked_at.is_some() {
            return Err(DevicesError::Conflict(format!("{} is revoked", d.name)));
        }
        let secret = sb_auth::token::generate(SECRET_PREFIX);
        self.store
            .set_device_secret(d.id, sb_auth::token::hash(secret.expose()))
            .await?;
        self.kick(d.id);
        self.auth
            .record(
                cx,
                "device.rotate",
                d.id.to_string(),
                json!({"name": d.name}),
            )
            .await?;
        let d = self.get(cx, &d.id.to_string()).await?;
        Ok((d, secret))
    }

    /// Revokes a device for good: its connection closes at once and it cannot connect again.
    pub async fn revoke(&self, cx: Ctx<'_>, key: &str) -> Result<DeviceRecord> {
        let d = self.get(cx, key).await?;
        self.auth
            .authorize(
                cx,
                Action::Delete,
                &Resource::Devices {
                    owner: Some(d.owner),
                },
            )
            .await?;
        self.store.revoke_device(d.id, cx.now).await?;
        self.kick(d.id);
        self.auth
            .record(
                cx,
                "device.revoke",
                d.id.to_string(),
                json!({"name": d.name}),
            )
            .await?;
        self.get(cx, &d.id.to_string()).await
    }

    fn kick(&self, id: DeviceId) {
        self.auth.bus().publish(
            &sb_auth::credential_topic(&id.to_string()),
            AuthEvent::CredentialRevoked,
        );
    }

    /// The device with this id and secret, if it is not revoked: its record and the subject
    /// it acts as.
    pub async fn authenticate(&self, id: &str, secret: &[u8]) -> Option<(DeviceRecord, Subject)> {
        let id: DeviceId = id.parse().ok()?;
        if secret.len() > sb_auth::token::TOKEN_LENGTH_MAX {
            return None;
        }
        let secret = std::str::from_utf8(secret).ok()?;
        let d = self.store.device(id).await.ok()??;
        if sb_auth::token::hash(secret) != d.secret_hash {
            return None;
        }
        self.acting(d).await
    }

    /// A device that is not revoked, and the subject it acts as (its owner's, narrowed to
    /// the device's credential).
    async fn acting(&self, d: DeviceRecord) -> Option<(DeviceRecord, Subject)> {
        if d.revoked_at.is_some() {
            return None;
        }
        let owner = self.auth.store().user_by_id(d.owner).await.ok()??;
        let subject = Subject {
            user_id: owner.id,
            username: d.name.clone(),
            role: owner.role,
            credential: Credential::Device(d.id),
        };
        Some((d, subject))
    }

    /// The device whose current client certificate has this SHA-256 (not revoked, not
    /// expired), and the subject it acts as.
    pub async fn authenticate_cert(
        &self,
        fingerprint: &str,
        now: UnixMillis,
    ) -> Option<(DeviceRecord, Subject)> {
        let (id, expires_at) = self.store.device_by_cert(fingerprint).await.ok()??;
        if expires_at <= now {
            return None;
        }
        let d = self.store.device(id).await.ok()??;
        self.acting(d).await
    }

    /// Records the client certificate just issued to a device (of the caller's, or any for an
    /// admin): it replaces the one before.
    pub async fn set_cert(
        &self,
        cx: Ctx<'_>,
        key: &str,
        issue: impl FnOnce(&DeviceRecord) -> std::result::Result<(String, UnixMillis), String>,
    ) -> Result<DeviceRecord> {
        let d = self.get_for_update(cx, key).await?;
        if d.revoked_at.is_some() {
            return Err(DevicesError::Conflict(format!("{} is revoked", d.name)));
        }
        let (fingerprint, expires_at) = issue(&d).map_err(DevicesError::Internal)?;
        self.store
            .set_device_cert(d.id, fingerprint, cx.now, expires_at)
            .await?;
        self.auth
            .record(
                cx,
                "device.certificate",
                d.id.to_string(),
                serde_json::json!({"name": d.name}),
            )
            .await?;
        Ok(d)
    }

    /// Ids of the devices a user registered.
    pub async fn owned_by(&self, subject: &Subject) -> Result<Vec<DeviceId>> {
        Ok(self
            .store
            .devices()
            .await?
            .into_iter()
            .filter(|d| d.owner == subject.user_id && d.revoked_at.is_none())
            .map(|d| d.id)
            .collect())
    }

    /// A device's health report (a JSON value, at most 4 KiB).
    pub async fn health(&self, id: DeviceId, report: &[u8], at: UnixMillis) {
        if report.len() > 4096 || serde_json::from_slice::<serde_json::Value>(report).is_err() {
            tracing::debug!(device = %id, "a health report that is not JSON (or over 4 KiB)");
            return;
        }
        let text = String::from_utf8_lossy(report).into_owned();
        if let Err(e) = self.store.device_health(id, text, at).await {
            tracing::warn!(error = %e, "recording a health report failed");
        }
    }

    /// `healthy`, `unhealthy` (its last report is older than `mqtt.health_interval_secs`) or
    /// `unknown` (it never reported).
    pub fn health_state(&self, d: &DeviceRecord, now: UnixMillis) -> &'static str {
        match d.health_at {
            None => "unknown",
            Some(t) if now.0 - t.0 <= self.cfg.health_interval_secs as i64 * 1000 => "healthy",
            Some(_) => "unhealthy",
        }
    }

    /// Every device (for the status metrics).
    pub async fn all(&self) -> Result<Vec<DeviceRecord>> {
        Ok(self.store.devices().await?)
    }

    pub async fn seen(&self, id: DeviceId, at: UnixMillis) {
        if let Err(e) = self.store.device_seen(id, at).await {
            tracing::warn!(error = %e, "recording a device as seen failed");
        }
    }

    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_covers_only_what_it_matches_entirely() {
        assert!(filter_covers("fleet/#", "fleet/a/b"));
        assert!(filter_covers("fleet/#", "fleet/+/b"));
        assert!(filter_covers("fleet/+/t", "fleet/x/t"));
        assert!(!filter_covers("fleet/+/t", "fleet/#"));
        assert!(!filter_covers("fleet/+/t", "fleet/+/+"));
        assert!(filter_covers("fleet/+/t", "fleet/+/t"));
        assert!(!filter_covers("fleet/a", "fleet/b"));
        assert!(!filter_covers("fleet/a", "#"));
    }
}
