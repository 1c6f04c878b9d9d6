//! The connection loop: the core's session engine (`fleetwire_core::session`) makes
//! every decision, the same code the simulator runs in the end-to-end tests; this file
//! is the I/O around it: Wi-Fi, the token endpoint, esp_websocket_client with the
//! `mqtt, auth.<jwt>` subprotocols, NVS, the OTA partitions, the clocks, the log.
//!
//! esp_websocket_client delivers frames on its own task, so they reach this loop
//! through a channel. Blocking calls (token exchange, opening the socket, an image
//! download) run inside the loop; the engine is told when they finish.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use embedded_svc::ws::FrameType;
use esp_idf_svc::ws::client::{EspWebSocketClient, EspWebSocketClientConfig, EspWebSocketX509Encoding, WebSocketEventType};
use fleetwire_core::platform::{Clock, Storage};
use fleetwire_core::session::{
    Event, Hardware, LinkEnd, LinkFailure, MlOutcome, Now, OtaWork, Output, RebootKind, Session, SessionConfig, Severity,
    TokenError,
};

use crate::platform::{EspBoard, EspClock, EspRng, NvsStorage};
use crate::provisioning::Provisioning;
use crate::token;
use crate::update;
use crate::wifi::Wifi;

const KEEPALIVE_S: u16 = 60;
const MAX_PACKET: usize = 64 * 1024;
/// Longest wait for a frame before the engine is ticked anyway; its own wakeups are
/// usually sooner.
const POLL: Duration = Duration::from_secs(1);
/// Bound on TCP, TLS and the WebSocket upgrade.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

enum WsEvent {
    Open,
    Data(Vec<u8>),
    Closed,
}

/// An open WebSocket; dropping it closes the connection.
struct Link {
    client: EspWebSocketClient<'static>,
    events: Receiver<WsEvent>,
}

struct Shell<'a> {
    p: &'a Provisioning,
    wifi: &'a mut Wifi,
    storage: &'a mut NvsStorage,
    session: Session,
    link: Option<Link>,
}

fn now() -> Now {
    Now { mono_ms: EspClock.monotonic_ms(), unix_ms: EspClock.unix_ms() }
}

pub fn run(p: &Provisioning, wifi: &mut Wifi, storage: &mut NvsStorage) -> anyhow::Result<()> {
    let mut cfg = SessionConfig::new(&p.device_id, update::RUNNING_VERSION, update::ota_settings(&p.server_url)?);
    cfg.keepalive_s = KEEPALIVE_S;
    cfg.max_packet = MAX_PACKET;
    let hw = Hardware { board: Box::new(EspBoard), rng: Box::new(EspRng) };
    // The bootloader started this binary: an image came up if and only if it is this one.
    let image_starts = |version: &str| version == update::RUNNING_VERSION;
    let (session, first) =
        Session::boot(cfg, hw, &*storage, &image_starts, None, now()).map_err(anyhow::Error::msg)?;
    let mut shell = Shell { p, wifi, storage, session, link: None };
    shell.perform(first);
    loop {
        let outputs = shell.wait();
        shell.perform(outputs);
    }
}

