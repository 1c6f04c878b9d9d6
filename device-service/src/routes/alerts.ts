/** GET /v1/alerts: the active silence alerts, or every alert change in the alert log. */
import type { FastifyInstance } from 'fastify';
import { FleetwireError, isDeviceId, queryInteger, redisKeys, type Guard, type Redis } from '@fleetwire/common';
import { deviceScripts } from '../redis-scripts.js';

export interface AlertRouteDeps {
  redis: Redis;
  reader: Guard;
}

interface AlertScripts {
  alertsPage(active: string, limit: number, cursorScore: string, cursorId: string): Promise<string[]>;
}

interface AlertQuery { state: 'active' | 'all'; limit: number; cursor?: string }

export interface ActiveAlert { device_id: string; raised_at: number; last_seen: number; threshold_ms: number; silent_for_ms: number }
export interface LoggedAlertChange {
  id: string; device_id: string; kind: string; state: string; at: number; last_seen: number; threshold_ms: number; silent_for_ms?: number;
}

const errorBody = { $ref: 'error#' } as const;
const ms = (description: string) => ({ type: 'integer', description }) as const;
const item = {
  type: 'object',
  properties: {
    id: { type: 'string', description: 'state=all: the change\'s alert log id (also its cursor)' },
    device_id: { type: 'string' },
    kind: { type: 'string', enum: ['silence'], description: 'state=all' },
    state: { type: 'string', enum: ['raised', 'cleared'], description: 'state=all: what changed' },
    at: ms('state=all: unix ms of the change'),
    raised_at: ms('state=active: unix ms the alert was raised'),
    last_seen: ms('unix ms of the device\'s last heartbeat before the silence'),
    threshold_ms: ms('the device\'s learned silence threshold when the alert was raised'),
    silent_for_ms: ms('state=active: silent so far (now − last_seen); state=all, cleared only: from last_seen to the heartbeat that ended the silence'),
  },
} as const;

/** `<raised_at>-<device id>` (active) or a stream id `<ms>-<seq>` (all). */
const CURSOR_PATTERN = '^[0-9]{1,16}-[a-z0-9][a-z0-9-]{0,63}$';

export function alertRoutes(app: FastifyInstance, d: AlertRouteDeps): void {
  const scripts = deviceScripts<AlertScripts>(d.redis);

  app.get<{ Querystring: AlertQuery }>('/v1/alerts', {
    onRequest: d.reader,
    schema: {
      tags: ['alerts'],
      summary: 'Silence alerts, newest first: state=active (default) lists the devices silent now; state=all lists every raised and cleared change ' +
        'kept in the alert log. Pass `next` as `cursor` for the following page; `next` is null on the last page',
      security: [{ bearer: [] }],
      querystring: {
        type: 'object', additionalProperties: false,
        properties: {
          state: { type: 'string', enum: ['active', 'all'], default: 'active' },
          limit: queryInteger({ minimum: 1, maximum: 1000, default: 100 }),
          cursor: { type: 'string', maxLength: 100, pattern: CURSOR_PATTERN, description: 'the `next` of the previous page, for the same state' },
        },
      },
      response: {
        200: {
          type: 'object',
          properties: {
            state: { type: 'string', enum: ['active', 'all'] },
            total: { type: 'integer', description: 'state=active: devices with an active silence alert' },
            items: { type: 'array', items: item },
            next: { type: ['string', 'null'] },
          },
        },
        400: errorBody, 401: errorBody, 403: errorBody,
      },
    },
  }, async (req) => {
    const q = req.query;
    return q.state === 'active' ? activePage(q.limit, q.cursor) : logPage(q.limit, q.cursor);
  });

  async function activePage(limit: number, cursor: string | undefined) {
    let after = { score: '', id: '' };
    if (cursor !== undefined) {
      const dash = cursor.indexOf('-');
      after = { score: cursor.slice(0, dash), id: cursor.slice(dash + 1) };
      if (!isDeviceId(after.id)) throw new FleetwireError('VALIDATION_FAILED', 'querystring/cursor is not a cursor of state=active (pass the `next` of a state=active page)');
    }
    const [page, total] = await Promise.all([
      scripts.alertsPage(redisKeys.alertsActive, limit, after.score, after.id),
      d.redis.zcard(redisKeys.alertsActive),
    ]);
    const ids = page.filter((_, i) => i % 2 === 0);
    const pipeline = d.redis.pipeline();
    for (const id of ids) pipeline.hmget(redisKeys.deviceState(id), 'last_seen', 'alert_threshold_ms', 'silent_since');
    const states = (await pipeline.exec()) ?? [];
    const now = Date.now();
    const items: ActiveAlert[] = [];
    ids.forEach((id, i) => {
      const [err, fields] = states[i] ?? [];
      if (err) throw err;
      const [lastSeen, threshold, silentSince] = fields as Array<string | null>;
      // Cleared between the two reads: no longer active.
      if (!silentSince) return;
      items.push({
        device_id: id, raised_at: Number(page[i * 2 + 1]), last_seen: Number(lastSeen), threshold_ms: Number(threshold),
        silent_for_ms: Math.max(0, now - Number(lastSeen)),
      });
    });
    const next = ids.length === limit ? `${page[page.length - 1]}-${ids[ids.length - 1]}` : null;
    return { state: 'active', total, items, next };
  }

  async function logPage(limit: number, cursor: string | undefined) {
    if (cursor !== undefined && !/^[0-9]+-[0-9]+$/.test(cursor)) {
      throw new FleetwireError('VALIDATION_FAILED', 'querystring/cursor is not a cursor of state=all (pass the `next` of a state=all page)');
    }
    const entries = await d.redis.xrevrange(redisKeys.alertLog, cursor === undefined ? '+' : `(${cursor}`, '-', 'COUNT', limit);
    const items = entries.map(([id, flat]) => toLoggedChange(id, flat));
    const next = entries.length === limit ? entries[entries.length - 1]![0] : null;
    return { state: 'all', items, next };
  }
}

function toLoggedChange(id: string, flat: string[]): LoggedAlertChange {
  const f: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) f[flat[i]!] = flat[i + 1]!;
  return {
    id, device_id: f.device_id ?? '', kind: f.kind ?? 'silence', state: f.state ?? '', at: Number(f.at), last_seen: Number(f.last_seen),
    threshold_ms: Number(f.threshold_ms), ...(f.silent_for_ms !== undefined ? { silent_for_ms: Number(f.silent_for_ms) } : {}),
  };
}
