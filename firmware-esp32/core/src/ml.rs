//! Device-initiated inference: requests on `devices/{id}/ml/infer`
//! (`{cid, model, version?, input, deadline_ms?}`, `ml-infer.schema.json`) and their
//! answers on `devices/{id}/ml/result` (`{cid, ok, output | error{code,message},
//! model_version}`, `ml-result.schema.json`).
//!
//! The server promises exactly one answer per `cid` by the request's deadline (a
//! `timeout` error when no result was ready). The device still bounds its own wait: a
//! lost answer (a link down at the wrong moment, a broker restart) must not leave a
//! request pending forever, so each one is given up [`GIVE_UP_GRACE_MS`] after its
//! deadline, and the table of pending requests is bounded (the oldest is given up
//! when it is full). An answer for a cid not pending (given up already, or from
//! before a reboot) is ignored.
//!
//! Requests are JSON only: the core has no msgpack encoder, and the broker takes both.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contracts::ML_JSON;
use crate::platform::Rng;

/// How long after its deadline a request is given up when no answer came: the
/// server answers `timeout` at the deadline itself, so this only covers its deadline
/// check period and the trip back.
pub const GIVE_UP_GRACE_MS: u64 = 2_000;
/// Pending requests kept by default.
pub const DEFAULT_PENDING_CAPACITY: usize = 16;
/// `ml-infer.schema.json`: `cid` and `model` lengths, `version` length, `deadline_ms` range.
pub const MAX_CID_LEN: usize = 128;
pub const MAX_MODEL_LEN: usize = 128;
pub const MAX_VERSION_LEN: usize = 64;
pub const MAX_DEADLINE_MS: u32 = 600_000;

/// The server's deadline settings from `common/contracts/ml.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// `ML_TIMEOUT_MS`: the deadline of a request without `deadline_ms`.
    pub default_ms: u64,
    /// `ML_MAX_TIMEOUT_MS`: the server caps `deadline_ms` at this.
    pub max_ms: u64,
}

impl Deadlines {
    /// The contract's defaults (a server may be configured otherwise; the device's
    /// grace period absorbs small differences, and a later answer is only ignored).
    pub fn from_contract() -> Self {
        let v: Value = serde_json::from_str(ML_JSON).expect("ml.json is JSON");
        let setting = |name: &str| {
            v.pointer(&format!("/settings/{name}/default")).and_then(Value::as_u64).expect("ml.json has the setting")
        };
        Deadlines { default_ms: setting("ML_TIMEOUT_MS"), max_ms: setting("ML_MAX_TIMEOUT_MS") }
    }

    /// The deadline the server applies to a request asking for `deadline_ms`.
    pub fn effective_ms(&self, deadline_ms: Option<u32>) -> u64 {
        deadline_ms.map_or(self.default_ms, u64::from).min(self.max_ms)
    }
}

/// What the application asks for; the client gives it a cid.
#[derive(Debug, Clone, PartialEq)]
pub struct MlAsk {
    pub model: String,
    /// A pinned model version; `None`: the server's default (highest loaded) version.
    pub version: Option<String>,
    /// Rows of readings, e.g. `[[temperature_c, humidity_pct, vibration_g, current_a]]`
    /// for `anomaly`. The model decides the width; the server checks it.
    pub input: Vec<Vec<f32>>,
    /// The answer is wanted within this many ms (server default and cap otherwise).
    pub deadline_ms: Option<u32>,
}

