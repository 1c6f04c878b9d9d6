/**
 * Fleet commands (POST /v1/commands): selection, pacing, progress per state, refusals, a
 * batch that survives the drain of the node sending it, and `fleetwire devices command`.
 */
import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, redisKeys, startServices } from '@fleetwire/common';
import { connectOptions } from '../../broker/test/helpers.js';
import type { BatchView } from '../src/command-batches.js';
import { CommandRecords } from '../src/command-results.js';
import { service as devices } from '../src/service.js';
import { REDIS_URL, startFleet, waitFor, type Fleet } from './helpers.js';

interface Cmd { cid: string; name: string; args: Record<string, unknown>; expires_at: number }
type Reply = { ok: true; result: unknown } | { ok: false; error: { code: string; message: string } };

const CLI = fileURLToPath(new URL('../../cli/dist/main.js', import.meta.url));
let f: Fleet;
let admin: string;
let dataDir: string;
const clients: MqttClient[] = [];

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'fw-batches-'));
  f = await startFleet({ FLEETWIRE_DATA_DIR: dataDir, COMMAND_ALLOW: 'locked=ping', FLEET_COMMAND_MAX_RATE_PER_S: '50' });
  admin = await f.tokenFor('admin');
});
afterAll(async () => {
  await Promise.all(clients.map((c) => c.endAsync()));
  await f?.close();
});

/** A connected device (persistent session, QoS 1) answering as `reply` says; null = silent. */
async function device(id: string, reply: (cmd: Cmd) => Reply | null = () => ({ ok: true, result: { pong: true } }), opts: { token?: string; type?: string } = {}) {
  const token = opts.token ?? (await f.registerDevice(id, { type: opts.type ?? 'sensor' })).token;
  const got: Cmd[] = [];
  const client = mqtt.connect(f.mqttUrl, connectOptions(token, id, { clean: false }));
  clients.push(client);
  client.on('message', (topic, payload) => {
    if (topic !== `devices/${id}/cmd`) return;
    const cmd = JSON.parse(payload.toString()) as Cmd;
    got.push(cmd);
    const r = reply(cmd);
    if (r) void client.publishAsync(`devices/${id}/cmd/result`, JSON.stringify({ cid: cmd.cid, ...r }), { qos: 1 });
  });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  await client.subscribeAsync(`devices/${id}/cmd`, { qos: 1 });
  return { client, got, token };
}

/** What registration (auth service) or heartbeats (fw) put in a listing index: the id, scored by registration time. */
async function index(kind: 'type' | 'tag' | 'fw', value: string, ids: string[]): Promise<void> {
  for (const id of ids) await f.redis.zadd(redisKeys.deviceIndex(kind, value), Number(await f.redis.hget(redisKeys.device(id), 'created_at')), id);
}

const createBatch = (body: Record<string, unknown>, token = admin) => f.api('POST', '/v1/commands', { token, body });
const batch = async (id: string) => (await f.api('GET', `/v1/commands/batches/${id}`, { token: admin })).body as unknown as BatchView;
const command = async (cid: string) => (await f.api('GET', `/v1/commands/${cid}`, { token: admin })).body;

