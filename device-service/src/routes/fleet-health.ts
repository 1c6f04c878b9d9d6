/** GET /v1/fleet/health: the fleet in numbers. */
import type { FastifyInstance } from 'fastify';
import type { Guard } from '@fleetwire/common';

export interface FleetHealthReport {
  devices: number;
  revoked: number;
  online: number;
  offline: number;
  silent: number;
  in_maintenance: number;
  by_firmware: Record<string, number>;
  by_type: Record<string, number>;
  reboots_last_hour: number;
  heartbeat_lag_ms: { p50: number | null; p90: number | null; p99: number | null; samples: number; window_s: number };
  at: number;
}

const errorBody = { $ref: 'error#' } as const;
const counts = (description: string) => ({ type: 'object', description, additionalProperties: { type: 'integer' } }) as const;
const percentile = (p: string) => ({
  type: ['integer', 'null'],
  description: `${p} heartbeat lag (ms); the upper edge of its log-spaced bucket (4 per doubling), so at most about 19% high; null without samples`,
}) as const;

const reportSchema = {
  type: 'object',
  properties: {
    devices: { type: 'integer', description: 'registered devices that are not revoked' },
    revoked: { type: 'integer', description: 'revoked devices (still listed with status revoked; counted nowhere else)' },
    online: { type: 'integer', description: 'devices connected to a broker node now' },
    offline: { type: 'integer', description: 'devices - online' },
    silent: { type: 'integer', description: 'devices with an active silence alert (online or not)' },
    in_maintenance: { type: 'integer', description: 'devices whose maintenance_until is in the future' },
    by_firmware: counts('devices by the firmware version of their newest heartbeat (devices that never sent one are not counted)'),
    by_type: counts('devices by type'),
    reboots_last_hour: { type: 'integer', description: 'device reboots detected that happened in the last hour' },
    heartbeat_lag_ms: {
      type: 'object', description: 'fleet-wide heartbeat lag, from the broker receiving a heartbeat to the device state written, over the last window_s',
      properties: {
        p50: percentile('median'), p90: percentile('90th percentile'), p99: percentile('99th percentile'),
        samples: { type: 'integer', description: 'heartbeats measured in the window' },
        window_s: { type: 'integer', description: 'the window: the current minute and the 4 before it' },
      },
    },
    at: { type: 'integer', description: 'when these numbers were read from Redis (unix ms); they are reused for FLEET_HEALTH_CACHE_MS' },
  },
} as const;

export interface FleetHealthRouteDeps {
  reader: Guard;
  read: () => Promise<FleetHealthReport>;
}

export function fleetHealthRoutes(app: FastifyInstance, d: FleetHealthRouteDeps): void {
  app.get('/v1/fleet/health', {
    onRequest: d.reader,
    schema: {
      tags: ['fleet'], security: [{ bearer: [] }],
      summary: 'Fleet health: devices online, offline, silent, in maintenance, by firmware and type, reboots in the last hour, heartbeat lag percentiles',
      response: { 200: reportSchema, 401: errorBody, 403: errorBody },
    },
  }, async () => d.read());
}
