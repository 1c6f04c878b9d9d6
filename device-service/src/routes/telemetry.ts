/** GET /v1/devices/{id}/telemetry: a device's stored readings, paged by stream position, and its latest value per reading. */
import type { FastifyInstance } from 'fastify';
import { FleetwireError, MAX_QUERY_INTEGER, queryInteger, type Guard } from '@fleetwire/common';
import { deviceIdSchema } from '../device-selector.js';

export interface Reading { readonly name: string; readonly value: number; readonly unit: string }

/** One stored message. */
export interface TelemetryItem {
  /** Its position in the device's stream, `<ms>-<seq>`: a cursor; ms is received_at unless it arrived behind a newer message. */
  readonly id: string;
  /** The device's clock when it took the readings (unix ms). */
  readonly at: number;
  /** The broker's clock when it received the message (unix ms). */
  readonly received_at: number;
  readonly readings: readonly Reading[];
}

export interface LatestReading { readonly value: number; readonly unit: string; readonly at: number; readonly received_at: number }

export interface TelemetryPage {
  readonly device_id: string;
  readonly latest: Readonly<Record<string, LatestReading>>;
  readonly items: readonly TelemetryItem[];
  readonly next_cursor: string | null;
}

/** A position in a device's stream: the id of an item, as next_cursor gives it. */
export interface StreamPosition {
  /** `<ms>-<seq>`, both parts plain decimal. */
  readonly id: string;
  readonly ms: number;
}

export interface TelemetryQuery {
  /** Inclusive bounds on the stream position's time (unix ms): received_at, except for a message stored behind a newer one. */
  readonly since?: number;
  readonly until?: number;
  readonly limit: number;
  /** Continue after (asc) or before (desc) this item. */
  readonly cursor?: StreamPosition;
  readonly order: 'asc' | 'desc';
}

export interface TelemetryRouteDeps {
  reader: Guard;
  /** null when no such device is registered. */
  read(deviceId: string, query: TelemetryQuery): Promise<TelemetryPage | null>;
}

export const MAX_TELEMETRY_PAGE = 1000;
const MAX_STREAM_SEQ = 2n ** 64n - 1n;

const errorBody = { $ref: 'error#' } as const;
const reading = {
  type: 'object',
  properties: { name: { type: 'string' }, value: { type: 'number' }, unit: { type: 'string' } },
} as const;
const latestReading = {
  type: 'object',
  properties: { value: { type: 'number' }, unit: { type: 'string' }, at: { type: 'integer' }, received_at: { type: 'integer' } },
} as const;

const description = `Messages a device published on devices/{id}/telemetry, newest first (order=asc: oldest first), \
and its latest value per reading name (the one received last). A device keeps about TELEMETRY_MAX_LEN messages, \
none older than TELEMETRY_MAX_AGE_S (by the broker's clock). Messages are in the order of their position in the \
device's stream (item id, <ms>-<seq>), whose ms is the broker's received_at: except for a message that reached the \
service behind a newer one of the same device (two consumers, a retry), which is placed after it, keeps its own \
received_at, and takes the newer one's ms in its id. So received_at is ordered within the few milliseconds of such \
races, not strictly; sort by received_at or at when that matters. since and until bound the id's ms, inclusive. \
next_cursor, passed back as cursor with the same query, gives the following page (null: no more).

Refused messages are counted, never stored: fleetwire_broker_ingress_rejected_total{topic_class="telemetry"} \
(failed telemetry.schema.json at the broker) and fleetwire_queue_jobs_total{queue="telemetry",outcome="invalid"} \
(a queue job that broke the contract). fleetwire_device_telemetry_total{outcome} counts the rest: stored, \
duplicate (a retried job already stored), unknown_device (unknown or revoked device), expired (older than \
TELEMETRY_MAX_AGE_S on arrival).`;

export function telemetryRoutes(app: FastifyInstance, d: TelemetryRouteDeps): void {
  app.get('/v1/devices/:id/telemetry', {
    onRequest: d.reader,
    schema: {
      tags: ['devices'], summary: 'A device\'s telemetry, paged, and its latest readings', description,
      security: [{ bearer: [] }],
      params: {
        type: 'object', required: ['id'], additionalProperties: false,
        properties: { id: deviceIdSchema },
      },
      querystring: {
        type: 'object', additionalProperties: false,
        properties: {
          since: queryInteger({ description: 'Oldest position to include (the ms of an item id: its received_at, mostly), unix ms' }),
          until: queryInteger({ description: 'Newest position to include (the ms of an item id: its received_at, mostly), unix ms' }),
          limit: queryInteger({ minimum: 1, maximum: MAX_TELEMETRY_PAGE, default: 100 }),
          cursor: { type: 'string', pattern: '^[0-9]{1,16}-[0-9]{1,20}$', description: 'next_cursor of the previous page' },
          order: { type: 'string', enum: ['desc', 'asc'], default: 'desc' },
        },
      },
      response: {
        200: {
          type: 'object',
          properties: {
            device_id: { type: 'string' },
            latest: { type: 'object', additionalProperties: latestReading },
            items: {
              type: 'array',
              items: {
                type: 'object',
                properties: {
                  id: { type: 'string' }, at: { type: 'integer' }, received_at: { type: 'integer' }, readings: { type: 'array', items: reading },
                },
              },
            },
            next_cursor: { type: ['string', 'null'] },
          },
        },
        400: errorBody, 401: errorBody, 403: errorBody, 404: errorBody,
      },
    },
  }, async (req) => {
    const { id } = req.params as { id: string };
    const q = req.query as { since?: number; until?: number; limit: number; cursor?: string; order: 'asc' | 'desc' };
    if (q.since !== undefined && q.until !== undefined && q.since > q.until) {
      throw new FleetwireError('VALIDATION_FAILED', `querystring/since (${q.since}) must not be after querystring/until (${q.until})`);
    }
    const page = await d.read(id, { since: q.since, until: q.until, limit: q.limit, order: q.order, cursor: q.cursor === undefined ? undefined : streamPosition(q.cursor) });
    if (!page) throw new FleetwireError('NOT_FOUND', `No device ${id}.`);
    return page;
  });
}

/** The cursor as a stream id Redis accepts; the pattern has checked its shape, this its range. */
function streamPosition(cursor: string): StreamPosition {
  const [ms, seq] = cursor.split('-') as [string, string];
  if (Number(ms) > MAX_QUERY_INTEGER || BigInt(seq) > MAX_STREAM_SEQ) {
    throw new FleetwireError('VALIDATION_FAILED', 'querystring/cursor is out of range: pass back a next_cursor as it was given');
  }
  // Leading zeros would make two spellings of one position; Redis reads both alike, so normalise.
  return { id: `${Number(ms)}-${BigInt(seq)}`, ms: Number(ms) };
}
