//! End-to-end encrypted rooms with real MLS clients (openmls in sb-client) against the real
//! server: members exchange messages and files, the server's files hold no plaintext, a removed
//! member cannot read what follows, and of two commits for one epoch exactly one lands.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use sb_client::Client;
use sb_client::e2ee::{E2ee, Payload};
use sb_proto::{HistoryQuery, MessageInfo, RoomCreate};
use std::path::Path;

struct Member {
    name: &'static str,
    client: Client,
    keys: E2ee,
}

async fn member(server: &TestServer, admin: &Client, name: &'static str, dir: &Path) -> Member {
    let client = server.user(admin, name).await;
    let keys = E2ee::open(&dir.join(format!("{name}.db")), name).unwrap();
    let available = keys.publish_key_packages(&client, 3).await.unwrap();
    assert_eq!(available, 3);
    Member { name, client, keys }
}

async fn history(c: &Client, room: &str) -> Vec<MessageInfo> {
    c.history(
        room,
        &HistoryQuery {
            after: Some(0),
            before: None,
            limit: None,
        },
    )
    .await
    .unwrap()
}

/// What `m` reads in the room: `(sender, body)` in order.
async fn read_all(m: &Member, room: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for msg in history(&m.client, room).await {
        let d = m.keys.decrypt(&m.client, &msg).await.unwrap();
        out.push((
            d.sender.split(':').next().unwrap().to_string(),
            d.payload.body,
        ));
    }
    out
}

/// Every file under `dir`, and whether any contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

async fn encrypted_room(owner: &Member, name: &str) -> String {
    let room = owner
        .client
        .create_room(&RoomCreate {
            name: name.into(),
            topic: String::new(),
            public: false,
            encrypted: true,
        })
        .await
        .unwrap();
    owner.keys.create_group(&room.id).unwrap();
    room.id
}

async fn invite(owner: &Member, room: &str, who: &Member) {
    owner.client.add_member(room, who.name).await.unwrap();
    assert_eq!(
        owner
            .keys
            .add_member(&owner.client, room, who.name)
            .await
            .unwrap(),
        1
    );
    let joined = who.keys.accept_welcomes(&who.client).await.unwrap();
    assert_eq!(joined.rooms, vec![room.to_string()], "{:?}", joined.failed);
}

