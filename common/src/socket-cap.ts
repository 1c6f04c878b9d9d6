/**
 * Open sockets per remote address, counted on the server's `connection` event: before
 * any HTTP parsing or TLS handshake, so a client cannot hold descriptors by opening
 * sockets and sending little or nothing. Trusted proxies are exempt: they carry every
 * client behind them (the broker's own per-client limits apply to those).
 */
import type { Server } from 'node:net';
import type { Socket } from 'node:net';
import { normalizeIp } from './client-address.js';

export interface SocketCapOptions {
  maxPerAddress: number;
  exempt: (ip: string) => boolean;
  /** Called for each socket closed because its address was at the cap. */
  onRefused: (ip: string) => void;
}

const kAddress = Symbol('fleetwire.socketAddress');
type CountedSocket = Socket & { [kAddress]?: string };

export function capSocketsPerAddress(server: Server, opts: SocketCapOptions): { openFrom(ip: string): number } {
  const open = new Map<string, number>();
  // One listener for every socket (no per-socket closure): the address rides on the socket.
  function release(this: CountedSocket): void {
    const ip = this[kAddress]!;
    const left = (open.get(ip) ?? 1) - 1;
    if (left <= 0) open.delete(ip);
    else open.set(ip, left);
  }
  server.on('connection', (socket: CountedSocket) => {
    const ip = normalizeIp(socket.remoteAddress);
    if (opts.exempt(ip)) return;
    const n = (open.get(ip) ?? 0) + 1;
    if (n > opts.maxPerAddress) {
      socket.destroy();
      opts.onRefused(ip);
      return;
    }
    open.set(ip, n);
    socket[kAddress] = ip;
    socket.on('close', release);
  });
  return { openFrom: (ip) => open.get(ip) ?? 0 };
}
