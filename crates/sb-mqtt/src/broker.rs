//! The broker: sessions, routing, retained messages, wills, and one task per connection that
//! speaks MQTT 3.1.1 or 5.0 over any byte stream (TCP, TLS, WebSocket).
//!
//! Every session has one queue of messages for its client and a window of messages in flight
//! (sent at QoS 1 or 2 and not yet acknowledged). Routing a publish only appends to the queues
//! of the matching sessions and wakes their connections; a connection moves messages from its
//! queue into the window as far as the client's receive maximum and `inflight_max` allow.
//!
//! Backpressure: when a connected client's queue holds `queue_live_max` messages, a publisher
//! to it waits (up to `queue_full_wait`) for room before its message is routed on and
//! acknowledged, so a burst slows its publishers instead of being lost, and latency stays
//! short. A client that keeps a publisher waiting that long is treated as slow: its queue then
//! fills up to `queue_max` and what does not fit is dropped and counted, until it has caught
//! up. A session whose client is away (a persistent session) keeps its queue, up to
//! `queue_max` messages; nobody waits for it.

use crate::codec::{
    self, Ack, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, Publish, QoS, SubAck,
    SubOptions, UnsubAck, Version, reason,
};
use crate::router::{Entry, Router};
use crate::topic;
use bytes::{Bytes, BytesMut};
use sb_store::mqtt::{MessageRow, MqttStore, SessionRow};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// The broker's limits.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Largest packet accepted from a client (and announced to v5 clients).
    pub packet_size_max: usize,
    /// QoS 1 and 2 messages in flight at once in each direction: from a client to the server
    /// (its receive maximum, announced to v5 clients) and from the server to a client.
    pub inflight_max: u16,
    /// Messages waiting for one session's client, online or away.
    pub queue_max: usize,
    /// Messages waiting for a connected client before its publishers wait for room
    /// (backpressure): a short queue for a client that is there keeps latency low.
    pub queue_live_max: usize,
    /// How long a publisher waits for that room; a client that made a publisher wait this
    /// long is then treated like one that is away (its queue fills up to `queue_max`, then
    /// drops) until it has caught up.
    pub queue_full_wait: Duration,
    /// Levels in a topic name or filter.
    pub topic_depth_max: usize,
    /// Topic aliases a v5 client may use towards the server.
    pub topic_alias_max: u16,
    /// Longest session expiry granted (v3 persistent sessions get this).
    pub session_expiry_max_secs: u32,
    /// Longest keep-alive accepted; clients asking more (or none) are told this one (v5).
    pub keep_alive_max_secs: u16,
    /// Retained messages kept in all.
    pub retained_max: usize,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Topic filters one session may hold.
    pub subscriptions_max: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            packet_size_max: 256 * 1024,
            inflight_max: 64,
            queue_max: 1000,
            queue_live_max: 128,
            queue_full_wait: Duration::from_millis(500),
            topic_depth_max: 16,
            topic_alias_max: 32,
            session_expiry_max_secs: 7 * 24 * 3600,
            keep_alive_max_secs: 600,
            retained_max: 100_000,
            connect_timeout: Duration::from_secs(10),
            subscriptions_max: 100,
        }
    }
}

/// Why a CONNECT is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    BadCredentials,
    NotAuthorized,
    Unavailable,
    /// Too many failed attempts from this address lately.
    RateLimited,
}

impl Refusal {
    fn code(self, v: Version) -> u8 {
        match (self, v) {
            (Refusal::BadCredentials, Version::V5) => reason::BAD_USERNAME_OR_PASSWORD,
            (Refusal::NotAuthorized, Version::V5) => reason::NOT_AUTHORIZED,
            (Refusal::Unavailable, Version::V5) => reason::SERVER_UNAVAILABLE,
            (Refusal::BadCredentials, Version::V311) => reason::V3_BAD_CREDENTIALS,
            (Refusal::NotAuthorized, Version::V311) => reason::V3_NOT_AUTHORIZED,
            (Refusal::RateLimited, Version::V5) => reason::CONNECTION_RATE_EXCEEDED,
            (Refusal::Unavailable | Refusal::RateLimited, Version::V311) => {
                reason::V3_SERVER_UNAVAILABLE
            }
        }
    }
}

/// Where a connection comes from.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    /// The listener lets clients without credentials in.
    pub allow_anonymous: bool,
    /// The client certificate (DER) the TLS layer verified, if the client sent one.
    pub certificate: Option<Vec<u8>>,
}

/// Who may connect, publish and subscribe: the server plugs its identities and `authorize()`
/// in here.
#[async_trait::async_trait]
pub trait Access: Send + Sync + 'static {
    type Principal: Clone + Send + Sync + 'static;
    /// Authenticates a CONNECT (user name, password, client id).
    async fn connect(&self, connect: &Connect, peer: &Peer) -> Result<Self::Principal, Refusal>;
    /// May `who` publish to `topic`? A denial is the implementation's to count and audit.
    async fn may_publish(&self, who: &Self::Principal, topic: &str) -> bool;
    /// May `who` subscribe to `filter` (without its `$share/GROUP/` prefix)?
    async fn may_subscribe(&self, who: &Self::Principal, filter: &str) -> bool;
    /// Resolves when `who`'s credential stops being valid: the connection is closed at once.
    async fn revoked(&self, who: &Self::Principal) {
        let _ = who;
        std::future::pending::<()>().await
    }
    /// Told of every message accepted from `who` (after authorization), e.g. for telemetry;
    /// awaited before the publisher is acknowledged, so what it stores is durable by then.
    async fn accepted(&self, who: &Self::Principal, message: &Message) {
        let _ = (who, message);
    }
    /// `who` is connected (its CONNACK is on the way).
    async fn connected(&self, who: &Self::Principal) {
        let _ = who;
    }
    /// `who`'s connection ended.
    async fn disconnected(&self, who: &Self::Principal) {
        let _ = who;
    }
    /// `who` subscribed to `filter` (granted; its SUBACK goes out before anything this
    /// publishes).
    async fn subscribed(&self, who: &Self::Principal, filter: &str) {
        let _ = (who, filter);
    }
}

/// A message as the broker routes it.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The v5 properties passed on to subscribers (response topic, correlation data, user
    /// properties, content type, payload format).
    pub properties: Properties,
    pub expires_at: Option<Instant>,
    /// The client that published it (for no-local).
    pub from: Arc<str>,
}

