//! Test helpers shared by the core's and the simulator's tests (feature `testkit`):
//! the broker's view of the bytes a device sends, the packets a broker sends it, and a
//! jitter source that makes backoff delays exact.

use crate::mqtt::{self, Decoder, Packet, Publish, QoS};
use crate::platform::Rng;

/// Always picks the top of the jitter range, making backoff delays exact.
pub struct MaxRng;
impl Rng for MaxRng {
    fn next_u32(&mut self) -> u32 {
        u32::MAX
    }
    fn gen_range_inclusive(&mut self, max: u64) -> u64 {
        max
    }
}

/// Packets a device sends, as the broker sees them.
#[derive(Debug, Clone, PartialEq)]
pub enum DevicePacket {
    Connect { client_id: String, keep_alive_s: u16, clean_session: bool },
    Subscribe { packet_id: u16, filters: Vec<(String, u8)> },
    Publish(Publish),
    PubAck(u16),
    PingReq,
    Disconnect,
}

/// Remove and return one whole packet from the front of `buf`, if complete.
pub fn split_packet(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
    loop {
        let b = *buf.get(i)?;
        len += (b & 0x7f) as usize * mult;
        mult *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if buf.len() < i + len {
        return None;
    }
    Some(buf.drain(..i + len).collect())
}

/// Every whole packet in `bytes` (one or more packets, as a device frame holds).
pub fn device_packets(bytes: &[u8]) -> Vec<DevicePacket> {
    let mut buf = bytes.to_vec();
    let mut out = Vec::new();
    while let Some(p) = split_packet(&mut buf) {
        out.push(parse_device_packet(&p));
    }
    assert!(buf.is_empty(), "a device frame holds whole packets");
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Decode one device→broker packet. PUBLISH and PUBACK have the same format in both
/// directions, so the core's decoder handles those.
pub fn parse_device_packet(p: &[u8]) -> DevicePacket {
    let header_len = 1 + p[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    let body = &p[header_len..];
    match p[0] >> 4 {
        mqtt::TYPE_CONNECT => {
            assert_eq!(&body[..7], b"\x00\x04MQTT\x04", "MQTT 3.1.1 CONNECT");
            let flags = body[7];
            assert_eq!(flags & !0x02, 0, "no will, username or password flags");
            let id_len = u16_at(body, 10) as usize;
            DevicePacket::Connect {
                client_id: String::from_utf8(body[12..12 + id_len].to_vec()).unwrap(),
                keep_alive_s: u16_at(body, 8),
                clean_session: flags & 0x02 != 0,
            }
        }
        mqtt::TYPE_SUBSCRIBE => {
            assert_eq!(p[0] & 0x0f, 0x02, "SUBSCRIBE reserved flags");
            let mut filters = Vec::new();
            let mut at = 2;
            while at < body.len() {
                let n = u16_at(body, at) as usize;
                filters.push((String::from_utf8(body[at + 2..at + 2 + n].to_vec()).unwrap(), body[at + 2 + n]));
                at += 3 + n;
            }
            DevicePacket::Subscribe { packet_id: u16_at(body, 0), filters }
        }
        mqtt::TYPE_PINGREQ => DevicePacket::PingReq,
        mqtt::TYPE_DISCONNECT => DevicePacket::Disconnect,
        _ => match Decoder::default().feed(p).unwrap().pop().unwrap() {
            Packet::Publish(publish) => DevicePacket::Publish(publish),
            Packet::PubAck { packet_id } => DevicePacket::PubAck(packet_id),
            other => panic!("a device does not send {other:?}"),
        },
    }
}

pub fn connack(rc: u8) -> Vec<u8> {
    vec![mqtt::TYPE_CONNACK << 4, 2, 0, rc]
}

/// CONNACK 0 with the session-present flag.
pub fn connack_session_present() -> Vec<u8> {
    vec![mqtt::TYPE_CONNACK << 4, 2, 1, 0]
}

pub fn suback(packet_id: u16, granted: usize) -> Vec<u8> {
    let mut b = vec![mqtt::TYPE_SUBACK << 4, (2 + granted) as u8];
    b.extend(packet_id.to_be_bytes());
    b.extend(std::iter::repeat_n(1u8, granted));
    b
}

pub fn pingresp() -> Vec<u8> {
    vec![mqtt::TYPE_PINGRESP << 4, 0]
}

pub fn puback(packet_id: u16) -> Vec<u8> {
    mqtt::encode_puback(packet_id)
}

pub fn publish_qos1(topic: &str, packet_id: u16, payload: &[u8], dup: bool) -> Vec<u8> {
    mqtt::encode_publish(&Publish {
        topic: topic.into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        dup,
        packet_id: Some(packet_id),
        payload: payload.to_vec(),
    })
    .unwrap()
}
