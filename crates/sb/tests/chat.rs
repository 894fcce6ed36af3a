//! Chat end to end against the real server: exact delivery to every device, resume, durability
//! across SIGKILL, access control and bad input.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use sb_client::{Client, WsStream};
use sb_proto::{HistoryQuery, MessageSend, RoomCreate};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// One connected device: a WebSocket that has synced, and what it has received per room.
struct Device {
    ws: WsStream,
    seen: BTreeMap<String, Vec<i64>>,
    bodies: BTreeMap<String, Vec<String>>,
    synced: Vec<Value>,
}

impl Device {
    async fn connect(client: &Client, cursors: Value) -> Device {
        let mut ws = client.ws_connect().await.unwrap();
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["type"], "hello");
        ws.send(Message::text(
            json!({"type":"chat_sync","id":"s","cursors":cursors}).to_string(),
        ))
        .await
        .unwrap();
        let mut d = Device {
            ws,
            seen: BTreeMap::new(),
            bodies: BTreeMap::new(),
            synced: Vec::new(),
        };
        loop {
            let f = next_json(&mut d.ws).await;
            if f["type"] == "chat_synced" {
                d.synced = f["rooms"].as_array().unwrap().clone();
                break;
            }
            d.record(&f);
        }
        d
    }

    fn record(&mut self, f: &Value) {
        if f["type"] == "chat_message" {
            let m = &f["message"];
            let room = m["room"].as_str().unwrap().to_string();
            self.seen
                .entry(room.clone())
                .or_default()
                .push(m["seq"].as_i64().unwrap());
            self.bodies
                .entry(room)
                .or_default()
                .push(m["body"].as_str().unwrap().to_string());
        }
    }

    /// Reads frames until `room` has been delivered up to `seq`; returns other frames seen.
    async fn until(&mut self, room: &str, seq: i64) -> Vec<Value> {
        let mut other = Vec::new();
        while self
            .seen
            .get(room)
            .and_then(|v| v.last())
            .copied()
            .unwrap_or(0)
            < seq
        {
            let f = next_json(&mut self.ws).await;
            if f["type"] != "chat_message" {
                other.push(f.clone());
            }
            self.record(&f);
        }
        other
    }

    async fn send(&mut self, room: &str, message_id: &str, body: &str) -> Value {
        let req = json!({"type":"chat_send","id":message_id,"room":room,"message_id":message_id,"body":body});
        self.ws.send(Message::text(req.to_string())).await.unwrap();
        loop {
            let f = next_json(&mut self.ws).await;
            if f["type"] == "chat_ack" || f["type"] == "error" {
                return f;
            }
            self.record(&f);
        }
    }
}

async fn next_json(ws: &mut WsStream) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("stream open")
            .expect("frame ok");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// A private room owned by `owner` with `members` added.
async fn private_room(owner: &Client, name: &str, members: &[&str]) -> sb_proto::RoomInfo {
    let room = owner
        .create_room(&RoomCreate {
            name: name.into(),
            topic: String::new(),
            public: false,
            encrypted: false,
        })
        .await
        .unwrap();
    for m in members {
        owner.add_member(&room.id, m).await.unwrap();
    }
    room
}

/// The next frame of one type, skipping others (presence and the like arrive interleaved).
async fn next_of(ws: &mut WsStream, kind: &str) -> Value {
    loop {
        let f = next_json(ws).await;
        if f["type"] == kind {
            return f;
        }
    }
}

fn msg(id: &str, body: &str) -> MessageSend {
    MessageSend {
        message_id: id.into(),
        body: body.into(),
        reply_to: None,
        kind: None,
        target: None,
        attachments: Vec::new(),
    }
}

