//! MQTT against the real server with real clients nobody here wrote: Debian's
//! `mosquitto_pub` and `mosquitto_sub` (MQTT 3.1.1 and 5.0). Device credentials, QoS 0/1/2,
//! retained messages, wills, a persistent session's offline queue, shared subscriptions, and
//! the topic ACL (a device stays in its namespace; a revoked device is cut off).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Both mosquitto clients, or a loud skip.
fn clients() -> bool {
    external("mosquitto_pub").is_some() && external("mosquitto_sub").is_some()
}

struct Broker {
    server: TestServer,
    host: String,
    port: String,
}

impl Broker {
    fn start() -> Broker {
        Self::start_with_env(Vec::new())
    }

    fn start_with_env(env: Vec<(&str, String)>) -> Broker {
        Self::on_server(TestServer::start_with(ServerOptions {
            mqtt: true,
            env,
            ..Default::default()
        }))
    }

    /// On this data directory (again, after a restart).
    fn start_on(data: &std::path::Path) -> Broker {
        Self::on_server(TestServer::start_with(ServerOptions {
            mqtt: true,
            data_dir: Some(data.to_path_buf()),
            ..Default::default()
        }))
    }

    fn on_server(server: TestServer) -> Broker {
        let addr = server.mqtt.clone().expect("MQTT listener in the banner");
        let (host, port) = addr.rsplit_once(':').unwrap();
        Broker {
            host: host.to_string(),
            port: port.to_string(),
            server,
        }
    }

    fn conn_args<'a>(&'a self, user: &'a str, pass: &'a str) -> Vec<&'a str> {
        vec!["-h", &self.host, "-p", &self.port, "-u", user, "-P", pass]
    }

    fn publish(&self, user: &str, pass: &str, extra: &[&str]) -> std::process::Output {
        let mut args = self.conn_args(user, pass);
        args.extend_from_slice(extra);
        Command::new("mosquitto_pub").args(&args).output().unwrap()
    }

    /// `mosquitto_sub -d -v` with `extra`; returns once its SUBACK arrived.
    fn subscribe(&self, user: &str, pass: &str, extra: &[&str]) -> Sub {
        let mut args = self.conn_args(user, pass);
        args.extend_from_slice(&["-d", "-v"]);
        args.extend_from_slice(extra);
        // Line-buffered, so each line arrives as it is printed (stdbuf is in coreutils).
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        let mut sub = Sub {
            child,
            rx,
            log: Vec::new(),
            pending: Default::default(),
        };
        sub.wait_for("received SUBACK");
        sub
    }
}

struct Sub {
    child: Child,
    rx: mpsc::Receiver<String>,
    log: Vec<String>,
    /// Messages that arrived while waiting for something else.
    pending: std::collections::VecDeque<String>,
}

fn is_message(line: &str) -> bool {
    !line.starts_with("Client ") && !line.starts_with("stderr: ") && !line.starts_with("Subscribed")
}

impl Sub {
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    if is_message(&line) {
                        self.pending.push_back(line.clone());
                    }
                    self.log.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no {needle:?} within 20 s: {:#?}", self.log),
            }
        }
    }

    /// The next message (`topic payload`), skipping debug lines; `None` after `wait`.
    fn message(&mut self, wait: Duration) -> Option<String> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.rx.recv_timeout(left).ok()?;
            self.log.push(line.clone());
            if is_message(&line) {
                return Some(line);
            }
        }
    }

    fn messages(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.message(Duration::from_secs(20))
                    .unwrap_or_else(|| panic!("message {i} of {n} missing: {:#?}", self.log))
            })
            .collect()
    }

    /// Whether the client exited within `wait` (the server closed it).
    fn exits_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registered device: (id, secret).
async fn device(admin: &sb_client::Client, name: &str, group: &str) -> (String, String) {
    let s = admin
        .device_register(&sb_proto::DeviceRegister {
            name: name.into(),
            group: group.into(),
            tags: Default::default(),
        })
        .await
        .unwrap();
    (s.id, s.secret)
}

/// The admin's session token, as an MQTT password (user name `admin`).
async fn admin_token(server: &TestServer) -> (sb_client::Client, String) {
    let admin = server.admin().await;
    let c = server.client();
    let token = c
        .login("admin", sb_core::Secret::new(PASSWORD.into()))
        .await
        .unwrap()
        .token;
    (admin, token.expose().to_string())
}

#[tokio::test]
async fn mosquitto_clients_publish_and_subscribe_with_device_credentials() {
    if !clients() {
        return;
    }
    let b = Broker::start();
    let (admin, _) = admin_token(&b.server).await;
    let (id, secret) = device(&admin, "thermo-1", "sensors").await;
    let topic = format!("devices/{id}/telemetry");

    // A wrong secret is refused, in either version.
    for v in ["mqttv311", "mqttv5"] {
        let out = b.publish(&id, "sbd_wrong", &["-V", v, "-t", &topic, "-m", "x"]);
        assert!(!out.status.success(), "{v}: a wrong secret must be refused");
    }

    for v in ["mqttv311", "mqttv5"] {
        let mut sub = b.subscribe(
            &id,
            &secret,
            &["-V", v, "-q", "2", "-t", &format!("devices/{id}/#")],
        );
        for qos in ["0", "1", "2"] {
            let payload = format!("{v} qos {qos}");
            let out = b.publish(
                &id,
                &secret,
                &["-V", v, "-q", qos, "-t", &topic, "-m", &payload],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                sub.messages(1),
                vec![format!("{topic} {payload}")],
                "{v} QoS {qos}"
            );
        }
    }

    // Retained: a later subscriber gets the last retained message at once; an empty one
    // clears it.
    let status = format!("devices/{id}/status");
    let out = b.publish(
        &id,
        &secret,
        &["-q", "1", "-r", "-t", &status, "-m", "online"],
    );
    assert!(out.status.success());
    let mut late = b.subscribe(&id, &secret, &["-q", "1", "-t", &status]);
    assert_eq!(late.messages(1), vec![format!("{status} online")]);
    drop(late);
    let out = b.publish(&id, &secret, &["-q", "1", "-r", "-n", "-t", &status]);
    assert!(out.status.success());
    let mut later = b.subscribe(&id, &secret, &["-q", "1", "-t", &status]);
    assert_eq!(
        later.message(Duration::from_millis(700)),
        None,
        "retained message cleared"
    );
}

