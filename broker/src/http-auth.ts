/** Bearer-token checks for the HTTP API: the same verifier and claims as the broker. */
import type { FastifyRequest } from 'fastify';
import { FleetwireError, isTokenRevoked, type FleetwireClaims, type Redis, type TokenVerifier, type UserRole } from '@fleetwire/common';

export type Guard = (req: FastifyRequest) => Promise<void>;

declare module 'fastify' {
  interface FastifyRequest { caller?: FleetwireClaims }
}

/** Allows users with one of `roles`, and service tokens. */
export function requireRole(verifier: TokenVerifier, redis: Redis, roles: readonly UserRole[]): Guard {
  return async (req) => {
    const header = req.headers.authorization ?? '';
    const token = header.startsWith('Bearer ') ? header.slice(7).trim() : '';
    const claims = await verifier.verify(token);
    if (await isTokenRevoked(redis, claims.jti)) throw new FleetwireError('AUTH_TOKEN_REVOKED');
    const allowed = claims.typ === 'service' || (claims.typ === 'user' && claims.role !== undefined && roles.includes(claims.role));
    if (!allowed) throw new FleetwireError('AUTH_FORBIDDEN', `this route needs one of the roles ${roles.join(', ')}`);
    req.caller = claims;
  };
}
