/**
 * Commands to one device over HTTP, against the `fleetwire up` layout in this process:
 * real broker, real queue, devices as mqtt.js clients that answer like the firmware.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, createRedis, queues, startServices, type RunningServices } from '@fleetwire/common';
import { connectOptions } from '../../broker/test/helpers.js';
import { service as devices } from '../src/service.js';
import { REDIS_URL, startFleet, waitFor, type Fleet } from './helpers.js';

interface Cmd { cid: string; name: string; args: Record<string, unknown>; expires_at: number }
type Reply = { ok: true; result: unknown } | { ok: false; error: { code: string; message: string } };

let f: Fleet;
let admin: string;
let dataDir: string;

beforeAll(async () => {
  // The second device-service node of the cross-node test shares this data dir (signing keys).
  dataDir = await mkdtemp(join(tmpdir(), 'fw-commands-'));
  f = await startFleet({
    FLEETWIRE_DATA_DIR: dataDir, BROKER_CLUSTER: 'redis', COMMAND_ALLOW: 'locked=ping', COMMAND_DEFAULT_TIMEOUT_MS: '3000', COMMAND_MAX_TIMEOUT_MS: '5000', COMMAND_MAX_ARGS_BYTES: '256',
  });
  admin = await f.tokenFor('admin');
});
afterAll(async () => { await f?.close(); });

/**
 * A device that answers its commands as `reply` says (null: it takes the command and
 * stays silent). Clean session false and QoS 1, like the firmware.
 */
async function device(id: string, reply: (cmd: Cmd) => Reply | null, opts: { token?: string; type?: string } = {}): Promise<{ client: MqttClient; got: Cmd[]; token: string; answer(cmd: Cmd, r: Reply): Promise<void> }> {
  const token = opts.token ?? (await f.registerDevice(id, { type: opts.type ?? 'sensor' })).token;
  const got: Cmd[] = [];
  // Handlers before CONNECT: a persistent session's queued commands arrive right after CONNACK.
  const client = mqtt.connect(f.mqttUrl, connectOptions(token, id, { clean: false }));
  const answer = async (cmd: Cmd, r: Reply): Promise<void> => {
    await client.publishAsync(`devices/${id}/cmd/result`, JSON.stringify({ cid: cmd.cid, ...r }), { qos: 1 });
  };
  client.on('message', (topic, payload) => {
    if (topic !== `devices/${id}/cmd`) return;
    const cmd = JSON.parse(payload.toString()) as Cmd;
    got.push(cmd);
    const r = reply(cmd);
    if (r) void answer(cmd, r);
  });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  await client.subscribeAsync(`devices/${id}/cmd`, { qos: 1 });
  return { client, got, token, answer };
}

const pong = (): Reply => ({ ok: true, result: { pong: true } });
const send = (id: string, body: Record<string, unknown>, token = admin) => f.api('POST', `/v1/devices/${id}/commands`, { token, body });
const view = async (cid: string) => (await f.api('GET', `/v1/commands/${cid}`, { token: admin })).body;