#[tokio::test]
async fn three_users_two_devices_each_see_every_message_once_in_order() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let ann = server.user(&admin, "ann").await;
    let ben = server.user(&admin, "ben").await;
    server.user(&admin, "cat").await;
    let room = private_room(&ann, "team", &["ben", "cat"]).await;
    let dm = ann.direct_room("ben").await.unwrap();
    assert_eq!(
        ben.direct_room("ann").await.unwrap().id,
        dm.id,
        "one DM room per pair"
    );

    // Two devices per user: separate sessions, separate sockets.
    let mut devices = Vec::new();
    for name in ["ann", "ben", "cat"] {
        for _ in 0..2 {
            let c = server.login(name).await;
            devices.push((name, Device::connect(&c, json!([])).await));
        }
    }
    // Everyone sends to the group at once, from both devices; ann and ben also DM.
    let per_device = 5;
    let mut sends = Vec::new();
    for (i, (name, _)) in devices.iter().enumerate() {
        let c = server.login(name).await;
        let (room, dm) = (room.id.clone(), dm.id.clone());
        let name = name.to_string();
        sends.push(tokio::spawn(async move {
            for k in 0..per_device {
                let id = format!("{name}-{i}-{k}");
                c.send_message(&room, &msg(&id, &format!("group {id}")))
                    .await
                    .unwrap();
                if name != "cat" {
                    c.send_message(&dm, &msg(&id, &format!("dm {id}")))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    let group_total = (devices.len() * per_device) as i64;
    let dm_total = (4 * per_device) as i64;
    for (name, d) in &mut devices {
        d.until(&room.id, group_total).await;
        if *name != "cat" {
            d.until(&dm.id, dm_total).await;
        }
    }
    // A final marker: once it arrives, anything duplicated before it would have arrived too.
    ann.send_message(&room.id, &msg("marker", "end"))
        .await
        .unwrap();
    let expected: Vec<i64> = (1..=group_total + 1).collect();
    for (name, d) in &mut devices {
        d.until(&room.id, group_total + 1).await;
        assert_eq!(
            d.seen[&room.id], expected,
            "{name}: group room exactly once, in order"
        );
        if *name == "cat" {
            assert!(!d.seen.contains_key(&dm.id), "cat never sees the DM");
        } else {
            assert_eq!(
                d.seen[&dm.id],
                (1..=dm_total).collect::<Vec<_>>(),
                "{name}: DM"
            );
        }
    }
    // Every device saw the same bodies in the same order as history holds them.
    let history = ann
        .history(
            &room.id,
            &HistoryQuery {
                after: Some(0),
                before: None,
                limit: Some(200),
            },
        )
        .await
        .unwrap();
    let bodies: Vec<String> = history.iter().map(|m| m.body.clone()).collect();
    for (_, d) in &devices {
        assert_eq!(d.bodies[&room.id], bodies);
    }
}

#[tokio::test]
async fn reconnecting_device_gets_exactly_the_500_it_missed() {
    // 500 sends in a row can outrun the per-credential request limit on a fast machine; this
    // test is about delivery, not limits.
    let server = TestServer::start_with(ServerOptions {
        env: vec![(
            "SB_RATE_LIMITS__REQUESTS_PER_CREDENTIAL_PER_SECOND",
            "100000".into(),
        )],
        ..Default::default()
    });
    let admin = server.admin().await;
    let ann = server.user(&admin, "ann").await;
    let ben = server.user(&admin, "ben").await;
    let room = ann
        .create_room(&RoomCreate {
            name: "log".into(),
            topic: "".into(),
            public: true,
            encrypted: false,
        })
        .await
        .unwrap();
    ben.join_room(&room.id).await.unwrap();
    ann.send_message(&room.id, &msg("first", "before"))
        .await
        .unwrap();
    let mut phone = Device::connect(&ben, json!([{"room": room.id, "seq": 0}])).await;
    assert_eq!(phone.seen[&room.id], vec![1], "catch-up from cursor 0");
    let cursor = 1;
    phone.ws.close(None).await.unwrap();
    drop(phone);

    for i in 0..500 {
        ann.send_message(&room.id, &msg(&format!("m{i}"), &format!("message {i}")))
            .await
            .unwrap();
    }
    let phone = Device::connect(&ben, json!([{"room": room.id, "seq": cursor}])).await;
    assert_eq!(phone.seen[&room.id], (2..=501).collect::<Vec<_>>());
    assert_eq!(phone.bodies[&room.id][0], "message 0");
    assert_eq!(phone.synced[0]["last_seq"], 501);
    assert_eq!(phone.synced[0]["truncated"], false);
}

#[tokio::test]
async fn too_long_away_gets_a_truncated_signal_instead_of_a_flood() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_CHAT__CATCHUP_MESSAGES_MAX", "5".into())],
        ..Default::default()
    });
    let admin = server.admin().await;
    let room = admin
        .create_room(&RoomCreate {
            name: "busy".into(),
            topic: "".into(),
            public: false,
            encrypted: false,
        })
        .await
        .unwrap();
    for i in 0..10 {
        admin
            .send_message(&room.id, &msg(&format!("m{i}"), "x"))
            .await
            .unwrap();
    }
    let d = Device::connect(&admin, json!([{"room": room.id, "seq": 2}])).await;
    assert!(!d.seen.contains_key(&room.id), "nothing replayed");
    assert_eq!(d.synced[0]["truncated"], true);
    assert_eq!(d.synced[0]["last_seq"], 10);
    let page = admin
        .history(
            &room.id,
            &HistoryQuery {
                after: Some(2),
                before: None,
                limit: Some(100),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (3..=10).collect::<Vec<_>>()
    );
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let server = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir.clone()),
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (room, acked) = rt.block_on(async {
        let admin = server.admin().await;
        let room = admin
            .create_room(&RoomCreate {
                name: "durable".into(),
                topic: "".into(),
                public: false,
                encrypted: false,
            })
            .await
            .unwrap();
        let pid = server.pid();
        let sender = {
            let admin = server.login("admin").await;
            let room = room.id.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..100_000 {
                    match admin
                        .send_message(&room, &msg(&format!("k{i}"), &format!("k{i}")))
                        .await
                    {
                        Ok(sent) => acked.push((sent.message.message_id, sent.message.seq)),
                        Err(_) => break,
                    }
                }
                acked
            })
        };
        tokio::time::sleep(Duration::from_millis(700)).await;
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        (room, sender.await.unwrap())
    });
    drop(server);
    assert!(
        acked.len() > 10,
        "the sender got going before the kill ({})",
        acked.len()
    );
    let restarted = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir),
        ..Default::default()
    });
    rt.block_on(async {
        let admin = restarted.login("admin").await;
        let mut stored = Vec::new();
        let mut after = 0;
        loop {
            let page = admin
                .history(
                    &room.id,
                    &HistoryQuery {
                        after: Some(after),
                        before: None,
                        limit: Some(200),
                    },
                )
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            stored.extend(page.into_iter().map(|m| (m.message_id, m.seq)));
        }
        assert!(stored.len() >= acked.len());
        assert_eq!(
            &stored[..acked.len()],
            &acked[..],
            "every acknowledged message, same seq"
        );
        // Retrying the message that was in flight at the kill stores it at most once.
        let next = format!("k{}", acked.len());
        let first = admin
            .send_message(&room.id, &msg(&next, &next))
            .await
            .unwrap();
        let again = admin
            .send_message(&room.id, &msg(&next, &next))
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(first.message.seq, again.message.seq);
    });
}

