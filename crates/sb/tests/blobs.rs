//! Blob storage end to end against the real server and CLI: copies on two directories, a
//! corrupt copy served from the other and repaired, and `sb admin scrub` finding and
//! repairing damage on disk.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use sb_proto::{MessageSend, RoomCreate};
use std::path::{Path, PathBuf};

/// Every stored copy (file) under a blob directory.
fn copies(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "tmp") {
                    stack.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A server whose blobs live in `dirs` (with `extra` TOML appended), an admin registered for
/// the CLI in the returned home, and that admin's SDK client.
async fn start_with_blob_dirs(
    tmp: &Path,
    dirs: &[&Path],
    extra: &str,
) -> (TestServer, tempfile::TempDir, sb_client::Client) {
    let config = tmp.join("sb.toml");
    let list: Vec<String> = dirs
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    std::fs::write(
        &config,
        format!("[blobs]\ndirs = [{}]\n{extra}", list.join(", ")),
    )
    .unwrap();
    let server = TestServer::start_with(ServerOptions {
        config: Some(config),
        ..Default::default()
    });
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&server, home.path());
    let admin = server.login("admin").await;
    (server, home, admin)
}

#[tokio::test]
async fn replicated_blobs_survive_a_corrupt_copy_and_scrub_repairs_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2) = (tmp.path().join("disk1"), tmp.path().join("disk2"));
    let (server, home, admin) =
        start_with_blob_dirs(tmp.path(), &[&d1, &d2], "replicas = 2\ncache_bytes = 0\n").await;
    let room = admin
        .create_room(&RoomCreate {
            name: "vault".into(),
            topic: String::new(),
            public: false,
            encrypted: false,
        })
        .await
        .unwrap();
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let info = admin
        .upload(
            &room.id,
            "a.bin",
            "application/octet-stream",
            data.clone(),
            |_, _| {},
        )
        .await
        .unwrap();
    admin
        .send_message(
            &room.id,
            &MessageSend {
                message_id: "m1".into(),
                body: "file".into(),
                reply_to: None,
                kind: None,
                target: None,
                attachments: vec![info.id.clone()],
            },
        )
        .await
        .unwrap();
    // One copy on each disk.
    let (c1, c2) = (copies(&d1), copies(&d2));
    assert_eq!((c1.len(), c2.len()), (1, 1), "{c1:?} {c2:?}");

    // A corrupt copy: the download is still byte-identical, served from the other disk.
    std::fs::write(&c1[0], b"bit rot").unwrap();
    let (_, got) = admin.download(&room.id, &info.id).await.unwrap();
    assert!(got == data, "served from the good replica");

    // The read repaired the bad copy if it tried it first; scrub repairs it otherwise.
    let first = json(&sb(home.path(), &["admin", "scrub", "--json"], ""));
    let pair = |r: &serde_json::Value| {
        (
            r["corrupt_copies"].as_u64().unwrap(),
            r["repaired_copies"].as_u64().unwrap(),
        )
    };
    assert!(matches!(pair(&first), (0, 0) | (1, 1)), "{first}");
    assert_eq!(first["lost"], serde_json::json!([]));

    // Damage on the other disk: found and repaired by scrub; nothing lost.
    std::fs::write(&c2[0], b"more rot").unwrap();
    let out = sb(home.path(), &["admin", "scrub", "--json"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["blobs"], 1);
    assert_eq!(report["corrupt_copies"], 1, "{report}");
    assert_eq!(report["repaired_copies"], 1, "{report}");
    assert_eq!(report["lost"], serde_json::json!([]));
    let again = json(&sb(home.path(), &["admin", "scrub", "--json"], ""));
    assert_eq!(
        (
            again["corrupt_copies"].clone(),
            again["repaired_copies"].clone()
        ),
        (0.into(), 0.into())
    );

    // Both copies bad: scrub names the blob as lost and the command fails with advice.
    for c in copies(&d1).into_iter().chain(copies(&d2)) {
        std::fs::write(c, b"gone").unwrap();
    }
    let out = sb(home.path(), &["admin", "scrub"], "");
    assert!(!out.status.success());
    assert!(stdout(&out).contains("1 lost"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("restore them from a backup"),
        "{}",
        stderr(&out)
    );
    let err = admin.download(&room.id, &info.id).await.unwrap_err();
    assert_eq!(err.status(), Some(500), "{err:?}");

    // Not for plain users.
    let bob = server.user(&admin, "bob").await;
    let err = bob.admin_scrub().await.unwrap_err();
    assert_eq!(err.status(), Some(403));
}

#[tokio::test]
async fn a_corrupt_file_chunk_is_detected_on_read_and_by_scrub_and_repaired_from_its_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2) = (tmp.path().join("disk1"), tmp.path().join("disk2"));
    let (_server, home, admin) =
        start_with_blob_dirs(tmp.path(), &[&d1, &d2], "replicas = 2\ncache_bytes = 0\n").await;
    let local = tmp.path().join("doc.bin");
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();
    admin
        .put_file(None, &local, "/doc.bin", None, "t", &|_, _| {})
        .await
        .unwrap();
    let (c1, c2) = (copies(&d1), copies(&d2));
    assert_eq!(
        (c1.len(), c2.len()),
        (1, 1),
        "one chunk, a copy on each disk"
    );

    // Bit rot on both copies in turn: every read still returns the right bytes, and after
    // each scrub nothing bad is left.
    for bad in [&c1[0], &c2[0]] {
        let mut bytes = std::fs::read(bad).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(bad, bytes).unwrap();
        let back = tmp.path().join("back.bin");
        admin
            .get_file(None, "/doc.bin", None, &back, &|_, _| {})
            .await
            .unwrap();
        assert!(std::fs::read(&back).unwrap() == data);
        let r = json(&sb(home.path(), &["admin", "scrub", "--json"], ""));
        assert_eq!(r["lost"], serde_json::json!([]), "{r}");
        let again = json(&sb(home.path(), &["admin", "scrub", "--json"], ""));
        assert_eq!(again["corrupt_copies"], 0, "{again}");
    }
}

