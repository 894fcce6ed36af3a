//! Whatever the server (or someone posing as it) hands a device as an MLS message, handshake or
//! Welcome is refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sb_client::e2ee::E2ee;
use std::sync::{Mutex, OnceLock};

const ROOM: &str = "01900000-0000-7000-8000-000000000000";

fn device() -> &'static Mutex<E2ee> {
    static DEVICE: OnceLock<Mutex<E2ee>> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sb-fuzz-mls-{}", std::process::id()));
        let keys = E2ee::open(&dir.join("keys.db"), "fuzz").expect("open a key store");
        keys.create_group(ROOM).expect("create a group");
        Mutex::new(keys)
    })
}

fuzz_target!(|data: &[u8]| {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let keys = device().lock().unwrap_or_else(|e| e.into_inner());
    let message = sb_proto::MessageInfo {
        room: ROOM.into(),
        seq: 1,
        message_id: format!("{:x}", data.len()),
        sender: String::new(),
        body: b64.clone(),
        reply_to: None,
        created_at_ms: 0,
        kind: "message".into(),
        target: None,
        deleted: false,
        edited_at_ms: None,
        attachments: vec![],
    };
    let _ = keys.decrypt_local(&message);
    let handshake = sb_proto::HandshakeInfo {
        epoch: 0,
        sender: String::new(),
        message: b64.clone(),
        created_at_ms: 0,
    };
    let _ = keys.apply_handshakes(ROOM, &[handshake]);
    let _ = keys.join_from_welcome("other-room", &b64);
});
