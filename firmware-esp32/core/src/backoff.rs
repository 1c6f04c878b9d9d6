//! Reconnect backoff: exponential with FULL jitter, reset only after a *stable*
//! connection, stretched by a connection-quality score on a flapping link.
//!
//! * window(attempt) = min(cap, base * 2^attempt)
//! * delay = uniform in [0, window * stretch], where
//!   stretch = 1 + (max_stretch - 1) * (1 - quality) and quality ∈ [0, 1].
//! * A connection is *stable* once CONNACK was received **and** the first heartbeat was
//!   acknowledged; only then is the attempt counter reset. A connection that drops
//!   before that counts as a failed connect (that is what a flapping link looks like).
//! * quality = success_ewma * rtt_factor: success_ewma is an EWMA of connect outcomes
//!   (1 = became stable, 0 = failed or dropped before stable), rtt_factor =
//!   min(1, good_rtt / rtt_ewma) where rtt_ewma is an EWMA of heartbeat round trips.

use crate::platform::Rng;

#[derive(Debug, Clone, Copy)]
pub struct BackoffConfig {
    pub base_ms: u64,
    pub cap_ms: u64,
    /// Largest multiplier applied to the window on a very bad link (>= 1).
    pub max_stretch: f64,
    /// Weight of the newest connect outcome in the success EWMA.
    pub success_alpha: f64,
    /// Weight of the newest round trip in the RTT EWMA.
    pub rtt_alpha: f64,
    /// A heartbeat round trip at or below this is considered healthy.
    pub good_rtt_ms: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_ms: 1_000,
            cap_ms: 120_000,
            max_stretch: 4.0,
            success_alpha: 0.25,
            rtt_alpha: 0.125,
            good_rtt_ms: 500.0,
        }
    }
}

/// Connection-quality tracker.
#[derive(Debug, Clone)]
pub struct LinkQuality {
    success_ewma: f64,
    rtt_ewma_ms: Option<f64>,
    pub connects_ok: u32,
    pub connects_failed: u32,
}

impl LinkQuality {
    fn new() -> Self {
        LinkQuality { success_ewma: 1.0, rtt_ewma_ms: None, connects_ok: 0, connects_failed: 0 }
    }
    pub fn success_ewma(&self) -> f64 {
        self.success_ewma
    }
    pub fn rtt_ewma_ms(&self) -> Option<f64> {
        self.rtt_ewma_ms
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Disconnected,
    /// CONNACK received, no heartbeat acknowledged yet.
    Connected,
    /// CONNACK + first acknowledged heartbeat.
    Stable,
}

#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
    state: LinkState,
    quality: LinkQuality,
}

