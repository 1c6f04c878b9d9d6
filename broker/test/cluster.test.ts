import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRedis, loadOrCreateKeySet, revokeDevice, saveDevice, signToken, type SigningKey, type TokenRequest } from '@fleetwire/common';
import { closeOf, connect, nextMessage, REDIS_URL, waitFor } from './helpers.js';
import { spawnBroker, stop, type BrokerProcess } from './processes.js';

let a: BrokerProcess;
let b: BrokerProcess;
let signer: SigningKey;
const redis = createRedis(REDIS_URL, { name: 'test-cluster' });
const mint = (req: Partial<TokenRequest> & { sub: string }) => signToken(signer, { typ: 'device', ttlSeconds: 600, ...req });
const device = async (id: string) => { await saveDevice(redis, id); return mint({ sub: id }); };

beforeAll(async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'fw-cluster-'));
  ({ signer } = await loadOrCreateKeySet(join(dataDir, 'keys')));
  const env = { FLEETWIRE_DATA_DIR: dataDir, BROKER_CLUSTER: 'redis', BROKER_NODE_TTL_S: '3' };
  [a, b] = await Promise.all([spawnBroker({ ...env, BROKER_NODE_ID: 'node-a' }), spawnBroker({ ...env, BROKER_NODE_ID: 'node-b' })]);
}, 30_000);
afterAll(async () => {
  await Promise.all([stop(a), stop(b)]);
  redis.disconnect();
});

describe('two broker processes sharing Redis', () => {
  it('delivers a command published on node B to a device connected to node A', async () => {
    const dev = await connect(a.url, await device('dev-x1'), 'dev-x1');
    await dev.subscribeAsync('devices/dev-x1/cmd', { qos: 1 });
    const svc = await connect(b.url, await mint({ sub: 'ctl', typ: 'service' }), 'service:ctl:1');
    const cmd = { cid: 'x-1', name: 'ping', args: {}, expires_at: Date.now() + 60_000 };
    const got = nextMessage(dev, 'devices/dev-x1/cmd');
    await svc.publishAsync('devices/dev-x1/cmd', JSON.stringify(cmd), { qos: 1 });
    expect(JSON.parse((await got).toString())).toEqual(cmd);
    await Promise.all([dev.endAsync(), svc.endAsync()]);
  });

  it('kicks from node B\'s API a device held by node A', async () => {
    const op = await mint({ sub: 'op', typ: 'user', role: 'operator' });
    const dev = await connect(a.url, await device('dev-x2'), 'dev-x2');
    const closed = closeOf(dev);
    await waitFor(() => fetch(`${b.httpUrl}/v1/connections/dev-x2`, { headers: { authorization: `Bearer ${op}` } }).then((r) => r.status), (s) => s === 200);
    const res = await fetch(`${b.httpUrl}/v1/connections/dev-x2?reason=cross-node`, { method: 'DELETE', headers: { authorization: `Bearer ${op}` } });
    expect(res.status).toBe(202);
    expect((await res.json()).node).toBe('node-a');
    expect(await closed).toEqual({ code: 4000, reason: 'cross-node' });
  });

  it('a reconnect on node B takes over the session on node A', async () => {
    const token = await device('dev-x3');
    const first = await connect(a.url, token, 'dev-x3');
    const firstClosed = closeOf(first);
    const second = await connect(b.url, token, 'dev-x3');
    expect((await firstClosed).code).toBe(4007);
    const op = await mint({ sub: 'op', typ: 'user', role: 'operator' });
    const rec = await waitFor(
      () => fetch(`${a.httpUrl}/v1/connections/dev-x3`, { headers: { authorization: `Bearer ${op}` } }).then((r) => r.json()),
      (r: { node?: string }) => r.node === 'node-b',
    );
    expect(rec.node).toBe('node-b');
    await second.endAsync();
  });

  it('a revocation closes the device on whichever node holds it, within a second', async () => {
    const dev = await connect(b.url, await device('dev-x4'), 'dev-x4');
    const closed = closeOf(dev);
    const start = Date.now();
    await revokeDevice(redis, 'dev-x4');
    expect((await closed).code).toBe(4003);
    expect(Date.now() - start).toBeLessThan(1000);
  });

  it('shares retained presence: a service on node B sees a device that connected to node A', async () => {
    const dev = await connect(a.url, await device('dev-x5'), 'dev-x5');
    await new Promise((r) => setTimeout(r, 200));
    const svc = await connect(b.url, await mint({ sub: 'pres', typ: 'service' }), 'service:pres:1');
    const msg = nextMessage(svc, 'fleet/presence/dev-x5');
    await svc.subscribeAsync('fleet/presence/dev-x5', { qos: 1 });
    expect(JSON.parse((await msg).toString())).toMatchObject({ online: true, node: 'node-a' });
    await Promise.all([dev.endAsync(), svc.endAsync()]);
  });

  it('sweeps the registry entries of a node that died without cleaning up and marks its devices offline', async () => {
    const dev = await connect(b.url, await device('dev-x6'), 'dev-x6');
    const svc = await connect(a.url, await mint({ sub: 'sweep', typ: 'service' }), 'service:sweep:1');
    await svc.subscribeAsync('fleet/presence/dev-x6', { qos: 1 });
    const offline = new Promise<{ online: boolean; reason?: string }>((resolve) => {
      svc.on('message', (topic, payload) => {
        const p = JSON.parse(payload.toString()) as { online: boolean; reason?: string };
        if (topic === 'fleet/presence/dev-x6' && !p.online) resolve(p);
      });
    });
    dev.on('error', () => undefined);
    await stop(b); // SIGKILL: no cleanup
    const p = await Promise.race([offline, new Promise<never>((_, rej) => setTimeout(() => rej(new Error('no offline presence')), 12_000))]);
    expect(p.reason).toBe('node-lost');
    await svc.endAsync();
  }, 30_000);
});
