//! Fleetwire device firmware for the ESP32: board glue around `fleetwire-core`.
//!
//! The core decides (its session engine: connecting, backoff, heartbeats, commands,
//! tokens, OTA; Wi-Fi choice, MQTT framing); this binary only provides the hardware: NVS, Wi-Fi, SNTP, the HTTPS
//! client for the token exchange and image downloads, esp_websocket_client for
//! MQTT over WSS with the `mqtt, auth.<jwt>` subprotocols, and the OTA partitions.

mod platform;
mod provisioning;
mod session;
mod token;
mod update;
mod wifi;

use esp_idf_svc::eventloop::EspSystemEventLoop;
use esp_idf_svc::hal::peripherals::Peripherals;
use esp_idf_svc::nvs::EspDefaultNvsPartition;
use esp_idf_svc::sntp::EspSntp;

fn main() -> anyhow::Result<()> {
    esp_idf_svc::sys::link_patches();
    esp_idf_svc::log::EspLogger::initialize_default();

    let peripherals = Peripherals::take()?;
    let sysloop = EspSystemEventLoop::take()?;
    let nvs = EspDefaultNvsPartition::take()?;

    let mut storage = platform::NvsStorage::open(nvs.clone(), "fleetwire")?;
    let config = provisioning::load(&storage)?;
    log::info!("device {} firmware {}", config.device_id, update::RUNNING_VERSION);

    let mut wifi = wifi::Wifi::start(peripherals.modem, sysloop, nvs, config.networks.clone())?;
    // Token and command expiry need the wall clock.
    let _sntp = EspSntp::new_default()?;

    session::run(&config, &mut wifi, &mut storage)
}