impl Message {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// One message waiting for, or in flight to, one client.
#[derive(Clone, Debug)]
struct Queued {
    msg: Arc<Message>,
    qos: QoS,
    retain: bool,
    sub_ids: Vec<u32>,
    /// Its number in the store (unique per broker).
    seq: u64,
    /// Stored (QoS 1 or 2 for a persistent session): removed from the store once acknowledged.
    durable: bool,
}

#[derive(Clone, Debug)]
enum Flight {
    /// Sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(Queued),
    /// PUBREC received and PUBREL sent; waiting for PUBCOMP.
    Released { seq: u64, durable: bool },
}

#[derive(Debug)]
struct SessionState {
    subs: HashMap<String, (SubOptions, Option<u32>)>,
    queue: VecDeque<Queued>,
    inflight: BTreeMap<u16, Flight>,
    /// QoS 2 packet ids received and not yet released: a resend is not routed twice.
    incoming: HashSet<u16>,
    next_pkid: u16,
    /// The connection attached to this session (0: none).
    connection: u64,
    expiry_secs: u32,
    /// What the client accepts: receive maximum, maximum packet size.
    receive_max: u16,
    packet_max: usize,
    version: Version,
    /// A publisher waits for room in the queue.
    waited_on: bool,
    /// Made a publisher wait in vain: its overflow is dropped until the queue is half empty.
    slow: bool,
}

struct Session {
    client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// Rung when something is queued.
    wake: Notify,
    /// Rung when a full queue has room again.
    room: Notify,
    /// The connection this session belongs to: a connection that sees another id here was
    /// taken over.
    attached: tokio::sync::watch::Sender<u64>,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BrokerStats {
    pub connections: AtomicUsize,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub denied: AtomicU64,
    pub malformed: AtomicU64,
}

#[derive(Default)]
struct State {
    router: Router,
    sessions: HashMap<Arc<str>, Arc<Session>>,
    retained: HashMap<Arc<str>, Arc<Message>>,
}

pub struct Broker<A: Access> {
    cfg: BrokerConfig,
    access: A,
    /// Where persistent sessions, their messages and retained messages are kept.
    store: Option<Arc<dyn MqttStore>>,
    next_seq: AtomicU64,
    state: RwLock<State>,
    next_connection: AtomicU64,
    share_turn: AtomicUsize,
    pub stats: BrokerStats,
}

/// Why a connection ends.
enum End {
    /// The client sent DISCONNECT (normal: no will, unless v5 asked for it).
    Client {
        will: bool,
    },
    /// Anything else: the will is published.
    Abnormal,
    TakenOver,
}

impl<A: Access> Broker<A> {
    pub fn new(cfg: BrokerConfig, access: A, store: Option<Arc<dyn MqttStore>>) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            access,
            store,
            next_seq: AtomicU64::new(1),
            state: RwLock::new(State::default()),
            next_connection: AtomicU64::new(1),
            share_turn: AtomicUsize::new(0),
            stats: BrokerStats::default(),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.cfg
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions held (connected or away).
    pub fn session_count(&self) -> usize {
        self.read().sessions.len()
    }

    /// Routes a message to every matching subscription and stores or clears it as retained.
    /// Returns once what must survive a restart (its copies for persistent sessions, the
    /// retained message) is durable: only then may the publisher be acknowledged. Returns how
    /// many sessions it was queued for.
    pub async fn publish(&self, msg: Message) -> Result<usize, String> {
        self.publish_with(msg, None).await
    }

