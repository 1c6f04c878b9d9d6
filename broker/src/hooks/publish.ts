/**
 * authorizePublish: the topic ACL (a refused publish closes the connection with the
 * reason), then the ingress policy (ingress.ts) for what the message becomes.
 */
import type { Aedes } from 'aedes';
import type { Logger } from '@fleetwire/common';
import { authorizePublishTopic } from '../acl.js';
import { setCloseIntent, stateOf } from '../conn-state.js';
import type { IngressPolicy } from '../ingress.js';
import type { BrokerMetrics } from '../metrics.js';

export interface PublishDeps {
  ingress: IngressPolicy;
  metrics: BrokerMetrics;
  log: Logger;
}

export function publishHook(d: PublishDeps): Aedes['authorizePublish'] {
  const { ingress, metrics, log } = d;
  return (client, packet, done) => {
    if (!client) return done(null); // a will from a dead node: checked at that client's CONNECT
    const state = stateOf(client);
    const claims = state?.claims;
    if (!state || !claims) return done(new Error('not authenticated'));
    const verdict = authorizePublishTopic(claims, packet.topic);
    if (!verdict.ok) {
      metrics.aclDenied.inc({ action: 'publish' });
      log.warn({ client_id: client.id, topic: packet.topic }, `publish refused: ${verdict.why}`);
      state.closeReason = 'acl-denied';
      setCloseIntent(state, 'acl-denied', verdict.why);
      return done(new Error(verdict.why));
    }
    metrics.in(verdict.entry.class, packet.payload.length);
    ingress.accept(client, state, packet, verdict.entry, verdict.deviceId, done);
  };
}
