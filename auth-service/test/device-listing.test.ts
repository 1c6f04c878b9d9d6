/**
 * GET /v1/devices with filters and cursor paging, device tags and maintenance_until, and
 * the listing indexes behind them (common/src/device-index.ts), on a real auth service and
 * a real Redis. The device service's indexes (online, silent, firmware, last seen) and its
 * state hash are seeded here as its heartbeat and presence parts write them.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findDeviceIds, redisKeys, type DeviceQuery } from '@fleetwire/common';
import { REDIS_URL, startAuth, type Answer, type TestAuth } from './helpers.js';

let t: TestAuth;
let op: string;
let viewer: string;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000 });
  op = await t.tokenFor('operator');
  viewer = await t.tokenFor('viewer');
});
afterAll(async () => t.close());

interface ListedDevice { id: string; type: string; status: string; tags: string[]; location?: string; online: boolean; last_seen: number | null; maintenance_until: number | null }

const register = async (body: Record<string, unknown>): Promise<Answer> => t.api('POST', '/v1/devices', { token: op, body });
const registerId = async (body: Record<string, unknown>): Promise<string> => {
  const res = await register(body);
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  return res.body.id as string;
};
const patch = (id: string, body: unknown, token = op): Promise<Answer> => t.api('PATCH', `/v1/devices/${id}`, { token, body });
const getDevice = async (id: string): Promise<ListedDevice> => (await t.api('GET', `/v1/devices/${id}`, { token: viewer })).body as unknown as ListedDevice;

/** Follows next_cursor to the end; every page must be within the limit. */
async function listAll(query: string, limit = 3): Promise<{ devices: ListedDevice[]; pages: number; order: string }> {
  const devices: ListedDevice[] = [];
  let cursor: string | null = null;
  let pages = 0;
  let order = '';
  do {
    const qs = [query, `limit=${limit}`, cursor ? `cursor=${cursor}` : ''].filter(Boolean).join('&');
    const res = await t.api('GET', `/v1/devices?${qs}`, { token: viewer });
    expect(res.status, `${qs}: ${JSON.stringify(res.body)}`).toBe(200);
    const page = res.body.devices as ListedDevice[];
    expect(page.length).toBeLessThanOrEqual(limit);
    devices.push(...page);
    cursor = res.body.next_cursor as string | null;
    order = res.body.order as string;
    if (++pages > 500) throw new Error(`${query}: no end after 500 pages`);
  } while (cursor);
  return { devices, pages, order };
}

interface FleetDevice {
  i: number; id: string; type: string; tags: string[]; location?: string; status: 'active' | 'revoked';
  online: boolean; silent: boolean; fw?: string; lastSeen?: number;
}

/**
 * What the device service's heartbeat and presence parts write (device-service/src/heartbeats.ts,
 * presence.ts, the silence checker): state hash fields, and the firmware, online, silent and
 * last-seen indexes, scored like every listing index by the registration time.
 */
async function seedDeviceServiceState(d: FleetDevice): Promise<void> {
  const score = (await t.redis.zscore(redisKeys.devices, d.id))!;
  const pipe = t.redis.pipeline();
  pipe.hset(redisKeys.deviceState(d.id), { online: d.online ? '1' : '0', last_seen: String(d.lastSeen), fw: d.fw! });
  pipe.zadd(redisKeys.deviceIndexLastSeen, d.lastSeen!, d.id);
  pipe.zadd(redisKeys.deviceIndex('fw', d.fw!), score, d.id);
  pipe.sadd(redisKeys.deviceIndexValues('fw'), d.fw!);
  if (d.online) pipe.zadd(redisKeys.deviceIndexOnline, score, d.id);
  if (d.silent) pipe.zadd(redisKeys.deviceIndexSilent, score, d.id);
  await pipe.exec();
}

