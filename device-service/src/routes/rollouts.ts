/**
 * OTA rollouts over HTTP: POST /v1/rollouts, GET /v1/rollouts[/{id}[/devices]], and
 * POST /v1/rollouts/{id}/pause|resume|cancel. Creating and acting: admins and operators
 * (audited); reading: every role. A refused request names the field and records nothing.
 */
import type { FastifyInstance } from 'fastify';
import { FleetwireError, type Guard } from '@fleetwire/common';
import { DEVICE_STATES, ROLLOUT_STATES, type DeviceState, type RolloutRequest, type Rollouts } from '../rollouts.js';
import { deviceSelectorSchema, SELECTOR_KINDS } from '../device-selector.js';

const errorBody = { $ref: 'error#' } as const;
const idParam = { type: 'object', additionalProperties: false, required: ['id'], properties: { id: { type: 'string', format: 'uuid' } } } as const;
const countsSchema = { type: 'object', properties: Object.fromEntries(DEVICE_STATES.map((s) => [s, { type: 'integer' }])) } as const;
const rolloutView = {
  type: 'object',
  properties: {
    id: { type: 'string' }, state: { type: 'string', enum: ROLLOUT_STATES },
    firmware: { type: 'object', properties: { sha256: { type: 'string' }, version: { type: 'string' }, chip: { type: ['string', 'null'] } } },
    selector: { type: 'object', additionalProperties: true },
    waves: {
      type: 'array',
      items: { type: 'object', properties: { percent: { type: 'integer' }, hold_s: { type: 'integer' }, devices: { type: 'integer' }, started_at: { type: ['integer', 'null'] } } },
    },
    current_wave: { type: 'integer' }, counts: countsSchema, counts_by_wave: { type: 'array', items: countsSchema },
    failure_ratio: { type: 'number' }, abort_reason: { type: ['string', 'null'] },
    rate_per_min: { type: 'integer' }, jitter_s: { type: 'integer' },
    failure_threshold: { type: 'object', properties: { ratio: { type: 'number' }, min_sample: { type: 'integer' } } },
    confirm_window_s: { type: 'integer' }, allow_downgrade: { type: 'boolean' },
    created_at: { type: 'integer' }, updated_at: { type: 'integer' }, actor: { type: 'string' },
  },
} as const;
const FIELDS = ['firmware', 'selector', 'waves', 'rate_per_min', 'jitter_s', 'failure_threshold', 'confirm_window_s', 'allow_downgrade'];

