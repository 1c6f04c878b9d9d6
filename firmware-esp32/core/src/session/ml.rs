//! Inference requests from the application ([`Session::request_inference`]) and their
//! answers: the session publishes the request at QoS 1 through the outbox, matches
//! `ml/result` payloads to pending requests by cid ([`crate::ml::MlClient`]) and hands
//! each request's end to the shell exactly once as [`Output::Ml`]: the answer, or a
//! give-up when none came a little after the deadline, the table was full, or the
//! answer was unreadable.

use crate::ml::{GiveUp, Matched, MlAsk, Pending};
use crate::outbox::Kind;
use crate::session::{Event, MlOutcome, Now, Out, Output, Session};

impl Session {
    /// Ask for inference; returns the request's cid and the outputs to perform. The
    /// request leaves at once when connected, after the next CONNACK otherwise; the
    /// wait for its answer counts from now. `Err`: the ask is invalid (see
    /// [`MlAsk::check`]) or the session has ended.
    pub fn request_inference(&mut self, now: Now, ask: &MlAsk) -> Result<(String, Vec<Output>), String> {
        if self.has_ended() {
            return Err("the session has ended".into());
        }
        let asked = self.ml.ask(ask, now.mono_ms)?;
        let cid = asked.cid.clone();
        let outputs = self.run(now, |s, out| {
            if let Some(evicted) = asked.evicted {
                s.give_up(evicted, GiveUp::Evicted, out);
            }
            out.event(Event::MlRequested {
                cid: asked.cid.clone(),
                model: ask.model.clone(),
                deadline_ms: asked.deadline_ms,
            });
            let topic = s.topics.ml_infer.clone();
            s.publish_qos1(now, &topic, asked.payload, Kind::MlInfer { cid: asked.cid }, out);
        });
        Ok((cid, outputs))
    }

    /// A payload on `ml/result`.
    pub(super) fn on_ml_result(&mut self, now: Now, payload: &[u8], out: &mut Out) {
        match self.ml.on_result(payload) {
            Matched::Answered { answer, request } => {
                out.event(Event::MlAnswered {
                    cid: answer.cid.clone(),
                    ok: answer.ok(),
                    model_version: answer.model_version.clone(),
                    code: answer.error_code().map(str::to_owned),
                    waited_ms: now.mono_ms.saturating_sub(request.asked_at),
                });
                out.push(Output::Ml(MlOutcome::Answered(answer)));
            }
            Matched::Unknown { cid } => out.event(Event::MlAnswerIgnored { cid }),
            Matched::Malformed { error, cid, request } => {
                out.event(Event::MlAnswerMalformed { cid, error: error.clone() });
                if let Some(request) = request {
                    self.give_up(request, GiveUp::MalformedAnswer(error), out);
                }
            }
        }
    }

    /// Give up the requests whose wait is over.
    pub(super) fn expire_inference(&mut self, now: Now, out: &mut Out) {
        for request in self.ml.expire(now.mono_ms) {
            self.give_up(request, GiveUp::Deadline, out);
        }
    }

    fn give_up(&mut self, request: Pending, reason: GiveUp, out: &mut Out) {
        // Never sent (the link was down all along): the server need not work on it.
        self.outbox.withdraw(&Kind::MlInfer { cid: request.cid.clone() });
        out.event(Event::MlGaveUp {
            cid: request.cid.clone(),
            model: request.model.clone(),
            reason: reason.as_str().to_owned(),
        });
        out.push(Output::Ml(MlOutcome::GaveUp { cid: request.cid, model: request.model, reason }));
    }
}
