//! Cloud-to-device commands (`devices/{id}/cmd`, `{cid, name, args, expires_at}`) and
//! their results (`devices/{id}/cmd/result`, `{cid, ok, result | error{code,message}}`).
//!
//! Delivery is MQTT QoS 1 (at least once), so the same command may arrive twice: the
//! processor remembers the results of the last `capacity` cids and re-sends the stored
//! result for a duplicate without running it again.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

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
            execute(&cmd, ctx)
        };
        self.remember(&r);
        Handled::Fresh(r)
    }
}

fn execute(cmd: &Command, ctx: &mut dyn CommandContext) -> CmdResult {
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
    }
    impl CommandContext for Ctx {
        fn set_heartbeat_interval(&mut self, seconds: u32) -> Result<u32, String> {
            self.calls += 1;
            self.hb.set_interval_s(seconds)
        }
        fn report_config(&self) -> Value {
            json!({ "heartbeat_interval_s": self.hb.interval_s(), "fw": "1.4.2" })
        }
    }
    fn ctx() -> Ctx {
        Ctx { hb: HeartbeatScheduler::new("1.4.2"), calls: 0 }
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
        let r = p.handle(&cmd("c-5", "reboot_now", json!({}), NOW + 1), NOW, &mut ctx());
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
