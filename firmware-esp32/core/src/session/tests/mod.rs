//! The session driven through the scenarios the end-to-end suite covers, on the host,
//! with time passed in: a [`Device`] plays the shell (performing outputs the way the
//! simulator and the ESP32 binary do, rebooting into a new session from its NVS) and
//! the test plays the broker and the token endpoint.

mod commands;
mod connection;
mod ml;
mod ota;
mod telemetry;
mod tokens;

use std::collections::VecDeque;

use serde_json::{json, Value};

use crate::backoff::BackoffConfig;
use crate::heartbeat::Heartbeat;
use crate::mqtt::Publish;
use crate::platform::{Board, MemStorage, Storage};
use crate::session::*;
use crate::telemetry::Reading;
use crate::testkit::{self, device_packets, DevicePacket, MaxRng};

pub const ID: &str = "esp-01";
pub const UNIX_START: u64 = 1_700_000_000_000;

pub fn topic(class: &str) -> String {
    format!("devices/{ID}/{class}")
}

/// A board with steady readings: `TestBoard::default()` reads 21.5 Cel.
pub struct TestBoard {
    pub readings: Result<Vec<Reading>, String>,
}
impl Default for TestBoard {
    fn default() -> Self {
        TestBoard { readings: Ok(vec![Reading::new("temperature", 21.5, "Cel")]) }
    }
}
impl Board for TestBoard {
    fn rssi(&mut self) -> i8 {
        -61
    }
    fn heap_free(&mut self) -> u32 {
        120_000
    }
    fn sample_sensors(&mut self) -> Result<Vec<Reading>, String> {
        self.readings.clone()
    }
}

/// The configuration the tests start from: no stretch in the backoff (exact delays),
/// no telemetry.
pub fn config() -> SessionConfig {
    let mut cfg = SessionConfig::new(ID, "1.0.0", OtaSettings::new(None, "esp32"));
    cfg.backoff = BackoffConfig { base_ms: 1000, cap_ms: 60_000, max_stretch: 1.0, ..Default::default() };
    cfg
}

/// Where the link stands, as the shell sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    None,
    Opening(String),
    Open,
}

/// The shell around one session.
pub struct Device {
    pub session: Option<Session>,
    pub cfg: SessionConfig,
    pub now: Now,
    pub nvs: MemStorage,
    /// `image_starts` of every boot: which versions come up.
    pub crashes_on_boot: Vec<String>,
    pub link: LinkState,
    /// Packets sent on links, oldest first; the test takes them.
    pub sent: VecDeque<DevicePacket>,
    /// Frames sent, to check packing.
    pub frames: usize,
    pub wants_token: bool,
    /// The token of every link opened, in order.
    pub opened_with: Vec<String>,
    pub events: Vec<Event>,
    pub work: Vec<OtaWork>,
    pub reboots: Vec<RebootKind>,
    pub stopped: Option<String>,
    /// How inference requests ended, in order.
    pub ml: Vec<MlOutcome>,
}

impl Device {
    pub fn boot(cfg: SessionConfig) -> Device {
        Device::boot_with(cfg, MemStorage::default(), vec![])
    }

    /// Power-on with existing NVS; versions in `crashes_on_boot` never come up.
    pub fn boot_with(cfg: SessionConfig, nvs: MemStorage, crashes_on_boot: Vec<String>) -> Device {
        Device::boot_on(TestBoard::default(), cfg, nvs, crashes_on_boot)
    }

    /// Power-on of a device whose board reads what `board` says.
    pub fn boot_on(board: TestBoard, cfg: SessionConfig, nvs: MemStorage, crashes_on_boot: Vec<String>) -> Device {
        let mut d = Device {
            session: None,
            cfg,
            now: Now { mono_ms: 1_000, unix_ms: UNIX_START },
            nvs,
            crashes_on_boot,
            link: LinkState::None,
            sent: VecDeque::new(),
            frames: 0,
            wants_token: false,
            opened_with: Vec::new(),
            events: Vec::new(),
            work: Vec::new(),
            reboots: Vec::new(),
            stopped: None,
            ml: Vec::new(),
        };
        let hw = Hardware { board: Box::new(board), rng: Box::new(MaxRng) };
        d.start(hw, None);
        d
    }

