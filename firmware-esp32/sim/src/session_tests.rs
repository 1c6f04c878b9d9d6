//! The simulator's session shell against the in-memory broker of [`crate::testkit`]:
//! the core engine's decisions carried out over a link, a token source, the emulated
//! NVS and tokio's timers, with the counters and exit the fleet reports. Virtual time
//! (`start_paused`) makes the timings exact. The decisions themselves are tested in
//! `fleetwire_core::session`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetwire_core::contracts::TELEMETRY_SCHEMA_JSON;
use fleetwire_core::heartbeat::Heartbeat;
use fleetwire_core::mqtt::{self, QoS};
use fleetwire_core::telemetry::Telemetry;
use fleetwire_core::testkit::schema_violations;
use fleetwire_core::topics::TopicMap;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::Exit;
use crate::testkit::*;
use crate::transport::ConnectError;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn cmd(cid: &str, name: &str, args: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "cid": cid, "name": name, "args": args, "expires_at": unix_ms() + 3_600_000 })).unwrap()
}

fn is_heartbeat(p: &DevicePacket) -> bool {
    matches!(p, DevicePacket::Publish(x) if x.topic == "devices/esp-01/heartbeat")
}

/// Wait for the next heartbeat and acknowledge it.
async fn ack_heartbeat(c: &mut BrokerConn) -> Heartbeat {
    let DevicePacket::Publish(p) = c.expect_where(is_heartbeat).await else { unreachable!() };
    c.send(mqtt::encode_puback(p.packet_id.unwrap()));
    Heartbeat::from_json(&p.payload).unwrap()
}

fn approx(d: Duration, want_ms: u64) -> bool {
    d.as_millis().abs_diff(want_ms as u128) <= 5
}