describe('filters, alone and combined, over a fleet of 36', () => {
  const base = 1_700_000_000_000;
  const fleet: FleetDevice[] = [];

  beforeAll(async () => {
    // This describe runs first: the file's Redis holds the fleet and nothing else.
    expect(await t.redis.zcard(redisKeys.devices)).toBe(0);
    for (let i = 0; i < 36; i++) {
      const type = ['sensor', 'sensor', 'gateway', 'sensor', 'camera', 'sensor'][i % 6]!;
      const tags = [...(i % 4 === 0 ? ['roof'] : []), ...(i % 5 === 0 ? ['north'] : []), ...(i === 35 ? ['rare'] : [])];
      const location = i % 3 === 0 ? 'shed' : i % 3 === 1 ? 'barn yard' : undefined;
      const id = await registerId({ type, tags, ...(location ? { location } : {}), name: `f${i}` });
      const revoked = i === 7 || i === 20;
      const seen = i < 30;
      fleet.push({
        i, id, type, tags, location, status: revoked ? 'revoked' : 'active',
        online: seen && i % 2 === 0 && !revoked, silent: seen && i % 5 === 1,
        // Last seen in an order unlike registration's, so the two orders differ.
        ...(seen ? { fw: ['1.0.0', '1.1.0', '2.0.0'][i % 3]!, lastSeen: base + ((i * 7) % 30) * 1000 } : {}),
      });
    }
    for (const d of fleet) {
      if (d.status === 'revoked') expect((await t.api('DELETE', `/v1/devices/${d.id}`, { token: op })).status).toBe(200);
      if (d.lastSeen !== undefined) await seedDeviceServiceState(d);
    }
  });

  const seenAfter = base + 10_000;
  const seenBefore = base + 20_000;
  const inSeenRange = (d: FleetDevice, after = -Infinity, before = Infinity): boolean =>
    d.lastSeen !== undefined && d.lastSeen >= after && d.lastSeen < before;
  const cases: [string, (d: FleetDevice) => boolean, 'registered' | 'last_seen'][] = [
    ['', () => true, 'registered'],
    ['type=sensor', (d) => d.type === 'sensor', 'registered'],
    ['tag=roof', (d) => d.tags.includes('roof'), 'registered'],
    ['location=barn%20yard', (d) => d.location === 'barn yard', 'registered'],
    ['firmware=1.1.0', (d) => d.fw === '1.1.0', 'registered'],
    ['online=true', (d) => d.online, 'registered'],
    ['online=false', (d) => !d.online, 'registered'],
    ['silent=true', (d) => d.silent, 'registered'],
    ['silent=false', (d) => !d.silent, 'registered'],
    ['status=active', (d) => d.status === 'active', 'registered'],
    ['status=revoked', (d) => d.status === 'revoked', 'registered'],
    [`last_seen_after=${seenAfter}`, (d) => inSeenRange(d, seenAfter), 'last_seen'],
    [`last_seen_before=${seenBefore}`, (d) => inSeenRange(d, -Infinity, seenBefore), 'last_seen'],
    [`last_seen_after=${seenAfter}&last_seen_before=${seenBefore}`, (d) => inSeenRange(d, seenAfter, seenBefore), 'last_seen'],
    ['type=sensor&online=true', (d) => d.type === 'sensor' && d.online, 'registered'],
    ['firmware=2.0.0&online=true', (d) => d.fw === '2.0.0' && d.online, 'registered'],
    ['tag=roof&location=shed&status=active', (d) => d.tags.includes('roof') && d.location === 'shed' && d.status === 'active', 'registered'],
    [`type=sensor&last_seen_after=${seenAfter}`, (d) => d.type === 'sensor' && inSeenRange(d, seenAfter), 'registered'],
    [`online=false&status=active&last_seen_before=${seenBefore}`, (d) => !d.online && d.status === 'active' && inSeenRange(d, -Infinity, seenBefore), 'last_seen'],
    ['type=camera&tag=north&silent=false', (d) => d.type === 'camera' && d.tags.includes('north') && !d.silent, 'registered'],
    ['tag=rare&online=false&status=active', (d) => d.tags.includes('rare') && !d.online && d.status === 'active', 'registered'],
    ['type=gateway&tag=rare', () => false, 'registered'],
    ['tag=nosuch', () => false, 'registered'],
  ];

  it.each(cases)('GET /v1/devices?%s lists exactly the matching devices, each once, in its order', async (query, matches, order) => {
    const { devices, order: answered } = await listAll(query);
    const expected = fleet.filter(matches);
    if (order === 'last_seen') expected.sort((a, b) => a.lastSeen! - b.lastSeen! || (a.id < b.id ? -1 : 1));
    expect(devices.map((d) => d.id)).toEqual(expected.map((d) => d.id));
    expect(answered).toBe(order);
  });

  it('each listed device shows its tags, location, status and the device service\'s online and last_seen', async () => {
    const { devices } = await listAll('', 50);
    for (const d of fleet) {
      const listed = devices.find((x) => x.id === d.id)!;
      expect(listed).toMatchObject({ type: d.type, tags: d.tags, status: d.status, online: d.online, last_seen: d.lastSeen ?? null });
      expect(listed.location).toBe(d.location);
    }
  });

  it('a page that reaches its bound of candidates answers what it found and a cursor to go on from', async () => {
    // Through the HTTP API the bound is max(20 × limit, 1000) candidates; here it is 4, so
    // that the 24 sensors (or the online devices, whichever index is smaller) take many pages.
    const q: DeviceQuery = { type: 'sensor', online: true };
    const ids: string[] = [];
    const pageSizes: number[] = [];
    let cursor: string | undefined;
    for (let n = 0; n < 100; n++) {
      const page = await findDeviceIds(t.redis, q, { limit: 2, cursor, maxExamined: 4 });
      ids.push(...page.ids);
      pageSizes.push(page.ids.length);
      if (!page.nextCursor) break;
      cursor = page.nextCursor;
    }
    expect(ids).toEqual(fleet.filter((d) => d.type === 'sensor' && d.online).map((d) => d.id));
    // Neither the 24 sensors nor the 14 online devices fit in fewer pages of 4 candidates.
    expect(pageSizes.length).toBeGreaterThanOrEqual(14 / 4);
    expect(pageSizes.some((n) => n < 2)).toBe(true);
  });
});

