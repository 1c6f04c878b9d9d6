/**
 * Aedes hooks: preConnect (keepalive bounds), authenticate (JWT from the
 * subprotocol or, on the loopback TCP listener, a service JWT as password),
 * authorizePublish (ACL + ingress routing), authorizeSubscribe, authorizeForward.
 */
import type { Aedes, AuthenticateError, Client, PublishPacket, Subscription } from 'aedes';
import {
  FleetwireError, isDeviceId, parseDeviceTopic, redisKeys, tokenFromSubprotocols, tokenState, topicFor,
  type FleetwireClaims, type Logger, type Redis, type TokenVerifier,
} from '@fleetwire/common';
import { authorizePublishTopic, authorizeSubscribeFilter } from './acl.js';
import { connClaims, setCloseIntent, stateOf, type ConnState } from './conn-state.js';
import type { ConnectGate } from './connect-gate.js';
import type { Connections } from './connections.js';
import { decodeDevicePayload, IngressRejected, type IngressRouter } from './ingress.js';
import type { BrokerMetrics } from './metrics.js';
import { WebSocketDuplex } from './ws-stream.js';

export interface HookDeps {
  aedes: Aedes;
  redis: Redis;
  verifier: TokenVerifier;
  gate: ConnectGate;
  connections: Connections;
  ingress: IngressRouter;
  metrics: BrokerMetrics;
  log: Logger;
  nodeId: string;
  limits: { keepaliveMinS: number; keepaliveMaxS: number; limitServices: boolean };
}

/** Where refused-but-acknowledged messages go: no client may subscribe to $-topics, so nobody receives them. */
const sinkTopic = (nodeId: string): string => `$SYS/${nodeId}/fleetwire/dropped`;

