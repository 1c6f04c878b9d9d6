//! The device side of OTA as decisions: offer → checks → download into the inactive
//! slot → verify → reboot → confirm or roll back, one `ota/status` report per step.
//!
//! The checks and records are the core's (`ota`, `ota_store`, `ota_status`); this agent
//! orders them and asks the shell for the I/O ([`OtaWork`]): erasing a slot, streaming
//! an image through the core's hasher. Reports go to the session, which publishes them
//! at QoS 1 through its outbox (queued while offline).
//!
//! The confirmation rule: a new image boots `pending-verify` and is kept once its first
//! connection is stable (CONNACK and an acknowledged heartbeat, whose `fw` is the new
//! version). Without that within the confirmation timeout it is rolled back, and so is
//! an image that restarts before confirming itself (see `OtaRecord::reboot`).

use serde_json::Value;

use crate::ota::{ImageHasher, Offer, OtaVerifier, SlotState};
use crate::ota_download::{resolve_image_url, same_origin};
use crate::ota_status::{OtaState, OtaStatus, ProgressThrottle};
use crate::ota_store::{Boot, OtaRecord};
use crate::platform::Storage;
use crate::session::output::{DownloadFailure, Event, ImageDownload, OtaWork, Output, RebootKind};
use crate::session::{Out, Writes};

/// `downloading` is reported about this often, in percent.
pub const PROGRESS_STEP: u8 = 10;
/// Default time a new image has to reach a stable connection.
pub const DEFAULT_CONFIRM_TIMEOUT_MS: u64 = 120_000;
/// Size of an OTA app slot in ESP-IDF's two-OTA partition table on a 4 MB flash.
pub const DEFAULT_PARTITION_SIZE: u64 = 1_572_864;

#[derive(Debug, Clone)]
pub struct OtaSettings {
    /// Ed25519 key manifests must be signed with; `None`: every offer is refused.
    pub public_key: Option<[u8; 32]>,
    /// This device's chip; a manifest naming another is refused.
    pub chip: String,
    /// Largest image a slot holds.
    pub partition_size: u64,
    pub confirm_timeout_ms: u64,
    /// The server the device connects to (`ws[s]://host[:port]…` or `http[s]://…`): a
    /// manifest url that is a path (`/v1/firmware/{sha256}`) is fetched from its origin.
    /// `None`: such offers are refused.
    pub server_url: Option<String>,
}

impl OtaSettings {
    pub fn new(public_key: Option<[u8; 32]>, chip: &str) -> Self {
        OtaSettings {
            public_key,
            chip: chip.to_owned(),
            partition_size: DEFAULT_PARTITION_SIZE,
            confirm_timeout_ms: DEFAULT_CONFIRM_TIMEOUT_MS,
            server_url: None,
        }
    }
}

/// The download in flight.
struct Transfer {
    throttle: ProgressThrottle,
    size: u64,
}

pub(super) struct OtaAgent {
    settings: OtaSettings,
    record: OtaRecord,
    /// The version running now (changes only at a boot).
    running: String,
    transfer: Option<Transfer>,
    confirm_by: Option<u64>,
    reboot: Option<RebootKind>,
    reports: Vec<OtaStatus>,
}

impl OtaAgent {
    /// What the bootloader did: loads the record (or the factory state running
    /// `factory_version`), boots it with `image_starts` telling whether an image comes
    /// up, and resumes a download a restart interrupted.
    pub fn boot(
        settings: OtaSettings,
        storage: &dyn Storage,
        factory_version: &str,
        image_starts: &dyn Fn(&str) -> bool,
        now: u64,
        out: &mut Out,
    ) -> Self {
        let mut record = OtaRecord::load(storage).unwrap_or_else(|| OtaRecord::factory(factory_version));
        let boot = record.reboot(image_starts);
        let mut agent = OtaAgent {
            running: record.boot_version().to_owned(),
            record,
            settings,
            transfer: None,
            confirm_by: None,
            reboot: None,
            reports: Vec::new(),
        };
        match boot {
            Boot::Same => {}
            Boot::PendingVerify { version } => out.event(Event::OtaPendingVerify { version }),
            Boot::RolledBack { failed, running } => agent
                .rolled_back(format!("version {failed} failed to boot; the bootloader rolled back to {running}"), out),
        }
        agent.save(out);
        // Also after a restart without reboot: the image still has to prove itself.
        if agent.record.state() == SlotState::PendingVerify {
            agent.confirm_by = Some(now + agent.settings.confirm_timeout_ms);
        }
        agent.resume(out);
        agent
    }

    pub fn running_version(&self) -> &str {
        &self.running
    }

    pub fn state(&self) -> SlotState {
        self.record.state()
    }

    /// A reboot this agent needs (an installed image, or a rollback).
    pub fn reboot_pending(&self) -> Option<RebootKind> {
        self.reboot
    }

    pub fn next_wakeup(&self) -> Option<u64> {
        self.confirm_by
    }

    /// Status payloads to publish on `ota/status`, oldest first.
    pub fn take_reports(&mut self) -> Vec<Vec<u8>> {
        self.reports.drain(..).map(|s| s.to_json()).collect()
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
        self.reports.push(s);
    }

