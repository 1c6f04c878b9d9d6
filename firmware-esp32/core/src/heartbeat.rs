//! Heartbeat payload (`contracts/schemas/heartbeat.schema.json`) and its
//! server-adjustable schedule.

use serde::{Deserialize, Serialize};

/// `{seq, uptime_s, rssi, heap_free, fw}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u32,
    pub uptime_s: u64,
    /// dBm, -127..=0.
    pub rssi: i8,
    pub heap_free: u32,
    pub fw: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeartbeatError {
    Json(String),
    RssiOutOfRange(i8),
    BadFw,
}

impl Heartbeat {
    /// Check the constraints serde's types do not already enforce.
    pub fn validate(&self) -> Result<(), HeartbeatError> {
        if !(-127..=0).contains(&self.rssi) {
            return Err(HeartbeatError::RssiOutOfRange(self.rssi));
        }
        if self.fw.is_empty() || self.fw.chars().count() > 64 {
            return Err(HeartbeatError::BadFw);
        }
        Ok(())
    }

    pub fn to_json(&self) -> Result<Vec<u8>, HeartbeatError> {
        self.validate()?;
        serde_json::to_vec(self).map_err(|e| HeartbeatError::Json(e.to_string()))
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, HeartbeatError> {
        let h: Heartbeat = serde_json::from_slice(bytes).map_err(|e| HeartbeatError::Json(e.to_string()))?;
        h.validate()?;
        Ok(h)
    }
}

/// Bounds of the server-adjustable interval.
pub const MIN_INTERVAL_S: u32 = 5;
pub const MAX_INTERVAL_S: u32 = 3600;
pub const DEFAULT_INTERVAL_S: u32 = 30;

/// Builds heartbeats with an increasing (wrapping) sequence and decides when one is due.
#[derive(Debug, Clone)]
pub struct HeartbeatScheduler {
    interval_s: u32,
    next_seq: u32,
    last_sent_ms: Option<u64>,
    fw: String,
}

impl HeartbeatScheduler {
    pub fn new(fw: &str) -> Self {
        HeartbeatScheduler { interval_s: DEFAULT_INTERVAL_S, next_seq: 0, last_sent_ms: None, fw: fw.into() }
    }

    pub fn interval_s(&self) -> u32 {
        self.interval_s
    }

    /// Server adjustment (command `set_heartbeat_interval`). Out-of-range values are refused.
    pub fn set_interval_s(&mut self, s: u32) -> Result<u32, String> {
        if !(MIN_INTERVAL_S..=MAX_INTERVAL_S).contains(&s) {
            return Err(format!("interval must be within {MIN_INTERVAL_S}..={MAX_INTERVAL_S} s"));
        }
        self.interval_s = s;
        Ok(s)
    }

    /// A heartbeat is due immediately after (re)connecting and every interval after.
    pub fn is_due(&self, now_ms: u64) -> bool {
        match self.last_sent_ms {
            None => true,
            Some(t) => now_ms.saturating_sub(t) >= self.interval_s as u64 * 1000,
        }
    }

    /// When the next heartbeat is due (same clock as [`HeartbeatScheduler::is_due`]);
    /// 0 right after (re)connecting.
    pub fn next_due_ms(&self) -> u64 {
        self.last_sent_ms.map_or(0, |t| t + self.interval_s as u64 * 1000)
    }

    /// Build the next heartbeat and mark it sent at `now_ms` (monotonic).
    pub fn next(&mut self, now_ms: u64, rssi: i8, heap_free: u32) -> Heartbeat {
        let h = Heartbeat {
            seq: self.next_seq,
            uptime_s: now_ms / 1000,
            rssi: rssi.clamp(-127, 0),
            heap_free,
            fw: self.fw.clone(),
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        self.last_sent_ms = Some(now_ms);
        h
    }

    /// Call after reconnecting so the first heartbeat goes out at once.
    pub fn reset_schedule(&mut self) {
        self.last_sent_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{HEARTBEAT_SCHEMA_JSON, INVALID_HEARTBEAT_JSON, VALID_HEARTBEAT_JSON};

    #[test]
    fn valid_fixture_round_trips_byte_for_byte() {
        let h = Heartbeat::from_json(VALID_HEARTBEAT_JSON.trim().as_bytes()).unwrap();
        assert_eq!(h.seq, 42);
        assert_eq!(h.fw, "1.4.2");
        let out = h.to_json().unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), VALID_HEARTBEAT_JSON.trim());
    }

    #[test]
    fn invalid_fixture_is_refused() {
        assert!(Heartbeat::from_json(INVALID_HEARTBEAT_JSON.as_bytes()).is_err());
    }

    #[test]
    fn payload_has_exactly_the_schema_required_fields() {
        let schema: serde_json::Value = serde_json::from_str(HEARTBEAT_SCHEMA_JSON).unwrap();
        let mut required: Vec<String> =
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
        let h = HeartbeatScheduler::new("1.0.0").next(1000, -50, 1);
        let v: serde_json::Value = serde_json::from_slice(&h.to_json().unwrap()).unwrap();
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        required.sort();
        keys.sort();
        assert_eq!(keys, required);
    }

    #[test]
    fn refuses_positive_rssi_and_empty_fw() {
        let mut h = Heartbeat { seq: 0, uptime_s: 0, rssi: 3, heap_free: 0, fw: "1".into() };
        assert_eq!(h.to_json(), Err(HeartbeatError::RssiOutOfRange(3)));
        h.rssi = -1;
        h.fw.clear();
        assert_eq!(h.to_json(), Err(HeartbeatError::BadFw));
        assert!(Heartbeat::from_json(br#"{"seq":1,"uptime_s":1,"rssi":5,"heap_free":1,"fw":"x"}"#).is_err());
    }

    #[test]
    fn sequence_increases_and_wraps() {
        let mut s = HeartbeatScheduler::new("1.0.0");
        assert_eq!(s.next(0, -40, 1).seq, 0);
        assert_eq!(s.next(0, -40, 1).seq, 1);
        s.next_seq = u32::MAX;
        assert_eq!(s.next(0, -40, 1).seq, u32::MAX);
        assert_eq!(s.next(0, -40, 1).seq, 0);
    }

    #[test]
    fn due_immediately_then_every_interval() {
        let mut s = HeartbeatScheduler::new("1.0.0");
        assert!(s.is_due(0));
        s.next(1_000, -40, 1);
        assert!(!s.is_due(30_999));
        assert!(s.is_due(31_000));
        assert_eq!(s.next_due_ms(), 31_000);
        s.reset_schedule();
        assert!(s.is_due(1_001));
        assert_eq!(s.next_due_ms(), 0);
    }

    #[test]
    fn server_can_adjust_interval_within_bounds() {
        let mut s = HeartbeatScheduler::new("1.0.0");
        s.next(0, -40, 1);
        assert_eq!(s.set_interval_s(10), Ok(10));
        assert!(s.is_due(10_000));
        assert!(s.set_interval_s(1).is_err());
        assert!(s.set_interval_s(MAX_INTERVAL_S + 1).is_err());
        assert_eq!(s.interval_s(), 10);
    }
}
