//! The WebSocket handshake contract (`common/contracts/jwt.json`, ARCHITECTURE.md):
//! offer `Sec-WebSocket-Protocol: mqtt, auth.<compact JWT>`, and accept only a server
//! that answers exactly `mqtt`. A server answering the `auth.` entry would be echoing
//! the token into response headers (and logs): that is treated as a failed handshake.

use std::fmt;
use std::sync::OnceLock;

use fleetwire_core::session::Jwt;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::http::{header::SEC_WEBSOCKET_PROTOCOL, HeaderMap, HeaderValue};

const JWT_CONTRACT: &str = include_str!("../../../common/contracts/jwt.json");

#[derive(Debug, Deserialize)]
struct JwtContract {
    subprotocol: String,
    token_subprotocol_prefix: String,
}

fn contract() -> &'static JwtContract {
    static C: OnceLock<JwtContract> = OnceLock::new();
    C.get_or_init(|| serde_json::from_str(JWT_CONTRACT).expect("common/contracts/jwt.json"))
}

/// The subprotocol the broker must choose (`mqtt`).
pub fn subprotocol() -> &'static str {
    &contract().subprotocol
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The token is not a compact JWS, so it cannot go into a header unchanged.
    BadToken(&'static str),
    /// The server answered no subprotocol, or one other than exactly `mqtt`.
    Answered(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::BadToken(why) => write!(f, "token is not a compact JWT: {why}"),
            HandshakeError::Answered(what) => write!(f, "server answered subprotocol {what}, expected \"mqtt\""),
        }
    }
}
impl std::error::Error for HandshakeError {}

/// `header.payload.signature`, each part base64url without padding. Checking this
/// also guarantees the value only holds RFC 7230 token characters.
fn check_compact_jwt(jwt: &str) -> Result<(), HandshakeError> {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err(HandshakeError::BadToken("expected three dot-separated parts"));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(HandshakeError::BadToken("empty part"));
    }
    if !jwt.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) {
        return Err(HandshakeError::BadToken("characters outside base64url"));
    }
    Ok(())
}

/// The `Sec-WebSocket-Protocol` request value: `mqtt, auth.<jwt>`, marked sensitive.
pub fn offered_protocols(jwt: &Jwt) -> Result<HeaderValue, HandshakeError> {
    check_compact_jwt(jwt.expose())?;
    let c = contract();
    let mut v = HeaderValue::from_str(&format!("{}, {}{}", c.subprotocol, c.token_subprotocol_prefix, jwt.expose()))
        .map_err(|_| HandshakeError::BadToken("not a valid header value"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Accept the 101 response only if it selected exactly `mqtt`.
pub fn check_answered(headers: &HeaderMap) -> Result<(), HandshakeError> {
    let mut values = headers.get_all(SEC_WEBSOCKET_PROTOCOL).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(HandshakeError::Answered(
            if headers.contains_key(SEC_WEBSOCKET_PROTOCOL) { "several headers" } else { "none" }.into(),
        ));
    };
    let answered = v.to_str().unwrap_or("");
    if answered == subprotocol() {
        return Ok(());
    }
    // Describe what came back without ever repeating an echoed token.
    let described = if answered.contains(&contract().token_subprotocol_prefix) {
        "containing the auth.<token> entry (token echoed)".to_string()
    } else {
        let shown: String = answered.chars().filter(|c| !c.is_control()).take(32).collect();
        format!("{shown:?}")
    };
    Err(HandshakeError::Answered(described))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJlc3AtMDEifQ.c2ln-_";

    #[test]
    fn contract_values_are_mqtt_and_auth_prefix() {
        assert_eq!(subprotocol(), "mqtt");
        assert_eq!(contract().token_subprotocol_prefix, "auth.");
    }

    #[test]
    fn offers_mqtt_then_the_auth_token_entry_as_a_sensitive_header() {
        let v = offered_protocols(&Jwt::new(JWT)).unwrap();
        assert_eq!(v.to_str().unwrap(), format!("mqtt, auth.{JWT}"));
        assert!(v.is_sensitive());
    }

    #[test]
    fn refuses_tokens_that_are_not_compact_jwts() {
        for bad in ["", "a.b", "a..c", "a.b.c.d", "a.b.c\r\nX: y", "a.b.c d", "a.b.c,mqtt", "a.b.c="] {
            assert!(matches!(offered_protocols(&Jwt::new(bad)), Err(HandshakeError::BadToken(_))), "{bad:?}");
        }
    }

    fn answered(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn accepts_exactly_mqtt() {
        assert_eq!(check_answered(&answered(&["mqtt"])), Ok(()));
    }

    #[test]
    fn refuses_missing_other_multiple_or_echoed_token_answers() {
        for vals in [&[][..], &["MQTT"], &["mqttv3.1"], &["mqtt, auth.x.y.z"], &["mqtt", "mqtt"]] {
            assert!(check_answered(&answered(vals)).is_err(), "{vals:?}");
        }
        let echoed = format!("auth.{JWT}");
        let err = check_answered(&answered(&[&echoed])).unwrap_err().to_string();
        assert!(!err.contains(JWT), "the error must not repeat the token: {err}");
        assert!(err.contains("token echoed"));
    }
}
