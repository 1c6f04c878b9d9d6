/**
 * Commands to devices: the part that sends them (one device over HTTP, or a fleet through
 * command-batches.ts), records them (command-results.ts), consumes their results and ends
 * the ones that get none.
 *
 * Sending a command: the device must be registered and active, the name allowed for its
 * type (COMMAND_ALLOW) and the device connected, per the broker's cluster-wide connection
 * registry — or the caller asks for queue_if_offline. The command is recorded, audited and
 * published at QoS 1 on devices/{id}/cmd through the broker link, so it reaches the device
 * on whichever node holds it, or waits in its persistent session.
 *
 * expires_at, which the device checks (it answers CMD_EXPIRED past it):
 * - connected device: now + timeout_ms (default COMMAND_DEFAULT_TIMEOUT_MS), the same
 *   time the request stops waiting;
 * - offline device (queue_if_offline, and every fleet command): now + timeout_ms when
 *   given, else COMMAND_QUEUED_TTL_S; never more than COMMAND_QUEUED_TTL_S.
 * A queued command reaches a device that has a persistent session (clean session false,
 * subscribed to its cmd topic, as the firmware does); otherwise it expires unseen.
 */
import { randomUUID } from 'node:crypto';
import {
  AuditLog, FleetwireError, redisKeys, topicFor, type QueueConsumer,
} from '@fleetwire/common';
import { CommandBatches } from './command-batches.js';
import {
  CommandRecords, commandMetrics, expireOverdue, FINAL_STATES, ResultWaiters, resultsConsumer,
  type CommandMetrics, type CommandView,
} from './command-results.js';
import { isCommandAllowed, parseCommandAllow, type DeviceServiceConfig } from './config.js';
import type { DeviceServiceContext, Part } from './context.js';
import { commandRoutes, type SendAnswer, type SendRequest } from './routes/commands.js';

/** How often each node ends overdue commands and looks for fleet commands left by a stopped node. */
const TICK_MS = 1000;
/** Drain: how long requests still waiting for results may go on before the node stops taking results. */
const DRAIN_WAITS_MS = 5000;

interface SenderDeps {
  ctx: DeviceServiceContext;
  records: CommandRecords;
  waiters: ResultWaiters;
  audit: AuditLog;
  metrics: CommandMetrics;
}

export class CommandSender {
  private readonly config: DeviceServiceConfig;
  private readonly allow: ReturnType<typeof parseCommandAllow>;

  constructor(private readonly d: SenderDeps) {
    this.config = d.ctx.config;
    this.allow = parseCommandAllow(this.config.commandAllow);
  }

  /** POST /v1/devices/{id}/commands: sends, then waits for the result unless the command was queued. */
  async send(deviceId: string, req: SendRequest, actor: string, ip: string): Promise<SendAnswer> {
    const device = await this.d.ctx.redis.hmget(redisKeys.device(deviceId), 'type', 'status');
    const [type, status] = device;
    if (status === null) throw new FleetwireError('NOT_FOUND', `No device ${deviceId}.`);
    if (status !== 'active') throw new FleetwireError('DEVICE_REVOKED');
    if (!isCommandAllowed(this.allow, type ?? '', req.name)) {
      throw new FleetwireError('VALIDATION_FAILED', `name "${req.name}" is not allowed for devices of type ${type} (COMMAND_ALLOW)`);
    }
    const online = await this.isConnected(deviceId);
    if (!online && !req.queue_if_offline) {
      this.d.metrics.commands.inc({ outcome: 'refused_offline' });
      throw new FleetwireError('DEVICE_OFFLINE', `Device ${deviceId} is not connected; send with queue_if_offline to have the command wait in its session.`);
    }
    const started = Date.now();
    const cid = randomUUID();
    const expiresAt = this.expiresAt(started, online, req.timeout_ms);
    const command = { cid, deviceId, name: req.name, args: req.args, actor, expiresAt, queued: !online };
    await this.d.records.create(command);
    await this.d.audit.record({
      type: 'command.sent', actor, subject: `device:${deviceId}`, ip, outcome: online ? 'sent' : 'queued', detail: { cid, name: req.name },
    });
    this.d.metrics.commands.inc({ outcome: online ? 'sent' : 'queued' });
    if (!online) {
      await this.publish(command);
      return { status: 202, body: { cid, state: 'sent', expires_at: expiresAt } };
    }
    // Waiting starts before the publish: a fast device cannot answer before anyone listens.
    const outcome = this.d.waiters.waitFor(cid, expiresAt);
    this.publish(command).catch((err: unknown) => this.d.ctx.log.error({ err, cid, device_id: deviceId }, 'publishing a command failed; it will time out'));
    const ended = (await outcome) ?? await this.timeOut(cid);
    if (!ended) {
      return { status: 504, body: { error: { code: 'COMMAND_TIMEOUT', message: `Device ${deviceId} did not answer within ${expiresAt - started} ms; GET /v1/commands/${cid} shows a result that arrives later.` }, cid } };
    }
    this.d.metrics.wait.observe((Date.now() - started) / 1000);
    return { status: 200, body: answerOf(ended) };
  }

