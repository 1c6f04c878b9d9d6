/**
 * Requests without a body, sent the way generic JSON HTTP clients send them: with
 * `content-type: application/json` (or any other type) and nothing after the head.
 * Routes that take no body act on them; routes that need one answer a clear 400.
 * In the `fleetwire up` layout, so the broker's and the auth service's routes are both here.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeOf, connect } from '../../broker/test/helpers.js';
import { startAuth, type TestAuth } from './helpers.js';

let t: TestAuth;
let op: string;
beforeAll(async () => {
  t = await startAuth({ loginPerIp: 1000, loginPerAccount: 1000 }, { withBroker: true });
  op = await t.tokenFor('operator');
});
afterAll(async () => t.close());

/** A request whose head says JSON (or `contentType`) and whose body is empty. */
async function emptyBody(method: string, path: string, contentType = 'application/json'): Promise<{ status: number; body: Record<string, unknown> & { error?: { code: string; message: string } } }> {
  const res = await fetch(t.url + path, { method, headers: { authorization: `Bearer ${op}`, 'content-type': contentType }, body: '' });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : {} };
}

async function registeredDevice(): Promise<{ id: string; apiKey: string }> {
  const res = await t.api('POST', '/v1/devices', { token: op, body: { type: 'esp32-c3' } });
  return { id: res.body.id as string, apiKey: res.body.api_key as string };
}

describe('a request with a content type and no body', () => {
  it('DELETE /v1/devices/{id} revokes the device', async () => {
    const { id, apiKey } = await registeredDevice();
    const res = await emptyBody('DELETE', `/v1/devices/${id}`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ id, status: 'revoked' });
    expect((await t.api('GET', `/v1/devices/${id}`, { token: op })).body.status).toBe('revoked');
    const exchange = await t.api('POST', '/v1/devices/token', { body: { api_key: apiKey } });
    expect(exchange.status).toBe(401);
  });

  it('DELETE /v1/connections/{id} kicks the connection', async () => {
    const { id, apiKey } = await registeredDevice();
    const token = (await t.api('POST', '/v1/devices/token', { body: { api_key: apiKey } })).body.token as string;
    const client = await connect(`${t.url.replace('http', 'ws')}/mqtt`, token, id);
    const closed = closeOf(client);
    const res = await emptyBody('DELETE', `/v1/connections/${id}?reason=maintenance`);
    expect(res.status).toBe(202);
    expect(res.body).toMatchObject({ client_id: id, reason: 'maintenance' });
    expect((await closed).code).toBe(4000);
  });

  it('is treated as no body whatever the content type', async () => {
    const { id } = await registeredDevice();
    const res = await emptyBody('DELETE', `/v1/devices/${id}`, 'application/x-www-form-urlencoded');
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ id, status: 'revoked' });
  });

  it('a route that needs a body answers 400 VALIDATION_FAILED and creates nothing', async () => {
    const listed = async (): Promise<number> => ((await t.api('GET', '/v1/devices?limit=1000', { token: op })).body.devices as unknown[]).length;
    const before = await listed();
    const res = await emptyBody('POST', '/v1/devices');
    expect(res.status).toBe(400);
    expect(res.body.error?.code).toBe('VALIDATION_FAILED');
    expect(res.body.error?.message).toMatch(/body/i);
    expect(await listed()).toBe(before);
  });

  it('a body that is there but is not JSON is still refused', async () => {
    const res = await fetch(`${t.url}/v1/devices`, { method: 'POST', headers: { authorization: `Bearer ${op}`, 'content-type': 'application/json' }, body: '{"type":' });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('VALIDATION_FAILED');
  });
});