    /// [`Broker::publish`], recording with the routed copies (in one transaction) the QoS 2
    /// packet id a persistent session's client sent it under, so a resend after a crash is
    /// not routed twice.
    async fn publish_with(
        &self,
        msg: Message,
        incoming: Option<(String, u16)>,
    ) -> Result<usize, String> {
        let msg = Arc::new(msg);
        if msg.retain {
            let keep = {
                let mut st = self.write();
                if msg.payload.is_empty() {
                    st.retained.remove(&msg.topic);
                    Some(false)
                } else if st.retained.len() < self.cfg.retained_max
                    || st.retained.contains_key(&msg.topic)
                {
                    st.retained.insert(msg.topic.clone(), msg.clone());
                    Some(true)
                } else {
                    None
                }
            };
            if let (Some(store), Some(keep)) = (&self.store, keep) {
                let row = keep.then(|| row("", 0, &msg, msg.qos, true, &[]));
                store
                    .set_retained(&msg.topic, row)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let (mut n, mut rows, full) = self.route(&msg);
        // Connected clients whose queues are full: wait for room, within one deadline.
        if !full.is_empty() {
            let deadline = tokio::time::Instant::now() + self.cfg.queue_full_wait;
            for (session, qos, retain, sub_ids) in full {
                match self
                    .enqueue_when_room(&session, &msg, qos, retain, &sub_ids, deadline)
                    .await
                {
                    Enqueued::Memory => n += 1,
                    Enqueued::Durable(r) => {
                        n += 1;
                        rows.push(*r);
                    }
                    Enqueued::Dropped | Enqueued::Full => {}
                }
            }
        }
        if let Some(store) = &self.store
            && (!rows.is_empty() || incoming.is_some())
        {
            store
                .append_messages(rows, incoming)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(n)
    }

    /// The queue length at which publishers to a connected client wait for room.
    fn live_limit(&self) -> usize {
        self.cfg.queue_live_max.clamp(1, self.cfg.queue_max.max(1))
    }

    /// Waits until `session`'s queue has room for `msg` (or `deadline` passes: then the
    /// message is dropped for it, and it is marked slow).
    async fn enqueue_when_room(
        &self,
        session: &Session,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        sub_ids: &[u32],
        deadline: tokio::time::Instant,
    ) -> Enqueued {
        loop {
            let room = session.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.enqueue(session, msg, qos, retain, sub_ids, true) {
                Enqueued::Full => {}
                other => return other,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                session.lock().slow = true;
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return Enqueued::Dropped;
            }
        }
    }

    /// The routing itself: queues `msg` for every matching session. Returns how many took
    /// it, the rows to store, and the connected sessions whose queues were full.
    #[allow(clippy::type_complexity)]
    fn route(
        &self,
        msg: &Arc<Message>,
    ) -> (
        usize,
        Vec<MessageRow>,
        Vec<(Arc<Session>, QoS, bool, Vec<u32>)>,
    ) {
        let st = self.read();
        let mut matched = Vec::new();
        st.router.matches(&msg.topic, &mut matched);
        // One delivery per session: the highest QoS of its overlapping subscriptions, with all
        // their identifiers. A share group delivers to one member.
        let mut per_client: HashMap<&str, (QoS, bool, Vec<u32>)> = HashMap::new();
        let mut by_group: HashMap<&str, Vec<&Entry>> = HashMap::new();
        for e in &matched {
            match &e.share {
                Some(g) => by_group.entry(g).or_default().push(e),
                None => {
                    if e.options.no_local && *e.client == *msg.from {
                        continue;
                    }
                    let slot =
                        per_client
                            .entry(&e.client)
                            .or_insert((QoS::AtMostOnce, false, Vec::new()));
                    slot.0 = slot.0.max(e.options.qos);
                    slot.1 |= e.options.retain_as_published;
                    slot.2.extend(e.id);
                }
            }
        }
        for members in by_group.values() {
            let connected: Vec<&&Entry> = members
                .iter()
                .filter(|e| {
                    st.sessions
                        .get(&*e.client)
                        .is_some_and(|s| s.lock().connection != 0)
                })
                .collect();
            let pool: Vec<&&Entry> = if connected.is_empty() {
                members.iter().collect()
            } else {
                connected
            };
            let turn = self.share_turn.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = pool.get(turn % pool.len().max(1)) {
                let slot =
                    per_client
                        .entry(&e.client)
                        .or_insert((QoS::AtMostOnce, false, Vec::new()));
                slot.0 = slot.0.max(e.options.qos);
                slot.2.extend(e.id);
            }
        }
        let mut delivered = 0;
        let mut rows = Vec::new();
        let mut full = Vec::new();
        for (client, (qos, rap, sub_ids)) in per_client {
            let Some(session) = st.sessions.get(client) else {
                continue;
            };
            // Live messages go out with retain cleared unless retain-as-published.
            let (qos, retain) = (qos.min(msg.qos), msg.retain && rap);
            // A client is never made to wait for itself.
            let may_wait = *session.client_id != *msg.from;
            match self.enqueue(session, msg, qos, retain, &sub_ids, may_wait) {
                Enqueued::Dropped => {}
                Enqueued::Memory => delivered += 1,
                Enqueued::Durable(r) => {
                    delivered += 1;
                    rows.push(*r);
                }
                Enqueued::Full => full.push((session.clone(), qos, retain, sub_ids)),
            }
        }
        (delivered, rows, full)
    }

    /// Queues a message for a session; a QoS 1 or 2 message for a persistent session is to
    /// be stored (the row returned).
    /// A full queue of a connected client that is keeping up answers `Full` when the
    /// publisher `may_wait` for room; otherwise the message is dropped for that client.
    fn enqueue(
        &self,
        session: &Session,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        sub_ids: &[u32],
        may_wait: bool,
    ) -> Enqueued {
        let mut s = session.lock();
        if may_wait
            && s.connection != 0
            && !s.slow
            && !self.cfg.queue_full_wait.is_zero()
            && s.queue.len() >= self.live_limit()
        {
            s.waited_on = true;
            return Enqueued::Full;
        }
        if s.queue.len() >= self.cfg.queue_max {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Enqueued::Dropped;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let durable = self.store.is_some() && s.expiry_secs > 0 && qos != QoS::AtMostOnce;
        let out = if durable {
            Enqueued::Durable(Box::new(row(
                &session.client_id,
                seq,
                msg,
                qos,
                retain,
                sub_ids,
            )))
        } else {
            Enqueued::Memory
        };
        s.queue.push_back(Queued {
            msg: msg.clone(),
            qos,
            retain,
            sub_ids: sub_ids.to_vec(),
            seq,
            durable,
        });
        drop(s);
        session.wake.notify_one();
        out
    }

    /// Saves a persistent session's subscriptions (or forgets a session that is not).
    async fn save_session(&self, session: &Session) {
        let Some(store) = &self.store else { return };
        let row = {
            let s = session.lock();
            (s.expiry_secs > 0).then(|| SessionRow {
                client_id: session.client_id.to_string(),
                version: if s.version == Version::V5 { 5 } else { 4 },
                expiry_secs: s.expiry_secs,
                subs: s
                    .subs
                    .iter()
                    .map(|(f, (o, id))| (f.clone(), o.to_byte(), *id))
                    .collect(),
                incoming: Vec::new(),
            })
        };
        let r = match row {
            Some(row) => store.save_session(row).await,
            None => store.delete_session(&session.client_id).await,
        };
        if let Err(e) = r {
            tracing::error!(error = %e, client = %session.client_id, "saving an MQTT session failed");
        }
    }

    /// Logs a failed store write that nobody waits for (an acknowledgement already sent).
    fn logged(what: &'static str, r: sb_store::Result<()>) {
        if let Err(e) = r {
            tracing::error!(error = %e, "MQTT store: {what} failed");
        }
    }

    /// Brings back what the store kept: persistent sessions (away until their clients come
    /// back, and expiring from now), their queued and in-flight messages, retained messages.
    /// Call before serving. Returns (sessions, messages) restored.
    pub async fn restore(self: &Arc<Self>) -> Result<(usize, usize), String> {
        let Some(store) = &self.store else {
            return Ok((0, 0));
        };
        let (sessions, messages, retained) = store.load_mqtt().await.map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut restored = Vec::new();
        let mut max_seq = 0;
        {
            let mut st = self.write();
            for r in retained {
                if let Some(m) = message_from_row(&r, now) {
                    st.retained.insert(m.topic.clone(), Arc::new(m));
                }
            }
            for row in &sessions {
                let client_id: Arc<str> = row.client_id.as_str().into();
                let mut subs = HashMap::new();
                for (full, opts, id) in &row.subs {
                    let opts = SubOptions::from_byte(*opts);
                    if let Ok((share, filter)) = topic::split_share(full) {
                        st.router.insert(
                            filter,
                            Entry {
                                client: client_id.clone(),
                                share: share.map(|g| Arc::from(format!("{g}/{filter}"))),
                                options: opts,
                                id: *id,
                            },
                        );
                    }
                    subs.insert(full.clone(), (opts, *id));
                }
                let session = Arc::new(Session {
                    client_id: client_id.clone(),
                    state: Mutex::new(SessionState {
                        subs,
                        queue: VecDeque::new(),
                        inflight: BTreeMap::new(),
                        incoming: row.incoming.iter().copied().collect(),
                        next_pkid: 1,
                        connection: 0,
                        expiry_secs: row.expiry_secs,
                        receive_max: self.cfg.inflight_max,
                        packet_max: usize::MAX,
                        version: if row.version == 5 {
                            Version::V5
                        } else {
                            Version::V311
                        },
                        waited_on: false,
                        slow: false,
                    }),
                    wake: Notify::new(),
                    room: Notify::new(),
                    attached: tokio::sync::watch::Sender::new(0),
                });
                st.sessions.insert(client_id, session.clone());
                restored.push(session);
            }
            for r in &messages {
                max_seq = max_seq.max(r.seq);
                let Some(session) = st.sessions.get(r.client_id.as_str()) else {
                    continue;
                };
                let Some(m) = message_from_row(r, now) else {
                    continue;
                };
                let sub_ids = m.properties.subscription_identifiers.clone();
                let q = Queued {
                    msg: Arc::new(m),
                    qos: QoS::from_u8(r.qos).unwrap_or(QoS::AtLeastOnce),
                    retain: r.retain,
                    sub_ids,
                    seq: r.seq,
                    durable: true,
                };
                let mut s = session.lock();
                if r.pkid == 0 {
                    s.queue.push_back(q);
                } else if r.released {
                    s.inflight.insert(
                        r.pkid,
                        Flight::Released {
                            seq: r.seq,
                            durable: true,
                        },
                    );
                } else {
                    s.inflight.insert(r.pkid, Flight::Sent(q));
                }
                s.next_pkid = s.next_pkid.max(r.pkid.wrapping_add(1));
            }
        }
        self.next_seq.fetch_max(max_seq + 1, Ordering::Relaxed);
        for session in &restored {
            let (b, s, secs) = (self.clone(), session.clone(), session.lock().expiry_secs);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
                b.expire(&s).await;
            });
        }
        Ok((restored.len(), messages.len()))
    }

    /// Serves one client connection until it ends.
    pub async fn serve<S>(self: Arc<Self>, mut io: S, peer: Peer)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut buf = BytesMut::with_capacity(READ_ROOM_MIN);
        // The handshake and the goodbye are boxed: what an idle connection holds is only what
        // its loop needs.
        let Some((mut conn, keep_alive, acked)) =
            Box::pin(self.clone().handshake(&mut io, &mut buf, peer)).await
        else {
            return;
        };
        let end = if acked {
            self.access.connected(&conn.who).await;
            conn.resend_inflight();
            conn.run(&mut io, &mut buf, keep_alive).await
        } else {
            End::Abnormal
        };
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
        let who = conn.who.clone();
        Box::pin(conn.finish(end)).await;
        self.access.disconnected(&who).await;
    }

    /// CONNECT, authentication, the session, and the CONNACK; the connection, its keep-alive
    /// and whether the CONNACK went out (`None`: refused or gone).
    async fn handshake<S>(
        self: Arc<Self>,
        io: &mut S,
        buf: &mut BytesMut,
        peer: Peer,
    ) -> Option<(Conn<A>, u16, bool)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let io = &mut *io;
        // CONNECT first, within the timeout.
        let connect = match tokio::time::timeout(
            self.cfg.connect_timeout,
            read_packet(io, buf, None, self.cfg.packet_size_max),
        )
        .await
        {
            Ok(Ok(Some(Packet::Connect(c)))) => *c,
            Ok(Err(DecodeError::UnsupportedVersion(level))) => {
                // Answer in the client's own version where it can read it (v3 return code 1).
                let (code, v) = if level == 5 {
                    (reason::UNSUPPORTED_PROTOCOL_VERSION, Version::V5)
                } else {
                    (reason::V3_REFUSED_PROTOCOL, Version::V311)
                };
                let _ = send(io, &connack(false, code), v).await;
                return None;
            }
            Ok(Err(_)) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            _ => return None,
        };
        let v = connect.version;
        let who = match self.access.connect(&connect, &peer).await {
            Ok(p) => p,
            Err(r) => {
                let _ = send(io, &connack(false, r.code(v)), v).await;
                return None;
            }
        };
        let mut props = Properties::default();
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            if v == Version::V311 && !connect.clean_start {
                let _ = send(io, &connack(false, reason::V3_REFUSED_IDENTIFIER), v).await;
                return None;
            }
            let id = format!("auto-{}", uuid::Uuid::new_v4().simple());
            props.assigned_client_identifier = Some(id.clone());
            id.into()
        } else {
            connect.client_id.as_str().into()
        };
        let expiry = match v {
            Version::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
            Version::V311 if connect.clean_start => 0,
            Version::V311 => u32::MAX,
        }
        .min(self.cfg.session_expiry_max_secs);
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (session, present, discarded) = self.attach(&client_id, &connect, expiry, connection);
        if expiry > 0 || discarded {
            self.save_session(&session).await;
        }
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let keep_alive =
            if connect.keep_alive == 0 || connect.keep_alive > self.cfg.keep_alive_max_secs {
                if v == Version::V5 {
                    props.server_keep_alive = Some(self.cfg.keep_alive_max_secs);
                    self.cfg.keep_alive_max_secs
                } else {
                    connect.keep_alive
                }
            } else {
                connect.keep_alive
            };
        if v == Version::V5 {
            props.receive_maximum = Some(self.cfg.inflight_max);
            props.topic_alias_maximum = Some(self.cfg.topic_alias_max);
            props.maximum_packet_size = Some(self.cfg.packet_size_max as u32);
            props.retain_available = Some(true);
            props.wildcard_subscription_available = Some(true);
            props.subscription_identifier_available = Some(true);
            props.shared_subscription_available = Some(true);
            if connect.properties.session_expiry_interval.unwrap_or(0) > expiry {
                props.session_expiry_interval = Some(expiry);
            }
        }
        let ack = Packet::ConnAck(ConnAck {
            session_present: present,
            code: reason::SUCCESS,
            properties: props,
        });
        let conn = Conn {
            broker: self.clone(),
            session: session.clone(),
            id: connection,
            who,
            version: v,
            out: BytesMut::new(),
            aliases: HashMap::new(),
            connect_will: connect.will.clone(),
            will_delay: connect
                .will
                .as_ref()
                .and_then(|w| w.properties.will_delay_interval)
                .unwrap_or(0),
            expiry,
        };
        let acked = send(io, &ack, v).await.is_ok();
        Some((conn, keep_alive, acked))
    }

