//! QoS 1 session state on the device side: packet-id allocation and the publishes
//! the broker has not acknowledged yet.
//!
//! The session connects with `clean_session = false`, so unacknowledged publishes
//! are re-sent with DUP after a reconnect [MQTT-4.4.0-1]; that is how a command
//! result survives a token-refresh reconnect. Heartbeats are the exception: a stale
//! heartbeat carries an old uptime/RSSI sample, and a fresh one goes out right after
//! CONNACK anyway, so unacknowledged ones are dropped at disconnect.

use std::collections::VecDeque;

use fleetwire_core::mqtt::{Publish, QoS};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Heartbeat,
    CmdResult { cid: String },
    OtaStatus,
}

#[derive(Debug, Clone)]
pub struct InFlight {
    pub publish: Publish,
    pub kind: Kind,
    pub sent_at: Instant,
}

#[derive(Debug)]
pub struct Outbox {
    next_id: u16,
    inflight: VecDeque<InFlight>,
    capacity: usize,
}

impl Outbox {
    /// `capacity`: most unacknowledged publishes kept; past it the oldest is dropped.
    pub fn new(capacity: usize) -> Self {
        Outbox { next_id: 1, inflight: VecDeque::new(), capacity: capacity.max(1) }
    }

    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// A non-zero id not used by any in-flight publish (SUBSCRIBE takes ids here too).
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|f| f.publish.packet_id == Some(id)) {
                return id;
            }
        }
    }

    /// Register a QoS 1 publish and return it ready to encode. Returns the entry that
    /// was dropped to make room, if any.
    pub fn publish(&mut self, topic: &str, payload: Vec<u8>, kind: Kind, now: Instant) -> (Publish, Option<InFlight>) {
        let evicted = if self.inflight.len() >= self.capacity { self.inflight.pop_front() } else { None };
        let publish = Publish {
            topic: topic.to_owned(),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            packet_id: Some(self.next_packet_id()),
            payload,
        };
        self.inflight.push_back(InFlight { publish: publish.clone(), kind, sent_at: now });
        (publish, evicted)
    }

    /// Whether a publish of `kind` still waits for its PUBACK.
    pub fn has_in_flight(&self, kind: &Kind) -> bool {
        self.inflight.iter().any(|f| &f.kind == kind)
    }

    /// PUBACK received: the acknowledged entry, if it was ours.
    pub fn ack(&mut self, packet_id: u16) -> Option<InFlight> {
        let pos = self.inflight.iter().position(|f| f.publish.packet_id == Some(packet_id))?;
        self.inflight.remove(pos)
    }

    /// The link is gone: drop what is not worth re-sending (see the module docs).
    pub fn on_disconnect(&mut self) {
        self.inflight.retain(|f| f.kind != Kind::Heartbeat);
    }

    /// After CONNACK: everything still unacknowledged, in order, marked DUP.
    pub fn resend(&mut self, now: Instant) -> Vec<Publish> {
        self.inflight
            .iter_mut()
            .map(|f| {
                f.publish.dup = true;
                f.sent_at = now;
                f.publish.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_wrap_and_skip_ids_in_flight() {
        let mut o = Outbox::new(8);
        let now = Instant::now();
        let (p, _) = o.publish("t/a", vec![], Kind::OtaStatus, now);
        assert_eq!(p.packet_id, Some(1));
        o.next_id = u16::MAX;
        assert_eq!(o.next_packet_id(), u16::MAX);
        // Wraps past 0 and skips 1, which is still in flight.
        assert_eq!(o.next_packet_id(), 2);
    }

    #[test]
    fn ack_removes_only_the_matching_entry() {
        let mut o = Outbox::new(8);
        let now = Instant::now();
        let (a, _) = o.publish("t/a", b"a".to_vec(), Kind::Heartbeat, now);
        let (b, _) = o.publish("t/b", b"b".to_vec(), Kind::OtaStatus, now);
        assert!(o.ack(999).is_none());
        assert!(o.has_in_flight(&Kind::Heartbeat) && o.has_in_flight(&Kind::OtaStatus));
        assert_eq!(o.ack(a.packet_id.unwrap()).unwrap().kind, Kind::Heartbeat);
        assert!(!o.has_in_flight(&Kind::Heartbeat));
        assert_eq!(o.len(), 1);
        assert_eq!(o.ack(b.packet_id.unwrap()).unwrap().publish.payload, b"b");
        assert!(o.is_empty());
    }

    #[test]
    fn disconnect_drops_heartbeats_and_resend_marks_the_rest_dup() {
        let mut o = Outbox::new(8);
        let now = Instant::now();
        o.publish("hb", vec![], Kind::Heartbeat, now);
        let (r, _) = o.publish("res", b"r".to_vec(), Kind::CmdResult { cid: "c1".into() }, now);
        o.on_disconnect();
        let again = o.resend(now);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].packet_id, r.packet_id);
        assert!(again[0].dup);
    }

    #[test]
    fn capacity_evicts_the_oldest() {
        let mut o = Outbox::new(2);
        let now = Instant::now();
        o.publish("1", vec![], Kind::OtaStatus, now);
        o.publish("2", vec![], Kind::OtaStatus, now);
        let (_, evicted) = o.publish("3", vec![], Kind::OtaStatus, now);
        assert_eq!(evicted.unwrap().publish.topic, "1");
        assert_eq!(o.len(), 2);
    }
}
