//! One simulated device's connection life: credentials → WebSocket → CONNECT →
//! SUBSCRIBE → heartbeats, commands, notices → close → backoff → again.
//!
//! Transport- and credential-agnostic (see [`Connector`] and [`TokenSource`]) so the
//! whole state machine is unit-tested against an in-memory broker. All decisions that
//! the ESP32 firmware also makes come from `fleetwire-core`: MQTT codec, backoff with
//! full jitter (reset only after CONNACK + first acknowledged heartbeat), close-code
//! actions, heartbeat payload and schedule, command handling and duplicate detection,
//! and (through [`crate::ota`]) the whole OTA path including simulated reboots.
//!
//! A `reboot` command is one too: its result is published, acknowledged (at most
//! [`REBOOT_FLUSH`] of waiting) and its delay waited out, then DISCONNECT and the same
//! in-process reboot as OTA's. The command memory is saved to the emulated NVS first
//! and restored at boot, so a redelivered `reboot` is answered without rebooting again.

use std::mem;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetwire_core::backoff::{Backoff, BackoffConfig, LinkState};
use fleetwire_core::close_codes::{CloseAction, CloseCodes};
use fleetwire_core::commands::Handled;
use fleetwire_core::mqtt::{self, Connect, Decoder, Packet, Publish, QoS};
use fleetwire_core::platform::{Rng, XorShiftRng};
use fleetwire_core::topics::{DeviceTopics, TopicMap};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::auth::{AuthError, Token, TokenSource};
use crate::device::{DeviceSettings, SimDevice};
use crate::flash::DeviceFlash;
use crate::handshake::HandshakeError;
use crate::log::{Level, Opt};
use crate::ota::{OtaAgent, OtaConfig};
use crate::outbox::{Kind, Outbox};
use crate::secret::Secret;
use crate::sim_log;
use crate::stats::{inc, Stats};
use crate::transport::{CloseInfo, ConnectError, Connector, Link, LinkEvent};

/// Unacknowledged QoS 1 publishes kept per device.
const OUTBOX_CAPACITY: usize = 256;
/// How often timers (heartbeat, keepalive, telemetry, token refresh) are checked.
const TICK: Duration = Duration::from_secs(1);
/// After a failed refresh while connected, try again this much later.
const REFRESH_RETRY: Duration = Duration::from_secs(30);
/// Fewest seconds between two planned refreshes. A server whose notice window is
/// longer than the tokens it issues would otherwise make every new connection
/// refresh and reconnect at once, hammering the token endpoint and the broker.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Bound on one frame send; a broker that stops reading must not freeze the device.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Before a reboot, how long OTA statuses (`rebooting`) and a `reboot` command's result
/// get to be acknowledged, so the server hears about the reboot before the device goes quiet.
const REBOOT_FLUSH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub device_id: String,
    pub keepalive_s: u16,
    /// Initial heartbeat interval; the core's default when `None`.
    pub heartbeat_s: Option<u32>,
    /// Telemetry interval; 0 disables the sensor's publishes.
    pub telemetry_s: u32,
    /// Bound on waiting for CONNACK.
    pub connack_timeout: Duration,
    pub backoff: BackoffConfig,
    /// The firmware version at first start; after that the persisted OTA state says
    /// what runs.
    pub fw: String,
    pub ota: OtaConfig,
    /// Seeds the backoff jitter and the sensor.
    pub seed: u64,
}

