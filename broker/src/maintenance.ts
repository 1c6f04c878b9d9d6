/**
 * The broker's periodic work: token and keepalive deadlines, last-activity flushes, this
 * node's liveness key, and sweeping the registry entries of nodes that died.
 */
import type { Logger } from '@fleetwire/common';
import type { BrokerConfig } from './config.js';
import type { Connections } from './connections.js';
import type { ConnectionRegistry } from './registry.js';

export interface MaintenanceDeps {
  config: Pick<BrokerConfig, 'registryFlushMs' | 'nodeTtlS'>;
  connections: Connections;
  registry: ConnectionRegistry;
  log: Logger;
}

/** Starts the timers; the returned function stops them. */
export function startMaintenance({ config, connections, registry, log }: MaintenanceDeps): () => void {
  const heartbeat = (): void => {
    registry.heartbeatNode(config.nodeTtlS).catch((err: unknown) => log.warn({ err }, 'node heartbeat failed'));
  };
  const sweep = (): void => {
    registry.sweepDeadNodes().then(
      (offline) => {
        for (const o of offline) connections.publishPresence(o.deviceId, { online: false, seq: o.seq, node: o.node, at: Date.now(), reason: 'node-lost' });
        if (offline.length) log.warn({ count: offline.length }, 'swept connections of a dead node');
      },
      (err: unknown) => log.warn({ err }, 'dead-node sweep failed'),
    );
  };
  heartbeat();
  sweep();
  const timers = [
    setInterval(() => connections.tick(), 250),
    setInterval(() => {
      registry.flushActivity(connections.byClientId).catch((err: unknown) => log.warn({ err }, 'registry activity flush failed'));
    }, config.registryFlushMs),
    setInterval(heartbeat, Math.max(1000, (config.nodeTtlS * 1000) / 3)),
    setInterval(sweep, config.nodeTtlS * 1000),
  ];
  for (const t of timers) t.unref();
  return () => {
    for (const t of timers) clearInterval(t);
  };
}
