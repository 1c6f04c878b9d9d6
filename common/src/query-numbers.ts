/**
 * Numbers in query strings and paths. Fastify's Ajv coerces "1e400", "Infinity" or
 * 400 digits to Infinity and then skips `minimum`/`maximum`, which Ajv applies to finite
 * numbers only; and a finite but huge offset reaches Redis as "1e+21", which it refuses.
 * So every route refuses non-finite numbers (installed by createHttpApp) and every
 * numeric parameter is declared with both bounds through these helpers.
 */
import type { FastifyInstance } from 'fastify';
import { FleetwireError } from './errors.js';

/** The largest bound a query integer may have: exact in JavaScript, written without an exponent, a valid Redis integer. */
export const MAX_QUERY_INTEGER = Number.MAX_SAFE_INTEGER;

export interface QueryIntegerOptions {
  /** @defaultValue 0 */
  minimum?: number;
  /** @defaultValue MAX_QUERY_INTEGER */
  maximum?: number;
  default?: number;
  description?: string;
}

/** A whole-number query parameter with both bounds always set. */
export function queryInteger(o: QueryIntegerOptions = {}): Record<string, unknown> {
  return {
    type: 'integer', minimum: o.minimum ?? 0, maximum: Math.min(o.maximum ?? MAX_QUERY_INTEGER, MAX_QUERY_INTEGER),
    ...(o.default !== undefined ? { default: o.default } : {}),
    ...(o.description ? { description: o.description } : {}),
  };
}

/** `offset` and `limit` of a paged list. */
export function pageQuery(maxLimit: number, defaultLimit = 100): { offset: Record<string, unknown>; limit: Record<string, unknown> } {
  return {
    offset: queryInteger({ default: 0 }),
    limit: queryInteger({ minimum: 1, maximum: maxLimit, default: defaultLimit }),
  };
}

/** Refuses, for every route of `app`, a query or path value that validation turned into a non-finite number. */
export function refuseNonFiniteNumbers(app: FastifyInstance): void {
  app.addHook('preHandler', async (req) => {
    for (const [part, values] of [['querystring', req.query], ['params', req.params]] as const) {
      if (!values || typeof values !== 'object') continue;
      for (const [name, value] of Object.entries(values as Record<string, unknown>)) {
        const items: unknown[] = Array.isArray(value) ? value : [value];
        if (items.some((v) => typeof v === 'number' && !Number.isFinite(v))) {
          throw new FleetwireError('VALIDATION_FAILED', `${part}/${name} must be a finite number`);
        }
      }
    }
  });
}
