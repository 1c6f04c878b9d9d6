//! The device side of OTA: offer → checks → download into the inactive slot → verify →
//! reboot → confirm or roll back, with one `ota/status` report per step.
//!
//! Every decision comes from `fleetwire-core` (offer parsing and the signature, chip,
//! anti-downgrade and size checks in `ota`, the persistent slot record and bootloader
//! model in `ota_store`, status payloads and the progress throttle in `ota_status`,
//! resume rules in `ota_download`); this module does the I/O around them and keeps the
//! session's MQTT code free of OTA details. The session calls [`OtaAgent::on_offer`],
//! [`OtaAgent::on_stable`] and [`OtaAgent::poll`], publishes [`OtaAgent::take_statuses`]
//! at QoS 1, and performs [`OtaAgent::reboot`] when [`OtaAgent::reboot_due`].
//!
//! A simulated reboot is in-process: the session ends its MQTT connection and starts
//! again with the version this agent says is running. A restart of the simulator
//! process is not a reboot: it continues where it was (a download resumes, an image
//! waiting for confirmation still waits), except that an image verified but not yet
//! booted is booted now.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleetwire_core::ota::{ImageHasher, Offer, OtaVerifier, SlotState};
use fleetwire_core::ota_status::{OtaState, OtaStatus, ProgressThrottle};
use fleetwire_core::ota_store::{Boot, OtaRecord};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::download::{self, Download, DownloadPolicy, Event, Failure};
use crate::flash::DeviceFlash;
use crate::http::HttpClient;
use crate::log::{Level, Opt};
use crate::sim_log;
use crate::stats::{inc, Stats};

/// Default size of an OTA app partition (`--partition-size`): 1.5 MiB, the app slot
/// size of ESP-IDF's two-OTA partition table on a 4 MB flash.
pub const DEFAULT_PARTITION_SIZE: u64 = 1_572_864;
/// Default time a new image has to reach CONNACK + an acknowledged heartbeat.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);
/// `downloading` is reported about this often, in percent.
const PROGRESS_STEP: u8 = 10;
/// Bound on connecting and on a response head (the body has the policy's idle timeout).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct OtaConfig {
    /// Ed25519 key manifests must be signed with; `None`: every offer is refused.
    pub public_key: Option<[u8; 32]>,
    pub chip: String,
    pub partition_size: u64,
    /// Holds `<device-id>/` with the emulated NVS and flash slots.
    pub state_dir: PathBuf,
    /// Versions whose first boot crashes (the bootloader then rolls back).
    pub fail_boot_versions: Vec<String>,
    pub confirm_timeout: Duration,
    pub download: DownloadPolicy,
    /// Trust for image downloads (the WebSocket's); `None`: the webpki roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl OtaConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        OtaConfig {
            public_key: None,
            chip: "esp32".into(),
            partition_size: DEFAULT_PARTITION_SIZE,
            state_dir,
            fail_boot_versions: Vec::new(),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            download: DownloadPolicy::default(),
            tls: None,
        }
    }
}

/// Why the device has to reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RebootCause {
    /// A verified image waits in the other slot.
    Install,
    /// The new image did not reach the cloud in time: back to the previous one.
    NotConfirmed,
}

/// The download in flight. Dropping it stops the transfer.
struct Transfer {
    events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<()>,
    throttle: ProgressThrottle,
    size: u64,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Wake {
    Event(Option<Event>),
    ConfirmTimeout,
}

pub struct OtaAgent {
    id: String,
    cfg: OtaConfig,
    http: HttpClient,
    flash: DeviceFlash,
    record: OtaRecord,
    /// The version running now (changes only at a boot).
    running: String,
    outgoing: VecDeque<OtaStatus>,
    transfer: Option<Transfer>,
    confirm_by: Option<Instant>,
    reboot: Option<RebootCause>,
    stats: Arc<Stats>,
    seed: u64,
}

impl OtaAgent {
    /// Load the device's state (or create it running `first_version`) and boot it.
    pub fn open(
        device_id: &str,
        cfg: OtaConfig,
        first_version: &str,
        stats: Arc<Stats>,
        seed: u64,
    ) -> Result<Self, String> {
        let mut flash = DeviceFlash::open(&cfg.state_dir, device_id)?;
        let tls = match &cfg.tls {
            Some(t) => t.clone(),
            None => crate::tls::client_config(&crate::tls::Trust { ca_file: None, webpki_roots: true })?,
        };
        let record = OtaRecord::load(&flash).unwrap_or_else(|| OtaRecord::factory(first_version));
        record.save(&mut flash);
        let mut agent = OtaAgent {
            id: device_id.to_owned(),
            http: HttpClient::new(tls, HTTP_TIMEOUT),
            running: record.boot_version().to_owned(),
            record,
            flash,
            cfg,
            outgoing: VecDeque::new(),
            transfer: None,
            confirm_by: None,
            reboot: None,
            stats,
            seed,
        };
        agent.boot();
        Ok(agent)
    }

