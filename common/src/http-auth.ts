/** Bearer-token checks for the HTTP API: the same verifier and claims as the broker. */
import type { FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { FleetwireError } from './errors.js';
import { isTokenRevoked } from './revocation.js';
import type { FleetwireClaims, UserRole } from './contracts.js';
import type { TokenVerifier } from './jwt.js';

export type Guard = (req: FastifyRequest) => Promise<void>;

declare module 'fastify' {
  interface FastifyRequest { caller?: FleetwireClaims }
}

export interface RoleOptions {
  /** Whether service tokens pass too (backends managing devices); never for admin-only routes. @defaultValue true */
  services?: boolean;
}

/** Verifies the Bearer token (signature, claims, revocation) and sets req.caller. */
export async function authenticateRequest(verifier: TokenVerifier, redis: Redis, req: FastifyRequest): Promise<FleetwireClaims> {
  const header = req.headers.authorization ?? '';
  const token = header.startsWith('Bearer ') ? header.slice(7).trim() : '';
  const claims = await verifier.verify(token);
  if (await isTokenRevoked(redis, claims)) throw new FleetwireError('AUTH_TOKEN_REVOKED');
  req.caller = claims;
  return claims;
}

/** Allows users with one of `roles`, and service tokens unless `services` is false. */
export function requireRole(verifier: TokenVerifier, redis: Redis, roles: readonly UserRole[], opts: RoleOptions = {}): Guard {
  const services = opts.services ?? true;
  return async (req) => {
    const claims = await authenticateRequest(verifier, redis, req);
    const allowed = (services && claims.typ === 'service') ||
      (claims.typ === 'user' && claims.role !== undefined && roles.includes(claims.role));
    if (!allowed) throw new FleetwireError('AUTH_FORBIDDEN', `this route needs one of the roles ${roles.join(', ')}`);
  };
}
