/**
 * OTA rollouts: one signed image offered to the devices a selector picks, wave by wave,
 * at a bounded rate, each device followed through its OTA states, aborted by itself when
 * too many fail.
 *
 * Targets are resolved at creation (ids, or the listing indexes with status active), sorted
 * by id (stable) and split into waves by cumulative percent. Each is checked before any
 * offer; an incompatible one is `skipped` with its reason and never offered:
 * - chip: the device record's capabilities name it as `chip:<name>` (e.g. `chip:esp32`,
 *   set at registration or with PATCH /v1/devices/{id}); no such capability = chip unknown,
 *   skipped. It must equal the manifest's chip (when the manifest names one).
 * - OTA partition: the capability `ota_partition_bytes:<n>` (e.g. `ota_partition_bytes:1572864`,
 *   set the same way) gives the size of the device's OTA slot; an image whose manifest `size`
 *   is larger is skipped, the reason naming both sizes. An entry that is not a positive integer
 *   is skipped too (a typo must not pass as "fits"). No such capability = offered, unlike chip:
 *   the device itself refuses an image larger than its partition before downloading a byte
 *   (firmware-esp32/core/src/ota.rs OtaVerifier::check → OtaError::TooLarge, after the
 *   signature, chip and version checks; the simulator's ota_tests show it answers `refused`
 *   "does not fit" and fetches nothing), so the worst case is one `refused` status, finished but
 *   not as a failure; skipping every device that never declared its partition would instead
 *   block rollouts to fleets registered before this capability existed.
 * - running version: the `fw` its heartbeats report (device state); unknown = skipped.
 *   Below the manifest's min_version: skipped. Equal to the image's version: skipped
 *   (already runs it). Newer than the image's version: skipped unless allow_downgrade.
 *
 * The rollout is a hash (redisKeys.rollout) with counts per state and per wave; each device's
 * state is moved by lua/rollout-device.lua, forward only, so a repeated ota event never
 * counts twice. Events come from ota-events (onOtaEvent); the tick (every TICK_MS, on the
 * one node holding the rollout's lease in redisKeys.rolloutsActive, lua/batch-claim.lua as
 * for command batches) does the rest:
 * - confirm windows: a device offered confirm_window_s ago and not finished is rolled_back
 *   when it reported a heartbeat after its offer on another version than the image's,
 *   succeeded when it reports the image's version, else timed_out;
 * - failure ratio (failed + rolled_back + timed_out) / finished (succeeded, failed, refused,
 *   rolled_back, timed_out), once finished ≥ min_sample: over the threshold, the rollout aborts
 *   (no more offers; logged, audited, counted; abort_reason in the view);
 * - waves: a wave starts when the previous one has no device in flight (offered …
 *   rebooting) and its hold_s has passed since it started; its devices join the pending
 *   set. The rollout completes when the last wave has started and every target has finished
 *   or was skipped;
 * - offers (running only, not paused): pending devices that are online (presence) are
 *   offered, at most rate_per_min a minute, each spaced by a further random 0..jitter_s s:
 *   recordOffer first, then {rollout, manifest} on devices/{id}/ota (QoS 1). Offline ones
 *   stay pending and are offered once presence says they are online, while the rollout runs.
 */
import { randomUUID } from 'node:crypto';
import {
  AuditLog, Counter, FleetwireError, Gauge, findDeviceIds, redisKeys, topicFor, type Logger, type Redis, type Registry, type SignedManifest,
} from '@fleetwire/common';
import type { BrokerLink } from '@fleetwire/common';
import { recordOffer } from './firmware/offers.js';
import type { FirmwareStore } from './firmware/storage.js';
import { selectorKind, type DeviceSelector, type SelectorKind } from './device-selector.js';
import { deviceScripts } from './redis-scripts.js';

export const DEVICE_STATES = [
  'pending', 'skipped', 'offered', 'downloading', 'verifying', 'rebooting', 'succeeded', 'failed', 'refused', 'rolled_back', 'timed_out',
] as const;
export type DeviceState = (typeof DEVICE_STATES)[number];
export const ROLLOUT_STATES = ['running', 'paused', 'completed', 'aborted', 'cancelled'] as const;
export type RolloutState = (typeof ROLLOUT_STATES)[number];
const FINISHED: readonly DeviceState[] = ['succeeded', 'failed', 'refused', 'rolled_back', 'timed_out'];
const FAILURES: readonly DeviceState[] = ['failed', 'rolled_back', 'timed_out'];
const IN_FLIGHT: readonly DeviceState[] = ['offered', 'downloading', 'verifying', 'rebooting'];
/** ota-status.schema.json state → device state. */
const FROM_OTA: Record<string, DeviceState> = {
  offered: 'offered', downloading: 'downloading', verifying: 'verifying', rebooting: 'rebooting', 'pending-verify': 'rebooting',
  success: 'succeeded', failed: 'failed', refused: 'refused', 'rolled-back': 'rolled_back',
};
const LEASE_MS = 10_000;
export const TICK_MS = 500;

