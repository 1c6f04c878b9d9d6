/** The Fastify app: JSON errors in one shape, OpenAPI at /docs, routes registered by the caller. */
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { FleetwireError, type Logger } from '@fleetwire/common';

export async function createHttpApp(log: Logger, tls: { key: Buffer; cert: Buffer } | null, version: string): Promise<FastifyInstance> {
  const opts: FastifyServerOptions & { https?: { key: Buffer; cert: Buffer } } = {
    loggerInstance: log,
    // Per-request lines would drown the broker's own logs; routes log what matters.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1_048_576,
    ...(tls ? { https: tls } : {}),
  };
  const app = Fastify(opts) as unknown as FastifyInstance;
  app.addSchema({
    $id: 'error', type: 'object',
    properties: { error: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } } } },
  });
  await app.register(swagger, {
    openapi: {
      info: { title: 'Fleetwire API', version, description: 'HTTP API v1. MQTT over WebSocket is served at /mqtt.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } } },
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  app.setErrorHandler((err, req, reply) => {
    if (err instanceof FleetwireError) return reply.code(err.status).send(err.toJSON());
    const e = err as { validation?: unknown; statusCode?: number; message: string };
    if (e.validation) return reply.code(400).send({ error: { code: 'VALIDATION_FAILED', message: e.message } });
    if (e.statusCode && e.statusCode < 500) return reply.code(e.statusCode).send({ error: { code: 'VALIDATION_FAILED', message: e.message } });
    req.log.error({ err }, 'request failed');
    return reply.code(500).send({ error: { code: 'INTERNAL_ERROR', message: 'Internal error.' } });
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: { code: 'NOT_FOUND', message: `No route ${req.method} ${req.url.split('?')[0]}` } }));
  return app;
}
