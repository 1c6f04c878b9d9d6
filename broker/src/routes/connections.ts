/** GET/DELETE /v1/connections: the cluster-wide connection registry and kicks. */
import type { FastifyInstance } from 'fastify';
import { FleetwireError, pageQuery, type Guard } from '@fleetwire/common';
import type { ConnectionRegistry } from '../registry.js';

const connection = {
  type: 'object',
  properties: {
    client_id: { type: 'string' }, kind: { type: 'string', enum: ['device', 'user', 'service'] }, subject: { type: 'string' },
    device_id: { type: 'string' }, user_id: { type: 'string' }, role: { type: 'string' }, node: { type: 'string' },
    ip: { type: 'string' }, transport: { type: 'string', enum: ['ws', 'tcp'] },
    connected_at: { type: 'integer', description: 'Unix ms' }, last_activity: { type: 'integer', description: 'Unix ms, flushed every few seconds' },
  },
} as const;
const errorBody = { $ref: 'error#' } as const;
const idParam = { type: 'object', required: ['id'], properties: { id: { type: 'string', minLength: 1, maxLength: 256 } } } as const;

export interface ConnectionRoutesDeps {
  registry: ConnectionRegistry;
  operator: Guard;
  /** Kicks wherever the client is connected; resolves to the node that holds it. */
  kick: (clientId: string, reason: string | undefined, actor: string) => Promise<string | null>;
}

export function connectionRoutes(app: FastifyInstance, d: ConnectionRoutesDeps): void {
  app.get('/v1/connections', {
    onRequest: d.operator,
    schema: {
      tags: ['connections'], summary: 'List live connections across the cluster, newest first',
      security: [{ bearer: [] }],
      querystring: {
        type: 'object', additionalProperties: false,
        properties: {
          ...pageQuery(1000),
          kind: { type: 'string', enum: ['device', 'user', 'service'] },
        },
      },
      response: { 200: { type: 'object', properties: { total: { type: 'integer' }, items: { type: 'array', items: connection } } }, 401: errorBody, 403: errorBody },
    },
  }, async (req) => {
    const q = req.query as { offset: number; limit: number; kind?: string };
    return d.registry.list(q);
  });

  app.get('/v1/connections/:id', {
    onRequest: d.operator,
    schema: { tags: ['connections'], summary: 'One live connection', security: [{ bearer: [] }], params: idParam, response: { 200: connection, 404: errorBody } },
  }, async (req) => {
    const { id } = req.params as { id: string };
    const rec = await d.registry.get(id);
    if (!rec) throw new FleetwireError('BROKER_CONNECTION_NOT_FOUND');
    return rec;
  });

  app.delete('/v1/connections/:id', {
    onRequest: d.operator,
    schema: {
      tags: ['connections'],
      summary: 'Kick a connection: a sys notice to the device, then a WebSocket close frame with code 4000 and the reason',
      security: [{ bearer: [] }], params: idParam,
      querystring: { type: 'object', additionalProperties: false, properties: { reason: { type: 'string', maxLength: 200 } } },
      response: {
        202: { type: 'object', properties: { client_id: { type: 'string' }, node: { type: 'string' }, reason: { type: 'string' } } },
        404: errorBody,
      },
    },
  }, async (req, reply) => {
    const { id } = req.params as { id: string };
    const { reason } = req.query as { reason?: string };
    const actor = `${req.caller!.typ}:${req.caller!.sub}`;
    const node = await d.kick(id, reason, actor);
    if (!node) throw new FleetwireError('BROKER_CONNECTION_NOT_FOUND');
    req.log.info({ client_id: id, actor, reason }, 'connection kicked');
    return reply.code(202).send({ client_id: id, node, reason: reason ?? 'kicked by an operator' });
  });
}