#[tokio::test(start_paused = true)]
async fn connects_with_the_token_subprotocol_and_device_client_id_then_subscribes_and_disconnects_on_stop() {
    let mut h = Harness::start(FakeTokens::refreshable(Duration::from_secs(900)), |_| {}, vec![]);
    let mut c = h.conn().await;
    assert_eq!(c.offered, "mqtt, auth.hdr.tok1.sig");
    let (connect, sub) = c.accept().await;
    // Persistent session, so commands queued while offline are delivered on reconnect.
    assert_eq!(connect, DevicePacket::Connect { client_id: ID.into(), keep_alive_s: 60, clean_session: false });
    let DevicePacket::Subscribe { filters, .. } = sub else { unreachable!() };
    let want: Vec<(String, u8)> = h.topics.subscriptions().iter().map(|t| (t.to_string(), 1)).collect();
    assert_eq!(filters, want);
    assert_eq!(filters.len(), 4);

    ack_heartbeat(&mut c).await;
    assert_eq!(h.stats.connected.load(Relaxed), 1);
    h.stop.send(true).unwrap();
    let rest = c.until_closed().await;
    assert_eq!(rest.last(), Some(&DevicePacket::Disconnect));
    assert_eq!(h.task.await.unwrap(), Exit::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_go_out_qos1_at_once_then_on_schedule_and_pubacks_are_counted() {
    let mut h = Harness::start(FakeTokens::fixed(), |c| c.engine.heartbeat_s = Some(10), vec![]);
    let mut c = h.conn().await;
    c.accept().await;
    let DevicePacket::Publish(first) = c.expect_where(is_heartbeat).await else { unreachable!() };
    let t0 = Instant::now();
    assert_eq!(first.qos, QoS::AtLeastOnce);
    let hb = Heartbeat::from_json(&first.payload).unwrap();
    assert_eq!(hb.seq, 0);
    assert_eq!(hb.fw, "1.0.0", "the running version (--fw-version's default)");
    let allowed = TopicMap::load().unwrap().allowed_qos("heartbeat").unwrap().to_vec();
    assert!(allowed.contains(&1), "topics.json allows the QoS heartbeats use: {allowed:?}");
    c.send(mqtt::encode_puback(first.packet_id.unwrap()));

    let second = ack_heartbeat(&mut c).await;
    assert_eq!(second.seq, 1);
    assert!(approx(Instant::now() - t0, 10_000), "{:?}", Instant::now() - t0);
    ack_heartbeat(&mut c).await;
    assert_eq!(h.stats.heartbeats_sent.load(Relaxed), 3);
    // The last PUBACK is processed by the session asynchronously.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.stats.heartbeats_acked.load(Relaxed), 3);
    assert_eq!(h.stop().await, Exit::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn token_expiring_notice_refreshes_then_reconnects_at_once_keeping_unacknowledged_results() {
    let mut h = Harness::start(FakeTokens::refreshable(Duration::from_secs(3600)), |_| {}, vec![]);
    let mut c1 = h.conn().await;
    c1.accept().await;
    ack_heartbeat(&mut c1).await;
    // Past the minimum interval between refreshes (the next heartbeat is 30 s later).
    ack_heartbeat(&mut c1).await;
    // A command whose result the broker does not acknowledge before the reconnect.
    c1.send(publish_qos1("devices/esp-01/cmd", 3, &cmd("c-7", "ping", json!({})), false));
    let pending = c1.expect_publish_on("devices/esp-01/cmd/result").await;

    let notice = json!({ "type": "token-expiring", "reason": "token expires soon", "expires_at": 1 });
    c1.send(publish_qos1("devices/esp-01/sys", 4, notice.to_string().as_bytes(), false));
    let rest = c1.until_closed().await;
    let closed_at = Instant::now();
    assert!(rest.contains(&DevicePacket::PubAck(4)), "{rest:?}");
    assert_eq!(rest.last(), Some(&DevicePacket::Disconnect), "graceful: DISCONNECT before closing");

    let mut c2 = h.conn().await;
    assert_eq!(c2.offered, "mqtt, auth.hdr.tok2.sig", "the next connection uses the new token");
    assert!(c2.opened_at - closed_at < Duration::from_millis(5), "no backoff after a planned reconnect");
    c2.accept().await;
    let resent = c2.expect_publish_on("devices/esp-01/cmd/result").await;
    assert!(resent.dup);
    assert_eq!((resent.packet_id, &resent.payload), (pending.packet_id, &pending.payload));
    assert_eq!(h.tokens.issued(), 2);
    assert_eq!(h.stats.reconnects.load(Relaxed), 1);
    assert_eq!(h.stop().await, Exit::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_only_after_connack_and_the_first_acknowledged_heartbeat() {
    let io = || ConnectError::Io("connection refused".into());
    let mut h = Harness::start(FakeTokens::fixed(), |_| {}, vec![io(), io()]);
    // Attempts 1 and 2 fail; the third connects, gets CONNACK, but drops before any
    // heartbeat is acknowledged: that still counts as a failure.
    let mut c = h.conn().await;
    c.accept().await;
    c.expect_where(is_heartbeat).await;
    c.close(4000, "kicked by an operator");
    c.until_closed().await;
    // The fourth becomes stable (heartbeat acknowledged), then is kicked.
    let mut c = h.conn().await;
    c.accept().await;
    ack_heartbeat(&mut c).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    c.close(4000, "kicked by an operator");
    c.until_closed().await;
    let _c = h.conn().await;

    let a = h.attempts();
    let gaps: Vec<Duration> = a.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(a.len(), 5);
    // Windows 1 s, 2 s, then 4 s (CONNACK alone did not reset) ...
    assert!(approx(gaps[0], 1000) && approx(gaps[1], 2000), "{gaps:?}");
    assert!(approx(gaps[2], 4000), "{gaps:?}");
    // ... and back to 1 s after the stable connection (+1 ms spent before the kick).
    assert!(approx(gaps[3], 1001), "{gaps:?}");
    assert_eq!(h.stats.connect_failures.load(Relaxed), 2);
    assert_eq!(h.stop().await, Exit::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn close_codes_decide_between_reconnect_refresh_and_stop() {
    let mut h = Harness::start(FakeTokens::refreshable(Duration::from_secs(3600)), |_| {}, vec![]);
    let mut c = h.conn().await;
    c.accept().await;
    c.close(4000, "kicked by an operator");
    // kicked → reconnect with the same token.
    let mut c = h.conn().await;
    assert_eq!(c.offered, "mqtt, auth.hdr.tok1.sig");
    c.accept().await;
    c.close(4002, "token expired");
    // token-expired → a new token first.
    let mut c = h.conn().await;
    assert_eq!(c.offered, "mqtt, auth.hdr.tok2.sig");
    c.accept().await;
    c.close(4003, "credentials revoked");
    // revoked → give up.
    let exit = tokio::time::timeout(Duration::from_secs(600), &mut h.task).await.unwrap().unwrap();
    assert!(matches!(&exit, Exit::Stopped(why) if why.contains("4003")), "{exit:?}");
    assert!(h.conns.try_recv().is_err(), "no reconnect after revocation");
    assert_eq!(h.stats.stopped.load(Relaxed), 1);
    assert_eq!(h.stats.connected.load(Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_a_rate_limited_upgrade_is_a_floor_for_the_backoff_and_stop_is_prompt() {
    let limited = ConnectError::Http { status: 429, retry_after: Some(Duration::from_secs(30)) };
    let mut h = Harness::start(FakeTokens::fixed(), |_| {}, vec![limited.clone(), limited]);
    let _c = h.conn().await;
    let a = h.attempts();
    assert!(approx(a[1] - a[0], 30_000) && approx(a[2] - a[1], 30_000), "{a:?}");

    // Stop during a long backoff returns at once.
    let h = Harness::start(FakeTokens::fixed(), |_| {}, vec![ConnectError::Io("refused".into()); 8]);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = Instant::now();
    assert_eq!(h.stop().await, Exit::Shutdown);
    assert!(Instant::now() - before < Duration::from_millis(5));
}

#[tokio::test(start_paused = true)]
async fn telemetry_is_published_qos0_at_its_interval() {
    let mut h = Harness::start(FakeTokens::fixed(), |c| c.engine.telemetry_s = 15, vec![]);
    let mut c = h.conn().await;
    c.accept().await;
    let t0 = Instant::now();
    let t = c.expect_publish_on("devices/esp-01/telemetry").await;
    assert!(approx(Instant::now() - t0, 15_000));
    assert_eq!(t.qos, QoS::AtMostOnce);
    // The simulated sensor in the contract's format, as the broker checks it.
    let v: Value = serde_json::from_slice(&t.payload).unwrap();
    let schema: Value = serde_json::from_str(TELEMETRY_SCHEMA_JSON).unwrap();
    assert_eq!(schema_violations(&schema, &v), Vec::<String>::new(), "{v}");
    let readings = Telemetry::from_json(&t.payload).unwrap().readings;
    let names: Vec<(&str, &str)> = readings.iter().map(|r| (r.name.as_str(), r.unit.as_str())).collect();
    assert_eq!(names, [("temperature", "Cel"), ("humidity", "%RH")]);
    assert_eq!(h.stop().await, Exit::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn reboot_answers_first_waits_for_the_puback_then_boots_and_a_redelivered_reboot_only_resends() {
    let mut h =
        Harness::start(FakeTokens::refreshable(Duration::from_secs(3600)), |c| c.engine.heartbeat_s = Some(10), vec![]);
    let mut c1 = h.conn().await;
    c1.accept().await;
    ack_heartbeat(&mut c1).await;
    let before = ack_heartbeat(&mut c1).await;
    assert_eq!((before.seq, before.uptime_s), (1, 10));

    let reboot = cmd("r-1", "reboot", json!({}));
    c1.send(publish_qos1("devices/esp-01/cmd", 5, &reboot, false));
    let result = c1.expect_publish_on("devices/esp-01/cmd/result").await;
    let v: Value = serde_json::from_slice(&result.payload).unwrap();
    assert_eq!(v, json!({ "cid": "r-1", "ok": true, "result": { "rebooting": true, "delay_s": 0 } }));
    assert_eq!(c1.expect().await, DevicePacket::PubAck(5));
    // No PUBACK for the result yet: the device stays connected (up to 5 s).
    assert!(tokio::time::timeout(Duration::from_secs(2), c1.next()).await.is_err(), "still connected");
    c1.send(mqtt::encode_puback(result.packet_id.unwrap()));
    assert_eq!(c1.until_closed().await, vec![DevicePacket::Disconnect], "clean end right after the PUBACK");
    let closed_at = Instant::now();

    // Booted again: RAM is gone, so it fetches a token as a board does, and reconnects
    // at once; uptime and heartbeat sequence start over.
    let mut c2 = h.conn().await;
    assert!(c2.opened_at - closed_at < Duration::from_millis(5), "no backoff after a planned reboot");
    assert_eq!(c2.offered, "mqtt, auth.hdr.tok2.sig");
    assert_eq!(h.tokens.issued(), 2);
    c2.accept().await;
    let after = ack_heartbeat(&mut c2).await;
    assert_eq!((after.seq, after.uptime_s), (0, 0));

    // The broker redelivers the reboot (its PUBACK was lost, say): answered from the
    // memory saved before the reboot, not run again.
    c2.send(publish_qos1("devices/esp-01/cmd", 6, &reboot, true));
    let again = c2.expect_publish_on("devices/esp-01/cmd/result").await;
    assert_eq!(serde_json::from_slice::<Value>(&again.payload).unwrap(), v);
    c2.send(mqtt::encode_puback(again.packet_id.unwrap()));
    assert_eq!(c2.expect().await, DevicePacket::PubAck(6));
    let next = ack_heartbeat(&mut c2).await;
    assert_eq!((next.seq, next.uptime_s), (1, 10), "same boot, same connection");
    assert!(h.conns.try_recv().is_err(), "no second reboot");
    assert_eq!(h.stats.commands_run.load(Relaxed), 1);
    assert_eq!(h.stats.commands_duplicate.load(Relaxed), 1);
    assert_eq!(h.stats.reconnects.load(Relaxed), 1);
    assert_eq!(h.stop().await, Exit::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn reboot_waits_out_its_delay_and_an_unacknowledged_result_at_most_five_seconds() {
    let mut h = Harness::start(FakeTokens::fixed(), |c| c.engine.heartbeat_s = Some(3600), vec![]);
    let mut c = h.conn().await;
    c.accept().await;
    ack_heartbeat(&mut c).await;
    c.send(publish_qos1("devices/esp-01/cmd", 2, &cmd("r-2", "reboot", json!({ "delay_s": 3 })), false));
    let result = c.expect_publish_on("devices/esp-01/cmd/result").await;
    let t0 = Instant::now();
    let v: Value = serde_json::from_slice(&result.payload).unwrap();
    assert_eq!(v["result"], json!({ "rebooting": true, "delay_s": 3 }));
    c.send(mqtt::encode_puback(result.packet_id.unwrap()));
    assert_eq!(c.until_closed().await.last(), Some(&DevicePacket::Disconnect));
    assert!(approx(Instant::now() - t0, 3_000), "{:?}", Instant::now() - t0);

    // Booted; this time the broker never acknowledges the result.
    let mut c = h.conn().await;
    c.accept().await;
    ack_heartbeat(&mut c).await;
    c.send(publish_qos1("devices/esp-01/cmd", 3, &cmd("r-3", "reboot", json!({})), false));
    let unacked = c.expect_publish_on("devices/esp-01/cmd/result").await;
    let t0 = Instant::now();
    assert_eq!(c.until_closed().await.last(), Some(&DevicePacket::Disconnect));
    assert!(approx(Instant::now() - t0, 5_000), "{:?}", Instant::now() - t0);
    // Still queued across the reboot: re-sent with DUP on the next connection.
    let mut c = h.conn().await;
    c.accept().await;
    let resent = c.expect_publish_on("devices/esp-01/cmd/result").await;
    assert!(resent.dup);
    assert_eq!(resent.payload, unacked.payload);
    assert_eq!(h.stats.reconnects.load(Relaxed), 2);
    assert_eq!(h.stop().await, Exit::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn sample_sensors_answers_the_simulated_readings_with_their_time() {
    let mut h = Harness::start(FakeTokens::fixed(), |_| {}, vec![]);
    let mut c = h.conn().await;
    c.accept().await;
    let sent_at = unix_ms();
    c.send(publish_qos1("devices/esp-01/cmd", 4, &cmd("s-1", "sample_sensors", json!({})), false));
    let result = c.expect_publish_on("devices/esp-01/cmd/result").await;
    let v: Value = serde_json::from_slice(&result.payload).unwrap();
    assert_eq!((v["cid"].as_str(), v["ok"].as_bool()), (Some("s-1"), Some(true)), "{v}");
    let r = &v["result"];
    // The same shape as a telemetry message.
    let sample = Telemetry::from_json(r.to_string().as_bytes()).unwrap();
    let names: Vec<&str> = sample.readings.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["temperature", "humidity"]);
    let (t, hum) = (sample.readings[0].value, sample.readings[1].value);
    assert!((-10.0..=45.0).contains(&t) && (5.0..=95.0).contains(&hum), "{r}");
    let at = sample.at;
    assert!(at >= sent_at && at - sent_at < 60_000, "{at} vs {sent_at}");
    assert_eq!(h.stop().await, Exit::Shutdown);
}

fn anomaly_ask() -> fleetwire_core::ml::MlAsk {
    fleetwire_core::ml::MlAsk {
        model: "anomaly".into(),
        version: None,
        input: vec![vec![21.5, 40.0, 0.02, 1.3]],
        deadline_ms: None,
    }
}

#[tokio::test(start_paused = true)]
async fn the_ml_request_is_published_once_connected_and_its_answer_is_handed_over() {
    use fleetwire_core::session::MlOutcome;
    let mut h = Harness::start_ml(FakeTokens::fixed(), anomaly_ask());
    let mut c = h.conn().await;
    c.accept().await;
    let request = c.expect_publish_on("devices/esp-01/ml/infer").await;
    assert_eq!(request.qos, QoS::AtLeastOnce);
    c.send(mqtt::encode_puback(request.packet_id.unwrap()));
    let body: Value = serde_json::from_slice(&request.payload).unwrap();
    assert_eq!((body["model"].as_str(), &body["input"]), (Some("anomaly"), &json!([[21.5, 40.0, 0.02, 1.3]])));
    let cid = body["cid"].as_str().unwrap().to_owned();

    // A stray answer first (another cid): not handed over.
    let stray = json!({ "cid": "ml-other-1", "ok": true, "output": [], "model_version": "2" });
    c.send(publish_qos1("devices/esp-01/ml/result", 5, stray.to_string().as_bytes(), false));
    let answer = json!({ "cid": cid, "ok": true, "output": [{ "score": 0.1 }], "model_version": "2" });
    c.send(publish_qos1("devices/esp-01/ml/result", 6, answer.to_string().as_bytes(), false));
    let outcome = h.ml.take().unwrap().await.unwrap();
    let MlOutcome::Answered(got) = outcome else { panic!("{outcome:?}") };
    assert_eq!(serde_json::from_str::<Value>(&got.to_json()).unwrap(), answer);
    assert_eq!(h.stop().await, Exit::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn without_an_answer_the_ml_request_ends_as_given_up_after_its_deadline() {
    use fleetwire_core::ml::{GiveUp, GIVE_UP_GRACE_MS};
    use fleetwire_core::session::MlOutcome;
    let mut h = Harness::start_ml(FakeTokens::fixed(), anomaly_ask());
    let mut c = h.conn().await;
    c.accept().await;
    let request = c.expect_publish_on("devices/esp-01/ml/infer").await;
    c.send(mqtt::encode_puback(request.packet_id.unwrap()));
    let asked = Instant::now();
    let outcome = h.ml.take().unwrap().await.unwrap();
    assert!(matches!(outcome, MlOutcome::GaveUp { reason: GiveUp::Deadline, .. }), "{outcome:?}");
    assert!(approx(asked.elapsed(), 2_000 + GIVE_UP_GRACE_MS), "{:?}", asked.elapsed());
    assert_eq!(h.stop().await, Exit::Shutdown);
}
