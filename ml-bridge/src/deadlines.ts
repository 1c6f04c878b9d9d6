/**
 * The deadline loop: every ML_DEADLINE_CHECK_MS it takes the requests whose deadline has
 * passed (the `fleetwire:ml:deadlines` zset the broker fills at admission) and answers
 * each `timeout` through answers.ts, whose claim makes a result that arrives at the same
 * moment lose or win cleanly. A timed-out job still waiting is removed from the queue so
 * no worker spends time on it; an active one is locked by its worker and cannot be
 * removed: its result, when it comes, is dropped as late.
 *
 * Ticks never overlap (the next is scheduled when one ends), and the timer is unref'd so
 * it never keeps a process alive on its own.
 */
import type { Queue } from 'bullmq';
import { dueMlRequests, type Logger, type Redis } from '@fleetwire/common';
import type { Answers } from './answers.js';

/** Requests handled per tick at most; more wait for the next tick (a few ms later). */
const BATCH = 500;

export interface DeadlineDeps {
  redis: Redis;
  queue: Queue;
  answers: Answers;
  intervalMs: number;
  log: Logger;
}

export class DeadlineLoop {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;

  constructor(private readonly d: DeadlineDeps) {}

  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  /** Waits for a tick under way, then schedules none. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  /** One pass; resolves with how many requests it answered timeout. */
  async tick(now = Date.now()): Promise<number> {
    const due = await dueMlRequests(this.d.redis, now, BATCH);
    const answered = await Promise.all(due.map(async (jobId) => {
      if (!(await this.d.answers.timeout(jobId))) return false;
      // 1 = removed; 0 = locked by a worker (active): its result will be dropped as late.
      const removed = await this.d.queue.remove(jobId).catch((err: unknown) => {
        this.d.log.warn({ err, job_id: jobId }, 'removing a timed-out ml job failed');
        return 0;
      });
      if (removed === 1) this.d.log.debug({ job_id: jobId }, 'timed-out job removed from the queue');
      return true;
    }));
    return answered.filter(Boolean).length;
  }

  private schedule(afterMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.tick().then(
        () => undefined,
        (err: unknown) => this.d.log.warn({ err }, 'ml deadline check failed; retrying'),
      ).finally(() => {
        this.running = null;
        this.schedule(this.d.intervalMs);
      });
    }, afterMs);
    this.timer.unref();
  }
}
