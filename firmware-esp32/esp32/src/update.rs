//! OTA on the chip: fleetwire-core decides (signature, chip, size, downgrade, Range
//! resume, SHA-256, the update record and its states); ESP-IDF's OTA partitions and
//! rollback bootloader carry it out. Every step is reported on `ota/status`.

use std::time::Duration;

use embedded_svc::http::client::Client;
use embedded_svc::http::Method;
use esp_idf_svc::http::client::{Configuration, EspHttpConnection};
use esp_idf_svc::ota::{EspOta, EspOtaUpdate};
use fleetwire_core::ota::{parse_public_key_hex, ImageHasher, Offer, OtaVerifier};
use fleetwire_core::ota_download::{plan_response, range_header, AttemptBudget, AttemptError, Plan};
use fleetwire_core::ota_status::{OtaState, OtaStatus, ProgressThrottle};
use fleetwire_core::ota_store::{Boot, OtaRecord};

use fleetwire_core::platform::Storage;

use crate::platform::NvsStorage;
use crate::provisioning::Provisioning;

include!(concat!(env!("OUT_DIR"), "/ota_public_key.rs"));

/// The version of this image; the anti-downgrade check and heartbeats use it.
pub const RUNNING_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The chip this image is built for (`MCU` in .cargo/config.toml), checked against offers.
const CHIP: &str = env!("MCU");
/// Size of one OTA slot in the two-OTA partition table.
const PARTITION_SIZE: u64 = 1_572_864;
/// A new image that has not reached the cloud this long after boot is abandoned.
const CONFIRM_TIMEOUT_MS: u64 = 120_000;
/// Set before a timed-out image reboots into the previous one; read by the next boot.
const UNREPORTED_ROLLBACK_KEY: &str = "ota.unreported";

pub struct Updater {
    record: OtaRecord,
    /// What the previous boot left to report once connected.
    boot: Boot,
}

type Report<'a> = dyn FnMut(&str, &[u8]) + 'a;

impl Updater {
    /// Reads the update record and learns what this boot is: the same image, a new one
    /// waiting for confirmation, or the previous one after the bootloader rolled back.
    pub fn resume(storage: &mut NvsStorage) -> anyhow::Result<Self> {
        let mut record = OtaRecord::load(storage).unwrap_or_else(|| OtaRecord::factory(RUNNING_VERSION));
        let mut boot = record.reboot(|version| version == RUNNING_VERSION);
        if let Some(failed) = storage.get(UNREPORTED_ROLLBACK_KEY) {
            storage.remove(UNREPORTED_ROLLBACK_KEY);
            boot = Boot::RolledBack { failed: String::from_utf8_lossy(&failed).into_owned(), running: RUNNING_VERSION.to_owned() };
        }
        record.save(storage);
        Ok(Updater { record, boot })
    }

    /// A new image that cannot reach the cloud in time hands over to the previous one
    /// (the bootloader then starts it), which reports the rollback once connected.
    pub fn roll_back_if_unconfirmed(&mut self, storage: &mut NvsStorage, uptime_ms: u64) {
        let Boot::PendingVerify { version } = &self.boot else { return };
        if uptime_ms < CONFIRM_TIMEOUT_MS {
            return;
        }
        log::error!("image {version} did not reach the cloud in {} s: rolling back", CONFIRM_TIMEOUT_MS / 1000);
        storage.set(UNREPORTED_ROLLBACK_KEY, version.as_bytes());
        let _ = self.record.rollback();
        self.record.save(storage);
        if let Ok(mut ota) = EspOta::new() {
            let _ = ota.mark_running_slot_invalid_and_reboot();
        }
    }

    /// After CONNACK and an acknowledged heartbeat: keep a new image, or report a rollback.
    pub fn confirm_if_pending(&mut self, storage: &mut NvsStorage, report: &mut Report<'_>, status_topic: &str) {
        let rollout = self.record.job().map(|j| j.rollout.clone()).unwrap_or_default();
        match std::mem::replace(&mut self.boot, Boot::Same) {
            Boot::Same => {}
            Boot::PendingVerify { version } => {
                let confirmed = EspOta::new().and_then(|mut ota| ota.mark_running_slot_valid());
                match confirmed.map_err(anyhow::Error::from).and_then(|_| self.record.mark_valid().map_err(|e| anyhow::anyhow!("{e}"))) {
                    Ok(()) => {
                        log::info!("image {version} confirmed");
                        report(status_topic, &OtaStatus::new(&rollout, OtaState::Success, 100).to_json());
                    }
                    Err(e) => log::error!("confirming image {version} failed: {e}"),
                }
                self.record.save(storage);
            }
            Boot::RolledBack { failed, running } => {
                let status = OtaStatus::new(&rollout, OtaState::RolledBack, 100)
                    .with_error(format!("version {failed} did not start; running {running} again"));
                report(status_topic, &status.to_json());
            }
        }
    }

