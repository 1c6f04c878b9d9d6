import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { revokeDevice, revokeToken } from '@fleetwire/common';
import { closeOf, connect, nextMessage, sleep, startBroker, waitFor, type TestBroker } from './helpers.js';

let t: TestBroker;
let operator: string;
beforeAll(async () => {
  t = await startBroker({ registryFlushMs: 200, tokenNoticeS: 1 });
  operator = await t.mint({ sub: 'olga', typ: 'user', role: 'operator', ttlSeconds: 600 });
});
afterAll(async () => t.close());

const api = (path: string, init: RequestInit & { token?: string } = {}) =>
  fetch(`${t.httpUrl}${path}`, { ...init, headers: { ...(init.token ? { authorization: `Bearer ${init.token}` } : {}) } });

describe('connection registry', () => {
  it('lists a connected device with its node, address and times, and forgets it on disconnect', async () => {
    const c = await connect(t.url, await t.registerDevice('dev-reg'), 'dev-reg');
    const one = await waitFor(() => api('/v1/connections/dev-reg', { token: operator }), (r) => r.status === 200);
    const rec = await one.json();
    expect(rec).toMatchObject({ client_id: 'dev-reg', kind: 'device', device_id: 'dev-reg', node: t.broker.nodeId, ip: '127.0.0.1', transport: 'ws' });
    expect(rec.connected_at).toBeGreaterThan(Date.now() - 10_000);
    const svc = await connect(t.url, await t.mint({ sub: 'lister', typ: 'service' }), 'service:lister:1');
    const list = await (await api('/v1/connections?kind=device', { token: operator })).json();
    expect(list.items.map((i: { client_id: string }) => i.client_id)).toContain('dev-reg');
    expect(list.items.every((i: { kind: string }) => i.kind === 'device')).toBe(true);
    const services = await (await waitFor(() => api('/v1/connections?kind=service', { token: operator }).then((r) => r.json()), (b: { total: number; items: { client_id: string }[] }) => b.total === 1));
    expect(services.items.map((i: { client_id: string }) => i.client_id)).toEqual(['service:lister:1']);
    await svc.endAsync();
    await c.endAsync();
    await waitFor(() => api('/v1/connections/dev-reg', { token: operator }).then((r) => r.status), (s) => s === 404);
  });

  it('updates last activity as the device talks', async () => {
    const c = await connect(t.url, await t.registerDevice('dev-act'), 'dev-act');
    const first = await (await waitFor(() => api('/v1/connections/dev-act', { token: operator }), (r) => r.status === 200)).json();
    await sleep(50);
    await c.publishAsync('devices/dev-act/telemetry', '{"t":1}', { qos: 1 });
    await waitFor(async () => (await (await api('/v1/connections/dev-act', { token: operator })).json()).last_activity, (v) => v > first.last_activity);
    await c.endAsync();
  });

  it('answers 401 without a token, 403 for a viewer, with the error shape', async () => {
    const none = await api('/v1/connections');
    expect(none.status).toBe(401);
    expect((await none.json()).error.code).toBe('AUTH_TOKEN_MISSING');
    const viewer = await t.mint({ sub: 'vera', typ: 'user', role: 'viewer' });
    const forbidden = await api('/v1/connections', { token: viewer });
    expect(forbidden.status).toBe(403);
    expect((await forbidden.json()).error.code).toBe('AUTH_FORBIDDEN');
    const device = await t.registerDevice('dev-api');
    expect((await api('/v1/connections', { token: device })).status).toBe(403);
    const bad = await api('/v1/connections?limit=0', { token: operator });
    expect(bad.status).toBe(400);
    expect((await bad.json()).error.code).toBe('VALIDATION_FAILED');
  });
});

describe('kick', () => {
  it('sends the device a sys notice, then closes with code 4000 and the operator\'s reason', async () => {
    const c = await connect(t.url, await t.registerDevice('dev-kick'), 'dev-kick');
    await c.subscribeAsync('devices/dev-kick/sys');
    const notice = nextMessage(c, 'devices/dev-kick/sys');
    const closed = closeOf(c);
    await waitFor(() => api('/v1/connections/dev-kick', { token: operator }).then((r) => r.status), (s) => s === 200);
    const res = await api('/v1/connections/dev-kick?reason=maintenance%20window', { method: 'DELETE', token: operator });
    expect(res.status).toBe(202);
    expect(JSON.parse((await notice).toString())).toEqual({ type: 'disconnect', reason: 'maintenance window', close_code: 4000 });
    expect(await closed).toEqual({ code: 4000, reason: 'maintenance window' });
    expect(t.logs.join('')).toMatch(/"actor":"user:olga".*"reason":"maintenance window"/);
    await waitFor(() => api('/v1/connections/dev-kick', { token: operator }).then((r) => r.status), (s) => s === 404);
  });

  it('answers 404 for a connection that does not exist', async () => {
    const res = await api('/v1/connections/nobody-here', { method: 'DELETE', token: operator });
    expect(res.status).toBe(404);
    expect((await res.json()).error.code).toBe('BROKER_CONNECTION_NOT_FOUND');
  });
});

