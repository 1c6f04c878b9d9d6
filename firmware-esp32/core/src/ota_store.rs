//! What the device keeps in NVS about OTA: which of the two app slots boots, which
//! version each slot holds, the slot state machine, and the update in progress
//! (its signed offer and how many bytes are already in the inactive slot).
//!
//! Bootloader behaviour modelled here (ESP-IDF with app rollback enabled): a new image
//! first boots in `PendingVerify`; the app marks it valid once it reached the cloud
//! (CONNACK + first acknowledged heartbeat); if it crashes on boot or the app gives up
//! waiting, the previous slot boots again and the update is `RolledBack`.
//!
//! The record is saved as JSON under one key of [`Storage`], written whole after every
//! change, so a power cut leaves either the old or the new record.

use serde::{Deserialize, Serialize};

use crate::ota::{Offer, OtaError, OtaSlot, SlotEvent, SlotState};
use crate::platform::Storage;

/// NVS key of the record.
pub const STORAGE_KEY: &str = "ota.record";

/// The update being installed (or the last one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub rollout: String,
    pub version: String,
    /// The offer as received, re-verified before a download resumes after a restart.
    pub offer: String,
    /// Bytes already written to the target slot (and hashed again on resume).
    pub received: u64,
    pub target_slot: u8,
    /// The version to report and fall back to if the new one does not come up.
    pub previous_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtaRecord {
    boot_slot: u8,
    versions: [Option<String>; 2],
    state: SlotState,
    job: Option<Job>,
}

/// What the bootloader did at a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Nothing pending: the running slot booted again.
    Same,
    /// The new image is running, to be confirmed ([`OtaRecord::mark_valid`]).
    PendingVerify { version: String },
    /// The new image did not boot; the previous slot runs again.
    RolledBack { failed: String, running: String },
}

impl OtaRecord {
    /// Factory state: `version` in slot 0, nothing pending.
    pub fn factory(version: &str) -> Self {
        OtaRecord { boot_slot: 0, versions: [Some(version.to_owned()), None], state: SlotState::Idle, job: None }
    }

    /// The stored record, or `None` (first start, or unreadable: a corrupt record must
    /// not brick the device; it boots its factory state).
    pub fn load(storage: &dyn Storage) -> Option<Self> {
        let r: OtaRecord = serde_json::from_slice(&storage.get(STORAGE_KEY)?).ok()?;
        let sane = r.boot_slot < 2
            && r.versions[r.boot_slot as usize].is_some()
            && r.job.as_ref().is_none_or(|j| j.target_slot < 2);
        sane.then_some(r)
    }

    pub fn save(&self, storage: &mut dyn Storage) {
        storage.set(STORAGE_KEY, &serde_json::to_vec(self).expect("plain struct serialises"));
    }

    /// The version in the boot slot: the running one, except in `PendingReboot`, where
    /// it is the new image that the next reboot starts.
    pub fn boot_version(&self) -> &str {
        self.versions[self.boot_slot as usize].as_deref().expect("the boot slot always holds a version")
    }

    pub fn boot_slot(&self) -> u8 {
        self.boot_slot
    }

    pub fn state(&self) -> SlotState {
        self.state
    }

    pub fn job(&self) -> Option<&Job> {
        self.job.as_ref()
    }

    /// Between accepting an offer and confirming or rolling back its image.
    pub fn in_progress(&self) -> bool {
        matches!(
            self.state,
            SlotState::Downloading | SlotState::Verifying | SlotState::PendingReboot | SlotState::PendingVerify
        )
    }

    /// The offer is a redelivery of the current update, or of the last one that
    /// already ended in a running image (valid or rolled back): answering it again
    /// would restart or re-report work that is done.
    pub fn is_duplicate(&self, offer: &Offer) -> bool {
        let same = self.job.as_ref().is_some_and(|j| j.rollout == offer.rollout && j.version == offer.manifest.version);
        same && (self.in_progress() || matches!(self.state, SlotState::Valid | SlotState::RolledBack))
    }

    fn apply(&mut self, event: SlotEvent) -> Result<SlotState, OtaError> {
        let mut slot = OtaSlot::at(self.state);
        self.state = slot.apply(event)?;
        Ok(self.state)
    }

    fn job_mut(&mut self) -> Result<&mut Job, OtaError> {
        let state = self.state;
        self.job.as_mut().ok_or(OtaError::InvalidTransition { from: state, event: SlotEvent::Start })
    }

    /// An accepted offer starts downloading into the other slot. Returns that slot.
    pub fn start(&mut self, offer: &Offer, raw_offer: &[u8]) -> Result<u8, OtaError> {
        self.apply(SlotEvent::Start)?;
        let target = 1 - self.boot_slot;
        // The old image in the target slot is being overwritten from now on.
        self.versions[target as usize] = None;
        self.job = Some(Job {
            rollout: offer.rollout.clone(),
            version: offer.manifest.version.clone(),
            offer: String::from_utf8_lossy(raw_offer).into_owned(),
            received: 0,
            target_slot: target,
            previous_version: self.boot_version().to_owned(),
        });
        Ok(target)
    }

