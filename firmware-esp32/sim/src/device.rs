//! The simulated device: what a real board would measure and keep across
//! reconnects. It owns the core's heartbeat scheduler and command processor and
//! implements the core's [`CommandContext`], so commands run exactly as on the ESP32.

use fleetwire_core::commands::{CommandContext, CommandProcessor, Handled};
use fleetwire_core::heartbeat::{Heartbeat, HeartbeatScheduler};
use fleetwire_core::platform::{Rng, Sensors, Storage, XorShiftRng};
use serde_json::{json, Map, Value};

/// How many recent command ids are remembered for duplicate detection.
const RECENT_COMMANDS: usize = 64;
/// Free heap of a freshly booted ESP32-S3 with Wi-Fi and TLS up, roughly.
const HEAP_START: u32 = 180_000;

/// Settings a `report_config` command reports (no secrets).
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    pub fw: String,
    pub keepalive_s: u16,
    pub telemetry_s: u32,
}

/// State the commands act on.
pub struct DeviceState {
    pub heartbeat: HeartbeatScheduler,
    pub settings: DeviceSettings,
    pub sensor: Sensor,
    /// Delay of a reboot a `reboot` command scheduled; the session performs it.
    reboot_requested: Option<u32>,
}

impl CommandContext for DeviceState {
    fn set_heartbeat_interval(&mut self, seconds: u32) -> Result<u32, String> {
        self.heartbeat.set_interval_s(seconds)
    }
    fn report_config(&self) -> Value {
        json!({
            "heartbeat_interval_s": self.heartbeat.interval_s(),
            "telemetry_interval_s": self.settings.telemetry_s,
            "keepalive_s": self.settings.keepalive_s,
            "fw": self.settings.fw,
            "simulated": true,
        })
    }
    fn reboot(&mut self, delay_s: u32) -> Result<(), String> {
        // Two reboot commands before the first happens: the sooner wins.
        self.reboot_requested = Some(self.reboot_requested.map_or(delay_s, |d| d.min(delay_s)));
        Ok(())
    }
    fn sample_sensors(&mut self) -> Result<Map<String, Value>, String> {
        self.sensor.sample()
    }
}

/// A temperature/humidity sensor drifting in a bounded random walk, plus the radio
/// and heap figures a heartbeat reports.
pub struct Sensor {
    rng: XorShiftRng,
    temperature_c: f64,
    humidity_pct: f64,
    rssi: i8,
    heap_free: u32,
}

impl Sensor {
    pub fn new(seed: u64) -> Self {
        let mut rng = XorShiftRng::new(seed);
        let spread = rng.gen_range_inclusive(40) as f64 / 10.0;
        Sensor {
            rng,
            temperature_c: 19.0 + spread,
            humidity_pct: 40.0 + spread * 2.0,
            rssi: -60,
            heap_free: HEAP_START,
        }
    }

    /// Uniform step in `[-max, max]`.
    fn step(&mut self, max: f64) -> f64 {
        (self.rng.gen_range_inclusive(2000) as f64 / 1000.0 - 1.0) * max
    }

    /// Advance the walk: `{temperature_c, humidity_pct}`, one decimal.
    fn measure(&mut self) -> Map<String, Value> {
        self.temperature_c = (self.temperature_c + self.step(0.2)).clamp(-10.0, 45.0);
        self.humidity_pct = (self.humidity_pct + self.step(0.5)).clamp(5.0, 95.0);
        let round1 = |v: f64| (v * 10.0).round() / 10.0;
        let mut m = Map::new();
        m.insert("temperature_c".into(), json!(round1(self.temperature_c)));
        m.insert("humidity_pct".into(), json!(round1(self.humidity_pct)));
        m
    }

    /// Advance the walk and return one telemetry reading (`telemetry.schema.json`: any object).
    pub fn read(&mut self, unix_ms: u64) -> Value {
        let mut m = self.measure();
        m.insert("at".into(), json!(unix_ms));
        Value::Object(m)
    }

    /// RSSI in dBm, wandering around -60.
    pub fn rssi(&mut self) -> i8 {
        let next = self.rssi as i32 + self.rng.gen_range_inclusive(6) as i32 - 3;
        self.rssi = next.clamp(-90, -35) as i8;
        self.rssi
    }

    /// Free heap, wandering slightly below its boot value.
    pub fn heap_free(&mut self) -> u32 {
        let jitter = self.rng.gen_range_inclusive(4096) as u32;
        self.heap_free = HEAP_START - 8192 + jitter;
        self.heap_free
    }
}

/// The `sample_sensors` command reads the same walk telemetry publishes.
impl Sensors for Sensor {
    fn sample(&mut self) -> Result<Map<String, Value>, String> {
        Ok(self.measure())
    }
}

pub struct SimDevice {
    pub state: DeviceState,
    commands: CommandProcessor,
}