impl MlAsk {
    /// Refuses what the broker would answer `request_invalid`, and numbers JSON cannot
    /// carry (serde_json would write NaN and infinities as `null`).
    pub fn check(&self) -> Result<(), String> {
        if self.model.is_empty() || self.model.len() > MAX_MODEL_LEN {
            return Err(format!("model must be 1 to {MAX_MODEL_LEN} bytes"));
        }
        if self.version.as_ref().is_some_and(|v| v.len() > MAX_VERSION_LEN) {
            return Err(format!("version must be at most {MAX_VERSION_LEN} bytes"));
        }
        if self.deadline_ms.is_some_and(|d| d == 0 || d > MAX_DEADLINE_MS) {
            return Err(format!("deadline_ms must be within 1..={MAX_DEADLINE_MS}"));
        }
        for (r, row) in self.input.iter().enumerate() {
            if let Some(c) = row.iter().position(|x| !x.is_finite()) {
                return Err(format!("input[{r}][{c}] is not a finite number"));
            }
        }
        Ok(())
    }

    /// The `ml/infer` payload for this ask under `cid`.
    pub fn to_json(&self, cid: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Wire<'a> {
            cid: &'a str,
            model: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            version: Option<&'a str>,
            input: &'a [Vec<f32>],
            #[serde(skip_serializing_if = "Option::is_none")]
            deadline_ms: Option<u32>,
        }
        let wire = Wire {
            cid,
            model: &self.model,
            version: self.version.as_deref(),
            input: &self.input,
            deadline_ms: self.deadline_ms,
        };
        serde_json::to_vec(&wire).expect("a request serialises")
    }
}

/// Request ids unique per device: `ml-<boot nonce>-<sequence>`. Commands' cids come
/// from the server; these come from the device, so they must not repeat across
/// reboots either (the server keys a request by device id and cid): a random 64-bit
/// nonce drawn at boot, then a counter. No `:` or `.`, so the job id
/// `<device_id>.<cid>` is the cid as is.
#[derive(Debug, Clone)]
pub struct CidGenerator {
    nonce: u64,
    next: u64,
}

impl CidGenerator {
    pub fn new(rng: &mut dyn Rng) -> Self {
        let nonce = (u64::from(rng.next_u32()) << 32) | u64::from(rng.next_u32());
        CidGenerator { nonce, next: 1 }
    }

    pub fn next_cid(&mut self) -> String {
        let cid = format!("ml-{:016x}-{}", self.nonce, self.next);
        self.next += 1;
        cid
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlError {
    pub code: String,
    pub message: String,
}

/// A well-formed answer.
#[derive(Debug, Clone, PartialEq)]
pub struct MlAnswer {
    pub cid: String,
    /// The output (`ok: true`) or the error (`ok: false`).
    pub result: Result<Value, MlError>,
    /// The version that answered, e.g. `"2"`; `""` when no model ran (timeout, refusals).
    pub model_version: String,
}

/// Members beyond these are ignored: the schema allows them, so a server may add some.
#[derive(Serialize, Deserialize)]
struct WireAnswer {
    cid: String,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<MlError>,
    model_version: String,
}

impl MlAnswer {
    /// Parse an `ml/result` payload. Beyond the schema, `ok: true` needs an `output`
    /// and `ok: false` an `error`: anything else cannot be acted on.
    pub fn parse(payload: &[u8]) -> Result<MlAnswer, String> {
        let w: WireAnswer = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let result = match (w.ok, w.output, w.error) {
            (true, Some(output), None) => Ok(output),
            (false, None, Some(error)) => Err(error),
            (true, _, _) => return Err("ok: true needs an output and no error".into()),
            (false, _, _) => return Err("ok: false needs an error and no output".into()),
        };
        if w.cid.is_empty() {
            return Err("empty cid".into());
        }
        Ok(MlAnswer { cid: w.cid, result, model_version: w.model_version })
    }

    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }

    pub fn error_code(&self) -> Option<&str> {
        self.result.as_ref().err().map(|e| e.code.as_str())
    }

    /// The answer as one line of JSON, in the wire's shape.
    pub fn to_json(&self) -> String {
        let (output, error) = match &self.result {
            Ok(o) => (Some(o.clone()), None),
            Err(e) => (None, Some(e.clone())),
        };
        let w = WireAnswer {
            cid: self.cid.clone(),
            ok: self.ok(),
            output,
            error,
            model_version: self.model_version.clone(),
        };
        serde_json::to_string(&w).expect("an answer serialises")
    }
}

/// A request waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub cid: String,
    pub model: String,
    /// Monotonic ms when it was queued.
    pub asked_at: u64,
    /// Monotonic ms after which it is given up.
    pub give_up_at: u64,
}

