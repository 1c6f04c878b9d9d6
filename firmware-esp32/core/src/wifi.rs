//! Wi-Fi network choice: by configured priority, then RSSI; a network that failed is
//! demoted by a penalty (in priority units) that decays exponentially over time, and
//! is cleared by a successful connection.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredNetwork {
    pub ssid: String,
    /// Higher is preferred.
    pub priority: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResult {
    pub ssid: String,
    pub rssi: i8,
}

#[derive(Debug, Clone, Copy)]
pub struct WifiConfig {
    /// Priority units subtracted per failure.
    pub penalty_per_failure: f64,
    /// Time for a penalty to halve.
    pub half_life_ms: u64,
    /// Networks weaker than this are ignored.
    pub min_rssi: i8,
    /// A penalty that has decayed below this is forgotten, so a long-recovered network
    /// competes on RSSI again with its equal-priority peers.
    pub forget_below: f64,
}

impl Default for WifiConfig {
    fn default() -> Self {
        WifiConfig { penalty_per_failure: 10.0, half_life_ms: 5 * 60_000, min_rssi: -90, forget_below: 0.5 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    value: f64,
    at_ms: u64,
}

pub struct WifiSelector {
    cfg: WifiConfig,
    networks: Vec<ConfiguredNetwork>,
    penalties: HashMap<String, Penalty>,
}

impl WifiSelector {
    pub fn new(networks: Vec<ConfiguredNetwork>, cfg: WifiConfig) -> Self {
        WifiSelector { cfg, networks, penalties: HashMap::new() }
    }

    /// Current (decayed) penalty of `ssid`.
    pub fn penalty(&self, ssid: &str, now_ms: u64) -> f64 {
        match self.penalties.get(ssid) {
            None => 0.0,
            Some(p) => {
                let dt = now_ms.saturating_sub(p.at_ms) as f64;
                let v = p.value * 0.5f64.powf(dt / self.cfg.half_life_ms.max(1) as f64);
                if v < self.cfg.forget_below {
                    0.0
                } else {
                    v
                }
            }
        }
    }

    pub fn report_failure(&mut self, ssid: &str, now_ms: u64) {
        let value = self.penalty(ssid, now_ms) + self.cfg.penalty_per_failure;
        self.penalties.insert(ssid.to_string(), Penalty { value, at_ms: now_ms });
    }

    pub fn report_success(&mut self, ssid: &str) {
        self.penalties.remove(ssid);
    }

    /// Candidates in the order they should be tried: configured and visible networks,
    /// by effective priority (priority − penalty) descending, then RSSI descending.
    pub fn rank(&self, scan: &[ScanResult], now_ms: u64) -> Vec<(String, i8)> {
        let mut c: Vec<(f64, i8, &str)> = self
            .networks
            .iter()
            .filter_map(|n| {
                // Strongest BSSID of that SSID.
                let rssi = scan.iter().filter(|s| s.ssid == n.ssid).map(|s| s.rssi).max()?;
                (rssi >= self.cfg.min_rssi)
                    .then(|| (n.priority as f64 - self.penalty(&n.ssid, now_ms), rssi, n.ssid.as_str()))
            })
            .collect();
        c.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));
        c.into_iter().map(|(_, r, s)| (s.to_string(), r)).collect()
    }

    pub fn choose(&self, scan: &[ScanResult], now_ms: u64) -> Option<String> {
        self.rank(scan, now_ms).into_iter().next().map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<ConfiguredNetwork> {
        vec![
            ConfiguredNetwork { ssid: "home".into(), priority: 10 },
            ConfiguredNetwork { ssid: "office".into(), priority: 10 },
            ConfiguredNetwork { ssid: "phone".into(), priority: 1 },
        ]
    }
    fn scan(list: &[(&str, i8)]) -> Vec<ScanResult> {
        list.iter().map(|(s, r)| ScanResult { ssid: s.to_string(), rssi: *r }).collect()
    }

    #[test]
    fn higher_priority_wins_over_stronger_signal() {
        let w = WifiSelector::new(nets(), WifiConfig::default());
        assert_eq!(w.choose(&scan(&[("phone", -30), ("home", -80)]), 0).as_deref(), Some("home"));
    }

    #[test]
    fn equal_priority_is_broken_by_rssi() {
        let w = WifiSelector::new(nets(), WifiConfig::default());
        let r = w.rank(&scan(&[("home", -70), ("office", -50), ("phone", -20)]), 0);
        let order: Vec<&str> = r.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(order, vec!["office", "home", "phone"]);
    }

    #[test]
    fn unconfigured_invisible_and_too_weak_networks_are_skipped() {
        let w = WifiSelector::new(nets(), WifiConfig::default());
        assert_eq!(w.choose(&scan(&[("stranger", -20), ("home", -95)]), 0), None);
        assert_eq!(w.choose(&[], 0), None);
    }

    #[test]
    fn strongest_bssid_of_an_ssid_counts() {
        let w = WifiSelector::new(nets(), WifiConfig::default());
        let r = w.rank(&scan(&[("home", -80), ("office", -60), ("home", -40)]), 0);
        assert_eq!(r[0], ("home".to_string(), -40));
    }

    #[test]
    fn failed_network_is_demoted() {
        let mut w = WifiSelector::new(nets(), WifiConfig::default());
        let s = scan(&[("home", -40), ("office", -70), ("phone", -30)]);
        w.report_failure("home", 0);
        assert_eq!(w.choose(&s, 0).as_deref(), Some("office"));
        w.report_failure("office", 0);
        // Both demoted by 10: all at effective priority 0..1, "phone" (1 - 0) wins.
        assert_eq!(w.choose(&s, 0).as_deref(), Some("phone"));
    }

    #[test]
    fn demotion_decays_with_half_life() {
        let cfg = WifiConfig::default();
        let mut w = WifiSelector::new(nets(), cfg);
        w.report_failure("home", 1_000);
        assert!((w.penalty("home", 1_000) - 10.0).abs() < 1e-9);
        assert!((w.penalty("home", 1_000 + cfg.half_life_ms) - 5.0).abs() < 1e-9);
        let s = scan(&[("home", -40), ("office", -70)]);
        assert_eq!(w.choose(&s, 1_000).as_deref(), Some("office"));
        // Still demoted after 3 half-lives (1.25 left).
        assert_eq!(w.choose(&s, 1_000 + 3 * cfg.half_life_ms).as_deref(), Some("office"));
        // After 5 half-lives the penalty (0.31) is below `forget_below`: RSSI decides again.
        assert_eq!(w.penalty("home", 1_000 + 5 * cfg.half_life_ms), 0.0);
        assert_eq!(w.choose(&s, 1_000 + 10 * cfg.half_life_ms).as_deref(), Some("home"));
    }

    #[test]
    fn repeated_failures_accumulate_and_success_clears() {
        let mut w = WifiSelector::new(nets(), WifiConfig::default());
        w.report_failure("home", 0);
        w.report_failure("home", 0);
        assert!((w.penalty("home", 0) - 20.0).abs() < 1e-9);
        w.report_success("home");
        assert_eq!(w.penalty("home", 0), 0.0);
    }
}
