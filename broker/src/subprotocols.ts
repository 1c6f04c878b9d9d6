/**
 * The subprotocols a client offers (RFC 6455 §4.1: Sec-WebSocket-Protocol is a
 * comma-separated list of RFC 7230 tokens). Node joins a repeated header with ", ",
 * and Paho always sends its own `Sec-Websocket-Protocol: mqtt` beside the
 * application's `Sec-WebSocket-Protocol: mqtt, auth.<jwt>`, so the broker sees
 * `mqtt, mqtt, auth.<jwt>`; ws refuses any repeated entry. A repeated entry is taken
 * once here, before ws parses the header. The token entry must stay unique: two
 * would be two identities in one request, and which one counts must never be a guess.
 */
import { jwtContract } from '@fleetwire/common';

export type OfferRefusal = 'BROKER_SUBPROTOCOL_REQUIRED' | 'BROKER_SUBPROTOCOL_INVALID' | 'BROKER_TOKEN_DUPLICATED';

export type Offer =
  | { ok: true; /** The entries once each, in the order first offered, as one header value. */ header: string }
  | { ok: false; code: OfferRefusal };

/** RFC 7230 §3.2.6 token: what ws accepts as a subprotocol name. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Optional whitespace around list entries is SP and HTAB only (RFC 7230 §3.2.3). */
const OWS = /^[ \t]+|[ \t]+$/g;

export function readOffer(header: string | string[] | undefined): Offer {
  const raw = Array.isArray(header) ? header.join(',') : header ?? '';
  if (raw.replace(OWS, '') === '') return { ok: false, code: 'BROKER_SUBPROTOCOL_REQUIRED' };
  const entries = new Set<string>();
  let tokens = 0;
  for (const part of raw.split(',')) {
    const entry = part.replace(OWS, '');
    if (!TOKEN.test(entry)) return { ok: false, code: 'BROKER_SUBPROTOCOL_INVALID' };
    if (entry.startsWith(jwtContract.token_subprotocol_prefix) && ++tokens > 1) return { ok: false, code: 'BROKER_TOKEN_DUPLICATED' };
    entries.add(entry);
  }
  if (!entries.has(jwtContract.subprotocol)) return { ok: false, code: 'BROKER_SUBPROTOCOL_REQUIRED' };
  return { ok: true, header: [...entries].join(', ') };
}
