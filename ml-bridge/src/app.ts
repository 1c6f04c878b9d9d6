/**
 * Builds the ML bridge on the shared service parts: the broker link it answers through,
 * the result watcher and deadline loop that decide answers (answers.ts publishes them),
 * the supervised Python workers, the worker view, routes, metrics and readiness.
 *
 * Drain order: stop the workers first (SIGTERM: each finishes its running jobs) while
 * results are still being answered, then stop the deadline loop and the event stream,
 * then wait for the answers being published.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { Queue } from 'bullmq';
import { BrokerLink, configInvalid, createRedis, mlKeys, queues, requireRole, type ServiceDeps } from '@fleetwire/common';
import { Answers } from './answers.js';
import type { MlBridgeConfig } from './config.js';
import { DeadlineLoop } from './deadlines.js';
import { mlMetrics } from './metrics.js';
import { ResultWatcher } from './results.js';
import { mlRoutes } from './routes.js';
import { readWorkers } from './worker-view.js';
import { staleAfterMs, WorkerPool } from './workers.js';

/** How long start waits for the first supervised worker (it imports onnxruntime and loads the models: about a second). */
const FIRST_WORKER_WAIT_MS = 15_000;
/** How long drain and close wait for answers being published. */
const SETTLE_MS = 2000;

export interface MlBridge {
  readonly node: string;
  readonly pool: WorkerPool;
  readonly readiness: Record<string, () => Promise<boolean>>;
  readonly shutdownTimeoutMs: number;
  start(port: number): Promise<string[]>;
  drain(): Promise<void>;
  close(): Promise<void>;
}

export async function buildMlBridge(config: MlBridgeConfig, deps: ServiceDeps): Promise<MlBridge> {
  // Its own /mqtt is there only when the broker runs in this process.
  if (!config.brokerUrl && !deps.services.includes('broker')) {
    throw configInvalid(['ML_BROKER_URL must name a broker node (ws(s)://host:port/mqtt) when the broker does not run in this process (`fleetwire ml-bridge` alone)']);
  }
  const keys = await deps.keyRing();
  const node = `${hostname()}-${randomBytes(3).toString('hex')}`;
  const log = deps.log.child({ service: 'ml-bridge' });
  const ownBroker = !config.brokerUrl;
  let brokerUrl = config.brokerUrl;
  const link = new BrokerLink({
    url: () => brokerUrl, signer: () => keys.signer, clientId: `service:ml-bridge:${node}`, log: log.child({ part: 'broker-link' }),
    allowSelfSigned: ownBroker,
  });
  const queueConnection = createRedis(config.redisUrl, { name: `ml-bridge-queue:${node}`, maxRetriesPerRequest: null });
  const eventsConnection = createRedis(config.redisUrl, { name: `ml-bridge-events:${node}`, maxRetriesPerRequest: null });
  const queue = new Queue('ml-infer', { connection: queueConnection, prefix: queues.prefix });
  const pool = new WorkerPool(config, { redis: deps.redis, log, metricsRegistry: deps.metricsRegistry, node });

  const workers = () => readWorkers(deps.redis, pool.slots, staleAfterMs(config));
  const aliveCount = async () => (await workers()).filter((w) => w.status === 'alive').length;
  const queueDepth = async () => {
    const c = await queue.getJobCounts('waiting', 'active', 'delayed', 'failed');
    return { waiting: c.waiting ?? 0, active: c.active ?? 0, delayed: c.delayed ?? 0, failed: c.failed ?? 0 };
  };
  const metrics = mlMetrics(deps.metricsRegistry, { queueDepth, workersAlive: aliveCount });
  const answers = new Answers({ redis: deps.redis, link, metrics, log });
  const results = new ResultWatcher({ connection: eventsConnection, queue, answers, log });
  const deadlines = new DeadlineLoop({ redis: deps.redis, queue, answers, intervalMs: config.deadlineCheckMs, log });

  mlRoutes(deps.http, {
    operator: requireRole(keys.verifier, deps.redis, ['admin', 'operator']),
    admin: requireRole(keys.verifier, deps.redis, ['admin']),
    workers, queueDepth,
    reload: (model) => deps.redis.publish(mlKeys.control, JSON.stringify({ action: 'reload', model })),
  });

  return {
    node, pool,
    readiness: {
      workers: async () => (await aliveCount()) > 0,
      broker_link: async () => link.connected,
    },
    shutdownTimeoutMs: pool.stopTimeoutMs + SETTLE_MS + 1000,
    async start(port) {
      if (ownBroker) brokerUrl = `${config.tlsCertFile ? 'wss' : 'ws'}://127.0.0.1:${port}/mqtt`;
      await link.start();
      // Results first, then the deadline loop, then workers: nothing they produce goes unseen.
      await results.start();
      deadlines.start();
      pool.start();
      if (pool.slots.length && !(await pool.firstAlive(FIRST_WORKER_WAIT_MS))) {
        log.warn({ waited_ms: FIRST_WORKER_WAIT_MS }, 'no supervised ML worker is alive yet; requests wait in the queue (or time out) until one is');
      }
      const workersLine = pool.unavailable ? 'no supervised workers (see the error above)' : `${config.workers} supervised worker(s)`;
      return [`ML bridge:           node ${node}, ${workersLine}, answering through ${brokerUrl}`];
    },
    async drain() {
      await pool.stop();
      // Let the results of the workers' last jobs arrive through the event stream before it stops.
      await new Promise((r) => setTimeout(r, 50));
      await deadlines.stop();
      await results.close();
      await answers.settle(SETTLE_MS);
    },
    async close() {
      await pool.stop();
      await deadlines.stop();
      await results.close().catch(() => undefined);
      await answers.settle(SETTLE_MS);
      await queue.close();
      await link.close();
      queueConnection.disconnect();
      eventsConnection.disconnect();
    },
  };
}
