//! The session while CONNACKed: subscribing, the packets the broker sends, heartbeats,
//! telemetry, keepalive, token refresh and the wait before a reboot.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::backoff::LinkState;
use crate::commands::{CommandContext, Handled};
use crate::heartbeat::HeartbeatScheduler;
use crate::mqtt::{self, Packet, Publish, QoS};
use crate::outbox::Kind;
use crate::platform::Board;
use crate::session::reboot::PlannedReboot;
use crate::session::{earliest, Event, Link, Now, Out, Session, SessionConfig};
use crate::telemetry::{Reading, Telemetry};

/// Per-connection timers and bookkeeping.
pub(super) struct Conn {
    /// SUBSCRIBE waiting for its SUBACK.
    sub_id: Option<u16>,
    last_sent: u64,
    pub(super) last_recv: u64,
    ping_sent_at: Option<u64>,
    next_telemetry: u64,
    /// `close_code` of a `sys` `disconnect` notice: the close that follows carries it,
    /// and some transports cannot read application close codes.
    pub(super) notice_close_code: Option<u16>,
    pub(super) refresh: Refresh,
    /// A due reboot waits for in-flight reports until then ([`super::REBOOT_FLUSH_MS`]).
    pub(super) reboot_by: Option<u64>,
}

/// Token refresh on this connection.
#[derive(Default)]
pub(super) struct Refresh {
    /// A `token-expiring` notice asked for it.
    requested: bool,
    /// Not before then (a failed attempt, or the minimum interval between refreshes).
    pub(super) retry_at: Option<u64>,
    /// [`super::Output::FetchToken`] is out.
    pub(super) fetching: bool,
    /// A fixed token was asked to refresh: said once.
    warned: bool,
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

/// What commands act on.
struct CommandCtx<'a> {
    heartbeat: &'a mut HeartbeatScheduler,
    board: &'a mut dyn Board,
    cfg: &'a SessionConfig,
    fw: &'a str,
    /// Delay of a reboot a `reboot` command asked for.
    reboot_delay_s: Option<u32>,
}

impl CommandContext for CommandCtx<'_> {
    fn set_heartbeat_interval(&mut self, seconds: u32) -> Result<u32, String> {
        self.heartbeat.set_interval_s(seconds)
    }
    fn report_config(&self) -> Value {
        json!({
            "device_id": self.cfg.device_id,
            "fw": self.fw,
            "heartbeat_interval_s": self.heartbeat.interval_s(),
            "keepalive_s": self.cfg.keepalive_s,
            "telemetry_interval_s": self.cfg.telemetry_s,
        })
    }
    fn reboot(&mut self, delay_s: u32) -> Result<(), String> {
        // Only schedules: the session reboots once the result is acknowledged.
        self.reboot_delay_s = Some(self.reboot_delay_s.map_or(delay_s, |d| d.min(delay_s)));
        Ok(())
    }
    fn sample_sensors(&mut self) -> Result<Vec<Reading>, String> {
        self.board.sample_sensors()
    }
}

impl Session {
    pub(super) fn conn(&mut self) -> Option<&mut Conn> {
        match &mut self.link {
            Link::Up(c) => Some(c),
            _ => None,
        }
    }

    fn uptime_ms(&self, now: Now) -> u64 {
        now.mono_ms.saturating_sub(self.boot_ms)
    }

    /// CONNACK 0: subscribe, send what waits in the outbox, heartbeat at once.
    pub(super) fn connected(&mut self, now: Now, session_present: bool, out: &mut Out) {
        self.backoff.on_connack();
        out.event(Event::Connected {
            session_present,
            attempt: self.backoff.attempt(),
            fw: self.ota.running_version().to_owned(),
        });
        // Subscribe every time: cheap, and correct even if the broker lost the session.
        let sub_id = self.outbox.next_packet_id();
        let filters: Vec<(&str, QoS)> = self.topics.subscriptions().iter().map(|t| (*t, QoS::AtLeastOnce)).collect();
        out.send(mqtt::encode_subscribe(sub_id, &filters).expect("contract topics encode"));
        self.link = Link::Up(Box::new(Conn {
            sub_id: Some(sub_id),
            last_sent: now.mono_ms,
            last_recv: now.mono_ms,
            ping_sent_at: None,
            next_telemetry: now.mono_ms + u64::from(self.cfg.telemetry_s) * 1000,
            notice_close_code: None,
            refresh: Refresh::default(),
            reboot_by: None,
        }));
        self.transmit(now, out);
        self.heartbeat.reset_schedule();
    }

