//! Inference requests: published at QoS 1, answered once per cid, given up when no
//! answer comes, never wedging the device.

use serde_json::json;

use super::*;
use crate::ml::{GiveUp, MlAsk, GIVE_UP_GRACE_MS};
use crate::mqtt::QoS;

fn anomaly(deadline_ms: Option<u32>) -> MlAsk {
    MlAsk { model: "anomaly".into(), version: None, input: vec![vec![21.5, 40.0, 0.02, 1.3]], deadline_ms }
}

fn ask(d: &mut Device, a: &MlAsk) -> String {
    let now = d.now;
    let (cid, out) = d.s().request_inference(now, a).unwrap();
    d.perform(out);
    cid
}

fn result_publish(packet_id: u16, answer: &Value, dup: bool) -> Vec<u8> {
    testkit::publish_qos1(&topic("ml/result"), packet_id, answer.to_string().as_bytes(), dup)
}

#[test]
fn a_request_goes_out_at_qos_1_in_the_contract_shape_and_its_answer_reaches_the_application_once() {
    let mut d = Device::boot(config());
    d.online();
    d.take_sent();
    let cid = ask(&mut d, &anomaly(None));
    let sent = publishes_on(&d.take_sent(), "ml/infer");
    assert_eq!((sent.len(), sent[0].qos), (1, QoS::AtLeastOnce));
    let request = json_of(&sent[0]);
    assert_eq!(request, json!({ "cid": cid, "model": "anomaly", "input": [[21.5, 40.0, 0.02, 1.3]] }));
    let schema: Value =
        serde_json::from_str(include_str!("../../../../../common/contracts/schemas/ml-infer.schema.json")).unwrap();
    assert_eq!(testkit::schema_violations(&schema, &request), Vec::<String>::new());
    d.acknowledge(&sent[0]);

    let answer =
        json!({ "cid": cid, "ok": true, "output": [{ "score": 0.12, "anomaly": false }], "model_version": "2" });
    d.broker(result_publish(9, &answer, false));
    assert!(d.take_sent().contains(&DevicePacket::PubAck(9)));
    let [MlOutcome::Answered(got)] = d.ml.as_slice() else { panic!("{:?}", d.ml) };
    assert_eq!((got.cid.as_str(), got.model_version.as_str()), (cid.as_str(), "2"));
    assert_eq!(serde_json::from_str::<Value>(&got.to_json()).unwrap(), answer);
    assert!(d.saw(|e| matches!(e, Event::MlAnswered { ok: true, .. })));

    // Redelivered (QoS 1): acknowledged again, not handed out twice.
    d.broker(result_publish(9, &answer, true));
    assert!(d.take_sent().contains(&DevicePacket::PubAck(9)));
    assert_eq!(d.ml.len(), 1);
    assert!(d.saw(|e| matches!(e, Event::MlAnswerIgnored { cid: c } if *c == cid)));
}

#[test]
fn a_request_made_before_the_link_is_up_leaves_right_after_the_subscription() {
    let mut d = Device::boot(config());
    let cid = ask(&mut d, &anomaly(Some(5_000)));
    d.give_token("tok1", None);
    let sent = d.accept();
    let infer = publishes_on(&sent, "ml/infer");
    assert_eq!(json_of(&infer[0])["cid"], cid.as_str());
    assert_eq!(json_of(&infer[0])["deadline_ms"], 5_000);
    assert!(d.ml.is_empty());
}

#[test]
fn without_an_answer_a_request_is_given_up_a_little_after_its_deadline_and_a_late_answer_is_ignored() {
    let mut d = Device::boot(config());
    d.online();
    let cid = ask(&mut d, &anomaly(Some(500)));
    d.advance(500 + GIVE_UP_GRACE_MS - 1);
    assert!(d.ml.is_empty());
    d.advance(1);
    assert_eq!(d.ml, [MlOutcome::GaveUp { cid: cid.clone(), model: "anomaly".into(), reason: GiveUp::Deadline }]);
    let late =
        json!({ "cid": cid, "ok": false, "error": { "code": "timeout", "message": "late" }, "model_version": "" });
    d.broker(result_publish(3, &late, false));
    assert_eq!(d.ml.len(), 1);
    assert!(d.saw(|e| matches!(e, Event::MlAnswerIgnored { .. })));
}

#[test]
fn a_request_given_up_while_offline_is_never_sent() {
    let mut d = Device::boot(config());
    let cid = ask(&mut d, &anomaly(None));
    d.advance(2_000 + GIVE_UP_GRACE_MS);
    assert!(matches!(&d.ml[..], [MlOutcome::GaveUp { reason: GiveUp::Deadline, .. }]));
    d.give_token("tok1", None);
    let sent = d.accept();
    assert!(publishes_on(&sent, "ml/infer").is_empty(), "{cid} was withdrawn: {sent:?}");
}

#[test]
fn a_full_table_gives_up_the_oldest_request_and_an_unreadable_answer_gives_up_its_own() {
    let mut cfg = config();
    cfg.ml_pending = 1;
    let mut d = Device::boot(cfg);
    d.online();
    let first = ask(&mut d, &anomaly(None));
    let second = ask(&mut d, &anomaly(None));
    assert_eq!(d.ml, [MlOutcome::GaveUp { cid: first, model: "anomaly".into(), reason: GiveUp::Evicted }]);

    // `ok: true` without an output: the server answers once, so the request is over.
    d.broker(result_publish(4, &json!({ "cid": second, "ok": true, "model_version": "2" }), false));
    assert!(d.take_sent().contains(&DevicePacket::PubAck(4)));
    let MlOutcome::GaveUp { cid, reason: GiveUp::MalformedAnswer(why), .. } = &d.ml[1] else { panic!("{:?}", d.ml) };
    assert_eq!(*cid, second);
    assert!(why.contains("output"), "{why}");
    assert!(d.saw(|e| matches!(e, Event::MlAnswerMalformed { .. })));
    // Nothing left to wait for: no wakeup for inference remains.
    d.advance(60_000);
    assert_eq!(d.ml.len(), 2);
}

#[test]
fn an_invalid_ask_is_refused_without_sending_anything() {
    let mut d = Device::boot(config());
    d.online();
    d.take_sent();
    let now = d.now;
    let bad = MlAsk { model: String::new(), ..anomaly(None) };
    assert!(d.s().request_inference(now, &bad).is_err());
    assert!(d.take_sent().is_empty());
}
