//! OTA through the session: offer → download work → verify → reboot once the reports
//! are acknowledged → confirmation by the first stable connection, or rollback.

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::*;
use crate::ota::{canonical_manifest_bytes, Offer, SlotState};
use crate::ota_store::OtaRecord;

fn signer() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn image() -> Vec<u8> {
    (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// An offer for [`image`], signed over the canonical manifest bytes.
fn offer(rollout: &str, version: &str) -> Vec<u8> {
    offer_at(rollout, version, "https://fw.example/a.bin")
}

/// [`offer`] with the manifest's `url`, signed by `key`.
fn offer_at(rollout: &str, version: &str, url: &str) -> Vec<u8> {
    signed_offer(&signer(), rollout, version, url)
}

fn signed_offer(key: &SigningKey, rollout: &str, version: &str, url: &str) -> Vec<u8> {
    let img = image();
    let mut m = json!({ "version": version, "size": img.len(), "sha256": sha_hex(&img), "url": url });
    let sig = key.sign(&canonical_manifest_bytes(m.as_object().unwrap()));
    m["sig"] = json!(base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()));
    serde_json::to_vec(&json!({ "rollout": rollout, "manifest": m })).unwrap()
}

fn ota_config() -> SessionConfig {
    let mut cfg = config();
    cfg.ota.public_key = Some(signer().verifying_key().to_bytes());
    cfg.heartbeat_s = Some(3600);
    cfg
}

fn send_offer(d: &mut Device, packet_id: u16, payload: &[u8]) {
    d.broker(testkit::publish_qos1(&topic("ota"), packet_id, payload, false));
}

/// `(state, progress)` of the `ota/status` reports among `sent`.
fn reports(sent: &[DevicePacket]) -> Vec<(String, u64)> {
    publishes_on(sent, "ota/status")
        .iter()
        .map(json_of)
        .map(|v: Value| (v["state"].as_str().unwrap().to_owned(), v["progress"].as_u64().unwrap()))
        .collect()
}

fn state(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(s, p)| (s.to_string(), *p)).collect()
}

fn take_download(d: &mut Device) -> Box<ImageDownload> {
    let at = d.work.iter().position(|w| matches!(w, OtaWork::Download(_))).expect("a download was asked for");
    match d.work.remove(at) {
        OtaWork::Download(job) => job,
        _ => unreachable!(),
    }
}

fn record(d: &Device) -> OtaRecord {
    OtaRecord::load(&d.nvs).unwrap()
}

/// NVS as a previous run left it: `version` verified in slot 1, not booted yet.
fn installed_not_booted(version: &str) -> MemStorage {
    let raw = offer("r-9", version);
    let mut r = OtaRecord::factory("1.0.0");
    r.start(&Offer::parse(&raw).unwrap(), &raw).unwrap();
    r.set_received(image().len() as u64).unwrap();
    r.downloaded().unwrap();
    r.verified(true).unwrap();
    let mut nvs = MemStorage::default();
    r.save(&mut nvs);
    nvs
}

#[test]
fn a_good_image_is_downloaded_verified_rebooted_into_and_confirmed_by_the_first_stable_connection() {
    let mut d = Device::boot(ota_config());
    d.online();
    send_offer(&mut d, 1, &offer("r-1", "2.0.0"));
    assert!(matches!(d.work[0], OtaWork::EraseSlot(1)), "{:?}", d.work);
    let mut job = take_download(&mut d);
    assert_eq!((job.slot, job.from, job.size, job.url.as_str()), (1, 0, 10_000, "https://fw.example/a.bin"));
    let first = d.take_sent();
    assert_eq!(reports(&first), state(&[("offered", 0), ("downloading", 0)]));
    for p in publishes_on(&first, "ota/status") {
        d.acknowledge(&p);
    }

    // The shell streams the image through the core's hasher and reports progress.
    let img = image();
    job.hasher.update(&img[..5_000]).unwrap();
    d.download_progress(5_000);
    d.download_progress(5_100);
    job.hasher.update(&img[5_000..]).unwrap();
    d.download_done(job.hasher.finish().map_err(|e| DownloadFailure::Verify(e.to_string())));
    let sent = d.take_sent();
    assert_eq!(reports(&sent), state(&[("downloading", 50), ("verifying", 100), ("rebooting", 100)]), "throttled");
    assert!(d.reboots.is_empty(), "not before the reports are acknowledged");
    for p in publishes_on(&sent, "ota/status") {
        d.acknowledge(&p);
    }
    assert_eq!(d.reboots, [RebootKind::OtaInstall]);
    assert_eq!(d.take_sent(), [DevicePacket::Disconnect]);

    // The new image runs, pending verification, until its connection is stable.
    assert_eq!(d.s().running_version(), "2.0.0");
    assert_eq!(record(&d).state(), SlotState::PendingVerify);
    d.give_token("tok2", None);
    let sent = d.accept();
    let hb = heartbeats(&sent).remove(0);
    assert_eq!(heartbeat(&hb).fw, "2.0.0");
    assert!(reports(&sent).is_empty(), "nothing to say before the confirmation");
    d.acknowledge(&hb);
    assert_eq!(reports(&d.take_sent()), state(&[("success", 100)]));
    assert!(d.work.iter().any(|w| matches!(w, OtaWork::ConfirmImage)));
    assert_eq!((record(&d).state(), record(&d).boot_version()), (SlotState::Valid, "2.0.0"));

    // A redelivery of the finished offer is not acted on again; an older version is refused.
    send_offer(&mut d, 2, &offer("r-1", "2.0.0"));
    send_offer(&mut d, 3, &offer("r-2", "1.5.0"));
    let last = publishes_on(&d.take_sent(), "ota/status");
    assert_eq!(last.len(), 1);
    assert_eq!(
        (json_of(&last[0])["rollout"].clone(), json_of(&last[0])["state"].clone()),
        (json!("r-2"), json!("refused"))
    );
    assert!(json_of(&last[0])["error"].as_str().unwrap().contains("not newer than the running 2.0.0"));
}

