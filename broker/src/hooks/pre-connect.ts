/** preConnect: refuses a keepalive outside the configured bounds before any authentication work. */
import type { Aedes } from 'aedes';
import type { Logger } from '@fleetwire/common';
import { setCloseIntent, stateOf } from '../conn-state.js';
import type { BrokerMetrics } from '../metrics.js';

export interface PreConnectDeps {
  metrics: BrokerMetrics;
  log: Logger;
  limits: { keepaliveMinS: number; keepaliveMaxS: number };
}

export function preConnectHook(d: PreConnectDeps): Aedes['preConnect'] {
  return (client, packet, done) => {
    const state = stateOf(client);
    const ka = packet.keepalive ?? 0;
    if (state && (ka < d.limits.keepaliveMinS || ka > d.limits.keepaliveMaxS)) {
      const why = `keepalive must be between ${d.limits.keepaliveMinS} and ${d.limits.keepaliveMaxS} s, got ${ka}`;
      d.log.info({ ip: state.ip, client_id: packet.clientId }, why);
      state.closeReason = 'keepalive-out-of-bounds';
      d.metrics.malformed.inc({ kind: 'keepalive' });
      setCloseIntent(state, 'malformed', why);
      return done(new Error(why), false);
    }
    done(null, true);
  };
}
