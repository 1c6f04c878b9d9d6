/**
 * Device identities: metadata, status and the digest of the device's API key,
 * in the record the broker reads at CONNECT (`fleetwire:device:{id}`).
 *
 * The record is written together with the listing indexes it feeds (type, tag and
 * location sets, maintenance, revoked; redis-keys.ts) by one Lua script per change, so
 * a filtered listing (common/src/device-index.ts) agrees with the records.
 *
 * API keys look like `fwk_<device id>_<43 random base64url chars>`: the id in
 * the key finds the record without a scan, the 256 random bits make guessing
 * hopeless, and the prefix lets secret scanners recognise a leaked key.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import {
  FleetwireError, findDeviceIds, isDeviceId, publishRevocation, redisKeys, type DeviceOrder, type DevicePageOptions, type DeviceQuery,
} from '@fleetwire/common';
import { authScripts } from './redis-scripts.js';
import { digest, newSecret, safeEqual } from './secrets.js';

export const API_KEY_PREFIX = 'fwk_';
/** A device tag: lower case, so a tag filter needs no case folding; short, as it is part of an index key. */
export const DEVICE_TAG_PATTERN = '^[a-z0-9][a-z0-9_.-]{0,31}$';
export const MAX_DEVICE_TAGS = 16;

export interface DeviceMetadata {
  type: string;
  name?: string;
  /** An empty location clears it. */
  location?: string;
  capabilities?: string[];
  /** Replaces the device's tags as a whole. */
  tags?: string[];
  /**
   * Unix ms until which the device is in maintenance (its silence alerts are muted); null
   * ends maintenance. A time that is not in the future is refused: it is most often seconds
   * sent where milliseconds were meant, and "maintenance that already ended" is spelled null.
   */
  maintenance_until?: number | null;
}

export interface Device extends DeviceMetadata {
  id: string;
  status: 'active' | 'revoked';
  tags: string[];
  /** As set, also once it has passed; null when never set, ended, or the device was revoked. */
  maintenance_until: number | null;
  created_at: number;
  updated_at: number;
  key_created_at?: number;
  revoked_at?: number;
  /** From the device service's state (presence); false for a device never seen. */
  online: boolean;
  /** Unix ms of the last heartbeat the device service recorded; null for a device never seen. */
  last_seen: number | null;
}

/** Index layout version the backfill brings old records up to (redisKeys.deviceIndexVersion). */
const INDEX_VERSION = '1';
const BACKFILL_BATCH = 500;

/** The index kinds the auth service writes with the record, as the Lua scripts take them. */
const indexLayout = JSON.stringify(Object.fromEntries((['type', 'tag', 'location'] as const).map(
  (kind) => [kind, { prefix: redisKeys.deviceIndex(kind, ''), values: redisKeys.deviceIndexValues(kind) }],
)));

/** Splits a key into device id and secret; null when it cannot be one of ours. */
export function parseApiKey(key: string): { deviceId: string } | null {
  if (!key.startsWith(API_KEY_PREFIX) || key.length > 200) return null;
  const rest = key.slice(API_KEY_PREFIX.length);
  const sep = rest.indexOf('_');
  if (sep < 0) return null;
  const deviceId = rest.slice(0, sep);
  return isDeviceId(deviceId) && rest.length - sep - 1 >= 43 ? { deviceId } : null;
}

function newApiKey(deviceId: string): string {
  return newSecret(`${API_KEY_PREFIX}${deviceId}_`);
}

/** `dev-` and 12 base32 characters (60 bits): unique without coordination. */
function newDeviceId(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
  return `dev-${[...randomBytes(12)].map((b) => alphabet[b & 31]).join('')}`;
}

export class DeviceRegistry {
  private readonly scripts: DeviceScripts;

  constructor(private readonly redis: Redis) {
    this.scripts = authScripts<DeviceScripts>(redis);
  }

  /** Registers a device; the API key is returned here and never again. */
  async register(meta: DeviceMetadata & { id?: string }, createdBy: string): Promise<{ device: Device; apiKey: string }> {
    const now = Date.now();
    checkMaintenance(meta.maintenance_until, now);
    const id = meta.id ?? newDeviceId();
    const apiKey = newApiKey(id);
    const { set } = metadataChanges(meta);
    const fields: Record<string, string> = { status: 'active', created_by: createdBy, api_key_digest: digest(apiKey), ...set };
    // The script sets created_at, updated_at and key_created_at to the registration time it
    // answers: now, or a few ms later (lua/write-device.lua says why).
    const registeredAt = await this.write('register', id, now, fields, []);
    if (registeredAt === 'exists') throw new FleetwireError('DEVICE_EXISTS', `A device with id ${id} already exists.`);
    Object.assign(fields, { created_at: registeredAt, updated_at: registeredAt, key_created_at: registeredAt });
    return { device: toDevice(id, fields, [null, null])!, apiKey };
  }