export interface RolloutRequest {
  firmware: string;
  selector: DeviceSelector;
  waves?: { percent: number; hold_s: number }[];
  rate_per_min?: number;
  jitter_s?: number;
  failure_threshold?: { ratio: number; min_sample: number };
  confirm_window_s?: number;
  allow_downgrade?: boolean;
}
type Counts = Record<DeviceState, number>;
export interface RolloutView {
  id: string;
  state: RolloutState;
  firmware: { sha256: string; version: string; chip: string | null };
  selector: DeviceSelector;
  waves: { percent: number; hold_s: number; devices: number; started_at: number | null }[];
  current_wave: number;
  counts: Counts;
  counts_by_wave: Counts[];
  failure_ratio: number;
  abort_reason: string | null;
  rate_per_min: number;
  jitter_s: number;
  failure_threshold: { ratio: number; min_sample: number };
  confirm_window_s: number;
  allow_downgrade: boolean;
  created_at: number;
  updated_at: number;
  actor: string;
}
export interface RolloutDevice { device_id: string; state: DeviceState; wave: number; reason?: string; at: number }

interface Scripts {
  rolloutDevice(hash: string, devices: string, deadlines: string, device: string, state: string, at: number, reason: string, deadline: string): Promise<'applied' | 'stale' | 'unknown'>;
  rolloutState(hash: string, active: string, id: string, from: string, to: string, now: number, reason: string): Promise<string>;
  batchClaim(active: string, hash: string, id: string, node: string, now: number, leaseMs: number): Promise<number>;
  batchRelease(active: string, hash: string, id: string, node: string, allSent: '0' | '1'): Promise<number>;
}

export interface RolloutsOptions {
  redis: Redis;
  link: BrokerLink;
  store: FirmwareStore;
  log: Logger;
  node: string;
  audit: AuditLog;
  registry: Registry;
}

const DEFAULTS = { ratePerMin: 60, confirmWindowS: 600 };

/** Compares dotted versions by their numeric parts (1.10.0 > 1.9.9); equal numbers compare as text. */
export function compareVersions(a: string, b: string): number {
  const na = a.match(/\d+/g)?.map(Number) ?? [];
  const nb = b.match(/\d+/g)?.map(Number) ?? [];
  for (let i = 0; i < Math.max(na.length, nb.length); i++) {
    const d = (na[i] ?? 0) - (nb[i] ?? 0);
    if (d) return Math.sign(d);
  }
  return a === b ? 0 : a < b ? -1 : 1;
}

/** Why a device may not be offered `manifest`, or null when it may. */
export function incompatibility(manifest: SignedManifest, device: { capabilities: string[]; fw: string | null }, allowDowngrade: boolean): string | null {
  const chip = device.capabilities.find((c) => c.startsWith('chip:'))?.slice(5);
  if (manifest.chip !== undefined) {
    if (!chip) return 'chip unknown: the device has no chip:<name> capability';
    if (chip !== manifest.chip) return `chip ${chip}, the image is for ${manifest.chip}`;
  }
  const partition = device.capabilities.find((c) => c.startsWith('ota_partition_bytes:'))?.slice('ota_partition_bytes:'.length);
  if (partition !== undefined) {
    if (!/^[1-9]\d*$/.test(partition)) return `ota_partition_bytes:${partition} is not a size in bytes`;
    if (manifest.size > Number(partition)) return `image of ${manifest.size} bytes does not fit the ${partition}-byte OTA partition`;
  }
  if (!device.fw) return 'running version unknown: no heartbeat yet';
  if (manifest.min_version !== undefined && compareVersions(device.fw, manifest.min_version) < 0) {
    return `runs ${device.fw}, the image needs at least ${manifest.min_version}`;
  }
  const c = compareVersions(device.fw, manifest.version);
  if (c === 0) return `already runs ${manifest.version}`;
  if (c > 0 && !allowDowngrade) return `downgrade from ${device.fw} to ${manifest.version} (allow_downgrade not set)`;
  return null;
}

