/**
 * Presence with two real broker nodes in cluster mode on this file's Redis: node A is the
 * fleet's own (in this process, where the device service's broker link connects), node B a
 * broker process (broker/dist/main.js) that verifies tokens against the fleet's JWKS.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import MQEmitterRedis from 'mqemitter-redis';
import { redisKeys } from '@fleetwire/common';
import { closeOf, connect, REDIS_URL, startFleet, waitFor, type Answer, type Fleet } from './helpers.js';
import { spawnBroker, stop, type BrokerProcess } from '../../broker/test/processes.js';

let f: Fleet;
let b: BrokerProcess;
let admin: string;
/** The cluster's fan-out, as every broker node uses it (broker/src/cluster.ts). */
let fanOut: ReturnType<typeof MQEmitterRedis>;

beforeAll(async () => {
  f = await startFleet({ BROKER_CLUSTER: 'redis', BROKER_NODE_ID: 'node-a' });
  b = await spawnBroker({
    BROKER_CLUSTER: 'redis', BROKER_NODE_ID: 'node-b', JWKS_URL: `${f.url}/.well-known/jwks.json`,
    FLEETWIRE_DATA_DIR: await mkdtemp(join(tmpdir(), 'fw-presence-b-')),
  });
  admin = await f.tokenFor('admin');
  fanOut = MQEmitterRedis({ connectionString: REDIS_URL });
}, 20_000);
afterAll(async () => {
  await new Promise<void>((resolve) => (fanOut ? fanOut.close(() => resolve()) : resolve()));
  if (b) await stop(b);
  await f?.close();
});

const state = (id: string): Promise<Answer> => f.api('GET', `/v1/devices/${id}/state`, { token: admin });
const presenceEvents = (outcome: string): Promise<number> => f.metric('fleetwire_device_presence_events_total', `outcome="${outcome}"`);
type Presence = { seq: number; node: string; at: number };

/**
 * Puts a message on the cluster's fan-out exactly as a broker node publishes one: node A
 * delivers it to the device service's subscription like any other node's. Used for what a
 * test cannot make a real node send on cue: a late copy of an event, a broken payload.
 */
function fromAnotherNode(topic: string, payload: string): Promise<void> {
  return new Promise((resolve, reject) => fanOut.emit({
    cmd: 'publish', topic, payload: Buffer.from(payload), qos: 1, retain: false, dup: false,
    brokerId: `test-node-${Math.random().toString(36).slice(2)}`, brokerCounter: 1,
  }, (err) => (err ? reject(err) : resolve())));
}

