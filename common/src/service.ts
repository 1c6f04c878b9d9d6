/**
 * The service contract and the host that runs services. A service is a folder with a
 * `ServiceDefinition` (its name, how it reads its settings, what it reports in the spec,
 * and `build`, which constructs it on the shared parts). `fleetwire up` hosts every
 * service in one process on one port; `fleetwire <name>` hosts one. Either way the host
 * owns what they share: one logger, one metrics registry, one Redis connection, one key
 * ring and one HTTP app, and it composes /readyz and the spec from the list.
 */
import { join, resolve } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { gitCommit } from './build-info.js';
import { baseSpec, loadConfig, readTls, serverConfigProblems, serverSpec, configInvalid } from './config.js';
import { createHttpApp, healthRoutes } from './http.js';
import { openKeyRing, type KeyRing } from './keys.js';
import { createLogger, type Logger } from './logger.js';
import { createMetricsRegistry, type Registry } from './metrics.js';
import { createRedis, type Redis } from './redis.js';
import { exitOnSignal } from './shutdown.js';

/** What every service in one process shares; the host makes it, services only use it. */
export interface ServiceDeps {
  readonly log: Logger;
  readonly metricsRegistry: Registry;
  /** For plain commands. Lua commands carry their service's prefix, so sharing is safe; open your own for blocking or subscriber use. */
  readonly redis: Redis;
  /** The one app on the one port: add routes (and upgrade listeners) to it; the host listens and closes it. */
  readonly http: FastifyInstance;
  readonly version: string;
  /** The names of the services this process runs (`fleetwire up`: all of them), in start order. */
  readonly services: readonly string[];
  /** The signing key ring under <data dir>/keys, opened on first use and shared. */
  keyRing(): Promise<KeyRing>;
  /** The spec of every service in this process, as `fleetwire spec` prints it (GET /v1/spec). */
  spec(): Promise<Record<string, unknown>>;
}

/** A service once built: its routes are on the shared app. */
export interface BuiltService {
  /** Checks for /readyz, reported as `<service>.<check>`; a throw counts as not ready. */
  readonly readiness?: Record<string, () => Promise<boolean>>;
  /** After the shared port listens: extra listeners, timers. Returns lines for the start-up banner. */
  start?(port: number): Promise<string[] | void>;
  /** SIGTERM: stop taking new work and finish what is running. */
  drain(): Promise<void>;
  /** Release everything the service opened; called once, after every service drained. */
  close(): Promise<void>;
  /** Longest drain this service may need; the process exits after the longest of all. */
  readonly shutdownTimeoutMs?: number;
}

/** An admin command a service adds to the `fleetwire` CLI (e.g. `users`). */
export interface ServiceCommand {
  readonly name: string;
  /** Lines for the usage text, each starting with `fleetwire <name>`. */
  readonly usage: string;
  /** Returns the exit code. */
  run(args: string[], env: NodeJS.ProcessEnv): Promise<number>;
}

export interface ServiceDefinition<C = unknown> {
  /** Also the CLI command that runs it alone and its section in the spec. */
  readonly name: string;
  /** One line for the usage text. */
  readonly summary: string;
  /** Reads and validates the settings; throws CONFIG_INVALID listing every problem. */
  loadConfig(env: NodeJS.ProcessEnv): C;
  /** Features, parameters and limits in force: never secrets. `redis` is null when unreachable. */
  spec(config: C, redis: Redis | null): Promise<Record<string, unknown>>;
  /** Constructs the service on the shared parts; does not listen and reads no environment. */
  build(config: C, deps: ServiceDeps): Promise<BuiltService>;
  readonly commands?: readonly ServiceCommand[];
}

/** Keeps a definition's config type private to it while the host holds a list of them. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyService = ServiceDefinition<any>;

const hostSpec = { ...baseSpec, ...serverSpec };

export interface RunningServices {
  readonly port: number;
  readonly tls: boolean;
  readonly http: FastifyInstance;
  readonly deps: ServiceDeps;
  readonly built: ReadonlyMap<string, BuiltService>;
  /** Banner lines the services returned from start(). */
  readonly banner: string[];
  readonly shutdownTimeoutMs: number;
  /** Drains every service (in list order), then closes them (in reverse), the app, the key ring and Redis. */
  stop(): Promise<void>;
}

export interface HostOptions {
  version: string;
  /** Defaults to a pino logger at LOG_LEVEL. */
  log?: Logger;
  metricsRegistry?: Registry;
}

