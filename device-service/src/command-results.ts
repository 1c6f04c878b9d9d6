/**
 * Commands as records in Redis, and how they end.
 *
 * A command is a hash (redisKeys.command(cid)) from the moment it is sent until
 * COMMAND_RECORD_TTL_S after. Its state moves only through Lua compare-and-sets, so every
 * node (and the broker, for "delivered") can move it and a repeated event changes nothing:
 *
 *   sent ─► delivered ─► succeeded | failed | expired      (the device's result)
 *     └──────────┴─────► timed_out                          (the HTTP wait gave up)
 *     └──────────┴─────► expired                            (expires_at passed, no result)
 *
 * A result that arrives after timed_out or after the sweep's expired is still recorded
 * (late: true). A command in a batch moves its batch's per-state counts in the same script.
 *
 * Results come from the `cmd-results` queue on whichever node consumes the job; the
 * request waiting for a result may be on another node. The result script PUBLISHes the
 * cid on redisKeys.commandResults, and every node keeps one subscriber connection and a
 * map cid → waiters (ResultWaiters).
 */
import {
  Counter, createQueueConsumer, Gauge, Histogram, redisKeys,
  type Logger, type QueueConsumer, type QueueJob, type Redis, type Registry,
} from '@fleetwire/common';
import { deviceScripts } from './redis-scripts.js';

export const COMMAND_STATES = ['sent', 'delivered', 'succeeded', 'failed', 'expired', 'timed_out'] as const;
export type CommandState = (typeof COMMAND_STATES)[number];
/** States a result moved the command to: nothing the device says changes them. */
export const FINAL_STATES: ReadonlySet<CommandState> = new Set(['succeeded', 'failed', 'expired']);
/** States that end a batch command for the batch's progress (timed_out only happens to HTTP-waited commands). */
export const ENDED_STATES: ReadonlySet<CommandState> = new Set(['succeeded', 'failed', 'expired', 'timed_out']);

export interface CommandError { code: string; message: string }

/** A command as GET /v1/commands/{cid} shows it. */
export interface CommandView {
  cid: string;
  device_id: string;
  name: string;
  args: Record<string, unknown>;
  actor: string;
  state: CommandState;
  /** True when it was sent to an offline device and waits in its session. */
  queued: boolean;
  ok?: boolean;
  result?: unknown;
  error?: CommandError;
  /** The result came after the HTTP answer went out (timed_out) or after the command was given up (expired). */
  late?: boolean;
  created_at: number;
  expires_at: number;
  delivered_at?: number;
  finished_at?: number;
  batch?: string;
}

export interface NewCommand {
  cid: string;
  deviceId: string;
  name: string;
  args: Record<string, unknown>;
  actor: string;
  expiresAt: number;
  queued: boolean;
  batch?: string;
}

/** What a result did to its command. */
export type ResultOutcome = 'applied' | 'duplicate' | 'unknown' | 'other-device';

export interface CommandMetrics {
  /** Commands sent, by whether the device was connected; and the ones refused because it was not. */
  readonly commands: Counter<'outcome'>;
  readonly results: Counter<'outcome'>;
  readonly lapses: Counter<'state'>;
  /** From sending to the result, for requests that got their answer in time. */
  readonly wait: Histogram;
  readonly batches: Counter;
}

export function commandMetrics(registry: Registry, waiting: () => number): CommandMetrics {
  const commands = new Counter({
    name: 'fleetwire_device_commands_total', help: 'commands: sent to a connected device, queued for an offline one, or refused (device offline)',
    labelNames: ['outcome'], registers: [registry],
  });
  for (const outcome of ['sent', 'queued', 'refused_offline']) commands.inc({ outcome }, 0);
  const results = new Counter({
    name: 'fleetwire_device_command_results_total',
    help: 'device results consumed: applied, duplicate (the command had its result already), unknown (no such command), other_device (the cid is another device\'s)',
    labelNames: ['outcome'], registers: [registry],
  });
  for (const outcome of ['applied', 'duplicate', 'unknown', 'other_device']) results.inc({ outcome }, 0);
  const lapses = new Counter({
    name: 'fleetwire_device_command_lapses_total', help: 'commands that ended without a result: timed_out (the HTTP wait) or expired (expires_at passed)',
    labelNames: ['state'], registers: [registry],
  });
  for (const state of ['timed_out', 'expired']) lapses.inc({ state }, 0);
  new Gauge({
    name: 'fleetwire_device_command_waiting_requests', help: 'HTTP requests on this node waiting for a command result',
    registers: [registry], collect() { this.set(waiting()); },
  });
  return {
    commands, results, lapses,
    wait: new Histogram({
      name: 'fleetwire_device_command_wait_seconds', help: 'from sending a command to its result, for requests answered in time',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120], registers: [registry],
    }),
    batches: new Counter({ name: 'fleetwire_device_command_batches_total', help: 'fleet commands (batches) created', registers: [registry] }),
  };
}

