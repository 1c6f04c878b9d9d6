/**
 * Commands over HTTP: POST /v1/devices/{id}/commands (one device, waits for its result),
 * GET /v1/commands/{cid}, POST /v1/commands (a fleet command) and
 * GET /v1/commands/batches/{id}. Sending is for admins, operators and services; reading
 * for every role. A refused request names the field and records nothing.
 */
import type { FastifyInstance } from 'fastify';
import { FleetwireError, type Guard } from '@fleetwire/common';
import type { BatchRequest, BatchView } from '../command-batches.js';
import type { CommandView } from '../command-results.js';
import { deviceIdSchema, deviceSelectorSchema } from '../device-selector.js';

export interface SendRequest {
  name: string;
  args: Record<string, unknown>;
  timeout_ms?: number;
  queue_if_offline: boolean;
}

/** What POST /v1/devices/{id}/commands answers. */
export type SendAnswer =
  | { status: 200; body: { cid: string; state: string; ok?: boolean; result?: unknown; error?: { code: string; message: string }; late?: boolean } }
  | { status: 202; body: { cid: string; state: 'sent'; expires_at: number } }
  | { status: 504; body: { error: { code: 'COMMAND_TIMEOUT'; message: string }; cid: string } };

export interface CommandRouteDeps {
  operator: Guard;
  reader: Guard;
  limits: { maxTimeoutMs: number; maxArgsBytes: number; maxRatePerS: number };
  send(deviceId: string, req: SendRequest, actor: string, ip: string): Promise<SendAnswer>;
  get(cid: string): Promise<CommandView | null>;
  createBatch(req: BatchRequest, actor: string, ip: string): Promise<{ batch: string; total: number; skipped: number }>;
  getBatch(id: string): Promise<BatchView | null>;
}

const errorBody = { $ref: 'error#' } as const;
const idParam = { type: 'object', additionalProperties: false, required: ['id'], properties: { id: deviceIdSchema } } as const;
const cidParam = {
  type: 'object', additionalProperties: false, required: ['cid'],
  properties: { cid: { type: 'string', minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9:._-]+$' } },
} as const;
const batchParam = { type: 'object', additionalProperties: false, required: ['id'], properties: { id: { type: 'string', format: 'uuid' } } } as const;
const commandName = { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.:-]+$', description: 'e.g. ping, reboot, set_heartbeat_interval' } as const;
const args = { type: 'object', additionalProperties: true, default: {}, description: 'the command\'s arguments; at most COMMAND_MAX_ARGS_BYTES as JSON' } as const;
const errorShape = { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } } } as const;
const states = ['sent', 'delivered', 'succeeded', 'failed', 'expired', 'timed_out'] as const;

const commandView = {
  type: 'object',
  properties: {
    cid: { type: 'string' }, device_id: { type: 'string' }, name: { type: 'string' }, args: { type: 'object', additionalProperties: true },
    actor: { type: 'string', description: 'user:<id> or service:<name>' }, state: { type: 'string', enum: states },
    queued: { type: 'boolean', description: 'sent while the device was offline: it waits in the device\'s session until expires_at' },
    ok: { type: 'boolean' }, result: {}, error: errorShape,
    late: { type: 'boolean', description: 'the result came after the request stopped waiting (timed_out) or after the command expired' },
    created_at: { type: 'integer', description: 'Unix ms' }, expires_at: { type: 'integer', description: 'Unix ms; the device refuses the command after it' },
    delivered_at: { type: 'integer', description: 'Unix ms the device acknowledged the MQTT message' }, finished_at: { type: 'integer', description: 'Unix ms' },
    batch: { type: 'string' },
  },
} as const;

const batchView = {
  type: 'object',
  properties: {
    batch: { type: 'string' }, name: { type: 'string' }, args: { type: 'object', additionalProperties: true },
    selector: { type: 'object', additionalProperties: true }, total: { type: 'integer' },
    dispatched: { type: 'integer', description: 'commands published so far' },
    counts: { type: 'object', properties: Object.fromEntries(states.map((s) => [s, { type: 'integer' }])) },
    done: { type: 'boolean', description: 'every command was sent and ended (succeeded, failed, expired or timed_out)' },
    sending: { type: 'boolean' }, created_at: { type: 'integer' }, actor: { type: 'string' },
    timeout_ms: { type: 'integer' }, rate_per_s: { type: 'integer' },
  },
} as const;

