//! One device's session with the broker, as a state machine without I/O or clocks.
//!
//! The shell (the simulator's tokio loop, the ESP32's blocking loop) owns the sockets,
//! the timers, the token endpoint, flash and OTA partitions. It tells the session what
//! happened (`on_token`, `on_link_up`, `on_data`, `on_closed`, `on_tick`, download
//! progress), always with the current time, and performs the [`Output`]s it gets back,
//! in order. [`Session::next_wakeup`] says when to call [`Session::on_tick`] at the latest.
//!
//! The session owns every decision both shells must make the same way:
//!
//! - connecting: token → WebSocket → CONNECT (`clean_session = false`, client id = device
//!   id) → CONNACK within a bound → SUBSCRIBE; full-jitter backoff reset only by a stable
//!   connection (CONNACK and the first acknowledged heartbeat); a server's `Retry-After`
//!   is a floor;
//! - refusals: CONNACK 4/5 → a new token (a fixed token: stop), 1/2 → stop (a
//!   configuration retrying cannot fix), others → retry; close codes from
//!   `close-codes.json`, taken from the close frame or, when the transport cannot read
//!   application codes (esp_websocket_client), from the `sys` notice that precedes them;
//! - the outbox: QoS 1 publishes leave only with their PUBACK, in order, with DUP when
//!   sent again after a reconnect;
//! - token refresh while connected (at 80 % of the lifetime or on `token-expiring`), then
//!   an immediate reconnect keeping the MQTT session;
//! - heartbeats, telemetry, keepalive pings;
//! - commands, run once per `cid` across redeliveries, results at QoS 1; a `reboot` is
//!   performed once its result is acknowledged (at most [`REBOOT_FLUSH_MS`] of waiting)
//!   and its delay passed, after saving the command memory and the outbox;
//! - OTA ([`ota`]): offers, reports, the reboot into a new image, and its confirmation or
//!   rollback;
//! - inference requests ([`Session::request_inference`]) and their answers, matched by
//!   cid, each ending exactly once as [`Output::Ml`] (answer or give-up).
//!
//! A reboot ends a session: the shell reboots (the simulator in-process) and boots a new
//! one with [`Session::boot`], which restores what was saved. RAM state (token, backoff,
//! heartbeat sequence and uptime) starts over, as on the board.

mod connected;
mod link;
mod ml;
mod ota;
mod output;
mod reboot;
mod token;

#[cfg(test)]
mod tests;

use crate::backoff::{Backoff, BackoffConfig};
use crate::close_codes::CloseCodes;
use crate::commands::CommandProcessor;
use crate::heartbeat::HeartbeatScheduler;
use crate::ml::{Deadlines, MlClient, DEFAULT_PENDING_CAPACITY};
use crate::mqtt::{self, Connect, Decoder};
use crate::outbox::{self, Outbox};
use crate::platform::{Board, Rng, Storage};
use crate::topics::{DeviceTopics, TopicMap};

pub use ota::{OtaSettings, DEFAULT_CONFIRM_TIMEOUT_MS, DEFAULT_PARTITION_SIZE, PROGRESS_STEP};
pub use output::{DownloadFailure, Event, ImageDownload, MlOutcome, OtaWork, Output, RebootKind, Severity};
pub use token::{IssuedToken, Jwt, TokenError, MIN_REFRESH_INTERVAL_MS, REFRESH_PERCENT, REFRESH_RETRY_MS};

use ota::OtaAgent;
use reboot::PlannedReboot;
use token::HeldToken;

/// Unacknowledged QoS 1 publishes kept.
pub const OUTBOX_CAPACITY: usize = 256;
/// Before a reboot, how long OTA reports (`rebooting`, `rolled-back`) and a `reboot`
/// command's result get to be acknowledged, so the server hears about the reboot
/// before the device goes quiet.
pub const REBOOT_FLUSH_MS: u64 = 5_000;

/// The time, passed into every call: the session reads no clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (any origin; uptime is measured from [`Session::boot`]).
    pub mono_ms: u64,
    /// Unix time in milliseconds (command expiry, `sample_sensors`' `at`).
    pub unix_ms: u64,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub device_id: String,
    pub keepalive_s: u16,
    /// Heartbeat interval at boot; the core's default when `None`. A
    /// `set_heartbeat_interval` command changes it until the next reboot.
    pub heartbeat_s: Option<u32>,
    /// Telemetry interval (sensor readings at QoS 0); 0: none.
    pub telemetry_s: u32,
    pub connack_timeout_ms: u64,
    pub backoff: BackoffConfig,
    /// Whether the token source can issue another token (`false`: a fixed token,
    /// which makes every reason to replace it fatal).
    pub token_refreshable: bool,
    /// The version in slot 0 when storage holds no OTA record yet (first start).
    pub factory_version: String,
    pub ota: OtaSettings,
    /// How many recent command ids are remembered for duplicate detection.
    pub recent_commands: usize,
    /// Largest MQTT packet accepted from the broker.
    pub max_packet: usize,
    /// Inference requests waiting for an answer at most; a new one gives up the oldest.
    pub ml_pending: usize,
}