/// Why a request will get no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUp {
    /// Its deadline plus [`GIVE_UP_GRACE_MS`] passed.
    Deadline,
    /// The table was full and it was the oldest.
    Evicted,
    /// Its answer arrived but could not be read (the server sends one answer only).
    MalformedAnswer(String),
}

impl GiveUp {
    pub fn as_str(&self) -> &str {
        match self {
            GiveUp::Deadline => "deadline",
            GiveUp::Evicted => "evicted",
            GiveUp::MalformedAnswer(_) => "malformed-answer",
        }
    }
}

/// The pending requests, oldest first, at most `capacity`.
#[derive(Debug)]
pub struct PendingRequests {
    entries: VecDeque<Pending>,
    capacity: usize,
}

impl PendingRequests {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        PendingRequests { entries: VecDeque::with_capacity(capacity), capacity }
    }

    /// Add `p`; returns the oldest request if it had to make room.
    pub fn insert(&mut self, p: Pending) -> Option<Pending> {
        let evicted = if self.entries.len() == self.capacity { self.entries.pop_front() } else { None };
        self.entries.push_back(p);
        evicted
    }

    /// The pending request with this cid, removed.
    pub fn take(&mut self, cid: &str) -> Option<Pending> {
        let i = self.entries.iter().position(|p| p.cid == cid)?;
        self.entries.remove(i)
    }

    /// The requests given up at `now`, removed.
    pub fn expire(&mut self, now: u64) -> Vec<Pending> {
        let (due, keep): (VecDeque<Pending>, VecDeque<Pending>) =
            self.entries.drain(..).partition(|p| p.give_up_at <= now);
        self.entries = keep;
        due.into()
    }

    /// When the next request is given up.
    pub fn next_give_up(&self) -> Option<u64> {
        self.entries.iter().map(|p| p.give_up_at).min()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What an `ml/result` payload meant.
#[derive(Debug, Clone, PartialEq)]
pub enum Matched {
    /// The answer to a pending request (now done).
    Answered { answer: MlAnswer, request: Pending },
    /// Well-formed, but no such request is pending: ignored.
    Unknown { cid: String },
    /// Unreadable; `request` is the pending one its cid names, given up now.
    Malformed { error: String, cid: Option<String>, request: Option<Pending> },
}

/// A request just queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    pub cid: String,
    /// The `ml/infer` payload.
    pub payload: Vec<u8>,
    /// The deadline the server applies, ms.
    pub deadline_ms: u64,
    /// The oldest pending request, given up to make room.
    pub evicted: Option<Pending>,
}

/// The device's side of inference: cids, the pending table, matching and give-ups.
#[derive(Debug)]
pub struct MlClient {
    cids: CidGenerator,
    pending: PendingRequests,
    deadlines: Deadlines,
}

impl MlClient {
    pub fn new(rng: &mut dyn Rng, capacity: usize, deadlines: Deadlines) -> Self {
        MlClient { cids: CidGenerator::new(rng), pending: PendingRequests::new(capacity), deadlines }
    }

    /// Queue `ask` at monotonic `now`: a cid, the payload, the pending entry.
    pub fn ask(&mut self, ask: &MlAsk, now: u64) -> Result<Asked, String> {
        ask.check()?;
        let cid = self.cids.next_cid();
        let deadline_ms = self.deadlines.effective_ms(ask.deadline_ms);
        let evicted = self.pending.insert(Pending {
            cid: cid.clone(),
            model: ask.model.clone(),
            asked_at: now,
            give_up_at: now + deadline_ms + GIVE_UP_GRACE_MS,
        });
        Ok(Asked { payload: ask.to_json(&cid), cid, deadline_ms, evicted })
    }

