/** ioredis connections. Never use keyPrefix: BullMQ and the Python worker must see the same keys. */
import { Redis, type RedisOptions } from 'ioredis';

export type { Redis };

export interface RedisConnectOptions {
  /** Shown in CLIENT LIST, helps when debugging who holds a connection. */
  name: string;
  /** BullMQ workers and blocking commands need this set to null. */
  maxRetriesPerRequest?: number | null;
}

export function createRedis(redisUrl: string, opts: RedisConnectOptions): Redis {
  const options: RedisOptions = {
    connectionName: `fleetwire:${opts.name}`,
    maxRetriesPerRequest: opts.maxRetriesPerRequest === undefined ? 3 : opts.maxRetriesPerRequest,
    enableAutoPipelining: true,
    // Reconnect forever with a capped delay: Redis restarts must not kill the process.
    retryStrategy: (attempt) => Math.min(attempt * 200, 2000),
  };
  return new Redis(redisUrl, options);
}

/** Waits until the connection is ready or fails with a message that says what to do. */
export async function waitForRedis(redis: Redis, redisUrl: string, timeoutMs = 5000): Promise<void> {
  if (redis.status === 'ready') return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`Redis at ${redactRedisUrl(redisUrl)} is not reachable after ${timeoutMs} ms: start redis-server or set REDIS_URL`));
    }, timeoutMs);
    const onReady = (): void => { cleanup(); resolve(); };
    const cleanup = (): void => { clearTimeout(timer); redis.off('ready', onReady); };
    redis.on('ready', onReady);
  });
}

/** A Redis URL safe to log: the password is replaced. */
export function redactRedisUrl(redisUrl: string): string {
  try {
    const u = new URL(redisUrl);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '[unparseable REDIS_URL]';
  }
}
