//! Minimal MQTT 3.1.1 codec for a device: the packets it sends are encoded, the packets
//! the broker sends it are decoded by a streaming [`Decoder`] (one WebSocket frame may
//! hold several packets, one packet may span several frames).
//!
//! The decoder never panics on input: malformed bytes yield an [`MqttError`] and the
//! decoder stays failed (an MQTT byte stream cannot be resynchronised; the connection
//! must be closed).

use std::fmt;

pub const TYPE_CONNECT: u8 = 1;
pub const TYPE_CONNACK: u8 = 2;
pub const TYPE_PUBLISH: u8 = 3;
pub const TYPE_PUBACK: u8 = 4;
pub const TYPE_SUBSCRIBE: u8 = 8;
pub const TYPE_SUBACK: u8 = 9;
pub const TYPE_PINGREQ: u8 = 12;
pub const TYPE_PINGRESP: u8 = 13;
pub const TYPE_DISCONNECT: u8 = 14;

/// Largest remaining length expressible in 4 bytes.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttError {
    /// Remaining length encoded in more than 4 bytes.
    RemainingLengthTooLong,
    /// Packet type 0 or 15.
    ReservedPacketType(u8),
    /// A valid MQTT packet type a device never receives (e.g. CONNECT, PUBREC).
    UnexpectedPacketType(u8),
    /// Fixed-header flags other than the ones the spec mandates.
    BadFlags { packet_type: u8, flags: u8 },
    /// QoS 3 (malformed) or QoS 2 (not supported by this device).
    BadQos(u8),
    /// Packet larger than the decoder's configured limit.
    PacketTooLarge(usize),
    /// Body shorter/longer than its fields, or invalid UTF-8 topic.
    Malformed(&'static str),
    /// Encoding-side errors (field too long, packet id 0 for QoS 1, ...).
    InvalidArgument(&'static str),
}

impl fmt::Display for MqttError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for MqttError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
}

/// An incoming or outgoing PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    /// Present iff `qos` is `AtLeastOnce`.
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

/// Packets a device receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ConnAck { session_present: bool, return_code: u8 },
    SubAck { packet_id: u16, return_codes: Vec<u8> },
    Publish(Publish),
    PubAck { packet_id: u16 },
    PingResp,
}

// ---------------------------------------------------------------- encoding

fn encode_remaining_length(mut len: usize, out: &mut Vec<u8>) -> Result<(), MqttError> {
    if len > MAX_REMAINING_LENGTH {
        return Err(MqttError::InvalidArgument("packet too large"));
    }
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return Ok(());
        }
    }
}