#[test]
fn an_image_whose_connection_never_becomes_stable_is_rolled_back_reported_first_then_left() {
    let mut cfg = ota_config();
    cfg.ota.confirm_timeout_ms = 45_000;
    let mut d = Device::boot_with(cfg, installed_not_booted("3.0.0"), vec![]);
    assert_eq!(d.s().running_version(), "3.0.0");
    d.give_token("tok1", None);
    let hb = heartbeats(&d.accept()).remove(0);
    assert_eq!(heartbeat(&hb).fw, "3.0.0");
    // Its heartbeats are never acknowledged.
    d.advance(44_999);
    assert!(reports(&d.take_sent()).is_empty());
    d.advance(1);
    let sent = publishes_on(&d.take_sent(), "ota/status");
    let v = json_of(&sent[0]);
    assert_eq!((v["rollout"].as_str(), v["state"].as_str()), (Some("r-9"), Some("rolled-back")));
    assert!(v["error"].as_str().unwrap().contains("version 3.0.0 was not confirmed"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("within 45 s"), "{v}");
    d.acknowledge(&sent[0]);
    assert_eq!(d.reboots, [RebootKind::OtaRollback], "once the report is acknowledged");
    assert_eq!(d.s().running_version(), "1.0.0");
    assert_eq!(record(&d).state(), SlotState::RolledBack);
}

#[test]
fn an_image_that_never_gets_online_is_rolled_back_at_its_deadline_and_reported_once_connected() {
    let mut cfg = ota_config();
    cfg.ota.confirm_timeout_ms = 120_000;
    let mut d = Device::boot_with(cfg, installed_not_booted("3.0.0"), vec![]);
    let booted_at = d.now.mono_ms;
    // The token endpoint is unreachable the whole time.
    while d.reboots.is_empty() {
        d.advance(1_000);
        if d.wants_token && d.reboots.is_empty() {
            d.token_fails(TokenError::Unavailable { error: "unreachable".into(), retry_after_ms: None });
        }
    }
    assert_eq!(d.reboots, [RebootKind::OtaRollback]);
    assert!(d.now.mono_ms - booted_at <= 121_000);
    assert_eq!(d.s().running_version(), "1.0.0");
    d.give_token("tok1", None);
    let sent = d.accept();
    let v = json_of(&publishes_on(&sent, "ota/status")[0]);
    assert_eq!(v["state"], "rolled-back");
    assert!(!publishes_on(&sent, "ota/status")[0].dup, "never sent before");
    assert_eq!(heartbeat(&heartbeats(&sent)[0]).fw, "1.0.0");
}

#[test]
fn an_image_that_crashes_on_its_first_boot_is_reported_rolled_back_after_connecting() {
    let mut d = Device::boot_with(ota_config(), installed_not_booted("2.0.0"), vec!["2.0.0".into()]);
    assert_eq!(d.s().running_version(), "1.0.0");
    d.give_token("tok1", None);
    let sent = d.accept();
    let v = json_of(&publishes_on(&sent, "ota/status")[0]);
    assert_eq!((v["rollout"].as_str(), v["state"].as_str()), (Some("r-9"), Some("rolled-back")));
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("version 2.0.0 failed to boot") && error.contains("1.0.0"), "{error}");
    assert_eq!(record(&d).state(), SlotState::RolledBack);
}

