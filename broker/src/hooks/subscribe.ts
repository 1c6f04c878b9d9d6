/** authorizeSubscribe: grants or refuses each filter of a SUBSCRIBE by the topic ACL. */
import type { Aedes } from 'aedes';
import type { Logger } from '@fleetwire/common';
import { authorizeSubscribeFilter } from '../acl.js';
import { stateOf } from '../conn-state.js';
import type { BrokerMetrics } from '../metrics.js';

export interface SubscribeDeps {
  metrics: BrokerMetrics;
  log: Logger;
}

export function subscribeHook(d: SubscribeDeps): Aedes['authorizeSubscribe'] {
  return (client, sub, done) => {
    const claims = stateOf(client)?.claims;
    if (claims && authorizeSubscribeFilter(claims, sub.topic)) return done(null, sub);
    d.metrics.aclDenied.inc({ action: 'subscribe' });
    d.log.info({ client_id: client.id, filter: sub.topic }, 'subscription refused');
    done(null, null); // SUBACK 0x80 for this filter [MQTT-3.9.3]
  };
}
