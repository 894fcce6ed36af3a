//! Firmware: the operator's key signs images with the real CLI; the server refuses what does
//! not verify; a device downloads with its credentials (resuming by Range), and the
//! signature check a device makes rejects a corrupted image.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use base64::Engine;
use common::*;
use reqwest::Method;

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
