/**
 * Test harness: the `fleetwire up` layout in this process (broker, auth service and device
 * service on one port, through the real service host), on this test file's own Redis.
 * Devices are real MQTT-over-WebSocket clients (mqtt.js); e2e/ runs the firmware simulator.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { MqttClient } from 'mqtt';
import { createLogger, createMetricsRegistry, createRedis, startServices } from '@fleetwire/common';
import { brokerService as broker } from '@fleetwire/broker';
import { authService as auth } from '@fleetwire/auth-service';
import { connect } from '../../broker/test/helpers.js';
import { ADMIN, fleetClient, metricValue, type TestFleet } from '../../scripts/vitest/fleet-client.js';
import { service as devices } from '../src/service.js';

export { closeOf, connect, nextMessage, sleep, telemetry, waitFor } from '../../broker/test/helpers.js';

export const REDIS_URL = process.env.REDIS_URL!;
export { ADMIN, type Answer } from '../../scripts/vitest/fleet-client.js';

export interface Fleet extends TestFleet {
  /** Registers (unless `token` is given) and connects a device as mqtt.js (clean session false, like the firmware). */
  connectDevice(id: string, opts?: { token?: string; meta?: { type?: string; location?: string; tags?: string[] } }): Promise<MqttClient>;
}

/** `env` overrides any setting of the three services (names as in their specs, e.g. SILENCE_FLOOR_S). */
export async function startFleet(env: Record<string, string> = {}): Promise<Fleet> {
  const dataDir = await mkdtemp(join(tmpdir(), 'fw-devsvc-'));
  const logs: string[] = [];
  const destination = new Writable({ write(chunk, _e, cb) { logs.push(String(chunk)); cb(); } });
  const log = createLogger({ level: 'debug', name: 'device-service-test', destination });
  const metrics = createMetricsRegistry({ defaultMetrics: false });
  const running = await startServices([broker, auth, devices], {
    REDIS_URL, PORT: '0', HOST: '127.0.0.1', FLEETWIRE_DATA_DIR: dataDir, TRUSTED_PROXIES: '127.0.0.1',
    FLEETWIRE_ADMIN_EMAIL: ADMIN.email, FLEETWIRE_ADMIN_PASSWORD: ADMIN.password, ARGON2_PROFILE: 'development',
    // A test fleet closes its connections at once on stop, not spread over seconds as a real node does.
    BROKER_SHUTDOWN_SPREAD_MS: '100', ...env,
  }, { version: 'test', log, metricsRegistry: metrics });
  const url = `http://127.0.0.1:${running.port}`;
  const redis = createRedis(REDIS_URL, { name: 'device-service-test' });

  const { api, tokenFor, registerDevice } = fleetClient(url);

  return {
    running, url, mqttUrl: `ws://127.0.0.1:${running.port}/mqtt`, dataDir, redis, metrics, logs, api, tokenFor, registerDevice,
    async connectDevice(id, opts = {}) {
      const token = opts.token ?? (await registerDevice(id, opts.meta)).token;
      return connect(`ws://127.0.0.1:${running.port}/mqtt`, token, id, { clean: false });
    },
    metric: (name, labels) => metricValue(metrics, name, labels),
    async close() {
      await running.stop();
      redis.disconnect();
    },
  };
}

/** A schema-valid heartbeat (contracts/schemas/heartbeat.schema.json). */
export function heartbeat(seq: number, fields: { uptime_s?: number; rssi?: number; heap_free?: number; fw?: string } = {}): string {
  return JSON.stringify({ seq, uptime_s: fields.uptime_s ?? seq * 5, rssi: fields.rssi ?? -60, heap_free: fields.heap_free ?? 150_000, fw: fields.fw ?? '1.0.0' });
}
