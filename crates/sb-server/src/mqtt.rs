//! MQTT listeners: the broker (`sb-mqtt`) with Switchboard's identities and `authorize()`.
//!
//! A device connects with user name = its id and password = its secret; a user or an app with
//! any user name and password = a session or API token (`sbs_…`/`sbt_…`) of theirs; a client
//! without credentials only on a listener that allows anonymous clients, and then only within
//! `mqtt.anonymous_topics`. Every publish and subscribe of a device or user is an
//! `authorize()` call (denials are audited there); revoking a device or a token, or disabling
//! an account, closes its connections at once.

use crate::AppState;
use sb_auth::{Action, Auth, AuthEvent, Ctx, Origin, Subject};
use sb_core::DeviceId;
use sb_core::config::{MqttConfig, MqttListener};
use sb_devices::{Devices, filter_covers, topic_resource};
use sb_mqtt::broker::{Access, Broker, BrokerConfig, Peer, Refusal};
use sb_mqtt::codec::Connect;
use sb_store::devices::DeviceRecord;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Who is on the other end of an MQTT connection.
#[derive(Clone)]
pub enum Who {
    Device {
        record: Arc<DeviceRecord>,
        subject: Subject,
        origin: Origin,
    },
    User {
        subject: Subject,
        origin: Origin,
        owned_devices: Arc<Vec<DeviceId>>,
    },
    Anonymous,
}

/// What the broker asks about who may do what, and where devices' messages go.
pub struct MqttAccess {
    pub devices: Arc<Devices>,
    pub commands: Arc<crate::commands::Commands>,
    pub twins: Arc<crate::twins::Twins>,
    pub rollouts: Arc<crate::rollouts::Rollouts>,
    pub auth: Arc<Auth>,
    pub monitor: Arc<sb_monitor::Monitor>,
    pub revocations: Arc<Revocations>,
    pub cfg: MqttConfig,
}

/// Connections waiting to hear that their credential was revoked or their account disabled:
/// one bus subscription for all of them (not two per connection), and a map from credential
/// and account to the connections using them.
#[derive(Default)]
pub struct Revocations {
    next: AtomicUsize,
    watchers: std::sync::Mutex<Watchers>,
}

#[derive(Default)]
struct Watchers {
    by_credential: HashMap<String, Vec<(usize, Arc<tokio::sync::Notify>)>>,
    by_user: HashMap<sb_core::UserId, Vec<(usize, Arc<tokio::sync::Notify>)>>,
}

/// Removes a connection's watch when it ends.
pub struct Registration {
    owner: Arc<Revocations>,
    id: usize,
    credential: String,
    user: sb_core::UserId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut w = self.owner.lock();
        if let Some(v) = w.by_credential.get_mut(&self.credential) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                w.by_credential.remove(&self.credential);
            }
        }
        if let Some(v) = w.by_user.get_mut(&self.user) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                w.by_user.remove(&self.user);
            }
        }
    }
}

