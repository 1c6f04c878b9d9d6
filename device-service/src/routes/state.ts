/** GET /v1/devices/{id}/state: what the heartbeats, presence and silence checks know about one device. */
import type { FastifyInstance } from 'fastify';
import { FleetwireError, type Guard, type Redis } from '@fleetwire/common';
import { readDeviceState } from '../device-state.js';

const errorBody = { $ref: 'error#' } as const;
const ms = (description: string) => ({ type: ['integer', 'null'], description: `${description} (unix ms; null when not known yet)` }) as const;

const stateSchema = {
  type: 'object',
  properties: {
    device_id: { type: 'string' },
    online: { type: 'boolean', description: 'connected to a broker node, by the newest presence event (false before the first one)' },
    last_seen: ms('when the broker received the newest heartbeat'),
    fw: { type: ['string', 'null'], description: 'firmware version in the newest heartbeat' },
    rssi: { type: ['integer', 'null'], description: 'Wi-Fi signal in the newest heartbeat (dBm)' },
    heap_free: { type: ['integer', 'null'], description: 'free heap in the newest heartbeat (bytes)' },
    uptime_s: { type: ['integer', 'null'], description: 'seconds since boot in the newest heartbeat' },
    seq: { type: ['integer', 'null'], description: 'sequence number of the newest heartbeat' },
    boot_count: { type: 'integer', description: 'reboots detected (uptime went backwards) since the first heartbeat' },
    last_reboot_at: ms('when the latest detected reboot happened, from the device\'s uptime'),
    interval: {
      type: 'object', description: 'the heartbeat rhythm learned from this device\'s own history',
      properties: {
        last_ms: { type: ['integer', 'null'], description: 'latest gap between two heartbeats' },
        mean_ms: { type: ['integer', 'null'], description: 'smoothed gap (EWMA, alpha 1/8); null before the first learned gap' },
        deviation_ms: { type: ['integer', 'null'], description: 'smoothed deviation of the gap (EWMA, alpha 1/4)' },
        n: { type: 'integer', description: 'gaps learned from; gaps longer than the threshold in force are silences, not learned' },
      },
    },
    silence_threshold_ms: {
      type: ['integer', 'null'],
      description: 'the device counts as silent this long after last_seen: SILENCE_MULTIPLIER_PCT of mean_ms plus 4 deviations once n reaches '
        + 'SILENCE_MIN_HISTORY (before: of SILENCE_DEFAULT_INTERVAL_S), within SILENCE_FLOOR_S and SILENCE_CEILING_S; null before the first heartbeat',
    },
    silent: { type: 'boolean', description: 'a silence alert is active' },
    silent_since: ms('when the active silence alert was raised'),
    maintenance_until: ms('end of the maintenance window set with PATCH /v1/devices/{id}; silence alerts are muted until then'),
    in_maintenance: { type: 'boolean', description: 'maintenance_until is in the future' },
    presence: {
      type: ['object', 'null'], description: 'the newest presence event from the broker; null before the first one',
      properties: {
        seq: { type: 'integer', description: 'per-device presence sequence number; older events are ignored' },
        node: { type: 'string', description: 'broker node that reported it' },
        at: { type: 'integer', description: 'when that node saw the connect or disconnect (unix ms)' },
      },
    },
    ota: {
      type: ['object', 'null'], description: 'the newest OTA status the device reported on devices/{id}/ota/status; null before the first one',
      properties: {
        rollout: { type: 'string' },
        state: { type: 'string', description: 'as in ota-status.schema.json (offered, downloading, verifying, rebooting, pending-verify, success, failed, rolled-back, refused)' },
        at: { type: 'integer', description: 'when it was received (unix ms)' },
        reboot_window_until: ms('silence alerts are muted until then across the OTA reboot (OTA_REBOOT_WINDOW_S); null when no window is open'),
      },
    },
  },
} as const;

export interface StateRouteDeps {
  redis: Redis;
  reader: Guard;
}

export function stateRoutes(app: FastifyInstance, d: StateRouteDeps): void {
  app.get<{ Params: { id: string } }>('/v1/devices/:id/state', {
    onRequest: d.reader,
    schema: {
      tags: ['devices'], security: [{ bearer: [] }],
      summary: 'A device\'s state: last seen, its latest heartbeat, reboots, the learned heartbeat rhythm and silence threshold, presence',
      params: { type: 'object', required: ['id'], additionalProperties: false, properties: { id: { type: 'string', minLength: 1, maxLength: 128 } } },
      response: { 200: stateSchema, 401: errorBody, 403: errorBody, 404: errorBody },
    },
  }, async (req) => {
    const state = await readDeviceState(d.redis, req.params.id);
    if (!state) throw new FleetwireError('NOT_FOUND', `No device ${req.params.id}.`);
    return state;
  });
}
