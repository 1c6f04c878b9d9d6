/**
 * Worker results, from BullMQ's event stream of the ml-infer queue (QueueEvents): every
 * bridge sees every result, whichever worker produced it, and the claim in answers.ts
 * makes sure only one of them answers.
 *
 * `completed` carries the worker's return value (ml-job-result.schema.json): a result, or
 * the worker's own `timeout` for a job it took after its deadline. `failed` carries the
 * failedReason; the worker fails bad requests with an UnrecoverableError whose message is
 * "<code>: <message>" (a code of contracts/ml.json result_errors), anything else is
 * `internal`.
 *
 * BullMQ 6.7 (the Lua scripts the Python worker runs too) writes `failed` to the stream
 * only when a job is finished as failed: a failed attempt that will be retried moves the
 * job to `delayed` (backoff) or `waiting` and writes that event instead, and a job that
 * stalled too often is failed when next taken. So `failed` is final, and an attempt that
 * failed is never answered before its retry had its chance. As a guard against a
 * producer or worker library that reports every attempt, a `failed` without a result
 * code is answered only once the job's state is `failed` (or the job is gone).
 */
import { QueueEvents, type Queue } from 'bullmq';
import { mlContract, mlErrorMessage, queues, schemaValidator, describeValidationError, type Logger, type MlErrorCode, type Redis } from '@fleetwire/common';
import type { Answers, MlOutcome } from './answers.js';

const validJobResult = schemaValidator('ml-job-result.schema.json');

export interface ResultsDeps {
  /** A connection of its own, `maxRetriesPerRequest: null`: QueueEvents blocks on XREAD. */
  connection: Redis;
  queue: Queue;
  answers: Answers;
  log: Logger;
}

export class ResultWatcher {
  private readonly events: QueueEvents;

  constructor(private readonly d: ResultsDeps) {
    this.events = new QueueEvents('ml-infer', { connection: d.connection, prefix: queues.prefix, autorun: false });
    this.events.on('completed', ({ jobId, returnvalue }) => void this.completed(jobId, returnvalue));
    this.events.on('failed', ({ jobId, failedReason }) => void this.failed(jobId, failedReason));
    this.events.on('error', (err) => d.log.warn({ err: err.message }, 'ml-infer queue events error'));
  }

  /** Resolves once the event stream is being read (results from then on are seen). */
  async start(): Promise<void> {
    void this.events.run().catch((err: unknown) => this.d.log.error({ err }, 'reading ml-infer queue events stopped'));
    await this.events.waitUntilReady();
  }

  async close(): Promise<void> {
    await this.events.close();
  }

  private async completed(jobId: string, returnvalue: unknown): Promise<void> {
    this.d.log.debug({ job_id: jobId, cid: (returnvalue as { cid?: unknown } | null)?.cid, device_id: (returnvalue as { device_id?: unknown } | null)?.device_id }, 'result received');
    await this.d.answers.answer(jobId, this.outcomeOf(jobId, returnvalue));
  }

  private async failed(jobId: string, failedReason: string): Promise<void> {
    const coded = /^([a-z_]+): ([\s\S]*)$/.exec(failedReason ?? '');
    const code = coded && isResultCode(coded[1]!) ? coded[1] as MlErrorCode : null;
    this.d.log.debug({ job_id: jobId, failed_reason: failedReason }, 'result received');
    if (!code) {
      const state = await this.d.queue.getJobState(jobId).catch(() => 'unknown');
      if (state !== 'failed' && state !== 'unknown') {
        this.d.log.debug({ job_id: jobId, state, failed_reason: failedReason }, 'failed attempt will be retried; not answering yet');
        return;
      }
      this.d.log.warn({ job_id: jobId, failed_reason: failedReason }, 'ml job failed without a result code; answering internal');
    }
    await this.d.answers.answer(jobId, code
      ? { ok: false, code, message: coded![2]!, modelVersion: '' }
      : { ok: false, code: 'internal', message: mlErrorMessage('internal'), modelVersion: '' });
  }

  /** The outcome a completed job's return value stands for; a value that breaks the contract is `internal`. */
  private outcomeOf(jobId: string, r: unknown): MlOutcome {
    if (!validJobResult(r)) {
      this.d.log.error({ job_id: jobId, problem: describeValidationError(validJobResult) }, 'a worker result does not match ml-job-result.schema.json; answering internal');
      return { ok: false, code: 'internal', message: mlErrorMessage('internal'), modelVersion: '' };
    }
    const result = r as { ok: boolean; output?: unknown; error?: { code: string; message: string }; model_version: string; compute_ms?: number };
    if (result.ok) return { ok: true, output: result.output, modelVersion: result.model_version, computeMs: result.compute_ms };
    const code = result.error && isResultCode(result.error.code) ? result.error.code as MlErrorCode : 'internal';
    return { ok: false, code, message: code === 'internal' ? mlErrorMessage('internal') : result.error!.message, modelVersion: result.model_version };
  }
}

function isResultCode(code: string): boolean {
  return Object.hasOwn(mlContract.result_errors, code);
}
