/** What the broker knows about one connection, attached to its stream as `fw`. */
import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { FleetwireClaims } from '@fleetwire/common';
import type { Client } from 'aedes';
import type { WebSocketDuplex } from './ws-stream.js';

export type DisconnectReason =
  | 'client-disconnect' | 'socket-closed' | 'keepalive-timeout' | 'connect-timeout' | 'auth-failed'
  | 'kicked' | 'revoked' | 'token-expired' | 'server-shutdown' | 'rate-limited' | 'malformed'
  | 'packet-too-large' | 'taken-over' | 'acl-denied' | 'keepalive-out-of-bounds' | 'queue-unavailable';

export interface ConnState {
  readonly transport: 'ws' | 'tcp';
  readonly ip: string;
  readonly stream: WebSocketDuplex | Socket;
  /** Unique per connection, so a late disconnect never removes a newer connection's registry entry. */
  readonly connId: string;
  readonly connectedAt: number;
  /** The offered token; dropped as soon as it is verified. */
  token: string | null;
  claims: FleetwireClaims | null;
  client: Client | null;
  lastActivity: number;
  flushedActivity: number;
  closeReason: DisconnectReason | null;
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

export function newConnState(transport: 'ws' | 'tcp', ip: string, stream: WebSocketDuplex | Socket, token: string | null): ConnState {
  const now = Date.now();
  const state: ConnState = {
    transport, ip, stream, token, connId: randomUUID(), connectedAt: now,
    claims: null, client: null, lastActivity: now, flushedActivity: now,
    closeReason: null, expiryAt: null, expiryNoticeSent: false, registered: false,
  };
  (stream as FwStream).fw = state;
  return state;
}
