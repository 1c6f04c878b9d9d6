/**
 * The Redis side of authenticating a CONNECT in one round trip and one
 * command: is the token revoked (by jti, or by a revocation of all older
 * tokens of its user or device), what is the device's status, is the client
 * serving a flood penalty. Separate commands cost measurably more per connect
 * (encoding, parsing, promises) at thousands of connects a second.
 */
import { issuedBefore, redisKeys, type DeviceStatus, type FleetwireClaims, type Redis } from '@fleetwire/common';

const CHECKS = `
local device = redis.call('HMGET', KEYS[2], 'status', 'tokens_before')
return { redis.call('EXISTS', KEYS[1]), device[1] or '', redis.call('EXISTS', KEYS[3]), redis.call('GET', KEYS[4]) or device[2] or '' }`;

export interface ConnectChecks {
  revoked: boolean;
  /** The device record's status; null for a missing record, an unreadable one, or a non-device. */
  deviceStatus: DeviceStatus | null;
  penalized: boolean;
}

type ChecksRedis = Redis & { fwConnectChecks(jti: string, device: string, penalty: string, userBefore: string): Promise<[number, string, number, string]> };

export function createConnectChecks(redis: Redis): (claims: FleetwireClaims, clientId: string) => Promise<ConnectChecks> {
  redis.defineCommand('fwConnectChecks', { numberOfKeys: 4, lua: CHECKS });
  const r = redis as ChecksRedis;
  return async (claims, clientId) => {
    // Keys that do not apply are ones that never exist, so the script stays one shape.
    const deviceId = claims.typ === 'device' ? claims.sub : null;
    const [revokedJti, status, penalized, tokensBefore] = await r.fwConnectChecks(
      redisKeys.revokedJti(claims.jti), redisKeys.device(deviceId ?? '-'), redisKeys.floodPenalty(clientId),
      redisKeys.userTokensBefore(claims.typ === 'user' ? claims.sub : '-'),
    );
    const deviceStatus = deviceId && (status === 'active' || status === 'revoked') ? status : null;
    const revoked = revokedJti === 1 || issuedBefore(claims.iat, tokensBefore || null);
    return { revoked, deviceStatus, penalized: penalized === 1 };
  };
}
