/**
 * Audit log: structured records in a capped Redis stream (newest kept), each
 * also written to the service log. Records name who did what to whom, from
 * where, with what outcome; never a password, token or key. Every service
 * writes the same stream (the auth service's accounts and devices, the device
 * service's commands); GET /v1/audit reads it.
 */
import type { Redis } from 'ioredis';
import { int } from './config.js';
import type { Logger } from './logger.js';
import { redisKeys } from './redis-keys.js';

export const AUDIT_TYPES = [
  'login.succeeded', 'login.failed', 'account.locked', 'account.unlocked',
  'password.changed', 'password.reset-requested', 'password.reset-completed', 'password.rehashed',
  'refresh.reused', 'session.ended', 'user.created', 'user.role-changed', 'user.deleted',
  'device.registered', 'device.updated', 'device.key-rotated', 'device.revoked',
  'signing-key.rotated', 'service-token.issued',
  'command.sent', 'command-batch.created', 'firmware.uploaded',
  'rollout.created', 'rollout.paused', 'rollout.resumed', 'rollout.cancelled', 'rollout.aborted',
] as const;
export type AuditType = (typeof AUDIT_TYPES)[number];

/** The setting every service that writes the stream reads, so they trim it alike. */
export const auditSpec = {
  auditMaxRecords: int('AUDIT_MAX_RECORDS', 100_000, 'the audit stream keeps about this many newest records', { min: 1000 }),
};

export interface AuditInput {
  type: AuditType;
  /** Who acted: `user:<id>`, `service:<name>`, `cli`, `system` or `anonymous`. */
  actor: string;
  /** What it concerns: `user:<id>`, `email:<address>`, `device:<id>`, `key:<kid>`, `batch:<id>`. */
  subject?: string;
  ip?: string;
  outcome?: string;
  detail?: Record<string, string | number | boolean>;
}

export interface AuditRecord extends AuditInput { id: string; at: number }

export interface AuditQuery {
  type?: string;
  actor?: string;
  subject?: string;
  /** Unix ms, inclusive. */
  since?: number;
  until?: number;
  /** Stream id: only records older than this (for the next page). */
  before?: string;
  limit: number;
}

/** How many records a query reads at most while filtering, so one request stays cheap. */
const MAX_SCANNED = 20_000;

export class AuditLog {
  constructor(private readonly redis: Redis, private readonly log: Logger, private readonly maxRecords: number) {}

  async record(input: AuditInput): Promise<void> {
    const fields: string[] = ['type', input.type, 'actor', input.actor];
    if (input.subject) fields.push('subject', input.subject);
    if (input.ip) fields.push('ip', input.ip);
    if (input.outcome) fields.push('outcome', input.outcome);
    if (input.detail) fields.push('detail', JSON.stringify(input.detail));
    this.log.info({ audit: input }, `audit ${input.type}`);
    try {
      await this.redis.xadd(redisKeys.audit, 'MAXLEN', '~', this.maxRecords, '*', ...fields);
    } catch (err) {
      // The action already happened; losing its record must not undo or fail it.
      this.log.error({ err, audit: input }, 'writing an audit record failed');
    }
  }

  /** Newest first; `next` is the `before` of the following page, null at the end. */
  async query(q: AuditQuery): Promise<{ records: AuditRecord[]; next: string | null }> {
    const records: AuditRecord[] = [];
    let end = q.before ? `(${q.before}` : q.until !== undefined ? String(q.until) : '+';
    const start = q.since !== undefined ? String(q.since) : '-';
    let scanned = 0;
    while (records.length < q.limit && scanned < MAX_SCANNED) {
      const batch = await this.redis.xrevrange(redisKeys.audit, end, start, 'COUNT', 500);
      if (batch.length === 0) return { records, next: null };
      for (const [id, flat] of batch) {
        scanned++;
        const rec = toRecord(id, flat);
        if (matches(rec, q)) records.push(rec);
        if (records.length === q.limit) return { records, next: id };
      }
      end = `(${batch[batch.length - 1]![0]}`;
    }
    return { records, next: records.length ? records[records.length - 1]!.id : end.slice(1) };
  }
}

function toRecord(id: string, flat: string[]): AuditRecord {
  const f: Record<string, string> = {};
  for (let i = 0; i < flat.length; i += 2) f[flat[i]!] = flat[i + 1]!;
  return {
    id, at: Number(id.split('-')[0]), type: f.type as AuditType, actor: f.actor ?? '',
    ...(f.subject ? { subject: f.subject } : {}), ...(f.ip ? { ip: f.ip } : {}), ...(f.outcome ? { outcome: f.outcome } : {}),
    ...(f.detail ? { detail: JSON.parse(f.detail) as Record<string, string | number | boolean> } : {}),
  };
}

function matches(r: AuditRecord, q: AuditQuery): boolean {
  return (!q.type || r.type === q.type) && (!q.actor || r.actor === q.actor) && (!q.subject || r.subject === q.subject);
}