  async get(id: string): Promise<Device | null> {
    return (await this.read([id]))[0] ?? null;
  }

  /**
   * One page of devices matching `q` (common/src/device-index.ts: which index drives, the
   * order, how many candidates one page examines), each with its online flag and last
   * seen from the device service's state.
   */
  async list(q: DeviceQuery, page: DevicePageOptions): Promise<{ devices: Device[]; next_cursor: string | null; order: DeviceOrder }> {
    const found = await findDeviceIds(this.redis, q, page);
    const devices = (await this.read(found.ids)).filter((d): d is Device => d !== null);
    return { devices, next_cursor: found.nextCursor, order: found.order };
  }

  /** Records and device-service state of `ids`, in one round trip; null for an id without a record. */
  private async read(ids: string[]): Promise<(Device | null)[]> {
    if (ids.length === 0) return [];
    const pipe = this.redis.pipeline();
    for (const id of ids) {
      pipe.hgetall(redisKeys.device(id));
      pipe.hmget(redisKeys.deviceState(id), 'online', 'last_seen');
    }
    const rows = (await pipe.exec())!.map(([err, value]) => {
      if (err) throw err;
      return value;
    });
    return ids.map((id, i) => toDevice(id, rows[2 * i] as Record<string, string>, rows[2 * i + 1] as [string | null, string | null]));
  }

  /** Changes the fields given; type, tags and location move the device between listing indexes in the same step. */
  async update(id: string, meta: Partial<DeviceMetadata>): Promise<Device> {
    const now = Date.now();
    checkMaintenance(meta.maintenance_until, now);
    const { set, unset } = metadataChanges(meta);
    const res = await this.write('update', id, now, { ...set, updated_at: String(now) }, unset);
    if (res === 'missing') throw new FleetwireError('NOT_FOUND', `No device ${id}.`);
    if (res !== 'ok') throw new FleetwireError('DEVICE_REVOKED', `Device ${id} is revoked; register it again under a new id.`);
    return (await this.get(id))!;
  }

  private async write(op: 'register' | 'update', id: string, now: number, set: Record<string, string>, unset: string[]): Promise<string> {
    return this.scripts.writeDevice(
      redisKeys.device(id), redisKeys.devices, redisKeys.deviceMaintenance,
      op, id, now, indexLayout, JSON.stringify(set), JSON.stringify(unset),
    );
  }

  /**
   * A new key; the old one stops working at once. Tokens already issued run until they
   * expire, unless `revokeTokens` (a leaked key): then they are refused from now on and
   * the device is disconnected until it is given the new key.
   */
  async rotateKey(id: string, revokeTokens = false): Promise<string> {
    const apiKey = newApiKey(id);
    const now = Date.now();
    await this.updateActive(id, { api_key_digest: digest(apiKey), key_created_at: String(now) }, revokeTokens);
    if (revokeTokens) await publishRevocation(this.redis, { kind: 'device', id });
    return apiKey;
  }

  /**
   * Revokes the device: its key stops working and brokers disconnect it (revocation channel).
   * It stays listed, with status revoked; its maintenance ends.
   */
  async revoke(id: string): Promise<Device> {
    const res = await this.scripts.revokeDevice(
      redisKeys.device(id), redisKeys.devices, redisKeys.deviceIndexRevoked, redisKeys.deviceMaintenance,
      redisKeys.deviceIndexSilent, redisKeys.alertsActive, redisKeys.silenceDue, id, Date.now(),
    );
    if (res === 'missing') throw new FleetwireError('NOT_FOUND', `No device ${id}.`);
    await publishRevocation(this.redis, { kind: 'device', id });
    return (await this.get(id))!;
  }

  /**
   * Indexes the records written before the listing indexes existed, once per Redis: a no-op
   * when redisKeys.deviceIndexVersion says it was done. Resolves to the records indexed, or
   * null when there was nothing to do or `signal` stopped it (it is then done again at the
   * next start: it only adds what the records say, so running it twice changes nothing).
   */
  async ensureIndexes(signal?: AbortSignal): Promise<number | null> {
    if ((await this.redis.get(redisKeys.deviceIndexVersion)) === INDEX_VERSION) return null;
    const indexed = await this.reindex(signal);
    if (signal?.aborted) return null;
    await this.redis.set(redisKeys.deviceIndexVersion, INDEX_VERSION);
    return indexed;
  }