    fn save(&self, out: &mut Out) {
        self.record.save(&mut Writes(out));
    }

    fn job_rollout(&self) -> String {
        self.record.job().map(|j| j.rollout.clone()).unwrap_or_default()
    }

    fn verifier(&self) -> Result<OtaVerifier, String> {
        let key =
            self.settings.public_key.ok_or("no OTA public key configured: this device cannot verify any manifest")?;
        OtaVerifier::new(&key, &self.running, self.settings.partition_size, &self.settings.chip)
            .map_err(|e| e.to_string())
    }

    /// Continue a download the previous run left unfinished: its offer is checked again.
    fn resume(&mut self, out: &mut Out) {
        if self.record.state() != SlotState::Downloading {
            return;
        }
        let job = self.record.job().expect("a download has a job").clone();
        let checked = Offer::parse(job.offer.as_bytes()).map_err(|e| e.to_string()).and_then(|offer| {
            let hasher = self.verifier()?.check(&offer).map_err(|e| e.to_string())?;
            let url = self.image_url(&offer)?;
            Ok((offer, hasher, url))
        });
        match checked {
            Ok((offer, hasher, url)) => {
                out.event(Event::OtaResume { rollout: job.rollout.clone(), received: job.received });
                self.start_transfer(&offer, url, hasher, job.received, job.target_slot, out);
            }
            Err(e) => self.fail_download(&job.rollout, 0, format!("cannot resume: {e}"), out),
        }
    }