impl SessionConfig {
    pub fn new(device_id: &str) -> Self {
        SessionConfig {
            device_id: device_id.to_owned(),
            keepalive_s: 60,
            heartbeat_s: None,
            telemetry_s: 60,
            connack_timeout: Duration::from_secs(10),
            backoff: BackoffConfig::default(),
            fw: "1.0.0".to_owned(),
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
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
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

/// How one connection ended.
#[derive(Debug)]
enum End {
    Shutdown,
    /// A new token was obtained while connected and DISCONNECT sent: reconnect now.
    Refreshed,
    Closed(Option<CloseInfo>),
    /// CONNACK with a non-zero return code.
    Refused(u8),
    Failed(String),
    Stop(String),
    /// DISCONNECT sent because the device reboots (OTA install or rollback, `reboot` command).
    Reboot,
}

/// What one turn of the connected loop asks for, besides flushing its output.
#[derive(Debug)]
enum Flow {
    Continue,
    Refresh,
    End(End),
}

/// Per-connection timers and bookkeeping.
struct Conn {
    sub_id: Option<u16>,
    last_sent: Instant,
    last_recv: Instant,
    ping_sent_at: Option<Instant>,
    next_telemetry: Instant,
    /// A `token-expiring` notice asked for a refresh that has not happened yet.
    refresh_requested: bool,
    refresh_retry_at: Option<Instant>,
    refresh_warned: bool,
    /// A reboot is due: end the connection once OTA statuses are acknowledged or then.
    reboot_by: Option<Instant>,
}

/// A reboot a `reboot` command scheduled.
#[derive(Debug)]
struct PlannedReboot {
    cid: String,
    delay_s: u32,
    at: Instant,
}

#[derive(Deserialize)]
struct SysNotice {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    reason: String,
    close_code: Option<u16>,
    expires_at: Option<u64>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub struct Session<C: Connector, T: TokenSource> {
    cfg: SessionConfig,
    topics: DeviceTopics,
    device: SimDevice,
    backoff: Backoff,
    rng: Box<dyn Rng + Send>,
    close_codes: CloseCodes,
    connector: C,
    tokens: T,
    token: Option<Token>,
    token_obtained_at: Option<Instant>,
    outbox: Outbox,
    ota: OtaAgent,
    /// The emulated NVS (the same files as the OTA agent's): command memory across reboots.
    nvs: DeviceFlash,
    planned_reboot: Option<PlannedReboot>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    boot: Instant,
    online: bool,
    ever_connected: bool,
}

impl<C: Connector, T: TokenSource> Session<C, T> {
    pub fn new(
        cfg: SessionConfig,
        connector: C,
        tokens: T,
        stats: Arc<Stats>,
        shutdown: Shutdown,
    ) -> Result<Self, String> {
        let topics = TopicMap::load()
            .and_then(|m| m.device_topics(&cfg.device_id))
            .map_err(|e| format!("device {:?}: {e:?}", cfg.device_id))?;
        let ota = OtaAgent::open(&cfg.device_id, cfg.ota.clone(), &cfg.fw, stats.clone(), cfg.seed)?;
        let nvs = DeviceFlash::open(&cfg.ota.state_dir, &cfg.device_id)?;
        let device = Self::boot_device(&cfg, ota.running_version(), &nvs)?;
        Ok(Session {
            topics,
            device,
            backoff: Backoff::new(cfg.backoff),
            rng: Box::new(XorShiftRng::new(cfg.seed)),
            close_codes: CloseCodes::load(),
            connector,
            tokens,
            token: None,
            token_obtained_at: None,
            outbox: Outbox::new(OUTBOX_CAPACITY),
            ota,
            nvs,
            planned_reboot: None,
            stats,
            shutdown,
            boot: Instant::now(),
            online: false,
            ever_connected: false,
            cfg,
        })
    }

    /// Replace the jitter source (tests use one that always picks the window's top).
    pub fn with_rng(mut self, rng: impl Rng + Send + 'static) -> Self {
        self.rng = Box::new(rng);
        self
    }

    fn id(&self) -> &str {
        &self.cfg.device_id
    }

    /// What RAM holds after a boot: heartbeat schedule from the configuration (a
    /// server-set interval is forgotten, as on the board), `fw` = the running version,
    /// the command memory saved in NVS before the last reboot.
    fn boot_device(cfg: &SessionConfig, fw: &str, nvs: &DeviceFlash) -> Result<SimDevice, String> {
        let settings = DeviceSettings { fw: fw.to_owned(), keepalive_s: cfg.keepalive_s, telemetry_s: cfg.telemetry_s };
        // A different stream than the jitter's, so sensor values and delays are unrelated.
        let mut device = SimDevice::new(settings, cfg.heartbeat_s, cfg.seed ^ 0x5EED_5E45_0000_0001)?;
        device.restore_commands(nvs);
        Ok(device)
    }

    /// An OTA reboot or a `reboot` command waits to be performed.
    fn reboot_pending(&self) -> bool {
        self.ota.reboot_due() || self.planned_reboot.is_some()
    }

    /// A reboot is due now (a commanded one once its delay has passed).
    fn reboot_due(&self) -> bool {
        self.ota.reboot_due() || self.planned_reboot.as_ref().is_some_and(|p| p.at <= Instant::now())
    }

    /// When a commanded reboot's delay ends, if still ahead.
    fn reboot_wake(&self) -> Option<Instant> {
        self.planned_reboot.as_ref().map(|p| p.at).filter(|at| *at > Instant::now())
    }

    /// A simulated reboot (the connection is already closed): the OTA agent picks the
    /// slot, and RAM state starts over: heartbeat sequence and uptime, backoff. The
    /// command memory is saved to NVS first and restored at boot. Unacknowledged OTA
    /// statuses and command results stay queued, as firmware keeps its pending OTA
    /// report in NVS. The token is kept (RAM of the simulator, not of the device: a
    /// board would fetch one again; it is still valid either way).
    fn reboot(&mut self) {
        if let Some(p) = self.planned_reboot.take() {
            let acked = !self.outbox.has_in_flight(&Kind::CmdResult { cid: p.cid.clone() });
            sim_log!(
                Level::Info,
                self.id(),
                "rebooting",
                cause = "command",
                cid = p.cid,
                delay_s = p.delay_s,
                result_acked = acked
            );
        }
        self.device.save_commands(&mut self.nvs);
        self.ota.reboot();
        let fw = self.ota.running_version().to_owned();
        self.device = Self::boot_device(&self.cfg, &fw, &self.nvs).expect("the settings were valid at the first boot");
        self.backoff = Backoff::new(self.cfg.backoff);
        self.boot = Instant::now();
        sim_log!(Level::Info, self.id(), "booted", fw = fw, ota = format!("{:?}", self.ota.slot_state()));
    }

    /// Sleep `delay` while offline, still serving OTA (download events, the
    /// confirmation deadline). Returns early when a reboot is due; `Err` on shutdown.
    async fn offline_wait(&mut self, delay: Duration) -> Result<(), Exit> {
        let until = Instant::now() + delay;
        while !self.reboot_due() {
            let reboot_at = self.reboot_wake();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                _ = self.shutdown.wait() => return Err(Exit::Shutdown),
                _ = self.ota.poll() => {}
                _ = sleep_until_opt(reboot_at) => {}
            }
        }
        Ok(())
    }

    /// Run until shutdown or a fatal refusal.
    pub async fn run(mut self) -> Exit {
        self.ota.resume();
        let mut delay = Duration::ZERO;
        loop {
            if !delay.is_zero() {
                sim_log!(
                    Level::Debug,
                    self.id(),
                    "backoff",
                    delay_ms = delay.as_millis(),
                    attempt = self.backoff.attempt()
                );
                if let Err(exit) = self.offline_wait(delay).await {
                    return exit;
                }
            }
            if self.shutdown.is_set() {
                return Exit::Shutdown;
            }
            if self.reboot_due() {
                self.reboot();
            }
            let jwt = match self.current_token().await {
                Ok(Some(jwt)) => jwt,
                Ok(None) => return Exit::Shutdown,
                Err(AuthError::Rejected(why)) => return self.stop(why),
                Err(e @ AuthError::Unavailable { .. }) => {
                    sim_log!(Level::Warn, self.id(), "token-unavailable", error = e);
                    let floor = match e {
                        AuthError::Unavailable { retry_after, .. } => retry_after,
                        AuthError::Rejected(_) => None,
                    };
                    delay = self.backoff_delay(floor);
                    continue;
                }
            };
            let connecting = tokio::select! {
                r = self.connector.connect(&jwt) => r,
                _ = self.shutdown.wait() => return Exit::Shutdown,
            };
            let mut link = match connecting {
                Ok(link) => link,
                Err(e) => {
                    sim_log!(Level::Warn, self.id(), "connect-failed", error = e);
                    self.link_down();
                    if let ConnectError::Handshake(HandshakeError::BadToken(_)) = e {
                        if let Some(exit) = self.drop_token("the token cannot be offered") {
                            return exit;
                        }
                    }
                    delay = self.backoff_delay(e.retry_after());
                    continue;
                }
            };
            let end = self.connected(&mut link).await;
            link.close().await;
            self.link_down();
            delay = match end {
                End::Shutdown => return Exit::Shutdown,
                End::Stop(why) => return self.stop(why),
                // The reboot happens at the top of the loop; a booted device connects at once.
                End::Refreshed | End::Reboot => Duration::ZERO,
                End::Closed(info) => match self.on_closed(info) {
                    Ok(()) => self.backoff_delay(None),
                    Err(exit) => return exit,
                },
                End::Refused(rc) => match self.on_refused(rc) {
                    Ok(()) => self.backoff_delay(None),
                    Err(exit) => return exit,
                },
                End::Failed(why) => {
                    sim_log!(Level::Warn, self.id(), "link-failed", error = why);
                    self.backoff_delay(None)
                }
            };
        }
    }

    fn stop(&self, why: String) -> Exit {
        inc(&self.stats.stopped);
        sim_log!(Level::Error, self.id(), "stopped", reason = why);
        Exit::Stopped(why)
    }

    /// Full-jitter delay from the core, never shorter than the server's `Retry-After`.
    fn backoff_delay(&mut self, floor: Option<Duration>) -> Duration {
        let d = Duration::from_millis(self.backoff.next_delay_ms(&mut *self.rng));
        floor.map_or(d, |f| d.max(f))
    }

    /// Forget the current token so the next attempt fetches one; a source that
    /// cannot refresh makes that fatal.
    fn drop_token(&mut self, why: &str) -> Option<Exit> {
        if !self.tokens.can_refresh() {
            return Some(self.stop(format!("{why}, and a fixed --token cannot be refreshed")));
        }
        self.token = None;
        None
    }

    /// The token for the next connection, fetching one when none is held or the held
    /// one is due for refresh. `Ok(None)`: shutdown requested meanwhile.
    async fn current_token(&mut self) -> Result<Option<Secret>, AuthError> {
        let due = match &self.token {
            None => true,
            Some(t) => t.refresh_at.is_some_and(|at| at <= Instant::now()),
        };
        if !due {
            return Ok(self.token.as_ref().map(|t| t.jwt.clone()));
        }
        let fetched = tokio::select! {
            r = self.tokens.fetch() => r,
            _ = self.shutdown.wait() => return Ok(None),
        };
        match (fetched, &self.token) {
            (Ok(t), _) => {
                sim_log!(Level::Debug, self.id(), "token-obtained");
                let jwt = t.jwt.clone();
                self.set_token(t);
                Ok(Some(jwt))
            }
            // Due for refresh but the service is down: the old token is still valid for a while.
            (Err(AuthError::Unavailable { message, .. }), Some(old)) => {
                sim_log!(Level::Warn, self.id(), "token-refresh-failed", error = message, using = "current token");
                Ok(Some(old.jwt.clone()))
            }
            (Err(e), _) => Err(e),
        }
    }

    fn set_token(&mut self, t: Token) {
        inc(&self.stats.tokens_fetched);
        self.token = Some(t);
        self.token_obtained_at = Some(Instant::now());
    }

    /// Send one frame, bounded by [`SEND_TIMEOUT`].
    async fn send_frame(link: &mut C::Link, frame: Vec<u8>) -> Result<(), String> {
        match tokio::time::timeout(SEND_TIMEOUT, link.send(frame)).await {
            Ok(r) => r,
            Err(_) => Err(format!("send blocked for {} s", SEND_TIMEOUT.as_secs())),
        }
    }

    /// Bookkeeping once a link is gone (or never came up).
    fn link_down(&mut self) {
        if self.online {
            self.online = false;
            self.stats.connected.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            self.backoff.on_disconnected();
        } else {
            inc(&self.stats.connect_failures);
            self.backoff.on_connect_failed();
        }
        self.outbox.on_disconnect();
    }

    fn on_closed(&mut self, info: Option<CloseInfo>) -> Result<(), Exit> {
        let code = info.as_ref().map(|i| i.code);
        let name = code.and_then(|c| self.close_codes.name_of(c)).map(str::to_owned);
        let reason = info.map(|i| i.reason).unwrap_or_default();
        sim_log!(Level::Info, self.id(), "closed", code = Opt(code), name = Opt(name.as_deref()), reason = reason);
        match code.map_or(CloseAction::Reconnect, |c| self.close_codes.action(c)) {
            CloseAction::Stop => Err(self.stop(format!("closed with {} ({})", Opt(code), Opt(name.as_deref())))),
            CloseAction::RefreshToken => self.drop_token("the token expired").map_or(Ok(()), Err),
            CloseAction::Reconnect => Ok(()),
        }
    }

    fn on_refused(&mut self, rc: u8) -> Result<(), Exit> {
        sim_log!(Level::Warn, self.id(), "connack-refused", return_code = rc);
        match rc {
            // 4: token missing or malformed, 5: not authorised (expired, revoked jti, client id ≠ sub).
            4 | 5 => self.drop_token(&format!("CONNACK {rc}")).map_or(Ok(()), Err),
            // 1: protocol level, 2: client id: a configuration problem retrying cannot fix.
            1 | 2 => Err(self.stop(format!("CONNACK {rc}: broker refused the protocol level or client id"))),
            _ => Ok(()),
        }
    }

    fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.boot).as_millis() as u64
    }

    /// Encode a publish into `out`; encoding only fails on a bug (topics come from the contract).
    fn put_publish(out: &mut Vec<u8>, p: &Publish) {
        out.extend(mqtt::encode_publish(p).expect("publish to a contract topic encodes"));
    }

    /// One connection from CONNECT to its end.
    async fn connected(&mut self, link: &mut C::Link) -> End {
        let mut decoder = Decoder::default();
        let connect =
            Connect { client_id: &self.cfg.device_id, keep_alive_s: self.cfg.keepalive_s, clean_session: false };
        if let Err(e) = Self::send_frame(link, mqtt::encode_connect(&connect).expect("device ids fit a CONNECT")).await
        {
            return End::Failed(e);
        }
        let session_present = match self.await_connack(link, &mut decoder).await {
            Ok(sp) => sp,
            Err(end) => return end,
        };
        self.online = true;
        self.backoff.on_connack();
        self.stats.connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        inc(&self.stats.connects);
        if self.ever_connected {
            inc(&self.stats.reconnects);
        }
        self.ever_connected = true;
        sim_log!(
            Level::Info,
            self.id(),
            "connected",
            session_present = session_present,
            attempt = self.backoff.attempt(),
            fw = self.ota.running_version()
        );

        let now = Instant::now();
        let mut conn = Conn {
            sub_id: None,
            last_sent: now,
            last_recv: now,
            ping_sent_at: None,
            next_telemetry: now + Duration::from_secs(self.cfg.telemetry_s.into()),
            refresh_requested: false,
            refresh_retry_at: None,
            refresh_warned: false,
            reboot_by: None,
        };
        // Subscribe every time: cheap, and correct even if the broker lost the session.
        let sub_id = self.outbox.next_packet_id();
        conn.sub_id = Some(sub_id);
        let filters: Vec<(&str, QoS)> = self.topics.subscriptions().iter().map(|t| (*t, QoS::AtLeastOnce)).collect();
        let mut out = mqtt::encode_subscribe(sub_id, &filters).expect("contract topics encode");
        for p in self.outbox.resend(now) {
            sim_log!(Level::Debug, self.id(), "resend", topic = p.topic, packet_id = Opt(p.packet_id));
            Self::put_publish(&mut out, &p);
        }
        // Reports made while offline (e.g. a rollback at boot) go out after the re-sends.
        self.flush_ota(&mut out);
        self.device.state.heartbeat.reset_schedule();

        let mut tick = interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Packets that arrived in the CONNACK's frame are handled before waiting for more.
        let mut flow = self.drain(&mut decoder, &mut out, &mut conn);
        loop {
            if !out.is_empty() {
                let sent = Self::send_frame(link, mem::take(&mut out)).await;
                conn.last_sent = Instant::now();
                if let Err(e) = sent {
                    return match flow {
                        Flow::End(end) => end,
                        _ => End::Failed(e),
                    };
                }
            }
            match flow {
                Flow::Continue => {}
                Flow::End(end) => return end,
                // The reboot reconnects anyway; the refresh can wait for the new boot.
                Flow::Refresh if self.reboot_pending() => {}
                Flow::Refresh => match self.refresh_while_connected(&mut conn).await {
                    Some(End::Refreshed) => {
                        let _ = Self::send_frame(link, mqtt::encode_disconnect()).await;
                        return End::Refreshed;
                    }
                    Some(end) => return end,
                    None => {}
                },
            }
            if self.reboot_due() && self.ready_to_reboot(&mut conn) {
                let _ = Self::send_frame(link, mqtt::encode_disconnect()).await;
                return End::Reboot;
            }
            enum Wake {
                Link(LinkEvent),
                Tick,
                Ota,
                Reboot,
                Shutdown,
            }
            let reboot_at = self.reboot_wake();
            let wake = tokio::select! {
                ev = link.recv() => Wake::Link(ev),
                _ = tick.tick() => Wake::Tick,
                _ = self.ota.poll() => Wake::Ota,
                _ = sleep_until_opt(reboot_at) => Wake::Reboot,
                _ = self.shutdown.wait() => Wake::Shutdown,
            };
            flow = match wake {
                Wake::Link(LinkEvent::Data(bytes)) => {
                    conn.last_recv = Instant::now();
                    decoder.push(&bytes);
                    self.drain(&mut decoder, &mut out, &mut conn)
                }
                Wake::Link(LinkEvent::Closed(info)) => Flow::End(End::Closed(info)),
                Wake::Link(LinkEvent::Failed(e)) => Flow::End(End::Failed(e)),
                Wake::Tick => self.on_tick(&mut out, &mut conn),
                Wake::Ota => {
                    self.flush_ota(&mut out);
                    Flow::Continue
                }
                Wake::Reboot => Flow::Continue,
                Wake::Shutdown => {
                    out.extend(mqtt::encode_disconnect());
                    Flow::End(End::Shutdown)
                }
            };
        }
    }

    /// A due reboot waits until the OTA statuses in flight (`rebooting`) and the
    /// `reboot` command's result are acknowledged, at most [`REBOOT_FLUSH`].
    fn ready_to_reboot(&self, conn: &mut Conn) -> bool {
        let by = *conn.reboot_by.get_or_insert_with(|| Instant::now() + REBOOT_FLUSH);
        let result_in_flight = self
            .planned_reboot
            .as_ref()
            .is_some_and(|p| self.outbox.has_in_flight(&Kind::CmdResult { cid: p.cid.clone() }));
        !(self.outbox.has_in_flight(&Kind::OtaStatus) || result_in_flight) || Instant::now() >= by
    }

    /// Publish the OTA agent's pending status reports (QoS 1, through the outbox).
    fn flush_ota(&mut self, out: &mut Vec<u8>) {
        let topic = self.topics.ota_status.clone();
        for status in self.ota.take_statuses() {
            self.publish_qos1(out, &topic, status, Kind::OtaStatus);
        }
    }

    /// Wait (bounded) for CONNACK; `Ok(session_present)` when accepted.
    async fn await_connack(&mut self, link: &mut C::Link, decoder: &mut Decoder) -> Result<bool, End> {
        let deadline = Instant::now() + self.cfg.connack_timeout;
        loop {
            match decoder.next_packet() {
                Ok(Some(Packet::ConnAck { session_present, return_code: 0 })) => return Ok(session_present),
                Ok(Some(Packet::ConnAck { return_code, .. })) => return Err(End::Refused(return_code)),
                Ok(Some(other)) => return Err(End::Failed(format!("expected CONNACK, got {other:?}"))),
                Ok(None) => {}
                Err(e) => return Err(End::Failed(format!("malformed MQTT from broker: {e}"))),
            }
            let ev = tokio::select! {
                ev = link.recv() => ev,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(End::Failed(format!("no CONNACK within {} s", self.cfg.connack_timeout.as_secs())))
                }
                _ = self.shutdown.wait() => return Err(End::Shutdown),
            };
            match ev {
                LinkEvent::Data(bytes) => decoder.push(&bytes),
                LinkEvent::Closed(info) => return Err(End::Closed(info)),
                LinkEvent::Failed(e) => return Err(End::Failed(e)),
            }
        }
    }

