//! Any line-protocol body parses to points or a typed error naming the line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sb_monitor::line_protocol::{Precision, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for p in [Precision::Nanoseconds, Precision::Seconds] {
            let _ = parse(text, p, 1_700_000_000_000);
        }
    }
});
