/** Liveness, readiness and Prometheus metrics. */
import type { FastifyInstance } from 'fastify';
import type { Registry } from '@fleetwire/common';

export interface HealthDeps {
  registry: Registry;
  /** Each check resolves to true when healthy; a throw counts as unhealthy. */
  readiness: Record<string, () => Promise<boolean>>;
}

export function healthRoutes(app: FastifyInstance, d: HealthDeps): void {
  app.get('/healthz', { schema: { tags: ['health'], summary: 'Liveness: the process answers' } }, async () => ({ status: 'ok' }));

  app.get('/readyz', { schema: { tags: ['health'], summary: 'Readiness: Redis reachable, not draining' } }, async (_req, reply) => {
    const checks: Record<string, boolean> = {};
    await Promise.all(Object.entries(d.readiness).map(async ([name, check]) => {
      checks[name] = await check().catch(() => false);
    }));
    const ready = Object.values(checks).every(Boolean);
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'unavailable', checks });
  });

  app.get('/metrics', { schema: { tags: ['health'], summary: 'Prometheus text format' } }, async (_req, reply) => {
    return reply.type(d.registry.contentType).send(await d.registry.metrics());
  });
}
