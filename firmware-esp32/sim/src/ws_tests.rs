//! The real transport over real loopback sockets: a small tokio-tungstenite server
//! that checks the subprotocol offer like the broker does, bridged to the scripted
//! broker of [`crate::testkit`]. Real time here (sockets and a paused clock do not mix).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetwire_core::session::Jwt;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::WsConnector;
use crate::auth::StaticToken;
use crate::flash::TempDir;
use crate::handshake::HandshakeError;
use crate::session::{Exit, Session, Shutdown};
use crate::stats::Stats;
use crate::testkit::{publish_qos1, session_config, BrokerConn, DevicePacket};
use crate::tls::{client_config, Trust};
use crate::transport::{ConnectError, Connector, Link, LinkEvent};

const JWT: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJlc3AtMDEifQ.c2lnbmF0dXJl";

fn fixture(name: &str) -> PathBuf {
    crate::testkit::test_pki(name)
}

/// What the test server puts in its `Sec-WebSocket-Protocol` answer.
#[derive(Clone, Copy)]
enum Answer {
    /// Like the broker: `mqtt` if offered, else HTTP 400.
    Mqtt,
    /// Like a naive `ws` server: the first token-looking entry, i.e. the token.
    AuthEntry,
}

struct TestServer {
    url: String,
    conns: mpsc::UnboundedReceiver<BrokerConn>,
}

fn tls_acceptor() -> TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("server-cert.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server-key.pem")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(cfg))
}

/// Serve WebSocket upgrades on `/mqtt` and the token endpoint on one port, like
/// `fleetwire up`. `keys`: API key → device id.
async fn serve(tls: bool, answer: Answer, keys: &'static [(&'static str, &'static str)]) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, conns) = mpsc::unbounded_channel();
    let acceptor = tls.then(tls_acceptor);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                match acceptor {
                    Some(a) => {
                        if let Ok(s) = a.accept(tcp).await {
                            handle(s, answer, keys, tx).await
                        }
                    }
                    None => handle(tcp, answer, keys, tx).await,
                }
            });
        }
    });
    let scheme = if tls { "wss" } else { "ws" };
    // `localhost`, not the IP, so the TLS test also checks the certificate's DNS name.
    TestServer { url: format!("{scheme}://localhost:{}", addr.port()), conns }
}

/// Serve one connection: the token endpoint for `POST `, else a WebSocket upgrade.
// tungstenite fixes the callback's error type.
#[allow(clippy::result_large_err)]
async fn handle<S>(mut s: S, answer: Answer, keys: &'static [(&str, &str)], tx: mpsc::UnboundedSender<BrokerConn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut head = vec![0u8; 5];
    if s.read_exact(&mut head).await.is_err() {
        return;
    }
    if &head == b"POST " {
        return token_endpoint(s, head, keys).await;
    }
    let stream = Prefixed { prefix: head, pos: 0, inner: s };
    let offered = Arc::new(Mutex::new(String::new()));
    let seen = offered.clone();
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let v = req.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        *seen.lock().unwrap() = v.clone();
        let entries: Vec<&str> = v.split(',').map(str::trim).collect();
        let chosen = match answer {
            Answer::Mqtt if entries.contains(&"mqtt") => "mqtt".to_owned(),
            Answer::Mqtt => {
                let mut r = ErrorResponse::new(Some("no mqtt subprotocol".into()));
                *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::BAD_REQUEST;
                return Err(r);
            }
            Answer::AuthEntry => entries.iter().find(|e| e.starts_with("auth.")).unwrap_or(&"").to_string(),
        };
        resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(&chosen).unwrap());
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let offered = offered.lock().unwrap().clone();
    let (conn, mut to_device, from_device) = BrokerConn::bridged(offered);
    if tx.send(conn).is_err() {
        return;
    }
    // Bridge: scripted broker → WebSocket frames, WebSocket frames → scripted broker.
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            ev = to_device.recv() => match ev {
                Some(LinkEvent::Data(b)) => { let _ = sink.send(Message::binary(b)).await; }
                Some(LinkEvent::Closed(Some(c))) => {
                    let frame = CloseFrame { code: c.code.into(), reason: c.reason.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                }
                Some(_) | None => return,
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => { let _ = from_device.send(b.to_vec()); }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// `POST /v1/devices/token`: `{api_key}` → `{token, device_id, expires_in}` or 401.
async fn token_endpoint<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, mut buf: Vec<u8>, keys: &[(&str, &str)]) {
    let mut chunk = [0u8; 1024];
    let body = loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break buf[end + 4..end + 4 + len].to_vec();
            }
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "request cut short");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert!(String::from_utf8_lossy(&buf).starts_with("POST /v1/devices/token HTTP/1.1"));
    let key = serde_json::from_slice::<Value>(&body).unwrap()["api_key"].as_str().unwrap().to_owned();
    let (status, reply) = match keys.iter().find(|(k, _)| *k == key) {
        Some((_, id)) => ("200 OK", json!({ "token": format!("hdr.{id}.sig"), "device_id": id, "expires_in": 3600 })),
        None => {
            ("401 Unauthorized", json!({ "error": { "code": "AUTH_INVALID_API_KEY", "message": "invalid API key" } }))
        }
    };
    let reply = reply.to_string();
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
        reply.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// Replays bytes already read before the rest of the stream.
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn connector(url: &str, ca: bool) -> WsConnector {
    let ca_path = fixture("ca.pem");
    let trust = Trust { ca_file: ca.then_some(ca_path.as_path()), webpki_roots: true };
    WsConnector::new(format!("{url}/mqtt"), client_config(&trust).unwrap(), Duration::from_secs(5))
}

