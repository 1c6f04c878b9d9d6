/**
 * Which devices match a filter, one page at a time, from the listing indexes in Redis
 * (redis-keys.ts: deviceIndex, deviceIndexOnline/Silent/Revoked/LastSeen). The device
 * listing (GET /v1/devices in the auth service) and the fleet-command selector share it.
 *
 * No request scans the fleet. Every index of one value (a type, a tag, online, revoked, …)
 * is a sorted set scored by registration time, so all of them are in one order, (score,
 * id), and one cursor fits them all. A page ranges the smallest index the filter names
 * (the "driver", picked by ZCARD) from the cursor, and checks the other filters for a
 * batch of candidates at once: one ZMSCORE per filter, in one pipeline. Negative filters
 * (online=false, silent=false, status=active) are "not in that set" and cannot drive.
 *
 * Order: by registration time, oldest first, unless the only filters that could drive are
 * last_seen_after/before: then the last-seen index drives and the order is by last seen,
 * oldest first. The answer says which.
 *
 * A sparse filter must not turn one request into a scan, so a page examines at most
 * `maxExamined` candidates and then answers what it found with a cursor to go on from,
 * even when the page is short or empty; `nextCursor` is null only when the driver is
 * exhausted.
 */
import type { Redis } from 'ioredis';
import { isDeviceId } from './contracts.js';
import { FleetwireError } from './errors.js';
import { redisKeys } from './redis-keys.js';

export interface DeviceQuery {
  status?: 'active' | 'revoked';
  type?: string;
  tag?: string;
  location?: string;
  firmware?: string;
  online?: boolean;
  silent?: boolean;
  /** Last seen at or after this unix ms. Devices never seen match no last_seen filter. */
  lastSeenAfter?: number;
  /** Last seen before this unix ms. */
  lastSeenBefore?: number;
}

export type DeviceOrder = 'registered' | 'last_seen';

export interface DevicePageOptions {
  limit: number;
  /** `nextCursor` of the previous page, unchanged. */
  cursor?: string;
  /** Candidates examined at most in this call; by default max(20 × limit, 1000). */
  maxExamined?: number;
}

export interface DeviceIdPage {
  ids: string[];
  /** Where the next page starts; null when there is nothing after this page. */
  nextCursor: string | null;
  order: DeviceOrder;
}

interface Position { score: number; id: string }
interface Cursor extends Position { order: DeviceOrder }

/** One filter checked per candidate: the candidate's score in `key` (null: not a member) must pass `accept`. */
interface Check { key: string; accept(score: number | null): boolean }

interface Plan {
  order: DeviceOrder;
  /** Indexes any of which can drive (each holds every match); empty: `fallback` drives. */
  drivers: string[];
  fallback: { key: string; min: number; maxExclusive: number | null };
  /** Filter checks by the index they read; the one that drives is left out. */
  checks: Map<string, Check>;
}

const isMember = (s: number | null): boolean => s !== null;
const isNotMember = (s: number | null): boolean => s === null;

function plan(q: DeviceQuery): Plan {
  const checks = new Map<string, Check>();
  const drivers: string[] = [];
  const member = (key: string): void => { drivers.push(key); checks.set(key, { key, accept: isMember }); };
  if (q.type !== undefined) member(redisKeys.deviceIndex('type', q.type));
  if (q.tag !== undefined) member(redisKeys.deviceIndex('tag', q.tag));
  if (q.location !== undefined) member(redisKeys.deviceIndex('location', q.location));
  if (q.firmware !== undefined) member(redisKeys.deviceIndex('fw', q.firmware));
  const flag = (value: boolean | undefined, key: string): void => {
    if (value === true) member(key);
    else if (value === false) checks.set(key, { key, accept: isNotMember });
  };
  flag(q.online, redisKeys.deviceIndexOnline);
  flag(q.silent, redisKeys.deviceIndexSilent);
  flag(q.status === undefined ? undefined : q.status === 'revoked', redisKeys.deviceIndexRevoked);

  const after = q.lastSeenAfter ?? -Infinity;
  const before = q.lastSeenBefore ?? Infinity;
  const bySeen = q.lastSeenAfter !== undefined || q.lastSeenBefore !== undefined;
  if (bySeen && drivers.length === 0) {
    return {
      order: 'last_seen', drivers, checks,
      fallback: { key: redisKeys.deviceIndexLastSeen, min: after, maxExclusive: q.lastSeenBefore ?? null },
    };
  }
  if (bySeen) {
    const key = redisKeys.deviceIndexLastSeen;
    checks.set(key, { key, accept: (s) => s !== null && s >= after && s < before });
  }
  return { order: 'registered', drivers, checks, fallback: { key: redisKeys.devices, min: -Infinity, maxExclusive: null } };
}

export function encodeDeviceCursor(c: Cursor): string {
  return Buffer.from(`${c.order === 'registered' ? 'r' : 'l'}.${c.score}.${c.id}`).toString('base64url');
}

