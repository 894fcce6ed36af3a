//! MQTT 3.1.1 and 5.0 packets: framing, decoding and encoding.
//!
//! Decoding is bounded: the fixed header's remaining length is checked against the caller's
//! maximum packet size before anything is buffered or allocated for it, every length inside a
//! packet is checked against what is left of it, and strings must be valid UTF-8 without NUL
//! (MQTT-1.5.4). Nothing here panics on any input; every error names the MQTT 5 reason code
//! the server answers it with before closing the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol level of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// MQTT 5 reason codes the server uses.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const GRANTED_QOS_1: u8 = 0x01;
    pub const GRANTED_QOS_2: u8 = 0x02;
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const BANNED: u8 = 0x8A;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTH_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_ID_IN_USE: u8 = 0x91;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    pub const SUBSCRIPTION_IDS_NOT_SUPPORTED: u8 = 0xA1;
    pub const WILDCARDS_NOT_SUPPORTED: u8 = 0xA2;
    /// MQTT 3.1.1 CONNACK return codes.
    pub const V3_REFUSED_PROTOCOL: u8 = 0x01;
    pub const V3_REFUSED_IDENTIFIER: u8 = 0x02;
    pub const V3_SERVER_UNAVAILABLE: u8 = 0x03;
    pub const V3_BAD_CREDENTIALS: u8 = 0x04;
    pub const V3_NOT_AUTHORIZED: u8 = 0x05;
    /// MQTT 3.1.1 SUBACK failure.
    pub const V3_SUBACK_FAILURE: u8 = 0x80;
}

/// Why bytes could not be decoded, with the reason code to close the connection with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet of {size} bytes is over the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
}

impl DecodeError {
    /// The MQTT 5 reason code for this error.
    pub fn reason(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// MQTT 5 properties. One struct serves every packet; the decoder refuses a property given
/// twice where the specification allows it once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_utf8: Option<bool>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<bool>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<bool>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifier_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// A v5 reason code, or a v3 return code.
    pub code: u8,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty in v5 when a topic alias stands for it.
    pub topic: String,
    /// 0 for QoS 0.
    pub pkid: u16,
    pub payload: Bytes,
    pub properties: Properties,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    pub code: u8,
    pub properties: Properties,
}

impl Ack {
    pub fn new(pkid: u16, code: u8) -> Ack {
        Ack {
            pkid,
            code,
            properties: Properties::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained messages on subscribe; 1: only if the subscription is new; 2: never.
    pub retain_handling: u8,
}

impl SubOptions {
    /// The options byte as in a v5 SUBSCRIBE.
    pub fn to_byte(self) -> u8 {
        self.qos as u8
            | u8::from(self.no_local) << 2
            | u8::from(self.retain_as_published) << 3
            | (self.retain_handling & 0b11) << 4
    }

    pub fn from_byte(b: u8) -> SubOptions {
        SubOptions {
            qos: QoS::from_u8(b & 0b11).unwrap_or(QoS::AtMostOnce),
            no_local: b & 0b100 != 0,
            retain_as_published: b & 0b1000 != 0,
            retain_handling: (b >> 4) & 0b11,
        }
    }

    pub fn qos(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<(String, SubOptions)>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub codes: Vec<u8>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<String>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    pub pkid: u16,
    /// v5 only (v3 UNSUBACK carries none).
    pub codes: Vec<u8>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u8,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Disconnect),
}

// ---- reading ----

/// A bounded reader over one packet's remaining bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len()
    }

