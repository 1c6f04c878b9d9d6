//! What the session asks of its shell ([`Output`]) and what it tells it ([`Event`]).
//!
//! Outputs are performed in order: a `Save` before a `Reboot` must reach NVS first.
//! Events are for logs and counters only; both shells print them through
//! [`Event::describe`], so a device and the simulator log the same lines.

use std::fmt;

use crate::ml::{GiveUp, MlAnswer};
use crate::ota::{ImageHasher, SlotState};
use crate::session::token::Jwt;

/// Something the shell must do.
#[derive(Debug)]
pub enum Output {
    /// Write these bytes to the link as one binary WebSocket frame (one or more whole
    /// MQTT packets).
    Send(Vec<u8>),
    /// Open a link offering `Sec-WebSocket-Protocol: mqtt, auth.<jwt>`, then call
    /// [`super::Session::on_link_up`] or [`super::Session::on_link_failed`].
    OpenLink(Jwt),
    /// Close the link (the session considers it gone from now on; a DISCONNECT was sent
    /// first when the session ended it in order).
    CloseLink,
    /// Ask the token endpoint for a device token, then call [`super::Session::on_token`].
    FetchToken,
    /// Write `value` under `key` in persistent storage (NVS).
    Save { key: String, value: Vec<u8> },
    /// Flash or OTA partition work.
    Ota(OtaWork),
    /// Reboot now; what had to survive was saved by the `Save`s before. After the
    /// reboot a new session boots ([`super::Session::boot`]).
    Reboot(RebootKind),
    /// Give up for good (credentials gone, a refusal retrying cannot fix). Nothing
    /// follows.
    Stop(String),
    /// An inference request asked for with [`super::Session::request_inference`] is
    /// done: hand this to whoever asked.
    Ml(MlOutcome),
    /// For logs and counters.
    Event(Event),
}

/// How an inference request ended: exactly one per request.
#[derive(Debug, Clone, PartialEq)]
pub enum MlOutcome {
    /// The server's answer (`ok` or an error such as `timeout` or `model_unknown`).
    Answered(MlAnswer),
    /// No answer will be used (see [`GiveUp`]).
    GaveUp { cid: String, model: String, reason: GiveUp },
}

impl MlOutcome {
    /// The request's cid, as [`super::Session::request_inference`] returned it.
    pub fn cid(&self) -> &str {
        match self {
            MlOutcome::Answered(a) => &a.cid,
            MlOutcome::GaveUp { cid, .. } => cid,
        }
    }
}

/// Why the device reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootKind {
    /// A `reboot` command, once its result was acknowledged (or not in time) and its
    /// delay passed.
    Command,
    /// A verified image waits in the other slot, which is already the boot slot.
    OtaInstall,
    /// The running image was not confirmed in time: mark it invalid and boot the
    /// previous one (`esp_ota_mark_app_invalid_rollback_and_reboot`).
    OtaRollback,
}

impl RebootKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RebootKind::Command => "command",
            RebootKind::OtaInstall => "ota-install",
            RebootKind::OtaRollback => "ota-rollback",
        }
    }
}

/// OTA work only the shell can do.
#[derive(Debug)]
pub enum OtaWork {
    /// Erase an app slot (an accepted offer's target, or a failed image).
    EraseSlot(u8),
    /// Fetch an image into a slot, then report with
    /// [`super::Session::on_download_progress`] and, exactly once,
    /// [`super::Session::on_download_done`].
    Download(Box<ImageDownload>),
    /// The running image proved itself: keep it (`esp_ota_mark_app_valid_cancel_rollback`).
    ConfirmImage,
}