describe('cursor paging', () => {
  it('returns every matching device exactly once, also when devices are registered between pages', async () => {
    const first: string[] = [];
    for (let i = 0; i < 5; i++) first.push(await registerId({ type: 'pager', tags: ['paged'] }));
    const later: string[] = [];
    const seen: string[] = [];
    for (const query of ['type=pager', 'tag=paged']) {
      let cursor: string | null = null;
      const ids: string[] = [];
      let page = 0;
      do {
        const res: Answer = await t.api('GET', `/v1/devices?${query}&limit=2${cursor ? `&cursor=${cursor}` : ''}`, { token: viewer });
        ids.push(...(res.body.devices as ListedDevice[]).map((d) => d.id));
        cursor = res.body.next_cursor as string | null;
        // New devices arrive while the first listing is on its second page.
        if (query === 'type=pager' && ++page === 2) for (let i = 0; i < 3; i++) later.push(await registerId({ type: 'pager', tags: ['paged'] }));
      } while (cursor);
      expect(ids).toEqual([...first, ...later]);
      seen.push(...ids);
    }
    expect(seen).toHaveLength(16);
  });

  it('a device changed between pages is listed under what it is when its page is read', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push(await registerId({ type: 'shifty' }));
    const page1 = await t.api('GET', '/v1/devices?type=shifty&limit=2', { token: viewer });
    expect((page1.body.devices as ListedDevice[]).map((d) => d.id)).toEqual(ids.slice(0, 2));
    // The third device becomes another type before the next page is read.
    expect((await patch(ids[2]!, { type: 'steady' })).status).toBe(200);
    const page2 = await t.api('GET', `/v1/devices?type=shifty&limit=2&cursor=${page1.body.next_cursor as string}`, { token: viewer });
    expect((page2.body.devices as ListedDevice[]).map((d) => d.id)).toEqual([ids[3]]);
  });
});

