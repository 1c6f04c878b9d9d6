//! `devices/{id}/ota/status` payloads (`contracts/schemas/ota-status.schema.json`) and
//! the throttle that keeps `downloading` reports to about one per 10 %.

use serde::Serialize;

/// Longest `error` the schema allows, in characters.
pub const MAX_ERROR_CHARS: usize = 512;

/// The schema's `state` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtaState {
    Offered,
    Refused,
    Downloading,
    Verifying,
    Rebooting,
    PendingVerify,
    Success,
    Failed,
    RolledBack,
}

impl OtaState {
    pub const ALL: [OtaState; 9] = [
        OtaState::Offered,
        OtaState::Refused,
        OtaState::Downloading,
        OtaState::Verifying,
        OtaState::Rebooting,
        OtaState::PendingVerify,
        OtaState::Success,
        OtaState::Failed,
        OtaState::RolledBack,
    ];

    /// The wire name (`rolled-back`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            OtaState::Offered => "offered",
            OtaState::Refused => "refused",
            OtaState::Downloading => "downloading",
            OtaState::Verifying => "verifying",
            OtaState::Rebooting => "rebooting",
            OtaState::PendingVerify => "pending-verify",
            OtaState::Success => "success",
            OtaState::Failed => "failed",
            OtaState::RolledBack => "rolled-back",
        }
    }
}

/// `{rollout, state, progress, error?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OtaStatus {
    pub rollout: String,
    pub state: OtaState,
    /// Percent, 0..=100.
    pub progress: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl OtaStatus {
    pub fn new(rollout: &str, state: OtaState, progress: u8) -> Self {
        OtaStatus { rollout: rollout.to_owned(), state, progress: progress.min(100), error: None }
    }

    /// With an error text, cut to the schema's limit on a character boundary.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        let mut e: String = error.into();
        if let Some((at, _)) = e.char_indices().nth(MAX_ERROR_CHARS) {
            e.truncate(at);
        }
        self.error = Some(e);
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct serialises")
    }
}

/// Decides which download percentages are worth a status report: the first one, then
/// whenever another `step` percent is complete (and 100).
#[derive(Debug, Clone)]
pub struct ProgressThrottle {
    step: u8,
    last: Option<u8>,
}

impl ProgressThrottle {
    pub fn new(step: u8) -> Self {
        ProgressThrottle { step: step.clamp(1, 100), last: None }
    }

    /// `Some(p)` when `percent` should be reported, rounded down to the step grid
    /// (100 is always on the grid).
    pub fn update(&mut self, percent: u8) -> Option<u8> {
        let p = percent.min(100);
        let grid = if p == 100 { 100 } else { p - p % self.step };
        match self.last {
            Some(last) if grid <= last => None,
            _ => {
                self.last = Some(grid);
                Some(grid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{INVALID_OTA_STATUS_JSON, OTA_STATUS_SCHEMA_JSON, VALID_OTA_STATUS_JSON};
    use serde_json::Value;

    #[test]
    fn states_are_exactly_the_schema_enum() {
        let schema: Value = serde_json::from_str(OTA_STATUS_SCHEMA_JSON).unwrap();
        let want: Vec<&str> =
            schema["properties"]["state"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let ours: Vec<&str> = OtaState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(ours, want);
        for s in OtaState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), Value::from(s.as_str()));
        }
    }

    #[test]
    fn payload_has_the_schema_fields_and_the_fixture_shape() {
        let schema: Value = serde_json::from_str(OTA_STATUS_SCHEMA_JSON).unwrap();
        let v: Value = serde_json::from_slice(&OtaStatus::new("r-7", OtaState::Downloading, 37).to_json()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut required: Vec<&str> =
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        keys.sort();
        required.sort();
        assert_eq!(keys, required, "no error member unless there is an error");
        let fixture: Value = serde_json::from_str(VALID_OTA_STATUS_JSON).unwrap();
        assert_eq!(
            fixture.as_object().unwrap().keys().collect::<Vec<_>>(),
            v.as_object().unwrap().keys().collect::<Vec<_>>()
        );
        let invalid: Value = serde_json::from_str(INVALID_OTA_STATUS_JSON).unwrap();
        assert!(!OtaState::ALL.iter().any(|s| invalid["state"] == s.as_str()));
    }

    #[test]
    fn errors_are_cut_to_the_schema_limit_on_a_char_boundary() {
        let s = OtaStatus::new("r", OtaState::Failed, 150).with_error("é".repeat(600));
        assert_eq!(s.progress, 100);
        assert_eq!(s.error.as_ref().unwrap().chars().count(), MAX_ERROR_CHARS);
        let v: Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["state"], "failed");
    }

    #[test]
    fn progress_is_reported_first_then_about_every_step() {
        let mut t = ProgressThrottle::new(10);
        let reported: Vec<u8> = (0..=100).filter_map(|p| t.update(p)).collect();
        assert_eq!(reported, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        let mut t = ProgressThrottle::new(10);
        assert_eq!(t.update(37), Some(30), "a resumed download starts where it is");
        assert_eq!(t.update(39), None);
        assert_eq!(t.update(99), Some(90));
        assert_eq!(t.update(100), Some(100));
        assert_eq!(t.update(100), None);
    }
}
