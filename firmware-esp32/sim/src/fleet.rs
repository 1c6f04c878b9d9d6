//! Run many simulated devices in one tokio runtime, print a stats line periodically,
//! and stop them all cleanly on Ctrl-C, SIGTERM or `--duration-s`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetwire_core::session::OtaSettings;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{interval_at, sleep, Instant};

use crate::auth::{ApiKeyExchange, Credentials, StaticToken};
use crate::cli::{Credential, DeviceArgs, Options};
use crate::endpoint::Endpoint;
use crate::flash::TempDir;
use crate::http::HttpClient;
use crate::ota::OtaConfig;
use crate::session::{Exit, Session, SessionConfig, Shutdown};
use crate::stats::Stats;
use crate::tls::{self, Trust};
use crate::ws::WsConnector;

/// Bound on TCP + TLS + upgrade, and on one token request.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// First connects are spread by this much per device, at most [`MAX_RAMP`] in total,
/// so a large fleet does not hit the broker's per-IP limits in one burst.
const RAMP_STEP: Duration = Duration::from_millis(20);
const MAX_RAMP: Duration = Duration::from_secs(10);
/// How long devices get to send DISCONNECT and close after a stop.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

pub const EXIT_OK: i32 = 0;
pub const EXIT_DEVICE_STOPPED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// FNV-1a of the device id mixed with the clock: distinct jitter per device and run.
fn seed_for(device_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device_id.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn start_offset(index: usize, devices: usize) -> Duration {
    let total = RAMP_STEP.saturating_mul(devices as u32).min(MAX_RAMP);
    total.mul_f64(index as f64 / devices.max(1) as f64)
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What every device of a run shares: trust, server, state directory, OTA settings,
/// the HTTP client of the token exchange.
pub struct Setup {
    tls: Arc<rustls::ClientConfig>,
    endpoint: Endpoint,
    ota: OtaConfig,
    ota_settings: OtaSettings,
    http: HttpClient,
    /// Without --state-dir, device state lives for this run only (removed on drop).
    _temp_state: Option<TempDir>,
}

impl Setup {
    /// `Err`: a message for stderr; the run exits with [`EXIT_USAGE`].
    pub fn prepare(opts: &Options) -> Result<Setup, String> {
        let tls = tls::client_config(&Trust { ca_file: opts.ca.as_deref(), webpki_roots: opts.webpki_roots })?;
        let endpoint = Endpoint::parse(&opts.url)?;
        let (state_dir, temp_state) = match &opts.ota.state_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let t =
                    TempDir::new("fleetwire-sim-state").map_err(|e| format!("cannot create a state directory: {e}"))?;
                (t.path().to_owned(), Some(t))
            }
        };
        let ota = OtaConfig {
            fail_boot_versions: opts.ota.fail_boot_versions.clone(),
            tls: Some(tls.clone()),
            ..OtaConfig::new(state_dir)
        };
        let ota_settings = OtaSettings {
            public_key: opts.ota.public_key,
            chip: opts.ota.chip.clone(),
            partition_size: opts.ota.partition_size,
            confirm_timeout_ms: opts.ota.confirm_timeout.as_millis() as u64,
            // Manifest urls that are paths (`/v1/firmware/{sha256}`) come from the server of --url.
            server_url: Some(endpoint.http_base.clone()),
        };
        let http = HttpClient::new(tls.clone(), IO_TIMEOUT);
        Ok(Setup { tls, endpoint, ota, ota_settings, http, _temp_state: temp_state })
    }

    /// One device's session, configured by `opts`.
    pub fn session(
        &self,
        opts: &Options,
        d: DeviceArgs,
        stats: Arc<Stats>,
        shutdown: Shutdown,
    ) -> Result<Session<WsConnector, Credentials>, String> {
        let credentials = match d.credential {
            Credential::ApiKey(key) => Credentials::ApiKey(ApiKeyExchange::new(
                self.http.clone(),
                self.endpoint.token_url(),
                key,
                d.id.clone(),
            )),
            Credential::Token(jwt) => Credentials::Static(StaticToken::new(jwt)),
        };
        let mut cfg = SessionConfig::new(&d.id);
        cfg.engine.keepalive_s = opts.keepalive_s;
        cfg.engine.heartbeat_s = opts.heartbeat_s;
        cfg.engine.telemetry_s = opts.telemetry_s;
        cfg.engine.connack_timeout_ms = IO_TIMEOUT.as_millis() as u64;
        cfg.engine.factory_version = opts.ota.fw_version.clone();
        cfg.engine.ota = self.ota_settings.clone();
        cfg.seed = seed_for(&d.id);
        cfg.ota = self.ota.clone();
        let connector = WsConnector::new(self.endpoint.ws_url.clone(), self.tls.clone(), IO_TIMEOUT);
        Session::new(cfg, connector, credentials, stats, shutdown)
    }
}

/// Run the fleet described by `opts`; returns the process exit code.
pub async fn run(opts: Options) -> i32 {
    crate::log::set_level(opts.log_level);
    let setup = match Setup::prepare(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleetwire-sim: {e}");
            return EXIT_USAGE;
        }
    };
    if setup.ota_settings.public_key.is_none() && crate::log::enabled(crate::log::Level::Warn) {
        eprintln!("fleetwire-sim: no --ota-public-key: OTA offers will be refused");
    }
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let n = opts.devices.len();

    let mut tasks = JoinSet::new();
    for (i, d) in opts.devices.iter().cloned().enumerate() {
        let mut shutdown = Shutdown::new(stop_rx.clone());
        let session = match setup.session(&opts, d, stats.clone(), shutdown.clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fleetwire-sim: {e}");
                return EXIT_USAGE;
            }
        };
        let offset = start_offset(i, n);
        tasks.spawn(async move {
            tokio::select! {
                _ = sleep(offset) => session.run().await,
                _ = shutdown.wait() => Exit::Shutdown,
            }
        });
    }

    let period = Duration::from_secs(opts.stats_s);
    let mut stats_tick = interval_at(Instant::now() + period, period);
    let duration = opts.duration_s.map(Duration::from_secs);
    let deadline = async move {
        match duration {
            Some(d) => sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let signal = stop_signal();
    tokio::pin!(signal);
    let mut stopped = 0usize;
    loop {
        tokio::select! {
            _ = &mut signal => {
                eprintln!("fleetwire-sim: stop requested, disconnecting {n} device(s)");
                break;
            }
            _ = &mut deadline => break,
            _ = stats_tick.tick() => eprintln!("{}", stats.summary(n)),
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Exit::Shutdown)) => {}
                Some(Ok(Exit::Stopped(_))) | Some(Err(_)) => stopped += 1,
            },
        }
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while let Some(joined) = tasks.join_next().await {
            if !matches!(joined, Ok(Exit::Shutdown)) {
                stopped += 1;
            }
        }
    })
    .await;
    if drained.is_err() {
        eprintln!("fleetwire-sim: {} device(s) did not close within {} s", tasks.len(), STOP_GRACE.as_secs());
        tasks.abort_all();
    }
    eprintln!("{}", stats.summary(n));
    if stopped > 0 {
        EXIT_DEVICE_STOPPED
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_connects_are_spread_but_bounded() {
        assert_eq!(start_offset(0, 1), Duration::ZERO);
        assert_eq!(start_offset(5, 10), Duration::from_millis(100));
        assert!(start_offset(9_999, 10_000) < MAX_RAMP);
    }

    #[test]
    fn seeds_differ_per_device() {
        assert_ne!(seed_for("dev-1"), seed_for("dev-2"));
    }
}