interface RecordScripts {
  /** lua/command-create.lua (variable keys): [1 created | 0 existed, expires_at]. */
  commandCreate(...args: Array<string | number>): Promise<[number, string]>;
  /** lua/command-result.lua: [outcome, previous state]. */
  commandResult(command: string, pending: string, cid: string, deviceId: string, now: number, state: string, ok: string,
    field: string, json: string, batchPrefix: string, channel: string): Promise<[ResultOutcome, string]>;
  /** lua/command-lapse.lua: the previous state, or null when nothing changed. */
  commandLapse(command: string, pending: string, cid: string, state: string, now: number, batchPrefix: string, channel: string): Promise<string | null>;
}

const batchPrefix = redisKeys.commandBatch('');

/** The command records: creation, reads and the state changes (each one Lua script). */
export class CommandRecords {
  private readonly scripts: RecordScripts;

  constructor(private readonly redis: Redis, private readonly ttlS: number) {
    this.scripts = deviceScripts<RecordScripts>(redis);
  }

  /** Records a new command in state sent; a batch command that exists already keeps its record (see the script). */
  async create(c: NewCommand): Promise<{ created: boolean; expiresAt: number }> {
    const fields: Record<string, string> = {
      device_id: c.deviceId, name: c.name, args: JSON.stringify(c.args), actor: c.actor,
      created_at: String(Date.now()), queued: c.queued ? '1' : '0', ...(c.batch ? { batch: c.batch } : {}),
    };
    const keys = [redisKeys.command(c.cid), redisKeys.commandsPending, ...(c.batch ? [redisKeys.commandBatch(c.batch)] : [])];
    const [created, expiresAt] = await this.scripts.commandCreate(
      keys.length, ...keys, c.cid, c.expiresAt, this.ttlS, ...Object.entries(fields).flat(),
    );
    return { created: created === 1, expiresAt: Number(expiresAt) };
  }

  async get(cid: string): Promise<CommandView | null> {
    return toView(cid, await this.redis.hgetall(redisKeys.command(cid)));
  }

  /** The result a device sent for `payload.cid`, recorded once. */
  async applyResult(deviceId: string, payload: { cid: string; ok: boolean; result?: unknown; error?: CommandError }): Promise<{ outcome: ResultOutcome; previous: string }> {
    // The device itself says when a command came too late; anything else it refused is a failure.
    const state: CommandState = payload.ok ? 'succeeded' : payload.error?.code === 'CMD_EXPIRED' ? 'expired' : 'failed';
    const [field, value] = payload.ok ? ['result', payload.result ?? null] : ['error', payload.error];
    const [outcome, previous] = await this.scripts.commandResult(
      redisKeys.command(payload.cid), redisKeys.commandsPending, payload.cid, deviceId, Date.now(), state, payload.ok ? '1' : '0',
      field, JSON.stringify(value), batchPrefix, redisKeys.commandResults,
    );
    return { outcome, previous };
  }

  /** Ends the wait of a command still sent or delivered; the previous state, or null when it had ended already. */
  async lapse(cid: string, state: 'timed_out' | 'expired'): Promise<CommandState | null> {
    const previous = await this.scripts.commandLapse(
      redisKeys.command(cid), redisKeys.commandsPending, cid, state, Date.now(), batchPrefix, redisKeys.commandResults,
    );
    return (previous || null) as CommandState | null;
  }

  /** Cids whose expires_at is before `before`, oldest first. */
  async pastExpiry(before: number, limit: number): Promise<string[]> {
    return this.redis.zrangebyscore(redisKeys.commandsPending, '-inf', before, 'LIMIT', 0, limit);
  }
}

function toView(cid: string, h: Record<string, string>): CommandView | null {
  if (!h.device_id) return null;
  const num = (v: string | undefined): number | undefined => (v === undefined ? undefined : Number(v));
  return {
    cid, device_id: h.device_id, name: h.name ?? '', args: JSON.parse(h.args ?? '{}') as Record<string, unknown>, actor: h.actor ?? '',
    state: (h.state ?? 'sent') as CommandState, queued: h.queued === '1',
    ...(h.ok !== undefined ? { ok: h.ok === '1' } : {}),
    ...(h.result !== undefined ? { result: JSON.parse(h.result) as unknown } : {}),
    ...(h.error !== undefined ? { error: JSON.parse(h.error) as CommandError } : {}),
    ...(h.late === '1' ? { late: true } : {}),
    created_at: Number(h.created_at), expires_at: Number(h.expires_at),
    ...(h.delivered_at !== undefined ? { delivered_at: num(h.delivered_at) } : {}),
    ...(h.finished_at !== undefined ? { finished_at: num(h.finished_at) } : {}),
    ...(h.batch ? { batch: h.batch } : {}),
  };
}

