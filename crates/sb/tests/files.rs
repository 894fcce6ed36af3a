//! Files end to end against the real server: a large file up and down byte-identical, an
//! interrupted upload resumed sending only the rest, dedup after a one-byte insert, HTTP
//! Range, an interrupted download resumed, versions, and the CLI.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use reqwest::Method;
use sb_proto::UploadStart;
use std::io::Write;
use std::path::Path;

/// Incompressible, repeatable bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `len` bytes of noise to `path` in pieces (a large file never sits in memory whole).
fn write_noise(path: &Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut left = len;
    let mut s = seed;
    while left > 0 {
        let n = left.min(8 << 20) as usize;
        f.write_all(&noise(n, s)).unwrap();
        s = s.wrapping_add(0x9e37_79b9);
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn same_files(a: &Path, b: &Path) -> bool {
    let (ha, hb) = (
        blake3::Hasher::new()
            .update_reader(std::fs::File::open(a).unwrap())
            .unwrap()
            .finalize(),
        blake3::Hasher::new()
            .update_reader(std::fs::File::open(b).unwrap())
            .unwrap()
            .finalize(),
    );
    ha == hb && std::fs::metadata(a).unwrap().len() == std::fs::metadata(b).unwrap().len()
}

/// Size of the round-trip file: 1 GiB, or SB_TEST_FILE_MIB.
fn big_size() -> u64 {
    std::env::var("SB_TEST_FILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024u64)
        << 20
}

#[tokio::test]
async fn a_large_file_round_trips_resumes_and_dedups() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.bin");
    write_noise(&big, big_size(), 1);

    // An upload interrupted after some chunks: the next run sends only the rest.
    let (size, blake3, chunks) = sb_client::files::manifest(&big).unwrap();
    let started = admin
        .files_start_upload(&UploadStart {
            space: None,
            path: "/data/big.bin".into(),
            size,
            blake3,
            chunks: chunks.iter().map(|(_, c)| c.clone()).collect(),
            base_version: None,
            device: "test".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        started.missing.len(),
        chunks.len(),
        "a fresh server lacks every chunk"
    );
    let early: Vec<&(u64, sb_proto::ChunkInfo)> = chunks.iter().take(chunks.len() / 3).collect();
    let mut sent_early = 0u64;
    for (off, c) in &early {
        let mut buf = vec![0u8; c.len as usize];
        let mut f = std::fs::File::open(&big).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(*off)).unwrap();
        std::io::Read::read_exact(&mut f, &mut buf).unwrap();
        admin
            .files_put_chunk(&started.upload_id, &c.id, buf)
            .await
            .unwrap();
        sent_early += u64::from(c.len);
    }
    // …the connection drops here; committing now is refused, naming what is missing.
    let err = admin.files_commit(&started.upload_id).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    let (info, stats) = admin
        .put_file(None, &big, "/data/big.bin", None, "test", &|_, _| {})
        .await
        .unwrap();
    assert_eq!(stats.bytes_sent, size - sent_early, "only the rest is sent");
    assert_eq!(stats.chunks_sent, chunks.len() - early.len());
    assert_eq!((info.version, info.size), (1, size));

    // Down again, byte-identical, with progress reaching the end.
    let back = tmp.path().join("back.bin");
    let last = std::sync::atomic::AtomicU64::new(0);
    admin
        .get_file(None, "/data/big.bin", None, &back, &|done, _| {
            last.store(done, std::sync::atomic::Ordering::Relaxed)
        })
        .await
        .unwrap();
    assert!(same_files(&big, &back), "byte-identical");
    assert_eq!(last.load(std::sync::atomic::Ordering::Relaxed), size);
    // Big files: keep at most three copies on disk at a time (the source, the server's, one).
    std::fs::remove_file(&back).unwrap();

    // One byte inserted near the start: a new version that sends only a few new chunks.
    let edited = tmp.path().join("edited.bin");
    {
        let mut out = std::fs::File::create(&edited).unwrap();
        let mut src = std::fs::File::open(&big).unwrap();
        let mut head = vec![0u8; 1000];
        std::io::Read::read_exact(&mut src, &mut head).unwrap();
        out.write_all(&head).unwrap();
        out.write_all(&[0x42]).unwrap();
        std::io::copy(&mut src, &mut out).unwrap();
    }
    let (v2, stats) = admin
        .put_file(None, &edited, "/data/big.bin", Some(1), "test", &|_, _| {})
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert!(
        stats.chunks_sent <= 2,
        "{} of {} chunks sent",
        stats.chunks_sent,
        stats.chunks
    );
    assert!(
        stats.bytes_sent < 10 << 20,
        "{} bytes sent",
        stats.bytes_sent
    );
    // A writer still based on version 1 is refused, not silently overwriting.
    let err = admin
        .put_file(None, &big, "/data/big.bin", Some(1), "test", &|_, _| {})
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");

    let versions = admin.files_versions(None, "/data/big.bin").await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(versions[0].created_by, "admin");
    // The first version is still there to read.
    std::fs::remove_file(&edited).unwrap();
    let old = tmp.path().join("old.bin");
    admin
        .get_file(None, "/data/big.bin", Some(1), &old, &|_, _| {})
        .await
        .unwrap();
    assert!(same_files(&big, &old));
}

#[tokio::test]
async fn ranges_resumed_downloads_listings_and_privacy() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f.bin");
    let data = noise(3_000_000, 9);
    std::fs::write(&file, &data).unwrap();
    admin
        .put_file(None, &file, "/docs/f.bin", Some(0), "test", &|_, _| {})
        .await
        .unwrap();

    // HTTP Range across a chunk boundary, and past the end.
    let resp = admin
        .raw_with_headers(
            Method::GET,
            "/v1/files/content?path=/docs/f.bin",
            &[("range", "bytes=1000000-2999999")],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 206);
    assert_eq!(
        resp.headers()["content-range"].to_str().unwrap(),
        "bytes 1000000-2999999/3000000"
    );
    assert!(resp.bytes().await.unwrap() == data[1_000_000..3_000_000]);
    let resp = admin
        .raw_with_headers(
            Method::GET,
            "/v1/files/content?path=/docs/f.bin",
            &[("range", "bytes=3000000-")],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 416);

    // A download interrupted after 1 MB resumes from there.
    let local = tmp.path().join("copy.bin");
    std::fs::write(sb_client::files::part_path(&local), &data[..1_000_000]).unwrap();
    let first = std::sync::Mutex::new(None);
    admin
        .get_file(None, "/docs/f.bin", None, &local, &|done, _| {
            first.lock().unwrap().get_or_insert(done);
        })
        .await
        .unwrap();
    assert_eq!(
        *first.lock().unwrap(),
        Some(1_000_000),
        "picked up where it stopped"
    );
    assert!(std::fs::read(&local).unwrap() == data);
    assert!(!sb_client::files::part_path(&local).exists());

    let list = admin.files_list(None, "/docs").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].path.as_str(), list[0].size),
        ("/docs/f.bin", 3_000_000)
    );

    // An empty file goes up and down too.
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let (info, stats) = admin
        .put_file(None, &empty, "/empty.txt", None, "test", &|_, _| {})
        .await
        .unwrap();
    assert_eq!((info.size, stats.chunks), (0, 0));
    let empty_back = tmp.path().join("empty-back.txt");
    admin
        .get_file(None, "/empty.txt", None, &empty_back, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&empty_back).unwrap(), b"");
    admin.files_remove(None, "/empty.txt", None).await.unwrap();

    // The change feed: the upload, then a rename as a removal and an arrival.
    let feed = admin.files_changes(None, 0).await.unwrap();
    assert_eq!(feed.len(), 3, "f.bin, then empty.txt written and trashed");
    assert_eq!(
        (
            feed[0].seq,
            feed[0].path.as_str(),
            feed[0].version,
            feed[0].deleted
        ),
        (1, "/docs/f.bin", 1, false)
    );
    admin
        .files_move(None, "/docs/f.bin", "/docs/g.bin")
        .await
        .unwrap();
    let feed = admin.files_changes(None, 3).await.unwrap();
    let seen: Vec<(&str, bool)> = feed.iter().map(|c| (c.path.as_str(), c.deleted)).collect();
    assert_eq!(seen, vec![("/docs/f.bin", true), ("/docs/g.bin", false)]);
    assert!(
        admin
            .files_changes(None, feed[1].seq)
            .await
            .unwrap()
            .is_empty()
    );
    admin
        .files_move(None, "/docs/g.bin", "/docs/f.bin")
        .await
        .unwrap();

    // Another user has a space of their own: admin's files are not in it.
    let bob = server.user(&admin, "bob").await;
    assert!(bob.files_list(None, "/").await.unwrap().is_empty());
    assert!(bob.files_changes(None, 0).await.unwrap().is_empty());
    let err = bob
        .get_file(None, "/docs/f.bin", None, &tmp.path().join("x"), &|_, _| {})
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));

    // Bad input: a clear 400, nothing stored.
    let err = admin
        .files_start_upload(&UploadStart {
            space: None,
            path: "/../etc/passwd".into(),
            size: 1,
            blake3: "00".repeat(32),
            chunks: vec![],
            base_version: None,
            device: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
}

#[test]
fn files_from_the_cli() {
    let server = TestServer::start();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&server, home.path());
    let local = home.path().join("report.pdf");
    std::fs::write(&local, noise(2_500_000, 3)).unwrap();
    let out = sb(
        home.path(),
        &["files", "put", local.to_str().unwrap(), "/docs/report.pdf"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("uploading /docs/report.pdf: 100%"),
        "{}",
        stderr(&out)
    );
    let back = home.path().join("r.pdf");
    let out = sb(
        home.path(),
        &[
            "files",
            "get",
            "/docs/report.pdf",
            back.to_str().unwrap(),
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["version"], 1);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&local).unwrap());
    let ls = json(&sb(home.path(), &["files", "ls", "/docs", "--json"], ""));
    assert_eq!(ls[0]["path"], "/docs/report.pdf");
    let out = sb(home.path(), &["files", "versions", "/docs/report.pdf"], "");
    assert!(stdout(&out).contains("v1"), "{}", stdout(&out));
    let out = sb(home.path(), &["files", "get", "/docs/nope.pdf"], "");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no file /docs/nope.pdf"),
        "{}",
        stderr(&out)
    );
    // A second version, then the first restored as the third (history is kept).
    let v1 = std::fs::read(&local).unwrap();
    std::fs::write(&local, noise(100_000, 4)).unwrap();
    let ok = |args: &[&str]| {
        let out = sb(home.path(), args, "");
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    ok(&["files", "put", local.to_str().unwrap(), "/docs/report.pdf"]);
    let r = json(&ok(&[
        "files",
        "restore",
        "/docs/report.pdf",
        "--version",
        "1",
        "--json",
    ]));
    assert_eq!(r["version"], 3);
    let again = home.path().join("again.pdf");
    ok(&["files", "get", "/docs/report.pdf", again.to_str().unwrap()]);
    assert!(std::fs::read(&again).unwrap() == v1);
    let versions = json(&ok(&["files", "versions", "/docs/report.pdf", "--json"]));
    assert_eq!(versions.as_array().unwrap().len(), 3);

    // Rename the folder; trash the file and bring it back.
    ok(&["files", "mv", "/docs", "/archive/2026"]);
    let ls = json(&ok(&["files", "ls", "--json"]));
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["path"], "/archive/2026/report.pdf");
    ok(&["files", "rm", "/archive/2026/report.pdf"]);
    assert!(
        json(&ok(&["files", "ls", "--json"]))
            .as_array()
            .unwrap()
            .is_empty()
    );
    let out = sb(
        home.path(),
        &[
            "files",
            "get",
            "/archive/2026/report.pdf",
            again.to_str().unwrap(),
        ],
        "",
    );
    assert!(!out.status.success(), "a trashed file is not served");
    let back = json(&ok(&[
        "files",
        "restore",
        "/archive/2026/report.pdf",
        "--json",
    ]));
    assert_eq!(
        (back["version"].clone(), back["deleted"].clone()),
        (3.into(), false.into())
    );
    // Moving onto an existing file is refused with what to do.
    ok(&["files", "put", local.to_str().unwrap(), "/other.pdf"]);
    let out = sb(
        home.path(),
        &["files", "mv", "/other.pdf", "/archive/2026/report.pdf"],
        "",
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already at"), "{}", stderr(&out));
}

