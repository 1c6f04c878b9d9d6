/** The device service's part of `fleetwire spec` and GET /v1/spec: settings in force, never secrets. */
import type { DeviceServiceConfig } from './config.js';

export function deviceServiceSpecReport(c: DeviceServiceConfig): Record<string, unknown> {
  return {
    broker: c.brokerUrl ? 'DEVICE_BROKER_URL' : 'this process\'s own /mqtt',
    heartbeat_batch: c.heartbeatBatch,
    fleet_health_cache_ms: c.fleetHealthCacheMs,
    silence: {
      default_interval_s: c.silenceDefaultIntervalS, min_history: c.silenceMinHistory, multiplier_pct: c.silenceMultiplierPct,
      floor_s: c.silenceFloorS, ceiling_s: c.silenceCeilingS, check_ms: c.silenceCheckMs, ota_reboot_window_s: c.otaRebootWindowS,
    },
    alert_webhook: c.alertWebhookUrl
      ? {
        attempts: c.alertWebhookAttempts, backoff_ms: c.alertWebhookBackoffMs, timeout_ms: c.alertWebhookTimeoutMs,
        queue_max: c.alertWebhookQueueMax, signed: Boolean(c.alertWebhookSecret),
      }
      : 'off',
    alert_log_max_len: c.alertLogMaxLen,
    telemetry: { max_len: c.telemetryMaxLen, max_age_s: c.telemetryMaxAgeS, batch: c.telemetryBatch },
    commands: {
      default_timeout_ms: c.commandDefaultTimeoutMs, max_timeout_ms: c.commandMaxTimeoutMs, max_args_bytes: c.commandMaxArgsBytes,
      allow_list: c.commandAllow || 'any name', queued_ttl_s: c.commandQueuedTtlS, record_ttl_s: c.commandRecordTtlS,
      fleet_max_rate_per_s: c.fleetCommandMaxRate, results_concurrency: c.commandResultsConcurrency,
    },
    firmware: {
      trusted_keys: c.otaPublicKeys.split(',').map((k) => k.trim()).filter(Boolean).length,
      uploads: c.otaPublicKeys.trim() ? 'on' : 'off (OTA_PUBLIC_KEYS is empty)',
      max_image_bytes: c.otaMaxImageBytes,
    },
  };
}
