/**
 * Numbers in query strings, in the `fleetwire up` layout (every service's routes
 * on one app): out-of-range values are a 400, never an unbounded page or a 500.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAuth, type TestAuth } from './helpers.js';

let t: TestAuth;
let admin: string;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000 }, { withBroker: true });
  admin = await t.tokenFor('admin');
});
afterAll(async () => t.close());

/** 400 digits: JavaScript reads it as Infinity. */
const huge = '9'.repeat(400);

describe('numeric query parameters are bounded on every route', () => {
  it.each([
    ['/v1/devices', 'limit'], ['/v1/devices', 'last_seen_after'], ['/v1/devices', 'last_seen_before'],
    ['/v1/users', 'limit'], ['/v1/users', 'offset'],
    ['/v1/connections', 'limit'], ['/v1/connections', 'offset'],
    ['/v1/audit', 'limit'], ['/v1/audit', 'since'], ['/v1/audit', 'until'],
  ])('GET %s?%s=<400 digits> → 400 VALIDATION_FAILED', async (path, param) => {
    const res = await t.api('GET', `${path}?${param}=${huge}`, { token: admin });
    expect(res.status).toBe(400);
    expect(res.body.error?.code).toBe('VALIDATION_FAILED');
  });

  it.each([
    ['/v1/devices?limit=Infinity'], ['/v1/devices?last_seen_after=1e400'], ['/v1/users?offset=1e21'],
    ['/v1/connections?offset=1e21'], ['/v1/audit?since=-Infinity'],
    // Not a number but one in disguise: a stream id past 64 bits.
    [`/v1/audit?before=${huge}-0`],
  ])('GET %s → 400 VALIDATION_FAILED', async (pathAndQuery) => {
    const res = await t.api('GET', pathAndQuery, { token: admin });
    expect(res.status).toBe(400);
    expect(res.body.error?.code).toBe('VALIDATION_FAILED');
  });

  it('values within the bounds still page as before', async () => {
    expect((await t.api('GET', '/v1/devices?limit=1000&last_seen_before=9007199254740991', { token: admin })).status).toBe(200);
    expect((await t.api('GET', '/v1/users?limit=500&offset=9007199254740991', { token: admin })).body).toMatchObject({ users: [] });
    expect((await t.api('GET', '/v1/connections?offset=1000000&limit=1', { token: admin })).body).toMatchObject({ items: [] });
  });

  it('every integer in a query string of the OpenAPI document has a maximum', async () => {
    const doc = (await t.api('GET', '/docs/json')).body as { paths: Record<string, Record<string, { parameters?: { in: string; name: string; schema: { type?: string; maximum?: number } }[] }>> };
    const unbounded: string[] = [];
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        for (const p of op.parameters ?? []) {
          if (p.in === 'query' && (p.schema.type === 'integer' || p.schema.type === 'number') && p.schema.maximum === undefined) {
            unbounded.push(`${method.toUpperCase()} ${path} ${p.name}`);
          }
        }
      }
    }
    expect(unbounded).toEqual([]);
  });
});