describe('token lifetime and revocation', () => {
  it('warns before the token expires, then closes at exp with code 4002', async () => {
    await t.registerDevice('dev-exp');
    const c = await connect(t.url, await t.mint({ sub: 'dev-exp', ttlSeconds: 3 }), 'dev-exp');
    await c.subscribeAsync('devices/dev-exp/sys');
    const notice = nextMessage(c, 'devices/dev-exp/sys', 5000);
    const closed = closeOf(c);
    const body = JSON.parse((await notice).toString());
    expect(body.type).toBe('token-expiring');
    const { code } = await closed;
    expect(code).toBe(4002);
  });

  it('closes a revoked device within a second with code 4003', async () => {
    const c = await connect(t.url, await t.registerDevice('dev-rev'), 'dev-rev');
    const closed = closeOf(c);
    const start = Date.now();
    await revokeDevice(t.redis, 'dev-rev');
    expect((await closed).code).toBe(4003);
    expect(Date.now() - start).toBeLessThan(1000);
  });

  it('closes a connection whose token was revoked', async () => {
    await t.registerDevice('dev-revtok');
    const token = await t.mint({ sub: 'dev-revtok' });
    const c = await connect(t.url, token, 'dev-revtok');
    const closed = closeOf(c);
    const jti = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).jti as string;
    await revokeToken(t.redis, jti, Math.floor(Date.now() / 1000) + 600);
    expect((await closed).code).toBe(4003);
  });
});

describe('takeover and presence', () => {
  it('a second connection with the same id takes over; the first is closed with 4007 and presence stays online', async () => {
    const watcher = await connect(t.url, await t.mint({ sub: 'pw', typ: 'service' }), 'service:pw:1');
    const presence: Array<{ online: boolean; seq: number }> = [];
    watcher.on('message', (topic, payload) => { if (topic === 'fleet/presence/dev-take') presence.push(JSON.parse(payload.toString())); });
    await watcher.subscribeAsync('fleet/presence/dev-take', { qos: 1 });
    const token = await t.registerDevice('dev-take');
    const first = await connect(t.url, token, 'dev-take');
    const firstClosed = closeOf(first);
    const second = await connect(t.url, token, 'dev-take');
    expect((await firstClosed).code).toBe(4007);
    await sleep(300);
    const rec = await (await api('/v1/connections/dev-take', { token: operator })).json();
    expect(rec.client_id).toBe('dev-take');
    expect(second.connected).toBe(true);
    // The newest event (highest seq) says online, whatever order the old close landed in.
    const latest = presence.reduce((a, b) => (b.seq > a.seq ? b : a));
    expect(latest.online).toBe(true);
    await second.endAsync();
    await waitFor(() => presence.reduce((a, b) => (b.seq > a.seq ? b : a)).online, (online) => online === false);
    await watcher.endAsync();
  });

  it('keeps the last presence retained for services that subscribe later', async () => {
    const c = await connect(t.url, await t.registerDevice('dev-ret'), 'dev-ret');
    await sleep(100);
    const watcher = await connect(t.url, await t.mint({ sub: 'pw2', typ: 'service' }), 'service:pw2:1');
    const msg = nextMessage(watcher, 'fleet/presence/dev-ret');
    await watcher.subscribeAsync('fleet/presence/+');
    expect(JSON.parse((await msg).toString())).toMatchObject({ online: true, node: t.broker.nodeId });
    await Promise.all([c.endAsync(), watcher.endAsync()]);
  });

  it('sendToDevice delivers to the connected device', async () => {
    const c = await connect(t.url, await t.registerDevice('dev-send'), 'dev-send');
    await c.subscribeAsync('devices/dev-send/ota', { qos: 1 });
    const msg = nextMessage(c, 'devices/dev-send/ota');
    await t.broker.sendToDevice('dev-send', 'ota', { rollout: 'r1' });
    expect(JSON.parse((await msg).toString())).toEqual({ rollout: 'r1' });
    await expect(t.broker.sendToDevice('dev-send', 'heartbeat', {})).rejects.toThrow(/not a cloud-to-device/);
    await c.endAsync();
  });
});
