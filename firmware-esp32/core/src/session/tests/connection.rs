//! Connecting, heartbeats, keepalive, a broker restart and the backoff, CONNACK
//! refusals, close codes, and the outbox across reconnects.

use serde_json::json;

use super::*;
use crate::mqtt::QoS;

#[test]
fn connects_with_its_token_as_itself_keeping_the_session_then_subscribes_and_heartbeats_at_once() {
    let mut d = Device::boot(config());
    assert!(d.wants_token, "a token first");
    d.give_token("tok1", Some(3_600_000));
    assert_eq!(d.link, LinkState::Opening("tok1".into()));
    d.link_up();
    // A persistent session, so commands queued while offline are delivered on reconnect.
    assert_eq!(d.next(), DevicePacket::Connect { client_id: ID.into(), keep_alive_s: 60, clean_session: false });
    d.broker(testkit::connack(0));
    let sent = d.take_sent();
    let DevicePacket::Subscribe { filters, .. } = &sent[0] else { panic!("SUBSCRIBE first: {sent:?}") };
    let want: Vec<(String, u8)> = ["cmd", "ota", "ml/result", "sys"].iter().map(|c| (topic(c), 1)).collect();
    assert_eq!(filters, &want);
    let hb = heartbeats(&sent);
    assert_eq!(hb.len(), 1);
    assert_eq!(hb[0].qos, QoS::AtLeastOnce, "acknowledged, so it can make the link stable");
    let h = heartbeat(&hb[0]);
    assert_eq!((h.seq, h.uptime_s, h.rssi, h.heap_free, h.fw.as_str()), (0, 0, -61, 120_000, "1.0.0"));
    assert_eq!(d.frames, 2, "SUBSCRIBE and the heartbeat leave in one frame");
}

#[test]
fn heartbeats_follow_their_schedule_and_the_first_acknowledged_one_makes_the_link_stable() {
    let mut cfg = config();
    cfg.heartbeat_s = Some(10);
    let mut d = Device::boot(cfg);
    d.give_token("tok1", None);
    let first = heartbeats(&d.accept()).remove(0);
    assert!(!d.saw(|e| matches!(e, Event::Stable { .. })), "CONNACK alone is not stable");
    d.advance(40);
    d.acknowledge(&first);
    assert!(d.saw(|e| *e == Event::Stable { rtt_ms: 40 }));
    d.advance(9_959);
    assert!(d.take_sent().is_empty());
    d.advance(1);
    let second = heartbeats(&d.take_sent());
    assert_eq!((heartbeat(&second[0]).seq, heartbeat(&second[0]).uptime_s), (1, 10));
}

#[test]
fn keepalive_pings_when_quiet_and_a_missing_pingresp_ends_the_link() {
    let mut cfg = config();
    cfg.keepalive_s = 20;
    cfg.heartbeat_s = Some(3600);
    let mut d = Device::boot(cfg);
    d.online();
    d.advance(9_999);
    assert!(d.take_sent().is_empty());
    d.advance(1);
    assert_eq!(d.take_sent(), [DevicePacket::PingReq], "after half the keepalive of silence");
    d.broker(testkit::pingresp());
    d.advance(10_000);
    assert_eq!(d.take_sent(), [DevicePacket::PingReq]);
    // No PINGRESP this time: the link is given up after a keepalive.
    d.advance(19_999);
    assert_eq!(d.link, LinkState::Open);
    d.advance(1);
    assert_eq!(d.link, LinkState::None);
    assert!(d.saw(|e| matches!(e, Event::LinkFailed { error } if error == "no PINGRESP within 20 s")));
    assert_eq!(d.backoffs(), [(1000, 1)]);
}

#[test]
fn a_broker_restart_is_ridden_out_with_full_jitter_backoff_reset_only_by_a_stable_connection() {
    let mut d = Device::boot(config());
    d.online();
    // The broker drains: notice, then close 4001.
    d.broker(sys_notice(9, json!({ "type": "disconnect", "reason": "server shutting down", "close_code": 4001 })));
    d.close(Some(4001), "server shutting down, reconnect later");
    assert_eq!(d.backoffs(), [(1000, 1)], "the stable connection had reset the counter");
    d.advance(999);
    assert_eq!(d.link, LinkState::None, "not before the delay");
    d.advance(1);
    assert_eq!(d.link, LinkState::Opening("tok1".into()), "same token, no fetch");
    d.link_fails(LinkFailure::new("connection refused"));
    assert_eq!(d.backoffs()[1], (2000, 2));
    // Back, CONNACK, but down again before any heartbeat was acknowledged: still a failure.
    d.advance(2000);
    d.accept();
    d.close(Some(4001), "server shutting down, reconnect later");
    assert_eq!(d.backoffs()[2], (4000, 3));
    d.advance(4000);
    d.online();
    d.close(Some(4000), "kicked by an operator");
    assert_eq!(d.backoffs()[3], (1000, 1), "stable again: back to the first window");
    // A rate-limited upgrade's Retry-After is a floor.
    d.advance(1000);
    d.link_fails(LinkFailure { error: "HTTP 429".into(), retry_after_ms: Some(30_000), token_refused: false });
    assert_eq!(d.backoffs()[4], (30_000, 2));
    assert_eq!(d.opened_with, ["tok1"; 5]);
}

