/**
 * Device identities: metadata, status and the digest of the device's API key,
 * in the record the broker reads at CONNECT (`fleetwire:device:{id}`).
 *
 * API keys look like `fwk_<device id>_<43 random base64url chars>`: the id in
 * the key finds the record without a scan, the 256 random bits make guessing
 * hopeless, and the prefix lets secret scanners recognise a leaked key.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { FleetwireError, isDeviceId, publishRevocation, redisKeys, revokeDevice } from '@fleetwire/common';
import { authScripts } from './redis-scripts.js';
import { digest, newSecret, safeEqual } from './secrets.js';

export const API_KEY_PREFIX = 'fwk_';

export interface DeviceMetadata {
  type: string;
  name?: string;
  location?: string;
  capabilities?: string[];
}

export interface Device extends DeviceMetadata {
  id: string;
  status: 'active' | 'revoked';
  created_at: number;
  updated_at: number;
  key_created_at?: number;
  revoked_at?: number;
}

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
    const id = meta.id ?? newDeviceId();
    const apiKey = newApiKey(id);
    const now = Date.now();
    const fields: Record<string, string> = {
      status: 'active', created_at: String(now), updated_at: String(now), key_created_at: String(now),
      created_by: createdBy, api_key_digest: digest(apiKey), ...metadataFields(meta),
    };
    const ok = await this.scripts.registerDevice(
      redisKeys.device(id), redisKeys.devices, id, now, ...Object.entries(fields).flat(),
    );
    if (ok !== 1) throw new FleetwireError('DEVICE_EXISTS', `A device with id ${id} already exists.`);
    return { device: toDevice(id, fields)!, apiKey };
  }

  async get(id: string): Promise<Device | null> {
    return toDevice(id, await this.redis.hgetall(redisKeys.device(id)));
  }

  async list(q: { offset: number; limit: number; status?: string; type?: string }): Promise<{ devices: Device[]; next: number | null }> {
    const devices: Device[] = [];
    let offset = q.offset;
    // Filters are applied while paging through the index, 200 records per round trip.
    for (;;) {
      const ids = await this.redis.zrange(redisKeys.devices, offset, offset + 199);
      if (ids.length === 0) return { devices, next: null };
      const pipe = this.redis.pipeline();
      for (const id of ids) pipe.hgetall(redisKeys.device(id));
      const rows = (await pipe.exec()) ?? [];
      for (const [i, id] of ids.entries()) {
        offset++;
        const d = toDevice(id, rows[i]![1] as Record<string, string>);
        if (!d || (q.status && d.status !== q.status) || (q.type && d.type !== q.type)) continue;
        devices.push(d);
        if (devices.length === q.limit) return { devices, next: offset };
      }
    }
  }

  async update(id: string, meta: Partial<DeviceMetadata>): Promise<Device> {
    const fields = { ...metadataFields(meta), updated_at: String(Date.now()) };
    await this.updateActive(id, fields);
    return (await this.get(id))!;
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

  /** Revokes the device: its key stops working and brokers disconnect it (revocation channel). */
  async revoke(id: string): Promise<Device> {
    const existing = await this.get(id);
    if (!existing) throw new FleetwireError('NOT_FOUND', `No device ${id}.`);
    await this.redis.hdel(redisKeys.device(id), 'api_key_digest');
    await revokeDevice(this.redis, id);
    return (await this.get(id))!;
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

function metadataFields(meta: Partial<DeviceMetadata>): Record<string, string> {
  const f: Record<string, string> = {};
  if (meta.type !== undefined) f.type = meta.type;
  if (meta.name !== undefined) f.name = meta.name;
  if (meta.location !== undefined) f.location = meta.location;
  if (meta.capabilities !== undefined) f.capabilities = JSON.stringify(meta.capabilities);
  return f;
}

function toDevice(id: string, h: Record<string, string>): Device | null {
  if (!h.status) return null;
  const num = (v: string | undefined): number | undefined => (v === undefined ? undefined : Number(v));
  return {
    id, type: h.type ?? 'unknown', status: h.status === 'active' ? 'active' : 'revoked',
    ...(h.name !== undefined ? { name: h.name } : {}),
    ...(h.location !== undefined ? { location: h.location } : {}),
    capabilities: h.capabilities ? (JSON.parse(h.capabilities) as string[]) : [],
    created_at: Number(h.created_at), updated_at: num(h.updated_at) ?? Number(h.created_at),
    ...(h.key_created_at ? { key_created_at: Number(h.key_created_at) } : {}),
    ...(h.revoked_at ? { revoked_at: Number(h.revoked_at) } : {}),
  };
}

interface DeviceScripts {
  /** lua/register-device.lua */
  registerDevice(...args: (string | number)[]): Promise<number>;
  /** lua/update-active-device.lua */
  updateActiveDevice(...args: (string | number)[]): Promise<string>;
}