fn put_str(s: &[u8], out: &mut Vec<u8>) -> Result<(), MqttError> {
    let len: u16 = s.len().try_into().map_err(|_| MqttError::InvalidArgument("string > 65535 bytes"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

fn frame(first: u8, body: Vec<u8>) -> Result<Vec<u8>, MqttError> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    encode_remaining_length(body.len(), &mut out)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// CONNECT options. Authentication is done by the WebSocket subprotocol
/// (`auth.<jwt>`), so no username/password fields are sent.
#[derive(Debug, Clone)]
pub struct Connect<'a> {
    pub client_id: &'a str,
    pub keep_alive_s: u16,
    pub clean_session: bool,
}

pub fn encode_connect(c: &Connect<'_>) -> Result<Vec<u8>, MqttError> {
    let mut body = Vec::with_capacity(12 + c.client_id.len());
    put_str(b"MQTT", &mut body)?;
    body.push(4); // protocol level 3.1.1
    body.push(if c.clean_session { 0x02 } else { 0x00 });
    body.extend_from_slice(&c.keep_alive_s.to_be_bytes());
    put_str(c.client_id.as_bytes(), &mut body)?;
    frame(TYPE_CONNECT << 4, body)
}

/// SUBSCRIBE to `(topic filter, requested QoS)` pairs.
pub fn encode_subscribe(packet_id: u16, filters: &[(&str, QoS)]) -> Result<Vec<u8>, MqttError> {
    if packet_id == 0 {
        return Err(MqttError::InvalidArgument("packet id 0"));
    }
    if filters.is_empty() {
        return Err(MqttError::InvalidArgument("no topic filters"));
    }
    let mut body = packet_id.to_be_bytes().to_vec();
    for (f, q) in filters {
        if f.is_empty() {
            return Err(MqttError::InvalidArgument("empty topic filter"));
        }
        put_str(f.as_bytes(), &mut body)?;
        body.push(*q as u8);
    }
    frame((TYPE_SUBSCRIBE << 4) | 0x02, body)
}

pub fn encode_publish(p: &Publish) -> Result<Vec<u8>, MqttError> {
    if p.topic.is_empty() || p.topic.contains(['+', '#']) {
        return Err(MqttError::InvalidArgument("invalid publish topic"));
    }
    let mut first = (TYPE_PUBLISH << 4) | ((p.qos as u8) << 1);
    if p.retain {
        first |= 0x01;
    }
    let mut body = Vec::with_capacity(p.topic.len() + 4 + p.payload.len());
    put_str(p.topic.as_bytes(), &mut body)?;
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, None) => {}
        (QoS::AtLeastOnce, Some(id)) if id != 0 => {
            if p.dup {
                first |= 0x08;
            }
            body.extend_from_slice(&id.to_be_bytes());
        }
        _ => return Err(MqttError::InvalidArgument("packet id must be set iff QoS 1, and non-zero")),
    }
    body.extend_from_slice(&p.payload);
    frame(first, body)
}

pub fn encode_puback(packet_id: u16) -> Vec<u8> {
    let id = packet_id.to_be_bytes();
    vec![TYPE_PUBACK << 4, 2, id[0], id[1]]
}

pub fn encode_pingreq() -> Vec<u8> {
    vec![TYPE_PINGREQ << 4, 0]
}

pub fn encode_disconnect() -> Vec<u8> {
    vec![TYPE_DISCONNECT << 4, 0]
}

// ---------------------------------------------------------------- decoding

/// Streaming decoder. Feed bytes with [`Decoder::push`] as frames arrive, then drain
/// complete packets with [`Decoder::next_packet`] until it returns `Ok(None)`.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max_packet: usize,
    failed: Option<MqttError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(256 * 1024)
    }
}

/// Result of parsing a fixed header from a possibly incomplete buffer.
enum Header {
    Incomplete,
    Complete { first: u8, header_len: usize, remaining: usize },
}

fn parse_fixed_header(buf: &[u8]) -> Result<Header, MqttError> {
    let Some(&first) = buf.first() else { return Ok(Header::Incomplete) };
    let ptype = first >> 4;
    if ptype == 0 || ptype == 15 {
        return Err(MqttError::ReservedPacketType(ptype));
    }
    let mut remaining = 0usize;
    let mut multiplier = 1usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(Header::Incomplete) };
        remaining += (b & 0x7f) as usize * multiplier;
        if b & 0x80 == 0 {
            return Ok(Header::Complete { first, header_len: 2 + i, remaining });
        }
        multiplier *= 128;
    }
    Err(MqttError::RemainingLengthTooLong)
}

fn be_u16(b: &[u8], at: usize) -> Result<u16, MqttError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(MqttError::Malformed("truncated u16")),
    }
}