    /// Handle every complete packet buffered in `decoder`.
    fn drain(&mut self, decoder: &mut Decoder, out: &mut Vec<u8>, conn: &mut Conn) -> Flow {
        let mut flow = Flow::Continue;
        loop {
            let packet = match decoder.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => return flow,
                Err(e) => return Flow::End(End::Failed(format!("malformed MQTT from broker: {e}"))),
            };
            match packet {
                Packet::PubAck { packet_id } => self.on_puback(packet_id, out),
                Packet::SubAck { packet_id, return_codes } if conn.sub_id == Some(packet_id) => {
                    conn.sub_id = None;
                    for (topic, rc) in self.topics.subscriptions().iter().zip(&return_codes) {
                        if *rc == 0x80 {
                            sim_log!(Level::Warn, self.id(), "subscribe-refused", topic = topic);
                        }
                    }
                }
                Packet::SubAck { packet_id, .. } => {
                    sim_log!(Level::Debug, self.id(), "suback-unknown", packet_id = packet_id);
                }
                Packet::PingResp => conn.ping_sent_at = None,
                Packet::ConnAck { .. } => return Flow::End(End::Failed("second CONNACK".into())),
                Packet::Publish(p) => {
                    if matches!(self.on_publish(&p, out), Flow::Refresh) {
                        conn.refresh_requested = true;
                        flow = Flow::Refresh;
                    }
                    // Acknowledge after handling: a crash in between means redelivery, and
                    // the command processor recognises the duplicate cid.
                    if let Some(id) = p.packet_id {
                        out.extend(mqtt::encode_puback(id));
                    }
                }
            }
        }
    }

    fn on_puback(&mut self, packet_id: u16, out: &mut Vec<u8>) {
        let Some(done) = self.outbox.ack(packet_id) else {
            sim_log!(Level::Debug, self.id(), "puback-unknown", packet_id = packet_id);
            return;
        };
        match done.kind {
            Kind::Heartbeat => {
                let rtt_ms = Instant::now().duration_since(done.sent_at).as_millis() as u64;
                let was = self.backoff.state();
                self.backoff.on_heartbeat_acked(rtt_ms);
                inc(&self.stats.heartbeats_acked);
                if was == LinkState::Connected && self.backoff.state() == LinkState::Stable {
                    sim_log!(Level::Info, self.id(), "stable", rtt_ms = rtt_ms);
                    // The same rule confirms a freshly booted OTA image.
                    self.ota.on_stable();
                    self.flush_ota(out);
                }
            }
            Kind::CmdResult { cid } => sim_log!(Level::Debug, self.id(), "cmd-result-acked", cid = cid),
            Kind::OtaStatus => {}
        }
    }

    /// Queue a QoS 1 publish through the outbox.
    fn publish_qos1(&mut self, out: &mut Vec<u8>, topic: &str, payload: Vec<u8>, kind: Kind) {
        let (p, evicted) = self.outbox.publish(topic, payload, kind, Instant::now());
        if let Some(e) = evicted {
            sim_log!(Level::Warn, self.id(), "outbox-full", dropped_topic = e.publish.topic);
        }
        Self::put_publish(out, &p);
    }

    fn on_publish(&mut self, p: &Publish, out: &mut Vec<u8>) -> Flow {
        let t = &self.topics;
        if p.topic == t.cmd {
            self.on_command(&p.payload, out);
        } else if p.topic == t.sys {
            return self.on_sys(&p.payload);
        } else if p.topic == t.ota {
            self.ota.on_offer(&p.payload);
            self.flush_ota(out);
        } else if p.topic == t.ml_result {
            let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
            let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
            let code = v.pointer("/error/code").and_then(Value::as_str).unwrap_or("-").to_owned();
            let ok = v.get("ok").and_then(Value::as_bool).unwrap_or(false);
            sim_log!(
                Level::Info,
                self.id(),
                "ml-result",
                cid = s("cid"),
                ok = ok,
                model_version = s("model_version"),
                code = code
            );
        } else {
            sim_log!(Level::Warn, self.id(), "unexpected-topic", topic = p.topic);
        }
        Flow::Continue
    }

    fn on_command(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let handled = self.device.handle_command(payload, unix_ms());
        let result = match &handled {
            Handled::Fresh(r) => {
                inc(&self.stats.commands_run);
                let code = r.error.as_ref().map(|e| e.code.as_str());
                sim_log!(Level::Info, self.id(), "cmd", cid = r.cid, ok = r.ok, code = Opt(code));
                r
            }
            Handled::Duplicate(r) => {
                inc(&self.stats.commands_duplicate);
                sim_log!(Level::Info, self.id(), "cmd-duplicate", cid = r.cid, action = "re-sending stored result");
                r
            }
            Handled::Dropped(why) => {
                sim_log!(Level::Warn, self.id(), "cmd-dropped", error = why);
                return;
            }
        };
        let (topic, cid, body) = (self.topics.cmd_result.clone(), result.cid.clone(), result.to_json());
        // Published before anything reboots: the reboot waits for its PUBACK.
        self.publish_qos1(out, &topic, body, Kind::CmdResult { cid: cid.clone() });
        if let Some(delay_s) = self.device.take_reboot_request() {
            let at = Instant::now() + Duration::from_secs(delay_s.into());
            sim_log!(Level::Info, self.id(), "reboot", cid = cid, delay_s = delay_s);
            // An earlier planned reboot that comes sooner stays.
            if self.planned_reboot.as_ref().is_none_or(|p| p.at > at) {
                self.planned_reboot = Some(PlannedReboot { cid, delay_s, at });
            }
        }
    }

    fn on_sys(&mut self, payload: &[u8]) -> Flow {
        let n: SysNotice = match serde_json::from_slice(payload) {
            Ok(n) => n,
            Err(e) => {
                sim_log!(Level::Warn, self.id(), "sys-malformed", error = e);
                return Flow::Continue;
            }
        };
        match n.kind.as_str() {
            "token-expiring" => {
                sim_log!(Level::Info, self.id(), "token-expiring", reason = n.reason, expires_at = Opt(n.expires_at));
                Flow::Refresh
            }
            // The close frame with the same code follows; on_closed acts on it.
            "disconnect" => {
                sim_log!(Level::Info, self.id(), "sys-disconnect", reason = n.reason, close_code = Opt(n.close_code));
                Flow::Continue
            }
            other => {
                sim_log!(Level::Info, self.id(), "sys-notice", kind = other, reason = n.reason);
                Flow::Continue
            }
        }
    }

    fn on_tick(&mut self, out: &mut Vec<u8>, conn: &mut Conn) -> Flow {
        let now = Instant::now();
        if let Some(h) = self.device.heartbeat_if_due(self.now_ms()) {
            match h.to_json() {
                Ok(body) => {
                    let topic = self.topics.heartbeat.clone();
                    self.publish_qos1(out, &topic, body, Kind::Heartbeat);
                    inc(&self.stats.heartbeats_sent);
                    sim_log!(Level::Debug, self.id(), "heartbeat", seq = h.seq);
                }
                Err(e) => sim_log!(Level::Error, self.id(), "heartbeat-invalid", error = format!("{e:?}")),
            }
        }
        if self.cfg.telemetry_s > 0 && now >= conn.next_telemetry {
            conn.next_telemetry = now + Duration::from_secs(self.cfg.telemetry_s.into());
            let reading = self.device.state.sensor.read(unix_ms());
            let p = Publish {
                topic: self.topics.telemetry.clone(),
                qos: QoS::AtMostOnce,
                retain: false,
                dup: false,
                packet_id: None,
                payload: reading.to_string().into_bytes(),
            };
            Self::put_publish(out, &p);
            inc(&self.stats.telemetry_sent);
        }
        // Keepalive [MQTT-3.1.2-23]: ping when either direction has been quiet for half
        // the period, so a half-open link (sends succeed, nothing comes back) is noticed.
        let keepalive = Duration::from_secs(self.cfg.keepalive_s.into());
        match conn.ping_sent_at {
            Some(at) if now.duration_since(at) >= keepalive => {
                return Flow::End(End::Failed(format!("no PINGRESP within {} s", keepalive.as_secs())));
            }
            Some(_) => {}
            None if !keepalive.is_zero() && now.duration_since(conn.last_sent.min(conn.last_recv)) >= keepalive / 2 => {
                out.extend(mqtt::encode_pingreq());
                conn.ping_sent_at = Some(now);
            }
            None => {}
        }
        let refresh_due =
            conn.refresh_requested || self.token.as_ref().and_then(|t| t.refresh_at).is_some_and(|at| at <= now);
        if refresh_due && conn.refresh_retry_at.is_none_or(|at| at <= now) {
            return Flow::Refresh;
        }
        Flow::Continue
    }

    /// Get the next token while still online. `Some(Refreshed)`: got it, reconnect;
    /// `Some(other)`: end the connection that way; `None`: stay connected.
    async fn refresh_while_connected(&mut self, conn: &mut Conn) -> Option<End> {
        if !self.tokens.can_refresh() {
            if !conn.refresh_warned {
                conn.refresh_warned = true;
                sim_log!(
                    Level::Warn,
                    self.id(),
                    "token-not-refreshable",
                    note = "the broker will close at the token's exp"
                );
            }
            return None;
        }
        if let Some(at) = self.token_obtained_at.map(|t| t + MIN_REFRESH_INTERVAL).filter(|at| *at > Instant::now()) {
            sim_log!(Level::Debug, self.id(), "token-refresh-deferred", in_ms = (at - Instant::now()).as_millis());
            conn.refresh_retry_at = Some(at);
            return None;
        }
        let fetched = tokio::select! {
            r = self.tokens.fetch() => r,
            _ = self.shutdown.wait() => return Some(End::Shutdown),
        };
        match fetched {
            Ok(t) => {
                sim_log!(Level::Info, self.id(), "token-refreshed", action = "reconnecting");
                self.set_token(t);
                Some(End::Refreshed)
            }
            Err(AuthError::Rejected(why)) => Some(End::Stop(why)),
            Err(AuthError::Unavailable { message, retry_after }) => {
                let wait = retry_after.unwrap_or(REFRESH_RETRY).max(REFRESH_RETRY);
                sim_log!(Level::Warn, self.id(), "token-refresh-failed", error = message, retry_in_s = wait.as_secs());
                conn.refresh_retry_at = Some(Instant::now() + wait);
                None
            }
        }
    }
}

/// Sleep until `at`; never resolves for `None`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
