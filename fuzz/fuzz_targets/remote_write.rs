//! Any remote_write body decodes to series or a typed error, never a panic, within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sb_monitor::remote_write::decode(data, 1 << 20);
    // Also feed it already decompressed, to reach the protobuf decoder with arbitrary bytes.
    let framed = snap::raw::Encoder::new().compress_vec(data).unwrap_or_default();
    let _ = sb_monitor::remote_write::decode(&framed, 1 << 20);
});
