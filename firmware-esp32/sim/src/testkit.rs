//! Test doubles: an in-memory transport whose far end is a scripted broker speaking
//! MQTT bytes, and a token source with observable behaviour.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetwire_core::backoff::BackoffConfig;
use fleetwire_core::ml::MlAsk;
use fleetwire_core::mqtt::Publish;
use fleetwire_core::session::{IssuedToken, Jwt, MlOutcome, TokenError};
pub use fleetwire_core::testkit::{connack, pingresp, publish_qos1, suback, DevicePacket};
use fleetwire_core::testkit::{parse_device_packet, split_packet, MaxRng};
use fleetwire_core::topics::{DeviceTopics, TopicMap};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::TokenSource;
use crate::flash::TempDir;
use crate::handshake;
use crate::ota::OtaConfig;
use crate::session::{Exit, Session, SessionConfig, Shutdown};
use crate::stats::Stats;
use crate::transport::{CloseInfo, ConnectError, Connector, Link, LinkEvent};

/// The device id the harness runs.
pub const ID: &str = "esp-01";

/// Upper bound (virtual time) for any single expectation, so a broken test fails
/// instead of hanging.
const EXPECT_WITHIN: Duration = Duration::from_secs(3600);

/// The broker's end of one in-memory connection.
pub struct BrokerConn {
    /// The `Sec-WebSocket-Protocol` value the device offered.
    pub offered: String,
    pub opened_at: Instant,
    to_device: mpsc::UnboundedSender<LinkEvent>,
    from_device: mpsc::UnboundedReceiver<Vec<u8>>,
    buf: Vec<u8>,
    /// Frames received so far (to check packing).
    pub frames: usize,
}

impl BrokerConn {
    /// A broker end fed by something else than [`MemConnector`] (the WebSocket test
    /// server bridges a real socket to it). Returns the channel ends to bridge.
    pub fn bridged(
        offered: String,
    ) -> (BrokerConn, mpsc::UnboundedReceiver<LinkEvent>, mpsc::UnboundedSender<Vec<u8>>) {
        let (to_device, device_rx) = mpsc::unbounded_channel();
        let (device_tx, from_device) = mpsc::unbounded_channel();
        let conn =
            BrokerConn { offered, opened_at: Instant::now(), to_device, from_device, buf: Vec::new(), frames: 0 };
        (conn, device_rx, device_tx)
    }

    /// The next packet, or `None` once the device closed the link.
    pub async fn next(&mut self) -> Option<DevicePacket> {
        loop {
            if let Some(p) = split_packet(&mut self.buf) {
                return Some(parse_device_packet(&p));
            }
            let frame =
                tokio::time::timeout(EXPECT_WITHIN, self.from_device.recv()).await.expect("device went silent")?;
            self.frames += 1;
            self.buf.extend(frame);
        }
    }

    pub async fn expect(&mut self) -> DevicePacket {
        self.next().await.expect("link closed by the device")
    }

    /// Skip packets until one satisfies `pred`.
    pub async fn expect_where(&mut self, pred: impl Fn(&DevicePacket) -> bool) -> DevicePacket {
        loop {
            let p = self.expect().await;
            if pred(&p) {
                return p;
            }
        }
    }

    pub async fn expect_publish_on(&mut self, topic: &str) -> Publish {
        match self.expect_where(|p| matches!(p, DevicePacket::Publish(x) if x.topic == topic)).await {
            DevicePacket::Publish(p) => p,
            _ => unreachable!(),
        }
    }

    /// Wait until the device closes the link; returns what it sent meanwhile.
    pub async fn until_closed(&mut self) -> Vec<DevicePacket> {
        let mut seen = Vec::new();
        while let Some(p) = self.next().await {
            seen.push(p);
        }
        seen
    }

