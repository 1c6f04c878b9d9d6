/**
 * Fleet commands (batches): one command to every device a selector picks, sent at a
 * bounded rate, with progress counted per state.
 *
 * A batch is a hash (redisKeys.commandBatch) holding its request, `total`, `dispatched`
 * (how many of its commands were published) and one count per command state, plus the
 * list of its device ids in sending order (redisKeys.commandBatchTargets). Its i-th
 * command is an ordinary command with cid `<batch>:<i>`; the Lua scripts that move a
 * command's state move its batch's counts in the same step, on whichever node (or broker)
 * sees the event, so the counts are right cluster-wide.
 *
 * Sending: one node at a time sends a batch, holding a lease in
 * redisKeys.commandBatchesSending that it renews while it sends. When that node drains it
 * gives the lease back; when it dies the lease runs out (LEASE_MS). Every node looks for
 * such batches each tick and one takes over from `dispatched`: the command at that index
 * may have been recorded but not published, so it is published again with its recorded cid
 * and expires_at (the device answers a repeated cid from memory, and a repeated result
 * changes nothing). So a batch survives the restart of the node sending it; at most one
 * device gets its command twice, under the same cid.
 */
import { randomUUID } from 'node:crypto';
import { FleetwireError, redisKeys, type AuditLog, type Logger, type Redis } from '@fleetwire/common';
import { COMMAND_STATES, ENDED_STATES, type CommandMetrics, type CommandState } from './command-results.js';
import { isCommandAllowed } from './config.js';
import { selectorKind, type DeviceSelector, type SelectorKind } from './device-selector.js';
import { deviceScripts } from './redis-scripts.js';

/** Exactly one kind. */

export interface BatchRequest {
  selector: DeviceSelector;
  name: string;
  args: Record<string, unknown>;
  timeout_ms?: number;
  rate_per_s: number;
}

export interface BatchView {
  batch: string;
  name: string;
  args: Record<string, unknown>;
  selector: DeviceSelector;
  total: number;
  /** Commands published so far. */
  dispatched: number;
  counts: Record<CommandState, number>;
  /** Every command was sent and has ended (succeeded, failed, expired or timed out). */
  done: boolean;
  /** A node holds the batch and is sending (false once every command is sent). */
  sending: boolean;
  created_at: number;
  actor: string;
  timeout_ms?: number;
  rate_per_s: number;
}

/** Sends one command of a batch: queued in the device's session when it is offline. */
export type Dispatch = (c: { cid: string; deviceId: string; name: string; args: Record<string, unknown>; actor: string; timeoutMs: number | undefined; batch: string }) => Promise<void>;

interface BatchScripts {
  /** lua/batch-claim.lua: 1 when `node` holds the batch now. */
  batchClaim(sending: string, batch: string, id: string, node: string, now: number, leaseMs: number): Promise<number>;
  /** lua/batch-release.lua */
  batchRelease(sending: string, batch: string, id: string, node: string, allSent: '1' | '0'): Promise<number>;
}

const LEASE_MS = 10_000;
/** The listing index behind each selector kind (written by the auth service, and by the heartbeat part for fw). */
const INDEX_KIND = { type: 'type', tag: 'tag', firmware: 'fw' } as const;

export interface CommandBatchesOptions {
  redis: Redis;
  log: Logger;
  /** This node, as the lease holder. */
  node: string;
  recordTtlS: number;
  allow: ReadonlyMap<string, ReadonlySet<string> | '*'>;
  dispatch: Dispatch;
  audit: AuditLog;
  metrics: CommandMetrics;
}

export class CommandBatches {
  private readonly scripts: BatchScripts;
  /** Batches this node sends now → stop it. */
  private readonly senders = new Map<string, AbortController>();
  private readonly running = new Set<Promise<void>>();
  private stopped = false;

  constructor(private readonly o: CommandBatchesOptions) {
    this.scripts = deviceScripts<BatchScripts>(o.redis);
  }