const invalid = (message: string): FleetwireError => new FleetwireError('VALIDATION_FAILED', message);
const zeroCounts = (): Counts => Object.fromEntries(DEVICE_STATES.map((s) => [s, 0])) as Counts;
const sum = (c: Counts, states: readonly DeviceState[]): number => states.reduce((n, s) => n + c[s], 0);

export class Rollouts {
  private readonly scripts: Scripts;
  private readonly outcomes: Counter<'outcome'>;
  private stopped = false;
  private ticking = false;
  /** Rollouts this node holds, for giving them back on drain. */
  private readonly held = new Set<string>();

  constructor(private readonly o: RolloutsOptions) {
    this.scripts = deviceScripts<Scripts>(o.redis);
    this.outcomes = new Counter({
      name: 'fleetwire_device_rollouts_total', help: 'OTA rollouts: created, and how they ended (completed, aborted, cancelled)',
      labelNames: ['outcome'], registers: [o.registry],
    });
    for (const outcome of ['created', 'completed', 'aborted', 'cancelled']) this.outcomes.inc({ outcome }, 0);
    const redis = o.redis;
    new Gauge({
      name: 'fleetwire_device_rollout_devices', help: 'target devices of the running and paused OTA rollouts, by state',
      labelNames: ['state'], registers: [o.registry],
      async collect() {
        const total = zeroCounts();
        for (const id of await redis.zrange(redisKeys.rolloutsActive, 0, 99)) {
          const h = await redis.hgetall(redisKeys.rollout(id));
          for (const s of DEVICE_STATES) total[s] += Number(h[`c:${s}`] ?? 0);
        }
        for (const s of DEVICE_STATES) this.set({ state: s }, total[s]);
      },
    });
  }

  async create(req: RolloutRequest, actor: string, ip: string): Promise<RolloutView> {
    const kind = selectorKind(req.selector);
    const waves = req.waves ?? [{ percent: 100, hold_s: 0 }];
    for (let i = 1; i < waves.length; i++) {
      if (waves[i]!.percent <= waves[i - 1]!.percent) throw invalid(`waves[${i}].percent must be greater than waves[${i - 1}].percent`);
    }
    if (waves.at(-1)!.percent !== 100) throw invalid(`waves[${waves.length - 1}].percent must be 100 (the last wave reaches every target)`);
    const image = await this.o.store.stat(req.firmware);
    if (!image) throw new FleetwireError('NOT_FOUND', `firmware ${req.firmware} is not stored (POST /v1/firmware first)`);
    const manifest = image.manifest;
    const ids = (await this.resolve(kind, req.selector)).sort();
    const allowDowngrade = req.allow_downgrade ?? false;

    // Compatibility and wave of each target.
    const entries: [string, string][] = [];
    const counts: Record<string, number> = {};
    const bump = (f: string): void => void (counts[f] = (counts[f] ?? 0) + 1);
    const now = Date.now();
    const waveSizes: number[] = [];
    let from = 0;
    for (const [w, wave] of waves.entries()) {
      const to = Math.ceil((ids.length * wave.percent) / 100);
      waveSizes.push(Math.max(0, to - from));
      const chunk = ids.slice(from, to);
      const pipe = this.o.redis.pipeline();
      for (const id of chunk) {
        pipe.hget(redisKeys.device(id), 'capabilities');
        pipe.hget(redisKeys.deviceState(id), 'fw');
      }
      const rows = (await pipe.exec()) ?? [];
      for (const [n, id] of chunk.entries()) {
        const caps = rows[2 * n]![1] as string | null;
        const fw = rows[2 * n + 1]![1] as string | null;
        const why = incompatibility(manifest, { capabilities: caps ? JSON.parse(caps) as string[] : [], fw }, allowDowngrade);
        const state = why ? 'skipped' : 'pending';
        entries.push([id, `${state}|${w}|${now}|${why ?? ''}`]);
        bump(`c:${state}`);
        bump(`w${w}:${state}`);
      }
      from = to;
    }
    const id = randomUUID();
    const key = redisKeys.rollout(id);
    const threshold = req.failure_threshold ?? { ratio: 0.2, min_sample: 5 };
    const record = {
      firmware: JSON.stringify({ sha256: image.sha256, version: manifest.version, chip: manifest.chip ?? null }),
      selector: JSON.stringify(req.selector),
      waves: JSON.stringify(waves.map((w, i) => ({ ...w, devices: waveSizes[i] }))),
      state: 'running', current_wave: -1, rate_per_min: req.rate_per_min ?? DEFAULTS.ratePerMin, jitter_s: req.jitter_s ?? 0,
      ratio: threshold.ratio, min_sample: threshold.min_sample, confirm_window_s: req.confirm_window_s ?? DEFAULTS.confirmWindowS,
      allow_downgrade: allowDowngrade ? '1' : '0', actor, created_at: now, updated_at: now, next_offer_at: 0, sender: this.o.node,
      ...Object.fromEntries(DEVICE_STATES.map((s) => [`c:${s}`, 0])),
      ...Object.fromEntries(waves.flatMap((_w, i) => DEVICE_STATES.map((s) => [`w${i}:${s}`, 0]))),
      ...counts,
    };
    const multi = this.o.redis.multi().hset(key, record);
    for (let i = 0; i < entries.length; i += 1000) {
      multi.hset(redisKeys.rolloutDevices(id), Object.fromEntries(entries.slice(i, i + 1000)));
      multi.rpush(redisKeys.rolloutTargets(id), ...entries.slice(i, i + 1000).map((e) => e[0]));
    }
    multi.zadd(redisKeys.rollouts, now, id).zadd(redisKeys.rolloutsActive, now + LEASE_MS, id);
    await multi.exec();
    this.outcomes.inc({ outcome: 'created' });
    await this.o.audit.record({
      type: 'rollout.created', actor, subject: `rollout:${id}`, ip,
      detail: { firmware: image.sha256, version: manifest.version, selector: kind, targets: ids.length, skipped: counts['c:skipped'] ?? 0, waves: waves.length },
    });
    this.o.log.info({ rollout: id, version: manifest.version, targets: ids.length, skipped: counts['c:skipped'] ?? 0, actor }, 'rollout created');
    await this.announce(id, 'running', actor);
    void this.tick();
    return (await this.get(id))!;
  }