#[test]
fn a_corrupted_image_fails_verification_its_slot_is_erased_and_the_running_version_stays() {
    let mut d = Device::boot(ota_config());
    d.online();
    send_offer(&mut d, 1, &offer("r-bad", "2.0.0"));
    let mut job = take_download(&mut d);
    d.work.clear();
    let mut img = image();
    img[1234] ^= 0x40;
    job.hasher.update(&img).unwrap();
    let verdict = job.hasher.finish().map_err(|e| DownloadFailure::Verify(e.to_string()));
    d.download_done(verdict);
    let sent = d.take_sent();
    let r = reports(&sent);
    assert_eq!(r[r.len() - 2..], state(&[("verifying", 100), ("failed", 100)]));
    assert!(json_of(publishes_on(&sent, "ota/status").last().unwrap())["error"].as_str().unwrap().contains("SHA-256"));
    assert!(matches!(d.work[..], [OtaWork::EraseSlot(1)]), "{:?}", d.work);
    assert_eq!((record(&d).state(), record(&d).boot_version()), (SlotState::Idle, "1.0.0"));
    d.advance(60_000);
    assert!(d.reboots.is_empty());
}

#[test]
fn offers_that_cannot_be_trusted_or_come_during_an_update_are_refused_and_a_redelivery_is_ignored() {
    // No public key: nothing can be verified.
    let mut d = Device::boot(config());
    d.online();
    send_offer(&mut d, 1, &offer("r-1", "2.0.0"));
    let v = json_of(&publishes_on(&d.take_sent(), "ota/status")[0]);
    assert_eq!((v["state"].as_str(), v["progress"].as_u64()), (Some("refused"), Some(0)));
    assert!(v["error"].as_str().unwrap().contains("no OTA public key configured"), "{v}");

    let mut d = Device::boot(ota_config());
    d.online();
    let forged = {
        let mut o: Value = serde_json::from_slice(&offer("r-forged", "2.0.0")).unwrap();
        o["manifest"]["url"] = json!("https://evil.example/a.bin");
        serde_json::to_vec(&o).unwrap()
    };
    send_offer(&mut d, 1, &forged);
    send_offer(&mut d, 2, &offer("r-1", "2.0.0"));
    send_offer(&mut d, 3, &offer("r-1", "2.0.0"));
    send_offer(&mut d, 4, &offer("r-2", "2.1.0"));
    let sent = publishes_on(&d.take_sent(), "ota/status");
    let seen: Vec<(String, String)> = sent
        .iter()
        .map(json_of)
        .map(|v| (v["rollout"].as_str().unwrap().to_owned(), v["state"].as_str().unwrap().to_owned()))
        .collect();
    let want = [("r-forged", "refused"), ("r-1", "offered"), ("r-1", "downloading"), ("r-2", "refused")];
    assert_eq!(seen, want.map(|(r, s)| (r.to_owned(), s.to_owned())), "the redelivered r-1 was ignored");
    assert!(json_of(&sent[0])["error"].as_str().unwrap().contains("signature"));
    assert!(json_of(&sent[3])["error"].as_str().unwrap().contains("busy: rollout r-1 (version 2.0.0) is in progress"));
    assert_eq!(d.work.iter().filter(|w| matches!(w, OtaWork::Download(_))).count(), 1);
}

#[test]
fn reports_made_offline_wait_for_the_next_connection_and_a_restart_resumes_a_download() {
    let mut d = Device::boot(ota_config());
    d.online();
    send_offer(&mut d, 1, &offer("r-1", "2.0.0"));
    let _job = take_download(&mut d);
    d.download_progress(6_500);
    d.close(Some(4001), "server shutting down, reconnect later");
    // The download fails while offline; the report waits for the link.
    d.download_done(Err(DownloadFailure::Fetch("connection reset".into())));
    d.advance(1_000);
    let sent = d.accept();
    let fresh: Vec<_> = publishes_on(&sent, "ota/status").into_iter().filter(|p| !p.dup).collect();
    assert_eq!(fresh.len(), 1);
    let v = json_of(&fresh[0]);
    assert_eq!((v["state"].as_str(), v["progress"].as_u64()), (Some("failed"), Some(65)));
    assert!(v["error"].as_str().unwrap().contains("download failed: connection reset"));

    // A power cut mid-download: the next boot resumes where the record says.
    let mut d = Device::boot(ota_config());
    d.online();
    send_offer(&mut d, 1, &offer("r-2", "2.0.0"));
    d.download_progress(7_000);
    let nvs = d.nvs.clone();
    let mut d = Device::boot_with(ota_config(), nvs, vec![]);
    let job = take_download(&mut d);
    assert_eq!((job.rollout.as_str(), job.slot, job.from), ("r-2", 1, 7_000));
    assert!(d.saw(|e| matches!(e, Event::OtaResume { received: 7_000, .. })));
    d.give_token("tok1", None);
    assert_eq!(reports(&d.accept()), state(&[("downloading", 70)]), "progress goes on from where it was");
}