#[tokio::test]
async fn spaces_are_private_unless_shared_and_read_only_shares_cannot_write() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let ann = server.user(&admin, "ann").await;
    let bob = server.user(&admin, "bob").await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plan.txt");
    std::fs::write(&file, noise(50_000, 5)).unwrap();

    let team = ann.files_create_space("team").await.unwrap();
    ann.put_file(Some(&team.id), &file, "/plan.txt", None, "t", &|_, _| {})
        .await
        .unwrap();
    // Not shared: bob cannot list, read or write it, and cannot tell it exists.
    let no = bob.files_list(Some(&team.id), "/").await.unwrap_err();
    assert_eq!(no.status(), Some(404), "{no}");
    let no = bob
        .put_file(Some(&team.id), &file, "/mine.txt", None, "t", &|_, _| {})
        .await
        .unwrap_err();
    assert_eq!(no.status(), Some(404), "{no}");
    // …the same answer as for a space that does not exist.
    let ghost = sb_core::SpaceId::new_at(sb_core::UnixMillis(1)).to_string();
    let unknown = bob.files_list(Some(&ghost), "/").await.unwrap_err();
    assert_eq!(
        unknown.to_string().replace(&ghost, "X"),
        no.to_string().replace(&team.id, "X")
    );
    // The admin role opens nobody's files either.
    assert_eq!(
        admin
            .files_list(Some(&team.id), "/")
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );

    // Read-only: bob reads, but every write is refused and nothing changes.
    ann.files_share(&team.id, "bob", "read").await.unwrap();
    assert_eq!(bob.files_list(Some(&team.id), "/").await.unwrap().len(), 1);
    let got = tmp.path().join("got.txt");
    bob.get_file(Some(&team.id), "/plan.txt", None, &got, &|_, _| {})
        .await
        .unwrap();
    assert!(std::fs::read(&got).unwrap() == std::fs::read(&file).unwrap());
    for err in [
        bob.put_file(Some(&team.id), &file, "/mine.txt", None, "t", &|_, _| {})
            .await
            .unwrap_err(),
        bob.files_remove(Some(&team.id), "/plan.txt", None)
            .await
            .unwrap_err(),
        bob.files_move(Some(&team.id), "/plan.txt", "/x.txt")
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.status(), Some(403), "{err}");
    }
    assert_eq!(ann.files_list(Some(&team.id), "/").await.unwrap().len(), 1);
    // Only the owner shares.
    assert_eq!(
        bob.files_share(&team.id, "admin", "write")
            .await
            .unwrap_err()
            .status(),
        Some(403)
    );

    // Read-write: bob writes; withdrawn: bob is out again.
    ann.files_share(&team.id, "bob", "write").await.unwrap();
    bob.put_file(Some(&team.id), &file, "/mine.txt", None, "t", &|_, _| {})
        .await
        .unwrap();
    let spaces = bob.files_spaces().await.unwrap();
    assert!(
        spaces
            .iter()
            .any(|s| s.id == team.id && s.access == "write" && s.owner == "ann")
    );
    ann.files_share(&team.id, "bob", "none").await.unwrap();
    assert_eq!(
        bob.files_list(Some(&team.id), "/")
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
}