  async get(id: string): Promise<RolloutView | null> {
    const h = await this.o.redis.hgetall(redisKeys.rollout(id));
    if (!h.state) return null;
    const waves = JSON.parse(h.waves!) as { percent: number; hold_s: number; devices: number }[];
    const countsOf = (prefix: string): Counts => Object.fromEntries(DEVICE_STATES.map((s) => [s, Number(h[`${prefix}${s}`] ?? 0)])) as Counts;
    const counts = countsOf('c:');
    const finished = sum(counts, FINISHED);
    return {
      id, state: h.state as RolloutState, firmware: JSON.parse(h.firmware!) as RolloutView['firmware'],
      selector: JSON.parse(h.selector!) as DeviceSelector,
      waves: waves.map((w, i) => ({ ...w, started_at: h[`wave_started_${i}`] ? Number(h[`wave_started_${i}`]) : null })),
      current_wave: Math.max(0, Number(h.current_wave)), counts, counts_by_wave: waves.map((_w, i) => countsOf(`w${i}:`)),
      failure_ratio: finished ? sum(counts, FAILURES) / finished : 0, abort_reason: h.abort_reason ?? null,
      rate_per_min: Number(h.rate_per_min), jitter_s: Number(h.jitter_s),
      failure_threshold: { ratio: Number(h.ratio), min_sample: Number(h.min_sample) }, confirm_window_s: Number(h.confirm_window_s),
      allow_downgrade: h.allow_downgrade === '1', created_at: Number(h.created_at), updated_at: Number(h.updated_at), actor: h.actor ?? '',
    };
  }

  /** Newest first; the cursor is the offset. */
  async list(limit: number, cursor?: string): Promise<{ items: RolloutView[]; next_cursor: string | null }> {
    const start = cursor ? Number(cursor) : 0;
    if (!Number.isSafeInteger(start) || start < 0) throw invalid('cursor is not one this listing gave out: pass next_cursor back unchanged');
    const ids = await this.o.redis.zrevrange(redisKeys.rollouts, start, start + limit - 1);
    const items = (await Promise.all(ids.map((id) => this.get(id)))).filter((v): v is RolloutView => v !== null);
    return { items, next_cursor: ids.length === limit ? String(start + limit) : null };
  }