    /// An `ml/result` payload arrived.
    pub fn on_result(&mut self, payload: &[u8]) -> Matched {
        match MlAnswer::parse(payload) {
            Ok(answer) => match self.pending.take(&answer.cid) {
                Some(request) => Matched::Answered { answer, request },
                None => Matched::Unknown { cid: answer.cid },
            },
            Err(error) => {
                // Salvage the cid: the server answers once, so its request is done either way.
                let cid = serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|v| v.get("cid").and_then(Value::as_str).map(str::to_owned))
                    .filter(|c| !c.is_empty() && c.len() <= MAX_CID_LEN);
                let request = cid.as_deref().and_then(|c| self.pending.take(c));
                Matched::Malformed { error, cid, request }
            }
        }
    }

    /// Requests given up at monotonic `now`.
    pub fn expire(&mut self, now: u64) -> Vec<Pending> {
        self.pending.expire(now)
    }

    /// When [`MlClient::expire`] has something to do next.
    pub fn next_wakeup(&self) -> Option<u64> {
        self.pending.next_give_up()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::XorShiftRng;
    use serde_json::json;

    fn ask(model: &str, input: Vec<Vec<f32>>) -> MlAsk {
        MlAsk { model: model.into(), version: None, input, deadline_ms: None }
    }
    fn client(capacity: usize) -> MlClient {
        MlClient::new(&mut XorShiftRng::new(7), capacity, Deadlines::from_contract())
    }

    #[test]
    fn deadlines_come_from_the_contract_and_are_capped_like_the_server_does() {
        let d = Deadlines::from_contract();
        assert_eq!(d, Deadlines { default_ms: 2_000, max_ms: 30_000 });
        assert_eq!(d.effective_ms(None), 2_000);
        assert_eq!(d.effective_ms(Some(500)), 500);
        assert_eq!(d.effective_ms(Some(600_000)), 30_000);
    }

    #[test]
    fn a_request_is_the_valid_fixture_given_the_same_fields() {
        let a = MlAsk { deadline_ms: Some(2000), ..ask("anomaly", vec![vec![21.5, 40.1, 0.02, 1.3]]) };
        let ours: Value = serde_json::from_slice(&a.to_json("c-9")).unwrap();
        let fixture: Value = serde_json::from_str(crate::contracts::VALID_ML_INFER_JSON).unwrap();
        // f32 readings print shortest-round-trip, so 40.1 stays 40.1 and not 40.099998.
        assert_eq!(ours, fixture);
        let pinned = MlAsk { version: Some("1".into()), ..ask("anomaly", vec![vec![1.0]]) };
        let v: Value = serde_json::from_slice(&pinned.to_json("c")).unwrap();
        assert_eq!(v, json!({"cid": "c", "model": "anomaly", "version": "1", "input": [[1.0]]}));
    }

    #[test]
    fn asks_the_broker_would_refuse_or_json_cannot_carry_are_refused() {
        let too_long = "m".repeat(MAX_MODEL_LEN + 1);
        let bad = [
            ask("", vec![vec![1.0]]),
            ask(&too_long, vec![vec![1.0]]),
            MlAsk { version: Some("v".repeat(65)), ..ask("anomaly", vec![]) },
            MlAsk { deadline_ms: Some(0), ..ask("anomaly", vec![]) },
            MlAsk { deadline_ms: Some(MAX_DEADLINE_MS + 1), ..ask("anomaly", vec![]) },
            ask("anomaly", vec![vec![1.0, f32::NAN]]),
            ask("anomaly", vec![vec![1.0], vec![f32::INFINITY]]),
        ];
        for a in bad {
            assert!(a.check().is_err(), "{a:?}");
            assert!(client(4).ask(&a, 0).is_err(), "{a:?}");
        }
        assert!(client(4).ask(&ask("anomaly", vec![vec![1.0]]), 0).is_ok());
    }

    #[test]
    fn cids_are_unique_within_a_boot_and_across_boots_and_safe_in_a_job_id() {
        let mut a = CidGenerator::new(&mut XorShiftRng::new(1));
        let mut b = CidGenerator::new(&mut XorShiftRng::new(2));
        let cids: Vec<String> = (0..100).map(|_| a.next_cid()).chain((0..100).map(|_| b.next_cid())).collect();
        let unique: std::collections::HashSet<&String> = cids.iter().collect();
        assert_eq!(unique.len(), 200);
        for c in &cids {
            assert!(c.len() <= MAX_CID_LEN && !c.contains(':') && !c.contains('.'), "{c}");
        }
    }

    #[test]
    fn an_answer_is_matched_to_its_request_by_cid_once() {
        let mut c = client(4);
        let first = c.ask(&ask("anomaly", vec![vec![1.0; 4]]), 100).unwrap();
        let second = c.ask(&ask("anomaly", vec![vec![2.0; 4]]), 110).unwrap();
        assert_ne!(first.cid, second.cid);
        assert_eq!(first.deadline_ms, 2_000);
        let payload = json!({"cid": second.cid, "ok": true, "output": [{"score": 0.1}], "model_version": "2"});
        let payload = serde_json::to_vec(&payload).unwrap();
        let Matched::Answered { answer, request } = c.on_result(&payload) else { panic!("not matched") };
        assert_eq!((answer.cid.as_str(), answer.model_version.as_str()), (second.cid.as_str(), "2"));
        assert_eq!(answer.result, Ok(json!([{"score": 0.1}])));
        assert_eq!((request.asked_at, request.model.as_str()), (110, "anomaly"));
        // A second copy of the same answer finds nothing pending.
        assert_eq!(c.on_result(&payload), Matched::Unknown { cid: second.cid.clone() });
        assert_eq!(c.pending(), 1);
    }

    #[test]
    fn error_answers_carry_their_code() {
        let mut c = client(4);
        let asked = c.ask(&ask("nope", vec![vec![1.0]]), 0).unwrap();
        let payload = json!({"cid": asked.cid, "ok": false, "error": {"code": "model_unknown", "message": "no model nope"},
                             "model_version": ""});
        let Matched::Answered { answer, .. } = c.on_result(&serde_json::to_vec(&payload).unwrap()) else { panic!() };
        assert_eq!(answer.error_code(), Some("model_unknown"));
        assert!(!answer.ok());
        let back: Value = serde_json::from_str(&answer.to_json()).unwrap();
        assert_eq!(back, payload);
    }

    #[test]
    fn members_the_schema_does_not_name_are_ignored() {
        let mut c = client(4);
        let asked = c.ask(&ask("anomaly", vec![vec![1.0]]), 0).unwrap();
        let payload = json!({"cid": asked.cid, "ok": true, "output": [1], "model_version": "2", "compute_ms": 0.4});
        assert!(matches!(c.on_result(&serde_json::to_vec(&payload).unwrap()), Matched::Answered { .. }));
    }

    #[test]
    fn answers_for_unknown_cids_are_ignored() {
        let mut c = client(4);
        c.ask(&ask("anomaly", vec![vec![1.0]]), 0).unwrap();
        let stray = br#"{"cid":"ml-from-before-a-reboot-1","ok":true,"output":[],"model_version":"2"}"#;
        assert_eq!(c.on_result(stray), Matched::Unknown { cid: "ml-from-before-a-reboot-1".into() });
        assert_eq!(c.pending(), 1);
    }

    #[test]
    fn malformed_answers_are_reported_and_give_up_the_request_their_cid_names() {
        let mut c = client(8);
        let asked = c.ask(&ask("anomaly", vec![vec![1.0]]), 0).unwrap();
        let cid = asked.cid.as_str();
        for bad in [
            "not json".to_owned(),
            "[]".to_owned(),
            r#"{"ok":true,"output":[],"model_version":"2"}"#.to_owned(),
            r#"{"cid":"","ok":true,"output":[],"model_version":"2"}"#.to_owned(),
            format!(r#"{{"cid":"x-{cid}","ok":"yes","output":[],"model_version":"2"}}"#),
            format!(r#"{{"cid":"x-{cid}","ok":true,"output":[]}}"#),
            format!(r#"{{"cid":"x-{cid}","ok":true,"model_version":"2"}}"#),
            format!(r#"{{"cid":"x-{cid}","ok":false,"output":[],"model_version":""}}"#),
            format!(r#"{{"cid":"x-{cid}","ok":false,"error":{{"code":"timeout"}},"model_version":""}}"#),
            format!(
                r#"{{"cid":"x-{cid}","ok":true,"output":[],"error":{{"code":"a","message":"b"}},"model_version":"2"}}"#
            ),
            format!(r#"{{"cid":"x-{cid}","ok":true,"output":[],"model_version":2}}"#),
        ] {
            assert!(matches!(c.on_result(bad.as_bytes()), Matched::Malformed { request: None, .. }), "{bad}");
        }
        assert_eq!(c.pending(), 1, "answers naming other cids leave the request pending");
        let broken = format!(r#"{{"cid":"{cid}","ok":true,"model_version":"2"}}"#);
        let Matched::Malformed { error, cid: Some(named), request: Some(request) } = c.on_result(broken.as_bytes())
        else {
            panic!("the named request is given up")
        };
        assert!(error.contains("output"), "{error}");
        assert_eq!((named.as_str(), request.cid.as_str()), (cid, cid));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn a_request_is_given_up_a_little_after_its_deadline_when_no_answer_came() {
        let mut c = client(4);
        let quick = c.ask(&MlAsk { deadline_ms: Some(500), ..ask("anomaly", vec![]) }, 1_000).unwrap();
        let default = c.ask(&ask("anomaly", vec![]), 1_000).unwrap();
        assert_eq!(c.next_wakeup(), Some(1_000 + 500 + GIVE_UP_GRACE_MS));
        assert!(c.expire(1_000 + 500 + GIVE_UP_GRACE_MS - 1).is_empty());
        let gone = c.expire(1_000 + 500 + GIVE_UP_GRACE_MS);
        assert_eq!(gone.iter().map(|p| p.cid.as_str()).collect::<Vec<_>>(), [quick.cid.as_str()]);
        assert_eq!(c.next_wakeup(), Some(1_000 + 2_000 + GIVE_UP_GRACE_MS));
        assert_eq!(c.expire(10_000).len(), 1);
        assert_eq!((c.pending(), c.next_wakeup()), (0, None));
        // Its answer, arriving later, is ignored.
        let late =
            json!({"cid": default.cid, "ok": false, "error": {"code": "timeout", "message": "m"}, "model_version": ""});
        assert!(matches!(c.on_result(&serde_json::to_vec(&late).unwrap()), Matched::Unknown { .. }));
    }

    #[test]
    fn the_pending_table_is_bounded_and_evicts_the_oldest() {
        let mut c = client(2);
        let a = c.ask(&ask("anomaly", vec![]), 0).unwrap();
        let b = c.ask(&ask("anomaly", vec![]), 1).unwrap();
        assert_eq!((a.evicted.as_ref(), b.evicted.as_ref()), (None, None));
        let third = c.ask(&ask("anomaly", vec![]), 2).unwrap();
        assert_eq!(third.evicted.map(|p| p.cid), Some(a.cid.clone()));
        assert_eq!(c.pending(), 2);
        let answer = json!({"cid": a.cid, "ok": true, "output": [], "model_version": "2"});
        assert_eq!(c.on_result(&serde_json::to_vec(&answer).unwrap()), Matched::Unknown { cid: a.cid });
    }
}
