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

/// Where `value` breaks `schema`, for the part of JSON Schema the contract's payload
/// schemas use: type, required, properties, additionalProperties: false, enum, minimum,
/// maximum, minItems, maxItems, items, minLength, maxLength and anchored patterns of
/// bracket classes. Any other keyword panics, so a schema that grows one fails the test
/// instead of passing unchecked. Empty when the value is valid.
pub fn schema_violations(schema: &serde_json::Value, value: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    check_schema(schema, value, "", &mut out);
    out
}

fn check_schema(schema: &serde_json::Value, v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    let s = schema.as_object().expect("a schema is an object");
    let num = |arg: &Value| arg.as_f64().expect("a numeric bound");
    let len = |arg: &Value| arg.as_u64().expect("a length bound") as usize;
    for (keyword, arg) in s {
        let broken = match keyword.as_str() {
            "$id" | "$schema" | "$comment" | "title" | "description" => None,
            "type" => {
                let ok = match arg.as_str().expect("a single type") {
                    "object" => v.is_object(),
                    "array" => v.is_array(),
                    "string" => v.is_string(),
                    "number" => v.is_number(),
                    "integer" => v.is_i64() || v.is_u64(),
                    "boolean" => v.is_boolean(),
                    t => panic!("type {t} is not supported"),
                };
                (!ok).then(|| format!("is not of type {arg}"))
            }
            "required" => v.as_object().and_then(|o| {
                let missing: Vec<&str> = arg
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .filter(|k| !o.contains_key(*k))
                    .collect();
                (!missing.is_empty()).then(|| format!("lacks {missing:?}"))
            }),
            "properties" => {
                if let Some(o) = v.as_object() {
                    for (k, sub) in arg.as_object().unwrap() {
                        if let Some(x) = o.get(k) {
                            check_schema(sub, x, &format!("{at}/{k}"), out);
                        }
                    }
                }
                None
            }
            "additionalProperties" => {
                assert_eq!(arg, &Value::Bool(false), "only additionalProperties: false is supported");
                let known = s.get("properties").and_then(Value::as_object);
                v.as_object().and_then(|o| {
                    let extra: Vec<&String> = o.keys().filter(|k| !known.is_some_and(|p| p.contains_key(*k))).collect();
                    (!extra.is_empty()).then(|| format!("has properties it may not have: {extra:?}"))
                })
            }
            "enum" => (!arg.as_array().unwrap().contains(v)).then(|| format!("is none of {arg}")),
            "minimum" => v.as_f64().filter(|x| *x < num(arg)).map(|x| format!("{x} is below {arg}")),
            "maximum" => v.as_f64().filter(|x| *x > num(arg)).map(|x| format!("{x} is above {arg}")),
            "minItems" => {
                v.as_array().filter(|a| a.len() < len(arg)).map(|a| format!("{} items, fewer than {arg}", a.len()))
            }
            "maxItems" => {
                v.as_array().filter(|a| a.len() > len(arg)).map(|a| format!("{} items, more than {arg}", a.len()))
            }
            "items" => {
                for (i, x) in v.as_array().into_iter().flatten().enumerate() {
                    check_schema(arg, x, &format!("{at}/{i}"), out);
                }
                None
            }
            "minLength" => {
                v.as_str().filter(|x| x.chars().count() < len(arg)).map(|x| format!("{x:?} is shorter than {arg}"))
            }
            "maxLength" => {
                v.as_str().filter(|x| x.chars().count() > len(arg)).map(|x| format!("{x:?} is longer than {arg}"))
            }
            "pattern" => {
                let p = arg.as_str().unwrap();
                v.as_str().filter(|x| !matches_pattern(p, x)).map(|x| format!("{x:?} does not match {p}"))
            }
            other => panic!("schema keyword {other} is not supported by this checker"),
        };
        if let Some(why) = broken {
            out.push(format!("{}: {why}", if at.is_empty() { "/" } else { at }));
        }
    }
}

/// One bracket class of a pattern and how many characters it takes.
struct Atom {
    ranges: Vec<(char, char)>,
    least: usize,
    most: usize,
}

/// `^` then bracket classes (`[a-z0-9_-]`), each optionally with `{m,n}`, then `$`.
fn matches_pattern(pattern: &str, s: &str) -> bool {
    let body = pattern.strip_prefix('^').and_then(|p| p.strip_suffix('$'));
    let p: Vec<char> = body.unwrap_or_else(|| panic!("pattern {pattern} is not anchored")).chars().collect();
    let mut atoms: Vec<Atom> = Vec::new();
    let mut i = 0;
    while i < p.len() {
        assert_eq!(p[i], '[', "pattern {pattern}: only bracket classes are supported");
        i += 1;
        let mut ranges = Vec::new();
        while p[i] != ']' {
            if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|c| *c != ']') {
                ranges.push((p[i], p[i + 2]));
                i += 3;
            } else {
                ranges.push((p[i], p[i]));
                i += 1;
            }
        }
        i += 1;
        let (mut least, mut most) = (1, 1);
        if p.get(i) == Some(&'{') {
            let close = i + p[i..].iter().position(|c| *c == '}').expect("a closed quantifier");
            let q: String = p[i + 1..close].iter().collect();
            let (m, n) = q.split_once(',').unwrap_or((&q, &q));
            (least, most) = (m.parse().unwrap(), n.parse().unwrap());
            i = close + 1;
        }
        atoms.push(Atom { ranges, least, most });
    }
    fn from(atoms: &[Atom], s: &[char]) -> bool {
        let Some((atom, rest)) = atoms.split_first() else { return s.is_empty() };
        let fits = |c: &char| atom.ranges.iter().any(|(a, b)| (a..=b).contains(&c));
        let run = s.iter().take(atom.most).take_while(|c| fits(c)).count();
        (atom.least..=run).rev().any(|n| from(rest, &s[n..]))
    }
    let s: Vec<char> = s.chars().collect();
    from(&atoms, &s)
}

#[cfg(test)]
mod schema_checker_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_match_as_a_regex_would() {
        let name = "^[a-z][a-z0-9_]{0,31}$";
        assert!(
            matches_pattern(name, "temperature")
                && matches_pattern(name, "t")
                && matches_pattern(name, &"a".repeat(32))
        );
        assert!(
            !matches_pattern(name, "") && !matches_pattern(name, "Temp") && !matches_pattern(name, &"a".repeat(33))
        );
        let id = "^[a-z0-9][a-z0-9-]{2,63}$";
        assert!(matches_pattern(id, "esp-01") && !matches_pattern(id, "-esp") && !matches_pattern(id, "ab"));
    }

    #[test]
    fn every_kind_of_violation_is_reported_with_where() {
        let schema = json!({ "type": "object", "required": ["a", "b"], "additionalProperties": false,
            "properties": { "a": { "type": "integer", "minimum": 0 }, "b": { "type": "array", "maxItems": 1, "items": { "type": "string", "maxLength": 2 } } } });
        assert!(schema_violations(&schema, &json!({ "a": 1, "b": ["xy"] })).is_empty());
        let v = schema_violations(&schema, &json!({ "a": -1.5, "b": ["xyz", 1], "c": true }));
        assert_eq!(v.len(), 6, "{v:?}");
        assert!(v.iter().any(|e| e.starts_with("/b/0:")) && v.iter().any(|e| e.contains("\"c\"")), "{v:?}");
    }
}
