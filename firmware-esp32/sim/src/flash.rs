//! A device's persistent state on the host, under `<state-dir>/<device-id>/`:
//!
//! - `nvs/<key>`: the core's [`Storage`] (NVS on the ESP32), one file per key, each
//!   replaced atomically (write a temporary file, then rename) so a killed process
//!   leaves the old or the new value, never half of one;
//! - `ota_0.bin`, `ota_1.bin`: the two OTA app slots the images are written to.
//!
//! Plain `std::fs`: these files are small or written in page-cache-sized chunks, and
//! the core's `Storage` trait is synchronous like NVS.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use fleetwire_core::platform::Storage;

pub struct DeviceFlash {
    dir: PathBuf,
}

impl DeviceFlash {
    /// Open (creating if needed) the state of `device_id` under `state_dir`.
    pub fn open(state_dir: &Path, device_id: &str) -> Result<Self, String> {
        let dir = state_dir.join(device_id);
        fs::create_dir_all(dir.join("nvs")).map_err(|e| format!("state dir {}: {e}", dir.display()))?;
        Ok(DeviceFlash { dir })
    }

    fn key_path(&self, key: &str) -> PathBuf {
        // Keys come from the firmware (`ota.record`), not from the network; keep them
        // path-safe anyway.
        let safe: String =
            key.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        self.dir.join("nvs").join(safe)
    }

    pub fn slot_path(&self, slot: u8) -> PathBuf {
        self.dir.join(format!("ota_{slot}.bin"))
    }

    /// Erase a slot (an absent file reads as empty).
    pub fn erase_slot(&self, slot: u8) -> io::Result<()> {
        match fs::remove_file(self.slot_path(slot)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Cut a slot to its first `len` bytes and return them (to hash them again when a
    /// download resumes). A slot shorter than `len` (the record was saved after bytes
    /// that never reached the disk) yields what it has.
    pub fn truncate_and_read_slot(&self, slot: u8, len: u64) -> io::Result<Vec<u8>> {
        let path = self.slot_path(slot);
        let mut f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if f.metadata()?.len() > len {
            f.set_len(len)?;
        }
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

impl Storage for DeviceFlash {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        fs::read(self.key_path(key)).ok()
    }

    fn set(&mut self, key: &str, value: &[u8]) {
        let path = self.key_path(key);
        let tmp = path.with_extension("tmp");
        let written = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(value).and_then(|_| f.sync_data()))
            .and_then(|_| fs::rename(&tmp, &path));
        // NVS writes do not fail in normal operation either; a full disk is reported
        // and the device carries on with its state in RAM.
        if let Err(e) = written {
            eprintln!("fleetwire-sim: cannot write {}: {e}", path.display());
        }
    }

    fn remove(&mut self, key: &str) {
        let _ = fs::remove_file(self.key_path(key));
    }
}

/// A directory removed (with its content) when dropped: the per-run default state
/// directory, and test state.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir, named after `prefix`.
    pub fn new(prefix: &str) -> io::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let name = format!("{prefix}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvs_keys_persist_across_reopen_and_slots_truncate() {
        let tmp = TempDir::new("fleetwire-flash-test").unwrap();
        let mut f = DeviceFlash::open(tmp.path(), "esp-01").unwrap();
        assert_eq!(f.get("ota.record"), None);
        f.set("ota.record", b"one");
        f.set("ota.record", b"two");
        let mut again = DeviceFlash::open(tmp.path(), "esp-01").unwrap();
        assert_eq!(again.get("ota.record").as_deref(), Some(&b"two"[..]));
        again.remove("ota.record");
        assert_eq!(again.get("ota.record"), None);
        assert!(DeviceFlash::open(tmp.path(), "esp-02").unwrap().get("ota.record").is_none(), "per device");

        fs::write(f.slot_path(1), b"0123456789").unwrap();
        assert_eq!(f.truncate_and_read_slot(1, 4).unwrap(), b"0123");
        assert_eq!(f.truncate_and_read_slot(1, 100).unwrap(), b"0123");
        f.erase_slot(1).unwrap();
        f.erase_slot(1).unwrap();
        assert_eq!(f.truncate_and_read_slot(0, 5).unwrap(), b"");
        let dir = tmp.path().to_owned();
        drop(tmp);
        assert!(!dir.exists());
    }
}