  /** Targets in wave order, optionally only those in `state`; the cursor is the offset in the target list. */
  async devices(id: string, o: { state?: DeviceState; limit: number; cursor?: string }): Promise<{ items: RolloutDevice[]; next_cursor: string | null } | null> {
    if (!(await this.o.redis.exists(redisKeys.rollout(id)))) return null;
    let at = o.cursor ? Number(o.cursor) : 0;
    if (!Number.isSafeInteger(at) || at < 0) throw invalid('cursor is not one this listing gave out: pass next_cursor back unchanged');
    const total = await this.o.redis.llen(redisKeys.rolloutTargets(id));
    const items: RolloutDevice[] = [];
    while (items.length < o.limit && at < total) {
      const ids = await this.o.redis.lrange(redisKeys.rolloutTargets(id), at, at + 499);
      const rows = await this.o.redis.hmget(redisKeys.rolloutDevices(id), ...ids);
      let n = 0;
      for (; n < ids.length && items.length < o.limit; n++) {
        const [state, wave, when, reason] = (rows[n] ?? '').split('|');
        if (o.state && state !== o.state) continue;
        items.push({ device_id: ids[n]!, state: state as DeviceState, wave: Number(wave), ...(reason ? { reason } : {}), at: Number(when) });
      }
      at += n;
    }
    return { items, next_cursor: at < total ? String(at) : null };
  }

  /** pause | resume | cancel: 409 (ROLLOUT_STATE_CONFLICT) when the rollout's state does not allow it. */
  async transition(id: string, action: 'pause' | 'resume' | 'cancel', actor: string, ip: string): Promise<RolloutView> {
    const rule = { pause: ['running', 'paused'], resume: ['paused', 'running'], cancel: ['running,paused', 'cancelled'] }[action];
    const r = await this.scripts.rolloutState(redisKeys.rollout(id), redisKeys.rolloutsActive, id, rule[0]!, rule[1]!, Date.now(), '');
    if (r === '') throw new FleetwireError('NOT_FOUND', `No rollout ${id}.`);
    if (r !== 'ok') throw new FleetwireError('ROLLOUT_STATE_CONFLICT', `cannot ${action} a rollout that is ${r}`);
    const type = ({ pause: 'rollout.paused', resume: 'rollout.resumed', cancel: 'rollout.cancelled' } as const)[action];
    if (action === 'cancel') this.outcomes.inc({ outcome: 'cancelled' });
    await this.o.audit.record({ type, actor, subject: `rollout:${id}`, ip });
    this.o.log.info({ rollout: id, actor }, `rollout ${action}`);
    await this.announce(id, rule[1]!, actor);
    if (action === 'resume') void this.tick();
    return (await this.get(id))!;
  }

  /**
   * Publishes a state change retained on fleet/rollouts/{id} (contracts: rollout.schema.json), so
   * services and dashboards hear of an abort without polling. A failed publish is logged: the
   * change itself is already in Redis, the audit log and the view.
   */
  private async announce(id: string, state: string, actor: string, reason?: string): Promise<void> {
    const change = { rollout: id, state, at: Date.now(), actor, ...(reason ? { reason } : {}) };
    await this.o.link.publish(topicFor('rollout', id), change, { qos: 1, retain: true })
      .catch((err: unknown) => this.o.log.error({ err, rollout: id, state }, 'publishing a rollout change failed'));
  }

  /** One OTA status (ota-events): moves the device's state in its rollout, once. */
  async onOtaEvent(deviceId: string, rollout: string, otaState: string, at: number, error?: string): Promise<'applied' | 'stale' | 'unknown'> {
    const state = FROM_OTA[otaState];
    if (!state) return 'stale';
    return this.move(rollout, deviceId, state, at, error ?? '', '0');
  }

  private move(id: string, deviceId: string, state: DeviceState, at: number, reason: string, deadline: string): Promise<'applied' | 'stale' | 'unknown'> {
    return this.scripts.rolloutDevice(
      redisKeys.rollout(id), redisKeys.rolloutDevices(id), redisKeys.rolloutDeadlines(id), deviceId, state, at, reason.slice(0, 300), deadline,
    );
  }