    pub fn running_version(&self) -> &str {
        &self.running
    }

    /// Where the update stands (for logs and tests).
    pub fn slot_state(&self) -> SlotState {
        self.record.state()
    }

    pub fn reboot_due(&self) -> bool {
        self.reboot.is_some()
    }

    /// Status payloads to publish on `ota/status`, oldest first.
    pub fn take_statuses(&mut self) -> Vec<Vec<u8>> {
        self.outgoing.drain(..).map(|s| s.to_json()).collect()
    }

    fn report(&mut self, rollout: &str, state: OtaState, progress: u8, error: Option<String>) {
        if rollout.is_empty() {
            // Nothing to correlate with (cannot happen with a job); the schema needs one.
            return;
        }
        let mut s = OtaStatus::new(rollout, state, progress);
        if let Some(e) = error {
            s = s.with_error(e);
        }
        self.outgoing.push_back(s);
    }

    fn save(&mut self) {
        self.record.save(&mut self.flash);
    }

    /// Continue a download the previous process left unfinished. Needs the runtime,
    /// hence separate from [`OtaAgent::open`].
    pub fn resume(&mut self) {
        if self.record.state() != SlotState::Downloading || self.transfer.is_some() {
            return;
        }
        let job = self.record.job().expect("a download has a job").clone();
        let checked = Offer::parse(job.offer.as_bytes()).map_err(|e| e.to_string()).and_then(|offer| {
            let hasher = self.verifier()?.check(&offer).map_err(|e| e.to_string())?;
            Ok((offer, hasher))
        });
        let (offer, mut hasher) = match checked {
            Ok(x) => x,
            Err(e) => return self.fail_download(&job.rollout, 0, format!("cannot resume: {e}")),
        };
        let prefix = match self.flash.truncate_and_read_slot(job.target_slot, job.received) {
            Ok(p) => p,
            Err(e) => return self.fail_download(&job.rollout, 0, format!("cannot read the slot: {e}")),
        };
        hasher.update(&prefix).expect("the record never holds more than the manifest's size");
        sim_log!(Level::Info, &self.id, "ota-resume", rollout = job.rollout, received = prefix.len());
        self.start_transfer(&offer, hasher, prefix.len() as u64, job.target_slot);
    }

    fn verifier(&self) -> Result<OtaVerifier, String> {
        let key = self.cfg.public_key.ok_or(
            "no OTA public key configured (--ota-public-key or FLEETWIRE_OTA_PUBLIC_KEY): \
             this device cannot verify any manifest",
        )?;
        OtaVerifier::new(&key, &self.running, self.cfg.partition_size, &self.cfg.chip).map_err(|e| e.to_string())
    }

    /// An `ota` publish arrived.
    pub fn on_offer(&mut self, payload: &[u8]) {
        let offer = match Offer::parse(payload) {
            Ok(o) => o,
            Err(e) => {
                // Answer when the rollout can be read, so the server sees why.
                let rollout = serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|v| v.get("rollout").and_then(Value::as_str).map(str::to_owned))
                    .filter(|r| !r.is_empty() && r.len() <= 128);
                sim_log!(Level::Warn, &self.id, "ota-offer-malformed", rollout = Opt(rollout.as_deref()), error = e);
                if let Some(r) = rollout {
                    self.refuse(&r, e.to_string());
                }
                return;
            }
        };
        let m = &offer.manifest;
        sim_log!(
            Level::Info,
            &self.id,
            "ota-offer",
            rollout = offer.rollout,
            version = m.version,
            size = m.size,
            chip = Opt(m.chip.as_deref()),
            running = self.running
        );
        if self.record.is_duplicate(&offer) {
            sim_log!(Level::Info, &self.id, "ota-offer-duplicate", rollout = offer.rollout, action = "ignored");
            return;
        }
        if self.record.in_progress() {
            let job = self.record.job().expect("an update in progress has a job");
            let why = format!("busy: rollout {} (version {}) is in progress", job.rollout, job.version);
            return self.refuse(&offer.rollout, why);
        }
        let hasher = match self.verifier().and_then(|v| v.check(&offer).map_err(|e| e.to_string())) {
            Ok(h) => h,
            Err(e) => return self.refuse(&offer.rollout, e),
        };
        let target = match self.record.start(&offer, payload) {
            Ok(t) => t,
            Err(e) => return self.refuse(&offer.rollout, e.to_string()),
        };
        if let Err(e) = self.flash.erase_slot(target) {
            return self.fail_download(&offer.rollout, 0, format!("cannot erase slot {target}: {e}"));
        }
        self.save();
        sim_log!(Level::Info, &self.id, "ota-accepted", rollout = offer.rollout, version = m.version, slot = target);
        self.report(&offer.rollout, OtaState::Offered, 0, None);
        self.start_transfer(&offer, hasher, 0, target);
    }

