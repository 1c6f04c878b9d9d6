/**
 * Decoding and checking a device's payload before it may become a queue job: JSON (or
 * msgpack where contracts/topics.json allows it), valid against the topic class's
 * schema, and representable as a JSON job. Throws IngressRejected with a readable
 * reason and, when the payload had one, its cid.
 */
import { unpack } from 'msgpackr';
import { FleetwireError, payloadValidator, describeValidationError, topics } from '@fleetwire/common';

export class IngressRejected extends FleetwireError {
  constructor(message: string, readonly cid: string | undefined) {
    super('BROKER_INGRESS_REJECTED', message);
  }
}

const encodings = new Map(topics.map((t) => [t.class, t.encodings ?? ['json']]));

/** Decodes and validates one payload; throws IngressRejected with a readable reason. */
export function decodeDevicePayload(topicClass: string, payload: Buffer): Record<string, unknown> {
  let value: unknown;
  const allowMsgpack = encodings.get(topicClass)?.includes('msgpack') ?? false;
  const looksJson = payload.length > 0 && (payload[0] === 0x7b /* { */ || payload[0] === 0x20 || payload[0] === 0x0a);
  try {
    value = allowMsgpack && !looksJson ? unpack(payload) : JSON.parse(payload.toString('utf8'));
  } catch {
    throw new IngressRejected(`${topicClass} payload is not valid ${allowMsgpack ? 'JSON or msgpack' : 'JSON'}`, undefined);
  }
  const cid = typeof (value as { cid?: unknown })?.cid === 'string' ? (value as { cid: string }).cid : undefined;
  const validate = payloadValidator(topicClass);
  if (!validate(value)) throw new IngressRejected(`${topicClass} payload rejected: ${describeValidationError(validate)}`, cid);
  const problem = unqueueable(value);
  if (problem) throw new IngressRejected(`${topicClass} payload cannot become a JSON queue job: it holds ${problem}`, cid);
  return value as Record<string, unknown>;
}

/** Deeper than any real payload (an image tensor is 4 levels); JSON.stringify overflows the stack somewhere past 5,000. */
const MAX_DEPTH = 64;

/**
 * Queue jobs are JSON (BullMQ; the Python worker reads them). A payload can
 * pass its schema (ML input is free-form) and still not be JSON: msgpack
 * integers beyond 2^53 (BigInt), binary, NaN, or nesting that overflows
 * JSON.stringify. Those are the device's fault, not a queue outage, so they are
 * refused like any invalid input. Walks with its own stack: the input may be
 * too deep for recursion.
 */
function unqueueable(value: unknown): string | null {
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    switch (typeof v) {
      case 'string': case 'boolean': continue;
      case 'number': if (Number.isFinite(v)) continue; return 'a number that is not finite';
      case 'bigint': return 'an integer beyond ±2^53 (send it as a float or a string)';
      case 'object': break;
      default: return `a ${typeof v}`;
    }
    if (v === null) continue;
    if (depth >= MAX_DEPTH) return `values nested deeper than ${MAX_DEPTH} levels`;
    if (Array.isArray(v)) {
      for (const item of v) stack.push([item, depth + 1]);
      continue;
    }
    const proto = Object.getPrototypeOf(v) as object | null;
    if (proto !== Object.prototype && proto !== null) return `a ${(v as object).constructor?.name ?? 'non-JSON'} value (only JSON types)`;
    for (const item of Object.values(v as object)) stack.push([item, depth + 1]);
  }
  return null;
}