#[tokio::test]
async fn wills_persistent_sessions_and_shared_subscriptions() {
    if !clients() {
        return;
    }
    let b = Broker::start();
    let (admin, _) = admin_token(&b.server).await;
    let (id, secret) = device(&admin, "gw-1", "").await;
    let ns = format!("devices/{id}");

    // A will: published when its client vanishes without DISCONNECT.
    let mut watcher = b.subscribe(&id, &secret, &["-q", "1", "-t", &format!("{ns}/will")]);
    let mut dying = b.subscribe(
        &id,
        &secret,
        &[
            "-i",
            "dying",
            "-q",
            "1",
            "-t",
            &format!("{ns}/nothing"),
            "--will-topic",
            &format!("{ns}/will"),
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
        ],
    );
    dying.child.kill().unwrap();
    assert_eq!(watcher.messages(1), vec![format!("{ns}/will gone")]);

    // A persistent session (clean session off) keeps what arrives while it is away.
    let queue = format!("{ns}/queue");
    let session = b.subscribe(
        &id,
        &secret,
        &["-c", "-i", "sess-1", "-q", "1", "-t", &queue],
    );
    drop(session);
    for i in 0..3 {
        let out = b.publish(
            &id,
            &secret,
            &["-q", "1", "-t", &queue, "-m", &format!("m{i}")],
        );
        assert!(out.status.success());
    }
    let mut back = b.subscribe(
        &id,
        &secret,
        &["-c", "-i", "sess-1", "-q", "1", "-t", &queue],
    );
    assert_eq!(
        back.messages(3),
        vec![
            format!("{queue} m0"),
            format!("{queue} m1"),
            format!("{queue} m2")
        ]
    );

    // A shared subscription: each message goes to one member of the group.
    let shared = format!("$share/workers/{ns}/jobs");
    let mut w1 = b.subscribe(&id, &secret, &["-V", "mqttv5", "-q", "1", "-t", &shared]);
    let mut w2 = b.subscribe(&id, &secret, &["-V", "mqttv5", "-q", "1", "-t", &shared]);
    for i in 0..10 {
        let out = b.publish(
            &id,
            &secret,
            &[
                "-q",
                "1",
                "-t",
                &format!("{ns}/jobs"),
                "-m",
                &format!("job{i}"),
            ],
        );
        assert!(out.status.success());
    }
    let mut got = Vec::new();
    for w in [&mut w1, &mut w2] {
        while let Some(m) = w.message(Duration::from_millis(700)) {
            got.push(m);
        }
    }
    got.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("{ns}/jobs job{i}")).collect();
    want.sort();
    assert_eq!(got, want, "each job once, in all");
    assert!(
        w1.log.iter().any(|l| l.contains("job")) && w2.log.iter().any(|l| l.contains("job")),
        "both workers got some"
    );
}