describe('tags, location and type follow updates in the indexes', () => {
  it('changing type moves the device; tags are replaced as a whole; an empty location clears it', async () => {
    const id = await registerId({ type: 'mover', tags: ['mv-a', 'mv-b'], location: 'loft' });
    const score = await t.redis.zscore(redisKeys.devices, id);
    expect(await t.redis.zscore(redisKeys.deviceIndex('type', 'mover'), id)).toBe(score);
    expect(await t.redis.sismember(redisKeys.deviceIndexValues('tag'), 'mv-a')).toBe(1);

    const res = await patch(id, { type: 'moved', tags: ['mv-b', 'mv-c'], location: '' });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ type: 'moved', tags: ['mv-b', 'mv-c'] });
    expect(res.body.location).toBeUndefined();

    expect((await listAll('type=mover')).devices).toEqual([]);
    expect((await listAll('type=moved')).devices.map((d) => d.id)).toEqual([id]);
    expect((await listAll('tag=mv-a')).devices).toEqual([]);
    expect((await listAll('tag=mv-c')).devices.map((d) => d.id)).toEqual([id]);
    expect((await listAll('location=loft')).devices).toEqual([]);
    // Same score in the new sets, and the values-in-use sets stay exact: nothing else had mover, mv-a or loft.
    expect(await t.redis.zscore(redisKeys.deviceIndex('type', 'moved'), id)).toBe(score);
    expect(await t.redis.sismember(redisKeys.deviceIndexValues('type'), 'mover')).toBe(0);
    expect(await t.redis.sismember(redisKeys.deviceIndexValues('type'), 'moved')).toBe(1);
    expect(await t.redis.smembers(redisKeys.deviceIndexValues('tag'))).not.toContain('mv-a');
    expect(await t.redis.smembers(redisKeys.deviceIndexValues('location'))).not.toContain('loft');
    expect(await t.redis.exists(redisKeys.deviceIndex('type', 'mover'), redisKeys.deviceIndex('tag', 'mv-a'))).toBe(0);
  });

  it('a value still used by another device stays in the values-in-use set', async () => {
    const a = await registerId({ type: 'shared-type' });
    await registerId({ type: 'shared-type' });
    expect((await patch(a, { type: 'lone-type' })).status).toBe(200);
    expect(await t.redis.sismember(redisKeys.deviceIndexValues('type'), 'shared-type')).toBe(1);
    expect(await t.redis.zcard(redisKeys.deviceIndex('type', 'shared-type'))).toBe(1);
  });

  it('refuses bad tags with 400 naming the field and changes nothing', async () => {
    const id = await registerId({ type: 'tagged', tags: ['ok'] });
    for (const tags of [['Upper'], ['a b'], ['-lead'], ['x'.repeat(33)], Array.from({ length: 17 }, (_, i) => `t${i}`), ['dup', 'dup'], [{ tag: 'x' }]]) {
      const res = await patch(id, { tags });
      expect(res.status, JSON.stringify(tags)).toBe(400);
      expect(res.body.error?.code).toBe('VALIDATION_FAILED');
      expect(res.body.error?.message).toMatch(/tags/);
    }
    expect((await getDevice(id)).tags).toEqual(['ok']);
    const before = await t.redis.zcard(redisKeys.devices);
    expect((await register({ type: 'tagged', tags: ['Nope'] })).status).toBe(400);
    expect(await t.redis.zcard(redisKeys.devices)).toBe(before);
  });
});

describe('maintenance_until', () => {
  it('is set at registration or by PATCH, kept in the maintenance index, and cleared with null', async () => {
    const inAnHour = Date.now() + 3_600_000;
    const id = await registerId({ type: 'maint', maintenance_until: inAnHour });
    expect((await getDevice(id)).maintenance_until).toBe(inAnHour);
    expect(Number(await t.redis.zscore(redisKeys.deviceMaintenance, id))).toBe(inAnHour);

    const inADay = Date.now() + 86_400_000;
    expect((await patch(id, { maintenance_until: inADay })).body.maintenance_until).toBe(inADay);
    expect(Number(await t.redis.zscore(redisKeys.deviceMaintenance, id))).toBe(inADay);
    expect(await t.redis.hget(redisKeys.device(id), 'maintenance_until')).toBe(String(inADay));

    const cleared = await patch(id, { maintenance_until: null });
    expect(cleared.status).toBe(200);
    expect(cleared.body.maintenance_until).toBeNull();
    expect(await t.redis.zscore(redisKeys.deviceMaintenance, id)).toBeNull();
    expect(await t.redis.hexists(redisKeys.device(id), 'maintenance_until')).toBe(0);
  });

  it('refuses a time that is not in the future (seconds instead of ms included) with 400 naming it, changing nothing', async () => {
    const until = Date.now() + 3_600_000;
    const id = await registerId({ type: 'maint', maintenance_until: until });
    for (const bad of [Date.now() - 1000, Math.floor(Date.now() / 1000) + 3600, 0, -5, 'tomorrow']) {
      const res = await patch(id, { maintenance_until: bad });
      expect(res.status, String(bad)).toBe(400);
      expect(res.body.error?.message).toMatch(/maintenance_until/);
    }
    expect((await getDevice(id)).maintenance_until).toBe(until);
    const before = await t.redis.zcard(redisKeys.devices);
    const res = await register({ type: 'maint', maintenance_until: Date.now() - 1 });
    expect(res.status).toBe(400);
    expect(res.body.error?.message).toMatch(/maintenance_until/);
    expect(await t.redis.zcard(redisKeys.devices)).toBe(before);
  });

  it('viewers may list and read but only operators PATCH', async () => {
    const id = await registerId({ type: 'rbac-maint' });
    const res = await patch(id, { maintenance_until: Date.now() + 60_000, tags: ['x'] }, viewer);
    expect(res.status).toBe(403);
    expect(await getDevice(id)).toMatchObject({ maintenance_until: null, tags: [] });
    expect((await t.api('GET', '/v1/devices?type=rbac-maint&online=false', { token: viewer })).status).toBe(200);
    expect((await t.api('GET', '/v1/devices?type=rbac-maint')).status).toBe(401);
  });
});