    /// An `ota` publish arrived.
    pub fn on_offer(&mut self, payload: &[u8], out: &mut Out) {
        let offer = match Offer::parse(payload) {
            Ok(o) => o,
            Err(e) => {
                // Answer when the rollout can be read, so the server sees why.
                let rollout = serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|v| v.get("rollout").and_then(Value::as_str).map(str::to_owned))
                    .filter(|r| !r.is_empty() && r.len() <= 128);
                out.event(Event::OtaOfferMalformed { rollout: rollout.clone(), error: e.to_string() });
                if let Some(r) = rollout {
                    self.refuse(&r, e.to_string(), out);
                }
                return;
            }
        };
        let m = &offer.manifest;
        out.event(Event::OtaOffer {
            rollout: offer.rollout.clone(),
            version: m.version.clone(),
            size: m.size,
            chip: m.chip.clone(),
            running: self.running.clone(),
        });
        if self.record.is_duplicate(&offer) {
            return out.event(Event::OtaOfferDuplicate { rollout: offer.rollout.clone() });
        }
        if self.record.in_progress() {
            let job = self.record.job().expect("an update in progress has a job");
            let why = format!("busy: rollout {} (version {}) is in progress", job.rollout, job.version);
            return self.refuse(&offer.rollout, why, out);
        }
        // The signature first (nothing unsigned is acted on), then where to fetch from.
        let checked = self.verifier().and_then(|v| v.check(&offer).map_err(|e| e.to_string())).and_then(|hasher| {
            let url = self.image_url(&offer)?;
            Ok((hasher, url))
        });
        let (hasher, url) = match checked {
            Ok(c) => c,
            Err(e) => return self.refuse(&offer.rollout, e, out),
        };
        let target = match self.record.start(&offer, payload) {
            Ok(t) => t,
            Err(e) => return self.refuse(&offer.rollout, e.to_string(), out),
        };
        out.push(Output::Ota(OtaWork::EraseSlot(target)));
        self.save(out);
        out.event(Event::OtaAccepted { rollout: offer.rollout.clone(), version: m.version.clone(), slot: target });
        self.report(&offer.rollout, OtaState::Offered, 0, None);
        self.start_transfer(&offer, url, hasher, 0, target, out);
    }

    /// Where to fetch the offer's image: its url, a path resolved against the server.
    fn image_url(&self, offer: &Offer) -> Result<String, String> {
        resolve_image_url(&offer.manifest.url, self.settings.server_url.as_deref()).map_err(|e| e.to_string())
    }

    fn refuse(&mut self, rollout: &str, error: String, out: &mut Out) {
        out.event(Event::OtaRefused { rollout: rollout.to_owned(), error: error.clone() });
        self.report(rollout, OtaState::Refused, 0, Some(error));
    }

    /// `url`: the manifest's, resolved ([`Self::image_url`]).
    fn start_transfer(&mut self, offer: &Offer, url: String, hasher: ImageHasher, from: u64, slot: u8, out: &mut Out) {
        let m = &offer.manifest;
        out.push(Output::Ota(OtaWork::Download(Box::new(ImageDownload {
            rollout: offer.rollout.clone(),
            size: m.size,
            sha256: m.sha256.clone(),
            slot,
            from,
            hasher,
            // The token is the session's to add ([`super::Session::attach_token`]).
            bearer: None,
            wants_token: same_origin(&url, self.settings.server_url.as_deref()),
            url,
        }))));
        self.transfer = Some(Transfer { throttle: ProgressThrottle::new(PROGRESS_STEP), size: m.size });
        self.on_progress(from, out);
    }

    /// `received` bytes of the image are in the slot.
    pub fn on_progress(&mut self, received: u64, out: &mut Out) {
        // Fewer bytes than recorded: the download started over (a server that ignored
        // the range, a shell that cannot resume), which is worth reporting from 0 again.
        let restarted = self.record.job().is_some_and(|j| received < j.received);
        let Some(t) = self.transfer.as_mut() else { return };
        if restarted {
            t.throttle = ProgressThrottle::new(PROGRESS_STEP);
        }
        let percent = ((received.min(t.size) * 100) / t.size.max(1)) as u8;
        let Some(step) = t.throttle.update(percent) else { return };
        // Persist at each reported step: a restart resumes from here.
        if self.record.set_received(received).is_ok() {
            self.save(out);
        }
        let rollout = self.job_rollout();
        out.event(Event::OtaProgress { rollout: rollout.clone(), progress: step, received });
        self.report(&rollout, OtaState::Downloading, step, None);
    }

    /// The download ended.
    pub fn on_download_done(&mut self, result: Result<(), DownloadFailure>, out: &mut Out) {
        let Some(t) = self.transfer.take() else { return };
        let rollout = self.job_rollout();
        let verify_error = match result {
            Err(DownloadFailure::Fetch(e)) => {
                let received = self.record.job().map_or(0, |j| j.received);
                let progress = (received * 100 / t.size.max(1)) as u8;
                return self.fail_download(&rollout, progress, format!("download failed: {e}"), out);
            }
            Ok(()) => None,
            Err(DownloadFailure::Verify(e)) => Some(e),
        };
        let _ = self.record.set_received(t.size);
        self.record.downloaded().expect("Downloading → Verifying");
        self.report(&rollout, OtaState::Verifying, 100, None);
        if let Some(e) = verify_error {
            self.record.verified(false).expect("Verifying → Idle");
            if let Some(slot) = self.record.job().map(|j| j.target_slot) {
                out.push(Output::Ota(OtaWork::EraseSlot(slot)));
            }
            self.save(out);
            out.event(Event::OtaFailed { rollout: rollout.clone(), error: e.clone(), running: self.running.clone() });
            return self.report(&rollout, OtaState::Failed, 100, Some(e));
        }
        self.record.verified(true).expect("Verifying → PendingReboot");
        self.save(out);
        out.event(Event::OtaVerified { rollout: rollout.clone(), version: self.record.boot_version().to_owned() });
        self.report(&rollout, OtaState::Rebooting, 100, None);
        self.reboot = Some(RebootKind::OtaInstall);
    }

    /// Give up on the current download: the slot is discarded, nothing else changes.
    fn fail_download(&mut self, rollout: &str, progress: u8, error: String, out: &mut Out) {
        self.transfer = None;
        if self.record.state() == SlotState::Downloading {
            let slot = self.record.job().map(|j| j.target_slot);
            self.record.abort().expect("Downloading → Idle");
            if let Some(slot) = slot {
                out.push(Output::Ota(OtaWork::EraseSlot(slot)));
            }
            self.save(out);
        }
        out.event(Event::OtaFailed {
            rollout: rollout.to_owned(),
            error: error.clone(),
            running: self.running.clone(),
        });
        self.report(rollout, OtaState::Failed, progress, Some(error));
    }

    /// The connection became stable: a new image has proven itself.
    pub fn on_stable(&mut self, out: &mut Out) {
        if self.record.state() != SlotState::PendingVerify || self.reboot.is_some() {
            return;
        }
        out.push(Output::Ota(OtaWork::ConfirmImage));
        self.record.mark_valid().expect("PendingVerify → Valid");
        self.save(out);
        self.confirm_by = None;
        let rollout = self.job_rollout();
        out.event(Event::OtaSuccess { rollout: rollout.clone(), version: self.running.clone() });
        self.report(&rollout, OtaState::Success, 100, None);
    }

    /// Time passed: an image not confirmed by its deadline is rolled back (reported,
    /// then the session reboots into the previous slot).
    pub fn tick(&mut self, now: u64, out: &mut Out) {
        if self.confirm_by.is_none_or(|at| at > now) {
            return;
        }
        self.confirm_by = None;
        let after_s = self.settings.confirm_timeout_ms / 1000;
        out.event(Event::OtaConfirmTimeout { version: self.running.clone(), after_s });
        if let Ok(Boot::RolledBack { failed, running }) = self.record.rollback() {
            self.rolled_back(
                format!(
                    "version {failed} was not confirmed (no CONNACK + acknowledged heartbeat within {after_s} s); \
                     rolled back to {running}"
                ),
                out,
            );
        }
        self.save(out);
        self.reboot = Some(RebootKind::OtaRollback);
    }

    fn rolled_back(&mut self, why: String, out: &mut Out) {
        let rollout = self.job_rollout();
        out.event(Event::OtaRolledBack { rollout: rollout.clone(), error: why.clone() });
        self.report(&rollout, OtaState::RolledBack, 100, Some(why));
    }
}