fn decode_body(first: u8, body: &[u8]) -> Result<Packet, MqttError> {
    let ptype = first >> 4;
    let flags = first & 0x0f;
    let need_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(MqttError::BadFlags { packet_type: ptype, flags })
        }
    };
    match ptype {
        TYPE_CONNACK => {
            need_flags(0)?;
            if body.len() != 2 {
                return Err(MqttError::Malformed("CONNACK length"));
            }
            if body[0] & 0xfe != 0 {
                return Err(MqttError::Malformed("CONNACK reserved flags"));
            }
            Ok(Packet::ConnAck { session_present: body[0] & 1 == 1, return_code: body[1] })
        }
        TYPE_PUBACK => {
            need_flags(0)?;
            if body.len() != 2 {
                return Err(MqttError::Malformed("PUBACK length"));
            }
            Ok(Packet::PubAck { packet_id: be_u16(body, 0)? })
        }
        TYPE_SUBACK => {
            need_flags(0)?;
            if body.len() < 3 {
                return Err(MqttError::Malformed("SUBACK length"));
            }
            let codes = body[2..].to_vec();
            if codes.iter().any(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
                return Err(MqttError::Malformed("SUBACK return code"));
            }
            Ok(Packet::SubAck { packet_id: be_u16(body, 0)?, return_codes: codes })
        }
        TYPE_PINGRESP => {
            need_flags(0)?;
            if !body.is_empty() {
                return Err(MqttError::Malformed("PINGRESP length"));
            }
            Ok(Packet::PingResp)
        }
        TYPE_PUBLISH => {
            let qos_bits = (flags >> 1) & 0x03;
            let qos = match qos_bits {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                q => return Err(MqttError::BadQos(q)),
            };
            let dup = flags & 0x08 != 0;
            if dup && qos == QoS::AtMostOnce {
                return Err(MqttError::BadFlags { packet_type: ptype, flags });
            }
            let tlen = be_u16(body, 0)? as usize;
            let topic_bytes = body.get(2..2 + tlen).ok_or(MqttError::Malformed("PUBLISH topic"))?;
            let topic =
                std::str::from_utf8(topic_bytes).map_err(|_| MqttError::Malformed("PUBLISH topic not UTF-8"))?;
            if topic.is_empty() || topic.contains(['+', '#', '\0']) {
                return Err(MqttError::Malformed("PUBLISH topic name"));
            }
            let mut at = 2 + tlen;
            let packet_id = if qos == QoS::AtLeastOnce {
                let id = be_u16(body, at)?;
                if id == 0 {
                    return Err(MqttError::Malformed("PUBLISH packet id 0"));
                }
                at += 2;
                Some(id)
            } else {
                None
            };
            Ok(Packet::Publish(Publish {
                topic: topic.to_string(),
                qos,
                retain: flags & 0x01 != 0,
                dup,
                packet_id,
                payload: body[at..].to_vec(),
            }))
        }
        other => Err(MqttError::UnexpectedPacketType(other)),
    }
}

impl Decoder {
    /// `max_packet`: largest whole packet (header + body) accepted.
    pub fn new(max_packet: usize) -> Self {
        Decoder { buf: Vec::new(), max_packet, failed: None }
    }

