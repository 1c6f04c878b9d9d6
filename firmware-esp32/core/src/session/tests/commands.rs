//! Commands: once per `cid` across redeliveries, and a `reboot` performed only after
//! its result is acknowledged, remembered across the reboot.

use serde_json::json;

use super::*;
use crate::commands::MEMORY_KEY;
use crate::mqtt::QoS;
use crate::outbox;

#[test]
fn a_command_runs_once_per_cid_across_a_redelivery_even_packed_with_connack_or_split_across_frames() {
    let mut d = Device::boot(config());
    d.give_token("tok1", None);
    d.link_up();
    d.take_sent();
    // A persistent session delivers a queued command in the same frame as CONNACK.
    let command = cmd("c-42", "set_heartbeat_interval", json!({ "seconds": 10 }));
    let mut frame = testkit::connack(0);
    frame.extend(cmd_publish(7, &command, false));
    d.broker(frame);
    let sent = d.take_sent();
    assert!(matches!(sent[0], DevicePacket::Subscribe { .. }), "{sent:?}");
    let result = publishes_on(&sent, "cmd/result").remove(0);
    assert_eq!(result.qos, QoS::AtLeastOnce);
    assert_eq!(json_of(&result), json!({ "cid": "c-42", "ok": true, "result": { "interval_s": 10 } }));
    let puback = sent.iter().position(|p| *p == DevicePacket::PubAck(7)).expect("acknowledged");
    let result_at = sent.iter().position(|p| matches!(p, DevicePacket::Publish(x) if x.topic == topic("cmd/result")));
    assert!(result_at.unwrap() < puback, "acknowledged after it was handled");

    // The same cid redelivered (DUP), split across two frames: acknowledged and answered
    // with the stored result, not run again.
    let again = cmd_publish(8, &command, true);
    let (a, b) = again.split_at(again.len() / 2);
    d.broker(a.to_vec());
    assert!(d.take_sent().is_empty(), "half a packet");
    d.broker(b.to_vec());
    let sent = d.take_sent();
    assert_eq!(json_of(&publishes_on(&sent, "cmd/result")[0]), json_of(&result));
    assert!(sent.contains(&DevicePacket::PubAck(8)));
    let runs = d.events.iter().filter(|e| matches!(e, Event::CommandRun { .. })).count();
    let dups = d.events.iter().filter(|e| matches!(e, Event::CommandDuplicate { .. })).count();
    assert_eq!((runs, dups), (1, 1));

    // It took effect: heartbeats every 10 s instead of 30.
    d.advance(10_000);
    assert_eq!(heartbeats(&d.take_sent()).len(), 1);
}

#[test]
fn report_config_and_sample_sensors_answer_from_this_device() {
    let mut d = Device::boot(config());
    d.online();
    d.broker(cmd_publish(1, &cmd("c-1", "report_config", json!({})), false));
    d.broker(cmd_publish(2, &cmd("s-1", "sample_sensors", json!({})), false));
    let results = publishes_on(&d.take_sent(), "cmd/result");
    assert_eq!(
        json_of(&results[0])["result"],
        json!({ "device_id": ID, "fw": "1.0.0", "heartbeat_interval_s": 30, "keepalive_s": 60, "telemetry_interval_s": 0 })
    );
    assert_eq!(
        json_of(&results[1])["result"],
        json!({ "at": d.now.unix_ms, "readings": [{ "name": "temperature", "value": 21.5, "unit": "Cel" }] })
    );
}

