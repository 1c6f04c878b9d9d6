/**
 * The Fastify app every service serves its API on: JSON errors in one shape,
 * OpenAPI at /docs, health and metrics routes. Routes are registered by the caller,
 * so in `fleetwire up` every service adds its routes to one app on one port.
 */
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import swagger from '@fastify/swagger';
// Route schemas may carry OpenAPI fields (tags, summary, security) in every service.
export type {} from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { isTrustedProxy, trustedProxyList } from './client-address.js';
import { defaults, serverSpec, type ServerConfig } from './config.js';
import { FleetwireError } from './errors.js';
import { refuseNonFiniteNumbers } from './query-numbers.js';
import { DOCS_CSP, securityHeaders } from './security-headers.js';
import type { Logger } from './logger.js';
import { LogThrottle } from './log-throttle.js';
import { Counter, type Registry } from './metrics.js';
import { capSocketsPerAddress } from './socket-cap.js';

export interface HttpAppOptions {
  log: Logger;
  tls: { key: Buffer; cert: Buffer } | null;
  version: string;
  /** Proxy addresses/CIDRs whose X-Forwarded-For is believed for req.ip (rate limits, audit); exempt from the socket cap. */
  trustedProxies?: readonly string[];
  /** Timeouts and the per-address socket cap (HTTP_* settings); serverSpec's defaults when left out. */
  limits?: HttpLimits;
  /** Where fleetwire_http_sockets_refused_total is registered; none when left out. */
  metricsRegistry?: Registry;
}

export type HttpLimits = Pick<ServerConfig,
  'httpHeadersTimeoutMs' | 'httpRequestTimeoutMs' | 'httpKeepAliveTimeoutMs' | 'httpConnectionsCheckIntervalMs' | 'httpMaxSocketsPerIp'>;

export async function createHttpApp({ log, tls, version, trustedProxies = [], limits, metricsRegistry }: HttpAppOptions): Promise<FastifyInstance> {
  const l = limits ?? defaults(serverSpec);
  // Node's defaults let a socket that sends a few bytes of a request line live 90 s
  // (60 s headers timeout, checked every 30 s); set every timeout explicitly. Node hands
  // an upgraded socket to ws untouched by these, so MQTT connections are unaffected.
  const nodeServerOptions = {
    headersTimeout: l.httpHeadersTimeoutMs,
    requestTimeout: l.httpRequestTimeoutMs,
    keepAliveTimeout: l.httpKeepAliveTimeoutMs,
    connectionsCheckingInterval: l.httpConnectionsCheckIntervalMs,
  };
  const opts: FastifyServerOptions & { https?: object; http?: object } = {
    loggerInstance: log,
    trustProxy: trustedProxies.length > 0 ? [...trustedProxies] : false,
    // Per-request lines would drown the broker's own logs; routes log what matters.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1_048_576,
    // Fastify sets these two on the server after creating it; its defaults would undo ours.
    requestTimeout: l.httpRequestTimeoutMs,
    keepAliveTimeout: l.httpKeepAliveTimeoutMs,
    // A TLS client that never finishes its handshake is closed like one that never finishes its request head.
    ...(tls ? { https: { ...tls, ...nodeServerOptions, handshakeTimeout: l.httpHeadersTimeoutMs } } : { http: nodeServerOptions }),
  };
  const app = Fastify(opts as FastifyServerOptions) as unknown as FastifyInstance;
  securityHeaders(app, { tls: tls !== null });
  refuseNonFiniteNumbers(app);
  ignoreContentTypeOfEmptyBodies(app);

  const proxies = trustedProxyList(trustedProxies);
  const refused = metricsRegistry
    ? new Counter({ name: 'fleetwire_http_sockets_refused_total', help: 'sockets closed on arrival, by reason', labelNames: ['reason'], registers: [metricsRegistry] })
    : null;
  const refusalLog = new LogThrottle(10_000);
  capSocketsPerAddress(app.server, {
    maxPerAddress: l.httpMaxSocketsPerIp,
    exempt: (ip) => isTrustedProxy(proxies, ip),
    onRefused(ip) {
      refused?.inc({ reason: 'per_ip' });
      const suppressed = refusalLog.take('per_ip');
      if (suppressed !== null) {
        log.warn({ ip, max: l.httpMaxSocketsPerIp, suppressed }, 'closing a socket: HTTP_MAX_SOCKETS_PER_IP reached for this address');
      }
    },
  });
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
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: DOCS_CSP, uiConfig: { validatorUrl: null } });

  app.setErrorHandler((err, req, reply) => {
    if (err instanceof FleetwireError) {
      if (err.retryAfterS !== undefined) void reply.header('retry-after', String(Math.max(1, Math.ceil(err.retryAfterS))));
      return reply.code(err.status).send(err.toJSON());
    }
    const e = err as { validation?: unknown; statusCode?: number; message: string };
    if (e.validation) return reply.code(400).send({ error: { code: 'VALIDATION_FAILED', message: e.message } });
    if (e.statusCode && e.statusCode < 500) return reply.code(e.statusCode).send({ error: { code: 'VALIDATION_FAILED', message: e.message } });
    req.log.error({ err }, 'request failed');
    return reply.code(500).send({ error: { code: 'INTERNAL_ERROR', message: 'Internal error.' } });
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: { code: 'NOT_FOUND', message: `No route ${req.method} ${req.url.split('?')[0]}` } }));
  return app;
}

/**
 * A request with nothing after its head has no body to parse, whatever its content type
 * says. Generic JSON clients send `content-type: application/json` on every request,
 * DELETEs included; Fastify would parse that empty body as JSON and answer 400 (or 415
 * for other types). Without the header Fastify skips parsing: a route that takes no body
 * runs, and one whose schema needs a body answers VALIDATION_FAILED.
 */
function ignoreContentTypeOfEmptyBodies(app: FastifyInstance): void {
  app.addHook('onRequest', async (req) => {
    const h = req.headers;
    if (h['content-type'] !== undefined && h['transfer-encoding'] === undefined && (h['content-length'] === undefined || h['content-length'] === '0')) {
      delete h['content-type'];
    }
  });
}

/** Liveness, readiness and Prometheus metrics. */
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