/// `ota_config` for a device connected to `server`.
fn ota_config_on(server: Option<&str>) -> SessionConfig {
    let mut cfg = ota_config();
    cfg.ota.server_url = server.map(str::to_owned);
    cfg
}

#[test]
fn a_manifest_url_that_is_a_path_is_fetched_from_the_server_the_device_is_connected_to() {
    let path = format!("/v1/firmware/{}", sha_hex(&image()));
    for (server, origin) in [
        ("wss://fleet.example.com:8443/mqtt", "https://fleet.example.com:8443"),
        ("wss://fleet.example.com", "https://fleet.example.com"),
        ("ws://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://fleet.example.com", "https://fleet.example.com"),
    ] {
        let mut d = Device::boot(ota_config_on(Some(server)));
        d.online();
        send_offer(&mut d, 1, &offer_at("r-rel", "2.0.0", &path));
        let job = take_download(&mut d);
        assert_eq!(job.url, format!("{origin}{path}"), "{server}");
        assert_eq!(reports(&d.take_sent()), state(&[("offered", 0), ("downloading", 0)]));
    }
    // An absolute url is fetched as it is, whatever the server.
    let mut d = Device::boot(ota_config_on(Some("wss://fleet.example.com")));
    d.online();
    send_offer(&mut d, 1, &offer("r-abs", "2.0.0"));
    assert_eq!(take_download(&mut d).url, "https://fw.example/a.bin");
}

#[test]
fn a_manifest_url_the_device_cannot_fetch_is_refused_before_anything_is_erased() {
    for (server, url, why) in [
        (Some("wss://fleet.example.com"), "v1/firmware/abc", "must start with /"),
        (Some("wss://fleet.example.com"), "//evil.example/a.bin", "scheme-relative"),
        (Some("wss://fleet.example.com"), "ftp://fw.example/a.bin", "only http and https"),
        (Some("wss://fleet.example.com"), "/v1/firmware/a\r\nx: y", "control characters"),
        (None, "/v1/firmware/abc", "no server"),
    ] {
        let mut d = Device::boot(ota_config_on(server));
        d.online();
        send_offer(&mut d, 1, &offer_at("r-url", "2.0.0", url));
        let sent = publishes_on(&d.take_sent(), "ota/status");
        assert_eq!(sent.len(), 1, "{url:?}");
        let v = json_of(&sent[0]);
        assert_eq!((v["rollout"].as_str(), v["state"].as_str()), (Some("r-url"), Some("refused")), "{v}");
        let error = v["error"].as_str().unwrap();
        assert!(error.starts_with("manifest url ") && error.contains(why), "{url:?}: {error}");
        assert!(d.work.is_empty(), "nothing erased or fetched for {url:?}: {:?}", d.work);
        assert!(d.saw(|e| matches!(e, Event::OtaRefused { .. })));
        assert_eq!(record(&d).state(), SlotState::Idle);
    }
    // The signature is checked first: a forged url reports the signature, not the url.
    let mut d = Device::boot(ota_config_on(Some("wss://fleet.example.com")));
    d.online();
    send_offer(&mut d, 1, &signed_offer(&SigningKey::from_bytes(&[9; 32]), "r-forged", "2.0.0", "fw.bin"));
    let v = json_of(&publishes_on(&d.take_sent(), "ota/status")[0]);
    assert!(v["error"].as_str().unwrap().contains("signature"), "{v}");
}

