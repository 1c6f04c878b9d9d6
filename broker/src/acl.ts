/**
 * Topic ACL, derived from the topic map in common/contracts.
 * - device: publishes only its own device-to-cloud topics, subscribes only under devices/<own id>/.
 * - service: publishes cloud-to-device topics of any device and service-to-services ones (fleet/alerts);
 *   subscribes under devices/ and fleet/.
 * - user: subscribes under devices/ and fleet/; admin and operator may also publish commands.
 * Nobody publishes presence (the broker does) or touches $-topics [MQTT-4.7.2-1].
 */
import { parseDeviceTopic, type FleetwireClaims, type TopicEntry } from '@fleetwire/common';

type AclClaims = Pick<FleetwireClaims, 'sub' | 'typ' | 'role'>;

/** Allowed: the topic's class in the topic map and the device in the topic. Where the message goes next is ingress.ts's call. */
export type AclVerdict = { ok: true; entry: TopicEntry; deviceId: string } | { ok: false; why: string };

export function authorizePublishTopic(claims: AclClaims, topic: string): AclVerdict {
  if (topic.startsWith('$')) return { ok: false, why: '$-topics are reserved' };
  const parsed = parseDeviceTopic(topic);
  if (!parsed) return { ok: false, why: `${topic} is not a Fleetwire topic` };
  const { deviceId, entry } = parsed;
  const allowed =
    claims.typ === 'device' ? entry.direction === 'device-to-cloud' && deviceId === claims.sub
      : claims.typ === 'service' ? entry.direction === 'cloud-to-device' || entry.direction === 'service-to-services'
        : (claims.role === 'admin' || claims.role === 'operator') && entry.class === 'cmd';
  if (!allowed) return { ok: false, why: `${claims.typ} ${claims.sub} may not publish to ${topic}` };
  return { ok: true, entry, deviceId };
}

export function authorizeSubscribeFilter(claims: AclClaims, filter: string): boolean {
  if (filter.startsWith('$') || filter.length === 0) return false;
  if (claims.typ === 'device') return filter.startsWith(`devices/${claims.sub}/`);
  return filter.startsWith('devices/') || filter.startsWith('fleet/');
}