    fn refuse(&mut self, rollout: &str, error: String) {
        inc(&self.stats.ota_refused);
        sim_log!(Level::Warn, &self.id, "ota-refused", rollout = rollout, error = error);
        self.report(rollout, OtaState::Refused, 0, Some(error));
    }

    fn start_transfer(&mut self, offer: &Offer, hasher: ImageHasher, received: u64, slot: u8) {
        let m = &offer.manifest;
        let dl = Download {
            url: m.url.clone(),
            size: m.size,
            sha256: m.sha256.clone(),
            slot: self.flash.slot_path(slot),
            received,
            hasher,
        };
        let (tx, events) = mpsc::unbounded_channel();
        self.seed = self.seed.wrapping_add(1);
        let task = tokio::spawn(download::run(
            dl,
            self.http.clone(),
            self.cfg.download.clone(),
            self.id.clone(),
            self.seed,
            tx,
        ));
        self.transfer = Some(Transfer { events, task, throttle: ProgressThrottle::new(PROGRESS_STEP), size: m.size });
        self.on_progress(received);
    }

    /// Wait for the download's next event or the confirmation deadline, and act on it.
    /// Cancel-safe: nothing happens unless the wait completed.
    pub async fn poll(&mut self) {
        let deadline = self.confirm_by;
        let wake = tokio::select! {
            ev = async {
                match self.transfer.as_mut() {
                    Some(t) => t.events.recv().await,
                    None => std::future::pending().await,
                }
            } => Wake::Event(ev),
            _ = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => Wake::ConfirmTimeout,
        };
        match wake {
            Wake::Event(Some(Event::Progress(n))) => self.on_progress(n),
            Wake::Event(Some(Event::Done(result))) => self.on_downloaded(result),
            Wake::Event(None) => {
                let rollout = self.record.job().map(|j| j.rollout.clone()).unwrap_or_default();
                self.fail_download(&rollout, 0, "the download task ended unexpectedly".into());
            }
            Wake::ConfirmTimeout => {
                self.confirm_by = None;
                sim_log!(
                    Level::Warn,
                    &self.id,
                    "ota-confirm-timeout",
                    version = self.running,
                    after_s = self.cfg.confirm_timeout.as_secs()
                );
                self.reboot = Some(RebootCause::NotConfirmed);
            }
        }
    }

    fn on_progress(&mut self, received: u64) {
        // Fewer bytes than recorded: the server ignored the range and the download
        // started over, which is worth reporting (and persisting) from 0 again.
        let restarted = self.record.job().is_some_and(|j| received < j.received);
        let Some(t) = self.transfer.as_mut() else { return };
        if restarted {
            t.throttle = ProgressThrottle::new(PROGRESS_STEP);
        }
        let percent = ((received.min(t.size) * 100) / t.size.max(1)) as u8;
        let Some(step) = t.throttle.update(percent) else { return };
        // Persist at each reported step: a restarted process resumes from here.
        if self.record.set_received(received).is_ok() {
            self.save();
        }
        let rollout = self.record.job().map(|j| j.rollout.clone()).unwrap_or_default();
        sim_log!(Level::Info, &self.id, "ota-progress", rollout = rollout, progress = step, received = received);
        self.report(&rollout, OtaState::Downloading, step, None);
    }