  /** Every TICK_MS on every node: steps the active rollouts whose lease this node holds or takes. */
  async tick(): Promise<void> {
    if (this.ticking || this.stopped) return;
    this.ticking = true;
    try {
      for (const id of await this.o.redis.zrange(redisKeys.rolloutsActive, 0, 99)) {
        if (this.stopped) break;
        if (!(await this.scripts.batchClaim(redisKeys.rolloutsActive, redisKeys.rollout(id), id, this.o.node, Date.now(), LEASE_MS))) {
          this.held.delete(id);
          continue;
        }
        this.held.add(id);
        try {
          await this.step(id);
        } catch (err) {
          this.o.log.warn({ err, rollout: id }, 'rollout step failed; retrying next tick');
        }
      }
    } finally {
      this.ticking = false;
    }
  }

  /** Drain: gives the held rollouts back so another node ticks them at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    while (this.ticking) await new Promise((r) => setTimeout(r, 20));
    for (const id of this.held) await this.scripts.batchRelease(redisKeys.rolloutsActive, redisKeys.rollout(id), id, this.o.node, '0');
  }

  private async step(id: string): Promise<void> {
    const key = redisKeys.rollout(id);
    const now = Date.now();
    let view = await this.get(id);
    if (!view || (view.state !== 'running' && view.state !== 'paused')) return;
    await this.confirmWindows(id, view, now);
    view = (await this.get(id))!;
    const finished = sum(view.counts, FINISHED);
    if (finished >= view.failure_threshold.min_sample && finished > 0 && view.failure_ratio > view.failure_threshold.ratio) {
      const reason = `failure ratio ${view.failure_ratio.toFixed(3)} over ${view.failure_threshold.ratio} after ${finished} finished devices`;
      if (await this.scripts.rolloutState(key, redisKeys.rolloutsActive, id, 'running,paused', 'aborted', now, reason) === 'ok') {
        this.outcomes.inc({ outcome: 'aborted' });
        this.o.log.warn({ rollout: id, failure_ratio: view.failure_ratio, finished }, 'rollout aborted: failure threshold crossed');
        await this.o.audit.record({ type: 'rollout.aborted', actor: 'system', subject: `rollout:${id}`, detail: { reason } });
        await this.announce(id, 'aborted', 'system', reason);
      }
      return;
    }
    if (view.state !== 'running') return;
    const h = await this.o.redis.hmget(key, 'current_wave', 'next_offer_at');
    let wave = Number(h[0]);
    const waveStart = wave >= 0 ? view.waves[wave]!.started_at! : 0;
    const inFlight = wave >= 0 ? sum(view.counts_by_wave[wave]!, IN_FLIGHT) : 0;
    const pendingIds = await this.o.redis.smembers(redisKeys.rolloutPending(id));
    const pendingOnline = (await Promise.all(pendingIds.map((d) => this.o.redis.hget(redisKeys.deviceState(d), 'online')))).filter((x) => x === '1').length;
    if (wave < view.waves.length - 1 && inFlight === 0 && pendingOnline === 0 && (wave < 0 || now >= waveStart + view.waves[wave]!.hold_s * 1000)) {
      // The wave before it has none in flight nor online waiting for an offer, and its hold has passed: start the next.
      wave += 1;
      const targets = await this.o.redis.lrange(redisKeys.rolloutTargets(id), waveOffset(view, wave), waveOffset(view, wave) + view.waves[wave]!.devices - 1);
      const rows = targets.length ? await this.o.redis.hmget(redisKeys.rolloutDevices(id), ...targets) : [];
      const ready = targets.filter((_t, i) => rows[i]?.startsWith('pending|'));
      const m = this.o.redis.multi().hset(key, 'current_wave', wave, `wave_started_${wave}`, now, 'updated_at', now);
      if (ready.length) m.sadd(redisKeys.rolloutPending(id), ...ready);
      await m.exec();
      this.o.log.info({ rollout: id, wave, devices: targets.length, offering: ready.length }, 'rollout wave started');
    } else if (wave === view.waves.length - 1 && pendingIds.length === 0 && sum(view.counts, [...FINISHED, 'skipped']) === sum(view.counts, DEVICE_STATES)) {
      if (await this.scripts.rolloutState(key, redisKeys.rolloutsActive, id, 'running', 'completed', now, '') === 'ok') {
        this.outcomes.inc({ outcome: 'completed' });
        this.o.log.info({ rollout: id, counts: view.counts }, 'rollout completed');
        await this.announce(id, 'completed', 'system');
      }
      return;
    }
    await this.offer(id, view, Number(h[1] ?? 0));
  }

  /** Offers the online pending devices, paced by rate_per_min and jitter_s. */
  private async offer(id: string, view: RolloutView, nextAt: number): Promise<void> {
    const key = redisKeys.rollout(id);
    if (Date.now() < nextAt) return;
    // Up to 1000 a tick (2,000 offers a second at most; rate_per_min is the real cap).
    const candidates = await this.o.redis.srandmember(redisKeys.rolloutPending(id), 1000);
    if (!candidates.length) return;
    const online = await Promise.all(candidates.map((d) => this.o.redis.hget(redisKeys.deviceState(d), 'online')));
    const image = await this.o.store.stat(view.firmware.sha256);
    if (!image) throw new Error(`firmware ${view.firmware.sha256} is no longer stored`);
    const spacing = 60_000 / view.rate_per_min;
    // Unused credit carries over one tick at most: no burst after an idle spell.
    let next = Math.max(nextAt, Date.now() - TICK_MS);
    const now = Date.now();
    // The devices this tick's pacing allows, offered at once: one after another, each offer's
    // four round trips (state, pending set, offer record, the broker's PUBACK) held the rate
    // at about 100 a second whatever rate_per_min said (bench/rollout.mjs).
    const due: string[] = [];
    for (const [i, deviceId] of candidates.entries()) {
      if (online[i] !== '1') continue;
      if (now < next || this.stopped) break;
      due.push(deviceId);
      next = next + spacing + Math.random() * view.jitter_s * 1000;
    }
    await Promise.all(due.map(async (deviceId) => {
      // The state first: a crash between the two leaves the device offered without a message
      // (it times out) rather than one offered twice and counted once.
      const r = await this.move(id, deviceId, 'offered', now, '', String(now + view.confirm_window_s * 1000));
      await this.o.redis.srem(redisKeys.rolloutPending(id), deviceId);
      if (r !== 'applied') return;
      await recordOffer(this.o.redis, deviceId, image.sha256, view.confirm_window_s + 3600);
      await this.o.link.publish(topicFor('ota', deviceId), { rollout: id, manifest: image.manifest }, { qos: 1 });
    }));
    await this.o.redis.hset(key, 'next_offer_at', Math.round(next));
  }