describe('POST /v1/commands (fleet commands)', () => {
  it('sends to every selected device at rate_per_s, counts each state, and is done when every command ended', async () => {
    const online = await Promise.all(['fl-ok-1', 'fl-ok-2', 'fl-ok-3', 'fl-ok-4'].map((id) => device(id)));
    const failing = await device('fl-fail-1', () => ({ ok: false, error: { code: 'CMD_INVALID_ARGS', message: 'args.seconds must be a positive integer' } }));
    const away = await device('fl-away-1', () => null);
    await away.client.endAsync(); // offline, its session kept: its command waits there
    await waitFor(() => f.redis.exists(redisKeys.connection('fl-away-1')), (n) => n === 0);

    const ids = ['fl-ok-1', 'fl-ok-2', 'fl-away-1', 'fl-ok-3', 'fl-fail-1', 'fl-ok-4'];
    const res = await createBatch({ selector: { ids }, name: 'set_heartbeat_interval', args: { seconds: 20 }, rate_per_s: 5 });
    expect(res.status).toBe(202);
    expect(res.body).toEqual({ batch: expect.any(String), total: 6, skipped: 0 });
    const id = res.body.batch as string;

    const waiting = await waitFor(() => batch(id), (b) => b.counts.succeeded === 4 && b.counts.failed === 1 && b.sending === false);
    expect(waiting).toMatchObject({
      batch: id, name: 'set_heartbeat_interval', args: { seconds: 20 }, selector: { ids }, total: 6, dispatched: 6,
      counts: { sent: 1, delivered: 0, succeeded: 4, failed: 1, expired: 0, timed_out: 0 }, done: false, sending: false,
      actor: expect.stringMatching(/^user:/), rate_per_s: 5, created_at: expect.any(Number),
    });
    // Command i of the batch is <batch>:<i>, for the i-th id; 5 a second: the 6th is sent at least 1 s after the 1st.
    const cmds = await Promise.all(ids.map((_, i) => command(`${id}:${i}`)));
    expect(cmds.map((c) => c.device_id)).toEqual(ids);
    expect(cmds.every((c) => c.batch === id)).toBe(true);
    expect((cmds[5]!.created_at as number) - (cmds[0]!.created_at as number)).toBeGreaterThanOrEqual(950);
    expect(cmds[2]).toMatchObject({ state: 'sent', queued: true });
    expect(cmds[4]).toMatchObject({ state: 'failed', error: { code: 'CMD_INVALID_ARGS' } });

    // The offline device comes back and gets its command from its session.
    const back = await device('fl-away-1', () => ({ ok: true, result: { interval_s: 20 } }), { token: away.token });
    const done = await waitFor(() => batch(id), (b) => b.done === true);
    expect(done.counts).toEqual({ sent: 0, delivered: 0, succeeded: 5, failed: 1, expired: 0, timed_out: 0 });
    expect(back.got.map((c) => c.cid)).toEqual([`${id}:2`]);
    for (const d of [...online, failing]) expect(d.got).toHaveLength(1);

    const audit = await f.api('GET', `/v1/audit?type=command-batch.created&subject=batch:${id}`, { token: admin });
    expect(audit.body.records).toEqual([expect.objectContaining({
      actor: expect.stringMatching(/^user:/), detail: { name: 'set_heartbeat_interval', selector: 'ids', total: 6, rate_per_s: 5 },
    })]);
  });

  it('selects by type, tag and firmware through the listing indexes, skipping revoked devices', async () => {
    for (const id of ['fl-sel-1', 'fl-sel-2', 'fl-sel-3', 'fl-sel-gone']) await f.registerDevice(id, { type: 'valve' });
    await f.api('DELETE', '/v1/devices/fl-sel-gone', { token: admin });
    // The auth service (type, tag) and the heartbeat part (fw) keep these indexes; written here as they would be.
    await index('type', 'valve', ['fl-sel-1', 'fl-sel-2', 'fl-sel-3', 'fl-sel-gone']);
    await index('tag', 'greenhouse', ['fl-sel-2', 'fl-sel-3']);
    await index('fw', '2.1.0', ['fl-sel-3']);

    const targets = async (selector: Record<string, string>): Promise<{ total: number; skipped: number; devices: string[] }> => {
      const res = await createBatch({ selector, name: 'ping', timeout_ms: 60_000 });
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      const { batch: id, total, skipped } = res.body as { batch: string; total: number; skipped: number };
      await waitFor(() => batch(id), (b) => b.dispatched === total);
      const found = await Promise.all(Array.from({ length: total }, (_, i) => command(`${id}:${i}`)));
      return { total, skipped, devices: found.map((c) => c.device_id as string) };
    };
    expect(await targets({ type: 'valve' })).toEqual({ total: 3, skipped: 1, devices: ['fl-sel-1', 'fl-sel-2', 'fl-sel-3'] });
    expect(await targets({ tag: 'greenhouse' })).toEqual({ total: 2, skipped: 0, devices: ['fl-sel-2', 'fl-sel-3'] });
    expect(await targets({ firmware: '2.1.0' })).toEqual({ total: 1, skipped: 0, devices: ['fl-sel-3'] });
  });

  it('refuses a bad request with 400 naming the field, and records nothing', async () => {
    await f.registerDevice('fl-bad-1', { type: 'locked' }); // COMMAND_ALLOW: locked=ping
    await f.registerDevice('fl-bad-2');
    await f.api('DELETE', '/v1/devices/fl-bad-2', { token: admin });
    const batchesBefore = (await f.redis.keys('fleetwire:cmd-batch:*')).length;
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ selector: {}, name: 'ping' }, 'selector takes exactly one of ids, type, tag, firmware'],
      [{ selector: { type: 'a', tag: 'b' }, name: 'ping' }, 'selector takes exactly one'],
      [{ selector: { group: 'x' }, name: 'ping' }, 'selector.group is not a field'],
      [{ selector: { ids: ['fl-bad-1'] }, name: 'reboot' }, 'name "reboot" is not allowed for devices of type locked'],
      [{ selector: { ids: ['fl-bad-1', 'fl-nobody'] }, name: 'ping' }, 'selector.ids names devices that are not registered or are revoked: fl-nobody'],
      [{ selector: { ids: ['fl-bad-2'] }, name: 'ping' }, 'fl-bad-2'],
      [{ selector: { ids: ['fl-bad-1', 'fl-bad-1'] }, name: 'ping' }, 'selector/ids'],
      [{ selector: { ids: Array.from({ length: 10_001 }, (_, i) => `dev-${i}`) }, name: 'ping' }, 'selector/ids must NOT have more than 10000 items'],
      [{ selector: { type: 'no-such-type' }, name: 'ping' }, 'selector.type matches no active device'],
      [{ selector: { ids: ['fl-bad-1'] }, name: 'ping', rate_per_s: 51 }, 'rate_per_s'],
      [{ selector: { ids: ['fl-bad-1'] }, name: 'ping', timeout_ms: 10_000_000 }, 'timeout_ms'],
      [{ selector: { ids: ['fl-bad-1'] }, name: 'ping', args: { x: 'y'.repeat(5000) } }, 'args is'],
      [{ selector: { ids: ['fl-bad-1'] }, name: 'ping', rate: 5 }, 'rate is not a field'],
    ];
    for (const [body, message] of cases) {
      const res = await createBatch(body);
      expect(res.status, JSON.stringify(body).slice(0, 100)).toBe(400);
      expect(res.body.error).toMatchObject({ code: 'VALIDATION_FAILED', message: expect.stringContaining(message) });
    }
    expect((await f.redis.keys('fleetwire:cmd-batch:*')).length).toBe(batchesBefore);
  });

  it('is sent by admins, operators and services; a viewer gets 403 but may follow a batch', async () => {
    await f.registerDevice('fl-role-1');
    const viewer = await f.tokenFor('viewer');
    expect((await createBatch({ selector: { ids: ['fl-role-1'] }, name: 'ping' }, viewer)).status).toBe(403);
    const res = await createBatch({ selector: { ids: ['fl-role-1'] }, name: 'ping' }, await f.tokenFor('operator'));
    expect(res.status).toBe(202);
    const read = await f.api('GET', `/v1/commands/batches/${res.body.batch as string}`, { token: viewer });
    expect(read.body).toMatchObject({ total: 1, actor: expect.stringMatching(/^user:/) });
    expect((await f.api('GET', '/v1/commands/batches/00000000-0000-4000-8000-000000000000', { token: viewer })).status).toBe(404);
  });

  it('goes on from where it stopped when the node sending it drains: another node sends the rest, each device gets its command once', async () => {
    const node2 = await startServices([devices], {
      REDIS_URL, PORT: '0', HOST: '127.0.0.1', FLEETWIRE_DATA_DIR: dataDir, DEVICE_BROKER_URL: f.mqttUrl, FLEET_COMMAND_MAX_RATE_PER_S: '50',
    }, { version: 'test', log: createLogger({ level: 'silent', name: 'node-2' }) });
    const ids = ['fl-move-1', 'fl-move-2', 'fl-move-3', 'fl-move-4', 'fl-move-5', 'fl-move-6'];
    const fleet = await Promise.all(ids.map((id) => device(id)));
    let stopped = false;
    try {
      const res = await fetch(`http://127.0.0.1:${node2.port}/v1/commands`, {
        method: 'POST', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
        body: JSON.stringify({ selector: { ids }, name: 'ping', rate_per_s: 2 }),
      });
      expect(res.status).toBe(202);
      const { batch: id } = await res.json() as { batch: string };
      await waitFor(() => batch(id), (b) => b.dispatched >= 2);
      await node2.stop(); // drains: node 2 stops sending and gives the batch back
      stopped = true;
      const paused = await batch(id);
      expect(paused.dispatched).toBeLessThan(6);

      const done = await waitFor(() => batch(id), (b) => b.done === true, 8000);
      expect(done.counts).toMatchObject({ succeeded: 6 });
      expect(fleet.map((d) => d.got.map((c) => c.cid))).toEqual(ids.map((_, i) => [`${id}:${i}`]));
      expect(f.logs.join('')).toContain('resuming a fleet command whose sending node stopped');
    } finally {
      if (!stopped) await node2.stop();
    }
  });
});

