//! Token refresh: on the broker's notice or at 80 % of the lifetime, fetched while the
//! connection stays up, then an immediate reconnect that keeps the MQTT session.

use serde_json::json;

use super::*;

#[test]
fn a_token_expiring_notice_refreshes_while_connected_and_reconnects_at_once_keeping_the_session() {
    let mut d = Device::boot(config());
    d.online();
    // Past the minimum interval between refreshes (30 s after the token was obtained).
    d.advance(30_000);
    d.take_sent();
    // A command whose result the broker will not have acknowledged before the reconnect.
    d.broker(cmd_publish(3, &cmd("c-7", "ping", json!({})), false));
    let pending = publishes_on(&d.take_sent(), "cmd/result").remove(0);

    d.broker(sys_notice(4, json!({ "type": "token-expiring", "reason": "token expires soon", "expires_at": 1 })));
    assert_eq!(d.take_sent(), [DevicePacket::PubAck(4)]);
    assert!(d.wants_token, "fetched while still connected");
    assert_eq!(d.link, LinkState::Open);
    let backoffs = d.backoffs().len();
    d.give_token("tok2", Some(3_600_000));
    assert_eq!(d.take_sent(), [DevicePacket::Disconnect], "a clean end before the new connection");
    assert_eq!(d.link, LinkState::Opening("tok2".into()), "reconnects at once with the new token");
    assert_eq!(d.backoffs().len(), backoffs, "no backoff after a planned reconnect");

    d.sent.clear();
    d.link_up();
    assert_eq!(d.next(), DevicePacket::Connect { client_id: ID.into(), keep_alive_s: 60, clean_session: false });
    d.broker(testkit::connack_session_present());
    assert!(d.saw(|e| matches!(e, Event::Connected { session_present: true, .. })));
    let resent = publishes_on(&d.take_sent(), "cmd/result").remove(0);
    assert!(resent.dup);
    assert_eq!((resent.packet_id, &resent.payload), (pending.packet_id, &pending.payload));
}

#[test]
fn a_token_is_refreshed_at_80_percent_of_its_lifetime() {
    let mut cfg = config();
    cfg.heartbeat_s = Some(3600);
    let mut d = Device::boot(cfg);
    d.give_token("tok1", Some(100_000));
    d.online();
    d.advance(79_999);
    assert!(!d.wants_token);
    d.advance(1);
    assert!(d.wants_token);
    d.give_token("tok2", Some(100_000));
    assert_eq!(d.link, LinkState::Opening("tok2".into()));
}

#[test]
fn a_notice_right_after_a_token_was_obtained_waits_for_the_minimum_interval() {
    // A server whose notice window exceeds its token lifetime must not cause a
    // reconnect storm: the refresh comes 30 s after the token, not at once.
    let mut cfg = config();
    cfg.heartbeat_s = Some(3600);
    let mut d = Device::boot(cfg);
    d.online();
    d.broker(sys_notice(2, json!({ "type": "token-expiring", "reason": "token expires soon" })));
    assert!(!d.wants_token);
    assert!(d.saw(|e| matches!(e, Event::TokenRefreshDeferred { in_ms: 30_000 })));
    d.advance(29_999);
    assert!(!d.wants_token);
    d.advance(1);
    assert!(d.wants_token);
}

#[test]
fn a_failed_refresh_keeps_the_connection_and_tries_again_after_its_retry_after() {
    let mut d = Device::boot(config());
    d.online();
    d.advance(30_000);
    d.broker(sys_notice(2, json!({ "type": "token-expiring", "reason": "token expires soon" })));
    d.token_fails(TokenError::Unavailable { error: "HTTP 503".into(), retry_after_ms: Some(45_000) });
    assert_eq!(d.link, LinkState::Open, "the current token is still valid");
    d.advance(44_999);
    assert!(!d.wants_token);
    d.advance(1);
    assert!(d.wants_token);
    d.give_token("tok2", None);
    assert_eq!(d.link, LinkState::Opening("tok2".into()));
}

#[test]
fn a_fixed_token_keeps_running_past_the_notice_but_stops_when_the_broker_closes_for_expiry() {
    let mut cfg = config();
    cfg.token_refreshable = false;
    cfg.heartbeat_s = Some(10);
    let mut d = Device::boot(cfg);
    d.give_token("fixed", None);
    d.online();
    d.broker(sys_notice(9, json!({ "type": "token-expiring", "reason": "token expires soon" })));
    assert!(!d.wants_token);
    assert!(d.saw(|e| *e == Event::TokenNotRefreshable));
    d.advance(10_000);
    assert_eq!(heartbeats(&d.take_sent()).len(), 1, "still connected, still heartbeating");
    d.close(Some(4002), "token expired");
    assert_eq!(d.stopped.as_deref(), Some("the token expired, and a fixed token cannot be refreshed"));
}

#[test]
fn without_a_token_the_endpoint_is_retried_with_backoff_and_a_due_refresh_falls_back_to_the_current_token() {
    let mut d = Device::boot(config());
    d.token_fails(TokenError::Unavailable { error: "HTTP 503".into(), retry_after_ms: Some(7_000) });
    assert_eq!(d.backoffs(), [(7_000, 1)], "Retry-After is a floor");
    d.advance(7_000);
    d.give_token("tok1", Some(100_000));
    d.online();
    // Offline when the refresh falls due (refresh at 80 s of 100): the reconnect asks
    // for a new token first...
    let obtained_at = d.now.mono_ms;
    d.close(Some(4000), "kicked by an operator");
    while !d.wants_token {
        d.advance(1_000);
        if matches!(d.link, LinkState::Opening(_)) {
            d.link_fails(LinkFailure::new("network unreachable"));
        }
    }
    assert!(d.now.mono_ms >= obtained_at + 80_000);
    // ... and, the endpoint being down, uses the current one, still valid for a while.
    d.token_fails(TokenError::Unavailable { error: "HTTP 503".into(), retry_after_ms: None });
    assert_eq!(d.link, LinkState::Opening("tok1".into()));
}
