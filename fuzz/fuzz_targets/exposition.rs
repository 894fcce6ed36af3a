//! Any scrape body parses to samples or a typed error naming the line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sb_monitor::exposition::parse(text, 1000);
    }
});