/**
 * The requests of this node waiting for results. One subscriber connection for all of
 * them; a waiter re-reads the record after it is registered (a result that landed before
 * is not missed) and every POLL_MS while it waits: Redis pub/sub drops what is published
 * while the subscriber reconnects.
 */
export class ResultWaiters {
  private static readonly POLL_MS = 2000;
  private readonly waiting = new Map<string, Set<() => void>>();
  private readonly aborts = new Set<() => void>();

  constructor(private readonly subscriber: Redis, private readonly records: CommandRecords, private readonly log: Logger) {}

  async start(): Promise<void> {
    this.subscriber.on('message', (channel: string, cid: string) => {
      if (channel !== redisKeys.commandResults) return;
      for (const wake of this.waiting.get(cid) ?? []) wake();
    });
    await this.subscriber.subscribe(redisKeys.commandResults);
  }

  get size(): number {
    return this.aborts.size;
  }

  /**
   * The command once it reached a final state, or null when `deadline` (unix ms) came
   * first or the node is shutting down (abortAll).
   */
  waitFor(cid: string, deadline: number): Promise<CommandView | null> {
    return new Promise((resolve) => {
      let settled = false;
      const finish = (view: CommandView | null): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearInterval(poll);
        const set = this.waiting.get(cid);
        set?.delete(check);
        if (set?.size === 0) this.waiting.delete(cid);
        this.aborts.delete(abort);
        resolve(view);
      };
      const check = (): void => {
        this.records.get(cid).then(
          (view) => { if (view && FINAL_STATES.has(view.state)) finish(view); },
          (err: unknown) => this.log.warn({ err, cid }, 'reading a command while waiting for its result failed'),
        );
      };
      const abort = (): void => finish(null);
      const timer = setTimeout(abort, Math.max(0, deadline - Date.now()));
      const poll = setInterval(check, ResultWaiters.POLL_MS);
      let set = this.waiting.get(cid);
      if (!set) this.waiting.set(cid, (set = new Set()));
      set.add(check);
      this.aborts.add(abort);
      check();
    });
  }

  /** Ends every wait now (shutdown); their requests answer as timed out, their commands keep their state. */
  abortAll(): void {
    for (const abort of [...this.aborts]) abort();
  }
}

/** Consumes `cmd-results`: every result is recorded once, whichever node holds the request. */
export function resultsConsumer(o: {
  records: CommandRecords; metrics: CommandMetrics; connection: Redis; log: Logger; metricsRegistry: Registry; concurrency: number;
}): QueueConsumer {
  return createQueueConsumer({
    queue: 'cmd-results', connection: o.connection, log: o.log, metricsRegistry: o.metricsRegistry, concurrency: o.concurrency,
    async handle(job: QueueJob) {
      const payload = job.envelope.payload as { cid: string; ok: boolean; result?: unknown; error?: CommandError };
      const { outcome, previous } = await o.records.applyResult(job.envelope.device_id, payload);
      o.metrics.results.inc({ outcome: outcome.replace('-', '_') });
      if (outcome === 'unknown') job.log.info('dropping the result of an unknown command (not sent through the API, or its record expired)');
      else if (outcome === 'other-device') job.log.warn('dropping a result for a command of another device');
      else if (outcome === 'duplicate') job.log.debug({ state: previous }, 'the command has its result already; this one changes nothing');
      else job.log.debug({ previous }, 'command result recorded');
    },
  });
}

/**
 * Gives up commands whose expires_at passed without a result (queued ones, batch ones; a
 * request that waits ends its own as timed_out). GRACE_MS after expires_at: a device that
 * took the command just in time still has its result counted first (and one that comes
 * later still is recorded as late). At most MAX_PAGES pages a call, so one tick stays short.
 */
export async function expireOverdue(records: CommandRecords, metrics: CommandMetrics, log: Logger, now = Date.now()): Promise<number> {
  const GRACE_MS = 3000;
  const PAGE = 500;
  const MAX_PAGES = 10;
  let expired = 0;
  for (let page = 0; page < MAX_PAGES; page++) {
    const cids = await records.pastExpiry(now - GRACE_MS, PAGE);
    // Every lapse removes its cid from the index, so the next page starts after this one.
    const previous = await Promise.all(cids.map((cid) => records.lapse(cid, 'expired')));
    const n = previous.filter(Boolean).length;
    expired += n;
    if (cids.length < PAGE) break;
  }
  if (expired) {
    metrics.lapses.inc({ state: 'expired' }, expired);
    log.info({ expired }, 'commands expired without a result');
  }
  return expired;
}