impl Revocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watchers> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A notification that fires when `subject`'s credential is revoked or its account
    /// disabled, for as long as the registration is held.
    pub fn watch(self: &Arc<Self>, subject: &Subject) -> (Arc<tokio::sync::Notify>, Registration) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(tokio::sync::Notify::new());
        let credential = subject.credential.id_string();
        {
            let mut w = self.lock();
            w.by_credential
                .entry(credential.clone())
                .or_default()
                .push((id, notify.clone()));
            w.by_user
                .entry(subject.user_id)
                .or_default()
                .push((id, notify.clone()));
        }
        (
            notify,
            Registration {
                owner: self.clone(),
                id,
                credential,
                user: subject.user_id,
            },
        )
    }

    /// Follows the auth events on the bus. Should the subscription fall behind and be cut,
    /// every watched connection is closed (its client logs in again and is checked afresh)
    /// rather than risk missing a revocation.
    pub fn spawn(self: &Arc<Self>, auth: &Auth) -> anyhow::Result<()> {
        let bus = auth.bus().clone();
        let mut sub = bus
            .subscribe("auth/#")
            .map_err(|e| anyhow::anyhow!("watching revocations: {e:?}"))?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match sub.recv().await {
                    Ok(m) => {
                        let w = me.lock();
                        let hit = if let Some(c) = m.topic.strip_prefix("auth/credential/") {
                            (m.payload == AuthEvent::CredentialRevoked)
                                .then(|| w.by_credential.get(c))
                                .flatten()
                        } else if let Some(u) = m.topic.strip_prefix("auth/user/") {
                            u.parse().ok().and_then(|u| w.by_user.get(&u))
                        } else {
                            None
                        };
                        for (_, n) in hit.into_iter().flatten() {
                            n.notify_one();
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = ?e, "the revocation watch was cut; closing every MQTT login to check it again");
                        // Watch again first, so nothing revoked from here on is missed;
                        // what was missed meanwhile is covered by closing everyone.
                        match bus.subscribe("auth/#") {
                            Ok(s) => sub = s,
                            Err(e) => {
                                tracing::error!(error = ?e, "re-watching revocations failed");
                                return;
                            }
                        }
                        let w = me.lock();
                        for (_, n) in w.by_credential.values().flatten() {
                            n.notify_one();
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

impl MqttAccess {
    /// A device's connects and disconnects go to the audit log (its history).
    async fn audit_device(&self, who: &Who, action: &str) {
        let Who::Device {
            record,
            subject,
            origin,
        } = who
        else {
            return;
        };
        let cx = Ctx {
            subject,
            origin,
            now: crate::now(),
        };
        let detail = serde_json::json!({"name": record.name});
        if let Err(e) = self
            .auth
            .record(cx, action, record.id.to_string(), detail)
            .await
        {
            tracing::warn!(error = %e, action, "auditing a device event failed");
        }
    }

    /// A device that proved who it is: seen now.
    async fn device_in(&self, record: DeviceRecord, subject: Subject, origin: Origin) -> Who {
        self.devices.seen(record.id, crate::now()).await;
        Who::Device {
            record: Arc::new(record),
            subject,
            origin,
        }
    }

    async fn allowed(&self, who: &Who, action: Action, topic: &str) -> bool {
        let (subject, origin, device, owned): (
            &Subject,
            &Origin,
            Option<&DeviceRecord>,
            &[DeviceId],
        ) = match who {
            Who::Anonymous => {
                return self
                    .cfg
                    .anonymous_topics
                    .iter()
                    .any(|f| filter_covers(f, topic));
            }
            Who::Device {
                record,
                subject,
                origin,
            } => (subject, origin, Some(record), &[]),
            Who::User {
                subject,
                origin,
                owned_devices,
            } => (subject, origin, None, owned_devices),
        };
        let resource = topic_resource(subject, device, owned, topic, &self.cfg);
        let cx = Ctx {
            subject,
            origin,
            now: crate::now(),
        };
        self.auth.authorize(cx, action, &resource).await.is_ok()
    }
}

#[async_trait::async_trait]
impl Access for MqttAccess {
    type Principal = Who;

    async fn connect(&self, c: &Connect, peer: &Peer) -> Result<Who, Refusal> {
        let origin = Origin {
            ip: peer.addr.ip(),
            client: format!("mqtt {}", c.client_id),
        };
        // A client certificate from the device CA names its device (the one issued last to
        // it); a user name, if given, must be that device's id.
        let (ip, now) = (peer.addr.ip(), crate::now());
        if let Some(der) = &peer.certificate {
            self.auth
                .credential_attempt(ip, now)
                .map_err(|_| Refusal::RateLimited)?;
            let Some((record, subject)) = self
                .devices
                .authenticate_cert(&sb_proto::cert_fingerprint(der), now)
                .await
            else {
                self.auth.credential_failed(ip, now);
                return Err(Refusal::BadCredentials);
            };
            if c.username
                .as_deref()
                .is_some_and(|u| u != record.id.to_string())
            {
                return Err(Refusal::BadCredentials);
            }
            return Ok(self.device_in(record, subject, origin).await);
        }
        let Some(password) = &c.password else {
            return if peer.allow_anonymous && c.username.is_none() {
                Ok(Who::Anonymous)
            } else {
                Err(Refusal::BadCredentials)
            };
        };
        let username = c.username.as_deref().unwrap_or("");
        if username.parse::<DeviceId>().is_ok() {
            self.auth
                .credential_attempt(ip, now)
                .map_err(|_| Refusal::RateLimited)?;
            let Some((record, subject)) = self.devices.authenticate(username, password).await
            else {
                self.auth.credential_failed(ip, now);
                return Err(Refusal::BadCredentials);
            };
            return Ok(self.device_in(record, subject, origin).await);
        }
        let token = std::str::from_utf8(password).map_err(|_| Refusal::BadCredentials)?;
        let subject = self
            .auth
            .authenticate(token, ip, now)
            .await
            .map_err(|e| match e {
                sb_auth::AuthError::RateLimited(_) => Refusal::RateLimited,
                _ => Refusal::BadCredentials,
            })?;
        if !username.is_empty() && username != subject.username {
            return Err(Refusal::BadCredentials);
        }
        let owned_devices = self
            .devices
            .owned_by(&subject)
            .await
            .map_err(|_| Refusal::Unavailable)?;
        Ok(Who::User {
            subject,
            origin,
            owned_devices: Arc::new(owned_devices),
        })
    }

    async fn may_publish(&self, who: &Who, topic: &str) -> bool {
        self.allowed(who, Action::Create, topic).await
    }

    async fn may_subscribe(&self, who: &Who, filter: &str) -> bool {
        self.allowed(who, Action::Read, filter).await
    }

    async fn connected(&self, who: &Who) {
        if let Who::Device { record, .. } = who {
            self.commands.on_connected(record.id);
            self.audit_device(who, "device.connect").await;
        }
    }

    async fn disconnected(&self, who: &Who) {
        if let Who::Device { record, .. } = who {
            self.commands.on_disconnected(record.id);
            self.devices.seen(record.id, crate::now()).await;
            self.audit_device(who, "device.disconnect").await;
        }
    }

    async fn subscribed(&self, who: &Who, filter: &str) {
        if let Who::Device { record, .. } = who {
            self.commands.on_subscribed(record.id, filter).await;
        }
    }

    /// Telemetry (`devices/<id>/telemetry` from that device) goes into the time-series store;
    /// answers to commands, health reports and twin reports are recorded — all before the
    /// device's PUBACK.
    async fn accepted(&self, who: &Who, message: &sb_mqtt::broker::Message) {
        let Who::Device { record, .. } = who else {
            return;
        };
        let responses = format!("devices/{}/responses/", record.id);
        if let Some(command) = message.topic.strip_prefix(responses.as_str()) {
            self.commands
                .on_response(record.id, command, &message.payload)
                .await;
            return;
        }
        if *message.topic == *format!("devices/{}/health", record.id) {
            self.devices
                .health(record.id, &message.payload, crate::now())
                .await;
            return;
        }
        if *message.topic == *format!("devices/{}/firmware/status", record.id) {
            self.rollouts.on_status(record.id, &message.payload).await;
            return;
        }
        if *message.topic == *format!("devices/{}/twin/reported", record.id) {
            self.twins.on_reported(record.id, &message.payload).await;
            return;
        }
        if *message.topic != *format!("devices/{}/telemetry", record.id) {
            return;
        }
        let now = crate::now().0;
        match sb_devices::telemetry::decode(
            &message.payload,
            record,
            now,
            self.cfg.telemetry_fields_max,
        ) {
            Ok(samples) => {
                let batch: sb_tsdb::Batch =
                    samples.into_iter().map(|(l, p)| (l, vec![p])).collect();
                if let Err(e) = self.monitor.append_internal(batch).await {
                    tracing::warn!(error = %e, "storing device telemetry failed");
                }
            }
            Err(e) => tracing::debug!(device = %record.id, error = %e, "telemetry not understood"),
        }
    }

    async fn revoked(&self, who: &Who) {
        let subject = match who {
            Who::Device { subject, .. } | Who::User { subject, .. } => subject,
            Who::Anonymous => return std::future::pending().await,
        };
        let (notify, _registration) = self.revocations.watch(subject);
        notify.notified().await;
    }
}

pub type MqttBroker = Broker<MqttAccess>;

pub fn broker(
    access: MqttAccess,
    store: Arc<dyn sb_store::MqttStore>,
    cfg: &MqttConfig,
) -> Arc<MqttBroker> {
    let bc = BrokerConfig {
        packet_size_max: cfg.packet_size_bytes_max,
        inflight_max: cfg.inflight_max.max(1),
        queue_max: cfg.queue_max,
        queue_full_wait: Duration::from_millis(cfg.queue_full_wait_ms),
        queue_live_max: cfg.queue_live_max,
        topic_depth_max: cfg.topic_depth_max,
        topic_alias_max: cfg.topic_alias_max,
        session_expiry_max_secs: cfg.session_expiry_max_secs,
        keep_alive_max_secs: cfg.keep_alive_max_secs,
        retained_max: cfg.retained_max,
        connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
        subscriptions_max: cfg.subscriptions_per_client_max,
    };
    Broker::new(bc, access, Some(store))
}

/// Binds every MQTT listener; their addresses (as bound: port 0 becomes a real port).
pub async fn bind(cfg: &MqttConfig) -> anyhow::Result<Vec<(TcpListener, MqttListener)>> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let listener = TcpListener::bind(l.bind)
            .await
            .map_err(|e| anyhow::anyhow!("binding the MQTT listener {}: {e}", l.bind))?;
        out.push((listener, l.clone()));
    }
    Ok(out)
}

/// Accepts connections on one listener until shutdown.
pub fn spawn(
    state: Arc<AppState>,
    listener: TcpListener,
    spec: MqttListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    open: Arc<AtomicUsize>,
) {
    tokio::spawn(async move {
        loop {
            let (stream, addr) = tokio::select! {
                _ = state.shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if open.load(Ordering::Relaxed) >= state.config.mqtt.connections_max {
                tracing::warn!(%addr, "MQTT connection refused: mqtt.connections_max reached");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let (broker, open, tls, shutdown) = (
                state.mqtt.clone(),
                open.clone(),
                tls.clone(),
                state.shutdown.clone(),
            );
            let mut peer = Peer {
                addr,
                allow_anonymous: spec.allow_anonymous,
                certificate: None,
            };
            open.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let serve = async {
                    match tls {
                        None => broker.serve(stream, peer).await,
                        // Boxed: a plain connection's task does not carry TLS's size.
                        Some(acceptor) => {
                            Box::pin(async move {
                                match tokio::time::timeout(
                                    Duration::from_secs(10),
                                    acceptor.accept(stream),
                                )
                                .await
                                {
                                    Ok(Ok(s)) => {
                                        // A device CA certificate, verified by the handshake.
                                        peer.certificate = s
                                            .get_ref()
                                            .1
                                            .peer_certificates()
                                            .and_then(|c| c.first())
                                            .map(|c| c.to_vec());
                                        broker.serve(s, peer).await
                                    }
                                    _ => tracing::debug!(%addr, "MQTT TLS handshake failed"),
                                }
                            })
                            .await
                        }
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = shutdown.cancelled() => {}
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
}

/// How listeners are shown in the banner.
pub fn describe(addr: SocketAddr, spec: &MqttListener) -> String {
    format!(
        "{}://{addr}{}",
        if spec.tls { "mqtts" } else { "mqtt" },
        if spec.allow_anonymous {
            " (anonymous clients allowed)"
        } else {
            ""
        }
    )
}

/// `GET /mqtt`: MQTT over WebSocket (subprotocol `mqtt`, binary frames), on the HTTPS
/// listener. The credentials are in the MQTT CONNECT, as on the TCP listeners; anonymous
/// clients are not let in here.
pub async fn websocket(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
    axum::extract::ConnectInfo(addr): axum::extract::ConnectInfo<SocketAddr>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> axum::response::Response {
    let broker = st.mqtt.clone();
    let max = st.config.mqtt.packet_size_bytes_max + 8;
    let shutdown = st.shutdown.clone();
    upgrade
        .protocols(["mqtt"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| async move {
            use axum::extract::ws::Message;
            use futures_util::{SinkExt, StreamExt};
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // The broker speaks to one end of an in-memory pipe; the frames carry the other.
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let peer = Peer {
                addr,
                allow_anonymous: false,
                certificate: None,
            };
            let serve = tokio::spawn(broker.serve(theirs, peer));
            let (mut tx, mut rx) = ws.split();
            let (mut read, mut write) = tokio::io::split(ours);
            let inbound = async {
                while let Some(Ok(m)) = rx.next().await {
                    match m {
                        Message::Binary(b) if write.write_all(&b).await.is_err() => break,
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                let _ = write.shutdown().await;
            };
            let outbound = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let bytes = axum::body::Bytes::copy_from_slice(&buf[..n]);
                            if tx.send(Message::Binary(bytes)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.close().await;
            };
            tokio::select! {
                _ = async { tokio::join!(inbound, outbound) } => {}
                _ = shutdown.cancelled() => {}
            }
            serve.abort();
        })
}

/// Writes `device_online` and `device_healthy` (0 or 1) for every device that is not revoked,
/// every `mqtt.status_interval_secs`, so alert rules can watch them.
/// The alert rules devices come with: `DeviceOffline`, for a device offline longer than
/// `mqtt.offline_alert_after_secs` (off at 0, or without the status series).
pub fn builtin_rules(cfg: &MqttConfig) -> Vec<(String, String)> {
    let after = cfg.offline_alert_after_secs;
    if after == 0 || cfg.status_interval_secs == 0 {
        return Vec::new();
    }
    let text = format!(
        r#"groups:
- name: devices
  interval: {interval}s
  rules:
  - alert: DeviceOffline
    expr: device_online == 0
    for: {after}s
    labels:
      severity: warning
    annotations:
      summary: "device {{{{ $labels.device }}}} (group {{{{ $labels.group }}}}) has been offline for more than {after} s"
"#,
        interval = cfg.status_interval_secs,
    );
    vec![("builtin:devices".to_string(), text)]
}

pub fn spawn_status_metrics(state: Arc<AppState>) {
    let every = state.config.mqtt.status_interval_secs;
    if every == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(devices) = state.devices.all().await else {
                continue;
            };
            let now = crate::now();
            let mut batch: sb_tsdb::Batch = Vec::new();
            for d in devices.iter().filter(|d| d.revoked_at.is_none()) {
                let id = d.id.to_string();
                let series = |name: &str, v: f64| {
                    (
                        sb_tsdb::Labels::from_pairs(&[
                            ("__name__", name),
                            ("device_id", &id),
                            ("device", &d.name),
                            ("group", &d.group),
                        ]),
                        vec![(now.0, v)],
                    )
                };
                batch.push(series(
                    "device_online",
                    f64::from(u8::from(state.commands.is_online(d.id))),
                ));
                match state.devices.health_state(d, now) {
                    "healthy" => batch.push(series("device_healthy", 1.0)),
                    "unhealthy" => batch.push(series("device_healthy", 0.0)),
                    _ => {}
                }
            }
            if !batch.is_empty()
                && let Err(e) = state.monitor.append_internal(batch).await
            {
                tracing::warn!(error = %e, "writing device status metrics failed");
            }
        }
    });
}
