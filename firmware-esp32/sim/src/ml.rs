//! `fleetwire-sim ... ml`: one device connects, asks for inference once, prints the
//! answer on stdout as one JSON line and exits with a status saying how it went
//! (see [`exit_status`]). The request and its matching are the core's
//! ([`fleetwire_core::ml`]), exactly as on the board; this is the process around them.

use std::sync::Arc;

use fleetwire_core::ml::GiveUp;
use fleetwire_core::session::MlOutcome;
use tokio::sync::watch;
use tokio::time::sleep;

use crate::cli::{MlOptions, Options};
use crate::fleet::{stop_signal, Setup, EXIT_USAGE, STOP_GRACE};
use crate::session::{Exit, Shutdown};
use crate::stats::Stats;

/// The answer said `ok: true`.
pub const EXIT_ML_OK: i32 = 0;
/// The answer said `ok: false`, or the device gave up for good (revoked, bad key).
pub const EXIT_ML_ERROR: i32 = 1;
/// No answer: `--timeout-s` passed, the device stopped waiting after the deadline, or
/// the run was interrupted.
pub const EXIT_ML_NO_ANSWER: i32 = 3;

/// How the run ended.
#[derive(Debug)]
pub enum Ending {
    Outcome(MlOutcome),
    /// `--timeout-s` passed before the request ended.
    TimedOut,
    /// Ctrl-C or SIGTERM before the request ended.
    Interrupted,
    /// The device's session ended first.
    DeviceEnded(Exit),
}

/// The line for stdout (the answer, if any) and the exit status.
pub fn exit_status(ending: &Ending) -> (Option<String>, i32) {
    match ending {
        Ending::Outcome(MlOutcome::Answered(a)) => (Some(a.to_json()), if a.ok() { EXIT_ML_OK } else { EXIT_ML_ERROR }),
        Ending::Outcome(MlOutcome::GaveUp { .. }) | Ending::TimedOut | Ending::Interrupted => (None, EXIT_ML_NO_ANSWER),
        Ending::DeviceEnded(_) => (None, EXIT_ML_ERROR),
    }
}

/// What stderr says about an ending without an `ok: true` answer.
fn explain(ending: &Ending, timeout_s: u64) -> Option<String> {
    Some(match ending {
        Ending::Outcome(MlOutcome::Answered(a)) => {
            let e = a.result.as_ref().err()?;
            format!("request {} failed: {}: {}", a.cid, e.code, e.message)
        }
        Ending::Outcome(MlOutcome::GaveUp { cid, reason, .. }) => match reason {
            GiveUp::MalformedAnswer(why) => format!("request {cid}: unreadable answer: {why}"),
            other => format!("request {cid}: no answer ({})", other.as_str()),
        },
        Ending::TimedOut => format!("no answer within {timeout_s} s"),
        Ending::Interrupted => "stop requested before an answer".to_owned(),
        Ending::DeviceEnded(Exit::Stopped(why)) => format!("the device stopped before an answer: {why}"),
        Ending::DeviceEnded(Exit::Shutdown) => "the device shut down before an answer".to_owned(),
    })
}

/// Run `opts` (which has `ml`); returns the process exit code.
pub async fn run(opts: Options, ml: MlOptions) -> i32 {
    crate::log::set_level(opts.log_level);
    let setup = match Setup::prepare(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleetwire-sim: {e}");
            return EXIT_USAGE;
        }
    };
    let Some(device) = opts.devices.first().cloned() else {
        eprintln!("fleetwire-sim: ml needs --device-id");
        return EXIT_USAGE;
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let session = match setup.session(&opts, device, Arc::new(Stats::default()), Shutdown::new(stop_rx)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleetwire-sim: {e}");
            return EXIT_USAGE;
        }
    };
    let (session, answer) = session.with_ml_request(ml.ask);
    let mut device = tokio::spawn(session.run());
    let ending = tokio::select! {
        outcome = answer => match outcome {
            Ok(o) => Ending::Outcome(o),
            // The session ended and dropped the request: its exit says why.
            Err(_) => Ending::DeviceEnded((&mut device).await.unwrap_or_else(|e| Exit::Stopped(e.to_string()))),
        },
        exit = &mut device => Ending::DeviceEnded(exit.unwrap_or_else(|e| Exit::Stopped(e.to_string()))),
        _ = sleep(ml.timeout) => Ending::TimedOut,
        _ = stop_signal() => Ending::Interrupted,
    };
    // Disconnect cleanly (DISCONNECT, close) before exiting.
    let _ = stop_tx.send(true);
    if !device.is_finished() && tokio::time::timeout(STOP_GRACE, &mut device).await.is_err() {
        device.abort();
    }
    if let Some(why) = explain(&ending, ml.timeout.as_secs()) {
        eprintln!("fleetwire-sim: {why}");
    }
    let (line, status) = exit_status(&ending);
    if let Some(line) = line {
        println!("{line}");
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwire_core::ml::{MlAnswer, MlError};
    use serde_json::json;

    fn answered(result: Result<serde_json::Value, MlError>) -> Ending {
        Ending::Outcome(MlOutcome::Answered(MlAnswer { cid: "ml-1".into(), result, model_version: "2".into() }))
    }

    #[test]
    fn the_exit_status_says_whether_an_answer_came_and_whether_it_was_ok() {
        let ok = answered(Ok(json!([{ "score": 0.1 }])));
        let (line, status) = exit_status(&ok);
        assert_eq!(status, EXIT_ML_OK);
        let printed: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(printed, json!({ "cid": "ml-1", "ok": true, "output": [{ "score": 0.1 }], "model_version": "2" }));
        assert_eq!(explain(&ok, 10), None);

        let refused = answered(Err(MlError { code: "model_unknown".into(), message: "no model nope".into() }));
        let (line, status) = exit_status(&refused);
        assert_eq!(status, EXIT_ML_ERROR);
        assert!(line.unwrap().contains("\"model_unknown\""));
        assert!(explain(&refused, 10).unwrap().contains("model_unknown: no model nope"));

        let gave_up =
            Ending::Outcome(MlOutcome::GaveUp { cid: "ml-1".into(), model: "m".into(), reason: GiveUp::Deadline });
        assert_eq!(exit_status(&gave_up), (None, EXIT_ML_NO_ANSWER));
        assert_eq!(exit_status(&Ending::TimedOut), (None, EXIT_ML_NO_ANSWER));
        assert!(explain(&Ending::TimedOut, 7).unwrap().contains("within 7 s"));
        let stopped = Ending::DeviceEnded(Exit::Stopped("revoked".into()));
        assert_eq!(exit_status(&stopped), (None, EXIT_ML_ERROR));
        assert!(explain(&stopped, 10).unwrap().contains("revoked"));
    }
}