#[test]
fn close_codes_decide_between_reconnecting_a_new_token_and_stopping() {
    let mut d = Device::boot(config());
    d.online();
    d.close(Some(4000), "kicked by an operator");
    d.advance(1000);
    assert_eq!(d.link, LinkState::Opening("tok1".into()), "kicked: the same token again");
    d.online();
    d.close(Some(4002), "token expired");
    d.advance(1000);
    assert!(d.wants_token, "token expired: a new one first");
    d.give_token("tok2", Some(3_600_000));
    d.online();
    d.close(Some(4003), "credentials revoked");
    assert_eq!(d.stopped.as_deref(), Some("closed with 4003 (revoked)"));
    d.advance(3_600_000);
    assert_eq!((d.link.clone(), d.opened_with.len()), (LinkState::None, 3), "no reconnect after revocation");
}

#[test]
fn a_sys_notice_supplies_the_close_code_a_transport_cannot_read() {
    // esp_websocket_client cannot name application close codes: the notice before the
    // close carries it.
    let mut d = Device::boot(config());
    d.online();
    d.broker(sys_notice(3, json!({ "type": "disconnect", "reason": "token expired", "close_code": 4002 })));
    assert_eq!(d.take_sent(), [DevicePacket::PubAck(3)]);
    d.end(LinkEnd::Failed("connection reset".into()));
    d.advance(1000);
    assert!(d.wants_token);
    d.give_token("tok2", None);
    d.online();
    d.broker(sys_notice(4, json!({ "type": "disconnect", "reason": "credentials revoked", "close_code": 4003 })));
    d.close(None, "");
    assert_eq!(d.stopped.as_deref(), Some("closed with 4003 (revoked)"));
}

#[test]
fn connack_not_authorised_fetches_a_new_token_and_a_rejected_key_then_stops() {
    let mut d = Device::boot(config());
    d.give_token("tok1", Some(3_600_000));
    d.link_up();
    d.broker(testkit::connack(5));
    assert_eq!(d.link, LinkState::None);
    d.advance(1000);
    assert!(d.wants_token, "CONNACK 5: the token is not good any more");
    // The key was revoked meanwhile: the endpoint answers 401.
    d.token_fails(TokenError::Rejected("HTTP 401 AUTH_INVALID_API_KEY".into()));
    assert_eq!(d.stopped.as_deref(), Some("HTTP 401 AUTH_INVALID_API_KEY"));
}

#[test]
fn connack_refusals_a_retry_cannot_fix_stop_and_a_busy_server_is_retried() {
    for rc in [1, 2] {
        let mut d = Device::boot(config());
        d.give_token("tok1", None);
        d.link_up();
        d.broker(testkit::connack(rc));
        assert!(d.stopped.as_deref().unwrap().starts_with(&format!("CONNACK {rc}:")), "{:?}", d.stopped);
        d.advance(3_600_000);
        assert_eq!(d.opened_with.len(), 1, "CONNACK {rc}: never again");
    }
    let mut d = Device::boot(config());
    d.give_token("tok1", None);
    d.link_up();
    d.broker(testkit::connack(3));
    assert_eq!((d.stopped.clone(), d.backoffs()), (None, vec![(1000, 1)]));
    d.advance(1000);
    assert_eq!(d.link, LinkState::Opening("tok1".into()), "server unavailable: the same token later");

    let mut cfg = config();
    cfg.token_refreshable = false;
    let mut d = Device::boot(cfg);
    d.give_token("fixed", None);
    d.link_up();
    d.broker(testkit::connack(5));
    assert_eq!(d.stopped.as_deref(), Some("CONNACK 5, and a fixed token cannot be refreshed"));
}

#[test]
fn unacknowledged_publishes_are_sent_again_in_order_with_dup_and_stale_heartbeats_are_not() {
    let mut d = Device::boot(config());
    d.online();
    d.broker(cmd_publish(1, &cmd("c-1", "ping", json!({})), false));
    d.broker(cmd_publish(2, &cmd("c-2", "ping", json!({})), false));
    // An OTA offer this device cannot verify: refused, reported at QoS 1.
    d.broker(testkit::publish_qos1(&topic("ota"), 3, br#"{"rollout":"r-1","manifest":{}}"#, false));
    d.advance(30_000);
    let first = publishes(&d.take_sent());
    assert_eq!(
        first.iter().map(|p| p.topic.rsplit_once("esp-01/").unwrap().1).collect::<Vec<_>>(),
        ["cmd/result", "cmd/result", "ota/status", "heartbeat"]
    );
    // The broker acknowledges the second result only, then the link drops.
    d.acknowledge(&first[1]);
    d.close(Some(4000), "kicked by an operator");
    d.advance(1000);
    let again = publishes(&d.accept());
    let resent: Vec<_> = again.iter().filter(|p| p.dup).map(|p| (p.packet_id, p.payload.clone())).collect();
    assert_eq!(
        resent,
        [(first[0].packet_id, first[0].payload.clone()), (first[2].packet_id, first[2].payload.clone())]
    );
    let fresh: Vec<_> = again.iter().filter(|p| !p.dup).collect();
    assert_eq!(fresh.len(), 1);
    assert_eq!(heartbeat(fresh[0]).seq, 2, "a fresh heartbeat, not the stale one");
    assert!(again[0].dup && again[1].dup, "re-sends come first, in order");
}
