/**
 * The Python workers this bridge runs: ML_WORKERS supervised child processes
 * (common/src/supervisor.ts), `ml-worker-<i>`, restarted with backoff when they exit or
 * their heartbeat goes stale, stopped with SIGTERM on drain (a worker finishes its running
 * jobs first). Slot i always runs as worker id `<node>-w<i>`, so a restarted worker takes
 * over its predecessor's heartbeat key instead of leaving a dead one beside it.
 *
 * The executable is ML_WORKER_COMMAND, else this checkout's .venv/bin/fleetwire-ml-worker
 * (made by `make venv`). When it is missing the bridge says so once and runs no workers,
 * rather than restarting a command that cannot start.
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mlKeys, Supervisor, type Logger, type Redis, type Registry } from '@fleetwire/common';
import type { MlBridgeConfig } from './config.js';

// This file is ml-bridge/src/workers.ts (tests) or ml-bridge/dist/workers.js (built): the checkout is two levels up either way.
export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

export interface WorkerSlot {
  /** The worker id it writes its heartbeat under. */
  readonly id: string;
  /** The supervised process name (logs, the restarts metric). */
  readonly name: string;
  readonly supervisor: Supervisor;
}

export interface WorkerPoolDeps {
  redis: Redis;
  log: Logger;
  metricsRegistry: Registry;
  /** This bridge's node id: worker ids are `<node>-w<i>`. */
  node: string;
}

export function workerCommand(config: Pick<MlBridgeConfig, 'workerCommand'>): string {
  return config.workerCommand || join(repoRoot, '.venv', 'bin', 'fleetwire-ml-worker');
}

export function modelsDir(config: Pick<MlBridgeConfig, 'modelsDir'>): string {
  return config.modelsDir || join(repoRoot, 'python-worker', 'models');
}

/** How old a heartbeat may be for its worker to count as alive. */
export function staleAfterMs(config: Pick<MlBridgeConfig, 'heartbeatMs' | 'workerMissedHeartbeats'>): number {
  return config.heartbeatMs * config.workerMissedHeartbeats;
}

/** True when the worker's heartbeat exists and is fresh (and, when `pid` is given, was written by that process). */
export async function heartbeatFresh(redis: Redis, workerId: string, maxAgeMs: number, pid?: number | null): Promise<boolean> {
  const raw = await redis.get(mlKeys.worker(workerId));
  if (!raw) return false;
  const hb = JSON.parse(raw) as { at?: number; pid?: number };
  if (pid != null && hb.pid !== pid) return false;
  return typeof hb.at === 'number' && Date.now() - hb.at <= maxAgeMs;
}

export class WorkerPool {
  readonly slots: readonly WorkerSlot[];
  /** A worker finishes its running jobs on SIGTERM, and they are bounded by their deadlines; SIGKILL after this. */
  readonly stopTimeoutMs: number;
  /** Null when the executable can be started; else why not (logged once). */
  readonly unavailable: string | null;

  constructor(private readonly config: MlBridgeConfig, private readonly d: WorkerPoolDeps) {
    const command = workerCommand(config);
    this.stopTimeoutMs = Math.min(config.maxTimeoutMs, 30_000) + 2000;
    this.unavailable = config.workers > 0 ? executableProblem(command, config.workerCommand) : null;
    if (this.unavailable) {
      this.slots = [];
      return;
    }
    const maxAge = staleAfterMs(config);
    this.slots = Array.from({ length: config.workers }, (_, i) => {
      const id = `${d.node}-w${i}`;
      const name = `ml-worker-${i}`;
      const supervisor: Supervisor = new Supervisor({
        name, command, log: d.log, metricsRegistry: d.metricsRegistry, cwd: repoRoot,
        env: {
          ...workerEnvironment(process.env),
          REDIS_URL: config.redisUrl,
          ML_WORKER_ID: id,
          // The worker stops by itself when this process is gone (killed outright, it could not stop it).
          ML_WORKER_PARENT_PID: String(process.pid),
          ML_MODELS_DIR: modelsDir(config),
          ML_WORKER_CONCURRENCY: String(config.workerConcurrency),
          ML_WORKER_HEARTBEAT_MS: String(config.heartbeatMs),
          ML_WORKER_LOCK_MS: String(config.lockMs),
          ML_MAX_INPUT_ROWS: String(config.maxInputRows),
          LOG_LEVEL: config.logLevel,
        },
        // Alive = a fresh heartbeat from this very process (a killed predecessor's may still look fresh).
        health: () => heartbeatFresh(d.redis, id, maxAge, supervisor.pid),
        healthIntervalMs: config.heartbeatMs,
        // Importing onnxruntime and loading the models takes about a second on an idle machine; leave room on a busy one.
        startupGraceMs: Math.max(10_000, maxAge),
        unhealthyAfter: 2,
        backoff: { initialMs: 200, maxMs: 30_000 },
        stableAfterMs: 60_000,
        stopTimeoutMs: this.stopTimeoutMs,
      });
      return { id, name, supervisor };
    });
  }

  start(): void {
    if (this.unavailable) {
      this.d.log.error({ command: workerCommand(this.config) }, this.unavailable);
      return;
    }
    for (const s of this.slots) s.supervisor.start();
  }

  /**
   * Resolves once one supervised worker wrote a heartbeat (true), or after `timeoutMs`
   * (false), so a process that starts them reports itself started when ML can answer.
   */
  async firstAlive(timeoutMs: number): Promise<boolean> {
    if (!this.slots.length) return false;
    const deadline = Date.now() + timeoutMs;
    const maxAge = staleAfterMs(this.config);
    while (Date.now() < deadline) {
      const alive = await Promise.all(this.slots.map((s) => heartbeatFresh(this.d.redis, s.id, maxAge, s.supervisor.pid).catch(() => false)));
      if (alive.some(Boolean)) return true;
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  }

  async stop(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.supervisor.stop()));
  }
}

/**
 * What a worker inherits of this process's environment: the system's basics (PATH, locale,
 * temp dir), Python's and the thread libraries' own settings, and the ML_* settings; not the
 * rest (the admin password, webhook secrets, ...): a worker runs models and parses inputs
 * from devices, and needs none of it.
 */
export function workerEnvironment(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const inherited = /^(PATH|HOME|USER|LANG|LANGUAGE|LC_[A-Z]+|TZ|TMPDIR|PYTHON[A-Z_]*|OMP_[A-Z_]+|ORT_[A-Z_]+|ML_[A-Z_]+|FLEETWIRE_CONTRACTS_DIR)$/;
  return Object.fromEntries(Object.entries(env).filter(([name]) => inherited.test(name)));
}

/** Why `command` cannot be started, or null. A bare name is looked up on PATH as spawn would. */
function executableProblem(command: string, configured: string): string | null {
  const candidates = command.includes('/') ? [command] : (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((dir) => join(dir, command));
  for (const file of candidates) {
    try {
      accessSync(file, constants.X_OK);
      return null;
    } catch { /* try the next */ }
  }
  return configured
    ? `ML_WORKER_COMMAND=${configured} is not an executable file: no ML workers are started by this bridge; fix ML_WORKER_COMMAND, or set ML_WORKERS=0 when workers run elsewhere`
    : `the ML worker ${command} does not exist: run \`make venv\` to create it, or set ML_WORKER_COMMAND to the worker executable, or ML_WORKERS=0 when workers run elsewhere; no ML workers are started by this bridge`;
}