    pub fn send(&self, bytes: Vec<u8>) {
        let _ = self.to_device.send(LinkEvent::Data(bytes));
    }
    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.to_device.send(LinkEvent::Closed(Some(CloseInfo { code, reason: reason.into() })));
    }

    /// CONNECT → CONNACK 0 → SUBSCRIBE → SUBACK. Returns the CONNECT and SUBSCRIBE.
    pub async fn accept(&mut self) -> (DevicePacket, DevicePacket) {
        let connect = self.expect().await;
        assert!(matches!(connect, DevicePacket::Connect { .. }), "{connect:?}");
        self.send(connack(0));
        let sub = self.expect().await;
        let DevicePacket::Subscribe { packet_id, filters } = &sub else { panic!("expected SUBSCRIBE, got {sub:?}") };
        self.send(suback(*packet_id, filters.len()));
        (connect, sub)
    }
}

/// Device end of an in-memory connection.
pub struct MemLink {
    to_broker: Option<mpsc::UnboundedSender<Vec<u8>>>,
    from_broker: mpsc::UnboundedReceiver<LinkEvent>,
}

impl Link for MemLink {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        match &self.to_broker {
            Some(tx) => tx.send(frame).map_err(|_| "broker gone".to_string()),
            None => Err("link closed".into()),
        }
    }
    async fn recv(&mut self) -> LinkEvent {
        self.from_broker.recv().await.unwrap_or(LinkEvent::Closed(None))
    }
    async fn close(&mut self) {
        self.to_broker = None;
    }
}

/// Hands each new connection's broker end to the test; can be scripted to fail.
#[derive(Clone)]
pub struct MemConnector {
    conns: mpsc::UnboundedSender<BrokerConn>,
    pub failures: Arc<Mutex<VecDeque<ConnectError>>>,
    /// When every connection attempt (failed or not) was made.
    pub attempts: Arc<Mutex<Vec<Instant>>>,
}

impl MemConnector {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<BrokerConn>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (MemConnector { conns: tx, failures: Default::default(), attempts: Default::default() }, rx)
    }
}

impl Connector for MemConnector {
    type Link = MemLink;
    async fn connect(&mut self, jwt: &Jwt) -> Result<MemLink, ConnectError> {
        self.attempts.lock().unwrap().push(Instant::now());
        let offered = handshake::offered_protocols(jwt).map_err(ConnectError::Handshake)?;
        if let Some(e) = self.failures.lock().unwrap().pop_front() {
            return Err(e);
        }
        let (to_broker, from_device) = mpsc::unbounded_channel();
        let (to_device, from_broker) = mpsc::unbounded_channel();
        let conn = BrokerConn {
            offered: offered.to_str().unwrap().to_owned(),
            opened_at: Instant::now(),
            to_device,
            from_device,
            buf: Vec::new(),
            frames: 0,
        };
        self.conns.send(conn).map_err(|_| ConnectError::Io("test broker gone".into()))?;
        Ok(MemLink { to_broker: Some(to_broker), from_broker })
    }
}

/// Issues `hdr.tokN.sig`, counting fetches; can refuse like the real endpoint.
#[derive(Clone, Default)]
pub struct FakeTokens {
    pub issued: Arc<AtomicUsize>,
    pub lifetime: Option<Duration>,
    /// `false`: behaves like a fixed `--token` (same token, cannot refresh).
    pub refreshable: bool,
    pub reject: Arc<AtomicBool>,
}