/** Every service's spec section, keyed by service name, after version and commit. */
export async function composeSpec(services: readonly AnyService[], configs: readonly unknown[], redis: Redis | null, version: string): Promise<Record<string, unknown>> {
  const sections = await Promise.all(services.map(async (s, i) => [s.name, await s.spec(configs[i], redis)] as const));
  return { version, commit: gitCommit(), ...Object.fromEntries(sections) };
}

/**
 * Builds the services on one shared app and listens on its port. Every setting of every
 * service is validated before anything starts; a service that fails to build closes the
 * ones built before it.
 */
export async function startServices(services: readonly AnyService[], env: NodeJS.ProcessEnv, opts: HostOptions): Promise<RunningServices> {
  const names = services.map((s) => s.name);
  if (new Set(names).size !== names.length) throw new Error(`two services share a name: ${names.join(', ')}`);
  const host = loadConfig(hostSpec, env);
  const problems = serverConfigProblems(host);
  if (problems.length) throw configInvalid(problems);
  const configs = services.map((s) => s.loadConfig(env));
  const tls = await readTls(host);

  const log = opts.log ?? createLogger({ level: host.logLevel, name: 'fleetwire' });
  const metricsRegistry = opts.metricsRegistry ?? createMetricsRegistry();
  const redis = createRedis(host.redisUrl, { name: 'fleetwire' });
  redis.on('error', (err) => log.warn({ err: err.message }, 'redis connection error'));
  const http = await createHttpApp({ log, tls, version: opts.version, trustedProxies: host.trustedProxies, limits: host, metricsRegistry });

  let ring: Promise<KeyRing> | null = null;
  const deps: ServiceDeps = {
    log, metricsRegistry, redis, http, version: opts.version, services: names,
    keyRing: () => (ring ??= openKeyRing(join(resolve(host.dataDir), 'keys'), { retireAfterMs: host.keyRetireAfterS * 1000, log })),
    spec: () => composeSpec(services, configs, redis, opts.version),
  };

  const built = new Map<string, BuiltService>();
  async function closeAll(): Promise<void> {
    for (const s of [...built.values()].reverse()) await s.close().catch((err: unknown) => log.error({ err }, 'closing a service failed'));
    await http.close();
    if (ring) (await ring).close();
    await redis.quit().catch(() => redis.disconnect());
  }

  try {
    for (const [i, s] of services.entries()) built.set(s.name, await s.build(configs[i], deps));
    const readiness: Record<string, () => Promise<boolean>> = { redis: async () => (await redis.ping()) === 'PONG' };
    for (const [name, s] of built) for (const [check, fn] of Object.entries(s.readiness ?? {})) readiness[`${name}.${check}`] = fn;
    healthRoutes(http, { registry: metricsRegistry, readiness });
    await http.listen({ port: host.port, host: host.host });
  } catch (err) {
    await closeAll();
    throw err;
  }
  const port = (http.server.address() as AddressInfo).port;
  const banner: string[] = [];
  for (const s of built.values()) banner.push(...(await s.start?.(port)) ?? []);
  log.info({ port, services: names }, 'listening');

  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> => (stopping ??= (async () => {
    for (const [name, s] of built) await s.drain().catch((err: unknown) => log.error({ err, service: name }, 'draining a service failed'));
    await closeAll();
  })());
  const declared = [...built.values()].flatMap((s) => (s.shutdownTimeoutMs === undefined ? [] : [s.shutdownTimeoutMs]));
  const shutdownTimeoutMs = declared.length ? Math.max(...declared) : 10_000;
  return { port, tls: tls !== null, http, deps, built, banner, shutdownTimeoutMs, stop };
}

/** The entry point of `fleetwire up` and `fleetwire <service>`: start, print where to connect, drain on SIGTERM. */
export async function runServices(services: readonly AnyService[], env: NodeJS.ProcessEnv, opts: HostOptions): Promise<RunningServices> {
  const running = await startServices(services, env, opts);
  exitOnSignal(running.deps.log, running.shutdownTimeoutMs, running.stop);
  const scheme = running.tls ? 'https' : 'http';
  process.stderr.write([
    `fleetwire ${opts.version} listening on port ${running.port}: ${services.map((s) => s.name).join(', ')}`,
    `  HTTP API:            ${scheme}://localhost:${running.port}/v1  (OpenAPI at /docs)`,
    ...running.banner.map((line) => `  ${line}`),
    '  Health / metrics:    /healthz  /readyz  /metrics',
    '',
  ].join('\n'));
  return running;
}
