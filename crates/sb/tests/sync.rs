//! `sb files sync` end to end: two local folders (two "machines" with their own CLI config)
//! kept in sync through one real server by the real binary. Creates, edits, renames and
//! deletes on either side converge; only changed chunks cross the network; concurrent edits
//! keep both copies; an edit beats a delete; a sync killed mid-way converges when run again
//! with no corrupt file; `--watch` follows changes on both sides.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const REMOTE: &str = "/sync";

/// Incompressible, repeatable bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// Every file under `root` (outside the sync state) by relative path, with its content hash.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if prefix.is_empty() && name == ".sb-sync" {
                continue;
            }
            let rel = format!("{prefix}{name}");
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &format!("{rel}/"), out);
            } else {
                let h = blake3::hash(&std::fs::read(e.path()).unwrap());
                out.insert(rel, h.to_hex().to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// One machine: its own CLI config (logged in as `admin`) and its synced folder.
struct Machine {
    home: tempfile::TempDir,
    dir: PathBuf,
    device: &'static str,
}

impl Machine {
    fn new(server: &TestServer, device: &'static str, first: bool, root: &Path) -> Self {
        let home = tempfile::tempdir().unwrap();
        if first {
            register_admin_cli(server, home.path());
        } else {
            let out = sb(
                home.path(),
                &[
                    "login",
                    &server.url,
                    "--username",
                    "admin",
                    "--password-stdin",
                    "--yes",
                ],
                &format!("{PASSWORD}\n"),
            );
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let dir = root.join(device);
        std::fs::create_dir_all(&dir).unwrap();
        Machine { home, dir, device }
    }

    fn args(&self) -> Vec<String> {
        [
            "files",
            "sync",
            self.dir.to_str().unwrap(),
            REMOTE,
            "--device",
            self.device,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Runs a sync to the end; its report.
    fn sync(&self) -> serde_json::Value {
        let mut args = self.args();
        args.push("--json".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sb(self.home.path(), &args, "");
        let report = json(&out);
        assert!(
            report["skipped"].as_array().unwrap().is_empty(),
            "{report}\n{}",
            stderr(&out)
        );
        report
    }

    fn tree(&self) -> BTreeMap<String, String> {
        tree(&self.dir)
    }
}

fn n(report: &serde_json::Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

/// Bytes of `new`'s chunks that `old` does not have: what a chunk-level transfer moves.
fn changed_chunk_bytes(old: &Path, new: &Path) -> u64 {
    let (_, _, before) = sb_client::files::manifest(old).unwrap();
    let (_, _, after) = sb_client::files::manifest(new).unwrap();
    let known: std::collections::HashSet<_> = before.iter().map(|(_, c)| c.id.clone()).collect();
    let mut seen = std::collections::HashSet::new();
    after
        .iter()
        .filter(|(_, c)| !known.contains(&c.id) && seen.insert(c.id.clone()))
        .map(|(_, c)| u64::from(c.len))
        .sum()
}

#[test]
fn two_folders_converge_through_one_server() {
    let server = TestServer::start();
    let root = tempfile::tempdir().unwrap();
    let a = Machine::new(&server, "a", true, root.path());
    let b = Machine::new(&server, "b", false, root.path());

    write(&a.dir, "a.txt", b"first line\n");
    write(&a.dir, "docs/b.txt", b"bee\n");
    write(&a.dir, "docs/deep/c.bin", &noise(3 << 20, 1));
    write(&a.dir, "e.txt", b"eee\n");
    write(&a.dir, "big.bin", &noise(24 << 20, 2));
    let r = a.sync();
    assert_eq!((n(&r, "uploaded"), n(&r, "files")), (5, 5), "{r}");
    let r = b.sync();
    assert_eq!((n(&r, "downloaded"), n(&r, "uploaded")), (5, 0), "{r}");
    assert_eq!(a.tree(), b.tree());
    // In sync, a sync moves nothing.
    let r = a.sync();
    assert_eq!(n(&r, "uploaded") + n(&r, "downloaded"), 0, "{r}");

    // Changes on both sides: creates, edits, renames, deletes.
    write(&a.dir, "a.txt", b"first line\nsecond line from a\n");
    std::fs::rename(a.dir.join("docs/b.txt"), a.dir.join("docs/b-renamed.txt")).unwrap();
    write(&a.dir, "x.txt", b"new on a\n");
    write(&b.dir, "new.txt", b"new on b\n");
    std::fs::remove_file(b.dir.join("docs/deep/c.bin")).unwrap();
    std::fs::create_dir_all(b.dir.join("f")).unwrap();
    std::fs::rename(b.dir.join("e.txt"), b.dir.join("f/e.txt")).unwrap();
    // One byte changed in the middle of a large file: only its chunk moves.
    let before = root.path().join("big.before");
    std::fs::copy(a.dir.join("big.bin"), &before).unwrap();
    let mut big = std::fs::read(a.dir.join("big.bin")).unwrap();
    big[12 << 20] ^= 0xff;
    write(&a.dir, "big.bin", &big);
    let delta = changed_chunk_bytes(&before, &a.dir.join("big.bin"));
    assert!(delta > 0 && delta < 8 << 20, "{delta}");

    let ra = a.sync();
    // The rename sends no content: the server has its chunks.
    let small = (b"first line\nsecond line from a\n".len() + b"new on a\n".len()) as u64;
    assert_eq!(n(&ra, "bytes_sent"), delta + small, "{ra}");
    let rb = b.sync();
    // B takes the renamed file from its own copy and only the changed chunk of big.bin.
    assert_eq!(
        n(&rb, "bytes_fetched"),
        delta + small,
        "only the changed chunks are fetched: {rb}"
    );
    a.sync();
    let want: Vec<&str> = vec![
        "a.txt",
        "big.bin",
        "docs/b-renamed.txt",
        "f/e.txt",
        "new.txt",
        "x.txt",
    ];
    assert_eq!(
        a.tree().keys().map(String::as_str).collect::<Vec<_>>(),
        want
    );
    assert_eq!(a.tree(), b.tree());
    assert_eq!(
        std::fs::read(b.dir.join("a.txt")).unwrap(),
        b"first line\nsecond line from a\n"
    );
    assert_eq!(std::fs::read(b.dir.join("big.bin")).unwrap(), big);
    // The folder emptied by the delete is gone on the side that applied it.
    assert!(!a.dir.join("docs/deep").exists());

    // A rename made on the server (another client) arrives as one, with nothing fetched.
    let out = sb(
        a.home.path(),
        &["files", "mv", "/sync/docs", "/sync/archive/docs"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rb = b.sync();
    assert_eq!(
        (n(&rb, "downloaded"), n(&rb, "bytes_fetched")),
        (1, 0),
        "{rb}"
    );
    assert!(b.dir.join("archive/docs/b-renamed.txt").is_file());
    assert!(!b.dir.join("docs/b-renamed.txt").exists());
    a.sync();
    assert_eq!(a.tree(), b.tree());

    // Deleted files went to the server's trash, restorable.
    let out = sb(
        a.home.path(),
        &["files", "restore", "/sync/docs/deep/c.bin", "--json"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    b.sync();
    assert_eq!(b.tree()["docs/deep/c.bin"], a_hash(&noise(3 << 20, 1)));
}

fn a_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[test]
fn concurrent_edits_keep_both_copies_and_an_edit_beats_a_delete() {
    let server = TestServer::start();
    let root = tempfile::tempdir().unwrap();
    let a = Machine::new(&server, "a", true, root.path());
    let b = Machine::new(&server, "b", false, root.path());
    write(&a.dir, "notes/plan.md", b"v1\n");
    write(&a.dir, "d.txt", b"delete me on a\n");
    write(&a.dir, "e.txt", b"delete me on b\n");
    a.sync();
    b.sync();

    write(&a.dir, "notes/plan.md", b"v2 from a\n");
    write(&b.dir, "notes/plan.md", b"v2 from b, longer\n");
    std::fs::remove_file(a.dir.join("d.txt")).unwrap();
    write(&b.dir, "d.txt", b"edited on b\n");
    write(&a.dir, "e.txt", b"edited on a\n");
    std::fs::remove_file(b.dir.join("e.txt")).unwrap();

    a.sync();
    let rb = b.sync();
    let conflicts = rb["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{rb}");
    let copy = conflicts[0].as_str().unwrap();
    assert!(
        copy.starts_with("notes/plan.sync-conflict-") && copy.ends_with("-b.md"),
        "{copy}"
    );
    a.sync();
    b.sync();
    assert_eq!(a.tree(), b.tree());
    for m in [&a, &b] {
        // Nothing lost: the server's edit keeps the name, B's is the conflict copy.
        assert_eq!(
            std::fs::read(m.dir.join("notes/plan.md")).unwrap(),
            b"v2 from a\n"
        );
        assert_eq!(
            std::fs::read(m.dir.join(copy)).unwrap(),
            b"v2 from b, longer\n"
        );
        // An edit beats a delete, whichever side deleted.
        assert_eq!(
            std::fs::read(m.dir.join("d.txt")).unwrap(),
            b"edited on b\n"
        );
        assert_eq!(
            std::fs::read(m.dir.join("e.txt")).unwrap(),
            b"edited on a\n"
        );
        let copies = m
            .tree()
            .keys()
            .filter(|k| k.contains("sync-conflict"))
            .count();
        assert_eq!(copies, 1, "exactly one conflict file");
    }
}

/// Starts a sync in the background and kills it (SIGKILL) once `marker` has been printed
/// `after` times; its stderr so far.
fn kill_sync_after(m: &Machine, marker: &str, after: usize) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sb"))
        .args(m.args())
        .env("XDG_CONFIG_HOME", m.home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let mut hits = 0;
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(marker) {
            hits += 1;
            if hits == after {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        hits, after,
        "the sync ended before it could be killed: {seen}"
    );
    seen
}

#[test]
fn a_sync_killed_mid_way_converges_when_run_again() {
    let server = TestServer::start();
    let root = tempfile::tempdir().unwrap();
    let a = Machine::new(&server, "a", true, root.path());
    let b = Machine::new(&server, "b", false, root.path());
    let mut contents = BTreeMap::new();
    for i in 0..60u64 {
        let bytes = noise(((i % 7) as usize + 1) << 18, 100 + i);
        let rel = format!("set/{:02}/file{i}.bin", i % 5);
        write(&a.dir, &rel, &bytes);
        contents.insert(rel, a_hash(&bytes));
    }
    write(&a.dir, "large.bin", &noise(48 << 20, 7));
    contents.insert("large.bin".into(), a_hash(&noise(48 << 20, 7)));

    // Upload killed after a few files, then run again.
    kill_sync_after(&a, "↑", 3);
    let r = a.sync();
    assert!(
        n(&r, "uploaded") < 61,
        "the first run had uploaded some: {r}"
    );
    assert_eq!(a.tree(), contents);

    // Download killed after a few files: what is there is whole, then it converges.
    kill_sync_after(&b, "↓", 3);
    let partial = b.tree();
    assert!(
        partial.len() < contents.len(),
        "killed mid-way: {partial:?}"
    );
    for (rel, hash) in &partial {
        assert_eq!(contents.get(rel), Some(hash), "{rel} is whole or absent");
    }
    let r = b.sync();
    assert!(
        n(&r, "downloaded") < 61 && n(&r, "downloaded") > 0,
        "the second run finished the rest: {r}"
    );
    assert_eq!(b.tree(), contents);
    // Nothing left over in the temp folder, and nothing more to do on either side.
    assert_eq!(
        std::fs::read_dir(b.dir.join(".sb-sync/tmp"))
            .unwrap()
            .count(),
        0
    );
    for m in [&a, &b] {
        let r = m.sync();
        assert_eq!(n(&r, "uploaded") + n(&r, "downloaded"), 0, "{r}");
    }
}

#[test]
fn watch_mode_follows_changes_on_both_sides() {
    let server = TestServer::start();
    let root = tempfile::tempdir().unwrap();
    let a = Machine::new(&server, "a", true, root.path());
    let b = Machine::new(&server, "b", false, root.path());
    write(&b.dir, "start.txt", b"there before watching\n");
    // A long poll interval: what arrives in time was pushed, not polled.
    let mut args = b.args();
    args.extend(["--watch".to_string(), "--poll".into(), "1h".into()]);
    let mut watcher = std::process::Command::new(env!("CARGO_BIN_EXE_sb"))
        .args(&args)
        .env("XDG_CONFIG_HOME", b.home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    // The first run's summary: B's file is on the server.
    let first = out.next().unwrap().unwrap();
    assert!(first.contains("1 up"), "{first}");

    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // A change on the server (A syncing) is pushed to the watcher over /v1/ws.
    write(&a.dir, "from-a.txt", b"hello from a\n");
    a.sync();
    wait_for("from-a.txt on b", &|| {
        std::fs::read(b.dir.join("from-a.txt")).ok().as_deref() == Some(b"hello from a\n")
    });
    // A change here is seen by inotify and uploaded.
    {
        let mut f = std::fs::File::create(b.dir.join("from-b.txt")).unwrap();
        f.write_all(b"hello from b\n").unwrap();
    }
    let client_home = a.home.path().to_path_buf();
    wait_for("from-b.txt on the server", &|| {
        let out = sb(&client_home, &["files", "ls", REMOTE, "--json"], "");
        json(&out)
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "/sync/from-b.txt")
    });
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    a.sync();
    assert_eq!(a.tree(), b.tree());
}
