/**
 * A child process kept running: started, health-checked, restarted with backoff when it
 * exits or stops answering its health check, and stopped on drain (SIGTERM, then SIGKILL
 * after a bound). The Python ML worker runs this way under `fleetwire up`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Logger } from './logger.js';
import { Counter, type Registry } from './metrics.js';
import type { BuiltService } from './service.js';

export interface SupervisorOptions {
  /** Names the process in logs, metrics and readiness. */
  name: string;
  command: string;
  args?: readonly string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  log: Logger;
  metricsRegistry?: Registry;
  /** Resolves true while the child does its work (a heartbeat it writes, say); a throw counts as false. */
  health?: () => Promise<boolean>;
  /** How often `health` runs once the child has had `startupGraceMs` to come up. */
  healthIntervalMs?: number;
  startupGraceMs?: number;
  /** Consecutive failed checks after which the child is restarted. */
  unhealthyAfter?: number;
  /** Restart delay: doubles from `initialMs` up to `maxMs` while the child keeps failing. */
  backoff?: { initialMs: number; maxMs: number };
  /** A child that ran this long before exiting starts the backoff over. */
  stableAfterMs?: number;
  /** On stop, SIGTERM; SIGKILL after this long. */
  stopTimeoutMs?: number;
}

export type RestartReason = 'exited' | 'unhealthy';

export class Supervisor {
  private child: ChildProcess | null = null;
  private startedAt = 0;
  private failures = 0;
  private failedChecks = 0;
  private stopping = false;
  private restartTimer: NodeJS.Timeout | null = null;
  private healthTimer: NodeJS.Timeout | null = null;
  private exited: Promise<void> = Promise.resolve();
  /** Why the next restart happens: an exit unless the health check killed the child. */
  private pendingReason: RestartReason = 'exited';
  private readonly restartsMetric: Counter<'process' | 'reason'> | null;
  /** Restarts so far, by reason. */
  readonly restarts: Record<RestartReason, number> = { exited: 0, unhealthy: 0 };

  constructor(private readonly o: SupervisorOptions) {
    const registry = o.metricsRegistry;
    const existing = registry?.getSingleMetric('fleetwire_supervised_restarts_total') as Counter<'process' | 'reason'> | undefined;
    this.restartsMetric = registry
      ? existing ?? new Counter({ name: 'fleetwire_supervised_restarts_total', help: 'restarts of supervised child processes, by reason', labelNames: ['process', 'reason'], registers: [registry] })
      : null;
  }

  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  /** Running and not failing its health check. */
  get healthy(): boolean {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null && this.failedChecks === 0;
  }

  start(): void {
    if (this.stopping || this.child) return;
    const child = spawn(this.o.command, [...(this.o.args ?? [])], { env: this.o.env ?? process.env, cwd: this.o.cwd, stdio: ['ignore', 'inherit', 'inherit'] });
    this.child = child;
    this.startedAt = Date.now();
    this.failedChecks = 0;
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => {
      this.onExit(child, code, signal);
      resolve();
    }));
    child.once('error', (err) => this.o.log.error({ process: this.o.name, err: err.message }, 'supervised process could not start'));
    this.o.log.info({ process: this.o.name, pid: child.pid }, 'supervised process started');
    this.scheduleHealthCheck(this.o.startupGraceMs ?? 5000);
  }

  /** SIGTERM, SIGKILL after stopTimeoutMs; no restart afterwards. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    if (this.healthTimer) clearTimeout(this.healthTimer);
    await this.terminate();
  }

  private async terminate(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const kill = setTimeout(() => child.kill('SIGKILL'), this.o.stopTimeoutMs ?? 10_000);
    await this.exited;
    clearTimeout(kill);
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.child !== child) return;
    this.child = null;
    if (this.healthTimer) clearTimeout(this.healthTimer);
    if (this.stopping) {
      this.o.log.info({ process: this.o.name, code, signal }, 'supervised process stopped');
      return;
    }
    const ranMs = Date.now() - this.startedAt;
    this.failures = ranMs >= (this.o.stableAfterMs ?? 60_000) ? 1 : this.failures + 1;
    const { initialMs, maxMs } = this.o.backoff ?? { initialMs: 500, maxMs: 30_000 };
    const delayMs = Math.min(maxMs, initialMs * 2 ** (this.failures - 1));
    this.o.log.warn({ process: this.o.name, code, signal, ran_ms: ranMs, restart_in_ms: delayMs }, 'supervised process exited; restarting');
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      this.count(this.pendingReason);
      this.pendingReason = 'exited';
      this.start();
    }, delayMs);
  }

  private count(reason: RestartReason): void {
    this.restarts[reason]++;
    this.restartsMetric?.inc({ process: this.o.name, reason });
  }

  private scheduleHealthCheck(afterMs: number): void {
    if (!this.o.health) return;
    if (this.healthTimer) clearTimeout(this.healthTimer);
    this.healthTimer = setTimeout(() => void this.checkHealth(), afterMs);
    this.healthTimer.unref();
  }

  private async checkHealth(): Promise<void> {
    const child = this.child;
    if (!child || this.stopping) return;
    const ok = await this.o.health!().catch(() => false);
    if (this.child !== child || this.stopping) return;
    this.failedChecks = ok ? 0 : this.failedChecks + 1;
    if (this.failedChecks >= (this.o.unhealthyAfter ?? 3)) {
      this.o.log.warn({ process: this.o.name, pid: child.pid, failed_checks: this.failedChecks }, 'supervised process is unhealthy; restarting it');
      this.pendingReason = 'unhealthy';
      await this.terminate();
      return;
    }
    this.scheduleHealthCheck(this.o.healthIntervalMs ?? 5000);
  }
}

/** A supervised process as a service part: started by the host, ready while healthy, stopped on drain. */
export function supervisedPart(supervisor: Supervisor, stopTimeoutMs = 10_000): BuiltService {
  return {
    readiness: { alive: async () => supervisor.healthy },
    start: async () => supervisor.start(),
    drain: () => supervisor.stop(),
    close: async () => undefined,
    shutdownTimeoutMs: stopTimeoutMs + 1000,
  };
}
