//! OTA I/O on the chip. The core session decides everything (offer checks, reports,
//! the update record, the reboot, confirmation and rollback); this module streams an
//! image into the inactive partition through the core's hasher, with the core's
//! `Range` resume rules and attempt budget, and talks to ESP-IDF's OTA API.

use std::time::Duration;

use embedded_svc::http::client::Client;
use embedded_svc::http::Method;
use esp_idf_svc::http::client::{Configuration, EspHttpConnection};
use esp_idf_svc::ota::{EspOta, EspOtaUpdate};
use fleetwire_core::ota::{parse_public_key_hex, ImageHasher};
use fleetwire_core::ota_download::{plan_response, range_header, AttemptBudget, AttemptError, Plan};
use fleetwire_core::secret::Secret;
use fleetwire_core::session::{DownloadFailure, ImageDownload, OtaSettings, DEFAULT_CONFIRM_TIMEOUT_MS};

use crate::provisioning::Provisioning;

include!(concat!(env!("OUT_DIR"), "/ota_public_key.rs"));

/// The version of this image; the anti-downgrade check and heartbeats use it.
pub const RUNNING_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The chip this image is built for (`MCU` in .cargo/config.toml), checked against offers.
const CHIP: &str = env!("MCU");
/// Size of one OTA slot in the two-OTA partition table.
const PARTITION_SIZE: u64 = 1_572_864;

/// What the session checks offers against; `server_url` (provisioned) resolves manifest
/// urls that are paths.
pub fn ota_settings(server_url: &str) -> anyhow::Result<OtaSettings> {
    let key = parse_public_key_hex(OTA_PUBLIC_KEY_HEX).map_err(|e| anyhow::anyhow!("FLEETWIRE_OTA_PUBLIC_KEY: {e}"))?;
    Ok(OtaSettings {
        public_key: Some(key),
        chip: CHIP.to_owned(),
        partition_size: PARTITION_SIZE,
        confirm_timeout_ms: DEFAULT_CONFIRM_TIMEOUT_MS,
        server_url: Some(server_url.to_owned()),
    })
}

/// The running image reached the cloud: keep it.
pub fn confirm_running_image() {
    if let Err(e) = EspOta::new().and_then(|mut ota| ota.mark_running_slot_valid()) {
        log::error!("marking the running image valid failed: {e}");
    }
}

/// Mark the running image invalid and boot the previous one (returns only on failure).
pub fn roll_back_and_reboot() {
    match EspOta::new() {
        Ok(mut ota) => {
            let e = ota.mark_running_slot_invalid_and_reboot();
            log::error!("rolling back failed: {e:?}");
        }
        Err(e) => log::error!("rolling back failed: {e}"),
    }
}

/// Download, verify and activate an image; the new slot boots at the next restart.
/// `progress(received)` after every chunk. ESP-IDF cannot continue a partly written
/// slot, so a resumed download (`from > 0`) starts over and reports from 0.
pub fn install(job: ImageDownload, p: &Provisioning, progress: &mut dyn FnMut(u64)) -> Result<(), DownloadFailure> {
    let ImageDownload { url, size, from, mut hasher, bearer, .. } = job;
    if from > 0 {
        progress(0);
    }
    let fetch_error = |e: &dyn std::fmt::Display| DownloadFailure::Fetch(e.to_string());
    let mut ota = EspOta::new().map_err(|e| fetch_error(&e))?;
    // Erases the inactive slot.
    let mut update = ota.initiate_update().map_err(|e| fetch_error(&e))?;
    if let Err(e) = download(&url, bearer.as_ref(), size, p, &mut update, &mut hasher, progress) {
        let _ = update.abort();
        return Err(DownloadFailure::Fetch(e));
    }
    if let Err(e) = hasher.finish() {
        let _ = update.abort();
        return Err(DownloadFailure::Verify(e.to_string()));
    }
    // complete() checks the image header and makes the new slot the boot slot.
    update.complete().map_err(|e| DownloadFailure::Verify(format!("the bootloader refused the image: {e}")))
}

/// Streams the image into the inactive slot, resuming with `Range` after a dropped
/// connection, within the core's attempt budget.
/// `bearer`: the device's token, sent as `Authorization` only when the core set it
/// (the server's own origin).
fn download(
    url: &str,
    bearer: Option<&Secret>,
    size: u64,
    p: &Provisioning,
    update: &mut EspOtaUpdate<'_>,
    hasher: &mut ImageHasher,
    progress: &mut dyn FnMut(u64),
) -> Result<(), String> {
    let mut budget = AttemptBudget::new(6);
    let mut buf = vec![0u8; 4096];
    let authorization = bearer.map(|t| format!("Bearer {}", t.expose()));
    loop {
        let from = hasher.received();
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
            let mut headers: Vec<(&str, &str)> = range.as_deref().map(|r| vec![("range", r)]).unwrap_or_default();
            if let Some(a) = authorization.as_deref() {
                headers.push(("authorization", a));
            }
            let req = client.request(Method::Get, url, &headers).map_err(|e| AttemptError::Retry(e.to_string()))?;
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
                progress(hasher.received());
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
                if !budget.failed(hasher.received() - from) {
                    return Err(format!("download gave up: {e}"));
                }
                log::warn!("download interrupted at {} of {size} bytes ({e}); resuming", hasher.received());
                std::thread::sleep(Duration::from_secs(2u64.pow(budget.fruitless().min(5))));
            }
        }
    }
}