    /// Bytes durably written to the target slot so far.
    pub fn set_received(&mut self, received: u64) -> Result<(), OtaError> {
        if self.state != SlotState::Downloading {
            return Err(OtaError::InvalidTransition { from: self.state, event: SlotEvent::DownloadComplete });
        }
        self.job_mut()?.received = received;
        Ok(())
    }

    /// The download gave up: the slot content is garbage, nothing changes.
    pub fn abort(&mut self) -> Result<(), OtaError> {
        self.apply(SlotEvent::Abort)?;
        Ok(())
    }

    pub fn downloaded(&mut self) -> Result<(), OtaError> {
        self.apply(SlotEvent::DownloadComplete)?;
        Ok(())
    }

    /// Result of the size + SHA-256 check. On success the target slot becomes the boot
    /// slot (`esp_ota_set_boot_partition`); the switch takes effect at the next boot.
    pub fn verified(&mut self, ok: bool) -> Result<(), OtaError> {
        if !ok {
            self.apply(SlotEvent::VerifyFailed)?;
            return Ok(());
        }
        self.apply(SlotEvent::VerifyOk)?;
        let job = self.job_mut()?;
        let (target, version) = (job.target_slot, job.version.clone());
        self.versions[target as usize] = Some(version);
        self.boot_slot = target;
        Ok(())
    }

    /// A reboot. `boots(version)`: whether that image starts (a crash before it could
    /// mark itself valid means it does not). A `PendingReboot` image is new and boots for
    /// the first time. A `PendingVerify` image that does not come up again is rolled back:
    /// ESP-IDF's bootloader abandons an image that restarts before it confirmed itself.
    /// In any other state the running slot boots as before.
    pub fn reboot(&mut self, boots: impl Fn(&str) -> bool) -> Boot {
        match self.state {
            SlotState::PendingReboot => {
                self.apply(SlotEvent::Rebooted).expect("PendingReboot → PendingVerify");
                let version = self.boot_version().to_owned();
                if boots(&version) {
                    return Boot::PendingVerify { version };
                }
                self.rollback().expect("PendingVerify → RolledBack")
            }
            SlotState::PendingVerify if !boots(self.boot_version()) => {
                self.rollback().expect("PendingVerify → RolledBack")
            }
            _ => Boot::Same,
        }
    }

    /// The new image reached the cloud: keep it (`esp_ota_mark_app_valid_cancel_rollback`).
    pub fn mark_valid(&mut self) -> Result<(), OtaError> {
        self.apply(SlotEvent::MarkValid)?;
        Ok(())
    }

