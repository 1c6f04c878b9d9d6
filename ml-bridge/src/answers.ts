/**
 * The one place a device's ML request is answered. Whatever ends a request (the worker's
 * result, its failure, or the deadline loop's timeout) comes here: claimMlAnswer takes
 * the one right to answer (an atomic Lua claim on the request record, so two bridges, a
 * late result and a timeout cannot both answer), and only the winner publishes
 * `{cid, ok, output | error, model_version}` on devices/{id}/ml/result at QoS 1 through the
 * broker link, so it reaches the device on whichever broker node holds it. The loser is
 * dropped, counted and logged.
 */
import { claimMlAnswer, mlErrorMessage, mlKeys, mlErrorResult, topicFor, type BrokerLink, type Logger, type MlErrorCode, type MlRequestRecord, type Redis } from '@fleetwire/common';
import type { MlMetrics } from './metrics.js';

/** How a request ended, as the bridge learnt it. */
export type MlOutcome =
  | { readonly ok: true; readonly output: unknown; readonly modelVersion: string; readonly computeMs?: number }
  | { readonly ok: false; readonly code: MlErrorCode; readonly message: string; readonly modelVersion: string };

export interface AnswersDeps {
  redis: Redis;
  link: BrokerLink;
  metrics: MlMetrics;
  log: Logger;
}

export class Answers {
  /** Publishes under way: drain waits for them. */
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(private readonly d: AnswersDeps) {}

  /**
   * Answers request `jobId` with a worker's `outcome` unless it was answered already (then it is a late result).
   * Resolves true when this call answered it.
   */
  answer(jobId: string, outcome: MlOutcome): Promise<boolean> {
    return this.track(this.claimAndPublish(jobId, outcome, 'worker'));
  }

  /** The deadline passed first. */
  timeout(jobId: string): Promise<boolean> {
    return this.track(this.claimAndPublish(jobId, { ok: false, code: 'timeout', message: mlErrorMessage('timeout'), modelVersion: '' }, 'deadline'));
  }

  private track(p: Promise<boolean>): Promise<boolean> {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
    return p;
  }

  /**
   * Resolves once every answer begun so far was published (or failed to be), or after
   * `timeoutMs`: a publish waits for the broker's PUBACK, and with the broker gone (it drains
   * first in `fleetwire up`) it would wait for a reconnect that never comes.
   */
  async settle(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<void>((r) => { timer = setTimeout(r, timeoutMs); });
    const all = (async () => { while (this.inFlight.size) await Promise.allSettled([...this.inFlight]); })();
    await Promise.race([all, bound]);
    clearTimeout(timer);
    if (this.inFlight.size) this.d.log.warn({ unpublished: this.inFlight.size }, 'ML answers still waiting for the broker at shutdown');
  }

  private async claimAndPublish(jobId: string, outcome: MlOutcome, source: 'worker' | 'deadline'): Promise<boolean> {
    const label = outcome.ok ? 'ok' : outcome.code;
    let record: MlRequestRecord | null;
    try {
      record = await claimMlAnswer(this.d.redis, jobId, label);
    } catch (err) {
      // Not claimed: the deadline loop tries again (the request is still pending in Redis).
      this.d.log.error({ err, job_id: jobId }, 'claiming an ML answer failed');
      return false;
    }
    if (!record) {
      // For the deadline loop this is a race it lost to a result (or to another bridge's loop): nothing to count.
      if (source === 'worker') await this.dropped(jobId, label);
      return false;
    }
    const log = { cid: record.cid, device_id: record.deviceId, model: record.model, outcome: label };
    if (!outcome.ok && outcome.code === 'timeout') {
      this.d.metrics.timeouts.inc();
      this.d.log.info({ ...log, deadline_at: record.deadlineAt }, 'timed out');
    }
    const payload = outcome.ok
      ? { cid: record.cid, ok: true, output: outcome.output, model_version: outcome.modelVersion }
      : mlErrorResult(record.cid, outcome.code, outcome.message, outcome.modelVersion);
    try {
      await this.d.link.publish(topicFor('ml-result', record.deviceId), payload, { qos: 1 });
    } catch (err) {
      // Claimed but not delivered: nothing can answer it any more, so say so loudly.
      this.d.log.error({ ...log, err }, 'publishing an ML answer failed; the device gets no answer');
      return false;
    }
    this.d.metrics.requests.inc({ model: record.model, outcome: label });
    this.d.metrics.latency.observe({ model: record.model }, Math.max(0, Date.now() - record.receivedAt) / 1000);
    if (outcome.ok && outcome.computeMs !== undefined) this.d.metrics.compute.observe({ model: record.model }, outcome.computeMs / 1000);
    this.d.log.debug(log, 'published');
    return true;
  }

  /**
   * A worker result for a request already answered. Every bridge sees every result, so with
   * several bridges all but one lose each claim: that is not news. A result that lost to the
   * deadline (or whose record is gone) is a late result: counted and logged.
   */
  private async dropped(jobId: string, label: string): Promise<void> {
    const answeredWith = await this.d.redis.hget(mlKeys.request(jobId), 'outcome').catch(() => null);
    const fields = { job_id: jobId, cid: cidOf(jobId), device_id: deviceOf(jobId), outcome: label, answered_with: answeredWith };
    if (answeredWith !== null && answeredWith !== 'timeout') {
      this.d.log.debug(fields, 'result already answered (by another bridge)');
      return;
    }
    this.d.metrics.lateResults.inc();
    this.d.log.info(fields, 'late result dropped');
  }
}

/** The device id of a job id `<device_id>.<cid>` (device ids have no '.'). */
export function deviceOf(jobId: string): string {
  return jobId.slice(0, jobId.indexOf('.'));
}

/** The cid part of a job id (':' in the cid was made '_'). */
export function cidOf(jobId: string): string {
  return jobId.slice(jobId.indexOf('.') + 1);
}
