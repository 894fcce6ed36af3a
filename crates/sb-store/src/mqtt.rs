//! MQTT storage: persistent sessions (their subscriptions), the QoS 1 and 2 messages queued or
//! in flight for them, and retained messages, so that a restart (or a crash) loses nothing the
//! broker acknowledged.

use crate::Result;
use async_trait::async_trait;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub client_id: String,
    /// Protocol level: 4 (3.1.1) or 5.
    pub version: u8,
    pub expiry_secs: u32,
    /// (filter as subscribed, options byte as on the wire, subscription identifier).
    pub subs: Vec<(String, u8, Option<u32>)>,
    /// QoS 2 packet ids received from the client and not yet released (PUBREL): a resend
    /// after a restart is acknowledged, not routed again. Loaded; `save_session` leaves them.
    pub incoming: Vec<u16>,
}

/// A message for one session (or, with an empty client id, a retained message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRow {
    pub client_id: String,
    pub seq: u64,
    /// The packet id it was sent under (0: not sent yet).
    pub pkid: u16,
    /// QoS 2: PUBREC received, PUBREL sent.
    pub released: bool,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties, encoded as on the wire.
    pub properties: Vec<u8>,
    pub expires_at_ms: Option<i64>,
    pub from_client: String,
}

#[async_trait]
pub trait MqttStore: Send + Sync + 'static {
    async fn save_session(&self, s: SessionRow) -> Result<()>;
    /// Removes a session and every message queued for it.
    async fn delete_session(&self, client_id: &str) -> Result<()>;
    /// Stores messages queued for persistent sessions and, in the same transaction, a QoS 2
    /// packet id received from a persistent session's client (`incoming`).
    async fn append_messages(
        &self,
        rows: Vec<MessageRow>,
        incoming: Option<(String, u16)>,
    ) -> Result<()>;
    /// Forgets a released QoS 2 packet id of a client.
    async fn release_incoming(&self, client_id: &str, pkid: u16) -> Result<()>;
    async fn mark_message(
        &self,
        client_id: &str,
        seq: u64,
        pkid: u16,
        released: bool,
    ) -> Result<()>;
    async fn remove_message(&self, client_id: &str, seq: u64) -> Result<()>;
    /// Stores (`Some`) or clears a retained message.
    async fn set_retained(&self, topic: &str, row: Option<MessageRow>) -> Result<()>;
    /// Every session, queued message (by client, then seq) and retained message.
    async fn load_mqtt(&self) -> Result<(Vec<SessionRow>, Vec<MessageRow>, Vec<MessageRow>)>;
}