/// One image to stream into `slot`.
pub struct ImageDownload {
    pub rollout: String,
    /// Absolute `http[s]://` URL: the manifest's, a path resolved against the server.
    pub url: String,
    pub size: u64,
    pub sha256: String,
    pub slot: u8,
    /// Bytes `0..from` are already in the slot (a download resumed after a restart):
    /// feed them to `hasher` from flash, then fetch the rest with `Range`. A shell that
    /// cannot resume starts over and reports progress from 0.
    pub from: u64,
    /// Every byte of the image goes through it; [`ImageHasher::finish`] decides between
    /// `Ok` and [`DownloadFailure::Verify`].
    pub hasher: ImageHasher,
    /// The device's current token, to send as `Authorization: Bearer <jwt>` on every
    /// request of this download (Range resumes too). Set only when `url` has the
    /// origin of the server the device connects to ([`crate::ota_download::same_origin`]):
    /// `None` for any other host, which must never see it. A [`Secret`]: never logged.
    pub bearer: Option<Jwt>,
    /// Whether the session is to fill in `bearer` (the agent decides, the session holds
    /// the token).
    pub(crate) wants_token: bool,
}

impl fmt::Debug for ImageDownload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageDownload")
            .field("rollout", &self.rollout)
            .field("url", &self.url)
            .field("size", &self.size)
            .field("slot", &self.slot)
            .field("from", &self.from)
            .field("bearer", &self.bearer)
            .finish_non_exhaustive()
    }
}

/// How a download ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadFailure {
    /// The image could not be fetched (or written).
    Fetch(String),
    /// All bytes arrived but the size or SHA-256 check failed.
    Verify(String),
}

/// Log severity of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Debug,
    Info,
    Warn,
    Error,
}

/// Something that happened, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The session booted: `after` is the reboot that led here, `None` at power-on.
    Booted {
        fw: String,
        ota: SlotState,
        after: Option<RebootKind>,
    },
    /// The next connection attempt waits `delay_ms`; `attempt` counts the draws since
    /// the last stable connection, this one included.
    Backoff {
        delay_ms: u64,
        attempt: u32,
    },
    ConnectFailed {
        error: String,
    },
    TokenObtained,
    /// A new token arrived while connected: the session reconnects with it at once.
    TokenRefreshed,
    /// No token and none could be fetched.
    TokenUnavailable {
        error: String,
    },
    /// A refresh failed; `retry_in_s: None` means the current token is used meanwhile.
    TokenRefreshFailed {
        error: String,
        retry_in_s: Option<u64>,
    },
    TokenRefreshDeferred {
        in_ms: u64,
    },
    TokenNotRefreshable,
    Connected {
        session_present: bool,
        attempt: u32,
        fw: String,
    },
    ConnackRefused {
        return_code: u8,
    },
    /// CONNACK and the first acknowledged heartbeat: the backoff starts over.
    Stable {
        rtt_ms: u64,
    },
    /// A connection that had its CONNACK ended.
    Disconnected,
    Closed {
        code: Option<u16>,
        name: Option<String>,
        reason: String,
    },
    LinkFailed {
        error: String,
    },
    SubscribeRefused {
        topic: String,
    },
    SubAckUnknown {
        packet_id: u16,
    },
    PubAckUnknown {
        packet_id: u16,
    },
    Resent {
        topic: String,
        packet_id: u16,
    },
    OutboxFull {
        dropped_topic: String,
    },
    HeartbeatSent {
        seq: u32,
    },
    HeartbeatAcked {
        rtt_ms: u64,
    },
    HeartbeatInvalid {
        error: String,
    },
    TelemetrySent,
    /// The board's readings break telemetry.schema.json; nothing was sent.
    TelemetryInvalid {
        error: String,
    },
    CommandRun {
        cid: String,
        ok: bool,
        code: Option<String>,
    },
    /// A redelivered cid: the stored result was sent again, nothing ran.
    CommandDuplicate {
        cid: String,
    },
    CommandDropped {
        error: String,
    },
    CmdResultAcked {
        cid: String,
    },
    RebootPlanned {
        cid: String,
        delay_s: u32,
    },
    Rebooting {
        kind: RebootKind,
        cid: Option<String>,
        result_acked: Option<bool>,
    },
    SysNotice {
        kind: String,
        reason: String,
        close_code: Option<u16>,
        expires_at: Option<u64>,
    },
    SysMalformed {
        error: String,
    },
    /// An inference request was queued on `ml/infer`; `deadline_ms` is the server's.
    MlRequested {
        cid: String,
        model: String,
        deadline_ms: u64,
    },
    MlAnswered {
        cid: String,
        ok: bool,
        model_version: String,
        code: Option<String>,
        waited_ms: u64,
    },
    /// An answer for no pending request (given up already, or from before a reboot).
    MlAnswerIgnored {
        cid: String,
    },
    MlAnswerMalformed {
        cid: Option<String>,
        error: String,
    },
    MlGaveUp {
        cid: String,
        model: String,
        reason: String,
    },
    UnexpectedTopic {
        topic: String,
    },
    Stopped {
        reason: String,
    },
    OtaOffer {
        rollout: String,
        version: String,
        size: u64,
        chip: Option<String>,
        running: String,
    },
    OtaOfferDuplicate {
        rollout: String,
    },
    OtaOfferMalformed {
        rollout: Option<String>,
        error: String,
    },
    OtaRefused {
        rollout: String,
        error: String,
    },
    OtaAccepted {
        rollout: String,
        version: String,
        slot: u8,
    },
    OtaResume {
        rollout: String,
        received: u64,
    },
    OtaProgress {
        rollout: String,
        progress: u8,
        received: u64,
    },
    OtaVerified {
        rollout: String,
        version: String,
    },
    OtaFailed {
        rollout: String,
        error: String,
        running: String,
    },
    /// A new image booted and waits for its confirmation.
    OtaPendingVerify {
        version: String,
    },
    OtaConfirmTimeout {
        version: String,
        after_s: u64,
    },
    OtaSuccess {
        rollout: String,
        version: String,
    },
    OtaRolledBack {
        rollout: String,
        error: String,
    },
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