#[test]
fn a_resumed_download_resolves_its_path_against_the_server_of_this_run() {
    let path = "/v1/firmware/abc";
    let mut d = Device::boot(ota_config_on(Some("wss://old.example")));
    d.online();
    send_offer(&mut d, 1, &offer_at("r-1", "2.0.0", path));
    assert_eq!(take_download(&mut d).url, "https://old.example/v1/firmware/abc");
    d.download_progress(4_000);
    let nvs = d.nvs.clone();

    let mut d = Device::boot_with(ota_config_on(Some("ws://new.example:8080")), nvs.clone(), vec![]);
    // The server's own url needs the token: the download waits for the first one.
    assert!(d.work.iter().all(|w| !matches!(w, OtaWork::Download(_))), "{:?}", d.work);
    d.give_token("tok-after-boot", Some(3_600_000));
    let job = take_download(&mut d);
    assert_eq!((job.url.as_str(), job.from), ("http://new.example:8080/v1/firmware/abc", 4_000));
    assert_eq!(job.bearer.as_ref().map(Jwt::expose), Some("tok-after-boot"));

    // Without a server to resolve against, the resumed download fails and the slot is discarded.
    let mut d = Device::boot_with(ota_config_on(None), nvs, vec![]);
    assert!(d.work.iter().all(|w| !matches!(w, OtaWork::Download(_))), "{:?}", d.work);
    assert!(d.work.iter().any(|w| matches!(w, OtaWork::EraseSlot(1))), "{:?}", d.work);
    d.give_token("tok1", None);
    let v = json_of(&publishes_on(&d.accept(), "ota/status")[0]);
    assert_eq!(v["state"], "failed");
    assert!(v["error"].as_str().unwrap().starts_with("cannot resume: manifest url"), "{v}");
    assert_eq!(record(&d).state(), SlotState::Idle);
}

#[test]
fn the_token_goes_with_a_download_from_the_server_and_never_to_another_host() {
    let server = "wss://fleet.example.com:8443/mqtt";
    let sha = sha_hex(&image());
    // A path, and the same origin spelt out: the device's current token, never logged.
    for url in [format!("/v1/firmware/{sha}"), format!("https://FLEET.example.com:8443/v1/firmware/{sha}")] {
        let mut d = Device::boot(ota_config_on(Some(server)));
        d.online();
        send_offer(&mut d, 1, &offer_at("r-own", "2.0.0", &url));
        let job = take_download(&mut d);
        assert_eq!(job.bearer.as_ref().map(Jwt::expose), Some("tok1"), "{url}");
        assert!(!format!("{job:?}").contains("tok1"), "{job:?}");
    }
    // Any other origin gets no token: a CDN, another port, plain http, another scheme of the same host.
    for url in [
        "https://cdn.example.com/fw.bin".to_owned(),
        "https://fleet.example.com/fw.bin".to_owned(),
        "http://fleet.example.com:8443/fw.bin".to_owned(),
        "https://fleet.example.com.evil.io:8443/fw.bin".to_owned(),
        "http://127.0.0.1:9999/fw.bin".to_owned(),
    ] {
        let mut d = Device::boot(ota_config_on(Some(server)));
        d.online();
        send_offer(&mut d, 1, &offer_at("r-cdn", "2.0.0", &url));
        let job = take_download(&mut d);
        assert_eq!(job.url, url);
        assert!(job.bearer.is_none(), "{url} must not see the token");
    }
    // A resumed download from another host starts at once, without a token.
    let mut d = Device::boot(ota_config_on(Some(server)));
    d.online();
    send_offer(&mut d, 1, &offer_at("r-cdn", "2.0.0", "https://cdn.example.com/fw.bin"));
    d.download_progress(4_000);
    let mut d = Device::boot_with(ota_config_on(Some(server)), d.nvs.clone(), vec![]);
    let job = take_download(&mut d);
    assert_eq!((job.from, job.bearer.is_none()), (4_000, true));
}

#[test]
fn a_download_the_server_refuses_fails_once_with_the_status_and_keeps_the_running_version() {
    let mut d = Device::boot(ota_config_on(Some("wss://fleet.example.com")));
    d.online();
    send_offer(&mut d, 1, &offer_at("r-403", "2.0.0", "/v1/firmware/abc"));
    let _job = take_download(&mut d);
    let why = crate::ota_download::plan_response(0, 403, None, 10).unwrap_err().to_string();
    d.download_done(Err(DownloadFailure::Fetch(why)));
    let sent = d.take_sent();
    let failed: Vec<_> =
        publishes_on(&sent, "ota/status").into_iter().map(|p| json_of(&p)).filter(|v| v["state"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0]["error"].as_str().unwrap().starts_with("download failed: HTTP 403"), "{}", failed[0]);
    assert!(d.work.iter().all(|w| !matches!(w, OtaWork::Download(_))), "not fetched again: {:?}", d.work);
    assert_eq!(record(&d).state(), SlotState::Idle);
    assert_eq!(d.s().running_version(), "1.0.0");
}
