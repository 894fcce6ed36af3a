//! Commands (direct methods): a user asks a device to do something and gets its answer.
//!
//! Topic convention (MQTT 3.1.1 and 5.0 alike): the device subscribes to
//! `devices/<id>/commands/#`; a command arrives on `devices/<id>/commands/<method>/<command id>`
//! with its JSON payload (MQTT 5 adds the response topic and the command id as correlation
//! data); the device answers on `devices/<id>/responses/<command id>` with
//! `{"status": 200, "result": …}` (any other JSON is taken as the result, status 200). A
//! status below 400 is success.
//!
//! States: `queued` (the device is not listening) → `sent` → `succeeded` | `failed` |
//! `timed_out` (no answer within the timeout); a queued command not taken by its expiry is
//! `expired`. Every change is stored, and open commands are picked up again after a restart.

use crate::mqtt::MqttBroker;
use sb_auth::Ctx;
use sb_core::config::MqttConfig;
use sb_core::{CommandId, DeviceId, UnixMillis};
use sb_devices::{Devices, DevicesError};
use sb_mqtt::broker::Message;
use sb_mqtt::codec::{Properties, QoS};
use sb_store::devices::{CommandRecord, DevicesStore};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

pub struct Commands {
    store: Arc<dyn DevicesStore>,
    devices: Arc<Devices>,
    broker: OnceLock<Weak<MqttBroker>>,
    /// Commands queued or sent, by id.
    open: Mutex<HashMap<CommandId, CommandRecord>>,
    /// Devices subscribed to their commands right now.
    listening: Mutex<HashSet<DeviceId>>,
    /// Devices connected right now (connections each).
    connected: Mutex<HashMap<DeviceId, usize>>,
    /// Rung on every state change, for waiters.
    changed: Notify,
    cfg: MqttConfig,
}