async fn next_conn(server: &mut TestServer) -> BrokerConn {
    tokio::time::timeout(Duration::from_secs(10), server.conns.recv()).await.expect("no connection").unwrap()
}

#[tokio::test]
async fn a_session_runs_over_a_real_websocket_with_the_subprotocol_handshake() {
    let mut server = serve(false, Answer::Mqtt, &[]).await;
    let stats = Arc::new(Stats::default());
    let (stop, rx) = watch::channel(false);
    let state = TempDir::new("fleetwire-sim-ws-test").unwrap();
    let mut cfg = session_config("esp-01", &state);
    cfg.engine.telemetry_s = 0;
    let session = Session::new(
        cfg,
        connector(&server.url, false),
        StaticToken::new(Jwt::new(JWT)),
        stats.clone(),
        Shutdown::new(rx),
    )
    .unwrap();
    let task = tokio::spawn(session.run());

    let mut c = next_conn(&mut server).await;
    assert_eq!(c.offered, format!("mqtt, auth.{JWT}"));
    let (connect, _) = c.accept().await;
    assert!(matches!(connect, DevicePacket::Connect { client_id, .. } if client_id == "esp-01"));
    let DevicePacket::Publish(hb) = c.expect_where(|p| matches!(p, DevicePacket::Publish(_))).await else {
        unreachable!()
    };
    assert_eq!(hb.topic, "devices/esp-01/heartbeat");
    c.send(fleetwire_core::mqtt::encode_puback(hb.packet_id.unwrap()));
    let ping = json!({ "cid": "c-ws", "name": "ping", "args": {}, "expires_at": u64::MAX / 2 });
    c.send(publish_qos1("devices/esp-01/cmd", 1, ping.to_string().as_bytes(), false));
    let result = c.expect_publish_on("devices/esp-01/cmd/result").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&result.payload).unwrap(),
        json!({ "cid": "c-ws", "ok": true, "result": { "pong": true } })
    );

    stop.send(true).unwrap();
    assert_eq!(c.until_closed().await.last(), Some(&DevicePacket::Disconnect));
    assert_eq!(task.await.unwrap(), Exit::Shutdown);
    assert_eq!(stats.heartbeats_acked.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn close_codes_arrive_through_the_websocket_close_frame() {
    let mut server = serve(false, Answer::Mqtt, &[]).await;
    let (_stop, rx) = watch::channel(false);
    let state = TempDir::new("fleetwire-sim-ws-test").unwrap();
    let session = Session::new(
        session_config("esp-01", &state),
        connector(&server.url, false),
        StaticToken::new(Jwt::new(JWT)),
        Arc::new(Stats::default()),
        Shutdown::new(rx),
    )
    .unwrap();
    let task = tokio::spawn(session.run());
    let mut c = next_conn(&mut server).await;
    c.accept().await;
    c.close(4003, "credentials revoked");
    let exit = tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    assert!(matches!(&exit, Exit::Stopped(why) if why.contains("4003") && why.contains("revoked")), "{exit:?}");
}

#[tokio::test]
async fn a_server_that_answers_the_token_entry_is_refused_without_repeating_the_token() {
    let server = serve(false, Answer::AuthEntry, &[]).await;
    let Err(e) = connector(&server.url, false).connect(&Jwt::new(JWT)).await else { panic!("must fail") };
    assert!(matches!(e, ConnectError::Handshake(HandshakeError::Answered(_))), "{e:?}");
    assert!(!e.to_string().contains("c2lnbmF0dXJl"), "{e}");
}

#[tokio::test]
async fn wss_needs_the_ca_and_works_with_it() {
    let server = serve(true, Answer::Mqtt, &[]).await;
    let mut link = connector(&server.url, true).connect(&Jwt::new(JWT)).await.expect("trusted via --ca");
    link.close().await;
    let Err(e) = connector(&server.url, false).connect(&Jwt::new(JWT)).await else { panic!("untrusted CA") };
    assert!(matches!(&e, ConnectError::Io(m) if m.contains("certificate")), "{e:?}");
}

#[tokio::test]
async fn a_refused_upgrade_reports_its_status_and_retry_after() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n").await;
    });
    let Err(e) = connector(&format!("ws://{addr}"), false).connect(&Jwt::new(JWT)).await else { panic!() };
    assert_eq!(e, ConnectError::Http { status: 429, retry_after: Some(Duration::from_secs(7)) });
}

