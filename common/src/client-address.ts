/** Peer addresses and the trusted-proxy list, shared by the HTTP server and the broker. */
import { BlockList, isIPv4, isIPv6 } from 'node:net';

/** A BlockList of TRUSTED_PROXIES entries (addresses or CIDRs); throws naming a bad entry. */
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

/** An IPv4-mapped IPv6 address as plain IPv4, so one client has one key. */
export function normalizeIp(ip: string | undefined): string {
  if (!ip) return 'unknown';
  return ip.startsWith('::ffff:') && isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

export function isTrustedProxy(list: BlockList, ip: string): boolean {
  if (!isIPv4(ip) && !isIPv6(ip)) return false;
  return list.check(ip, isIPv6(ip) ? 'ipv6' : 'ipv4');
}
