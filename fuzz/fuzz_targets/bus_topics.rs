//! Arbitrary subscription patterns and topics (MQTT clients will supply both) never panic the
//! bus, and unsubscribing always leaves it empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sb_bus::{Bus, BusConfig, OverflowPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let bus: Bus<u8> = Bus::new(BusConfig {
        queue_max: 2,
        overflow: OverflowPolicy::Disconnect,
    });
    let mut parts = text.split('\n');
    let patterns: Vec<&str> = parts.by_ref().take(4).collect();
    let subs: Vec<_> = patterns.iter().filter_map(|p| bus.subscribe(p).ok()).collect();
    for topic in parts {
        bus.publish(topic, 0);
    }
    drop(subs);
    assert_eq!(bus.subscriber_count(), 0);
});
