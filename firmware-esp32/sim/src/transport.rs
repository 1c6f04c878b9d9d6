//! What the session needs from a transport: open a link with a token, exchange binary
//! frames, learn how it closed. The real one is WebSocket ([`crate::ws`]); tests use an
//! in-memory one. Generic (not `dyn`) so the futures stay `Send` for `tokio::spawn`.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use fleetwire_core::session::Jwt;

use crate::handshake::HandshakeError;

/// How the peer closed a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    pub code: u16,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// One binary frame: any number of whole or partial MQTT packets.
    Data(Vec<u8>),
    /// Orderly close; `None` when it came without a close frame (TCP reset, EOF).
    Closed(Option<CloseInfo>),
    /// Transport failure (I/O, protocol violation, text frame).
    Failed(String),
}

/// An open link to the broker.
pub trait Link: Send {
    /// Send one binary frame.
    fn send(&mut self, frame: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send;
    /// The next event. Must be cancel-safe: the session polls it inside `select!`.
    fn recv(&mut self) -> impl Future<Output = LinkEvent> + Send;
    /// Close normally and give the peer a moment to answer; never fails.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The upgrade was answered with an HTTP status instead of 101 (400: no `mqtt`
    /// offered, 429: rate limited, 503: draining).
    Http { status: u16, retry_after: Option<Duration> },
    /// The token could not be offered, or the server chose the wrong subprotocol.
    Handshake(HandshakeError),
    /// DNS, TCP, TLS or WebSocket failure, or timeout.
    Io(String),
}

impl ConnectError {
    /// The server's own wait hint, which the backoff delay must not undercut.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Http { status, retry_after: Some(d) } => {
                write!(f, "upgrade refused with HTTP {status}, retry after {} s", d.as_secs())
            }
            ConnectError::Http { status, retry_after: None } => write!(f, "upgrade refused with HTTP {status}"),
            ConnectError::Handshake(e) => e.fmt(f),
            ConnectError::Io(e) => f.write_str(e),
        }
    }
}

/// Opens links.
pub trait Connector: Send {
    type Link: Link;
    fn connect(&mut self, jwt: &Jwt) -> impl Future<Output = Result<Self::Link, ConnectError>> + Send;
}

/// Parse an HTTP `Retry-After` given in seconds (the broker's form; dates are ignored).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value.and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_ignores_dates() {
        assert_eq!(parse_retry_after(Some(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(parse_retry_after(None), None);
        let e = ConnectError::Http { status: 429, retry_after: Some(Duration::from_secs(3)) };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(e.to_string(), "upgrade refused with HTTP 429, retry after 3 s");
    }
}