describe('revoked devices stay listed, with status', () => {
  it('remain under their type and tags, are filtered by status, and leave maintenance', async () => {
    const keep = await registerId({ type: 'revtype', tags: ['revtag'] });
    const gone = await registerId({ type: 'revtype', tags: ['revtag'], maintenance_until: Date.now() + 3_600_000 });
    const res = await t.api('DELETE', `/v1/devices/${gone}`, { token: op });
    expect(res.body).toMatchObject({ status: 'revoked', maintenance_until: null });

    expect((await listAll('type=revtype')).devices.map((d) => [d.id, d.status])).toEqual([[keep, 'active'], [gone, 'revoked']]);
    expect((await listAll('tag=revtag&status=active')).devices.map((d) => d.id)).toEqual([keep]);
    expect((await listAll('type=revtype&status=revoked')).devices.map((d) => d.id)).toEqual([gone]);
    expect(await t.redis.zscore(redisKeys.deviceMaintenance, gone)).toBeNull();
    expect(await t.redis.zscore(redisKeys.deviceIndexRevoked, gone)).toBe(await t.redis.zscore(redisKeys.devices, gone));

    // Revoking again keeps the first revocation time; a revoked device's metadata cannot change.
    const again = await t.api('DELETE', `/v1/devices/${gone}`, { token: op });
    expect(again.body.revoked_at).toBe(res.body.revoked_at);
    expect((await patch(gone, { type: 'other' })).body.error?.code).toBe('DEVICE_REVOKED');
    expect((await listAll('type=other')).devices).toEqual([]);
  });
});

describe('bad listing parameters: 400 naming the field', () => {
  const otherOrderCursor = Buffer.from('l.1700000000000.dev-aaaaaaaaaaaa').toString('base64url');
  it.each([
    ['online=maybe', 'online'],
    ['silent=yes', 'silent'],
    ['status=gone', 'status'],
    ['type=', 'type'],
    ['tag=Roof', 'tag'],
    ['location=', 'location'],
    [`firmware=${'9'.repeat(65)}`, 'firmware'],
    ['last_seen_after=yesterday', 'last_seen_after'],
    ['last_seen_before=-1', 'last_seen_before'],
    ['last_seen_before=1e400', 'last_seen_before'],
    ['last_seen_after=2000&last_seen_before=2000', 'last_seen_after'],
    ['limit=0', 'limit'],
    ['limit=1001', 'limit'],
    ['cursor=not%20a%20cursor', 'cursor'],
    [`cursor=${Buffer.from('r.12.NOT AN ID').toString('base64url')}`, 'cursor'],
    [`type=sensor&cursor=${otherOrderCursor}`, 'cursor'],
    ['offset=100', 'offset'],
    ['firmwre=1.0.0', 'firmwre'],
  ])('GET /v1/devices?%s → 400 naming %s', async (query, field) => {
    const res = await t.api('GET', `/v1/devices?${query}`, { token: viewer });
    expect(res.status).toBe(400);
    expect(res.body.error?.code).toBe('VALIDATION_FAILED');
    expect(res.body.error?.message).toContain(field);
  });
});

