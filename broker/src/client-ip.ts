/** The client's address, believing X-Forwarded-For only from configured proxies. */
import { isIPv4, isIPv6, type BlockList } from 'node:net';
import type { IncomingMessage } from 'node:http';
import { isTrustedProxy, normalizeIp } from '@fleetwire/common';

/** Walks X-Forwarded-For from the right while the hop is a trusted proxy (RFC 7239 §7.4 reasoning). */
export function clientIp(req: IncomingMessage, proxies: BlockList, hasProxies: boolean): string {
  const peer = normalizeIp(req.socket.remoteAddress);
  if (!hasProxies || !isTrustedProxy(proxies, peer)) return peer;
  const header = req.headers['x-forwarded-for'];
  const hops = (Array.isArray(header) ? header.join(',') : header ?? '').split(',').map((s) => normalizeIp(s.trim())).filter(Boolean);
  for (let k = hops.length - 1; k >= 0; k--) {
    const hop = hops[k]!;
    if (!isIPv4(hop) && !isIPv6(hop)) return peer;
    if (!isTrustedProxy(proxies, hop)) return hop;
  }
  return hops[0] ?? peer;
}
