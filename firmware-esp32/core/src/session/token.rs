//! The device token the session connects with, and when to replace it.
//!
//! A token is used for the *next* connection only: the broker checks it at the
//! WebSocket upgrade. The session asks for a new one at [`REFRESH_PERCENT`] of its
//! lifetime or when the broker's `token-expiring` notice arrives, fetches it while the
//! current connection stays up, then reconnects with it at once; the broker keeps the
//! MQTT session (`clean_session = false`) across that reconnect.

use crate::secret::Secret;

/// Refresh once this share of a token's lifetime has passed.
pub const REFRESH_PERCENT: u64 = 80;
/// Fewest ms between obtaining a token and refreshing it. A server whose notice window
/// is longer than the tokens it issues would otherwise make every new connection
/// refresh and reconnect at once, hammering the token endpoint and the broker.
pub const MIN_REFRESH_INTERVAL_MS: u64 = 30_000;
/// After a failed refresh while connected, try again at least this much later.
pub const REFRESH_RETRY_MS: u64 = 30_000;

/// A compact device JWT, for the `auth.<jwt>` subprotocol entry only. A [`Secret`]:
/// `Debug` never shows it, so logging an [`super::Output`] cannot leak it.
pub type Jwt = Secret;

/// What the token endpoint gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub jwt: Jwt,
    /// `expires_in` in ms; `None` for a token that cannot be replaced (a fixed one).
    pub lifetime_ms: Option<u64>,
}

/// Why no token came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Wrong, revoked or expired credentials: retrying cannot help.
    Rejected(String),
    /// The endpoint is unreachable or failing: retry, not before `retry_after_ms`.
    Unavailable { error: String, retry_after_ms: Option<u64> },
}

/// The token held, with its schedule.
#[derive(Debug, Clone)]
pub(super) struct HeldToken {
    pub jwt: Jwt,
    pub obtained_at: u64,
    pub refresh_at: Option<u64>,
}

impl HeldToken {
    pub fn new(t: IssuedToken, now: u64) -> Self {
        let refresh_at = t.lifetime_ms.map(|l| now + l / 100 * REFRESH_PERCENT + l % 100 * REFRESH_PERCENT / 100);
        HeldToken { jwt: t.jwt, obtained_at: now, refresh_at }
    }

    pub fn refresh_due(&self, now: u64) -> bool {
        self.refresh_at.is_some_and(|at| at <= now)
    }

    /// The earliest moment a refresh may happen ([`MIN_REFRESH_INTERVAL_MS`]).
    pub fn earliest_refresh(&self) -> u64 {
        self.obtained_at + MIN_REFRESH_INTERVAL_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_due_for_refresh_at_80_percent_of_its_lifetime_and_never_shown() {
        let t = HeldToken::new(IssuedToken { jwt: Jwt::new("h.p.s"), lifetime_ms: Some(100_000) }, 5_000);
        assert_eq!(t.refresh_at, Some(85_000));
        assert!(!t.refresh_due(84_999) && t.refresh_due(85_000));
        assert_eq!(t.earliest_refresh(), 35_000);
        let fixed = HeldToken::new(IssuedToken { jwt: Jwt::new("h.p.s"), lifetime_ms: None }, 0);
        assert!(!fixed.refresh_due(u64::MAX));
        assert!(!format!("{:?}", fixed.jwt).contains("h.p.s"));
    }
}
