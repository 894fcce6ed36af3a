//! Device twins: the state a user wants a device in (desired) and the state it reports.
//!
//! Both are JSON objects changed by merge patches (a field set to `null` is removed); each
//! top-level field remembers when it last changed. The desired document has a version: a
//! change may name the version it was based on and is refused (409) if the twin moved on
//! meanwhile. Remote configuration is desired state.
//!
//! MQTT side: when desired changes, the device gets `{"version":N,"delta":{…}}` on
//! `devices/<id>/twin/delta` (QoS 1), and the whole desired document, retained, on
//! `devices/<id>/twin/desired` (so a device that was away reads it on subscribing). The
//! device publishes merge patches of what it reports to `devices/<id>/twin/reported`.

use crate::mqtt::MqttBroker;
use sb_auth::Ctx;
use sb_core::{DeviceId, UnixMillis};
use sb_devices::{Devices, DevicesError};
use sb_mqtt::broker::Message;
use sb_mqtt::codec::{Properties, QoS};
use sb_proto::TwinInfo;
use sb_store::StoreError;
use sb_store::devices::{DevicesStore, TwinRecord};
use serde_json::{Map, Value};
use std::sync::{Arc, OnceLock, Weak};

pub struct Twins {
    store: Arc<dyn DevicesStore>,
    devices: Arc<Devices>,
    broker: OnceLock<Weak<MqttBroker>>,
    /// `mqtt.twin_bytes_max`.
    bytes_max: usize,
}

