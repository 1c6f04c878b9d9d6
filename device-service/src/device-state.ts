/**
 * A device's state as the device service knows it: the hash redisKeys.deviceState(id),
 * written by the heartbeat script (lua/apply-heartbeats.lua), the presence script
 * (lua/apply-presence.lua) and the silence checker, read here for GET /v1/devices/{id}/state.
 *
 * Fields of the hash (all strings in Redis; times are unix ms). The names are the interface
 * the other parts read. The hash stays small enough for Redis' compact listpack encoding
 * (under 128 fields of at most 64 bytes): about 270 bytes per device with its key.
 *   last_seen           received_at of the newest heartbeat applied
 *   fw, rssi, heap_free, uptime_s, seq   as in that heartbeat
 *   boot_count          reboots detected (uptime went backwards) since the first heartbeat; absent = 0
 *   last_reboot_at      when the latest detected reboot happened (received_at − uptime)
 *   interval_ms         the latest gap between two heartbeats
 *   interval_mean_ms    smoothed gap (EWMA, alpha 1/8), rounded to the ms
 *   interval_dev_ms     smoothed deviation of the gap (EWMA, alpha 1/4), rounded to the ms
 *   interval_n          gaps learned from
 *   interval_skips      gaps in a row too long to learn from (see apply-heartbeats.lua); absent = 0
 *   threshold_ms        the silence threshold in force: silent when last_seen + this has passed
 *   silent_since, alert_threshold_ms   set by the silence checker while an alert is active
 *   online, presence_seq, presence_at, presence_node   the newest presence seen (seq-ordered)
 *   ota_rollout, ota_state, ota_at, ota_window_until    the newest OTA status (ota-events.ts)
 */
import { redisKeys, type Redis } from '@fleetwire/common';

export interface DeviceState {
  device_id: string;
  online: boolean;
  last_seen: number | null;
  fw: string | null;
  rssi: number | null;
  heap_free: number | null;
  uptime_s: number | null;
  seq: number | null;
  boot_count: number;
  last_reboot_at: number | null;
  interval: { last_ms: number | null; mean_ms: number | null; deviation_ms: number | null; n: number };
  silence_threshold_ms: number | null;
  silent: boolean;
  silent_since: number | null;
  maintenance_until: number | null;
  in_maintenance: boolean;
  presence: { seq: number; node: string; at: number } | null;
  ota: { rollout: string; state: string; at: number; reboot_window_until: number | null } | null;
}

const int = (v: string | undefined | null): number | null => {
  if (v === undefined || v === null || v === '') return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
};

/**
 * The state of a registered device (null when there is no such device). A device that has
 * sent no heartbeat yet has last_seen null; one the broker never reported has presence null.
 */
export async function readDeviceState(redis: Redis, id: string, now = Date.now()): Promise<DeviceState | null> {
  // Both leave in the same tick: one round trip with auto-pipelining.
  const [record, h] = await Promise.all([
    redis.hmget(redisKeys.device(id), 'created_at', 'maintenance_until'),
    redis.hgetall(redisKeys.deviceState(id)),
  ]);
  if (record[0] === null) return null;
  return deviceStateOf(id, h, maintenanceUntil(record[1] ?? null), now);
}

/** The API shape of a state hash (`h` as HGETALL returns it) and the record's maintenance_until. */
export function deviceStateOf(id: string, h: Record<string, string>, maintenance: number | null, now = Date.now()): DeviceState {
  const presenceSeq = int(h.presence_seq);
  const silentSince = int(h.silent_since);
  return {
    device_id: id,
    online: h.online === '1',
    last_seen: int(h.last_seen),
    fw: h.fw ?? null,
    rssi: int(h.rssi),
    heap_free: int(h.heap_free),
    uptime_s: int(h.uptime_s),
    seq: int(h.seq),
    boot_count: int(h.boot_count) ?? 0,
    last_reboot_at: int(h.last_reboot_at),
    interval: {
      last_ms: int(h.interval_ms),
      mean_ms: int(h.interval_n) ? int(h.interval_mean_ms) : null,
      deviation_ms: int(h.interval_n) ? int(h.interval_dev_ms) : null,
      n: int(h.interval_n) ?? 0,
    },
    silence_threshold_ms: int(h.threshold_ms),
    silent: silentSince !== null,
    silent_since: silentSince,
    maintenance_until: maintenance,
    in_maintenance: maintenance !== null && maintenance > now,
    presence: presenceSeq === null ? null : { seq: presenceSeq, node: h.presence_node ?? '', at: int(h.presence_at) ?? 0 },
    ota: h.ota_state === undefined ? null
      : { rollout: h.ota_rollout ?? '', state: h.ota_state, at: int(h.ota_at) ?? 0, reboot_window_until: int(h.ota_window_until) },
  };
}

/** The record's maintenance_until as unix ms: written by the auth service as ms; an ISO time is read too. */
function maintenanceUntil(v: string | null): number | null {
  if (v === null || v === '') return null;
  const n = Number(v);
  if (Number.isFinite(n)) return n > 0 ? n : null;
  const t = Date.parse(v);
  return Number.isFinite(t) ? t : null;
}