  /**
   * Puts every device record into the indexes its fields call for, in batches of
   * BACKFILL_BATCH records per Lua call so that Redis keeps serving between them (100,000
   * devices are 200 short calls). Devices registered meanwhile are indexed as they are written.
   */
  async reindex(signal?: AbortSignal): Promise<number> {
    let indexed = 0;
    for (let start = 0; !signal?.aborted; start += BACKFILL_BATCH) {
      const ids = await this.redis.zrange(redisKeys.devices, start, start + BACKFILL_BATCH - 1);
      if (ids.length === 0) break;
      indexed += await this.scripts.indexDevices(
        redisKeys.devices, redisKeys.deviceIndexRevoked, redisKeys.deviceMaintenance, redisKeys.device(''), indexLayout, ...ids,
      );
    }
    return indexed;
  }

  /**
   * The device an API key belongs to, when the key is right and the device active, with the
   * device's token generation (read with the key digest, so a token is never signed with a
   * generation newer than the key it was exchanged for).
   */
  async authenticate(apiKey: string): Promise<{ deviceId: string; tokenGen: number }> {
    const parsed = parseApiKey(apiKey);
    if (!parsed) throw new FleetwireError('AUTH_API_KEY_INVALID');
    const [status, stored, gen] = await this.redis.hmget(redisKeys.device(parsed.deviceId), 'status', 'api_key_digest', 'token_gen');
    // Compare first, then look at the status: a revoked device is only named to a caller holding its key.
    if (!safeEqual(digest(apiKey), stored ?? '')) throw new FleetwireError('AUTH_API_KEY_INVALID');
    if (status !== 'active') throw new FleetwireError('AUTH_DEVICE_REVOKED');
    return { deviceId: parsed.deviceId, tokenGen: Number(gen ?? 0) };
  }

  private async updateActive(id: string, fields: Record<string, string>, revokeTokens = false): Promise<void> {
    const res = await this.scripts.updateActiveDevice(redisKeys.device(id), revokeTokens ? '1' : '0', ...Object.entries(fields).flat());
    if (res === 'missing') throw new FleetwireError('NOT_FOUND', `No device ${id}.`);
    if (res !== 'ok') throw new FleetwireError('DEVICE_REVOKED', `Device ${id} is revoked; register it again under a new id.`);
  }
}

function checkMaintenance(until: number | null | undefined, now: number): void {
  if (until === undefined || until === null || until > now) return;
  throw new FleetwireError('VALIDATION_FAILED',
    `body/maintenance_until must be in the future (unix milliseconds; it is ${until}, now is ${now}); send null to end maintenance`);
}

/** Record fields to set and to delete for the metadata given. */
function metadataChanges(meta: Partial<DeviceMetadata>): { set: Record<string, string>; unset: string[] } {
  const set: Record<string, string> = {};
  const unset: string[] = [];
  if (meta.type !== undefined) set.type = meta.type;
  if (meta.name !== undefined) set.name = meta.name;
  if (meta.location === '') unset.push('location');
  else if (meta.location !== undefined) set.location = meta.location;
  if (meta.capabilities !== undefined) set.capabilities = JSON.stringify(meta.capabilities);
  if (meta.tags !== undefined) set.tags = JSON.stringify(meta.tags);
  if (meta.maintenance_until === null) unset.push('maintenance_until');
  else if (meta.maintenance_until !== undefined) set.maintenance_until = String(meta.maintenance_until);
  return { set, unset };
}

/** `state`: the device service's `online` ("1"/"0") and `last_seen` (unix ms), null when it never saw the device. */
function toDevice(id: string, h: Record<string, string>, state: [string | null, string | null]): Device | null {
  if (!h.status) return null;
  const num = (v: string | undefined): number | undefined => (v === undefined ? undefined : Number(v));
  return {
    id, type: h.type ?? 'unknown', status: h.status === 'active' ? 'active' : 'revoked',
    ...(h.name !== undefined ? { name: h.name } : {}),
    ...(h.location !== undefined ? { location: h.location } : {}),
    capabilities: h.capabilities ? (JSON.parse(h.capabilities) as string[]) : [],
    tags: h.tags ? (JSON.parse(h.tags) as string[]) : [],
    maintenance_until: h.maintenance_until ? Number(h.maintenance_until) : null,
    created_at: Number(h.created_at), updated_at: num(h.updated_at) ?? Number(h.created_at),
    ...(h.key_created_at ? { key_created_at: Number(h.key_created_at) } : {}),
    ...(h.revoked_at ? { revoked_at: Number(h.revoked_at) } : {}),
    online: state[0] === '1',
    last_seen: state[1] === null ? null : Number(state[1]),
  };
}

interface DeviceScripts {
  /** lua/write-device.lua */
  writeDevice(...args: (string | number)[]): Promise<string>;
  /** lua/update-active-device.lua */
  updateActiveDevice(...args: (string | number)[]): Promise<string>;
  /** lua/revoke-device.lua */
  revokeDevice(...args: (string | number)[]): Promise<string>;
  /** lua/index-devices.lua */
  indexDevices(...args: (string | number)[]): Promise<number>;
}
