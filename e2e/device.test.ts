/**
 * The firmware's core, run by fleetwire-sim, against the real stack over WSS with a
 * private CA: API key → token → subprotocol auth, heartbeats into the queue, commands,
 * reconnection after a broker restart, and token refresh without losing the session.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { consume, startDevice, startSim, startStack, until, type Stack } from './stack.js';

let stack: Stack;
let heartbeats: ReturnType<typeof consume>;
let results: ReturnType<typeof consume>;

beforeAll(async () => {
  heartbeats = consume('heartbeats');
  results = consume('cmd-results');
  // A 60 s device token with the expiry notice 55 s early: the refresh happens 5 s after connecting.
  stack = await startStack({ DEVICE_TOKEN_TTL_S: '60', BROKER_TOKEN_NOTICE_S: '55' });
}, 60_000);
afterAll(async () => {
  await Promise.all([heartbeats?.close(), results?.close()]);
  await stack.stop();
});

interface Envelope { cid: string; device_id: string; topic_class: string; payload: Record<string, unknown> }

describe('a simulated device against the real stack', () => {
  it('trades its key for a token, connects over WSS with the private CA, and its heartbeats reach the queue', async () => {
    const sim = await startDevice(stack, 'e2e-dev-1', ['--heartbeat-s', '5']);
    try {
      const conn = await stack.api('GET', '/v1/connections/e2e-dev-1', undefined, await stack.admin());
      expect(conn.body).toMatchObject({ client_id: 'e2e-dev-1', kind: 'device', transport: 'ws' });
      const hb = await until(() => (heartbeats.jobs as unknown as Envelope[]).filter((j) => j.device_id === 'e2e-dev-1'), (j) => j.length >= 1);
      expect(hb[0]!.payload).toMatchObject({ seq: expect.any(Number), uptime_s: expect.any(Number), fw: expect.any(String) });
      expect(sim.lines.join('\n')).not.toContain(sim.apiKey);
    } finally {
      expect(await sim.stop()).toBe(0);
    }
  }, 30_000);

  it('is refused with a wrong API key, says why, and never connects', async () => {
    const key = await stack.registerDevice('e2e-dev-bad');
    const sim = startSim(stack, ['--device-id', 'e2e-dev-bad'], { FLEETWIRE_API_KEY: `${key.slice(0, -2)}xx` });
    expect(await sim.exited).toBe(1);
    expect(sim.lines.join('\n')).toMatch(/AUTH_API_KEY_INVALID|401/);
    expect((await stack.api('GET', '/v1/connections/e2e-dev-bad', undefined, await stack.admin())).status).toBe(404);
  }, 30_000);

  it('runs a command once per cid and its result reaches the cmd-results queue', async () => {
    const sim = await startDevice(stack, 'e2e-dev-2', ['--heartbeat-s', '30']);
    const service = await stack.serviceClient();
    try {
      const cmd = { cid: 'e2e-cmd-1', name: 'ping', args: {}, expires_at: Date.now() + 60_000 };
      await service.publishAsync('devices/e2e-dev-2/cmd', JSON.stringify(cmd), { qos: 1 });
      await service.publishAsync('devices/e2e-dev-2/cmd', JSON.stringify(cmd), { qos: 1 }); // a duplicate delivery
      const expired = { cid: 'e2e-cmd-2', name: 'ping', args: {}, expires_at: Date.now() - 1000 };
      await service.publishAsync('devices/e2e-dev-2/cmd', JSON.stringify(expired), { qos: 1 });
      const mine = (): Envelope[] => (results.jobs as unknown as Envelope[]).filter((j) => j.device_id === 'e2e-dev-2');
      await until(mine, (j) => j.some((e) => e.payload.cid === 'e2e-cmd-2'));
      await new Promise((r) => setTimeout(r, 500));
      const ping = mine().filter((e) => e.payload.cid === 'e2e-cmd-1');
      expect(ping).toHaveLength(1);
      expect(ping[0]!.payload).toMatchObject({ ok: true });
      expect(mine().find((e) => e.payload.cid === 'e2e-cmd-2')!.payload).toMatchObject({ ok: false, error: { code: 'CMD_EXPIRED' } });
    } finally {
      await service.endAsync();
      await sim.stop();
    }
  }, 30_000);

  it('samples its sensors, and reboots once on a reboot command (a redelivery is answered from memory)', async () => {
    const sim = await startDevice(stack, 'e2e-dev-5', ['--heartbeat-s', '5']);
    const service = await stack.serviceClient();
    const mine = (cid: string): Envelope[] => (results.jobs as unknown as Envelope[]).filter((j) => j.device_id === 'e2e-dev-5' && j.payload.cid === cid);
    const send = (cmd: Record<string, unknown>) => service.publishAsync('devices/e2e-dev-5/cmd', JSON.stringify({ args: {}, expires_at: Date.now() + 60_000, ...cmd }), { qos: 1 });
    try {
      await send({ cid: 'e2e-sample', name: 'sample_sensors' });
      const [sample] = await until(() => mine('e2e-sample'), (j) => j.length === 1);
      expect(sample!.payload).toMatchObject({
        ok: true,
        result: {
          at: expect.any(Number),
          readings: [{ name: 'temperature', value: expect.any(Number), unit: 'Cel' }, { name: 'humidity', value: expect.any(Number), unit: '%RH' }],
        },
      });

      const reboot = { cid: 'e2e-reboot', name: 'reboot' };
      await send(reboot);
      await until(() => mine('e2e-reboot'), (j) => j.length === 1);
      expect(mine('e2e-reboot')[0]!.payload).toMatchObject({ ok: true, result: { rebooting: true, delay_s: 0 } });
      await sim.waitFor(/device=e2e-dev-5 event=booted/);
      // After the reboot: back online, heartbeats counting again from zero.
      const sinceBoot = (): Envelope[] => (heartbeats.jobs as unknown as Envelope[]).filter((j) => j.device_id === 'e2e-dev-5' && j.payload.seq === 0);
      await until(sinceBoot, (j) => j.length === 2, 15_000);

      await send(reboot); // the same command delivered again
      // Answered from the command memory that survived the reboot (the queue keeps one
      // result per cid, so the repeat shows in the device's counters, not as a second job).
      await sim.waitFor(/stats devices=1 connected=1 .*cmd_dups=1/);
      await new Promise((r) => setTimeout(r, 1000));
      expect(sim.lines.filter((l) => /device=e2e-dev-5 event=rebooting/.test(l))).toHaveLength(1);
    } finally {
      await service.endAsync();
      await sim.stop();
    }
  }, 40_000);

  it('refreshes its token before expiry and reconnects without losing its session', async () => {
    const sim = await startDevice(stack, 'e2e-dev-3', ['--heartbeat-s', '30']);
    const service = await stack.serviceClient();
    try {
      // The notice arrives 5 s in; the device refreshes (planned refreshes are at least 30 s
      // apart, so this one comes 30 s after the first token) and reconnects with the new token.
      const stats = await sim.waitFor(/stats devices=1 connected=1 .*tokens=2/, 45_000);
      expect(stats[0]).toContain('connect_failures=0');
      // The broker kept the MQTT session across the reconnect (clean_session=false).
      await sim.waitFor(/device=e2e-dev-3 event=connected session_present=true/, 5000);
      // Never cut off for an expired token (close 4002).
      expect(sim.lines.join('\n')).not.toMatch(/4002/);
      // A command sent now still arrives: the persistent session carried over.
      const cmd = { cid: 'e2e-after-refresh', name: 'ping', args: {}, expires_at: Date.now() + 60_000 };
      await service.publishAsync('devices/e2e-dev-3/cmd', JSON.stringify(cmd), { qos: 1 });
      await until(() => (results.jobs as unknown as Envelope[]).filter((j) => j.payload.cid === 'e2e-after-refresh'), (j) => j.length === 1);
    } finally {
      await service.endAsync();
      await sim.stop();
    }
  }, 70_000);

  it('reconnects after a broker restart within its backoff bounds', async () => {
    const sim = await startDevice(stack, 'e2e-dev-4', ['--heartbeat-s', '30', '--log', 'debug']);
    try {
      const before = sim.lines.length;
      await stack.restart(2000);
      await until(() => sim.lines.slice(before).some((l) => /device=e2e-dev-4 event=stable/.test(l)), Boolean, 40_000);
      const after = sim.lines.slice(before);
      expect(after.join('\n')).toMatch(/4001|draining|shutting down/);
      // Every wait is full jitter within the firmware's bounds: attempt k (counted after
      // the draw) waits at most min(cap 120 s, base 1 s * 2^(k-1)) * stretch (at most 4).
      const waits = after.flatMap((l) => {
        const m = /device=e2e-dev-4 event=backoff delay_ms=(\d+) attempt=(\d+)/.exec(l);
        return m ? [{ delay: Number(m[1]), attempt: Number(m[2]) }] : [];
      });
      expect(waits.length).toBeGreaterThan(0);
      // The counter was reset by the stable connection before the restart.
      expect(waits[0]!.attempt).toBe(1);
      for (const w of waits) expect(w.delay).toBeLessThanOrEqual(Math.min(120_000, 1000 * 2 ** (w.attempt - 1)) * 4);
    } finally {
      await sim.stop();
    }
  }, 60_000);
});
