/**
 * The firmware's core, run by fleetwire-sim, against the real stack over WSS with a
 * private CA: API key → token → subprotocol auth, heartbeats into the device's state, commands
 * through the device service's API (POST /v1/devices/{id}/commands), reconnection after
 * a broker restart, and token refresh without losing the session.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDevice, startSim, startStack, until, type Answer, type Sim, type Stack } from './stack.js';

let stack: Stack;

beforeAll(async () => {
  // A 60 s device token with the expiry notice 55 s early: the refresh happens 5 s after connecting.
  stack = await startStack({ DEVICE_TOKEN_TTL_S: '60', BROKER_TOKEN_NOTICE_S: '55' });
}, 60_000);
afterAll(async () => {
  await stack.stop();
});

/** The device's state as the device service keeps it from heartbeats and presence (GET /v1/devices/{id}/state). */
async function stateOf(id: string): Promise<Answer['body']> {
  return (await stack.api('GET', `/v1/devices/${id}/state`, undefined, await stack.admin())).body;
}

/** POST /v1/devices/{id}/commands, as an operator would. */
async function command(id: string, body: Record<string, unknown>): Promise<Answer> {
  return stack.api('POST', `/v1/devices/${id}/commands`, body, await stack.admin());
}

/** A command's record (GET /v1/commands/{cid}). */
async function commandRecord(cid: string): Promise<Answer['body']> {
  return (await stack.api('GET', `/v1/commands/${cid}`, undefined, await stack.admin())).body;
}

/** The command a device got, as it is on the wire, to deliver it once more (a QoS 1 redelivery). */
async function wireCommand(cid: string): Promise<string> {
  const c = await commandRecord(cid);
  return JSON.stringify({ cid, name: c.name, args: c.args, expires_at: c.expires_at });
}

describe('a simulated device against the real stack', () => {
  it('trades its key for a token, connects over WSS with the private CA, and its heartbeats reach its state', async () => {
    const sim = await startDevice(stack, 'e2e-dev-1', ['--heartbeat-s', '5']);
    try {
      const conn = await stack.api('GET', '/v1/connections/e2e-dev-1', undefined, await stack.admin());
      expect(conn.body).toMatchObject({ client_id: 'e2e-dev-1', kind: 'device', transport: 'ws' });
      const state = await until(() => stateOf('e2e-dev-1'), (s) => s.last_seen !== null && s.online === true);
      expect(state).toMatchObject({ seq: expect.any(Number), uptime_s: expect.any(Number), fw: expect.any(String), boot_count: 0 });
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

  it('runs a command sent through the API once per cid, and refuses one that reaches it after its expiry', async () => {
    const first = await startDevice(stack, 'e2e-dev-2', ['--heartbeat-s', '30']);
    let sim: Sim = first;
    const service = await stack.serviceClient();
    try {
      const ping = await command('e2e-dev-2', { name: 'ping' });
      expect(ping.status).toBe(200);
      expect(ping.body).toMatchObject({ state: 'succeeded', ok: true, result: { pong: true } });
      const cid = ping.body.cid as string;
      // The same command delivered again: answered from the device's memory, not run twice; the record keeps its result.
      await service.publishAsync('devices/e2e-dev-2/cmd', await wireCommand(cid), { qos: 1 });
      await sim.waitFor(/stats devices=1 connected=1 .*cmds=1 cmd_dups=1/);
      expect(await commandRecord(cid)).toMatchObject({ state: 'succeeded', result: { pong: true }, delivered_at: expect.any(Number) });

      // Queued for the device while it is away; it comes back after expires_at and refuses it.
      expect(await sim.stop()).toBe(0);
      await until(async () => (await stack.redis.exists('fleetwire:conn:e2e-dev-2')) === 0, Boolean);
      const queued = await command('e2e-dev-2', { name: 'ping', timeout_ms: 500, queue_if_offline: true });
      expect(queued.status).toBe(202);
      await until(() => Date.now(), (now) => now > (queued.body.expires_at as number));
      sim = startSim(stack, ['--device-id', 'e2e-dev-2', '--telemetry-s', '0', '--heartbeat-s', '30'], { FLEETWIRE_API_KEY: first.apiKey });
      const refused = await until(() => commandRecord(queued.body.cid as string), (c) => (c.error as { code?: string } | undefined)?.code === 'CMD_EXPIRED');
      expect(refused).toMatchObject({ state: 'expired', ok: false, queued: true });
    } finally {
      await service.endAsync();
      await sim.stop();
    }
  }, 30_000);

  it('samples its sensors, and reboots once on a reboot command (a redelivery is answered from memory)', async () => {
    const sim = await startDevice(stack, 'e2e-dev-5', ['--heartbeat-s', '5']);
    const service = await stack.serviceClient();
    try {
      // Reboots are seen as uptime going backwards: let it beat past uptime 0 first.
      await until(() => stateOf('e2e-dev-5'), (s) => Number(s.uptime_s) >= 5);
      const sample = await command('e2e-dev-5', { name: 'sample_sensors' });
      expect(sample.body).toMatchObject({
        state: 'succeeded',
        ok: true,
        result: {
          at: expect.any(Number),
          readings: [{ name: 'temperature', value: expect.any(Number), unit: 'Cel' }, { name: 'humidity', value: expect.any(Number), unit: '%RH' }],
        },
      });

      const reboot = await command('e2e-dev-5', { name: 'reboot', timeout_ms: 60_000 });
      expect(reboot.body).toMatchObject({ state: 'succeeded', ok: true, result: { rebooting: true, delay_s: 0 } });
      await sim.waitFor(/device=e2e-dev-5 event=booted/);
      // After the reboot: back online, and the device service saw its uptime go backwards.
      const after = await until(() => stateOf('e2e-dev-5'), (s) => s.boot_count === 1 && s.online === true, 15_000);
      expect(after.last_reboot_at).toEqual(expect.any(Number));

      // The same command delivered again, answered from the command memory that survived the reboot.
      await service.publishAsync('devices/e2e-dev-5/cmd', await wireCommand(reboot.body.cid as string), { qos: 1 });
      await sim.waitFor(/stats devices=1 connected=1 .*cmd_dups=1/);
      await new Promise((r) => setTimeout(r, 1000));
      expect(sim.lines.filter((l) => /device=e2e-dev-5 event=rebooting/.test(l))).toHaveLength(1);
      expect(await commandRecord(reboot.body.cid as string)).toMatchObject({ state: 'succeeded', result: { rebooting: true } });
    } finally {
      await service.endAsync();
      await sim.stop();
    }
  }, 40_000);

  it('refreshes its token before expiry and reconnects without losing its session', async () => {
    const sim = await startDevice(stack, 'e2e-dev-3', ['--heartbeat-s', '30']);
    try {
      // The notice arrives 5 s in; the device refreshes (planned refreshes are at least 30 s
      // apart, so this one comes 30 s after the first token) and reconnects with the new token.
      const stats = await sim.waitFor(/stats devices=1 connected=1 .*tokens=2/, 45_000);
      expect(stats[0]).toContain('connect_failures=0');
      // The broker kept the MQTT session across the reconnect (clean_session=false).
      await sim.waitFor(/device=e2e-dev-3 event=connected session_present=true/, 5000);
      // Never cut off for an expired token (close 4002).
      expect(sim.lines.join('\n')).not.toMatch(/4002/);
      // A command sent now still arrives and is answered over the new connection.
      const after = await command('e2e-dev-3', { name: 'ping' });
      expect(after.body).toMatchObject({ state: 'succeeded', result: { pong: true } });
    } finally {
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
