//! Station Wi-Fi: scan, let fleetwire-core rank the configured networks (priority,
//! then RSSI, recent failures demoted), join the best, remember failures.

use esp_idf_svc::eventloop::EspSystemEventLoop;
use esp_idf_svc::hal::modem::Modem;
use esp_idf_svc::nvs::EspDefaultNvsPartition;
use esp_idf_svc::wifi::{AuthMethod, BlockingWifi, ClientConfiguration, Configuration, EspWifi};
use fleetwire_core::platform::Clock;
use fleetwire_core::wifi::{ConfiguredNetwork, WifiSelector, ScanResult, WifiConfig};

use crate::platform::EspClock;
use crate::provisioning::WifiNetwork;

pub struct Wifi {
    wifi: BlockingWifi<EspWifi<'static>>,
    networks: Vec<WifiNetwork>,
    selector: WifiSelector,
}

impl Wifi {
    pub fn start(modem: Modem, sysloop: EspSystemEventLoop, nvs: EspDefaultNvsPartition, networks: Vec<WifiNetwork>) -> anyhow::Result<Self> {
        let mut wifi = BlockingWifi::wrap(EspWifi::new(modem, sysloop.clone(), Some(nvs))?, sysloop)?;
        wifi.set_configuration(&Configuration::Client(ClientConfiguration::default()))?;
        wifi.start()?;
        let configured = networks.iter().map(|n| ConfiguredNetwork { ssid: n.ssid.clone(), priority: n.priority }).collect();
        Ok(Wifi { wifi, networks, selector: WifiSelector::new(configured, WifiConfig::default()) })
    }

    /// Joined and holding an IP address, or an error after trying every visible network once.
    pub fn ensure_connected(&mut self) -> anyhow::Result<()> {
        if self.wifi.is_connected()? {
            return Ok(());
        }
        let now = EspClock.monotonic_ms();
        let scan: Vec<ScanResult> = self.wifi.scan()?.into_iter().map(|ap| ScanResult { ssid: ap.ssid.to_string(), rssi: ap.signal_strength }).collect();
        for (ssid, rssi) in self.selector.rank(&scan, now) {
            let Some(net) = self.networks.iter().find(|n| n.ssid == ssid) else { continue };
            log::info!("joining {ssid} (rssi {rssi})");
            let cfg = ClientConfiguration {
                ssid: ssid.as_str().try_into().map_err(|_| anyhow::anyhow!("ssid too long"))?,
                password: net.password.as_str().try_into().map_err(|_| anyhow::anyhow!("password too long"))?,
                auth_method: if net.password.is_empty() { AuthMethod::None } else { AuthMethod::WPA2Personal },
                ..Default::default()
            };
            self.wifi.set_configuration(&Configuration::Client(cfg))?;
            match self.wifi.connect().and_then(|_| self.wifi.wait_netif_up()) {
                Ok(()) => {
                    self.selector.report_success(&ssid);
                    return Ok(());
                }
                Err(e) => {
                    log::warn!("joining {ssid} failed: {e}");
                    self.selector.report_failure(&ssid, EspClock.monotonic_ms());
                }
            }
        }
        anyhow::bail!("no configured Wi-Fi network could be joined")
    }
}
