//! Firmware: the operator's key signs images with the real CLI; the server refuses what does
//! not verify; a device downloads with its credentials (resuming by Range), and the
//! signature check a device makes rejects a corrupted image. Rollouts go batch by batch to
//! devices run by `sb device simulate`, and halt themselves past their failure threshold.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use base64::Engine;
use common::*;
use reqwest::Method;
use std::time::{Duration, Instant};

#[tokio::test]
async fn signed_firmware_uploads_downloads_resumes_and_a_corrupt_image_is_rejected() {
    let server = TestServer::start_with(ServerOptions {
        env: vec![("SB_BLOBS__GC_GRACE_SECS", "0".into())],
        ..Default::default()
    });
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&server, home.path());
    let keys = json(&sb(home.path(), &["firmware", "keygen", "--json"], ""));
    let public = keys["public_key"].as_str().unwrap().to_string();
    // The key is not replaced by a second keygen.
    assert!(
        !sb(home.path(), &["firmware", "keygen"], "")
            .status
            .success()
    );

    let image: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = home.path().join("fw.bin");
    std::fs::write(&file, &image).unwrap();
    let up = json(&sb(
        home.path(),
        &[
            "firmware",
            "upload",
            file.to_str().unwrap(),
            "--version",
            "1.0.0",
            "--json",
        ],
        "",
    ));
    assert_eq!(up["size"], 300_000);
    assert_eq!(up["public_key"], public.as_str());
    // A version is never replaced.
    let again = sb(
        home.path(),
        &[
            "firmware",
            "upload",
            file.to_str().unwrap(),
            "--version",
            "1.0.0",
        ],
        "",
    );
    assert!(!again.status.success());
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));

    // A signature that does not match the bytes is refused, and nothing is stored.
    let admin = server.login("admin").await;
    let sig = up["signature"].as_str().unwrap().to_string();
    let mut tampered = image.clone();
    tampered[1234] ^= 0x40;
    let e = admin
        .firmware_upload("1.0.1", tampered.clone(), &sig, &public)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert_eq!(admin.firmwares().await.unwrap().len(), 1);
    // Only admins upload.
    let bob = server.user(&admin, "bob").await;
    let e = bob
        .firmware_upload("2.0.0", image.clone(), &sig, &public)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");

    // Garbage collection keeps the image.
    let out = sb(home.path(), &["admin", "gc", "--json"], "");
    assert!(out.status.success(), "{}", stderr(&out));

    // A device downloads it with HTTP Basic id:secret, resuming where it stopped.
    let dev = admin
        .device_register(&sb_proto::DeviceRegister {
            name: "fw-1".into(),
            group: String::new(),
            tags: Default::default(),
        })
        .await
        .unwrap();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", dev.id, dev.secret))
    );
    let anon = server.client();
    let get = |range: Option<&'static str>, auth: String| {
        let anon = anon.clone();
        async move {
            let mut h = vec![("authorization", auth.as_str())];
            if let Some(r) = range {
                h.push(("range", r));
            }
            let resp = anon
                .raw_with_headers(Method::GET, "/v1/firmware/1.0.0/image", &h, Vec::new())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let sig = resp
                .headers()
                .get("x-firmware-signature")
                .map(|v| v.to_str().unwrap().to_string());
            (status, sig, resp.bytes().await.unwrap().to_vec())
        }
    };
    let (status, header_sig, first) = get(Some("bytes=0-99999"), basic.clone()).await;
    assert_eq!((status, first.len()), (206, 100_000));
    let (status, _, rest) = get(Some("bytes=100000-"), basic.clone()).await;
    assert_eq!(status, 206);
    let mut whole = first;
    whole.extend_from_slice(&rest);
    assert_eq!(whole, image);
    // The device's check: the signature verifies with the operator key it was given…
    let header_sig = header_sig.unwrap();
    sb_devices::firmware::verify(&whole, &header_sig, &public).unwrap();
    // …and a copy corrupted on the way is rejected.
    whole[77_777] ^= 1;
    let err = sb_devices::firmware::verify(&whole, &header_sig, &public).unwrap_err();
    assert!(err.contains("does not match"), "{err}");

    // A wrong secret gets nothing.
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:sbd_wrong", dev.id))
    );
    let (status, _, _) = get(None, wrong).await;
    assert_eq!(status, 401);
}

