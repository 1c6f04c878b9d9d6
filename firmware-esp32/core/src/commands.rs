//! Cloud-to-device commands (`devices/{id}/cmd`, `{cid, name, args, expires_at}`) and
//! their results (`devices/{id}/cmd/result`, `{cid, ok, result | error{code,message}}`).
//!
//! Delivery is MQTT QoS 1 (at least once), so the same command may arrive twice: the
//! processor remembers the results of the last `capacity` cids and re-sends the stored
//! result for a duplicate without running it again. That memory is RAM; before a
//! planned reboot the firmware saves it ([`CommandProcessor::save`]) and restores it at
//! boot ([`CommandProcessor::restore`]), so a `reboot` redelivered after the reboot is
//! answered from memory instead of rebooting again.
//!
//! Commands: `ping`, `set_heartbeat_interval {seconds}`, `report_config`,
//! `reboot {delay_s?}`, `sample_sensors`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::platform::Storage;
use crate::telemetry::{Reading, Telemetry};

/// Largest `reboot` `args.delay_s`.
pub const MAX_REBOOT_DELAY_S: u32 = 60;
/// Storage (NVS) key of the command memory saved before a planned reboot (NVS keys
/// are at most 15 characters).
pub const MEMORY_KEY: &str = "cmd.recent";

/// Device-side error codes carried in `error.code`.
pub mod codes {
    pub const EXPIRED: &str = "CMD_EXPIRED";
    pub const UNKNOWN: &str = "CMD_UNKNOWN";
    pub const INVALID_ARGS: &str = "CMD_INVALID_ARGS";
    pub const MALFORMED: &str = "CMD_MALFORMED";
    pub const FAILED: &str = "CMD_FAILED";
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub cid: String,
    pub name: String,
    pub args: Map<String, Value>,
    /// Unix time in milliseconds.
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmdError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmdResult {
    pub cid: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CmdError>,
}

impl CmdResult {
    pub fn ok(cid: &str, result: Value) -> Self {
        CmdResult { cid: cid.into(), ok: true, result: Some(result), error: None }
    }
    pub fn err(cid: &str, code: &str, message: impl Into<String>) -> Self {
        CmdResult {
            cid: cid.into(),
            ok: false,
            result: None,
            error: Some(CmdError { code: code.into(), message: message.into() }),
        }
    }
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("CmdResult serialises")
    }
}

/// What commands act on (implemented by the firmware's application state).
pub trait CommandContext {
    /// Apply a new heartbeat interval; returns the applied value or a reason.
    fn set_heartbeat_interval(&mut self, seconds: u32) -> Result<u32, String>;
    /// Current configuration as JSON (no secrets).
    fn report_config(&self) -> Value;
    /// Schedule a reboot in `delay_s` seconds (already validated: 0..=[`MAX_REBOOT_DELAY_S`]).
    /// Only schedules: the result is published first, and the firmware reboots once it
    /// is acknowledged (bounded wait) and the delay has passed, saving the processor's
    /// memory ([`CommandProcessor::save`]) just before. `Err`: the reboot cannot be done.
    fn reboot(&mut self, delay_s: u32) -> Result<(), String>;
    /// Read every sensor now (see [`crate::platform::Board::sample_sensors`]). `Err` (or no readings
    /// at all) when the device has no sensor or a read failed.
    fn sample_sensors(&mut self) -> Result<Vec<Reading>, String>;
}

/// Outcome of handling one incoming payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// Newly executed (or refused) command: publish this result.
    Fresh(CmdResult),
    /// A duplicate cid: re-publish the stored result, nothing was executed.
    Duplicate(CmdResult),
    /// Unparseable payload without a usable cid: nothing can be correlated.
    Dropped(String),
}

impl Handled {
    pub fn result(&self) -> Option<&CmdResult> {
        match self {
            Handled::Fresh(r) | Handled::Duplicate(r) => Some(r),
            Handled::Dropped(_) => None,
        }
    }
}

pub struct CommandProcessor {
    recent: VecDeque<CmdResult>,
    capacity: usize,
}

impl CommandProcessor {
    /// `capacity`: how many recent cids (and their results) are remembered.
    pub fn new(capacity: usize) -> Self {
        CommandProcessor { recent: VecDeque::with_capacity(capacity), capacity: capacity.max(1) }
    }

    fn remembered(&self, cid: &str) -> Option<&CmdResult> {
        self.recent.iter().find(|r| r.cid == cid)
    }