  /** Records the batch and starts sending it from this node. Refuses (400) before recording anything. */
  async create(req: BatchRequest, actor: string, ip: string): Promise<{ batch: string; total: number; skipped: number }> {
    const kind = selectorKind(req.selector);
    const { targets, skipped } = await this.resolve(kind, req.selector);
    this.checkAllowed(req.name, targets.map((t) => t.type));
    const id = randomUUID();
    const key = redisKeys.commandBatch(id);
    const targetsKey = redisKeys.commandBatchTargets(id);
    const now = Date.now();
    const multi = this.o.redis.multi();
    multi.hset(key, {
      name: req.name, args: JSON.stringify(req.args), selector: JSON.stringify(req.selector), actor, created_at: now,
      total: targets.length, dispatched: 0, rate_per_s: req.rate_per_s, ...(req.timeout_ms !== undefined ? { timeout_ms: req.timeout_ms } : {}),
      sender: this.o.node, ...Object.fromEntries(COMMAND_STATES.map((s) => [s, 0])),
    });
    for (let i = 0; i < targets.length; i += 1000) multi.rpush(targetsKey, ...targets.slice(i, i + 1000).map((t) => t.id));
    multi.expire(key, this.o.recordTtlS).expire(targetsKey, this.o.recordTtlS);
    multi.zadd(redisKeys.commandBatchesSending, now + LEASE_MS, id);
    await multi.exec();
    this.o.metrics.batches.inc();
    await this.o.audit.record({
      type: 'command-batch.created', actor, subject: `batch:${id}`, ip,
      detail: { name: req.name, selector: kind, total: targets.length, rate_per_s: req.rate_per_s },
    });
    this.o.log.info({ batch: id, name: req.name, selector: kind, total: targets.length, actor }, 'fleet command created');
    this.startSending(id);
    return { batch: id, total: targets.length, skipped };
  }

  async get(id: string): Promise<BatchView | null> {
    const [h, lease] = await Promise.all([this.o.redis.hgetall(redisKeys.commandBatch(id)), this.o.redis.zscore(redisKeys.commandBatchesSending, id)]);
    if (!h.name) return null;
    const counts = Object.fromEntries(COMMAND_STATES.map((s) => [s, Number(h[s] ?? 0)])) as Record<CommandState, number>;
    const total = Number(h.total);
    const dispatched = Number(h.dispatched);
    const ended = COMMAND_STATES.filter((s) => ENDED_STATES.has(s)).reduce((n, s) => n + counts[s], 0);
    return {
      batch: id, name: h.name, args: JSON.parse(h.args ?? '{}') as Record<string, unknown>, selector: JSON.parse(h.selector ?? '{}') as DeviceSelector,
      total, dispatched, counts, done: dispatched >= total && ended >= total, sending: lease !== null,
      created_at: Number(h.created_at), actor: h.actor ?? '', rate_per_s: Number(h.rate_per_s),
      ...(h.timeout_ms !== undefined ? { timeout_ms: Number(h.timeout_ms) } : {}),
    };
  }

  /** Takes over batches whose sending node stopped (its lease ran out or was given back). Called every tick. */
  async resumeOrphans(): Promise<void> {
    if (this.stopped) return;
    const now = Date.now();
    for (const id of await this.o.redis.zrangebyscore(redisKeys.commandBatchesSending, '-inf', now, 'LIMIT', 0, 10)) {
      if (this.senders.has(id)) continue;
      if (await this.scripts.batchClaim(redisKeys.commandBatchesSending, redisKeys.commandBatch(id), id, this.o.node, now, LEASE_MS)) {
        this.o.log.info({ batch: id }, 'resuming a fleet command whose sending node stopped');
        this.startSending(id);
      }
    }
  }