#[tokio::test]
async fn retention_and_gc_delete_what_nothing_refers_to_and_keep_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    let (server, home, admin) = start_with_blob_dirs(
        tmp.path(),
        &[&disk],
        "gc_grace_secs = 0\n\n[files]\nversion_keep_last = 1\nversion_keep_days = 0\ntrash_retention_secs = 0\n",
    )
    .await;
    let gc = || json(&sb(home.path(), &["admin", "gc", "--json"], ""));
    let noise = |seed: u32| -> Vec<u8> {
        (0..300_000u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    };
    // Two versions of one file, and a chat attachment.
    let local = tmp.path().join("f.bin");
    for seed in [1, 2] {
        std::fs::write(&local, noise(seed)).unwrap();
        admin
            .put_file(None, &local, "/f.bin", None, "t", &|_, _| {})
            .await
            .unwrap();
    }
    let room = admin
        .create_room(&RoomCreate {
            name: "keep".into(),
            topic: String::new(),
            public: false,
            encrypted: false,
        })
        .await
        .unwrap();
    let att = admin
        .upload(
            &room.id,
            "a.bin",
            "application/octet-stream",
            noise(3),
            |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(copies(&disk).len(), 3);

    // Version 1 is past retention: it and its chunk go; version 2 and the attachment stay.
    let r = gc();
    assert_eq!(
        (r["versions_deleted"].clone(), r["blobs_deleted"].clone()),
        (1.into(), 1.into()),
        "{r}"
    );
    assert_eq!(copies(&disk).len(), 2);
    let back = tmp.path().join("back.bin");
    admin
        .get_file(None, "/f.bin", None, &back, &|_, _| {})
        .await
        .unwrap();
    assert!(std::fs::read(&back).unwrap() == noise(2));
    assert_eq!(admin.files_versions(None, "/f.bin").await.unwrap().len(), 1);

    // Trashed and past the trash's retention: purged with its chunk.
    admin.files_remove(None, "/f.bin", None).await.unwrap();
    let r = gc();
    assert_eq!(
        (r["files_purged"].clone(), r["blobs_deleted"].clone()),
        (1.into(), 1.into()),
        "{r}"
    );
    assert_eq!(copies(&disk).len(), 1);
    let (_, bytes) = admin.download(&room.id, &att.id).await.unwrap();
    assert!(bytes == noise(3), "the attachment is kept");
    // Nothing left to do, and not for plain users.
    let r = gc();
    assert_eq!(r["blobs_deleted"], 0);
    let bob = server.user(&admin, "bob").await;
    assert_eq!(bob.admin_gc().await.unwrap_err().status(), Some(403));
}
