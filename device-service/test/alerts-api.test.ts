/**
 * GET /v1/alerts: active alerts newest first and the alert log, both cursor-paged; who may
 * read them; bad parameters answered 400 with the field named.
 *
 * The heartbeat part is the real writer of last_seen, threshold_ms and the silence-due
 * index, and it clears an alert on the heartbeat that ends a silence; lastHeartbeat() and
 * clearAsHeartbeatWould() write what its contract says.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redisKeys, type Redis } from '@fleetwire/common';
import { startFleet, waitFor, type Fleet } from './helpers.js';

interface Active { device_id: string; raised_at: number; last_seen: number; threshold_ms: number; silent_for_ms: number }
interface Logged { id: string; device_id: string; state: string; at: number }

async function lastHeartbeat(redis: Redis, ids: string[], at: number, thresholdMs: number): Promise<void> {
  const m = redis.multi();
  for (const id of ids) m.hset(redisKeys.deviceState(id), { last_seen: String(at), threshold_ms: String(thresholdMs) });
  // One ZADD: every id becomes due in the same silence check, so they are raised at the same ms.
  m.zadd(redisKeys.silenceDue, ...ids.flatMap((id) => [at + thresholdMs, id]));
  await m.exec();
}

async function clearAsHeartbeatWould(redis: Redis, id: string): Promise<void> {
  await redis.multi()
    .hdel(redisKeys.deviceState(id), 'silent_since', 'alert_threshold_ms')
    .zrem(redisKeys.deviceIndexSilent, id)
    .zrem(redisKeys.alertsActive, id)
    .exec();
}

describe('GET /v1/alerts', () => {
  let fleet: Fleet;
  let viewer: string;
  const batch = ['tie-a', 'tie-b', 'tie-c', 'tie-d', 'tie-e'];
  const later = ['late-1', 'late-2'];

  beforeAll(async () => {
    fleet = await startFleet({ SILENCE_CHECK_MS: '100' });
    viewer = await fleet.tokenFor('viewer');
    for (const id of [...batch, ...later]) await fleet.registerDevice(id);
    await lastHeartbeat(fleet.redis, batch, Date.now() - 10_000, 5000);
    await waitFor(() => fleet.redis.zcard(redisKeys.alertsActive), (n) => n === 5);
    await lastHeartbeat(fleet.redis, later, Date.now() - 10_000, 4000);
    await waitFor(() => fleet.redis.zcard(redisKeys.alertsActive), (n) => n === 7);
  });

  afterAll(() => fleet?.close());

  async function allPages(path: string, limit: number): Promise<Array<Record<string, unknown>>> {
    const items: Array<Record<string, unknown>> = [];
    let cursor: string | null = null;
    do {
      const res = await fleet.api('GET', `${path}${path.includes('?') ? '&' : '?'}limit=${limit}${cursor ? `&cursor=${cursor}` : ''}`, { token: viewer });
      expect(res.status).toBe(200);
      items.push(...(res.body.items as Array<Record<string, unknown>>));
      cursor = res.body.next as string | null;
    } while (cursor);
    return items;
  }

  it('lists the active alerts newest first, every one once across pages, with when each was raised and why', async () => {
    const first = await fleet.api('GET', '/v1/alerts?limit=3', { token: viewer });
    expect(first.body).toMatchObject({ state: 'active', total: 7 });
    expect(first.body.next).toEqual(expect.any(String));

    const items = await allPages('/v1/alerts', 2) as unknown as Active[];
    expect(items.map((a) => a.device_id)).toEqual(['late-2', 'late-1', 'tie-e', 'tie-d', 'tie-c', 'tie-b', 'tie-a']);
    const raisedAt = items.map((a) => a.raised_at);
    expect([...raisedAt].sort((a, b) => b - a)).toEqual(raisedAt);
    // The five raised by one check share their raised_at: paging through the tie lost none.
    expect(new Set(items.slice(2).map((a) => a.raised_at)).size).toBe(1);
    for (const a of items) {
      expect(a.threshold_ms).toBe(a.device_id.startsWith('late') ? 4000 : 5000);
      expect(a.silent_for_ms).toBeGreaterThanOrEqual(10_000);
    }
  });

  it('pages on from a cursor whose alert was cleared meanwhile', async () => {
    const first = await fleet.api('GET', '/v1/alerts?limit=3', { token: viewer });
    expect((first.body.items as Active[]).map((a) => a.device_id)).toEqual(['late-2', 'late-1', 'tie-e']);
    // tie-e, the cursor's own device, sends a heartbeat.
    await clearAsHeartbeatWould(fleet.redis, 'tie-e');
    const rest = await fleet.api('GET', `/v1/alerts?limit=10&cursor=${first.body.next as string}`, { token: viewer });
    expect((rest.body.items as Active[]).map((a) => a.device_id)).toEqual(['tie-d', 'tie-c', 'tie-b', 'tie-a']);
    expect(rest.body).toMatchObject({ total: 6, next: null });
  });

  it('lists every logged change newest first with state=all, cursor-paged by log id', async () => {
    const items = await allPages('/v1/alerts?state=all', 3) as unknown as Logged[];
    expect(items.map((c) => c.device_id).sort()).toEqual([...batch, ...later].sort());
    expect(items.every((c) => c.state === 'raised')).toBe(true);
    expect(items.slice(0, 2).map((c) => c.device_id).sort()).toEqual(later);
    const ids = items.map((c) => c.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(items.map((c) => c.at)).toEqual([...items.map((c) => c.at)].sort((a, b) => b - a));
    expect(items[0]).toMatchObject({ kind: 'silence', last_seen: expect.any(Number), threshold_ms: 4000 });
  });

  it('answers 401 without a valid token', async () => {
    expect((await fleet.api('GET', '/v1/alerts')).status).toBe(401);
    const forged = await fleet.api('GET', '/v1/alerts', { token: 'not.a.token' });
    expect(forged.status).toBe(401);
    expect(forged.body.error?.code).toMatch(/^AUTH_TOKEN_/);
  });

  it.each([
    ['state=silent', 'querystring/state'],
    ['limit=0', 'querystring/limit'],
    ['limit=1001', 'querystring/limit'],
    ['limit=many', 'querystring/limit'],
    ['cursor=yesterday', 'querystring/cursor'],
    // A cursor of the other list.
    ['cursor=1764300000000-0', 'querystring/cursor'],
    ['state=all&cursor=1764300000000-tie-a', 'querystring/cursor'],
  ])('answers 400 naming the field for %s', async (query, field) => {
    const res = await fleet.api('GET', `/v1/alerts?${query}`, { token: viewer });
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({ code: 'VALIDATION_FAILED', message: expect.stringContaining(field) });
  });
});