#[tokio::test]
async fn non_members_and_banned_users_are_refused_with_stable_codes() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let ann = server.user(&admin, "ann").await;
    let eve = server.user(&admin, "eve").await;
    let private = ann
        .create_room(&RoomCreate {
            name: "secret".into(),
            topic: "".into(),
            public: false,
            encrypted: false,
        })
        .await
        .unwrap();
    ann.send_message(&private.id, &msg("s1", "the plan"))
        .await
        .unwrap();
    let code = |e: sb_client::ClientError| (e.status(), e.code().map(String::from));
    let forbidden = (Some(403), Some("forbidden".to_string()));
    assert_eq!(
        code(
            eve.history(&private.id, &HistoryQuery::default())
                .await
                .unwrap_err()
        ),
        forbidden
    );
    assert_eq!(
        code(
            eve.send_message(&private.id, &msg("e1", "hi"))
                .await
                .unwrap_err()
        ),
        forbidden
    );
    assert_eq!(code(eve.members(&private.id).await.unwrap_err()), forbidden);
    assert_eq!(
        code(eve.join_room(&private.id).await.unwrap_err()),
        forbidden
    );
    assert_eq!(
        code(eve.add_member(&private.id, "eve").await.unwrap_err()),
        forbidden
    );
    assert_eq!(
        code(
            admin
                .history(&private.id, &HistoryQuery::default())
                .await
                .unwrap_err()
        ),
        forbidden,
        "the server admin role does not open private rooms"
    );
    // Nor over the WebSocket: no replay, no live delivery, no sending.
    let mut d = Device::connect(&eve, json!([{"room": private.id, "seq": 0}])).await;
    assert!(d.seen.is_empty());
    let f = d.send(&private.id, "e2", "let me in").await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    ann.send_message(&private.id, &msg("s2", "still secret"))
        .await
        .unwrap();

    // Banned from a public room: removed, cannot rejoin or be re-added.
    let public = ann
        .create_room(&RoomCreate {
            name: "lobby".into(),
            topic: "".into(),
            public: true,
            encrypted: false,
        })
        .await
        .unwrap();
    eve.join_room(&public.id).await.unwrap();
    assert_eq!(
        code(eve.kick(&public.id, "ann").await.unwrap_err()),
        forbidden,
        "members cannot kick"
    );
    ann.ban(&public.id, "eve").await.unwrap();
    let banned = (Some(403), Some("banned".to_string()));
    assert_eq!(code(eve.join_room(&public.id).await.unwrap_err()), banned);
    assert_eq!(
        code(ann.add_member(&public.id, "eve").await.unwrap_err()),
        banned
    );
    assert_eq!(
        code(
            eve.history(&public.id, &HistoryQuery::default())
                .await
                .unwrap_err()
        ),
        forbidden
    );
    assert_eq!(
        d.seen.get(&private.id),
        None,
        "eve's socket received nothing from the private room"
    );

    // The denials are in the audit log.
    let denied = admin
        .admin_audit(&sb_proto::AuditQuery {
            action: Some("permission.denied".into()),
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        denied
            .iter()
            .filter(|e| e.target == format!("room:{}", private.id))
            .count()
            >= 6
    );
}

#[tokio::test]
async fn bad_chat_input_is_refused_and_nothing_is_stored_twice() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_CHAT__MESSAGE_SIZE_BYTES_MAX", "1000".into())],
        ..Default::default()
    });
    let admin = server.admin().await;
    let room = admin
        .create_room(&RoomCreate {
            name: "qa".into(),
            topic: "".into(),
            public: false,
            encrypted: false,
        })
        .await
        .unwrap();
    let code = |e: sb_client::ClientError| (e.status().unwrap(), e.code().unwrap().to_string());
    let big = "x".repeat(1001);
    assert_eq!(
        code(
            admin
                .send_message(&room.id, &msg("big", &big))
                .await
                .unwrap_err()
        ),
        (413, "payload_too_large".into())
    );
    let unknown = "01a21701-c832-7012-98da-efc981ce988d";
    assert_eq!(
        code(
            admin
                .send_message(unknown, &msg("u", "hi"))
                .await
                .unwrap_err()
        ),
        (404, "not_found".into())
    );
    assert_eq!(
        code(
            admin
                .send_message("not-a-room", &msg("u", "hi"))
                .await
                .unwrap_err()
        ),
        (400, "invalid_argument".into())
    );
    assert_eq!(
        code(
            admin
                .send_message(&room.id, &msg("", "hi"))
                .await
                .unwrap_err()
        ),
        (400, "invalid_argument".into())
    );
    let dup = admin
        .create_room(&RoomCreate {
            name: "QA".into(),
            topic: "".into(),
            public: true,
            encrypted: false,
        })
        .await
        .unwrap_err();
    assert_eq!(code(dup), (409, "conflict".into()));

    let first = admin
        .send_message(&room.id, &msg("same", "once"))
        .await
        .unwrap();
    let replay = admin
        .send_message(&room.id, &msg("same", "once"))
        .await
        .unwrap();
    assert!(!first.duplicate && replay.duplicate);
    assert_eq!(first.message.seq, replay.message.seq);

    let mut d = Device::connect(&admin, json!([])).await;
    let ack = d.send(&room.id, "same", "once").await;
    assert_eq!(
        (
            ack["type"].as_str(),
            ack["duplicate"].as_bool(),
            ack["seq"].as_i64()
        ),
        (Some("chat_ack"), Some(true), Some(1))
    );
    let f = d.send(&room.id, "huge", &big).await;
    assert_eq!(f["code"], "payload_too_large");
    for bad in [
        r#"{"type":"chat_send","id":"x"}"#,
        r#"{"type":"chat_sync","id":"y","cursors":[{"room":"nope","seq":1}]}"#,
        "[]",
    ] {
        d.ws.send(Message::text(bad)).await.unwrap();
        let f = next_of(&mut d.ws, "error").await;
        assert_eq!(f["type"], "error", "{bad}");
    }
    let all = admin
        .history(
            &room.id,
            &HistoryQuery {
                after: Some(0),
                before: None,
                limit: Some(100),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        1,
        "one message stored, however often it was sent"
    );
    assert_eq!(admin.rooms().await.unwrap()[0].last_seq, 1);
}

