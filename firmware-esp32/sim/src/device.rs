//! The simulated board: what a real one would measure. A temperature/humidity sensor
//! drifting in a bounded random walk, and the radio and heap figures a heartbeat
//! reports. The core session reads it through [`Board`]; a simulated reboot keeps it,
//! as a reboot keeps the hardware.

use fleetwire_core::platform::{Board, Rng, XorShiftRng};
use fleetwire_core::telemetry::Reading;

/// Free heap of a freshly booted ESP32-S3 with Wi-Fi and TLS up, roughly.
const HEAP_START: u32 = 180_000;

pub struct SimBoard {
    rng: XorShiftRng,
    temperature_c: f64,
    humidity_pct: f64,
    rssi: i8,
}

impl SimBoard {
    pub fn new(seed: u64) -> Self {
        let mut rng = XorShiftRng::new(seed);
        let spread = rng.gen_range_inclusive(40) as f64 / 10.0;
        SimBoard { rng, temperature_c: 19.0 + spread, humidity_pct: 40.0 + spread * 2.0, rssi: -60 }
    }

    /// Uniform step in `[-max, max]`.
    fn step(&mut self, max: f64) -> f64 {
        (self.rng.gen_range_inclusive(2000) as f64 / 1000.0 - 1.0) * max
    }
}

impl Board for SimBoard {
    /// RSSI in dBm, wandering around -60.
    fn rssi(&mut self) -> i8 {
        let next = self.rssi as i32 + self.rng.gen_range_inclusive(6) as i32 - 3;
        self.rssi = next.clamp(-90, -35) as i8;
        self.rssi
    }

    /// Free heap, wandering slightly below its boot value.
    fn heap_free(&mut self) -> u32 {
        HEAP_START - 8192 + self.rng.gen_range_inclusive(4096) as u32
    }

    /// Advance the walk: `temperature` in `Cel` and `humidity` in `%RH`, one decimal.
    /// Telemetry and the `sample_sensors` command read the same walk.
    fn sample_sensors(&mut self) -> Result<Vec<Reading>, String> {
        self.temperature_c = (self.temperature_c + self.step(0.2)).clamp(-10.0, 45.0);
        self.humidity_pct = (self.humidity_pct + self.step(0.5)).clamp(5.0, 95.0);
        let round1 = |v: f64| (v * 10.0).round() / 10.0;
        Ok(vec![
            Reading::new("temperature", round1(self.temperature_c), "Cel"),
            Reading::new("humidity", round1(self.humidity_pct), "%RH"),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_stay_in_physical_bounds() {
        let mut b = SimBoard::new(7);
        for _ in 0..10_000 {
            let v = b.sample_sensors().unwrap();
            let names: Vec<(&str, &str)> = v.iter().map(|r| (r.name.as_str(), r.unit.as_str())).collect();
            assert_eq!(names, [("temperature", "Cel"), ("humidity", "%RH")]);
            let (t, h) = (v[0].value, v[1].value);
            assert!((-10.0..=45.0).contains(&t) && (5.0..=95.0).contains(&h));
            assert!((-90..=-35).contains(&b.rssi()));
            assert!((HEAP_START - 8192..=HEAP_START - 4096).contains(&b.heap_free()));
        }
    }

    #[test]
    fn boards_with_different_seeds_read_differently() {
        let a = SimBoard::new(1).sample_sensors().unwrap();
        let b = SimBoard::new(2).sample_sensors().unwrap();
        assert_ne!(a, b);
    }
}