    pub(super) fn on_connected_packet(&mut self, now: Now, packet: Packet, out: &mut Out) {
        match packet {
            Packet::PubAck { packet_id } => self.on_puback(now, packet_id, out),
            Packet::SubAck { packet_id, return_codes } => {
                let ours = self.conn().is_some_and(|c| c.sub_id == Some(packet_id));
                if !ours {
                    return out.event(Event::SubAckUnknown { packet_id });
                }
                if let Some(c) = self.conn() {
                    c.sub_id = None;
                }
                for (topic, rc) in self.topics.subscriptions().iter().zip(&return_codes) {
                    if *rc == 0x80 {
                        out.event(Event::SubscribeRefused { topic: topic.to_string() });
                    }
                }
            }
            Packet::PingResp => {
                if let Some(c) = self.conn() {
                    c.ping_sent_at = None;
                }
            }
            Packet::ConnAck { .. } => self.fail_link(now, "second CONNACK".into(), out),
            Packet::Publish(p) => {
                self.on_publish(now, &p, out);
                // Acknowledged after handling: a crash in between means a redelivery,
                // which the command memory recognises.
                if let Some(id) = p.packet_id {
                    self.send(now, mqtt::encode_puback(id), out);
                }
            }
        }
    }

    fn on_puback(&mut self, now: Now, packet_id: u16, out: &mut Out) {
        let Some(done) = self.outbox.ack(packet_id) else {
            return out.event(Event::PubAckUnknown { packet_id });
        };
        match done.kind {
            Kind::Heartbeat => {
                let rtt_ms = now.mono_ms.saturating_sub(done.sent_at.unwrap_or(now.mono_ms));
                let was = self.backoff.state();
                self.backoff.on_heartbeat_acked(rtt_ms);
                out.event(Event::HeartbeatAcked { rtt_ms });
                if was == LinkState::Connected && self.backoff.state() == LinkState::Stable {
                    out.event(Event::Stable { rtt_ms });
                    // The same rule confirms a freshly booted OTA image.
                    self.ota.on_stable(out);
                    self.publish_ota_reports(now, out);
                }
            }
            Kind::CmdResult { cid } => out.event(Event::CmdResultAcked { cid }),
            Kind::OtaStatus | Kind::MlInfer { .. } => {}
        }
    }

    fn on_publish(&mut self, now: Now, p: &Publish, out: &mut Out) {
        if p.topic == self.topics.cmd {
            self.on_command(now, &p.payload, out);
        } else if p.topic == self.topics.sys {
            self.on_sys(&p.payload, out);
        } else if p.topic == self.topics.ota {
            self.ota.on_offer(&p.payload, out);
            self.publish_ota_reports(now, out);
        } else if p.topic == self.topics.ml_result {
            self.on_ml_result(now, &p.payload, out);
        } else {
            out.event(Event::UnexpectedTopic { topic: p.topic.clone() });
        }
    }

    fn on_command(&mut self, now: Now, payload: &[u8], out: &mut Out) {
        let mut ctx = CommandCtx {
            heartbeat: &mut self.heartbeat,
            board: &mut *self.hw.board,
            cfg: &self.cfg,
            fw: self.ota.running_version(),
            reboot_delay_s: None,
        };
        let handled = self.commands.handle(payload, now.unix_ms, &mut ctx);
        let reboot_delay_s = ctx.reboot_delay_s;
        let result = match handled {
            Handled::Fresh(r) => {
                let code = r.error.as_ref().map(|e| e.code.clone());
                out.event(Event::CommandRun { cid: r.cid.clone(), ok: r.ok, code });
                r
            }
            Handled::Duplicate(r) => {
                out.event(Event::CommandDuplicate { cid: r.cid.clone() });
                r
            }
            Handled::Dropped(error) => return out.event(Event::CommandDropped { error }),
        };
        let topic = self.topics.cmd_result.clone();
        // Published before anything reboots: the reboot waits for its PUBACK.
        self.publish_qos1(now, &topic, result.to_json(), Kind::CmdResult { cid: result.cid.clone() }, out);
        if let Some(delay_s) = reboot_delay_s {
            let at = now.mono_ms + u64::from(delay_s) * 1000;
            out.event(Event::RebootPlanned { cid: result.cid.clone(), delay_s });
            // An earlier planned reboot that comes sooner stays.
            if self.planned_reboot.as_ref().is_none_or(|p| p.at > at) {
                self.planned_reboot = Some(PlannedReboot { cid: result.cid, at });
            }
        }
    }