    /// The new image failed its self-test: boot the previous slot again
    /// (`esp_ota_mark_app_invalid_rollback_and_reboot`).
    pub fn rollback(&mut self) -> Result<Boot, OtaError> {
        self.apply(SlotEvent::Rollback)?;
        let failed = self.boot_version().to_owned();
        self.versions[self.boot_slot as usize] = None;
        self.boot_slot = 1 - self.boot_slot;
        Ok(Boot::RolledBack { failed, running: self.boot_version().to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::MemStorage;

    fn offer(rollout: &str, version: &str) -> (Offer, Vec<u8>) {
        let raw = format!(
            r#"{{"rollout":"{rollout}","manifest":{{"version":"{version}","size":10,"sha256":"{}","url":"u","sig":"s"}}}}"#,
            "0".repeat(64)
        );
        (Offer::parse(raw.as_bytes()).unwrap(), raw.into_bytes())
    }

    fn installed(version: &str) -> OtaRecord {
        let mut r = OtaRecord::factory("1.0.0");
        let (o, raw) = offer("r-1", version);
        assert_eq!(r.start(&o, &raw), Ok(1));
        r.set_received(10).unwrap();
        r.downloaded().unwrap();
        r.verified(true).unwrap();
        r
    }

    #[test]
    fn happy_path_switches_slots_and_confirms() {
        let mut r = installed("2.0.0");
        assert_eq!(r.state(), SlotState::PendingReboot);
        assert_eq!(r.boot_version(), "2.0.0", "the boot slot is switched; the reboot makes it run");
        assert_eq!(r.reboot(|_| true), Boot::PendingVerify { version: "2.0.0".into() });
        assert!(r.in_progress());
        r.mark_valid().unwrap();
        assert_eq!((r.state(), r.boot_slot(), r.boot_version()), (SlotState::Valid, 1, "2.0.0"));
        assert_eq!(r.reboot(|_| false), Boot::Same, "a confirmed image is not new any more");
    }

    #[test]
    fn a_crash_on_first_boot_rolls_back_to_the_previous_slot() {
        let mut r = installed("2.0.0");
        let b = r.reboot(|v| v != "2.0.0");
        assert_eq!(b, Boot::RolledBack { failed: "2.0.0".into(), running: "1.0.0".into() });
        assert_eq!((r.state(), r.boot_slot(), r.boot_version()), (SlotState::RolledBack, 0, "1.0.0"));
        assert!(!r.in_progress());
        // The next update goes to the slot that failed.
        let (o, raw) = offer("r-2", "2.0.1");
        assert_eq!(r.start(&o, &raw), Ok(1));
        assert_eq!(r.job().unwrap().previous_version, "1.0.0");
    }

    #[test]
    fn an_unconfirmed_image_that_does_not_come_up_again_after_a_restart_is_rolled_back() {
        let mut r = installed("2.0.0");
        r.reboot(|_| true);
        assert_eq!(r.reboot(|v| v == "2.0.0"), Boot::Same, "still waiting for its confirmation");
        assert_eq!(r.state(), SlotState::PendingVerify);
        let b = r.reboot(|v| v == "1.0.0");
        assert_eq!(b, Boot::RolledBack { failed: "2.0.0".into(), running: "1.0.0".into() });
        assert_eq!((r.state(), r.boot_version()), (SlotState::RolledBack, "1.0.0"));
    }

    #[test]
    fn an_unconfirmed_image_rolls_back_on_request() {
        let mut r = installed("2.0.0");
        r.reboot(|_| true);
        assert_eq!(r.rollback(), Ok(Boot::RolledBack { failed: "2.0.0".into(), running: "1.0.0".into() }));
        assert!(r.mark_valid().is_err());
    }

    #[test]
    fn failed_or_aborted_downloads_leave_the_running_slot_alone() {
        let mut r = OtaRecord::factory("1.0.0");
        let (o, raw) = offer("r-1", "2.0.0");
        r.start(&o, &raw).unwrap();
        r.abort().unwrap();
        assert_eq!((r.state(), r.boot_version(), r.boot_slot()), (SlotState::Idle, "1.0.0", 0));
        r.start(&o, &raw).unwrap();
        r.downloaded().unwrap();
        r.verified(false).unwrap();
        assert_eq!((r.state(), r.boot_version(), r.boot_slot()), (SlotState::Idle, "1.0.0", 0));
        assert_eq!(r.reboot(|_| true), Boot::Same);
    }

    #[test]
    fn out_of_order_calls_are_refused() {
        let mut r = OtaRecord::factory("1.0.0");
        assert!(r.set_received(5).is_err());
        assert!(r.verified(true).is_err());
        assert!(r.mark_valid().is_err());
        assert!(r.rollback().is_err());
        let (o, raw) = offer("r-1", "2.0.0");
        r.start(&o, &raw).unwrap();
        assert!(r.start(&o, &raw).is_err(), "one update at a time");
    }

    #[test]
    fn duplicates_are_the_same_rollout_and_version_while_running_or_after_it_took_effect() {
        let mut r = OtaRecord::factory("1.0.0");
        let (o, raw) = offer("r-1", "2.0.0");
        assert!(!r.is_duplicate(&o));
        r.start(&o, &raw).unwrap();
        assert!(r.is_duplicate(&o));
        assert!(!r.is_duplicate(&offer("r-2", "2.0.0").0));
        assert!(!r.is_duplicate(&offer("r-1", "2.0.1").0));
        r.abort().unwrap();
        assert!(!r.is_duplicate(&o), "a failed rollout may be offered again");
        let mut r = installed("2.0.0");
        r.reboot(|_| true);
        r.mark_valid().unwrap();
        assert!(r.is_duplicate(&offer("r-1", "2.0.0").0));
    }

    #[test]
    fn the_record_survives_a_restart_mid_download_and_pending_verify() {
        let mut st = MemStorage::default();
        assert_eq!(OtaRecord::load(&st), None);
        let mut r = OtaRecord::factory("1.0.0");
        let (o, raw) = offer("r-1", "2.0.0");
        r.start(&o, &raw).unwrap();
        r.set_received(7).unwrap();
        r.save(&mut st);
        let back = OtaRecord::load(&st).unwrap();
        assert_eq!(back, r);
        assert_eq!((back.state(), back.job().unwrap().received), (SlotState::Downloading, 7));
        assert_eq!(Offer::parse(back.job().unwrap().offer.as_bytes()).unwrap(), o);

        let mut r = installed("2.0.0");
        r.reboot(|_| true);
        r.save(&mut st);
        let back = OtaRecord::load(&st).unwrap();
        assert_eq!((back.state(), back.boot_version()), (SlotState::PendingVerify, "2.0.0"));
    }

    #[test]
    fn a_corrupt_record_is_ignored() {
        let mut st = MemStorage::default();
        st.set(STORAGE_KEY, b"{not json");
        assert_eq!(OtaRecord::load(&st), None);
        st.set(STORAGE_KEY, br#"{"boot_slot":1,"versions":["1.0.0",null],"state":"idle","job":null}"#);
        assert_eq!(OtaRecord::load(&st), None, "the boot slot must hold a version");
        st.set(STORAGE_KEY, br#"{"boot_slot":0,"versions":["1.0.0",null],"state":"idle","job":null}"#);
        assert_eq!(OtaRecord::load(&st), Some(OtaRecord::factory("1.0.0")));
    }
}
