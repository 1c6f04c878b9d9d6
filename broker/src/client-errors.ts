/**
 * Why Aedes ended a connection with an error, in one place: the disconnect
 * reason (metrics label and log), the close frame the client sees, and whether
 * it counts as malformed input. Operators alert on malformed input, so only
 * input that broke the protocol counts; a peer that went away does not.
 */
import type { Client } from 'aedes';
import { closeCodes, type CloseReason } from '@fleetwire/common';
import type { DisconnectReason } from './conn-state.js';

export interface ErrorVerdict {
  reason: DisconnectReason;
  /** The `kind` label of malformed_input_total, when the input broke the protocol. */
  malformed?: 'connect' | 'parser';
  /** Close-frame reason (defaults to the close code's own). */
  text?: string;
}

const SPOKEN = 'this broker speaks MQTT 3.1.1 (protocol level 4) and 3.1 (level 3)';

/** `client` is the connection's Aedes client, whose parser may be where the error came from. */
export function classifyClientError(err: Error & { errorCode?: number; code?: string }, client: Client | null): ErrorVerdict {
  const parsing = client ? parserFailure(client, err) : null;
  if (parsing !== null) {
    const connect = parsing === 'connect';
    const text = connect && /protocol/i.test(err.message) ? `${err.message}: ${SPOKEN}` : `malformed ${parsing} packet: ${err.message}`;
    return { reason: 'malformed', malformed: connect ? 'connect' : 'parser', text };
  }
  // Aedes answered CONNACK 1 (unacceptable protocol version) or 2 (identifier rejected) first [MQTT-3.2.2-4].
  if (err.errorCode === 1) return { reason: 'malformed', malformed: 'connect', text: `unacceptable protocol level: ${SPOKEN}` };
  if (err.errorCode === 2) return { reason: 'malformed', malformed: 'connect', text: 'client identifier rejected' };
  switch (err.message) {
    case 'keep alive timeout': return { reason: 'keepalive-timeout' };
    case 'connect did not arrive in time': return { reason: 'connect-timeout' };
    case 'drain timeout': return { reason: 'drain-timeout' };
    case 'Client queue limit reached': return { reason: 'rate-limited', text: 'too many packets before CONNACK' };
    default: return { reason: err.code || err.message === 'connection closed' ? 'socket-closed' : 'client-error' };
  }
}

/** The close frame for a verdict, or null when the reason has no code of its own (the peer is gone anyway). */
export function closeFrameFor(v: ErrorVerdict): { reason: CloseReason; text?: string } | null {
  return v.reason in closeCodes ? { reason: v.reason as CloseReason, ...(v.text ? { text: v.text } : {}) } : null;
}

/**
 * The command the MQTT parser was reading when it raised `err`, or null when the
 * error did not come from the parser. mqtt-packet keeps its last error and the
 * packet it was parsing on the parser, so nothing per connection is needed.
 */
function parserFailure(client: Client, err: Error): string | null {
  const parser = (client as unknown as { _parser: { error?: Error; packet?: { cmd?: string } } })._parser;
  return parser.error === err ? parser.packet?.cmd ?? 'unknown' : null;
}
