//! The simulator's OTA I/O. Every decision (offer checks, reports, the record, the
//! reboot, confirmation and rollback) is the core session's; this module carries out
//! the [`OtaWork`] it asks for on the emulated flash under `--state-dir`, streams
//! images with [`crate::download`], and models the bootloader: a version in
//! `--fail-boot-version` does not come up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleetwire_core::session::{
    DownloadFailure, ImageDownload, OtaWork, DEFAULT_CONFIRM_TIMEOUT_MS, DEFAULT_PARTITION_SIZE as CORE_PARTITION_SIZE,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::download::{self, Download, DownloadPolicy, Event, Failure};
use crate::flash::DeviceFlash;
use crate::http::HttpClient;
use crate::log::Level;
use crate::sim_log;

/// Default size of an OTA app partition (`--partition-size`).
pub const DEFAULT_PARTITION_SIZE: u64 = CORE_PARTITION_SIZE;
/// Default time a new image has to reach a stable connection (`--ota-confirm-timeout-s`).
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_millis(DEFAULT_CONFIRM_TIMEOUT_MS);
/// Bound on connecting and on a response head (the body has the policy's idle timeout).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct OtaConfig {
    /// Holds `<device-id>/` with the emulated NVS and flash slots.
    pub state_dir: PathBuf,
    /// Versions whose first boot crashes (the bootloader then rolls back).
    pub fail_boot_versions: Vec<String>,
    pub download: DownloadPolicy,
    /// Trust for image downloads (the WebSocket's); `None`: the webpki roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl OtaConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        OtaConfig { state_dir, fail_boot_versions: Vec::new(), download: DownloadPolicy::default(), tls: None }
    }

    /// The simulated bootloader: whether `version` comes up when booted.
    pub fn image_starts(&self, version: &str) -> bool {
        !self.fail_boot_versions.iter().any(|v| v == version)
    }
}

/// The download in flight. Dropping it stops the transfer.
struct Transfer {
    events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<()>,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a download tells the session.
pub enum DownloadNews {
    Progress(u64),
    Done(Result<(), DownloadFailure>),
}

pub struct OtaIo {
    id: String,
    flash: DeviceFlash,
    http: HttpClient,
    policy: DownloadPolicy,
    transfer: Option<Transfer>,
    seed: u64,
}

impl OtaIo {
    pub fn open(device_id: &str, cfg: &OtaConfig, seed: u64) -> Result<Self, String> {
        let tls = match &cfg.tls {
            Some(t) => t.clone(),
            None => crate::tls::client_config(&crate::tls::Trust { ca_file: None, webpki_roots: true })?,
        };
        Ok(OtaIo {
            id: device_id.to_owned(),
            flash: DeviceFlash::open(&cfg.state_dir, device_id)?,
            http: HttpClient::new(tls, HTTP_TIMEOUT),
            policy: cfg.download.clone(),
            transfer: None,
            seed,
        })
    }

    /// Carry out what the session asked for. A download runs in its own task: poll
    /// [`OtaIo::next`] for its news.
    pub fn perform(&mut self, work: OtaWork) {
        match work {
            OtaWork::EraseSlot(slot) => {
                if let Err(e) = self.flash.erase_slot(slot) {
                    // The download that follows overwrites the slot from its start anyway.
                    sim_log!(Level::Warn, &self.id, "ota-erase-failed", slot = slot, error = e);
                }
            }
            OtaWork::Download(job) => self.start(*job),
            // The record the session keeps is this simulator's bootloader state.
            OtaWork::ConfirmImage => {}
        }
    }

    fn start(&mut self, job: ImageDownload) {
        let ImageDownload { url, size, sha256, slot, from, mut hasher, bearer, .. } = job;
        // Resuming: the bytes already in the slot go through the hasher again. A slot
        // shorter than the record says (bytes that never reached the disk) resumes from
        // where it ends; the session hears the lower count and reports from there.
        let received = if from == 0 {
            0
        } else {
            match self.flash.truncate_and_read_slot(slot, from) {
                Ok(prefix) => {
                    hasher.update(&prefix).expect("the record never holds more than the manifest's size");
                    prefix.len() as u64
                }
                Err(e) => {
                    sim_log!(Level::Warn, &self.id, "ota-resume-unreadable", slot = slot, error = e);
                    let _ = self.flash.erase_slot(slot);
                    hasher = fleetwire_core::ota::ImageHasher::new(&sha256, size);
                    0
                }
            }
        };
        let dl = Download { url, size, sha256, slot: self.flash.slot_path(slot), received, hasher, bearer };
        let (tx, events) = mpsc::unbounded_channel();
        if received != from {
            let _ = tx.send(Event::Progress(received));
        }
        self.seed = self.seed.wrapping_add(1);
        let task =
            tokio::spawn(download::run(dl, self.http.clone(), self.policy.clone(), self.id.clone(), self.seed, tx));
        self.transfer = Some(Transfer { events, task });
    }

    /// The running download's next news; never resolves without one. Cancel-safe.
    pub async fn next(&mut self) -> DownloadNews {
        let Some(t) = self.transfer.as_mut() else { return std::future::pending().await };
        let news = match t.events.recv().await {
            Some(Event::Progress(n)) => return DownloadNews::Progress(n),
            Some(Event::Done(Ok(()))) => Ok(()),
            Some(Event::Done(Err(Failure::Verify(e)))) => Err(DownloadFailure::Verify(e.to_string())),
            Some(Event::Done(Err(Failure::Fetch(e)))) => Err(DownloadFailure::Fetch(e)),
            None => Err(DownloadFailure::Fetch("the download task ended unexpectedly".into())),
        };
        self.transfer = None;
        DownloadNews::Done(news)
    }

    /// Stop a download (the device reboots).
    pub fn cancel(&mut self) {
        self.transfer = None;
    }
}

#[cfg(test)]
#[path = "ota_tests.rs"]
mod tests;