export function commandRoutes(app: FastifyInstance, d: CommandRouteDeps): void {
  const tags = ['commands'];
  const security = [{ bearer: [] }];
  const timeoutMs = { type: 'integer', minimum: 100, maximum: d.limits.maxTimeoutMs } as const;
  const actorOf = (caller: { typ: string; sub: string } | undefined): string => `${caller!.typ}:${caller!.sub}`;

  app.post<{ Params: { id: string }; Body: SendRequest }>('/v1/devices/:id/commands', {
    onRequest: d.operator,
    schema: {
      tags, security,
      summary: 'Send a command to a device and wait up to timeout_ms for its result. 200 with the result; 504 when it does not come in time ' +
        '(GET /v1/commands/{cid} shows a later one); 409 when the device is not connected, unless queue_if_offline: then 202 and the command ' +
        'waits in the device\'s session until expires_at (now + timeout_ms, or COMMAND_QUEUED_TTL_S when timeout_ms is not given, at most that)',
      params: idParam,
      body: {
        type: 'object', required: ['name'],
        properties: {
          name: commandName, args,
          timeout_ms: { ...timeoutMs, description: 'how long to wait for the result (default COMMAND_DEFAULT_TIMEOUT_MS); also when the device stops accepting it' },
          queue_if_offline: { type: 'boolean', default: false },
        },
      },
      response: {
        200: { type: 'object', properties: { cid: { type: 'string' }, state: { type: 'string', enum: states }, ok: { type: 'boolean' }, result: {}, error: errorShape, late: { type: 'boolean' } } },
        202: { type: 'object', properties: { cid: { type: 'string' }, state: { type: 'string' }, expires_at: { type: 'integer' } } },
        504: { type: 'object', properties: { error: errorShape, cid: { type: 'string' } } },
        400: errorBody, 403: errorBody, 404: errorBody, 409: errorBody,
      },
    },
  }, async (req, reply) => {
    refuseUnknown(req.body, ['name', 'args', 'timeout_ms', 'queue_if_offline'], '');
    checkArgsSize(req.body.args, d.limits.maxArgsBytes);
    const answer = await d.send(req.params.id, req.body, actorOf(req.caller), req.ip);
    return reply.code(answer.status).send(answer.body);
  });

  app.get<{ Params: { cid: string } }>('/v1/commands/:cid', {
    onRequest: d.reader,
    schema: { tags, security, summary: 'A command: its state, result and timings', params: cidParam, response: { 200: commandView, 404: errorBody } },
  }, async (req) => {
    const view = await d.get(req.params.cid);
    if (!view) throw new FleetwireError('NOT_FOUND', `No command ${req.params.cid} (unknown, or older than COMMAND_RECORD_TTL_S).`);
    return view;
  });

  app.post<{ Body: BatchRequest }>('/v1/commands', {
    onRequest: d.operator,
    schema: {
      tags, security,
      summary: 'A fleet command: the command to every active device the selector picks, at most rate_per_s a second; offline devices get it ' +
        'queued in their session until it expires. Follow it at GET /v1/commands/batches/{batch}',
      body: {
        type: 'object', required: ['selector', 'name'],
        properties: {
          selector: deviceSelectorSchema,
          name: commandName, args,
          timeout_ms: { ...timeoutMs, description: 'each command\'s expiry after it is sent (default: COMMAND_DEFAULT_TIMEOUT_MS for a connected device, COMMAND_QUEUED_TTL_S for an offline one)' },
          rate_per_s: { type: 'integer', minimum: 1, maximum: d.limits.maxRatePerS, default: Math.min(20, d.limits.maxRatePerS) },
        },
      },
      response: {
        202: { type: 'object', properties: { batch: { type: 'string' }, total: { type: 'integer' }, skipped: { type: 'integer', description: 'revoked devices the selector matched' } } },
        400: errorBody, 403: errorBody,
      },
    },
  }, async (req, reply) => {
    refuseUnknown(req.body, ['selector', 'name', 'args', 'timeout_ms', 'rate_per_s'], '');
    refuseUnknown(req.body.selector, ['ids', 'type', 'tag', 'firmware'], 'selector.');
    checkArgsSize(req.body.args, d.limits.maxArgsBytes);
    return reply.code(202).send(await d.createBatch(req.body, actorOf(req.caller), req.ip));
  });

  app.get<{ Params: { id: string } }>('/v1/commands/batches/:id', {
    onRequest: d.reader,
    schema: { tags, security, summary: 'A fleet command\'s progress: its commands counted per state', params: batchParam, response: { 200: batchView, 404: errorBody } },
  }, async (req) => {
    const view = await d.getBatch(req.params.id);
    if (!view) throw new FleetwireError('NOT_FOUND', `No fleet command ${req.params.id} (unknown, or older than COMMAND_RECORD_TTL_S).`);
    return view;
  });
}

/**
 * Fastify's validator would silently drop unknown properties under additionalProperties:
 * false; a misspelt `queue_if_offline` must be refused, not ignored.
 */
function refuseUnknown(body: object, known: readonly string[], prefix: string): void {
  const unknown = Object.keys(body).filter((k) => !known.includes(k));
  if (unknown.length) throw new FleetwireError('VALIDATION_FAILED', `${prefix}${unknown[0]} is not a field of this request (fields: ${known.map((k) => prefix + k).join(', ')})`);
}

function checkArgsSize(value: Record<string, unknown>, max: number): void {
  const bytes = Buffer.byteLength(JSON.stringify(value));
  if (bytes > max) throw new FleetwireError('VALIDATION_FAILED', `args is ${bytes} bytes as JSON; at most ${max} (COMMAND_MAX_ARGS_BYTES)`);
}