#[test]
fn chat_cli_create_invite_send_history_dm_and_tail() {
    use std::io::BufRead;
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ann_home = tempfile::tempdir().unwrap();
    let ben_home = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let admin = server.admin().await;
        for name in ["ann", "ben"] {
            server.user(&admin, name).await;
        }
    });
    let pw = format!("{PASSWORD}\n");
    for (home, name) in [(&ann_home, "ann"), (&ben_home, "ben")] {
        let out = sb(
            home.path(),
            &[
                "login",
                &server.url,
                "--username",
                name,
                "--password-stdin",
                "--yes",
            ],
            &pw,
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
        o
    };
    let room = json(&sb(
        ann_home.path(),
        &[
            "chat",
            "create",
            "ops",
            "--private",
            "--topic",
            "on-call",
            "--json",
        ],
        "",
    ));
    assert_eq!(
        (room["name"].as_str(), room["public"].as_bool()),
        (Some("ops"), Some(false))
    );
    ok(sb(ann_home.path(), &["chat", "invite", "#ops", "ben"], ""));

    // ben tails everything; ann sends to the room and to ben directly.
    let mut tail = std::process::Command::new(BIN)
        .args(["chat", "tail", "--json"])
        .env("XDG_CONFIG_HOME", ben_home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut tail_err = std::io::BufReader::new(tail.stderr.take().unwrap());
    let mut line = String::new();
    tail_err.read_line(&mut line).unwrap();
    assert!(
        line.contains("Waiting for messages"),
        "printed once live: {line}"
    );

    let sent = json(&sb(
        ann_home.path(),
        &["chat", "send", "#ops", "deploy done", "--json"],
        "",
    ));
    assert_eq!(sent["message"]["seq"], 1);
    ok(sb(ann_home.path(), &["chat", "send", "@ben", "hi ben"], ""));
    let mut lines = std::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    assert_eq!(first["body"], "deploy done");
    assert_eq!(second["body"], "hi ben");

    let history = json(&sb(
        ben_home.path(),
        &["chat", "history", "#ops", "--json"],
        "",
    ));
    assert_eq!(history.as_array().unwrap().len(), 1);
    let text = stdout(&ok(sb(ben_home.path(), &["chat", "history", "@ann"], "")));
    assert!(text.contains("ann: hi ben"), "{text}");
    let rooms = json(&sb(ben_home.path(), &["chat", "rooms", "--json"], ""));
    assert_eq!(rooms.as_array().unwrap().len(), 2);

    let out = sb(ben_home.path(), &["chat", "kick", "#ops", "ann"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
    let out = sb(ben_home.path(), &["chat", "send", "#nowhere", "x"], "");
    assert!(
        stderr(&out).contains("sb chat rooms"),
        "the error says what to do: {}",
        stderr(&out)
    );
}

#[tokio::test]
async fn search_finds_only_what_the_caller_may_read() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let ann = server.user(&admin, "ann").await;
    let eve = server.user(&admin, "eve").await;
    let ops = ann
        .create_room(&RoomCreate {
            name: "ops".into(),
            topic: "".into(),
            public: false,
            encrypted: false,
        })
        .await
        .unwrap();
    let lobby = ann
        .create_room(&RoomCreate {
            name: "lobby".into(),
            topic: "".into(),
            public: true,
            encrypted: false,
        })
        .await
        .unwrap();
    eve.join_room(&lobby.id).await.unwrap();
    ann.send_message(&ops.id, &msg("a", "deploy finished on prod"))
        .await
        .unwrap();
    ann.send_message(&lobby.id, &msg("b", "who broke the deploy?"))
        .await
        .unwrap();
    ann.send_message(&lobby.id, &msg("c", "lunch at noon"))
        .await
        .unwrap();
    let q = |text: &str, room: Option<&str>| sb_proto::SearchQuery {
        q: text.into(),
        room: room.map(String::from),
        limit: None,
    };
    let mine = ann.search(&q("deploy", None)).await.unwrap();
    assert_eq!(mine.len(), 2);
    let theirs = eve.search(&q("deploy", None)).await.unwrap();
    assert_eq!(
        theirs.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        vec!["who broke the deploy?"]
    );
    let only_ops = ann.search(&q("DEPLOY prod", Some(&ops.id))).await.unwrap();
    assert_eq!(only_ops.len(), 1, "all words, any case");
    let denied = eve.search(&q("deploy", Some(&ops.id))).await.unwrap_err();
    assert_eq!(
        (denied.status(), denied.code()),
        (Some(403), Some("forbidden"))
    );
    let odd = ann.search(&q("\"deploy OR (", None)).await.unwrap();
    assert!(
        odd.is_empty(),
        "query syntax in user text is literal, never an error"
    );
    let empty = ann.search(&q("   ", None)).await.unwrap_err();
    assert_eq!(empty.code(), Some("invalid_argument"));
}

#[tokio::test]
async fn read_markers_give_unread_counts_and_typing_reaches_other_members() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let ann = server.user(&admin, "ann").await;
    let ben = server.user(&admin, "ben").await;
    let room = private_room(&ann, "team", &["ben"]).await;
    for i in 0..5 {
        ann.send_message(&room.id, &msg(&format!("m{i}"), "hello"))
            .await
            .unwrap();
    }
    let ben_room =
        |rooms: Vec<sb_proto::RoomInfo>| rooms.into_iter().find(|r| r.id == room.id).unwrap();
    let r = ben_room(ben.rooms().await.unwrap());
    assert_eq!((r.read_seq, r.unread), (Some(0), Some(5)));

    // ben has two devices; reading on one moves the marker everywhere and tells ann.
    let ben2 = server.login("ben").await;
    let mut phone = Device::connect(&ben, json!([])).await;
    let mut laptop = Device::connect(&ben2, json!([])).await;
    let mut ann_dev = Device::connect(&ann, json!([])).await;
    phone
        .ws
        .send(Message::text(
            json!({"type":"chat_read","id":"r","room":room.id,"seq":3}).to_string(),
        ))
        .await
        .unwrap();
    for d in [&mut laptop, &mut ann_dev, &mut phone] {
        let f = next_of(&mut d.ws, "chat_read").await;
        assert_eq!(
            (
                f["type"].as_str(),
                f["username"].as_str(),
                f["seq"].as_i64()
            ),
            (Some("chat_read"), Some("ben"), Some(3))
        );
    }
    assert_eq!(ben_room(ben.rooms().await.unwrap()).unread, Some(2));
    assert_eq!(
        ben.mark_read(&room.id, 1).await.unwrap().seq,
        3,
        "markers never move back"
    );
    assert_eq!(
        ben.mark_read(&room.id, 99).await.unwrap().seq,
        5,
        "clamped to the newest message"
    );
    let markers = ann.read_markers(&room.id).await.unwrap();
    assert_eq!(
        markers
            .iter()
            .map(|m| (m.username.as_str(), m.seq))
            .collect::<Vec<_>>(),
        vec![("ben", 5)]
    );

    // Typing: other members hear it, the typist's own devices do not, repeats are throttled.
    for _ in 0..3 {
        phone
            .ws
            .send(Message::text(
                json!({"type":"chat_typing","room":room.id}).to_string(),
            ))
            .await
            .unwrap();
    }
    ann.send_message(&room.id, &msg("after-typing", "marker"))
        .await
        .unwrap();
    let mut typing = 0;
    loop {
        let f = next_json(&mut ann_dev.ws).await;
        match f["type"].as_str() {
            Some("chat_typing") => {
                assert_eq!(f["username"], "ben");
                typing += 1;
            }
            Some("chat_message") if f["message"]["message_id"] == "after-typing" => break,
            _ => {}
        }
    }
    assert_eq!(
        typing, 1,
        "three announcements within the interval count once"
    );
    let mut own = 0;
    loop {
        let f = next_json(&mut laptop.ws).await;
        if f["type"] == "chat_typing" {
            own += 1;
        }
        if f["type"] == "chat_message" && f["message"]["message_id"] == "after-typing" {
            break;
        }
    }
    assert_eq!(own, 0, "no echo of one's own typing");
    // Outsiders cannot read or set markers.
    let eve = server.user(&admin, "eve").await;
    assert_eq!(
        eve.read_markers(&room.id).await.unwrap_err().code(),
        Some("forbidden")
    );
    assert_eq!(
        eve.mark_read(&room.id, 1).await.unwrap_err().code(),
        Some("forbidden")
    );
}

async fn next_presence(d: &mut Device) -> Value {
    next_of(&mut d.ws, "presence").await
}

#[tokio::test]
async fn presence_follows_connections_and_reaches_people_who_share_a_room() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let ann = server.user(&admin, "ann").await;
    let ben = server.user(&admin, "ben").await;
    let room = private_room(&ann, "team", &["ben"]).await;
    let status_of_ben = |members: Vec<sb_proto::MemberInfo>| {
        let b = members.into_iter().find(|m| m.username == "ben").unwrap();
        (b.presence, b.last_seen_at_ms.is_some())
    };
    assert_eq!(
        status_of_ben(ann.members(&room.id).await.unwrap()),
        ("offline".into(), false)
    );

    let mut watcher = Device::connect(&ann, json!([])).await;
    let mut phone = Device::connect(&ben, json!([])).await;
    let f = next_presence(&mut watcher).await;
    assert_eq!(
        (f["username"].as_str(), f["status"].as_str()),
        (Some("ben"), Some("online"))
    );
    let ben2 = server.login("ben").await;
    let laptop = Device::connect(&ben2, json!([])).await;

    phone
        .ws
        .send(Message::text(
            json!({"type":"set_presence","id":"p","status":"away"}).to_string(),
        ))
        .await
        .unwrap();
    let f = next_presence(&mut watcher).await;
    assert_eq!(f["status"], "away");
    assert_eq!(
        status_of_ben(ann.members(&room.id).await.unwrap()),
        ("away".into(), false)
    );

    // Closing one of two devices changes nothing; closing the last makes ben offline.
    drop(laptop);
    phone.ws.close(None).await.unwrap();
    drop(phone);
    let f = next_presence(&mut watcher).await;
    assert_eq!(f["status"], "offline", "only after the last device: {f}");
    assert!(f["last_seen_at_ms"].as_i64().is_some());
    assert_eq!(
        status_of_ben(ann.members(&room.id).await.unwrap()),
        ("offline".into(), true)
    );

    // Someone who shares no room with ben hears nothing of him.
    let eve = server.user(&admin, "eve").await;
    let mut stranger = Device::connect(&eve, json!([])).await;
    let _back = Device::connect(&ben, json!([])).await;
    assert_eq!(next_presence(&mut watcher).await["status"], "online");
    stranger
        .ws
        .send(Message::text(r#"{"type":"ping","id":"z"}"#))
        .await
        .unwrap();
    let f = next_json(&mut stranger.ws).await;
    assert_eq!(f["type"], "pong", "no presence frame reached eve first");
}

fn change(id: &str, kind: &str, target: i64, body: &str) -> MessageSend {
    MessageSend {
        message_id: id.into(),
        body: body.into(),
        reply_to: None,
        kind: Some(kind.into()),
        target: Some(target),
        attachments: Vec::new(),
    }
}

#[tokio::test]
async fn edits_deletes_and_reactions_are_entries_every_device_receives() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let ann = server.user(&admin, "ann").await;
    let ben = server.user(&admin, "ben").await;
    let cat = server.user(&admin, "cat").await;
    let room = ann
        .create_room(&RoomCreate {
            name: "team".into(),
            topic: "".into(),
            public: false,
            encrypted: false,
        })
        .await
        .unwrap();
    for u in ["ben", "cat"] {
        ann.add_member(&room.id, u).await.unwrap();
    }
    let m = ann
        .send_message(&room.id, &msg("m1", "the secret plan"))
        .await
        .unwrap()
        .message;
    let cat_cursor = m.seq; // cat goes offline here
    let code = |e: sb_client::ClientError| e.code().map(String::from);

    let r = ben
        .send_message(&room.id, &change("r1", "reaction", m.seq, "👍"))
        .await
        .unwrap();
    assert_eq!(
        (r.message.kind.as_str(), r.message.target),
        ("reaction", Some(m.seq))
    );
    assert_eq!(
        code(
            ben.send_message(&room.id, &change("x1", "edit", m.seq, "mine now"))
                .await
                .unwrap_err()
        ),
        Some("forbidden".into()),
        "nobody edits another's message"
    );
    assert_eq!(
        code(
            ben.send_message(&room.id, &change("x2", "delete", m.seq, ""))
                .await
                .unwrap_err()
        ),
        Some("forbidden".into()),
        "members cannot delete others' messages"
    );
    ann.send_message(&room.id, &change("e1", "edit", m.seq, "the public plan"))
        .await
        .unwrap();
    let after_edit = ben
        .history(
            &room.id,
            &HistoryQuery {
                after: Some(0),
                before: None,
                limit: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(after_edit[0].body, "the public plan");
    assert!(after_edit[0].edited_at_ms.is_some());

    // The owner makes ben a moderator; a moderator may delete.
    assert_eq!(
        code(
            ben.set_member_role(&room.id, "cat", "moderator")
                .await
                .unwrap_err()
        ),
        Some("forbidden".into())
    );
    ann.set_member_role(&room.id, "ben", "moderator")
        .await
        .unwrap();
    let del = ben
        .send_message(&room.id, &change("d1", "delete", m.seq, ""))
        .await
        .unwrap();
    let history = ann
        .history(
            &room.id,
            &HistoryQuery {
                after: Some(0),
                before: None,
                limit: None,
            },
        )
        .await
        .unwrap();
    let original = &history[0];
    assert!(
        original.deleted && original.body.is_empty(),
        "tombstone without content"
    );
    assert!(
        history.iter().all(|e| !e.body.contains("plan")),
        "edits' text is gone too"
    );
    assert_eq!(
        code(
            ann.send_message(&room.id, &change("e2", "edit", m.seq, "back"))
                .await
                .unwrap_err()
        ),
        Some("not_found".into()),
        "a deleted message cannot be edited"
    );
    assert!(
        ann.search(&sb_proto::SearchQuery {
            q: "plan".into(),
            room: None,
            limit: None
        })
        .await
        .unwrap()
        .is_empty()
    );

    // cat was offline: on resume it gets the reaction, the edit and the delete, in order.
    let d = Device::connect(&cat, json!([{"room": room.id, "seq": cat_cursor}])).await;
    assert_eq!(d.seen[&room.id], vec![2, 3, del.message.seq]);

    drop(d);
    // Bad changes: unknown kind, missing target, reaction text.
    assert_eq!(
        code(
            ann.send_message(
                &room.id,
                &MessageSend {
                    kind: Some("shout".into()),
                    ..msg("k", "x")
                }
            )
            .await
            .unwrap_err()
        ),
        Some("invalid_argument".into())
    );
    assert_eq!(
        code(
            ann.send_message(
                &room.id,
                &MessageSend {
                    kind: Some("edit".into()),
                    ..msg("k2", "x")
                }
            )
            .await
            .unwrap_err()
        ),
        Some("invalid_argument".into())
    );
    assert_eq!(
        code(
            ann.send_message(&room.id, &change("k3", "reaction", 3, "not an emoji"))
                .await
                .unwrap_err()
        ),
        Some("invalid_argument".into())
    );
    assert_eq!(
        code(
            ann.send_message(&room.id, &change("k4", "reaction", 2, "👍"))
                .await
                .unwrap_err()
        ),
        Some("not_found".into()),
        "only messages are targets"
    );
}

#[tokio::test]
async fn attachments_reach_members_only_intact_and_within_the_limit() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![
            (
                "SB_CHAT__ATTACHMENT_SIZE_BYTES_MAX",
                (4 * 1024 * 1024).to_string(),
            ),
            // No blob cache: the damaged blob below must be read from disk.
            ("SB_BLOBS__CACHE_BYTES", "0".into()),
        ],
        ..Default::default()
    });
    let admin = server.admin().await;
    let ann = server.user(&admin, "ann").await;
    let ben = server.user(&admin, "ben").await;
    let eve = server.user(&admin, "eve").await;
    let room = private_room(&ann, "files", &["ben"]).await;
    // 3 MiB of varied bytes, larger than the JSON body limit.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s2 = seen.clone();
    let info = ann
        .upload(
            &room.id,
            "report.bin",
            "application/octet-stream",
            data.clone(),
            move |sent, _| {
                s2.store(sent, std::sync::atomic::Ordering::Relaxed);
            },
        )
        .await
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::Relaxed),
        data.len() as u64,
        "progress reached the end"
    );
    let sent = ann
        .send_message(
            &room.id,
            &MessageSend {
                attachments: vec![info.id.clone()],
                ..msg("with-file", "the report")
            },
        )
        .await
        .unwrap();
    assert_eq!(sent.message.attachments, vec![info.id.clone()]);
    let (ctype, bytes) = ben.download(&room.id, &info.id).await.unwrap();
    assert_eq!(ctype, "application/octet-stream");
    assert!(bytes == data, "byte-identical");

    let code = |e: sb_client::ClientError| (e.status(), e.code().map(String::from));
    assert_eq!(
        code(eve.download(&room.id, &info.id).await.unwrap_err()),
        (Some(403), Some("forbidden".into()))
    );
    assert_eq!(
        code(
            eve.upload(&room.id, "x", "text/plain", b"x".to_vec(), |_, _| {})
                .await
                .unwrap_err()
        ),
        (Some(403), Some("forbidden".into()))
    );
    // ben may not attach ann's upload as his own.
    let stolen = ben
        .send_message(
            &room.id,
            &MessageSend {
                attachments: vec![info.id.clone()],
                ..msg("steal", "mine")
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(stolen).1, Some("invalid_argument".into()));
    let big = vec![0u8; 4 * 1024 * 1024 + 1];
    assert_eq!(
        code(
            ann.upload(&room.id, "big", "application/octet-stream", big, |_, _| {})
                .await
                .unwrap_err()
        ),
        (Some(413), Some("payload_too_large".into()))
    );
    assert_eq!(
        code(
            ann.upload(
                &room.id,
                "../etc/passwd",
                "text/plain",
                b"x".to_vec(),
                |_, _| {}
            )
            .await
            .unwrap_err()
        )
        .1,
        Some("invalid_argument".into())
    );

    // A blob damaged on disk is refused, not served.
    let dir = server
        .data_dir
        .join("blobs")
        .join(&info.blake3[0..2])
        .join(&info.blake3[2..4]);
    // Stored as is, or zstd-compressed (`.zst`) when that is smaller.
    let blob_path = [info.blake3.clone(), format!("{}.zst", info.blake3)]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .unwrap();
    let mut damaged = std::fs::read(&blob_path).unwrap();
    let at = damaged.len() / 2;
    damaged[at] ^= 0xff;
    std::fs::write(&blob_path, damaged).unwrap();
    assert_eq!(
        code(ben.download(&room.id, &info.id).await.unwrap_err()),
        (Some(500), Some("internal".into()))
    );
}

