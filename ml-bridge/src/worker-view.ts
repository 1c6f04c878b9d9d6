/**
 * Every ML worker the cluster knows, supervised here or not: the workers zset
 * (`fleetwire:ml:workers`, id -> last heartbeat) and each worker's heartbeat JSON, merged
 * with what this bridge's supervisors know (pid, restarts). A standalone worker on
 * another machine appears through its heartbeat alone, exactly like a supervised one.
 *
 * Status: `alive` (fresh heartbeat, running), `stopping` (finishing its jobs after
 * SIGTERM), `missing` (heartbeat stale or expired, or a supervised slot whose current
 * process has not written one yet). Zset entries older than an hour are pruned: a worker
 * that went away for good stops being reported.
 */
import { mlKeys, type Redis } from '@fleetwire/common';
import type { WorkerSlot } from './workers.js';

const FORGET_AFTER_MS = 60 * 60_000;

export type WorkerState = 'alive' | 'stopping' | 'missing';

export interface WorkerStatus {
  id: string;
  status: WorkerState;
  supervised: boolean;
  pid: number | null;
  host: string | null;
  uptime_s: number | null;
  models: Record<string, { default: string; versions: string[] }>;
  jobs_done: number;
  jobs_failed: number;
  last_job_at: number | null;
  last_heartbeat_at: number | null;
  restarts: number;
}

interface Heartbeat {
  id: string; pid: number; host: string; started_at: number; at: number; state: 'running' | 'stopping';
  models: Record<string, { default: string; versions: string[] }>; jobs_done: number; jobs_failed: number; last_job_at: number | null;
}

export async function readWorkers(redis: Redis, slots: readonly WorkerSlot[], staleAfterMs: number, now = Date.now()): Promise<WorkerStatus[]> {
  await redis.zremrangebyscore(mlKeys.workers, '-inf', now - FORGET_AFTER_MS);
  const known = await redis.zrange(mlKeys.workers, 0, -1);
  const ids = [...new Set([...known, ...slots.map((s) => s.id)])].sort();
  const raws = ids.length ? await redis.mget(ids.map((id) => mlKeys.worker(id))) : [];
  return ids.map((id, i) => {
    const hb = parse(raws[i] ?? null);
    const slot = slots.find((s) => s.id === id);
    const pid = slot ? slot.supervisor.pid : hb?.pid ?? null;
    // A supervised slot's heartbeat counts only when its current process wrote it: a killed one's stays fresh for a while.
    const own = hb && (!slot || hb.pid === pid);
    const fresh = own && now - hb.at <= staleAfterMs;
    return {
      id,
      status: !fresh ? 'missing' : hb.state === 'stopping' ? 'stopping' : 'alive',
      supervised: slot !== undefined,
      pid,
      host: hb?.host ?? null,
      uptime_s: own ? Math.max(0, Math.floor((now - hb.started_at) / 1000)) : null,
      models: hb?.models ?? {},
      jobs_done: hb?.jobs_done ?? 0,
      jobs_failed: hb?.jobs_failed ?? 0,
      last_job_at: hb?.last_job_at ?? null,
      last_heartbeat_at: hb?.at ?? null,
      restarts: slot ? slot.supervisor.restarts.exited + slot.supervisor.restarts.unhealthy : 0,
    };
  });
}

function parse(raw: string | null): Heartbeat | null {
  if (!raw) return null;
  try {
    return JSON.parse(raw) as Heartbeat;
  } catch {
    return null;
  }
}