    fn on_sys(&mut self, payload: &[u8], out: &mut Out) {
        let n: SysNotice = match serde_json::from_slice(payload) {
            Ok(n) => n,
            Err(e) => return out.event(Event::SysMalformed { error: e.to_string() }),
        };
        if let Some(c) = self.conn() {
            match n.kind.as_str() {
                "token-expiring" => c.refresh.requested = true,
                // The close with this code follows; `closed` acts on it.
                "disconnect" => c.notice_close_code = n.close_code,
                _ => {}
            }
        }
        out.event(Event::SysNotice {
            kind: n.kind,
            reason: n.reason,
            close_code: n.close_code,
            expires_at: n.expires_at,
        });
    }

    /// Queue a QoS 1 publish; it leaves at once when connected, after CONNACK otherwise.
    pub(super) fn publish_qos1(&mut self, now: Now, topic: &str, payload: Vec<u8>, kind: Kind, out: &mut Out) {
        if let Some(dropped) = self.outbox.push(topic, payload, kind) {
            out.event(Event::OutboxFull { dropped_topic: dropped.publish.topic });
        }
        if matches!(self.link, Link::Up(_)) {
            self.transmit(now, out);
        }
    }

    /// Send what the outbox has not sent on this connection, in order.
    fn transmit(&mut self, now: Now, out: &mut Out) {
        for p in self.outbox.transmit(now.mono_ms) {
            if p.dup {
                out.event(Event::Resent { topic: p.topic.clone(), packet_id: p.packet_id.unwrap_or_default() });
            }
            self.send(now, mqtt::encode_publish(&p).expect("publishes to contract topics encode"), out);
        }
    }

    fn send(&mut self, now: Now, bytes: Vec<u8>, out: &mut Out) {
        out.send(bytes);
        if let Some(c) = self.conn() {
            c.last_sent = now.mono_ms;
        }
    }

    /// The timers of a live connection, in this order: heartbeat, telemetry,
    /// keepalive, token refresh, reboot.
    pub(super) fn tick_connected(&mut self, now: Now, out: &mut Out) {
        self.heartbeat_if_due(now, out);
        self.telemetry_if_due(now, out);
        self.keepalive(now, out);
        self.refresh_if_due(now, out);
        self.reboot_when_flushed(now, out);
    }

    fn heartbeat_if_due(&mut self, now: Now, out: &mut Out) {
        let uptime = self.uptime_ms(now);
        if !matches!(self.link, Link::Up(_)) || !self.heartbeat.is_due(uptime) {
            return;
        }
        let (rssi, heap) = (self.hw.board.rssi(), self.hw.board.heap_free());
        let h = self.heartbeat.next(uptime, rssi, heap);
        match h.to_json() {
            Ok(body) => {
                let topic = self.topics.heartbeat.clone();
                self.publish_qos1(now, &topic, body, Kind::Heartbeat, out);
                out.event(Event::HeartbeatSent { seq: h.seq });
            }
            Err(e) => out.event(Event::HeartbeatInvalid { error: format!("{e:?}") }),
        }
    }

