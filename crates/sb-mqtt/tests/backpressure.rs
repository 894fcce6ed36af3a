//! A connected client whose queue is full makes publishers wait for room (so a burst is not
//! lost), but only up to `queue_full_wait`: a client that stops reading does not stall its
//! publishers for longer, and its overflow is dropped and counted.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use bytes::{Bytes, BytesMut};
use sb_mqtt::broker::{Access, Broker, BrokerConfig, Peer, Refusal};
use sb_mqtt::codec::{
    self, Connect, Packet, Properties, Publish, QoS, SubOptions, Subscribe, Version,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Everyone may do everything.
struct Open;

#[async_trait::async_trait]
impl Access for Open {
    type Principal = ();
    async fn connect(&self, _: &Connect, _: &Peer) -> Result<(), Refusal> {
        Ok(())
    }
    async fn may_publish(&self, _: &(), _: &str) -> bool {
        true
    }
    async fn may_subscribe(&self, _: &(), _: &str) -> bool {
        true
    }
}

struct Client {
    io: DuplexStream,
    buf: BytesMut,
}

const V: Version = Version::V311;

impl Client {
    /// Connects through an in-memory pipe of `pipe` bytes (small: the client reads slowly).
    async fn connect(broker: &Arc<Broker<Open>>, id: &str, pipe: usize) -> Client {
        let (ours, theirs) = tokio::io::duplex(pipe);
        let b = broker.clone();
        tokio::spawn(b.serve(
            theirs,
            Peer {
                addr: "127.0.0.1:1".parse().unwrap(),
                allow_anonymous: true,
                certificate: None,
            },
        ));
        let mut c = Client {
            io: ours,
            buf: BytesMut::new(),
        };
        c.send(&Packet::Connect(Box::new(Connect {
            version: V,
            clean_start: true,
            keep_alive: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })))
        .await;
        assert!(matches!(c.next().await, Packet::ConnAck(a) if a.code == 0));
        c
    }

    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, V, &mut out);
        self.io.write_all(&out).await.unwrap();
    }

    async fn next(&mut self) -> Packet {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, Some(V), 1 << 20).unwrap() {
                return p;
            }
            assert!(self.io.read_buf(&mut self.buf).await.unwrap() > 0, "closed");
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![(filter.into(), SubOptions::qos(qos))],
            properties: Properties::default(),
        }))
        .await;
        assert!(matches!(self.next().await, Packet::SubAck(_)));
    }

    /// Publishes `n` numbered QoS 1 messages one by one, each once the previous is acknowledged.
    async fn publish_acked(&mut self, topic: &str, n: u32) {
        for i in 0..n {
            let pkid = (i % 60_000 + 1) as u16;
            self.send(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: topic.into(),
                pkid,
                payload: Bytes::from(i.to_be_bytes().to_vec()),
                properties: Properties::default(),
            }))
            .await;
            assert!(matches!(self.next().await, Packet::PubAck(a) if a.pkid == pkid));
        }
    }
}

fn broker(queue_max: usize, wait: Duration) -> Arc<Broker<Open>> {
    Broker::new(
        BrokerConfig {
            queue_max,
            queue_full_wait: wait,
            ..BrokerConfig::default()
        },
        Open,
        None,
    )
}

#[tokio::test]
async fn a_subscriber_that_reads_slowly_loses_nothing_of_a_burst_past_its_queue() {
    let b = broker(10, Duration::from_secs(30));
    // A pipe of 64 bytes: the broker can hand the subscriber only a few messages at a time.
    let mut sub = Client::connect(&b, "sub", 64).await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    let mut publisher = Client::connect(&b, "pub", 1 << 16).await;
    let burst = tokio::spawn(async move {
        publisher.publish_acked("t", 500).await;
    });
    // Read slowly; everything arrives, in order.
    for i in 0..500u32 {
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // (The guard only turns a lost message into a failure instead of a hang.)
        let next = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} was lost"));
        match next {
            Packet::Publish(p) => assert_eq!(p.payload.as_ref(), i.to_be_bytes()),
            other => panic!("{other:?}"),
        }
    }
    burst.await.unwrap();
    assert_eq!(b.stats.dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_stalls_publishers_only_briefly() {
    let b = broker(10, Duration::from_millis(200));
    let mut stuck = Client::connect(&b, "stuck", 64).await;
    stuck.subscribe("t", QoS::AtLeastOnce).await;
    let mut other = Client::connect(&b, "other", 1 << 20).await;
    other.subscribe("t", QoS::AtMostOnce).await;
    let mut publisher = Client::connect(&b, "pub", 1 << 16).await;
    // All 300 are acknowledged: the publisher waits for the stuck client once, then its
    // overflow is dropped. (The guard only keeps a broken broker from hanging the test.)
    tokio::time::timeout(Duration::from_secs(60), publisher.publish_acked("t", 300))
        .await
        .expect("the publisher was stalled by a client that does not read");
    assert!(b.stats.dropped.load(Ordering::Relaxed) > 0);
    // The client that reads got every one.
    for i in 0..300u32 {
        match other.next().await {
            Packet::Publish(p) => assert_eq!(p.payload.as_ref(), i.to_be_bytes()),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_v3_client_gets_at_most_inflight_max_unacknowledged_messages() {
    let b = Broker::new(
        BrokerConfig {
            inflight_max: 5,
            ..BrokerConfig::default()
        },
        Open,
        None,
    );
    let mut sub = Client::connect(&b, "sub", 1 << 16).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(&b, "pub", 1 << 16).await;
    publisher.publish_acked("t", 20).await;
    let mut pkids = Vec::new();
    for _ in 0..5 {
        match sub.next().await {
            Packet::Publish(p) => pkids.push(p.pkid),
            other => panic!("{other:?}"),
        }
    }
    // The window is full: nothing more comes until an acknowledgement.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "a sixth message came while five were unacknowledged"
    );
    sub.send(&Packet::PubAck(codec::Ack::new(pkids[0], 0)))
        .await;
    match sub.next().await {
        Packet::Publish(p) => assert_eq!(p.payload.as_ref(), 5u32.to_be_bytes()),
        other => panic!("{other:?}"),
    }
}
