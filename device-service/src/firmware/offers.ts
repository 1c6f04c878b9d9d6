/** Which images a device may download: those it was offered (the rollout engine records each offer). */
import { redisKeys, type Redis } from '@fleetwire/common';

/**
 * Lets `deviceId` download the image `sha256` for `ttlS` seconds after its newest offer
 * (every offer renews the whole set's TTL). Call it before publishing the offer.
 */
export async function recordOffer(redis: Redis, deviceId: string, sha256: string, ttlS: number): Promise<void> {
  const key = redisKeys.otaOffered(deviceId);
  await redis.multi().sadd(key, sha256).expire(key, Math.max(1, Math.ceil(ttlS))).exec();
}

export async function wasOffered(redis: Redis, deviceId: string, sha256: string): Promise<boolean> {
  return (await redis.sismember(redisKeys.otaOffered(deviceId), sha256)) === 1;
}
