/**
 * Test harness: the `fleetwire up` layout for ML in this process (broker, auth service and
 * ML bridge on one port, through the real service host) on this test file's own Redis,
 * with real Python worker processes the bridge supervises. Devices are real
 * MQTT-over-WebSocket clients (mqtt.js) with real device tokens.
 *
 * The worker is this checkout's .venv/bin/fleetwire-ml-worker and python-worker/models
 * (`make venv`), unless ML_WORKER_COMMAND / ML_MODELS_DIR say otherwise.
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { MqttClient } from 'mqtt';
import { pack } from 'msgpackr';
import {
  createLogger, createMetricsRegistry, createRedis, startServices, type AnyService,
} from '@fleetwire/common';
import { brokerService as broker } from '@fleetwire/broker';
import { authService as auth } from '@fleetwire/auth-service';
import { connect, waitFor } from '../../broker/test/helpers.js';
import { ADMIN, fleetClient, metricValue, type TestFleet } from '../../scripts/vitest/fleet-client.js';
import { service as mlBridge } from '../src/service.js';

export { connect, nextMessage, sleep, waitFor } from '../../broker/test/helpers.js';
export { broker, auth, mlBridge };

export const REDIS_URL = process.env.REDIS_URL!;
export { ADMIN } from '../../scripts/vitest/fleet-client.js';

const repo = fileURLToPath(new URL('../../', import.meta.url));
/** The worker the bridge starts: the checkout's venv unless ML_WORKER_COMMAND names another. */
export const WORKER_COMMAND = process.env.ML_WORKER_COMMAND || join(repo, '.venv', 'bin', 'fleetwire-ml-worker');
export const MODELS_DIR = process.env.ML_MODELS_DIR || join(repo, 'python-worker', 'models');
const VENV_PYTHON = join(dirname(WORKER_COMMAND), 'python');
const PYTHON_WORKER = dirname(MODELS_DIR);

export type { Answer } from '../../scripts/vitest/fleet-client.js';

/** An ml/result payload (ml-result.schema.json). */
export interface MlResult { cid: string; ok: boolean; output?: unknown; error?: { code: string; message: string }; model_version: string }

export interface MlFleet extends TestFleet {
  /** Registers a device, connects it (clean session false, like the firmware) and subscribes to its ml/result. */
  connectDevice(id: string): Promise<MlDevice>;
  /** GET /internal/ml/health as the admin. */
  health(): Promise<HealthBody>;
  /** Waits until `n` workers report alive (default 1). */
  workersAlive(n?: number, timeoutMs?: number): Promise<HealthBody>;
}

export interface HealthWorker {
  id: string; status: string; supervised: boolean; pid: number | null; host: string | null; uptime_s: number | null;
  models: Record<string, { default: string; versions: string[] }>; jobs_done: number; jobs_failed: number;
  last_job_at: number | null; last_heartbeat_at: number | null; restarts: number;
}
export interface HealthBody { alive: number; workers: HealthWorker[]; queue: { waiting: number; active: number; delayed: number; failed: number } }

/** A connected device that records every ml/result it gets. */
export interface MlDevice {
  id: string;
  client: MqttClient;
  /** Every ml/result received so far, in order. */
  results: MlResult[];
  /** Publishes a request (JSON unless `msgpack`; a Buffer or string is sent as it is) and resolves with its answer. */
  ask(payload: Record<string, unknown> | Buffer | string, opts?: { msgpack?: boolean; timeoutMs?: number }): Promise<MlResult>;
  /** Publishes without waiting for the answer. */
  send(payload: Record<string, unknown> | Buffer | string, opts?: { msgpack?: boolean }): Promise<void>;
  /** Resolves with the first answer for `cid` (received already or later). */
  answerFor(cid: string, timeoutMs?: number): Promise<MlResult>;
  /** Answers received for `cid` so far. */
  answersFor(cid: string): MlResult[];
  end(): Promise<void>;
}

export interface FleetOptions {
  /** The services in this process; default broker, auth service and ML bridge. */
  services?: AnyService[];
  /** Share another fleet's key ring (tokens signed by one verify on the other). */
  dataDir?: string;
  /** Where user tokens come from when this process runs no auth service. */
  users?: Pick<MlFleet, 'tokenFor'>;
}