    /// Takes over or creates the session for `client_id`; whether one was resumed, and
    /// whether a session was discarded (clean start).
    fn attach(
        &self,
        client_id: &Arc<str>,
        connect: &Connect,
        expiry: u32,
        connection: u64,
    ) -> (Arc<Session>, bool, bool) {
        let mut st = self.write();
        let mut discarded = false;
        if let Some(old) = st.sessions.get(client_id).cloned() {
            if !connect.clean_start {
                old.attached.send_replace(connection);
                let mut s = old.lock();
                s.connection = connection;
                s.expiry_secs = expiry;
                s.version = connect.version;
                s.receive_max = self.outbound_window(connect);
                s.packet_max = connect
                    .properties
                    .maximum_packet_size
                    .map_or(usize::MAX, |m| m as usize);
                drop(s);
                return (old, true, false);
            }
            discarded = true;
            old.attached.send_replace(u64::MAX);
            let subs: Vec<String> = old.lock().subs.keys().cloned().collect();
            for f in subs {
                remove_sub(&mut st.router, &f, client_id);
            }
        }
        let session = Arc::new(Session {
            client_id: client_id.clone(),
            state: Mutex::new(SessionState {
                subs: HashMap::new(),
                queue: VecDeque::new(),
                inflight: BTreeMap::new(),
                incoming: HashSet::new(),
                next_pkid: 1,
                connection,
                expiry_secs: expiry,
                receive_max: self.outbound_window(connect),
                packet_max: connect
                    .properties
                    .maximum_packet_size
                    .map_or(usize::MAX, |m| m as usize),
                version: connect.version,
                waited_on: false,
                slow: false,
            }),
            wake: Notify::new(),
            room: Notify::new(),
            attached: tokio::sync::watch::Sender::new(connection),
        });
        st.sessions.insert(client_id.clone(), session.clone());
        (session, false, discarded)
    }

