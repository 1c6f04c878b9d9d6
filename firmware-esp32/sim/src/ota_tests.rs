//! The OTA path end to end inside the simulator: a session against the in-memory broker
//! of [`crate::testkit`], images from [`ImageServer`] on a real 127.0.0.1 socket (real
//! time), and device state in a temporary directory. The confirmation-timeout tests need
//! no download and run in virtual time instead.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use fleetwire_core::backoff::BackoffConfig;
use fleetwire_core::contracts::OTA_STATUS_SCHEMA_JSON;
use fleetwire_core::heartbeat::Heartbeat;
use fleetwire_core::mqtt;
use fleetwire_core::ota::{canonical_manifest_bytes, Offer, SlotState};
use fleetwire_core::ota_store::OtaRecord;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::download::DownloadPolicy;
use crate::flash::{DeviceFlash, TempDir};
use crate::session::{Exit, SessionConfig};
use crate::testkit::*;
use crate::transport::ConnectError;

/// Bound on any one wait in the real-time tests.
const WITHIN: Duration = Duration::from_secs(20);

fn signer() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn image(len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// An offer for `img` at `url`, signed by `key` over the core's canonical manifest bytes.
fn offer(key: &SigningKey, rollout: &str, version: &str, url: &str, img: &[u8], chip: Option<&str>) -> Vec<u8> {
    let mut m = json!({ "version": version, "size": img.len(), "sha256": sha_hex(img), "url": url });
    if let Some(c) = chip {
        m["chip"] = json!(c);
    }
    let sig = key.sign(&canonical_manifest_bytes(m.as_object().unwrap()));
    m["sig"] = json!(base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()));
    serde_json::to_vec(&json!({ "rollout": rollout, "manifest": m })).unwrap()
}

/// An OTA-capable device: trusts [`signer`], retries downloads quickly.
fn ota_device(c: &mut SessionConfig) {
    c.engine.ota.public_key = Some(signer().verifying_key().to_bytes());
    c.ota.download = DownloadPolicy {
        max_fruitless_attempts: 3,
        retry: BackoffConfig { base_ms: 10, cap_ms: 50, max_stretch: 1.0, ..BackoffConfig::default() },
        idle_timeout: Duration::from_secs(2),
    };
}

/// Check a status against `ota-status.schema.json` (no JSON Schema crate: the schema
/// is small, and its enum is read from the contract).
fn assert_valid_status(v: &Value) {
    let schema: Value = serde_json::from_str(OTA_STATUS_SCHEMA_JSON).unwrap();
    let o = v.as_object().unwrap();
    for k in o.keys() {
        assert!(schema["properties"].get(k).is_some(), "unknown member {k} in {v}");
    }
    let rollout = v["rollout"].as_str().unwrap();
    assert!((1..=128).contains(&rollout.len()), "{v}");
    assert!(schema["properties"]["state"]["enum"].as_array().unwrap().contains(&v["state"]), "{v}");
    assert!((0.0..=100.0).contains(&v["progress"].as_f64().unwrap()), "{v}");
    if let Some(e) = o.get("error") {
        assert!(e.as_str().unwrap().chars().count() <= 512, "{v}");
    }
}

/// The broker's side of one device across reconnects: acknowledges every QoS 1 publish
/// (heartbeats only while `ack_heartbeats`), answers pings, and records what it saw.
struct Device {
    h: Harness,
    c: BrokerConn,
    statuses: Vec<Value>,
    /// `fw` of every heartbeat, in order, with the connection number it came on.
    heartbeats: Vec<(usize, String)>,
    connections: usize,
    disconnects: usize,
    ack_heartbeats: bool,
    next_packet_id: u16,
}

impl Device {
    async fn start(mut h: Harness) -> Device {
        let mut c = h.conn().await;
        c.accept().await;
        Device {
            h,
            c,
            statuses: Vec::new(),
            heartbeats: Vec::new(),
            connections: 1,
            disconnects: 0,
            ack_heartbeats: true,
            next_packet_id: 100,
        }
    }

    fn send_offer(&mut self, payload: &[u8]) {
        self.next_packet_id += 1;
        self.c.send(publish_qos1(&self.h.topics.ota, self.next_packet_id, payload, false));
    }

