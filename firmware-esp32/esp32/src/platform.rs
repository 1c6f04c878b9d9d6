//! fleetwire-core's platform traits on ESP-IDF: esp_timer, the hardware RNG, NVS, and
//! the board's readings.

use esp_idf_svc::nvs::{EspDefaultNvsPartition, EspNvs, NvsDefault};
use fleetwire_core::platform::{Board, Clock, Rng, Storage};
use fleetwire_core::telemetry::Reading;

pub struct EspClock;

impl Clock for EspClock {
    fn monotonic_ms(&self) -> u64 {
        (unsafe { esp_idf_svc::sys::esp_timer_get_time() } / 1000) as u64
    }
    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The hardware RNG: true random once the radio is on, which it is before any backoff.
pub struct EspRng;

impl Rng for EspRng {
    fn next_u32(&mut self) -> u32 {
        unsafe { esp_idf_svc::sys::esp_random() }
    }
}

/// What heartbeats and the `sample_sensors` command read: the station's RSSI, the free
/// heap, and the sensors (none on this board glue).
pub struct EspBoard;

impl Board for EspBoard {
    fn rssi(&mut self) -> i8 {
        let mut rssi: i32 = 0;
        unsafe { esp_idf_svc::sys::esp_wifi_sta_get_rssi(&mut rssi) };
        rssi.clamp(-128, 0) as i8
    }
    fn heap_free(&mut self) -> u32 {
        unsafe { esp_idf_svc::sys::esp_get_free_heap_size() }
    }
    fn sample_sensors(&mut self) -> Result<Vec<Reading>, String> {
        // No sensor is configured here. To add one: keep its driver in this struct
        // (built from the `Peripherals` taken in main.rs, e.g. an I2C temperature/humidity
        // chip), read it here and return one reading per quantity with its unit
        // (`Reading::new("temperature", 21.4, "Cel")`). Telemetry
        // (`SessionConfig::telemetry_s` in session.rs) can then be turned on.
        Err("no sensors on this board".into())
    }
}

/// One NVS namespace. Keys longer than NVS's 15 characters are shortened by hashing,
/// because core keys such as `ota.slot` are chosen for readability, not for NVS.
pub struct NvsStorage {
    nvs: EspNvs<NvsDefault>,
}

impl NvsStorage {
    pub fn open(partition: EspDefaultNvsPartition, namespace: &str) -> anyhow::Result<Self> {
        Ok(NvsStorage { nvs: EspNvs::new(partition, namespace, true)? })
    }

    /// A provisioning value written as an NVS string (`data,string` in the CSV) or a blob.
    pub fn get_str(&self, key: &str) -> Option<String> {
        let name = nvs_key(key);
        if let Ok(Some(len)) = self.nvs.str_len(&name) {
            let mut buf = vec![0u8; len + 1];
            if let Ok(Some(s)) = self.nvs.get_str(&name, &mut buf) {
                return Some(s.to_string());
            }
        }
        self.get(key).and_then(|v| String::from_utf8(v).ok())
    }
}

fn nvs_key(key: &str) -> String {
    if key.len() <= 15 {
        return key.to_string();
    }
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("k{:014x}", h & 0x00ff_ffff_ffff_ffff)
}

impl Storage for NvsStorage {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let key = nvs_key(key);
        let len = self.nvs.blob_len(&key).ok().flatten()?;
        let mut buf = vec![0u8; len];
        self.nvs.get_blob(&key, &mut buf).ok().flatten().map(|b| b.to_vec())
    }
    fn set(&mut self, key: &str, value: &[u8]) {
        if let Err(e) = self.nvs.set_blob(&nvs_key(key), value) {
            log::error!("NVS write of {key} failed: {e}");
        }
    }
    fn remove(&mut self, key: &str) {
        let _ = self.nvs.remove(&nvs_key(key));
    }
}
