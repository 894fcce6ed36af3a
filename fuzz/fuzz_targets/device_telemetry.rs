//! Device telemetry payloads (JSON or line protocol, as published to devices/<id>/telemetry):
//! never a panic, and never more samples than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sb_core::{DeviceId, UnixMillis, UserId};
use sb_store::devices::DeviceRecord;

fuzz_target!(|data: &[u8]| {
    let device = DeviceRecord {
        id: DeviceId::new_at(UnixMillis(1)),
        name: "fuzz".into(),
        group: "g".into(),
        tags: vec![("k".into(), "v".into())],
        secret_hash: [0; 32],
        owner: UserId::new_at(UnixMillis(1)),
        created_at: UnixMillis(1),
        revoked_at: None,
        last_seen_at: None,
        health: None,
        health_at: None,
    };
    if let Ok(samples) = sb_devices::telemetry::decode(data, &device, 1_700_000_000_000, 16) {
        assert!(samples.len() <= 16);
    }
});
