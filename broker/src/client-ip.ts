/** The client's address, believing X-Forwarded-For only from configured proxies. */
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import type { IncomingMessage } from 'node:http';

export function trustedProxyList(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [addr, bits] = entry.split('/');
    const type = isIPv6(addr!) ? 'ipv6' : 'ipv4';
    if (!isIPv4(addr!) && !isIPv6(addr!)) throw new Error(`TRUSTED_PROXIES: ${entry} is not an IP address or CIDR`);
    if (bits === undefined) list.addAddress(addr!, type);
    else list.addSubnet(addr!, Number(bits), type);
  }
  return list;
}

export function normalizeIp(ip: string | undefined): string {
  if (!ip) return 'unknown';
  return ip.startsWith('::ffff:') && isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

function isTrusted(list: BlockList, ip: string): boolean {
  return list.check(ip, isIPv6(ip) ? 'ipv6' : 'ipv4');
}

/** Walks X-Forwarded-For from the right while the hop is a trusted proxy (RFC 7239 §7.4 reasoning). */
export function clientIp(req: IncomingMessage, proxies: BlockList, hasProxies: boolean): string {
  const peer = normalizeIp(req.socket.remoteAddress);
  if (!hasProxies || !isTrusted(proxies, peer)) return peer;
  const header = req.headers['x-forwarded-for'];
  const hops = (Array.isArray(header) ? header.join(',') : header ?? '').split(',').map((s) => normalizeIp(s.trim())).filter(Boolean);
  for (let k = hops.length - 1; k >= 0; k--) {
    const hop = hops[k]!;
    if (!isIPv4(hop) && !isIPv6(hop)) return peer;
    if (!isTrusted(proxies, hop)) return hop;
  }
  return hops[0] ?? peer;
}