/** `env` overrides any setting (names as in the specs, e.g. ML_WORKERS). Workers log at warn unless LOG_LEVEL says otherwise. */
export async function startMlFleet(env: Record<string, string> = {}, o: FleetOptions = {}): Promise<MlFleet> {
  const dataDir = o.dataDir ?? await mkdtemp(join(tmpdir(), 'fw-ml-'));
  const logs: string[] = [];
  const destination = new Writable({ write(chunk, _e, cb) { logs.push(String(chunk)); cb(); } });
  const log = createLogger({ level: 'debug', name: 'ml-bridge-test', destination });
  const metrics = createMetricsRegistry({ defaultMetrics: false });
  const running = await startServices(o.services ?? [broker, auth, mlBridge], {
    REDIS_URL, PORT: '0', HOST: '127.0.0.1', FLEETWIRE_DATA_DIR: dataDir, TRUSTED_PROXIES: '127.0.0.1',
    FLEETWIRE_ADMIN_EMAIL: ADMIN.email, FLEETWIRE_ADMIN_PASSWORD: ADMIN.password, ARGON2_PROFILE: 'development',
    BROKER_SHUTDOWN_SPREAD_MS: '100',
    ML_WORKER_COMMAND: WORKER_COMMAND, ML_MODELS_DIR: MODELS_DIR,
    // The supervised workers' own log level (the bridge's logs go to `logs` at debug).
    LOG_LEVEL: 'warn',
    ...env,
  }, { version: 'test', log, metricsRegistry: metrics });
  const url = `http://127.0.0.1:${running.port}`;
  const mqttUrl = `ws://127.0.0.1:${running.port}/mqtt`;
  const redis = createRedis(REDIS_URL, { name: 'ml-bridge-test' });
  const devices: MlDevice[] = [];

  const { api, tokenFor, registerDevice } = fleetClient(url, o.users);

  async function health(): Promise<HealthBody> {
    const res = await api('GET', '/internal/ml/health', { token: await tokenFor('admin') });
    if (res.status !== 200) throw new Error(`GET /internal/ml/health: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body as unknown as HealthBody;
  }

  return {
    running, url, mqttUrl, dataDir, redis, metrics, logs, api, tokenFor, registerDevice, health,
    async connectDevice(id) {
      const { token } = await registerDevice(id);
      const dev = await deviceOn(mqttUrl, id, token);
      devices.push(dev);
      return dev;
    },
    workersAlive: (n = 1, timeoutMs = 15_000) => waitFor(health, (h) => h.alive >= n, timeoutMs),
    metric: (name, labels) => metricValue(metrics, name, labels),
    async close() {
      await Promise.all(devices.map((d) => d.end()));
      await running.stop();
      redis.disconnect();
    },
  };
}

/** Connects device `id` to a broker node and subscribes to its ml/result. */
export async function deviceOn(mqttUrl: string, id: string, token: string): Promise<MlDevice> {
  const client = await connect(mqttUrl, token, id, { clean: false });
  const results: MlResult[] = [];
  const waiters = new Set<() => void>();
  const topic = `devices/${id}/ml/result`;
  client.on('message', (t, payload) => {
    if (t !== topic) return;
    results.push(JSON.parse(payload.toString()) as MlResult);
    for (const w of waiters) w();
  });
  await client.subscribeAsync(topic, { qos: 1 });
  const encode = (p: Record<string, unknown> | Buffer | string, msgpack?: boolean): Buffer | string =>
    Buffer.isBuffer(p) || typeof p === 'string' ? p : msgpack ? pack(p) : JSON.stringify(p);
  const answerFor = (cid: string, timeoutMs = 5000): Promise<MlResult> => new Promise((resolve, reject) => {
    const check = (): void => {
      const found = results.find((r) => r.cid === cid);
      if (!found) return;
      clearTimeout(timer);
      waiters.delete(check);
      resolve(found);
    };
    const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`no ml/result for ${cid} in ${timeoutMs} ms`)); }, timeoutMs);
    waiters.add(check);
    check();
  });
  const send = async (p: Record<string, unknown> | Buffer | string, o: { msgpack?: boolean } = {}) => {
    await client.publishAsync(`devices/${id}/ml/infer`, encode(p, o.msgpack), { qos: 1 });
  };
  return {
    id, client, results, answerFor, send,
    answersFor: (cid) => results.filter((r) => r.cid === cid),
    async ask(p, o = {}) {
      const cid = Buffer.isBuffer(p) || typeof p === 'string' ? '' : String(p.cid);
      const answer = answerFor(cid, o.timeoutMs);
      await send(p, o);
      return answer;
    },
    end: () => client.endAsync().catch(() => undefined),
  };
}

let seq = 0;
/** A valid request for the shipped `anomaly` model (rows of [temperature_c, humidity_pct, vibration_g, current_a]). */
export function anomalyRequest(extra: Record<string, unknown> = {}): Record<string, unknown> & { cid: string } {
  return { cid: `c-${Date.now().toString(36)}-${seq++}`, model: 'anomaly', input: [[21.5, 45, 0.02, 1.2]], ...extra };
}

/** A request to the `slow` model (makeModelsDir({slow: true})) that computes for about `ms`. */
export function slowRequest(ms: number, extra: Record<string, unknown> = {}): Record<string, unknown> & { cid: string } {
  return { cid: `s-${Date.now().toString(36)}-${seq++}`, model: 'slow', input: [[ms]], ...extra };
}

/** A copy of the shipped models in a temporary directory, plus the `slow` model when asked. */
export async function makeModelsDir(o: { slow?: boolean } = {}): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'fw-models-'));
  await cp(MODELS_DIR, dir, { recursive: true });
  if (o.slow) await promisify(execFile)(VENV_PYTHON, [join(PYTHON_WORKER, 'tools', 'make_slow_model.py'), dir]);
  return dir;
}

/** The pids of the supervised workers, from the health endpoint, by worker id. */
export async function supervisedPids(f: MlFleet): Promise<Map<string, number>> {
  const h = await f.health();
  return new Map(h.workers.filter((w) => w.supervised && w.pid !== null).map((w) => [w.id, w.pid!]));
}