impl SessionConfig {
    pub fn new(device_id: &str, factory_version: &str, ota: OtaSettings) -> Self {
        SessionConfig {
            device_id: device_id.to_owned(),
            keepalive_s: 60,
            heartbeat_s: None,
            telemetry_s: 0,
            connack_timeout_ms: 10_000,
            backoff: BackoffConfig::default(),
            token_refreshable: true,
            factory_version: factory_version.to_owned(),
            ota,
            recent_commands: 32,
            max_packet: 64 * 1024,
            ml_pending: DEFAULT_PENDING_CAPACITY,
        }
    }
}

impl SessionConfig {
    /// Refuses what [`Session::boot`] would refuse: a device id outside the topic
    /// contract, a heartbeat interval out of range.
    pub fn check(&self) -> Result<(), String> {
        self.device_topics()?;
        if let Some(s) = self.heartbeat_s {
            HeartbeatScheduler::new("-").set_interval_s(s).map_err(|e| format!("heartbeat interval: {e}"))?;
        }
        Ok(())
    }

    fn device_topics(&self) -> Result<DeviceTopics, String> {
        TopicMap::load()
            .and_then(|m| m.device_topics(&self.device_id))
            .map_err(|e| format!("device {:?}: {e:?}", self.device_id))
    }
}

/// What survives a reboot besides storage: the board itself.
pub struct Hardware {
    pub board: Box<dyn Board + Send>,
    /// Backoff jitter.
    pub rng: Box<dyn Rng + Send>,
}

/// Why a link could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFailure {
    pub error: String,
    /// The server's `Retry-After` (HTTP 429/503 at the upgrade), a floor for the backoff.
    pub retry_after_ms: Option<u64>,
    /// The token itself cannot be offered: get another one.
    pub token_refused: bool,
}

impl LinkFailure {
    pub fn new(error: impl Into<String>) -> Self {
        LinkFailure { error: error.into(), retry_after_ms: None, token_refused: false }
    }
}

/// How an open link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEnd {
    /// Closed by the peer; `code` when the transport could read a close frame.
    Closed { code: Option<u16>, reason: String },
    /// Transport failure (I/O, protocol violation).
    Failed(String),
}

/// Where the link stands.
enum Link {
    /// Waiting until `retry_at` to connect (at once after a planned end).
    Offline {
        retry_at: u64,
    },
    FetchingToken,
    Opening,
    AwaitingConnAck {
        deadline: u64,
    },
    Up(Box<connected::Conn>),
    /// Stopped, shut down or rebooted: the session does nothing more.
    Ended,
}

pub struct Session {
    cfg: SessionConfig,
    topics: DeviceTopics,
    close_codes: CloseCodes,
    hw: Hardware,
    boot_ms: u64,
    backoff: Backoff,
    heartbeat: HeartbeatScheduler,
    commands: CommandProcessor,
    outbox: Outbox,
    decoder: Decoder,
    token: Option<HeldToken>,
    /// A download that needs the token, held back until one arrives (a download
    /// resumed at boot, before the first token).
    download_awaiting_token: Option<Box<ImageDownload>>,
    ota: OtaAgent,
    ml: MlClient,
    planned_reboot: Option<PlannedReboot>,
    link: Link,
}

/// Outputs collected by one call, consecutive sends packed into one frame.
#[derive(Default)]
pub(crate) struct Out(Vec<Output>);

impl Out {
    fn send(&mut self, bytes: Vec<u8>) {
        match self.0.last_mut() {
            Some(Output::Send(frame)) => frame.extend(bytes),
            _ => self.0.push(Output::Send(bytes)),
        }
    }
    fn push(&mut self, o: Output) {
        self.0.push(o);
    }
    fn event(&mut self, e: Event) {
        self.0.push(Output::Event(e));
    }
}

/// Write-only [`Storage`] over outputs, so the core's `save(&mut dyn Storage)` helpers
/// become `Save` outputs. Reads find nothing: the session reads storage at boot only.
pub(crate) struct Writes<'a>(pub &'a mut Out);