describe('POST /v1/devices/{id}/commands', () => {
  it('sends the command to the connected device and answers 200 with its result; GET shows it succeeded', async () => {
    const d = await device('cmd-ok-1', pong);
    try {
      const res = await send('cmd-ok-1', { name: 'ping', timeout_ms: 5000 });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ cid: expect.any(String), state: 'succeeded', ok: true, result: { pong: true } });
      expect(d.got).toEqual([{ cid: res.body.cid, name: 'ping', args: {}, expires_at: expect.any(Number) }]);
      const v = await view(res.body.cid as string);
      expect(v).toMatchObject({
        cid: res.body.cid, device_id: 'cmd-ok-1', name: 'ping', args: {}, state: 'succeeded', ok: true, result: { pong: true },
        actor: expect.stringMatching(/^user:/), queued: false, finished_at: expect.any(Number),
      });
      expect(v.late).toBeUndefined();
    } finally {
      await d.client.endAsync();
    }
  });

  it('shows the command delivered once the device acknowledged it, before it answers', async () => {
    const d = await device('cmd-delivered-1', () => null);
    try {
      const answered = send('cmd-delivered-1', { name: 'report_config', timeout_ms: 5000 });
      const [cmd] = await waitFor(() => d.got, (g) => g.length === 1);
      const delivered = await waitFor(() => view(cmd!.cid), (v) => v.state === 'delivered');
      expect(delivered.delivered_at).toEqual(expect.any(Number));
      await d.answer(cmd!, { ok: true, result: { heartbeat_interval_s: 30 } });
      const res = await answered;
      expect(res.body).toMatchObject({ state: 'succeeded', result: { heartbeat_interval_s: 30 } });
      expect(await view(cmd!.cid)).toMatchObject({ state: 'succeeded', delivered_at: delivered.delivered_at });
    } finally {
      await d.client.endAsync();
    }
  });

  it('answers 504 with the cid when no result comes in time; a later result is recorded as late and answered to nobody', async () => {
    const d = await device('cmd-slow-1', () => null);
    try {
      const applied = await f.metric('fleetwire_device_command_results_total', 'outcome="applied"');
      const res = await send('cmd-slow-1', { name: 'sample_sensors', timeout_ms: 300 });
      expect(res.status).toBe(504);
      expect(res.body.error!.code).toBe('COMMAND_TIMEOUT');
      const cid = res.body.cid as string;
      expect(res.body.error!.message).toContain(`/v1/commands/${cid}`);
      expect(await view(cid)).toMatchObject({ state: 'timed_out', finished_at: expect.any(Number) });
      expect(await f.metric('fleetwire_device_command_waiting_requests')).toBe(0);

      await d.answer(d.got[0]!, { ok: true, result: { readings: { temperature_c: 21.5 } } });
      const late = await waitFor(() => view(cid), (v) => v.state === 'succeeded');
      expect(late).toMatchObject({ ok: true, late: true, result: { readings: { temperature_c: 21.5 } } });
      expect(await f.metric('fleetwire_device_command_results_total', 'outcome="applied"')).toBe(applied + 1);
    } finally {
      await d.client.endAsync();
    }
  });

  it('records the device\'s own CMD_EXPIRED as expired, and its other refusals as failed', async () => {
    const d = await device('cmd-refuses-1', (cmd) => cmd.name === 'ping'
      ? { ok: false, error: { code: 'CMD_EXPIRED', message: `command expired at ${cmd.expires_at}` } }
      : { ok: false, error: { code: 'CMD_UNKNOWN', message: `unknown command "${cmd.name}"` } });
    try {
      const expired = await send('cmd-refuses-1', { name: 'ping' });
      expect(expired.status).toBe(200);
      expect(expired.body).toMatchObject({ state: 'expired', ok: false, error: { code: 'CMD_EXPIRED' } });
      const unknown = await send('cmd-refuses-1', { name: 'self_destruct' });
      expect(unknown.body).toMatchObject({ state: 'failed', ok: false, error: { code: 'CMD_UNKNOWN' } });
      expect(await view(unknown.body.cid as string)).toMatchObject({ state: 'failed', error: { code: 'CMD_UNKNOWN', message: 'unknown command "self_destruct"' } });
    } finally {
      await d.client.endAsync();
    }
  });

  it('refuses an offline device with 409 DEVICE_OFFLINE and records nothing', async () => {
    await f.registerDevice('cmd-offline-1');
    const before = await f.metric('fleetwire_device_commands_total', 'outcome="refused_offline"');
    const res = await send('cmd-offline-1', { name: 'ping' });
    expect(res.status).toBe(409);
    expect(res.body.error).toMatchObject({ code: 'DEVICE_OFFLINE', message: expect.stringContaining('queue_if_offline') });
    expect(await f.metric('fleetwire_device_commands_total', 'outcome="refused_offline"')).toBe(before + 1);
    const audit = await f.api('GET', '/v1/audit?type=command.sent&subject=device:cmd-offline-1', { token: admin });
    expect(audit.body.records).toEqual([]);
  });

  it('queues for an offline device (202); the device reconnects with its session, gets it and the result is recorded', async () => {
    const first = await device('cmd-queued-1', () => null);
    await first.client.endAsync(); // its session (and subscription) stays with the broker
    await waitFor(() => f.redis.exists('fleetwire:conn:cmd-queued-1'), (n) => n === 0);

    const res = await send('cmd-queued-1', { name: 'set_heartbeat_interval', args: { seconds: 15 }, queue_if_offline: true });
    expect(res.status).toBe(202);
    const cid = res.body.cid as string;
    // Without timeout_ms a queued command waits up to COMMAND_QUEUED_TTL_S (default a day).
    expect(res.body).toEqual({ cid, state: 'sent', expires_at: expect.any(Number) });
    expect(res.body.expires_at as number).toBeGreaterThan(Date.now() + 86_000_000);
    expect(await view(cid)).toMatchObject({ state: 'sent', queued: true });

    const again = await device('cmd-queued-1', (cmd) => ({ ok: true, result: { interval_s: cmd.args.seconds } }), { token: first.token });
    try {
      // The PUBACK may reach the broker after the result was recorded: delivered_at is set either way.
      const done = await waitFor(() => view(cid), (v) => v.state === 'succeeded' && v.delivered_at !== undefined);
      expect(done).toMatchObject({ ok: true, result: { interval_s: 15 }, queued: true });
      expect(again.got.map((c) => c.cid)).toEqual([cid]);
    } finally {
      await again.client.endAsync();
    }
  });

  it('gives up a queued command that no result answered by its expires_at (expired)', async () => {
    await f.registerDevice('cmd-never-1');
    const res = await send('cmd-never-1', { name: 'ping', timeout_ms: 200, queue_if_offline: true });
    expect(res.status).toBe(202);
    expect(res.body.expires_at as number).toBeLessThanOrEqual(Date.now() + 200);
    // The sweep waits a grace of 3 s past expires_at, then runs every second.
    const v = await waitFor(() => view(res.body.cid as string), (x) => x.state === 'expired', 6000);
    expect(v.ok).toBeUndefined();
    expect(await f.redis.zscore('fleetwire:cmds-pending', res.body.cid as string)).toBeNull();
  });

  it('records a result once: a repeated one, one for another device\'s command and one for an unknown cid change nothing', async () => {
    const d = await device('cmd-dup-1', pong);
    const other = await device('cmd-dup-2', () => null);
    const jobs = new Queue('cmd-results', { connection: createRedis(REDIS_URL, { name: 'test-queue', maxRetriesPerRequest: null }), prefix: queues.prefix });
    try {
      const res = await send('cmd-dup-1', { name: 'ping' });
      const cid = res.body.cid as string;
      expect(res.body.state).toBe('succeeded');
      const count = (o: string) => f.metric('fleetwire_device_command_results_total', `outcome="${o}"`);
      const [dups, others, unknowns] = [await count('duplicate'), await count('other_device'), await count('unknown')];

      // The queue is at-least-once: the same result can come again as another job.
      const envelope = (deviceId: string, payload: Record<string, unknown>) => ({
        cid: payload.cid, device_id: deviceId, topic_class: 'cmd-result', payload, received_at: Date.now(), node: 'test',
      });
      await jobs.add('cmd-result', envelope('cmd-dup-1', { cid, ok: false, error: { code: 'CMD_FAILED', message: 'second answer' } }), { jobId: 'again-1' });
      await other.answer({ cid } as Cmd, { ok: false, error: { code: 'CMD_FAILED', message: 'not mine' } });
      await other.answer({ cid: 'no-such-command' } as Cmd, pong());
      await waitFor(async () => [await count('duplicate'), await count('other_device'), await count('unknown')], (n) => n[0] === dups + 1 && n[1] === others + 1 && n[2] === unknowns + 1);

      expect(await view(cid)).toMatchObject({ state: 'succeeded', ok: true, result: { pong: true } });
      expect(f.logs.join('')).toContain('dropping the result of an unknown command');
    } finally {
      await jobs.close();
      await Promise.all([d.client.endAsync(), other.client.endAsync()]);
    }
  });

  it('works when the request is on one node and the result is consumed on another', async () => {
    // Node B serves the API and consumes no results (COMMAND_RESULTS_CONCURRENCY=0): the result is
    // consumed by this fleet's device service, and B hears of it through Redis pub/sub.
    const b: RunningServices = await startServices([devices], {
      REDIS_URL, PORT: '0', HOST: '127.0.0.1', FLEETWIRE_DATA_DIR: dataDir, DEVICE_BROKER_URL: f.mqttUrl, COMMAND_RESULTS_CONCURRENCY: '0',
    }, { version: 'test', log: createLogger({ level: 'silent', name: 'node-b' }) });
    const d = await device('cmd-cross-1', pong);
    try {
      const consumedHere = await f.metric('fleetwire_queue_jobs_total', 'queue="cmd-results",outcome="completed"');
      const res = await fetch(`http://127.0.0.1:${b.port}/v1/devices/cmd-cross-1/commands`, {
        method: 'POST', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'ping' }),
      });
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ state: 'succeeded', result: { pong: true } });
      expect(await f.metric('fleetwire_queue_jobs_total', 'queue="cmd-results",outcome="completed"')).toBe(consumedHere + 1);
      expect(await b.deps.metricsRegistry.getSingleMetricAsString('fleetwire_device_command_wait_seconds')).toContain('fleetwire_device_command_wait_seconds_count 1');
    } finally {
      await d.client.endAsync();
      await b.stop();
    }
  });

  it('is for admins, operators and services: a viewer gets 403 but may read a command', async () => {
    const d = await device('cmd-roles-1', pong);
    try {
      const viewer = await f.tokenFor('viewer');
      const refused = await send('cmd-roles-1', { name: 'ping' }, viewer);
      expect(refused.status).toBe(403);
      expect(refused.body.error!.code).toBe('AUTH_FORBIDDEN');
      expect(d.got).toEqual([]);
      const sent = await send('cmd-roles-1', { name: 'ping' }, await f.tokenFor('operator'));
      expect(sent.status).toBe(200);
      const service = (await f.api('POST', '/v1/service-tokens', { token: admin, body: { name: 'backend', ttl_s: 600 } })).body.token as string;
      const byService = await send('cmd-roles-1', { name: 'ping' }, service);
      expect(byService.status).toBe(200);
      expect(await view(byService.body.cid as string)).toMatchObject({ actor: 'service:backend' });
      const read = await f.api('GET', `/v1/commands/${sent.body.cid as string}`, { token: viewer });
      expect(read.body).toMatchObject({ state: 'succeeded', actor: expect.stringMatching(/^user:/) });
      expect((await f.api('GET', '/v1/commands/no-such-cid', { token: viewer })).status).toBe(404);
      expect((await f.api('POST', '/v1/devices/cmd-roles-1/commands', { body: { name: 'ping' } })).status).toBe(401);
    } finally {
      await d.client.endAsync();
    }
  });

  it('refuses bad input with 400 naming the field, and sends and records nothing', async () => {
    const d = await device('cmd-bad-1', pong, { type: 'locked' }); // COMMAND_ALLOW: locked=ping
    try {
      const cases: Array<[Record<string, unknown>, string]> = [
        [{ name: 'reboot' }, 'name "reboot" is not allowed for devices of type locked'],
        [{ name: 'ping', args: { blob: 'x'.repeat(300) } }, 'args is 311 bytes as JSON; at most 256'],
        [{ name: 'ping', timeout_ms: 5001 }, 'timeout_ms'],
        [{ name: 'x'.repeat(65) }, 'name'],
        [{ name: 'ping', args: [1] }, 'args'],
        [{ name: 'ping', queue_if_ofline: true }, 'queue_if_ofline is not a field'],
        [{ args: {} }, 'name'],
      ];
      for (const [body, field] of cases) {
        const res = await send('cmd-bad-1', body);
        expect(res.status, JSON.stringify(body)).toBe(400);
        expect(res.body.error).toMatchObject({ code: 'VALIDATION_FAILED', message: expect.stringContaining(field) });
      }
      expect((await send('no-such-device', { name: 'ping' })).status).toBe(404);
      const audit = await f.api('GET', '/v1/audit?type=command.sent&subject=device:cmd-bad-1', { token: admin });
      expect(audit.body.records).toEqual([]);
      // Allowed for its type; commands reach the device in order, so any refused one would be here before it.
      expect((await send('cmd-bad-1', { name: 'ping' })).status).toBe(200);
      expect(d.got.map((c) => c.name)).toEqual(['ping']);
    } finally {
      await d.client.endAsync();
    }
  });

  it('audits every command with its actor', async () => {
    const d = await device('cmd-audit-1', pong);
    try {
      const operator = await f.tokenFor('operator');
      const me = (await f.api('GET', '/v1/auth/me', { token: operator })).body;
      const res = await send('cmd-audit-1', { name: 'ping' }, operator);
      const audit = await f.api('GET', '/v1/audit?type=command.sent&subject=device:cmd-audit-1', { token: admin });
      expect(audit.body.records).toEqual([expect.objectContaining({
        type: 'command.sent', actor: `user:${me.id as string}`, subject: 'device:cmd-audit-1', outcome: 'sent', detail: { cid: res.body.cid, name: 'ping' },
      })]);
    } finally {
      await d.client.endAsync();
    }
  });
});