describe('records from before the listing indexes', () => {
  /** A record as the auth service wrote it before this change: no tags, no index entries. */
  async function writeLegacyDevice(id: string, fields: Record<string, string>, at: number): Promise<void> {
    await t.redis.hset(redisKeys.device(id), { status: 'active', created_at: String(at), updated_at: String(at), created_by: 'legacy', ...fields });
    await t.redis.zadd(redisKeys.devices, at, id);
  }

  it('are indexed by a second service starting on the same Redis, once; doing it again changes nothing', async () => {
    const at = Date.now() - 86_400_000;
    await writeLegacyDevice('legacy-a-1', { type: 'legacy-a', location: 'attic' }, at);
    await writeLegacyDevice('legacy-a-2', { type: 'legacy-a' }, at);
    await writeLegacyDevice('legacy-r-1', { type: 'legacy-a', status: 'revoked', revoked_at: String(at + 1) }, at + 2);
    await t.redis.del(redisKeys.deviceIndexVersion);
    expect((await listAll('type=legacy-a')).devices).toEqual([]);

    const second = await startAuth({}, { dataDir: t.dataDir });
    try {
      await waitFor(async () => (await t.redis.get(redisKeys.deviceIndexVersion)) !== null);
    } finally {
      await second.close();
    }
    // Equal registration times page in id order.
    expect((await listAll('type=legacy-a', 1)).devices.map((d) => d.id)).toEqual(['legacy-a-1', 'legacy-a-2', 'legacy-r-1']);
    expect((await listAll('location=attic')).devices.map((d) => d.id)).toEqual(['legacy-a-1']);
    expect((await listAll('type=legacy-a&status=revoked')).devices.map((d) => d.id)).toEqual(['legacy-r-1']);
    expect(await t.redis.sismember(redisKeys.deviceIndexValues('type'), 'legacy-a')).toBe(1);

    // The marker is set: the next start does nothing. A forced reindex adds nothing new.
    expect(await t.auth.devices.ensureIndexes()).toBeNull();
    const sizes = async (): Promise<number[]> => Promise.all([
      t.redis.zcard(redisKeys.deviceIndex('type', 'legacy-a')), t.redis.zcard(redisKeys.deviceIndexRevoked),
      t.redis.zcard(redisKeys.deviceIndex('location', 'attic')), t.redis.zcard(redisKeys.deviceIndex('tag', 'roof')),
    ]);
    const before = await sizes();
    expect(await t.auth.devices.reindex()).toBe(await t.redis.zcard(redisKeys.devices));
    expect(await sizes()).toEqual(before);
  });

  it('an old record updated before the backfill reaches it ends up in its new indexes only', async () => {
    await writeLegacyDevice('legacy-b-1', { type: 'legacy-b', location: 'cellar' }, Date.now() - 1000);
    expect((await patch('legacy-b-1', { type: 'legacy-c', tags: ['late'] })).status).toBe(200);
    await t.auth.devices.reindex();
    expect((await listAll('type=legacy-b')).devices).toEqual([]);
    expect((await listAll('type=legacy-c&tag=late&location=cellar')).devices.map((d) => d.id)).toEqual(['legacy-b-1']);
  });
});

describe('fleetwire devices (the built CLI)', () => {
  const CLI = fileURLToPath(new URL('../../cli/dist/main.js', import.meta.url));
  const run = (args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> => new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH, REDIS_URL, FLEETWIRE_DATA_DIR: t.dataDir, LOG_LEVEL: 'warn' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });

  it('register --tags tags the device; a bad tag is refused before anything is written; reindex reports the records', async () => {
    const ok = await run(['devices', 'register', '--type', 'cli-tagged', '--id', 'cli-tagged-1', '--tags', 'roof, north']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ id: 'cli-tagged-1', tags: ['roof', 'north'] });
    expect((await listAll('tag=north&type=cli-tagged')).devices.map((d) => d.id)).toEqual(['cli-tagged-1']);

    const bad = await run(['devices', 'register', '--type', 'cli-tagged', '--id', 'cli-tagged-2', '--tags', 'Roof']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('tag "Roof"');
    expect(await t.redis.exists(redisKeys.device('cli-tagged-2'))).toBe(0);

    const reindexed = await run(['devices', 'reindex']);
    expect(reindexed.code, reindexed.stderr).toBe(0);
    expect(reindexed.stdout).toBe(`indexed ${await t.redis.zcard(redisKeys.devices)} device records\n`);
  });
});

async function waitFor(cond: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
