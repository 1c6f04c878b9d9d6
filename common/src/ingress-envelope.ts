/**
 * The job data on every ingress queue (contracts/schemas/ingress-envelope.schema.json)
 * and the check a consumer runs before a handler sees it. The broker validates
 * payloads before it enqueues, but a queue is a shared surface: an older broker,
 * another producer or a hand-made job can put anything there, so the consumer
 * checks again against the same contract files.
 */
import { UnrecoverableError } from 'bullmq';
import { queues, topics } from './contracts.js';
import { describeValidationError, payloadValidator, schemaValidator } from './schemas.js';

export interface IngressEnvelope {
  readonly cid: string;
  readonly device_id: string;
  readonly topic_class: string;
  /** The decoded device payload; every ingress topic schema describes an object. */
  readonly payload: Record<string, unknown>;
  /** Unix time in milliseconds when the broker took the message. */
  readonly received_at: number;
  /** The broker node that enqueued it. */
  readonly node: string;
  /** ml-infer only: Unix ms when the answer is due (common/src/ml.ts). */
  readonly deadline_at?: number;
}

/**
 * The job id of a device message with a device-chosen cid: stable, so a QoS 1
 * retransmission is the same job and is not queued twice. Device ids have no '.'.
 */
export function deviceJobId(deviceId: string, cid: string): string {
  return `${deviceId}.${cid.replaceAll(':', '_')}`;
}

/**
 * A job whose data breaks the contract. It is an UnrecoverableError so BullMQ
 * fails it at once: retrying cannot make the data valid. Its message becomes
 * the job's failedReason.
 */
export class InvalidJobError extends UnrecoverableError {}

const validateEnvelope = schemaValidator('ingress-envelope.schema.json');
const validateBatch = schemaValidator('ingress-batch.schema.json');
const queueOfClass = new Map(topics.map((t) => [t.class, t.queue]));

/** Throws a clear error when `name` is not a queue in contracts/queues.json. */
export function assertIngressQueue(name: string): void {
  if (!Object.hasOwn(queues.queues, name)) {
    throw new Error(`unknown queue ${JSON.stringify(name)}: the queues in common/contracts/queues.json are ${Object.keys(queues.queues).join(', ')}`);
  }
}

/**
 * Checks job data taken from `queue`: the envelope against its schema, the
 * topic class against the queue it is routed to (contracts/topics.json), and
 * the payload against the topic class schema. Throws InvalidJobError.
 */
/** Job data meant as a batch of envelopes ({batch: [...]}, contracts/queues.json `batch`); checkIngressBatch checks its shape. */
export function isIngressBatch(data: unknown): data is { batch: unknown[] } {
  return typeof data === 'object' && data !== null && Object.hasOwn(data, 'batch');
}

/** A batch job's envelopes, each checked on its own: the valid ones, and why each of the others is not. */
export interface CheckedBatch {
  readonly valid: { readonly index: number; readonly envelope: IngressEnvelope }[];
  readonly invalid: { readonly index: number; readonly reason: string }[];
}

/**
 * Checks batch job data taken from `queue`: the batch shape (InvalidJobError when it is
 * wrong, or when the queue takes no batches), then every envelope as checkIngressJob does.
 */
export function checkIngressBatch(queue: string, data: unknown): CheckedBatch {
  if (!queues.queues[queue]?.batch) throw new InvalidJobError(`queue ${queue} takes single envelopes, not batches (common/contracts/queues.json)`);
  if (!validateBatch(data)) throw new InvalidJobError(`invalid ingress batch: ${describeValidationError(validateBatch)}`);
  const out: CheckedBatch = { valid: [], invalid: [] };
  for (const [index, item] of (data as { batch: unknown[] }).batch.entries()) {
    try {
      out.valid.push({ index, envelope: checkIngressJob(queue, item) });
    } catch (err) {
      if (!(err instanceof InvalidJobError)) throw err;
      out.invalid.push({ index, reason: err.message });
    }
  }
  return out;
}

export function checkIngressJob(queue: string, data: unknown): IngressEnvelope {
  if (!validateEnvelope(data)) throw new InvalidJobError(`invalid ingress envelope: ${describeValidationError(validateEnvelope)}`);
  const envelope = data as IngressEnvelope;
  const routedTo = queueOfClass.get(envelope.topic_class);
  if (routedTo !== queue) {
    const where = routedTo ? `belongs on queue ${routedTo}` : 'is routed to no queue';
    throw new InvalidJobError(`topic class ${JSON.stringify(envelope.topic_class)} ${where}, not ${queue} (common/contracts/topics.json)`);
  }
  const validatePayload = payloadValidator(envelope.topic_class);
  if (!validatePayload(envelope.payload)) {
    throw new InvalidJobError(`invalid ${envelope.topic_class} payload: ${describeValidationError(validatePayload)}`);
  }
  return envelope;
}
