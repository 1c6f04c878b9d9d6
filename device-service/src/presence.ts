/**
 * Presence: whether a device is connected, from the broker's retained `fleet/presence/{id}`
 * events ({online, seq, node, at}). The broker numbers each device's connects and
 * disconnects with one counter in Redis shared by every node (broker/src/registry.ts), so
 * an event is applied only when its seq is newer than the last one applied: a disconnect
 * that a slow node reports after the device reconnected elsewhere, and the retained events
 * the broker sends again on every resubscribe, change nothing.
 *
 * Writes the state fields online, presence_seq, presence_at, presence_node and the online
 * index (redisKeys.deviceIndexOnline, scored by registration time for the listing).
 */
import { Counter, describeValidationError, isDeviceId, LogThrottle, payloadValidator, redisKeys } from '@fleetwire/common';
import type { DeviceServiceContext, Part } from './context.js';
import { deviceScripts } from './redis-scripts.js';

const TOPIC_PREFIX = 'fleet/presence/';
const OUTCOMES = ['unknown_device', 'stale', 'applied', 'invalid'] as const;
type PresenceOutcome = (typeof OUTCOMES)[number];

interface PresenceScripts {
  /** lua/apply-presence.lua: 0 unknown device, 1 stale, 2 applied. */
  applyPresence(device: string, state: string, online: string, id: string, isOnline: string, seq: number, at: number, node: string): Promise<0 | 1 | 2>;
}

interface PresenceEvent { online: boolean; seq: number; node: string; at: number }

export function presencePart(ctx: DeviceServiceContext): Part {
  const log = ctx.log.child({ part: 'presence' });
  const scripts = deviceScripts<PresenceScripts>(ctx.redis);
  const validate = payloadValidator('presence');
  const events = new Counter({
    name: 'fleetwire_device_presence_events_total', help: 'presence events from the broker, by what became of them',
    labelNames: ['outcome'], registers: [ctx.metricsRegistry],
  });
  for (const outcome of OUTCOMES) events.inc({ outcome }, 0);
  const throttle = new LogThrottle(10_000);
  const inFlight = new Set<Promise<void>>();

  function refuse(outcome: PresenceOutcome, topic: string, why: string): void {
    events.inc({ outcome });
    const suppressed = throttle.take(outcome);
    if (suppressed !== null) log.warn({ topic, suppressed }, why);
  }

  async function apply(topic: string, payload: Buffer): Promise<void> {
    const id = topic.slice(TOPIC_PREFIX.length);
    if (!isDeviceId(id)) return refuse('invalid', topic, 'presence event for a topic that names no device dropped');
    let event: PresenceEvent;
    try {
      event = JSON.parse(payload.toString('utf8')) as PresenceEvent;
    } catch {
      return refuse('invalid', topic, 'presence event that is not JSON dropped');
    }
    if (!validate(event)) return refuse('invalid', topic, `presence event dropped: ${describeValidationError(validate)}`);
    const code = await scripts.applyPresence(
      redisKeys.device(id), redisKeys.deviceState(id), redisKeys.deviceIndexOnline,
      id, event.online ? '1' : '0', event.seq, event.at, event.node,
    );
    if (code === 0) return refuse('unknown_device', topic, 'presence event of an unregistered device dropped');
    events.inc({ outcome: code === 2 ? 'applied' : 'stale' });
  }

  function onMessage(topic: string, payload: Buffer): void {
    const done = apply(topic, payload).catch((err: unknown) => {
      // Redis unreachable past ioredis' retries: this event is lost here. The device's next
      // presence change corrects it, and so does the retained event the broker sends again
      // when the link resubscribes.
      log.error({ err, topic }, 'applying a presence event failed');
    });
    inFlight.add(done);
    void done.finally(() => inFlight.delete(done));
  }

  return {
    async start() {
      await ctx.link.subscribe(`${TOPIC_PREFIX}+`, onMessage);
    },
    async drain() {
      await Promise.all(inFlight);
    },
  };
}