    /// QoS 1 and 2 messages in flight to a client at once: its receive maximum (v5), and at
    /// most `inflight_max` (v3 has no flow control of its own; a deep window only moves the
    /// queue into socket buffers, where it adds latency and escapes the queue limit).
    fn outbound_window(&self, connect: &Connect) -> u16 {
        connect
            .properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(self.cfg.inflight_max)
            .max(1)
    }

    /// Removes a session that has expired (if no connection came back for it meanwhile).
    async fn expire(&self, session: &Arc<Session>) {
        let persistent = {
            let mut st = self.write();
            let Some(current) = st.sessions.get(&session.client_id) else {
                return;
            };
            if !Arc::ptr_eq(current, session) || session.lock().connection != 0 {
                return;
            }
            let subs: Vec<String> = session.lock().subs.keys().cloned().collect();
            for f in subs {
                remove_sub(&mut st.router, &f, &session.client_id);
            }
            st.sessions.remove(&session.client_id);
            session.lock().queue.iter().any(|q| q.durable)
                || session.lock().inflight.values().any(|f| match f {
                    Flight::Sent(q) => q.durable,
                    Flight::Released { durable, .. } => *durable,
                })
                || session.lock().expiry_secs > 0
        };
        if persistent {
            let id = session.client_id.clone();
            if let Some(store) = &self.store {
                Self::logged("deleting a session", store.delete_session(&id).await);
            }
        }
    }
}

/// What became of a message offered to a session.
enum Enqueued {
    Dropped,
    Memory,
    /// Queued, and to be stored before the publisher is acknowledged.
    Durable(Box<MessageRow>),
    /// Not queued: the connected client's queue is full, and the publisher may wait for room.
    Full,
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A message as stored for `client` (empty: a retained message).
fn row(client: &str, seq: u64, m: &Message, qos: QoS, retain: bool, sub_ids: &[u32]) -> MessageRow {
    let mut props = m.properties.clone();
    props.subscription_identifiers = sub_ids.to_vec();
    MessageRow {
        client_id: client.to_string(),
        seq,
        pkid: 0,
        released: false,
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: qos as u8,
        retain,
        properties: codec::encode_properties(&props),
        expires_at_ms: m.expires_at.map(|t| {
            unix_ms_now() + t.saturating_duration_since(Instant::now()).as_millis() as i64
        }),
        from_client: m.from.to_string(),
    }
}

/// A stored message back in memory; `None` if it expired meanwhile or cannot be read.
fn message_from_row(r: &MessageRow, now: Instant) -> Option<Message> {
    let expires_at = match r.expires_at_ms {
        None => None,
        Some(ms) => {
            let left = ms - unix_ms_now();
            if left <= 0 {
                return None;
            }
            Some(now + Duration::from_millis(left as u64))
        }
    };
    Some(Message {
        topic: r.topic.as_str().into(),
        payload: Bytes::from(r.payload.clone()),
        qos: QoS::from_u8(r.qos)?,
        retain: r.retain,
        properties: codec::decode_properties(&r.properties).ok()?,
        expires_at,
        from: r.from_client.as_str().into(),
    })
}

fn remove_sub(router: &mut Router, full: &str, client: &str) {
    if let Ok((share, filter)) = topic::split_share(full) {
        let share = share.map(|g| format!("{g}/{filter}"));
        router.remove(filter, client, share.as_deref());
    }
}

fn connack(present: bool, code: u8) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: present,
        code,
        properties: Properties::default(),
    })
}

async fn send<S: AsyncWrite + Unpin>(io: &mut S, p: &Packet, v: Version) -> std::io::Result<()> {
    let mut b = BytesMut::new();
    codec::encode(p, v, &mut b);
    io.write_all(&b).await?;
    io.flush().await
}