#[test]
fn a_reboot_is_answered_first_performed_after_its_puback_and_a_redelivery_after_it_is_only_answered() {
    let mut cfg = config();
    cfg.heartbeat_s = Some(10);
    let mut d = Device::boot(cfg);
    d.online();
    d.advance(10_000);
    let before = heartbeats(&d.take_sent()).remove(0);
    assert_eq!((heartbeat(&before).seq, heartbeat(&before).uptime_s), (1, 10));
    d.acknowledge(&before);

    let reboot = cmd("r-1", "reboot", json!({}));
    d.broker(cmd_publish(5, &reboot, false));
    let sent = d.take_sent();
    let result = publishes_on(&sent, "cmd/result").remove(0);
    assert_eq!(json_of(&result), json!({ "cid": "r-1", "ok": true, "result": { "rebooting": true, "delay_s": 0 } }));
    assert_eq!(sent.last(), Some(&DevicePacket::PubAck(5)));
    // No PUBACK for the result yet: still connected (up to 5 s).
    d.advance(2_000);
    assert!(d.reboots.is_empty() && d.link == LinkState::Open);
    d.acknowledge(&result);
    assert_eq!(d.reboots, [RebootKind::Command], "right after the PUBACK");
    assert_eq!(d.take_sent(), [DevicePacket::Disconnect], "a clean end first");
    assert!(d.saw(|e| matches!(e, Event::Rebooting { cid: Some(c), result_acked: Some(true), .. } if c == "r-1")));
    assert!(d.nvs.get(MEMORY_KEY).is_some(), "the command memory was saved before the reboot");

    // Booted again: RAM is gone (a new token is fetched), uptime and sequence start over,
    // and it connects at once.
    assert!(d.saw(|e| matches!(e, Event::Booted { after: Some(RebootKind::Command), .. })));
    assert!(d.wants_token);
    d.give_token("tok2", Some(3_600_000));
    let after = heartbeats(&d.accept()).remove(0);
    assert_eq!((heartbeat(&after).seq, heartbeat(&after).uptime_s), (0, 0));
    d.acknowledge(&after);

    // The broker redelivers the reboot (its PUBACK was lost): answered from the memory
    // saved before the reboot, not run again.
    d.broker(cmd_publish(6, &reboot, true));
    let again = publishes_on(&d.take_sent(), "cmd/result").remove(0);
    assert_eq!(json_of(&again), json_of(&result));
    d.acknowledge(&again);
    d.advance(60_000);
    assert_eq!(d.reboots, [RebootKind::Command], "no second reboot");
    assert!(d.saw(|e| matches!(e, Event::CommandDuplicate { cid } if cid == "r-1")));
}

#[test]
fn a_reboot_waits_out_its_delay_and_an_unacknowledged_result_at_most_5_s_which_is_delivered_after_the_boot() {
    let mut cfg = config();
    cfg.heartbeat_s = Some(3600);
    let mut d = Device::boot(cfg);
    d.online();
    d.broker(cmd_publish(2, &cmd("r-2", "reboot", json!({ "delay_s": 3 })), false));
    let result = publishes_on(&d.take_sent(), "cmd/result").remove(0);
    assert_eq!(json_of(&result)["result"], json!({ "rebooting": true, "delay_s": 3 }));
    d.acknowledge(&result);
    d.advance(2_999);
    assert!(d.reboots.is_empty(), "the delay first");
    d.advance(1);
    assert_eq!(d.reboots, [RebootKind::Command]);

    // Booted; this time the broker never acknowledges the result.
    d.give_token("tok2", None);
    d.online();
    d.broker(cmd_publish(3, &cmd("r-3", "reboot", json!({})), false));
    let unacked = publishes_on(&d.take_sent(), "cmd/result").remove(0);
    d.advance(4_999);
    assert_eq!(d.reboots.len(), 1);
    d.advance(1);
    assert_eq!(d.reboots.len(), 2, "at most 5 s of waiting");
    assert!(d.saw(|e| matches!(e, Event::Rebooting { result_acked: Some(false), .. })));
    // Saved across the reboot: sent again with DUP on the next connection.
    d.give_token("tok3", None);
    let resent = publishes_on(&d.accept(), "cmd/result").remove(0);
    assert!(resent.dup);
    assert_eq!((resent.packet_id, resent.payload), (unacked.packet_id, unacked.payload));
    assert_eq!(d.nvs.get(outbox::STORAGE_KEY).as_deref(), Some(&[][..]), "delivered from RAM from now on");
}

#[test]
fn a_reboot_due_while_offline_happens_without_waiting_for_the_link() {
    let mut d = Device::boot(config());
    d.online();
    d.broker(cmd_publish(2, &cmd("r-4", "reboot", json!({ "delay_s": 10 })), false));
    let due = d.now.mono_ms + 10_000;
    d.close(Some(4001), "server shutting down, reconnect later");
    // The broker stays away: every attempt fails, and the backoff would wait longer.
    while d.now.mono_ms < due - 1 {
        d.advance((due - 1 - d.now.mono_ms).min(1_000));
        if matches!(d.link, LinkState::Opening(_)) {
            d.link_fails(LinkFailure::new("connection refused"));
        }
    }
    assert!(d.reboots.is_empty());
    d.advance(1);
    assert_eq!(d.reboots, [RebootKind::Command]);
    assert!(d.saw(|e| matches!(e, Event::Rebooting { result_acked: Some(false), .. })));
}
