//! Any text a WebSocket client sends decodes to a frame or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sb_proto::decode_client_frame(text);
    }
});
