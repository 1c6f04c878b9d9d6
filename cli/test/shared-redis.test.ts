/**
 * `fleetwire up` runs the broker and the auth service in one process, where they may
 * share a Redis connection. Both have a script named gate.lua; each must run its own.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createRedis, redisKeys } from '@fleetwire/common';
import { ConnectGate } from '../../broker/src/connect-gate.js';
import { Limits } from '../../auth-service/src/limits.js';

// This test file's own Redis server, started by scripts/vitest/redis-per-file.ts.
const REDIS_URL = process.env.REDIS_URL!;
const connections: ReturnType<typeof createRedis>[] = [];
afterAll(() => connections.forEach((r) => r.disconnect()));

describe('one Redis connection shared by the broker and the auth service', () => {
  it.each(['broker', 'auth service'])('the connect gate and the login limits both hold when the %s defines its scripts first', async (first) => {
    const redis = createRedis(REDIS_URL, { name: 'test-shared-scripts' });
    connections.push(redis);
    const newGate = () => new ConnectGate(redis, { connectAttemptsPerIp: 2, connectWindowS: 60, authFailuresBeforeBan: 3, banS: 60 });
    const newLimits = () => new Limits(redis);
    let gate: ConnectGate, limits: Limits;
    if (first === 'broker') { gate = newGate(); limits = newLimits(); } else { limits = newLimits(); gate = newGate(); }

    const ip = `test-${randomUUID()}`;
    const loginWindow = { key: `fleetwire:test:login-window:${randomUUID()}`, limit: 1, windowMs: 60_000 };
    try {
      // The broker admits two connection attempts from the address, the third waits.
      expect(await gate.check(ip)).toEqual({ ok: true });
      expect(await gate.check(ip)).toEqual({ ok: true });
      expect(await gate.check(ip)).toMatchObject({ ok: false, why: 'too-many-attempts' });
      // The auth service allows one login attempt in its window, the second waits.
      expect(await limits.gate(null, [loginWindow])).toEqual({ ok: true });
      expect(await limits.gate(null, [loginWindow])).toMatchObject({ ok: false, blockedBy: 1, locked: false });
    } finally {
      await redis.del(redisKeys.connectAttempts(ip), loginWindow.key);
    }
  });
});