    fn start(&mut self, hw: Hardware, after: Option<RebootKind>) {
        let crashes = self.crashes_on_boot.clone();
        let starts = move |v: &str| !crashes.iter().any(|c| c == v);
        let (s, outputs) = Session::boot(self.cfg.clone(), hw, &self.nvs, &starts, after, self.now).unwrap();
        self.session = Some(s);
        self.perform(outputs);
    }

    pub fn s(&mut self) -> &mut Session {
        self.session.as_mut().expect("a session runs")
    }

    /// Do what the session asks, the way the shells do.
    pub fn perform(&mut self, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Send(bytes) => {
                    assert_eq!(self.link, LinkState::Open, "sent {:?} without an open link", device_packets(&bytes));
                    self.frames += 1;
                    self.sent.extend(device_packets(&bytes));
                }
                Output::OpenLink(jwt) => {
                    assert_eq!(self.link, LinkState::None, "a second link");
                    self.opened_with.push(jwt.expose().to_owned());
                    self.link = LinkState::Opening(jwt.expose().to_owned());
                }
                Output::CloseLink => self.link = LinkState::None,
                Output::FetchToken => self.wants_token = true,
                Output::Save { key, value } => self.nvs.set(&key, &value),
                Output::Ota(work) => self.work.push(work),
                Output::Reboot(kind) => {
                    self.reboots.push(kind);
                    self.link = LinkState::None;
                    self.wants_token = false;
                    let hw = self.session.take().expect("a session reboots").into_hardware();
                    self.start(hw, Some(kind));
                }
                Output::Stop(why) => self.stopped = Some(why),
                Output::Ml(outcome) => self.ml.push(outcome),
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    /// Let `ms` pass, waking the session whenever it asked to be woken.
    pub fn advance(&mut self, ms: u64) {
        let until = self.now.mono_ms + ms;
        for _ in 0..100_000 {
            match self.session.as_ref().and_then(Session::next_wakeup) {
                Some(at) if at <= until => {
                    self.set_time(at.max(self.now.mono_ms));
                    let now = self.now;
                    let out = self.s().on_tick(now);
                    self.perform(out);
                }
                _ => return self.set_time(until),
            }
        }
        panic!("the session keeps asking to be woken at {}", self.now.mono_ms);
    }

    fn set_time(&mut self, mono_ms: u64) {
        self.now.unix_ms += mono_ms - self.now.mono_ms;
        self.now.mono_ms = mono_ms;
    }

    pub fn give_token(&mut self, jwt: &str, lifetime_ms: Option<u64>) {
        assert!(self.wants_token, "no token was asked for");
        self.wants_token = false;
        let now = self.now;
        let out = self.s().on_token(now, Ok(IssuedToken { jwt: Jwt::new(jwt), lifetime_ms }));
        self.perform(out);
    }

    pub fn token_fails(&mut self, e: TokenError) {
        assert!(self.wants_token, "no token was asked for");
        self.wants_token = false;
        let now = self.now;
        let out = self.s().on_token(now, Err(e));
        self.perform(out);
    }

    pub fn link_up(&mut self) {
        assert!(matches!(self.link, LinkState::Opening(_)), "no link was asked for: {:?}", self.link);
        self.link = LinkState::Open;
        let now = self.now;
        let out = self.s().on_link_up(now);
        self.perform(out);
    }

    pub fn link_fails(&mut self, failure: LinkFailure) {
        assert!(matches!(self.link, LinkState::Opening(_)), "no link was asked for: {:?}", self.link);
        self.link = LinkState::None;
        let now = self.now;
        let out = self.s().on_link_failed(now, failure);
        self.perform(out);
    }

    /// The broker sends `bytes` (one WebSocket frame).
    pub fn broker(&mut self, bytes: Vec<u8>) {
        assert_eq!(self.link, LinkState::Open, "the broker sends on an open link only");
        let now = self.now;
        let out = self.s().on_data(now, &bytes);
        self.perform(out);
    }

    /// The broker closes the link with a close frame.
    pub fn close(&mut self, code: Option<u16>, reason: &str) {
        self.end(LinkEnd::Closed { code, reason: reason.into() });
    }

    pub fn end(&mut self, end: LinkEnd) {
        assert_ne!(self.link, LinkState::None, "no link to end");
        self.link = LinkState::None;
        let now = self.now;
        let out = self.s().on_closed(now, end);
        self.perform(out);
    }

    pub fn download_progress(&mut self, received: u64) {
        let now = self.now;
        let out = self.s().on_download_progress(now, received);
        self.perform(out);
    }

    pub fn download_done(&mut self, result: Result<(), DownloadFailure>) {
        let now = self.now;
        let out = self.s().on_download_done(now, result);
        self.perform(out);
    }

    /// Link up → CONNECT → CONNACK 0 → SUBSCRIBE → SUBACK; returns what else was sent
    /// on this link (what earlier links carried is dropped).
    pub fn accept(&mut self) -> Vec<DevicePacket> {
        self.sent.clear();
        self.link_up();
        assert!(matches!(self.next(), DevicePacket::Connect { .. }));
        self.broker(testkit::connack(0));
        let DevicePacket::Subscribe { packet_id, filters } = self.next() else { panic!("SUBSCRIBE first") };
        self.broker(testkit::suback(packet_id, filters.len()));
        self.take_sent()
    }

    /// From a fresh boot: token, link, CONNACK, and the first heartbeat acknowledged
    /// (the connection is stable).
    pub fn online(&mut self) {
        if self.wants_token {
            self.give_token("tok1", Some(3_600_000));
        }
        let sent = self.accept();
        let hb = heartbeats(&sent);
        self.broker(testkit::puback(hb[0].packet_id.unwrap()));
    }

    pub fn next(&mut self) -> DevicePacket {
        self.sent.pop_front().expect("the device sent nothing more")
    }

    pub fn take_sent(&mut self) -> Vec<DevicePacket> {
        self.sent.drain(..).collect()
    }

    pub fn acknowledge(&mut self, p: &Publish) {
        self.broker(testkit::puback(p.packet_id.unwrap()));
    }

    /// The backoff delays drawn so far.
    pub fn backoffs(&self) -> Vec<(u64, u32)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Backoff { delay_ms, attempt } => Some((*delay_ms, *attempt)),
                _ => None,
            })
            .collect()
    }

    pub fn saw(&self, want: impl Fn(&Event) -> bool) -> bool {
        self.events.iter().any(want)
    }
}

