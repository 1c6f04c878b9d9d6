//! The connection loop: token → WSS with `mqtt, auth.<jwt>` → MQTT 3.1.1 framed by
//! fleetwire-core → heartbeats, commands, OTA offers, sys notices; reconnect with the
//! core's full-jitter backoff. esp_websocket_client delivers frames on its own task,
//! so they reach this loop through a channel.
//!
//! A `reboot` command only schedules: the result is published, and the board resets
//! once its PUBACK arrived (at most [`REBOOT_FLUSH_MS`] of waiting) and the delay has
//! passed, after saving the command memory to NVS so a redelivered `reboot` is
//! answered from it instead of rebooting again.

use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::Duration;

use embedded_svc::ws::FrameType;
use esp_idf_svc::ws::client::{EspWebSocketClient, EspWebSocketClientConfig, EspWebSocketX509Encoding, WebSocketEventType};
use fleetwire_core::backoff::{Backoff, BackoffConfig};
use fleetwire_core::close_codes::{CloseAction, CloseCodes};
use fleetwire_core::commands::{CommandContext, CommandProcessor, Handled};
use fleetwire_core::heartbeat::HeartbeatScheduler;
use fleetwire_core::mqtt::{self, Connect, Decoder, Packet, Publish, QoS};
use fleetwire_core::platform::Clock;
use fleetwire_core::topics::{DeviceTopics, TopicMap};
use serde_json::{Map, Value};

use crate::platform::{EspClock, EspRng, NvsStorage};
use crate::provisioning::Provisioning;
use crate::token::{self, TokenError};
use crate::update::{self, Updater};
use crate::wifi::Wifi;

const KEEPALIVE_S: u16 = 60;
const MAX_PACKET: usize = 64 * 1024;
/// How long a due reboot waits for the PUBACK of the `reboot` command's result.
const REBOOT_FLUSH_MS: u64 = 5_000;

enum Event {
    Open,
    Data(Vec<u8>),
    Closed,
}

/// Why one connection ended, and what to do next.
enum Ended {
    Reconnect,
    RefreshToken,
    Stop(String),
}

/// A reboot a `reboot` command scheduled.
struct PlannedReboot {
    /// Monotonic ms after which to reboot.
    at_ms: u64,
    /// Packet id of the command's result on the current connection.
    result_id: Option<u16>,
    /// The result was acknowledged, or can no longer be (its connection is gone).
    acked: bool,
}

struct Ctx<'a> {
    heartbeat: &'a mut HeartbeatScheduler,
    device_id: &'a str,
    now_ms: u64,
    reboot: &'a mut Option<PlannedReboot>,
}

impl CommandContext for Ctx<'_> {
    fn set_heartbeat_interval(&mut self, seconds: u32) -> Result<u32, String> {
        self.heartbeat.set_interval_s(seconds)
    }
    fn report_config(&self) -> Value {
        serde_json::json!({
            "device_id": self.device_id, "fw": update::RUNNING_VERSION,
            "heartbeat_s": self.heartbeat.interval_s(), "keepalive_s": KEEPALIVE_S,
        })
    }
    fn reboot(&mut self, delay_s: u32) -> Result<(), String> {
        let at_ms = self.now_ms + u64::from(delay_s) * 1000;
        // An already planned reboot that comes sooner stays.
        if !matches!(self.reboot.as_ref(), Some(p) if p.at_ms <= at_ms) {
            *self.reboot = Some(PlannedReboot { at_ms, result_id: None, acked: false });
        }
        Ok(())
    }
    fn sample_sensors(&mut self) -> Result<Map<String, Value>, String> {
        // This board glue has no sensor configured. To add one: implement
        // `fleetwire_core::platform::Sensors` for its driver (in platform.rs, built from
        // the `Peripherals` taken in main.rs, e.g. an I2C temperature/humidity chip),
        // hand it to `run` → `connect_once` → this `Ctx`, and return its `sample()` here
        // (merge the maps when there are several).
        Err("no sensors on this board".into())
    }
}