    fn u8(&mut self) -> Result<u8> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(DecodeError::Malformed("packet ends early"))?;
        self.buf = rest;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(DecodeError::Malformed("a length runs past the packet"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn binary(&mut self) -> Result<Bytes> {
        let n = self.u16()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        let raw = self.take(n)?;
        let s =
            std::str::from_utf8(raw).map_err(|_| DecodeError::Malformed("string is not UTF-8"))?;
        if s.contains('\0') {
            return Err(DecodeError::Malformed("string contains NUL"));
        }
        Ok(s.to_string())
    }

    fn varint(&mut self) -> Result<u32> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    fn properties(&mut self) -> Result<Properties> {
        let len = self.varint()? as usize;
        let mut r = Reader {
            buf: self.take(len)?,
        };
        let mut p = Properties::default();
        fn once<T>(slot: &mut Option<T>, v: T) -> Result<()> {
            if slot.is_some() {
                return Err(DecodeError::Protocol("a property appears twice"));
            }
            *slot = Some(v);
            Ok(())
        }
        let flag = |v: u8| -> Result<bool> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(DecodeError::Protocol("a boolean property is not 0 or 1")),
            }
        };
        while r.left() > 0 {
            match r.varint()? {
                0x01 => once(&mut p.payload_format_utf8, flag(r.u8()?)?)?,
                0x02 => once(&mut p.message_expiry_interval, r.u32()?)?,
                0x03 => once(&mut p.content_type, r.string()?)?,
                0x08 => once(&mut p.response_topic, r.string()?)?,
                0x09 => once(&mut p.correlation_data, r.binary()?)?,
                0x0B => {
                    let id = r.varint()?;
                    if id == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    p.subscription_identifiers.push(id);
                }
                0x11 => once(&mut p.session_expiry_interval, r.u32()?)?,
                0x12 => once(&mut p.assigned_client_identifier, r.string()?)?,
                0x13 => once(&mut p.server_keep_alive, r.u16()?)?,
                0x15 => once(&mut p.authentication_method, r.string()?)?,
                0x16 => once(&mut p.authentication_data, r.binary()?)?,
                0x17 => once(&mut p.request_problem_information, flag(r.u8()?)?)?,
                0x18 => once(&mut p.will_delay_interval, r.u32()?)?,
                0x19 => once(&mut p.request_response_information, flag(r.u8()?)?)?,
                0x1A => once(&mut p.response_information, r.string()?)?,
                0x1C => once(&mut p.server_reference, r.string()?)?,
                0x1F => once(&mut p.reason_string, r.string()?)?,
                0x21 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    once(&mut p.receive_maximum, v)?
                }
                0x22 => once(&mut p.topic_alias_maximum, r.u16()?)?,
                0x23 => once(&mut p.topic_alias, r.u16()?)?,
                0x24 => once(&mut p.maximum_qos, r.u8()?)?,
                0x25 => once(&mut p.retain_available, flag(r.u8()?)?)?,
                0x26 => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                0x27 => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    once(&mut p.maximum_packet_size, v)?
                }
                0x28 => once(&mut p.wildcard_subscription_available, flag(r.u8()?)?)?,
                0x29 => once(&mut p.subscription_identifier_available, flag(r.u8()?)?)?,
                0x2A => once(&mut p.shared_subscription_available, flag(r.u8()?)?)?,
                _ => return Err(DecodeError::Malformed("unknown property")),
            }
        }
        Ok(p)
    }
}

/// The fixed header of the packet at the start of `buf`: its first byte, the remaining
/// length, and where the remaining bytes start. `None` until enough bytes are there.
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((first, len, 2 + i)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}