#[tokio::test]
async fn three_members_talk_over_mls_and_the_server_keeps_no_plaintext() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let dir = tempfile::tempdir().unwrap();
    let ann = member(&server, &admin, "ann", dir.path()).await;
    let ben = member(&server, &admin, "ben", dir.path()).await;
    let cat = member(&server, &admin, "cat", dir.path()).await;

    let room = encrypted_room(&ann, "vault").await;
    invite(&ann, &room, &ben).await;
    invite(&ann, &room, &cat).await;
    for m in [&ann, &ben, &cat] {
        m.keys.sync(&m.client, &room).await.unwrap();
    }
    let auth = ann.keys.epoch_authenticator(&room).unwrap();
    assert_eq!(ben.keys.epoch_authenticator(&room).unwrap(), auth);
    assert_eq!(cat.keys.epoch_authenticator(&room).unwrap(), auth);
    assert_eq!(ann.keys.members(&room).unwrap().len(), 3);

    // Each member sends; cat also shares a file, encrypted before it leaves cat's device.
    let file = b"MARKER-FILE-CONTENT: the launch codes are 0000".repeat(100);
    let sealed = cat
        .keys
        .upload_sealed(
            &cat.client,
            &room,
            "MARKER-FILENAME.txt",
            "text/plain",
            &file,
            |_, _| {},
        )
        .await
        .unwrap();
    let sends = [
        (&ann, "m-ann", "MARKER-ANN launch at dawn", vec![]),
        (&ben, "m-ben", "MARKER-BEN copy that", vec![]),
        (
            &cat,
            "m-cat",
            "MARKER-CAT plan attached",
            vec![sealed.clone()],
        ),
    ];
    for (m, id, body, attachments) in &sends {
        let payload = Payload {
            body: body.to_string(),
            attachments: attachments.clone(),
        };
        m.keys.send(&m.client, &room, id, &payload).await.unwrap();
    }
    let expected: Vec<(String, String)> = sends
        .iter()
        .map(|(m, _, body, _)| (m.name.to_string(), body.to_string()))
        .collect();
    for m in [&ann, &ben, &cat] {
        assert_eq!(read_all(m, &room).await, expected, "as {} reads it", m.name);
    }
    // ben reads the file: the same bytes, and its real name only inside the ciphertext.
    let msgs = history(&ben.client, &room).await;
    let d = ben.keys.decrypt(&ben.client, &msgs[2]).await.unwrap();
    assert_eq!(d.payload.attachments[0].name, "MARKER-FILENAME.txt");
    let got = E2ee::download_sealed(&ben.client, &room, &d.payload.attachments[0])
        .await
        .unwrap();
    assert_eq!(got, file);

    // A plaintext room as the control: the scan does find what the server stores in clear.
    let open = ann
        .client
        .create_room(&RoomCreate {
            name: "lobby".into(),
            topic: String::new(),
            public: true,
            encrypted: false,
        })
        .await
        .unwrap();
    ann.client
        .send_message(
            &open.id,
            &sb_proto::MessageSend {
                message_id: "plain".into(),
                body: "MARKER-CONTROL in clear".into(),
                reply_to: None,
                kind: None,
                target: None,
                attachments: vec![],
            },
        )
        .await
        .unwrap();
    assert!(
        !files_containing(&server.data_dir, b"MARKER-CONTROL").is_empty(),
        "the scan reads the server's database"
    );
    for needle in [
        "MARKER-ANN",
        "MARKER-BEN",
        "MARKER-CAT",
        "MARKER-FILE-CONTENT",
        "MARKER-FILENAME",
        "launch",
    ] {
        let hits = files_containing(&server.data_dir, needle.as_bytes());
        assert!(hits.is_empty(), "{needle} in clear in {hits:?}");
    }

    // cat is removed. Keep a copy of cat's keys as they were, then remove: the next message
    // is encrypted only for ann and ben.
    let stale = dir.path().join("cat-before-removal.db");
    std::fs::copy(dir.path().join("cat.db"), &stale).unwrap();
    ann.client.kick(&room, "cat").await.unwrap();
    let after = Payload {
        body: "MARKER-AFTER cat is gone".into(),
        attachments: vec![],
    };
    ann.keys
        .send(&ann.client, &room, "m-after", &after)
        .await
        .unwrap();
    assert_eq!(ann.keys.members(&room).unwrap().len(), 2);
    let later = history(&ann.client, &room).await.pop().unwrap();
    assert_eq!(
        ben.keys.decrypt(&ben.client, &later).await.unwrap().payload,
        after,
        "remaining members read it"
    );
    // cat, given the ciphertext and every commit anyway, cannot read it: neither with the keys
    // it held before nor after applying its own removal.
    let stale_keys = E2ee::open(&stale, "cat").unwrap();
    let e = stale_keys.decrypt_local(&later).unwrap_err();
    assert!(e.to_string().contains("decrypt"), "{e}");
    let log = ann.client.handshakes(&room, 0).await.unwrap();
    cat.keys.apply_handshakes(&room, &log).unwrap();
    assert!(!cat.keys.has_group(&room).unwrap(), "cat saw its removal");
    let e = cat.keys.decrypt_local(&later).unwrap_err();
    assert!(e.to_string().contains("removed"), "{e}");
    // And the server no longer lets cat fetch the room at all.
    assert_eq!(
        cat.client.handshakes(&room, 0).await.unwrap_err().code(),
        Some("forbidden")
    );
    assert!(files_containing(&server.data_dir, b"MARKER-AFTER").is_empty());
}

#[tokio::test]
async fn of_two_commits_for_one_epoch_exactly_one_lands_and_the_group_stays_whole() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let dir = tempfile::tempdir().unwrap();
    let ann = member(&server, &admin, "ann", dir.path()).await;
    let ben = member(&server, &admin, "ben", dir.path()).await;
    let cat = member(&server, &admin, "cat", dir.path()).await;
    let room = encrypted_room(&ann, "vault").await;
    invite(&ann, &room, &ben).await;
    invite(&ann, &room, &cat).await;
    ben.keys.sync(&ben.client, &room).await.unwrap();
    let epoch = ann.keys.epoch(&room).unwrap();
    assert_eq!(ben.keys.epoch(&room).unwrap(), epoch);

    // ann and ben both commit a key update for the same epoch, at the same time.
    let a = ann.keys.prepare_key_update(&room).unwrap();
    let b = ben.keys.prepare_key_update(&room).unwrap();
    let (a, b) = tokio::join!(
        ann.keys.publish_commit(&ann.client, a),
        ben.keys.publish_commit(&ben.client, b)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a ^ b, "exactly one accepted: ann {a}, ben {b}");
    let log = ann.client.handshakes(&room, epoch as i64).await.unwrap();
    assert_eq!(log.len(), 1, "one commit for epoch {epoch}");

    // The loser takes the winner's commit; all three agree on the new epoch.
    for m in [&ann, &ben, &cat] {
        assert_eq!(m.keys.sync(&m.client, &room).await.unwrap(), epoch + 1);
    }
    let auth = ann.keys.epoch_authenticator(&room).unwrap();
    assert_eq!(ben.keys.epoch_authenticator(&room).unwrap(), auth);
    assert_eq!(cat.keys.epoch_authenticator(&room).unwrap(), auth);

    // The retrying path: the loser's next update lands, and messages still flow both ways.
    let loser = if a { &ben } else { &ann };
    loser.keys.update_keys(&loser.client, &room).await.unwrap();
    for (m, id) in [(&ann, "1"), (&ben, "2"), (&cat, "3")] {
        let p = Payload {
            body: format!("from {}", m.name),
            attachments: vec![],
        };
        m.keys.send(&m.client, &room, id, &p).await.unwrap();
    }
    let expected: Vec<(String, String)> = ["ann", "ben", "cat"]
        .iter()
        .map(|n| (n.to_string(), format!("from {n}")))
        .collect();
    for m in [&ann, &ben, &cat] {
        assert_eq!(read_all(m, &room).await, expected, "as {} reads it", m.name);
    }
}