/** The cursor, or null when `text` is not one this module gave out. */
export function decodeDeviceCursor(text: string): Cursor | null {
  if (!/^[A-Za-z0-9_-]{1,200}$/.test(text)) return null;
  const m = /^([rl])\.(-?\d{1,16})\.(.+)$/.exec(Buffer.from(text, 'base64url').toString('latin1'));
  if (!m || !isDeviceId(m[3]!)) return null;
  const score = Number(m[2]);
  return Number.isSafeInteger(score) ? { order: m[1] === 'r' ? 'registered' : 'last_seen', score, id: m[3]! } : null;
}

/** The ids of one page of devices matching `q`; see the module comment for order and bounds. */
export async function findDeviceIds(redis: Redis, q: DeviceQuery, page: DevicePageOptions): Promise<DeviceIdPage> {
  const p = plan(q);
  let from: Position | null = null;
  if (page.cursor !== undefined) {
    const c = decodeDeviceCursor(page.cursor);
    if (!c) throw new FleetwireError('VALIDATION_FAILED', 'cursor is not one this listing gave out: pass next_cursor back unchanged');
    if (c.order !== p.order) {
      throw new FleetwireError('VALIDATION_FAILED', `cursor belongs to a listing ordered by ${c.order}, not to this one (ordered by ${p.order}): keep the filters of the first page`);
    }
    from = c;
  }
  const driver = await pickDriver(redis, p);
  const checks = [...p.checks.values()].filter((c) => c.key !== driver);
  const bounds = driver === p.fallback.key ? p.fallback : { min: -Infinity, maxExclusive: null };
  const budget = page.maxExamined ?? Math.max(20 * page.limit, 1000);

  const ids: string[] = [];
  let examined = 0;
  let more = true;
  for (let round = 0; ids.length < page.limit && examined < budget && more; round++) {
    const wanted = page.limit - ids.length;
    // Without checks every candidate matches: take exactly what the page needs. With checks,
    // take a few times that, so a moderately selective filter fills a page in one round trip,
    // and twice as many each round after, so a sparse one reaches its bound in a few.
    const count = checks.length === 0 ? wanted : Math.min(budget - examined, Math.max(2 * wanted, 200) * 2 ** round);
    const batch = await rangeAfter(redis, driver, from, bounds, count);
    more = batch.more;
    const pass = await applyChecks(redis, checks, batch.entries.map((e) => e.id));
    for (const [i, entry] of batch.entries.entries()) {
      examined++;
      from = entry;
      if (pass[i]) ids.push(entry.id);
      if (ids.length === page.limit) {
        // Candidates left in this batch: the driver goes on, whatever `more` says.
        if (i < batch.entries.length - 1) more = true;
        break;
      }
    }
  }
  return { ids, nextCursor: more && from ? encodeDeviceCursor({ order: p.order, ...from }) : null, order: p.order };
}

async function pickDriver(redis: Redis, p: Plan): Promise<string> {
  if (p.drivers.length === 0) return p.fallback.key;
  if (p.drivers.length === 1) return p.drivers[0]!;
  const pipe = redis.pipeline();
  for (const key of p.drivers) pipe.zcard(key);
  const sizes = (await pipe.exec())!.map(([err, n]) => {
    if (err) throw err;
    return n as number;
  });
  let best = 0;
  for (let i = 1; i < sizes.length; i++) if (sizes[i]! < sizes[best]!) best = i;
  return p.drivers[best]!;
}

/**
 * Up to `count` members of `key` after `from` in (score, id) order, within the bounds.
 * Redis ranges by score only, so members sharing the cursor's score are read again and
 * those not after its id dropped; a crowd of equal scores larger than `count` (many
 * devices in one millisecond) costs extra round trips, never a wrong page.
 */
async function rangeAfter(
  redis: Redis, key: string, from: Position | null, bounds: { min: number; maxExclusive: number | null }, count: number,
): Promise<{ entries: Position[]; more: boolean }> {
  const lowest = Math.max(from?.score ?? -Infinity, bounds.min);
  const min = lowest === -Infinity ? '-inf' : String(lowest);
  const max = bounds.maxExclusive === null ? '+inf' : `(${bounds.maxExclusive}`;
  for (let offset = 0; ; offset += count) {
    const raw = await redis.zrangebyscore(key, min, max, 'WITHSCORES', 'LIMIT', offset, count);
    const entries: Position[] = [];
    for (let i = 0; i < raw.length; i += 2) {
      const e = { id: raw[i]!, score: Number(raw[i + 1]) };
      if (!from || e.score > from.score || e.id > from.id) entries.push(e);
    }
    const full = raw.length / 2 === count;
    if (entries.length > 0 || !full) return { entries, more: full };
  }
}

/** For each id, whether it passes every check: one ZMSCORE per check, in one round trip. */
async function applyChecks(redis: Redis, checks: Check[], ids: string[]): Promise<boolean[]> {
  const pass = ids.map(() => true);
  if (checks.length === 0 || ids.length === 0) return pass;
  const pipe = redis.pipeline();
  for (const c of checks) pipe.zmscore(c.key, ...ids);
  const answers = (await pipe.exec())!;
  for (const [j, [err, scores]] of answers.entries()) {
    if (err) throw err;
    const check = checks[j]!;
    for (const [i, s] of (scores as (string | null)[]).entries()) {
      if (pass[i] && !check.accept(s === null ? null : Number(s))) pass[i] = false;
    }
  }
  return pass;
}
