//! What a device needs before its first connection, read from the `fleetwire` NVS
//! namespace (written at the factory with `nvs_partition_gen.py`; see README.md).

use fleetwire_core::platform::Storage;
use fleetwire_core::topics::is_valid_device_id;
use serde::Deserialize;

use crate::platform::NvsStorage;

/// One entry of the `wifi` NVS blob: `[{"ssid": "…", "password": "…", "priority": 10}]`.
#[derive(Clone, Deserialize)]
pub struct WifiNetwork {
    pub ssid: String,
    pub password: String,
    /// Higher is preferred; among equals the stronger signal wins (fleetwire-core's rule).
    #[serde(default)]
    pub priority: u8,
}

pub struct Provisioning {
    pub device_id: String,
    /// `fwk_…`, exchanged for device tokens; never logged.
    pub api_key: String,
    /// `https://fleet.example.com`: the token exchange is at /v1/devices/token, MQTT at /mqtt.
    pub server_url: String,
    /// PEM of the private CA, or None to trust the ESP-IDF certificate bundle.
    pub ca_pem: Option<String>,
    pub networks: Vec<WifiNetwork>,
}

pub fn load(nvs: &NvsStorage) -> anyhow::Result<Provisioning> {
    let need = |key: &str| nvs.get_str(key).ok_or_else(|| anyhow::anyhow!("NVS key fleetwire/{key} is missing: provision the device (README.md)"));
    let device_id = need("device_id")?;
    anyhow::ensure!(is_valid_device_id(&device_id), "NVS fleetwire/device_id is not a valid device id");
    let api_key = need("api_key")?;
    anyhow::ensure!(api_key.starts_with("fwk_"), "NVS fleetwire/api_key is not a Fleetwire API key");
    let server_url = need("server_url")?;
    let networks: Vec<WifiNetwork> = serde_json::from_slice(&nvs.get("wifi").unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("NVS fleetwire/wifi must be a JSON list of networks: {e}"))?;
    anyhow::ensure!(!networks.is_empty(), "NVS fleetwire/wifi lists no network");
    // The CA must end with NUL for mbedTLS' PEM parser.
    let ca_pem = nvs.get_str("ca_pem").map(|mut pem| {
        if !pem.ends_with('\0') {
            pem.push('\0');
        }
        pem
    });
    Ok(Provisioning { device_id, api_key, server_url: server_url.trim_end_matches('/').to_string(), ca_pem, networks })
}