/// Frames and decodes the first packet in `buf`. `Ok(None)` means more bytes are needed (and
/// nothing was consumed). `version` is `None` before CONNECT (only CONNECT is accepted then).
/// A packet larger than `max_size` is refused as soon as its header says so.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    max_size: usize,
) -> Result<Option<Packet>> {
    let Some((first, len, header)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header + len;
    if size > max_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    // A large PUBLISH keeps its payload where it was read (no copy); small ones are copied
    // out, so the read buffer is reused.
    if first >> 4 == 3 && version.is_some() && len >= SHARED_PAYLOAD_MIN {
        let frame = buf.split_to(size).freeze().slice(header..);
        return decode_body_of(first, &frame, version, Some(&frame)).map(Some);
    }
    let packet = decode_body(first, &buf[header..size], version)?;
    buf.advance(size);
    Ok(Some(packet))
}

/// PUBLISH packets at least this long share the read buffer instead of copying the payload.
const SHARED_PAYLOAD_MIN: usize = 4096;

/// The whole size of the packet that starts `buf`, once its fixed header is there: how much
/// to make room for before reading the rest.
pub fn frame_size(buf: &[u8]) -> Option<usize> {
    fixed_header(buf)
        .ok()
        .flatten()
        .map(|(_, len, header)| header + len)
}

/// Decodes one packet body (the bytes after the fixed header).
pub fn decode_body(first: u8, body: &[u8], version: Option<Version>) -> Result<Packet> {
    decode_body_of(first, body, version, None)
}

/// `shared`: the body as `Bytes`, for a PUBLISH payload to be a slice of instead of a copy.
fn decode_body_of(
    first: u8,
    body: &[u8],
    version: Option<Version>,
    shared: Option<&Bytes>,
) -> Result<Packet> {
    let kind = first >> 4;
    let flags = first & 0x0f;
    let mut r = Reader { buf: body };
    let Some(v) = version else {
        if kind != 1 {
            return Err(DecodeError::Protocol("the first packet must be CONNECT"));
        }
        return connect(flags, &mut r).map(|c| Packet::Connect(Box::new(c)));
    };
    let v5 = v == Version::V5;
    let expect_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::Malformed("reserved flags are wrong"))
        }
    };
    let packet = match kind {
        1 => return Err(DecodeError::Protocol("a second CONNECT")),
        2 => {
            expect_flags(0)?;
            let ack_flags = r.u8()?;
            let code = r.u8()?;
            let properties = if v5 {
                r.properties()?
            } else {
                Properties::default()
            };
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
                properties,
            })
        }
        3 => Packet::Publish(publish(flags, &mut r, v5, shared)?),
        4..=7 => {
            expect_flags(if kind == 6 { 0b0010 } else { 0 })?;
            let pkid = r.u16()?;
            if pkid == 0 {
                return Err(DecodeError::Protocol("packet identifier 0"));
            }
            let (code, properties) = if v5 && r.left() > 0 {
                let code = r.u8()?;
                let p = if r.left() > 0 {
                    r.properties()?
                } else {
                    Properties::default()
                };
                (code, p)
            } else {
                (reason::SUCCESS, Properties::default())
            };
            let ack = Ack {
                pkid,
                code,
                properties,
            };
            match kind {
                4 => Packet::PubAck(ack),
                5 => Packet::PubRec(ack),
                6 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        8 => {
            expect_flags(0b0010)?;
            let pkid = r.u16()?;
            if pkid == 0 {
                return Err(DecodeError::Protocol("packet identifier 0"));
            }
            let properties = if v5 {
                r.properties()?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while r.left() > 0 {
                let filter = r.string()?;
                let o = r.u8()?;
                let qos = QoS::from_u8(o & 0b11).ok_or(DecodeError::Malformed("QoS 3"))?;
                if !v5 && o & !0b11 != 0 {
                    return Err(DecodeError::Malformed("reserved subscription bits set"));
                }
                if o & 0b1100_0000 != 0 || (o >> 4) & 0b11 == 3 {
                    return Err(DecodeError::Malformed("reserved subscription options"));
                }
                filters.push((
                    filter,
                    SubOptions {
                        qos,
                        no_local: o & 0b100 != 0,
                        retain_as_published: o & 0b1000 != 0,
                        retain_handling: (o >> 4) & 0b11,
                    },
                ));
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
            }
            Packet::Subscribe(Subscribe {
                pkid,
                filters,
                properties,
            })
        }
        9 => {
            expect_flags(0)?;
            let pkid = r.u16()?;
            let properties = if v5 {
                r.properties()?
            } else {
                Properties::default()
            };
            Packet::SubAck(SubAck {
                pkid,
                codes: r.take(r.left())?.to_vec(),
                properties,
            })
        }
        10 => {
            expect_flags(0b0010)?;
            let pkid = r.u16()?;
            if pkid == 0 {
                return Err(DecodeError::Protocol("packet identifier 0"));
            }
            let properties = if v5 {
                r.properties()?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while r.left() > 0 {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
            }
            Packet::Unsubscribe(Unsubscribe {
                pkid,
                filters,
                properties,
            })
        }
        11 => {
            expect_flags(0)?;
            let pkid = r.u16()?;
            let properties = if v5 {
                r.properties()?
            } else {
                Properties::default()
            };
            let codes = if v5 {
                r.take(r.left())?.to_vec()
            } else {
                Vec::new()
            };
            Packet::UnsubAck(UnsubAck {
                pkid,
                codes,
                properties,
            })
        }
        12 => {
            expect_flags(0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags(0)?;
            Packet::PingResp
        }
        14 | 15 => {
            expect_flags(0)?;
            if kind == 15 && !v5 {
                return Err(DecodeError::Protocol("AUTH is MQTT 5 only"));
            }
            let code = if v5 && r.left() > 0 {
                r.u8()?
            } else {
                reason::SUCCESS
            };
            let properties = if v5 && r.left() > 0 {
                r.properties()?
            } else {
                Properties::default()
            };
            let d = Disconnect { code, properties };
            if kind == 14 {
                Packet::Disconnect(d)
            } else {
                Packet::Auth(d)
            }
        }
        _ => return Err(DecodeError::Malformed("reserved packet type 0")),
    };
    if r.left() > 0 {
        return Err(DecodeError::Malformed("bytes left over after the packet"));
    }
    Ok(packet)
}

fn connect(flags: u8, r: &mut Reader<'_>) -> Result<Connect> {
    if flags != 0 {
        return Err(DecodeError::Malformed("reserved flags are wrong"));
    }
    let name = r.string()?;
    let level = r.u8()?;
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => Version::V311,
        ("MQTT", 5) => Version::V5,
        ("MQTT" | "MQIsdp", l) => return Err(DecodeError::UnsupportedVersion(l)),
        _ => return Err(DecodeError::Protocol("not an MQTT CONNECT")),
    };
    let v5 = version == Version::V5;
    let f = r.u8()?;
    if f & 1 != 0 {
        return Err(DecodeError::Malformed("reserved connect flag set"));
    }
    let clean_start = f & 0b10 != 0;
    let will_flag = f & 0b100 != 0;
    let will_qos = QoS::from_u8((f >> 3) & 0b11).ok_or(DecodeError::Malformed("will QoS 3"))?;
    let will_retain = f & 0b10_0000 != 0;
    let has_password = f & 0b100_0000 != 0;
    let has_username = f & 0b1000_0000 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain without a will"));
    }
    if !v5 && has_password && !has_username {
        return Err(DecodeError::Malformed("a password without a user name"));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        r.properties()?
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            r.properties()?
        } else {
            Properties::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    if r.left() > 0 {
        return Err(DecodeError::Malformed("bytes left over after CONNECT"));
    }
    Ok(Connect {
        version,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn publish(flags: u8, r: &mut Reader<'_>, v5: bool, shared: Option<&Bytes>) -> Result<Publish> {
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::Malformed("QoS 3"))?;
    let dup = flags & 0b1000 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 message"));
    }
    let topic = r.string()?;
    let pkid = if qos == QoS::AtMostOnce { 0 } else { r.u16()? };
    if qos != QoS::AtMostOnce && pkid == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    let properties = if v5 {
        r.properties()?
    } else {
        Properties::default()
    };
    Ok(Publish {
        dup,
        qos,
        retain: flags & 1 != 0,
        topic,
        pkid,
        payload: {
            let at = r.left();
            let bytes = r.take(at)?;
            match shared {
                Some(b) => b.slice(b.len() - at..),
                None => Bytes::copy_from_slice(bytes),
            }
        },
        properties,
    })
}

// ---- writing ----

fn put_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            return;
        }
    }
}

fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_bin(out, s.as_bytes());
}

fn put_bin(out: &mut BytesMut, b: &[u8]) {
    // Lengths over 65535 are cut by the caller's validation; never written wrong silently.
    let n = b.len().min(u16::MAX as usize);
    out.put_u16(n as u16);
    out.put_slice(&b[..n]);
}

/// Properties as on the wire (length first), for storage.
pub fn encode_properties(p: &Properties) -> Vec<u8> {
    let mut b = BytesMut::new();
    put_properties(&mut b, p);
    b.to_vec()
}

/// The inverse of [`encode_properties`].
pub fn decode_properties(bytes: &[u8]) -> Result<Properties> {
    let mut r = Reader { buf: bytes };
    let p = r.properties()?;
    if r.left() > 0 {
        return Err(DecodeError::Malformed("bytes left over after properties"));
    }
    Ok(p)
}

fn put_properties(out: &mut BytesMut, p: &Properties) {
    let mut b = BytesMut::new();
    let byte = |b: &mut BytesMut, id: u8, v: u8| {
        b.put_u8(id);
        b.put_u8(v);
    };
    if let Some(v) = p.payload_format_utf8 {
        byte(&mut b, 0x01, u8::from(v));
    }
    if let Some(v) = p.message_expiry_interval {
        b.put_u8(0x02);
        b.put_u32(v);
    }
    if let Some(v) = &p.content_type {
        b.put_u8(0x03);
        put_str(&mut b, v);
    }
    if let Some(v) = &p.response_topic {
        b.put_u8(0x08);
        put_str(&mut b, v);
    }
    if let Some(v) = &p.correlation_data {
        b.put_u8(0x09);
        put_bin(&mut b, v);
    }
    for id in &p.subscription_identifiers {
        b.put_u8(0x0B);
        put_varint(&mut b, *id as usize);
    }
    if let Some(v) = p.session_expiry_interval {
        b.put_u8(0x11);
        b.put_u32(v);
    }
    if let Some(v) = &p.assigned_client_identifier {
        b.put_u8(0x12);
        put_str(&mut b, v);
    }
    if let Some(v) = p.server_keep_alive {
        b.put_u8(0x13);
        b.put_u16(v);
    }
    if let Some(v) = &p.authentication_method {
        b.put_u8(0x15);
        put_str(&mut b, v);
    }
    if let Some(v) = &p.authentication_data {
        b.put_u8(0x16);
        put_bin(&mut b, v);
    }
    if let Some(v) = p.request_problem_information {
        byte(&mut b, 0x17, u8::from(v));
    }
    if let Some(v) = p.will_delay_interval {
        b.put_u8(0x18);
        b.put_u32(v);
    }
    if let Some(v) = p.request_response_information {
        byte(&mut b, 0x19, u8::from(v));
    }
    if let Some(v) = &p.response_information {
        b.put_u8(0x1A);
        put_str(&mut b, v);
    }
    if let Some(v) = &p.server_reference {
        b.put_u8(0x1C);
        put_str(&mut b, v);
    }
    if let Some(v) = &p.reason_string {
        b.put_u8(0x1F);
        put_str(&mut b, v);
    }
    if let Some(v) = p.receive_maximum {
        b.put_u8(0x21);
        b.put_u16(v);
    }
    if let Some(v) = p.topic_alias_maximum {
        b.put_u8(0x22);
        b.put_u16(v);
    }
    if let Some(v) = p.topic_alias {
        b.put_u8(0x23);
        b.put_u16(v);
    }
    if let Some(v) = p.maximum_qos {
        byte(&mut b, 0x24, v);
    }
    if let Some(v) = p.retain_available {
        byte(&mut b, 0x25, u8::from(v));
    }
    for (k, v) in &p.user_properties {
        b.put_u8(0x26);
        put_str(&mut b, k);
        put_str(&mut b, v);
    }
    if let Some(v) = p.maximum_packet_size {
        b.put_u8(0x27);
        b.put_u32(v);
    }
    if let Some(v) = p.wildcard_subscription_available {
        byte(&mut b, 0x28, u8::from(v));
    }
    if let Some(v) = p.subscription_identifier_available {
        byte(&mut b, 0x29, u8::from(v));
    }
    if let Some(v) = p.shared_subscription_available {
        byte(&mut b, 0x2A, u8::from(v));
    }
    put_varint(out, b.len());
    out.put_slice(&b);
}

