/**
 * The README tour's device-service steps, against the fleetwire up layout: the example
 * device (examples/device.mjs, run as the README runs it) sends heartbeats, shows up in its
 * state, the online listing and fleet health, and answers a ping sent through the API.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFleet, waitFor, type Fleet } from './helpers.js';

const example = fileURLToPath(new URL('../../examples/device.mjs', import.meta.url));
let f: Fleet;
beforeAll(async () => { f = await startFleet(); });
afterAll(async () => { await f?.close(); });

describe('README tour, step 4', () => {
  it('shows the example device\'s state, lists it online, counts it, and gets its answer to a ping', async () => {
    const { token } = await f.registerDevice('my-device-1', { type: 'esp32-s3' });
    const device = spawn(process.execPath, [example, 'my-device-1', token, f.mqttUrl], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    device.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    try {
      const access = await f.tokenFor('admin');
      const state = await waitFor(() => f.api('GET', '/v1/devices/my-device-1/state', { token: access }), (s) => s.body.last_seen !== null && s.body.online === true);
      expect(state.body).toMatchObject({ device_id: 'my-device-1', fw: 'example-1.0.0', seq: 0 });
      const listed = await f.api('GET', '/v1/devices?online=true', { token: access });
      expect((listed.body.devices as { id: string }[]).map((d) => d.id)).toEqual(['my-device-1']);
      const health = await waitFor(() => f.api('GET', '/v1/fleet/health', { token: access }), (h) => h.body.online === 1);
      expect(health.body).toMatchObject({ devices: 1, online: 1, by_firmware: { 'example-1.0.0': 1 }, by_type: { 'esp32-s3': 1 } });

      const ping = await f.api('POST', '/v1/devices/my-device-1/commands', { token: access, body: { name: 'ping' } });
      expect(ping.status).toBe(200);
      expect(ping.body).toMatchObject({ state: 'succeeded', ok: true, result: { pong: true } });
      expect(out).toContain('devices/my-device-1/cmd: {"cid"');
    } finally {
      device.kill();
    }
  });
});