impl FakeTokens {
    pub fn refreshable(lifetime: Duration) -> Self {
        FakeTokens { lifetime: Some(lifetime), refreshable: true, ..Default::default() }
    }
    pub fn fixed() -> Self {
        FakeTokens::default()
    }
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl TokenSource for FakeTokens {
    async fn fetch(&mut self) -> Result<IssuedToken, TokenError> {
        if self.reject.load(Ordering::SeqCst) {
            return Err(TokenError::Rejected("HTTP 401 AUTH_INVALID_API_KEY: invalid API key".into()));
        }
        let n = if self.refreshable { self.issued.fetch_add(1, Ordering::SeqCst) + 1 } else { 1 };
        Ok(IssuedToken {
            jwt: Jwt::new(format!("hdr.tok{n}.sig")),
            lifetime_ms: self.lifetime.filter(|_| self.refreshable).map(|l| l.as_millis() as u64),
        })
    }
    fn can_refresh(&self) -> bool {
        self.refreshable
    }
}

/// A [`SessionConfig`] whose device state (emulated NVS and flash) lives in `state`.
pub fn session_config(device_id: &str, state: &TempDir) -> SessionConfig {
    let mut cfg = SessionConfig::new(device_id);
    cfg.ota = OtaConfig::new(state.path().to_owned());
    cfg
}

/// One simulated device ([`ID`]) running against the in-memory broker.
pub struct Harness {
    pub conns: mpsc::UnboundedReceiver<BrokerConn>,
    pub connector: MemConnector,
    pub tokens: FakeTokens,
    pub stats: Arc<Stats>,
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<Exit>,
    pub topics: DeviceTopics,
    /// The device's persistent state; shared with a later harness to simulate a
    /// restart of the simulator process.
    pub state: Arc<TempDir>,
    /// How the inference request of [`Harness::start_ml`] ended.
    pub ml: Option<oneshot::Receiver<MlOutcome>>,
}

impl Harness {
    /// A device that asks for `ask` once connected (`fleetwire-sim ... ml`).
    pub fn start_ml(tokens: FakeTokens, ask: MlAsk) -> Harness {
        let state = Arc::new(TempDir::new("fleetwire-sim-test").unwrap());
        Harness::launch(state, tokens, |_| {}, vec![], Some(ask))
    }

    pub fn start(tokens: FakeTokens, tweak: impl FnOnce(&mut SessionConfig), failures: Vec<ConnectError>) -> Harness {
        let state = Arc::new(TempDir::new("fleetwire-sim-test").unwrap());
        Harness::start_in(state, tokens, tweak, failures)
    }

    /// Like [`Harness::start`], on existing device state.
    pub fn start_in(
        state: Arc<TempDir>,
        tokens: FakeTokens,
        tweak: impl FnOnce(&mut SessionConfig),
        failures: Vec<ConnectError>,
    ) -> Harness {
        Harness::launch(state, tokens, tweak, failures, None)
    }

    fn launch(
        state: Arc<TempDir>,
        tokens: FakeTokens,
        tweak: impl FnOnce(&mut SessionConfig),
        failures: Vec<ConnectError>,
        ml: Option<MlAsk>,
    ) -> Harness {
        let mut cfg = session_config(ID, &state);
        cfg.engine.telemetry_s = 0;
        // No stretch: with MaxRng every delay is exactly the backoff window.
        cfg.engine.backoff = BackoffConfig { base_ms: 1000, cap_ms: 60_000, max_stretch: 1.0, ..Default::default() };
        tweak(&mut cfg);
        let (connector, conns) = MemConnector::new();
        connector.failures.lock().unwrap().extend(failures);
        let stats = Arc::new(Stats::default());
        let (stop, rx) = watch::channel(false);
        let session = Session::new(cfg, connector.clone(), tokens.clone(), stats.clone(), Shutdown::new(rx))
            .unwrap()
            .with_rng(MaxRng);
        let (session, ml) = match ml {
            Some(ask) => {
                let (session, rx) = session.with_ml_request(ask);
                (session, Some(rx))
            }
            None => (session, None),
        };
        Harness {
            conns,
            connector,
            tokens,
            stats,
            stop,
            task: tokio::spawn(session.run()),
            topics: TopicMap::load().unwrap().device_topics(ID).unwrap(),
            state,
            ml,
        }
    }

    pub async fn conn(&mut self) -> BrokerConn {
        tokio::time::timeout(EXPECT_WITHIN, self.conns.recv()).await.expect("no connection").expect("gone")
    }

    pub fn attempts(&self) -> Vec<Instant> {
        self.connector.attempts.lock().unwrap().clone()
    }

    pub async fn stop(self) -> Exit {
        self.stop.send(true).unwrap();
        self.task.await.unwrap()
    }
}

/// A private CA and a `localhost`/`127.0.0.1` server certificate, made once per test
/// run by `scripts/private-ca.sh` (the script operators use), so no key is kept in git.
/// Files: `ca.pem`, `server-cert.pem`, `server-key.pem`.
pub fn test_pki(name: &str) -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fleetwire-sim-pki-{}", std::process::id()));
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/private-ca.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("bash runs scripts/private-ca.sh");
        assert!(status.success(), "scripts/private-ca.sh failed (is openssl installed?)");
        dir
    });
    dir.join(name)
}

