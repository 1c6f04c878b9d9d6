/**
 * Signing and verifying Fleetwire JWTs (contracts/jwt.json): EdDSA only,
 * `kid` in the header, iss/aud/typ/exp/iat/jti required. Verification errors
 * map to stable codes whose CONNACK is 4 (missing/malformed) or 5 (refused).
 */
import {
  SignJWT, jwtVerify, createLocalJWKSet, createRemoteJWKSet, errors as joseErrors,
  type CryptoKey, type JWK, type JWTVerifyGetKey,
} from 'jose';
import { randomUUID } from 'node:crypto';
import { FleetwireError } from './errors.js';
import { jwtContract, type FleetwireClaims, type TokenType, type UserRole } from './contracts.js';

/** A private key that signs tokens, named by its `kid`; keys.ts loads these from disk. */
export interface SigningKey {
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly createdAt: number;
}

export interface TokenRequest {
  sub: string;
  typ: TokenType;
  ttlSeconds: number;
  role?: UserRole;
  /** Extra claims, e.g. a service's name. */
  extra?: Record<string, string | number | boolean>;
}

export async function signToken(signer: SigningKey, req: TokenRequest): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT({ ...req.extra, typ: req.typ, ...(req.role ? { role: req.role } : {}) })
    .setProtectedHeader({ alg: 'EdDSA', kid: signer.kid, typ: 'JWT' })
    .setIssuer(jwtContract.iss)
    .setAudience(jwtContract.aud)
    .setSubject(req.sub)
    .setIssuedAt(now)
    .setExpirationTime(now + req.ttlSeconds)
    .setJti(randomUUID());
  return jwt.sign(signer.privateKey);
}

export interface VerifierOptions {
  /** Public JWKs to trust (local mode). */
  keys?: readonly JWK[];
  /** A JWKS endpoint, cached, refetched when an unknown kid appears (rotation). */
  jwksUrl?: string;
  /** How long a fetched JWKS stays fresh. @defaultValue 600000 */
  jwksCacheMs?: number;
  /** Minimum time between two fetches, even for an unknown kid. @defaultValue 30000 */
  jwksCooldownMs?: number;
  /**
   * How many verified tokens to remember, so a reconnect storm of devices
   * presenting the same token does not pay an Ed25519 verification each time.
   * Entries live at most `verifiedCacheMs` and never past the token's exp.
   * @defaultValue 10000
   */
  verifiedCacheSize?: number;
  /** @defaultValue 300000 */
  verifiedCacheMs?: number;
}

export interface TokenVerifier {
  verify(token: string): Promise<FleetwireClaims>;
  /** Replaces the trusted local keys, e.g. after a rotation on disk. */
  setKeys(keys: readonly JWK[]): void;
}

const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