describe('presence from the broker', () => {
  it('follows real connects and disconnects: online, the online index, the presence seq', async () => {
    const dev = await f.connectDevice('pr-basic');
    const on = (await waitFor(() => state('pr-basic'), (s) => s.body.online === true)).body as { presence: Presence };
    expect(on.presence.node).toBe('node-a');
    const registeredAt = Number(await f.redis.zscore(redisKeys.devices, 'pr-basic'));
    expect(Number(await f.redis.zscore(redisKeys.deviceIndexOnline, 'pr-basic'))).toBe(registeredAt);

    await dev.endAsync();
    const off = (await waitFor(() => state('pr-basic'), (s) => s.body.online === false)).body as { presence: Presence };
    expect(off.presence.seq).toBe(on.presence.seq + 1);
    expect(off.presence.at).toBeGreaterThanOrEqual(on.presence.at);
    expect(await f.redis.zscore(redisKeys.deviceIndexOnline, 'pr-basic')).toBeNull();
  });

  it('a device that moves to node A while node B stalls stays online when node B wakes up and drops its old connection', async () => {
    const { token } = await f.registerDevice('pr-move');
    const onB = await connect(b.url, token, 'pr-move', { clean: false });
    const oldClosed = closeOf(onB);
    onB.on('error', () => undefined);
    const first = (await waitFor(() => state('pr-move'), (s) => (s.body.presence as Presence | null)?.node === 'node-b')).body as { presence: Presence };

    // Node B freezes (as under load or in a long GC pause) while the device reconnects to node A.
    process.kill(b.child.pid!, 'SIGSTOP');
    let onA;
    try {
      onA = await connect(f.mqttUrl, token, 'pr-move', { clean: false });
      const moved = (await waitFor(() => state('pr-move'), (s) => (s.body.presence as Presence | null)?.node === 'node-a')).body as { presence: Presence };
      expect(moved).toMatchObject({ online: true });
      expect(moved.presence.seq).toBeGreaterThan(first.presence.seq);
    } finally {
      process.kill(b.child.pid!, 'SIGCONT');
    }
    // Node B wakes up and ends its copy of the connection: the late disconnect.
    expect((await oldClosed).code).toBe(4007);
    // A barrier: node B's events reach the service in order, so once a later one from node B is
    // applied, anything node B said about pr-move before it has been applied too.
    const barrier = await connect(b.url, (await f.registerDevice('pr-barrier')).token, 'pr-barrier', { clean: false });
    await waitFor(() => state('pr-barrier'), (s) => s.body.online === true);
    const after = (await state('pr-move')).body as { online: boolean; presence: Presence };
    expect(after).toMatchObject({ online: true, presence: { node: 'node-a' } });
    await Promise.all([onA.endAsync(), barrier.endAsync()]);
  });

  it('a late disconnect from another node does not mark a reconnected device offline', async () => {
    // Node B's real offline event for the device, as it goes out on the fan-out.
    const fromB: Buffer[] = [];
    const listener = (m: { payload: Buffer }, done: () => void): void => { fromB.push(m.payload); done(); };
    await new Promise<void>((resolve) => fanOut.on('fleet/presence/pr-late', listener as never, () => resolve()));

    const { token } = await f.registerDevice('pr-late');
    const onB = await connect(b.url, token, 'pr-late', { clean: false });
    await waitFor(() => state('pr-late'), (s) => s.body.online === true);
    await onB.endAsync();
    await waitFor(() => state('pr-late'), (s) => s.body.online === false);
    const offline = fromB.map((p) => JSON.parse(p.toString()) as Presence & { online: boolean }).find((p) => !p.online && p.node === 'node-b');
    expect(offline).toBeDefined();

    const onA = await connect(f.mqttUrl, token, 'pr-late', { clean: false });
    const back = (await waitFor(() => state('pr-late'), (s) => s.body.online === true)).body as { presence: Presence };
    expect(back.presence.seq).toBeGreaterThan(offline!.seq);

    // The same offline event arrives again, late (delayed in transit between the nodes): its seq is older.
    const stale = await presenceEvents('stale');
    await fromAnotherNode('fleet/presence/pr-late', JSON.stringify(offline));
    await waitFor(() => presenceEvents('stale'), (n) => n === stale + 1);
    expect((await state('pr-late')).body).toMatchObject({ online: true, presence: back.presence });
    expect(await f.redis.zscore(redisKeys.deviceIndexOnline, 'pr-late')).not.toBeNull();
    fanOut.removeListener('fleet/presence/pr-late', listener as never);
    await onA.endAsync();
  });

  it('retained presence sent again on a resubscribe changes nothing', async () => {
    const dev = await f.connectDevice('pr-retained');
    const before = (await waitFor(() => state('pr-retained'), (s) => s.body.online === true)).body;
    const stale = await presenceEvents('stale');
    // Kick the device service's own broker link: it reconnects, resubscribes, and gets every retained presence again.
    const links = await f.api('GET', '/v1/connections?kind=service', { token: admin });
    const link = (links.body.items as { client_id: string }[]).find((c) => c.client_id.startsWith('service:device-service:'))!;
    expect((await f.api('DELETE', `/v1/connections/${encodeURIComponent(link.client_id)}`, { token: admin })).status).toBe(202);
    await waitFor(() => presenceEvents('stale'), (n) => n > stale, 8000);
    expect((await state('pr-retained')).body).toEqual(before);
    await dev.endAsync();
  });

  it('counts and drops presence events that break the contract or name an unregistered device', async () => {
    const invalid = await presenceEvents('invalid');
    const unknown = await presenceEvents('unknown_device');
    await f.registerDevice('pr-bad');
    await fromAnotherNode('fleet/presence/pr-bad', 'not json');
    await fromAnotherNode('fleet/presence/pr-bad', JSON.stringify({ online: true, node: 'x', at: 1 }));
    await fromAnotherNode('fleet/presence/pr-nobody', JSON.stringify({ online: true, seq: 1, node: 'x', at: 1 }));
    await waitFor(async () => [await presenceEvents('invalid'), await presenceEvents('unknown_device')], ([i, u]) => i === invalid + 2 && u === unknown + 1);
    expect((await state('pr-bad')).body).toMatchObject({ online: false, presence: null });
    expect(await f.redis.exists(redisKeys.deviceState('pr-nobody'))).toBe(0);
    // One line for the first; the next ones within 10 s are counted into the next line written.
    expect(f.logs.some((l) => l.includes('presence event that is not JSON dropped'))).toBe(true);
  });
});