    fn remember(&mut self, r: &CmdResult) {
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
        }
        self.recent.push_back(r.clone());
    }

    /// Handle a `cmd` payload received at `now_unix_ms`.
    pub fn handle(&mut self, payload: &[u8], now_unix_ms: u64, ctx: &mut dyn CommandContext) -> Handled {
        let cmd: Command = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                // Try to salvage a cid so the server learns why its command failed.
                let cid = serde_json::from_slice::<Value>(payload).ok().and_then(|v| {
                    v.get("cid").and_then(Value::as_str).filter(|c| !c.is_empty() && c.len() <= 128).map(String::from)
                });
                return match cid {
                    Some(cid) => {
                        if let Some(prev) = self.remembered(&cid) {
                            return Handled::Duplicate(prev.clone());
                        }
                        let r = CmdResult::err(&cid, codes::MALFORMED, e.to_string());
                        self.remember(&r);
                        Handled::Fresh(r)
                    }
                    None => Handled::Dropped(e.to_string()),
                };
            }
        };
        if cmd.cid.is_empty() || cmd.cid.len() > 128 {
            return Handled::Dropped("cid length out of range".into());
        }
        if let Some(prev) = self.remembered(&cmd.cid) {
            return Handled::Duplicate(prev.clone());
        }
        let r = if now_unix_ms >= cmd.expires_at {
            CmdResult::err(&cmd.cid, codes::EXPIRED, format!("command expired at {}", cmd.expires_at))
        } else {
            execute(&cmd, now_unix_ms, ctx)
        };
        self.remember(&r);
        Handled::Fresh(r)
    }

    /// Save the remembered results under [`MEMORY_KEY`] (call right before a reboot:
    /// once per reboot, so flash wear does not matter).
    pub fn save(&self, storage: &mut dyn Storage) {
        let saved: Vec<&CmdResult> = self.recent.iter().collect();
        storage.set(MEMORY_KEY, &serde_json::to_vec(&saved).expect("results serialise"));
    }

    /// Remember the results saved by [`CommandProcessor::save`] (call at boot); the
    /// newest `capacity` are kept. A missing or unreadable record is ignored (the
    /// memory only prevents re-execution). Returns how many results are remembered now.
    pub fn restore(&mut self, storage: &dyn Storage) -> usize {
        let saved = storage.get(MEMORY_KEY).and_then(|b| serde_json::from_slice::<Vec<CmdResult>>(&b).ok());
        for r in saved.iter().flatten().filter(|r| !r.cid.is_empty()) {
            if self.remembered(&r.cid).is_none() {
                self.remember(r);
            }
        }
        self.recent.len()
    }
}

/// `args.delay_s` of `reboot`: absent means 0.
fn reboot_delay(args: &Map<String, Value>) -> Option<u32> {
    match args.get("delay_s") {
        None => Some(0),
        Some(v) => v.as_u64().filter(|d| *d <= u64::from(MAX_REBOOT_DELAY_S)).map(|d| d as u32),
    }
}

