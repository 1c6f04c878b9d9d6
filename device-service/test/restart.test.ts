/**
 * The device service keeps nothing that matters in memory: a device's state, its learned
 * rhythm and its active silence alert outlive the service (Redis holds them; `make run` and
 * compose run Redis with AOF, so they outlive Redis restarts too).
 */
import { describe, expect, it } from 'vitest';
import { heartbeat, startFleet, waitFor } from './helpers.js';

describe('a restart of the device service', () => {
  it('keeps every device\'s state, and a silence raised before it is cleared after it', async () => {
    const env = { SILENCE_DEFAULT_INTERVAL_S: '1', SILENCE_FLOOR_S: '1' };
    let f = await startFleet(env);
    const { apiKey, token: deviceToken } = await f.registerDevice('rs-1');
    const dev = await f.connectDevice('rs-1', { token: deviceToken });
    await dev.publishAsync('devices/rs-1/heartbeat', heartbeat(1, { uptime_s: 100, fw: '3.1.0' }), { qos: 1 });
    const token = await f.tokenFor('viewer');
    const before = await waitFor(() => f.api('GET', '/v1/devices/rs-1/state', { token }), (s) => s.body.seq === 1);
    await dev.endAsync();
    // It stops beating: silent after its (default, 1 s × 300 %) threshold.
    await waitFor(() => f.api('GET', '/v1/devices/rs-1/state', { token }), (s) => s.body.silent === true, 10_000);
    await f.close();

    f = await startFleet(env);
    try {
      const viewer = await f.tokenFor('viewer');
      const after = await f.api('GET', '/v1/devices/rs-1/state', { token: viewer });
      expect(after.body).toMatchObject({ last_seen: before.body.last_seen, fw: '3.1.0', uptime_s: 100, silent: true });
      // The device comes back with the key it has (this fleet signs with a new key ring).
      const exchanged = await f.api('POST', '/v1/devices/token', { body: { api_key: apiKey } });
      const dev2 = await f.connectDevice('rs-1', { token: exchanged.body.token as string });
      await dev2.publishAsync('devices/rs-1/heartbeat', heartbeat(2, { uptime_s: 110, fw: '3.1.0' }), { qos: 1 });
      const cleared = await waitFor(() => f.api('GET', '/v1/alerts?state=all', { token: viewer }), (a) => (a.body.items as { state: string }[]).some((i) => i.state === 'cleared'));
      expect((cleared.body.items as { device_id: string; state: string }[]).map((i) => [i.device_id, i.state])).toEqual([['rs-1', 'cleared'], ['rs-1', 'raised']]);
      await dev2.endAsync();
    } finally {
      await f.close();
    }
  });
});