/// How [`ImageServer`] misbehaves.
#[derive(Debug, Clone, Default)]
pub struct ImageBehaviour {
    /// Close the connection after this many body bytes, on the first request only.
    pub cut_once_after: Option<usize>,
    /// Stop sending at this image offset while keeping the connection open (every
    /// request: a resume from there gets nothing).
    pub stall_at: Option<usize>,
    /// Answer every request with the whole image (200), like a server without ranges.
    pub ignore_range: bool,
    /// Answer with this status and no body instead of the image.
    pub status: Option<u16>,
}

/// A tiny HTTP/1.1 image server on a real 127.0.0.1 socket, with `Range: bytes=N-`.
pub struct ImageServer {
    /// URL of the image (`http://127.0.0.1:PORT/fw.bin`); any path serves it.
    pub url: String,
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
    /// The `Range` header of every request received, in order.
    pub ranges: Arc<Mutex<Vec<Option<String>>>>,
    /// The request target (path and query) of every request received, in order.
    pub paths: Arc<Mutex<Vec<String>>>,
    /// The `Authorization` header of every request received, in order.
    pub authorizations: Arc<Mutex<Vec<Option<String>>>>,
    pub behaviour: Arc<Mutex<ImageBehaviour>>,
}

impl ImageServer {
    pub async fn start(image: Vec<u8>, behaviour: ImageBehaviour) -> ImageServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let url = format!("{origin}/fw.bin");
        let ranges: Arc<Mutex<Vec<Option<String>>>> = Default::default();
        let paths: Arc<Mutex<Vec<String>>> = Default::default();
        let authorizations: Arc<Mutex<Vec<Option<String>>>> = Default::default();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let image = Arc::new(image);
        let (seen, how, targets, auths) = (ranges.clone(), behaviour.clone(), paths.clone(), authorizations.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let (seen, how, image, targets, auths) =
                    (seen.clone(), how.clone(), image.clone(), targets.clone(), auths.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let target = head.split(' ').nth(1).unwrap_or("").to_owned();
                    targets.lock().unwrap().push(target);
                    let range = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("range").then(|| v.trim().to_owned())
                    });
                    seen.lock().unwrap().push(range.clone());
                    auths.lock().unwrap().push(head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization").then(|| v.trim().to_owned())
                    }));
                    let b = {
                        let mut b = how.lock().unwrap();
                        let now = b.clone();
                        b.cut_once_after = None;
                        now
                    };
                    let len = image.len();
                    let from = range
                        .filter(|_| !b.ignore_range)
                        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok());
                    let (head, body, start) = match (b.status, from) {
                        (Some(status), _) => {
                            let head = format!("HTTP/1.1 {status} Nope\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                            (head, &[][..], 0)
                        }
                        (None, Some(from)) if from >= len => (
                            format!("HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{len}\r\ncontent-length: 0\r\n\r\n"),
                            &[][..],
                            from,
                        ),
                        (None, Some(from)) => (
                            format!(
                                "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {from}-{}/{len}\r\ncontent-length: {}\r\n\r\n",
                                len - 1,
                                len - from
                            ),
                            &image[from..],
                            from,
                        ),
                        (None, None) => (format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n"), &image[..], 0),
                    };
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let stall = b.stall_at.map(|at| at.saturating_sub(start));
                    let cut = b.cut_once_after.or(stall).unwrap_or(usize::MAX).min(body.len());
                    // Small writes, so the client sees progress rather than one big chunk.
                    for chunk in body[..cut].chunks(4096) {
                        if s.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                    if stall.is_some() && b.cut_once_after.is_none() {
                        std::future::pending::<()>().await;
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        ImageServer { url, origin, ranges, paths, authorizations, behaviour }
    }

    pub fn ranges(&self) -> Vec<Option<String>> {
        self.ranges.lock().unwrap().clone()
    }

    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.authorizations.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}
