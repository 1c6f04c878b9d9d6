/**
 * Why Aedes ended a connection with an error, in one place: the disconnect
 * reason (metrics label and log), the close frame the client sees, and whether
 * it counts as malformed input. Operators alert on malformed input, so only
 * input that broke the protocol counts; a peer that went away does not.
 */
import type { Client } from 'aedes';
import type { EventEmitter } from 'node:events';
import { closeCodes, type CloseReason } from '@fleetwire/common';
import type { DisconnectReason } from './conn-state.js';

/** Set on errors the MQTT parser raised, by markParserErrors(): the command it was parsing. */
export interface ParserError extends Error { parsing?: string }

export interface ErrorVerdict {
  reason: DisconnectReason;
  /** The `kind` label of malformed_input_total, when the input broke the protocol. */
  malformed?: 'connect' | 'parser';
  /** Close-frame reason (defaults to the close code's own). */
  text?: string;
}

const SPOKEN = 'this broker speaks MQTT 3.1.1 (protocol level 4) and 3.1 (level 3)';

export function classifyClientError(err: ParserError & { errorCode?: number; code?: string }): ErrorVerdict {
  if (err.parsing !== undefined) {
    const connect = err.parsing === 'connect';
    const text = connect && /protocol/i.test(err.message) ? `${err.message}: ${SPOKEN}` : `malformed ${err.parsing} packet: ${err.message}`;
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
 * Tags this client's MQTT parser errors with the command being parsed. It runs
 * before Aedes' own listener, which closes the socket with the same error.
 */
export function markParserErrors(client: Client): void {
  (client as unknown as { _parser: EventEmitter })._parser.prependListener('error', markParserError);
}

// Module level, so no connection carries a closure of its own for it.
function markParserError(this: { packet?: { cmd?: string } }, err: ParserError): void {
  err.parsing = this.packet?.cmd ?? 'unknown';
}
