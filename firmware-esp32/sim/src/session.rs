//! One simulated device: the firmware's session engine ([`fleetwire_core::session`])
//! driven by tokio. Everything a device decides is the engine's, exactly as on the
//! ESP32; this file is the I/O around it: the link ([`Connector`]), the token source
//! ([`TokenSource`]), the emulated NVS and flash, the timers, logs and counters.
//!
//! A reboot is in-process: the link is closed, the download stops, and a new engine
//! boots from the emulated NVS (RAM state such as the token, uptime and heartbeat
//! sequence starts over; the board and the flash stay).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetwire_core::ml::MlAsk;
use fleetwire_core::platform::{Rng, Storage, XorShiftRng};
use fleetwire_core::session::{
    self as engine, Event, Hardware, LinkEnd, LinkFailure, MlOutcome, Now, OtaSettings, Output, RebootKind, Severity,
};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::auth::TokenSource;
use crate::device::SimBoard;
use crate::flash::DeviceFlash;
use crate::handshake::HandshakeError;
use crate::log::{self, Level};
use crate::ota::{DownloadNews, OtaConfig, OtaIo};
use crate::stats::{inc, Stats};
use crate::transport::{ConnectError, Connector, Link, LinkEvent};

/// Bound on one frame send; a broker that stops reading must not freeze the device.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How many recent command ids a simulated device remembers.
const RECENT_COMMANDS: usize = 64;
/// Largest MQTT packet accepted from the broker.
const MAX_PACKET: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Every setting the engine decides with. Its `token_refreshable` is the token
    /// source's [`TokenSource::can_refresh`], set by [`Session::new`].
    pub engine: engine::SessionConfig,
    /// Where the emulated NVS and flash live, the simulated bootloader, downloads.
    pub ota: OtaConfig,
    /// Seeds the backoff jitter and the sensor.
    pub seed: u64,
}

impl SessionConfig {
    /// Firmware `1.0.0` at first start (after that the persisted OTA state says what
    /// runs), an `esp32` chip refusing every OTA offer (no public key), telemetry every 60 s.
    pub fn new(device_id: &str) -> Self {
        let mut engine = engine::SessionConfig::new(device_id, "1.0.0", OtaSettings::new(None, "esp32"));
        engine.telemetry_s = 60;
        engine.recent_commands = RECENT_COMMANDS;
        engine.max_packet = MAX_PACKET;
        SessionConfig {
            engine,
            ota: OtaConfig::new(std::env::temp_dir().join(format!("fleetwire-sim-{}", std::process::id()))),
            seed: 1,
        }
    }
}

/// Why a device's task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop; a DISCONNECT was sent if connected.
    Shutdown,
    /// Gave up: credentials revoked or rejected, or a refusal retrying cannot fix.
    Stopped(String),
}

/// Fleet-wide stop signal.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new(rx: watch::Receiver<bool>) -> Self {
        Shutdown(rx)
    }
    /// Resolves once stop is requested (or the sender is gone). Cancel-safe.
    pub async fn wait(&mut self) {
        loop {
            if *self.0.borrow_and_update() {
                return;
            }
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }
}

pub struct Session<C: Connector, T: TokenSource> {
    cfg: SessionConfig,
    connector: C,
    tokens: T,
    link: Option<C::Link>,
    /// The emulated NVS (the same files as the OTA I/O's).
    nvs: DeviceFlash,
    ota: OtaIo,
    rng: Box<dyn Rng + Send>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    /// Origin of the engine's monotonic milliseconds.
    epoch: Instant,
    ever_connected: bool,
    /// The one inference request of `fleetwire-sim ... ml`.
    ml: Option<MlRequest>,
}

/// An inference request asked once the device is first connected; its end goes to `done`.
struct MlRequest {
    ask: MlAsk,
    /// Set once asked.
    cid: Option<String>,
    done: Option<oneshot::Sender<MlOutcome>>,
}

/// What one output leads to.
enum Next {
    More(Vec<Output>),
    Reboot(RebootKind),
    Exit(Exit),
}

impl<C: Connector, T: TokenSource> Session<C, T> {
    pub fn new(
        mut cfg: SessionConfig,
        connector: C,
        tokens: T,
        stats: Arc<Stats>,
        shutdown: Shutdown,
    ) -> Result<Self, String> {
        cfg.engine.token_refreshable = tokens.can_refresh();
        cfg.engine.check().map_err(|e| format!("device {:?}: {e}", cfg.engine.device_id))?;
        Ok(Session {
            ota: OtaIo::open(&cfg.engine.device_id, &cfg.ota, cfg.seed)?,
            nvs: DeviceFlash::open(&cfg.ota.state_dir, &cfg.engine.device_id)?,
            rng: Box::new(XorShiftRng::new(cfg.seed)),
            link: None,
            connector,
            tokens,
            stats,
            shutdown,
            epoch: Instant::now(),
            ever_connected: false,
            ml: None,
            cfg,
        })
    }