impl Event {
    /// Severity, a stable event name and its fields, for a log line such as
    /// `event=backoff delay_ms=812 attempt=1` (the end-to-end tests read some of them).
    pub fn describe(&self) -> (Severity, &'static str, Vec<(&'static str, String)>) {
        use Event as E;
        use Severity::*;
        let s = |v: &dyn ToString| v.to_string();
        match self {
            // Power-on and reboot are told apart: a restarted simulator process is not a reboot.
            E::Booted { fw, ota, after } => (
                Info,
                if after.is_some() { "booted" } else { "started" },
                vec![("fw", s(fw)), ("ota", s(&ota.as_str())), ("after", opt(&after.map(RebootKind::as_str)))],
            ),
            E::Backoff { delay_ms, attempt } => {
                (Debug, "backoff", vec![("delay_ms", s(delay_ms)), ("attempt", s(attempt))])
            }
            E::ConnectFailed { error } => (Warn, "connect-failed", vec![("error", s(error))]),
            E::TokenObtained => (Debug, "token-obtained", vec![]),
            E::TokenRefreshed => (Info, "token-refreshed", vec![("action", s(&"reconnecting"))]),
            E::TokenUnavailable { error } => (Warn, "token-unavailable", vec![("error", s(error))]),
            E::TokenRefreshFailed { error, retry_in_s } => (
                Warn,
                "token-refresh-failed",
                match retry_in_s {
                    Some(r) => vec![("error", s(error)), ("retry_in_s", s(r))],
                    None => vec![("error", s(error)), ("using", s(&"current token"))],
                },
            ),
            E::TokenRefreshDeferred { in_ms } => (Debug, "token-refresh-deferred", vec![("in_ms", s(in_ms))]),
            E::TokenNotRefreshable => {
                (Warn, "token-not-refreshable", vec![("note", s(&"the broker will close at the token's exp"))])
            }
            E::Connected { session_present, attempt, fw } => (
                Info,
                "connected",
                vec![("session_present", s(session_present)), ("attempt", s(attempt)), ("fw", s(fw))],
            ),
            E::ConnackRefused { return_code } => (Warn, "connack-refused", vec![("return_code", s(return_code))]),
            E::Stable { rtt_ms } => (Info, "stable", vec![("rtt_ms", s(rtt_ms))]),
            E::Disconnected => (Debug, "disconnected", vec![]),
            E::Closed { code, name, reason } => {
                (Info, "closed", vec![("code", opt(code)), ("name", opt(name)), ("reason", s(reason))])
            }
            E::LinkFailed { error } => (Warn, "link-failed", vec![("error", s(error))]),
            E::SubscribeRefused { topic } => (Warn, "subscribe-refused", vec![("topic", s(topic))]),
            E::SubAckUnknown { packet_id } => (Debug, "suback-unknown", vec![("packet_id", s(packet_id))]),
            E::PubAckUnknown { packet_id } => (Debug, "puback-unknown", vec![("packet_id", s(packet_id))]),
            E::Resent { topic, packet_id } => (Debug, "resend", vec![("topic", s(topic)), ("packet_id", s(packet_id))]),
            E::OutboxFull { dropped_topic } => (Warn, "outbox-full", vec![("dropped_topic", s(dropped_topic))]),
            E::HeartbeatSent { seq } => (Debug, "heartbeat", vec![("seq", s(seq))]),
            E::HeartbeatAcked { rtt_ms } => (Debug, "heartbeat-acked", vec![("rtt_ms", s(rtt_ms))]),
            E::HeartbeatInvalid { error } => (Error, "heartbeat-invalid", vec![("error", s(error))]),
            E::TelemetrySent => (Debug, "telemetry", vec![]),
            E::TelemetryInvalid { error } => (Error, "telemetry-invalid", vec![("error", s(error))]),
            E::CommandRun { cid, ok, code } => (Info, "cmd", vec![("cid", s(cid)), ("ok", s(ok)), ("code", opt(code))]),
            E::CommandDuplicate { cid } => {
                (Info, "cmd-duplicate", vec![("cid", s(cid)), ("action", s(&"re-sending stored result"))])
            }
            E::CommandDropped { error } => (Warn, "cmd-dropped", vec![("error", s(error))]),
            E::CmdResultAcked { cid } => (Debug, "cmd-result-acked", vec![("cid", s(cid))]),
            E::RebootPlanned { cid, delay_s } => (Info, "reboot", vec![("cid", s(cid)), ("delay_s", s(delay_s))]),
            E::Rebooting { kind, cid, result_acked } => (
                Info,
                "rebooting",
                vec![("cause", s(&kind.as_str())), ("cid", opt(cid)), ("result_acked", opt(result_acked))],
            ),
            E::SysNotice { kind, reason, close_code, expires_at } => (
                Info,
                "sys-notice",
                vec![
                    ("type", s(kind)),
                    ("reason", s(reason)),
                    ("close_code", opt(close_code)),
                    ("expires_at", opt(expires_at)),
                ],
            ),
            E::SysMalformed { error } => (Warn, "sys-malformed", vec![("error", s(error))]),
            E::MlRequested { cid, model, deadline_ms } => {
                (Info, "ml-request", vec![("cid", s(cid)), ("model", s(model)), ("deadline_ms", s(deadline_ms))])
            }
            E::MlAnswered { cid, ok, model_version, code, waited_ms } => (
                Info,
                "ml-result",
                vec![
                    ("cid", s(cid)),
                    ("ok", s(ok)),
                    ("model_version", s(model_version)),
                    ("code", opt(code)),
                    ("waited_ms", s(waited_ms)),
                ],
            ),
            E::MlAnswerIgnored { cid } => {
                (Info, "ml-result-ignored", vec![("cid", s(cid)), ("reason", s(&"no such request pending"))])
            }
            E::MlAnswerMalformed { cid, error } => {
                (Warn, "ml-result-malformed", vec![("cid", opt(cid)), ("error", s(error))])
            }
            E::MlGaveUp { cid, model, reason } => {
                (Warn, "ml-gave-up", vec![("cid", s(cid)), ("model", s(model)), ("reason", s(reason))])
            }
            E::UnexpectedTopic { topic } => (Warn, "unexpected-topic", vec![("topic", s(topic))]),
            E::Stopped { reason } => (Error, "stopped", vec![("reason", s(reason))]),
            E::OtaOffer { rollout, version, size, chip, running } => (
                Info,
                "ota-offer",
                vec![
                    ("rollout", s(rollout)),
                    ("version", s(version)),
                    ("size", s(size)),
                    ("chip", opt(chip)),
                    ("running", s(running)),
                ],
            ),
            E::OtaOfferDuplicate { rollout } => {
                (Info, "ota-offer-duplicate", vec![("rollout", s(rollout)), ("action", s(&"ignored"))])
            }
            E::OtaOfferMalformed { rollout, error } => {
                (Warn, "ota-offer-malformed", vec![("rollout", opt(rollout)), ("error", s(error))])
            }
            E::OtaRefused { rollout, error } => {
                (Warn, "ota-refused", vec![("rollout", s(rollout)), ("error", s(error))])
            }
            E::OtaAccepted { rollout, version, slot } => {
                (Info, "ota-accepted", vec![("rollout", s(rollout)), ("version", s(version)), ("slot", s(slot))])
            }
            E::OtaResume { rollout, received } => {
                (Info, "ota-resume", vec![("rollout", s(rollout)), ("received", s(received))])
            }
            E::OtaProgress { rollout, progress, received } => (
                Info,
                "ota-progress",
                vec![("rollout", s(rollout)), ("progress", s(progress)), ("received", s(received))],
            ),
            E::OtaVerified { rollout, version } => (
                Info,
                "ota-verified",
                vec![("rollout", s(rollout)), ("version", s(version)), ("action", s(&"rebooting"))],
            ),
            E::OtaFailed { rollout, error, running } => {
                (Warn, "ota-failed", vec![("rollout", s(rollout)), ("error", s(error)), ("running", s(running))])
            }
            E::OtaPendingVerify { version } => {
                (Info, "ota-booted", vec![("version", s(version)), ("state", s(&"pending-verify"))])
            }
            E::OtaConfirmTimeout { version, after_s } => {
                (Warn, "ota-confirm-timeout", vec![("version", s(version)), ("after_s", s(after_s))])
            }
            E::OtaSuccess { rollout, version } => {
                (Info, "ota-success", vec![("rollout", s(rollout)), ("version", s(version))])
            }
            E::OtaRolledBack { rollout, error } => {
                (Warn, "ota-rolled-back", vec![("rollout", s(rollout)), ("error", s(error))])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_the_end_to_end_tests_read_keep_their_names_and_fields() {
        let (_, name, fields) = Event::Backoff { delay_ms: 812, attempt: 1 }.describe();
        assert_eq!((name, fields), ("backoff", vec![("delay_ms", "812".into()), ("attempt", "1".into())]));
        let (_, name, fields) = Event::Connected { session_present: true, attempt: 0, fw: "1.0.0".into() }.describe();
        assert_eq!((name, &fields[0]), ("connected", &("session_present", "true".into())));
        assert_eq!(Event::Stable { rtt_ms: 3 }.describe().1, "stable");
        let booted = |after| Event::Booted { fw: "1".into(), ota: SlotState::Idle, after }.describe().1;
        assert_eq!((booted(None), booted(Some(RebootKind::Command))), ("started", "booted"));
        let rebooting = Event::Rebooting { kind: RebootKind::Command, cid: Some("r".into()), result_acked: Some(true) };
        assert_eq!(rebooting.describe().1, "rebooting");
    }
}
