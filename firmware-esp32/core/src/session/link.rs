//! The link's life outside a live connection: dialing (with the token held or a new
//! one), CONNACK refusals, closes and their codes, failures, the backoff, stopping.

use crate::close_codes::CloseAction;
use crate::mqtt;
use crate::session::token::HeldToken;
use crate::session::{Event, IssuedToken, Link, LinkEnd, Now, Out, Output, Session, TokenError, REFRESH_RETRY_MS};

impl Session {
    /// Connect: with the token held, or after fetching one.
    pub(super) fn dial(&mut self, now: Now, out: &mut Out) {
        match &self.token {
            Some(t) if !t.refresh_due(now.mono_ms) => self.open_link(out),
            _ => {
                self.link = Link::FetchingToken;
                out.push(Output::FetchToken);
            }
        }
    }

    pub(super) fn open_link(&mut self, out: &mut Out) {
        let jwt = self.token.as_ref().expect("a token is held when a link opens").jwt.clone();
        self.link = Link::Opening;
        out.push(Output::OpenLink(jwt));
    }

    pub(super) fn token_arrived(&mut self, now: Now, result: Result<IssuedToken, TokenError>, out: &mut Out) {
        let refreshing = matches!(&self.link, Link::Up(c) if c.refresh.fetching);
        match result {
            Ok(t) => {
                self.token = Some(HeldToken::new(t, now.mono_ms));
                if refreshing {
                    out.event(Event::TokenRefreshed);
                    self.end_link(out);
                    self.link = Link::Offline { retry_at: now.mono_ms };
                } else {
                    out.event(Event::TokenObtained);
                    if matches!(self.link, Link::FetchingToken) {
                        self.open_link(out);
                    }
                }
            }
            Err(TokenError::Rejected(why)) => self.stop(why, out),
            Err(TokenError::Unavailable { error, retry_after_ms }) => {
                if refreshing {
                    let wait = retry_after_ms.unwrap_or(0).max(REFRESH_RETRY_MS);
                    if let Link::Up(c) = &mut self.link {
                        c.refresh.fetching = false;
                        c.refresh.retry_at = Some(now.mono_ms + wait);
                    }
                    out.event(Event::TokenRefreshFailed { error, retry_in_s: Some(wait / 1000) });
                } else if matches!(self.link, Link::FetchingToken) {
                    if self.token.is_some() {
                        // Due for refresh but the endpoint is down: the old token is still valid for a while.
                        out.event(Event::TokenRefreshFailed { error, retry_in_s: None });
                        self.open_link(out);
                    } else {
                        out.event(Event::TokenUnavailable { error });
                        self.schedule_reconnect(now, retry_after_ms, out);
                    }
                }
            }
        }
    }

    pub(super) fn receive(&mut self, now: Now, bytes: &[u8], out: &mut Out) {
        if !matches!(self.link, Link::AwaitingConnAck { .. } | Link::Up(_)) {
            return;
        }
        if let Link::Up(c) = &mut self.link {
            c.last_recv = now.mono_ms;
        }
        self.decoder.push(bytes);
        while matches!(self.link, Link::AwaitingConnAck { .. } | Link::Up(_)) {
            match self.decoder.next_packet() {
                Ok(Some(packet)) => self.on_packet(now, packet, out),
                Ok(None) => return,
                Err(e) => return self.fail_link(now, format!("malformed MQTT from broker: {e}"), out),
            }
        }
    }

    pub(super) fn on_packet(&mut self, now: Now, packet: mqtt::Packet, out: &mut Out) {
        use mqtt::Packet;
        match (&self.link, packet) {
            (Link::AwaitingConnAck { .. }, Packet::ConnAck { return_code: 0, session_present }) => {
                self.connected(now, session_present, out)
            }
            (Link::AwaitingConnAck { .. }, Packet::ConnAck { return_code, .. }) => self.refused(now, return_code, out),
            (Link::AwaitingConnAck { .. }, other) => {
                self.fail_link(now, format!("expected CONNACK, got {other:?}"), out)
            }
            (Link::Up(_), packet) => self.on_connected_packet(now, packet, out),
            _ => {}
        }
    }

