/**
 * BROKER_CLUSTER=redis: broker nodes share fan-out (mqemitter-redis) and
 * sessions and retained messages (aedes-persistence-redis) through Redis.
 * mqemitter-redis opens its own plain connections (a subscriber connection
 * must not auto-pipeline, as ours do).
 */
import MQEmitterRedis from 'mqemitter-redis';
import aedesPersistenceRedis from 'aedes-persistence-redis';
import type { AedesOptions } from 'aedes';
import { createRedis, type Redis } from '@fleetwire/common';

export interface ClusterEngines {
  mq: NonNullable<AedesOptions['mq']>;
  persistence: NonNullable<AedesOptions['persistence']>;
  /** Ends the persistence connection; Aedes' close() ends the fan-out ones. */
  close(): Promise<void>;
}

export function clusterEngines(redisUrl: string, nodeId: string): ClusterEngines {
  const conn = createRedis(redisUrl, { name: `broker-persistence:${nodeId}` });
  const mq = MQEmitterRedis({ connectionString: redisUrl }) as unknown as { subConn: Redis; pubConn: Redis };
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