/// Reads until one whole packet is buffered; `Ok(None)` at end of stream.
async fn read_packet<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    v: Option<Version>,
    max: usize,
) -> Result<Option<Packet>, DecodeError> {
    loop {
        if let Some(p) = codec::decode(buf, v, max)? {
            return Ok(Some(p));
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// A connection's write buffer is kept between rounds up to this size (past a burst it is let
/// go, so idle connections stay small).
const OUT_KEEP_MAX: usize = 64 * 1024;

/// Spare room in a connection's read buffer before each read: from this…
const READ_ROOM_MIN: usize = 256;
/// …doubling while reads fill it, up to this.
const READ_ROOM_MAX: usize = 64 * 1024;

/// One connection's state.
struct Conn<A: Access> {
    broker: Arc<Broker<A>>,
    session: Arc<Session>,
    id: u64,
    who: A::Principal,
    version: Version,
    out: BytesMut,
    aliases: HashMap<u16, Arc<str>>,
    connect_will: Option<codec::Will>,
    will_delay: u32,
    expiry: u32,
}

impl<A: Access> Conn<A> {
    fn packet(&mut self, p: &Packet) {
        codec::encode(p, self.version, &mut self.out);
    }

    fn disconnect(&mut self, code: u8) {
        if self.version == Version::V5 {
            self.packet(&Packet::Disconnect(Disconnect {
                code,
                properties: Properties::default(),
            }));
        }
    }

    /// Messages in flight from an earlier connection go out again, marked DUP (PUBREL for
    /// those already received).
    fn resend_inflight(&mut self) {
        let s = self.session.clone();
        let st = s.lock();
        let flights: Vec<(u16, Flight)> =
            st.inflight.iter().map(|(k, v)| (*k, v.clone())).collect();
        drop(st);
        for (pkid, f) in flights {
            match f {
                Flight::Sent(q) => {
                    let p = self.publish_packet(&q, pkid, true);
                    self.packet(&p);
                }
                Flight::Released { .. } => {
                    self.packet(&Packet::PubRel(Ack::new(pkid, reason::SUCCESS)))
                }
            }
        }
    }

    fn publish_packet(&self, q: &Queued, pkid: u16, dup: bool) -> Packet {
        let mut properties = if self.version == Version::V5 {
            q.msg.properties.clone()
        } else {
            Properties::default()
        };
        if self.version == Version::V5 {
            properties.subscription_identifiers = q.sub_ids.clone();
            if let Some(t) = q.msg.expires_at {
                let left = t.saturating_duration_since(Instant::now()).as_secs();
                properties.message_expiry_interval = Some(left.max(1) as u32);
            }
        }
        Packet::Publish(Publish {
            dup: dup && q.qos != QoS::AtMostOnce,
            qos: q.qos,
            retain: q.retain,
            topic: q.msg.topic.to_string(),
            pkid: if q.qos == QoS::AtMostOnce { 0 } else { pkid },
            payload: q.msg.payload.clone(),
            properties,
        })
    }

    /// Moves queued messages into the window while the client's receive maximum allows. A
    /// stored QoS 2 message's packet id is stored before it is sent, so that after a restart
    /// it is resent under the same id (and not delivered twice).
    async fn flush_queue(&mut self) {
        let marks = self.fill_window();
        if !marks.is_empty() {
            let id = self.session.client_id.clone();
            if let Some(store) = &self.broker.store {
                for (seq, pkid) in marks {
                    let r = store.mark_message(&id, seq, pkid, false).await;
                    Broker::<A>::logged("recording a packet id", r);
                }
            }
        }
    }

    fn fill_window(&mut self) -> Vec<(u64, u16)> {
        let mut marks = Vec::new();
        let now = Instant::now();
        let session = self.session.clone();
        let mut st = session.lock();
        while let Some(q) = st.queue.front() {
            if q.qos != QoS::AtMostOnce && st.inflight.len() >= usize::from(st.receive_max) {
                break;
            }
            let Some(q) = st.queue.pop_front() else { break };
            if q.msg.expired(now) {
                continue;
            }
            let pkid = if q.qos == QoS::AtMostOnce {
                0
            } else {
                let mut id = st.next_pkid;
                while st.inflight.contains_key(&id) || id == 0 {
                    id = id.wrapping_add(1);
                }
                st.next_pkid = id.wrapping_add(1);
                id
            };
            let p = self.publish_packet(&q, pkid, false);
            // A packet larger than the client accepts is dropped (MQTT-3.1.2-24).
            let before = self.out.len();
            if codec::encode(&p, self.version, &mut self.out) > st.packet_max {
                self.out.truncate(before);
                self.broker.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if q.durable && q.qos == QoS::ExactlyOnce {
                marks.push((q.seq, pkid));
            }
            if q.qos != QoS::AtMostOnce {
                st.inflight.insert(pkid, Flight::Sent(q));
            }
            self.broker.stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        let live = self.broker.live_limit();
        if st.waited_on && st.queue.len() < live {
            st.waited_on = false;
            session.room.notify_waiters();
        }
        if st.slow && st.queue.len() <= live / 2 {
            st.slow = false;
        }
        marks
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        buf: &mut BytesMut,
        keep_alive: u16,
    ) -> End {
        let grace = if keep_alive == 0 {
            Duration::from_secs(u64::from(u32::MAX))
        } else {
            Duration::from_millis(u64::from(keep_alive) * 1500)
        };
        let session = self.session.clone();
        let broker = self.broker.clone();
        let mut attached = session.attached.subscribe();
        // The keep-alive timer is moved lazily: reads only note the time, and the timer, when
        // it fires early, is set again from there (not one timer change per read).
        let mut last_read = tokio::time::Instant::now();
        let mut read_room = READ_ROOM_MIN;
        let keep_alive_timer = tokio::time::sleep_until(last_read + grace);
        tokio::pin!(keep_alive_timer);
        // One watch for the connection's life (not one per wake-up).
        let who = self.who.clone();
        let revoked = broker.access.revoked(&who);
        tokio::pin!(revoked);
        self.flush_queue().await;
        loop {
            // Whole packets already buffered are handled before reading more, and what they
            // answer goes out in one write.
            match codec::decode(buf, Some(self.version), broker.cfg.packet_size_max) {
                Ok(Some(p)) => match Box::pin(self.handle(p)).await {
                    Some(end) => {
                        if !self.out.is_empty() {
                            let _ = io.write_all(&self.out).await;
                            let _ = io.flush().await;
                        }
                        return end;
                    }
                    None => continue,
                },
                Ok(None) => {}
                Err(e) => {
                    broker.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    self.disconnect(e.reason());
                    let _ = io.write_all(&self.out).await;
                    let _ = io.flush().await;
                    return End::Abnormal;
                }
            }
            if !self.out.is_empty() {
                // Written from, then cleared: the buffer is kept for the next round.
                if io.write_all(&self.out).await.is_err() || io.flush().await.is_err() {
                    return End::Abnormal;
                }
                self.out.clear();
                if self.out.capacity() > OUT_KEEP_MAX {
                    self.out = BytesMut::new();
                }
            }
            // Room for the whole packet being read, at once rather than by small growths; else
            // as much as recent reads used (a busy connection reads in large chunks, an idle
            // one holds a small buffer).
            if buf.is_empty() && buf.capacity() > 4 * read_room {
                *buf = BytesMut::new();
            }
            match codec::frame_size(buf) {
                Some(size) if size > buf.len() => buf.reserve(size - buf.len()),
                _ => buf.reserve(read_room),
            }
            let room = buf.capacity() - buf.len();
            tokio::select! {
                r = io.read_buf(buf) => match r {
                    Ok(0) | Err(_) => return End::Abnormal,
                    Ok(n) => {
                        last_read = tokio::time::Instant::now();
                        if n >= room {
                            read_room = (read_room * 2).min(READ_ROOM_MAX);
                        } else if n < read_room / 4 {
                            read_room = (read_room / 2).max(READ_ROOM_MIN);
                        }
                    }
                },
                _ = &mut keep_alive_timer => {
                    if tokio::time::Instant::now() < last_read + grace {
                        keep_alive_timer.as_mut().reset(last_read + grace);
                        continue;
                    }
                    self.disconnect(reason::KEEP_ALIVE_TIMEOUT);
                    let _ = io.write_all(&self.out).await;
                    return End::Abnormal;
                }
                _ = session.wake.notified() => self.flush_queue().await,
                _ = attached.changed() => {
                    if *attached.borrow_and_update() != self.id {
                        self.disconnect(reason::SESSION_TAKEN_OVER);
                        let _ = io.write_all(&self.out).await;
                        let _ = io.flush().await;
                        return End::TakenOver;
                    }
                }
                _ = &mut revoked => {
                    self.disconnect(reason::NOT_AUTHORIZED);
                    let _ = io.write_all(&self.out).await;
                    let _ = io.flush().await;
                    return End::Abnormal;
                }
            }
        }
    }

    /// Removes an acknowledged message from the store.
    async fn forget(&self, seq: Option<u64>) {
        if let Some(seq) = seq {
            let id = self.session.client_id.clone();
            if let Some(store) = &self.broker.store {
                let r = store.remove_message(&id, seq).await;
                Broker::<A>::logged("removing a delivered message", r);
            }
        }
    }

    /// Handles one packet from the client; `Some` ends the connection.
    async fn handle(&mut self, p: Packet) -> Option<End> {
        let broker = self.broker.clone();
        match p {
            Packet::Publish(p) => return self.on_publish(p).await,
            Packet::PubAck(a) => {
                let done = {
                    let mut st = self.session.lock();
                    match st.inflight.get(&a.pkid) {
                        Some(Flight::Sent(q)) if q.qos == QoS::AtLeastOnce => {
                            let d = q.durable.then_some(q.seq);
                            st.inflight.remove(&a.pkid);
                            d
                        }
                        _ => None,
                    }
                };
                self.forget(done).await;
                self.flush_queue().await;
            }
            Packet::PubRec(a) => {
                let flight = {
                    let st = self.session.lock();
                    match st.inflight.get(&a.pkid) {
                        Some(Flight::Sent(q)) if q.qos == QoS::ExactlyOnce => {
                            Some((q.seq, q.durable))
                        }
                        Some(Flight::Released { seq, durable }) => Some((*seq, *durable)),
                        _ => None,
                    }
                };
                match flight {
                    Some((seq, durable)) if a.code < 0x80 => {
                        self.session
                            .lock()
                            .inflight
                            .insert(a.pkid, Flight::Released { seq, durable });
                        if durable {
                            let (id, pkid) = (self.session.client_id.clone(), a.pkid);
                            if let Some(store) = &broker.store {
                                let r = store.mark_message(&id, seq, pkid, true).await;
                                Broker::<A>::logged("recording a PUBREC", r);
                            }
                        }
                        self.packet(&Packet::PubRel(Ack::new(a.pkid, reason::SUCCESS)));
                    }
                    // An error code ends the exchange.
                    Some((seq, durable)) => {
                        self.session.lock().inflight.remove(&a.pkid);
                        self.forget(durable.then_some(seq)).await;
                        self.flush_queue().await;
                    }
                    None => {
                        self.packet(&Packet::PubRel(Ack::new(
                            a.pkid,
                            reason::PACKET_ID_NOT_FOUND,
                        )));
                    }
                }
            }
            Packet::PubComp(a) => {
                let done = {
                    let mut st = self.session.lock();
                    match st.inflight.get(&a.pkid) {
                        Some(Flight::Released { seq, durable }) => {
                            let d = durable.then_some(*seq);
                            st.inflight.remove(&a.pkid);
                            d
                        }
                        _ => None,
                    }
                };
                self.forget(done).await;
                self.flush_queue().await;
            }
            Packet::PubRel(a) => {
                let known = self.session.lock().incoming.remove(&a.pkid);
                if known
                    && self.expiry > 0
                    && let Some(store) = &self.broker.store
                {
                    let r = store
                        .release_incoming(&self.session.client_id, a.pkid)
                        .await;
                    Broker::<A>::logged("releasing a QoS 2 packet id", r);
                }
                let code = if known {
                    reason::SUCCESS
                } else {
                    reason::PACKET_ID_NOT_FOUND
                };
                self.packet(&Packet::PubComp(Ack::new(a.pkid, code)));
            }
            Packet::Subscribe(s) => self.on_subscribe(s).await,
            Packet::Unsubscribe(u) => {
                let mut codes = Vec::new();
                for f in &u.filters {
                    let existed = self.session.lock().subs.remove(f).is_some();
                    if existed {
                        remove_sub(&mut broker.write().router, f, &self.session.client_id);
                    }
                    codes.push(if existed {
                        reason::SUCCESS
                    } else {
                        reason::NO_SUBSCRIPTION_EXISTED
                    });
                }
                if self.expiry > 0 {
                    broker.save_session(&self.session).await;
                }
                self.packet(&Packet::UnsubAck(UnsubAck {
                    pkid: u.pkid,
                    codes,
                    properties: Properties::default(),
                }));
            }
            Packet::PingReq => self.packet(&Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    // A session closed with expiry 0 cannot be made persistent now.
                    if self.expiry == 0 && e > 0 {
                        self.disconnect(reason::PROTOCOL_ERROR);
                        return Some(End::Abnormal);
                    }
                    self.expiry = e.min(broker.cfg.session_expiry_max_secs);
                }
                return Some(End::Client {
                    will: d.code == reason::DISCONNECT_WITH_WILL,
                });
            }
            Packet::Auth(_) => {
                self.disconnect(reason::BAD_AUTH_METHOD);
                return Some(End::Abnormal);
            }
            // Server-to-client packets from a client.
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => {
                self.disconnect(reason::PROTOCOL_ERROR);
                return Some(End::Abnormal);
            }
        }
        None
    }

    async fn on_publish(&mut self, mut p: Publish) -> Option<End> {
        let broker = self.broker.clone();
        broker.stats.received.fetch_add(1, Ordering::Relaxed);
        // Topic aliases (v5): an alias with a topic sets it, an alias alone stands for it.
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > broker.cfg.topic_alias_max {
                self.disconnect(reason::TOPIC_ALIAS_INVALID);
                return Some(End::Abnormal);
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic = t.to_string(),
                    None => {
                        self.disconnect(reason::PROTOCOL_ERROR);
                        return Some(End::Abnormal);
                    }
                }
            } else {
                self.aliases.insert(alias, p.topic.as_str().into());
            }
        }
        if topic::check_name(&p.topic, broker.cfg.topic_depth_max).is_err() {
            self.disconnect(reason::TOPIC_NAME_INVALID);
            return Some(End::Abnormal);
        }
        if p.qos != QoS::AtMostOnce {
            let st = self.session.lock();
            if p.qos == QoS::ExactlyOnce
                && !st.incoming.contains(&p.pkid)
                && st.incoming.len() >= usize::from(broker.cfg.inflight_max)
            {
                drop(st);
                self.disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED);
                return Some(End::Abnormal);
            }
        }
        let allowed = broker.access.may_publish(&self.who, &p.topic).await;
        let mut code = if allowed {
            reason::SUCCESS
        } else {
            reason::NOT_AUTHORIZED
        };
        if !allowed {
            broker.stats.denied.fetch_add(1, Ordering::Relaxed);
        }
        let duplicate = p.qos == QoS::ExactlyOnce && self.session.lock().incoming.contains(&p.pkid);
        if allowed && !duplicate {
            let expires_at = p
                .properties
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
            let props = &p.properties;
            let msg = Message {
                topic: p.topic.as_str().into(),
                payload: p.payload.clone(),
                qos: p.qos,
                retain: p.retain,
                properties: Properties {
                    payload_format_utf8: props.payload_format_utf8,
                    content_type: props.content_type.clone(),
                    response_topic: props.response_topic.clone(),
                    correlation_data: props.correlation_data.clone(),
                    user_properties: props.user_properties.clone(),
                    ..Properties::default()
                },
                expires_at,
                from: self.session.client_id.clone(),
            };
            broker.access.accepted(&self.who, &msg).await;
            // A persistent session's QoS 2 packet id is stored with the message.
            let incoming = (p.qos == QoS::ExactlyOnce && self.expiry > 0)
                .then(|| (self.session.client_id.to_string(), p.pkid));
            match broker.publish_with(msg, incoming).await {
                Ok(_) => {
                    if p.qos == QoS::ExactlyOnce {
                        self.session.lock().incoming.insert(p.pkid);
                    }
                }
                // Not stored: not acknowledged (v3 has no error code: the connection closes).
                Err(e) => {
                    tracing::error!(error = %e, "an MQTT message could not be stored");
                    if self.version == Version::V311 && p.qos != QoS::AtMostOnce {
                        return Some(End::Abnormal);
                    }
                    code = reason::UNSPECIFIED_ERROR;
                }
            }
        }
        // A resend of a QoS 2 message already routed is acknowledged again, not routed twice.
        let v5 = self.version == Version::V5;
        // v3 has no way to say no: the message is dropped and acknowledged as usual.
        let code = if v5 { code } else { reason::SUCCESS };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.packet(&Packet::PubAck(Ack::new(p.pkid, code))),
            QoS::ExactlyOnce => self.packet(&Packet::PubRec(Ack::new(p.pkid, code))),
        }
        None
    }

    async fn on_subscribe(&mut self, s: codec::Subscribe) {
        let broker = self.broker.clone();
        let v5 = self.version == Version::V5;
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained_for: Vec<(String, SubOptions)> = Vec::new();
        let mut granted: Vec<(String, SubOptions)> = Vec::new();
        for (full, opts) in s.filters {
            let parsed = topic::split_share(&full).and_then(|(share, f)| {
                topic::check_filter(f, broker.cfg.topic_depth_max).map(|_| (share, f))
            });
            let Ok((share, filter)) = parsed else {
                codes.push(if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    reason::V3_SUBACK_FAILURE
                });
                continue;
            };
            {
                let st = self.session.lock();
                if !st.subs.contains_key(&full) && st.subs.len() >= broker.cfg.subscriptions_max {
                    drop(st);
                    codes.push(if v5 {
                        reason::QUOTA_EXCEEDED
                    } else {
                        reason::V3_SUBACK_FAILURE
                    });
                    continue;
                }
            }
            if share.is_some() && opts.no_local {
                codes.push(if v5 {
                    reason::PROTOCOL_ERROR
                } else {
                    reason::V3_SUBACK_FAILURE
                });
                continue;
            }
            if !broker.access.may_subscribe(&self.who, filter).await {
                broker.stats.denied.fetch_add(1, Ordering::Relaxed);
                codes.push(if v5 {
                    reason::NOT_AUTHORIZED
                } else {
                    reason::V3_SUBACK_FAILURE
                });
                continue;
            }
            let entry = Entry {
                client: self.session.client_id.clone(),
                // A share group is its name and its filter.
                share: share.map(|g| Arc::from(format!("{g}/{filter}"))),
                options: opts,
                id: sub_id,
            };
            let is_new = broker.write().router.insert(filter, entry);
            self.session
                .lock()
                .subs
                .insert(full.clone(), (opts, sub_id));
            // Retained messages: on every subscribe (0), only a new one (1), never (2); never
            // to a share group.
            if share.is_none()
                && (opts.retain_handling == 0 || (opts.retain_handling == 1 && is_new))
            {
                retained_for.push((filter.to_string(), opts));
            }
            if share.is_none() {
                granted.push((filter.to_string(), opts));
            }
            codes.push(opts.qos as u8);
        }
        if self.expiry > 0 {
            broker.save_session(&self.session).await;
        }
        self.packet(&Packet::SubAck(SubAck {
            pkid: s.pkid,
            codes,
            properties: Properties::default(),
        }));
        for (filter, _) in &granted {
            broker.access.subscribed(&self.who, filter).await;
        }
        if !retained_for.is_empty() {
            let now = Instant::now();
            let matches: Vec<(Arc<Message>, SubOptions)> = {
                let st = broker.read();
                let mut v = Vec::new();
                for (f, o) in &retained_for {
                    for m in st.retained.values() {
                        if topic::matches(f, &m.topic) && !m.expired(now) {
                            v.push((m.clone(), *o));
                        }
                    }
                }
                v
            };
            let mut rows = Vec::new();
            for (m, o) in matches {
                let qos = o.qos.min(m.qos);
                let ids: Vec<u32> = sub_id.into_iter().collect();
                // Retained messages for a new subscription are not worth a wait: the queue
                // full, they are dropped.
                if let Enqueued::Durable(r) =
                    broker.enqueue(&self.session, &m, qos, true, &ids, false)
                {
                    rows.push(*r);
                }
            }
            if !rows.is_empty()
                && let Some(store) = &broker.store
            {
                let r = store.append_messages(rows, None).await;
                Broker::<A>::logged("storing retained messages for a session", r);
            }
        }
    }

    /// After the connection: the will (unless the client said goodbye), and the session kept
    /// for its expiry or removed.
    async fn finish(self, end: End) {
        let broker = self.broker.clone();
        let session = self.session.clone();
        let taken_over = matches!(end, End::TakenOver);
        if !taken_over {
            let mut st = session.lock();
            st.connection = 0;
            st.expiry_secs = self.expiry;
        }
        // Publishers waiting for room in its queue wait no more.
        session.room.notify_waiters();
        let will = match end {
            End::Client { will } => will,
            End::Abnormal => true,
            End::TakenOver => false,
        };
        if will && let Some(w) = self.connect_will.clone() {
            let delay = self.will_delay.min(self.expiry);
            let msg = Message {
                topic: w.topic.as_str().into(),
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
                properties: Properties {
                    payload_format_utf8: w.properties.payload_format_utf8,
                    content_type: w.properties.content_type.clone(),
                    response_topic: w.properties.response_topic.clone(),
                    correlation_data: w.properties.correlation_data.clone(),
                    user_properties: w.properties.user_properties.clone(),
                    ..Properties::default()
                },
                expires_at: w
                    .properties
                    .message_expiry_interval
                    .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
                from: session.client_id.clone(),
            };
            if broker.access.may_publish(&self.who, &w.topic).await {
                if delay == 0 {
                    if let Err(e) = broker.publish(msg).await {
                        tracing::error!(error = %e, "a will could not be stored");
                    }
                } else {
                    // Sent after the delay unless the client is back by then.
                    let (b, s) = (broker.clone(), session.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                        let back = {
                            let st = b.read();
                            st.sessions.get(&s.client_id).is_some_and(|cur| {
                                !Arc::ptr_eq(cur, &s) || cur.lock().connection != 0
                            })
                        };
                        if !back && let Err(e) = b.publish(msg).await {
                            tracing::error!(error = %e, "a will could not be stored");
                        }
                    });
                }
            } else {
                broker.stats.denied.fetch_add(1, Ordering::Relaxed);
            }
        }
        if taken_over {
            // A wake-up this connection took may have been meant for its successor.
            session.wake.notify_one();
            return;
        }
        if self.expiry == 0 {
            broker.expire(&session).await;
        } else if self.expiry != u32::MAX {
            let (b, s, secs) = (broker.clone(), session.clone(), self.expiry);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
                b.expire(&s).await;
            });
        }
    }
}