impl Backoff {
    pub fn new(cfg: BackoffConfig) -> Self {
        assert!(cfg.max_stretch >= 1.0 && cfg.base_ms > 0 && cfg.cap_ms >= cfg.base_ms);
        Backoff { cfg, attempt: 0, state: LinkState::Disconnected, quality: LinkQuality::new() }
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    pub fn state(&self) -> LinkState {
        self.state
    }
    pub fn link_quality(&self) -> &LinkQuality {
        &self.quality
    }

    /// Quality score in [0, 1] (1 = healthy).
    pub fn quality(&self) -> f64 {
        let rtt_factor = match self.quality.rtt_ewma_ms {
            Some(rtt) if rtt > self.cfg.good_rtt_ms => self.cfg.good_rtt_ms / rtt,
            _ => 1.0,
        };
        (self.quality.success_ewma * rtt_factor).clamp(0.0, 1.0)
    }

    /// Multiplier applied to the window, in [1, max_stretch].
    pub fn stretch(&self) -> f64 {
        1.0 + (self.cfg.max_stretch - 1.0) * (1.0 - self.quality())
    }

    /// Un-jittered, un-stretched window for the current attempt: min(cap, base * 2^attempt).
    pub fn window_ms(&self) -> u64 {
        let exp = self.attempt.min(63);
        self.cfg
            .base_ms
            .checked_shl(exp)
            .filter(|w| w >> exp == self.cfg.base_ms)
            .unwrap_or(u64::MAX)
            .min(self.cfg.cap_ms)
    }

    /// Upper bound of the next delay (window * stretch).
    pub fn max_delay_ms(&self) -> u64 {
        (self.window_ms() as f64 * self.stretch()) as u64
    }

    /// Delay before the next connection attempt; advances the attempt counter.
    pub fn next_delay_ms(&mut self, rng: &mut dyn Rng) -> u64 {
        let d = rng.gen_range_inclusive(self.max_delay_ms());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    fn record_outcome(&mut self, ok: bool) {
        let a = self.cfg.success_alpha;
        self.quality.success_ewma = (1.0 - a) * self.quality.success_ewma + a * if ok { 1.0 } else { 0.0 };
        if ok {
            self.quality.connects_ok += 1;
        } else {
            self.quality.connects_failed += 1;
        }
    }

    /// Transport or CONNACK failure.
    pub fn on_connect_failed(&mut self) {
        self.state = LinkState::Disconnected;
        self.record_outcome(false);
    }

    /// CONNACK accepted. Does **not** reset the attempt counter.
    pub fn on_connack(&mut self) {
        self.state = LinkState::Connected;
    }

    /// A heartbeat was acknowledged after `rtt_ms`. The first one after CONNACK makes
    /// the connection stable and resets the attempt counter.
    pub fn on_heartbeat_acked(&mut self, rtt_ms: u64) {
        let a = self.cfg.rtt_alpha;
        let rtt = rtt_ms as f64;
        self.quality.rtt_ewma_ms = Some(match self.quality.rtt_ewma_ms {
            None => rtt,
            Some(prev) => (1.0 - a) * prev + a * rtt,
        });
        if self.state == LinkState::Connected {
            self.state = LinkState::Stable;
            self.attempt = 0;
            self.record_outcome(true);
        }
    }

    /// The connection was lost. Dropping before it became stable counts as a failure.
    pub fn on_disconnected(&mut self) {
        if self.state == LinkState::Connected {
            self.record_outcome(false);
        }
        self.state = LinkState::Disconnected;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::XorShiftRng;
    use crate::testkit::MaxRng;

    fn cfg() -> BackoffConfig {
        BackoffConfig { base_ms: 1000, cap_ms: 60_000, ..Default::default() }
    }

    #[test]
    fn window_doubles_per_attempt_until_cap() {
        let mut b = Backoff::new(cfg());
        let mut rng = MaxRng;
        let got: Vec<u64> = (0..10).map(|_| b.next_delay_ms(&mut rng)).collect();
        assert_eq!(got, vec![1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000, 60000]);
    }

    #[test]
    fn window_never_overflows_at_huge_attempts() {
        let mut b = Backoff::new(cfg());
        b.attempt = u32::MAX - 1;
        assert_eq!(b.window_ms(), 60_000);
        b.attempt = 40;
        assert_eq!(b.window_ms(), 60_000);
    }

    #[test]
    fn full_jitter_delays_stay_within_zero_and_window() {
        let mut b = Backoff::new(cfg());
        let mut rng = XorShiftRng::new(1);
        for _ in 0..200 {
            let max = b.max_delay_ms();
            let d = b.next_delay_ms(&mut rng);
            assert!(d <= max && max <= 60_000);
        }
    }

    #[test]
    fn full_jitter_mean_is_about_half_the_window() {
        let mut rng = XorShiftRng::new(99);
        let n = 20_000;
        let mut sum = 0u64;
        let mut low = 0;
        for _ in 0..n {
            let mut b = Backoff::new(cfg());
            b.attempt = 10; // capped window 60 s
            let d = b.next_delay_ms(&mut rng);
            sum += d;
            if d < 6_000 {
                low += 1;
            }
        }
        let mean = sum as f64 / n as f64;
        assert!((mean - 30_000.0).abs() < 1_000.0, "mean {mean}");
        // Full jitter: ~10% of samples in the bottom tenth of the window.
        assert!((1_600..2_400).contains(&low), "low {low}");
    }

    #[test]
    fn connack_alone_does_not_reset_attempts() {
        let mut b = Backoff::new(cfg());
        let mut rng = XorShiftRng::new(3);
        for _ in 0..4 {
            b.next_delay_ms(&mut rng);
        }
        b.on_connack();
        assert_eq!(b.attempt(), 4);
        assert_eq!(b.state(), LinkState::Connected);
        b.on_disconnected();
        assert_eq!(b.attempt(), 4);
    }

    #[test]
    fn first_acked_heartbeat_after_connack_resets_attempts() {
        let mut b = Backoff::new(cfg());
        let mut rng = XorShiftRng::new(3);
        for _ in 0..4 {
            b.next_delay_ms(&mut rng);
        }
        b.on_connack();
        b.on_heartbeat_acked(100);
        assert_eq!(b.state(), LinkState::Stable);
        assert_eq!(b.attempt(), 0);
    }

    #[test]
    fn heartbeat_ack_without_connack_does_not_reset() {
        let mut b = Backoff::new(cfg());
        let mut rng = XorShiftRng::new(3);
        b.next_delay_ms(&mut rng);
        b.on_heartbeat_acked(100);
        assert_eq!(b.attempt(), 1);
        assert_eq!(b.state(), LinkState::Disconnected);
    }

    #[test]
    fn healthy_link_has_no_stretch() {
        let mut b = Backoff::new(cfg());
        b.on_connack();
        b.on_heartbeat_acked(80);
        assert_eq!(b.quality(), 1.0);
        assert_eq!(b.stretch(), 1.0);
    }

    #[test]
    fn flapping_link_stretches_the_backoff() {
        let mut b = Backoff::new(cfg());
        let before = b.max_delay_ms();
        for _ in 0..6 {
            b.on_connack();
            b.on_disconnected(); // dropped before the first heartbeat ack
        }
        assert!(b.quality() < 0.25, "quality {}", b.quality());
        assert!(b.stretch() > 3.0);
        assert!(b.max_delay_ms() > 3 * before);
        assert!(b.max_delay_ms() <= (before as f64 * cfg().max_stretch) as u64);
        assert_eq!(b.link_quality().connects_failed, 6);
    }

    #[test]
    fn slow_round_trips_lower_quality() {
        let mut b = Backoff::new(cfg());
        b.on_connack();
        b.on_heartbeat_acked(2_000);
        assert!((b.quality() - 0.25).abs() < 1e-9);
        assert!(b.stretch() > 1.0);
    }

    #[test]
    fn quality_recovers_after_stable_connections() {
        let mut b = Backoff::new(cfg());
        for _ in 0..6 {
            b.on_connect_failed();
        }
        let bad = b.quality();
        for _ in 0..10 {
            b.on_connack();
            b.on_heartbeat_acked(50);
            b.on_disconnected();
        }
        assert!(b.quality() > bad);
        assert!(b.quality() > 0.9);
    }
}