  /** One command of a fleet command: the device's connection decides its expiry; never refused for being offline. */
  async dispatch(c: { cid: string; deviceId: string; name: string; args: Record<string, unknown>; actor: string; timeoutMs: number | undefined; batch: string }): Promise<void> {
    const online = await this.isConnected(c.deviceId);
    const { created, expiresAt } = await this.d.records.create({
      cid: c.cid, deviceId: c.deviceId, name: c.name, args: c.args, actor: c.actor, batch: c.batch,
      expiresAt: this.expiresAt(Date.now(), online, c.timeoutMs), queued: !online,
    });
    if (created) this.d.metrics.commands.inc({ outcome: online ? 'sent' : 'queued' });
    await this.publish({ cid: c.cid, deviceId: c.deviceId, name: c.name, args: c.args, expiresAt });
  }

  /** The request stops waiting: timed_out, unless a result landed in the meantime (then that is the answer). */
  private async timeOut(cid: string): Promise<CommandView | null> {
    if (await this.d.records.lapse(cid, 'timed_out')) {
      this.d.metrics.lapses.inc({ state: 'timed_out' });
      return null;
    }
    const view = await this.d.records.get(cid);
    return view && FINAL_STATES.has(view.state) ? view : null;
  }

  private expiresAt(now: number, online: boolean, timeoutMs: number | undefined): number {
    if (online) return now + (timeoutMs ?? this.config.commandDefaultTimeoutMs);
    const queuedMaxMs = this.config.commandQueuedTtlS * 1000;
    return now + Math.min(timeoutMs ?? queuedMaxMs, queuedMaxMs);
  }

  /** Connected = in the broker's cluster-wide connection registry (a device's client id is its id). */
  private async isConnected(deviceId: string): Promise<boolean> {
    return (await this.d.ctx.redis.exists(redisKeys.connection(deviceId))) === 1;
  }

  private async publish(c: { cid: string; deviceId: string; name: string; args: Record<string, unknown>; expiresAt: number }): Promise<void> {
    await this.d.ctx.link.publish(topicFor('cmd', c.deviceId), { cid: c.cid, name: c.name, args: c.args, expires_at: c.expiresAt }, { qos: 1 });
  }
}

function answerOf(v: CommandView): Extract<SendAnswer, { status: 200 }>['body'] {
  return {
    cid: v.cid, state: v.state,
    ...(v.ok !== undefined ? { ok: v.ok } : {}), ...(v.result !== undefined ? { result: v.result } : {}), ...(v.error ? { error: v.error } : {}),
    ...(v.late ? { late: true } : {}),
  };
}

/** The commands part of the device service: routes, the cmd-results consumer, the expiry and resume tick. */
export function commandsPart(ctx: DeviceServiceContext, node: string): Part {
  const { config, log: serviceLog } = ctx;
  const log = serviceLog.child({ part: 'commands' });
  const records = new CommandRecords(ctx.redis, config.commandRecordTtlS);
  const waiters = new ResultWaiters(ctx.subscriber, records, log);
  const metrics = commandMetrics(ctx.metricsRegistry, () => waiters.size);
  const audit = new AuditLog(ctx.redis, log, config.auditMaxRecords);
  const sender = new CommandSender({ ctx, records, waiters, audit, metrics });
  const batches = new CommandBatches({
    redis: ctx.redis, log, node, recordTtlS: config.commandRecordTtlS, allow: parseCommandAllow(config.commandAllow),
    dispatch: (c) => sender.dispatch(c), audit, metrics,
  });
  const consumer: QueueConsumer | null = config.commandResultsConcurrency > 0
    ? resultsConsumer({ records, metrics, connection: ctx.queueConnection, log, metricsRegistry: ctx.metricsRegistry, concurrency: config.commandResultsConcurrency })
    : null;

  commandRoutes(ctx.http, {
    operator: ctx.guards.operator, reader: ctx.guards.reader,
    limits: { maxTimeoutMs: config.commandMaxTimeoutMs, maxArgsBytes: config.commandMaxArgsBytes, maxRatePerS: config.fleetCommandMaxRate },
    send: (id, req, actor, ip) => sender.send(id, req, actor, ip),
    get: (cid) => records.get(cid),
    createBatch: (req, actor, ip) => batches.create(req, actor, ip),
    getBatch: (id) => batches.get(id),
  });

  let timer: NodeJS.Timeout | undefined;
  let ticking = false;
  const tick = async (): Promise<void> => {
    if (ticking) return; // a slow Redis must not stack ticks
    ticking = true;
    try {
      await expireOverdue(records, metrics, log);
      await batches.resumeOrphans();
    } catch (err) {
      log.warn({ err }, 'command tick failed; retrying next tick');
    } finally {
      ticking = false;
    }
  };

  return {
    readiness: consumer ? { command_results: async () => consumer.isRunning() } : {},
    async start() {
      await waiters.start();
      await consumer?.start();
      timer = setInterval(() => void tick(), TICK_MS);
    },
    async drain() {
      clearInterval(timer);
      await batches.stop();
      // Requests waiting on this node may still get their results (this node consumes them too).
      const until = Date.now() + DRAIN_WAITS_MS;
      while (waiters.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      await consumer?.drain();
    },
    async close() {
      clearInterval(timer);
      waiters.abortAll();
    },
  };
}