    /// Ask for inference once the device is connected (CONNACK); the receiver gets how
    /// the request ended. A reboot in between loses the request (as on the board: the
    /// table of pending requests is RAM), and with it the answer.
    pub fn with_ml_request(mut self, ask: MlAsk) -> (Self, oneshot::Receiver<MlOutcome>) {
        let (tx, rx) = oneshot::channel();
        self.ml = Some(MlRequest { ask, cid: None, done: Some(tx) });
        (self, rx)
    }

    /// Replace the jitter source (tests use one that always picks the window's top).
    pub fn with_rng(mut self, rng: impl Rng + Send + 'static) -> Self {
        self.rng = Box::new(rng);
        self
    }

    fn now(&self) -> Now {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Now { mono_ms: (Instant::now() - self.epoch).as_millis() as u64, unix_ms }
    }

    fn boot(&mut self, hw: Hardware, after: Option<RebootKind>) -> Result<(engine::Session, Vec<Output>), Exit> {
        let ota = self.cfg.ota.clone();
        let cfg = self.cfg.engine.clone();
        engine::Session::boot(cfg, hw, &self.nvs, &|v| ota.image_starts(v), after, self.now()).map_err(Exit::Stopped)
    }

    /// Run until shutdown or a fatal refusal.
    pub async fn run(mut self) -> Exit {
        // A different stream than the jitter's, so sensor values and delays are unrelated.
        let board = SimBoard::new(self.cfg.seed ^ 0x5EED_5E45_0000_0001);
        let rng = std::mem::replace(&mut self.rng, Box::new(XorShiftRng::new(0)));
        let (mut session, first) = match self.boot(Hardware { board: Box::new(board), rng }, None) {
            Ok(booted) => booted,
            Err(exit) => return exit,
        };
        let mut queue = VecDeque::from(first);
        loop {
            while let Some(output) = queue.pop_front() {
                match self.perform(&mut session, output).await {
                    Next::More(more) => queue.extend(more),
                    Next::Reboot(kind) => {
                        // Whatever the old session still asked for is moot now.
                        queue.clear();
                        self.ota.cancel();
                        match self.boot(session.into_hardware(), Some(kind)) {
                            Ok((booted, first)) => (session, queue) = (booted, first.into()),
                            Err(exit) => return exit,
                        }
                    }
                    Next::Exit(exit) => return exit,
                }
            }
            let outputs = match self.wait(&mut session).await {
                Ok(outputs) => outputs,
                Err(exit) => return exit,
            };
            queue.extend(outputs);
        }
    }

    /// Wait for the link, the engine's next wakeup, the download or a stop; tell the
    /// engine.
    async fn wait(&mut self, session: &mut engine::Session) -> Result<Vec<Output>, Exit> {
        enum Wake {
            Link(LinkEvent),
            Tick,
            Download(DownloadNews),
            Shutdown,
        }
        let wake_at = session.next_wakeup().map(|ms| self.epoch + Duration::from_millis(ms));
        let wake = tokio::select! {
            ev = recv(&mut self.link) => Wake::Link(ev),
            _ = sleep_until(wake_at) => Wake::Tick,
            news = self.ota.next() => Wake::Download(news),
            _ = self.shutdown.wait() => Wake::Shutdown,
        };
        let now = self.now();
        Ok(match wake {
            Wake::Link(LinkEvent::Data(bytes)) => session.on_data(now, &bytes),
            Wake::Link(LinkEvent::Closed(info)) => {
                self.close_link().await;
                let (code, reason) = info.map_or((None, String::new()), |i| (Some(i.code), i.reason));
                session.on_closed(now, LinkEnd::Closed { code, reason })
            }
            Wake::Link(LinkEvent::Failed(e)) => {
                self.close_link().await;
                session.on_closed(now, LinkEnd::Failed(e))
            }
            Wake::Tick => session.on_tick(now),
            Wake::Download(DownloadNews::Progress(n)) => session.on_download_progress(now, n),
            Wake::Download(DownloadNews::Done(result)) => session.on_download_done(now, result),
            Wake::Shutdown => return Err(self.shut_down(session).await),
        })
    }