    fn on_downloaded(&mut self, result: Result<(), Failure>) {
        let size = self.transfer.take().map_or(0, |t| t.size);
        let rollout = self.record.job().map(|j| j.rollout.clone()).unwrap_or_default();
        let verify_error = match result {
            Err(Failure::Fetch(e)) => {
                let received = self.record.job().map_or(0, |j| j.received);
                let progress = (received * 100 / size.max(1)) as u8;
                return self.fail_download(&rollout, progress, format!("download failed: {e}"));
            }
            Ok(()) => None,
            Err(Failure::Verify(e)) => Some(e),
        };
        let _ = self.record.set_received(size);
        self.record.downloaded().expect("Downloading → Verifying");
        self.report(&rollout, OtaState::Verifying, 100, None);
        if let Some(e) = verify_error {
            self.record.verified(false).expect("Verifying → Idle");
            let slot = self.record.job().map_or(1 - self.record.boot_slot(), |j| j.target_slot);
            let _ = self.flash.erase_slot(slot);
            self.save();
            inc(&self.stats.ota_failed);
            sim_log!(Level::Warn, &self.id, "ota-failed", rollout = rollout, error = e, running = self.running);
            return self.report(&rollout, OtaState::Failed, 100, Some(e.to_string()));
        }
        self.record.verified(true).expect("Verifying → PendingReboot");
        self.save();
        let version = self.record.boot_version().to_owned();
        sim_log!(Level::Info, &self.id, "ota-verified", rollout = rollout, version = version, action = "rebooting");
        self.report(&rollout, OtaState::Rebooting, 100, None);
        self.reboot = Some(RebootCause::Install);
    }

    /// Give up on the current download: the slot is discarded, nothing else changes.
    fn fail_download(&mut self, rollout: &str, progress: u8, error: String) {
        self.transfer = None;
        if self.record.state() == SlotState::Downloading {
            let slot = self.record.job().map(|j| j.target_slot);
            self.record.abort().expect("Downloading → Idle");
            if let Some(slot) = slot {
                let _ = self.flash.erase_slot(slot);
            }
            self.save();
        }
        inc(&self.stats.ota_failed);
        sim_log!(Level::Warn, &self.id, "ota-failed", rollout = rollout, error = error, running = self.running);
        self.report(rollout, OtaState::Failed, progress, Some(error));
    }

    /// The connection became stable (CONNACK + first acknowledged heartbeat, whose `fw`
    /// is the running version): a new image has proven itself.
    pub fn on_stable(&mut self) {
        if self.record.state() != SlotState::PendingVerify || self.reboot.is_some() {
            return;
        }
        self.record.mark_valid().expect("PendingVerify → Valid");
        self.save();
        self.confirm_by = None;
        let rollout = self.record.job().map(|j| j.rollout.clone()).unwrap_or_default();
        inc(&self.stats.ota_success);
        sim_log!(Level::Info, &self.id, "ota-success", rollout = rollout, version = self.running);
        self.report(&rollout, OtaState::Success, 100, None);
    }

    /// Reboot now (the session has ended its connection).
    pub fn reboot(&mut self) {
        if self.reboot.take() == Some(RebootCause::NotConfirmed) {
            if let Ok(Boot::RolledBack { failed, running }) = self.record.rollback() {
                let why = format!(
                    "version {failed} was not confirmed (no CONNACK + acknowledged heartbeat within {} s); \
                     rolled back to {running}",
                    self.cfg.confirm_timeout.as_secs()
                );
                self.rolled_back(why);
            }
        }
        self.boot();
    }

    /// What the bootloader does at power-on / reset.
    fn boot(&mut self) {
        let fail = &self.cfg.fail_boot_versions;
        match self.record.reboot(|v| !fail.iter().any(|f| f == v)) {
            Boot::Same => {}
            Boot::PendingVerify { version } => {
                sim_log!(Level::Info, &self.id, "ota-booted", version = version, state = "pending-verify");
            }
            Boot::RolledBack { failed, running } => {
                let why = format!(
                    "version {failed} failed to boot (simulated crash, --fail-boot-version); \
                     the bootloader rolled back to {running}"
                );
                self.rolled_back(why);
            }
        }
        self.save();
        self.running = self.record.boot_version().to_owned();
        // Also after a process restart: the image still has to prove itself.
        self.confirm_by =
            (self.record.state() == SlotState::PendingVerify).then(|| Instant::now() + self.cfg.confirm_timeout);
    }

    fn rolled_back(&mut self, why: String) {
        let rollout = self.record.job().map(|j| j.rollout.clone()).unwrap_or_default();
        inc(&self.stats.ota_failed);
        sim_log!(Level::Warn, &self.id, "ota-rolled-back", rollout = rollout, error = why);
        self.report(&rollout, OtaState::RolledBack, 100, Some(why));
    }

    /// Bytes of `slot` on "flash" (tests).
    #[cfg(test)]
    pub fn slot_bytes(&self, slot: u8) -> Option<Vec<u8>> {
        std::fs::read(self.flash.slot_path(slot)).ok()
    }

    /// The NVS record as stored (tests).
    #[cfg(test)]
    pub fn stored_record(&self) -> Option<OtaRecord> {
        OtaRecord::load(&self.flash)
    }
}

#[cfg(test)]
#[path = "ota_tests.rs"]
mod tests;