impl Shell<'_> {
    /// Do what the engine asks, in order. Returns once it waits for the outside world;
    /// never returns after a reboot or a stop.
    fn perform(&mut self, outputs: Vec<Output>) {
        let mut queue = VecDeque::from(outputs);
        while let Some(output) = queue.pop_front() {
            let more = match output {
                Output::Send(frame) => self.send(&frame),
                Output::OpenLink(jwt) => self.open(jwt.expose()),
                Output::CloseLink => {
                    self.link = None;
                    Vec::new()
                }
                Output::FetchToken => {
                    let answer = self.fetch_token();
                    self.session.on_token(now(), answer)
                }
                Output::Save { key, value } => {
                    self.storage.set(&key, &value);
                    Vec::new()
                }
                Output::Ota(work) => self.ota(work),
                Output::Reboot(kind) => reboot(kind),
                Output::Stop(why) => halt(&why),
                // Where an application that asks with `Session::request_inference` gets
                // its answer; this firmware asks for none yet, so it only logs.
                Output::Ml(outcome) => {
                    match outcome {
                        MlOutcome::Answered(a) => log::info!("ml answer {}", a.to_json()),
                        MlOutcome::GaveUp { cid, reason, .. } => log::warn!("ml {cid}: no answer ({})", reason.as_str()),
                    }
                    Vec::new()
                }
                Output::Event(e) => {
                    log_event(&e);
                    Vec::new()
                }
            };
            queue.extend(more);
        }
    }

    /// Wait for a frame or the engine's next wakeup, and tell the engine.
    fn wait(&mut self) -> Vec<Output> {
        let until_wakeup = self.session.next_wakeup().map(|at| at.saturating_sub(EspClock.monotonic_ms()));
        let timeout = until_wakeup.map_or(POLL, Duration::from_millis).min(POLL);
        let Some(link) = self.link.as_ref() else {
            std::thread::sleep(timeout);
            return self.session.on_tick(now());
        };
        match link.events.recv_timeout(timeout) {
            Ok(WsEvent::Data(bytes)) => self.session.on_data(now(), &bytes),
            Ok(WsEvent::Open) | Err(RecvTimeoutError::Timeout) => self.session.on_tick(now()),
            Ok(WsEvent::Closed) | Err(RecvTimeoutError::Disconnected) => self.closed(),
        }
    }

    /// The link ended on its own.
    fn closed(&mut self) -> Vec<Output> {
        self.link = None;
        // esp-idf-svc cannot name application close codes (4000-4999): the engine takes
        // the code from the `sys` notice the broker publishes before it closes.
        self.session.on_closed(now(), LinkEnd::Closed { code: None, reason: String::new() })
    }

    fn send(&mut self, frame: &[u8]) -> Vec<Output> {
        let Some(link) = self.link.as_mut() else { return Vec::new() };
        match link.client.send(FrameType::Binary(false), frame) {
            Ok(()) => Vec::new(),
            Err(e) => {
                self.link = None;
                self.session.on_closed(now(), LinkEnd::Failed(format!("send failed: {e}")))
            }
        }
    }

    fn fetch_token(&mut self) -> Result<fleetwire_core::session::IssuedToken, TokenError> {
        self.wifi
            .ensure_connected()
            .map_err(|e| TokenError::Unavailable { error: e.to_string(), retry_after_ms: None })?;
        token::exchange(self.p)
    }

    fn open(&mut self, jwt: &str) -> Vec<Output> {
        if let Err(e) = self.wifi.ensure_connected() {
            return self.session.on_link_failed(now(), LinkFailure::new(e.to_string()));
        }
        let p = self.p;
        let ws_url = format!("{}/mqtt", p.server_url.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1));
        // readme:start (README.md quotes these lines; broker/test/readme-clients.test.ts keeps the quote identical)
        // esp_websocket_client sends this value as is; the server answers `mqtt` only.
        let subprotocols = format!("mqtt, auth.{jwt}");
        let config = EspWebSocketClientConfig {
            subprotocol: Some(&subprotocols),
            // readme:end
            server_cert: p.ca_pem.as_deref().map(EspWebSocketX509Encoding::PEM),
            use_global_ca_store: false,
            buffer_size: 4096,
            disable_auto_reconnect: true,
            network_timeout_ms: Duration::from_secs(10),
            ..Default::default()
        };
        let (tx, events) = channel::<WsEvent>();
        let client = EspWebSocketClient::new(&ws_url, &config, Duration::from_secs(10), move |ev| {
            let e = match ev {
                Ok(e) => match e.event_type {
                    WebSocketEventType::Connected => WsEvent::Open,
                    WebSocketEventType::Binary(b) => WsEvent::Data(b.to_vec()),
                    WebSocketEventType::Close(_) | WebSocketEventType::Closed | WebSocketEventType::Disconnected => {
                        WsEvent::Closed
                    }
                    _ => return,
                },
                Err(_) => WsEvent::Closed,
            };
            let _ = tx.send(e);
        });
        let client = match client {
            Ok(c) => c,
            Err(e) => return self.session.on_link_failed(now(), LinkFailure::new(format!("WebSocket client: {e}"))),
        };
        match events.recv_timeout(OPEN_TIMEOUT) {
            Ok(WsEvent::Open) => {
                self.link = Some(Link { client, events });
                self.session.on_link_up(now())
            }
            _ => self.session.on_link_failed(now(), LinkFailure::new("WebSocket upgrade failed or timed out")),
        }
    }

    fn ota(&mut self, work: OtaWork) -> Vec<Output> {
        match work {
            // esp_ota_begin erases the slot it writes, and a failed write is aborted.
            OtaWork::EraseSlot(_) => Vec::new(),
            OtaWork::ConfirmImage => {
                update::confirm_running_image();
                Vec::new()
            }
            OtaWork::Download(job) => {
                let p = self.p;
                let result = update::install(*job, p, &mut |received: u64| self.serve_during_download(received));
                self.session.on_download_done(now(), result)
            }
        }
    }

    /// Between two chunks of a download: report progress, and keep the link served
    /// (PINGRESP, PUBACKs, commands, keepalive) so it survives a long download.
    fn serve_during_download(&mut self, received: u64) {
        let mut outputs = self.session.on_download_progress(now(), received);
        while let Some(link) = self.link.as_ref() {
            match link.events.try_recv() {
                Ok(WsEvent::Data(bytes)) => outputs.extend(self.session.on_data(now(), &bytes)),
                Ok(WsEvent::Open) => {}
                Err(TryRecvError::Empty) => break,
                Ok(WsEvent::Closed) | Err(TryRecvError::Disconnected) => outputs.extend(self.closed()),
            }
        }
        outputs.extend(self.session.on_tick(now()));
        self.perform(outputs);
    }
}

/// Everything to keep was saved (the engine's `Save`s came first) and the link closed.
fn reboot(kind: RebootKind) -> ! {
    if kind == RebootKind::OtaRollback {
        // Boots the previous image; returns only if that is impossible.
        update::roll_back_and_reboot();
    }
    log::info!("rebooting ({})", kind.as_str());
    esp_idf_svc::hal::reset::restart()
}

/// Credentials are gone (revoked, wrong key) or the broker refuses this configuration:
/// stay offline instead of hammering the server.
fn halt(why: &str) -> ! {
    log::error!("stopping: {why}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The engine's events as log lines (`connected session_present=true attempt=0 …`),
/// the same names and fields the simulator prints.
fn log_event(e: &Event) {
    let (severity, name, fields) = e.describe();
    let line = fields.iter().fold(name.to_owned(), |line, (k, v)| format!("{line} {k}={v}"));
    match severity {
        Severity::Debug => log::debug!("{line}"),
        Severity::Info => log::info!("{line}"),
        Severity::Warn => log::warn!("{line}"),
        Severity::Error => log::error!("{line}"),
    }
}
