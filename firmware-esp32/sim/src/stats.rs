//! Fleet-wide counters, shared by every device task and printed as one line.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Stats {
    /// Devices with an accepted CONNACK right now.
    pub connected: AtomicI64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// CONNACKs after a device's first one.
    pub reconnects: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_acked: AtomicU64,
    pub commands_run: AtomicU64,
    pub commands_duplicate: AtomicU64,
    pub telemetry_sent: AtomicU64,
    /// Tokens obtained (the first one and every refresh).
    pub tokens_fetched: AtomicU64,
    /// Devices that gave up (revoked, bad key).
    pub stopped: AtomicU64,
    /// OTA updates confirmed on the new version.
    pub ota_success: AtomicU64,
    /// OTA updates that failed (download, verification) or were rolled back.
    pub ota_failed: AtomicU64,
    /// OTA offers refused (signature, chip, size, downgrade, busy, malformed).
    pub ota_refused: AtomicU64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Stats {
    pub fn summary(&self, devices: usize) -> String {
        format!(
            "stats devices={devices} connected={} hb_sent={} hb_acked={} reconnects={} connect_failures={} cmds={} \
             cmd_dups={} telemetry={} tokens={} stopped={} ota_ok={} ota_failed={} ota_refused={}",
            self.connected.load(Relaxed),
            self.heartbeats_sent.load(Relaxed),
            self.heartbeats_acked.load(Relaxed),
            self.reconnects.load(Relaxed),
            self.connect_failures.load(Relaxed),
            self.commands_run.load(Relaxed),
            self.commands_duplicate.load(Relaxed),
            self.telemetry_sent.load(Relaxed),
            self.tokens_fetched.load(Relaxed),
            self.stopped.load(Relaxed),
            self.ota_success.load(Relaxed),
            self.ota_failed.load(Relaxed),
            self.ota_refused.load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_one_line_with_the_headline_counters() {
        let s = Stats::default();
        s.connected.fetch_add(2, Relaxed);
        inc(&s.heartbeats_sent);
        inc(&s.reconnects);
        let line = s.summary(3);
        assert!(!line.contains('\n'));
        assert!(line.starts_with("stats devices=3 connected=2 hb_sent=1 hb_acked=0 reconnects=1 "), "{line}");
    }
}