export function rolloutRoutes(app: FastifyInstance, d: { operator: Guard; reader: Guard; rollouts: Rollouts }): void {
  const tags = ['rollouts'];
  const security = [{ bearer: [] }];
  const actorOf = (caller: { typ: string; sub: string } | undefined): string => `${caller!.typ}:${caller!.sub}`;

  app.post<{ Body: RolloutRequest }>('/v1/rollouts', {
    onRequest: d.operator,
    schema: {
      tags, security,
      summary: 'Roll a stored firmware image out to the active devices a selector picks, wave by wave; incompatible devices are skipped, never offered',
      description: 'Compatibility, from the device record\'s capabilities and its heartbeats: `chip:<name>` must equal the manifest\'s chip '
        + '(no such entry: skipped); `ota_partition_bytes:<n>`, when present, must be at least the manifest\'s size (smaller: skipped, '
        + 'the reason naming both sizes; absent: offered, the device refuses an image too large for its partition itself); the running '
        + 'version must be at least min_version, not the image\'s, and not newer unless allow_downgrade.',
      body: {
        type: 'object', required: ['firmware', 'selector'],
        properties: {
          firmware: { type: 'string', pattern: '^[0-9a-f]{64}$', description: 'the sha256 of an image stored with POST /v1/firmware' },
          selector: deviceSelectorSchema,
          waves: {
            type: 'array', minItems: 1, maxItems: 20, description: 'cumulative percent of the targets, increasing, the last 100; default one wave of 100',
            items: {
              type: 'object', required: ['percent'],
              properties: { percent: { type: 'integer', minimum: 1, maximum: 100 }, hold_s: { type: 'integer', minimum: 0, maximum: 604_800, default: 0 } },
            },
          },
          rate_per_min: { type: 'integer', minimum: 1, maximum: 100_000, default: 60, description: 'offers a minute at most' },
          jitter_s: { type: 'integer', minimum: 0, maximum: 3600, default: 0, description: 'a random 0..jitter_s s added after each offer' },
          failure_threshold: {
            type: 'object', required: ['ratio', 'min_sample'],
            properties: { ratio: { type: 'number', minimum: 0, maximum: 1 }, min_sample: { type: 'integer', minimum: 1 } },
            description: 'abort when (failed + rolled_back + timed_out) / finished exceeds ratio, once min_sample devices finished; default {ratio: 0.2, min_sample: 5}',
          },
          confirm_window_s: { type: 'integer', minimum: 1, maximum: 86_400, default: 600, description: 'after its offer, a device not finished by then is rolled_back (seen on another version) or timed_out' },
          allow_downgrade: { type: 'boolean', default: false },
        },
      },
      response: { 201: rolloutView, 400: errorBody, 403: errorBody, 404: errorBody },
    },
  }, async (req, reply) => {
    refuseUnknown(req.body, FIELDS, '');
    refuseUnknown(req.body.selector, SELECTOR_KINDS, 'selector.');
    for (const [i, w] of (req.body.waves ?? []).entries()) refuseUnknown(w, ['percent', 'hold_s'], `waves[${i}].`);
    if (req.body.failure_threshold) refuseUnknown(req.body.failure_threshold, ['ratio', 'min_sample'], 'failure_threshold.');
    return reply.code(201).send(await d.rollouts.create(req.body, actorOf(req.caller), req.ip));
  });

  app.get<{ Querystring: { limit: number; cursor?: string } }>('/v1/rollouts', {
    onRequest: d.reader,
    schema: {
      tags, security, summary: 'Rollouts, newest first',
      querystring: { type: 'object', properties: { limit: { type: 'integer', minimum: 1, maximum: 100, default: 20 }, cursor: { type: 'string', maxLength: 32 } } },
      response: { 200: { type: 'object', properties: { items: { type: 'array', items: rolloutView }, next_cursor: { type: ['string', 'null'] } } }, 400: errorBody },
    },
  }, async (req) => d.rollouts.list(req.query.limit, req.query.cursor));

  app.get<{ Params: { id: string } }>('/v1/rollouts/:id', {
    onRequest: d.reader,
    schema: { tags, security, summary: 'A rollout: its waves and its devices counted per state and per wave', params: idParam, response: { 200: rolloutView, 404: errorBody } },
  }, async (req) => {
    const view = await d.rollouts.get(req.params.id);
    if (!view) throw new FleetwireError('NOT_FOUND', `No rollout ${req.params.id}.`);
    return view;
  });

  app.get<{ Params: { id: string }; Querystring: { state?: DeviceState; limit: number; cursor?: string } }>('/v1/rollouts/:id/devices', {
    onRequest: d.reader,
    schema: {
      tags, security, summary: 'A rollout\'s target devices in wave order, with their state (and why, when skipped or failed)', params: idParam,
      querystring: {
        type: 'object',
        properties: { state: { type: 'string', enum: DEVICE_STATES }, limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 }, cursor: { type: 'string', maxLength: 32 } },
      },
      response: {
        200: {
          type: 'object',
          properties: {
            items: {
              type: 'array',
              items: { type: 'object', properties: { device_id: { type: 'string' }, state: { type: 'string' }, wave: { type: 'integer' }, reason: { type: 'string' }, at: { type: 'integer' } } },
            },
            next_cursor: { type: ['string', 'null'] },
          },
        },
        400: errorBody, 404: errorBody,
      },
    },
  }, async (req) => {
    const page = await d.rollouts.devices(req.params.id, req.query);
    if (!page) throw new FleetwireError('NOT_FOUND', `No rollout ${req.params.id}.`);
    return page;
  });

  for (const action of ['pause', 'resume', 'cancel'] as const) {
    app.post<{ Params: { id: string } }>(`/v1/rollouts/:id/${action}`, {
      onRequest: d.operator,
      schema: {
        tags, security, params: idParam,
        summary: { pause: 'Stop offering (devices already offered go on)', resume: 'Offer again', cancel: 'End the rollout: no more offers' }[action] + '; 409 when its state does not allow it',
        response: { 200: rolloutView, 403: errorBody, 404: errorBody, 409: errorBody },
      },
    }, async (req) => d.rollouts.transition(req.params.id, action, actorOf(req.caller), req.ip));
  }
}

function refuseUnknown(body: object, known: readonly string[], prefix: string): void {
  const unknown = Object.keys(body).filter((k) => !known.includes(k));
  if (unknown.length) throw new FleetwireError('VALIDATION_FAILED', `${prefix}${unknown[0]} is not a field of this request (fields: ${known.map((k) => prefix + k).join(', ')})`);
}
