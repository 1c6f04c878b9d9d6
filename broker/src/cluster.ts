/**
 * BROKER_CLUSTER=redis: broker nodes share fan-out (mqemitter-redis) and
 * sessions and retained messages (aedes-persistence-redis) through Redis.
 * mqemitter-redis opens its own plain connections (a subscriber connection
 * must not auto-pipeline, as ours do).
 */
import MQEmitterRedis from 'mqemitter-redis';
import aedesPersistenceRedis from 'aedes-persistence-redis';
import type { EventEmitter } from 'node:events';
import type { AedesOptions } from 'aedes';
import { createRedis, type Redis } from '@fleetwire/common';

export interface ClusterEngines {
  mq: NonNullable<AedesOptions['mq']>;
  persistence: NonNullable<AedesOptions['persistence']>;
  /** Ends the persistence connection; Aedes' close() ends the fan-out ones. */
  close(): Promise<void>;
}

/** `onError` hears the errors of every connection these engines open (they reconnect by themselves). */
export function clusterEngines(redisUrl: string, nodeId: string, onError: (err: Error) => void): ClusterEngines {
  const conn = createRedis(redisUrl, { name: `broker-persistence:${nodeId}` });
  conn.on('error', onError);
  const mq = MQEmitterRedis({ connectionString: redisUrl }) as unknown as { subConn: Redis; pubConn: Redis; state: EventEmitter };
  // mqemitter-redis re-emits its connections' errors on `state`; with no listener there, the
  // first one (Redis restarting, or ioredis' ready check racing a SUBSCRIBE, redis/ioredis#2037)
  // was thrown and killed the broker process.
  mq.state.on('error', onError);
  quitQuietly(mq.subConn);
  quitQuietly(mq.pubConn);
  return {
    mq: mq as unknown as ClusterEngines['mq'],
    persistence: aedesPersistenceRedis({ conn }),
    close: () => conn.quit().then(() => undefined, () => conn.disconnect()),
  };
}

/**
 * mqemitter-redis ends its connections with quit() and drops the promise; a
 * quit that races the socket's close rejects, unhandled, and would crash the
 * process during shutdown.
 */
function quitQuietly(conn: Redis): void {
  const quit = conn.quit.bind(conn);
  conn.quit = (() => quit().catch(() => 'OK' as const)) as Redis['quit'];
}