fn execute(cmd: &Command, now_unix_ms: u64, ctx: &mut dyn CommandContext) -> CmdResult {
    match cmd.name.as_str() {
        "ping" => CmdResult::ok(&cmd.cid, json!({ "pong": true })),
        "set_heartbeat_interval" => {
            let Some(s) = cmd.args.get("seconds").and_then(Value::as_u64).and_then(|s| u32::try_from(s).ok()) else {
                return CmdResult::err(&cmd.cid, codes::INVALID_ARGS, "args.seconds must be a positive integer");
            };
            match ctx.set_heartbeat_interval(s) {
                Ok(applied) => CmdResult::ok(&cmd.cid, json!({ "interval_s": applied })),
                Err(m) => CmdResult::err(&cmd.cid, codes::INVALID_ARGS, m),
            }
        }
        "report_config" => CmdResult::ok(&cmd.cid, ctx.report_config()),
        "reboot" => {
            let Some(delay_s) = reboot_delay(&cmd.args) else {
                return CmdResult::err(
                    &cmd.cid,
                    codes::INVALID_ARGS,
                    format!("args.delay_s must be an integer from 0 to {MAX_REBOOT_DELAY_S}"),
                );
            };
            match ctx.reboot(delay_s) {
                Ok(()) => CmdResult::ok(&cmd.cid, json!({ "rebooting": true, "delay_s": delay_s })),
                Err(m) => CmdResult::err(&cmd.cid, codes::FAILED, format!("cannot reboot: {m}")),
            }
        }
        // The result is a telemetry payload: `{at, readings: [{name, value, unit}]}`.
        "sample_sensors" => match ctx.sample_sensors() {
            Ok(readings) if readings.is_empty() => CmdResult::err(&cmd.cid, codes::FAILED, "no sensors on this device"),
            Ok(readings) => match Telemetry::new(now_unix_ms, readings) {
                Ok(t) => CmdResult::ok(&cmd.cid, serde_json::to_value(&t).expect("Telemetry serialises")),
                Err(e) => {
                    CmdResult::err(&cmd.cid, codes::FAILED, format!("sensor readings are not valid telemetry: {e}"))
                }
            },
            Err(m) => CmdResult::err(&cmd.cid, codes::FAILED, format!("sensor read failed: {m}")),
        },
        other => CmdResult::err(&cmd.cid, codes::UNKNOWN, format!("unknown command {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{INVALID_CMD_RESULT_JSON, VALID_CMD_RESULT_JSON};
    use crate::heartbeat::HeartbeatScheduler;

    struct Ctx {
        hb: HeartbeatScheduler,
        calls: u32,
        reboots: Vec<u32>,
        sensors: Option<Vec<Reading>>,
    }
    impl CommandContext for Ctx {
        fn set_heartbeat_interval(&mut self, seconds: u32) -> Result<u32, String> {
            self.calls += 1;
            self.hb.set_interval_s(seconds)
        }
        fn report_config(&self) -> Value {
            json!({ "heartbeat_interval_s": self.hb.interval_s(), "fw": "1.4.2" })
        }
        fn reboot(&mut self, delay_s: u32) -> Result<(), String> {
            self.reboots.push(delay_s);
            Ok(())
        }
        fn sample_sensors(&mut self) -> Result<Vec<Reading>, String> {
            self.sensors.clone().ok_or_else(|| "no sensors on this board".to_string())
        }
    }
    fn ctx() -> Ctx {
        Ctx { hb: HeartbeatScheduler::new("1.4.2"), calls: 0, reboots: Vec::new(), sensors: None }
    }
    const NOW: u64 = 1_700_000_000_000;
    fn cmd(cid: &str, name: &str, args: Value, expires_at: u64) -> Vec<u8> {
        serde_json::to_vec(&json!({ "cid": cid, "name": name, "args": args, "expires_at": expires_at })).unwrap()
    }

    #[test]
    fn ping_answers_pong_matching_the_valid_fixture() {
        let mut p = CommandProcessor::new(8);
        let h = p.handle(&cmd("c-1", "ping", json!({}), NOW + 1000), NOW, &mut ctx());
        let r = h.result().unwrap();
        let fixture: Value = serde_json::from_str(VALID_CMD_RESULT_JSON).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&r.to_json()).unwrap(), fixture);
    }

    #[test]
    fn error_results_always_carry_an_error_object_unlike_the_invalid_fixture() {
        let invalid: Value = serde_json::from_str(INVALID_CMD_RESULT_JSON).unwrap();
        assert!(invalid.get("error").is_none());
        let r = CmdResult::err("c-1", codes::UNKNOWN, "x");
        let v: Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["code"], codes::UNKNOWN);
        assert!(v.get("result").is_none());
    }

    #[test]
    fn set_heartbeat_interval_changes_the_schedule() {
        let mut p = CommandProcessor::new(8);
        let mut c = ctx();
        let h = p.handle(&cmd("c-2", "set_heartbeat_interval", json!({"seconds": 60}), NOW + 1), NOW, &mut c);
        assert_eq!(h, Handled::Fresh(CmdResult::ok("c-2", json!({"interval_s": 60}))));
        assert_eq!(c.hb.interval_s(), 60);
    }

    #[test]
    fn set_heartbeat_interval_refuses_bad_args() {
        let mut p = CommandProcessor::new(8);
        let mut c = ctx();
        for (i, args) in
            [json!({}), json!({"seconds": "x"}), json!({"seconds": -1}), json!({"seconds": 1})].into_iter().enumerate()
        {
            let r = p.handle(&cmd(&format!("c{i}"), "set_heartbeat_interval", args, NOW + 1), NOW, &mut c);
            let r = r.result().unwrap();
            assert!(!r.ok);
            assert_eq!(r.error.as_ref().unwrap().code, codes::INVALID_ARGS);
        }
        assert_eq!(c.hb.interval_s(), crate::heartbeat::DEFAULT_INTERVAL_S);
    }

    #[test]
    fn report_config_returns_the_context_config() {
        let mut p = CommandProcessor::new(8);
        let r = p.handle(&cmd("c-3", "report_config", json!({}), NOW + 1), NOW, &mut ctx());
        assert_eq!(r.result().unwrap().result, Some(json!({"heartbeat_interval_s": 30, "fw": "1.4.2"})));
    }

    #[test]
    fn expired_command_is_refused_without_running() {
        let mut p = CommandProcessor::new(8);
        let mut c = ctx();
        let r = p.handle(&cmd("c-4", "set_heartbeat_interval", json!({"seconds": 60}), NOW), NOW, &mut c);
        let r = r.result().unwrap();
        assert!(!r.ok);
        assert_eq!(r.error.as_ref().unwrap().code, codes::EXPIRED);
        assert_eq!(c.calls, 0);
    }

    #[test]
    fn unknown_command_yields_error_result() {
        let mut p = CommandProcessor::new(8);
        let r = p.handle(&cmd("c-5", "self_destruct", json!({}), NOW + 1), NOW, &mut ctx());
        assert_eq!(r.result().unwrap().error.as_ref().unwrap().code, codes::UNKNOWN);
    }

    #[test]
    fn duplicate_cid_runs_once_and_resends_the_same_result() {
        let mut p = CommandProcessor::new(8);
        let mut c = ctx();
        let payload = cmd("c-6", "set_heartbeat_interval", json!({"seconds": 45}), NOW + 1000);
        let first = p.handle(&payload, NOW, &mut c);
        // Even if the duplicate arrives after expiry, the stored result is re-sent.
        let second = p.handle(&payload, NOW + 5000, &mut c);
        assert_eq!(c.calls, 1);
        assert!(matches!(first, Handled::Fresh(_)));
        assert_eq!(second, Handled::Duplicate(first.result().unwrap().clone()));
    }

    #[test]
    fn duplicate_memory_is_bounded() {
        let mut p = CommandProcessor::new(2);
        let mut c = ctx();
        let a = cmd("a", "set_heartbeat_interval", json!({"seconds": 10}), NOW + 1);
        p.handle(&a, NOW, &mut c);
        p.handle(&cmd("b", "ping", json!({}), NOW + 1), NOW, &mut c);
        p.handle(&cmd("c", "ping", json!({}), NOW + 1), NOW, &mut c);
        assert_eq!(p.recent.len(), 2);
        // "a" was forgotten: it runs again.
        assert!(matches!(p.handle(&a, NOW, &mut c), Handled::Fresh(_)));
        assert_eq!(c.calls, 2);
    }

    #[test]
    fn reboot_only_schedules_and_answers_with_its_delay() {
        let mut p = CommandProcessor::new(8);
        let mut c = ctx();
        let r = p.handle(&cmd("r-1", "reboot", json!({}), NOW + 1), NOW, &mut c);
        assert_eq!(r, Handled::Fresh(CmdResult::ok("r-1", json!({"rebooting": true, "delay_s": 0}))));
        let r = p.handle(&cmd("r-2", "reboot", json!({"delay_s": 60}), NOW + 1), NOW, &mut c);
        assert_eq!(r.result().unwrap().result, Some(json!({"rebooting": true, "delay_s": 60})));
        assert_eq!(c.reboots, [0, 60]);
        // A duplicate does not schedule another reboot.
        assert!(matches!(p.handle(&cmd("r-2", "reboot", json!({}), NOW + 1), NOW, &mut c), Handled::Duplicate(_)));
        assert_eq!(c.reboots, [0, 60]);
    }

    #[test]
    fn reboot_refuses_a_bad_delay() {
        let mut p = CommandProcessor::new(8);
        let mut c = ctx();
        let bad = [
            json!({"delay_s": 61}),
            json!({"delay_s": -1}),
            json!({"delay_s": "5"}),
            json!({"delay_s": 1.5}),
            json!({"delay_s": null}),
        ];
        for (i, args) in bad.into_iter().enumerate() {
            let h = p.handle(&cmd(&format!("r{i}"), "reboot", args, NOW + 1), NOW, &mut c);
            let e = h.result().unwrap().error.clone().unwrap();
            assert_eq!(e.code, codes::INVALID_ARGS);
            assert!(e.message.contains("delay_s"), "{e:?}");
        }
        assert!(c.reboots.is_empty());
    }

    #[test]
    fn sample_sensors_answers_readings_and_time_or_fails_without_sensors() {
        let mut p = CommandProcessor::new(8);
        let mut c = ctx();
        let r = p.handle(&cmd("s-1", "sample_sensors", json!({}), NOW + 1), NOW, &mut c);
        let e = r.result().unwrap().error.clone().unwrap();
        assert_eq!(e.code, codes::FAILED);
        assert!(e.message.contains("no sensors"), "{e:?}");

        c.sensors = Some(Vec::new());
        let r = p.handle(&cmd("s-2", "sample_sensors", json!({}), NOW + 1), NOW, &mut c);
        assert_eq!(r.result().unwrap().error.as_ref().unwrap().code, codes::FAILED);

        c.sensors = Some(vec![Reading::new("temperature", 21.5, "Cel"), Reading::new("humidity", 40.0, "%RH")]);
        let r = p.handle(&cmd("s-3", "sample_sensors", json!({}), NOW + 1), NOW, &mut c);
        let readings = json!([
            { "name": "temperature", "value": 21.5, "unit": "Cel" },
            { "name": "humidity", "value": 40.0, "unit": "%RH" },
        ]);
        assert_eq!(r.result().unwrap().result, Some(json!({ "at": NOW, "readings": readings })));

        // A board bug (a NaN, a bad name) is reported as a failure, not sent as broken JSON.
        c.sensors = Some(vec![Reading::new("temperature", f64::NAN, "Cel")]);
        let r = p.handle(&cmd("s-4", "sample_sensors", json!({}), NOW + 1), NOW, &mut c);
        let e = r.result().unwrap().error.clone().unwrap();
        assert_eq!(e.code, codes::FAILED);
        assert!(e.message.contains("temperature is not a finite number"), "{e:?}");
    }

    #[test]
    fn saved_memory_survives_a_reboot_and_keeps_the_newest() {
        let mut storage = crate::platform::MemStorage::default();
        let mut p = CommandProcessor::new(2);
        let mut c = ctx();
        for cid in ["a", "b", "c"] {
            p.handle(&cmd(cid, "reboot", json!({}), NOW + 1), NOW, &mut c);
        }
        p.save(&mut storage);
        let mut after = CommandProcessor::new(2);
        assert_eq!(after.restore(&storage), 2);
        let dup = after.handle(&cmd("c", "reboot", json!({}), NOW + 1), NOW, &mut c);
        assert_eq!(dup, Handled::Duplicate(CmdResult::ok("c", json!({"rebooting": true, "delay_s": 0}))));
        // "a" fell out of the bounded memory before the save: it runs.
        assert!(matches!(after.handle(&cmd("a", "ping", json!({}), NOW + 1), NOW, &mut c), Handled::Fresh(_)));
        assert_eq!(c.reboots.len(), 3);

        let mut empty = CommandProcessor::new(4);
        assert_eq!(empty.restore(&crate::platform::MemStorage::default()), 0);
        storage.set(MEMORY_KEY, b"garbage");
        assert_eq!(empty.restore(&storage), 0);
    }

    #[test]
    fn malformed_payload_with_cid_gets_error_result_without_cid_is_dropped() {
        let mut p = CommandProcessor::new(8);
        let r = p.handle(br#"{"cid":"c-7","name":"ping"}"#, NOW, &mut ctx());
        assert_eq!(r.result().unwrap().error.as_ref().unwrap().code, codes::MALFORMED);
        assert!(matches!(p.handle(b"not json", NOW, &mut ctx()), Handled::Dropped(_)));
        assert!(matches!(p.handle(br#"{"name":"ping"}"#, NOW, &mut ctx()), Handled::Dropped(_)));
        let extra = br#"{"cid":"c-8","name":"ping","args":{},"expires_at":1,"x":1}"#;
        assert_eq!(p.handle(extra, NOW, &mut ctx()).result().unwrap().error.as_ref().unwrap().code, codes::MALFORMED);
    }
}

#[cfg(test)]
mod contract_tests {
    use super::codes;

    /// The device-side codes live in the shared catalogue, so the server and dashboards know them.
    #[test]
    fn every_command_error_code_is_in_the_shared_error_catalogue() {
        let catalogue: serde_json::Value =
            serde_json::from_str(include_str!("../../../common/contracts/errors.json")).unwrap();
        for code in [codes::EXPIRED, codes::UNKNOWN, codes::INVALID_ARGS, codes::MALFORMED, codes::FAILED] {
            assert!(catalogue["errors"].get(code).is_some(), "{code} missing from common/contracts/errors.json");
        }
    }
}
