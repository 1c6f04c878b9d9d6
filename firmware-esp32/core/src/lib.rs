//! Fleetwire ESP32 firmware core: pure, host-tested logic.
//!
//! Hardware and platform services (clock, randomness, persistent storage) sit behind
//! the small traits in [`platform`]; the ESP-IDF glue crate implements them on device,
//! the host implementations here are used by the tests.
//!
//! Wire contracts (topic map, close codes, golden fixtures) are read from
//! `common/contracts` with `include_str!`, so TypeScript and Rust share one source of truth.

pub mod backoff;
pub mod close_codes;
pub mod commands;
pub mod heartbeat;
pub mod ml;
pub mod mqtt;
pub mod ota;
pub mod ota_download;
pub mod ota_status;
pub mod ota_store;
pub mod outbox;
pub mod platform;
pub mod secret;
pub mod session;
pub mod telemetry;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod topics;
pub mod wifi;

/// Raw contract files, shared with the TypeScript side.
pub mod contracts {
    pub const TOPICS_JSON: &str = include_str!("../../../common/contracts/topics.json");
    pub const CLOSE_CODES_JSON: &str = include_str!("../../../common/contracts/close-codes.json");
    pub const HEARTBEAT_SCHEMA_JSON: &str = include_str!("../../../common/contracts/schemas/heartbeat.schema.json");
    pub const VALID_HEARTBEAT_JSON: &str = include_str!("../../../common/contracts/fixtures/valid/heartbeat.json");
    pub const INVALID_HEARTBEAT_JSON: &str = include_str!("../../../common/contracts/fixtures/invalid/heartbeat.json");
    pub const VALID_CMD_RESULT_JSON: &str = include_str!("../../../common/contracts/fixtures/valid/cmd-result.json");
    pub const INVALID_CMD_RESULT_JSON: &str =
        include_str!("../../../common/contracts/fixtures/invalid/cmd-result.json");
    pub const OTA_OFFER_SCHEMA_JSON: &str = include_str!("../../../common/contracts/schemas/ota-offer.schema.json");
    pub const VALID_OTA_OFFER_JSON: &str = include_str!("../../../common/contracts/fixtures/valid/ota.json");
    pub const INVALID_OTA_OFFER_JSON: &str = include_str!("../../../common/contracts/fixtures/invalid/ota.json");
    pub const TELEMETRY_SCHEMA_JSON: &str = include_str!("../../../common/contracts/schemas/telemetry.schema.json");
    pub const VALID_TELEMETRY_JSON: &str = include_str!("../../../common/contracts/fixtures/valid/telemetry.json");
    pub const INVALID_TELEMETRY_JSON: &str = include_str!("../../../common/contracts/fixtures/invalid/telemetry.json");
    pub const OTA_STATUS_SCHEMA_JSON: &str = include_str!("../../../common/contracts/schemas/ota-status.schema.json");
    pub const VALID_OTA_STATUS_JSON: &str = include_str!("../../../common/contracts/fixtures/valid/ota-status.json");
    pub const INVALID_OTA_STATUS_JSON: &str =
        include_str!("../../../common/contracts/fixtures/invalid/ota-status.json");
    pub const ML_JSON: &str = include_str!("../../../common/contracts/ml.json");
    pub const VALID_ML_INFER_JSON: &str = include_str!("../../../common/contracts/fixtures/valid/ml-infer.json");
}