    /// Handle one packet (or the link's end: accept the reconnection).
    async fn step(&mut self) {
        match self.c.next().await {
            None => {
                self.c = self.h.conn().await;
                self.c.accept().await;
                self.connections += 1;
            }
            Some(DevicePacket::Disconnect) => self.disconnects += 1,
            Some(DevicePacket::PingReq) => self.c.send(pingresp()),
            Some(DevicePacket::Publish(p)) if p.topic == self.h.topics.heartbeat => {
                let hb = Heartbeat::from_json(&p.payload).unwrap();
                self.heartbeats.push((self.connections, hb.fw));
                if self.ack_heartbeats {
                    self.c.send(mqtt::encode_puback(p.packet_id.unwrap()));
                }
            }
            Some(DevicePacket::Publish(p)) if p.topic == self.h.topics.ota_status => {
                let v: Value = serde_json::from_slice(&p.payload).unwrap();
                assert_valid_status(&v);
                assert_eq!(p.qos, mqtt::QoS::AtLeastOnce);
                if !p.dup {
                    self.statuses.push(v);
                }
                self.c.send(mqtt::encode_puback(p.packet_id.unwrap()));
            }
            Some(_) => {}
        }
    }

    /// Serve until a status in `state` arrives; returns it.
    async fn until_status(&mut self, state: &str) -> Value {
        let seen = self.statuses.len();
        // Virtual time in the paused tests; real-time tests are bounded by `real_time`.
        tokio::time::timeout(Duration::from_secs(3600), async {
            loop {
                if let Some(v) = self.statuses[seen..].iter().find(|v| v["state"] == state) {
                    return v.clone();
                }
                self.step().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {state} status; got {:?}", self.statuses))
    }

    /// Serve until a heartbeat arrives on a connection after `after_connection`.
    async fn until_heartbeat_on_connection_after(&mut self, after_connection: usize) -> String {
        loop {
            if let Some((_, fw)) = self.heartbeats.iter().find(|(n, _)| *n > after_connection) {
                return fw.clone();
            }
            self.step().await;
        }
    }

    /// States in order, consecutive repeats (progress reports) folded.
    fn states(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in &self.statuses {
            let s = v["state"].as_str().unwrap().to_owned();
            if out.last() != Some(&s) {
                out.push(s);
            }
        }
        out
    }

    fn progress_of(&self, state: &str) -> Vec<u64> {
        self.statuses.iter().filter(|v| v["state"] == state).map(|v| v["progress"].as_u64().unwrap()).collect()
    }

    async fn stop(self) -> Exit {
        self.h.stop().await
    }
}

fn stored(state: &TempDir) -> OtaRecord {
    OtaRecord::load(&DeviceFlash::open(state.path(), ID).unwrap()).unwrap()
}

async fn real_time<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WITHIN, f).await.expect("test took too long")
}

#[tokio::test]
async fn a_good_image_is_downloaded_verified_booted_and_confirmed() {
    real_time(async {
        let img = image(200_000);
        let server = ImageServer::start(img.clone(), ImageBehaviour::default()).await;
        let mut d = Device::start(Harness::start(FakeTokens::fixed(), ota_device, vec![])).await;
        assert_eq!(d.until_heartbeat_on_connection_after(0).await, "1.0.0");

        d.send_offer(&offer(&signer(), "r-1", "2.0.0", &server.url, &img, Some("esp32")));
        d.until_status("success").await;
        assert_eq!(d.states(), ["offered", "downloading", "verifying", "rebooting", "success"]);
        assert!(d.statuses.iter().all(|v| v["rollout"] == "r-1" && v.get("error").is_none()), "{:?}", d.statuses);
        let progress = d.progress_of("downloading");
        assert_eq!((progress.first(), progress.last()), (Some(&0), Some(&100)));
        assert!(progress.windows(2).all(|w| w[0] < w[1]) && progress.len() <= 11, "{progress:?}");
        assert_eq!(d.progress_of("success"), [100]);

        // The reboot: DISCONNECT, a new connection whose heartbeats carry the new
        // version, and `success` only after one of them was acknowledged.
        assert_eq!((d.disconnects, d.connections), (1, 2));
        assert_eq!(d.heartbeats.iter().filter(|(n, _)| *n == 2).map(|(_, fw)| fw.as_str()).next(), Some("2.0.0"));
        assert!(d.heartbeats.iter().filter(|(n, _)| *n == 1).all(|(_, fw)| fw == "1.0.0"));
        let record = stored(&d.h.state);
        assert_eq!((record.state(), record.boot_version(), record.boot_slot()), (SlotState::Valid, "2.0.0", 1));
        assert_eq!(std::fs::read(DeviceFlash::open(d.h.state.path(), ID).unwrap().slot_path(1)).unwrap(), img);
        assert_eq!(d.h.stats.ota_success.load(Relaxed), 1);
        assert_eq!(server.ranges(), [None]);

        // A redelivery of the finished offer is not acted on again; an older version is.
        d.send_offer(&offer(&signer(), "r-1", "2.0.0", &server.url, &img, None));
        d.send_offer(&offer(&signer(), "r-2", "1.5.0", &server.url, &img, None));
        let refused = d.until_status("refused").await;
        assert_eq!(refused["rollout"], "r-2");
        assert!(refused["error"].as_str().unwrap().contains("not newer than the running 2.0.0"), "{refused}");
        assert_eq!(d.statuses.iter().filter(|v| v["rollout"] == "r-1").count(), progress.len() + 4);
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}

#[tokio::test]
async fn a_manifest_url_that_is_a_path_is_downloaded_from_the_server_the_device_is_connected_to() {
    real_time(async {
        let img = image(100_000);
        // The image server plays "the server": the device's --url points at it.
        let server = ImageServer::start(img.clone(), ImageBehaviour::default()).await;
        let ws = server.origin.replacen("http://", "ws://", 1);
        let tweak = move |c: &mut SessionConfig| {
            ota_device(c);
            c.engine.ota.server_url = Some(format!("{ws}/mqtt"));
        };
        let mut d = Device::start(Harness::start(FakeTokens::fixed(), tweak, vec![])).await;
        let path = format!("/v1/firmware/{}", sha_hex(&img));
        d.send_offer(&offer(&signer(), "r-rel", "2.0.0", &path, &img, None));
        d.until_status("success").await;
        assert_eq!(d.states(), ["offered", "downloading", "verifying", "rebooting", "success"]);
        assert_eq!(server.paths(), std::slice::from_ref(&path));
        assert_eq!(server.authorizations(), [Some("Bearer hdr.tok1.sig".to_owned())], "its own server gets the token");
        assert_eq!(std::fs::read(DeviceFlash::open(d.h.state.path(), ID).unwrap().slot_path(1)).unwrap(), img);

        // Relative urls that do not start with "/" and scheme-relative ones are refused unfetched.
        for (rollout, url, why) in [
            ("r-bare", "v1/firmware/x", "must start with /"),
            ("r-sr", "//evil.example/fw.bin", "scheme-relative"),
            ("r-ftp", "ftp://evil.example/fw.bin", "only http and https"),
        ] {
            d.send_offer(&offer(&signer(), rollout, "3.0.0", url, &img, None));
            let v = d.until_status("refused").await;
            assert_eq!(v["rollout"], rollout);
            assert!(v["error"].as_str().unwrap().contains(why), "{v}");
        }
        assert_eq!(server.paths(), [path], "nothing more was fetched");
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_a_range_request_and_succeeds() {
    real_time(async {
        let img = image(200_000);
        let cut = ImageBehaviour { cut_once_after: Some(70_000), ..Default::default() };
        let server = ImageServer::start(img.clone(), cut).await;
        let mut d = Device::start(Harness::start(FakeTokens::fixed(), ota_device, vec![])).await;
        d.send_offer(&offer(&signer(), "r-cut", "1.1.0", &server.url, &img, None));
        d.until_status("success").await;
        assert_eq!(server.ranges(), [None, Some("bytes=70000-".to_owned())]);
        assert_eq!(server.authorizations(), [None, None], "another host never gets the token");
        assert_eq!(d.states(), ["offered", "downloading", "verifying", "rebooting", "success"]);
        assert_eq!(d.until_heartbeat_on_connection_after(1).await, "1.1.0");
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}

#[tokio::test]
async fn a_server_without_range_support_makes_the_download_start_over_and_says_so() {
    real_time(async {
        let img = image(200_000);
        let behaviour = ImageBehaviour { cut_once_after: Some(120_000), ignore_range: true, ..Default::default() };
        let server = ImageServer::start(img.clone(), behaviour).await;
        let mut d = Device::start(Harness::start(FakeTokens::fixed(), ota_device, vec![])).await;
        d.send_offer(&offer(&signer(), "r-200", "1.1.0", &server.url, &img, None));
        d.until_status("success").await;
        assert_eq!(server.ranges().len(), 2);
        let progress = d.progress_of("downloading");
        let back_to_zero = progress.iter().skip(1).position(|p| *p == 0);
        assert!(back_to_zero.is_some() && progress.last() == Some(&100), "{progress:?}");
        assert_eq!(std::fs::read(DeviceFlash::open(d.h.state.path(), ID).unwrap().slot_path(1)).unwrap(), img);
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}

#[tokio::test]
async fn a_corrupted_image_fails_verification_and_the_running_version_stays() {
    real_time(async {
        let img = image(100_000);
        let mut corrupted = img.clone();
        corrupted[12_345] ^= 0x40;
        let server = ImageServer::start(corrupted, ImageBehaviour::default()).await;
        let mut d = Device::start(Harness::start(FakeTokens::fixed(), ota_device, vec![])).await;
        d.send_offer(&offer(&signer(), "r-bad", "2.0.0", &server.url, &img, None));
        let failed = d.until_status("failed").await;
        assert!(failed["error"].as_str().unwrap().contains("SHA-256"), "{failed}");
        assert_eq!(d.states(), ["offered", "downloading", "verifying", "failed"]);
        let record = stored(&d.h.state);
        assert_eq!((record.state(), record.boot_version(), record.boot_slot()), (SlotState::Idle, "1.0.0", 0));
        assert!(!DeviceFlash::open(d.h.state.path(), ID).unwrap().slot_path(1).exists(), "slot discarded");
        assert_eq!((d.connections, d.disconnects), (1, 0), "no reboot");
        assert_eq!(d.h.stats.ota_failed.load(Relaxed), 1);
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}

#[tokio::test]
async fn unverifiable_foreign_old_or_oversized_images_are_refused_without_downloading() {
    real_time(async {
        let img = image(50_000);
        let server = ImageServer::start(img.clone(), ImageBehaviour::default()).await;
        let mut d = Device::start(Harness::start(
            FakeTokens::fixed(),
            |c| {
                ota_device(c);
                c.engine.ota.partition_size = 40_000;
            },
            vec![],
        ))
        .await;
        let small = &img[..30_000];
        let url = server.url.as_str();
        let tampered = String::from_utf8(offer(&signer(), "r-t", "2.0.0", url, small, None))
            .unwrap()
            .replace("fw.bin", "evil.bin")
            .into_bytes();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("r-key", offer(&SigningKey::from_bytes(&[8; 32]), "r-key", "2.0.0", url, small, None), "signature"),
            ("r-t", tampered, "signature"),
            ("r-chip", offer(&signer(), "r-chip", "2.0.0", url, small, Some("esp32-s3")), "chip esp32-s3"),
            ("r-old", offer(&signer(), "r-old", "0.9.0", url, small, None), "not newer"),
            ("r-same", offer(&signer(), "r-same", "1.0.0", url, small, None), "not newer"),
            ("r-big", offer(&signer(), "r-big", "2.0.0", url, &img, None), "does not fit"),
            ("r-junk", br#"{"rollout":"r-junk","manifest":{"version":"2"}}"#.to_vec(), "malformed"),
        ];
        for (rollout, payload, why) in cases {
            d.send_offer(&payload);
            let v = d.until_status("refused").await;
            assert_eq!(v["rollout"], rollout);
            assert_eq!(v["progress"], 0);
            assert!(v["error"].as_str().unwrap().contains(why), "{rollout}: {v}");
        }
        assert_eq!(d.states(), ["refused"]);
        assert!(server.ranges().is_empty(), "nothing was fetched");
        assert_eq!(d.h.stats.ota_refused.load(Relaxed), 7);
        assert_eq!(stored(&d.h.state).boot_version(), "1.0.0");
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}

#[tokio::test]
async fn a_version_that_crashes_on_boot_is_rolled_back_to_the_previous_one() {
    real_time(async {
        let img = image(100_000);
        let server = ImageServer::start(img.clone(), ImageBehaviour::default()).await;
        let tweak = |c: &mut SessionConfig| {
            ota_device(c);
            c.ota.fail_boot_versions = vec!["2.0.0".into()];
        };
        let mut d = Device::start(Harness::start(FakeTokens::fixed(), tweak, vec![])).await;
        d.send_offer(&offer(&signer(), "r-crash", "2.0.0", &server.url, &img, None));
        let v = d.until_status("rolled-back").await;
        assert_eq!(d.states(), ["offered", "downloading", "verifying", "rebooting", "rolled-back"]);
        let error = v["error"].as_str().unwrap();
        assert!(error.contains("version 2.0.0 failed to boot") && error.contains("1.0.0"), "{error}");
        assert_eq!(d.until_heartbeat_on_connection_after(1).await, "1.0.0");
        let record = stored(&d.h.state);
        assert_eq!((record.state(), record.boot_version(), record.boot_slot()), (SlotState::RolledBack, "1.0.0", 0));
        assert_eq!(d.h.stats.ota_failed.load(Relaxed), 1);
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}

#[tokio::test]
async fn a_second_offer_during_an_update_is_refused_and_a_duplicate_is_ignored() {
    real_time(async {
        let img = image(100_000);
        let stall = ImageBehaviour { stall_at: Some(30_000), ..Default::default() };
        let server = ImageServer::start(img.clone(), stall).await;
        let mut d = Device::start(Harness::start(FakeTokens::fixed(), ota_device, vec![])).await;
        let first = offer(&signer(), "r-1", "2.0.0", &server.url, &img, None);
        d.send_offer(&first);
        d.until_status("downloading").await;
        d.send_offer(&first);
        d.send_offer(&offer(&signer(), "r-2", "2.1.0", &server.url, &img, None));
        let v = d.until_status("refused").await;
        assert_eq!(v["rollout"], "r-2");
        assert!(v["error"].as_str().unwrap().contains("busy: rollout r-1 (version 2.0.0) is in progress"), "{v}");
        assert_eq!(d.statuses.iter().filter(|v| v["state"] == "offered").count(), 1, "the duplicate was ignored");
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}

#[tokio::test]
async fn pending_verify_survives_a_restart_of_the_simulator_process() {
    real_time(async {
        let img = image(100_000);
        let server = ImageServer::start(img.clone(), ImageBehaviour::default()).await;
        let mut d = Device::start(Harness::start(FakeTokens::fixed(), ota_device, vec![])).await;
        d.send_offer(&offer(&signer(), "r-1", "2.0.0", &server.url, &img, None));
        d.until_status("rebooting").await;
        // The new image comes up but its heartbeat is not acknowledged: not confirmed.
        d.ack_heartbeats = false;
        assert_eq!(d.until_heartbeat_on_connection_after(1).await, "2.0.0");
        let state = d.h.state.clone();
        assert_eq!(d.stop().await, Exit::Shutdown);
        let record = stored(&state);
        assert_eq!((record.state(), record.boot_version()), (SlotState::PendingVerify, "2.0.0"));

        let mut d = Device::start(Harness::start_in(state.clone(), FakeTokens::fixed(), ota_device, vec![])).await;
        let v = d.until_status("success").await;
        assert_eq!(v["rollout"], "r-1");
        assert_eq!(d.heartbeats.first().map(|(_, fw)| fw.as_str()), Some("2.0.0"));
        assert_eq!(d.states(), ["success"]);
        assert_eq!(stored(&state).state(), SlotState::Valid);
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}

#[tokio::test]
async fn a_partial_download_resumes_after_a_restart_of_the_simulator_process() {
    real_time(async {
        let img = image(200_000);
        let stall = ImageBehaviour { stall_at: Some(130_000), ..Default::default() };
        let server = ImageServer::start(img.clone(), stall).await;
        let mut d = Device::start(Harness::start(FakeTokens::fixed(), ota_device, vec![])).await;
        d.send_offer(&offer(&signer(), "r-1", "2.0.0", &server.url, &img, None));
        while d.progress_of("downloading").last().is_none_or(|p| *p < 60) {
            d.step().await;
        }
        let state = d.h.state.clone();
        assert_eq!(d.stop().await, Exit::Shutdown);
        let record = stored(&state);
        let saved = record.job().unwrap().received;
        assert_eq!(record.state(), SlotState::Downloading);
        assert!((120_000..=130_000).contains(&saved), "{saved}");

        server.behaviour.lock().unwrap().stall_at = None;
        let mut d = Device::start(Harness::start_in(state.clone(), FakeTokens::fixed(), ota_device, vec![])).await;
        d.until_status("success").await;
        assert_eq!(server.ranges().last(), Some(&Some(format!("bytes={saved}-"))));
        assert_eq!(d.states(), ["downloading", "verifying", "rebooting", "success"]);
        assert_eq!(d.progress_of("downloading").first(), Some(&60), "resumed where it was");
        assert_eq!(std::fs::read(DeviceFlash::open(state.path(), ID).unwrap().slot_path(1)).unwrap(), img);
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}

/// Device state as the previous process left it: `version` verified in slot 1, not
/// booted yet.
fn installed_not_booted(state: &TempDir, version: &str) {
    let raw = format!(
        r#"{{"rollout":"r-9","manifest":{{"version":"{version}","size":4,"sha256":"{}","url":"http://x/fw.bin","sig":"s"}}}}"#,
        "0".repeat(64)
    );
    let mut record = OtaRecord::factory("1.0.0");
    record.start(&Offer::parse(raw.as_bytes()).unwrap(), raw.as_bytes()).unwrap();
    record.set_received(4).unwrap();
    record.downloaded().unwrap();
    record.verified(true).unwrap();
    record.save(&mut DeviceFlash::open(state.path(), ID).unwrap());
}

#[tokio::test(start_paused = true)]
async fn an_image_that_never_gets_online_is_rolled_back_and_the_report_waits_for_the_link() {
    let state = Arc::new(TempDir::new("fleetwire-sim-test").unwrap());
    installed_not_booted(&state, "3.0.0");
    let t0 = Instant::now();
    let h =
        Harness::start_in(state.clone(), FakeTokens::fixed(), ota_device, vec![ConnectError::Io("down".into()); 10]);
    let mut d = Device::start(h).await;
    let v = d.until_status("rolled-back").await;
    assert_eq!(v["rollout"], "r-9");
    assert!(v["error"].as_str().unwrap().contains("version 3.0.0 was not confirmed"), "{v}");
    // Rolled back at the deadline (during a backoff sleep), reported once connected.
    let attempts = d.h.attempts();
    let at = attempts.iter().map(|a| *a - t0).find(|d| *d >= Duration::from_secs(120)).unwrap();
    assert!(at < Duration::from_millis(120_010), "{at:?}");
    assert_eq!(d.until_heartbeat_on_connection_after(0).await, "1.0.0");
    assert_eq!(stored(&state).state(), SlotState::RolledBack);
    assert_eq!(d.stop().await, Exit::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn an_image_whose_heartbeats_are_never_acknowledged_is_rolled_back() {
    let state = Arc::new(TempDir::new("fleetwire-sim-test").unwrap());
    installed_not_booted(&state, "3.0.0");
    let tweak = |c: &mut SessionConfig| {
        ota_device(c);
        c.engine.ota.confirm_timeout_ms = 45_000;
    };
    let t0 = Instant::now();
    let mut d = Device::start(Harness::start_in(state.clone(), FakeTokens::fixed(), tweak, vec![])).await;
    d.ack_heartbeats = false;
    assert_eq!(d.until_heartbeat_on_connection_after(0).await, "3.0.0");
    let v = d.until_status("rolled-back").await;
    assert!(v["error"].as_str().unwrap().contains("within 45 s"), "{v}");
    // Reported on the connection it gives up, before the reboot.
    assert_eq!((d.disconnects, d.connections), (0, 1));
    let elapsed = Instant::now() - t0;
    assert!(elapsed >= Duration::from_secs(45) && elapsed < Duration::from_secs(47), "{elapsed:?}");
    d.ack_heartbeats = true;
    assert_eq!(d.until_heartbeat_on_connection_after(1).await, "1.0.0");
    assert_eq!((d.disconnects, d.connections), (1, 2), "DISCONNECT, reboot, back on the previous version");
    assert_eq!(d.stop().await, Exit::Shutdown);
}

#[tokio::test]
async fn a_download_its_server_refuses_is_reported_failed_with_the_status_once() {
    real_time(async {
        let img = image(50_000);
        let server = ImageServer::start(img.clone(), ImageBehaviour { status: Some(403), ..Default::default() }).await;
        let ws = server.origin.replacen("http://", "ws://", 1);
        let tweak = move |c: &mut SessionConfig| {
            ota_device(c);
            c.engine.ota.server_url = Some(format!("{ws}/mqtt"));
        };
        let mut d = Device::start(Harness::start(FakeTokens::fixed(), tweak, vec![])).await;
        d.send_offer(&offer(&signer(), "r-403", "2.0.0", &format!("/v1/firmware/{}", sha_hex(&img)), &img, None));
        let v = d.until_status("failed").await;
        assert!(v["error"].as_str().unwrap().starts_with("download failed: HTTP 403"), "{v}");
        assert_eq!(server.authorizations(), [Some("Bearer hdr.tok1.sig".to_owned())], "asked once, not retried");
        assert_eq!(d.states(), ["offered", "downloading", "failed"]);
        assert_eq!(d.stop().await, Exit::Shutdown);
    })
    .await
}