#[test]
fn chat_cli_sends_and_gets_files() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&server, home.path());
    json(&sb(home.path(), &["chat", "create", "docs", "--json"], ""));
    let file = home.path().join("notes.txt");
    std::fs::write(&file, "meeting notes\n".repeat(10_000)).unwrap();
    let out = sb(
        home.path(),
        &[
            "chat",
            "send",
            "#docs",
            "notes attached",
            "--file",
            file.to_str().unwrap(),
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("uploading notes.txt: 100%"),
        "shows progress: {}",
        stderr(&out)
    );
    let sent: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = sent["message"]["attachments"][0]
        .as_str()
        .unwrap()
        .to_string();
    let copy = home.path().join("copy.txt");
    let out = sb(
        home.path(),
        &["chat", "get", "#docs", &id, "-o", copy.to_str().unwrap()],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&file).unwrap());
}

/// Reads the tmux pane until `needle` shows up (or fails after a while).
fn wait_for_pane(session: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new("tmux")
            .args(["capture-pane", "-p", "-t", session])
            .output()
            .unwrap();
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if screen.contains(needle) {
            return screen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw {needle:?} on screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn chat_open_shows_live_messages_typing_and_sends_what_is_typed() {
    if external("tmux").is_none() {
        return;
    }
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ann, ben, room) = rt.block_on(async {
        let admin = server.admin().await;
        let ann = server.user(&admin, "ann").await;
        let ben = server.user(&admin, "ben").await;
        let room = ann
            .create_room(&RoomCreate {
                name: "team".into(),
                topic: "".into(),
                public: false,
                encrypted: false,
            })
            .await
            .unwrap();
        ann.add_member(&room.id, "ben").await.unwrap();
        ben.send_message(&room.id, &msg("old", "from before"))
            .await
            .unwrap();
        (ann, ben, room)
    });
    let home = tempfile::tempdir().unwrap();
    let out = sb(
        home.path(),
        &[
            "login",
            &server.url,
            "--username",
            "ann",
            "--password-stdin",
            "--yes",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let session = format!("sbtest-{}", std::process::id());
    let cmd = format!(
        "XDG_CONFIG_HOME={} {BIN} chat open '#team'",
        home.path().display()
    );
    let ok = std::process::Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "100",
            "-y",
            "24",
            &cmd,
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    let kill = || {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &session])
            .status();
    };
    let screen = wait_for_pane(&session, "ben: from before");
    assert!(screen.contains("#team"), "{screen}");
    assert!(
        screen.contains("online: ann"),
        "the viewer is online: {screen}"
    );

    // ben types and writes; the view shows both.
    let mut bdev = rt.block_on(Device::connect(&ben, json!([])));
    rt.block_on(bdev.ws.send(Message::text(
        json!({"type":"chat_typing","room":room.id}).to_string(),
    )))
    .unwrap();
    wait_for_pane(&session, "ben is typing");
    rt.block_on(ben.send_message(&room.id, &msg("live", "hello ann")))
        .unwrap();
    wait_for_pane(&session, "ben: hello ann");

    // ann types a line and presses Enter: it is sent and shows up.
    std::process::Command::new("tmux")
        .args(["send-keys", "-t", &session, "hi from the terminal", "Enter"])
        .status()
        .unwrap();
    wait_for_pane(&session, "ann: hi from the terminal");
    let history = rt
        .block_on(ann.history(
            &room.id,
            &HistoryQuery {
                after: Some(0),
                before: None,
                limit: None,
            },
        ))
        .unwrap();
    assert_eq!(history.last().unwrap().body, "hi from the terminal");
    std::process::Command::new("tmux")
        .args(["send-keys", "-t", &session, "Escape"])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let alive = std::process::Command::new("tmux")
        .args(["has-session", "-t", &session])
        .status()
        .unwrap()
        .success();
    kill();
    assert!(!alive, "Esc quits");
}

async fn post(c: &Client, path: &str, body: Value) -> (u16, Value) {
    let resp = c
        .raw(reqwest::Method::POST, path, Some(&body))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn encrypted_rooms_hand_out_key_packages_once_and_order_handshakes_by_epoch() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let ann = server.user(&admin, "ann").await;
    let ben = server.user(&admin, "ben").await;
    let eve = server.user(&admin, "eve").await;
    let (s, _) = post(
        &ann,
        "/v1/rooms",
        json!({"name":"vault","public":true,"encrypted":true}),
    )
    .await;
    assert_eq!(s, 400, "encrypted rooms are never public");
    let (s, room) = post(&ann, "/v1/rooms", json!({"name":"vault","encrypted":true})).await;
    assert_eq!(s, 201);
    assert_eq!(
        (room["encrypted"].as_bool(), room["mls_epoch"].as_i64()),
        (Some(true), Some(0))
    );
    let room_id = room["id"].as_str().unwrap().to_string();

    // ben's phone publishes two key packages and a last-resort one.
    let (s, stored) = post(&ben, "/v1/mls/key-packages", json!({
        "device": "phone", "key_packages": [b64(b"kp-1"), b64(b"kp-2")], "last_resort": b64(b"kp-last")
    })).await;
    assert_eq!((s, stored["available"].as_i64()), (200, Some(2)));
    let claim = format!("/v1/rooms/{room_id}/mls/claim");
    let (s, _) = post(&eve, &claim, json!({"username":"ben"})).await;
    assert_eq!(
        s, 403,
        "only someone who may invite into the room can claim"
    );
    let mut handed = Vec::new();
    for _ in 0..4 {
        let (s, got) = post(&ann, &claim, json!({"username":"ben"})).await;
        assert_eq!(s, 200);
        handed.push(got[0]["key_package"].as_str().unwrap().to_string());
    }
    assert_eq!(
        handed,
        vec![b64(b"kp-1"), b64(b"kp-2"), b64(b"kp-last"), b64(b"kp-last")]
    );

    // ann adds ben: membership, then a commit for epoch 0 with a Welcome for ben's phone.
    ann.add_member(&room_id, "ben").await.unwrap();
    let hs = format!("/v1/rooms/{room_id}/mls/handshakes");
    let mut ann_dev = Device::connect(&ann, json!([])).await;
    let (s, _) = post(
        &ann,
        &hs,
        json!({
            "epoch": 0, "message": b64(b"commit: add ben"),
            "welcomes": [{"username":"ben","device":"phone","welcome": b64(b"welcome for ben")}]
        }),
    )
    .await;
    assert_eq!(s, 204);
    let f = next_of(&mut ann_dev.ws, "mls_handshake").await;
    assert_eq!(f["epoch"], 0);
    let (_, welcomes) = post(&ben, "/v1/mls/welcomes", json!({"device":"phone"})).await;
    assert_eq!(welcomes[0]["welcome"], b64(b"welcome for ben"));
    let (_, again) = post(&ben, "/v1/mls/welcomes", json!({"device":"phone"})).await;
    assert_eq!(again, json!([]), "a Welcome is handed over once");

    // Two members commit for epoch 1 at the same time: exactly one wins.
    let (a, b) = tokio::join!(
        post(
            &ann,
            &hs,
            json!({"epoch": 1, "message": b64(b"ann's commit")})
        ),
        post(
            &ben,
            &hs,
            json!({"epoch": 1, "message": b64(b"ben's commit")})
        ),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [204, 409]);
    let loser = if a.0 == 409 { a.1 } else { b.1 };
    assert_eq!(loser["error"]["code"], "stale_epoch");
    let log = ann
        .raw(reqwest::Method::GET, &format!("{hs}?from_epoch=0"), None)
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let epochs: Vec<i64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["epoch"].as_i64().unwrap())
        .collect();
    assert_eq!(epochs, vec![0, 1], "one handshake per epoch, in order");
    let (s, _) = post(&eve, &hs, json!({"epoch": 2, "message": b64(b"x")})).await;
    assert_eq!(s, 403, "non-members cannot commit");

    // Application messages are ciphertext to the server: stored as sent, never indexed.
    let ct = b64(b"\x00\x01 mls ciphertext of 'launch at dawn'");
    ann.send_message(&room_id, &msg("c1", &ct)).await.unwrap();
    assert!(
        ann.search(&sb_proto::SearchQuery {
            q: ct.clone(),
            room: None,
            limit: None
        })
        .await
        .unwrap()
        .is_empty()
    );
    let react = ann
        .send_message(&room_id, &change("r", "reaction", 1, "👍"))
        .await
        .unwrap_err();
    assert_eq!(
        react.code(),
        Some("invalid_argument"),
        "reactions travel inside ciphertext"
    );
}