/// Signs and uploads `image` as `version` with the CLI's key (made here on first use).
fn upload(home: &std::path::Path, version: &str, image: &[u8]) {
    let file = home.join(format!("fw-{version}.bin"));
    std::fs::write(&file, image).unwrap();
    let out = sb(
        home,
        &[
            "firmware",
            "upload",
            file.to_str().unwrap(),
            "--version",
            version,
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs `sb device simulate` in the background until dropped.
struct Simulator(std::process::Child);

impl Simulator {
    fn start(home: &std::path::Path, mqtt: &str, extra: &[&str]) -> Self {
        let mut args = vec!["device", "simulate", "--interval", "1s", "--mqtt", mqtt];
        args.extend_from_slice(extra);
        Simulator(
            std::process::Command::new(BIN)
                .args(&args)
                .env("XDG_CONFIG_HOME", home)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_online(admin: &sb_client::Client, group: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin
        .devices()
        .await
        .unwrap()
        .iter()
        .filter(|d| d.group == group && d.online)
        .count()
        < n
    {
        assert!(
            Instant::now() < deadline,
            "the simulated devices did not connect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// Multi-threaded: the simulators are separate processes, and the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_batch_by_batch_and_halts_past_its_failure_threshold() {
    let server = TestServer::start_with(ServerOptions {
        mqtt: true,
        ..Default::default()
    });
    let mqtt = server.mqtt.clone().unwrap();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&server, home.path());
    let keys = json(&sb(home.path(), &["firmware", "keygen", "--json"], ""));
    let public = keys["public_key"].as_str().unwrap().to_string();
    let image: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    upload(home.path(), "2.0.0", &image);

    // Ten devices in one group, in name order: four whose downloads arrive whole, then six
    // whose downloads arrive damaged (a bit flipped on the way), which their signature check
    // must refuse.
    let _good = Simulator::start(
        home.path(),
        &mqtt,
        &[
            "--count",
            "4",
            "--prefix",
            "a",
            "--group",
            "fleet",
            "--firmware-key",
            &public,
        ],
    );
    let _bad = Simulator::start(
        home.path(),
        &mqtt,
        &[
            "--count",
            "6",
            "--prefix",
            "b",
            "--group",
            "fleet",
            "--firmware-key",
            &public,
            "--corrupt-firmware",
        ],
    );
    let admin = server.login("admin").await;
    wait_online(&admin, "fleet", 10).await;

    // Batches of 2 (20%), one failure allowed (10%): a-1,a-2 and a-3,a-4 update; b-1,b-2
    // both fail, which is past the threshold, so b-3…b-6 are never told.
    let out = sb(
        home.path(),
        &[
            "firmware",
            "rollout",
            "2.0.0",
            "--group",
            "fleet",
            "--batch",
            "20%",
            "--max-failures",
            "10%",
            "--step-timeout",
            "60s",
            "--wait",
            "--json",
        ],
        "",
    );
    assert!(
        !out.status.success(),
        "a halted rollout exits with an error"
    );
    assert!(stderr(&out).contains("halted"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("batch 3/5"),
        "progress is shown: {}",
        stderr(&out)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["state"], "halted", "{r}");
    assert_eq!(
        (r["batch_size"].as_u64(), r["max_failures"].as_u64()),
        (Some(2), Some(1))
    );
    let state_of = |r: &serde_json::Value, name: &str| -> (String, String) {
        let d = r["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap()
            .clone();
        (
            d["state"].as_str().unwrap().to_string(),
            d["reason"].as_str().unwrap_or("").to_string(),
        )
    };
    for name in ["a-0001", "a-0002", "a-0003", "a-0004"] {
        assert_eq!(state_of(&r, name).0, "updated", "{name}: {r}");
    }
    for name in ["b-0001", "b-0002"] {
        let (state, reason) = state_of(&r, name);
        assert_eq!(state, "failed", "{name}: {r}");
        assert!(reason.contains("does not match"), "{name}: {reason}");
    }
    for name in ["b-0003", "b-0004", "b-0005", "b-0006"] {
        assert_eq!(state_of(&r, name).0, "pending", "{name}: {r}");
    }
    // What the devices were told, and what they report: an updated device runs 2.0.0; a device
    // past the halt was never told.
    let twin = admin.device_twin("a-0003").await.unwrap();
    assert_eq!(twin.desired["firmware"]["version"], "2.0.0");
    assert_eq!(twin.reported["firmware"]["version"], "2.0.0");
    let twin = admin.device_twin("b-0001").await.unwrap();
    assert_eq!(twin.desired["firmware"]["version"], "2.0.0");
    assert!(twin.reported.get("firmware").is_none(), "{twin:?}");
    let twin = admin.device_twin("b-0004").await.unwrap();
    assert!(twin.desired.get("firmware").is_none(), "{twin:?}");
    // The fleet listing says which firmware each device reports.
    let fleet = admin.devices().await.unwrap();
    let firmware = |name: &str| {
        fleet
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.firmware.clone())
    };
    assert_eq!(firmware("a-0003").as_deref(), Some("2.0.0"));
    assert_eq!(firmware("b-0001"), None);
    // The halt holds: nothing more is told while time passes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = r["id"].as_str().unwrap();
    let again = json(&sb(
        home.path(),
        &["firmware", "rollouts", id, "--json"],
        "",
    ));
    assert_eq!(again["state"], "halted");
    assert_eq!(again["pending"], 4);

    // Only admins see, start or resume rollouts.
    let bob = server.user(&admin, "bob").await;
    assert_eq!(bob.rollouts().await.unwrap_err().status(), Some(403));
    assert_eq!(
        bob.rollout_resume(id, None).await.unwrap_err().status(),
        Some(403)
    );
    // A budget below the failures so far is refused; with a larger one the rollout goes on:
    // the four devices never told are told now (and fail their signature check too).
    let out = sb(
        home.path(),
        &["firmware", "resume", id, "--max-failures", "1"],
        "",
    );
    assert!(stderr(&out).contains("failed already"), "{}", stderr(&out));
    let out = sb(
        home.path(),
        &[
            "firmware",
            "resume",
            id,
            "--max-failures",
            "100%",
            "--wait",
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(
        (r["updated"].as_u64(), r["failed"].as_u64()),
        (Some(4), Some(6))
    );
    // A finished rollout can be neither resumed nor cancelled.
    let out = sb(home.path(), &["firmware", "cancel", id], "");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("completed already"),
        "{}",
        stderr(&out)
    );
    let out = sb(home.path(), &["firmware", "resume", id], "");
    assert!(stderr(&out).contains("not halted"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stuck_past_the_step_timeout_fails_and_a_clean_rollout_completes() {
    let server = TestServer::start_with(ServerOptions {
        mqtt: true,
        ..Default::default()
    });
    let mqtt = server.mqtt.clone().unwrap();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&server, home.path());
    sb(home.path(), &["firmware", "keygen"], "");
    for v in ["3.0.0", "3.0.1"] {
        upload(home.path(), v, &[7u8; 10_000]);
    }
    // A device that is registered but never comes online stays "notified" past the step
    // timeout: it has failed, and with no failures allowed the rollout halts.
    let out = sb(
        home.path(),
        &["device", "register", "quiet-1", "--group", "quiet"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb(
        home.path(),
        &[
            "firmware",
            "rollout",
            "3.0.0",
            "--group",
            "quiet",
            "--step-timeout",
            "1s",
            "--wait",
            "--json",
        ],
        "",
    );
    assert!(!out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["state"], "halted", "{r}");
    assert_eq!(r["devices"][0]["state"], "failed");
    let reason = r["devices"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("stuck in notified"), "{reason}");
    // A halted rollout can be cancelled, once.
    let id = r["id"].as_str().unwrap();
    let out = sb(home.path(), &["firmware", "cancel", id], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb(home.path(), &["firmware", "cancel", id], "");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cancelled already"),
        "{}",
        stderr(&out)
    );

    // Two good devices, batches of one: the rollout completes.
    let _sim = Simulator::start(
        home.path(),
        &mqtt,
        &["--count", "2", "--prefix", "ok", "--group", "ok"],
    );
    wait_online(&server.login("admin").await, "ok", 2).await;
    let out = sb(
        home.path(),
        &[
            "firmware", "rollout", "3.0.1", "--group", "ok", "--batch", "1", "--wait", "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(
        (r["updated"].as_u64(), r["batches"].as_u64()),
        (Some(2), Some(2))
    );
    // An unknown version or an empty group is refused with what to do.
    let out = sb(
        home.path(),
        &["firmware", "rollout", "9.9.9", "--group", "ok"],
        "",
    );
    assert!(
        stderr(&out).contains("sb firmware upload"),
        "{}",
        stderr(&out)
    );
    let out = sb(
        home.path(),
        &["firmware", "rollout", "3.0.1", "--group", "none"],
        "",
    );
    assert!(stderr(&out).contains("has no devices"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_a_sigkill_and_completes_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = TestServer::start_with(ServerOptions {
        mqtt: true,
        data_dir: Some(data.clone()),
        ..Default::default()
    });
    let addr = first.addr.clone();
    let home = tempfile::tempdir().unwrap();
    register_admin_cli(&first, home.path());
    let keys = json(&sb(home.path(), &["firmware", "keygen", "--json"], ""));
    let public = keys["public_key"].as_str().unwrap().to_string();
    upload(home.path(), "4.0.0", &[3u8; 50_000]);
    for name in ["r-0001", "r-0002"] {
        let out = sb(
            home.path(),
            &["device", "register", name, "--group", "g"],
            "",
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Started with nobody online: the first device is told, the second waits its turn.
    let r = json(&sb(
        home.path(),
        &[
            "firmware", "rollout", "4.0.0", "--group", "g", "--batch", "1", "--json",
        ],
        "",
    ));
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["devices"][0]["state"], "notified", "{r}");
    assert_eq!(r["devices"][1]["state"], "pending", "{r}");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(first);

    // Back on the same address and data: the rollout carries on when the devices come.
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        if let Some(s) = TestServer::try_start_with(ServerOptions {
            mqtt: true,
            data_dir: Some(data.clone()),
            listen: &addr,
            ..Default::default()
        }) {
            break s;
        }
        assert!(Instant::now() < deadline, "{addr} stayed taken");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mqtt = second.mqtt.clone().unwrap();
    let _sim = Simulator::start(
        home.path(),
        &mqtt,
        &[
            "--count",
            "2",
            "--prefix",
            "r",
            "--group",
            "g",
            "--firmware-key",
            &public,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = json(&sb(
            home.path(),
            &["firmware", "rollouts", &id, "--json"],
            "",
        ));
        if r["state"] == "completed" {
            assert_eq!(r["updated"], 2, "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "the rollout did not resume: {r}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
