/**
 * authenticate: the JWT from the WebSocket subprotocol list or, on the loopback TCP
 * listener, a service JWT as the password; then the revocation rule, the device's
 * status, the client's flood penalty, client-id ownership and the will topic's ACL.
 * CONNACK 4 for a missing or malformed token, 5 when refused, 3 when Redis cannot answer.
 */
import type { Aedes, AuthenticateError, Client } from 'aedes';
import {
  FleetwireError, isDeviceId, redisKeys, tokenFromSubprotocols, tokenState,
  type FleetwireClaims, type Logger, type Redis, type TokenVerifier,
} from '@fleetwire/common';
import { authorizePublishTopic } from '../acl.js';
import { connClaims, setCloseIntent, stateOf, type ConnState } from '../conn-state.js';
import type { ConnectGate } from '../connect-gate.js';
import type { Connections } from '../connections.js';
import type { BrokerMetrics } from '../metrics.js';
import { WebSocketDuplex } from '../ws-stream.js';

export interface AuthenticateDeps {
  aedes: Aedes;
  redis: Redis;
  verifier: TokenVerifier;
  gate: ConnectGate;
  connections: Connections;
  metrics: BrokerMetrics;
  log: Logger;
  limits: { limitServices: boolean };
}

type AuthenticateDone = Parameters<Aedes['authenticate']>[3];

export function authenticateHook(d: AuthenticateDeps): Aedes['authenticate'] {
  return (client, username, password, done) => {
    const state = stateOf(client);
    if (!state) return done(authError(new FleetwireError('AUTH_TOKEN_MISSING')), false);
    const token = state.transport === 'ws'
      ? tokenFromSubprotocols(client.req?.headers['sec-websocket-protocol'])
      : username === 'service' && password ? password.toString('utf8') : null;
    client.req = undefined; // neither the token nor the request is kept past this point
    checkConnect(d, client, state, token).then(
      (claims) => {
        state.claims = connClaims(claims);
        if (claims.typ === 'service' && !d.limits.limitServices && state.stream instanceof WebSocketDuplex) {
          state.stream.guard.limiter = null;
        }
        markTakeover(d.aedes, client, state);
        d.connections.authenticated(client, state);
        done(null, true);
      },
      (err: unknown) => refuse(d, client, state, err, done),
    );
  };
}

/** The claims of a client that may connect; throws a FleetwireError saying why not. */
async function checkConnect(d: AuthenticateDeps, client: Client, state: ConnState, token: string | null): Promise<FleetwireClaims> {
  if (!token) throw new FleetwireError('AUTH_TOKEN_MISSING');
  const claims = await d.verifier.verify(token);
  if (state.transport === 'tcp' && claims.typ !== 'service') {
    throw new FleetwireError('AUTH_FORBIDDEN', 'the TCP listener accepts service tokens only');
  }
  // The HTTP guard's revocation rule, plus the device's status and the client's flood penalty: one round trip.
  const { revoked, deviceStatus, penalized } = await tokenState(d.redis, claims, { penaltyKey: redisKeys.floodPenalty(client.id) });
  if (revoked) throw new FleetwireError('AUTH_TOKEN_REVOKED');
  if (penalized) throw new FleetwireError('BROKER_FLOOD_PENALTY');
  if (claims.typ === 'device') {
    if (!isDeviceId(claims.sub) || client.id !== claims.sub) throw new FleetwireError('AUTH_CLIENT_ID_MISMATCH');
    if (deviceStatus === null) throw new FleetwireError('AUTH_DEVICE_UNKNOWN');
    if (deviceStatus !== 'active') throw new FleetwireError('AUTH_DEVICE_REVOKED');
  } else if (!ownsClientId(claims, client.id)) {
    throw new FleetwireError('AUTH_CLIENT_ID_MISMATCH', `a ${claims.typ}'s client id must be "${claims.typ}:${claims.sub}" or start with "${claims.typ}:${claims.sub}:"`);
  }
  const will = (client as unknown as { _will?: { topic: string } })._will;
  if (will && !authorizePublishTopic(claims, will.topic).ok) {
    throw new FleetwireError('AUTH_FORBIDDEN', `the will topic ${will.topic} is not one this client may publish`);
  }
  return claims;
}

/** Answers a refused CONNECT with its CONNACK code and counts the failure towards the address's ban. */
function refuse(d: AuthenticateDeps, client: Client, state: ConnState, err: unknown, done: AuthenticateDone): void {
  const { log } = d;
  state.closeReason = 'auth-failed';
  if (!(err instanceof FleetwireError)) {
    // Redis unreachable or similar: not the client's fault, so no ban accounting. CONNACK 3 = server unavailable.
    log.error({ err, client_id: client.id }, 'authentication could not complete');
    const unavailable = new Error('server unavailable') as AuthenticateError;
    unavailable.returnCode = 3 as AuthenticateError['returnCode'];
    return done(unavailable, false);
  }
  d.metrics.authFailures.inc({ reason: err.code });
  log.warn({ ip: state.ip, client_id: client.id, code: err.code }, `authentication refused: ${err.message}`);
  // A client serving its flood penalty is not guessing credentials: it must not get its whole address banned.
  if (err.code === 'BROKER_FLOOD_PENALTY') return done(authError(err), false);
  d.gate.authFailed(state.ip).then(
    (banned) => { if (banned) log.warn({ ip: state.ip }, 'address banned after repeated authentication failures'); },
    (e: unknown) => log.error({ err: e }, 'recording an authentication failure failed'),
  );
  done(authError(err), false);
}

/** A second connection with the same client id takes over [MQTT-3.1.4-2]; the old one learns why. */
function markTakeover(aedes: Aedes, client: Client, state: ConnState): void {
  const existing = aedes.clients[client.id];
  const old = existing && existing !== client ? stateOf(existing) : undefined;
  if (old && old !== state) {
    old.closeReason = 'taken-over';
    setCloseIntent(old, 'taken-over');
  }
}

/**
 * Users and services connect as `typ:sub` or `typ:sub:<anything>`. Only devices
 * use bare ids, so a user or service never takes over a device's session, and
 * the separator keeps service `pb` out of `service:pb-engine:1`.
 */
function ownsClientId(claims: FleetwireClaims, clientId: string): boolean {
  const own = `${claims.typ}:${claims.sub}`;
  return clientId === own || clientId.startsWith(`${own}:`);
}

function authError(fe: FleetwireError): AuthenticateError {
  const e = new Error(fe.message) as AuthenticateError;
  e.returnCode = (fe.connack ?? 5) as AuthenticateError['returnCode'];
  return e;
}