/// Reset the chip for a planned reboot, keeping the command memory in NVS first.
fn restart(commands: &CommandProcessor, storage: &mut NvsStorage) -> ! {
    commands.save(storage);
    log::info!("rebooting (reboot command)");
    esp_idf_svc::hal::reset::restart()
}

pub fn run(p: &Provisioning, wifi: &mut Wifi, ota: &mut Updater, storage: &mut NvsStorage) -> anyhow::Result<()> {
    let topics = TopicMap::load()?.device_topics(&p.device_id)?;
    let close_codes = CloseCodes::load();
    let mut backoff = Backoff::new(BackoffConfig::default());
    let mut heartbeat = HeartbeatScheduler::new(update::RUNNING_VERSION);
    let mut commands = CommandProcessor::new(32);
    // Results of commands run before the last planned reboot: a redelivered one is not run again.
    commands.restore(storage);
    let mut planned_reboot: Option<PlannedReboot> = None;
    let mut token: Option<token::DeviceToken> = None;
    let mut rng = EspRng;

    loop {
        ota.roll_back_if_unconfirmed(storage, EspClock.monotonic_ms());
        // Offline with a reboot due: its result went with the lost connection.
        if planned_reboot.as_ref().is_some_and(|r| EspClock.monotonic_ms() >= r.at_ms) {
            restart(&commands, storage);
        }
        let wait = |backoff: &mut Backoff, rng: &mut EspRng, floor_s: Option<u64>| {
            let ms = backoff.next_delay_ms(rng).max(floor_s.unwrap_or(0) * 1000);
            log::info!("reconnecting in {ms} ms (attempt {})", backoff.attempt());
            std::thread::sleep(Duration::from_millis(ms));
        };
        if let Err(e) = wifi.ensure_connected() {
            log::warn!("{e}");
            backoff.on_connect_failed();
            wait(&mut backoff, &mut rng, None);
            continue;
        }
        if token.is_none() {
            match token::exchange(p) {
                Ok(t) => token = Some(t),
                Err(TokenError::Refused(why)) => return halt(&format!("token refused: {why}")),
                Err(TokenError::Transient(why, retry_after)) => {
                    log::warn!("token exchange failed: {why}");
                    backoff.on_connect_failed();
                    wait(&mut backoff, &mut rng, retry_after);
                    continue;
                }
            }
        }
        let jwt = &token.as_ref().expect("token fetched above").jwt;
        match connect_once(p, jwt, &topics, &close_codes, &mut backoff, &mut heartbeat, &mut commands, &mut planned_reboot, ota, storage, wifi) {
            Ended::Stop(why) => return halt(&why),
            Ended::RefreshToken => token = None,
            Ended::Reconnect => {}
        }
        backoff.on_disconnected();
        wait(&mut backoff, &mut rng, None);
    }
}