  /** Devices whose confirm window ended unfinished: succeeded, rolled_back or timed_out from their heartbeats. */
  private async confirmWindows(id: string, view: RolloutView, now: number): Promise<void> {
    const due = await this.o.redis.zrangebyscore(redisKeys.rolloutDeadlines(id), '-inf', now, 'WITHSCORES', 'LIMIT', 0, 500);
    for (let i = 0; i < due.length; i += 2) {
      const deviceId = due[i]!;
      const offeredAt = Number(due[i + 1]) - view.confirm_window_s * 1000;
      const [fw, lastSeen] = await this.o.redis.hmget(redisKeys.deviceState(deviceId), 'fw', 'last_seen');
      let state: DeviceState = 'timed_out';
      let reason = `no report within confirm_window_s (${view.confirm_window_s} s)`;
      if (fw === view.firmware.version) {
        state = 'succeeded';
        reason = '';
      } else if (lastSeen && Number(lastSeen) > offeredAt) {
        state = 'rolled_back';
        reason = `came back on ${fw ?? 'an unknown version'} after the confirm window`;
      }
      await this.move(id, deviceId, state, now, reason, '0');
      await this.o.redis.zrem(redisKeys.rolloutDeadlines(id), deviceId);
    }
  }

  private async resolve(kind: SelectorKind, selector: DeviceSelector): Promise<string[]> {
    if (kind === 'ids') {
      const ids = selector.ids!;
      const statuses = await Promise.all(ids.map((id) => this.o.redis.hget(redisKeys.device(id), 'status')));
      const refused = ids.filter((_id, i) => statuses[i] !== 'active');
      if (refused.length) throw invalid(`selector.ids names devices that are not registered or are revoked: ${refused.slice(0, 10).join(', ')}`);
      return [...ids];
    }
    const ids: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await findDeviceIds(this.o.redis, { status: 'active', [kind]: selector[kind] }, { limit: 1000, ...(cursor ? { cursor } : {}) });
      ids.push(...page.ids);
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    if (!ids.length) throw invalid(`selector.${kind} matches no active device`);
    return ids;
  }
}

function waveOffset(view: RolloutView, wave: number): number {
  return view.waves.slice(0, wave).reduce((n, w) => n + w.devices, 0);
}