fn object(s: &str) -> Map<String, Value> {
    match serde_json::from_str(s) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Applies a merge patch to `doc` (top level; `null` removes), stamping changed fields in
/// `meta`; returns what changed.
pub fn merge(
    doc: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    now: UnixMillis,
) -> Map<String, Value> {
    let mut changed = Map::new();
    for (k, v) in patch {
        if v.is_null() {
            if doc.remove(k).is_some() {
                meta.remove(k);
                changed.insert(k.clone(), Value::Null);
            }
        } else if doc.get(k) != Some(v) {
            doc.insert(k.clone(), v.clone());
            meta.insert(k.clone(), Value::from(now.0));
            changed.insert(k.clone(), v.clone());
        }
    }
    changed
}

fn empty(device: DeviceId) -> TwinRecord {
    TwinRecord {
        device_id: device,
        desired: "{}".into(),
        desired_meta: "{}".into(),
        desired_version: 0,
        reported: "{}".into(),
        reported_meta: "{}".into(),
        reported_version: 0,
    }
}

/// The firmware version a twin's reported state names: `"firmware": "1.2.0"`, or
/// `"firmware": {"version": "1.2.0", …}` as devices updated by a rollout report it.
pub fn reported_firmware(t: &TwinRecord) -> Option<String> {
    let reported: serde_json::Value = serde_json::from_str(&t.reported).ok()?;
    match reported.get("firmware")? {
        serde_json::Value::String(v) => Some(v.clone()),
        other => other.get("version")?.as_str().map(str::to_string),
    }
}

pub fn info(t: &TwinRecord) -> TwinInfo {
    let (desired, reported) = (object(&t.desired), object(&t.reported));
    let delta: Map<String, Value> = desired
        .iter()
        .filter(|(k, v)| reported.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let times = |s: &str| {
        object(s)
            .into_iter()
            .filter_map(|(k, v)| v.as_i64().map(|t| (k, t)))
            .collect()
    };
    TwinInfo {
        device_id: t.device_id.to_string(),
        desired: Value::Object(desired),
        reported: Value::Object(reported),
        desired_version: t.desired_version,
        reported_version: t.reported_version,
        desired_updated_ms: times(&t.desired_meta),
        reported_updated_ms: times(&t.reported_meta),
        delta: Value::Object(delta),
    }
}

impl Twins {
    pub fn new(store: Arc<dyn DevicesStore>, devices: Arc<Devices>, bytes_max: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            devices,
            broker: OnceLock::new(),
            bytes_max,
        })
    }

    pub fn set_broker(&self, broker: &Arc<MqttBroker>) {
        let _ = self.broker.set(Arc::downgrade(broker));
    }

    async fn load(&self, device: DeviceId) -> Result<TwinRecord, DevicesError> {
        Ok(self
            .store
            .twin(device)
            .await?
            .unwrap_or_else(|| empty(device)))
    }

    pub async fn get(&self, cx: Ctx<'_>, key: &str) -> Result<TwinRecord, DevicesError> {
        let d = self.devices.get(cx, key).await?;
        self.load(d.id).await
    }

    /// Changes desired state by a merge patch, if the twin is still at `version` (when given).
    pub async fn set_desired(
        &self,
        cx: Ctx<'_>,
        key: &str,
        patch: &Map<String, Value>,
        version: Option<i64>,
    ) -> Result<TwinRecord, DevicesError> {
        let d = self.devices.get_for_update(cx, key).await?;
        self.apply_desired(&d, patch, version, cx.now).await
    }

    /// Changes desired state for the server itself (a firmware rollout), with no caller to
    /// authorize: whoever started the work was authorized then.
    pub async fn apply_desired(
        &self,
        d: &sb_store::devices::DeviceRecord,
        patch: &Map<String, Value>,
        version: Option<i64>,
        now: UnixMillis,
    ) -> Result<TwinRecord, DevicesError> {
        let mut t = self.load(d.id).await?;
        let base = t.desired_version;
        if let Some(v) = version.filter(|v| *v != base) {
            return Err(DevicesError::Conflict(format!(
                "the twin of {} is at desired version {base}, not {v}; read it again and retry",
                d.name
            )));
        }
        let (mut desired, mut meta) = (object(&t.desired), object(&t.desired_meta));
        let changed = merge(&mut desired, &mut meta, patch, now);
        if changed.is_empty() {
            return Ok(t);
        }
        t.desired = Value::Object(desired.clone()).to_string();
        if t.desired.len() > self.bytes_max {
            return Err(DevicesError::Invalid(format!(
                "the desired document would be {} bytes, over {} (mqtt.twin_bytes_max)",
                t.desired.len(),
                self.bytes_max
            )));
        }
        t.desired_meta = Value::Object(meta).to_string();
        t.desired_version = base + 1;
        match self.store.put_twin(t.clone(), base).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(DevicesError::Conflict(format!(
                    "the twin of {} changed meanwhile; read it again and retry",
                    d.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.announce(d.id, t.desired_version, &changed, &desired)
            .await;
        Ok(t)
    }

    /// Tells the device: the delta, and the whole desired document retained.
    async fn announce(
        &self,
        device: DeviceId,
        version: i64,
        delta: &Map<String, Value>,
        desired: &Map<String, Value>,
    ) {
        let Some(broker) = self.broker.get().and_then(Weak::upgrade) else {
            return;
        };
        for (topic, body, retain) in [
            (
                format!("devices/{device}/twin/delta"),
                serde_json::json!({"version": version, "delta": delta}),
                false,
            ),
            (
                format!("devices/{device}/twin/desired"),
                serde_json::json!({"version": version, "desired": desired}),
                true,
            ),
        ] {
            let msg = Message {
                topic: topic.into(),
                payload: body.to_string().into_bytes().into(),
                qos: QoS::AtLeastOnce,
                retain,
                properties: Properties {
                    content_type: Some("application/json".into()),
                    ..Properties::default()
                },
                expires_at: None,
                from: "$server".into(),
            };
            if let Err(e) = broker.publish(msg).await {
                tracing::error!(error = %e, "announcing a twin change failed");
            }
        }
    }

    /// A device's report (a merge patch of its reported state).
    pub async fn on_reported(&self, device: DeviceId, payload: &[u8]) {
        let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(payload) else {
            tracing::debug!(%device, "a twin report that is not a JSON object");
            return;
        };
        // Read-modify-write; a desired change in between is retried over.
        for _ in 0..3 {
            let Ok(mut t) = self.load(device).await else {
                return;
            };
            let (mut reported, mut meta) = (object(&t.reported), object(&t.reported_meta));
            if merge(&mut reported, &mut meta, &patch, crate::now()).is_empty() {
                return;
            }
            t.reported = Value::Object(reported).to_string();
            if t.reported.len() > self.bytes_max {
                tracing::debug!(%device, "a twin report past mqtt.twin_bytes_max, ignored");
                return;
            }
            t.reported_meta = Value::Object(meta).to_string();
            t.reported_version += 1;
            let base = t.desired_version;
            match self.store.put_twin(t, base).await {
                Ok(()) => return,
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "storing a twin report failed");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_set_change_and_remove_fields() {
        let mut doc = object(r#"{"a":1,"b":2}"#);
        let mut meta = Map::new();
        let changed = merge(
            &mut doc,
            &mut meta,
            &object(r#"{"a":1,"b":3,"c":null,"d":{"x":1}}"#),
            UnixMillis(7),
        );
        assert_eq!(
            Value::Object(changed),
            serde_json::json!({"b":3,"d":{"x":1}})
        );
        assert_eq!(meta.get("b"), Some(&Value::from(7)));
        assert!(!meta.contains_key("a"), "unchanged fields keep their time");
        let changed = merge(&mut doc, &mut meta, &object(r#"{"a":null}"#), UnixMillis(8));
        assert_eq!(Value::Object(changed), serde_json::json!({"a":null}));
        assert_eq!(Value::Object(doc), serde_json::json!({"b":3,"d":{"x":1}}));
    }

    #[test]
    fn the_reported_firmware_is_a_version_or_an_object_with_one() {
        let twin = |reported: &str| TwinRecord {
            device_id: sb_core::DeviceId::new_at(UnixMillis(1)),
            desired: "{}".into(),
            desired_meta: "{}".into(),
            desired_version: 0,
            reported: reported.into(),
            reported_meta: "{}".into(),
            reported_version: 0,
        };
        let of = |r: &str| reported_firmware(&twin(r));
        assert_eq!(of(r#"{"firmware":"1.2.0"}"#).as_deref(), Some("1.2.0"));
        assert_eq!(
            of(r#"{"firmware":{"version":"2.0.0","url":"/x"}}"#).as_deref(),
            Some("2.0.0")
        );
        assert_eq!(of(r#"{"firmware":{"url":"/x"}}"#), None);
        assert_eq!(of(r#"{"temperature":3}"#), None);
        assert_eq!(of("not json"), None);
    }
}