export function createTokenVerifier(opts: VerifierOptions): TokenVerifier {
  let keySet: JWTVerifyGetKey;
  const cache = new VerifiedTokenCache(opts.verifiedCacheSize ?? 10_000, opts.verifiedCacheMs ?? 300_000);
  const setKeys = (keys: readonly JWK[]): void => {
    keySet = createLocalJWKSet({ keys: [...keys] });
    cache.clear(); // a removed key must stop verifying at once
  };
  if (opts.jwksUrl) {
    keySet = createRemoteJWKSet(new URL(opts.jwksUrl), { cacheMaxAge: opts.jwksCacheMs ?? 600_000, cooldownDuration: opts.jwksCooldownMs ?? 30_000 });
  } else if (opts.keys) {
    setKeys(opts.keys);
  } else {
    throw new Error('createTokenVerifier needs keys or jwksUrl');
  }

  async function verify(token: string): Promise<FleetwireClaims> {
    if (!token) throw new FleetwireError('AUTH_TOKEN_MISSING');
    if (token.length > 8192 || !COMPACT_JWS.test(token)) throw new FleetwireError('AUTH_TOKEN_MALFORMED');
    const cached = cache.get(token);
    if (cached) return cached;
    let payload: Record<string, unknown>;
    try {
      ({ payload } = await jwtVerify(token, keySet, {
        issuer: jwtContract.iss,
        audience: jwtContract.aud,
        algorithms: jwtContract.alg,
        clockTolerance: jwtContract.clock_tolerance_s,
        requiredClaims: jwtContract.required_claims,
      }));
    } catch (err) {
      throw mapJoseError(err);
    }
    const typ = payload.typ;
    if (typeof typ !== 'string' || !jwtContract.types.includes(typ)) {
      throw new FleetwireError('AUTH_TOKEN_INVALID', 'token typ must be device, user or service');
    }
    if (typ === 'user' && (typeof payload.role !== 'string' || !jwtContract.user_roles.includes(payload.role))) {
      throw new FleetwireError('AUTH_TOKEN_INVALID', 'user token without a known role');
    }
    if (typeof payload.sub !== 'string' || payload.sub.length === 0 || typeof payload.jti !== 'string') {
      throw new FleetwireError('AUTH_TOKEN_INVALID', 'token sub and jti must be strings');
    }
    // Revocation compares these; a token we signed always has them in this shape.
    if (payload.gen !== undefined && !(Number.isSafeInteger(payload.gen) && (payload.gen as number) >= 0)) {
      throw new FleetwireError('AUTH_TOKEN_INVALID', 'token gen must be a whole number');
    }
    if (payload.sid !== undefined && (typeof payload.sid !== 'string' || payload.sid.length === 0)) {
      throw new FleetwireError('AUTH_TOKEN_INVALID', 'token sid must be a string');
    }
    const claims = payload as unknown as FleetwireClaims;
    cache.set(token, claims);
    return claims;
  }

  return { verify, setKeys };
}

/**
 * Tokens already verified, keyed by the whole compact token (so a token that
 * differs in any byte is verified afresh), in insertion order for eviction.
 */
class VerifiedTokenCache {
  private readonly entries = new Map<string, { claims: FleetwireClaims; until: number }>();

  constructor(private readonly size: number, private readonly maxAgeMs: number) {}

  get(token: string): FleetwireClaims | null {
    const e = this.entries.get(token);
    if (!e) return null;
    const nowS = Date.now() / 1000;
    if (Date.now() > e.until || nowS >= e.claims.exp + jwtContract.clock_tolerance_s || (e.claims.nbf ?? 0) > nowS + jwtContract.clock_tolerance_s) {
      this.entries.delete(token);
      return null;
    }
    return e.claims;
  }

  set(token: string, claims: FleetwireClaims): void {
    if (this.size <= 0) return;
    if (this.entries.size >= this.size) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(token, { claims, until: Date.now() + this.maxAgeMs });
  }

  clear(): void {
    this.entries.clear();
  }
}

function mapJoseError(err: unknown): FleetwireError {
  if (err instanceof joseErrors.JWTExpired) return new FleetwireError('AUTH_TOKEN_EXPIRED', undefined, { cause: err });
  if (err instanceof joseErrors.JWSInvalid || err instanceof joseErrors.JWTInvalid) {
    return new FleetwireError('AUTH_TOKEN_MALFORMED', undefined, { cause: err });
  }
  if (err instanceof joseErrors.JOSEError) {
    return new FleetwireError('AUTH_TOKEN_INVALID', `token refused: ${err.code}`, { cause: err });
  }
  return new FleetwireError('AUTH_TOKEN_INVALID', undefined, { cause: err });
}

/** The token offered as `auth.<jwt>` in a Sec-WebSocket-Protocol header, or null. */
export function tokenFromSubprotocols(header: string | undefined): string | null {
  if (!header) return null;
  const prefix = jwtContract.token_subprotocol_prefix;
  for (const part of header.split(',')) {
    const p = part.trim();
    if (p.startsWith(prefix)) return p.slice(prefix.length);
  }
  return null;
}
