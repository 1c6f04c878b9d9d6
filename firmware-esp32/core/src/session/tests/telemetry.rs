//! Telemetry: the board's readings published every `telemetry_s` in the contract's
//! format, and readings the broker would refuse reported instead of sent.

use super::*;
use crate::contracts::TELEMETRY_SCHEMA_JSON;
use crate::mqtt::QoS;
use crate::testkit::schema_violations;

fn with_telemetry_every(seconds: u32) -> SessionConfig {
    let mut cfg = config();
    cfg.telemetry_s = seconds;
    cfg
}

#[test]
fn readings_are_published_qos0_every_interval_and_validate_against_the_schema() {
    let board = TestBoard {
        readings: Ok(vec![Reading::new("temperature", 21.5, "Cel"), Reading::new("humidity", 40.0, "%RH")]),
    };
    let mut d = Device::boot_on(board, with_telemetry_every(15), MemStorage::default(), vec![]);
    d.online();
    d.advance(14_999);
    assert!(publishes_on(&d.take_sent(), "telemetry").is_empty(), "not before the interval");
    d.advance(1);
    let sent = publishes_on(&d.take_sent(), "telemetry");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].qos, QoS::AtMostOnce);
    let payload = json_of(&sent[0]);
    let schema: Value = serde_json::from_str(TELEMETRY_SCHEMA_JSON).unwrap();
    assert_eq!(schema_violations(&schema, &payload), Vec::<String>::new(), "{payload}");
    assert_eq!(
        payload,
        json!({ "at": d.now.unix_ms, "readings": [
            { "name": "temperature", "value": 21.5, "unit": "Cel" },
            { "name": "humidity", "value": 40.0, "unit": "%RH" },
        ] })
    );
    d.advance(15_000);
    assert_eq!(publishes_on(&d.take_sent(), "telemetry").len(), 1);
    assert!(d.saw(|e| matches!(e, Event::TelemetrySent)));
}

#[test]
fn readings_the_broker_would_refuse_are_reported_and_not_sent() {
    let board = TestBoard { readings: Ok(vec![Reading::new("Temperature", 21.5, "Cel")]) };
    let mut d = Device::boot_on(board, with_telemetry_every(15), MemStorage::default(), vec![]);
    d.online();
    d.advance(15_000);
    assert!(publishes_on(&d.take_sent(), "telemetry").is_empty());
    assert!(
        d.saw(|e| matches!(e, Event::TelemetryInvalid { error } if error.contains("\"Temperature\""))),
        "{:?}",
        d.events
    );
}

#[test]
fn a_board_without_sensors_or_with_a_failed_read_sends_nothing_and_stays_quiet() {
    for readings in [Ok(vec![]), Err("i2c timeout".to_string())] {
        let mut d = Device::boot_on(TestBoard { readings }, with_telemetry_every(15), MemStorage::default(), vec![]);
        d.online();
        d.advance(30_000);
        assert!(publishes_on(&d.take_sent(), "telemetry").is_empty());
        assert!(!d.saw(|e| matches!(e, Event::TelemetrySent | Event::TelemetryInvalid { .. })));
    }
}
