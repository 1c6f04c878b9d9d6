/**
 * What the broker does when Aedes reports on a client: registry and presence when it is
 * ready or gone, why it ended when it errored, and a takeover by a node elsewhere.
 */
import type { Aedes, Client } from 'aedes';
import type { Logger } from '@fleetwire/common';
import { classifyClientError } from './client-errors.js';
import { setCloseIntent, stateOf, type DisconnectReason } from './conn-state.js';
import type { Connections } from './connections.js';
import type { BrokerMetrics } from './metrics.js';

export interface ClientEventDeps { aedes: Aedes; connections: Connections; metrics: BrokerMetrics; log: Logger; nodeId: string }

/** Call before aedes.listen(): the takeover listener must run before Aedes' own. */
export function watchClients({ aedes, connections, metrics, log, nodeId }: ClientEventDeps): void {
  // Runs before Aedes' own handler closes the local client, so a client taken over by a
  // connection on another node learns why.
  aedes.mq.on('$SYS/+/new/clients', (packet, done) => {
    const serverId = packet.topic.split('/')[1];
    const state = serverId !== nodeId ? connections.byClientId.get(packet.payload.toString()) : undefined;
    if (state) {
      state.closeReason = 'taken-over';
      setCloseIntent(state, 'taken-over');
    }
    done();
  });
  aedes.on('clientReady', (client: Client) => void connections.ready(client));
  aedes.on('clientDisconnect', (client: Client) => void connections.gone(client));
  aedes.on('clientError', (client: Client, err: Error) => noteClientError(client, err));
  aedes.on('connectionError', (client: Client, err: Error) => {
    metrics.disconnects.inc({ reason: noteClientError(client, err) });
  });
  (aedes as unknown as NodeJS.EventEmitter).on('error', (err: unknown) => log.error({ err }, 'broker error'));

  /** Records why Aedes ended a connection with an error; a deliberate close that came first keeps its own reason. */
  function noteClientError(client: Client, err: Error): DisconnectReason {
    const state = stateOf(client);
    if (state?.closeReason) return state.closeReason;
    const verdict = classifyClientError(err, client);
    const fields = { client_id: client.id, ip: state?.ip, err: err.message };
    if (verdict.malformed) {
      metrics.malformed.inc({ kind: verdict.malformed });
      log.warn(fields, `closing connection: ${verdict.text}`);
    } else if (verdict.reason === 'client-error') {
      log.warn(fields, 'connection ended by an unexpected error');
    } else {
      log.info(fields, `connection ended: ${verdict.reason}`);
    }
    if (state) state.closeReason = verdict.reason;
    return verdict.reason;
  }
}
