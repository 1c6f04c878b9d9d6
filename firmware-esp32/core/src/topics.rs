//! Device topics built from the shared topic map (`common/contracts/topics.json`).

use serde::Deserialize;

use crate::contracts::TOPICS_JSON;

#[derive(Debug, Deserialize)]
struct TopicMapFile {
    device_id_pattern: String,
    topics: Vec<TopicEntry>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct TopicEntry {
    pub class: String,
    pub pattern: String,
    pub direction: String,
    pub qos: Vec<u8>,
}

/// The parsed topic map.
#[derive(Debug, Clone)]
pub struct TopicMap {
    pub device_id_pattern: String,
    pub entries: Vec<TopicEntry>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TopicError {
    BadContract(String),
    InvalidDeviceId(String),
    UnknownClass(String),
}

impl TopicMap {
    /// Parse the embedded contract file.
    pub fn load() -> Result<Self, TopicError> {
        Self::parse(TOPICS_JSON)
    }

    pub fn parse(json: &str) -> Result<Self, TopicError> {
        let f: TopicMapFile = serde_json::from_str(json).map_err(|e| TopicError::BadContract(e.to_string()))?;
        Ok(TopicMap { device_id_pattern: f.device_id_pattern, entries: f.topics })
    }

    pub fn pattern(&self, class: &str) -> Result<&str, TopicError> {
        self.entries
            .iter()
            .find(|e| e.class == class)
            .map(|e| e.pattern.as_str())
            .ok_or_else(|| TopicError::UnknownClass(class.to_string()))
    }

    /// QoS levels the contract allows on topics of `class`.
    pub fn allowed_qos(&self, class: &str) -> Result<&[u8], TopicError> {
        self.entries
            .iter()
            .find(|e| e.class == class)
            .map(|e| e.qos.as_slice())
            .ok_or_else(|| TopicError::UnknownClass(class.to_string()))
    }

    /// Topic of `class` for `device_id`.
    pub fn topic(&self, class: &str, device_id: &str) -> Result<String, TopicError> {
        if !is_valid_device_id(device_id) {
            return Err(TopicError::InvalidDeviceId(device_id.to_string()));
        }
        Ok(self.pattern(class)?.replace("{id}", device_id))
    }

    /// All topics of one device.
    pub fn device_topics(&self, device_id: &str) -> Result<DeviceTopics, TopicError> {
        Ok(DeviceTopics {
            heartbeat: self.topic("heartbeat", device_id)?,
            telemetry: self.topic("telemetry", device_id)?,
            cmd: self.topic("cmd", device_id)?,
            cmd_result: self.topic("cmd-result", device_id)?,
            ota: self.topic("ota", device_id)?,
            ota_status: self.topic("ota-status", device_id)?,
            ml_infer: self.topic("ml-infer", device_id)?,
            ml_result: self.topic("ml-result", device_id)?,
            sys: self.topic("sys", device_id)?,
        })
    }
}

/// The topics a device publishes to or subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopics {
    pub heartbeat: String,
    pub telemetry: String,
    pub cmd: String,
    pub cmd_result: String,
    pub ota: String,
    pub ota_status: String,
    pub ml_infer: String,
    pub ml_result: String,
    pub sys: String,
}

impl DeviceTopics {
    /// Cloud-to-device topics the device subscribes to (QoS 1).
    pub fn subscriptions(&self) -> [&str; 4] {
        [&self.cmd, &self.ota, &self.ml_result, &self.sys]
    }
}

/// `^[a-z0-9][a-z0-9-]{2,63}$` (the contract's `device_id_pattern`), checked by hand
/// to avoid a regex dependency; a test ties this to the contract string.
pub fn is_valid_device_id(id: &str) -> bool {
    let b = id.as_bytes();
    if b.len() < 3 || b.len() > 64 {
        return false;
    }
    let first_ok = b[0].is_ascii_lowercase() || b[0].is_ascii_digit();
    first_ok && b[1..].iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_pattern_is_the_one_implemented() {
        let m = TopicMap::load().unwrap();
        assert_eq!(m.device_id_pattern, "^[a-z0-9][a-z0-9-]{2,63}$");
    }

    #[test]
    fn builds_all_device_topics_from_contract_patterns() {
        let m = TopicMap::load().unwrap();
        let t = m.device_topics("esp-01").unwrap();
        assert_eq!(t.heartbeat, "devices/esp-01/heartbeat");
        assert_eq!(t.telemetry, "devices/esp-01/telemetry");
        assert_eq!(t.cmd, "devices/esp-01/cmd");
        assert_eq!(t.cmd_result, "devices/esp-01/cmd/result");
        assert_eq!(t.ota, "devices/esp-01/ota");
        assert_eq!(t.ota_status, "devices/esp-01/ota/status");
        assert_eq!(t.ml_infer, "devices/esp-01/ml/infer");
        assert_eq!(t.ml_result, "devices/esp-01/ml/result");
        assert_eq!(t.sys, "devices/esp-01/sys");
    }

    #[test]
    fn subscriptions_are_the_cloud_to_device_topics_of_the_contract() {
        let m = TopicMap::load().unwrap();
        let t = m.device_topics("abc").unwrap();
        let mut c2d: Vec<String> = m
            .entries
            .iter()
            .filter(|e| e.direction == "cloud-to-device")
            .map(|e| e.pattern.replace("{id}", "abc"))
            .collect();
        let mut subs: Vec<String> = t.subscriptions().iter().map(|s| s.to_string()).collect();
        c2d.sort();
        subs.sort();
        assert_eq!(c2d, subs);
    }

    #[test]
    fn heartbeats_may_go_at_qos_1_so_the_first_one_after_connack_is_acknowledged() {
        // The backoff resets only after CONNACK + an acknowledged heartbeat (see backoff).
        let m = TopicMap::load().unwrap();
        assert!(m.allowed_qos("heartbeat").unwrap().contains(&1));
        for class in ["cmd-result", "ota-status", "ml-infer"] {
            assert_eq!(m.allowed_qos(class).unwrap(), [1], "{class}");
        }
        assert!(m.allowed_qos("nope").is_err());
    }

    #[test]
    fn accepts_valid_device_ids() {
        for id in ["abc", "0ab", "my-device-1", "a--", &"a".repeat(64)] {
            assert!(is_valid_device_id(id), "{id}");
        }
    }

    #[test]
    fn rejects_invalid_device_ids() {
        for id in ["", "ab", "-abc", "Abc", "ab_c", "a/b+", "ab#", &"a".repeat(65), "abé"] {
            assert!(!is_valid_device_id(id), "{id}");
        }
    }

    #[test]
    fn topic_refuses_invalid_id_and_unknown_class() {
        let m = TopicMap::load().unwrap();
        assert!(matches!(m.topic("cmd", "+"), Err(TopicError::InvalidDeviceId(_))));
        assert!(matches!(m.topic("nope", "abc"), Err(TopicError::UnknownClass(_))));
    }
}