    /// CONNACK with a non-zero return code.
    pub(super) fn refused(&mut self, now: Now, return_code: u8, out: &mut Out) {
        out.event(Event::ConnackRefused { return_code });
        out.push(Output::CloseLink);
        self.link_lost(false, format!("CONNACK {return_code}"), out);
        let stopped = match return_code {
            // 4: token missing or malformed, 5: not authorised (expired, revoked jti, client id ≠ sub).
            4 | 5 => self.drop_token(&format!("CONNACK {return_code}"), out),
            // 1: protocol level, 2: client id: a configuration problem retrying cannot fix.
            1 | 2 => {
                self.stop(format!("CONNACK {return_code}: broker refused the protocol level or client id"), out);
                true
            }
            // 3: server unavailable, and anything newer: retry.
            _ => false,
        };
        if !stopped {
            self.schedule_reconnect(now, None, out);
        }
    }

    pub(super) fn closed(&mut self, now: Now, end: LinkEnd, out: &mut Out) {
        let (online, notice) = match &self.link {
            Link::Up(c) => (true, c.notice_close_code),
            Link::AwaitingConnAck { .. } => (false, None),
            _ => return,
        };
        let code = match &end {
            LinkEnd::Closed { code, .. } => code.or(notice),
            LinkEnd::Failed(_) => notice,
        };
        let name = code.and_then(|c| self.close_codes.name_of(c)).map(str::to_owned);
        let why = match end {
            LinkEnd::Closed { reason, .. } => {
                out.event(Event::Closed { code, name: name.clone(), reason: reason.clone() });
                format!("closed with {} ({reason})", code.map_or("no code".to_owned(), |c| c.to_string()))
            }
            LinkEnd::Failed(error) => {
                out.event(Event::LinkFailed { error: error.clone() });
                error
            }
        };
        self.link_lost(online, why, out);
        let stopped = match code.map_or(CloseAction::Reconnect, |c| self.close_codes.action(c)) {
            CloseAction::Stop => {
                let name = name.unwrap_or_default();
                self.stop(format!("closed with {} ({name})", code.unwrap_or_default()), out);
                true
            }
            CloseAction::RefreshToken => self.drop_token("the token expired", out),
            CloseAction::Reconnect => false,
        };
        if !stopped {
            self.schedule_reconnect(now, None, out);
        }
    }

    /// A failure the session noticed itself: close the link and retry with backoff.
    pub(super) fn fail_link(&mut self, now: Now, why: String, out: &mut Out) {
        let online = matches!(self.link, Link::Up(_));
        if online {
            out.event(Event::LinkFailed { error: why.clone() });
        }
        out.push(Output::CloseLink);
        self.link_lost(online, why, out);
        self.schedule_reconnect(now, None, out);
    }

    /// Bookkeeping once a link is gone (or never came up); the link becomes `Offline`.
    pub(super) fn link_lost(&mut self, online: bool, why: String, out: &mut Out) {
        if online {
            self.backoff.on_disconnected();
            out.event(Event::Disconnected);
        } else {
            self.backoff.on_connect_failed();
            out.event(Event::ConnectFailed { error: why });
        }
        self.outbox.on_disconnect();
        self.link = Link::Offline { retry_at: u64::MAX };
    }

    /// Full-jitter delay from the backoff, never shorter than the server's `Retry-After`.
    pub(super) fn schedule_reconnect(&mut self, now: Now, floor_ms: Option<u64>, out: &mut Out) {
        let delay_ms = self.backoff.next_delay_ms(&mut *self.hw.rng).max(floor_ms.unwrap_or(0));
        out.event(Event::Backoff { delay_ms, attempt: self.backoff.attempt() });
        self.link = Link::Offline { retry_at: now.mono_ms + delay_ms };
    }

    /// Forget the token so the next attempt fetches one. A fixed token cannot be
    /// replaced, which makes that fatal: returns `true` when the session stopped.
    pub(super) fn drop_token(&mut self, why: &str, out: &mut Out) -> bool {
        if !self.cfg.token_refreshable {
            self.stop(format!("{why}, and a fixed token cannot be refreshed"), out);
            return true;
        }
        self.token = None;
        false
    }

    /// End the link in order if there is one: DISCONNECT when connected, then close.
    pub(super) fn end_link(&mut self, out: &mut Out) {
        match self.link {
            Link::Up(_) => {
                out.send(mqtt::encode_disconnect());
                out.push(Output::CloseLink);
                self.link_lost(true, String::new(), out);
            }
            Link::AwaitingConnAck { .. } | Link::Opening => {
                out.push(Output::CloseLink);
                self.outbox.on_disconnect();
            }
            _ => {}
        }
    }

    /// Give up for good.
    pub(super) fn stop(&mut self, why: String, out: &mut Out) {
        self.end_link(out);
        out.event(Event::Stopped { reason: why.clone() });
        out.push(Output::Stop(why));
        self.link = Link::Ended;
    }
}