describe('a fleet command whose sending node died', () => {
  it('is taken over once its lease ran out: the command recorded but not published is sent with its cid and expiry, then the rest', async () => {
    const ids = ['fl-dead-1', 'fl-dead-2', 'fl-dead-3'];
    const fleet = await Promise.all(ids.map((id) => device(id)));
    // What a node leaves when it dies between recording command 1 and publishing it: command 0
    // sent and answered, command 1 recorded (state sent), dispatched 1, its lease run out.
    const id = '11111111-2222-4333-8444-555555555555';
    const records = new CommandRecords(f.redis, 3600);
    const recorded = { deviceId: ids[1]!, name: 'ping', args: {}, actor: 'user:someone', expiresAt: Date.now() + 60_000, queued: false, batch: id };
    await f.redis.hset(redisKeys.commandBatch(id), {
      name: 'ping', args: '{}', selector: JSON.stringify({ ids }), actor: 'user:someone', created_at: Date.now(), total: 3, dispatched: 1,
      rate_per_s: 10, sender: 'dead-node', sent: 0, delivered: 0, succeeded: 0, failed: 0, expired: 0, timed_out: 0,
    });
    await f.redis.rpush(redisKeys.commandBatchTargets(id), ...ids);
    await records.create({ ...recorded, cid: `${id}:0`, deviceId: ids[0]! });
    await records.applyResult(ids[0]!, { cid: `${id}:0`, ok: true, result: { pong: true } });
    await records.create({ ...recorded, cid: `${id}:1` });
    await f.redis.zadd(redisKeys.commandBatchesSending, Date.now() - 1, id);

    const done = await waitFor(() => batch(id), (b) => b.done === true);
    expect(done).toMatchObject({ dispatched: 3, sending: false, counts: { succeeded: 3, sent: 0, delivered: 0 } });
    expect(fleet[0]!.got).toEqual([]); // sent before the node died
    expect(fleet[1]!.got).toEqual([{ cid: `${id}:1`, name: 'ping', args: {}, expires_at: recorded.expiresAt }]);
    expect(fleet[2]!.got.map((c) => c.cid)).toEqual([`${id}:2`]);
  });
});