export function installHooks(d: HookDeps): void {
  const { aedes, log, metrics } = d;

  aedes.preConnect = (client, packet, done) => {
    const state = stateOf(client);
    const ka = packet.keepalive ?? 0;
    if (state && (ka < d.limits.keepaliveMinS || ka > d.limits.keepaliveMaxS)) {
      const why = `keepalive must be between ${d.limits.keepaliveMinS} and ${d.limits.keepaliveMaxS} s, got ${ka}`;
      log.info({ ip: state.ip, client_id: packet.clientId }, why);
      state.closeReason = 'keepalive-out-of-bounds';
      metrics.malformed.inc({ kind: 'keepalive' });
      setCloseIntent(state, 'malformed', why);
      return done(new Error(why), false);
    }
    done(null, true);
  };

  aedes.authenticate = (client, username, password, done) => {
    const state = stateOf(client);
    if (!state) return done(authError(new FleetwireError('AUTH_TOKEN_MISSING')), false);
    const token = state.transport === 'ws'
      ? tokenFromSubprotocols(client.req?.headers['sec-websocket-protocol'])
      : username === 'service' && password ? password.toString('utf8') : null;
    client.req = undefined; // neither the token nor the request is kept past this point
    authenticate(client, state, token).then(
      (claims) => {
        state.claims = connClaims(claims);
        if (claims.typ === 'service' && !d.limits.limitServices && state.stream instanceof WebSocketDuplex) {
          state.stream.guard.limiter = null;
        }
        markTakeover(client, state);
        d.connections.authenticated(client, state);
        done(null, true);
      },
      (err: unknown) => {
        if (!(err instanceof FleetwireError)) {
          // Redis unreachable or similar: not the client's fault, so no ban accounting. CONNACK 3 = server unavailable.
          log.error({ err, client_id: client.id }, 'authentication could not complete');
          state.closeReason = 'auth-failed';
          const unavailable = new Error('server unavailable') as AuthenticateError;
          unavailable.returnCode = 3 as AuthenticateError['returnCode'];
          return done(unavailable, false);
        }
        const fe = err;
        metrics.authFailures.inc({ reason: fe.code });
        state.closeReason = 'auth-failed';
        log.warn({ ip: state.ip, client_id: client.id, code: fe.code }, `authentication refused: ${fe.message}`);
        // A client serving its flood penalty is not guessing credentials: it must not get its whole address banned.
        if (fe.code === 'BROKER_FLOOD_PENALTY') return done(authError(fe), false);
        d.gate.authFailed(state.ip).then(
          (banned) => { if (banned) log.warn({ ip: state.ip }, 'address banned after repeated authentication failures'); },
          (e: unknown) => log.error({ err: e }, 'recording an authentication failure failed'),
        );
        done(authError(fe), false);
      },
    );
  };

  async function authenticate(client: Client, state: ConnState, token: string | null): Promise<FleetwireClaims> {
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

  /** A second connection with the same client id takes over [MQTT-3.1.4-2]; the old one learns why. */
  function markTakeover(client: Client, state: ConnState): void {
    const existing = aedes.clients[client.id];
    const old = existing && existing !== client ? stateOf(existing) : undefined;
    if (old && old !== state) {
      old.closeReason = 'taken-over';
      setCloseIntent(old, 'taken-over');
    }
  }

  aedes.authorizePublish = (client, packet, done) => {
    if (!client) return done(null); // a will from a dead node: checked at that client's CONNECT
    const state = stateOf(client);
    const claims = state?.claims;
    if (!state || !claims) return done(new Error('not authenticated'));
    const verdict = authorizePublishTopic(claims, packet.topic);
    if (!verdict.ok) {
      metrics.aclDenied.inc({ action: 'publish' });
      log.warn({ client_id: client.id, topic: packet.topic }, `publish refused: ${verdict.why}`);
      state.closeReason = 'acl-denied';
      setCloseIntent(state, 'acl-denied', verdict.why);
      return done(new Error(verdict.why));
    }
    metrics.in(verdict.topicClass, packet.payload.length);
    if (!verdict.queue || !verdict.deviceId) return done(null);

    let payload: Record<string, unknown>;
    try {
      payload = decodeDevicePayload(verdict.topicClass, packet.payload as Buffer);
    } catch (err) {
      if (!(err instanceof IngressRejected)) throw err;
      refuse(client, packet, verdict.topicClass, err);
      return done(null);
    }
    const routed = d.ingress.route(verdict.queue, verdict.deviceId, verdict.topicClass, payload);
    if (packet.qos === 0) {
      routed.catch((err: unknown) => routingFailed(err, verdict.queue!, client.id));
      return done(null);
    }
    // QoS 1: PUBACK only once the queue has the job, so the device retransmits if Redis lost it.
    routed.then(
      () => done(null),
      (err: unknown) => {
        routingFailed(err, verdict.queue!, client.id);
        state.closeReason = 'queue-unavailable';
        setCloseIntent(state, 'queue-unavailable');
        done(new Error('queue unavailable'));
      },
    );
  };

  function routingFailed(err: unknown, queue: string, clientId: string): void {
    metrics.queueRoutingErrors.inc({ queue });
    log.error({ err, queue, client_id: clientId }, 'routing a device message to its queue failed');
  }

  /**
   * A schema-invalid device message is acknowledged (so the device does not
   * retransmit it forever) but goes nowhere. An ML request gets an error result
   * it can correlate by cid.
   */
  function refuse(client: Client, packet: PublishPacket, topicClass: string, err: IngressRejected): void {
    metrics.ingressRejected.inc({ topic_class: topicClass });
    log.warn({ client_id: client.id, cid: err.cid, topic: packet.topic }, err.message);
    packet.topic = sinkTopic(d.nodeId);
    packet.retain = false;
    if (topicClass === 'ml-infer' && err.cid) {
      const result = { cid: err.cid, ok: false, error: { code: err.code, message: err.message }, model_version: '' };
      client.publish({ cmd: 'publish', topic: topicFor('ml-result', client.id), payload: Buffer.from(JSON.stringify(result)), qos: 1, retain: false, dup: false }, () => {});
    }
  }

  aedes.authorizeSubscribe = (client, sub: Subscription, done) => {
    const claims = stateOf(client)?.claims;
    if (claims && authorizeSubscribeFilter(claims, sub.topic)) return done(null, sub);
    metrics.aclDenied.inc({ action: 'subscribe' });
    log.info({ client_id: client.id, filter: sub.topic }, 'subscription refused');
    done(null, null); // SUBACK 0x80 for this filter [MQTT-3.9.3]
  };

  aedes.authorizeForward = (_client, packet) => {
    const p = packet as PublishPacket & { fwClass?: string };
    // The same packet object is forwarded to every subscriber: classify it once.
    p.fwClass ??= parseDeviceTopic(p.topic)?.entry.class ?? 'other';
    metrics.out(p.fwClass, p.payload.length);
    return packet;
  };
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
