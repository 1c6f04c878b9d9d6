/**
 * The life of an ML request (contracts/ml.json), in one module: the broker admits a
 * request where it enters the ml-infer queue (quota, deadline, the request record), the
 * Python worker computes, and the ml-bridge gives the one answer (the worker's result,
 * its error, or `timeout` at the deadline). Admission runs in the broker's ingress, not
 * as a hop of its own, because a second queue hop would cost about a millisecond of the
 * round trip; the record it writes is what the bridge claims from.
 */
import { int } from './config.js';
import { queues, readContract } from './contracts.js';
import type { Redis } from './redis.js';
import { defineScripts } from './redis-scripts.js';

type MlKeyName = 'request' | 'deadlines' | 'quota' | 'workers' | 'worker' | 'control';

interface MlFile {
  settings: Record<MlSettingName, { default: number; help: string }>;
  result_errors: Record<string, string>;
  keys: Record<MlKeyName, { pattern: string }>;
}
type MlSettingName = 'ML_TIMEOUT_MS' | 'ML_MAX_TIMEOUT_MS' | 'ML_QUOTA_PER_MIN' | 'ML_MAX_INPUT_ROWS' | 'ML_WORKER_HEARTBEAT_MS' | 'ML_WORKER_LOCK_MS';

export const mlContract = Object.freeze(readContract<MlFile>('ml.json'));

/** The `error.code` values of an ml/result (contracts/ml.json result_errors). */
export type MlErrorCode = 'timeout' | 'rate_limited' | 'request_invalid' | 'model_unknown' | 'version_unknown' | 'input_invalid' | 'input_too_large' | 'internal';

export function mlErrorMessage(code: MlErrorCode): string {
  return mlContract.result_errors[code] ?? code;
}

/** A setting of contracts/ml.json as a config field (environment variable, default from the contract). */
export function mlSetting(name: MlSettingName, bounds: { min?: number; max?: number } = { min: 1 }) {
  const s = mlContract.settings[name];
  return int(name, s.default, s.help, bounds);
}

/** What the broker needs to admit requests. */
export interface MlAdmissionSettings {
  readonly timeoutMs: number;
  readonly maxTimeoutMs: number;
  readonly quotaPerMin: number;
}

/** A key (or channel) of contracts/ml.json `keys`, its `{…}` filled in; the Python worker reads the same patterns. */
function mlKey(name: MlKeyName, params: Record<string, string | number> = {}): string {
  return mlContract.keys[name].pattern.replace(/\{(\w+)\}/g, (_, param: string) => {
    const value = param === 'prefix' ? queues.prefix : params[param];
    if (value === undefined) throw new Error(`ml.json key ${name} needs ${param}`);
    return String(value);
  });
}

export const mlKeys = {
  request: (jobId: string) => mlKey('request', { job_id: jobId }),
  deadlines: mlKey('deadlines'),
  quota: (deviceId: string, minute: number) => mlKey('quota', { device_id: deviceId, minute }),
  workers: mlKey('workers'),
  worker: (workerId: string) => mlKey('worker', { worker_id: workerId }),
  control: mlKey('control'),
};

/** How long a request's record outlives its deadline: retransmissions within it are recognised. */
const RECORD_AFTER_DEADLINE_MS = 10 * 60_000;

/** When the answer to a request taken at `receivedAt` is due: its deadline_ms, else ML_TIMEOUT_MS, at most ML_MAX_TIMEOUT_MS. */
export function mlDeadline(s: MlAdmissionSettings, receivedAt: number, deadlineMs: unknown): number {
  const ms = typeof deadlineMs === 'number' && Number.isInteger(deadlineMs) && deadlineMs > 0 ? deadlineMs : s.timeoutMs;
  return receivedAt + Math.min(ms, s.maxTimeoutMs);
}

/** `enqueue`: a new request, put it on the queue; `retransmitted`: already queued (the add is idempotent); `answered`: already answered, drop it; `rate_limited`: answer so. */
export type MlAdmission = 'enqueue' | 'retransmitted' | 'answered' | 'rate_limited';

/** The record of a request, as the claim returns it. */
export interface MlRequestRecord {
  readonly deviceId: string;
  readonly cid: string;
  readonly model: string;
  readonly receivedAt: number;
  readonly deadlineAt: number;
}

interface MlScripts {
  mlAdmit(quota: string, request: string, deadlines: string, limit: number, windowMs: number, deviceId: string, cid: string, model: string,
    receivedAt: number, deadlineAt: number, jobId: string, keepMs: number): Promise<string>;
  mlClaim(request: string, deadlines: string, jobId: string, outcome: string): Promise<Array<string | null> | null>;
}

// src/lua/ from src/ (tests) and dist/ (built) alike: both sit at the same depth.
const scriptsDir = new URL('../src/lua/', import.meta.url);
const scripts = (redis: Redis) => defineScripts<MlScripts>(redis, 'common', scriptsDir);

/** Checks the device's quota and records the request with its deadline, in one round trip. */
export async function admitMlRequest(redis: Redis, s: MlAdmissionSettings, r: MlRequestRecord & { jobId: string }): Promise<MlAdmission> {
  const minute = Math.floor(r.receivedAt / 60_000);
  const verdict = await scripts(redis).mlAdmit(mlKeys.quota(r.deviceId, minute), mlKeys.request(r.jobId), mlKeys.deadlines,
    s.quotaPerMin, 120_000, r.deviceId, r.cid, r.model, r.receivedAt, r.deadlineAt, r.jobId, RECORD_AFTER_DEADLINE_MS);
  switch (verdict) {
    case 'admitted': return 'enqueue';
    case 'pending': return 'retransmitted';
    case 'answered': return 'answered';
    case 'rate_limited': return 'rate_limited';
    default: throw new Error(`ml-admit returned ${verdict}`);
  }
}

/**
 * Takes the one right to answer request `jobId` with `outcome` (`ok` or an error code).
 * Null when it was answered already (a late result, a second bridge, a second timeout)
 * or is unknown.
 */
export async function claimMlAnswer(redis: Redis, jobId: string, outcome: string): Promise<MlRequestRecord | null> {
  const row = await scripts(redis).mlClaim(mlKeys.request(jobId), mlKeys.deadlines, jobId, outcome);
  if (!row) return null;
  const [deviceId, cid, model, receivedAt, deadlineAt] = row;
  return { deviceId: deviceId ?? '', cid: cid ?? '', model: model ?? '', receivedAt: Number(receivedAt), deadlineAt: Number(deadlineAt) };
}

/** Job ids whose deadline has passed, oldest first, at most `limit`. */
export async function dueMlRequests(redis: Redis, now: number, limit: number): Promise<string[]> {
  return redis.zrangebyscore(mlKeys.deadlines, '-inf', now, 'LIMIT', 0, limit);
}

/** The ml/result payload (ml-result.schema.json) for an error. */
export function mlErrorResult(cid: string, code: MlErrorCode, message = mlErrorMessage(code), modelVersion = ''): {
  cid: string; ok: false; error: { code: MlErrorCode; message: string }; model_version: string;
} {
  return { cid, ok: false, error: { code, message }, model_version: modelVersion };
}