describe('fleetwire devices command', () => {
  /** `terminal`: under script(1), so the CLI's stdout is a TTY as in an operator's shell. */
  function cli(args: string[], terminal = false): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const argv = [process.execPath, CLI, 'devices', 'command', ...args];
    const [file, fileArgs] = terminal ? ['script', ['-qec', argv.map((a) => `'${a}'`).join(' '), '/dev/null']] : [argv[0]!, argv.slice(1)];
    return new Promise((resolve) => {
      const child = spawn(file, fileArgs, {
        env: { PATH: process.env.PATH, REDIS_URL, FLEETWIRE_URL: f.url, FLEETWIRE_TOKEN: admin, LOG_LEVEL: 'warn' },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  it('shows a line per change of progress and exits 0 when every command succeeded, 1 otherwise', async () => {
    await Promise.all(['cli-dev-1', 'cli-dev-2', 'cli-dev-3'].map((id) => device(id)));
    await device('cli-dev-4', (cmd) => ({ ok: false, error: { code: 'CMD_FAILED', message: `cannot ${cmd.name}` } }));

    const ok = await cli(['--name', 'ping', '--ids', 'cli-dev-1,cli-dev-2,cli-dev-3', '--rate', '20']);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    const lines = ok.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^fleet command [0-9a-f-]{36}: ping to 3 devices$/);
    expect(lines.at(-2)).toBe('[####################] 3/3 succeeded 3 failed 0 expired 0 timed_out 0 sent 0 delivered 0');
    expect(lines.at(-1)).toContain('all succeeded');
    expect(new Set(lines).size).toBe(lines.length); // a line per change, never the same twice

    const mixed = await cli(['--name', 'ping', '--ids', 'cli-dev-1,cli-dev-4', '--args', '{"quick":true}']);
    expect(mixed.code).toBe(1);
    expect(mixed.stdout).toContain('2/2 succeeded 1 failed 1');
    expect(mixed.stdout).toContain('not all succeeded: failed 1, expired 0, timed_out 0');
  });

  it('redraws one progress line on a terminal', async () => {
    await Promise.all(['cli-tty-1', 'cli-tty-2'].map((id) => device(id)));
    const run = await cli(['--name', 'ping', '--ids', 'cli-tty-1,cli-tty-2'], true);
    expect(run.code).toBe(0);
    const lines = run.stdout.split('\r\n'); // the terminal turns each \n into \r\n
    expect(lines[0]).toMatch(/^fleet command [0-9a-f-]{36}: ping to 2 devices$/);
    // Every state of the bar is drawn over the previous one (carriage return, erase line), on one line.
    const redraw = '\r\x1b[2K';
    expect(lines[1]!.startsWith(redraw)).toBe(true);
    expect(lines[1]!.split(redraw).slice(1).every((bar) => /^\[[#-]{20}\] \d+\/2 succeeded/.test(bar))).toBe(true);
    expect(lines[1]!.endsWith(`${redraw}[####################] 2/2 succeeded 2 failed 0 expired 0 timed_out 0 sent 0 delivered 0`)).toBe(true);
    expect(lines[2]).toContain('all succeeded');
  });

  it('says what is wrong with a refused request and exits 1', async () => {
    const res = await cli(['--name', 'ping', '--type', 'no-such-type']);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('VALIDATION_FAILED: selector.type matches no active device');
    const two = await cli(['--name', 'ping', '--type', 'a', '--tag', 'b']);
    expect(two.stderr).toContain('give exactly one of --ids, --type, --tag, --firmware');
  });
});