    /// Append bytes received from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Next complete packet, `Ok(None)` if more bytes are needed.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, MqttError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.try_next();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
        }
        r
    }

    fn try_next(&mut self) -> Result<Option<Packet>, MqttError> {
        let (first, header_len, remaining) = match parse_fixed_header(&self.buf)? {
            Header::Incomplete => return Ok(None),
            Header::Complete { first, header_len, remaining } => (first, header_len, remaining),
        };
        let total = header_len + remaining;
        if total > self.max_packet {
            return Err(MqttError::PacketTooLarge(total));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let pkt = decode_body(first, &self.buf[header_len..total])?;
        self.buf.drain(..total);
        Ok(Some(pkt))
    }

    /// Convenience: push and drain everything decodable.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Packet>, MqttError> {
        self.push(bytes);
        let mut out = Vec::new();
        while let Some(p) = self.next_packet()? {
            out.push(p);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_bytes(topic: &str, qos: QoS, id: Option<u16>, payload: &[u8]) -> Vec<u8> {
        encode_publish(&Publish {
            topic: topic.into(),
            qos,
            retain: false,
            dup: false,
            packet_id: id,
            payload: payload.to_vec(),
        })
        .unwrap()
    }

    /// A broker-side stream: CONNACK, SUBACK, QoS1 PUBLISH, QoS0 PUBLISH, PUBACK, PINGRESP.
    fn broker_stream() -> (Vec<u8>, Vec<Packet>) {
        let mut bytes = vec![0x20, 0x02, 0x00, 0x00, 0x90, 0x04, 0x00, 0x01, 0x01, 0x80];
        bytes.extend(publish_bytes("devices/abc/cmd", QoS::AtLeastOnce, Some(7), b"{\"cid\":\"c1\"}"));
        let big = vec![b'x'; 300]; // 2-byte remaining length
        bytes.extend(publish_bytes("devices/abc/sys", QoS::AtMostOnce, None, &big));
        bytes.extend([0x40, 0x02, 0x00, 0x09, 0xd0, 0x00]);
        let expected = vec![
            Packet::ConnAck { session_present: false, return_code: 0 },
            Packet::SubAck { packet_id: 1, return_codes: vec![1, 0x80] },
            Packet::Publish(Publish {
                topic: "devices/abc/cmd".into(),
                qos: QoS::AtLeastOnce,
                retain: false,
                dup: false,
                packet_id: Some(7),
                payload: b"{\"cid\":\"c1\"}".to_vec(),
            }),
            Packet::Publish(Publish {
                topic: "devices/abc/sys".into(),
                qos: QoS::AtMostOnce,
                retain: false,
                dup: false,
                packet_id: None,
                payload: big,
            }),
            Packet::PubAck { packet_id: 9 },
            Packet::PingResp,
        ];
        (bytes, expected)
    }

    #[test]
    fn connect_encodes_client_id_keepalive_and_clean_session() {
        let b = encode_connect(&Connect { client_id: "abc", keep_alive_s: 60, clean_session: true }).unwrap();
        assert_eq!(b, vec![0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 3, b'a', b'b', b'c']);
        let b = encode_connect(&Connect { client_id: "abc", keep_alive_s: 300, clean_session: false }).unwrap();
        assert_eq!(b[9], 0x00);
        assert_eq!(&b[10..12], &300u16.to_be_bytes());
    }

    #[test]
    fn subscribe_encodes_filters_with_reserved_flags() {
        let b = encode_subscribe(10, &[("devices/abc/cmd", QoS::AtLeastOnce)]).unwrap();
        assert_eq!(b[0], 0x82);
        assert_eq!(b[1] as usize, b.len() - 2);
        assert_eq!(&b[2..4], &[0, 10]);
        assert_eq!(&b[4..6], &[0, 15]);
        assert_eq!(*b.last().unwrap(), 1);
        assert!(encode_subscribe(0, &[("a", QoS::AtMostOnce)]).is_err());
        assert!(encode_subscribe(1, &[]).is_err());
    }

    #[test]
    fn publish_qos0_and_qos1_encode_and_decode_round_trip() {
        for (qos, id) in [(QoS::AtMostOnce, None), (QoS::AtLeastOnce, Some(513))] {
            let p = Publish {
                topic: "devices/abc/heartbeat".into(),
                qos,
                retain: false,
                dup: false,
                packet_id: id,
                payload: b"{}".to_vec(),
            };
            let bytes = encode_publish(&p).unwrap();
            let mut d = Decoder::default();
            assert_eq!(d.feed(&bytes).unwrap(), vec![Packet::Publish(p)]);
        }
    }

    #[test]
    fn publish_refuses_missing_or_spurious_packet_id_and_wildcards() {
        let mut p = Publish {
            topic: "a/b".into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            packet_id: None,
            payload: vec![],
        };
        assert!(encode_publish(&p).is_err());
        p.packet_id = Some(0);
        assert!(encode_publish(&p).is_err());
        p.qos = QoS::AtMostOnce;
        p.packet_id = Some(1);
        assert!(encode_publish(&p).is_err());
        p.packet_id = None;
        p.topic = "a/+".into();
        assert!(encode_publish(&p).is_err());
    }

    #[test]
    fn fixed_packets_encode_exactly() {
        assert_eq!(encode_puback(0x0102), vec![0x40, 2, 1, 2]);
        assert_eq!(encode_pingreq(), vec![0xc0, 0]);
        assert_eq!(encode_disconnect(), vec![0xe0, 0]);
    }

    #[test]
    fn remaining_length_encodes_multi_byte_boundaries() {
        for (len, enc) in [
            (0usize, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xff, 0xff, 0x7f]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING_LENGTH, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = Vec::new();
            encode_remaining_length(len, &mut out).unwrap();
            assert_eq!(out, enc, "{len}");
        }
        assert!(encode_remaining_length(MAX_REMAINING_LENGTH + 1, &mut Vec::new()).is_err());
    }

    #[test]
    fn decodes_many_packets_from_one_buffer() {
        let (bytes, expected) = broker_stream();
        let mut d = Decoder::default();
        assert_eq!(d.feed(&bytes).unwrap(), expected);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decodes_stream_split_at_every_byte_boundary() {
        let (bytes, expected) = broker_stream();
        for split in 0..=bytes.len() {
            let mut d = Decoder::default();
            let mut got = d.feed(&bytes[..split]).unwrap();
            got.extend(d.feed(&bytes[split..]).unwrap());
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn decodes_stream_fed_one_byte_at_a_time() {
        let (bytes, expected) = broker_stream();
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in &bytes {
            got.extend(d.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn refuses_remaining_length_longer_than_four_bytes() {
        let mut d = Decoder::default();
        assert_eq!(d.feed(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]), Err(MqttError::RemainingLengthTooLong));
        // The decoder stays failed.
        assert_eq!(d.feed(&[0xd0, 0x00]), Err(MqttError::RemainingLengthTooLong));
    }

    #[test]
    fn refuses_reserved_packet_types() {
        for first in [0x00u8, 0xf0] {
            let mut d = Decoder::default();
            assert_eq!(d.feed(&[first, 0x00]), Err(MqttError::ReservedPacketType(first >> 4)));
        }
    }

    #[test]
    fn refuses_packets_a_device_never_receives() {
        let mut d = Decoder::default();
        assert_eq!(d.feed(&[0xc0, 0x00]), Err(MqttError::UnexpectedPacketType(TYPE_PINGREQ)));
    }

    #[test]
    fn refuses_bad_flags_bad_qos_and_wrong_lengths() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0x21, 0x02, 0, 0],             // CONNACK with flags
            vec![0x20, 0x03, 0, 0, 0],          // CONNACK too long
            vec![0x20, 0x02, 0x02, 0],          // CONNACK reserved ack flags
            vec![0x40, 0x01, 0],                // PUBACK too short
            vec![0x90, 0x02, 0, 1],             // SUBACK without codes
            vec![0x90, 0x03, 0, 1, 0x05],       // SUBACK invalid code
            vec![0xd0, 0x01, 0],                // PINGRESP with body
            vec![0x36, 0x05, 0, 1, b'a', 0, 1], // PUBLISH QoS 3
            vec![0x34, 0x05, 0, 1, b'a', 0, 1], // PUBLISH QoS 2 (unsupported)
            vec![0x38, 0x03, 0, 1, b'a'],       // DUP on QoS 0
            vec![0x30, 0x03, 0, 9, b'a'],       // topic longer than body
            vec![0x30, 0x03, 0, 1, 0xff],       // topic not UTF-8
            vec![0x30, 0x02, 0, 0],             // empty topic
            vec![0x32, 0x03, 0, 1, b'a'],       // QoS 1 without packet id
            vec![0x32, 0x05, 0, 1, b'a', 0, 0], // QoS 1 packet id 0
        ];
        for c in cases {
            let mut d = Decoder::default();
            assert!(d.feed(&c).is_err(), "{c:02x?}");
        }
    }

    #[test]
    fn refuses_packets_over_the_size_limit_before_buffering_them() {
        let mut d = Decoder::new(64);
        // Header announces 200 bytes; only the header has arrived.
        assert_eq!(d.feed(&[0x30, 0xc8, 0x01]), Err(MqttError::PacketTooLarge(203)));
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        let mut rng = crate::platform::XorShiftRng::new(42);
        use crate::platform::Rng;
        for _ in 0..2000 {
            let len = rng.gen_range_inclusive(40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
            let mut d = Decoder::new(1024);
            let _ = d.feed(&bytes);
        }
    }
}
