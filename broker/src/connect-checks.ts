/**
 * The Redis side of authenticating a CONNECT in one round trip and one
 * command: is the token revoked, what is the device's status, is the client
 * serving a flood penalty. Three separate commands cost measurably more per
 * connect (encoding, parsing, promises) at thousands of connects a second.
 */
import { redisKeys, type DeviceStatus, type Redis } from '@fleetwire/common';

const CHECKS = `
return { redis.call('EXISTS', KEYS[1]), redis.call('HGET', KEYS[2], 'status') or '', redis.call('EXISTS', KEYS[3]) }`;

export interface ConnectChecks {
  revoked: boolean;
  /** The device record's status; null for a missing record, an unreadable one, or a non-device. */
  deviceStatus: DeviceStatus | null;
  penalized: boolean;
}

type ChecksRedis = Redis & { fwConnectChecks(jti: string, device: string, penalty: string): Promise<[number, string, number]> };

export function createConnectChecks(redis: Redis): (jti: string, deviceId: string | null, clientId: string) => Promise<ConnectChecks> {
  redis.defineCommand('fwConnectChecks', { numberOfKeys: 3, lua: CHECKS });
  const r = redis as ChecksRedis;
  return async (jti, deviceId, clientId) => {
    // A non-device gets a key that never exists, so the script stays one shape.
    const [revoked, status, penalized] = await r.fwConnectChecks(
      redisKeys.revokedJti(jti), deviceId ? redisKeys.device(deviceId) : redisKeys.device('-'), redisKeys.floodPenalty(clientId),
    );
    const deviceStatus = deviceId && (status === 'active' || status === 'revoked') ? status : null;
    return { revoked: revoked === 1, deviceStatus, penalized: penalized === 1 };
  };
}