#[tokio::test]
async fn download_links_work_without_an_account_until_they_expire() {
    let server = TestServer::start();
    let admin = server.admin().await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("share.bin");
    let data = noise(400_000, 8);
    std::fs::write(&file, &data).unwrap();
    admin
        .put_file(None, &file, "/pub/share.bin", None, "t", &|_, _| {})
        .await
        .unwrap();
    let link = admin
        .files_link(None, "/pub/share.bin", None, 3600)
        .await
        .unwrap();
    // No credential at all.
    let anon = server.client();
    let resp = anon
        .raw_with_headers(Method::GET, &link.url_path, &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.bytes().await.unwrap() == data);
    // A link with a guessed or altered token is refused.
    let bad = format!("{}x", link.url_path);
    let resp = anon
        .raw_with_headers(Method::GET, &bad, &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    // An expired link is refused.
    let short = admin
        .files_link(None, "/pub/share.bin", None, 1)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let resp = anon
        .raw_with_headers(Method::GET, &short.url_path, &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.text().await.unwrap().contains("expired"));
    // Over the configured lifetime, or to a file that is not there: a clear 4xx.
    let err = admin
        .files_link(None, "/pub/share.bin", None, 365 * 24 * 3600)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    let err = admin
        .files_link(None, "/pub/none.bin", None, 60)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    // A trashed file's link stops working.
    admin
        .files_remove(None, "/pub/share.bin", None)
        .await
        .unwrap();
    let resp = anon
        .raw_with_headers(Method::GET, &link.url_path, &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}
