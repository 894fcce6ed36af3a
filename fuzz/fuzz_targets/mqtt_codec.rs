//! The MQTT codec on arbitrary bytes, as a connection would see them before and after
//! CONNECT in either version: never a panic, and whatever decodes re-encodes to the same
//! packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sb_mqtt::codec::{Version, decode, encode};

fuzz_target!(|data: &[u8]| {
    for version in [None, Some(Version::V311), Some(Version::V5)] {
        let mut buf = bytes::BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, 1 << 16) {
            let v = match (&packet, version) {
                (sb_mqtt::codec::Packet::Connect(c), _) => c.version,
                (_, Some(v)) => v,
                (_, None) => unreachable!("only CONNECT decodes before CONNECT"),
            };
            let mut out = bytes::BytesMut::new();
            encode(&packet, v, &mut out);
            let again = decode(&mut out, version, 1 << 17).expect("re-encoded packet decodes");
            assert_eq!(again.as_ref(), Some(&packet));
            if version.is_none() {
                break;
            }
        }
    }
});