  /** Drain: stops sending and gives the batches back, so another node goes on at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const stop of this.senders.values()) stop.abort();
    await Promise.all(this.running);
  }

  private startSending(id: string): void {
    const stop = new AbortController();
    this.senders.set(id, stop);
    const run = this.send(id, stop.signal)
      .catch((err: unknown) => this.o.log.error({ err, batch: id }, 'sending a fleet command failed; any node resumes it once its lease is given back'))
      .finally(() => {
        this.senders.delete(id);
        this.running.delete(run);
      });
    this.running.add(run);
  }

  /** Sends from `dispatched` on at rate_per_s while this node holds the lease. */
  private async send(id: string, stop: AbortSignal): Promise<void> {
    const key = redisKeys.commandBatch(id);
    const targetsKey = redisKeys.commandBatchTargets(id);
    const h = await this.o.redis.hgetall(key);
    const total = Number(h.total);
    const rate = Number(h.rate_per_s);
    const args = JSON.parse(h.args ?? '{}') as Record<string, unknown>;
    const timeoutMs = h.timeout_ms === undefined ? undefined : Number(h.timeout_ms);
    let lost = false;
    const renew = setInterval(() => {
      this.scripts.batchClaim(redisKeys.commandBatchesSending, key, id, this.o.node, Date.now(), LEASE_MS).then((held) => {
        if (held) {
          void this.o.redis.multi().expire(key, this.o.recordTtlS).expire(targetsKey, this.o.recordTtlS).exec();
        } else {
          lost = true; // another node took it over (this one stalled longer than a lease)
        }
      }, (err: unknown) => this.o.log.warn({ err, batch: id }, 'renewing a fleet command\'s lease failed'));
    }, LEASE_MS / 3);
    let allSent = false;
    try {
      const started = Date.now();
      const first = Number(h.dispatched);
      for (let i = first; i < total && !stop.aborted && !lost; i += 100) {
        const ids = await this.o.redis.lrange(targetsKey, i, Math.min(i + 99, total - 1));
        for (const [n, deviceId] of ids.entries()) {
          const index = i + n;
          // Paced from the start, not per command: a slow send does not lower the rate after it.
          await sleep(started + ((index - first) * 1000) / rate - Date.now(), stop);
          if (stop.aborted || lost) break;
          await this.o.dispatch({ cid: `${id}:${index}`, deviceId, name: h.name!, args, actor: h.actor!, timeoutMs, batch: id });
          await this.o.redis.hset(key, 'dispatched', index + 1);
        }
      }
      allSent = !stop.aborted && !lost;
    } finally {
      clearInterval(renew);
      if (!lost) await this.scripts.batchRelease(redisKeys.commandBatchesSending, key, id, this.o.node, allSent ? '1' : '0');
    }
    if (allSent) this.o.log.info({ batch: id, total }, 'fleet command: every command sent');
  }

  /** The active devices the selector picks; for an index selector, revoked or deleted devices are skipped. */
  private async resolve(kind: SelectorKind, selector: DeviceSelector): Promise<{ targets: { id: string; type: string }[]; skipped: number }> {
    const ids = kind === 'ids'
      ? selector.ids!
      : await this.o.redis.zrange(redisKeys.deviceIndex(INDEX_KIND[kind], selector[kind]!), 0, -1);
    const targets: { id: string; type: string }[] = [];
    const refused: string[] = [];
    for (let i = 0; i < ids.length; i += 1000) {
      const chunk = ids.slice(i, i + 1000);
      const pipe = this.o.redis.pipeline();
      for (const id of chunk) pipe.hmget(redisKeys.device(id), 'type', 'status');
      const rows = (await pipe.exec()) ?? [];
      for (const [n, [err, row]] of rows.entries()) {
        if (err) throw err;
        const [type, status] = row as [string | null, string | null];
        if (status === 'active') targets.push({ id: chunk[n]!, type: type ?? '' });
        else refused.push(chunk[n]!);
      }
    }
    if (kind === 'ids' && refused.length) {
      const shown = refused.slice(0, 10).join(', ') + (refused.length > 10 ? ` and ${refused.length - 10} more` : '');
      throw invalid(`selector.ids names devices that are not registered or are revoked: ${shown}`);
    }
    if (targets.length === 0) throw invalid(`selector.${kind} matches no active device`);
    return { targets, skipped: refused.length };
  }

  private checkAllowed(name: string, types: readonly string[]): void {
    const refusing = [...new Set(types)].filter((t) => !isCommandAllowed(this.o.allow, t, name)).sort();
    if (refusing.length) throw invalid(`name "${name}" is not allowed for devices of type ${refusing.join(', ')} (COMMAND_ALLOW)`);
  }
}

/** A 400 whose message starts with the field it is about. */
function invalid(message: string): FleetwireError {
  return new FleetwireError('VALIDATION_FAILED', message);
}

function sleep(ms: number, stop: AbortSignal): Promise<void> {
  if (ms <= 0 || stop.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    stop.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(timer);
      stop.removeEventListener('abort', done);
      resolve();
    }
  });
}
