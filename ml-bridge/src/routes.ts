/**
 * The bridge's HTTP routes:
 * - GET /internal/ml/health (operators, admins, services): every worker's status, the
 *   number alive, and the ml-infer queue's depth.
 * - POST /internal/ml/models/{name}/reload (admins, services): asks every worker to rescan
 *   that model's versions now (a new version directory becomes the default), through the
 *   control channel every worker subscribes to. 202: workers act on it asynchronously;
 *   `workers_notified` is how many received it.
 */
import type { FastifyInstance } from 'fastify';
import type { Guard } from '@fleetwire/common';
import type { WorkerStatus } from './worker-view.js';

export interface MlRouteDeps {
  operator: Guard;
  admin: Guard;
  workers(): Promise<WorkerStatus[]>;
  queueDepth(): Promise<Record<string, number>>;
  /** Resolves with how many workers received the command. */
  reload(model: string): Promise<number>;
}

/** A model name as its directory under models/ is named. */
export const MODEL_NAME_PATTERN = '^[a-z0-9][a-z0-9_-]{0,63}$';

const errorBody = { $ref: 'error#' } as const;
const modelsShape = {
  type: 'object', description: 'name -> {default version, loaded versions}',
  additionalProperties: { type: 'object', properties: { default: { type: 'string' }, versions: { type: 'array', items: { type: 'string' } } } },
} as const;
const workerShape = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    status: { type: 'string', enum: ['alive', 'stopping', 'missing'], description: 'alive: heartbeat fresh; stopping: finishing its jobs after SIGTERM; missing: heartbeat stale or gone' },
    supervised: { type: 'boolean', description: 'started by this bridge (fleetwire up); false for a standalone worker seen through its heartbeat' },
    pid: { type: ['integer', 'null'] }, host: { type: ['string', 'null'] }, uptime_s: { type: ['integer', 'null'] },
    models: modelsShape,
    jobs_done: { type: 'integer' }, jobs_failed: { type: 'integer' },
    last_job_at: { type: ['integer', 'null'], description: 'Unix ms' }, last_heartbeat_at: { type: ['integer', 'null'], description: 'Unix ms' },
    restarts: { type: 'integer', description: 'restarts by this bridge\'s supervisor (exited or unhealthy)' },
  },
} as const;

export function mlRoutes(app: FastifyInstance, d: MlRouteDeps): void {
  const tags = ['ml'];
  const security = [{ bearer: [] }];

  app.get('/internal/ml/health', {
    onRequest: d.operator,
    schema: {
      tags, security, summary: 'ML workers (supervised and standalone) and the ml-infer queue',
      response: {
        200: {
          type: 'object',
          properties: {
            alive: { type: 'integer' },
            workers: { type: 'array', items: workerShape },
            queue: { type: 'object', properties: { waiting: { type: 'integer' }, active: { type: 'integer' }, delayed: { type: 'integer' }, failed: { type: 'integer' } } },
          },
        },
        401: errorBody, 403: errorBody,
      },
    },
  }, async () => {
    const [workers, queue] = await Promise.all([d.workers(), d.queueDepth()]);
    return { alive: workers.filter((w) => w.status === 'alive').length, workers, queue };
  });

  app.post<{ Params: { name: string } }>('/internal/ml/models/:name/reload', {
    onRequest: d.admin,
    schema: {
      tags, security, summary: 'Makes every worker rescan a model\'s versions now (a new version directory becomes its default)',
      params: { type: 'object', additionalProperties: false, required: ['name'], properties: { name: { type: 'string', pattern: MODEL_NAME_PATTERN } } },
      response: {
        202: { type: 'object', properties: { model: { type: 'string' }, workers_notified: { type: 'integer', description: 'workers subscribed to the control channel that received it' } } },
        400: errorBody, 401: errorBody, 403: errorBody,
      },
    },
  }, async (req, reply) => {
    const notified = await d.reload(req.params.name);
    req.log.info({ model: req.params.name, workers_notified: notified, caller: req.caller?.sub }, 'ml model reload requested');
    return reply.code(202).send({ model: req.params.name, workers_notified: notified });
  });
}
