/** /v1/devices: registration, metadata, the filtered listing, key rotation, revocation, and the API-key → token exchange. */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { FleetwireError, queryInteger, redisKeys, signToken, type AuditLog, type DeviceQuery, type Guard, type KeyRing } from '@fleetwire/common';
import type { AuthConfig } from '../config.js';
import type { DeviceMetadata, DeviceRegistry } from '../devices.js';
import type { Limits } from '../limits.js';
import type { AuthMetrics } from '../metrics.js';
import { device, deviceMetadata, deviceTag, errorResponse, idParam } from './schemas.js';

export interface DeviceRouteDeps {
  config: AuthConfig;
  devices: DeviceRegistry;
  keys: KeyRing;
  limits: Limits;
  audit: AuditLog;
  metrics: AuthMetrics;
  operator: Guard;
  reader: Guard;
}

const deviceId = { type: 'string', pattern: '^[a-z0-9][a-z0-9-]{2,63}$' } as const;

/** The query string: the filters of DeviceQuery, with the last-seen bounds in snake case, and the page. */
type ListQuery = Omit<DeviceQuery, 'lastSeenAfter' | 'lastSeenBefore'> & {
  limit: number;
  cursor?: string;
  last_seen_after?: number;
  last_seen_before?: number;
};

const listQuery = {
  type: 'object', additionalProperties: false,
  properties: {
    limit: queryInteger({ minimum: 1, maximum: 1000, default: 100 }),
    cursor: { type: 'string', minLength: 1, maxLength: 200, description: 'next_cursor of the previous page, with the same filters' },
    status: { type: 'string', enum: ['active', 'revoked'] },
    type: deviceMetadata.type,
    tag: deviceTag,
    location: { type: 'string', minLength: 1, maxLength: 200, description: 'Exact, case-sensitive' },
    firmware: { type: 'string', minLength: 1, maxLength: 64, description: 'The firmware version of the last heartbeat, exact' },
    online: { type: 'boolean', description: 'false: not connected now, never-seen devices included' },
    silent: { type: 'boolean', description: 'true: under an active silence alert' },
    last_seen_after: queryInteger({ description: 'Unix ms: last seen at or after; devices never seen do not match' }),
    last_seen_before: queryInteger({ description: 'Unix ms: last seen before; devices never seen do not match' }),
  },
} as const;
const listParams = new Set(Object.keys(listQuery.properties));

/**
 * Fastify drops query parameters its schema does not name; a filter with a typo would then
 * list every device, and an old client's `offset` would get the first page forever.
 */
async function refuseUnknownListParams(req: FastifyRequest): Promise<void> {
  for (const name of Object.keys(req.query as Record<string, unknown>)) {
    if (name === 'offset') throw new FleetwireError('VALIDATION_FAILED', 'querystring/offset is no longer taken: pages follow `cursor` (the next_cursor of the previous answer)');
    if (!listParams.has(name)) {
      throw new FleetwireError('VALIDATION_FAILED', `querystring/${name.slice(0, 64)} is not a parameter of this listing (known: ${[...listParams].join(', ')})`);
    }
  }
}

function deviceQuery(q: ListQuery): DeviceQuery {
  if (q.last_seen_after !== undefined && q.last_seen_before !== undefined && q.last_seen_after >= q.last_seen_before) {
    throw new FleetwireError('VALIDATION_FAILED', 'querystring/last_seen_after must be less than last_seen_before');
  }
  return {
    status: q.status, type: q.type, tag: q.tag, location: q.location, firmware: q.firmware, online: q.online, silent: q.silent,
    lastSeenAfter: q.last_seen_after, lastSeenBefore: q.last_seen_before,
  };
}