#[tokio::test]
async fn a_device_stays_in_its_namespace_and_a_revoked_one_is_cut_off() {
    if !clients() {
        return;
    }
    let b = Broker::start();
    let (admin, token) = admin_token(&b.server).await;
    let (id, secret) = device(&admin, "cam-1", "").await;
    let (other, _) = device(&admin, "cam-2", "").await;

    // The admin (a session token as password) sees every topic.
    let mut all = b.subscribe("admin", &token, &["-q", "1", "-t", "#"]);

    // Subscribing outside its namespace is refused in the SUBACK (v3: 0x80; v5: 0x87).
    for v in ["mqttv311", "mqttv5"] {
        let out = Command::new("mosquitto_sub")
            .args(b.conn_args(&id, &secret))
            .args(["-V", v, "-t", &format!("devices/{other}/#"), "-W", "3"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("denied"), "{v}: {text}");
    }

    // Publishing outside: v5 gets "not authorized" in its PUBACK, v3 is silently dropped;
    // either way nobody receives it, while its own topic works.
    let out = b.publish(
        &id,
        &secret,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            &format!("devices/{other}/cmd"),
            "-m",
            "evil",
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(text.to_lowercase().contains("not authorized"), "{text}");
    let out = b.publish(
        &id,
        &secret,
        &["-q", "1", "-t", "elsewhere/x", "-m", "evil"],
    );
    assert!(out.status.success());
    let out = b.publish(
        &id,
        &secret,
        &["-q", "1", "-t", &format!("devices/{id}/ok"), "-m", "fine"],
    );
    assert!(out.status.success());
    assert_eq!(all.messages(1), vec![format!("devices/{id}/ok fine")]);

    // Every denial is audited.
    let audit = admin
        .admin_audit(&sb_proto::AuditQuery {
            action: Some("permission.denied".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(audit.len() >= 4, "{audit:?}");

    // Revoked: its open connection closes at once and it cannot come back.
    let mut live = b.subscribe(&id, &secret, &["-q", "1", "-t", &format!("devices/{id}/#")]);
    admin.device_revoke(&id).await.unwrap();
    assert!(
        live.exits_within(Duration::from_secs(10)),
        "{:#?}",
        live.log
    );
    let out = b.publish(
        &id,
        &secret,
        &["-q", "1", "-t", &format!("devices/{id}/ok"), "-m", "again"],
    );
    assert!(!out.status.success(), "a revoked device is refused");
}

/// A raw MQTT 5 connection from the test's own side, to send what no real client would.
/// A v5 CONNECT with these credentials and session; the stream, what is buffered after the
/// CONNACK, and the CONNACK.
async fn connect_v5(
    b: &Broker,
    user: &str,
    pass: &str,
    client_id: &str,
    session_expiry: Option<u32>,
) -> (
    tokio::net::TcpStream,
    bytes::BytesMut,
    sb_mqtt::codec::ConnAck,
) {
    use sb_mqtt::codec::{Connect, Packet, Properties, Version, encode};
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(format!("{}:{}", b.host, b.port))
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    encode(
        &Packet::Connect(Box::new(Connect {
            version: Version::V5,
            clean_start: session_expiry.is_none(),
            keep_alive: 30,
            client_id: client_id.into(),
            will: None,
            username: Some(user.into()),
            password: Some(bytes::Bytes::copy_from_slice(pass.as_bytes())),
            properties: Properties {
                session_expiry_interval: session_expiry,
                ..Properties::default()
            },
        })),
        Version::V5,
        &mut out,
    );
    s.write_all(&out).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    match next_packet(&mut s, &mut buf).await {
        Packet::ConnAck(ack) => (s, buf, ack),
        other => panic!("{other:?}"),
    }
}

async fn raw_connect(b: &Broker, id: &str, secret: &str) -> tokio::net::TcpStream {
    let (s, _, ack) = connect_v5(b, id, secret, "", None).await;
    assert_eq!(ack.code, 0);
    assert!(ack.properties.assigned_client_identifier.is_some());
    s
}

#[tokio::test]
async fn a_malformed_packet_closes_only_its_connection_with_the_right_reason() {
    use sb_mqtt::codec::{Packet, Version, decode, reason};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !clients() {
        return;
    }
    let b = Broker::start();
    let (admin, _) = admin_token(&b.server).await;
    let (id, secret) = device(&admin, "fuzzed-1", "").await;
    let mut bystander = b.subscribe(
        &id,
        &secret,
        &["-V", "mqttv5", "-q", "1", "-t", &format!("devices/{id}/#")],
    );

    let cases: [(&[u8], u8); 3] = [
        // PUBLISH with QoS 3.
        (&[0x36, 0x03, 0, 1, b'a'], reason::MALFORMED_PACKET),
        // A second CONNECT.
        (&[0x10, 0x00], reason::PROTOCOL_ERROR),
        // A packet announcing more than the server's maximum size.
        (&[0x30, 0xff, 0xff, 0xff, 0x7f], reason::PACKET_TOO_LARGE),
    ];
    for (bytes, want) in cases {
        let mut s = raw_connect(&b, &id, &secret).await;
        s.write_all(bytes).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let mut got = None;
        loop {
            if let Some(p) = decode(&mut buf, Some(Version::V5), 1 << 20).unwrap() {
                got = Some(p);
                continue;
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        match got {
            Some(Packet::Disconnect(d)) => assert_eq!(d.code, want, "{bytes:?}"),
            other => panic!("{bytes:?}: {other:?}"),
        }
    }
    // Everyone else is still served.
    let out = b.publish(
        &id,
        &secret,
        &[
            "-q",
            "1",
            "-t",
            &format!("devices/{id}/after"),
            "-m",
            "still here",
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        bystander.messages(1),
        vec![format!("devices/{id}/after still here")]
    );
}

#[tokio::test]
async fn queued_qos1_and_qos2_messages_survive_a_sigkill_of_the_server() {
    if !clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || Broker::start_on(&data);
    let b = start();
    let (admin, _) = admin_token(&b.server).await;
    let (id, secret) = device(&admin, "keeper-1", "").await;
    let topic = format!("devices/{id}/queue");
    let persistent = ["-c", "-i", "keeper", "-q", "2", "-t", topic.as_str()];
    // A persistent session subscribes, then goes away.
    drop(b.subscribe(&id, &secret, &persistent));
    // Messages for it, each acknowledged to its publisher (PUBACK, PUBCOMP).
    for (qos, name) in [("1", "one"), ("2", "two")] {
        for i in 0..3 {
            let out = b.publish(
                &id,
                &secret,
                &["-q", qos, "-t", &topic, "-m", &format!("{name}-{i}")],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The server dies without a chance to save anything more.
    let status = Command::new("kill")
        .args(["-KILL", &b.server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(b);

    let b = start();
    let mut back = b.subscribe(&id, &secret, &persistent);
    let mut got = Vec::new();
    while let Some(m) = back.message(Duration::from_millis(1500)) {
        got.push(m.trim_start_matches(&format!("{topic} ")).to_string());
    }
    for i in 0..3 {
        let one = format!("one-{i}");
        let two = format!("two-{i}");
        assert!(got.contains(&one), "QoS 1 at least once: {got:?}");
        assert_eq!(
            got.iter().filter(|m| **m == two).count(),
            1,
            "QoS 2 exactly once: {got:?}"
        );
    }
    // Delivered and acknowledged: after another restart, nothing comes again.
    drop(back);
    drop(b);
    let b = start();
    let mut again = b.subscribe(&id, &secret, &persistent);
    assert_eq!(
        again.message(Duration::from_millis(1000)),
        None,
        "{:?}",
        again.log
    );
}

/// paho-mqtt (PyPI) is importable by python3, or a loud skip (a failure under
/// SB_REQUIRE_EXTERNAL=1).
fn paho() -> bool {
    let ok = external("python3").is_some()
        && Command::new("python3")
            .args(["-c", "import paho.mqtt.client"])
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("SB_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "paho-mqtt is required (SB_REQUIRE_EXTERNAL=1) but not installed"
        );
        eprintln!("!!! SKIPPING the paho-mqtt checks: pip install paho-mqtt");
    }
    ok
}

#[tokio::test]
async fn paho_mqtt_v5_request_response_shared_subscriptions_and_properties() {
    if !paho() {
        return;
    }
    let b = Broker::start();
    let (admin, _) = admin_token(&b.server).await;
    let (id, secret) = device(&admin, "paho-1", "").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt_paho.py");
    let out = tokio::process::Command::new("python3")
        .args([script, &b.host, &b.port, &id, &secret])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("OK"), "{text}");
}

#[tokio::test]
async fn mqtt_over_websocket_at_slash_mqtt() {
    if !paho() {
        return;
    }
    let server = TestServer::start();
    let admin = server.admin().await;
    let (id, secret) = device(&admin, "ws-1", "").await;
    let (host, port) = server.addr.rsplit_once(':').unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt_paho_ws.py");
    let ca = server.data_dir.join("tls/cert.pem");
    let out = tokio::process::Command::new("python3")
        .args([script, host, port, &id, &secret])
        .arg(&ca)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("OK"), "{text}");
}

#[tokio::test]
async fn device_telemetry_becomes_series_queryable_with_promql() {
    if !clients() {
        return;
    }
    let b = Broker::start();
    let (admin, _) = admin_token(&b.server).await;
    let mut ids = Vec::new();
    for (name, t) in [("t-1", "20"), ("t-2", "24")] {
        let s = admin
            .device_register(&sb_proto::DeviceRegister {
                name: name.into(),
                group: "thermo".into(),
                tags: [("floor".to_string(), "2".to_string())].into(),
            })
            .await
            .unwrap();
        let topic = format!("devices/{}/telemetry", s.id);
        let json = format!(r#"{{"temperature": {t}, "door_open": false}}"#);
        let out = b.publish(&s.id, &s.secret, &["-q", "1", "-t", &topic, "-m", &json]);
        assert!(out.status.success());
        // Line protocol works too.
        let line = format!("power volts={t}.5");
        let out = b.publish(&s.id, &s.secret, &["-q", "1", "-t", &topic, "-m", &line]);
        assert!(out.status.success());
        ids.push(s.id);
    }
    let query = |q: String| {
        let admin = admin.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let v = admin
                    .prometheus_api("/api/v1/query", &[("query", q.as_str())])
                    .await
                    .unwrap();
                if !v["result"].as_array().unwrap().is_empty() || Instant::now() > deadline {
                    return v["result"].clone();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let one = query(format!(r#"temperature{{device_id="{}"}}"#, ids[0])).await;
    assert_eq!(one[0]["value"][1], "20", "{one}");
    assert_eq!(one[0]["metric"]["device"], "t-1");
    assert_eq!(one[0]["metric"]["floor"], "2");
    let avg = query(r#"avg by (group) (temperature)"#.to_string()).await;
    assert_eq!(avg[0]["metric"]["group"], "thermo", "{avg}");
    assert_eq!(avg[0]["value"][1], "22");
    let volts = query(format!(r#"power_volts{{device_id="{}"}}"#, ids[1])).await;
    assert_eq!(volts[0]["value"][1], "24.5", "{volts}");
}

/// A simulated device (MQTT 5, our own codec): subscribes to its commands and answers
/// `echo` with the payload, `fail` with status 500, and never answers `ignore`; applies every
/// twin delta it gets and reports it.
async fn simulated_device(b: &Broker, id: &str, secret: &str) -> tokio::task::JoinHandle<()> {
    use sb_mqtt::codec::{
        Packet, Properties, Publish, QoS, SubOptions, Subscribe, Version, decode, encode,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = raw_connect(b, id, secret).await;
    let mut out = bytes::BytesMut::new();
    encode(
        &Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![
                (
                    format!("devices/{id}/commands/#"),
                    SubOptions::qos(QoS::AtLeastOnce),
                ),
                (
                    format!("devices/{id}/twin/delta"),
                    SubOptions::qos(QoS::AtLeastOnce),
                ),
            ],
            properties: Properties::default(),
        }),
        Version::V5,
        &mut out,
    );
    s.write_all(&out).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    // The SUBACK first, so commands sent from here on are received.
    loop {
        if let Some(p) = decode(&mut buf, Some(Version::V5), 1 << 20).unwrap() {
            assert!(matches!(p, Packet::SubAck(_)), "{p:?}");
            break;
        }
        assert!(s.read_buf(&mut buf).await.unwrap() > 0);
    }
    tokio::spawn(async move {
        let mut next_pkid = 100u16;
        loop {
            let p = loop {
                match decode(&mut buf, Some(Version::V5), 1 << 20) {
                    Ok(Some(p)) => break p,
                    Ok(None) => {}
                    Err(e) => panic!("the simulated device cannot decode: {e} {buf:?}"),
                }
                if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            };
            let Packet::Publish(p) = p else { continue };
            let mut out = bytes::BytesMut::new();
            if p.qos == QoS::AtLeastOnce {
                encode(
                    &Packet::PubAck(sb_mqtt::codec::Ack::new(p.pkid, 0)),
                    Version::V5,
                    &mut out,
                );
            }
            if p.topic.ends_with("/twin/delta") {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                next_pkid += 1;
                let topic = p.topic.replace("/twin/delta", "/twin/reported");
                encode(
                    &Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic,
                        pkid: next_pkid,
                        payload: v["delta"].to_string().into_bytes().into(),
                        properties: Properties::default(),
                    }),
                    Version::V5,
                    &mut out,
                );
                if s.write_all(&out).await.is_err() {
                    return;
                }
                continue;
            }
            let method = p.topic.split('/').nth(3).unwrap_or("").to_string();
            let answer = match method.as_str() {
                "echo" => Some(format!(
                    r#"{{"status":200,"result":{}}}"#,
                    String::from_utf8_lossy(&p.payload)
                )),
                "fail" => Some(r#"{"status":500,"result":"broken"}"#.to_string()),
                _ => None,
            };
            if let (Some(answer), Some(topic)) = (answer, p.properties.response_topic.clone()) {
                next_pkid += 1;
                encode(
                    &Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic,
                        pkid: next_pkid,
                        payload: answer.into_bytes().into(),
                        properties: Properties {
                            correlation_data: p.properties.correlation_data.clone(),
                            ..Properties::default()
                        },
                    }),
                    Version::V5,
                    &mut out,
                );
            }
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    })
}

// Multi-threaded: the simulated devices run while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_succeed_fail_time_out_and_expire() {
    let b = Broker::start();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&b.server, home.path());
    let register = |name: &str| {
        let v = json(&sb(
            home.path(),
            &["device", "register", name, "--json"],
            "",
        ));
        (
            v["id"].as_str().unwrap().to_string(),
            v["secret"].as_str().unwrap().to_string(),
        )
    };
    let (id, secret) = register("sim-1");
    let _device = simulated_device(&b, &id, &secret).await;
    let call = |device: &str, method: &str, extra: &[&str]| {
        let mut args = vec!["device", "call", device, method, "--json"];
        args.extend_from_slice(extra);
        let out = sb(home.path(), &args, "");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}\n{}", stdout(&out), stderr(&out)));
        (out.status.success(), v, stderr(&out))
    };
    let (ok, v, _) = call(
        "sim-1",
        "echo",
        &["--payload", r#"{"x":1}"#, "--timeout", "5s"],
    );
    assert!(ok, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["status"].as_i64()),
        (Some("succeeded"), Some(200))
    );
    assert_eq!(v["result"], serde_json::json!({"x": 1}));

    let (ok, v, _) = call("sim-1", "fail", &["--timeout", "5s"]);
    assert!(!ok);
    assert_eq!(
        (v["state"].as_str(), v["status"].as_i64()),
        (Some("failed"), Some(500))
    );

    // Sent, never answered: timed out.
    let (ok, v, err) = call("sim-1", "ignore", &["--timeout", "1s"]);
    assert!(!ok);
    assert_eq!(v["state"], "timed_out", "{v}");
    assert!(v["sent_at_ms"].is_i64());
    assert!(err.contains("did not answer"), "{err}");

    // The device away: the command waits, then expires.
    let (id2, secret2) = register("sim-2");
    let (ok, v, err) = call("sim-2", "echo", &["--timeout", "2s", "--expires", "1s"]);
    assert!(!ok);
    assert_eq!(v["state"], "expired", "{v}");
    assert!(v["sent_at_ms"].is_null());
    assert!(err.contains("expired"), "{err}");

    // The device away, then back before the expiry: it gets the command and answers.
    let admin = b.server.login("admin").await;
    let queued = admin
        .device_call(
            "sim-2",
            &sb_proto::CommandCreate {
                method: "echo".into(),
                payload: serde_json::json!("hello"),
                timeout_secs: Some(5),
                expires_in_secs: Some(60),
                wait: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(queued.state, "queued");
    assert!(!admin.device("sim-2").await.unwrap().online);
    let _device2 = simulated_device(&b, &id2, &secret2).await;
    let done = admin
        .device_command("sim-2", &queued.id, Some(10))
        .await
        .unwrap();
    assert_eq!(
        (done.state.as_str(), done.result),
        ("succeeded", Some(serde_json::json!("hello")))
    );
    assert!(admin.device("sim-2").await.unwrap().online);

    // Bad input changes nothing: an unknown device, a bad method name, a huge timeout.
    assert!(
        !sb(home.path(), &["device", "call", "nope", "echo"], "")
            .status
            .success()
    );
    for bad in [
        sb_proto::CommandCreate {
            method: "a/b".into(),
            payload: serde_json::Value::Null,
            timeout_secs: None,
            expires_in_secs: None,
            wait: false,
        },
        sb_proto::CommandCreate {
            method: "ok".into(),
            payload: serde_json::Value::Null,
            timeout_secs: Some(10_000_000),
            expires_in_secs: None,
            wait: false,
        },
    ] {
        let e = admin.device_call("sim-1", &bad).await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_deliver_desired_state_take_reports_and_refuse_stale_versions() {
    if !clients() {
        return;
    }
    let b = Broker::start();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&b.server, home.path());
    let v = json(&sb(
        home.path(),
        &["device", "register", "twin-1", "--json"],
        "",
    ));
    let (id, secret) = (
        v["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    );
    let _device = simulated_device(&b, &id, &secret).await;
    let twin = |extra: &[&str]| {
        let mut args = vec!["device"];
        args.extend_from_slice(extra);
        args.push("--json");
        let out = sb(home.path(), &args, "");
        (out.status.success(), out)
    };
    // Desired state set from the CLI reaches the device, which reports it back.
    let (ok, out) = twin(&["configure", "twin-1", "interval=30", "mode=eco"]);
    assert!(ok, "{}", stderr(&out));
    let t = json(&out);
    assert_eq!(t["desired_version"], 1);
    assert_eq!(
        t["desired"],
        serde_json::json!({"interval": 30, "mode": "eco"})
    );
    assert!(t["desired_updated_ms"]["interval"].is_i64());
    let deadline = Instant::now() + Duration::from_secs(10);
    let t = loop {
        let (_, out) = twin(&["twin", "twin-1"]);
        let t = json(&out);
        if t["reported"] == t["desired"] || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        t["reported"],
        serde_json::json!({"interval": 30, "mode": "eco"}),
        "{t}"
    );
    assert_eq!(t["delta"], serde_json::json!({}));
    assert_eq!(t["reported_version"], 1);

    // Compare-and-set: a change based on version 1 goes through once; the second is stale.
    let (ok, out) = twin(&["configure", "twin-1", "mode=boost", "--version", "1"]);
    assert!(ok, "{}", stderr(&out));
    assert_eq!(json(&out)["desired_version"], 2);
    let (ok, out) = twin(&["configure", "twin-1", "mode=off", "--version", "1"]);
    assert!(!ok, "a stale version must be refused");
    assert!(stderr(&out).contains("version 2"), "{}", stderr(&out));
    let admin = b.server.login("admin").await;
    let stale = admin
        .device_configure(
            "twin-1",
            &sb_proto::TwinPatch {
                desired: [("mode".to_string(), serde_json::json!("off"))]
                    .into_iter()
                    .collect(),
                version: Some(1),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(stale.status(), Some(409), "{stale}");
    // Nothing changed by the refused ones; null removes a key.
    let t = admin.device_twin("twin-1").await.unwrap();
    assert_eq!(
        (t.desired_version, t.desired["mode"].as_str()),
        (2, Some("boost"))
    );
    let (ok, out) = twin(&["configure", "twin-1", "interval=null"]);
    assert!(ok);
    assert_eq!(json(&out)["desired"], serde_json::json!({"mode": "boost"}));

    // A device that subscribes later reads the whole desired document, retained.
    let mut late = b.subscribe(
        &id,
        &secret,
        &["-q", "1", "-t", &format!("devices/{id}/twin/desired")],
    );
    let m = late.messages(1);
    assert!(
        m[0].contains(r#""desired":{"mode":"boost"}"#) && m[0].contains(r#""version":3"#),
        "{m:?}"
    );
}

#[tokio::test]
async fn device_status_health_history_and_online_metrics() {
    if !clients() {
        return;
    }
    let b = Broker::start_with_env(vec![
        ("SB_MQTT__HEALTH_INTERVAL_SECS", "1".into()),
        ("SB_MQTT__STATUS_INTERVAL_SECS", "1".into()),
    ]);
    let (admin, _) = admin_token(&b.server).await;
    let (id, secret) = device(&admin, "status-1", "plant").await;
    let (_other, _) = device(&admin, "status-2", "plant").await;
    let d = admin.device("status-1").await.unwrap();
    assert_eq!((d.online, d.health.as_str()), (false, "unknown"));

    // Connected and reporting: online and healthy.
    let sub = b.subscribe(&id, &secret, &["-q", "1", "-t", &format!("devices/{id}/x")]);
    let out = b.publish(
        &id,
        &secret,
        &[
            "-q",
            "1",
            "-t",
            &format!("devices/{id}/health"),
            "-m",
            r#"{"battery":0.9}"#,
        ],
    );
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let d = loop {
        let d = admin.device("status-1").await.unwrap();
        if d.health == "healthy" || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(d.online);
    assert_eq!(d.health, "healthy");
    assert_eq!(d.health_report, Some(serde_json::json!({"battery": 0.9})));

    // The status series: 1 for the connected device, 0 for the other.
    let deadline = Instant::now() + Duration::from_secs(10);
    let online = loop {
        let v = admin
            .prometheus_api("/api/v1/query", &[("query", "device_online")])
            .await
            .unwrap();
        let r = v["result"].as_array().unwrap().clone();
        if r.len() == 2 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let value_of = |name: &str| {
        online
            .iter()
            .find(|s| s["metric"]["device"] == name)
            .map(|s| s["value"][1].clone())
    };
    assert_eq!(
        value_of("status-1"),
        Some(serde_json::json!("1")),
        "{online:?}"
    );
    assert_eq!(value_of("status-2"), Some(serde_json::json!("0")));

    // No report for longer than the interval: unhealthy. Gone: offline, with its history.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(admin.device("status-1").await.unwrap().health, "unhealthy");
    drop(sub);
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin.device("status-1").await.unwrap().online {
        assert!(
            Instant::now() < deadline,
            "still online after disconnecting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history = admin
        .admin_audit(&sb_proto::AuditQuery {
            action: Some("device.".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = history
        .iter()
        .filter(|e| e.target == id)
        .map(|e| e.action.as_str())
        .collect();
    assert!(
        actions.contains(&"device.connect") && actions.contains(&"device.disconnect"),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sb_device_simulate_runs_devices_that_report_answer_and_follow_their_twins() {
    let b = Broker::start();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&b.server, home.path());
    let mqtt = format!("{}:{}", b.host, b.port);
    let mut sim = Command::new(BIN)
        .args([
            "device",
            "simulate",
            "--count",
            "3",
            "--interval",
            "200ms",
            "--mqtt",
            &mqtt,
        ])
        .env("XDG_CONFIG_HOME", home.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let admin = b.server.login("admin").await;
    // Telemetry from all three, queryable by group.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = admin
            .prometheus_api(
                "/api/v1/query",
                &[("query", r#"count(temperature{group="simulated"})"#)],
            )
            .await
            .unwrap();
        if v["result"][0]["value"][1] == "3" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no telemetry from 3 devices: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // They answer commands and follow their twins.
    let out = sb(
        home.path(),
        &[
            "device",
            "call",
            "sim-0002",
            "echo",
            "--payload",
            r#"{"ping":1}"#,
            "--json",
        ],
        "",
    );
    let v = json(&out);
    assert_eq!(
        (v["state"].as_str(), v["result"].clone()),
        (Some("succeeded"), serde_json::json!({"ping": 1}))
    );
    json(&sb(
        home.path(),
        &["device", "configure", "sim-0003", "rate=5", "--json"],
        "",
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = admin.device_twin("sim-0003").await.unwrap();
        if t.reported["rate"] == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "twin not reported: {t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = admin.device("sim-0001").await.unwrap();
    assert!(d.online && d.health == "healthy", "{d:?}");
    sim.kill().unwrap();
    sim.wait().unwrap();
}

#[tokio::test]
async fn subscriptions_open_commands_and_twin_size_are_limited() {
    use sb_mqtt::codec::{Packet, Properties, QoS, SubOptions, Subscribe, Version, decode, encode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Broker::start_with_env(vec![
        ("SB_MQTT__SUBSCRIPTIONS_PER_CLIENT_MAX", "2".into()),
        ("SB_MQTT__COMMANDS_OPEN_PER_DEVICE_MAX", "1".into()),
        ("SB_MQTT__TWIN_BYTES_MAX", "100".into()),
    ]);
    let (admin, _) = admin_token(&b.server).await;
    let (id, secret) = device(&admin, "limited-1", "").await;

    // Three filters for a session that may hold two: the third is refused with 0x97.
    let mut s = raw_connect(&b, &id, &secret).await;
    let mut out = bytes::BytesMut::new();
    let filters = (0..3)
        .map(|i| {
            (
                format!("devices/{id}/f{i}"),
                SubOptions::qos(QoS::AtLeastOnce),
            )
        })
        .collect();
    encode(
        &Packet::Subscribe(Subscribe {
            pkid: 1,
            filters,
            properties: Properties::default(),
        }),
        Version::V5,
        &mut out,
    );
    s.write_all(&out).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let ack = loop {
        if let Some(p) = decode(&mut buf, Some(Version::V5), 1 << 20).unwrap() {
            break p;
        }
        assert!(s.read_buf(&mut buf).await.unwrap() > 0);
    };
    match ack {
        Packet::SubAck(a) => assert_eq!(a.codes, vec![1, 1, 0x97]),
        other => panic!("{other:?}"),
    }
    drop(s);

    // One open command per device here: a second one for the (offline) device is refused.
    let call = sb_proto::CommandCreate {
        method: "reboot".into(),
        payload: serde_json::Value::Null,
        timeout_secs: Some(5),
        expires_in_secs: Some(60),
        wait: false,
    };
    let first = admin.device_call("limited-1", &call).await.unwrap();
    assert_eq!(first.state, "queued");
    let e = admin.device_call("limited-1", &call).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");

    // A twin document past its size limit is refused, and nothing changes.
    let big = sb_proto::TwinPatch {
        desired: [("blob".to_string(), serde_json::json!("x".repeat(200)))]
            .into_iter()
            .collect(),
        version: None,
    };
    let e = admin.device_configure("limited-1", &big).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert_eq!(
        admin
            .device_twin("limited-1")
            .await
            .unwrap()
            .desired_version,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_past_its_threshold_raises_the_builtin_alert() {
    let b = Broker::start_with_env(vec![
        ("SB_MQTT__STATUS_INTERVAL_SECS", "1".into()),
        ("SB_MQTT__OFFLINE_ALERT_AFTER_SECS", "2".into()),
    ]);
    let admin = b.server.admin().await;
    let (_, _) = device(&admin, "away-1", "field").await;
    let (id, secret) = device(&admin, "here-1", "field").await;
    let _here = simulated_device(&b, &id, &secret).await;
    // The one that never came fires DeviceOffline, labelled and explained; the one online
    // does not.
    let deadline = Instant::now() + Duration::from_secs(30);
    let alert = loop {
        let alerts = admin.alerts().await.unwrap();
        if let Some(a) = alerts.iter().find(|a| {
            a.labels.get("alertname").map(String::as_str) == Some("DeviceOffline")
                && a.state == "firing"
        }) {
            break (a.clone(), alerts);
        }
        assert!(
            Instant::now() < deadline,
            "no DeviceOffline alert: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (a, all) = alert;
    assert_eq!(a.labels["device"], "away-1");
    assert_eq!(a.labels["group"], "field");
    assert!(
        a.annotations["summary"].contains("away-1"),
        "{:?}",
        a.annotations
    );
    assert!(
        !all.iter()
            .any(|x| x.labels.get("device").map(String::as_str) == Some("here-1")),
        "{all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_logs_in_over_tls_with_its_client_certificate_and_only_the_latest_one() {
    if !clients() {
        return;
    }
    // A TLS listener from the config file, on a port picked here.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sb.toml");
    std::fs::write(
        &config,
        format!("[[mqtt.listeners]]\nbind = \"127.0.0.1:{port}\"\ntls = true\n"),
    )
    .unwrap();
    let server = TestServer::start_with(ServerOptions {
        config: Some(config),
        ..Default::default()
    });
    let server_cert = server.data_dir.join("tls").join("cert.pem");
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&server, home.path());
    let dev = json(&sb(
        home.path(),
        &["device", "register", "cert-1", "--json"],
        "",
    ));
    let id = dev["id"].as_str().unwrap().to_string();
    let certs = home.path().join("certs");
    let issue = || {
        let out = sb(
            home.path(),
            &[
                "device",
                "cert",
                "cert-1",
                "--out",
                certs.to_str().unwrap(),
                "--json",
            ],
            "",
        );
        let c = json(&out);
        assert!(
            c["certificate_pem"]
                .as_str()
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        c
    };
    issue();
    let key = certs.join("cert-1.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let keep = |name: &str| {
        for ext in ["crt", "key"] {
            std::fs::copy(
                certs.join(format!("cert-1.{ext}")),
                certs.join(format!("{name}.{ext}")),
            )
            .unwrap();
        }
    };
    keep("first");
    let topic = format!("devices/{id}/telemetry");
    let publish = |cert: Option<&str>, body: &str| {
        let mut args: Vec<String> = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            server_cert.to_str().unwrap(),
            "-q",
            "1",
            "-t",
            &topic,
            "-m",
            body,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(name) = cert {
            for (flag, ext) in [("--cert", "crt"), ("--key", "key")] {
                args.push(flag.into());
                args.push(certs.join(format!("{name}.{ext}")).to_str().unwrap().into());
            }
        }
        Command::new("mosquitto_pub").args(&args).output().unwrap()
    };
    // With the certificate and no password: in, as the device (its telemetry is stored).
    let out = publish(Some("first"), r#"{"volts":3.3}"#);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = server.login("admin").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = admin
            .prometheus_api(
                "/api/v1/query",
                &[("query", &format!(r#"volts{{device_id="{id}"}}"#))],
            )
            .await
            .unwrap();
        if v["result"][0]["value"][1] == "3.3" {
            break;
        }
        assert!(Instant::now() < deadline, "no telemetry: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Neither certificate nor password: refused (no anonymous clients on this listener).
    assert!(!publish(None, "{}").status.success());
    // A new certificate replaces the first: the first is refused, the new one works.
    issue();
    keep("second");
    let out = publish(Some("first"), "{}");
    assert!(
        !out.status.success(),
        "a replaced certificate must be refused"
    );
    let out = publish(Some("second"), r#"{"volts":3.2}"#);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Revoked: refused.
    let out = sb(home.path(), &["device", "revoke", "cert-1"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!publish(Some("second"), "{}").status.success());
}

/// A v5 client with a persistent session (expiry one hour): its stream and read buffer, and
/// whether the server still had its session.
async fn persistent_client(
    b: &Broker,
    id: &str,
    secret: &str,
    client_id: &str,
) -> (tokio::net::TcpStream, bytes::BytesMut, bool) {
    let (s, buf, ack) = connect_v5(b, id, secret, client_id, Some(3600)).await;
    assert_eq!(ack.code, 0);
    (s, buf, ack.session_present)
}

async fn next_packet(
    s: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
) -> sb_mqtt::codec::Packet {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(p) =
            sb_mqtt::codec::decode(buf, Some(sb_mqtt::codec::Version::V5), 1 << 20).unwrap()
        {
            return p;
        }
        assert!(s.read_buf(buf).await.unwrap() > 0, "closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publish_resent_after_a_sigkill_is_not_routed_twice() {
    use sb_mqtt::codec::{Ack, Packet, Properties, Publish, QoS, Version, encode};
    use tokio::io::AsyncWriteExt;
    if !clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || Broker::start_on(&data);
    let b = start();
    let (admin, _) = admin_token(&b.server).await;
    let (id, secret) = device(&admin, "twice-1", "").await;
    let topic = format!("devices/{id}/once");
    let sub_args = ["-c", "-i", "listener", "-q", "2", "-t", topic.as_str()];
    drop(b.subscribe(&id, &secret, &sub_args));
    // A QoS 2 PUBLISH, its PUBREC received, and then the server dies before the PUBREL.
    let (mut s, mut buf, _) = persistent_client(&b, &id, &secret, "sender").await;
    let publish = |dup: bool| {
        let mut out = bytes::BytesMut::new();
        encode(
            &Packet::Publish(Publish {
                dup,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: topic.clone(),
                pkid: 42,
                payload: bytes::Bytes::from_static(b"just-once"),
                properties: Properties::default(),
            }),
            Version::V5,
            &mut out,
        );
        out
    };
    s.write_all(&publish(false)).await.unwrap();
    assert!(matches!(next_packet(&mut s, &mut buf).await, Packet::PubRec(a) if a.pkid == 42));
    let status = Command::new("kill")
        .args(["-KILL", &b.server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(s);
    drop(b);

    // The client comes back to its session and resends (DUP), as MQTT says it must.
    let b = start();
    let (mut s, mut buf, present) = persistent_client(&b, &id, &secret, "sender").await;
    assert!(present, "the persistent session survived");
    s.write_all(&publish(true)).await.unwrap();
    assert!(matches!(next_packet(&mut s, &mut buf).await, Packet::PubRec(a) if a.pkid == 42));
    let mut out = bytes::BytesMut::new();
    encode(&Packet::PubRel(Ack::new(42, 0)), Version::V5, &mut out);
    s.write_all(&out).await.unwrap();
    assert!(
        matches!(next_packet(&mut s, &mut buf).await, Packet::PubComp(a) if a.pkid == 42 && a.code == 0)
    );
    // The listener gets it exactly once.
    let mut listener = b.subscribe(&id, &secret, &sub_args);
    let mut got = Vec::new();
    while let Some(m) = listener.message(Duration::from_millis(1500)) {
        got.push(m);
    }
    assert_eq!(
        got.iter().filter(|m| m.ends_with("just-once")).count(),
        1,
        "{got:?}"
    );
}

/// The CONNACK reason code a v5 CONNECT with these credentials gets.
async fn connack_code(b: &Broker, user: &str, pass: &str) -> u8 {
    connect_v5(b, user, pass, "", None).await.2.code
}

#[tokio::test]
async fn repeated_wrong_device_secrets_from_one_address_are_rate_limited() {
    use sb_mqtt::codec::reason;
    let b = Broker::start_with_env(vec![(
        "SB_RATE_LIMITS__TOKEN_FAILURES_PER_IP_PER_MINUTE",
        "3".into(),
    )]);
    let admin = b.server.admin().await;
    let (id, secret) = device(&admin, "guessed-1", "").await;
    assert_eq!(connack_code(&b, &id, &secret).await, reason::SUCCESS);
    for _ in 0..3 {
        assert_eq!(
            connack_code(&b, &id, "sbd_wrong").await,
            reason::BAD_USERNAME_OR_PASSWORD
        );
    }
    // Past the limit, even the right secret waits: guessing is slowed, not just refused.
    assert_eq!(
        connack_code(&b, &id, &secret).await,
        reason::CONNECTION_RATE_EXCEEDED
    );
}