fn now() -> UnixMillis {
    crate::now()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn is_final(state: &str) -> bool {
    !matches!(state, "queued" | "sent")
}

impl Commands {
    pub fn new(store: Arc<dyn DevicesStore>, devices: Arc<Devices>, cfg: MqttConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            devices,
            broker: OnceLock::new(),
            open: Mutex::new(HashMap::new()),
            listening: Mutex::new(HashSet::new()),
            connected: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            cfg,
        })
    }

    pub fn set_broker(&self, broker: &Arc<MqttBroker>) {
        let _ = self.broker.set(Arc::downgrade(broker));
    }

    pub fn is_online(&self, id: DeviceId) -> bool {
        lock(&self.connected).get(&id).is_some_and(|n| *n > 0)
    }

    /// Picks up the commands still open at the last stop: their timers start again.
    pub async fn restore(self: &Arc<Self>) -> Result<usize, DevicesError> {
        let open = self.store.open_commands().await?;
        let n = open.len();
        for c in open {
            lock(&self.open).insert(c.id, c.clone());
            self.arm(&c);
        }
        Ok(n)
    }

    /// The timer for a command's next deadline: its expiry while queued, its timeout once sent.
    fn arm(self: &Arc<Self>, c: &CommandRecord) {
        let (deadline, state) = match c.state.as_str() {
            "queued" => (c.expires_at.0, "expired"),
            "sent" => (
                c.sent_at.unwrap_or(c.created_at).0 + c.timeout_ms,
                "timed_out",
            ),
            _ => return,
        };
        let (me, id, from) = (self.clone(), c.id, c.state.clone());
        tokio::spawn(async move {
            let wait = (deadline - now().0).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            me.finish_if(id, &from, state, None, None).await;
        });
    }

    /// Moves a command from state `from` to final state `to` (if it is still in `from`).
    async fn finish_if(
        &self,
        id: CommandId,
        from: &str,
        to: &str,
        status: Option<i64>,
        result: Option<String>,
    ) {
        let rec = {
            let mut open = lock(&self.open);
            match open.get(&id) {
                Some(c) if c.state == from => {
                    let mut c = open.remove(&id).unwrap_or_else(|| unreachable!());
                    c.state = to.to_string();
                    c.finished_at = Some(now());
                    c.status = status;
                    c.result = result;
                    c
                }
                _ => return,
            }
        };
        if let Err(e) = self.store.put_command(rec).await {
            tracing::error!(error = %e, "storing a command's outcome failed");
        }
        self.changed.notify_waiters();
    }

    /// Queues a command for a device (of the caller's, or any for an admin) and sends it if
    /// the device is listening.
    pub async fn create(
        self: &Arc<Self>,
        cx: Ctx<'_>,
        device: &str,
        req: &sb_proto::CommandCreate,
    ) -> Result<CommandRecord, DevicesError> {
        let d = self.devices.get_for_update(cx, device).await?;
        if d.revoked_at.is_some() {
            return Err(DevicesError::Conflict(format!("{} is revoked", d.name)));
        }
        if req.method.is_empty()
            || req.method.len() > 64
            || !req
                .method
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(DevicesError::Invalid(
                "a method name is 1 to 64 letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let payload = serde_json::to_string(&req.payload).unwrap_or_else(|_| "null".into());
        if payload.len() > self.cfg.command_payload_bytes_max {
            return Err(DevicesError::Invalid(format!(
                "the payload is over {} bytes (mqtt.command_payload_bytes_max)",
                self.cfg.command_payload_bytes_max
            )));
        }
        let timeout = req.timeout_secs.unwrap_or(30);
        let expiry = req.expires_in_secs.unwrap_or(timeout);
        if timeout == 0 || timeout > self.cfg.command_timeout_max_secs {
            return Err(DevicesError::Invalid(format!(
                "timeout: 1 to {} seconds (mqtt.command_timeout_max_secs)",
                self.cfg.command_timeout_max_secs
            )));
        }
        if expiry > self.cfg.command_expiry_max_secs {
            return Err(DevicesError::Invalid(format!(
                "expiry: at most {} seconds (mqtt.command_expiry_max_secs)",
                self.cfg.command_expiry_max_secs
            )));
        }
        let open_for_device = lock(&self.open)
            .values()
            .filter(|c| c.device_id == d.id)
            .count();
        if open_for_device >= self.cfg.commands_open_per_device_max {
            return Err(DevicesError::Conflict(format!(
                "{} already has {open_for_device} commands waiting (mqtt.commands_open_per_device_max); \
                 wait for them to finish or expire",
                d.name
            )));
        }
        let at = now();
        let rec = CommandRecord {
            id: CommandId::new_at(at),
            device_id: d.id,
            method: req.method.clone(),
            payload,
            state: "queued".into(),
            created_by: cx.subject.user_id,
            created_at: at,
            expires_at: UnixMillis(at.0 + expiry as i64 * 1000),
            timeout_ms: timeout as i64 * 1000,
            sent_at: None,
            finished_at: None,
            status: None,
            result: None,
        };
        self.store.put_command(rec.clone()).await?;
        lock(&self.open).insert(rec.id, rec.clone());
        self.arm(&rec);
        if lock(&self.listening).contains(&d.id) {
            self.send(rec.id).await;
        }
        Ok(self.current(rec.id).await?.unwrap_or(rec))
    }

    /// Publishes a queued command to its device and starts its timeout.
    async fn send(self: &Arc<Self>, id: CommandId) {
        let rec = {
            let mut open = lock(&self.open);
            let Some(c) = open.get_mut(&id).filter(|c| c.state == "queued") else {
                return;
            };
            c.state = "sent".into();
            c.sent_at = Some(now());
            c.clone()
        };
        if let Err(e) = self.store.put_command(rec.clone()).await {
            tracing::error!(error = %e, "storing a sent command failed");
        }
        self.arm(&rec);
        let Some(broker) = self.broker.get().and_then(Weak::upgrade) else {
            return;
        };
        let device = rec.device_id;
        let msg = Message {
            topic: format!("devices/{device}/commands/{}/{}", rec.method, rec.id).into(),
            payload: rec.payload.clone().into_bytes().into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties {
                response_topic: Some(format!("devices/{device}/responses/{}", rec.id)),
                correlation_data: Some(rec.id.to_string().into_bytes().into()),
                content_type: Some("application/json".into()),
                payload_format_utf8: Some(true),
                ..Properties::default()
            },
            expires_at: None,
            from: "$server".into(),
        };
        if let Err(e) = broker.publish(msg).await {
            tracing::error!(error = %e, "publishing a command failed");
        }
        self.changed.notify_waiters();
    }

    /// A device subscribed: if the filter covers its commands, it is listening, and what was
    /// queued for it goes out.
    pub async fn on_subscribed(self: &Arc<Self>, device: DeviceId, filter: &str) {
        let probe = format!("devices/{device}/commands/m/c");
        if !sb_mqtt::topic::matches(filter, &probe) {
            return;
        }
        lock(&self.listening).insert(device);
        let queued: Vec<CommandId> = {
            let open = lock(&self.open);
            let mut v: Vec<&CommandRecord> = open
                .values()
                .filter(|c| c.device_id == device && c.state == "queued")
                .collect();
            v.sort_by_key(|c| c.id);
            v.into_iter().map(|c| c.id).collect()
        };
        for id in queued {
            self.send(id).await;
        }
    }

    pub fn on_connected(&self, device: DeviceId) {
        *lock(&self.connected).entry(device).or_insert(0) += 1;
    }

    pub fn on_disconnected(&self, device: DeviceId) {
        let mut c = lock(&self.connected);
        if let Some(n) = c.get_mut(&device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&device);
                lock(&self.listening).remove(&device);
            }
        }
    }

    /// A device's answer on `devices/<id>/responses/<command id>`.
    pub async fn on_response(&self, device: DeviceId, command: &str, payload: &[u8]) {
        let Ok(id) = command.parse::<CommandId>() else {
            return;
        };
        if lock(&self.open)
            .get(&id)
            .is_none_or(|c| c.device_id != device)
        {
            return;
        }
        let value: serde_json::Value = serde_json::from_slice(payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(payload).into_owned())
        });
        let (status, result) = match &value {
            serde_json::Value::Object(m) if m.contains_key("status") => (
                m.get("status")
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(200),
                m.get("result").cloned().unwrap_or(serde_json::Value::Null),
            ),
            _ => (200, value.clone()),
        };
        let state = if status < 400 { "succeeded" } else { "failed" };
        let result = serde_json::to_string(&result).ok();
        self.finish_if(id, "sent", state, Some(status), result)
            .await;
    }

    async fn current(&self, id: CommandId) -> Result<Option<CommandRecord>, DevicesError> {
        if let Some(c) = lock(&self.open).get(&id) {
            return Ok(Some(c.clone()));
        }
        Ok(self.store.command(id).await?)
    }

    /// A command of one of the caller's devices; with `wait`, once it has finished (or `wait`
    /// has passed).
    pub async fn get(
        &self,
        cx: Ctx<'_>,
        device: &str,
        id: &str,
        wait: Option<Duration>,
    ) -> Result<CommandRecord, DevicesError> {
        let d = self.devices.get(cx, device).await?;
        let not_found = || DevicesError::NotFound(format!("no command {id} for {device}"));
        let id: CommandId = id.parse().map_err(|_| not_found())?;
        let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
        loop {
            let changed = self.changed.notified();
            let c = self
                .current(id)
                .await?
                .filter(|c| c.device_id == d.id)
                .ok_or_else(not_found)?;
            if is_final(&c.state) || tokio::time::Instant::now() >= deadline {
                return Ok(c);
            }
            let _ = tokio::time::timeout_at(deadline, changed).await;
        }
    }
}

pub fn info(c: &CommandRecord) -> sb_proto::CommandInfo {
    sb_proto::CommandInfo {
        id: c.id.to_string(),
        device_id: c.device_id.to_string(),
        method: c.method.clone(),
        payload: serde_json::from_str(&c.payload).unwrap_or(serde_json::Value::Null),
        state: c.state.clone(),
        created_at_ms: c.created_at.0,
        expires_at_ms: c.expires_at.0,
        sent_at_ms: c.sent_at.map(|t| t.0),
        finished_at_ms: c.finished_at.map(|t| t.0),
        status: c.status,
        result: c
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
    }
}