#[test]
fn encrypted_rooms_from_the_cli() {
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = server.admin().await;
        for name in ["ann", "ben", "cat"] {
            server.user(&admin, name).await;
        }
    });
    let homes: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (ann, ben, cat) = (homes[0].path(), homes[1].path(), homes[2].path());
    let pw = format!("{PASSWORD}\n");
    for (home, name) in [(ann, "ann"), (ben, "ben"), (cat, "cat")] {
        let login = [
            "login",
            &server.url,
            "--username",
            name,
            "--password-stdin",
            "--yes",
        ];
        let out = sb(home, &login, &pw);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    }
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
        o
    };
    let room = json(&sb(
        ann,
        &["chat", "create", "vault", "--encrypted", "--json"],
        "",
    ));
    assert_eq!(room["encrypted"], true);
    for who in ["ben", "cat"] {
        let out = ok(sb(ann, &["chat", "invite", "#vault", who], ""));
        assert!(stderr(&out).contains("1 device(s)"), "{}", stderr(&out));
    }
    let rooms = stdout(&ok(sb(ben, &["chat", "rooms"], "")));
    assert!(rooms.contains("e2ee"), "{rooms}");

    let file = ann.join("plan.txt");
    std::fs::write(&file, "MARKER-CLI-FILE step one\n".repeat(1000)).unwrap();
    let out = ok(sb(
        ann,
        &[
            "chat",
            "send",
            "#vault",
            "MARKER-CLI-TEXT see plan",
            "--file",
            file.to_str().unwrap(),
            "--json",
        ],
        "",
    ));
    assert!(
        stderr(&out).contains("uploading plan.txt: 100%"),
        "{}",
        stderr(&out)
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let attachment = sent["message"]["attachments"][0]
        .as_str()
        .unwrap()
        .to_string();
    ok(sb(
        cat,
        &["chat", "send", "#vault", "MARKER-CLI-CAT here"],
        "",
    ));

    let history = json(&sb(ben, &["chat", "history", "#vault", "--json"], ""));
    let bodies: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies[0].starts_with("MARKER-CLI-TEXT see plan  [file plan.txt"),
        "{bodies:?}"
    );
    assert_eq!(bodies[1], "MARKER-CLI-CAT here");
    let copy = ben.join("copy.txt");
    ok(sb(
        ben,
        &[
            "chat",
            "get",
            "#vault",
            &attachment,
            "-o",
            copy.to_str().unwrap(),
        ],
        "",
    ));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&file).unwrap());
    let text = stdout(&ok(sb(ann, &["chat", "history", "#vault"], "")));
    assert!(text.contains("cat: MARKER-CLI-CAT here"), "{text}");

    let out = ok(sb(ann, &["chat", "kick", "#vault", "cat"], ""));
    assert!(
        stderr(&out).contains("1 device(s) can no longer read"),
        "{}",
        stderr(&out)
    );
    ok(sb(ann, &["chat", "send", "#vault", "MARKER-CLI-AFTER"], ""));
    let history = json(&sb(ben, &["chat", "history", "#vault", "--json"], ""));
    assert_eq!(history[2]["body"], "MARKER-CLI-AFTER");
    for needle in ["MARKER-CLI", "step one", "plan.txt"] {
        let hits = files_containing(&server.data_dir, needle.as_bytes());
        assert!(hits.is_empty(), "{needle} in clear in {hits:?}");
    }
}
