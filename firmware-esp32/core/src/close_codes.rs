//! WebSocket close codes the broker sends (`common/contracts/close-codes.json`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::contracts::CLOSE_CODES_JSON;

#[derive(Debug, Deserialize, Clone)]
pub struct CloseCode {
    pub code: u16,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
struct File {
    codes: BTreeMap<String, CloseCode>,
}

/// Name → code table.
#[derive(Debug, Clone)]
pub struct CloseCodes(pub BTreeMap<String, CloseCode>);

/// What the connection manager should do after a close.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum CloseAction {
    /// Reconnect with the normal backoff.
    Reconnect,
    /// Get a fresh token before reconnecting.
    RefreshToken,
    /// Stop: credentials are gone.
    Stop,
}

impl CloseCodes {
    pub fn load() -> Self {
        let f: File = serde_json::from_str(CLOSE_CODES_JSON).expect("close-codes.json contract");
        CloseCodes(f.codes)
    }

    pub fn name_of(&self, code: u16) -> Option<&str> {
        self.0.iter().find(|(_, c)| c.code == code).map(|(n, _)| n.as_str())
    }

    pub fn action(&self, code: u16) -> CloseAction {
        match self.name_of(code) {
            Some("token-expired") => CloseAction::RefreshToken,
            Some("revoked") => CloseAction::Stop,
            _ => CloseAction::Reconnect,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_contract_codes_in_application_range() {
        let c = CloseCodes::load();
        assert!(c.0.len() >= 10);
        assert!(c.0.values().all(|v| (4000..5000).contains(&v.code)));
        assert_eq!(c.name_of(4002), Some("token-expired"));
    }

    #[test]
    fn maps_codes_to_reconnect_actions() {
        let c = CloseCodes::load();
        assert_eq!(c.action(c.0["token-expired"].code), CloseAction::RefreshToken);
        assert_eq!(c.action(c.0["revoked"].code), CloseAction::Stop);
        assert_eq!(c.action(c.0["kicked"].code), CloseAction::Reconnect);
        assert_eq!(c.action(1006), CloseAction::Reconnect);
    }
}
