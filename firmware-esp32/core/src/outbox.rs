//! The device's QoS 1 publishes the broker has not acknowledged yet, and packet-id
//! allocation.
//!
//! Every QoS 1 publish goes through here, online or not, and leaves only with its
//! PUBACK. Entries are transmitted in the order they were queued: at once when the link
//! is up, after the next CONNACK otherwise. The session connects with
//! `clean_session = false`, so an entry already sent on an earlier connection is sent
//! again with DUP [MQTT-4.4.0-1]; that is how a command result survives a token-refresh
//! reconnect. Heartbeats are the exception: a stale heartbeat carries an old uptime and
//! RSSI, and a fresh one goes out right after CONNACK anyway, so unacknowledged ones
//! are dropped when the link goes down.
//!
//! Inference requests are kept across reconnects but not across a reboot: the table of
//! requests waiting for an answer is RAM, so an answer to one sent after the boot would
//! be ignored; one given up before it was ever sent is withdrawn ([`Outbox::withdraw`]).
//!
//! Before a planned reboot the session saves the entries ([`Outbox::save`], NVS key
//! [`STORAGE_KEY`]) and the next boot restores them, so a `reboot` command's result or
//! an OTA `rebooting` report that was not acknowledged in time is still delivered.

use std::collections::VecDeque;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::mqtt::{Publish, QoS};

/// NVS key of the entries saved before a planned reboot.
pub const STORAGE_KEY: &str = "mqtt.outbox";

/// What a publish is, for the session's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Heartbeat,
    CmdResult { cid: String },
    OtaStatus,
    MlInfer { cid: String },
}