/// The publishes among `sent`.
pub fn publishes(sent: &[DevicePacket]) -> Vec<Publish> {
    sent.iter()
        .filter_map(|p| match p {
            DevicePacket::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

pub fn publishes_on(sent: &[DevicePacket], class: &str) -> Vec<Publish> {
    publishes(sent).into_iter().filter(|p| p.topic == topic(class)).collect()
}

pub fn heartbeats(sent: &[DevicePacket]) -> Vec<Publish> {
    publishes_on(sent, "heartbeat")
}

pub fn heartbeat(p: &Publish) -> Heartbeat {
    Heartbeat::from_json(&p.payload).unwrap()
}

pub fn json_of(p: &Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap()
}

/// A `cmd` payload valid for an hour.
pub fn cmd(cid: &str, name: &str, args: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "cid": cid, "name": name, "args": args, "expires_at": UNIX_START + 3_600_000 }))
        .unwrap()
}

pub fn cmd_publish(packet_id: u16, payload: &[u8], dup: bool) -> Vec<u8> {
    testkit::publish_qos1(&topic("cmd"), packet_id, payload, dup)
}

pub fn sys_notice(packet_id: u16, notice: Value) -> Vec<u8> {
    testkit::publish_qos1(&topic("sys"), packet_id, notice.to_string().as_bytes(), false)
}
