//! The real transport: MQTT bytes in binary WebSocket frames over `ws://` or `wss://`
//! (tokio-tungstenite + rustls), with the Fleetwire subprotocol handshake.

use std::sync::Arc;
use std::time::Duration;

use fleetwire_core::session::Jwt;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::http::header::{RETRY_AFTER, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async_tls_with_config, Connector as TlsConnector, MaybeTlsStream, WebSocketStream};

use crate::handshake::{self, HandshakeError};
use crate::transport::{parse_retry_after, CloseInfo, ConnectError, Connector, Link, LinkEvent};

/// Largest WebSocket message accepted; the MQTT decoder has its own packet limit.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// How long `close` waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub struct WsConnector {
    url: String,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl WsConnector {
    /// `url`: the full MQTT endpoint (`ws[s]://host:port/mqtt`); `timeout` bounds TCP,
    /// TLS and the upgrade together.
    pub fn new(url: String, tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Self {
        WsConnector { url, tls, timeout }
    }
}

fn map_error(e: WsError) -> ConnectError {
    match e {
        WsError::Http(resp) => ConnectError::Http {
            status: resp.status().as_u16(),
            retry_after: parse_retry_after(resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok())),
        },
        // tungstenite's own RFC 6455 check; ours (exactly `mqtt`) runs after it.
        WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(e)) => {
            ConnectError::Handshake(HandshakeError::Answered(e.to_string()))
        }
        other => ConnectError::Io(other.to_string()),
    }
}

impl Connector for WsConnector {
    type Link = WsLink;

    async fn connect(&mut self, jwt: &Jwt) -> Result<WsLink, ConnectError> {
        let mut req = self.url.as_str().into_client_request().map_err(|e| ConnectError::Io(e.to_string()))?;
        let offered = handshake::offered_protocols(jwt).map_err(ConnectError::Handshake)?;
        req.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, offered);
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connecting =
            connect_async_tls_with_config(req, Some(cfg), true, Some(TlsConnector::Rustls(self.tls.clone())));
        let (ws, resp) = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| ConnectError::Io(format!("connect timed out after {} s", self.timeout.as_secs())))?
            .map_err(map_error)?;
        if let Err(e) = handshake::check_answered(resp.headers()) {
            let mut link = WsLink { ws };
            link.close().await;
            return Err(ConnectError::Handshake(e));
        }
        Ok(WsLink { ws })
    }
}

pub struct WsLink {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Link for WsLink {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        self.ws.send(Message::binary(frame)).await.map_err(|e| e.to_string())
    }

    async fn recv(&mut self) -> LinkEvent {
        // `StreamExt::next` is cancel-safe: a frame is either returned or stays buffered.
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => return LinkEvent::Data(b.into()),
                Some(Ok(Message::Close(frame))) => {
                    return LinkEvent::Closed(
                        frame.map(|f| CloseInfo { code: f.code.into(), reason: f.reason.as_str().to_owned() }),
                    )
                }
                Some(Ok(Message::Text(_))) => return LinkEvent::Failed("text frame on an MQTT connection".into()),
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None => return LinkEvent::Closed(None),
                Some(Err(e)) => return LinkEvent::Failed(e.to_string()),
            }
        }
    }

    async fn close(&mut self) {
        let closing = async {
            // Also flushes the reply when the peer closed first.
            let _ = self.ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
    }
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