/// Broker script for the fleet test: accept, acknowledge heartbeats, report the
/// client id, token offered and whether DISCONNECT came before the close.
async fn auto_broker(mut c: BrokerConn) -> (String, String, bool) {
    let (connect, _) = c.accept().await;
    let DevicePacket::Connect { client_id, .. } = connect else { unreachable!() };
    let mut disconnected = false;
    while let Some(p) = c.next().await {
        match p {
            DevicePacket::Publish(p) if p.packet_id.is_some() => {
                c.send(fleetwire_core::mqtt::encode_puback(p.packet_id.unwrap()))
            }
            DevicePacket::Disconnect => disconnected = true,
            _ => {}
        }
    }
    (client_id, c.offered.clone(), disconnected)
}

#[tokio::test]
async fn the_fleet_exchanges_keys_connects_every_device_and_stops_cleanly() {
    let mut server = serve(false, Answer::Mqtt, &[("fwk_one", "dev-one"), ("fwk_two", "dev-two")]).await;
    let keys = std::env::temp_dir().join(format!("fleetwire-sim-fleet-{}.keys", std::process::id()));
    std::fs::write(&keys, "dev-one fwk_one\ndev-two fwk_two\n").unwrap();
    let args = format!(
        "--url {} --keys-file {} --devices 2 --heartbeat-s 5 --telemetry-s 0 --duration-s 2 --stats-s 1 --log warn",
        server.url,
        keys.display()
    );
    let crate::cli::Parsed::Run(opts) = crate::cli::parse(args.split_whitespace().map(String::from), |_| None).unwrap()
    else {
        panic!()
    };
    let fleet = tokio::spawn(crate::fleet::run(*opts));
    let b1 = tokio::spawn(auto_broker(next_conn(&mut server).await));
    let b2 = tokio::spawn(auto_broker(next_conn(&mut server).await));
    assert_eq!(fleet.await.unwrap(), crate::fleet::EXIT_OK);
    let mut seen = vec![b1.await.unwrap(), b2.await.unwrap()];
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("dev-one".into(), "mqtt, auth.hdr.dev-one.sig".into(), true),
            ("dev-two".into(), "mqtt, auth.hdr.dev-two.sig".into(), true),
        ]
    );
    std::fs::remove_file(keys).unwrap();
}

#[tokio::test]
async fn a_rejected_api_key_stops_the_device_and_the_exit_code_says_so() {
    let server = serve(false, Answer::Mqtt, &[]).await;
    let args = format!("--url {} --device-id dev-one --api-key fwk_wrong --log error", server.url);
    let crate::cli::Parsed::Run(opts) = crate::cli::parse(args.split_whitespace().map(String::from), |_| None).unwrap()
    else {
        panic!()
    };
    let code = tokio::time::timeout(Duration::from_secs(10), crate::fleet::run(*opts)).await.unwrap();
    assert_eq!(code, crate::fleet::EXIT_DEVICE_STOPPED);
}