impl Storage for Writes<'_> {
    fn get(&self, _key: &str) -> Option<Vec<u8>> {
        None
    }
    fn set(&mut self, key: &str, value: &[u8]) {
        self.0.push(Output::Save { key: key.to_owned(), value: value.to_vec() });
    }
    /// An empty value: every record the session keeps reads an empty value as absent.
    fn remove(&mut self, key: &str) {
        self.set(key, &[]);
    }
}

impl Session {
    /// Power-on or reboot: restores the OTA record (and lets the bootloader decide what
    /// runs: `image_starts(version)` says whether that image comes up), the command
    /// memory and the outbox saved before a planned reboot; then asks for a token.
    /// `after`: the reboot that led here, `None` at power-on.
    pub fn boot(
        cfg: SessionConfig,
        mut hw: Hardware,
        storage: &dyn Storage,
        image_starts: &dyn Fn(&str) -> bool,
        after: Option<RebootKind>,
        now: Now,
    ) -> Result<(Session, Vec<Output>), String> {
        cfg.check()?;
        let topics = cfg.device_topics()?;
        let mut out = Out::default();
        let ota = OtaAgent::boot(cfg.ota.clone(), storage, &cfg.factory_version, image_starts, now.mono_ms, &mut out);
        let mut heartbeat = HeartbeatScheduler::new(ota.running_version());
        if let Some(s) = cfg.heartbeat_s {
            heartbeat.set_interval_s(s).expect("checked above");
        }
        let mut commands = CommandProcessor::new(cfg.recent_commands);
        commands.restore(storage);
        let mut outbox = Outbox::new(OUTBOX_CAPACITY);
        if outbox.restore(&storage.get(outbox::STORAGE_KEY).unwrap_or_default()) > 0 {
            // Delivered from RAM from now on; a crash must not send them again later.
            Writes(&mut out).remove(outbox::STORAGE_KEY);
        }
        out.event(Event::Booted { fw: ota.running_version().to_owned(), ota: ota.state(), after });
        let ml = MlClient::new(&mut *hw.rng, cfg.ml_pending, Deadlines::from_contract());
        let mut s = Session {
            topics,
            close_codes: CloseCodes::load(),
            boot_ms: now.mono_ms,
            backoff: Backoff::new(cfg.backoff),
            decoder: Decoder::new(cfg.max_packet),
            heartbeat,
            commands,
            outbox,
            token: None,
            download_awaiting_token: None,
            ota,
            ml,
            planned_reboot: None,
            link: Link::Offline { retry_at: now.mono_ms },
            hw,
            cfg,
        };
        s.advance(now, &mut out);
        s.attach_token(&mut out);
        Ok((s, out.0))
    }

    /// The board, handed to the session booted after a reboot (the simulator reboots
    /// in-process).
    pub fn into_hardware(self) -> Hardware {
        self.hw
    }

    /// The firmware version running now.
    pub fn running_version(&self) -> &str {
        self.ota.running_version()
    }

    /// Whether the session is done (stopped, shut down or rebooted).
    fn has_ended(&self) -> bool {
        matches!(self.link, Link::Ended)
    }

    /// The latest monotonic time at which [`Session::on_tick`] must be called.
    pub fn next_wakeup(&self) -> Option<u64> {
        let link = match &self.link {
            Link::Offline { retry_at } => earliest(Some(*retry_at), self.planned_reboot.as_ref().map(|p| p.at)),
            Link::AwaitingConnAck { deadline } => Some(*deadline),
            Link::Up(conn) => self.connected_wakeup(conn),
            Link::FetchingToken | Link::Opening | Link::Ended => None,
        };
        let own = earliest(self.ota.next_wakeup(), self.ml.next_wakeup()).filter(|_| !self.has_ended());
        earliest(link, own)
    }

    /// Time passed.
    pub fn on_tick(&mut self, now: Now) -> Vec<Output> {
        self.run(now, |_, _| {})
    }

    /// The answer to [`Output::FetchToken`].
    pub fn on_token(&mut self, now: Now, result: Result<IssuedToken, TokenError>) -> Vec<Output> {
        self.run(now, |s, out| s.token_arrived(now, result, out))
    }

    /// The link asked for by [`Output::OpenLink`] is open.
    pub fn on_link_up(&mut self, now: Now) -> Vec<Output> {
        self.run(now, |s, out| {
            if matches!(s.link, Link::Opening) {
                let connect =
                    Connect { client_id: &s.cfg.device_id, keep_alive_s: s.cfg.keepalive_s, clean_session: false };
                out.send(mqtt::encode_connect(&connect).expect("a valid device id fits a CONNECT"));
                s.decoder = Decoder::new(s.cfg.max_packet);
                s.link = Link::AwaitingConnAck { deadline: now.mono_ms + s.cfg.connack_timeout_ms };
            }
        })
    }