    /// Perform one output.
    async fn perform(&mut self, session: &mut engine::Session, output: Output) -> Next {
        match output {
            Output::Send(frame) => {
                let Some(link) = self.link.as_mut() else { return Next::More(vec![]) };
                let sent = match tokio::time::timeout(SEND_TIMEOUT, link.send(frame)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("send blocked for {} s", SEND_TIMEOUT.as_secs())),
                };
                match sent {
                    Ok(()) => Next::More(vec![]),
                    Err(e) => {
                        self.close_link().await;
                        Next::More(session.on_closed(self.now(), LinkEnd::Failed(e)))
                    }
                }
            }
            Output::OpenLink(jwt) => {
                let connecting = tokio::select! {
                    r = self.connector.connect(&jwt) => r,
                    _ = self.shutdown.wait() => return Next::Exit(Exit::Shutdown),
                };
                let now = self.now();
                Next::More(match connecting {
                    Ok(link) => {
                        self.link = Some(link);
                        session.on_link_up(now)
                    }
                    Err(e) => session.on_link_failed(now, link_failure(&e)),
                })
            }
            Output::CloseLink => {
                self.close_link().await;
                Next::More(vec![])
            }
            Output::FetchToken => {
                let fetched = tokio::select! {
                    r = self.tokens.fetch() => r,
                    _ = self.shutdown.wait() => return Next::Exit(self.shut_down(session).await),
                };
                Next::More(session.on_token(self.now(), fetched))
            }
            Output::Save { key, value } => {
                self.nvs.set(&key, &value);
                Next::More(vec![])
            }
            Output::Ota(work) => {
                self.ota.perform(work);
                Next::More(vec![])
            }
            Output::Reboot(kind) => Next::Reboot(kind),
            Output::Stop(why) => Next::Exit(Exit::Stopped(why)),
            Output::Ml(outcome) => {
                let ours = self.ml.as_ref().is_some_and(|r| r.cid.as_deref() == Some(outcome.cid()));
                if let Some(done) = self.ml.as_mut().filter(|_| ours).and_then(|r| r.done.take()) {
                    let _ = done.send(outcome);
                }
                Next::More(vec![])
            }
            Output::Event(e) => {
                self.observe(&e);
                let now = self.now();
                match (&e, self.ml.as_mut()) {
                    (Event::Connected { .. }, Some(r)) if r.cid.is_none() => {
                        match session.request_inference(now, &r.ask) {
                            Ok((cid, outputs)) => {
                                r.cid = Some(cid);
                                Next::More(outputs)
                            }
                            // The command line checked the ask; the session may have ended.
                            Err(e) => Next::Exit(Exit::Stopped(format!("inference request refused: {e}"))),
                        }
                    }
                    _ => Next::More(vec![]),
                }
            }
        }
    }

    /// Stop: DISCONNECT if connected, close the link.
    async fn shut_down(&mut self, session: &mut engine::Session) -> Exit {
        for output in session.shutdown() {
            match output {
                Output::Send(frame) => {
                    if let Some(link) = self.link.as_mut() {
                        let _ = tokio::time::timeout(SEND_TIMEOUT, link.send(frame)).await;
                    }
                }
                Output::CloseLink => self.close_link().await,
                Output::Event(e) => self.observe(&e),
                _ => {}
            }
        }
        self.close_link().await;
        Exit::Shutdown
    }

    async fn close_link(&mut self) {
        if let Some(mut link) = self.link.take() {
            link.close().await;
        }
    }

    /// Log an engine event and count it.
    fn observe(&mut self, e: &Event) {
        let s = &self.stats;
        match e {
            Event::Connected { .. } => {
                s.connected.fetch_add(1, Relaxed);
                inc(&s.connects);
                if self.ever_connected {
                    inc(&s.reconnects);
                }
                self.ever_connected = true;
            }
            Event::Disconnected => {
                s.connected.fetch_sub(1, Relaxed);
            }
            Event::ConnectFailed { .. } => inc(&s.connect_failures),
            Event::HeartbeatSent { .. } => inc(&s.heartbeats_sent),
            Event::HeartbeatAcked { .. } => inc(&s.heartbeats_acked),
            Event::CommandRun { .. } => inc(&s.commands_run),
            Event::CommandDuplicate { .. } => inc(&s.commands_duplicate),
            Event::TelemetrySent => inc(&s.telemetry_sent),
            Event::TokenObtained | Event::TokenRefreshed => inc(&s.tokens_fetched),
            Event::Stopped { .. } => inc(&s.stopped),
            Event::OtaSuccess { .. } => inc(&s.ota_success),
            Event::OtaFailed { .. } | Event::OtaRolledBack { .. } => inc(&s.ota_failed),
            Event::OtaRefused { .. } => inc(&s.ota_refused),
            _ => {}
        }
        let (severity, name, fields) = e.describe();
        let level = match severity {
            Severity::Debug => Level::Debug,
            Severity::Info => Level::Info,
            Severity::Warn => Level::Warn,
            Severity::Error => Level::Error,
        };
        if log::enabled(level) {
            let fields: Vec<(&str, &dyn std::fmt::Display)> =
                fields.iter().map(|(k, v)| (*k, v as &dyn std::fmt::Display)).collect();
            log::emit(level, &self.cfg.engine.device_id, name, &fields);
        }
    }
}

/// What the engine needs to know about a failed connect.
fn link_failure(e: &ConnectError) -> LinkFailure {
    LinkFailure {
        error: e.to_string(),
        retry_after_ms: e.retry_after().map(|d| d.as_millis() as u64),
        token_refused: matches!(e, ConnectError::Handshake(HandshakeError::BadToken(_))),
    }
}

/// The link's next event; never resolves without a link.
async fn recv<L: Link>(link: &mut Option<L>) -> LinkEvent {
    match link.as_mut() {
        Some(l) => l.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleep until `at`; never resolves for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