    pub fn handle_offer(&mut self, payload: &[u8], p: &Provisioning, storage: &mut NvsStorage, report: &mut Report<'_>, status_topic: &str) {
        let offer = match Offer::parse(payload) {
            Ok(o) => o,
            Err(e) => return log::warn!("unreadable OTA offer: {e}"),
        };
        let send = |report: &mut Report<'_>, s: OtaStatus| report(status_topic, &s.to_json());
        if self.record.is_duplicate(&offer) {
            return;
        }
        if self.record.in_progress() {
            return send(report, OtaStatus::new(&offer.rollout, OtaState::Refused, 0).with_error("another update is in progress"));
        }
        let verifier = parse_public_key_hex(OTA_PUBLIC_KEY_HEX)
            .and_then(|key| OtaVerifier::new(&key, RUNNING_VERSION, PARTITION_SIZE, CHIP));
        let hasher = match verifier.and_then(|v| v.check(&offer)) {
            Ok(h) => h,
            Err(e) => return send(report, OtaStatus::new(&offer.rollout, OtaState::Refused, 0).with_error(e.to_string())),
        };
        if let Err(e) = self.record.start(&offer, payload) {
            return send(report, OtaStatus::new(&offer.rollout, OtaState::Refused, 0).with_error(e.to_string()));
        }
        self.record.save(storage);
        send(report, OtaStatus::new(&offer.rollout, OtaState::Offered, 0));

        let rollout = offer.rollout.clone();
        let outcome = install(&offer, p, hasher, &mut |state, pct| send(report, OtaStatus::new(&rollout, state, pct)));
        match outcome {
            Ok(()) => {
                let _ = self.record.downloaded().and_then(|_| self.record.verified(true));
                self.record.save(storage);
                send(report, OtaStatus::new(&offer.rollout, OtaState::Rebooting, 100));
                // Give the QoS 1 status a moment to leave before the radio goes down.
                std::thread::sleep(Duration::from_secs(2));
                esp_idf_svc::hal::reset::restart();
            }
            Err(e) => {
                log::warn!("update {} failed: {e}", offer.manifest.version);
                let _ = self.record.abort();
                self.record.save(storage);
                send(report, OtaStatus::new(&offer.rollout, OtaState::Failed, 0).with_error(e));
            }
        }
    }
}

/// Downloads, verifies and activates the image; the new slot boots at the next restart.
fn install(offer: &Offer, p: &Provisioning, mut hasher: ImageHasher, status: &mut dyn FnMut(OtaState, u8)) -> Result<(), String> {
    let mut ota = EspOta::new().map_err(|e| e.to_string())?;
    let mut update = ota.initiate_update().map_err(|e| e.to_string())?;
    if let Err(e) = download(offer, p, &mut update, &mut hasher, &mut |pct| status(OtaState::Downloading, pct)) {
        let _ = update.abort();
        return Err(e);
    }
    status(OtaState::Verifying, 100);
    if let Err(e) = hasher.finish() {
        let _ = update.abort();
        return Err(e.to_string());
    }
    // complete() checks the image header and makes the new slot the boot slot.
    update.complete().map_err(|e| e.to_string())
}

/// Streams the image into the inactive slot, resuming with `Range` after a dropped
/// connection, within the core's attempt budget.
fn download(offer: &Offer, p: &Provisioning, update: &mut EspOtaUpdate<'_>, hasher: &mut ImageHasher, progress: &mut dyn FnMut(u8)) -> Result<(), String> {
    let size = offer.manifest.size;
    let mut budget = AttemptBudget::new(6);
    let mut throttle = ProgressThrottle::new(10);
    let mut buf = vec![0u8; 4096];
    loop {
        let from = hasher.received();
        let before = from;
        let attempt = (|| -> Result<(), AttemptError> {
            let conn = EspHttpConnection::new(&Configuration {
                crt_bundle_attach: if p.ca_pem.is_none() { Some(esp_idf_svc::sys::esp_crt_bundle_attach) } else { None },
                server_certificate: p.ca_pem.as_deref().map(|pem| esp_idf_svc::tls::X509::pem_until_nul(pem.as_bytes())),
                timeout: Some(Duration::from_secs(30)),
                buffer_size: Some(4096),
                ..Default::default()
            })
            .map_err(|e| AttemptError::Retry(e.to_string()))?;
            let mut client = Client::wrap(conn);
            let range = range_header(from);
            let headers: Vec<(&str, &str)> = range.as_deref().map(|r| vec![("range", r)]).unwrap_or_default();
            let req = client.request(Method::Get, &offer.manifest.url, &headers).map_err(|e| AttemptError::Retry(e.to_string()))?;
            let mut res = req.submit().map_err(|e| AttemptError::Retry(e.to_string()))?;
            match plan_response(from, res.status(), res.header("content-range"), size)? {
                Plan::Append => {}
                // The server ignored the range: the slot cannot rewind, so the update starts over.
                Plan::Restart => return Err(AttemptError::Fatal("the image server does not support Range; retry the rollout".into())),
            }
            loop {
                let n = res.read(&mut buf).map_err(|e| AttemptError::Retry(e.to_string()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]).map_err(|e| AttemptError::Fatal(e.to_string()))?;
                update.write(&buf[..n]).map_err(|e| AttemptError::Fatal(e.to_string()))?;
                if let Some(pct) = throttle.update(hasher.progress()) {
                    progress(pct);
                }
            }
            if hasher.received() < size {
                return Err(AttemptError::Retry("the connection ended before the image did".into()));
            }
            Ok(())
        })();
        match attempt {
            Ok(()) => return Ok(()),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Retry(e)) => {
                if !budget.failed(hasher.received() - before) {
                    return Err(format!("download gave up: {e}"));
                }
                log::warn!("download interrupted at {} of {size} bytes ({e}); resuming", hasher.received());
                std::thread::sleep(Duration::from_secs(2u64.pow(budget.fruitless().min(5))));
            }
        }
    }
}