/// Credentials are gone (revoked, wrong key): stay offline instead of hammering the server.
fn halt(why: &str) -> anyhow::Result<()> {
    log::error!("stopping: {why}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[allow(clippy::too_many_arguments)]
fn connect_once(
    p: &Provisioning, jwt: &str, topics: &DeviceTopics, close_codes: &CloseCodes, backoff: &mut Backoff,
    heartbeat: &mut HeartbeatScheduler, commands: &mut CommandProcessor, planned_reboot: &mut Option<PlannedReboot>,
    ota: &mut Updater, storage: &mut NvsStorage, wifi: &Wifi,
) -> Ended {
    // A result published on an earlier connection can no longer be acknowledged.
    if let Some(r) = planned_reboot.as_mut() {
        r.result_id = None;
        r.acked = true;
    }
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
    let (tx, rx) = channel::<Event>();
    let client = EspWebSocketClient::new(&ws_url, &config, Duration::from_secs(10), move |ev| {
        let e = match ev {
            Ok(e) => match e.event_type {
                WebSocketEventType::Connected => Event::Open,
                WebSocketEventType::Binary(b) => Event::Data(b.to_vec()),
                // esp-idf-svc cannot name application close codes (4000-4999); the broker
                // sends a sys notice with the code before it closes, handled below.
                WebSocketEventType::Close(_) | WebSocketEventType::Closed | WebSocketEventType::Disconnected => Event::Closed,
                _ => return,
            },
            Err(_) => Event::Closed,
        };
        let _ = tx.send(e);
    });
    let mut client = match client {
        Ok(c) => c,
        Err(e) => {
            log::warn!("WebSocket client: {e}");
            backoff.on_connect_failed();
            return Ended::Reconnect;
        }
    };
    match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(Event::Open) => {}
        _ => {
            log::warn!("WebSocket upgrade failed or timed out");
            backoff.on_connect_failed();
            return Ended::Reconnect;
        }
    }
    let mut send = |bytes: &[u8]| client.send(FrameType::Binary(false), bytes).is_ok();
    let connect = mqtt::encode_connect(&Connect { client_id: &p.device_id, keep_alive_s: KEEPALIVE_S, clean_session: false });
    if !connect.map(|b| send(&b)).unwrap_or(false) {
        return Ended::Reconnect;
    }

    let clock = EspClock;
    let mut decoder = Decoder::new(MAX_PACKET);
    let mut next_id: u16 = 1;
    let mut connected = false;
    let mut pending_heartbeat: Option<(u16, u64)> = None;
    let mut last_sent = clock.monotonic_ms();
    let mut refresh_after_this = false;
    let mut sys_close: Option<u16> = None;
    heartbeat.reset_schedule();

    loop {
        let now = clock.monotonic_ms();
        ota.roll_back_if_unconfirmed(storage, now);
        let mut alloc_id = || {
            let id = next_id;
            next_id = next_id.checked_add(1).unwrap_or(1);
            id
        };
        if connected && heartbeat.is_due(now) {
            let heap = unsafe { esp_idf_svc::sys::esp_get_free_heap_size() };
            let hb = heartbeat.next(now, wifi.rssi(), heap);
            let id = alloc_id();
            let publish = Publish { topic: topics.heartbeat.clone(), qos: QoS::AtLeastOnce, retain: false, dup: false, packet_id: Some(id), payload: hb.to_json().unwrap_or_default() };
            if let Ok(b) = mqtt::encode_publish(&publish) {
                send(&b);
                last_sent = now;
                pending_heartbeat.get_or_insert((id, now));
            }
        }
        if now.saturating_sub(last_sent) > KEEPALIVE_S as u64 * 500 {
            send(&mqtt::encode_pingreq());
            last_sent = now;
        }
        if let Some(r) = planned_reboot.as_ref() {
            if now >= r.at_ms && (r.acked || now >= r.at_ms + REBOOT_FLUSH_MS) {
                send(&mqtt::encode_disconnect());
                // Let the DISCONNECT frame leave before the reset.
                std::thread::sleep(Duration::from_millis(100));
                restart(commands, storage);
            }
        }
        if refresh_after_this {
            send(&mqtt::encode_disconnect());
            return Ended::RefreshToken;
        }

        let bytes = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Data(b)) => b,
            Ok(Event::Open) | Err(RecvTimeoutError::Timeout) => continue,
            Ok(Event::Closed) | Err(RecvTimeoutError::Disconnected) => {
                if !connected {
                    backoff.on_connect_failed();
                }
                return match sys_close.map(|c| close_codes.action(c)) {
                    Some(CloseAction::Stop) => Ended::Stop("the server revoked this device's credentials".into()),
                    Some(CloseAction::RefreshToken) => Ended::RefreshToken,
                    _ => Ended::Reconnect,
                };
            }
        };
        let packets = match decoder.feed(&bytes) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("malformed MQTT from the server: {e:?}");
                return Ended::Reconnect;
            }
        };
        for packet in packets {
            match packet {
                Packet::ConnAck { return_code: 0, session_present } => {
                    connected = true;
                    backoff.on_connack();
                    log::info!("connected (session present: {session_present})");
                    let filters: Vec<(&str, QoS)> = topics.subscriptions().iter().map(|t| (*t, QoS::AtLeastOnce)).collect();
                    if let Ok(b) = mqtt::encode_subscribe(alloc_id(), &filters) {
                        send(&b);
                    }
                }
                Packet::ConnAck { return_code, .. } => {
                    backoff.on_connect_failed();
                    // 4 = bad token format, 5 = refused: a fresh token is the only hope.
                    log::warn!("CONNACK {return_code}");
                    return if return_code == 4 || return_code == 5 { Ended::RefreshToken } else { Ended::Reconnect };
                }
                Packet::PubAck { packet_id } => {
                    if let Some(r) = planned_reboot.as_mut().filter(|r| r.result_id == Some(packet_id)) {
                        r.acked = true;
                    }
                    if let Some((id, sent)) = pending_heartbeat {
                        if id == packet_id {
                            pending_heartbeat = None;
                            backoff.on_heartbeat_acked(clock.monotonic_ms().saturating_sub(sent));
                            // A new image is confirmed by its first stable connection.
                            ota.confirm_if_pending(storage, &mut |topic, payload| { publish_qos1(&mut send, &mut alloc_id, topic, payload); }, &topics.ota_status);
                        }
                    }
                }
                Packet::Publish(msg) => {
                    if let Some(id) = msg.packet_id {
                        send(&mqtt::encode_puback(id));
                    }
                    if msg.topic == topics.cmd {
                        let mut ctx = Ctx { heartbeat: &mut *heartbeat, device_id: &p.device_id, now_ms: clock.monotonic_ms(), reboot: &mut *planned_reboot };
                        let result = match commands.handle(&msg.payload, clock.unix_ms(), &mut ctx) {
                            Handled::Fresh(r) | Handled::Duplicate(r) => Some(r),
                            _ => None,
                        };
                        if let Some(r) = result {
                            let id = publish_qos1(&mut send, &mut alloc_id, &topics.cmd_result, &r.to_json());
                            // A reboot this command just scheduled waits for this PUBACK.
                            if let Some(planned) = planned_reboot.as_mut().filter(|pr| pr.result_id.is_none() && !pr.acked) {
                                planned.result_id = Some(id);
                            }
                        }
                    } else if msg.topic == topics.sys {
                        let v: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
                        match v.get("type").and_then(Value::as_str) {
                            Some("token-expiring") => refresh_after_this = true,
                            Some("disconnect") => sys_close = v.get("close_code").and_then(Value::as_u64).map(|c| c as u16),
                            _ => {}
                        }
                    } else if msg.topic == topics.ota {
                        // Blocking: the download holds the loop, keepalive pings aside; the broker
                        // keeps the session, and a lost connection is simply re-established after.
                        let mut report = |topic: &str, payload: &[u8]| { publish_qos1(&mut send, &mut alloc_id, topic, payload); };
                        ota.handle_offer(&msg.payload, p, storage, &mut report, &topics.ota_status);
                    }
                }
                Packet::SubAck { .. } | Packet::PingResp => {}
            }
        }
    }
}

/// Returns the packet id used.
fn publish_qos1(send: &mut impl FnMut(&[u8]) -> bool, alloc_id: &mut impl FnMut() -> u16, topic: &str, payload: &[u8]) -> u16 {
    let id = alloc_id();
    let publish = Publish { topic: topic.to_string(), qos: QoS::AtLeastOnce, retain: false, dup: false, packet_id: Some(id), payload: payload.to_vec() };
    if let Ok(b) = mqtt::encode_publish(&publish) {
        send(&b);
    }
    id
}