impl Kind {
    /// Worth saving across a reboot (see the module docs).
    fn survives_reboot(&self) -> bool {
        !matches!(self, Kind::Heartbeat | Kind::MlInfer { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub publish: Publish,
    pub kind: Kind,
    /// When it was sent on the current connection (monotonic ms); `None`: not yet.
    pub sent_at: Option<u64>,
    /// Sent on some connection before: the next transmission carries DUP.
    pub ever_sent: bool,
}

#[derive(Debug)]
pub struct Outbox {
    next_id: u16,
    entries: VecDeque<Entry>,
    capacity: usize,
}

/// An entry as saved across a reboot (heartbeats are never saved).
#[derive(Serialize, Deserialize)]
struct Saved {
    topic: String,
    packet_id: u16,
    /// Standard base64: payloads are bytes to MQTT.
    payload: String,
    kind: Kind,
    ever_sent: bool,
}

impl Outbox {
    /// `capacity`: most unacknowledged publishes kept; past it the oldest is dropped.
    pub fn new(capacity: usize) -> Self {
        Outbox { next_id: 1, entries: VecDeque::new(), capacity: capacity.max(1) }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A non-zero id not used by any queued publish (SUBSCRIBE takes ids here too).
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.entries.iter().any(|e| e.publish.packet_id == Some(id)) {
                return id;
            }
        }
    }

    /// Queue a QoS 1 publish (not sent yet: see [`Outbox::transmit`]). Returns the entry
    /// dropped to make room, if any.
    pub fn push(&mut self, topic: &str, payload: Vec<u8>, kind: Kind) -> Option<Entry> {
        let evicted = if self.entries.len() >= self.capacity { self.entries.pop_front() } else { None };
        let publish = Publish {
            topic: topic.to_owned(),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            packet_id: Some(self.next_packet_id()),
            payload,
        };
        self.entries.push_back(Entry { publish, kind, sent_at: None, ever_sent: false });
        evicted
    }

    /// Everything not yet sent on this connection, in queue order, marked sent at `now`;
    /// DUP on the ones an earlier connection already carried.
    pub fn transmit(&mut self, now: u64) -> Vec<Publish> {
        self.entries
            .iter_mut()
            .filter(|e| e.sent_at.is_none())
            .map(|e| {
                e.publish.dup = e.ever_sent;
                e.ever_sent = true;
                e.sent_at = Some(now);
                e.publish.clone()
            })
            .collect()
    }

    /// Whether a publish of `kind` still waits for its PUBACK.
    pub fn has_pending(&self, kind: &Kind) -> bool {
        self.entries.iter().any(|e| &e.kind == kind)
    }

    /// Drop the publish of `kind` if no connection carried it yet; whether it was dropped.
    pub fn withdraw(&mut self, kind: &Kind) -> bool {
        let Some(i) = self.entries.iter().position(|e| &e.kind == kind && !e.ever_sent) else { return false };
        self.entries.remove(i);
        true
    }

    /// PUBACK received: the acknowledged entry, if it was ours.
    pub fn ack(&mut self, packet_id: u16) -> Option<Entry> {
        let pos = self.entries.iter().position(|e| e.publish.packet_id == Some(packet_id))?;
        self.entries.remove(pos)
    }

    /// The link is gone: drop heartbeats (see the module docs); the rest waits for the
    /// next connection.
    pub fn on_disconnect(&mut self) {
        self.entries.retain(|e| e.kind != Kind::Heartbeat);
        for e in &mut self.entries {
            e.sent_at = None;
        }
    }

    /// The entries worth keeping across a reboot, as stored under [`STORAGE_KEY`].
    pub fn save(&self) -> Vec<u8> {
        let saved: Vec<Saved> = self
            .entries
            .iter()
            .filter(|e| e.kind.survives_reboot())
            .map(|e| Saved {
                topic: e.publish.topic.clone(),
                packet_id: e.publish.packet_id.unwrap_or_default(),
                payload: base64::engine::general_purpose::STANDARD.encode(&e.publish.payload),
                kind: e.kind.clone(),
                ever_sent: e.ever_sent,
            })
            .collect();
        serde_json::to_vec(&saved).expect("plain entries serialise")
    }

    /// Queue the entries [`Outbox::save`] wrote (at boot, before anything else is
    /// queued). Unreadable bytes are ignored: losing a report beats not booting.
    /// Returns how many were restored.
    pub fn restore(&mut self, bytes: &[u8]) -> usize {
        let saved: Vec<Saved> = serde_json::from_slice(bytes).unwrap_or_default();
        for s in saved {
            let Ok(payload) = base64::engine::general_purpose::STANDARD.decode(&s.payload) else { continue };
            if s.packet_id == 0 || self.entries.len() >= self.capacity {
                continue;
            }
            let publish = Publish {
                topic: s.topic,
                qos: QoS::AtLeastOnce,
                retain: false,
                dup: false,
                packet_id: Some(s.packet_id),
                payload,
            };
            self.entries.push_back(Entry { publish, kind: s.kind, sent_at: None, ever_sent: s.ever_sent });
            self.next_id = s.packet_id.checked_add(1).unwrap_or(1);
        }
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(p: &[Publish]) -> Vec<(u16, bool)> {
        p.iter().map(|p| (p.packet_id.unwrap(), p.dup)).collect()
    }

    #[test]
    fn ids_are_nonzero_wrap_and_skip_ids_in_flight() {
        let mut o = Outbox::new(8);
        o.push("t/a", vec![], Kind::OtaStatus);
        assert_eq!(o.transmit(0)[0].packet_id, Some(1));
        o.next_id = u16::MAX;
        assert_eq!(o.next_packet_id(), u16::MAX);
        // Wraps past 0 and skips 1, which is still in flight.
        assert_eq!(o.next_packet_id(), 2);
    }

    #[test]
    fn ack_removes_only_the_matching_entry() {
        let mut o = Outbox::new(8);
        o.push("t/a", b"a".to_vec(), Kind::Heartbeat);
        o.push("t/b", b"b".to_vec(), Kind::OtaStatus);
        let sent = o.transmit(5);
        assert!(o.ack(999).is_none());
        assert!(o.has_pending(&Kind::Heartbeat) && o.has_pending(&Kind::OtaStatus));
        let hb = o.ack(sent[0].packet_id.unwrap()).unwrap();
        assert_eq!((hb.kind, hb.sent_at), (Kind::Heartbeat, Some(5)));
        assert!(!o.has_pending(&Kind::Heartbeat));
        assert_eq!(o.ack(sent[1].packet_id.unwrap()).unwrap().publish.payload, b"b");
        assert!(o.is_empty());
    }

    #[test]
    fn each_entry_is_sent_once_per_connection_in_order_with_dup_after_a_reconnect() {
        let mut o = Outbox::new(8);
        o.push("hb", vec![], Kind::Heartbeat);
        o.push("res", b"r".to_vec(), Kind::CmdResult { cid: "c1".into() });
        assert_eq!(ids(&o.transmit(0)), [(1, false), (2, false)]);
        assert!(o.transmit(1).is_empty(), "already on the wire");
        o.on_disconnect();
        // Queued while offline: goes out after the re-sent one, without DUP.
        o.push("st", b"s".to_vec(), Kind::OtaStatus);
        assert_eq!(ids(&o.transmit(2)), [(2, true), (3, false)], "the heartbeat was dropped");
    }

    #[test]
    fn capacity_evicts_the_oldest() {
        let mut o = Outbox::new(2);
        o.push("1", vec![], Kind::OtaStatus);
        o.push("2", vec![], Kind::OtaStatus);
        let evicted = o.push("3", vec![], Kind::OtaStatus);
        assert_eq!(evicted.unwrap().publish.topic, "1");
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn saved_entries_come_back_after_a_reboot_without_heartbeats_and_keep_their_ids() {
        let mut o = Outbox::new(8);
        o.push("hb", vec![], Kind::Heartbeat);
        o.push("res", b"{\"ok\":true}".to_vec(), Kind::CmdResult { cid: "r-1".into() });
        o.transmit(0);
        o.push("st", vec![0, 255], Kind::OtaStatus);
        let mut booted = Outbox::new(8);
        assert_eq!(booted.restore(&o.save()), 2);
        let again = booted.transmit(0);
        assert_eq!(ids(&again), [(2, true), (3, false)]);
        assert_eq!((again[0].payload.as_slice(), again[1].payload.as_slice()), (&b"{\"ok\":true}"[..], &[0, 255][..]));
        assert_eq!(booted.next_packet_id(), 4, "new ids do not collide with restored ones");
        assert_eq!(Outbox::new(8).restore(b"garbage"), 0);
    }

    #[test]
    fn inference_requests_are_not_saved_across_a_reboot_and_can_be_withdrawn_until_sent() {
        let ml = |cid: &str| Kind::MlInfer { cid: cid.into() };
        let mut o = Outbox::new(8);
        o.push("infer", b"a".to_vec(), ml("a"));
        o.transmit(0);
        o.on_disconnect();
        o.push("infer", b"b".to_vec(), ml("b"));
        assert!(!o.withdraw(&ml("a")), "already on the wire: its PUBACK is still due");
        assert!(o.withdraw(&ml("b")));
        assert!(!o.has_pending(&ml("b")));
        o.push("st", vec![], Kind::OtaStatus);
        let mut booted = Outbox::new(8);
        assert_eq!(booted.restore(&o.save()), 1, "only the OTA report");
    }
}
