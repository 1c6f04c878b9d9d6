import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { createRedis, loadOrCreateKeySet, redisKeys, saveDevice, signToken, type SigningKey } from '@fleetwire/common';
import { closeOf, connect, nextMessage, REDIS_URL, waitFor } from './helpers.js';
import { spawnBroker, stop, type BrokerProcess } from './processes.js';

let node: BrokerProcess;
let signer: SigningKey;
const redis = createRedis(REDIS_URL, { name: 'test-drain' });

beforeAll(async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'fw-drain-'));
  ({ signer } = await loadOrCreateKeySet(join(dataDir, 'keys')));
  node = await spawnBroker({ FLEETWIRE_DATA_DIR: dataDir, BROKER_SHUTDOWN_SPREAD_MS: '1500', BROKER_SHUTDOWN_TIMEOUT_MS: '8000' });
});
afterAll(async () => {
  await stop(node);
  redis.disconnect();
});

describe('SIGTERM drain', () => {
  it('notifies every client, closes them with 4001 spread over time, refuses newcomers, and exits 0 in time', async () => {
    const devices = await Promise.all(Array.from({ length: 6 }, async (_, i) => {
      const id = `dev-drain-${i}`;
      await saveDevice(redis, id);
      const c = await connect(node.url, await signToken(signer, { sub: id, typ: 'device', ttlSeconds: 600 }), id);
      await c.subscribeAsync(`devices/${id}/sys`);
      return { id, c, notice: nextMessage(c, `devices/${id}/sys`, 8000), closed: closeOf(c).then((r) => ({ ...r, at: Date.now() })) };
    }));
    // The registry entry is written just after CONNACK, so it may trail the client by a moment.
    expect(await waitFor(() => redis.zcard(redisKeys.connectionIndex), (n) => n === 6)).toBe(6);

    const sentAt = Date.now();
    node.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 150));
    const refused = await new Promise<number>((resolve) => {
      const ws = new WebSocket(node.url, ['mqtt']);
      ws.on('unexpected-response', (_q, res) => resolve(res.statusCode!));
      ws.on('open', () => resolve(101));
      ws.on('error', () => resolve(0)); // listener already closed
    });
    expect([503, 0]).toContain(refused);

    for (const d of devices) {
      expect(JSON.parse((await d.notice).toString())).toMatchObject({ type: 'disconnect', close_code: 4001 });
      expect((await d.closed).code).toBe(4001);
    }
    const times = await Promise.all(devices.map((d) => d.closed.then((c) => c.at)));
    expect(Math.max(...times) - Math.min(...times)).toBeGreaterThan(100); // jittered, not all at once
    const { code, at } = await node.exited;
    expect(code).toBe(0);
    expect(at - sentAt).toBeLessThan(8000);
    expect(await redis.zcard(redisKeys.connectionIndex)).toBe(0);
  });
});
