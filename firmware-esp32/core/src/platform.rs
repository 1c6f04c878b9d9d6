//! Platform traits: clock, randomness, storage, the board's readings, with simple host
//! implementations.

use std::cell::Cell;
use std::collections::HashMap;

use crate::telemetry::Reading;

/// Monotonic and wall clocks.
pub trait Clock {
    /// Milliseconds since boot (monotonic).
    fn monotonic_ms(&self) -> u64;
    /// Unix time in milliseconds (wall clock, may jump after SNTP sync).
    fn unix_ms(&self) -> u64;
}

/// Source of randomness (hardware RNG on the ESP32).
pub trait Rng {
    fn next_u32(&mut self) -> u32;

    /// Uniform integer in `[0, max]` inclusive.
    fn gen_range_inclusive(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let r = ((self.next_u32() as u64) << 32) | self.next_u32() as u64;
        if max == u64::MAX {
            return r;
        }
        // Small bias is irrelevant for backoff jitter.
        r % (max + 1)
    }
}

/// Key-value persistent storage (NVS on the ESP32).
pub trait Storage {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn set(&mut self, key: &str, value: &[u8]);
    fn remove(&mut self, key: &str);
}

/// What the session reads from the hardware: radio and heap for heartbeats, sensors for
/// the `sample_sensors` command and telemetry.
pub trait Board {
    /// Signal of the current access point, dBm.
    fn rssi(&mut self) -> i8;
    /// Free heap, bytes.
    fn heap_free(&mut self) -> u32;
    /// Read every sensor now: one reading per quantity, with its name and unit, e.g.
    /// `Reading::new("temperature", 21.4, "Cel")` (names and limits: [`crate::telemetry`]).
    /// `Err` (or no readings) when the board has no sensor or a read failed.
    fn sample_sensors(&mut self) -> Result<Vec<Reading>, String>;
}

/// Manually driven clock for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    pub mono: Cell<u64>,
    pub unix: Cell<u64>,
}

impl ManualClock {
    pub fn new(mono_ms: u64, unix_ms: u64) -> Self {
        ManualClock { mono: Cell::new(mono_ms), unix: Cell::new(unix_ms) }
    }
    pub fn advance(&self, ms: u64) {
        self.mono.set(self.mono.get() + ms);
        self.unix.set(self.unix.get() + ms);
    }
}

impl Clock for ManualClock {
    fn monotonic_ms(&self) -> u64 {
        self.mono.get()
    }
    fn unix_ms(&self) -> u64 {
        self.unix.get()
    }
}

/// Deterministic xorshift64* generator for tests and the host.
#[derive(Debug, Clone)]
pub struct XorShiftRng(u64);

impl XorShiftRng {
    pub fn new(seed: u64) -> Self {
        XorShiftRng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }
}

impl Rng for XorShiftRng {
    fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
}

/// In-memory storage.
#[derive(Debug, Default, Clone)]
pub struct MemStorage(pub HashMap<String, Vec<u8>>);

impl Storage for MemStorage {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }
    fn set(&mut self, key: &str, value: &[u8]) {
        self.0.insert(key.to_string(), value.to_vec());
    }
    fn remove(&mut self, key: &str) {
        self.0.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_advances_both_clocks() {
        let c = ManualClock::new(10, 1000);
        c.advance(5);
        assert_eq!(c.monotonic_ms(), 15);
        assert_eq!(c.unix_ms(), 1005);
    }

    #[test]
    fn rng_range_stays_inclusive_and_is_deterministic() {
        let mut a = XorShiftRng::new(7);
        let mut b = XorShiftRng::new(7);
        for _ in 0..1000 {
            let x = a.gen_range_inclusive(10);
            assert!(x <= 10);
            assert_eq!(x, b.gen_range_inclusive(10));
        }
        assert_eq!(a.gen_range_inclusive(0), 0);
    }

    #[test]
    fn mem_storage_set_get_remove() {
        let mut s = MemStorage::default();
        assert!(s.get("k").is_none());
        s.set("k", b"v");
        assert_eq!(s.get("k").unwrap(), b"v");
        s.remove("k");
        assert!(s.get("k").is_none());
    }
}