    fn telemetry_if_due(&mut self, now: Now, out: &mut Out) {
        let interval = u64::from(self.cfg.telemetry_s) * 1000;
        match self.conn() {
            Some(c) if interval > 0 && c.next_telemetry <= now.mono_ms => c.next_telemetry = now.mono_ms + interval,
            _ => return,
        }
        // No sensor, or a failed read: nothing to publish this time.
        let readings = match self.hw.board.sample_sensors() {
            Ok(r) if !r.is_empty() => r,
            _ => return,
        };
        // Readings the broker would refuse are reported here instead of being sent to be dropped.
        let telemetry = match Telemetry::new(now.unix_ms, readings) {
            Ok(t) => t,
            Err(e) => {
                out.event(Event::TelemetryInvalid { error: e.to_string() });
                return;
            }
        };
        let p = Publish {
            topic: self.topics.telemetry.clone(),
            qos: QoS::AtMostOnce,
            retain: false,
            dup: false,
            packet_id: None,
            payload: telemetry.to_json(),
        };
        self.send(now, mqtt::encode_publish(&p).expect("publishes to contract topics encode"), out);
        out.event(Event::TelemetrySent);
    }

    /// [MQTT-3.1.2-23]: ping when either direction has been quiet for half the
    /// keepalive, so a half-open link (sends succeed, nothing comes back) is noticed;
    /// no PINGRESP within a keepalive ends the link.
    fn keepalive(&mut self, now: Now, out: &mut Out) {
        let keepalive = u64::from(self.cfg.keepalive_s) * 1000;
        let Some(c) = self.conn() else { return };
        let (ping_sent_at, quiet_since) = (c.ping_sent_at, c.last_sent.min(c.last_recv));
        if keepalive == 0 {
            return;
        }
        match ping_sent_at {
            Some(at) if now.mono_ms - at >= keepalive => {
                self.fail_link(now, format!("no PINGRESP within {} s", keepalive / 1000), out);
            }
            Some(_) => {}
            None if now.mono_ms - quiet_since >= keepalive / 2 => {
                c.ping_sent_at = Some(now.mono_ms);
                self.send(now, mqtt::encode_pingreq(), out);
            }
            None => {}
        }
    }

    fn refresh_if_due(&mut self, now: Now, out: &mut Out) {
        let token_due = self.token.as_ref().is_some_and(|t| t.refresh_due(now.mono_ms));
        let earliest_refresh = self.token.as_ref().map_or(0, |t| t.earliest_refresh());
        let (refreshable, reboot_pending) = (self.cfg.token_refreshable, self.reboot_pending());
        let Some(c) = self.conn() else { return };
        let due = c.refresh.requested || token_due;
        // The reboot reconnects anyway; the refresh can wait for the new boot.
        if !due || c.refresh.fetching || c.refresh.retry_at.is_some_and(|at| at > now.mono_ms) || reboot_pending {
            return;
        }
        if !refreshable {
            if !c.refresh.warned {
                c.refresh.warned = true;
                out.event(Event::TokenNotRefreshable);
            }
            return;
        }
        if earliest_refresh > now.mono_ms {
            c.refresh.retry_at = Some(earliest_refresh);
            return out.event(Event::TokenRefreshDeferred { in_ms: earliest_refresh - now.mono_ms });
        }
        c.refresh.fetching = true;
        out.push(super::Output::FetchToken);
    }

    /// When a live connection next needs the clock.
    pub(super) fn connected_wakeup(&self, c: &Conn) -> Option<u64> {
        let mut at = Some(self.boot_ms + self.heartbeat.next_due_ms());
        if self.cfg.telemetry_s > 0 {
            at = earliest(at, Some(c.next_telemetry));
        }
        let keepalive = u64::from(self.cfg.keepalive_s) * 1000;
        if keepalive > 0 {
            let ping = match c.ping_sent_at {
                Some(sent) => sent + keepalive,
                None => c.last_sent.min(c.last_recv) + keepalive / 2,
            };
            at = earliest(at, Some(ping));
        }
        let refresh_wanted = c.refresh.requested || self.token.as_ref().is_some_and(|t| t.refresh_at.is_some());
        if refresh_wanted && self.cfg.token_refreshable && !c.refresh.fetching && !self.reboot_pending() {
            let due = if c.refresh.requested { 0 } else { self.token.as_ref().and_then(|t| t.refresh_at).unwrap_or(0) };
            at = earliest(at, Some(due.max(c.refresh.retry_at.unwrap_or(0))));
        }
        let reboot = c.reboot_by.or(self.planned_reboot.as_ref().map(|p| p.at));
        earliest(at, reboot)
    }
}