export function deviceRoutes(app: FastifyInstance, d: DeviceRouteDeps): void {
  const { config, devices, keys, limits, audit, metrics, operator, reader } = d;
  const tags = ['devices'];
  const security = [{ bearer: [] }];
  const actorOf = (sub: string, typ: string): string => `${typ}:${sub}`;

  app.post<{ Body: DeviceMetadata & { id?: string } }>('/v1/devices', {
    onRequest: operator,
    schema: {
      tags, security, summary: 'Register a device; its API key is in this answer and never again',
      body: { type: 'object', required: ['type'], properties: { id: deviceId, ...deviceMetadata } },
      response: { 201: { type: 'object', properties: { ...device.properties, api_key: { type: 'string' } } }, 400: errorResponse, 409: errorResponse },
    },
  }, async (req, reply) => {
    const actor = actorOf(req.caller!.sub, req.caller!.typ);
    const { device: created, apiKey } = await devices.register(req.body, actor);
    await audit.record({ type: 'device.registered', actor, subject: `device:${created.id}`, ip: req.ip, detail: { type: created.type } });
    return reply.code(201).send({ ...created, api_key: apiKey });
  });

  app.get<{ Querystring: ListQuery }>('/v1/devices', {
    onRequest: reader,
    preValidation: refuseUnknownListParams,
    schema: {
      tags, security,
      summary: 'List devices matching every filter given, a page at a time: pass next_cursor back as cursor until it is null',
      description: 'Order (`order` in the answer): by registration, oldest first, except when last_seen_after/before are the only ' +
        'filters besides online=false, silent=false and status=active: then by last seen, oldest first, and a device that sends ' +
        'a heartbeat while you page may come again with its newer last_seen. One page examines at most max(20 × limit, 1000) ' +
        'candidates, so a page of a sparse filter can be short, even empty, with a next_cursor: follow it.',
      querystring: listQuery,
      response: {
        200: {
          type: 'object',
          properties: {
            devices: { type: 'array', items: device },
            next_cursor: { type: ['string', 'null'] },
            order: { type: 'string', enum: ['registered', 'last_seen'] },
          },
        },
        400: errorResponse,
      },
    },
  }, async (req) => devices.list(deviceQuery(req.query), { limit: req.query.limit, cursor: req.query.cursor }));

  app.get<{ Params: { id: string } }>('/v1/devices/:id', {
    onRequest: reader,
    schema: { tags, security, summary: 'One device', params: idParam, response: { 200: device, 404: errorResponse } },
  }, async (req) => {
    const found = await devices.get(req.params.id);
    if (!found) throw new FleetwireError('NOT_FOUND', `No device ${req.params.id}.`);
    return found;
  });

  app.patch<{ Params: { id: string }; Body: Partial<DeviceMetadata> }>('/v1/devices/:id', {
    onRequest: operator,
    schema: {
      tags, security, summary: 'Update metadata; type, tags and location move the device between listing filters at once', params: idParam,
      body: { type: 'object', minProperties: 1, properties: deviceMetadata },
      response: { 200: device, 400: errorResponse, 404: errorResponse, 409: errorResponse },
    },
  }, async (req) => {
    const updated = await devices.update(req.params.id, req.body);
    await audit.record({ type: 'device.updated', actor: actorOf(req.caller!.sub, req.caller!.typ), subject: `device:${updated.id}`, ip: req.ip, detail: { fields: Object.keys(req.body).join(',') } });
    return updated;
  });

  app.delete<{ Params: { id: string } }>('/v1/devices/:id', {
    onRequest: operator,
    schema: {
      tags, security,
      summary: 'Revoke: the key stops working and every broker node disconnects the device within a second; ' +
        'it stays listed with status revoked, and its maintenance ends',
      params: idParam, response: { 200: device, 404: errorResponse },
    },
  }, async (req) => {
    const revoked = await devices.revoke(req.params.id);
    await audit.record({ type: 'device.revoked', actor: actorOf(req.caller!.sub, req.caller!.typ), subject: `device:${revoked.id}`, ip: req.ip });
    return revoked;
  });

  app.post<{ Params: { id: string }; Querystring: { revoke_tokens: boolean } }>('/v1/devices/:id/keys', {
    onRequest: operator,
    schema: {
      tags, security,
      summary: 'Rotate the API key: the old key stops working now; tokens already issued run until they expire, ' +
        'unless revoke_tokens=true (a leaked key): then they are refused at once and the device is disconnected',
      params: idParam,
      querystring: { type: 'object', properties: { revoke_tokens: { type: 'boolean', default: false } } },
      response: { 200: { type: 'object', properties: { device_id: { type: 'string' }, api_key: { type: 'string' } } }, 404: errorResponse, 409: errorResponse },
    },
  }, async (req) => {
    const apiKey = await devices.rotateKey(req.params.id, req.query.revoke_tokens);
    await audit.record({
      type: 'device.key-rotated', actor: actorOf(req.caller!.sub, req.caller!.typ), subject: `device:${req.params.id}`, ip: req.ip,
      detail: { tokens_revoked: req.query.revoke_tokens },
    });
    return { device_id: req.params.id, api_key: apiKey };
  });

  app.post<{ Body: { api_key: string } }>('/v1/devices/token', {
    schema: {
      tags, summary: 'Exchange a device API key for a device token (offered to the broker as `auth.<token>`)',
      body: { type: 'object', required: ['api_key'], properties: { api_key: { type: 'string', minLength: 1, maxLength: 200 } } },
      response: {
        200: { type: 'object', properties: { token: { type: 'string' }, device_id: { type: 'string' }, expires_in: { type: 'integer' } } },
        401: errorResponse, 429: errorResponse,
      },
    },
  }, async (req) => {
    const failures = { key: redisKeys.deviceTokenFailures(req.ip), limit: config.deviceTokenPerIp, windowMs: 60_000 };
    // The address's failures are read together with the key's record: both commands leave in the
    // same tick, so ioredis auto-pipelining sends them in one round trip, as the success path was.
    const [recent, checked] = await Promise.allSettled([limits.count(failures), devices.authenticate(req.body.api_key)]);
    if (recent.status === 'rejected') throw recent.reason;
    // An address over its limit is refused whatever it sends, a right key included: otherwise its
    // next guesses would still be told which one was right.
    if (recent.value >= config.deviceTokenPerIp) {
      metrics.deviceTokens.inc({ outcome: 'AUTH_RATE_LIMITED' });
      throw new FleetwireError('AUTH_RATE_LIMITED', undefined, { retryAfterS: 60 });
    }
    if (checked.status === 'rejected') {
      const err: unknown = checked.reason;
      metrics.deviceTokens.inc({ outcome: err instanceof FleetwireError ? err.code : 'error' });
      await limits.record(failures);
      throw err;
    }
    const { deviceId: id, tokenGen } = checked.value;
    metrics.deviceTokens.inc({ outcome: 'issued' });
    const token = await signToken(keys.signer, { sub: id, typ: 'device', ttlSeconds: config.deviceTokenTtlS, extra: { gen: tokenGen } });
    return { token, device_id: id, expires_in: config.deviceTokenTtlS };
  });
}