    /// The link asked for by [`Output::OpenLink`] could not be opened.
    pub fn on_link_failed(&mut self, now: Now, failure: LinkFailure) -> Vec<Output> {
        self.run(now, |s, out| {
            if !matches!(s.link, Link::Opening) {
                return;
            }
            s.link_lost(false, failure.error, out);
            if failure.token_refused && s.drop_token("the token cannot be offered", out) {
                return;
            }
            s.schedule_reconnect(now, failure.retry_after_ms, out);
        })
    }

    /// Bytes arrived on the link (any number of whole or partial MQTT packets).
    pub fn on_data(&mut self, now: Now, bytes: &[u8]) -> Vec<Output> {
        self.run(now, |s, out| s.receive(now, bytes, out))
    }

    /// The link ended without the session asking.
    pub fn on_closed(&mut self, now: Now, end: LinkEnd) -> Vec<Output> {
        self.run(now, |s, out| s.closed(now, end, out))
    }

    /// `received` bytes of the image asked for by [`OtaWork::Download`] are in the slot.
    pub fn on_download_progress(&mut self, now: Now, received: u64) -> Vec<Output> {
        self.run(now, |s, out| s.ota.on_progress(received, out))
    }

    /// The download asked for by [`OtaWork::Download`] ended.
    pub fn on_download_done(&mut self, now: Now, result: Result<(), DownloadFailure>) -> Vec<Output> {
        self.run(now, |s, out| s.ota.on_download_done(result, out))
    }

    /// Stop now (the process exits): DISCONNECT if connected, close the link.
    pub fn shutdown(&mut self) -> Vec<Output> {
        let mut out = Out::default();
        self.end_link(&mut out);
        self.link = Link::Ended;
        out.0
    }

    /// Run one input, then whatever became due.
    fn run(&mut self, now: Now, input: impl FnOnce(&mut Session, &mut Out)) -> Vec<Output> {
        let mut out = Out::default();
        if !self.has_ended() {
            input(self, &mut out);
            self.advance(now, &mut out);
            self.attach_token(&mut out);
        }
        out.0
    }

    /// Give the downloads that want it (same origin as the server) the current token;
    /// without one, hold the download back and hand it out once a token arrives.
    fn attach_token(&mut self, out: &mut Out) {
        let mut i = 0;
        while i < out.0.len() {
            if let Output::Ota(OtaWork::Download(job)) = &mut out.0[i] {
                if job.wants_token && job.bearer.is_none() {
                    if let Some(t) = self.token.as_ref() {
                        job.bearer = Some(t.jwt.clone());
                    } else if let Output::Ota(OtaWork::Download(job)) = out.0.remove(i) {
                        self.download_awaiting_token = Some(job);
                        continue;
                    }
                }
            }
            i += 1;
        }
        if let Some(t) = self.token.as_ref() {
            if let Some(mut job) = self.download_awaiting_token.take() {
                job.bearer = Some(t.jwt.clone());
                out.push(Output::Ota(OtaWork::Download(job)));
            }
        }
    }

    /// Act on the clock: OTA deadline and reports, inference give-ups, then the link's
    /// own timers.
    fn advance(&mut self, now: Now, out: &mut Out) {
        if self.has_ended() {
            return;
        }
        self.ota.tick(now.mono_ms, out);
        self.publish_ota_reports(now, out);
        self.expire_inference(now, out);
        match self.link {
            Link::Offline { retry_at } => {
                if let Some(kind) = self.reboot_due(now) {
                    self.reboot(kind, out);
                } else if retry_at <= now.mono_ms {
                    self.dial(now, out);
                }
            }
            Link::AwaitingConnAck { deadline } if deadline <= now.mono_ms => {
                let why = format!("no CONNACK within {} s", self.cfg.connack_timeout_ms / 1000);
                self.fail_link(now, why, out);
            }
            Link::Up(_) => self.tick_connected(now, out),
            _ => {}
        }
    }

    fn publish_ota_reports(&mut self, now: Now, out: &mut Out) {
        for report in self.ota.take_reports() {
            let topic = self.topics.ota_status.clone();
            self.publish_qos1(now, &topic, report, outbox::Kind::OtaStatus, out);
        }
    }
}

/// The earlier of two optional times.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