/// Appends `packet`, encoded for `version`, to `out`; returns its size in bytes.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) -> usize {
    let v5 = version == Version::V5;
    let mut body = BytesMut::new();
    let first: u8 = match packet {
        Packet::Connect(c) => {
            put_str(&mut body, "MQTT");
            body.put_u8(if c.version == Version::V5 { 5 } else { 4 });
            let mut f = 0u8;
            if c.clean_start {
                f |= 0b10;
            }
            if let Some(w) = &c.will {
                f |= 0b100 | ((w.qos as u8) << 3);
                if w.retain {
                    f |= 0b10_0000;
                }
            }
            if c.password.is_some() {
                f |= 0b100_0000;
            }
            if c.username.is_some() {
                f |= 0b1000_0000;
            }
            body.put_u8(f);
            body.put_u16(c.keep_alive);
            let cv5 = c.version == Version::V5;
            if cv5 {
                put_properties(&mut body, &c.properties);
            }
            put_str(&mut body, &c.client_id);
            if let Some(w) = &c.will {
                if cv5 {
                    put_properties(&mut body, &w.properties);
                }
                put_str(&mut body, &w.topic);
                put_bin(&mut body, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(&mut body, u);
            }
            if let Some(p) = &c.password {
                put_bin(&mut body, p);
            }
            0x10
        }
        Packet::ConnAck(c) => {
            body.put_u8(u8::from(c.session_present));
            body.put_u8(c.code);
            if v5 {
                put_properties(&mut body, &c.properties);
            }
            0x20
        }
        Packet::Publish(p) => {
            put_str(&mut body, &p.topic);
            if p.qos != QoS::AtMostOnce {
                body.put_u16(p.pkid);
            }
            if v5 {
                put_properties(&mut body, &p.properties);
            }
            body.put_slice(&p.payload);
            0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            body.put_u16(a.pkid);
            if v5 && (a.code != reason::SUCCESS || a.properties != Properties::default()) {
                body.put_u8(a.code);
                if a.properties != Properties::default() {
                    put_properties(&mut body, &a.properties);
                }
            }
            match packet {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            }
        }
        Packet::Subscribe(s) => {
            body.put_u16(s.pkid);
            if v5 {
                put_properties(&mut body, &s.properties);
            }
            for (f, o) in &s.filters {
                put_str(&mut body, f);
                let mut b = o.qos as u8;
                if v5 {
                    b |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling & 0b11) << 4;
                }
                body.put_u8(b);
            }
            0x82
        }
        Packet::SubAck(s) => {
            body.put_u16(s.pkid);
            if v5 {
                put_properties(&mut body, &s.properties);
            }
            body.put_slice(&s.codes);
            0x90
        }
        Packet::Unsubscribe(u) => {
            body.put_u16(u.pkid);
            if v5 {
                put_properties(&mut body, &u.properties);
            }
            for f in &u.filters {
                put_str(&mut body, f);
            }
            0xA2
        }
        Packet::UnsubAck(u) => {
            body.put_u16(u.pkid);
            if v5 {
                put_properties(&mut body, &u.properties);
                body.put_slice(&u.codes);
            }
            0xB0
        }
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(d) | Packet::Auth(d) => {
            if v5 {
                body.put_u8(d.code);
                put_properties(&mut body, &d.properties);
            }
            if matches!(packet, Packet::Disconnect(_)) {
                0xE0
            } else {
                0xF0
            }
        }
    };
    let size = 1 + varint_len(body.len()) + body.len();
    out.reserve(size);
    out.put_u8(first);
    put_varint(out, body.len());
    out.put_slice(&body);
    size
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn round_trip(p: Packet, v: Version) {
        let mut b = BytesMut::new();
        encode(&p, v, &mut b);
        let version = if matches!(p, Packet::Connect(_)) {
            None
        } else {
            Some(v)
        };
        let back = decode(&mut b, version, 1 << 20).unwrap().unwrap();
        assert_eq!(back, p);
        assert!(b.is_empty());
    }

    fn props() -> Properties {
        Properties {
            message_expiry_interval: Some(60),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            content_type: Some("application/json".into()),
            payload_format_utf8: Some(true),
            ..Properties::default()
        }
    }

    #[test]
    fn every_packet_round_trips_in_both_versions() {
        for v in [Version::V311, Version::V5] {
            let p5 = |p: Properties| {
                if v == Version::V5 {
                    p
                } else {
                    Properties::default()
                }
            };
            round_trip(
                Packet::Connect(Box::new(Connect {
                    version: v,
                    clean_start: true,
                    keep_alive: 30,
                    client_id: "dev-1".into(),
                    will: Some(Will {
                        topic: "devices/1/status".into(),
                        payload: Bytes::from_static(b"offline"),
                        qos: QoS::AtLeastOnce,
                        retain: true,
                        properties: p5(Properties {
                            will_delay_interval: Some(5),
                            ..Properties::default()
                        }),
                    }),
                    username: Some("dev-1".into()),
                    password: Some(Bytes::from_static(b"secret")),
                    properties: p5(Properties {
                        session_expiry_interval: Some(3600),
                        receive_maximum: Some(10),
                        maximum_packet_size: Some(1 << 16),
                        topic_alias_maximum: Some(8),
                        ..Properties::default()
                    }),
                })),
                v,
            );
            round_trip(
                Packet::ConnAck(ConnAck {
                    session_present: true,
                    code: 0,
                    properties: p5(Properties {
                        assigned_client_identifier: Some("auto-1".into()),
                        server_keep_alive: Some(60),
                        ..Properties::default()
                    }),
                }),
                v,
            );
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                round_trip(
                    Packet::Publish(Publish {
                        dup: qos != QoS::AtMostOnce,
                        qos,
                        retain: true,
                        topic: "a/b".into(),
                        pkid: if qos == QoS::AtMostOnce { 0 } else { 7 },
                        payload: Bytes::from(vec![1u8; 300]),
                        properties: p5(props()),
                    }),
                    v,
                );
                // Large enough for the payload to be shared with the read buffer.
                round_trip(
                    Packet::Publish(Publish {
                        dup: false,
                        qos,
                        retain: false,
                        topic: "big".into(),
                        pkid: if qos == QoS::AtMostOnce { 0 } else { 8 },
                        payload: Bytes::from((0..20_000u32).map(|i| i as u8).collect::<Vec<_>>()),
                        properties: p5(props()),
                    }),
                    v,
                );
            }
            round_trip(Packet::PubAck(Ack::new(1, 0)), v);
            round_trip(Packet::PubRec(Ack::new(2, 0)), v);
            round_trip(Packet::PubRel(Ack::new(3, 0)), v);
            round_trip(Packet::PubComp(Ack::new(4, 0)), v);
            if v == Version::V5 {
                round_trip(Packet::PubAck(Ack::new(5, reason::NOT_AUTHORIZED)), v);
            }
            round_trip(
                Packet::Subscribe(Subscribe {
                    pkid: 9,
                    filters: vec![
                        ("a/+/c".into(), SubOptions::qos(QoS::ExactlyOnce)),
                        ("#".into(), SubOptions::qos(QoS::AtMostOnce)),
                    ],
                    properties: p5(Properties {
                        subscription_identifiers: vec![42],
                        ..Properties::default()
                    }),
                }),
                v,
            );
            round_trip(
                Packet::SubAck(SubAck {
                    pkid: 9,
                    codes: vec![2, 0x80],
                    properties: Properties::default(),
                }),
                v,
            );
            round_trip(
                Packet::Unsubscribe(Unsubscribe {
                    pkid: 10,
                    filters: vec!["a/b".into()],
                    properties: Properties::default(),
                }),
                v,
            );
            round_trip(
                Packet::UnsubAck(UnsubAck {
                    pkid: 10,
                    codes: if v == Version::V5 { vec![0] } else { vec![] },
                    properties: Properties::default(),
                }),
                v,
            );
            round_trip(Packet::PingReq, v);
            round_trip(Packet::PingResp, v);
        }
        round_trip(
            Packet::Disconnect(Disconnect {
                code: reason::DISCONNECT_WITH_WILL,
                properties: Properties {
                    session_expiry_interval: Some(0),
                    ..Properties::default()
                },
            }),
            Version::V5,
        );
    }

    #[test]
    fn partial_packets_wait_and_oversized_ones_are_refused_early() {
        let mut b = BytesMut::new();
        encode(&Packet::PingReq, Version::V311, &mut b);
        let mut half = BytesMut::from(&b[..1]);
        assert_eq!(decode(&mut half, Some(Version::V311), 100), Ok(None));
        assert_eq!(half.len(), 1, "nothing consumed");
        // A header announcing 2 MB is refused before the bytes arrive.
        let mut big = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80][..]);
        assert_eq!(decode(&mut big, Some(Version::V311), 1 << 20), Ok(None));
        let mut big = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x01][..]);
        assert!(matches!(
            decode(&mut big, Some(Version::V311), 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut five = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert_eq!(
            decode(&mut five, Some(Version::V311), 1 << 20)
                .unwrap_err()
                .reason(),
            reason::MALFORMED_PACKET
        );
    }

    #[test]
    fn bad_packets_get_their_reason_codes() {
        let cases: &[(&[u8], Option<Version>, u8)] = &[
            // Anything before CONNECT.
            (&[0xC0, 0x00], None, reason::PROTOCOL_ERROR),
            // CONNECT for MQTT 3.1 (level 3).
            (
                &[
                    0x10, 0x0C, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 10, 0, 0,
                ],
                None,
                reason::UNSUPPORTED_PROTOCOL_VERSION,
            ),
            // PUBLISH with QoS 3.
            (
                &[0x36, 0x03, 0, 1, b'a'],
                Some(Version::V311),
                reason::MALFORMED_PACKET,
            ),
            // A topic that is not UTF-8.
            (
                &[0x30, 0x03, 0, 1, 0xff],
                Some(Version::V311),
                reason::MALFORMED_PACKET,
            ),
            // A string running past the packet.
            (
                &[0x30, 0x02, 0, 9],
                Some(Version::V311),
                reason::MALFORMED_PACKET,
            ),
            // SUBSCRIBE with wrong reserved flags.
            (
                &[0x80, 0x06, 0, 1, 0, 1, b'a', 0],
                Some(Version::V311),
                reason::MALFORMED_PACKET,
            ),
            // A v5 property given twice.
            (
                &[
                    0x30, 0x0E, 0, 1, b'a', 10, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1,
                ],
                Some(Version::V5),
                reason::PROTOCOL_ERROR,
            ),
            // An unknown property.
            (
                &[0x30, 0x05, 0, 1, b'a', 1, 0x7f],
                Some(Version::V5),
                reason::MALFORMED_PACKET,
            ),
            // A second CONNECT.
            (&[0x10, 0x00], Some(Version::V5), reason::PROTOCOL_ERROR),
        ];
        for (bytes, v, want) in cases {
            let mut b = BytesMut::from(*bytes);
            let err = decode(&mut b, *v, 1 << 20).unwrap_err();
            assert_eq!(err.reason(), *want, "{bytes:?}: {err}");
        }
    }
}