impl SimDevice {
    /// `heartbeat_s`: initial interval (the core's default when `None`).
    pub fn new(settings: DeviceSettings, heartbeat_s: Option<u32>, seed: u64) -> Result<Self, String> {
        let mut heartbeat = HeartbeatScheduler::new(&settings.fw);
        if let Some(s) = heartbeat_s {
            heartbeat.set_interval_s(s).map_err(|e| format!("--heartbeat-s: {e}"))?;
        }
        Ok(SimDevice {
            state: DeviceState { heartbeat, settings, sensor: Sensor::new(seed), reboot_requested: None },
            commands: CommandProcessor::new(RECENT_COMMANDS),
        })
    }

    /// At boot: the command memory saved before the last planned reboot (NVS).
    pub fn restore_commands(&mut self, nvs: &dyn Storage) -> usize {
        self.commands.restore(nvs)
    }

    /// Right before a reboot: keep the command memory in NVS, so a command redelivered
    /// after the reboot (a `reboot` above all) is answered, not run again.
    pub fn save_commands(&self, nvs: &mut dyn Storage) {
        self.commands.save(nvs)
    }

    /// The delay of a reboot a `reboot` command asked for since the last call.
    pub fn take_reboot_request(&mut self) -> Option<u32> {
        self.state.reboot_requested.take()
    }

    /// Run a `cmd` payload through the core's processor.
    pub fn handle_command(&mut self, payload: &[u8], now_unix_ms: u64) -> Handled {
        self.commands.handle(payload, now_unix_ms, &mut self.state)
    }

    /// The next heartbeat if one is due at `now_ms` (monotonic, since boot).
    pub fn heartbeat_if_due(&mut self, now_ms: u64) -> Option<Heartbeat> {
        if !self.state.heartbeat.is_due(now_ms) {
            return None;
        }
        let (rssi, heap) = (self.state.sensor.rssi(), self.state.sensor.heap_free());
        Some(self.state.heartbeat.next(now_ms, rssi, heap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeviceSettings {
        DeviceSettings { fw: "sim-0.1.0".into(), keepalive_s: 60, telemetry_s: 0 }
    }

    #[test]
    fn heartbeats_follow_the_core_schedule_and_validate() {
        let mut d = SimDevice::new(settings(), Some(10), 1).unwrap();
        let h = d.heartbeat_if_due(5_000).unwrap();
        assert_eq!(h.seq, 0);
        assert!(h.to_json().is_ok());
        assert!(d.heartbeat_if_due(14_999).is_none());
        assert_eq!(d.heartbeat_if_due(15_000).unwrap().seq, 1);
    }

    #[test]
    fn refuses_out_of_range_initial_interval() {
        assert!(SimDevice::new(settings(), Some(1), 1).is_err());
    }

    #[test]
    fn report_config_reflects_a_changed_interval() {
        let mut d = SimDevice::new(settings(), None, 1).unwrap();
        let cmd = br#"{"cid":"c1","name":"set_heartbeat_interval","args":{"seconds":120},"expires_at":99999999999999}"#;
        assert!(d.handle_command(cmd, 1).result().unwrap().ok);
        let rep = br#"{"cid":"c2","name":"report_config","args":{},"expires_at":99999999999999}"#;
        let r = d.handle_command(rep, 1).result().unwrap().result.clone().unwrap();
        assert_eq!(r["heartbeat_interval_s"], 120);
        assert_eq!(r["simulated"], true);
    }

    #[test]
    fn reboot_is_only_requested_and_command_memory_survives_through_storage() {
        let mut d = SimDevice::new(settings(), None, 1).unwrap();
        let cmd = br#"{"cid":"r1","name":"reboot","args":{"delay_s":3},"expires_at":99999999999999}"#;
        assert!(d.handle_command(cmd, 1).result().unwrap().ok);
        assert_eq!(d.take_reboot_request(), Some(3));
        assert_eq!(d.take_reboot_request(), None);
        let mut nvs = fleetwire_core::platform::MemStorage::default();
        d.save_commands(&mut nvs);
        let mut booted = SimDevice::new(settings(), None, 1).unwrap();
        assert_eq!(booted.restore_commands(&nvs), 1);
        assert!(matches!(booted.handle_command(cmd, 2), Handled::Duplicate(_)));
        assert_eq!(booted.take_reboot_request(), None);
    }

    #[test]
    fn sample_sensors_reads_the_simulated_sensor() {
        let mut d = SimDevice::new(settings(), None, 1).unwrap();
        let cmd = br#"{"cid":"s1","name":"sample_sensors","args":{},"expires_at":99999999999999}"#;
        let r = d.handle_command(cmd, 1234).result().unwrap().result.clone().unwrap();
        assert!(r["readings"]["temperature_c"].is_f64() && r["readings"]["humidity_pct"].is_f64(), "{r}");
        assert_eq!(r["at"], 1234);
    }

    #[test]
    fn sensor_values_stay_in_physical_bounds() {
        let mut s = Sensor::new(7);
        for i in 0..10_000 {
            let v = s.read(i);
            let t = v["temperature_c"].as_f64().unwrap();
            let h = v["humidity_pct"].as_f64().unwrap();
            assert!((-10.0..=45.0).contains(&t) && (5.0..=95.0).contains(&h));
            assert!((-90..=-35).contains(&s.rssi()));
        }
    }
}
