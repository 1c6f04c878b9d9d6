/** What the broker knows about one connection, attached to its stream as `fw`. */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { closeCodes, type CloseReason, type FleetwireClaims } from '@fleetwire/common';

/** The claims a connection keeps: only what the ACL, registry, expiry and revocation need. */
export type ConnClaims = Pick<FleetwireClaims, 'sub' | 'typ' | 'exp' | 'jti' | 'role' | 'sid'>;

export function connClaims(c: FleetwireClaims): ConnClaims {
  const kept: ConnClaims = { sub: c.sub, typ: c.typ, exp: c.exp, jti: c.jti };
  // Only user tokens carry these; a device connection keeps no field it does not need.
  if (c.role !== undefined) kept.role = c.role;
  if (c.sid !== undefined) kept.sid = c.sid;
  return kept;
}

/** Connection ids: unique per process start plus a counter; short, since one is kept per connection. */
const processTag = randomBytes(4).toString('base64url');
let connCounter = 0;
import type { Client } from 'aedes';
import { WebSocketDuplex } from './ws-stream.js';

export type DisconnectReason =
  | 'client-disconnect' | 'socket-closed' | 'keepalive-timeout' | 'connect-timeout' | 'auth-failed'
  | 'kicked' | 'revoked' | 'token-expired' | 'server-shutdown' | 'rate-limited' | 'malformed'
  | 'packet-too-large' | 'taken-over' | 'acl-denied' | 'keepalive-out-of-bounds' | 'queue-unavailable'
  | 'drain-timeout' | 'client-error';

/** A WebSocket connection's stream, which carries the connection's state as `fw`. */
export type ConnStream = WebSocketDuplex<ConnState>;

export interface ConnState {
  readonly transport: 'ws' | 'tcp';
  readonly ip: string;
  readonly stream: ConnStream | Socket;
  /** Unique per connection, so a late disconnect never removes a newer connection's registry entry. */
  readonly connId: string;
  readonly connectedAt: number;
  /** Set once authentication succeeded. */
  claims: ConnClaims | null;
  /**
   * The Aedes client, from the moment Aedes takes the connection; its id once
   * CONNECT is read, so a flood kick during authentication still knows whom to
   * penalize.
   */
  client: Client | null;
  lastActivity: number;
  flushedActivity: number;
  closeReason: DisconnectReason | null;
  /** Set by the first deliberate disconnect; later ones are no-ops. */
  closing: boolean;
  /** Second-resolution bucket in the expiry wheel, or null. */
  expiryAt: number | null;
  expiryNoticeSent: boolean;
  registered: boolean;
}

export interface FwStream { fw?: ConnState }

export function stateOf(client: Client): ConnState | undefined {
  return (client.conn as unknown as FwStream).fw;
}

/** `device`, `user` or `service` once authenticated. */
export function kindOf(state: ConnState): string {
  return state.claims?.typ ?? 'unauthenticated';
}

export function newConnState(transport: 'ws' | 'tcp', ip: string, stream: ConnStream | Socket): ConnState {
  const now = Date.now();
  const state: ConnState = {
    transport, ip, stream, connId: `${processTag}${(connCounter++).toString(36)}`, connectedAt: now,
    claims: null, client: null, lastActivity: now, flushedActivity: now,
    closeReason: null, closing: false, expiryAt: null, expiryNoticeSent: false, registered: false,
  };
  (stream as FwStream).fw = state;
  return state;
}

/** Chooses the WebSocket close frame whatever ends the socket from now on. */
export function setCloseIntent(state: ConnState, reason: CloseReason, text?: string): void {
  if (!(state.stream instanceof WebSocketDuplex)) return;
  const buf = Buffer.from(text ?? closeCodes[reason]!.reason, 'utf8');
  // Close-frame reasons are limited to 123 bytes (RFC 6455 §5.5).
  const reasonText = buf.length <= 123 ? buf.toString('utf8') : `${buf.subarray(0, 120).toString('utf8').replace(/\uFFFD+$/, '')}...`;
  state.stream.closeIntent = { code: closeCodes[reason]!.code, reason: reasonText };
}
